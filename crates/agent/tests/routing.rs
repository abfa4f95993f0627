//! Privileged tests of the routing programmer in a real network namespace: it programs the
//! desired routes, removes them when a node goes away, never touches routes it does not own,
//! repairs drift on resync, and manages the VXLAN devices with their neighbour/FDB entries.

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{Context, Result};
use ipnet::IpNet;
use serval_agent::routes::{
    self, BlockInfo, Desired, Encapsulation, Family, Inputs, NodeInfo, PoolInfo, VXLAN_V4_DEVICE,
    VXLAN_V6_DEVICE,
};
use serval_agent::routing::{Programmer, UnderlayLink};
use serval_sys::testing::{NetNsGuard, require_root, unique_name};
use serval_sys::{IpFamily, MacAddr, Netlink, RTPROT_SERVAL, Route, RouteKind, Veth, Vxlan};

/// Logs of the code under test, shown for failing tests.
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("serval_agent=debug")
        .try_init();
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}
fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A node namespace with an underlay link `ul` (one end of a veth pair whose other end is
/// also here, both up) holding `v4` and `v6`.
struct Node {
    ns: NetNsGuard,
    nl: Netlink,
    ul: String,
}

async fn node(v4: &str, v6: &str) -> Result<Node> {
    let ns = NetNsGuard::new("svag-rt")?;
    let nl = ns.netlink()?;
    let ul = unique_name("ul", 15);
    let peer = unique_name("up", 15);
    nl.veth_add(&Veth::new(&ul, &peer)).await?;
    nl.link_set_up(&ul).await?;
    nl.link_set_up(&peer).await?;
    nl.link_set_up("lo").await?;
    nl.addr_add(&ul, net(v4)).await?;
    nl.addr_add(&ul, net(v6)).await?;
    Ok(Node { ns, nl, ul })
}

impl Node {
    async fn underlay(&self) -> Result<BTreeMap<Family, UnderlayLink>> {
        let link = self.nl.link(&self.ul).await?;
        let ul = UnderlayLink {
            name: link.name.clone(),
            index: link.index,
            mtu: link.mtu,
        };
        Ok([(Family::V4, ul.clone()), (Family::V6, ul)].into())
    }

    async fn serval_routes(&self) -> Result<Vec<Route>> {
        let mut out = self.nl.routes(IpFamily::V4, Some(RTPROT_SERVAL)).await?;
        out.extend(self.nl.routes(IpFamily::V6, Some(RTPROT_SERVAL)).await?);
        Ok(out)
    }

    async fn route_to(&self, dst: &str) -> Result<Option<Route>> {
        Ok(self
            .serval_routes()
            .await?
            .into_iter()
            .find(|r| r.dst == net(dst)))
    }
}

fn cluster(encap: Encapsulation, with_node3: bool) -> Inputs {
    let mut nodes = vec![
        NodeInfo {
            name: "node1".into(),
            ipv4: Some(net("172.31.7.11/24")),
            ipv6: Some(net("fd00:5e:7::11/64")),
        },
        NodeInfo {
            name: "node2".into(),
            ipv4: Some(net("172.31.7.12/24")),
            ipv6: Some(net("fd00:5e:7::12/64")),
        },
    ];
    let mut blocks = vec![
        BlockInfo {
            node: "node1".into(),
            block: net("10.244.0.0/26"),
        },
        BlockInfo {
            node: "node1".into(),
            block: net("fd00:10:244::/122"),
        },
        BlockInfo {
            node: "node2".into(),
            block: net("10.244.0.64/26"),
        },
        BlockInfo {
            node: "node2".into(),
            block: net("fd00:10:244::40/122"),
        },
    ];
    if with_node3 {
        nodes.push(NodeInfo {
            name: "node3".into(),
            ipv4: Some(net("172.31.7.13/24")),
            ipv6: Some(net("fd00:5e:7::13/64")),
        });
        blocks.push(BlockInfo {
            node: "node3".into(),
            block: net("10.244.0.128/26"),
        });
        blocks.push(BlockInfo {
            node: "node3".into(),
            block: net("fd00:10:244::80/122"),
        });
    }
    Inputs {
        node: "node1".into(),
        nodes: nodes.into_iter().map(|n| (n.name.clone(), n)).collect(),
        pools: vec![
            PoolInfo {
                name: "v4".into(),
                cidr: net("10.244.0.0/16"),
                encapsulation: encap,
            },
            PoolInfo {
                name: "v6".into(),
                cidr: net("fd00:10:244::/112"),
                encapsulation: encap,
            },
        ],
        blocks,
        underlay_mtu: 1500,
    }
}

async fn sync(n: &Node, p: &Programmer, d: &Desired) -> Result<serval_agent::routing::SyncReport> {
    let report = p.sync(d, &n.underlay().await?).await?;
    assert_eq!(report.failures, 0, "{report}");
    Ok(report)
}

#[tokio::test]
async fn programs_native_routes_removes_them_repairs_drift_and_leaves_others_alone() -> Result<()> {
    if !require_root("programs_native_routes_removes_them_repairs_drift_and_leaves_others_alone") {
        return Ok(());
    }
    logs();
    let n = node("172.31.7.11/24", "fd00:5e:7::11/64").await?;
    let ul_index = n.nl.link_index(&n.ul).await?;
    let p = Programmer::new(n.ns.netlink()?);

    // Somebody else's routes: another protocol on the underlay, and a Serval-protocol pod route
    // on a device the programmer does not own (as the CNI makes them).
    let foreign = Route::new(net("10.99.0.0/24"))
        .via(ip("172.31.7.1"))
        .dev(ul_index)
        .protocol(4);
    n.nl.route_add(&foreign).await?;
    let pod_if = unique_name("svpod", 15);
    let pod_peer = unique_name("svpp", 15);
    n.nl.veth_add(&Veth::new(&pod_if, &pod_peer)).await?;
    n.nl.link_set_up(&pod_if).await?;
    let pod_route = Route::new(net("10.244.0.5/32")).dev(n.nl.link_index(&pod_if).await?);
    n.nl.route_add(&pod_route).await?;

    let d = routes::compute(&cluster(Encapsulation::None, true));
    let r = sync(&n, &p, &d).await?;
    assert_eq!(r.routes_added, 6, "{r}");
    let to2 = n
        .route_to("10.244.0.64/26")
        .await?
        .context("route to node2's block")?;
    assert_eq!(
        (to2.gateway, to2.oif, to2.kind),
        (Some(ip("172.31.7.12")), Some(ul_index), RouteKind::Unicast)
    );
    let to3v6 = n
        .route_to("fd00:10:244::80/122")
        .await?
        .context("v6 route to node3's block")?;
    assert_eq!(to3v6.gateway, Some(ip("fd00:5e:7::13")));
    assert_eq!(
        n.route_to("10.244.0.0/26")
            .await?
            .context("own block")?
            .kind,
        RouteKind::Blackhole
    );
    assert_eq!(
        n.route_to("fd00:10:244::/122")
            .await?
            .context("own v6 block")?
            .kind,
        RouteKind::Blackhole
    );

    // A second sync changes nothing.
    assert_eq!(sync(&n, &p, &d).await?.changes(), 0);

    // node3 goes away: its routes go, the rest stay.
    let d = routes::compute(&cluster(Encapsulation::None, false));
    let r = sync(&n, &p, &d).await?;
    assert_eq!(r.routes_removed, 2, "{r}");
    assert!(n.route_to("10.244.0.128/26").await?.is_none());
    assert!(n.route_to("fd00:10:244::80/122").await?.is_none());
    assert!(n.route_to("10.244.0.64/26").await?.is_some());

    // Drift: a route deleted by hand comes back at the next resync.
    n.nl.route_del(&to2).await?;
    assert!(n.route_to("10.244.0.64/26").await?.is_none());
    let r = sync(&n, &p, &d).await?;
    assert_eq!(r.routes_added, 1, "{r}");
    assert!(n.route_to("10.244.0.64/26").await?.is_some());

    // Drift: a route pointed elsewhere is put back.
    n.nl.route_replace(
        &Route::new(net("10.244.0.64/26"))
            .via(ip("172.31.7.99"))
            .dev(ul_index),
    )
    .await?;
    let r = sync(&n, &p, &d).await?;
    assert_eq!(r.routes_replaced, 1, "{r}");
    assert_eq!(
        n.route_to("10.244.0.64/26").await?.unwrap().gateway,
        Some(ip("172.31.7.12"))
    );

    // Nothing wanted at all: every owned route goes, the others stay.
    sync(&n, &p, &Desired::default()).await?;
    let left = n.serval_routes().await?;
    assert_eq!(
        left.iter().filter(|r| r.dst == pod_route.dst).count(),
        1,
        "the pod route stays: {left:?}"
    );
    assert!(
        left.iter().all(|r| r.dst == pod_route.dst),
        "only the pod route is left: {left:?}"
    );
    let others = n.nl.routes(IpFamily::V4, Some(4)).await?;
    assert!(
        others.iter().any(|r| r.dst == foreign.dst),
        "foreign route untouched: {others:?}"
    );
    Ok(())
}

#[tokio::test]
async fn vxlan_devices_neighbours_and_fdb_follow_the_encapsulation() -> Result<()> {
    if !require_root("vxlan_devices_neighbours_and_fdb_follow_the_encapsulation") {
        return Ok(());
    }
    logs();
    let n = node("172.31.7.11/24", "fd00:5e:7::11/64").await?;
    let p = Programmer::new(n.ns.netlink()?);
    // A leftover device of the right name but the wrong VNI is replaced.
    n.nl.vxlan_add(
        &Vxlan::new(VXLAN_V4_DEVICE, 1)
            .local(ip("172.31.7.11"))
            .underlay(n.ul.clone()),
    )
    .await?;
    let d = routes::compute(&cluster(Encapsulation::Vxlan, true));
    let r = sync(&n, &p, &d).await?;
    assert_eq!(r.devices_changed, 3, "one removed, two created: {r}");
    for dev in [VXLAN_V4_DEVICE, VXLAN_V6_DEVICE] {
        let info = n.nl.vxlan_info(dev).await?;
        assert_eq!(
            (info.vni, info.port, info.underlay.as_deref()),
            (4096, 4789, Some(n.ul.as_str())),
            "{dev}"
        );
    }

    for (dev, family, mtu, gw, block) in [
        (
            VXLAN_V4_DEVICE,
            Family::V4,
            1450,
            "172.31.7.12",
            "10.244.0.64/26",
        ),
        (
            VXLAN_V6_DEVICE,
            Family::V6,
            1430,
            "fd00:5e:7::12",
            "fd00:10:244::40/122",
        ),
    ] {
        let link = n.nl.link(dev).await?;
        assert_eq!(link.kind.as_deref(), Some("vxlan"));
        assert_eq!(link.mtu, Some(mtu));
        assert!(link.up);
        assert_eq!(link.mac, Some(MacAddr(routes::vtep_mac("node1", family))));
        let route = n.route_to(block).await?.context("vxlan route")?;
        // IPv4: the remote underlay address; IPv6: the remote VTEP's link-local address.
        let next_hop = routes::vxlan_next_hop("node2", family, ip(gw)).0;
        assert_eq!(
            (route.gateway, route.oif),
            (Some(next_hop), Some(link.index))
        );
        let neigh = n.nl.neighbours(Some(dev)).await?;
        let want_mac = MacAddr(routes::vtep_mac("node2", family));
        assert!(
            neigh
                .iter()
                .any(|x| x.ip == next_hop && x.mac == Some(want_mac) && x.permanent),
            "{dev}: {neigh:?}"
        );
        assert_eq!(
            neigh.iter().filter(|x| x.permanent).count(),
            2,
            "node2 and node3: {neigh:?}"
        );
        let fdb = n.nl.fdb_entries(dev).await?;
        assert!(
            fdb.iter()
                .any(|e| e.mac == want_mac && e.dst == Some(ip(gw))),
            "{dev}: {fdb:?}"
        );
    }
    assert_eq!(sync(&n, &p, &d).await?.changes(), 0, "steady state");

    // node3 leaves: its neighbour and FDB entries go too.
    let d = routes::compute(&cluster(Encapsulation::Vxlan, false));
    let r = sync(&n, &p, &d).await?;
    assert_eq!(
        (r.routes_removed, r.neighbours_changed, r.fdb_changed),
        (2, 2, 2),
        "{r}"
    );
    assert!(
        n.nl.neighbours(Some(VXLAN_V4_DEVICE))
            .await?
            .iter()
            .all(|x| x.ip != ip("172.31.7.13"))
    );

    // Cross-subnet with everyone in one subnet: native routes, the devices stay.
    let d = routes::compute(&cluster(Encapsulation::VxlanCrossSubnet, false));
    let r = sync(&n, &p, &d).await?;
    assert_eq!(r.routes_replaced, 2, "{r}");
    let ul_index = n.nl.link_index(&n.ul).await?;
    assert_eq!(
        n.route_to("10.244.0.64/26").await?.unwrap().oif,
        Some(ul_index)
    );

    // Back to no encapsulation: the devices go (with their routes and entries).
    let d = routes::compute(&cluster(Encapsulation::None, false));
    sync(&n, &p, &d).await?;
    assert!(
        n.nl.link(VXLAN_V4_DEVICE)
            .await
            .is_err_and(|e| e.is_not_found())
    );
    assert!(
        n.nl.link(VXLAN_V6_DEVICE)
            .await
            .is_err_and(|e| e.is_not_found())
    );
    assert_eq!(
        n.route_to("fd00:10:244::40/122").await?.unwrap().gateway,
        Some(ip("fd00:5e:7::12"))
    );
    Ok(())
}
