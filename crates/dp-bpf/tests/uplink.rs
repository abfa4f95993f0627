//! BPF program tests of the uplink programs (`serval_uplink_in` / `serval_uplink_out`) and the
//! hairpin masquerade of `serval_from_ep`: the real embedded object, private (unpinned) maps,
//! crafted packets through BPF_PROG_TEST_RUN. Asserts rewritten addresses and ports with
//! verified checksums, the conntrack entries, the bpfPSNATPorts range and drop counters.
//!
//! Every test runs inside its own fresh network namespace (forwarding off, no routes), where
//! the programs' FIB lookup finds nothing and leaves the packet to the stack: the verdict is
//! then TCX_NEXT (-1) on the uplink and TC_ACT_OK on a workload interface, deterministically.
//! One test turns forwarding on and adds a route, and sees the packet redirected.

#[expect(
    dead_code,
    reason = "the shared packet helpers include ones (FIN/RST, udp_csum) this test does not use"
)]
mod common;

use std::net::IpAddr;

use common::fixture::{
    NEXT, add_frontend, allow_all, ct, drops, host_len, in_fresh_netns, ip, ip_cmd, load_tc, route,
    run, small_sizes, veth_d0,
};
use common::packet::{
    L4, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, TCP_SYN, packet, parse, tcp, udp,
};
use serval_dp_bpf::{
    Dataplane, Hook, LogLevel, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TEST_RUN_IFINDEX, abi::*,
};
use serval_sys::testing::require_root;
const PSNAT: (u16, u16) = (20000, 20009);
const NODE_PORT: u16 = 30000;
const EP: u32 = 10;

/// Addresses of one family.
#[derive(Clone, Copy)]
struct Net {
    /// This node (its uplink address).
    node: IpAddr,
    /// A host outside the cluster.
    outside: IpAddr,
    /// A pod on another node.
    remote_pod: IpAddr,
    /// A pod on this node (the test-run endpoint where one is needed).
    local_pod: IpAddr,
    /// The pod network (a natOutgoing pool) and a cluster IP.
    pool: (IpAddr, u8),
    vip: IpAddr,
}

fn v4() -> Net {
    Net {
        node: ip("172.31.1.12"),
        outside: ip("172.31.1.100"),
        remote_pod: ip("10.244.1.5"),
        local_pod: ip("10.244.2.7"),
        pool: (ip("10.244.0.0"), 16),
        vip: ip("10.96.0.9"),
    }
}

fn v6() -> Net {
    Net {
        node: ip("fd00:5e:1::12"),
        outside: ip("fd00:5e:1::100"),
        remote_pod: ip("fd00:10:244:1::5"),
        local_pod: ip("fd00:10:244:2::7"),
        pool: (ip("fd00:10:244::"), 48),
        vip: ip("fd00:10:96::9"),
    }
}

/// Loads the programs with this node's entry (both families, `psnat`), routes (the pool with
/// natOutgoing, the pods in it, this node) and an allow-all policy for endpoint EP.
fn load(psnat: (u16, u16)) -> Dataplane {
    let mut dp = load_tc(small_sizes(), LogLevel::Off);
    let mut m = dp.maps();
    m.set_host(&HostVal::new(&[v4().node, v6().node], psnat))
        .unwrap();
    for net in [v4(), v6()] {
        let pool_flags = SV_RT_F_IN_POOL | SV_RT_F_NAT_OUTGOING;
        route(&mut m, net.pool.0, net.pool.1, 50, pool_flags);
        for pod in [net.remote_pod, net.local_pod] {
            route(&mut m, pod, host_len(pod), 50, pool_flags);
        }
        route(&mut m, net.node, host_len(net.node), 3, SV_RT_F_HOST);
    }
    allow_all(&mut m, EP);
    dp
}

/// The ICMP echo identifier of a frame.
fn echo_id(pkt: &[u8]) -> u16 {
    let l4 = if pkt[12] == 0x08 {
        14 + usize::from(pkt[14] & 0x0f) * 4
    } else {
        54
    };
    u16::from_be_bytes([pkt[l4 + 4], pkt[l4 + 5]])
}

fn in_range(port: u16, range: (u16, u16)) -> bool {
    (range.0..=range.1).contains(&port)
}

/// In the test namespace: d0 (10.244.2.1/24, the host side of a local workload's veth) with
/// the workload 10.244.2.9 as a permanent neighbour, forwarding on. Returns d0's ifindex.
fn local_workload_veth() -> u32 {
    let d0 = veth_d0(&["10.244.2.1/24"]);
    ip_cmd(&[
        "neigh",
        "add",
        "10.244.2.9",
        "lladdr",
        "02:00:00:00:00:09",
        "dev",
        "d0",
        "nud",
        "permanent",
    ]);
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("enable forwarding");
    d0
}

#[test]
fn nodeport_cluster_policy_dnats_masquerades_and_reverses_replies() {
    in_fresh_netns("svup", "nodeport_cluster", || {
        for net in [v4(), v6()] {
            let mut dp = load(PSNAT);
            // externalTrafficPolicy Cluster: the one backend is on another node
            add_frontend(
                &mut dp.maps(),
                (net.node, NODE_PORT, PROTO_TCP),
                7,
                SV_NAT_FE_F_EXTERNAL,
                &[(net.remote_pod, 80, false)],
            );
            let syn = packet(net.outside, net.node, tcp(40000, NODE_PORT, TCP_SYN));
            let (verdict, out) = run(&dp, Hook::UplinkIngress, &syn);
            assert_eq!(
                verdict, NEXT,
                "no route in the test namespace: left to the stack"
            );
            let p = parse(&out);
            assert_eq!(
                (p.src, p.dst, p.dport),
                (net.node, net.remote_pod, 80),
                "{p:?}"
            );
            assert!(
                in_range(p.sport, PSNAT),
                "SNAT port {} outside {PSNAT:?}",
                p.sport
            );
            assert!(
                p.l3_csum_ok && p.l4_csum_ok,
                "checksums after DNAT+SNAT: {p:?}"
            );
            let snat_port = p.sport;

            let fwd = ct(&mut dp, net.outside, 40000, net.node, NODE_PORT, PROTO_TCP)
                .expect("NAT_FWD entry");
            assert_eq!(fwd.kind, SV_CT_TYPE_NAT_FWD);
            assert_ne!(fwd.flags & SV_CT_F_SNAT_FWD, 0);
            assert_eq!(
                (fwd.nat_addr.ip(), u16::from_be(fwd.nat_port)),
                (net.remote_pod, 80)
            );
            assert_eq!(
                (fwd.snat_addr.ip(), u16::from_be(fwd.snat_port)),
                (net.node, snat_port)
            );
            let wire = ct(&mut dp, net.node, snat_port, net.remote_pod, 80, PROTO_TCP)
                .expect("wire entry");
            let want = SV_CT_F_DNAT | SV_CT_F_SNAT_REV | SV_CT_F_REDIRECT;
            assert_eq!(wire.flags & want, want, "{wire:?}");
            assert_eq!(
                (wire.snat_addr.ip(), u16::from_be(wire.snat_port)),
                (net.outside, 40000)
            );
            assert_eq!(
                (wire.nat_addr.ip(), u16::from_be(wire.nat_port)),
                (net.node, NODE_PORT)
            );

            // the flow's next packet keeps its backend and source port
            let (_, again) = run(&dp, Hook::UplinkIngress, &syn);
            assert_eq!(parse(&again), p);

            // the backend's reply comes back through this node: both translations reversed
            let reply = packet(
                net.remote_pod,
                net.node,
                tcp(80, snat_port, TCP_SYN | common::packet::TCP_ACK),
            );
            let (verdict, back) = run(&dp, Hook::UplinkIngress, &reply);
            assert_eq!(verdict, NEXT);
            let b = parse(&back);
            assert_eq!(
                (b.src, b.sport, b.dst, b.dport),
                (net.node, NODE_PORT, net.outside, 40000),
                "{b:?}"
            );
            assert!(
                b.l3_csum_ok && b.l4_csum_ok,
                "checksums after reverse NAT: {b:?}"
            );
        }
    });
}

#[test]
fn etp_local_keeps_the_client_address_and_drops_without_a_local_backend() {
    in_fresh_netns("svup", "etp_local", || {
        for net in [v4(), v6()] {
            let mut dp = load(PSNAT);
            let flags = SV_NAT_FE_F_EXTERNAL | SV_NAT_FE_F_EXT_LOCAL;
            // a local and a remote backend: only the local one is a candidate from outside
            add_frontend(
                &mut dp.maps(),
                (net.node, NODE_PORT, PROTO_TCP),
                8,
                flags,
                &[(net.local_pod, 8080, true), (net.remote_pod, 8080, false)],
            );
            for sport in 40000..40010 {
                let syn = packet(net.outside, net.node, tcp(sport, NODE_PORT, TCP_SYN));
                let (verdict, out) = run(&dp, Hook::UplinkIngress, &syn);
                assert_eq!(verdict, NEXT, "DNAT only: the stack forwards");
                let p = parse(&out);
                assert_eq!(
                    (p.src, p.sport, p.dst, p.dport),
                    (net.outside, sport, net.local_pod, 8080),
                    "{p:?}"
                );
                assert!(p.l3_csum_ok && p.l4_csum_ok);
            }
            // the local backend's reply, at its workload interface: back to the client from the
            // node port, forwarded by FIB lookup (here: left to the stack)
            dp.maps()
                .set_endpoint(TEST_RUN_IFINDEX, &EpVal::new(EP, &[net.local_pod]))
                .unwrap();
            let reply = packet(
                net.local_pod,
                net.outside,
                tcp(8080, 40000, TCP_SYN | common::packet::TCP_ACK),
            );
            let (verdict, back) = run(&dp, Hook::FromEndpoint, &reply);
            assert_eq!(verdict, TC_ACT_OK);
            let b = parse(&back);
            assert_eq!(
                (b.src, b.sport, b.dst, b.dport),
                (net.node, NODE_PORT, net.outside, 40000),
                "{b:?}"
            );
            assert!(b.l3_csum_ok && b.l4_csum_ok);

            // no local backend: dropped (not rejected), counted
            add_frontend(
                &mut dp.maps(),
                (net.node, NODE_PORT + 1, PROTO_TCP),
                9,
                flags,
                &[(net.remote_pod, 8080, false)],
            );
            let before = drops(&mut dp, SV_DROP_NO_LOCAL_BACKEND);
            let syn = packet(net.outside, net.node, tcp(40000, NODE_PORT + 1, TCP_SYN));
            let (verdict, _) = run(&dp, Hook::UplinkIngress, &syn);
            assert_eq!(verdict, TC_ACT_SHOT);
            assert_eq!(drops(&mut dp, SV_DROP_NO_LOCAL_BACKEND), before + 1);
        }
    });
}

#[test]
fn external_frontend_without_backends_is_rejected_back_out_of_the_uplink() {
    in_fresh_netns("svup", "uplink_reject", || {
        for net in [v4(), v6()] {
            let mut dp = load(PSNAT);
            add_frontend(
                &mut dp.maps(),
                (net.node, NODE_PORT, PROTO_TCP),
                11,
                SV_NAT_FE_F_EXTERNAL,
                &[],
            );
            let syn = packet(net.outside, net.node, tcp(40000, NODE_PORT, TCP_SYN));
            let (verdict, out) = run(&dp, Hook::UplinkIngress, &syn);
            assert_eq!(verdict, TC_ACT_REDIRECT);
            let p = parse(&out);
            assert_eq!(
                (p.src, p.dst, p.dport),
                (net.node, net.outside, 40000),
                "an RST to the client: {p:?}"
            );
            assert!(p.l4_csum_ok);
        }
    });
}

#[test]
fn nat_outgoing_takes_ports_from_the_range_and_reverses_replies() {
    in_fresh_netns("svup", "nat_outgoing", || {
        for net in [v4(), v6()] {
            let mut dp = load(PSNAT);
            let echo_kind = if net.node.is_ipv4() { 8 } else { 128 };
            let echo_reply = if net.node.is_ipv4() { 0 } else { 129 };
            let icmp_proto = if net.node.is_ipv4() {
                PROTO_ICMP
            } else {
                PROTO_ICMPV6
            };
            for (l4, proto) in [
                (tcp(33000, 9000, TCP_SYN), PROTO_TCP),
                (udp(33001, 9000), PROTO_UDP),
                (
                    L4::Icmp {
                        kind: echo_kind,
                        code: 0,
                        id: 0x4242,
                    },
                    icmp_proto,
                ),
            ] {
                let pkt = packet(net.local_pod, net.outside, l4);
                let (verdict, out) = run(&dp, Hook::UplinkEgress, &pkt);
                assert_eq!(verdict, NEXT);
                let p = parse(&out);
                assert_eq!((p.src, p.dst), (net.node, net.outside), "{p:?}");
                assert!(p.l3_csum_ok && p.l4_csum_ok, "checksums after SNAT: {p:?}");
                let (sport, dport) = if proto == icmp_proto {
                    (echo_id(&out), echo_id(&out))
                } else {
                    (p.sport, p.dport)
                };
                assert!(in_range(sport, PSNAT), "port {sport} outside {PSNAT:?}");
                // the next packet keeps the binding
                let (_, again) = run(&dp, Hook::UplinkEgress, &pkt);
                assert_eq!(again, out);
                // the reply: back to the pod's address and port
                let reply_l4 = match l4 {
                    L4::Tcp { .. } => tcp(dport, sport, TCP_SYN | common::packet::TCP_ACK),
                    L4::Udp { .. } => udp(dport, sport),
                    _ => L4::Icmp {
                        kind: echo_reply,
                        code: 0,
                        id: sport,
                    },
                };
                let reply = packet(net.outside, net.node, reply_l4);
                let (verdict, back) = run(&dp, Hook::UplinkIngress, &reply);
                assert_eq!(verdict, NEXT);
                let b = parse(&back);
                assert_eq!((b.src, b.dst), (net.outside, net.local_pod), "{b:?}");
                assert!(
                    b.l3_csum_ok && b.l4_csum_ok,
                    "checksums after reverse SNAT: {b:?}"
                );
                match l4 {
                    L4::Tcp { sport: s, .. } | L4::Udp { sport: s, .. } => assert_eq!(b.dport, s),
                    _ => assert_eq!(echo_id(&back), 0x4242),
                }
                let orig = match l4 {
                    L4::Tcp {
                        sport: s, dport: d, ..
                    }
                    | L4::Udp {
                        sport: s, dport: d, ..
                    } => (s, d),
                    _ => (0x4242, 0x4242),
                };
                let entry = ct(&mut dp, net.local_pod, orig.0, net.outside, orig.1, proto)
                    .expect("original-tuple entry");
                assert_ne!(entry.flags & SV_CT_F_SNAT_FWD, 0);
                assert_eq!(u16::from_be(entry.snat_port), sport);
            }
            // to the pool, to a node: not masqueraded, untouched
            for dst in [net.remote_pod, net.node] {
                let pkt = packet(net.local_pod, dst, tcp(33000, 80, TCP_SYN));
                let (verdict, out) = run(&dp, Hook::UplinkEgress, &pkt);
                assert_eq!((verdict, out), (NEXT, pkt));
            }
        }
    });
}

#[test]
fn snat_ports_never_collide_and_run_out_with_a_drop() {
    in_fresh_netns("svup", "psnat_exhausted", || {
        let net = v4();
        let range = (25000, 25001);
        let mut dp = load(range);
        let mut ports = Vec::new();
        for sport in [33000, 33001] {
            let (_, out) = run(
                &dp,
                Hook::UplinkEgress,
                &packet(net.local_pod, net.outside, tcp(sport, 9000, TCP_SYN)),
            );
            ports.push(parse(&out).sport);
        }
        ports.sort();
        assert_eq!(
            ports,
            vec![25000, 25001],
            "two flows, the two ports of the range"
        );
        let before = drops(&mut dp, SV_DROP_SNAT_PORTS);
        let pkt = packet(net.local_pod, net.outside, tcp(33002, 9000, TCP_SYN));
        let (verdict, _) = run(&dp, Hook::UplinkEgress, &pkt);
        assert_eq!(verdict, TC_ACT_SHOT, "no free port: dropped");
        assert_eq!(drops(&mut dp, SV_DROP_SNAT_PORTS), before + 1);
        // a wire tuple that is taken by an unrelated flow is skipped, not shared
        let mut dp = load((26000, 26000));
        let (taken, _) = CtKey::of(net.node, 26000, net.outside, 9000, PROTO_TCP);
        dp.maps().set_conntrack(&taken, &CtVal::default()).unwrap();
        let (verdict, _) = run(&dp, Hook::UplinkEgress, &pkt);
        assert_eq!(verdict, TC_ACT_SHOT);
    });
}

#[test]
fn hairpin_is_masqueraded_to_the_node_and_answered() {
    in_fresh_netns("svup", "hairpin", || {
        for net in [v4(), v6()] {
            let mut dp = load(PSNAT);
            dp.maps()
                .set_endpoint(TEST_RUN_IFINDEX, &EpVal::new(EP, &[net.local_pod]))
                .unwrap();
            add_frontend(
                &mut dp.maps(),
                (net.vip, 80, PROTO_TCP),
                12,
                0,
                &[(net.local_pod, 8080, true)],
            );
            let syn = packet(net.local_pod, net.vip, tcp(41000, 80, TCP_SYN));
            let (verdict, out) = run(&dp, Hook::FromEndpoint, &syn);
            assert_eq!(
                verdict, TC_ACT_OK,
                "forwarded by FIB lookup (here: left to the stack)"
            );
            let p = parse(&out);
            assert_eq!(
                (p.src, p.dst, p.dport),
                (net.node, net.local_pod, 8080),
                "{p:?}"
            );
            assert!(in_range(p.sport, PSNAT));
            assert!(p.l3_csum_ok && p.l4_csum_ok);
            // delivered to the workload (its ingress policy allows)
            let (verdict, _) = run(&dp, Hook::ToEndpoint, &out);
            assert_eq!(verdict, TC_ACT_OK);
            // its answer goes back from the VIP to its own port
            let reply = packet(
                net.local_pod,
                net.node,
                tcp(8080, p.sport, TCP_SYN | common::packet::TCP_ACK),
            );
            let (verdict, back) = run(&dp, Hook::FromEndpoint, &reply);
            assert_eq!(verdict, TC_ACT_OK);
            let b = parse(&back);
            assert_eq!(
                (b.src, b.sport, b.dst, b.dport),
                (net.vip, 80, net.local_pod, 41000),
                "{b:?}"
            );
            assert!(b.l3_csum_ok && b.l4_csum_ok);
            // the flow's next packet: same masquerade port
            let (_, again) = run(&dp, Hook::FromEndpoint, &syn);
            assert_eq!(parse(&again), p);
        }
    });
}

#[test]
fn masqueraded_packets_are_redirected_when_the_fib_knows_the_way() {
    in_fresh_netns("svup", "fib_forward", || {
        veth_d0(&["10.244.1.1/24"]);
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("enable forwarding");
        let net = v4();
        let mut dp = load(PSNAT);
        add_frontend(
            &mut dp.maps(),
            (net.node, NODE_PORT, PROTO_TCP),
            7,
            SV_NAT_FE_F_EXTERNAL,
            &[(net.remote_pod, 80, false)],
        );
        let syn = packet(net.outside, net.node, tcp(40000, NODE_PORT, TCP_SYN));
        let (verdict, out) = run(&dp, Hook::UplinkIngress, &syn);
        assert_eq!(
            verdict, TC_ACT_REDIRECT,
            "redirected towards d0 (its neighbour unresolved: bpf_redirect_neigh)"
        );
        let p = parse(&out);
        assert_eq!((p.src, p.dst), (net.node, net.remote_pod));
        assert!(
            p.l3_csum_ok && p.l4_csum_ok,
            "TTL decremented with the checksum fixed"
        );
        assert_eq!(out[14 + 8], 63, "TTL decremented");
    });
}

#[test]
fn both_builds_pass_the_verifier() {
    if !require_root("both_builds_pass_the_verifier") {
        return;
    }
    for level in [LogLevel::Off, LogLevel::Debug] {
        load_tc(small_sizes(), level);
    }
}

#[test]
fn the_cleaner_frees_a_snat_port_with_its_flow() {
    in_fresh_netns("svup", "snat_cleaner", || {
        let net = v4();
        let mut dp = load((25000, 25000));
        let pkt = packet(net.local_pod, net.outside, udp(33000, 9000));
        let (_, out) = run(&dp, Hook::UplinkEgress, &pkt);
        assert_eq!(parse(&out).sport, 25000);
        let wire = CtKey::of(net.node, 25000, net.outside, 9000, PROTO_UDP).0;
        // The wire entry was just used by a reply; the original entry went idle: the flow is
        // over when its original entry expires, and its port goes with it.
        let mut fresh = dp.maps().conntrack(&wire).unwrap().expect("wire entry");
        let later = serval_dp_bpf::monotonic_now_ns() + 61_000_000_000;
        fresh.last_seen_ns = later;
        dp.maps().set_conntrack(&wire, &fresh).unwrap();
        let report = dp
            .maps()
            .expire_conntrack(&serval_dp_bpf::CtTimeouts::default(), later)
            .unwrap();
        assert_eq!(report.removed, 2, "{report:?}");
        assert_eq!(dp.maps().conntrack(&wire).unwrap(), None);
        // the one port of the range serves the next flow
        let pkt = packet(net.local_pod, net.outside, udp(33001, 9000));
        let (verdict, out) = run(&dp, Hook::UplinkEgress, &pkt);
        assert_eq!((verdict, parse(&out).sport), (NEXT, 25000));
    });
}

#[test]
fn fast_path_checks_the_destination_ingress_policy_and_redirects_into_its_namespace() {
    in_fresh_netns("svup", "fast_path", || {
        let d0 = local_workload_veth();
        let net = v4();
        let dst: IpAddr = ip("10.244.2.9");
        let mut dp = load(PSNAT);
        const DST_EP: u32 = 20;
        {
            let mut m = dp.maps();
            m.set_endpoint(TEST_RUN_IFINDEX, &EpVal::new(EP, &[net.local_pod]))
                .unwrap();
            m.set_endpoint(d0, &EpVal::new(DST_EP, &[dst])).unwrap();
            let route = RouteVal {
                identity: 50,
                flags: SV_RT_F_LOCAL_WORKLOAD | SV_RT_F_IN_POOL,
                ifindex: d0,
                ..RouteVal::default()
            };
            m.set_route(&route_key(dst, 32), &route).unwrap();
            // the destination denies everything inbound
            m.set_policy(
                &pol_key_any_proto(DST_EP, SV_IDENTITY_ANY, SV_DIR_INGRESS),
                &PolVal {
                    verdict: SV_VERDICT_DENY,
                    rule_id: 9,
                },
            )
            .unwrap();
        }
        let syn = packet(net.local_pod, dst, tcp(42000, 80, TCP_SYN));
        let before = drops(&mut dp, SV_DROP_POLICY);
        let (verdict, _) = run(&dp, Hook::FromEndpoint, &syn);
        assert_eq!(
            verdict, TC_ACT_SHOT,
            "denied by the destination's ingress policy, inline"
        );
        assert_eq!(drops(&mut dp, SV_DROP_POLICY), before + 1);

        // allowed: straight into the destination's namespace, MACs from the FIB, TTL - 1
        dp.maps()
            .set_policy(
                &pol_key_any_proto(DST_EP, SV_IDENTITY_ANY, SV_DIR_INGRESS),
                &PolVal {
                    verdict: SV_VERDICT_ALLOW,
                    rule_id: 9,
                },
            )
            .unwrap();
        let syn = packet(net.local_pod, dst, tcp(42001, 80, TCP_SYN));
        let (verdict, out) = run(&dp, Hook::FromEndpoint, &syn);
        assert_eq!(verdict, TC_ACT_REDIRECT, "bpf_redirect_peer");
        assert_eq!(
            out[..6],
            [0x02, 0, 0, 0, 0, 0x09],
            "destination MAC from the neighbour table"
        );
        assert_eq!(out[14 + 8], 63, "TTL decremented");
        let p = parse(&out);
        assert!(p.l3_csum_ok && p.l4_csum_ok);
        // both legs recorded: serval_to_ep, skipped, would have approved the destination's
        let e = ct(&mut dp, net.local_pod, 42001, dst, 80, PROTO_TCP).expect("flow entry");
        let both = SV_CT_F_APPROVED_SRC | SV_CT_F_APPROVED_DST;
        assert_eq!(e.flags & both, both, "{e:?}");

        // a workload whose neighbour entry is not resolved yet: still past the host stack
        // (netfilter must not see half a flow), into its veth by bpf_redirect_neigh
        let other: IpAddr = ip("10.244.2.10");
        let route = RouteVal {
            identity: 50,
            flags: SV_RT_F_LOCAL_WORKLOAD | SV_RT_F_IN_POOL,
            ifindex: d0,
            ..RouteVal::default()
        };
        dp.maps().set_route(&route_key(other, 32), &route).unwrap();
        dp.maps()
            .set_endpoint(d0, &EpVal::new(DST_EP, &[other]))
            .unwrap();
        let (verdict, out) = run(
            &dp,
            Hook::FromEndpoint,
            &packet(net.local_pod, other, tcp(42002, 80, TCP_SYN)),
        );
        assert_eq!(verdict, TC_ACT_REDIRECT, "bpf_redirect_neigh");
        assert_eq!(out[14 + 8], 63, "TTL decremented");
    });
}

#[test]
fn packets_from_the_uplink_to_a_local_workload_take_the_fast_path() {
    in_fresh_netns("svup", "uplink_fast_path", || {
        let d0 = local_workload_veth();
        let net = v4();
        let dst: IpAddr = ip("10.244.2.9");
        let mut dp = load(PSNAT);
        const DST_EP: u32 = 21;
        {
            let mut m = dp.maps();
            m.set_endpoint(d0, &EpVal::new(DST_EP, &[dst])).unwrap();
            let route = RouteVal {
                identity: 50,
                flags: SV_RT_F_LOCAL_WORKLOAD | SV_RT_F_IN_POOL,
                ifindex: d0,
                ..RouteVal::default()
            };
            m.set_route(&route_key(dst, 32), &route).unwrap();
            // ingress: TCP 80 from a pod of another node, nothing from the world
            let pod = aya::maps::lpm_trie::Key::new(
                SV_POL_PREFIX_FULL,
                PolMatch::new(DST_EP, 50, SV_DIR_INGRESS, PROTO_TCP, 80),
            );
            m.set_policy(
                &pod,
                &PolVal {
                    verdict: SV_VERDICT_ALLOW,
                    rule_id: 1,
                },
            )
            .unwrap();
            m.set_policy(
                &pol_key_any_proto(DST_EP, 50, SV_DIR_INGRESS),
                &PolVal {
                    verdict: SV_VERDICT_DENY,
                    rule_id: 2,
                },
            )
            .unwrap();
            m.set_policy(
                &pol_key_any_proto(DST_EP, SV_IDENTITY_ANY, SV_DIR_INGRESS),
                &PolVal {
                    verdict: SV_VERDICT_DENY,
                    rule_id: 3,
                },
            )
            .unwrap();
        }
        let (verdict, out) = run(
            &dp,
            Hook::UplinkIngress,
            &packet(net.remote_pod, dst, tcp(42000, 80, TCP_SYN)),
        );
        assert_eq!(verdict, TC_ACT_REDIRECT, "allowed: bpf_redirect_peer");
        assert_eq!(out[..6], [0x02, 0, 0, 0, 0, 0x09]);
        assert_eq!(out[14 + 8], 63, "TTL decremented");
        let e = ct(&mut dp, net.remote_pod, 42000, dst, 80, PROTO_TCP).expect("flow entry");
        assert_ne!(e.flags & SV_CT_F_APPROVED_DST, 0, "{e:?}");
        let before = drops(&mut dp, SV_DROP_POLICY);
        for pkt in [
            packet(net.remote_pod, dst, tcp(42001, 81, TCP_SYN)),
            packet(net.outside, dst, tcp(42002, 80, TCP_SYN)),
        ] {
            let (verdict, _) = run(&dp, Hook::UplinkIngress, &pkt);
            assert_eq!(
                verdict, TC_ACT_SHOT,
                "denied by the workload's ingress policy"
            );
        }
        assert_eq!(drops(&mut dp, SV_DROP_POLICY), before + 2);
        // not a workload of this node: left to the next program and the stack, untouched
        let pkt = packet(net.outside, net.node, tcp(42003, 22, TCP_SYN));
        let (verdict, out) = run(&dp, Hook::UplinkIngress, &pkt);
        assert_eq!((verdict, out), (NEXT, pkt));
    });
}
