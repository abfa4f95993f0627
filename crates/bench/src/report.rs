//! The Markdown report: tables with absolute numbers and ratios to the baseline measured in
//! the same run (`direct` for latency, `kube-proxy-iptables` for programming time, the
//! no-Serval floor for throughput), the machine, and the columns that were not available.

use std::fmt::Write as _;

use crate::results::Results;
use crate::stats::Summary;

/// The latency baseline column.
pub const LATENCY_BASELINE: &str = "direct";
/// The programming-time baseline column.
pub const PROGRAMMING_BASELINE: &str = "kube-proxy-iptables";

fn fmt_us(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

fn ratio(value: f64, base: Option<f64>) -> String {
    match base {
        Some(b) if b > 0.0 => format!(" ({:.2}×)", value / b),
        _ => String::new(),
    }
}

fn sizes_of(points: impl Iterator<Item = usize>) -> Vec<usize> {
    let mut v: Vec<usize> = points.collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The whole report.
pub fn render(r: &Results, plots: &[(String, String)]) -> String {
    let mut md = String::new();
    let m = &r.machine;
    let _ = writeln!(md, "# serval bench — {}\n", r.started_utc);
    let _ = writeln!(
        md,
        "Machine: **{}**, {} cores, {}; host {}. {}; {}.\n",
        if m.cpu_model.is_empty() {
            "unknown CPU"
        } else {
            &m.cpu_model
        },
        m.cores,
        m.kernel,
        m.hostname,
        m.iptables_version,
        m.nft_version
    );
    let _ = writeln!(
        md,
        "Run: {} → {} ({:.0} s); sizes {:?}; {} latency samples per point ({} warm-up); sections {}; columns {}{}.\n",
        r.started_utc,
        r.finished_utc,
        r.duration_s,
        r.config.sizes,
        r.config.samples,
        r.config.warmup,
        r.config.sections.join(", "),
        r.config.dataplanes.join(", "),
        if r.config.quick { " (--quick)" } else { "" }
    );
    let _ = writeln!(
        md,
        "kube-proxy iptables baseline loaded with `iptables-{}-restore`.\n",
        if r.config.iptables_backend.is_empty() {
            "legacy"
        } else {
            &r.config.iptables_backend
        }
    );
    if !m.build.is_empty() {
        let _ = writeln!(
            md,
            "`serval` (bench, agents, `serval apply`) built with the `{}` profile. Load average \
             (1/5/15 min) at the start {}, at the end {}: the machine may be shared with other \
             work, which shows most in the p99 and in the spread between sizes.\n",
            m.build,
            if m.load_start.is_empty() {
                "unknown"
            } else {
                &m.load_start
            },
            if m.load_end.is_empty() {
                "unknown"
            } else {
                &m.load_end
            },
        );
    }
    md.push_str(
        "Every figure below was measured in this one run on this machine; ratios are to the \
         baseline measured in the same run. Nothing is asserted: see docs/bench.md for the method.\n\n",
    );

    latency_section(&mut md, r);
    programming_section(&mut md, r);
    policy_section(&mut md, r);
    throughput_section(&mut md, r);
    memory_section(&mut md, r);

    if !r.failures.is_empty() {
        md.push_str("## Measurements that failed\n\n");
        for f in &r.failures {
            let at = f.n.map(|n| format!(" at N={n}")).unwrap_or_default();
            let _ = writeln!(md, "- {} / {}{at}: {}", f.section, f.dataplane, f.error);
        }
        md.push('\n');
    }
    if !plots.is_empty() {
        md.push_str("## Plots\n\n");
        for (title, file) in plots {
            let _ = writeln!(md, "![{title}]({file})\n");
        }
    }
    md
}

fn not_run(md: &mut String, r: &Results, section: &str) -> bool {
    if r.config.sections.iter().any(|s| s == section) {
        return false;
    }
    let _ = writeln!(md, "Not run (not selected with `--only`).\n");
    true
}

/// Latency points where exchanges failed: the count, whether the run stopped early, and the
/// last error (the percentiles above are of the successful exchanges only).
fn failed_exchanges(md: &mut String, r: &Results) {
    let bad: Vec<_> = r.latency.iter().filter(|p| p.failures > 0).collect();
    let bad_direct: Vec<_> = r
        .latency
        .iter()
        .filter_map(|p| Some((p, p.paired.as_ref().filter(|d| d.failures > 0)?)))
        .collect();
    if bad.is_empty() && bad_direct.is_empty() {
        return;
    }
    md.push_str(
        "**Failed exchanges** (connections that did not complete within 1 s; the percentiles \
         above are of the successful ones only):\n\n",
    );
    for p in bad {
        let tried = p.samples_us.len() + p.failures;
        let _ = writeln!(
            md,
            "- {} at N={}: {} of {tried} failed{}; last error: {}",
            p.dataplane,
            p.n,
            p.failures,
            if p.stopped_early {
                " (stopped early at the failure limit)"
            } else {
                ""
            },
            p.last_error.as_deref().unwrap_or("unknown")
        );
    }
    for (p, d) in bad_direct {
        let _ = writeln!(
            md,
            "- direct interleaved with {} at N={}: {} of {} failed; last error: {}",
            p.dataplane,
            p.n,
            d.failures,
            d.samples_us.len() + d.failures,
            d.last_error.as_deref().unwrap_or("unknown")
        );
    }
    md.push('\n');
}

fn unavailable_notes(md: &mut String, r: &Results, section: &str) {
    let notes: Vec<_> = r
        .unavailable
        .iter()
        .filter(|u| u.section == section)
        .collect();
    for u in &notes {
        let _ = writeln!(md, "- **{}**: not available: {}", u.dataplane, u.reason);
    }
    if !notes.is_empty() {
        md.push('\n');
    }
}

/// The (column, size) pairs the default set left out, listed by column, never dropped
/// silently.
fn skipped_notes(md: &mut String, r: &Results, columns: &[String]) {
    let mut any = false;
    for c in columns {
        let sizes: Vec<String> = r
            .skipped
            .iter()
            .filter(|s| &s.dataplane == c)
            .map(|s| s.n.to_string())
            .collect();
        if sizes.is_empty() {
            continue;
        }
        let reason = r
            .skipped
            .iter()
            .find(|s| &s.dataplane == c)
            .map_or("", |s| s.reason.as_str());
        let _ = writeln!(md, "- **{c}** at N={}: {reason}", sizes.join(", "));
        any = true;
    }
    if any {
        md.push('\n');
    }
}

fn latency_columns(r: &Results, section: &str) -> Vec<String> {
    r.config
        .dataplanes
        .iter()
        .filter(|d| section != "programming" || d.as_str() != LATENCY_BASELINE)
        .cloned()
        .collect()
}

fn latency_section(md: &mut String, r: &Results) {
    md.push_str("## Service scale: new-connection latency\n\n");
    if not_run(md, r, "latency") {
        return;
    }
    md.push_str(
        "A client pod opens a TCP connection to the *last* of N services (each with one \
         backend, on the client's node), sends 1 byte, reads the 1-byte reply and closes with \
         an RST; the time from `connect` to the reply. `direct` is the same exchange to the \
         backend pod's own address (no service rules), in a lab that never gets any: the \
         floor. Each column's exchanges were taken interleaved with as many direct ones, in \
         alternating blocks (ABBA), so load on the machine falls on both alike; a ratio is the \
         column's percentile over that of *its own* interleaved direct samples (the \
         `direct` column is the baseline measured alone, for reference).\n\n",
    );
    let columns = latency_columns(r, "latency");
    let sizes = sizes_of(
        r.latency
            .iter()
            .map(|p| p.n)
            .chain(r.skipped.iter().map(|s| s.n)),
    );
    for (label, pick) in [
        ("p50", (|s: &Summary| s.p50) as fn(&Summary) -> f64),
        ("p90", |s: &Summary| s.p90),
        ("p99", |s: &Summary| s.p99),
    ] {
        let _ = writeln!(
            md,
            "**{label}** (ratio to the direct exchanges interleaved with the column)\n"
        );
        sizes_table(md, &columns, &sizes, |c, n| {
            let base = r
                .latency_at(LATENCY_BASELINE, n)
                .and_then(|p| p.summary.as_ref())
                .map(pick);
            if let Some(point) = r.latency_at(c, n)
                && let Some(s) = point.summary.as_ref()
            {
                let v = pick(s);
                // The paired direct samples when there are (results before the paired
                // method: the direct point at this N).
                let base = match &point.paired {
                    Some(d) => d.summary.as_ref().map(pick),
                    None => base,
                };
                if c == LATENCY_BASELINE {
                    fmt_us(v)
                } else {
                    format!("{}{}", fmt_us(v), ratio(v, base))
                }
            } else if r.skipped_at(c, n) {
                "skipped".into()
            } else if r.unavailable_reason("latency", c).is_some() {
                "n/a".into()
            } else if r.failure_at("latency", c, n).is_some() {
                "failed".into()
            } else {
                "—".into()
            }
        });
        md.push('\n');
    }
    paired_table(md, r, &columns, &sizes);
    failed_exchanges(md, r);
    skipped_notes(md, r, &columns);
    unavailable_notes(md, r, "latency");
}

/// A table with one row per size and one cell per column: the header, then `cell(column, n)`.
fn sizes_table<C: AsRef<str>>(
    md: &mut String,
    columns: &[C],
    sizes: &[usize],
    mut cell: impl FnMut(&str, usize) -> String,
) {
    let names: Vec<&str> = columns.iter().map(|c| c.as_ref()).collect();
    let _ = writeln!(md, "| Services | {} |", names.join(" | "));
    let _ = writeln!(md, "|---:|{}", "---:|".repeat(names.len()));
    for &n in sizes {
        let cells: Vec<String> = names.iter().map(|c| cell(c, n)).collect();
        let _ = writeln!(md, "| {n} | {} |", cells.join(" | "));
    }
}

/// The p50 ratios with their direct medians and the spread of the block ratios.
fn paired_table(md: &mut String, r: &Results, columns: &[String], sizes: &[usize]) {
    let columns: Vec<&String> = columns
        .iter()
        .filter(|c| c.as_str() != LATENCY_BASELINE)
        .collect();
    if columns.is_empty() || !r.latency.iter().any(|p| p.paired.is_some()) {
        return;
    }
    let block_len = r
        .latency
        .iter()
        .find_map(|p| p.paired.as_ref().map(|d| d.block_len))
        .unwrap_or(0);
    let _ = writeln!(
        md,
        "**p50, paired**: the column's median / the median of its interleaved direct \
         exchanges = the ratio; in brackets the lowest and highest ratio of the medians of \
         one block of the column and the adjacent direct block ({block_len} exchanges each), \
         which shows how much the machine's noise moved the figure during the point.\n"
    );
    sizes_table(md, &columns, sizes, |c, n| {
        let Some(point) = r.latency_at(c, n) else {
            return "—".into();
        };
        let (Some(s), Some(d)) = (point.summary, point.paired.as_ref().and_then(|d| d.summary))
        else {
            return "—".into();
        };
        let blocks = point
            .paired
            .as_ref()
            .map(|d| d.block_ratios())
            .unwrap_or_default();
        let spread = blocks
            .iter()
            .copied()
            .fold(None, |acc: Option<(f64, f64)>, v| {
                Some(acc.map_or((v, v), |(lo, hi)| (lo.min(v), hi.max(v))))
            })
            .map(|(lo, hi)| format!(" [{lo:.2}–{hi:.2}]"))
            .unwrap_or_default();
        format!(
            "{} / {} = {:.2}×{spread}",
            fmt_us(s.p50),
            fmt_us(d.p50),
            s.p50 / d.p50
        )
    });
    md.push('\n');
    md.push_str(
        "**The interleaved direct exchanges** (the base of each column's ratios): p50 / p90 / \
         p99\n\n",
    );
    sizes_table(md, &columns, sizes, |c, n| {
        r.latency_at(c, n)
            .and_then(|p| p.paired.as_ref())
            .and_then(|d| d.summary)
            .map_or("—".into(), |d| {
                format!("{} / {} / {}", fmt_us(d.p50), fmt_us(d.p90), fmt_us(d.p99))
            })
    });
    md.push('\n');
}

fn programming_section(md: &mut String, r: &Results) {
    md.push_str("## Programming time\n\n");
    if not_run(md, r, "programming") {
        return;
    }
    md.push_str(
        "From nothing: the time from starting to program N services (one `iptables-restore`, \
         one `nft -f`, one `serval apply`) until the last service answers a connection from \
         the client pod; the programming command's own time in brackets. One more: one \
         service added when N exist, until it answers. Ratios are to kube-proxy iptables.\n\n",
    );
    let columns = latency_columns(r, "programming");
    let sizes = sizes_of(
        r.programming
            .iter()
            .map(|p| p.n)
            .chain(r.skipped.iter().map(|s| s.n)),
    );
    for (title, full) in [
        ("**N services from nothing, until the last answers**", true),
        ("**One service added at N, until it answers**", false),
    ] {
        let _ = writeln!(md, "{title}\n");
        sizes_table(md, &columns, &sizes, |c, n| {
            let value = |c: &str| {
                r.programming_at(c, n).and_then(|p| {
                    if full {
                        Some((p.answer_ms, Some(p.load_ms)))
                    } else {
                        p.add_one_answer_ms.map(|a| (a, p.add_one_load_ms))
                    }
                })
            };
            let base = value(PROGRAMMING_BASELINE).map(|v| v.0);
            match value(c) {
                Some((answer, load)) => {
                    let load = load
                        .map(|l| format!(" [{}]", fmt_ms(l)))
                        .unwrap_or_default();
                    if c == PROGRAMMING_BASELINE {
                        format!("{}{load}", fmt_ms(answer))
                    } else {
                        format!("{}{load}{}", fmt_ms(answer), ratio(answer, base))
                    }
                }
                None if r.skipped_at(c, n) => "skipped".into(),
                None if r.unavailable_reason("programming", c).is_some() => "n/a".into(),
                None if r.failure_at("programming", c, n).is_some() => "failed".into(),
                None => "—".into(),
            }
        });
        md.push('\n');
    }
    programming_split(md, r, &sizes);
    programming_aims(md, r);
    skipped_notes(md, r, &columns);
    unavailable_notes(md, r, "programming");
}

/// The Serval columns' times split into the datastore write (`serval apply` until it
/// returns) and the dataplane part (from then until the answer), beside kube-proxy's rule
/// load, which is all its baseline times.
fn programming_split(md: &mut String, r: &Results, sizes: &[usize]) {
    let serval: Vec<&String> = r
        .config
        .dataplanes
        .iter()
        .filter(|c| {
            r.programming
                .iter()
                .any(|p| &p.dataplane == *c && p.dataplane_ms.is_some())
        })
        .collect();
    if serval.is_empty() {
        return;
    }
    md.push_str(
        "**Serval's time split** — end-to-end (the figure above) = datastore write (from the \
         start of `serval apply` until it reports its outcome, which it prints once its \
         datastore transaction has committed: parsing, validation, the transaction; its process \
         exits later, the bracketed time above) + dataplane part (from then until the service \
         answers: the agent noticing the change, calculating and writing its rules or maps). \
         The kube-proxy baselines time only loading rules the bench generated \
         (`iptables-restore`, `nft -f`), so their figure compares with the dataplane part, not \
         with the datastore write.\n\n",
    );
    md.push_str(
        "| Column | Services | from nothing: end-to-end | datastore write | dataplane part | one more: end-to-end | datastore write | dataplane part |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let opt = |v: Option<f64>| v.map_or("—".into(), fmt_ms);
    for c in serval {
        for &n in sizes {
            let Some(p) = r.programming_at(c, n) else {
                continue;
            };
            let _ = writeln!(
                md,
                "| {c} | {n} | {} | {} | {} | {} | {} | {} |",
                fmt_ms(p.answer_ms),
                opt(p.datastore_write_ms),
                opt(p.dataplane_ms),
                opt(p.add_one_answer_ms),
                opt(p.add_one_datastore_write_ms),
                opt(p.add_one_dataplane_ms)
            );
        }
    }
    for c in ["kube-proxy-iptables", "kube-proxy-nftables"] {
        for &n in sizes {
            let Some(p) = r.programming_at(c, n) else {
                continue;
            };
            let _ = writeln!(
                md,
                "| {c} | {n} | {} | rule load {} | — | {} | rule load {} | — |",
                fmt_ms(p.answer_ms),
                fmt_ms(p.load_ms),
                opt(p.add_one_answer_ms),
                opt(p.add_one_load_ms)
            );
        }
    }
    md.push('\n');
}

/// Issue 7's programming aims for the eBPF columns, stated against the end-to-end figure
/// and, separately and labelled as such, against the dataplane part.
fn programming_aims(md: &mut String, r: &Results) {
    const AIM_N: usize = 50_000;
    let mut lines = Vec::new();
    for c in ["serval-bpf", "serval-bpf-ctlb"] {
        let Some(p) = r
            .programming
            .iter()
            .filter(|p| p.dataplane == c)
            .max_by_key(|p| p.n)
        else {
            continue;
        };
        let at = if p.n == AIM_N {
            format!("{AIM_N}")
        } else {
            format!(
                "{} (the largest N of this run; the aim is stated at {AIM_N})",
                p.n
            )
        };
        let verdict = |v: f64, aim: f64| if v < aim { "met" } else { "missed" };
        let mut line = format!(
            "- **{c}**, {at} services from nothing, aim 0.5 s: end-to-end **{}** ({}); dataplane \
             part only (after `serval apply`'s committed write) {}",
            fmt_ms(p.answer_ms),
            verdict(p.answer_ms, 500.0),
            p.dataplane_ms.map_or("not recorded".into(), |d| format!(
                "{} ({})",
                fmt_ms(d),
                verdict(d, 500.0)
            ))
        );
        if let Some(a) = p.add_one_answer_ms {
            let _ = write!(
                line,
                ".\n- **{c}**, one service added at {at}, aim 10 ms: end-to-end **{}** ({}); \
                 dataplane part only {}",
                fmt_ms(a),
                verdict(a, 10.0),
                p.add_one_dataplane_ms
                    .map_or("not recorded".into(), |d| format!(
                        "{} ({})",
                        fmt_ms(d),
                        verdict(d, 10.0)
                    ))
            );
        }
        line.push('.');
        lines.push(line);
    }
    if lines.is_empty() {
        return;
    }
    md.push_str(
        "**Issue 7's programming aims** (the end-to-end figure is the headline; the dataplane \
         part leaves out the datastore write and is shown to compare with kube-proxy's rule \
         load; \"until it answers\" is exact to about 0.5 ms under 2 s, see docs/bench.md):\n\n",
    );
    for l in lines {
        let _ = writeln!(md, "{l}");
    }
    md.push('\n');
}

fn policy_section(md: &mut String, r: &Results) {
    md.push_str("## Policy scale\n\n");
    if not_run(md, r, "policy") {
        return;
    }
    md.push_str(
        "N NetworkPolicies select the server pod; only the last allows the client. First the \
         N−1 others are applied and the bench waits until the client is blocked (\"N−1 in force\"); \
         then the allowing one is applied and timed until the client answers again (\"one more, \
         until in force\"; at N = 1 there is nothing to observe and the time is `serval apply` \
         alone, marked *apply*). Then the allowed client's new-connection latency (p50 / p99). \
         Serval's dataplanes only. Ratios are to N = 1 of the same column.\n\n",
    );
    if !r.policy.is_empty() {
        md.push_str(
            "| Column | Policies | p50 | p99 | N−1 in force | one more, until in force |\n\
             |---|---:|---:|---:|---:|---:|\n",
        );
        for p in &r.policy {
            let first = r
                .policy
                .iter()
                .filter(|q| q.dataplane == p.dataplane)
                .min_by_key(|q| q.n)
                .and_then(|q| q.summary);
            let (p50, p99) = p.summary.map_or(("—".into(), "—".into()), |s| {
                (
                    format!("{}{}", fmt_us(s.p50), ratio(s.p50, first.map(|f| f.p50))),
                    format!("{}{}", fmt_us(s.p99), ratio(s.p99, first.map(|f| f.p99))),
                )
            });
            let base = p.base_ms.map_or("—".into(), fmt_ms);
            let one = p.apply_one_ms.map_or("—".into(), |ms| {
                if p.one_more_in_force {
                    fmt_ms(ms)
                } else {
                    format!("{} *apply*", fmt_ms(ms))
                }
            });
            let _ = writeln!(
                md,
                "| {} | {} | {p50} | {p99} | {base} | {one} |",
                p.dataplane, p.n
            );
        }
        md.push('\n');
        for p in r.policy.iter().filter(|p| p.failures > 0) {
            let _ = writeln!(
                md,
                "- {} at {} policies: {} of {} exchanges failed (not in the percentiles); last error: {}",
                p.dataplane,
                p.n,
                p.failures,
                p.failures + p.samples_us.len(),
                p.last_error.as_deref().unwrap_or("unknown")
            );
        }
        if r.policy.iter().any(|p| p.failures > 0) {
            md.push('\n');
        }
    }
    unavailable_notes(md, r, "policy");
}

/// A point's rounds, in the order run (`—` for a single run).
fn rounds(values: &[f64], show: impl Fn(f64) -> String) -> String {
    if values.is_empty() {
        return "—".into();
    }
    values
        .iter()
        .map(|&v| show(v))
        .collect::<Vec<_>>()
        .join(", ")
}

fn throughput_section(md: &mut String, r: &Results) {
    md.push_str("## Throughput and request rate\n\n");
    if not_run(md, r, "throughput") {
        return;
    }
    md.push_str(
        "Single-stream TCP throughput (iperf3) and 1-byte request/response rate on one \
         connection, pod to pod on one node and across nodes. `direct` is the floor: the pods \
         with no Service or NetworkPolicy applied (the agent's base chains, which every pod's \
         traffic passes, are still there: `serval lab` has no agent-less mode). The Serval \
         columns have one NetworkPolicy selecting both server pods and allowing the client, \
         so the traffic goes through policy rules. Ratios are to `direct`. The section runs \
         in rounds: in each, every column runs once, in an order rotated by one per round, \
         and each figure is the median round's (every round is listed).\n\n",
    );
    if !r.throughput.is_empty() {
        md.push_str(
            "| Column | Path | Throughput | Retransmits | Rounds (Gbit/s) |\n|---|---|---:|---:|---|\n",
        );
        for p in &r.throughput {
            let base = r
                .throughput
                .iter()
                .find(|b| b.dataplane == LATENCY_BASELINE && b.path == p.path)
                .map(|b| b.bits_per_second);
            let ratio = if p.dataplane == LATENCY_BASELINE {
                String::new()
            } else {
                ratio(p.bits_per_second, base)
            };
            let _ = writeln!(
                md,
                "| {} | {} | {:.2} Gbit/s{ratio} | {} | {} |",
                p.dataplane,
                p.path,
                p.bits_per_second / 1e9,
                p.retransmits.map_or("—".into(), |v| v.to_string()),
                rounds(&p.rounds, |v| format!("{:.2}", v / 1e9))
            );
        }
        md.push('\n');
    }
    if !r.request_rate.is_empty() {
        md.push_str(
            "| Column | Path | Requests/s | Requests | Rounds (requests/s) |\n|---|---|---:|---:|---|\n",
        );
        for p in &r.request_rate {
            let base = r
                .request_rate
                .iter()
                .find(|b| b.dataplane == LATENCY_BASELINE && b.path == p.path)
                .map(|b| b.per_second);
            let ratio = if p.dataplane == LATENCY_BASELINE {
                String::new()
            } else {
                ratio(p.per_second, base)
            };
            let _ = writeln!(
                md,
                "| {} | {} | {:.0}{ratio} | {} | {} |",
                p.dataplane,
                p.path,
                p.per_second,
                p.requests,
                rounds(&p.rounds, |v| format!("{v:.0}"))
            );
        }
        md.push('\n');
    }
    unavailable_notes(md, r, "throughput");
}

fn memory_section(md: &mut String, r: &Results) {
    md.push_str("## Memory\n\n");
    if not_run(md, r, "memory") {
        return;
    }
    md.push_str(
        "Resident memory of node1's agent (VmRSS) and the memory of the BPF maps it holds \
         (`memlock` from /proc/PID/fdinfo).\n\n",
    );
    if !r.memory.is_empty() {
        md.push_str("| Lab | State | Agent RSS | BPF maps |\n|---|---|---:|---:|\n");
        for p in &r.memory {
            let rss = p
                .agent_rss_kib
                .map_or("—".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
            let bpf = p.bpf_map_bytes.map_or("n/a".into(), |b| {
                format!("{:.1} MiB in {} maps", b as f64 / 1048576.0, p.bpf_maps)
            });
            let _ = writeln!(md, "| {} | {} | {rss} | {bpf} |", p.dataplane, p.state);
        }
        md.push('\n');
        let mut shown: Vec<(&str, &str)> = Vec::new();
        for p in &r.memory {
            let Some(note) = p.note.as_deref() else {
                continue;
            };
            if shown.contains(&(p.dataplane.as_str(), note)) {
                continue;
            }
            shown.push((p.dataplane.as_str(), note));
            let _ = writeln!(md, "- {}: {note}", p.dataplane);
        }
        md.push('\n');
    }
    unavailable_notes(md, r, "memory");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::*;

    fn results() -> Results {
        let point = |dp: &str, n: usize, base: f64| LatencyPoint {
            dataplane: dp.into(),
            n,
            target: "10.96.1.0:80".into(),
            summary: Summary::of(&[base, base * 2.0]),
            failures: 0,
            last_error: None,
            stopped_early: false,
            samples_us: vec![base, base * 2.0],
            paired: None,
        };
        Results {
            machine: Machine::default(),
            started_utc: "2026-01-01T00:00:00Z".into(),
            finished_utc: "2026-01-01T00:01:00Z".into(),
            duration_s: 60.0,
            config: RunConfig {
                sizes: vec![1, 100],
                samples: 2,
                warmup: 0,
                sections: vec!["latency".into(), "programming".into()],
                dataplanes: vec![
                    "direct".into(),
                    "kube-proxy-iptables".into(),
                    "serval-bpf".into(),
                ],
                quick: true,
                iptables_backend: "legacy".into(),
            },
            latency: vec![
                point("direct", 1, 100.0),
                point("kube-proxy-iptables", 1, 150.0),
                point("direct", 100, 100.0),
                point("kube-proxy-iptables", 100, 300.0),
            ],
            programming: vec![ProgrammingPoint {
                dataplane: "kube-proxy-iptables".into(),
                n: 100,
                load_ms: 12.0,
                answer_ms: 14.0,
                add_one_load_ms: Some(3.0),
                add_one_answer_ms: Some(4.0),
                cleanup_ms: None,
                input_bytes: 1,
                datastore_write_ms: None,
                dataplane_ms: None,
                add_one_datastore_write_ms: None,
                add_one_dataplane_ms: None,
            }],
            policy: vec![],
            throughput: vec![],
            request_rate: vec![],
            memory: vec![],
            unavailable: vec![Unavailable {
                section: "latency".into(),
                dataplane: "serval-bpf".into(),
                reason: "not wired".into(),
            }],
            failures: vec![],
            skipped: vec![],
        }
    }

    #[test]
    fn latency_table_has_ratios_to_direct_and_na_columns() {
        let md = render(&results(), &[("latency".into(), "latency.png".into())]);
        assert!(md.contains("| Services | direct | kube-proxy-iptables | serval-bpf |"));
        // p50 (nearest rank of [x, 2x]) is x: 150/100 = 1.5×, 300/100 = 3×.
        assert!(md.contains("| 1 | 100 µs | 150 µs (1.50×) | n/a |"), "{md}");
        assert!(
            md.contains("| 100 | 100 µs | 300 µs (3.00×) | n/a |"),
            "{md}"
        );
        assert!(md.contains("- **serval-bpf**: not available: not wired"));
        assert!(md.contains("![latency](latency.png)"));
        assert!(md.contains("## Policy scale\n\nNot run"));
    }

    #[test]
    fn throughput_rows_show_the_median_round_its_ratio_and_every_round() {
        let mut r = results();
        r.config.sections.push("throughput".into());
        let t = |dp: &str, gbps: f64, rounds: &[f64]| ThroughputPoint {
            dataplane: dp.into(),
            path: "same-node".into(),
            seconds: 5.0,
            bits_per_second: gbps * 1e9,
            retransmits: Some(0),
            rounds: rounds.iter().map(|g| g * 1e9).collect(),
        };
        r.throughput = vec![
            t("direct", 10.0, &[10.0, 9.0, 11.0]),
            t("serval-bpf", 10.5, &[10.5, 12.0, 10.0]),
        ];
        r.request_rate = vec![RatePoint {
            dataplane: "direct".into(),
            path: "same-node".into(),
            seconds: 5.0,
            requests: 100,
            per_second: 20.0,
            rounds: vec![],
        }];
        let md = render(&r, &[]);
        assert!(
            md.contains("median round's (every round is listed)"),
            "{md}"
        );
        assert!(
            md.contains("| direct | same-node | 10.00 Gbit/s | 0 | 10.00, 9.00, 11.00 |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| serval-bpf | same-node | 10.50 Gbit/s (1.05×) | 0 | 10.50, 12.00, 10.00 |"
            ),
            "{md}"
        );
        // A point of a single run (an earlier results file) has no rounds.
        assert!(md.contains("| direct | same-node | 20 | 100 | — |"), "{md}");
    }

    #[test]
    fn failed_exchanges_are_listed() {
        let mut r = results();
        assert!(!render(&r, &[]).contains("Failed exchanges"));
        r.latency[0].failures = 3;
        r.latency[0].stopped_early = true;
        r.latency[0].last_error = Some("timed out".into());
        let md = render(&r, &[]);
        let line = format!(
            "- {} at N={}: 3 of 5 failed (stopped early at the failure limit); last error: timed out",
            r.latency[0].dataplane, r.latency[0].n
        );
        assert!(md.contains(&line), "{md}");
    }

    #[test]
    fn policy_rows_and_failures() {
        let mut r = results();
        r.config.sections.push("policy".into());
        let point = |n: usize, p50: f64, failures: usize| PolicyPoint {
            dataplane: "serval-iptables".into(),
            n,
            summary: Summary::of(&[p50, p50]),
            apply_one_ms: Some(20.0),
            one_more_in_force: n > 1,
            base_ms: (n > 1).then_some(100.0),
            failures,
            last_error: (failures > 0).then(|| "timed out".into()),
            samples_us: vec![p50, p50],
        };
        r.policy = vec![point(1, 30.0, 0), point(100, 60.0, 2)];
        let md = render(&r, &[]);
        assert!(
            md.contains("| serval-iptables | 1 | 30 µs (1.00×) |"),
            "{md}"
        );
        assert!(md.contains("| 20 ms *apply* |"), "{md}");
        assert!(
            md.contains(
                "| serval-iptables | 100 | 60 µs (2.00×) | 60 µs (2.00×) | 100 ms | 20 ms |"
            ),
            "{md}"
        );
        assert!(
            md.contains("- serval-iptables at 100 policies: 2 of 4 exchanges failed (not in the percentiles); last error: timed out"),
            "{md}"
        );
    }

    #[test]
    fn skipped_pairs_are_marked_and_listed() {
        let mut r = results();
        r.skipped = vec![Skipped {
            dataplane: "kube-proxy-iptables".into(),
            n: 50_000,
            reason: "skipped in the default set".into(),
        }];
        let md = render(&r, &[]);
        // A row for the skipped size even though nothing else ran there.
        assert!(md.contains("| 50000 | — | skipped | n/a |"), "{md}");
        assert!(
            md.contains("- **kube-proxy-iptables** at N=50000: skipped in the default set"),
            "{md}"
        );
    }

    /// A paired point's ratios are to its own interleaved direct samples, not to the
    /// `direct` point measured alone; the paired table shows both medians and the block
    /// spread.
    #[test]
    fn paired_ratios_use_the_interleaved_direct_samples() {
        let mut r = results();
        let column = crate::net::LatencyRun {
            samples_us: vec![300.0, 300.0, 330.0, 330.0],
            failures: 0,
            last_error: None,
            stopped_early: false,
        };
        let direct = crate::net::LatencyRun {
            samples_us: vec![150.0, 150.0, 100.0, 100.0],
            failures: 1,
            last_error: Some("timed out".into()),
            stopped_early: false,
        };
        let blocks = vec![
            BlockPair {
                column_first: true,
                column_samples: 2,
                direct_samples: 2,
                column_p50: Some(300.0),
                direct_p50: Some(150.0),
            },
            BlockPair {
                column_first: false,
                column_samples: 2,
                direct_samples: 2,
                column_p50: Some(330.0),
                direct_p50: Some(100.0),
            },
        ];
        let paired = PairedDirect::new("10.0.0.1:7777".into(), direct, 2, blocks, &column);
        assert_eq!(paired.ratio_p50, Some(3.0));
        assert_eq!(paired.block_ratios(), vec![2.0, 3.3]);
        r.latency[3].summary = Summary::of(&column.samples_us);
        r.latency[3].samples_us = column.samples_us.clone();
        r.latency[3].paired = Some(paired);
        let md = render(&r, &[]);
        // p50 300 µs over the interleaved direct p50 100 µs (the lone direct point: 100 µs
        // too, but p90 differs: 330 over 150 = 2.20×, not 330 / 200).
        assert!(
            md.contains("| 100 | 100 µs | 300 µs (3.00×) | n/a |"),
            "{md}"
        );
        assert!(
            md.contains("| 100 | 200 µs | 330 µs (2.20×) | n/a |"),
            "{md}"
        );
        assert!(
            md.contains("| 100 | 300 µs / 100 µs = 3.00× [2.00–3.30] | — |"),
            "{md}"
        );
        assert!(
            md.contains("| 100 | 100 µs / 150 µs / 150 µs | — |"),
            "{md}"
        );
        // Unpaired points keep the ratio to the direct point.
        assert!(md.contains("| 1 | 100 µs | 150 µs (1.50×) | n/a |"), "{md}");
        assert!(
            md.contains("- direct interleaved with kube-proxy-iptables at N=100: 1 of 5 failed; last error: timed out"),
            "{md}"
        );
    }

    #[test]
    fn serval_programming_is_split_and_the_aims_are_stated_both_ways() {
        let mut r = results();
        r.config.dataplanes.push("serval-bpf-ctlb".into());
        r.programming.push(ProgrammingPoint {
            dataplane: "serval-bpf".into(),
            n: 100,
            // `serval apply` exits a little after reporting its write: the split uses the
            // report, the brackets the exit.
            load_ms: 310.0,
            answer_ms: 420.0,
            add_one_load_ms: Some(19.0),
            add_one_answer_ms: Some(26.5),
            cleanup_ms: None,
            input_bytes: 1,
            datastore_write_ms: Some(300.0),
            dataplane_ms: Some(120.0),
            add_one_datastore_write_ms: Some(18.0),
            add_one_dataplane_ms: Some(8.5),
        });
        let md = render(&r, &[]);
        assert!(
            md.contains("| serval-bpf | 100 | 420 ms | 300 ms | 120 ms | 26 ms | 18 ms | 8.5 ms |"),
            "{md}"
        );
        assert!(md.contains("| 420 ms [310 ms] (30.00×) |"), "{md}");
        assert!(
            md.contains("| kube-proxy-iptables | 100 | 14 ms | rule load 12 ms | — | 4.0 ms | rule load 3.0 ms | — |"),
            "{md}"
        );
        assert!(
            md.contains("- **serval-bpf**, 100 (the largest N of this run; the aim is stated at 50000) services from nothing, aim 0.5 s: end-to-end **420 ms** (met); dataplane part only (after `serval apply`'s committed write) 120 ms (met)."),
            "{md}"
        );
        assert!(
            md.contains("one service added at 100 (the largest N of this run; the aim is stated at 50000), aim 10 ms: end-to-end **26 ms** (missed); dataplane part only 8.5 ms (met)."),
            "{md}"
        );
        // No ctlb programming point: no aim line for it.
        assert!(!md.contains("**serval-bpf-ctlb**,"), "{md}");
    }

    #[test]
    fn programming_table_shows_answer_and_load() {
        let md = render(&results(), &[]);
        assert!(md.contains("| 100 | 14 ms [12 ms] | —"), "{md}");
        assert!(md.contains("| 100 | 4.0 ms [3.0 ms] |"), "{md}");
    }
}
