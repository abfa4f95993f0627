//! Two "nodes" (network namespaces joined by a veth underlay), a temporary sqlite datastore
//! with Nodes, IPPools and blocks claimed through serval-ipam, and one real agent
//! ([`serval_agent::run`]) per node on a thread inside its namespace. Checks that each agent
//! programs the routes the cluster calls for, that "pods" (the IPAM addresses, put on each
//! node's loopback) reach each other over IPv4 and IPv6 natively and over VXLAN, and that a
//! node's routes go when the node does.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ipnet::IpNet;
use serval_agent::AgentConfig;
use serval_agent::routes::{Family, VXLAN_V4_DEVICE, VXLAN_V6_DEVICE, vxlan_next_hop};
use serval_api::{ApplyMode, Client};
use serval_ipam::{AllocationAttrs, AssignRequest, Ipam, PoolSpec};
use serval_model::calico::{Encapsulation, IPPool, Node, NodeBgpSpec, NodeSpec};
use serval_model::{Kind, ObjectMeta, Resource, ResourceKey};
use serval_store::testing::SqliteFile;
use serval_sys::testing::{NetNsGuard, require_root};
use serval_sys::{IpFamily, NetNs, RTPROT_SERVAL, Route, RouteKind, Veth};
use tokio::sync::oneshot;

#[path = "common/wait.rs"]
mod wait;

use wait::wait_for;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}
fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("serval_agent=info")
        .try_init();
}

const V4_POOL: &str = "10.244.0.0/16";
const V6_POOL: &str = "fd00:10:244::/112";

fn node_resource(name: &str, v4: &str, v6: &str) -> Resource {
    Resource::Node(Node {
        metadata: ObjectMeta::named(name),
        spec: NodeSpec {
            bgp: Some(NodeBgpSpec {
                ipv4_address: Some(net(v4)),
                ipv6_address: Some(net(v6)),
                ..Default::default()
            }),
            ..Default::default()
        },
    })
}

fn pools(encap: Encapsulation) -> Vec<Resource> {
    let mut v4 = IPPool::new("default-ipv4-ippool", net(V4_POOL));
    v4.spec.block_size = Some(26);
    v4.spec.encapsulation = encap;
    let mut v6 = IPPool::new("default-ipv6-ippool", net(V6_POOL));
    v6.spec.block_size = Some(122);
    v6.spec.encapsulation = encap;
    vec![Resource::IPPool(v4), Resource::IPPool(v6)]
}

/// One agent running on its own thread inside a node namespace; stopped on drop.
struct Agent {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<serval_sys::Result<Result<(), String>>>>,
    ready: PathBuf,
}

impl Agent {
    fn start(ns: &NetNs, config: AgentConfig) -> Result<Agent> {
        let ready = config
            .ready_file
            .clone()
            .context("test agents have a ready file")?;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = ns.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            // Dropping the runtime at the end cancels every task of the agent.
            rt.block_on(async {
                tokio::select! {
                    r = serval_agent::run(config) => r.map_err(|e| e.to_string()),
                    _ = stopped => Ok(()),
                }
            })
        })?;
        Ok(Agent {
            stop: Some(stop),
            thread: Some(thread),
            ready,
        })
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let ready = self.ready.clone();
        wait_for("agent ready file", || {
            let ready = ready.clone();
            async move { Ok(ready.exists()) }
        })
        .await
        .with_context(|| {
            if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
                let r = self.thread.take().map(|t| t.join());
                format!("the agent stopped: {r:?}")
            } else {
                "the agent is still running".into()
            }
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serval_route(ns: &NetNs, dst: &str) -> Result<Option<Route>> {
    let nl = ns.netlink()?;
    let family = if dst.contains(':') {
        IpFamily::V6
    } else {
        IpFamily::V4
    };
    Ok(nl
        .routes(family, Some(RTPROT_SERVAL))
        .await?
        .into_iter()
        .find(|r| r.dst == net(dst)))
}

/// Waits until `ns` routes `dst` via `gw` out of link `dev`.
async fn wait_route(ns: &NetNs, dst: &str, gw: IpAddr, dev: &str) -> Result<()> {
    wait_for(&format!("route {dst} via {gw} dev {dev}"), || async move {
        let nl = ns.netlink()?;
        let Ok(index) = nl.link_index(dev).await else {
            return Ok(false);
        };
        Ok(serval_route(ns, dst).await?.is_some_and(|r| {
            r.gateway == Some(gw) && r.oif == Some(index) && r.kind == RouteKind::Unicast
        }))
    })
    .await
}

/// TCP from `from_ns`, bound to the "pod" address `src`, to the "pod" address `dst` in
/// `to_ns`: the server answers with its address.
fn pod_to_pod(from_ns: &NetNs, src: IpAddr, to_ns: &NetNs, dst: IpAddr) -> Result<()> {
    let listener = to_ns.run(move || TcpListener::bind(SocketAddr::new(dst, 0)))??;
    let addr = listener.local_addr()?;
    let server = thread::spawn(move || -> Result<()> {
        let (mut conn, peer) = listener.accept()?;
        conn.write_all(format!("{}\n", peer.ip()).as_bytes())?;
        Ok(())
    });
    let answer = from_ns.run(move || -> Result<String> {
        let mut last = None;
        for _ in 0..50 {
            let sock = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            sock.bind(&SocketAddr::new(src, 0).into())?;
            match sock.connect_timeout(&addr.into(), Duration::from_millis(500)) {
                Ok(()) => {
                    let mut conn: TcpStream = sock.into();
                    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
                    let mut out = String::new();
                    conn.read_to_string(&mut out)?;
                    return Ok(out);
                }
                Err(e) => {
                    last = Some(e);
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
        bail!("connecting {src} -> {addr}: {last:?}")
    })??;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    // The server saw the pod address, not a node address: the path carried pod traffic.
    assert_eq!(answer.trim(), src.to_string());
    Ok(())
}

struct Cluster {
    a: NetNsGuard,
    b: NetNsGuard,
    client: Client,
    store: SqliteFile,
    dir: tempfile::TempDir,
    /// Each node's pod addresses (v4, v6).
    pods_a: Vec<IpAddr>,
    pods_b: Vec<IpAddr>,
}

async fn cluster(encap: Encapsulation) -> Result<Cluster> {
    let a = NetNsGuard::new("svag-2n-a")?;
    let b = NetNsGuard::new("svag-2n-b")?;
    let nla = a.netlink()?;
    let nlb = b.netlink()?;
    nla.veth_add(&Veth::new("eth0", "eth0").peer_netns(&b))
        .await?;
    for (nl, v4, v6) in [
        (&nla, "172.31.7.11/24", "fd00:5e:7::11/64"),
        (&nlb, "172.31.7.12/24", "fd00:5e:7::12/64"),
    ] {
        nl.link_set_up("lo").await?;
        nl.link_set_up("eth0").await?;
        nl.addr_add("eth0", net(v4)).await?;
        nl.addr_add("eth0", net(v6)).await?;
    }

    let store = SqliteFile::new()?;
    let client = Client::open(&store.url()).await?;
    let mut resources = vec![
        node_resource("node1", "172.31.7.11/24", "fd00:5e:7::11/64"),
        node_resource("node2", "172.31.7.12/24", "fd00:5e:7::12/64"),
    ];
    resources.extend(pools(encap));
    client.apply(resources, ApplyMode::Apply).await?;

    // Each node claims a block per family by allocating one address (its "pod").
    let ipam = Ipam::new(Arc::clone(client.store()));
    let mut pods = Vec::new();
    for node in ["node1", "node2"] {
        let addrs = ipam
            .auto_assign(AssignRequest {
                handle: format!("pod-on-{node}"),
                node: node.into(),
                attrs: AllocationAttrs {
                    node: node.into(),
                    ..Default::default()
                },
                v4_pools: vec![PoolSpec::new("default-ipv4-ippool", net(V4_POOL), 26)],
                v6_pools: vec![PoolSpec::new("default-ipv6-ippool", net(V6_POOL), 122)],
                want_v4: true,
                want_v6: true,
            })
            .await?;
        assert_eq!(addrs.len(), 2, "one address per family: {addrs:?}");
        pods.push(addrs);
    }
    for (nl, addrs) in [(&nla, &pods[0]), (&nlb, &pods[1])] {
        for addr in addrs {
            nl.addr_add("lo", IpNet::from(*addr)).await?;
        }
    }
    let pods_b = pods.pop().unwrap_or_default();
    let pods_a = pods.pop().unwrap_or_default();
    Ok(Cluster {
        a,
        b,
        client,
        store,
        dir: tempfile::tempdir()?,
        pods_a,
        pods_b,
    })
}

impl Cluster {
    fn agent(&self, ns: &NetNs, node: &str) -> Result<Agent> {
        let mut config = AgentConfig::new(node, self.store.url());
        config.ready_file = Some(self.dir.path().join(format!("{node}.ready")));
        config.resync_interval = Duration::from_secs(2);
        Agent::start(ns, config)
    }

    fn block_of(addr: IpAddr) -> String {
        match addr {
            IpAddr::V4(_) => IpNet::new(addr, 26).unwrap().trunc().to_string(),
            IpAddr::V6(_) => IpNet::new(addr, 122).unwrap().trunc().to_string(),
        }
    }

    fn connectivity(&self) -> Result<()> {
        for (sa, sb) in self.pods_a.iter().zip(&self.pods_b) {
            pod_to_pod(&self.a, *sa, &self.b, *sb).with_context(|| format!("{sa} -> {sb}"))?;
            pod_to_pod(&self.b, *sb, &self.a, *sa).with_context(|| format!("{sb} -> {sa}"))?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_route_pods_natively_then_over_vxlan_and_forget_a_removed_node() -> Result<()> {
    if !require_root("two_agents_route_pods_natively_then_over_vxlan_and_forget_a_removed_node") {
        return Ok(());
    }
    logs();
    let c = cluster(Encapsulation::None).await?;
    let mut agent_a = c.agent(&c.a, "node1")?;
    let mut agent_b = c.agent(&c.b, "node2")?;
    agent_a.wait_ready().await?;
    agent_b.wait_ready().await?;

    // Native: each node routes the other's blocks via its underlay address, blackholes its own.
    for (ns, own, other, gw4, gw6) in [
        (&c.a, &c.pods_a, &c.pods_b, "172.31.7.12", "fd00:5e:7::12"),
        (&c.b, &c.pods_b, &c.pods_a, "172.31.7.11", "fd00:5e:7::11"),
    ] {
        wait_route(ns, &Cluster::block_of(other[0]), ip(gw4), "eth0").await?;
        wait_route(ns, &Cluster::block_of(other[1]), ip(gw6), "eth0").await?;
        for addr in own {
            let r = serval_route(ns, &Cluster::block_of(*addr))
                .await?
                .context("own block route")?;
            assert_eq!(r.kind, RouteKind::Blackhole);
        }
    }
    c.connectivity().context("native routing")?;

    // Switch the pools to VXLAN: the agents follow the change from the watch.
    c.client
        .apply(pools(Encapsulation::Vxlan), ApplyMode::Apply)
        .await?;
    for (ns, other, peer, gw4, gw6) in [
        (&c.a, &c.pods_b, "node2", "172.31.7.12", "fd00:5e:7::12"),
        (&c.b, &c.pods_a, "node1", "172.31.7.11", "fd00:5e:7::11"),
    ] {
        wait_route(ns, &Cluster::block_of(other[0]), ip(gw4), VXLAN_V4_DEVICE).await?;
        let gw6 = vxlan_next_hop(peer, Family::V6, ip(gw6)).0;
        wait_route(ns, &Cluster::block_of(other[1]), gw6, VXLAN_V6_DEVICE).await?;
    }
    c.connectivity().context("VXLAN")?;

    // node2 leaves the cluster: node1 drops its routes (its affinity is left over, unrouted).
    c.client
        .delete(&[ResourceKey::new(Kind::Node, None, "node2")], false)
        .await?;
    for addr in &c.pods_b {
        let dst = Cluster::block_of(*addr);
        wait_for(&format!("node1 to drop its route to {dst}"), || {
            let dst = dst.clone();
            let ns = &c.a;
            async move { Ok(serval_route(ns, &dst).await?.is_none()) }
        })
        .await?;
    }
    assert!(
        serval_route(&c.a, &Cluster::block_of(c.pods_a[0]))
            .await?
            .is_some(),
        "own blackhole stays"
    );
    drop(agent_a);
    drop(agent_b);
    Ok(())
}
