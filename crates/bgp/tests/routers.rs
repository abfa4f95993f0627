//! The lab's home router: FRR (zebra + bgpd) or BIRD peered with real BIRD nodes learns every
//! node's blocks into its kernel table, and reaches "pod" addresses (put on the nodes'
//! loopback) through them. Needs root, Debian's bird2 and frr.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::Path;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};
use common::{Underlay, has_route, runtime, wait_for};
use serval_bgp::config::{RouterNeighbor, RouterSpec, Timers};
use serval_bgp::frr::{ExternalRouter, RouterKind};
use serval_model::ObjectMeta;
use serval_model::calico::{BGPPeer, BGPPeerSpec, Node};
use serval_model::types::AsNumber;
use serval_sys::NetNs;
use serval_sys::testing::require_root;

fn usable(test: &str, kind: RouterKind) -> bool {
    if !require_root(test) {
        return false;
    }
    let need = match kind {
        RouterKind::Frr => "/usr/lib/frr/bgpd",
        RouterKind::Bird => serval_bgp::bird::BIRD_BIN,
    };
    for bin in [serval_bgp::bird::BIRD_BIN, need] {
        if !Path::new(bin).exists() {
            eprintln!("skipping {test}: {bin} is missing (apt install bird2 frr)");
            return false;
        }
    }
    true
}

const ROUTER_AS: u32 = 64513;

fn router_peers(addrs: &[&str]) -> Vec<BGPPeer> {
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| BGPPeer {
            metadata: ObjectMeta::named(format!("router-{i}")),
            spec: BGPPeerSpec {
                peer_ip: Some((*a).into()),
                as_number: Some(AsNumber(ROUTER_AS)),
                ..Default::default()
            },
        })
        .collect()
}

/// TCP from `from` to `dst` (served inside `to`); the server answers "pong".
fn tcp_reach(from: &NetNs, to: &NetNs, dst: IpAddr) -> Result<()> {
    let listener = to.run(move || TcpListener::bind(SocketAddr::new(dst, 0)))??;
    let addr = listener.local_addr()?;
    let server = thread::spawn(move || -> Result<()> {
        let (mut c, _) = listener.accept()?;
        c.write_all(b"pong")?;
        Ok(())
    });
    let got = from.run(move || -> Result<String> {
        let mut c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connecting to {addr}"))?;
        let mut s = String::new();
        c.read_to_string(&mut s)?;
        Ok(s)
    })??;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("server panicked"))??;
    anyhow::ensure!(got == "pong", "got {got:?}");
    Ok(())
}

async fn router_learns_every_block(kind: RouterKind, dual: bool) -> Result<()> {
    let mut u = Underlay::new().await?;
    let (v4s, v6s) = if dual {
        (
            vec![Some("172.31.7.11/24"), Some("172.31.7.12/24")],
            vec![Some("fd00:5e:7::11/64"), Some("fd00:5e:7::12/64")],
        )
    } else {
        (
            vec![None, None, None],
            vec![
                Some("fd00:5e:7::11/64"),
                Some("fd00:5e:7::12/64"),
                Some("fd00:5e:7::13/64"),
            ],
        )
    };
    for (i, (v4, v6)) in v4s.iter().zip(&v6s).enumerate() {
        let n = i + 1;
        let mut blocks = vec![format!("fd00:10:244::{:x}/122", i * 64)];
        if dual {
            blocks.push(format!("10.244.{n}.0/26"));
        }
        let blocks: Vec<&str> = blocks.iter().map(String::as_str).collect();
        u.add_node(&format!("node{n}"), *v4, *v6, &blocks).await?;
    }
    let router_addrs: Vec<&str> = if dual {
        vec!["172.31.7.254/24", "fd00:5e:7::fe/64"]
    } else {
        vec!["fd00:5e:7::fe/64"]
    };
    let h = u.add_host(&router_addrs).await?;
    let nodes: Vec<Node> = u.nodes.iter().map(|n| n.resource(None, &[])).collect();
    let peers = router_peers(
        &router_addrs
            .iter()
            .map(|a| a.split('/').next().unwrap())
            .collect::<Vec<_>>(),
    );
    let names: Vec<String> = u.nodes.iter().map(|n| n.name.clone()).collect();
    for name in &names {
        let conf = u.render(name, &nodes, &[], &peers)?;
        u.run_bird(name, &conf)?;
        // A "pod" on the node: the first address of each of its blocks, on loopback.
        let node = u.node(name);
        let nl = node.ns.netlink()?;
        for b in &node.blocks {
            let pod = b.hosts().next().unwrap();
            nl.addr_add("lo", ipnet::IpNet::new(pod, b.max_prefix_len())?)
                .await?;
        }
    }
    let spec = RouterSpec {
        router_id: "172.31.7.254".parse()?,
        asn: AsNumber(ROUTER_AS),
        ipv4: dual.then(|| "172.31.7.254".parse().unwrap()),
        ipv6: Some("fd00:5e:7::fe".parse()?),
        neighbors: u
            .nodes
            .iter()
            .flat_map(|n| {
                n.addrs().into_iter().map(|addr| RouterNeighbor {
                    name: n.name.clone(),
                    addr,
                    asn: AsNumber(64512),
                })
            })
            .collect(),
        timers: Timers::fast(),
    };
    let (router_ns, dir) = &u.hosts[h];
    let mut router = ExternalRouter::start(kind, dir.path(), Some(router_ns), &spec)?;
    let proto = router.route_protocol();
    for n in &u.nodes {
        for b in &n.blocks {
            let b = *b;
            let ns: &NetNs = router_ns;
            wait_for(
                &format!("router learns {b} from {}", n.name),
                40,
                || async move { has_route(ns, proto, b, None).await },
            )
            .await?;
        }
    }
    // The router reaches pods directly (no NAT): TCP to the pod addresses.
    for n in &u.nodes {
        for b in &n.blocks {
            let pod = b.hosts().next().unwrap();
            tcp_reach(router_ns, &n.ns, pod)
                .with_context(|| format!("router -> {pod} on {}", n.name))?;
        }
    }
    // The nodes show the router session as a global peer.
    let s = u.nodes[0].bird.as_ref().unwrap().sessions()?;
    let global: Vec<_> = s
        .iter()
        .filter(|s| s.kind == Some(serval_bgp::SessionKind::Global))
        .collect();
    assert_eq!(global.len(), router_addrs.len(), "{s:?}");
    assert!(
        global
            .iter()
            .all(|s| s.is_established() && s.routes_exported >= 1),
        "{global:?}"
    );
    if let ExternalRouter::Frr(f) = &router {
        let summary = f.vtysh("show bgp summary")?;
        assert!(summary.contains("fd00:5e:7::11"), "{summary}");
    }
    // `lab up` leaves the router running; `lab down` stops it by its pid files.
    assert!(router_is_running(&mut router));
    router.detach();
    assert!(
        ExternalRouter::stop_in(dir.path()),
        "found the running router"
    );
    assert!(!ExternalRouter::stop_in(dir.path()), "nothing left to stop");
    let ns: &NetNs = router_ns;
    wait_for("the stopped router's routes go", 20, || async move {
        Ok(common::routes(ns, proto).await?.is_empty())
    })
    .await?;
    Ok(())
}

fn router_is_running(r: &mut ExternalRouter) -> bool {
    match r {
        ExternalRouter::Frr(f) => f.is_running(),
        ExternalRouter::Bird(b) => b.is_running(),
    }
}

#[test]
fn frr_router_dual_stack() -> Result<()> {
    if !usable("frr_router_dual_stack", RouterKind::Frr) {
        return Ok(());
    }
    runtime().block_on(router_learns_every_block(RouterKind::Frr, true))
}

#[test]
fn frr_router_ipv6_only() -> Result<()> {
    if !usable("frr_router_ipv6_only", RouterKind::Frr) {
        return Ok(());
    }
    runtime().block_on(router_learns_every_block(RouterKind::Frr, false))
}

#[test]
fn bird_router_dual_stack() -> Result<()> {
    if !usable("bird_router_dual_stack", RouterKind::Bird) {
        return Ok(());
    }
    runtime().block_on(router_learns_every_block(RouterKind::Bird, true))
}
