//! Prometheus `/metrics` of the agent: on `serval agent --metrics-addr ADDR`, else as
//! FelixConfiguration says (`prometheusMetricsEnabled`, `prometheusMetricsPort`, Calico's
//! names; the node's `node.NAME` configuration overrides `default`): on every address of
//! the node at that port, re-bound when the configuration changes. Off by default.
//!
//! Served on a tiny tokio listener with a hand-written text exposition (format 0.0.4): the
//! handful of counters and gauges below do not justify an HTTP server or a metrics crate.
//! Every scrape asks the dataplane driver thread for [`Dataplane::stats_now`] of the active
//! driver: its counters as of its last apply or resync, and the eBPF drop counters read from
//! the kernel at the scrape.
//!
//! Metrics:
//! - `serval_dataplane_info{dataplane}` 1 for the active dataplane (none: no dataplane).
//! - `serval_dataplane_applies_total`, `serval_dataplane_apply_failures_total`,
//!   `serval_dataplane_resyncs_total`, `serval_dataplane_resync_repairs_total`.
//! - `serval_dataplane_rules`, `serval_dataplane_rule_groups`, `serval_dataplane_sets`,
//!   `serval_dataplane_set_members` (gauges; what "rule" means is the dataplane's: iptables
//!   rules, or eBPF policy entries).
//! - `serval_dataplane_conntrack_entries` (gauge), `serval_dataplane_conntrack_expired_total`.
//! - `serval_bpf_drops_total{reason}`: packets the eBPF programs dropped, per reason
//!   (`policy`, `conntrack_full`, `fragment`, … as [`serval_dp_bpf::abi::drop_reason_name`]
//!   names them); every reason is listed, 0 included, while the eBPF dataplane is active.
//!
//! [`Dataplane::stats_now`]: crate::dataplane::Dataplane::stats_now

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serval_dp_bpf::abi::{SV_DROP_REASONS, drop_reason_name};
use serval_model::{Kind, Resource, ResourceKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::cache::ResourceChange;
use crate::dataplane::{DataplaneStats, DriverThread};

/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request head read.
const MAX_REQUEST: usize = 8192;

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("serving /metrics on {addr}: {source}; pick a free address with --metrics-addr")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The active dataplane's name and stats, or None when there is no driver.
pub type Snapshot = Option<(&'static str, DataplaneStats)>;

/// The Prometheus text exposition of one snapshot.
pub fn render(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let Some((dp, s)) = snapshot else {
        family(
            "serval_dataplane_info",
            "gauge",
            "The active dataplane (no sample: none is running).",
            &[],
        );
        return out;
    };
    let l = format!("{{dataplane=\"{dp}\"}}");
    let one = |v: u64| vec![(l.clone(), v)];
    let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
    family(
        "serval_dataplane_info",
        "gauge",
        "The active dataplane.",
        &one(1),
    );
    family(
        "serval_dataplane_applies_total",
        "counter",
        "Desired states applied.",
        &one(s.applies),
    );
    family(
        "serval_dataplane_apply_failures_total",
        "counter",
        "Applies that failed (the previous state stayed in force).",
        &one(s.apply_failures),
    );
    family(
        "serval_dataplane_resyncs_total",
        "counter",
        "Periodic resyncs with the kernel.",
        &one(s.resyncs),
    );
    family(
        "serval_dataplane_resync_repairs_total",
        "counter",
        "Resyncs that found and repaired drift.",
        &one(s.resync_repairs),
    );
    family(
        "serval_dataplane_rule_groups",
        "gauge",
        "Rule containers programmed (iptables chains; eBPF endpoints).",
        &one(n(s.rule_groups)),
    );
    family(
        "serval_dataplane_rules",
        "gauge",
        "Rules programmed (iptables rules; eBPF policy entries).",
        &one(n(s.rules)),
    );
    family(
        "serval_dataplane_sets",
        "gauge",
        "Sets programmed (ipsets; eBPF service frontends).",
        &one(n(s.sets)),
    );
    family(
        "serval_dataplane_set_members",
        "gauge",
        "Members of the sets (ipset members; eBPF routes and backends).",
        &one(n(s.set_members)),
    );
    family(
        "serval_dataplane_conntrack_entries",
        "gauge",
        "Flows in the dataplane's own conntrack (eBPF).",
        &one(n(s.conntrack_entries)),
    );
    family(
        "serval_dataplane_conntrack_expired_total",
        "counter",
        "Flows the conntrack cleaner expired (eBPF).",
        &one(s.conntrack_expired),
    );
    if *dp == "bpf" {
        let samples: Vec<(String, u64)> = (0..SV_DROP_REASONS)
            .filter(|r| drop_reason_name(*r) != "unused")
            .map(|r| {
                let name = drop_reason_name(r);
                (format!("{{reason=\"{name}\"}}"), s.drop_counters.get(r))
            })
            .collect();
        family(
            "serval_bpf_drops_total",
            "counter",
            "Packets the eBPF programs dropped, by reason.",
            &samples,
        );
    }
    out
}

/// Binds the listener (before the agent starts, so a busy address fails the start).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Serves `/metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, driver: DriverThread) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving Prometheus metrics on /metrics");
    }
    loop {
        let (conn, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let driver = driver.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(conn, &driver).await {
                tracing::debug!(%peer, error = %e, "metrics request failed");
            }
        });
    }
}

/// The FelixConfiguration resources, for the effective `prometheusMetrics*` of a node.
#[derive(Default)]
struct FelixConfigs(BTreeMap<ResourceKey, Resource>);

impl FelixConfigs {
    /// Absorbs one change; true when a FelixConfiguration changed.
    fn absorb(&mut self, change: ResourceChange) -> bool {
        match change {
            ResourceChange::Replaced(all) => {
                let fresh: BTreeMap<ResourceKey, Resource> = all
                    .into_iter()
                    .filter(|r| r.kind() == Kind::FelixConfiguration)
                    .map(|r| (r.key(), r))
                    .collect();
                let changed = fresh != self.0;
                self.0 = fresh;
                changed
            }
            ResourceChange::Applied(r) if r.kind() == Kind::FelixConfiguration => {
                self.0.insert(r.key(), *r);
                true
            }
            ResourceChange::Deleted(k) if k.kind == Kind::FelixConfiguration => {
                self.0.remove(&k).is_some()
            }
            _ => false,
        }
    }

    /// The port FelixConfiguration asks metrics on for `node`, if enabled.
    fn port(&self, node: &str) -> Option<u16> {
        let model = serval_calc::Model::from_resources(self.0.values().cloned());
        let felix = model.felix(Some(node));
        felix
            .prometheus_metrics_enabled
            .then_some(felix.prometheus_metrics_port)
    }
}

/// Binds every address of the node at `port` (`[::]`, dual-stack; `0.0.0.0` where IPv6 is
/// off), as Calico's empty `prometheusMetricsHost` does.
async fn bind_any(port: u16) -> Result<TcpListener, MetricsError> {
    match bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))).await {
        Ok(l) => Ok(l),
        Err(_) => bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))).await,
    }
}

/// Serves `/metrics` for the agent's lifetime: on `flag` (already bound) when the command
/// line gave an address, else wherever FelixConfiguration asks (followed through
/// `changes`), re-bound when it changes and closed when it is disabled.
pub async fn run(
    flag: Option<TcpListener>,
    node: String,
    mut changes: mpsc::UnboundedReceiver<ResourceChange>,
    driver: DriverThread,
) {
    if let Some(listener) = flag {
        // The command line wins; FelixConfiguration is not consulted.
        drop(changes);
        return serve(listener, driver).await;
    }
    let mut felix = FelixConfigs::default();
    let mut current: Option<(u16, JoinHandle<()>)> = None;
    while let Some(change) = changes.recv().await {
        if !felix.absorb(change) {
            continue;
        }
        let want = felix.port(&node);
        if current.as_ref().map(|c| c.0) == want {
            continue;
        }
        if let Some((port, task)) = current.take() {
            task.abort();
            let _ = task.await;
            tracing::info!(port, "metrics endpoint closed (FelixConfiguration changed)");
        }
        let Some(port) = want else { continue };
        match bind_any(port).await {
            Ok(listener) => {
                let task = tokio::spawn(serve(listener, driver.clone()));
                current = Some((port, task));
            }
            Err(e) => tracing::warn!(
                error = %e,
                "FelixConfiguration prometheusMetricsEnabled: cannot serve metrics; change \
                 prometheusMetricsPort"
            ),
        }
    }
    if let Some((_, task)) = current {
        task.abort();
    }
}

/// The active driver's name and stats, from the driver thread.
async fn snapshot(driver: &DriverThread) -> Snapshot {
    driver
        .call(|slot| slot.as_mut().map(|dp| (dp.name(), dp.stats_now())))
        .await
        .ok()
        .flatten()
}

async fn handle(mut conn: TcpStream, driver: &DriverThread) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let read = async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<(), std::io::Error>(())
    };
    if tokio::time::timeout(READ_TIMEOUT, read).await.is_err() {
        return Ok(());
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, body, ctype) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            render(&snapshot(driver).await),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        ("GET", _) => (
            "404 Not Found",
            "not found; metrics are at /metrics\n".to_string(),
            "text/plain",
        ),
        _ => (
            "405 Method Not Allowed",
            "only GET\n".to_string(),
            "text/plain",
        ),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(resp.as_bytes()).await?;
    conn.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_drop_reason_of_the_bpf_dataplane() {
        let mut s = DataplaneStats {
            applies: 3,
            rules: 42,
            ..DataplaneStats::default()
        };
        s.drop_counters.0[3] = 7; // SV_DROP_POLICY
        s.drop_counters.0[5] = 2; // SV_DROP_CT_FULL
        let text = render(&Some(("bpf", s)));
        assert!(
            text.contains("serval_bpf_drops_total{reason=\"policy\"} 7\n"),
            "{text}"
        );
        assert!(text.contains("serval_bpf_drops_total{reason=\"conntrack_full\"} 2\n"));
        assert!(text.contains("serval_bpf_drops_total{reason=\"fragment\"} 0\n"));
        assert!(!text.contains("unused"));
        assert!(text.contains("serval_dataplane_applies_total{dataplane=\"bpf\"} 3\n"));
        assert!(text.contains("serval_dataplane_rules{dataplane=\"bpf\"} 42\n"));
        assert!(text.contains("# TYPE serval_bpf_drops_total counter\n"));
        // Every sample line is `name{labels} value` of a declared family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.split_once(' ').expect("name and value");
            let family = name.split('{').next().unwrap_or_default();
            assert!(text.contains(&format!("# TYPE {family} ")), "{line}");
            value.parse::<u64>().expect("integer value");
        }
        // iptables: no eBPF drop families.
        let text = render(&Some(("iptables", DataplaneStats::default())));
        assert!(!text.contains("serval_bpf_drops_total"));
        assert!(text.contains("serval_dataplane_info{dataplane=\"iptables\"} 1\n"));
    }
}
