//! BPF program tests of the host endpoint programs (`bpf/serval_hep.c`): the real embedded
//! object, loaded into the running kernel (root) with private maps, fed crafted packets with
//! BPF_PROG_TEST_RUN (the test run's interface, ifindex 1, plays the host interface). Asserts
//! verdicts, the host flow conntrack and the drop counter.

#[expect(
    dead_code,
    reason = "the shared packet helpers include ones (FIN/RST, udp_csum) this test does not use"
)]
mod common;

use std::net::IpAddr;

use common::fixture::{
    self, drops, expect_verdicts, hep_sizes, host_len, ip, load_hep, pol_key_full, route, verdict,
};
use common::packet::{PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_SYN, packet, tcp, udp};
use serval_dp_bpf::{
    Dataplane, Hook, LoadOptions, LogLevel, TC_ACT_SHOT, TEST_RUN_IFINDEX, abi::*, hep::TC_ACT_NEXT,
};

/// The host endpoint's endpoint id in sv_policy.
const HEP: u32 = 40;
const HOST_ID: u32 = 3;
const PEER_ID: u32 = 100;

/// This node, a peer with its own identity (a pod of another node), a stranger (WORLD), an
/// address of neither kind (forwarded traffic), another node.
struct Net {
    host: IpAddr,
    peer: IpAddr,
    stranger: IpAddr,
    pod: IpAddr,
    other_node: IpAddr,
    /// The failsafe `net` of TCP 2222 (contains peer, not stranger).
    fs_net: (IpAddr, u8),
}

fn v4() -> Net {
    Net {
        host: ip("172.31.0.11"),
        peer: ip("10.244.1.5"),
        stranger: ip("192.0.2.7"),
        pod: ip("10.244.0.9"),
        other_node: ip("172.31.0.12"),
        fs_net: (ip("10.244.0.0"), 16),
    }
}

fn v6() -> Net {
    Net {
        host: ip("fd00:5e::11"),
        peer: ip("fd00:10:244:1::5"),
        stranger: ip("2001:db8::7"),
        pod: ip("fd00:10:244::9"),
        other_node: ip("fd00:5e::12"),
        fs_net: (ip("fd00:10:244::"), 48),
    }
}

const DENY: PolVal = PolVal {
    verdict: SV_VERDICT_DENY,
    rule_id: 99,
};

/// The host endpoint object with private maps: ifindex 1 has host endpoint HEP; routes for
/// both families; policy: ingress TCP 80 from the peer's identity, egress TCP 443 to anyone,
/// everything else denied; failsafe: inbound TCP 22 from anywhere and TCP 2222 from
/// `fs_net`, outbound UDP 53.
fn setup() -> Option<Dataplane> {
    if !serval_sys::testing::require_root("dp-bpf host endpoint program test") {
        return None;
    }
    let mut dp = load_hep(hep_sizes(), LogLevel::Off);
    dp.set_hep_iface(
        TEST_RUN_IFINDEX,
        &HepIfaceVal {
            ep_id: HEP,
            flags: 0,
            untracked_ep_id: 0,
        },
    )
    .unwrap();
    for net in [v4(), v6()] {
        let mut m = dp.maps();
        for (addr, identity, flags) in [
            (net.host, HOST_ID, SV_RT_F_HOST),
            (net.peer, PEER_ID, SV_RT_F_REMOTE_WORKLOAD),
            (net.pod, PEER_ID, SV_RT_F_LOCAL_WORKLOAD),
            (net.other_node, PEER_ID, SV_RT_F_REMOTE_HOST),
        ] {
            route(&mut m, addr, host_len(addr), identity, flags);
        }
        let (fs_addr, fs_len) = net.fs_net;
        dp.set_hep_failsafe(&HepFsMatch::key(
            SV_DIR_INGRESS,
            PROTO_TCP,
            2222,
            Some((fs_addr, fs_len)),
        ))
        .unwrap();
    }
    dp.set_hep_failsafe(&HepFsMatch::key(SV_DIR_INGRESS, PROTO_TCP, 22, None))
        .unwrap();
    dp.set_hep_failsafe(&HepFsMatch::key(SV_DIR_EGRESS, PROTO_UDP, 53, None))
        .unwrap();
    let mut m = dp.maps();
    let full = |remote, dir, proto, port| pol_key_full(HEP, remote, dir, proto, port);
    m.set_policy(
        &full(PEER_ID, SV_DIR_INGRESS, PROTO_TCP, 80),
        &verdict(SV_VERDICT_ALLOW, 1),
    )
    .unwrap();
    m.set_policy(&pol_key_any_proto(HEP, PEER_ID, SV_DIR_INGRESS), &DENY)
        .unwrap();
    m.set_policy(
        &pol_key_any_proto(HEP, SV_IDENTITY_ANY, SV_DIR_INGRESS),
        &DENY,
    )
    .unwrap();
    m.set_policy(
        &full(SV_IDENTITY_ANY, SV_DIR_EGRESS, PROTO_TCP, 443),
        &verdict(SV_VERDICT_ALLOW, 2),
    )
    .unwrap();
    m.set_policy(
        &pol_key_any_proto(HEP, SV_IDENTITY_ANY, SV_DIR_EGRESS),
        &DENY,
    )
    .unwrap();
    Some(dp)
}

/// The verdict of `pkt` at `hook`.
fn run(dp: &Dataplane, hook: Hook, pkt: &[u8]) -> i32 {
    fixture::run(dp, hook, pkt).0
}

#[test]
fn host_bound_packets_are_allowed_and_denied_by_the_host_endpoint_policy() {
    let Some(mut dp) = setup() else { return };
    let mut denied = 0;
    for net in [v4(), v6()] {
        let cases = [
            (net.peer, tcp(40000, 80, TCP_SYN), TC_ACT_NEXT),
            (net.peer, tcp(40001, 81, TCP_SYN), TC_ACT_SHOT),
            (net.peer, udp(40002, 80), TC_ACT_SHOT),
            (net.stranger, tcp(40003, 80, TCP_SYN), TC_ACT_SHOT),
        ];
        denied += expect_verdicts(&dp, Hook::HostIngress, net.host, &cases);
    }
    assert_eq!(drops(&mut dp, SV_DROP_HOST_POLICY), denied);
    // The allowed flows were recorded, the denied ones not.
    let ct = dp.hep_conntrack().unwrap();
    assert_eq!(ct.len(), 2, "{ct:?}");
}

#[test]
fn failsafe_ports_pass_under_deny_all() {
    let Some(mut dp) = setup() else { return };
    // Deny every ingress packet whatever the identity: only failsafe ports get through.
    dp.maps()
        .set_policy(&pol_key_any_proto(HEP, PEER_ID, SV_DIR_INGRESS), &DENY)
        .unwrap();
    dp.maps()
        .remove_policy(&aya::maps::lpm_trie::Key::new(
            SV_POL_PREFIX_FULL,
            PolMatch::new(HEP, PEER_ID, SV_DIR_INGRESS, PROTO_TCP, 80),
        ))
        .unwrap();
    for net in [v4(), v6()] {
        let cases = [
            (net.stranger, tcp(41000, 22, TCP_SYN), TC_ACT_NEXT),
            (net.peer, tcp(41001, 22, TCP_SYN), TC_ACT_NEXT),
            (net.peer, udp(41002, 22), TC_ACT_SHOT), // TCP 22 only
            (net.peer, tcp(41003, 80, TCP_SYN), TC_ACT_SHOT),
            (net.peer, tcp(41004, 2222, TCP_SYN), TC_ACT_NEXT), // in the failsafe net
            (net.stranger, tcp(41005, 2222, TCP_SYN), TC_ACT_SHOT), // outside it
        ];
        expect_verdicts(&dp, Hook::HostIngress, net.host, &cases);
        // Outbound failsafe: UDP 53 from the host to anyone; TCP 53 is not failsafe.
        let out = |l4| run(&dp, Hook::HostEgress, &packet(net.host, net.stranger, l4));
        assert_eq!(out(udp(41006, 53)), TC_ACT_NEXT);
        assert_eq!(out(tcp(41007, 53, TCP_SYN)), TC_ACT_SHOT);
    }
}

#[test]
fn replies_of_host_flows_pass_both_ways() {
    let Some(mut dp) = setup() else { return };
    for net in [v4(), v6()] {
        // Ingress policy denies TCP from port 443 to port 42000: a reply without its flow is
        // denied.
        let reply = packet(net.stranger, net.host, tcp(443, 42000, TCP_SYN | TCP_ACK));
        assert_eq!(run(&dp, Hook::HostIngress, &reply), TC_ACT_SHOT);
        // The host opens the flow (egress TCP 443 allowed): now its reply passes.
        let syn = packet(net.host, net.stranger, tcp(42000, 443, TCP_SYN));
        assert_eq!(run(&dp, Hook::HostEgress, &syn), TC_ACT_NEXT);
        assert_eq!(run(&dp, Hook::HostIngress, &reply), TC_ACT_NEXT);
        // A host-originated flow egress policy denies is dropped, and nothing is recorded.
        let denied = packet(net.host, net.stranger, tcp(42001, 444, TCP_SYN));
        assert_eq!(run(&dp, Hook::HostEgress, &denied), TC_ACT_SHOT);
        let back = packet(net.stranger, net.host, tcp(444, 42001, TCP_SYN | TCP_ACK));
        assert_eq!(run(&dp, Hook::HostIngress, &back), TC_ACT_SHOT);
        // An allowed inbound flow's replies leave although egress policy denies TCP 40000.
        let inbound = packet(net.peer, net.host, tcp(42002, 80, TCP_SYN));
        assert_eq!(run(&dp, Hook::HostIngress, &inbound), TC_ACT_NEXT);
        let answer = packet(net.host, net.peer, tcp(80, 42002, TCP_SYN | TCP_ACK));
        assert_eq!(run(&dp, Hook::HostEgress, &answer), TC_ACT_NEXT);
    }
    let ct = dp.hep_conntrack().unwrap();
    assert!(
        ct.iter().any(|(_, v)| v.flags & SV_CT_F_ESTABLISHED != 0),
        "SYN both ways marks the flow established: {ct:?}"
    );
}

#[test]
fn marked_forwarded_and_foreign_packets_are_not_policed() {
    let Some(mut dp) = setup() else { return };
    for net in [v4(), v6()] {
        let denied = packet(net.stranger, net.host, tcp(43000, 8080, TCP_SYN));
        assert_eq!(run(&dp, Hook::HostIngress, &denied), TC_ACT_SHOT);
        // The same packet carrying SV_MARK_SEEN (another Serval program handled it) passes.
        let marked = dp
            .test_run_marked(Hook::HostIngress, &denied, SV_MARK_SEEN | 0x42)
            .unwrap();
        assert_eq!(marked.verdict, TC_ACT_NEXT);
        // Forwarded traffic (neither end is this host) passes in both directions.
        let fwd = packet(net.stranger, net.pod, tcp(43001, 8080, TCP_SYN));
        assert_eq!(run(&dp, Hook::HostIngress, &fwd), TC_ACT_NEXT);
        let fwd_out = packet(net.pod, net.stranger, tcp(43002, 8080, TCP_SYN));
        assert_eq!(run(&dp, Hook::HostEgress, &fwd_out), TC_ACT_NEXT);
        // VXLAN between nodes is allowed before policy; from a stranger it is not.
        let vxlan = packet(net.other_node, net.host, udp(51000, 4789));
        assert_eq!(run(&dp, Hook::HostIngress, &vxlan), TC_ACT_NEXT);
        let vxlan_out = packet(net.host, net.other_node, udp(51001, 4789));
        assert_eq!(run(&dp, Hook::HostEgress, &vxlan_out), TC_ACT_NEXT);
        let spoof = packet(net.stranger, net.host, udp(51002, 4789));
        assert_eq!(run(&dp, Hook::HostIngress, &spoof), TC_ACT_SHOT);
    }
    // IPv6 link control (MLDv2 report, neighbour solicitation) leaves under deny-all egress;
    // an echo request does not.
    let icmp6 = |kind| {
        let l4 = common::packet::L4::Icmp {
            kind,
            code: 0,
            id: 7,
        };
        run(&dp, Hook::HostEgress, &packet(v6().host, v6().stranger, l4))
    };
    assert_eq!(icmp6(143), TC_ACT_NEXT);
    assert_eq!(icmp6(135), TC_ACT_NEXT);
    assert_eq!(icmp6(128), TC_ACT_SHOT);
    // An interface without a host endpoint: nothing is policed.
    assert!(dp.remove_hep_iface(TEST_RUN_IFINDEX).unwrap());
    let denied = packet(v4().stranger, v4().host, tcp(43003, 8080, TCP_SYN));
    assert_eq!(run(&dp, Hook::HostIngress, &denied), TC_ACT_NEXT);
}

#[test]
fn the_debug_build_loads_too() {
    if !serval_sys::testing::require_root("dp-bpf host endpoint program test") {
        return;
    }
    let dp = Dataplane::load_hep(&LoadOptions {
        log_level: LogLevel::Debug,
        ..LoadOptions::default()
    })
    .expect("load the debug host endpoint programs");
    let pkt = packet(v4().stranger, v4().host, tcp(1, 2, TCP_SYN));
    // No sv_hep_ifaces entry: passes.
    assert_eq!(run(&dp, Hook::HostIngress, &pkt), TC_ACT_NEXT);
}

/// `pkt` as an IP fragment at `offset` (8-byte units) with more fragments to come: IPv4
/// sets the header's fragment field; IPv6 inserts a fragment extension header.
fn fragment(pkt: &[u8], offset: u16) -> Vec<u8> {
    let mut p = pkt.to_vec();
    if p[12..14] == [0x08, 0x00] {
        let v = 0x2000 | offset; // MF
        p[20..22].copy_from_slice(&v.to_be_bytes());
        return p;
    }
    let next = p[14 + 6];
    p[14 + 6] = 44; // IPPROTO_FRAGMENT
    let len = u16::from_be_bytes([p[18], p[19]]) + 8;
    p[18..20].copy_from_slice(&len.to_be_bytes());
    let mut frag = vec![next, 0];
    frag.extend(((offset << 3) | 1).to_be_bytes());
    frag.extend(0x5e57_0001u32.to_be_bytes());
    p.splice(54..54, frag);
    p
}

#[test]
fn first_fragments_are_policed_and_later_ones_pass() {
    let Some(dp) = setup() else { return };
    for net in [v4(), v6()] {
        let open = packet(net.peer, net.host, tcp(44000, 80, TCP_SYN));
        let closed = packet(net.peer, net.host, tcp(44001, 81, TCP_SYN));
        assert_eq!(
            run(&dp, Hook::HostIngress, &fragment(&open, 0)),
            TC_ACT_NEXT
        );
        assert_eq!(
            run(&dp, Hook::HostIngress, &fragment(&closed, 0)),
            TC_ACT_SHOT,
            "a first fragment carries the ports: policed ({})",
            net.host
        );
        assert_eq!(
            run(&dp, Hook::HostIngress, &fragment(&closed, 100)),
            TC_ACT_NEXT,
            "a later fragment cannot be reassembled without its first ({})",
            net.host
        );
    }
}

#[test]
fn source_port_tables_decide_by_source_port() {
    let Some(mut dp) = setup() else { return };
    // TCP 8443 from the peer: allowed only from source ports 1024-2047 (table 7).
    let table = 7;
    dp.maps()
        .set_policy(
            &aya::maps::lpm_trie::Key::new(
                SV_POL_PREFIX_FULL,
                PolMatch::new(HEP, PEER_ID, SV_DIR_INGRESS, PROTO_TCP, 8443),
            ),
            &PolVal {
                verdict: SV_VERDICT_BY_SPORT,
                rule_id: table,
            },
        )
        .unwrap();
    dp.set_policy_sport(
        &aya::maps::lpm_trie::Key::new(
            SV_POL_SPORT_PREFIX_ANY + 6,
            PolSportMatch::new(table, 1024),
        ),
        &verdict(SV_VERDICT_ALLOW, 3),
    )
    .unwrap();
    dp.set_policy_sport(
        &aya::maps::lpm_trie::Key::new(SV_POL_SPORT_PREFIX_ANY, PolSportMatch::new(table, 0)),
        &DENY,
    )
    .unwrap();
    for net in [v4(), v6()] {
        let from = |sport| packet(net.peer, net.host, tcp(sport, 8443, TCP_SYN));
        assert_eq!(run(&dp, Hook::HostIngress, &from(1500)), TC_ACT_NEXT);
        assert_eq!(run(&dp, Hook::HostIngress, &from(2048)), TC_ACT_SHOT);
        assert_eq!(run(&dp, Hook::HostIngress, &from(40000)), TC_ACT_SHOT);
    }
}
