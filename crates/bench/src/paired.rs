//! Latency of a column measured together with its `direct` baseline, interleaved in blocks.
//!
//! On a shared machine the load changes from one minute to the next, so a column measured
//! after its baseline compares two different machines. Here the column's exchanges and the
//! baseline's are taken in alternating blocks of [`block_len`] exchanges, in ABBA order
//! (column, direct, direct, column, column, …), so load that comes and goes falls on both
//! alike and neither is always first. Each side gets the full number of samples; the ratio
//! is that of the two sides' percentiles (the paired medians for p50), and every block pair
//! also gives a ratio of its two medians — their spread shows what the noise did.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use serval_sys::NetNs;

use crate::error::{BenchError, Result};
use crate::lab::Pod;
use crate::net::{self, LatencyRun};
use crate::progress::{Progress, human_us};
use crate::results::{BlockPair, LatencyPoint, PairedDirect};
use crate::stats::Summary;

/// One end of the latency exchanges: the client's namespace and the address it connects to.
#[derive(Debug)]
pub struct Endpoint {
    pub ns: NetNs,
    pub ns_name: String,
    pub addr: SocketAddrV4,
}

impl Endpoint {
    /// Exchanges from `client`'s namespace with `addr`.
    pub fn new(client: &Pod, addr: SocketAddrV4) -> Result<Endpoint> {
        Ok(Endpoint {
            ns: client
                .netns
                .try_clone()
                .map_err(|source| BenchError::Netns {
                    what: "opening the client's namespace again",
                    netns: client.netns_name.clone(),
                    source,
                })?,
            ns_name: client.netns_name.clone(),
            addr,
        })
    }
}

/// Exchanges per block: a tenth of the samples, at most 100 (2,000 samples: 20 blocks per
/// side; `--quick`'s 300: 10 blocks of 30).
pub fn block_len(samples: usize) -> usize {
    (samples / 10).clamp(1, 100)
}

/// Whether block pair `i` runs the column first (ABBA order: pairs 0, 2, 4, … do).
pub fn column_first(i: usize) -> bool {
    i.is_multiple_of(2)
}

/// The sizes of the successive block pairs for `samples` per side.
pub fn blocks(samples: usize) -> Vec<usize> {
    let len = block_len(samples);
    let mut left = samples;
    let mut v = Vec::new();
    while left > 0 {
        let k = len.min(left);
        v.push(k);
        left -= k;
    }
    v
}

fn empty_run(samples: usize) -> LatencyRun {
    LatencyRun {
        samples_us: Vec::with_capacity(samples),
        failures: 0,
        last_error: None,
        stopped_early: false,
    }
}

/// `k` exchanges with `at`; appends to `run`; returns the block's successful samples.
fn block(at: &Endpoint, k: usize, run: &mut LatencyRun) -> Result<Vec<f64>> {
    let timeout = Duration::from_secs(1);
    let outcomes = at
        .ns
        .run(|| {
            (0..k)
                .map(|_| net::exchange(at.addr, timeout).map(|d| d.as_secs_f64() * 1e6))
                .collect::<Vec<_>>()
        })
        .map_err(|source| BenchError::Netns {
            what: "running the latency client",
            netns: at.ns_name.clone(),
            source,
        })?;
    let mut ok = Vec::with_capacity(k);
    for o in outcomes {
        match o {
            Ok(us) => ok.push(us),
            Err(e) => {
                run.failures += 1;
                run.last_error = Some(e.to_string());
            }
        }
    }
    run.samples_us.extend_from_slice(&ok);
    Ok(ok)
}

fn median(v: &[f64]) -> Option<f64> {
    Summary::of(v).map(|s| s.p50)
}

/// `samples` exchanges with `column` and `samples` with `direct`, interleaved in ABBA
/// blocks, after `warmup` unrecorded ones with each. Stops early when either side reaches
/// [`net::max_failures`].
pub fn latency(
    column: &Endpoint,
    direct: &Endpoint,
    samples: usize,
    warmup: usize,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<(LatencyRun, PairedDirect)> {
    let mut scratch = empty_run(warmup);
    block(column, warmup, &mut scratch)?;
    block(direct, warmup, &mut scratch)?;
    let mut a = empty_run(samples);
    let mut b = empty_run(samples);
    let mut pairs = Vec::new();
    let mut last_report = Instant::now();
    let limit = net::max_failures(samples);
    let mut done = 0;
    for (i, k) in blocks(samples).into_iter().enumerate() {
        let first = column_first(i);
        let (col, dir) = if first {
            let col = block(column, k, &mut a)?;
            (col, block(direct, k, &mut b)?)
        } else {
            let dir = block(direct, k, &mut b)?;
            (block(column, k, &mut a)?, dir)
        };
        pairs.push(BlockPair {
            column_first: first,
            column_samples: col.len(),
            direct_samples: dir.len(),
            column_p50: median(&col),
            direct_p50: median(&dir),
        });
        done += k;
        if a.failures >= limit {
            a.stopped_early = true;
        }
        if b.failures >= limit {
            b.stopped_early = true;
        }
        if a.stopped_early || b.stopped_early {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(2) {
            progress(done);
            last_report = Instant::now();
        }
    }
    let paired = PairedDirect::new(direct.addr.to_string(), b, block_len(samples), pairs, &a);
    Ok((a, paired))
}

/// The latency point of `column_name` at `n`: interleaved with `direct` when given (the
/// normal case), else alone (the column measured by itself, as before the paired method).
pub fn measure_point(
    column_name: &str,
    n: usize,
    column: &Endpoint,
    direct: Option<&Endpoint>,
    samples: usize,
    warmup: usize,
    progress: &Progress,
) -> Result<LatencyPoint> {
    let report =
        |done: usize| progress.line(&format!("{column_name} N={n}: {done}/{samples} samples"));
    let (run, paired) = match direct {
        Some(d) => {
            let (run, paired) = latency(column, d, samples, warmup, &report)?;
            (run, Some(paired))
        }
        None => (
            net::latency(
                &column.ns,
                &column.ns_name,
                column.addr,
                samples,
                warmup,
                &report,
            )?,
            None,
        ),
    };
    let summary = Summary::of(&run.samples_us);
    if let Some(s) = &summary {
        let with = paired
            .as_ref()
            .and_then(|p| Some((p.summary?, p.ratio_p50?)))
            .map(|(d, r)| {
                format!(
                    "; direct interleaved p50 {} ({} failed): {r:.2}×",
                    human_us(d.p50),
                    paired.as_ref().map_or(0, |p| p.failures)
                )
            })
            .unwrap_or_default();
        progress.line(&format!(
            "{column_name} N={n}: latency p50 {} p90 {} p99 {} ({} samples, {} failed){with}",
            human_us(s.p50),
            human_us(s.p90),
            human_us(s.p99),
            s.count,
            run.failures
        ));
    }
    Ok(LatencyPoint {
        dataplane: column_name.to_string(),
        n,
        target: column.addr.to_string(),
        summary,
        failures: run.failures,
        last_error: run.last_error,
        stopped_early: run.stopped_early,
        samples_us: run.samples_us,
        paired,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_the_samples_in_order() {
        assert_eq!(block_len(2000), 100);
        assert_eq!(blocks(2000), vec![100; 20]);
        assert_eq!(blocks(300), vec![30; 10]);
        assert_eq!(blocks(55), vec![5; 11]);
        assert_eq!(blocks(7), vec![1; 7]);
        assert_eq!(blocks(250).iter().sum::<usize>(), 250);
        assert_eq!(blocks(250), vec![25; 10]);
        assert_eq!(blocks(1050), [vec![100; 10], vec![50]].concat());
    }

    #[test]
    fn abba_order() {
        let order: Vec<&str> = (0..4)
            .flat_map(|i| {
                if column_first(i) {
                    ["A", "B"]
                } else {
                    ["B", "A"]
                }
            })
            .collect();
        assert_eq!(order.concat(), "ABBAABBA");
    }

    /// Two echo servers on loopback, one per side: every exchange lands in its own side's
    /// samples, blocks alternate, and the block pairs add up to the samples.
    #[test]
    fn interleaved_on_loopback() {
        let ns = NetNs::current().expect("current netns");
        let port = |()| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            l.local_addr().expect("addr").port()
        };
        let a_addr = SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, port(()));
        let b_addr = SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, port(()));
        let a_srv = net::EchoServer::start(&ns, "self", a_addr).expect("server a");
        let b_srv = net::EchoServer::start(&ns, "self", b_addr).expect("server b");
        let ep = |addr| Endpoint {
            ns: ns.try_clone().expect("clone"),
            ns_name: "self".into(),
            addr,
        };
        let (run, paired) = latency(&ep(a_addr), &ep(b_addr), 40, 2, &|_| {}).expect("latency");
        assert_eq!(run.samples_us.len(), 40);
        assert_eq!(paired.samples_us.len(), 40);
        assert_eq!(paired.block_len, 4);
        assert_eq!(paired.blocks.len(), 10);
        assert!(paired.blocks[0].column_first && !paired.blocks[1].column_first);
        assert_eq!(
            paired
                .blocks
                .iter()
                .map(|b| b.column_samples)
                .sum::<usize>(),
            40
        );
        assert!(paired.ratio_p50.is_some_and(|r| r > 0.0));
        assert_eq!(paired.target, b_addr.to_string());
        drop(a_srv);
        // The column's server gone: its side fails, the direct side still answers, and the
        // run stops at the failure limit rather than running on.
        let (run, paired) = latency(&ep(a_addr), &ep(b_addr), 40, 0, &|_| {}).expect("latency");
        assert!(run.samples_us.is_empty());
        assert!(run.stopped_early);
        assert!(run.failures >= net::max_failures(40));
        assert!(!paired.samples_us.is_empty());
        assert_eq!(paired.ratio_p50, None);
        drop(b_srv);
    }
}
