//! BPF program tests: the real embedded objects, loaded into the running kernel (root), fed
//! crafted packets with BPF_PROG_TEST_RUN. Each test loads its own private (unpinned) maps, so
//! tests run in parallel. Asserts verdicts, rewritten bytes with verified checksums, conntrack
//! and affinity state and drop counters.

#[expect(
    dead_code,
    reason = "the shared fixtures include ones (netns, hep, frontends) this test does not use"
)]
mod common;

use std::net::IpAddr;

use common::fixture::{self, ct_entry as ct, drops, host_len, ip, load_tc, route, run};
use common::packet::{
    L4, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_FIN, TCP_RST,
    TCP_SYN, packet, parse, sctp, tcp, udp, udp_csum,
};
use serval_dp_bpf::{
    Dataplane, Hook, LogLevel, MapSizes, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TEST_RUN_IFINDEX,
    abi::{self, *},
};

const EP: u32 = 10;
const SERVER_ID: u32 = 100;
const CLIENT_ID: u32 = 101;

struct Net {
    client: IpAddr,
    server: IpAddr,
    vip: IpAddr,
    other: IpAddr,
}

fn v4() -> Net {
    Net {
        client: ip("10.0.0.2"),
        server: ip("10.0.0.3"),
        vip: ip("10.96.0.10"),
        other: ip("10.0.0.4"),
    }
}

fn v6() -> Net {
    Net {
        client: ip("fd00::2"),
        server: ip("fd00::3"),
        vip: ip("fd00:96::10"),
        other: ip("fd00::4"),
    }
}

/// The fixture's small sizes with room for this file's policies.
fn small_sizes() -> MapSizes {
    MapSizes {
        policy: 256,
        ..fixture::small_sizes()
    }
}

/// A dataplane whose test-run endpoint (ifindex 1) is the client (both families), with the
/// server and the client as routes with identities and the client's egress policy: TCP 80,
/// UDP 53 and ports 8000-8080 to the server's identity; ICMP echo to anyone; deny the rest.
/// Ingress: allow from the server identity, deny the rest.
fn setup(level: LogLevel, sizes: MapSizes) -> Option<Dataplane> {
    if !serval_sys::testing::require_root("dp-bpf program test") {
        return None;
    }
    let mut dp = load_tc(sizes, level);
    let mut maps = dp.maps();
    maps.set_endpoint(
        TEST_RUN_IFINDEX,
        &EpVal::new(EP, &[v4().client, v6().client]),
    )
    .unwrap();
    for net in [v4(), v6()] {
        for (addr, id) in [(net.server, SERVER_ID), (net.client, CLIENT_ID)] {
            route(&mut maps, addr, host_len(addr), id, SV_RT_F_LOCAL_WORKLOAD);
        }
    }
    let allow = |rule_id| PolVal {
        verdict: SV_VERDICT_ALLOW,
        rule_id,
    };
    let deny = PolVal {
        verdict: SV_VERDICT_DENY,
        rule_id: 99,
    };
    let eg = SV_DIR_EGRESS;
    // server identity: the complete function for this identity
    let k = |proto, port| {
        aya::maps::lpm_trie::Key::new(
            SV_POL_PREFIX_FULL,
            PolMatch::new(EP, SERVER_ID, eg, proto, port),
        )
    };
    maps.set_policy(&k(PROTO_TCP, 80), &allow(1)).unwrap();
    maps.set_policy(&k(PROTO_UDP, 53), &allow(2)).unwrap();
    for key in pol_keys_port_range(EP, SERVER_ID, eg, PROTO_TCP, 8000, 8080) {
        maps.set_policy(&key, &allow(3)).unwrap();
    }
    maps.set_policy(&pol_key_any_proto(EP, SERVER_ID, eg), &deny)
        .unwrap();
    // every other identity: ICMP echo request allowed, rest denied
    for (proto, kind) in [(PROTO_ICMP, 8u16), (PROTO_ICMPV6, 128u16)] {
        let key = aya::maps::lpm_trie::Key::new(
            SV_POL_PREFIX_ANY_PORT + 8,
            PolMatch::new(EP, SV_IDENTITY_ANY, eg, proto, kind << 8),
        );
        maps.set_policy(&key, &allow(4)).unwrap();
    }
    maps.set_policy(&pol_key_any_proto(EP, SV_IDENTITY_ANY, eg), &deny)
        .unwrap();
    // ingress
    maps.set_policy(&pol_key_any_proto(EP, SERVER_ID, SV_DIR_INGRESS), &allow(5))
        .unwrap();
    maps.set_policy(
        &pol_key_any_proto(EP, SV_IDENTITY_ANY, SV_DIR_INGRESS),
        &deny,
    )
    .unwrap();
    Some(dp)
}

#[test]
fn verdict_map_allows_and_denies_ipv4_and_ipv6() {
    let Some(mut dp) = setup(LogLevel::Off, small_sizes()) else {
        return;
    };
    let mut denied = 0;
    for net in [v4(), v6()] {
        let cases: [(L4, IpAddr, i32); 9] = [
            (tcp(40000, 80, TCP_SYN), net.server, TC_ACT_OK),
            (tcp(40001, 81, TCP_SYN), net.server, TC_ACT_SHOT),
            (udp(40002, 53), net.server, TC_ACT_OK),
            (tcp(40003, 53, TCP_SYN), net.server, TC_ACT_SHOT), // UDP 53 only
            (tcp(40004, 8000, TCP_SYN), net.server, TC_ACT_OK),
            (tcp(40005, 8080, TCP_SYN), net.server, TC_ACT_OK),
            (tcp(40006, 8081, TCP_SYN), net.server, TC_ACT_SHOT),
            (tcp(40007, 7999, TCP_SYN), net.server, TC_ACT_SHOT),
            (tcp(40008, 80, TCP_SYN), net.other, TC_ACT_SHOT), // other identity
        ];
        for (l4, dst, want) in cases {
            let pkt = packet(net.client, dst, l4);
            let (verdict, out) = run(&dp, Hook::FromEndpoint, &pkt);
            assert_eq!(verdict, want, "{} -> {dst} {l4:?}", net.client);
            if want == TC_ACT_OK {
                assert_eq!(out, pkt, "an allowed, un-NATed packet is not modified");
            } else {
                denied += 1;
            }
        }
        // ingress: from the server identity allowed, from another address denied
        let (verdict, _) = run(
            &dp,
            Hook::ToEndpoint,
            &packet(net.server, net.client, tcp(5555, 9999, TCP_SYN)),
        );
        assert_eq!(verdict, TC_ACT_OK);
        let (verdict, _) = run(
            &dp,
            Hook::ToEndpoint,
            &packet(net.other, net.client, tcp(5555, 9999, TCP_SYN)),
        );
        assert_eq!(verdict, TC_ACT_SHOT);
        denied += 1;
    }
    assert_eq!(drops(&mut dp, SV_DROP_POLICY), denied);
    assert_eq!(drops(&mut dp, SV_DROP_SPOOFED), 0);
}

#[test]
fn icmp_echo_by_type_and_conntrack_on_identifier() {
    let Some(mut dp) = setup(LogLevel::Off, small_sizes()) else {
        return;
    };
    for net in [v4(), v6()] {
        let (echo, proto) = if net.client.is_ipv4() {
            (8, PROTO_ICMP)
        } else {
            (128, PROTO_ICMPV6)
        };
        let ping = L4::Icmp {
            kind: echo,
            code: 0,
            id: 4242,
        };
        let (verdict, _) = run(
            &dp,
            Hook::FromEndpoint,
            &packet(net.client, net.other, ping),
        );
        assert_eq!(verdict, TC_ACT_OK);
        let entry = ct(&mut dp, net.client, 4242, net.other, 4242, proto);
        assert_ne!(entry.flags & SV_CT_F_APPROVED_SRC, 0);
        // echo reply comes back through the established entry (ingress would deny `other`)
        let reply = L4::Icmp {
            kind: if net.client.is_ipv4() { 0 } else { 129 },
            code: 0,
            id: 4242,
        };
        let (verdict, _) = run(&dp, Hook::ToEndpoint, &packet(net.other, net.client, reply));
        assert_eq!(verdict, TC_ACT_OK);
        let entry = ct(&mut dp, net.client, 4242, net.other, 4242, proto);
        assert_ne!(entry.flags & SV_CT_F_ESTABLISHED, 0, "{entry:?}");
        // another ICMP type (destination unreachable, 3 / 1) is not allowed
        let unreach = L4::Icmp {
            kind: if net.client.is_ipv4() { 3 } else { 1 },
            code: 1,
            id: 0,
        };
        let (verdict, _) = run(
            &dp,
            Hook::FromEndpoint,
            &packet(net.client, net.other, unreach),
        );
        assert_eq!(verdict, TC_ACT_SHOT);
    }
}

#[test]
fn conntrack_tracks_tcp_state_and_established_flows_skip_policy() {
    let Some(mut dp) = setup(LogLevel::Off, small_sizes()) else {
        return;
    };
    for net in [v4(), v6()] {
        let (c, s) = (net.client, net.server);
        let (verdict, _) = run(
            &dp,
            Hook::FromEndpoint,
            &packet(c, s, tcp(41000, 80, TCP_SYN)),
        );
        assert_eq!(verdict, TC_ACT_OK);
        let (key, client_is_a) = CtKey::of(c, 41000, s, 80, PROTO_TCP);
        let (syn_client, syn_server, fin_client) = if client_is_a {
            (SV_CT_F_SYN_A, SV_CT_F_SYN_B, SV_CT_F_FIN_A)
        } else {
            (SV_CT_F_SYN_B, SV_CT_F_SYN_A, SV_CT_F_FIN_B)
        };
        let e = dp.maps().conntrack(&key).unwrap().expect("entry after SYN");
        assert_eq!(e.kind, SV_CT_TYPE_NORMAL);
        assert_ne!(e.flags & syn_client, 0);
        assert_eq!(e.flags & (syn_server | SV_CT_F_ESTABLISHED), 0);
        assert_ne!(e.flags & SV_CT_F_APPROVED_SRC, 0);
        assert_eq!(e.flags & SV_CT_F_OPENER_B != 0, !client_is_a);
        assert!(e.created_ns > 0 && e.last_seen_ns >= e.created_ns);

        // SYN-ACK from the server reaches the client through the entry
        let (verdict, _) = run(
            &dp,
            Hook::ToEndpoint,
            &packet(s, c, tcp(80, 41000, TCP_SYN | TCP_ACK)),
        );
        assert_eq!(verdict, TC_ACT_OK);
        let e2 = dp.maps().conntrack(&key).unwrap().unwrap();
        assert_ne!(e2.flags & syn_server, 0);
        assert_ne!(e2.flags & SV_CT_F_ESTABLISHED, 0);
        assert!(e2.last_seen_ns >= e.last_seen_ns);

        // Policy changes to deny everything to the server: the established flow goes on
        // (no policy lookup), a new flow to the same port is dropped.
        let deny_all = PolVal {
            verdict: SV_VERDICT_DENY,
            rule_id: 7,
        };
        let full = |port| {
            aya::maps::lpm_trie::Key::new(
                SV_POL_PREFIX_FULL,
                PolMatch::new(EP, SERVER_ID, SV_DIR_EGRESS, PROTO_TCP, port),
            )
        };
        dp.maps().set_policy(&full(80), &deny_all).unwrap();
        let (verdict, _) = run(
            &dp,
            Hook::FromEndpoint,
            &packet(c, s, tcp(41000, 80, TCP_ACK)),
        );
        assert_eq!(verdict, TC_ACT_OK, "established flow must skip policy");
        let (verdict, _) = run(
            &dp,
            Hook::FromEndpoint,
            &packet(c, s, tcp(41001, 80, TCP_SYN)),
        );
        assert_eq!(verdict, TC_ACT_SHOT, "a new flow sees the new policy");

        let (verdict, _) = run(
            &dp,
            Hook::FromEndpoint,
            &packet(c, s, tcp(41000, 80, TCP_FIN | TCP_ACK)),
        );
        assert_eq!(verdict, TC_ACT_OK);
        let e3 = dp.maps().conntrack(&key).unwrap().unwrap();
        assert_ne!(e3.flags & fin_client, 0);
        assert_eq!(e3.flags & SV_CT_F_RST, 0);
        let (verdict, _) = run(
            &dp,
            Hook::ToEndpoint,
            &packet(s, c, tcp(80, 41000, TCP_RST)),
        );
        assert_eq!(verdict, TC_ACT_OK);
        let e4 = dp.maps().conntrack(&key).unwrap().unwrap();
        assert_ne!(e4.flags & SV_CT_F_RST, 0);
        // restore for the next family
        dp.maps()
            .set_policy(
                &full(80),
                &PolVal {
                    verdict: SV_VERDICT_ALLOW,
                    rule_id: 1,
                },
            )
            .unwrap();
    }
}

#[test]
fn ingress_leg_is_policed_even_when_egress_leg_created_the_entry() {
    let Some(mut dp) = setup(LogLevel::Off, small_sizes()) else {
        return;
    };
    // The same endpoint is both client and "server" side here: a flow from the client to
    // `other` allowed by egress (ICMP echo to anyone) must still pass ingress policy when it
    // is delivered to an endpoint (to_ep, forward direction): `client` identity is not
    // allowed in by ingress (only SERVER_ID is).
    let net = v4();
    let ping = L4::Icmp {
        kind: 8,
        code: 0,
        id: 9,
    };
    let pkt = packet(net.client, net.other, ping);
    assert_eq!(run(&dp, Hook::FromEndpoint, &pkt).0, TC_ACT_OK);
    assert_eq!(run(&dp, Hook::ToEndpoint, &pkt).0, TC_ACT_SHOT);
    let e = ct(&mut dp, net.client, 9, net.other, 9, PROTO_ICMP);
    assert_eq!(e.flags & SV_CT_F_APPROVED_DST, 0);
    // allow ingress from the client identity: now the same packet passes and is recorded
    dp.maps()
        .set_policy(
            &pol_key_any_proto(EP, CLIENT_ID, SV_DIR_INGRESS),
            &PolVal {
                verdict: SV_VERDICT_ALLOW,
                rule_id: 8,
            },
        )
        .unwrap();
    assert_eq!(run(&dp, Hook::ToEndpoint, &pkt).0, TC_ACT_OK);
    let e = ct(&mut dp, net.client, 9, net.other, 9, PROTO_ICMP);
    assert_ne!(e.flags & SV_CT_F_APPROVED_DST, 0);
}

fn add_service(
    dp: &mut Dataplane,
    net: &Net,
    proto: u8,
    svc_id: u32,
    backends: &[(IpAddr, u16)],
    flags: u32,
) {
    let mut maps = dp.maps();
    maps.set_frontend(
        &NatFeKey::new(net.vip, 80, proto),
        &NatFeVal {
            svc_id,
            count: backends.len() as u32,
            local_count: backends.len() as u32,
            flags,
            affinity_timeout_s: 60,
            pad: 0,
        },
    )
    .unwrap();
    for (slot, (addr, port)) in backends.iter().enumerate() {
        maps.set_backend(
            &NatBeKey {
                svc_id,
                slot: slot as u32,
            },
            &NatBeVal::new(*addr, *port, SV_NAT_BE_F_LOCAL),
        )
        .unwrap();
    }
}

#[test]
fn service_dnat_rewrites_with_valid_checksums_and_replies_are_reverse_natted() {
    let Some(mut dp) = setup(LogLevel::Off, small_sizes()) else {
        return;
    };
    for (net, proto, svc) in [
        (v4(), PROTO_TCP, 1),
        (v6(), PROTO_TCP, 2),
        (v4(), PROTO_UDP, 3),
        (v6(), PROTO_UDP, 4),
    ] {
        // backend port 8080 is allowed for TCP (8000-8080); UDP backend on 53
        let be_port = if proto == PROTO_TCP { 8080 } else { 53 };
        add_service(&mut dp, &net, proto, svc, &[(net.server, be_port)], 0);
        let sport = 42000 + svc as u16;
        let l4 = |sp, dp_, first| {
            if proto == PROTO_TCP {
                tcp(sp, dp_, if first { TCP_SYN } else { TCP_ACK })
            } else {
                udp(sp, dp_)
            }
        };
        let pkt = packet(net.client, net.vip, l4(sport, 80, true));
        let (verdict, out) = run(&dp, Hook::FromEndpoint, &pkt);
        assert_eq!(verdict, TC_ACT_OK, "{proto} via {}", net.vip);
        let p = parse(&out);
        assert_eq!(
            (p.dst, p.dport),
            (net.server, be_port),
            "DNAT to the backend"
        );
        assert_eq!((p.src, p.sport), (net.client, sport), "source untouched");
        assert!(p.l3_csum_ok && p.l4_csum_ok, "checksums after DNAT: {p:?}");

        // conntrack: the pre-NAT tuple points at the backend, the wire tuple remembers the VIP
        let fwd = ct(&mut dp, net.client, sport, net.vip, 80, proto);
        assert_eq!(fwd.kind, SV_CT_TYPE_NAT_FWD);
        assert_eq!(fwd.nat_addr, Addr::new(net.server));
        assert_eq!(u16::from_be(fwd.nat_port), be_port);
        assert_eq!(fwd.svc_id, svc);
        let wire = ct(&mut dp, net.client, sport, net.server, be_port, proto);
        assert_eq!(wire.kind, SV_CT_TYPE_NORMAL);
        assert_ne!(wire.flags & SV_CT_F_DNAT, 0);
        assert_eq!(wire.nat_addr, Addr::new(net.vip));
        assert_eq!(u16::from_be(wire.nat_port), 80);

        // the next packet of the flow goes to the same backend
        let (verdict, out) = run(
            &dp,
            Hook::FromEndpoint,
            &packet(net.client, net.vip, l4(sport, 80, false)),
        );
        assert_eq!(verdict, TC_ACT_OK);
        let p = parse(&out);
        assert_eq!((p.dst, p.dport), (net.server, be_port));
        assert!(p.l3_csum_ok && p.l4_csum_ok);

        // the backend's reply: source becomes the VIP again
        let reply_l4 = if proto == PROTO_TCP {
            tcp(be_port, sport, TCP_SYN | TCP_ACK)
        } else {
            udp(be_port, sport)
        };
        let reply = packet(net.server, net.client, reply_l4);
        let (verdict, out) = run(&dp, Hook::ToEndpoint, &reply);
        assert_eq!(verdict, TC_ACT_OK);
        let p = parse(&out);
        assert_eq!((p.src, p.sport), (net.vip, 80), "reverse NAT of the reply");
        assert_eq!((p.dst, p.dport), (net.client, sport));
        assert!(
            p.l3_csum_ok && p.l4_csum_ok,
            "checksums after reverse NAT: {p:?}"
        );
        let wire = ct(&mut dp, net.client, sport, net.server, be_port, proto);
        assert_ne!(wire.flags & SV_CT_F_ESTABLISHED, 0);
    }
}

#[test]
fn udp_without_checksum_stays_without_one_after_dnat() {
    let Some(mut dp) = setup(LogLevel::Off, small_sizes()) else {
        return;
    };
    let net = v4();
    add_service(&mut dp, &net, PROTO_UDP, 9, &[(net.server, 53)], 0);
    let pkt = packet(
        net.client,
        net.vip,
        L4::Udp {
            sport: 43000,
            dport: 80,
            zero_csum: true,
        },
    );
    assert_eq!(udp_csum(&pkt), 0);
    let (verdict, out) = run(&dp, Hook::FromEndpoint, &pkt);
    assert_eq!(verdict, TC_ACT_OK);
    let p = parse(&out);
    assert_eq!((p.dst, p.dport), (net.server, 53));
    assert!(p.l3_csum_ok);
    assert_eq!(udp_csum(&out), 0, "no checksum invented");
}

#[test]
fn service_without_backends_rejects_and_counts() {
    let Some(mut dp) = setup(LogLevel::Off, small_sizes()) else {
        return;
    };
    for net in [v4(), v6()] {
        add_service(&mut dp, &net, PROTO_TCP, 20, &[], 0);
        let (verdict, _) = run(
            &dp,
            Hook::FromEndpoint,
            &packet(net.client, net.vip, tcp(44000, 80, TCP_SYN)),
        );
        assert_eq!(verdict, TC_ACT_REDIRECT, "rejected with a RST");
    }
    assert_eq!(drops(&mut dp, SV_DROP_NO_BACKEND), 2);
    // internalTrafficPolicy: Local with no local backend: dropped, not rejected (kube-proxy
    // and the reference evaluator: ServiceDecision::Drop), counted as no_local_backend
    let net = v4();
    let mut maps = dp.maps();
    maps.set_frontend(
        &NatFeKey::new(net.vip, 80, PROTO_TCP),
        &NatFeVal {
            svc_id: 21,
            count: 1,
            local_count: 0,
            flags: SV_NAT_FE_F_INT_LOCAL,
            ..NatFeVal::default()
        },
    )
    .unwrap();
    maps.set_backend(
        &NatBeKey {
            svc_id: 21,
            slot: 0,
        },
        &NatBeVal::new(net.server, 8080, 0),
    )
    .unwrap();
    let (verdict, _) = run(
        &dp,
        Hook::FromEndpoint,
        &packet(net.client, net.vip, tcp(44001, 80, TCP_SYN)),
    );
    assert_eq!(verdict, TC_ACT_SHOT, "dropped");
    assert_eq!(drops(&mut dp, SV_DROP_NO_BACKEND), 2);
    assert_eq!(drops(&mut dp, SV_DROP_NO_LOCAL_BACKEND), 1);
    // a frontend counting a slot that is missing: its own reason
    dp.maps()
        .set_frontend(
            &NatFeKey::new(net.vip, 80, PROTO_TCP),
            &NatFeVal {
                svc_id: 22,
                count: 1,
                local_count: 1,
                ..NatFeVal::default()
            },
        )
        .unwrap();
    let (verdict, _) = run(
        &dp,
        Hook::FromEndpoint,
        &packet(net.client, net.vip, tcp(44002, 80, TCP_SYN)),
    );
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(drops(&mut dp, SV_DROP_NAT_BACKEND_MISSING), 1);
}

#[test]
fn client_ip_affinity_pins_new_flows_to_one_backend() {
    let Some(mut dp) = setup(LogLevel::Off, small_sizes()) else {
        return;
    };
    let net = v4();
    // three backends on allowed ports 8000, 8001, 8002
    let backends = [(net.server, 8000), (net.server, 8001), (net.server, 8002)];
    add_service(
        &mut dp,
        &net,
        PROTO_TCP,
        30,
        &backends,
        SV_NAT_FE_F_AFFINITY,
    );
    let mut ports = std::collections::BTreeSet::new();
    for i in 0..20 {
        let (verdict, out) = run(
            &dp,
            Hook::FromEndpoint,
            &packet(net.client, net.vip, tcp(45000 + i, 80, TCP_SYN)),
        );
        assert_eq!(verdict, TC_ACT_OK);
        ports.insert(parse(&out).dport);
    }
    assert_eq!(
        ports.len(),
        1,
        "affinity: every flow to one backend, got {ports:?}"
    );
    let aff = dp
        .maps()
        .affinity(&NatAffKey {
            client: Addr::new(net.client),
            svc_id: 30,
        })
        .unwrap()
        .expect("affinity entry");
    assert_eq!(Some(&u16::from_be(aff.port)), ports.first());

    // without affinity, 20 flows over 3 backends use more than one (chance of one: 3^-19)
    add_service(
        &mut dp,
        &v6(),
        PROTO_TCP,
        31,
        &[
            (v6().server, 8000),
            (v6().server, 8001),
            (v6().server, 8002),
        ],
        0,
    );
    let mut ports = std::collections::BTreeSet::new();
    for i in 0..20 {
        let (_, out) = run(
            &dp,
            Hook::FromEndpoint,
            &packet(v6().client, v6().vip, tcp(46000 + i, 80, TCP_SYN)),
        );
        ports.insert(parse(&out).dport);
    }
    assert!(ports.len() > 1, "random backend choice, got {ports:?}");
}

#[test]
fn spoofed_sources_are_dropped_and_counted() {
    let Some(mut dp) = setup(LogLevel::Off, small_sizes()) else {
        return;
    };
    for net in [v4(), v6()] {
        let (verdict, _) = run(
            &dp,
            Hook::FromEndpoint,
            &packet(net.other, net.server, tcp(47000, 80, TCP_SYN)),
        );
        assert_eq!(verdict, TC_ACT_SHOT);
    }
    assert_eq!(drops(&mut dp, SV_DROP_SPOOFED), 2);
    assert_eq!(drops(&mut dp, SV_DROP_POLICY), 0);
    // an IPv4-only endpoint may not send IPv6 at all
    dp.maps()
        .set_endpoint(TEST_RUN_IFINDEX, &EpVal::new(EP, &[v4().client]))
        .unwrap();
    let (verdict, _) = run(
        &dp,
        Hook::FromEndpoint,
        &packet(v6().client, v6().server, tcp(47001, 80, TCP_SYN)),
    );
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(drops(&mut dp, SV_DROP_SPOOFED), 3);
    // no endpoint on the interface: dropped with its own reason
    assert!(dp.maps().remove_endpoint(TEST_RUN_IFINDEX).unwrap());
    let (verdict, _) = run(
        &dp,
        Hook::FromEndpoint,
        &packet(v4().client, v4().server, tcp(47002, 80, TCP_SYN)),
    );
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(drops(&mut dp, SV_DROP_UNKNOWN_IFACE), 1);
}

#[test]
fn full_conntrack_drops_new_flows_and_counts_while_known_flows_continue() {
    let sizes = MapSizes {
        conntrack: 4,
        ..small_sizes()
    };
    let Some(mut dp) = setup(LogLevel::Off, sizes) else {
        return;
    };
    let net = v4();
    for i in 0..4 {
        let (verdict, _) = run(
            &dp,
            Hook::FromEndpoint,
            &packet(net.client, net.server, tcp(48000 + i, 80, TCP_SYN)),
        );
        assert_eq!(verdict, TC_ACT_OK, "flow {i} fits");
    }
    assert_eq!(dp.maps().conntrack_entries().unwrap().len(), 4);
    for i in 4..7 {
        let (verdict, _) = run(
            &dp,
            Hook::FromEndpoint,
            &packet(net.client, net.server, tcp(48000 + i, 80, TCP_SYN)),
        );
        assert_eq!(verdict, TC_ACT_SHOT, "flow {i} does not fit");
    }
    assert_eq!(drops(&mut dp, SV_DROP_CT_FULL), 3);
    let (verdict, _) = run(
        &dp,
        Hook::FromEndpoint,
        &packet(net.client, net.server, tcp(48000, 80, TCP_ACK)),
    );
    assert_eq!(verdict, TC_ACT_OK, "a known flow is unaffected");
    // NAT needs two entries; with the map full the NATed flow is dropped and nothing leaks
    add_service(&mut dp, &net, PROTO_TCP, 40, &[(net.server, 8080)], 0);
    let (verdict, _) = run(
        &dp,
        Hook::FromEndpoint,
        &packet(net.client, net.vip, tcp(48100, 80, TCP_SYN)),
    );
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(drops(&mut dp, SV_DROP_CT_FULL), 4);
    assert_eq!(dp.maps().conntrack_entries().unwrap().len(), 4);
}

#[test]
fn malformed_and_non_ip_frames() {
    let Some(mut dp) = setup(LogLevel::Off, small_sizes()) else {
        return;
    };
    let net = v4();
    let full = packet(net.client, net.server, tcp(49000, 80, TCP_SYN));
    // truncated inside the TCP header (BPF_PROG_TEST_RUN itself refuses frames shorter than
    // an IP header, so a truncated IP header cannot be fed), and an IHL below 5
    let (verdict, _) = run(&dp, Hook::FromEndpoint, &full[..14 + 20 + 8]);
    assert_eq!(verdict, TC_ACT_SHOT, "truncated TCP header");
    let mut bad_ihl = full.clone();
    bad_ihl[14] = 0x44;
    let (verdict, _) = run(&dp, Hook::FromEndpoint, &bad_ihl);
    assert_eq!(verdict, TC_ACT_SHOT, "IHL 4");
    assert_eq!(drops(&mut dp, SV_DROP_MALFORMED), 2);
    // ARP passes untouched
    let mut arp = full[..42].to_vec();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let (verdict, out) = run(&dp, Hook::FromEndpoint, &arp);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, arp);
    // A later IPv4 fragment whose first fragment was never seen is counted separately
    // (tests/fragments.rs has the fragments that pass)
    let mut frag = full.clone();
    frag[14 + 6] = 0x00;
    frag[14 + 7] = 0x10; // offset 128, no MF: a last fragment
    let (verdict, _) = run(&dp, Hook::FromEndpoint, &frag);
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(drops(&mut dp, SV_DROP_FRAGMENT), 1);
}

#[test]
fn debug_build_decides_the_same() {
    let Some(mut dp) = setup(LogLevel::Debug, small_sizes()) else {
        return;
    };
    let net = v4();
    let ok = packet(net.client, net.server, tcp(50000, 80, TCP_SYN));
    let bad = packet(net.client, net.server, tcp(50001, 81, TCP_SYN));
    assert_eq!(run(&dp, Hook::FromEndpoint, &ok).0, TC_ACT_OK);
    assert_eq!(run(&dp, Hook::FromEndpoint, &bad).0, TC_ACT_SHOT);
    assert_eq!(drops(&mut dp, abi::SV_DROP_POLICY), 1);
}

#[test]
fn sweep_expires_entries_the_programs_created_by_state_and_age() {
    let Some(mut dp) = setup(LogLevel::Off, small_sizes()) else {
        return;
    };
    let net = v4();
    let (c, s) = (net.client, net.server);
    // TCP established (SYN, SYN-ACK), UDP (one way), ICMP echo
    run(
        &dp,
        Hook::FromEndpoint,
        &packet(c, s, tcp(51000, 80, TCP_SYN)),
    );
    run(
        &dp,
        Hook::ToEndpoint,
        &packet(s, c, tcp(80, 51000, TCP_SYN | TCP_ACK)),
    );
    run(&dp, Hook::FromEndpoint, &packet(c, s, udp(51001, 53)));
    let ping = L4::Icmp {
        kind: 8,
        code: 0,
        id: 51,
    };
    run(&dp, Hook::FromEndpoint, &packet(c, net.other, ping));
    assert_eq!(dp.maps().conntrack_entries().unwrap().len(), 3);

    let t = serval_dp_bpf::CtTimeouts::default();
    let now = serval_dp_bpf::monotonic_now_ns();
    let sec = 1_000_000_000u64;
    let r = dp.maps().expire_conntrack(&t, now).unwrap();
    assert_eq!((r.examined, r.removed), (3, 0), "nothing is idle yet");
    let r = dp.maps().expire_conntrack(&t, now + 10 * sec).unwrap();
    assert_eq!(r.removed, 1, "ICMP after 5 s");
    assert!(
        dp.maps()
            .conntrack(&CtKey::of(c, 51, net.other, 51, PROTO_ICMP).0)
            .unwrap()
            .is_none()
    );
    let r = dp.maps().expire_conntrack(&t, now + 120 * sec).unwrap();
    assert_eq!(r.removed, 1, "UDP after 60 s; established TCP stays");
    ct(&mut dp, c, 51000, s, 80, PROTO_TCP);
    let r = dp
        .maps()
        .expire_conntrack(&t, now + 2 * 3600 * sec)
        .unwrap();
    assert_eq!(r.removed, 1, "TCP after 1 h");
    assert!(dp.maps().conntrack_entries().unwrap().is_empty());
    // an expired flow is a new flow again: policy applies afresh
    assert_eq!(
        run(
            &dp,
            Hook::FromEndpoint,
            &packet(c, s, tcp(51000, 80, TCP_ACK))
        )
        .0,
        TC_ACT_OK
    );
}

#[test]
fn addresses_without_a_route_are_world_for_ipv4_and_world6_for_ipv6() {
    let Some(mut dp) = setup(LogLevel::Off, small_sizes()) else {
        return;
    };
    // TCP 443 to WORLD6 allowed, to WORLD denied, to anything else (ANY) denied by setup's
    // prefixlen-72 entry; so only a lookup under identity 2 can allow an IPv6 packet.
    let full = |id, verdict, rule_id| {
        let key = aya::maps::lpm_trie::Key::new(
            SV_POL_PREFIX_FULL,
            PolMatch::new(EP, id, SV_DIR_EGRESS, PROTO_TCP, 443),
        );
        let val = PolVal { verdict, rule_id };
        (key, val)
    };
    for (id, verdict, rule) in [
        (SV_IDENTITY_WORLD6, SV_VERDICT_ALLOW, 60),
        (SV_IDENTITY_WORLD, SV_VERDICT_DENY, 61),
    ] {
        let (key, val) = full(id, verdict, rule);
        dp.maps().set_policy(&key, &val).unwrap();
    }
    let (v6_world, v4_world) = (ip("2001:db8::1"), ip("192.0.2.1"));
    let pkt = packet(v6().client, v6_world, tcp(53000, 443, TCP_SYN));
    assert_eq!(
        run(&dp, Hook::FromEndpoint, &pkt).0,
        TC_ACT_OK,
        "an IPv6 address no route covers is WORLD6 (2)"
    );
    let pkt = packet(v4().client, v4_world, tcp(53001, 443, TCP_SYN));
    assert_eq!(
        run(&dp, Hook::FromEndpoint, &pkt).0,
        TC_ACT_SHOT,
        "an IPv4 address no route covers is WORLD (1), not WORLD6"
    );
    assert_eq!(drops(&mut dp, SV_DROP_POLICY), 1);
    // swap the verdicts: now IPv4 passes and IPv6 does not
    for (id, verdict, rule) in [
        (SV_IDENTITY_WORLD6, SV_VERDICT_DENY, 62),
        (SV_IDENTITY_WORLD, SV_VERDICT_ALLOW, 63),
    ] {
        let (key, val) = full(id, verdict, rule);
        dp.maps().set_policy(&key, &val).unwrap();
    }
    let pkt = packet(v6().client, v6_world, tcp(53002, 443, TCP_SYN));
    assert_eq!(run(&dp, Hook::FromEndpoint, &pkt).0, TC_ACT_SHOT);
    let pkt = packet(v4().client, v4_world, tcp(53003, 443, TCP_SYN));
    assert_eq!(run(&dp, Hook::FromEndpoint, &pkt).0, TC_ACT_OK);
    // ingress from an unrouted IPv6 address is judged as WORLD6 too
    dp.maps()
        .set_policy(
            &pol_key_any_proto(EP, SV_IDENTITY_WORLD6, SV_DIR_INGRESS),
            &PolVal {
                verdict: SV_VERDICT_ALLOW,
                rule_id: 64,
            },
        )
        .unwrap();
    let pkt = packet(v6_world, v6().client, tcp(443, 53100, TCP_SYN));
    assert_eq!(run(&dp, Hook::ToEndpoint, &pkt).0, TC_ACT_OK);
    let pkt = packet(v4_world, v4().client, tcp(443, 53101, TCP_SYN));
    assert_eq!(run(&dp, Hook::ToEndpoint, &pkt).0, TC_ACT_SHOT);
    assert_eq!(drops(&mut dp, SV_DROP_POLICY), 3);
}

#[test]
fn sctp_destination_port_is_the_policy_port_and_conntrack_port() {
    let Some(mut dp) = setup(LogLevel::Off, small_sizes()) else {
        return;
    };
    let key = |port| {
        aya::maps::lpm_trie::Key::new(
            SV_POL_PREFIX_FULL,
            PolMatch::new(EP, SERVER_ID, SV_DIR_EGRESS, PROTO_SCTP, port),
        )
    };
    dp.maps()
        .set_policy(
            &key(80),
            &PolVal {
                verdict: SV_VERDICT_ALLOW,
                rule_id: 70,
            },
        )
        .unwrap();
    dp.maps()
        .set_policy(
            &key(81),
            &PolVal {
                verdict: SV_VERDICT_DENY,
                rule_id: 71,
            },
        )
        .unwrap();
    for net in [v4(), v6()] {
        let (c, s) = (net.client, net.server);
        let pkt = packet(c, s, sctp(54000, 80));
        let (verdict, out) = run(&dp, Hook::FromEndpoint, &pkt);
        assert_eq!(verdict, TC_ACT_OK, "SCTP to {s} port 80");
        assert_eq!(out, pkt);
        let entry = ct(&mut dp, c, 54000, s, 80, PROTO_SCTP);
        assert_ne!(entry.flags & SV_CT_F_APPROVED_SRC, 0);
        let (verdict, _) = run(&dp, Hook::FromEndpoint, &packet(c, s, sctp(54001, 81)));
        assert_eq!(verdict, TC_ACT_SHOT, "SCTP to {s} port 81");
        // a port no entry names falls to setup's deny for the server identity
        let (verdict, _) = run(&dp, Hook::FromEndpoint, &packet(c, s, sctp(54002, 82)));
        assert_eq!(verdict, TC_ACT_SHOT, "SCTP to {s} port 82");
        // the reply finds the same entry (by its ports), which becomes established
        let (verdict, _) = run(&dp, Hook::ToEndpoint, &packet(s, c, sctp(80, 54000)));
        assert_eq!(verdict, TC_ACT_OK);
        let entry = ct(&mut dp, c, 54000, s, 80, PROTO_SCTP);
        assert_ne!(entry.flags & SV_CT_F_ESTABLISHED, 0, "{entry:?}");
    }
    assert_eq!(drops(&mut dp, SV_DROP_POLICY), 4);
    assert_eq!(dp.maps().conntrack_entries().unwrap().len(), 2);

    // UDPLite (136) shares UDP's port layout: its destination port is the policy port too
    const PROTO_UDPLITE: u8 = 136;
    dp.maps()
        .set_policy(
            &aya::maps::lpm_trie::Key::new(
                SV_POL_PREFIX_FULL,
                PolMatch::new(EP, SERVER_ID, SV_DIR_EGRESS, PROTO_UDPLITE, 5000),
            ),
            &PolVal {
                verdict: SV_VERDICT_ALLOW,
                rule_id: 72,
            },
        )
        .unwrap();
    let net = v6();
    let udplite = |dport| {
        // an IPv6 UDP packet relabelled (IPv6 has no header checksum to fix)
        let mut pkt = packet(net.client, net.server, udp(55000, dport));
        pkt[14 + 6] = PROTO_UDPLITE;
        pkt
    };
    assert_eq!(run(&dp, Hook::FromEndpoint, &udplite(5000)).0, TC_ACT_OK);
    assert_eq!(run(&dp, Hook::FromEndpoint, &udplite(5001)).0, TC_ACT_SHOT);
    ct(&mut dp, net.client, 55000, net.server, 5000, PROTO_UDPLITE);
}

/// Inserts an 8-byte IPv6 extension header of type `ext` right after the IPv6 header.
fn with_ipv6_ext(pkt: &[u8], ext: u8) -> Vec<u8> {
    let mut out = pkt[..14 + 40].to_vec();
    let next = out[14 + 6];
    out[14 + 6] = ext;
    let len = u16::from_be_bytes([out[14 + 4], out[14 + 5]]) + 8;
    out[14 + 4..14 + 6].copy_from_slice(&len.to_be_bytes());
    // next header, length 0 (8 bytes), PadN option of 4 bytes (or fragment offset 0 + M)
    out.extend([next, 0, 1, 4, 0, 0, 0, 0]);
    out.extend(&pkt[14 + 40..]);
    out
}

#[test]
fn ipv6_extension_headers_are_skipped_and_fragments_counted() {
    let Some(mut dp) = setup(LogLevel::Off, small_sizes()) else {
        return;
    };
    let net = v6();
    const HOP_BY_HOP: u8 = 0;
    const DEST_OPTS: u8 = 60;
    const FRAGMENT: u8 = 44;
    for ext in [HOP_BY_HOP, DEST_OPTS] {
        let allowed = with_ipv6_ext(
            &packet(net.client, net.server, tcp(52000, 80, TCP_SYN)),
            ext,
        );
        assert_eq!(
            run(&dp, Hook::FromEndpoint, &allowed).0,
            TC_ACT_OK,
            "ext {ext}"
        );
        let denied = with_ipv6_ext(
            &packet(net.client, net.server, tcp(52001, 81, TCP_SYN)),
            ext,
        );
        assert_eq!(
            run(&dp, Hook::FromEndpoint, &denied).0,
            TC_ACT_SHOT,
            "ext {ext}"
        );
    }
    assert_eq!(drops(&mut dp, SV_DROP_POLICY), 2);
    let frag = with_ipv6_ext(
        &packet(net.client, net.server, tcp(52002, 80, TCP_SYN)),
        FRAGMENT,
    );
    assert_eq!(run(&dp, Hook::FromEndpoint, &frag).0, TC_ACT_SHOT);
    assert_eq!(drops(&mut dp, SV_DROP_FRAGMENT), 1);
}

#[test]
fn ipv6_neighbour_discovery_passes_without_spoof_check_or_policy() {
    let Some(mut dp) = setup(LogLevel::Off, small_sizes()) else {
        return;
    };
    // neighbour solicitation (135) from the workload's link-local address
    let ns = L4::Icmp {
        kind: 135,
        code: 0,
        id: 0,
    };
    let pkt = packet(ip("fe80::1"), ip("ff02::1:ff00:3"), ns);
    assert_eq!(run(&dp, Hook::FromEndpoint, &pkt).0, TC_ACT_OK);
    assert_eq!(run(&dp, Hook::ToEndpoint, &pkt).0, TC_ACT_OK);
    // but an echo request from the link-local address is a spoofed source
    let ping = L4::Icmp {
        kind: 128,
        code: 0,
        id: 1,
    };
    let pkt = packet(ip("fe80::1"), v6().server, ping);
    assert_eq!(run(&dp, Hook::FromEndpoint, &pkt).0, TC_ACT_SHOT);
    assert_eq!(drops(&mut dp, SV_DROP_SPOOFED), 1);
    assert!(dp.maps().conntrack_entries().unwrap().is_empty());
}

/// xorshift64*: deterministic, dependency-free randomness for the differential test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_port_partitions_compile_to_lpm_entries_the_program_agrees_with() {
    let Some(mut dp) = setup(
        LogLevel::Off,
        MapSizes {
            policy: 4096,
            ..small_sizes()
        },
    ) else {
        return;
    };
    let net = v4();
    let mut rng = Rng(0x5e77_a1b2_c3d4_e5f6);
    let mut sport = 1024u16;
    for round in 0..6u32 {
        let ep = 1000 + round;
        dp.maps()
            .set_endpoint(TEST_RUN_IFINDEX, &EpVal::new(ep, &[net.client]))
            .unwrap();
        // a random partition of 0..=65535 into intervals with random verdicts
        let mut cuts: Vec<u32> = (0..rng.below(8)).map(|_| rng.below(65536) as u32).collect();
        cuts.extend([0, 65536]);
        cuts.sort_unstable();
        cuts.dedup();
        let intervals: Vec<(u16, u16, bool)> = cuts
            .windows(2)
            .map(|w| (w[0] as u16, (w[1] - 1) as u16, rng.below(2) == 0))
            .collect();
        let mut entries = 0;
        for (lo, hi, allow) in &intervals {
            let val = PolVal {
                verdict: if *allow {
                    SV_VERDICT_ALLOW
                } else {
                    SV_VERDICT_DENY
                },
                rule_id: u32::from(*lo),
            };
            for key in pol_keys_port_range(ep, SERVER_ID, SV_DIR_EGRESS, PROTO_TCP, *lo, *hi) {
                dp.maps().set_policy(&key, &val).unwrap();
                entries += 1;
            }
        }
        assert!(entries <= 30 * intervals.len());
        // probe every boundary and random ports
        let mut ports: Vec<u16> = intervals
            .iter()
            .flat_map(|(lo, hi, _)| [*lo, *hi])
            .collect();
        ports.extend((0..40).map(|_| rng.below(65536) as u16));
        for port in ports {
            let want = intervals
                .iter()
                .find(|(lo, hi, _)| (*lo..=*hi).contains(&port))
                .map(|(_, _, allow)| *allow)
                .unwrap();
            sport = sport.wrapping_add(1).max(1024);
            let pkt = packet(net.client, net.server, tcp(sport, port, TCP_SYN));
            let verdict = run(&dp, Hook::FromEndpoint, &pkt).0;
            let expected = if want { TC_ACT_OK } else { TC_ACT_SHOT };
            assert_eq!(
                verdict, expected,
                "round {round}: port {port} in {intervals:?}"
            );
        }
    }
}

/// The Ethernet addresses of a frame (destination, source).
fn macs(pkt: &[u8]) -> ([u8; 6], [u8; 6]) {
    (
        pkt[0..6].try_into().unwrap(),
        pkt[6..12].try_into().unwrap(),
    )
}

/// The transport segment of a frame (after the IPv4 or IPv6 header).
fn segment(pkt: &[u8]) -> &[u8] {
    let ip = &pkt[14..];
    if pkt[12] == 0x08 {
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        &ip[usize::from(ip[0] & 0x0f) * 4..total]
    } else {
        let len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
        &ip[40..40 + len]
    }
}

#[test]
fn tcp_to_a_service_without_backends_is_answered_with_a_reset() {
    let Some(mut dp) = setup(LogLevel::Off, small_sizes()) else {
        return;
    };
    for net in [v4(), v6()] {
        add_service(&mut dp, &net, PROTO_TCP, 30, &[], 0);
        let syn = packet(net.client, net.vip, tcp(44100, 80, TCP_SYN));
        let (verdict, out) = run(&dp, Hook::FromEndpoint, &syn);
        assert_eq!(verdict, TC_ACT_REDIRECT, "via {}", net.vip);
        let p = parse(&out);
        assert_eq!((p.src, p.sport), (net.vip, 80), "from the frontend");
        assert_eq!((p.dst, p.dport), (net.client, 44100), "to the client");
        assert_eq!(p.proto, PROTO_TCP);
        assert!(p.l3_csum_ok && p.l4_csum_ok, "RST checksums: {p:?}");
        let (dst_mac, src_mac) = macs(&syn);
        assert_eq!(macs(&out), (src_mac, dst_mac), "MACs swapped");
        let seg = segment(&out);
        assert_eq!(seg.len(), 20, "no options, no payload");
        assert_eq!(seg[13], TCP_RST | TCP_ACK);
        assert_eq!(u32::from_be_bytes(seg[4..8].try_into().unwrap()), 0, "seq");
        // ack = the SYN's seq (1000) + payload + 1 for the SYN
        let payload = segment(&syn).len() as u32 - 20;
        assert_eq!(
            u32::from_be_bytes(seg[8..12].try_into().unwrap()),
            1000 + payload + 1
        );
        assert_eq!(out.len(), 14 + if net.vip.is_ipv4() { 20 } else { 40 } + 20);

        // a segment with ACK: <SEQ=SEG.ACK><CTL=RST>
        let ack = packet(net.client, net.vip, tcp(44101, 80, TCP_ACK));
        let (verdict, out) = run(&dp, Hook::FromEndpoint, &ack);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let p = parse(&out);
        assert!(p.l3_csum_ok && p.l4_csum_ok, "RST checksums: {p:?}");
        let seg = segment(&out);
        assert_eq!(seg[13], TCP_RST);
        assert_eq!(u32::from_be_bytes(seg[4..8].try_into().unwrap()), 2000);

        // a reset is never answered
        let rst = packet(net.client, net.vip, tcp(44102, 80, TCP_RST));
        assert_eq!(run(&dp, Hook::FromEndpoint, &rst).0, TC_ACT_SHOT);
    }
    assert_eq!(drops(&mut dp, SV_DROP_NO_BACKEND), 6);
}

#[test]
fn udp_to_a_service_without_backends_is_answered_with_port_unreachable() {
    let Some(mut dp) = setup(LogLevel::Off, small_sizes()) else {
        return;
    };
    for net in [v4(), v6()] {
        add_service(&mut dp, &net, PROTO_UDP, 31, &[], 0);
        let dgram = packet(net.client, net.vip, udp(44200, 80));
        let (verdict, out) = run(&dp, Hook::FromEndpoint, &dgram);
        assert_eq!(verdict, TC_ACT_REDIRECT, "via {}", net.vip);
        let p = parse(&out);
        assert_eq!((p.src, p.dst), (net.vip, net.client));
        let v4 = net.vip.is_ipv4();
        assert_eq!(p.proto, if v4 { PROTO_ICMP } else { PROTO_ICMPV6 });
        assert!(p.l3_csum_ok && p.l4_csum_ok, "ICMP checksums: {p:?}");
        let (dst_mac, src_mac) = macs(&dgram);
        assert_eq!(macs(&out), (src_mac, dst_mac), "MACs swapped");
        let msg = segment(&out);
        // destination unreachable, port unreachable
        assert_eq!((msg[0], msg[1]), if v4 { (3, 3) } else { (1, 4) });
        assert_eq!(&msg[4..8], &[0, 0, 0, 0], "unused");
        // quotes the original IP header and the first 8 bytes of its payload
        let ip_hdr = if v4 { 20 } else { 40 };
        assert_eq!(&msg[8..], &dgram[14..14 + ip_hdr + 8]);
    }
    assert_eq!(drops(&mut dp, SV_DROP_NO_BACKEND), 2);
}
