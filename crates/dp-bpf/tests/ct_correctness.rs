//! Conntrack and NAT correctness (issue 5), with BPF_PROG_TEST_RUN on the real objects and
//! private maps:
//! - tuple reuse: a TCP SYN (no ACK) reusing the tuple of a flow closed by RST / FIN or idle
//!   past its timeout opens a new flow (new backend, new translations both ways), while a
//!   retransmitted SYN of a live flow keeps its backend;
//! - ICMP errors about NATed flows (service DNAT, NAT outgoing) are translated like their flow
//!   (outer and embedded addresses and ports, ICMP and embedded IPv4 header checksums) and pass
//!   policy as RELATED; errors about unknown flows are policed as before;
//! - SCTP and UDP-Lite service NAT: SCTP's CRC32c updated for the port change (checked
//!   against the `crc32c` crate for several lengths), UDP-Lite's checksum like UDP's.

#[expect(
    dead_code,
    reason = "the shared packet helpers include ones this test does not use"
)]
mod common;

use std::net::IpAddr;

use common::fixture::{add_frontend, host_len, ip, load_tc, route, small_sizes, verdict};
use common::packet::{
    PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, PROTO_UDPLITE, TCP_ACK, TCP_FIN,
    TCP_RST, TCP_SYN, fold, frame, packet, parse, pseudo, sum16, tcp, udp,
};
use serval_dp_bpf::{
    Dataplane, Hook, LogLevel, MapSizes, TC_ACT_OK, TC_ACT_SHOT, TEST_RUN_IFINDEX, abi::*,
};

const EP: u32 = 10;
const POD_ID: u32 = 100;

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

/// The test-run interface is the client's endpoint (both families), allowed everything both
/// ways; the servers are pods (routes without an interface: no fast path).
fn setup() -> Option<Dataplane> {
    setup_with(true)
}

/// As [`setup`]; `ingress_allow` false: the client's ingress policy denies everything.
fn setup_with(ingress_allow: bool) -> Option<Dataplane> {
    if !serval_sys::testing::require_root("dp-bpf ct_correctness test") {
        return None;
    }
    let mut dp = load_tc(small_sizes(), LogLevel::Off);
    let mut m = dp.maps();
    m.set_endpoint(
        TEST_RUN_IFINDEX,
        &EpVal::new(EP, &[v4().client, v6().client]),
    )
    .unwrap();
    for net in [v4(), v6()] {
        for a in [net.client, net.server1, net.server2] {
            let flags = SV_RT_F_LOCAL_WORKLOAD | SV_RT_F_IN_POOL;
            route(&mut m, a, host_len(a), POD_ID, flags);
        }
    }
    let allow = verdict(SV_VERDICT_ALLOW, 1);
    let deny = verdict(SV_VERDICT_DENY, 2);
    m.set_policy(
        &pol_key_any_proto(EP, SV_IDENTITY_ANY, SV_DIR_EGRESS),
        &allow,
    )
    .unwrap();
    m.set_policy(
        &pol_key_any_proto(EP, SV_IDENTITY_ANY, SV_DIR_INGRESS),
        if ingress_allow { &allow } else { &deny },
    )
    .unwrap();
    Some(dp)
}

/// Map sizes for a dataplane of one uplink flow.
fn tiny_sizes() -> MapSizes {
    MapSizes {
        nat_frontend: 16,
        nat_backend: 16,
        nat_affinity: 16,
        route: 16,
        conntrack: 256,
        policy: 16,
        endpoints: 4,
    }
}

/// Service `svc_id` at (vip, 80/TCP) with the one backend (addr, 8080).
fn service(dp: &mut Dataplane, vip: IpAddr, svc_id: u32, backend: IpAddr) {
    service_proto(dp, vip, PROTO_TCP, svc_id, backend);
}

fn service_proto(dp: &mut Dataplane, vip: IpAddr, proto: u8, svc_id: u32, backend: IpAddr) {
    add_frontend(
        &mut dp.maps(),
        (vip, 80, proto),
        svc_id,
        0,
        &[(backend, 8080, true)],
    );
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
fn uplink_syn_after_rst_gets_a_new_backend() {
    if !serval_sys::testing::require_root("dp-bpf ct_correctness test") {
        return;
    }
    for (node, outside, pod_a, pod_b) in [
        (
            ip("172.31.1.12"),
            ip("192.0.2.10"),
            ip("10.244.2.7"),
            ip("10.244.2.8"),
        ),
        (
            ip("fd00:5e:1::12"),
            ip("2001:db8::10"),
            ip("fd00:10:244:2::7"),
            ip("fd00:10:244:2::8"),
        ),
    ] {
        let mut dp = load_tc(tiny_sizes(), LogLevel::Off);
        let mut m = dp.maps();
        m.set_host(&HostVal::new(&[node], (20000, 20009))).unwrap();
        // a NodePort with externalTrafficPolicy Local: DNAT only, the client's address kept
        m.set_frontend(
            &NatFeKey::new(node, 30000, PROTO_TCP),
            &NatFeVal {
                svc_id: 7,
                count: 1,
                local_count: 1,
                flags: SV_NAT_FE_F_EXTERNAL | SV_NAT_FE_F_EXT_LOCAL,
                ..NatFeVal::default()
            },
        )
        .unwrap();
        let backend = |m: &mut serval_dp_bpf::maps::Maps<'_>, a| {
            m.set_backend(
                &NatBeKey { svc_id: 7, slot: 0 },
                &NatBeVal::new(a, 8080, SV_NAT_BE_F_LOCAL),
            )
            .unwrap();
        };
        backend(&mut m, pod_a);
        let syn = packet(outside, node, tcp(40000, 30000, TCP_SYN));
        let to = |dp: &Dataplane, pkt: &[u8]| {
            let out = dp.test_run(Hook::UplinkIngress, pkt).unwrap();
            assert_eq!(out.verdict, -1, "TCX_NEXT");
            let p = parse(&out.packet);
            assert!(p.l3_csum_ok && p.l4_csum_ok);
            (p.dst, p.dport)
        };
        assert_eq!(to(&dp, &syn), (pod_a, 8080));
        // the client resets the connection; the service's backend changes
        assert_eq!(
            to(
                &dp,
                &packet(outside, node, tcp(40000, 30000, TCP_RST | TCP_ACK))
            ),
            (pod_a, 8080)
        );
        let mut m = dp.maps();
        backend(&mut m, pod_b);
        assert_eq!(
            to(&dp, &syn),
            (pod_b, 8080),
            "a new flow, load-balanced afresh"
        );
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

// ---- ICMP errors ---------------------------------------------------------------------------

/// An ICMP (IPv4) / ICMPv6 error `kind`/`code` from `src` to `dst` quoting `inner` (a frame as
/// `packet` builds it: the quote is its IP header and 8 bytes of transport for IPv4, up to
/// 64 bytes of the IPv6 packet), with valid checksums.
fn icmp_error(src: IpAddr, dst: IpAddr, kind: u8, code: u8, inner: &[u8]) -> Vec<u8> {
    let ip = &inner[14..];
    let quote = if src.is_ipv4() {
        &ip[..usize::from(ip[0] & 0x0f) * 4 + 8]
    } else {
        &ip[..ip.len().min(64)]
    };
    let mut icmp = vec![kind, code, 0, 0, 0, 0, 0, 0];
    if !src.is_ipv4() && kind == 2 {
        icmp[4..8].copy_from_slice(&1280u32.to_be_bytes()); // packet too big: the MTU
    }
    if src.is_ipv4() && kind == 3 && code == 4 {
        icmp[6..8].copy_from_slice(&1400u16.to_be_bytes()); // fragmentation needed: MTU
    }
    icmp.extend(quote);
    let (proto, base) = if src.is_ipv4() {
        (PROTO_ICMP, 0) // ICMPv4's checksum has no pseudo header
    } else {
        (PROTO_ICMPV6, pseudo(src, dst, PROTO_ICMPV6, icmp.len()))
    };
    let c = !fold(base + sum16(&icmp));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    frame(src, dst, proto, &icmp)
}

/// An error as the programs hand it back: outer addresses (checksums verified), the ICMP
/// type, the embedded tuple, and whether the embedded IPv4 header checksum verifies.
#[derive(Debug, PartialEq, Eq)]
struct Err {
    outer: (IpAddr, IpAddr),
    kind: u8,
    inner: (IpAddr, u16, IpAddr, u16),
}

fn parse_error(frame: &[u8]) -> Err {
    let p = parse(frame);
    assert!(p.l3_csum_ok, "outer IPv4 header checksum: {p:?}");
    assert!(p.l4_csum_ok, "ICMP checksum: {p:?}");
    let ip = &frame[14..];
    let l4 = if p.src.is_ipv4() {
        usize::from(ip[0] & 0x0f) * 4
    } else {
        40
    };
    let kind = ip[l4];
    let q = &ip[l4 + 8..];
    let (src, dst, t) = if p.src.is_ipv4() {
        let ihl = usize::from(q[0] & 0x0f) * 4;
        assert_eq!(
            fold(sum16(&q[..ihl])),
            0xffff,
            "embedded IPv4 header checksum"
        );
        let s: [u8; 4] = q[12..16].try_into().unwrap();
        let d: [u8; 4] = q[16..20].try_into().unwrap();
        (IpAddr::from(s), IpAddr::from(d), &q[ihl..])
    } else {
        let s: [u8; 16] = q[8..24].try_into().unwrap();
        let d: [u8; 16] = q[24..40].try_into().unwrap();
        (IpAddr::from(s), IpAddr::from(d), &q[40..])
    };
    Err {
        outer: (p.src, p.dst),
        kind,
        inner: (
            src,
            u16::from_be_bytes([t[0], t[1]]),
            dst,
            u16::from_be_bytes([t[2], t[3]]),
        ),
    }
}

fn run_error(dp: &Dataplane, hook: Hook, pkt: &[u8], verdict: i32) -> Err {
    let out = dp.test_run(hook, pkt).expect("BPF_PROG_TEST_RUN");
    assert_eq!(out.verdict, verdict, "{hook:?}");
    parse_error(&out.packet)
}

#[test]
fn icmp_errors_about_service_flows_are_translated_and_related() {
    // the client's ingress policy denies everything: only RELATED errors reach it
    let Some(mut dp) = setup_with(false) else {
        return;
    };
    for (i, net) in [v4(), v6()].into_iter().enumerate() {
        let v4 = net.client.is_ipv4();
        let c = net.client;
        let router = if v4 { ip("10.0.0.254") } else { ip("fd00::fe") };
        let (unreach, port_unreach) = if v4 { (3, 3) } else { (1, 4) };
        let (too_big, too_big_code) = if v4 { (3, 4) } else { (2, 0) };
        let time_exceeded = if v4 { 11 } else { 3 };
        service_proto(&mut dp, net.vip1, PROTO_UDP, 1 + i as u32, net.server1);
        service_proto(&mut dp, net.vip1, PROTO_TCP, 11 + i as u32, net.server1);

        // UDP to the service; the backend answers port unreachable about the DNATed packet
        let sport = 5000 + i as u16;
        let fwd = packet(c, net.vip1, udp(sport, 80));
        assert_eq!(
            pass(&dp, Hook::FromEndpoint, &fwd),
            (c, sport, net.server1, 8080)
        );
        let wire = packet(c, net.server1, udp(sport, 8080));
        let err = icmp_error(net.server1, c, unreach, port_unreach, &wire);
        assert_eq!(
            run_error(&dp, Hook::ToEndpoint, &err, TC_ACT_OK),
            Err {
                outer: (net.vip1, c),
                kind: unreach,
                inner: (c, sport, net.vip1, 80),
            },
            "the client sees an error from and about the service address"
        );

        // TCP: a router's fragmentation needed / packet too big and time exceeded
        let tport = 6000 + i as u16;
        assert_eq!(
            pass(
                &dp,
                Hook::FromEndpoint,
                &packet(c, net.vip1, tcp(tport, 80, TCP_SYN))
            ),
            (c, tport, net.server1, 8080)
        );
        let wire = packet(c, net.server1, tcp(tport, 8080, TCP_ACK));
        for (kind, code) in [(too_big, too_big_code), (time_exceeded, 0)] {
            let err = icmp_error(router, c, kind, code, &wire);
            assert_eq!(
                run_error(&dp, Hook::ToEndpoint, &err, TC_ACT_OK),
                Err {
                    outer: (router, c),
                    kind,
                    inner: (c, tport, net.vip1, 80),
                },
                "a router's error keeps its source, the quote names the service"
            );
        }

        // the client's own error about a reply from the service goes to the backend
        let reply = packet(net.vip1, c, udp(80, sport));
        let err = icmp_error(c, net.vip1, unreach, port_unreach, &reply);
        assert_eq!(
            run_error(&dp, Hook::FromEndpoint, &err, TC_ACT_OK),
            Err {
                outer: (c, net.server1),
                kind: unreach,
                inner: (net.server1, 8080, c, sport),
            }
        );

        // an error about no tracked flow is policed as before: denied
        let stray = packet(c, net.server2, udp(sport, 9999));
        let err = icmp_error(net.server2, c, unreach, port_unreach, &stray);
        let out = dp.test_run(Hook::ToEndpoint, &err).unwrap();
        assert_eq!(out.verdict, TC_ACT_SHOT, "unrelated error: ingress policy");
    }
}

#[test]
fn icmp_errors_about_nat_outgoing_flows_are_translated_at_the_uplink() {
    if !serval_sys::testing::require_root("dp-bpf ct_correctness test") {
        return;
    }
    let node4 = ip("172.31.1.12");
    let node6 = ip("fd00:5e:1::12");
    let psnat = (20000, 20009);
    for (pod, node, outside, router) in [
        (v4().client, node4, ip("192.0.2.10"), ip("192.0.2.1")),
        (v6().client, node6, ip("2001:db8::10"), ip("2001:db8::1")),
    ] {
        let mut dp = load_tc(tiny_sizes(), LogLevel::Off);
        let mut m = dp.maps();
        m.set_host(&HostVal::new(&[node4, node6], psnat)).unwrap();
        let pool_flags = SV_RT_F_IN_POOL | SV_RT_F_NAT_OUTGOING;
        route(&mut m, pod, host_len(pod), POD_ID, pool_flags);
        route(&mut m, node, host_len(node), 3, SV_RT_F_HOST);
        let v4 = pod.is_ipv4();
        let (unreach, code) = if v4 { (3, 4) } else { (2, 0) };

        let out = dp
            .test_run(Hook::UplinkEgress, &packet(pod, outside, udp(33001, 9000)))
            .unwrap();
        let p = parse(&out.packet);
        assert_eq!((p.src, p.dst), (node, outside));
        let nport = p.sport;
        assert!((psnat.0..=psnat.1).contains(&nport));

        // a router's error about the SNATed packet: back to the pod, about the pod's packet
        let wire = packet(node, outside, udp(nport, 9000));
        let err = icmp_error(router, node, unreach, code, &wire);
        assert_eq!(
            run_error(&dp, Hook::UplinkIngress, &err, -1),
            Err {
                outer: (router, pod),
                kind: unreach,
                inner: (pod, 33001, outside, 9000),
            }
        );
        // the pod's error about a reply: from the node, about the node's port
        let (pu, pu_code) = if v4 { (3, 3) } else { (1, 4) };
        let reply = packet(outside, pod, udp(9000, 33001));
        let err = icmp_error(pod, outside, pu, pu_code, &reply);
        assert_eq!(
            run_error(&dp, Hook::UplinkEgress, &err, -1),
            Err {
                outer: (node, outside),
                kind: pu,
                inner: (outside, 9000, node, nport),
            }
        );
    }
}

// ---- SCTP and UDP-Lite service NAT ----------------------------------------------------------

/// (src, dst, the transport segment) of a frame; the IPv4 header checksum verified.
fn segment(frame: &[u8]) -> (IpAddr, IpAddr, Vec<u8>) {
    let ip = &frame[14..];
    if frame[12] == 0x08 {
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        assert_eq!(fold(sum16(&ip[..ihl])), 0xffff, "IPv4 header checksum");
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        let s: [u8; 4] = ip[12..16].try_into().unwrap();
        let d: [u8; 4] = ip[16..20].try_into().unwrap();
        (IpAddr::from(s), IpAddr::from(d), ip[ihl..total].to_vec())
    } else {
        let len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
        let s: [u8; 16] = ip[8..24].try_into().unwrap();
        let d: [u8; 16] = ip[24..40].try_into().unwrap();
        (IpAddr::from(s), IpAddr::from(d), ip[40..40 + len].to_vec())
    }
}

/// The SCTP checksum of a segment (CRC32c with the field zeroed), as the field holds it.
fn sctp_crc(seg: &[u8]) -> [u8; 4] {
    let mut z = seg.to_vec();
    z[8..12].fill(0);
    crc32c::crc32c(&z).to_le_bytes()
}

/// An SCTP segment with one DATA chunk of `payload` bytes (padded to 4), valid checksum.
fn sctp_seg(sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend(sport.to_be_bytes());
    s.extend(dport.to_be_bytes());
    s.extend(0x1234_5678u32.to_be_bytes()); // verification tag
    s.extend([0, 0, 0, 0]);
    s.extend([0, 3]);
    s.extend(((16 + payload) as u16).to_be_bytes());
    s.extend([0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]); // TSN, stream, ssn, ppid
    s.extend((0..payload).map(|i| (i * 7 + 3) as u8));
    s.resize(s.len().next_multiple_of(4), 0);
    let c = sctp_crc(&s);
    s[8..12].copy_from_slice(&c);
    s
}

/// Checks a frame's SCTP checksum; returns (src, sport, dst, dport).
fn sctp_ok(frame: &[u8]) -> (IpAddr, u16, IpAddr, u16) {
    let (src, dst, seg) = segment(frame);
    assert_eq!(
        seg[8..12],
        sctp_crc(&seg),
        "SCTP CRC32c of {} bytes",
        seg.len()
    );
    (
        src,
        u16::from_be_bytes([seg[0], seg[1]]),
        dst,
        u16::from_be_bytes([seg[2], seg[3]]),
    )
}

#[test]
fn sctp_service_nat_updates_the_crc32c_for_every_length() {
    let Some(mut dp) = setup() else { return };
    for (i, net) in [v4(), v6()].into_iter().enumerate() {
        let c = net.client;
        service_proto(&mut dp, net.vip1, PROTO_SCTP, 1 + i as u32, net.server1);
        // the same port on the backend: only the address changes, which the CRC does not cover
        let backends = [(net.server2, 80, true)];
        add_frontend(
            &mut dp.maps(),
            (net.vip2, 80, PROTO_SCTP),
            11 + i as u32,
            0,
            &backends,
        );
        for (j, payload) in [0usize, 1, 5, 37, 200, 1001, 1400].into_iter().enumerate() {
            let sport = 7000 + 10 * i as u16 + j as u16;
            let out = dp
                .test_run(
                    Hook::FromEndpoint,
                    &frame(c, net.vip1, PROTO_SCTP, &sctp_seg(sport, 80, payload)),
                )
                .unwrap();
            assert_eq!(out.verdict, TC_ACT_OK, "payload {payload}");
            assert_eq!(
                sctp_ok(&out.packet),
                (c, sport, net.server1, 8080),
                "DNAT, payload {payload}"
            );
            let reply = frame(net.server1, c, PROTO_SCTP, &sctp_seg(8080, sport, payload));
            let out = dp.test_run(Hook::ToEndpoint, &reply).unwrap();
            assert_eq!(out.verdict, TC_ACT_OK);
            assert_eq!(
                sctp_ok(&out.packet),
                (net.vip1, 80, c, sport),
                "reverse NAT, payload {payload}"
            );
            let out = dp
                .test_run(
                    Hook::FromEndpoint,
                    &frame(c, net.vip2, PROTO_SCTP, &sctp_seg(sport, 80, payload)),
                )
                .unwrap();
            assert_eq!(out.verdict, TC_ACT_OK);
            assert_eq!(sctp_ok(&out.packet), (c, sport, net.server2, 80));
        }
    }
    assert_eq!(dp.maps().drop_counters().unwrap().get(SV_DROP_REWRITE), 0);
}

/// A UDP-Lite segment covering `coverage` bytes (0: all) with its checksum.
fn udplite_seg(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, coverage: u16) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend(sport.to_be_bytes());
    s.extend(dport.to_be_bytes());
    s.extend(coverage.to_be_bytes());
    s.extend([0, 0]);
    s.extend(b"serval-udplite-payload!");
    let c = udplite_sum(src, dst, &s);
    s[6..8].copy_from_slice(&(!c).to_be_bytes());
    s
}

/// The folded sum over the pseudo header and the covered bytes (0xffff: valid).
fn udplite_sum(src: IpAddr, dst: IpAddr, seg: &[u8]) -> u16 {
    let cov = usize::from(u16::from_be_bytes([seg[4], seg[5]]));
    let cov = if cov == 0 { seg.len() } else { cov };
    fold(pseudo(src, dst, PROTO_UDPLITE, seg.len()) + sum16(&seg[..cov]))
}

#[test]
fn udplite_service_nat_updates_its_checksum_both_ways() {
    let Some(mut dp) = setup() else { return };
    for (i, net) in [v4(), v6()].into_iter().enumerate() {
        let c = net.client;
        service_proto(&mut dp, net.vip1, PROTO_UDPLITE, 1 + i as u32, net.server1);
        for (j, coverage) in [0u16, 8, 12].into_iter().enumerate() {
            let sport = 9000 + 10 * i as u16 + j as u16;
            let pkt = frame(
                c,
                net.vip1,
                PROTO_UDPLITE,
                &udplite_seg(c, net.vip1, sport, 80, coverage),
            );
            let out = dp.test_run(Hook::FromEndpoint, &pkt).unwrap();
            assert_eq!(out.verdict, TC_ACT_OK);
            let (s, d, seg) = segment(&out.packet);
            assert_eq!((s, d), (c, net.server1));
            assert_eq!(
                &seg[0..4],
                &[&sport.to_be_bytes()[..], &8080u16.to_be_bytes()].concat()
            );
            assert_eq!(
                udplite_sum(s, d, &seg),
                0xffff,
                "UDP-Lite checksum after DNAT"
            );
            assert_ne!(
                &seg[6..8],
                &[0, 0],
                "UDP-Lite never carries a zero checksum"
            );

            let reply = frame(
                net.server1,
                c,
                PROTO_UDPLITE,
                &udplite_seg(net.server1, c, 8080, sport, coverage),
            );
            let out = dp.test_run(Hook::ToEndpoint, &reply).unwrap();
            assert_eq!(out.verdict, TC_ACT_OK);
            let (s, d, seg) = segment(&out.packet);
            assert_eq!((s, d), (net.vip1, c));
            assert_eq!(u16::from_be_bytes([seg[0], seg[1]]), 80);
            assert_eq!(
                udplite_sum(s, d, &seg),
                0xffff,
                "UDP-Lite checksum after reverse NAT"
            );
        }
    }
    assert_eq!(dp.maps().drop_counters().unwrap().get(SV_DROP_REWRITE), 0);
}
