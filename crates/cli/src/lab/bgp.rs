//! `serval lab up --routing bgp`: the home router (FRR or BIRD, from serval-bgp) on the
//! underlay, peered with every node, and waiting for the nodes' BGP sessions.
//!
//! The nodes' BIRDs are the agents' (`serval agent --routing bgp`); their files are in
//! `<lab>/nodes/<node>/bird/`. The router's files are in `<lab>/router/`. `lab down` stops
//! both by killing every process in the lab's namespaces, and removes the files with the
//! lab directory.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serval_bgp::{ExternalRouter, NodeStatus, RouterNeighbor, RouterSpec, Timers};
use serval_model::types::AsNumber;
use serval_sys::NetNs;

use super::layout::Layout;
use super::state::{CLUSTER_AS, LabState, ROUTER_AS, RouterImpl};

/// The home router's configuration: eBGP (AS [`ROUTER_AS`]) to every node address (AS
/// [`CLUSTER_AS`]), short timers.
pub fn router_spec(st: &LabState) -> Option<RouterSpec> {
    let router = st.router.as_ref()?;
    let v4 = router.addrs.iter().find_map(|a| match a.addr() {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    });
    let v6 = router.addrs.iter().find_map(|a| match a.addr() {
        IpAddr::V6(a) => Some(a),
        IpAddr::V4(_) => None,
    });
    // With two underlay subnets the router has an address in each: let the kernel pick the
    // source instead of pinning the first.
    let two_subnets = st.nodes.iter().any(|n| n.subnet == 1);
    let neighbors = st
        .nodes
        .iter()
        .flat_map(|n| {
            n.host.addrs.iter().map(|a| RouterNeighbor {
                name: n.name.clone(),
                addr: a.addr(),
                asn: AsNumber(CLUSTER_AS),
            })
        })
        .collect();
    Some(RouterSpec {
        router_id: v4.unwrap_or_else(|| serval_bgp::config::router_id_from_name("router")),
        asn: AsNumber(ROUTER_AS),
        ipv4: v4.filter(|_| !two_subnets),
        ipv6: v6.filter(|_| !two_subnets),
        neighbors,
        timers: Timers::fast(),
    })
}

/// Starts the home router in `ns` and leaves it running after `lab up` exits.
pub fn start_router(
    layout: &Layout,
    st: &LabState,
    ns: &NetNs,
    kind: RouterImpl,
) -> anyhow::Result<()> {
    let spec = router_spec(st).context("the lab has no router host")?;
    let dir = layout.router_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let router = ExternalRouter::start(kind.kind(), &dir, Some(ns), &spec).with_context(|| {
        format!(
            "starting the {kind} home router (logs in {})",
            dir.display()
        )
    })?;
    router.detach();
    Ok(())
}

/// Each node's BIRD control socket, from the lab's description.
pub fn bird_sockets(name: &str) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let layout = super::load_layout(name)?;
    let st = LabState::load(&layout)?;
    Ok(st
        .nodes
        .iter()
        .map(|n| (n.name.clone(), layout.bird_dir(&n.name).join("bird.ctl")))
        .collect())
}

/// Every node's BGP status (BIRD not running shows as such).
pub fn query_all(sockets: &[(String, PathBuf)]) -> Vec<NodeStatus> {
    sockets
        .iter()
        .map(|(node, socket)| {
            if socket.exists() {
                serval_bgp::query(
                    node,
                    std::path::Path::new(serval_bgp::bird::BIRDC_BIN),
                    socket,
                )
            } else {
                NodeStatus {
                    node: node.clone(),
                    running: false,
                    error: Some(format!("no control socket {}", socket.display())),
                    sessions: Vec::new(),
                }
            }
        })
        .collect()
}

/// Waits until every node's BIRD runs and all its sessions are Established; returns how many
/// sessions there are in all.
pub async fn wait_established(
    layout: &Layout,
    st: &LabState,
    deadline: Instant,
) -> anyhow::Result<usize> {
    let sockets: Vec<(String, PathBuf)> = st
        .nodes
        .iter()
        .map(|n| (n.name.clone(), layout.bird_dir(&n.name).join("bird.ctl")))
        .collect();
    loop {
        let s = sockets.clone();
        let status = tokio::task::spawn_blocking(move || query_all(&s))
            .await
            .context("querying BIRD")?;
        let done = status.iter().all(|n| {
            n.running && !n.sessions.is_empty() && n.sessions.iter().all(|s| s.is_established())
        });
        if done {
            return Ok(status.iter().map(|n| n.sessions.len()).sum());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "BGP sessions did not all reach Established in time; see nodes/*/bird/bird.log and router/ in the lab directory:\n{}",
                serval_bgp::render_table(&status)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serval_model::Resource;

    use super::*;
    use crate::lab::resources;
    use crate::lab::up::{UpArgs, plan_state};

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        up: UpArgs,
    }

    fn state(args: &[&str]) -> LabState {
        let mut all = vec!["up", "--name", "t"];
        all.extend_from_slice(args);
        let cmd = Cmd::parse_from(all);
        plan_state(&Layout::new("t"), &cmd.up, 9).0
    }

    fn peers(st: &LabState) -> Vec<serval_model::calico::BGPPeer> {
        resources::parse("test", &resources::initial_yaml(st))
            .expect("the lab's resources validate")
            .into_iter()
            .filter_map(|r| match r {
                Resource::BGPPeer(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn bgp_lab_peers_every_node_with_the_router() {
        let st = state(&["--routing", "bgp", "--nodes", "3", "--ip-family", "dual"]);
        assert_eq!(st.bgp_router, Some(RouterImpl::Frr));
        let router = st.router.as_ref().expect("a router host");
        assert_eq!(router.netns, "sv-t-router");
        let ps = peers(&st);
        let got: Vec<(String, Option<String>, Option<String>)> = ps
            .iter()
            .map(|p| {
                (
                    p.metadata.name.clone(),
                    p.spec.peer_ip.clone(),
                    p.spec.node_selector.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("router-v4".into(), Some("172.31.9.126".into()), None),
                ("router-v6".into(), Some("fd00:5e:9::126".into()), None),
            ]
        );
        assert!(
            ps.iter()
                .all(|p| p.spec.as_number == Some(AsNumber(ROUTER_AS)))
        );
        let spec = router_spec(&st).expect("router spec");
        assert_eq!(spec.neighbors.len(), 6, "both families of 3 nodes");
        assert_eq!(spec.router_id.to_string(), "172.31.9.126");
        assert!(spec.neighbors.iter().all(|n| n.asn == AsNumber(CLUSTER_AS)));
    }

    #[test]
    fn two_subnets_peer_with_the_router_address_of_their_own_subnet() {
        let st = state(&[
            "--routing",
            "bgp",
            "--nodes",
            "2",
            "--encapsulation",
            "vxlan-cross-subnet",
        ]);
        let ps = peers(&st);
        let got: Vec<(String, Option<String>, Option<String>)> = ps
            .iter()
            .map(|p| {
                (
                    p.metadata.name.clone(),
                    p.spec.peer_ip.clone(),
                    p.spec.node_selector.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "router-s0-v4".into(),
                    Some("172.31.9.126".into()),
                    Some("serval.dev/lab-subnet == '0'".into())
                ),
                (
                    "router-s1-v4".into(),
                    Some("172.31.9.254".into()),
                    Some("serval.dev/lab-subnet == '1'".into())
                ),
            ]
        );
        let spec = router_spec(&st).expect("router spec");
        assert_eq!(spec.ipv4, None, "the kernel picks the source per subnet");
    }

    #[test]
    fn static_labs_have_no_bgp_resources_and_no_router() {
        let st = state(&["--nodes", "2"]);
        assert!(st.router.is_none());
        assert!(peers(&st).is_empty());
        assert!(!resources::initial_yaml(&st).contains("BGPConfiguration"));
    }
}
