//! Unit tests of the desired routing state: every encapsulation, v4/v6/dual, node and
//! block removal, unroutable blocks, VTEP addressing, the model -> inputs mapping.

use super::*;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}
fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn node(name: &str, v4: Option<&str>, v6: Option<&str>) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        ipv4: v4.map(net),
        ipv6: v6.map(net),
    }
}

fn inputs(
    nodes: Vec<NodeInfo>,
    pools: Vec<(&str, Encapsulation)>,
    blocks: Vec<(&str, &str)>,
) -> Inputs {
    Inputs {
        node: "node1".into(),
        nodes: nodes.into_iter().map(|n| (n.name.clone(), n)).collect(),
        pools: pools
            .into_iter()
            .enumerate()
            .map(|(i, (cidr, encapsulation))| PoolInfo {
                name: format!("pool{i}"),
                cidr: net(cidr),
                encapsulation,
            })
            .collect(),
        blocks: blocks
            .into_iter()
            .map(|(n, b)| BlockInfo {
                node: n.into(),
                block: net(b),
            })
            .collect(),
        underlay_mtu: 1500,
    }
}

fn three_v4_nodes() -> Vec<NodeInfo> {
    vec![
        node("node1", Some("172.31.7.11/24"), None),
        node("node2", Some("172.31.7.12/24"), None),
        node("node3", Some("172.31.8.13/24"), None),
    ]
}

fn via(gw: &str, dev: RouteDev, onlink: bool) -> RouteTarget {
    RouteTarget::Via {
        gateway: ip(gw),
        dev,
        onlink,
    }
}

#[test]
fn none_routes_remote_blocks_via_the_underlay_and_blackholes_own() {
    let d = compute(&inputs(
        three_v4_nodes(),
        vec![("10.244.0.0/16", Encapsulation::None)],
        vec![
            ("node1", "10.244.0.0/26"),
            ("node2", "10.244.0.64/26"),
            ("node3", "10.244.0.128/26"),
        ],
    ));
    assert_eq!(d.routes.len(), 3);
    assert_eq!(
        d.routes[&net("10.244.0.0/26")].target,
        RouteTarget::Blackhole
    );
    assert_eq!(
        d.routes[&net("10.244.0.64/26")].target,
        via("172.31.7.12", RouteDev::Underlay, false)
    );
    assert_eq!(
        d.routes[&net("10.244.0.128/26")].target,
        via("172.31.8.13", RouteDev::Underlay, false)
    );
    assert_eq!(d.routes[&net("10.244.0.128/26")].node, "node3");
    assert!(d.vxlan_devices.is_empty());
    assert!(d.neighbours.is_empty() && d.fdb.is_empty());
    assert_eq!(d.pod_mtu, 1500);
    assert!(d.skipped.is_empty(), "{:?}", d.skipped);
}

#[test]
fn vxlan_routes_through_the_device_with_neighbours_and_fdb() {
    let d = compute(&inputs(
        three_v4_nodes(),
        vec![("10.244.0.0/16", Encapsulation::Vxlan)],
        vec![
            ("node1", "10.244.0.0/26"),
            ("node2", "10.244.0.64/26"),
            ("node3", "10.244.0.128/26"),
        ],
    ));
    let dev = RouteDev::Vxlan(VXLAN_V4_DEVICE);
    assert_eq!(
        d.routes[&net("10.244.0.64/26")].target,
        via("172.31.7.12", dev.clone(), true)
    );
    assert_eq!(
        d.routes[&net("10.244.0.128/26")].target,
        via("172.31.8.13", dev, true)
    );
    assert_eq!(
        d.routes[&net("10.244.0.0/26")].target,
        RouteTarget::Blackhole
    );
    let vx = &d.vxlan_devices[VXLAN_V4_DEVICE];
    assert_eq!(
        (vx.vni, vx.port, vx.local, vx.mtu),
        (4096, 4789, ip("172.31.7.11"), 1450)
    );
    assert_eq!(vx.mac, vtep_mac("node1", Family::V4));
    assert_eq!(d.pod_mtu, 1450);
    let neigh: Vec<_> = d.neighbours.iter().map(|n| (n.ip, n.mac, n.dev)).collect();
    assert_eq!(
        neigh,
        vec![
            (
                ip("172.31.7.12"),
                vtep_mac("node2", Family::V4),
                VXLAN_V4_DEVICE
            ),
            (
                ip("172.31.8.13"),
                vtep_mac("node3", Family::V4),
                VXLAN_V4_DEVICE
            ),
        ]
    );
    let fdb: Vec<_> = d.fdb.iter().map(|f| (f.mac, f.dst)).collect();
    assert!(fdb.contains(&(vtep_mac("node2", Family::V4), ip("172.31.7.12"))));
    assert!(fdb.contains(&(vtep_mac("node3", Family::V4), ip("172.31.8.13"))));
    assert_eq!(fdb.len(), 2);
}

#[test]
fn cross_subnet_uses_vxlan_only_towards_other_subnets() {
    let d = compute(&inputs(
        three_v4_nodes(),
        vec![("10.244.0.0/16", Encapsulation::VxlanCrossSubnet)],
        vec![("node2", "10.244.0.64/26"), ("node3", "10.244.0.128/26")],
    ));
    // node2 shares 172.31.7.0/24 with node1: native. node3 is in 172.31.8.0/24: VXLAN.
    assert_eq!(
        d.routes[&net("10.244.0.64/26")].target,
        via("172.31.7.12", RouteDev::Underlay, false)
    );
    assert_eq!(
        d.routes[&net("10.244.0.128/26")].target,
        via("172.31.8.13", RouteDev::Vxlan(VXLAN_V4_DEVICE), true)
    );
    assert!(d.vxlan_devices.contains_key(VXLAN_V4_DEVICE));
    assert_eq!(d.pod_mtu, 1450);
}

#[test]
fn ipv6_vxlan_uses_the_v6_device_and_70_bytes() {
    let nodes = vec![
        node("node1", None, Some("fd00:5e:7::11/64")),
        node("node2", None, Some("fd00:5e:7::12/64")),
    ];
    let d = compute(&inputs(
        nodes,
        vec![("fd00:10:244::/112", Encapsulation::Vxlan)],
        vec![
            ("node1", "fd00:10:244::/122"),
            ("node2", "fd00:10:244::40/122"),
        ],
    ));
    assert_eq!(
        d.routes[&net("fd00:10:244::40/122")].target,
        node2_v6_vxlan()
    );
    assert_eq!(
        d.routes[&net("fd00:10:244::/122")].target,
        RouteTarget::Blackhole
    );
    let vx = &d.vxlan_devices[VXLAN_V6_DEVICE];
    assert_eq!(
        (vx.local, vx.mtu, vx.family),
        (ip("fd00:5e:7::11"), 1430, Family::V6)
    );
    assert_eq!(d.pod_mtu, 1430);
    assert!(!d.vxlan_devices.contains_key(VXLAN_V4_DEVICE));
    assert_eq!(d.neighbours.len(), 1);
    let n = d.neighbours.iter().next().unwrap();
    let fdb = d.fdb.iter().next().unwrap();
    // Next hop = node2's VTEP link-local; the FDB sends its MAC to the underlay address.
    assert_eq!(
        (n.ip, n.mac),
        (
            IpAddr::V6(link_local_of_mac(&n.mac)),
            vtep_mac("node2", Family::V6)
        )
    );
    assert_eq!((fdb.mac, fdb.dst), (n.mac, ip("fd00:5e:7::12")));
}

fn node2_v6_vxlan() -> RouteTarget {
    RouteTarget::Via {
        gateway: IpAddr::V6(link_local_of_mac(&vtep_mac("node2", Family::V6))),
        dev: RouteDev::Vxlan(VXLAN_V6_DEVICE),
        onlink: false,
    }
}

#[test]
fn link_local_follows_modified_eui64() {
    assert_eq!(
        link_local_of_mac(&[0x0e, 1, 2, 3, 4, 5]).to_string(),
        "fe80::c01:2ff:fe03:405"
    );
}

#[test]
fn ipv6_none_routes_via_the_v6_underlay() {
    let nodes = vec![
        node("node1", None, Some("fd00:5e:7::11/64")),
        node("node2", None, Some("fd00:5e:7::12/64")),
    ];
    let d = compute(&inputs(
        nodes,
        vec![("fd00:10:244::/112", Encapsulation::None)],
        vec![("node2", "fd00:10:244::40/122")],
    ));
    assert_eq!(
        d.routes[&net("fd00:10:244::40/122")].target,
        via("fd00:5e:7::12", RouteDev::Underlay, false)
    );
    assert_eq!(d.pod_mtu, 1500);
}

#[test]
fn dual_stack_routes_each_family_over_its_own_underlay() {
    let nodes = vec![
        node("node1", Some("172.31.7.11/24"), Some("fd00:5e:7::11/64")),
        node("node2", Some("172.31.7.12/24"), Some("fd00:5e:7::12/64")),
    ];
    let d = compute(&inputs(
        nodes,
        vec![
            ("10.244.0.0/16", Encapsulation::Vxlan),
            ("fd00:10:244::/112", Encapsulation::Vxlan),
        ],
        vec![
            ("node1", "10.244.0.0/26"),
            ("node1", "fd00:10:244::/122"),
            ("node2", "10.244.0.64/26"),
            ("node2", "fd00:10:244::40/122"),
        ],
    ));
    assert_eq!(d.routes.len(), 4);
    assert_eq!(
        d.routes[&net("10.244.0.64/26")].target,
        via("172.31.7.12", RouteDev::Vxlan(VXLAN_V4_DEVICE), true)
    );
    assert_eq!(
        d.routes[&net("fd00:10:244::40/122")].target,
        node2_v6_vxlan()
    );
    assert_eq!(d.vxlan_devices.len(), 2);
    assert_eq!(d.pod_mtu, 1430, "the smaller of 1450 and 1430");
    assert_eq!(d.neighbours.len(), 2);
    assert_eq!(d.fdb.len(), 2);
    assert_ne!(vtep_mac("node2", Family::V4), vtep_mac("node2", Family::V6));

    // Dual-stack, native.
    let nodes = vec![
        node("node1", Some("172.31.7.11/24"), Some("fd00:5e:7::11/64")),
        node("node2", Some("172.31.7.12/24"), Some("fd00:5e:7::12/64")),
    ];
    let d = compute(&inputs(
        nodes,
        vec![
            ("10.244.0.0/16", Encapsulation::None),
            ("fd00:10:244::/112", Encapsulation::None),
        ],
        vec![
            ("node2", "10.244.0.64/26"),
            ("node2", "fd00:10:244::40/122"),
        ],
    ));
    assert_eq!(
        d.routes[&net("10.244.0.64/26")].target,
        via("172.31.7.12", RouteDev::Underlay, false)
    );
    assert_eq!(
        d.routes[&net("fd00:10:244::40/122")].target,
        via("fd00:5e:7::12", RouteDev::Underlay, false)
    );
    assert!(d.vxlan_devices.is_empty());
}

#[test]
fn removing_a_node_removes_its_routes_and_vtep_entries() {
    let pools = vec![("10.244.0.0/16", Encapsulation::Vxlan)];
    let blocks = vec![
        ("node1", "10.244.0.0/26"),
        ("node2", "10.244.0.64/26"),
        ("node3", "10.244.0.128/26"),
    ];
    let before = compute(&inputs(three_v4_nodes(), pools.clone(), blocks.clone()));
    // node3 and its affinity are gone.
    let mut nodes = three_v4_nodes();
    nodes.pop();
    let after = compute(&inputs(nodes.clone(), pools.clone(), blocks[..2].to_vec()));
    assert!(before.routes.contains_key(&net("10.244.0.128/26")));
    assert!(!after.routes.contains_key(&net("10.244.0.128/26")));
    assert!(after.neighbours.iter().all(|n| n.node != "node3"));
    assert!(after.fdb.iter().all(|f| f.node != "node3"));
    assert_eq!(after.routes.len(), 2);
    // Node gone but its affinity left over: not routed, reported.
    let leftover = compute(&inputs(nodes, pools, blocks));
    assert!(!leftover.routes.contains_key(&net("10.244.0.128/26")));
    assert!(leftover.skipped.contains(&Skipped::UnknownNode {
        node: "node3".into(),
        block: net("10.244.0.128/26")
    }));
}

#[test]
fn removing_a_block_removes_its_route() {
    let pools = vec![("10.244.0.0/16", Encapsulation::None)];
    let d = compute(&inputs(
        three_v4_nodes(),
        pools.clone(),
        vec![
            ("node1", "10.244.0.0/26"),
            ("node2", "10.244.0.64/26"),
            ("node2", "10.244.1.0/26"),
        ],
    ));
    assert_eq!(d.routes.len(), 3);
    let d = compute(&inputs(
        three_v4_nodes(),
        pools,
        vec![("node2", "10.244.1.0/26")],
    ));
    assert_eq!(
        d.routes.keys().copied().collect::<Vec<_>>(),
        vec![net("10.244.1.0/26")]
    );
}

#[test]
fn unroutable_blocks_are_reported_not_routed() {
    let nodes = vec![
        node("node1", Some("172.31.7.11/24"), None),
        node("node2", Some("172.31.7.12/24"), None),
    ];
    let d = compute(&inputs(
        nodes,
        vec![
            ("fd00:10:244::/112", Encapsulation::Vxlan),
            ("10.244.0.0/16", Encapsulation::None),
        ],
        vec![("node2", "fd00:10:244::40/122"), ("node2", "10.99.0.0/26")],
    ));
    assert!(d.routes.is_empty());
    assert!(d.skipped.contains(&Skipped::NoPool {
        node: "node2".into(),
        block: net("10.99.0.0/26")
    }));
    assert!(d.skipped.contains(&Skipped::NoUnderlayAddress {
        node: "node2".into(),
        block: net("fd00:10:244::40/122"),
        family: Family::V6
    }));
    assert!(d.skipped.iter().any(|s| matches!(
        s,
        Skipped::NoLocalUnderlay {
            family: Family::V6,
            ..
        }
    )));
    assert!(d.vxlan_devices.is_empty());
    for s in &d.skipped {
        assert!(!s.to_string().is_empty());
    }
}

#[test]
fn vtep_macs_are_stable_local_unicast_and_distinct() {
    let a = vtep_mac("node1", Family::V4);
    assert_eq!(a, vtep_mac("node1", Family::V4));
    assert_eq!(a[0], 0x0e, "locally administered, unicast");
    let all: BTreeSet<_> = (1..200)
        .map(|i| vtep_mac(&format!("node{i}"), Family::V4))
        .collect();
    assert_eq!(all.len(), 199);
    assert_eq!(
        mac_string(&[0x0e, 1, 2, 0xab, 0, 0xff]),
        "0e:01:02:ab:00:ff"
    );
}

#[test]
fn underlay_mtu_unknown_defaults_to_1500() {
    let mut i = inputs(
        three_v4_nodes(),
        vec![("10.244.0.0/16", Encapsulation::Vxlan)],
        vec![],
    );
    i.underlay_mtu = 0;
    assert_eq!(compute(&i).pod_mtu, 1450);
    i.underlay_mtu = 9000;
    assert_eq!(compute(&i).pod_mtu, 8950);
}

#[test]
fn inputs_come_from_nodes_pools_and_affinities_in_the_cache() {
    let docs = serval_model::parse_documents(
        "test",
        r#"
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: node1}
spec: {bgp: {ipv4Address: 172.31.7.11/24, ipv6Address: "fd00:5e:7::11/64"}}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: node2}
spec: {bgp: {ipv4Address: 172.31.7.12/24}}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: v4}
spec: {cidr: 10.244.0.0/16, encapsulation: VXLANCrossSubnet}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: v6}
spec: {cidr: "fd00:10:244::/112", encapsulation: VXLAN}
---
apiVersion: v1
kind: Namespace
metadata: {name: default}
"#,
    )
    .unwrap();
    let mut state = crate::cache::State::default();
    for r in docs {
        state.resources.insert(r.key(), r);
    }
    let aff = serval_ipam::Affinity {
        node: "node2".into(),
        block: net("10.244.0.64/26"),
        pool: "v4".into(),
    };
    state.affinities.insert((aff.node.clone(), aff.block), aff);
    let i = Inputs::from_state(&state, "node1", 1500);
    assert_eq!(i.node, "node1");
    assert_eq!(i.nodes.len(), 2);
    assert_eq!(
        i.nodes["node1"].ipv4,
        Some(net("172.31.7.11/24")),
        "host bits kept"
    );
    assert_eq!(i.nodes["node1"].ipv6, Some(net("fd00:5e:7::11/64")));
    assert_eq!(i.nodes["node2"].ipv6, None);
    let mut pools: Vec<_> = i
        .pools
        .iter()
        .map(|p| (p.name.as_str(), p.cidr, p.encapsulation))
        .collect();
    pools.sort();
    assert_eq!(
        pools,
        vec![
            ("v4", net("10.244.0.0/16"), Encapsulation::VxlanCrossSubnet),
            ("v6", net("fd00:10:244::/112"), Encapsulation::Vxlan),
        ]
    );
    assert_eq!(
        i.blocks,
        vec![BlockInfo {
            node: "node2".into(),
            block: net("10.244.0.64/26")
        }]
    );
}
