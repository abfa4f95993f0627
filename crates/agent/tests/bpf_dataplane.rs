//! The eBPF dataplane through the agent, with real parts (root): the same node namespace,
//! pods, sqlite store and real agent as `tests/dataplane.rs`, but FelixConfiguration
//! `bpfEnabled: true`, so the agent runs [`serval_agent::dataplane::bpf::BpfDriver`]: tc
//! programs on every pod veth, maps pinned under `/sys/fs/bpf/serval/<node netns>`. Real TCP
//! connections between the pods decide every check; while the eBPF dataplane runs the node
//! has no `SERVAL-` iptables chains or `serval-` ipsets at all (services are DNATed by BPF).
//!
//! Every namespace is a `NetNsGuard` (unique name, deleted on drop, even on panic), and the
//! pin scope is the node namespace's name, so these tests run in parallel.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use aya::maps::{Map, MapData};
use serval_agent::dataplane::bpf::scope_name;
use serval_api::{ApplyMode, Client};
use serval_dp_bpf::PinScope;
use serval_dp_bpf::abi::{Addr, NatAffKey, NatAffVal, NatBeKey, NatBeVal};
use serval_model::{Kind, Resource, ResourceKey};
use serval_store::testing::SqliteFile;
use serval_sys::testing::require_root;

mod common;

use common::agent::{
    ALLOW_A_TO_B, Agent, DEFAULT_DENY, SERVICE, apply, config, delete, wait_reach,
};
use common::node::Node;
use common::wait::wait_for;

fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("serval_agent=info,serval_dp_iptables=info,serval_dp_bpf=info")
        .try_init();
}

impl Node {
    fn new(pods: &[(&'static str, &'static str)]) -> Result<Node> {
        Node::start("svag-bpf", "svag-bpfp", pods)
    }
}

const BPF_ON: &str = "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {name: default}\nspec: {bpfEnabled: true}\n";

/// Removes the pins of the node's scope on drop (even on panic); the agent's own cleanup is
/// what the test checks, this only keeps a failed run from leaving pins behind.
struct PinsGuard(PinScope);

impl Drop for PinsGuard {
    fn drop(&mut self) {
        let _ = serval_dp_bpf::cleanup(&self.0, None);
    }
}

fn pins_of(node: &Node) -> Result<PinsGuard> {
    Ok(PinsGuard(PinScope::new(&scope_name(node.name()))?))
}

/// The TCX links the agent pinned: (interface, hook) pairs.
fn attached(pins: &PinsGuard) -> Result<Vec<(String, &'static str)>> {
    Ok(serval_dp_bpf::attachments(&pins.0)?
        .into_iter()
        .map(|(i, h, _)| (i, h.name()))
        .collect())
}

/// A TCP connection held open from pod `from` to an echo server (port 81) in pod `to`: each
/// round trip proves the established flow still passes.
struct Held {
    conn: TcpStream,
    _stop: Arc<AtomicBool>,
}

impl Held {
    fn open(node: &Node, from: &str, to: &str) -> Result<Held> {
        let stop = Arc::new(AtomicBool::new(false));
        let listener = node.pod(to).run(|| TcpListener::bind(("0.0.0.0", 81)))??;
        let flag = stop.clone();
        thread::spawn(move || {
            if let Ok((mut c, _)) = listener.accept() {
                let mut buf = [0u8; 64];
                while !flag.load(Ordering::Relaxed) {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if c.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        });
        let to: SocketAddr = format!("{}:81", node.addr(to)).parse()?;
        let conn = node
            .pod(from)
            .run(move || TcpStream::connect_timeout(&to, Duration::from_secs(2)))??;
        conn.set_read_timeout(Some(Duration::from_secs(2)))?;
        Ok(Held { conn, _stop: stop })
    }

    /// One round trip on the held connection.
    fn round_trip(&mut self, msg: &str) -> Result<()> {
        self.conn.write_all(msg.as_bytes())?;
        let mut buf = vec![0u8; msg.len()];
        self.conn.read_exact(&mut buf)?;
        ensure!(
            buf == msg.as_bytes(),
            "echo {:?}",
            String::from_utf8_lossy(&buf)
        );
        Ok(())
    }
}

async fn wait_ready_bpf(agent: &mut Agent) -> Result<()> {
    let ready = agent.wait_ready().await?;
    let path = agent.ready.clone();
    wait_for(
        "the ready file to report the programmed bpf dataplane",
        || {
            let path = path.clone();
            async move {
                let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
                Ok(v["dataplane"] == "bpf" && v["dataplane_state"] == "programmed")
            }
        },
    )
    .await
    .with_context(|| format!("first ready file: {ready}"))
}

/// No policy, default deny, allow one, a ClusterIP service DNATed by BPF (no iptables
/// chains of ours in the node), an agent restart that leaves programs attached and keeps
/// enforcing, and a switch to iptables that removes every pin and attachment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bpf_policy_services_restart_and_switch_to_iptables() -> Result<()> {
    if !require_root("bpf_policy_services_restart_and_switch_to_iptables") {
        return Ok(());
    }
    logs();
    let node = Node::new(&[
        ("a", "10.244.9.1"),
        ("b", "10.244.9.2"),
        ("c", "10.244.9.3"),
    ])?;
    let pins = pins_of(&node)?;
    let store = SqliteFile::new()?;
    let client = Client::open(&store.url()).await?;
    client.apply(node.resources()?, ApplyMode::Apply).await?;
    apply(&client, BPF_ON).await?;
    let dir = tempfile::tempdir()?;
    let resync = Duration::from_secs(2);
    let mut agent = Agent::start(&node.node, config(&store, &dir, resync))?;
    wait_ready_bpf(&mut agent).await?;

    // Programs on both hooks of every pod veth, maps pinned under the node's scope.
    let want: Vec<(String, &str)> = ["sva", "svb", "svc"]
        .iter()
        .flat_map(|i| [(i.to_string(), "from_ep"), (i.to_string(), "to_ep")])
        .collect();
    let mut have = attached(&pins)?;
    have.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    ensure!(have == want_sorted, "attachments {have:?}");
    ensure!(pins.0.map_path("sv_policy").exists(), "policy map pinned");

    // No policy: every pod reaches every other; nothing of ours in iptables.
    wait_reach(&node, "a", "b", true).await?;
    ensure!(node.reaches("c", "b") && node.reaches("b", "a"));
    let ipt = node.serval_objects()?;
    ensure!(ipt.is_empty(), "iptables objects under bpf: {ipt:#?}");

    // Default deny: blocked (by the BPF policy: the drop counter says so).
    apply(&client, DEFAULT_DENY).await?;
    wait_reach(&node, "a", "b", false).await?;
    ensure!(!node.reaches("c", "b") && !node.reaches("b", "a"));

    // Allow a -> b only.
    apply(&client, ALLOW_A_TO_B).await?;
    wait_reach(&node, "a", "b", true).await?;
    ensure!(!node.reaches("c", "b"), "c must not reach b");
    ensure!(!node.reaches("b", "a"), "b must not reach a");

    // Drift: b's ingress program detached behind the agent's back; the periodic resync
    // re-attaches it. (Traffic does not show the gap any more: on the fast path c's from_ep
    // checks b's ingress policy itself before redirecting into b, so the attachment list is
    // what tells.) Policy holds throughout.
    serval_dp_bpf::detach(
        &pins.0,
        Some(&node.node),
        "svb",
        serval_dp_bpf::Hook::ToEndpoint,
    )?;
    let detached = attached(&pins)?;
    ensure!(
        !detached.contains(&("svb".to_string(), "to_ep")),
        "svb to_ep still attached after detach: {detached:?}"
    );
    ensure!(!node.reaches("c", "b"), "c must not reach b (fast path)");
    wait_for("the resync to re-attach svb's to_ep", || {
        let back = attached(&pins)
            .map(|a| a.contains(&("svb".to_string(), "to_ep")))
            .unwrap_or(false);
        async move { Ok(back) }
    })
    .await?;
    ensure!(
        !node.reaches("c", "b"),
        "c must not reach b after the resync"
    );
    ensure!(node.reaches("a", "b"));

    // Back to no policy.
    delete(&client, Kind::K8sNetworkPolicy, Some("x"), "allow-a-to-b").await?;
    delete(&client, Kind::K8sNetworkPolicy, Some("x"), "default-deny").await?;
    wait_reach(&node, "c", "b", true).await?;

    // A ClusterIP service with two backends (b and c), DNATed by BPF.
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
            "answers seen {seen:?}, a -> 10.96.0.10:8080 now: {:?}",
            node.connect("a", "10.96.0.10:8080")
        )
    })?;
    ensure!(
        seen == ["x/b\n".to_string(), "x/c\n".to_string()].into(),
        "{seen:?}"
    );
    let ipt = node.serval_objects()?;
    ensure!(
        ipt.is_empty(),
        "the service must not use iptables: {ipt:#?}"
    );

    // ClientIP affinity entries of a backend that goes away are deleted by the agent; those
    // of a backend that stays are kept.
    let be_of = |pod: &str| -> Result<(u32, Addr, u16)> {
        let want = Addr::new(node.addr(pod).parse()?);
        let d = MapData::from_pin(pins.0.map_path("sv_nat_be"))?;
        let m: aya::maps::HashMap<MapData, NatBeKey, NatBeVal> =
            aya::maps::HashMap::try_from(Map::HashMap(d))?;
        for kv in m.iter() {
            let (k, v) = kv?;
            if v.addr == want {
                return Ok((k.svc_id, v.addr, v.port));
            }
        }
        bail!("no backend for pod {pod}")
    };
    let aff_map = || -> Result<aya::maps::HashMap<MapData, NatAffKey, NatAffVal>> {
        let d = MapData::from_pin(pins.0.map_path("sv_nat_aff"))?;
        Ok(aya::maps::HashMap::try_from(Map::LruHashMap(d))?)
    };
    let (svc_b, addr_b, port_b) = be_of("b")?;
    let (svc_c, addr_c, port_c) = be_of("c")?;
    let to_b = NatAffKey {
        client: Addr::new("192.0.2.1".parse()?),
        svc_id: svc_b,
    };
    let to_c = NatAffKey {
        client: Addr::new("192.0.2.2".parse()?),
        svc_id: svc_c,
    };
    {
        let mut aff = aff_map()?;
        for (k, addr, port) in [(to_b, addr_b, port_b), (to_c, addr_c, port_c)] {
            let v = NatAffVal {
                ts_ns: serval_dp_bpf::monotonic_now_ns(),
                addr,
                port,
                ..NatAffVal::default()
            };
            aff.insert(k, v, 0)?;
        }
    }
    {
        let key = ResourceKey::new(Kind::Pod, Some("x"), "c");
        let Some(Resource::Pod(mut pod)) = client.get(&key).await? else {
            bail!("pod c missing")
        };
        pod.metadata.labels.remove("tier");
        client
            .apply(vec![Resource::Pod(pod)], ApplyMode::Apply)
            .await?;
    }
    wait_for(
        "the affinity entry of removed backend c to be deleted",
        || {
            let gone = aff_map().map(|m| m.get(&to_c, 0).is_err());
            async move { gone }
        },
    )
    .await?;
    ensure!(
        aff_map()?.get(&to_b, 0).is_ok(),
        "the affinity entry of kept backend b must stay"
    );

    // Restart without cleanup: programs stay attached and keep enforcing while no agent
    // runs; the new agent reuses the pinned links and maps (reconciles, no flush). A
    // connection opened before the default deny is established: it keeps flowing through
    // the deny (conntrack), the stop and the restart.
    let mut held = Held::open(&node, "c", "a")?;
    held.round_trip("before deny")?;
    apply(&client, DEFAULT_DENY).await?;
    wait_reach(&node, "a", "b", false).await?;
    held.round_trip("after deny")?;
    agent.stop()?;
    held.round_trip("agent stopped")?;
    let mut kept = attached(&pins)?;
    kept.sort();
    ensure!(
        kept == want_sorted,
        "attachments kept across a stop: {kept:?}"
    );
    ensure!(!node.reaches("a", "b"), "policy enforced with no agent");
    ensure!(
        node.connect("b", "10.96.0.10:8080").is_err(),
        "default deny applies to service traffic too"
    );
    let mut agent = Agent::start(&node.node, config(&store, &dir, resync))?;
    wait_ready_bpf(&mut agent).await?;
    ensure!(!node.reaches("a", "b"));
    held.round_trip("agent restarted")?;
    ensure!(!node.reaches("c", "a"), "only the established flow passes");
    delete(&client, Kind::K8sNetworkPolicy, Some("x"), "default-deny").await?;
    wait_reach(&node, "a", "b", true).await?;
    ensure!(
        node.connect("a", "10.96.0.10:8080").is_ok(),
        "service after restart"
    );

    // Switch to iptables: every pin and attachment goes, iptables takes over.
    apply(
        &client,
        "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {name: default}\nspec: {bpfEnabled: false}\n",
    )
    .await?;
    wait_for("the pins of the node to be removed", || async {
        Ok(!pins.0.dir().exists())
    })
    .await?;
    wait_for("iptables rules to be back", || async {
        Ok(!node.serval_objects()?.is_empty())
    })
    .await?;
    apply(&client, DEFAULT_DENY).await?;
    wait_reach(&node, "a", "b", false).await?;
    ensure!(attached(&pins)?.is_empty());
    agent.stop()?;
    Ok(())
}
