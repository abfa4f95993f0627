//! A small BGP lab for the privileged tests: "nodes" are network namespaces on a bridge that
//! lives in its own "switch" namespace, each with its files in a temporary directory.
//! Everything is uniquely named and goes away on drop (BIRD/FRR first, then the namespaces).

#![expect(dead_code, reason = "each test binary uses a different subset")]

use std::future::Future;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ipnet::IpNet;
use serval_bgp::config::{BgpInputs, RenderOptions, Timers, render};
use serval_bgp::{Bird, BirdPaths};
use serval_model::ObjectMeta;
use serval_model::calico::{BGPConfiguration, BGPPeer, Node, NodeBgpSpec, NodeSpec};
use serval_sys::testing::{NetNsGuard, unique_name};
use serval_sys::{IpFamily, NetNs, Route, Veth};
use tempfile::TempDir;

pub fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// One node: its BIRD (dropped first), namespace and directory.
pub struct TestNode {
    pub bird: Option<Bird>,
    pub ns: NetNsGuard,
    pub dir: TempDir,
    pub name: String,
    pub v4: Option<IpNet>,
    pub v6: Option<IpNet>,
    pub blocks: Vec<IpNet>,
}

impl TestNode {
    pub fn resource(&self, rr_cluster: Option<&str>, labels: &[(&str, &str)]) -> Node {
        let mut meta = ObjectMeta::named(&self.name);
        for (k, v) in labels {
            meta.labels.insert((*k).into(), (*v).into());
        }
        Node {
            metadata: meta,
            spec: NodeSpec {
                bgp: Some(NodeBgpSpec {
                    ipv4_address: self.v4,
                    ipv6_address: self.v6,
                    route_reflector_cluster_id: rr_cluster.map(|c| c.parse().unwrap()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        }
    }

    pub fn addrs(&self) -> Vec<IpAddr> {
        self.v4.iter().chain(&self.v6).map(|n| n.addr()).collect()
    }
}

/// A switch namespace with a bridge, plus nodes plugged into it.
pub struct Underlay {
    pub nodes: Vec<TestNode>,
    /// Extra hosts (e.g. the router): namespace and directory, dropped after the nodes.
    pub hosts: Vec<(NetNsGuard, TempDir)>,
    pub switch: NetNsGuard,
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

impl Underlay {
    pub async fn new() -> Result<Underlay> {
        let switch = NetNsGuard::new("bgpsw")?;
        let nl = switch.netlink()?;
        nl.bridge_add("br0").await?;
        nl.link_set_up("lo").await?;
        Ok(Underlay {
            nodes: Vec::new(),
            hosts: Vec::new(),
            switch,
        })
    }

    /// Plugs a new namespace into the bridge with `eth0` carrying `addrs`.
    async fn plug(&self, prefix: &str, addrs: &[IpNet]) -> Result<NetNsGuard> {
        let ns = NetNsGuard::new(prefix)?;
        // No duplicate address detection: IPv6 addresses are usable at once.
        for key in [
            "net/ipv6/conf/all/accept_dad",
            "net/ipv6/conf/default/accept_dad",
        ] {
            ns.sysctl_write(key, "0")?;
        }
        let port = unique_name("bgpp", 15);
        let sw = self.switch.netlink()?;
        sw.veth_add(&Veth::new(&port, "eth0").peer_netns(&ns))
            .await?;
        sw.link_set_controller(&port, "br0").await?;
        sw.link_set_up(&port).await?;
        let nl = ns.netlink()?;
        nl.link_set_up("lo").await?;
        for a in addrs {
            nl.addr_add("eth0", *a).await?;
        }
        nl.link_set_up("eth0").await?;
        Ok(ns)
    }

    /// Adds node `name` with the given underlay addresses and blocks (not started).
    pub async fn add_node(
        &mut self,
        name: &str,
        v4: Option<&str>,
        v6: Option<&str>,
        blocks: &[&str],
    ) -> Result<()> {
        let v4 = v4.map(net);
        let v6 = v6.map(net);
        let addrs: Vec<IpNet> = v4.iter().chain(&v6).copied().collect();
        let ns = self.plug("bgpn", &addrs).await?;
        self.nodes.push(TestNode {
            bird: None,
            ns,
            dir: tempfile::tempdir()?,
            name: name.into(),
            v4,
            v6,
            blocks: blocks.iter().map(|b| net(b)).collect(),
        });
        Ok(())
    }

    /// Adds a host (router) namespace; returns its index in `hosts`.
    pub async fn add_host(&mut self, addrs: &[&str]) -> Result<usize> {
        let addrs: Vec<IpNet> = addrs.iter().map(|a| net(a)).collect();
        let ns = self.plug("bgph", &addrs).await?;
        self.hosts.push((ns, tempfile::tempdir()?));
        Ok(self.hosts.len() - 1)
    }

    pub fn node(&self, name: &str) -> &TestNode {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }

    pub fn node_mut(&mut self, name: &str) -> &mut TestNode {
        self.nodes.iter_mut().find(|n| n.name == name).unwrap()
    }

    /// Renders `name`'s configuration (fast timers) from the given resources.
    pub fn render(
        &self,
        name: &str,
        nodes: &[Node],
        configs: &[BGPConfiguration],
        peers: &[BGPPeer],
    ) -> Result<String> {
        let n = self.node(name);
        let r = render(
            &BgpInputs {
                node: name,
                nodes,
                configs,
                peers,
                blocks: &n.blocks,
                pools: &[],
            },
            &RenderOptions {
                timers: Timers::fast(),
                ..RenderOptions::default()
            },
        )?;
        Ok(r.text)
    }

    /// Starts (or reloads) BIRD on `name` with `config`.
    pub fn run_bird(&mut self, name: &str, config: &str) -> Result<()> {
        let n = self.node_mut(name);
        if let Some(b) = &mut n.bird {
            b.reload(config)?;
            return Ok(());
        }
        let mut b = Bird::new(BirdPaths::in_dir(n.dir.path()), Some(n.ns.try_clone()?));
        b.start(config)
            .with_context(|| format!("starting BIRD on {name}"))?;
        n.bird = Some(b);
        Ok(())
    }
}

/// Polls `check` until it returns true (a readiness condition, not a timing assertion).
pub async fn wait_for<F, Fut>(what: &str, secs: u64, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = None;
    while Instant::now() < deadline {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("gave up after {secs} s waiting for {what} (last error: {last:?})")
}

/// The routes in `ns` with kernel protocol `proto`.
pub async fn routes(ns: &NetNs, proto: u8) -> Result<Vec<Route>> {
    let nl = ns.netlink()?;
    let mut out = nl.routes(IpFamily::V4, Some(proto)).await?;
    out.extend(nl.routes(IpFamily::V6, Some(proto)).await?);
    Ok(out)
}

/// Whether `ns` has a `proto` route to `dst` (via `gw` when given).
pub async fn has_route(ns: &NetNs, proto: u8, dst: IpNet, gw: Option<IpAddr>) -> Result<bool> {
    Ok(routes(ns, proto)
        .await?
        .iter()
        .any(|r| r.dst == dst && gw.is_none_or(|g| r.gateway == Some(g))))
}

/// Waits until every node has a BIRD route to every other node's blocks via that node.
pub async fn wait_mesh_routes(u: &Underlay, names: &[&str], secs: u64) -> Result<()> {
    for a in names {
        for b in names {
            if a == b {
                continue;
            }
            let (na, nb) = (u.node(a), u.node(b));
            for blk in &nb.blocks {
                let gw = match blk {
                    IpNet::V4(_) => nb.v4.map(|n| n.addr()),
                    IpNet::V6(_) => nb.v6.map(|n| n.addr()),
                };
                let ns: &NetNs = &na.ns;
                let blk = *blk;
                wait_for(
                    &format!("{a}: route to {b}'s {blk} via {gw:?}"),
                    secs,
                    || async move { has_route(ns, serval_bgp::RTPROT_BIRD, blk, gw).await },
                )
                .await?;
            }
        }
    }
    Ok(())
}
