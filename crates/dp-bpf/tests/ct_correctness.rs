//! Conntrack and NAT correctness (issue 5), with BPF_PROG_TEST_RUN on the real objects and
//! private maps:
//! - tuple reuse: a TCP SYN (no ACK) reusing the tuple of a flow closed by RST / FIN or idle
//!   past its timeout opens a new flow (new backend, new translations both ways), while a
//!   retransmitted SYN of a live flow keeps its backend.

#[expect(
    dead_code,
    reason = "the shared packet helpers include ones this test does not use"
)]
mod common;

use std::net::IpAddr;

use common::packet::{PROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, packet, parse, tcp};
use serval_dp_bpf::{
    Dataplane, Hook, LoadOptions, LogLevel, MapSizes, TC_ACT_OK, TEST_RUN_IFINDEX, abi::*,
};

const EP: u32 = 10;
const POD_ID: u32 = 100;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[derive(Clone, Copy)]
struct Net {
    client: IpAddr,
    server1: IpAddr,
    server2: IpAddr,
    vip1: IpAddr,
    vip2: IpAddr,
}

fn v4() -> Net {
    Net {
        client: ip("10.0.0.2"),
        server1: ip("10.0.0.3"),
        server2: ip("10.0.0.4"),
        vip1: ip("10.96.0.10"),
        vip2: ip("10.96.0.11"),
    }
}

fn v6() -> Net {
    Net {
        client: ip("fd00::2"),
        server1: ip("fd00::3"),
        server2: ip("fd00::4"),
        vip1: ip("fd00:96::10"),
        vip2: ip("fd00:96::11"),
    }
}

fn host_len(a: IpAddr) -> u8 {
    if a.is_ipv4() { 32 } else { 128 }
}

/// The test-run interface is the client's endpoint (both families), allowed everything both
/// ways; the servers are pods (routes without an interface: no fast path).
fn setup() -> Option<Dataplane> {
    if !serval_sys::testing::require_root("dp-bpf ct_correctness test") {
        return None;
    }
    let mut dp = Dataplane::load(&LoadOptions {
        pins: None,
        sizes: MapSizes {
            nat_frontend: 64,
            nat_backend: 64,
            nat_affinity: 64,
            route: 64,
            conntrack: 1024,
            policy: 64,
            endpoints: 16,
        },
        log_level: LogLevel::Off,
    })
    .expect("load the embedded programs");
    let mut m = dp.maps();
    m.set_endpoint(
        TEST_RUN_IFINDEX,
        &EpVal::new(EP, &[v4().client, v6().client]),
    )
    .unwrap();
    for net in [v4(), v6()] {
        for a in [net.client, net.server1, net.server2] {
            let val = RouteVal {
                identity: POD_ID,
                flags: SV_RT_F_LOCAL_WORKLOAD | SV_RT_F_IN_POOL,
                ..RouteVal::default()
            };
            m.set_route(&route_key(a, host_len(a)), &val).unwrap();
        }
    }
    let allow = PolVal {
        verdict: SV_VERDICT_ALLOW,
        rule_id: 1,
    };
    for dir in [SV_DIR_EGRESS, SV_DIR_INGRESS] {
        m.set_policy(&pol_key_any_proto(EP, SV_IDENTITY_ANY, dir), &allow)
            .unwrap();
    }
    drop(m);
    Some(dp)
}

/// Service `svc_id` at (vip, 80/TCP) with the one backend (addr, 8080).
fn service(dp: &mut Dataplane, vip: IpAddr, svc_id: u32, backend: IpAddr) {
    let mut m = dp.maps();
    m.set_frontend(
        &NatFeKey::new(vip, 80, PROTO_TCP),
        &NatFeVal {
            svc_id,
            count: 1,
            local_count: 1,
            flags: 0,
            affinity_timeout_s: 0,
            pad: 0,
        },
    )
    .unwrap();
    m.set_backend(
        &NatBeKey { svc_id, slot: 0 },
        &NatBeVal::new(backend, 8080, SV_NAT_BE_F_LOCAL),
    )
    .unwrap();
}

/// Runs a packet, expects TC_ACT_OK with valid checksums, returns (src, sport, dst, dport).
fn pass(dp: &Dataplane, hook: Hook, pkt: &[u8]) -> (IpAddr, u16, IpAddr, u16) {
    let out = dp.test_run(hook, pkt).expect("BPF_PROG_TEST_RUN");
    assert_eq!(out.verdict, TC_ACT_OK, "{hook:?}");
    let p = parse(&out.packet);
    assert!(p.l3_csum_ok && p.l4_csum_ok, "checksums: {p:?}");
    (p.src, p.sport, p.dst, p.dport)
}

/// A NATed connection client:sport -> vip:80 (backend:8080) set up: SYN, SYN-ACK, ACK; the
/// client sees the VIP both ways.
fn connect(dp: &Dataplane, net: &Net, sport: u16, vip: IpAddr, backend: IpAddr) {
    let c = net.client;
    assert_eq!(
        pass(
            dp,
            Hook::FromEndpoint,
            &packet(c, vip, tcp(sport, 80, TCP_SYN))
        ),
        (c, sport, backend, 8080),
        "SYN to {vip} goes to {backend}"
    );
    assert_eq!(
        pass(
            dp,
            Hook::ToEndpoint,
            &packet(backend, c, tcp(8080, sport, TCP_SYN | TCP_ACK))
        ),
        (vip, 80, c, sport),
        "SYN-ACK from {backend} comes from {vip}"
    );
    assert_eq!(
        pass(
            dp,
            Hook::FromEndpoint,
            &packet(c, vip, tcp(sport, 80, TCP_ACK))
        ),
        (c, sport, backend, 8080)
    );
}

#[test]
fn syn_after_rst_gets_a_new_backend_and_translation_both_ways() {
    let Some(mut dp) = setup() else { return };
    for (i, net) in [v4(), v6()].into_iter().enumerate() {
        let c = net.client;
        let base = 40000 + 100 * i as u16;
        let (svc1, svc2) = (1 + 10 * i as u32, 2 + 10 * i as u32);
        service(&mut dp, net.vip1, svc1, net.server1);
        service(&mut dp, net.vip2, svc2, net.server1);

        // 1. the same frontend, its backend changed after the flow was reset by the server:
        // the new SYN is load-balanced afresh
        let sport = base + 1;
        connect(&dp, &net, sport, net.vip1, net.server1);
        pass(
            &dp,
            Hook::ToEndpoint,
            &packet(net.server1, c, tcp(8080, sport, TCP_RST)),
        );
        service(&mut dp, net.vip1, svc1, net.server2);
        connect(&dp, &net, sport, net.vip1, net.server2);

        // 2. a different frontend with the same backend, after the client reset the flow:
        // the replies come from the new frontend, not the old one
        let sport = base + 2;
        service(&mut dp, net.vip1, svc1, net.server1);
        connect(&dp, &net, sport, net.vip1, net.server1);
        pass(
            &dp,
            Hook::FromEndpoint,
            &packet(c, net.vip1, tcp(sport, 80, TCP_RST | TCP_ACK)),
        );
        connect(&dp, &net, sport, net.vip2, net.server1);

        // 3. the backend directly (what connect-time load balancing sends) after a NATed
        // flow of the tuple closed with FIN both ways: no translation at all
        let sport = base + 3;
        connect(&dp, &net, sport, net.vip1, net.server1);
        pass(
            &dp,
            Hook::FromEndpoint,
            &packet(c, net.vip1, tcp(sport, 80, TCP_FIN | TCP_ACK)),
        );
        pass(
            &dp,
            Hook::ToEndpoint,
            &packet(net.server1, c, tcp(8080, sport, TCP_FIN | TCP_ACK)),
        );
        assert_eq!(
            pass(
                &dp,
                Hook::FromEndpoint,
                &packet(c, net.server1, tcp(sport, 8080, TCP_SYN))
            ),
            (c, sport, net.server1, 8080)
        );
        assert_eq!(
            pass(
                &dp,
                Hook::ToEndpoint,
                &packet(net.server1, c, tcp(8080, sport, TCP_SYN | TCP_ACK))
            ),
            (net.server1, 8080, c, sport),
            "a direct connection's reply is not translated to the old frontend"
        );
        let wire = dp
            .maps()
            .conntrack(&CtKey::of(c, sport, net.server1, 8080, PROTO_TCP).0)
            .unwrap()
            .expect("the new flow's entry");
        assert_eq!(wire.flags & SV_CT_F_DNAT, 0, "{:#x}", wire.flags);
    }
}

#[test]
fn syn_after_timeout_is_a_new_flow_but_a_retransmitted_syn_is_not() {
    let Some(mut dp) = setup() else { return };
    for (i, net) in [v4(), v6()].into_iter().enumerate() {
        let c = net.client;
        let svc = 1 + i as u32;
        let sport = 41000 + i as u16;
        service(&mut dp, net.vip1, svc, net.server1);
        // a live flow: its SYN retransmitted after the backend changed still goes to server1
        assert_eq!(
            pass(
                &dp,
                Hook::FromEndpoint,
                &packet(c, net.vip1, tcp(sport, 80, TCP_SYN))
            ),
            (c, sport, net.server1, 8080)
        );
        service(&mut dp, net.vip1, svc, net.server2);
        assert_eq!(
            pass(
                &dp,
                Hook::FromEndpoint,
                &packet(c, net.vip1, tcp(sport, 80, TCP_SYN))
            ),
            (c, sport, net.server1, 8080),
            "a retransmitted SYN keeps its backend"
        );
        // an established flow that stays so keeps its backend too
        pass(
            &dp,
            Hook::ToEndpoint,
            &packet(net.server1, c, tcp(8080, sport, TCP_SYN | TCP_ACK)),
        );
        assert_eq!(
            pass(
                &dp,
                Hook::FromEndpoint,
                &packet(c, net.vip1, tcp(sport, 80, TCP_SYN))
            ),
            (c, sport, net.server1, 8080)
        );
        // idle for longer than the established timeout (1 h) and not swept yet
        let mut m = dp.maps();
        for key in [
            CtKey::of(c, sport, net.vip1, 80, PROTO_TCP).0,
            CtKey::of(c, sport, net.server1, 8080, PROTO_TCP).0,
        ] {
            let mut v = m.conntrack(&key).unwrap().expect("entry");
            v.last_seen_ns = v.last_seen_ns.saturating_sub(3601 * 1_000_000_000);
            m.set_conntrack(&key, &v).unwrap();
        }
        drop(m);
        connect(&dp, &net, sport, net.vip1, net.server2);
        assert!(
            dp.maps()
                .conntrack(&CtKey::of(c, sport, net.server1, 8080, PROTO_TCP).0)
                .unwrap()
                .is_none(),
            "the expired flow's wire entry went with it"
        );
    }
}
