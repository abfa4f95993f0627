//! Times the sqlite store on the bench's bulk write (`serval apply` of 50,000 Services): one
//! transaction of 50,000 Service creates (~480 bytes of JSON each, in input order), 196
//! allocation-index creates (one per 256 addresses, ~17 KiB each) and an update of the index
//! marker,
//! then how long a watcher (a second store on the same file, as the agent is another process)
//! takes from the commit to having every event of that revision.
//!
//! `cargo run --release -p serval-store --example bulk_txn -- [RUNS] [SERVICES] [agent|all|none]`
//! (defaults 3, 50,000, agent). `agent` watches as the agent does: the resources prefix (timed:
//! it gets the 50,000 Service events) and the IPAM affinities prefix (no events from this
//! revision, but it reads the revision's log too) at once; `all` watches `/` alone (every
//! event); `none` times the write alone. Each run uses a fresh database in a temporary directory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serval_store::{Datastore, SqliteStore, TxnOp};

const RESOURCES: &str = "/serval/resources/";
const AFFINITIES: &str = "/serval/ipam/affinities/";
const MARKER: &str = "/serval/allocations/services";

fn service_json(i: usize) -> Vec<u8> {
    format!(
        r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"bench-svc-{i}","namespace":"default","uid":"a3037c66-e97d-7e2b-facf-{i:012x}","creationTimestamp":"2026-11-22T00:22:38Z"}},"spec":{{"type":"ClusterIP","clusterIP":"10.96.{}.{}","clusterIPs":["10.96.{}.{}"],"ipFamilies":["IPv4"],"ipFamilyPolicy":"SingleStack","ports":[{{"name":"p80","protocol":"TCP","port":80,"targetPort":8080}}],"selector":{{"bench-role":"backend"}},"sessionAffinity":"None","internalTrafficPolicy":"Cluster"}}}}"#,
        16 + i / 256,
        i % 256,
        16 + i / 256,
        i % 256,
    )
    .into_bytes()
}

fn service_key(i: usize) -> String {
    format!("{RESOURCES}services/default/bench-svc-{i}")
}

/// The apply's transaction: Services in input order, then the allocation index (one key per
/// 256 addresses, each mapping its addresses to Service keys, ~17 KiB), then the marker's
/// compare-and-swap.
fn bulk_ops(n: usize, marker_rev: i64) -> Vec<TxnOp> {
    let mut ops = Vec::with_capacity(n + n / 256 + 2);
    for i in 0..n {
        ops.push(TxnOp::Create {
            key: service_key(i),
            value: service_json(i),
        });
    }
    for bucket in 0..n.div_ceil(256) {
        let entries: Vec<String> = (bucket * 256..n.min(bucket * 256 + 256))
            .map(|i| {
                format!(
                    r#""10.96.{}.{}":"{}""#,
                    16 + i / 256,
                    i % 256,
                    service_key(i)
                )
            })
            .collect();
        ops.push(TxnOp::Create {
            key: format!("{MARKER}/ip4/0a60{:02x}", 16 + bucket),
            value: format!("{{{}}}", entries.join(",")).into_bytes(),
        });
    }
    ops.push(TxnOp::Update {
        key: MARKER.to_string(),
        value: br#"{"next":{},"version":2}"#.to_vec(),
        expected: marker_rev,
    });
    ops
}

/// CPU time of every thread of this process so far (`/proc/self/task/*/schedstat`): on a
/// shared, loaded machine a steadier figure than wall time.
fn cpu() -> Duration {
    let mut ns = 0u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            if let Ok(stat) = std::fs::read_to_string(t.path().join("schedstat")) {
                ns += stat
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    Duration::from_nanos(ns)
}

struct Run {
    txn: Duration,
    txn_cpu: Duration,
    /// The WAL's size after the commit.
    wal: u64,
    /// CPU time of the process from the commit until every watch had its events.
    watch_cpu: Duration,
    /// Commit (txn returned) to the last event of the revision, per watch prefix.
    watches: Vec<(String, usize, Duration)>,
}

/// Who watches the write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The agent's two watches.
    Agent,
    /// One watch of everything.
    All,
    /// Nobody: the write alone.
    None,
}

async fn run_once(n: usize, mode: Mode) -> Result<Run> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("store.db");
    let writer = SqliteStore::open(&path).await?;
    let marker_rev = writer.create(MARKER, b"{}".to_vec()).await?;
    // The watcher is another store on the file, woken across "processes" as the agent is.
    let watcher = Arc::new(SqliteStore::open(&path).await?);
    let everything = [("/", n + n.div_ceil(256) + 1)];
    let resources = [(RESOURCES, n)];
    let prefixes: &[(&str, usize)] = match mode {
        Mode::All => &everything,
        Mode::Agent => &resources,
        Mode::None => &[],
    };
    // Kept open (not timed) for the run.
    let _affinities = match mode {
        Mode::Agent => Some(watcher.watch(AFFINITIES, marker_rev).await?),
        Mode::All | Mode::None => None,
    };
    let mut tasks = Vec::new();
    let (start_tx, _) = tokio::sync::broadcast::channel::<Instant>(1);
    for &(prefix, want) in prefixes {
        let mut w = watcher.watch(prefix, marker_rev).await?;
        let mut start_rx = start_tx.subscribe();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut got = 0;
            while got < want {
                match tokio::time::timeout(Duration::from_secs(60), w.next()).await {
                    Ok(Some(Ok(_))) => got += 1,
                    other => bail!("{prefix}: watch item {other:?} after {got} events"),
                }
            }
            let done = Instant::now();
            let committed = start_rx.recv().await?;
            Ok((prefix, got, done.saturating_duration_since(committed)))
        }));
    }
    // Let the watcher's poller settle before the write.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ops = bulk_ops(n, marker_rev);
    let cpu0 = cpu();
    let started = Instant::now();
    writer.txn(ops).await?;
    let committed = Instant::now();
    let cpu1 = cpu();
    let wal = std::fs::metadata(dir.path().join("store.db-wal")).map_or(0, |m| m.len());
    start_tx.send(committed).ok();
    let txn = committed - started;
    let mut watches = Vec::new();
    for t in tasks {
        watches.push(t.await.context("watch task")??);
    }
    Ok(Run {
        txn,
        txn_cpu: cpu1 - cpu0,
        wal,
        watch_cpu: cpu() - cpu1,
        watches,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(3);
    let n: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(50_000);
    let mode = match args.next().as_deref() {
        None | Some("agent") => Mode::Agent,
        Some("all") => Mode::All,
        Some("none") => Mode::None,
        Some(other) => bail!("unknown watch mode {other:?}: agent, all or none"),
    };
    for run in 0..runs {
        let r = run_once(n, mode).await?;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mut line = format!(
            "run {run}: txn {:.1} ms, cpu {:.1} ms ({} ops, WAL {} MiB, {} frames of 16 KiB)",
            ms(r.txn),
            ms(r.txn_cpu),
            n + n.div_ceil(256) + 1,
            r.wal >> 20,
            r.wal.saturating_sub(32) / (16384 + 24)
        );
        for (prefix, events, took) in &r.watches {
            line.push_str(&format!(
                "; watch {prefix:?} {events} events {:.1} ms ({:.2} us/event)",
                ms(*took),
                ms(*took) * 1e3 / *events as f64
            ));
        }
        line.push_str(&format!("; watch cpu {:.1} ms", ms(r.watch_cpu)));
        println!("{line}");
    }
    Ok(())
}
