//! Real BIRD on "nodes" (network namespaces on a bridge): the full mesh over IPv4 and over
//! IPv6 only, route reflection, restart after BIRD dies, withdrawal when a node goes, and a
//! rejected configuration leaving the previous one in force. Needs root and Debian's bird2.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::{Underlay, has_route, net, runtime, wait_for, wait_mesh_routes};
use nix::sys::signal::Signal;
use serval_bgp::{Bird, BirdError, RTPROT_BIRD, ReloadOutcome, SessionKind};
use serval_model::ObjectMeta;
use serval_model::calico::{BGPConfiguration, BGPPeer, BGPPeerSpec, Node};
use serval_sys::testing::require_root;

fn usable(test: &str) -> bool {
    if !require_root(test) {
        return false;
    }
    if !std::path::Path::new(serval_bgp::bird::BIRD_BIN).exists() {
        eprintln!(
            "skipping {test}: {} is missing (apt install bird2)",
            serval_bgp::bird::BIRD_BIN
        );
        return false;
    }
    true
}

fn render_all(
    u: &mut Underlay,
    nodes: &[Node],
    configs: &[BGPConfiguration],
    peers: &[BGPPeer],
) -> Result<()> {
    let names: Vec<String> = u.nodes.iter().map(|n| n.name.clone()).collect();
    for name in names {
        let conf = u.render(&name, nodes, configs, peers)?;
        u.run_bird(&name, &conf)?;
    }
    Ok(())
}

#[test]
fn mesh_v4_restart_and_node_removal() -> Result<()> {
    if !usable("mesh_v4_restart_and_node_removal") {
        return Ok(());
    }
    runtime().block_on(async {
        let mut u = Underlay::new().await?;
        u.add_node("node1", Some("172.31.7.11/24"), None, &["10.244.1.0/26"])
            .await?;
        u.add_node(
            "node2",
            Some("172.31.7.12/24"),
            None,
            &["10.244.2.0/26", "10.244.2.64/26"],
        )
        .await?;
        u.add_node("node3", Some("172.31.7.13/24"), None, &["10.244.3.0/26"])
            .await?;
        let nodes: Vec<Node> = u.nodes.iter().map(|n| n.resource(None, &[])).collect();
        render_all(&mut u, &nodes, &[], &[])?;
        wait_mesh_routes(&u, &["node1", "node2", "node3"], 30).await?;

        // Status: two established mesh sessions per node, routes counted.
        let sessions = u.node("node1").bird.as_ref().unwrap().sessions()?;
        assert_eq!(sessions.len(), 2, "{sessions:?}");
        for s in &sessions {
            assert_eq!(s.kind, Some(SessionKind::Mesh));
            assert!(s.is_established(), "{s:?}");
        }
        let to2 = sessions
            .iter()
            .find(|s| s.description.as_deref() == Some("node2"))
            .unwrap();
        assert_eq!(to2.peer, Some(common::ip("172.31.7.12")));
        assert_eq!(to2.routes_imported, 2, "{to2:?}");
        assert_eq!(to2.routes_exported, 1, "{to2:?}");
        let table = serval_bgp::render_table(&[serval_bgp::NodeStatus {
            node: "node1".into(),
            running: true,
            error: None,
            sessions,
        }]);
        assert!(table.contains("172.31.7.13"), "{table}");

        // Unchanged configuration: nothing to do.
        let conf2 = u.render("node2", &nodes, &[], &[])?;
        let b2 = u.node_mut("node2").bird.as_mut().unwrap();
        assert_eq!(b2.reload(&conf2)?, ReloadOutcome::Unchanged);

        // BIRD on node2 stops (SIGTERM: it withdraws its routes): gone on node1, back after
        // supervise() restarts it.
        let old_pid = b2.pid();
        b2.signal(Signal::SIGTERM);
        let n1 = &u.node("node1").ns;
        wait_for("node1 loses node2's block", 30, || async {
            Ok(!has_route(n1, RTPROT_BIRD, net("10.244.2.0/26"), None).await?)
        })
        .await?;
        let b2 = u.node_mut("node2").bird.as_mut().unwrap();
        wait_for("supervise() restarts BIRD on node2", 10, || {
            let restarted = b2.supervise();
            async move { Ok(restarted?) }
        })
        .await?;
        assert_ne!(b2.pid(), old_pid);
        assert_eq!(b2.restarts(), 1);
        wait_mesh_routes(&u, &["node1", "node2", "node3"], 30).await?;

        // SIGKILL (a crash): restarted too, routes still there afterwards.
        let b3 = u.node_mut("node3").bird.as_mut().unwrap();
        b3.signal(Signal::SIGKILL);
        wait_for("supervise() restarts BIRD on node3", 10, || {
            let restarted = b3.supervise();
            async move { Ok(restarted?) }
        })
        .await?;
        wait_mesh_routes(&u, &["node1", "node2", "node3"], 30).await?;

        // node3 is removed from the cluster: node1 and node2 drop the session and its routes.
        let remaining: Vec<Node> = nodes
            .iter()
            .filter(|n| n.metadata.name != "node3")
            .cloned()
            .collect();
        for name in ["node1", "node2"] {
            let conf = u.render(name, &remaining, &[], &[])?;
            let outcome = u.node_mut(name).bird.as_mut().unwrap().reload(&conf)?;
            assert_eq!(outcome, ReloadOutcome::Reconfigured);
        }
        for name in ["node1", "node2"] {
            let ns = &u.node(name).ns;
            wait_for(&format!("{name} withdraws node3's block"), 30, || async {
                Ok(!has_route(ns, RTPROT_BIRD, net("10.244.3.0/26"), None).await?)
            })
            .await?;
        }
        wait_mesh_routes(&u, &["node1", "node2"], 5).await?;
        Ok(())
    })
}

#[test]
fn ipv6_only_mesh() -> Result<()> {
    if !usable("ipv6_only_mesh") {
        return Ok(());
    }
    runtime().block_on(async {
        let mut u = Underlay::new().await?;
        u.add_node(
            "node1",
            None,
            Some("fd00:5e:7::11/64"),
            &["fd00:10:244::/122"],
        )
        .await?;
        u.add_node(
            "node2",
            None,
            Some("fd00:5e:7::12/64"),
            &["fd00:10:244::40/122"],
        )
        .await?;
        u.add_node(
            "node3",
            None,
            Some("fd00:5e:7::13/64"),
            &["fd00:10:244::80/122"],
        )
        .await?;
        let nodes: Vec<Node> = u.nodes.iter().map(|n| n.resource(None, &[])).collect();
        render_all(&mut u, &nodes, &[], &[])?;
        wait_mesh_routes(&u, &["node1", "node2", "node3"], 30).await?;
        let sessions = u.node("node2").bird.as_ref().unwrap().sessions()?;
        assert!(
            sessions
                .iter()
                .all(|s| s.is_established() && s.peer.is_some_and(|p| p.is_ipv6())),
            "{sessions:?}"
        );
        Ok(())
    })
}

#[test]
fn route_reflector_four_nodes() -> Result<()> {
    if !usable("route_reflector_four_nodes") {
        return Ok(());
    }
    runtime().block_on(async {
        let mut u = Underlay::new().await?;
        for i in 1..=4 {
            u.add_node(
                &format!("node{i}"),
                Some(&format!("172.31.7.1{i}/24")),
                None,
                &[&format!("10.244.{i}.0/26")],
            )
            .await?;
        }
        let nodes: Vec<Node> = u
            .nodes
            .iter()
            .map(|n| {
                if n.name == "node1" {
                    n.resource(Some("224.0.0.1"), &[("route-reflector", "true")])
                } else {
                    n.resource(None, &[])
                }
            })
            .collect();
        let mut config = BGPConfiguration {
            metadata: ObjectMeta::named("default"),
            ..Default::default()
        };
        config.spec.node_to_node_mesh_enabled = Some(false);
        let peer = BGPPeer {
            metadata: ObjectMeta::named("peer-with-rr"),
            spec: BGPPeerSpec {
                node_selector: Some("all()".into()),
                peer_selector: Some("route-reflector == 'true'".into()),
                ..Default::default()
            },
        };
        render_all(&mut u, &nodes, &[config], &[peer])?;
        // Clients learn each other's blocks through the reflector, next hop = the originator.
        wait_mesh_routes(&u, &["node1", "node2", "node3", "node4"], 40).await?;
        let s = u.node("node3").bird.as_ref().unwrap().sessions()?;
        assert_eq!(s.len(), 1, "a client peers with the reflector only: {s:?}");
        assert_eq!(s[0].kind, Some(SessionKind::RouteReflector));
        assert_eq!(s[0].routes_imported, 3, "{s:?}");
        let rr = u.node("node1").bird.as_ref().unwrap().sessions()?;
        assert_eq!(rr.len(), 3, "{rr:?}");
        Ok(())
    })
}

#[test]
fn rejected_config_keeps_the_old_one_and_a_new_supervisor_adopts() -> Result<()> {
    if !usable("rejected_config_keeps_the_old_one_and_a_new_supervisor_adopts") {
        return Ok(());
    }
    runtime().block_on(async {
        let mut u = Underlay::new().await?;
        u.add_node("node1", Some("172.31.7.11/24"), None, &["10.244.1.0/26"])
            .await?;
        let nodes = vec![u.node("node1").resource(None, &[])];
        let good = u.render("node1", &nodes, &[], &[])?;
        u.run_bird("node1", &good)?;
        let n = u.node_mut("node1");
        let bird = n.bird.as_mut().unwrap();
        let pid = bird.pid();
        let err = bird
            .reload("router id 1.2.3.4;\nprotocol nonsense {}\n")
            .unwrap_err();
        assert!(matches!(err, BirdError::Rejected { .. }), "{err}");
        assert!(err.to_string().contains("conf.rejected"), "{err}");
        assert!(bird.is_running());
        assert_eq!(bird.pid(), pid);
        assert_eq!(bird.current_config(), Some(good.as_str()));
        assert_eq!(std::fs::read_to_string(&bird.paths().config)?, good);
        // The old BIRD keeps answering; a new supervisor (an agent restart) adopts it.
        let paths = bird.paths().clone();
        n.bird.take().unwrap().detach();
        let mut again = Bird::new(paths, Some(n.ns.try_clone()?));
        again.start(&good)?;
        assert_eq!(again.pid(), pid, "adopted, not restarted");
        assert_eq!(again.reload(&good)?, ReloadOutcome::Unchanged);
        again.stop()?;
        assert!(!again.is_running());
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            again.birdc(&["show", "status"]).is_err(),
            "stopped BIRD does not answer"
        );
        Ok(())
    })
}

/// The agent's path: resources → OwnedBgpInputs → BgpDriver (dual stack), status through the
/// control socket from the root namespace, detach + adopt, and stop by pid file.
#[test]
fn driver_dual_stack() -> Result<()> {
    if !usable("driver_dual_stack") {
        return Ok(());
    }
    use serval_bgp::config::Timers;
    use serval_bgp::{BgpDriver, BirdPaths, OwnedBgpInputs, RenderOptions};
    use serval_model::Resource;
    runtime().block_on(async {
        let mut u = Underlay::new().await?;
        u.add_node(
            "node1",
            Some("172.31.7.11/24"),
            Some("fd00:5e:7::11/64"),
            &["10.244.1.0/26", "fd00:10:244::/122"],
        )
        .await?;
        u.add_node(
            "node2",
            Some("172.31.7.12/24"),
            Some("fd00:5e:7::12/64"),
            &["10.244.2.0/26", "fd00:10:244::40/122"],
        )
        .await?;
        let resources: Vec<Resource> = u
            .nodes
            .iter()
            .map(|n| Resource::Node(n.resource(None, &[])))
            .collect();
        let opts = RenderOptions {
            timers: Timers::fast(),
            ..RenderOptions::default()
        };
        let mut drivers = Vec::new();
        for n in &u.nodes {
            let mut d = BgpDriver::new(
                BirdPaths::in_dir(n.dir.path()),
                Some(n.ns.try_clone()?),
                opts.clone(),
            );
            let inputs = OwnedBgpInputs::from_resources(&n.name, &resources, n.blocks.clone());
            let report = d.apply(&inputs.as_inputs())?;
            assert_eq!(report.outcome, ReloadOutcome::Started);
            assert_eq!(report.sessions, 2, "one IPv4 and one IPv6 session");
            assert_eq!(
                d.apply(&inputs.as_inputs())?.outcome,
                ReloadOutcome::Unchanged
            );
            assert!(!d.tick()?, "running: nothing to restart");
            drivers.push(d);
        }
        wait_mesh_routes(&u, &["node1", "node2"], 30).await?;
        let socket = BirdPaths::in_dir(u.node("node1").dir.path()).socket;
        let st = serval_bgp::query(
            "node1",
            std::path::Path::new(serval_bgp::bird::BIRDC_BIN),
            &socket,
        );
        assert!(st.running, "{st:?}");
        assert_eq!(st.sessions.len(), 2);
        assert!(
            st.sessions
                .iter()
                .all(|s| s.is_established() && s.routes_imported == 1),
            "{st:?}"
        );
        assert_eq!(drivers[0].status("node1"), st);

        // Agent restart: the old driver detaches, a new one adopts the running BIRD.
        let pid = drivers[0].bird().pid();
        let d0 = drivers.remove(0);
        d0.detach();
        let n1 = u.node("node1");
        let mut d = BgpDriver::new(
            BirdPaths::in_dir(n1.dir.path()),
            Some(n1.ns.try_clone()?),
            opts.clone(),
        );
        let inputs = OwnedBgpInputs::from_resources("node1", &resources, n1.blocks.clone());
        d.apply(&inputs.as_inputs())?;
        assert_eq!(d.bird().pid(), pid, "adopted");
        d.detach();
        // lab down: stop by pid file; BIRD withdraws, node2 loses node1's routes.
        assert!(Bird::stop_in(&BirdPaths::in_dir(n1.dir.path())));
        let n2 = &u.node("node2").ns;
        wait_for("node2 loses node1's routes", 30, || async {
            Ok(
                !has_route(n2, RTPROT_BIRD, net("10.244.1.0/26"), None).await?
                    && !has_route(n2, RTPROT_BIRD, net("fd00:10:244::/122"), None).await?,
            )
        })
        .await?;
        let st = serval_bgp::query(
            "node1",
            std::path::Path::new(serval_bgp::bird::BIRDC_BIN),
            &socket,
        );
        assert!(!st.running && st.error.is_some(), "{st:?}");
        Ok(())
    })
}
