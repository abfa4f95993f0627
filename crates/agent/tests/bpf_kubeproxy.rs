//! Kube-proxy coexistence through the real agent (root): a node namespace loaded with
//! kube-proxy-style rules (iptables nat and filter, IPv4 and IPv6, and the nftables tables of
//! its nftables mode) whose DNAT for the ClusterIP points at an address that does not
//! exist, then the eBPF dataplane:
//!
//! - `bpfKubeProxyIptablesCleanupEnabled: false`: every kube-proxy rule and table is left
//!   exactly as it was, and the ClusterIP still answers from the real backend (the tc
//!   programs NAT before netfilter, so kube-proxy's stale DNAT never sees the packet);
//! - flipped to `true`: every `KUBE-*` chain (but kubelet's `KUBE-KUBELET-CANARY`), the jumps
//!   to them and the `kube-proxy` nftables tables are gone, other chains and rules are
//!   untouched, and the ClusterIP still answers.
//!
//! Every namespace is a `NetNsGuard` (unique name, deleted on drop, even on panic).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serval_agent::dataplane::bpf::scope_name;
use serval_api::{ApplyMode, Client};
use serval_dp_bpf::PinScope;
use serval_model::{Kind, Resource, ResourceKey};
use serval_store::testing::SqliteFile;
use serval_sys::testing::require_root;

#[expect(
    dead_code,
    reason = "the shared harness has helpers this test does not use"
)]
mod common;

use common::agent::{Agent, SERVICE, apply, config};
use common::node::{Node, in_ns};
use common::wait::wait_for;

struct PinsGuard(PinScope);

impl Drop for PinsGuard {
    fn drop(&mut self) {
        let _ = serval_dp_bpf::cleanup(&self.0, None);
    }
}

/// Runs `cmd` in `ns` with `input` on stdin.
fn in_ns_stdin(ns: &str, cmd: &[&str], input: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{cmd:?} in {ns}: {}\ninput:\n{input}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// kube-proxy's iptables mode for one ClusterIP service (10.96.0.10:8080, chain names with
/// its hashes), NodePort and external chains, kube-proxy's canary, kubelet's canary, and a
/// chain of someone else (`OTHER-FW`, jumped to from INPUT) that must survive. The DNAT
/// points at 10.244.99.99:80, which does not exist: if netfilter ever DNATed the service,
/// connections would fail.
///
/// kube-proxy's `KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP` is included: the tc
/// programs send same-node service traffic (and its reverse-NATed replies) into the pod with
/// `bpf_redirect_peer`, past netfilter, so netfilter never sees a reply it would call INVALID.
const KUBE_PROXY_V4: &str = "*nat
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-PROXY-CANARY - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-SVC-ERIFXISQEP7F7OF4 - [0:0]
:KUBE-SEP-6E7XQMQ4RAYOWTTM - [0:0]
:KUBE-EXT-ERIFXISQEP7F7OF4 - [0:0]
:KUBE-FW-ERIFXISQEP7F7OF4 - [0:0]
-I PREROUTING 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-I OUTPUT 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-I POSTROUTING 1 -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment \"x/web cluster IP\" -m tcp --dport 8080 -j KUBE-SVC-ERIFXISQEP7F7OF4
-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-NODEPORTS -p tcp -m comment --comment \"x/web\" -m tcp --dport 30080 -j KUBE-EXT-ERIFXISQEP7F7OF4
-A KUBE-EXT-ERIFXISQEP7F7OF4 -m comment --comment \"masquerade traffic for x/web external destinations\" -j KUBE-MARK-MASQ
-A KUBE-EXT-ERIFXISQEP7F7OF4 -j KUBE-SVC-ERIFXISQEP7F7OF4
-A KUBE-FW-ERIFXISQEP7F7OF4 -j KUBE-MARK-MASQ
-A KUBE-SVC-ERIFXISQEP7F7OF4 ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp -m comment --comment \"x/web cluster IP\" -m tcp --dport 8080 -j KUBE-MARK-MASQ
-A KUBE-SVC-ERIFXISQEP7F7OF4 -m comment --comment \"x/web -> 10.244.99.99:80\" -j KUBE-SEP-6E7XQMQ4RAYOWTTM
-A KUBE-SEP-6E7XQMQ4RAYOWTTM -s 10.244.99.99/32 -m comment --comment x/web -j KUBE-MARK-MASQ
-A KUBE-SEP-6E7XQMQ4RAYOWTTM -p tcp -m comment --comment x/web -m tcp -j DNAT --to-destination 10.244.99.99:80
COMMIT
*filter
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-PROXY-CANARY - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:OTHER-FW - [0:0]
-I INPUT 1 -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-I INPUT 1 -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS
-I INPUT 1 -j KUBE-FIREWALL
-I INPUT 1 -j OTHER-FW
-I FORWARD 1 -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
-I FORWARD 1 -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-I OUTPUT 1 -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-I OUTPUT 1 -j KUBE-FIREWALL
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment \"block incoming localnet connections\" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A OTHER-FW -p tcp -m tcp --dport 9999 -j ACCEPT
COMMIT
";

const KUBE_PROXY_V6: &str = "*nat
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-ZJHOSXPEFBAM2Y6N - [0:0]
-I PREROUTING 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-I POSTROUTING 1 -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-SERVICES -d fd00:10:96::10/128 -p tcp -m tcp --dport 8080 -j KUBE-SVC-ZJHOSXPEFBAM2Y6N
COMMIT
*filter
:KUBE-FORWARD - [0:0]
:OTHER6 - [0:0]
-I FORWARD 1 -j KUBE-FORWARD
-A OTHER6 -j ACCEPT
COMMIT
";

/// kube-proxy's nftables mode (a small part of it) for both families, and a table of
/// someone else's.
const KUBE_PROXY_NFT: &str = "add table ip kube-proxy { comment \"rules for kube-proxy\" ; }
add chain ip kube-proxy mark-for-masquerade
add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000
add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }
add rule ip kube-proxy nat-prerouting ip daddr 10.96.0.10 tcp dport 8080 dnat to 10.244.99.99:80
add table ip6 kube-proxy { comment \"rules for kube-proxy\" ; }
add chain ip6 kube-proxy mark-for-masquerade
add table inet other-nft
add chain inet other-nft c
";

/// The rule and chain lines of `tool` in the node, counters stripped, sorted.
fn rules(node: &Node, tool: &str) -> Result<Vec<String>> {
    let mut out: Vec<String> = in_ns(node.name(), &[tool])?
        .lines()
        .filter(|l| l.starts_with(':') || l.starts_with("-A") || l.starts_with('*'))
        .map(|l| match l.split_once(" [") {
            Some((head, _)) if l.starts_with(':') => head.to_string(),
            _ => l.to_string(),
        })
        .collect();
    out.sort();
    Ok(out)
}

fn nft_tables(node: &Node) -> Result<String> {
    in_ns(node.name(), &["nft", "list", "tables"])
}

fn felix(cleanup: bool) -> String {
    format!(
        "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {{name: default}}\nspec: {{bpfEnabled: true, bpfKubeProxyIptablesCleanupEnabled: {cleanup}}}\n"
    )
}

/// The ClusterIP answers from pod a (its backend is pod b).
async fn service_answers(node: &Node) -> Result<()> {
    wait_for("the ClusterIP to answer from b", || async {
        Ok(node.connect("a", "10.96.0.10:8080").as_deref() == Ok("x/b\n"))
    })
    .await
    .with_context(|| {
        format!(
            "a -> 10.96.0.10:8080: {:?}",
            node.connect("a", "10.96.0.10:8080")
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_proxy_rules_left_alone_or_removed_and_services_answer_either_way() -> Result<()> {
    if !require_root("kube_proxy_rules_left_alone_or_removed_and_services_answer_either_way") {
        return Ok(());
    }
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("serval_agent=info")
        .try_init();
    let node = Node::start(
        "svag-kp",
        "svag-kpp",
        &[("a", "10.244.6.1"), ("b", "10.244.6.2")],
    )?;
    let _pins = PinsGuard(PinScope::new(&scope_name(node.name()))?);
    in_ns_stdin(
        node.name(),
        &["iptables-restore", "--noflush"],
        KUBE_PROXY_V4,
    )?;
    in_ns_stdin(
        node.name(),
        &["ip6tables-restore", "--noflush"],
        KUBE_PROXY_V6,
    )?;
    in_ns_stdin(node.name(), &["nft", "-f", "-"], KUBE_PROXY_NFT)?;
    let v4_before = rules(&node, "iptables-save")?;
    let v6_before = rules(&node, "ip6tables-save")?;
    let nft_before = nft_tables(&node)?;
    ensure!(nft_before.contains("table ip kube-proxy"), "{nft_before}");

    let store = SqliteFile::new()?;
    let client = Client::open(&store.url()).await?;
    client.apply(node.resources()?, ApplyMode::Apply).await?;
    let key = ResourceKey::new(Kind::Pod, Some("x"), "b");
    let Some(Resource::Pod(mut pod)) = client.get(&key).await? else {
        bail!("pod b missing")
    };
    pod.metadata.labels.insert("tier".into(), "web".into());
    client
        .apply(vec![Resource::Pod(pod)], ApplyMode::Apply)
        .await?;
    apply(&client, SERVICE).await?;
    apply(&client, &felix(false)).await?;
    let dir = tempfile::tempdir()?;
    let mut agent = Agent::start(&node.node, config(&store, &dir, Duration::from_secs(1)))?;
    agent.wait_ready().await?;

    // false: the service answers through BPF NAT; kube-proxy's state is exactly as it was,
    // also after several resyncs.
    service_answers(&node).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    service_answers(&node).await?;
    let filter_kube = |v: &[String]| -> Vec<String> {
        v.iter()
            .filter(|l| l.contains("KUBE-") || l.starts_with('*'))
            .cloned()
            .collect()
    };
    ensure!(
        filter_kube(&rules(&node, "iptables-save")?) == filter_kube(&v4_before),
        "IPv4 kube-proxy rules changed with cleanup disabled"
    );
    ensure!(
        filter_kube(&rules(&node, "ip6tables-save")?) == filter_kube(&v6_before),
        "IPv6 kube-proxy rules changed with cleanup disabled"
    );
    ensure!(nft_tables(&node)? == nft_before, "nftables changed");

    // true: kube-proxy's chains, jumps and tables are removed; everything else stays.
    apply(&client, &felix(true)).await?;
    wait_for("kube-proxy's rules to be removed", || async {
        let v4 = rules(&node, "iptables-save")?;
        let v6 = rules(&node, "ip6tables-save")?;
        let nft = nft_tables(&node)?;
        Ok(!v4
            .iter()
            .chain(&v6)
            .any(|l| l.contains("KUBE-") && !l.contains("KUBE-KUBELET-CANARY"))
            && !nft.contains("kube-proxy"))
    })
    .await?;
    let keep = |v: &[String]| -> Vec<String> {
        v.iter()
            .filter(|l| !l.contains("KUBE-") || l.contains("KUBE-KUBELET-CANARY"))
            .cloned()
            .collect()
    };
    let v4_after = rules(&node, "iptables-save")?;
    ensure!(
        keep(&v4_after) == keep(&v4_before),
        "other IPv4 rules changed:\nbefore {:#?}\nafter {:#?}",
        keep(&v4_before),
        keep(&v4_after)
    );
    ensure!(
        v4_after
            .iter()
            .any(|l| l == "-A OTHER-FW -p tcp -m tcp --dport 9999 -j ACCEPT")
            && v4_after.iter().any(|l| l == "-A INPUT -j OTHER-FW"),
        "{v4_after:#?}"
    );
    ensure!(
        v4_after
            .iter()
            .filter(|l| l.contains("KUBE-KUBELET-CANARY"))
            .count()
            == 2,
        "kubelet's canaries stay: {v4_after:#?}"
    );
    let v6_after = rules(&node, "ip6tables-save")?;
    ensure!(
        keep(&v6_after) == keep(&v6_before),
        "other IPv6 rules changed: {v6_after:#?}"
    );
    let nft = nft_tables(&node)?;
    ensure!(nft.contains("table inet other-nft"), "{nft}");
    service_answers(&node).await?;

    agent.stop().context("agent stop")?;
    Ok(())
}
