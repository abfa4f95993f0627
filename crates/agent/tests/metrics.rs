//! The agent's Prometheus endpoint (`--metrics-addr`), scraped from a running agent with
//! the eBPF dataplane (root): a node namespace with two pods, FelixConfiguration
//! `bpfEnabled: true` and a default-deny policy; connections the BPF policy drops must show
//! up as `serval_bpf_drops_total{reason="policy"}`, every other drop reason (the map-full
//! ones included) is exported with its count, and the dataplane counters are there.
//!
//! Without the flag, FelixConfiguration `prometheusMetricsEnabled` / `prometheusMetricsPort`
//! turn the endpoint on (every address of the node at that port) and off again.
//!
//! The endpoints listen inside the node's own (uniquely named, deleted on drop) network
//! namespace, so tests do not collide.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serval_api::Client;
use serval_store::testing::SqliteFile;
use serval_sys::testing::require_root;

#[expect(
    dead_code,
    reason = "the shared harness has helpers this test does not use"
)]
mod common;

use common::agent::{Agent, DEFAULT_DENY, apply, config, wait_reach};
use common::node::Node;
use common::wait::wait_for;

const BPF_ON: &str = "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {name: default}\nspec: {bpfEnabled: true}\n";
const ADDR: &str = "127.0.0.1:9091";

/// One HTTP GET inside the node namespace: (status line, body).
fn get(node: &Node, path: &str) -> Result<(String, String)> {
    get_at(node, ADDR, path)
}

fn get_at(node: &Node, at: &str, path: &str) -> Result<(String, String)> {
    let addr: SocketAddr = at.parse()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {at}\r\nConnection: close\r\n\r\n");
    let resp = node.node.run(move || -> std::io::Result<String> {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        c.set_read_timeout(Some(Duration::from_secs(5)))?;
        c.write_all(req.as_bytes())?;
        let mut s = String::new();
        c.read_to_string(&mut s)?;
        Ok(s)
    })??;
    let (head, body) = resp.split_once("\r\n\r\n").context("an HTTP response")?;
    Ok((
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    ))
}

/// The value of the sample `name_and_labels` in an exposition.
fn sample(text: &str, name_and_labels: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_reports_bpf_drops_by_reason() -> Result<()> {
    if !require_root("metrics_endpoint_reports_bpf_drops_by_reason") {
        return Ok(());
    }
    let node = Node::start(
        "svag-met",
        "svag-metp",
        &[("a", "10.244.7.1"), ("b", "10.244.7.2")],
    )?;
    let store = SqliteFile::new()?;
    let client = Client::open(&store.url()).await?;
    client
        .apply(node.resources()?, serval_api::ApplyMode::Apply)
        .await?;
    apply(&client, BPF_ON).await?;
    apply(&client, DEFAULT_DENY).await?;
    let dir = tempfile::tempdir()?;
    // No resync during the test: the drop counters must be read at the scrape itself.
    let mut cfg = config(&store, &dir, Duration::from_secs(600));
    cfg.metrics_addr = Some(ADDR.parse()?);
    let pins =
        serval_dp_bpf::PinScope::new(&serval_agent::dataplane::bpf::scope_name(node.name()))?;
    let _cleanup = PinsGuard(pins);
    let mut agent = Agent::start(&node.node, cfg)?;
    agent.wait_ready().await?;

    // Denied by the eBPF policy (a few SYNs and their retransmissions are dropped).
    wait_reach(&node, "a", "b", false).await?;
    let mut last = String::new();
    wait_for("the policy drops in serval_bpf_drops_total", || {
        let scraped = get(&node, "/metrics");
        let ok = match &scraped {
            Ok((status, body)) => {
                last = format!("{status}\n{body}");
                status.contains("200")
                    && sample(body, "serval_dataplane_info{dataplane=\"bpf\"}") == Some(1)
                    && sample(body, "serval_bpf_drops_total{reason=\"policy\"}")
                        .is_some_and(|n| n > 0)
            }
            Err(e) => {
                last = e.to_string();
                false
            }
        };
        async move { Ok(ok) }
    })
    .await
    .with_context(|| format!("last scrape:\n{last}"))?;

    let (status, body) = get(&node, "/metrics")?;
    ensure!(status.starts_with("HTTP/1.1 200"), "{status}");
    // Every reason is exported, the map-full ones included (0 here).
    for reason in [
        "conntrack_full",
        "fragment",
        "malformed",
        "spoofed_source",
        "no_backend",
    ] {
        ensure!(
            sample(
                &body,
                &format!("serval_bpf_drops_total{{reason=\"{reason}\"}}")
            )
            .is_some(),
            "no {reason} sample in\n{body}"
        );
    }
    ensure!(body.contains("# TYPE serval_bpf_drops_total counter"));
    ensure!(
        sample(&body, "serval_dataplane_applies_total{dataplane=\"bpf\"}").is_some_and(|n| n > 0),
        "{body}"
    );
    ensure!(
        sample(&body, "serval_dataplane_rules{dataplane=\"bpf\"}").is_some_and(|n| n > 0),
        "{body}"
    );
    let (status, _) = get(&node, "/nothing")?;
    ensure!(status.contains("404"), "{status}");
    agent.stop()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn felix_configuration_turns_the_metrics_endpoint_on_and_off() -> Result<()> {
    if !require_root("felix_configuration_turns_the_metrics_endpoint_on_and_off") {
        return Ok(());
    }
    let node = Node::start("svag-mef", "svag-mefp", &[("a", "10.244.6.1")])?;
    let store = SqliteFile::new()?;
    let client = Client::open(&store.url()).await?;
    client
        .apply(node.resources()?, serval_api::ApplyMode::Apply)
        .await?;
    let felix = |enabled: bool| {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {{name: default}}\n\
             spec: {{prometheusMetricsEnabled: {enabled}, prometheusMetricsPort: 9092}}\n"
        )
    };
    apply(&client, &felix(true)).await?;
    let dir = tempfile::tempdir()?;
    let mut agent = Agent::start(&node.node, config(&store, &dir, Duration::from_secs(1)))?;
    agent.wait_ready().await?;
    let at = "127.0.0.1:9092";
    wait_for(
        "metrics on FelixConfiguration's prometheusMetricsPort",
        || {
            let ok = get_at(&node, at, "/metrics").is_ok_and(|(status, body)| {
                status.contains("200")
                    && sample(&body, "serval_dataplane_info{dataplane=\"iptables\"}") == Some(1)
            });
            async move { Ok(ok) }
        },
    )
    .await?;
    // Not on the flag's default address: only where FelixConfiguration says.
    ensure!(
        get(&node, "/metrics").is_err(),
        "something answers on {ADDR}"
    );
    apply(&client, &felix(false)).await?;
    wait_for("the metrics endpoint to close", || {
        let closed = get_at(&node, at, "/metrics").is_err();
        async move { Ok(closed) }
    })
    .await?;
    agent.stop()?;
    Ok(())
}

/// Removes the node's pins on drop (even on panic).
struct PinsGuard(serval_dp_bpf::PinScope);

impl Drop for PinsGuard {
    fn drop(&mut self) {
        let _ = serval_dp_bpf::cleanup(&self.0, None);
    }
}
