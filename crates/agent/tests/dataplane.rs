//! The policy pipeline end to end with real parts (root): a "node" network namespace with
//! "pods" wired Calico-style (host veth `sv<pod>`, a /32 route to it, proxy ARP, a default
//! route via 169.254.1.1 in the pod), a temporary sqlite datastore holding the Pods and
//! their WorkloadEndpoints, and a real agent ([`serval_agent::run_until`]) on a thread in the
//! node namespace programming the iptables dataplane. Real TCP connections between the pods
//! decide every check.
//!
//! Every namespace is a `NetNsGuard` (unique name, deleted on drop, even on panic), so these
//! tests run in parallel and leave nothing behind.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serval_api::{ApplyMode, Client};
use serval_model::{Kind, Resource, ResourceKey};
use serval_store::testing::SqliteFile;
use serval_sys::testing::require_root;

mod common;

use common::agent::{
    ALLOW_A_TO_B, Agent, DEFAULT_DENY, SERVICE, apply, config, delete, wait_reach,
};
use common::node::{Node, in_ns};
use common::wait::wait_for;

fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("serval_agent=info,serval_dp_iptables=info")
        .try_init();
}

impl Node {
    fn new(pods: &[(&'static str, &'static str)]) -> Result<Node> {
        Node::start("svag-dp", "svag-dpp", pods)
    }

    fn has_chain(&self, chain: &str) -> Result<bool> {
        Ok(in_ns(self.name(), &["iptables-save", "-t", "filter"])?
            .lines()
            .any(|l| l == format!(":{chain} - [0:0]") || l.starts_with(&format!(":{chain} "))))
    }
}

/// Policy (default deny, allow one pod, delete), a ClusterIP service with two backends,
/// drift repair by the periodic resync, and cleanup on exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_services_drift_and_cleanup_through_the_agent() -> Result<()> {
    if !require_root("policy_services_drift_and_cleanup_through_the_agent") {
        return Ok(());
    }
    logs();
    let node = Node::new(&[
        ("a", "10.244.7.1"),
        ("b", "10.244.7.2"),
        ("c", "10.244.7.3"),
    ])?;
    let store = SqliteFile::new()?;
    let client = Client::open(&store.url()).await?;
    client
        .apply(node.resources()?, ApplyMode::Apply)
        .await
        .context("storing the pods")?;
    let dir = tempfile::tempdir()?;
    let resync = Duration::from_secs(2);
    let mut cfg = config(&store, &dir, resync);
    cfg.cleanup_on_exit = true;
    let mut agent = Agent::start(&node.node, cfg)?;
    let ready = agent.wait_ready().await?;
    ensure!(
        ready["dataplane"] == "iptables" && ready["dataplane_state"] == "programmed",
        "ready file names the programmed dataplane: {ready}"
    );

    // No policy: every pod reaches every other.
    ensure!(node.reaches("a", "b") && node.reaches("c", "b") && node.reaches("b", "a"));

    // Default deny (ingress, every pod of x): blocked.
    apply(&client, DEFAULT_DENY).await?;
    wait_reach(&node, "a", "b", false).await?;
    ensure!(!node.reaches("c", "b") && !node.reaches("b", "a"));

    // Allow a -> b: only a reaches b.
    apply(&client, ALLOW_A_TO_B).await?;
    wait_reach(&node, "a", "b", true).await?;
    ensure!(!node.reaches("c", "b"), "c must not reach b");
    ensure!(!node.reaches("b", "a"), "b must not reach a");

    // Drift: delete the chain that hooks into FORWARD (its jump first); c -> b opens (a hole),
    // and the periodic resync puts it back, closing the hole again.
    let fwd = "SERVAL-FORWARD";
    ensure!(node.has_chain(fwd)?, "the agent created {fwd}");
    let hook = in_ns(node.name(), &["iptables", "-S", "FORWARD"])?
        .lines()
        .find(|l| l.contains(&format!("-j {fwd}")))
        .context("FORWARD jumps to SERVAL-FORWARD")?
        .replacen("-A ", "-D ", 1);
    let mut del = vec!["iptables"];
    del.extend(hook.split_whitespace());
    in_ns(node.name(), &del)?;
    in_ns(node.name(), &["iptables", "-F", fwd])?;
    in_ns(node.name(), &["iptables", "-X", fwd])?;
    ensure!(!node.has_chain(fwd)?);
    ensure!(
        node.reaches("c", "b"),
        "with the chain gone, nothing filters c -> b"
    );
    wait_for("the deleted chain to come back by resync", || async {
        node.has_chain(fwd)
    })
    .await?;
    wait_reach(&node, "c", "b", false).await?;
    ensure!(node.reaches("a", "b"));

    // Delete the policies: open again.
    delete(&client, Kind::K8sNetworkPolicy, Some("x"), "allow-a-to-b").await?;
    delete(&client, Kind::K8sNetworkPolicy, Some("x"), "default-deny").await?;
    wait_reach(&node, "c", "b", true).await?;
    ensure!(node.reaches("b", "a"));

    // A ClusterIP service with two backends (b and c): both answer through it.
    for p in ["b", "c"] {
        let key = ResourceKey::new(Kind::Pod, Some("x"), p);
        let Some(Resource::Pod(mut pod)) = client.get(&key).await? else {
            bail!("pod {p} missing")
        };
        pod.metadata.labels.insert("tier".into(), "web".into());
        client
            .apply(vec![Resource::Pod(pod)], ApplyMode::Apply)
            .await?;
    }
    apply(&client, SERVICE).await?;
    let mut seen = std::collections::BTreeSet::new();
    wait_for("both backends to answer through the ClusterIP", || {
        if let Ok(answer) = node.connect("a", "10.96.0.10:8080") {
            seen.insert(answer);
        }
        let done = seen.len() == 2;
        async move { Ok(done) }
    })
    .await
    .with_context(|| {
        format!(
            "answers seen {seen:?}, a -> 10.96.0.10:8080 now: {:?}; nat table:\n{}",
            node.connect("a", "10.96.0.10:8080"),
            in_ns(node.name(), &["iptables-save", "-t", "nat"]).unwrap_or_default()
        )
    })?;
    ensure!(
        seen == ["x/b\n".to_string(), "x/c\n".to_string()].into(),
        "{seen:?}"
    );

    // Cleanup on exit: nothing of ours remains in the node namespace.
    ensure!(!node.serval_objects()?.is_empty());
    agent.stop()?;
    let left = node.serval_objects()?;
    ensure!(left.is_empty(), "left after cleanup-on-exit: {left:#?}");
    ensure!(
        !dir.path().join("agent.ready").exists(),
        "ready file removed"
    );
    Ok(())
}

/// Removes a node's eBPF pins on drop, even on panic.
struct PinsGuard(serval_dp_bpf::PinScope);

impl Drop for PinsGuard {
    fn drop(&mut self) {
        let _ = serval_dp_bpf::cleanup(&self.0, None);
    }
}

/// Restart keeps the rules (no cleanup by default) and reconciles; flipping bpfEnabled
/// removes the iptables dataplane completely and the eBPF dataplane enforces the same
/// policy; flipping back restores the iptables rules (and removes the eBPF pins).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_rules_and_bpf_enabled_switches_dataplanes() -> Result<()> {
    if !require_root("restart_keeps_rules_and_bpf_enabled_switches_dataplanes") {
        return Ok(());
    }
    logs();
    let node = Node::new(&[("a", "10.244.8.1"), ("b", "10.244.8.2")])?;
    // The eBPF dataplane pins under the node namespace's name; removed even if this fails.
    let _pins = PinsGuard(serval_dp_bpf::PinScope::new(
        &serval_agent::dataplane::bpf::scope_name(node.name()),
    )?);
    let store = SqliteFile::new()?;
    let client = Client::open(&store.url()).await?;
    client.apply(node.resources()?, ApplyMode::Apply).await?;
    apply(&client, DEFAULT_DENY).await?;
    let dir = tempfile::tempdir()?;
    let resync = Duration::from_secs(30);

    let mut agent = Agent::start(&node.node, config(&store, &dir, resync))?;
    agent.wait_ready().await?;
    wait_reach(&node, "a", "b", false).await?;
    // Stopped without cleanup: the rules stay and keep enforcing.
    agent.stop()?;
    let kept = node.serval_objects()?;
    ensure!(!kept.is_empty(), "rules kept across a stop");
    ensure!(
        !node.reaches("a", "b"),
        "policy still enforced with no agent"
    );
    // A new agent reconciles with them (same rules, policy unchanged throughout).
    let mut agent = Agent::start(&node.node, config(&store, &dir, resync))?;
    agent.wait_ready().await?;
    ensure!(!node.reaches("a", "b"));
    let mut after = node.serval_objects()?;
    let mut before = kept.clone();
    // Counters differ between saves; compare the rules only.
    let strip = |v: &mut Vec<String>| {
        for l in v.iter_mut() {
            if let Some(i) = l.find(" [") {
                l.truncate(i);
            }
        }
        v.sort();
    };
    strip(&mut after);
    strip(&mut before);
    ensure!(before == after, "restart reconciled without changing rules");

    // bpfEnabled for this node: the iptables dataplane goes completely.
    apply(
        &client,
        "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {name: node.node1}\nspec: {bpfEnabled: true}\n",
    )
    .await?;
    wait_for("the iptables dataplane to be removed", || async {
        Ok(node.serval_objects()?.is_empty())
    })
    .await?;
    let ready = dir.path().join("agent.ready");
    wait_for("the ready file to report the bpf dataplane", || {
        let ready = ready.clone();
        async move {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&ready)?)?;
            Ok(v["dataplane"] == "bpf")
        }
    })
    .await?;
    wait_for(
        "the ready file to report the programmed bpf dataplane",
        || {
            let ready = ready.clone();
            async move {
                let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&ready)?)?;
                Ok(v["dataplane_state"] == "programmed")
            }
        },
    )
    .await?;
    // The eBPF dataplane enforces the same policy, with no iptables objects of ours.
    ensure!(
        !node.reaches("a", "b"),
        "default deny enforced by the bpf dataplane"
    );
    ensure!(node.serval_objects()?.is_empty());

    // Back to iptables (the default FelixConfiguration says false): policy again.
    delete(&client, Kind::FelixConfiguration, None, "node.node1").await?;
    wait_reach(&node, "a", "b", false).await?;
    wait_for("the ready file to report iptables again", || {
        let ready = ready.clone();
        async move {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&ready)?)?;
            Ok(v["dataplane"] == "iptables" && v["dataplane_state"] == "programmed")
        }
    })
    .await?;
    agent.stop()?;
    Ok(())
}
