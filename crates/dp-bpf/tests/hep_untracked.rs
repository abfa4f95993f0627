//! BPF program tests of untracked (`doNotTrack`) host endpoint policy in the host endpoint
//! programs (`bpf/serval_hep.c`, `sv_hep_untracked`): the interface's untracked verdict set
//! (its own endpoint id, `HepIfaceVal::untracked_ep_id`) is judged before conntrack and the
//! ordinary policy, for host and forwarded traffic; Allow accepts without a conntrack entry,
//! Deny drops, Allow with the "no policy" / "passed every tier" rule ids goes on; failsafe
//! ports come first. The real object, private maps, BPF_PROG_TEST_RUN (ifindex 1).

#[expect(
    dead_code,
    reason = "the shared packet helpers include ones this test does not use"
)]
mod common;

use std::net::IpAddr;

use common::fixture::{
    self, drops, expect_verdicts, hep_sizes, host_len, ip, load_hep, pol_key_full as full, route,
    verdict as val,
};
use common::packet::{PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_SYN, packet, tcp, udp};
use serval_dp_bpf::{
    Dataplane, Hook, LogLevel, TC_ACT_SHOT, TEST_RUN_IFINDEX, abi::*, hep::TC_ACT_NEXT,
};

/// The host endpoint's ordinary and untracked endpoint ids.
const HEP: u32 = 40;
const UNTRACKED: u32 = 41;
const HOST_ID: u32 = 3;
const PEER_ID: u32 = 100;
/// Rule ids (compile::RULE_NO_POLICY / RULE_PASSED_ALL_TIERS, and a rule).
const RULE_NO_POLICY: u32 = 1;
const RULE_PASSED_ALL_TIERS: u32 = 2;
const RULE: u32 = 77;

struct Net {
    host: IpAddr,
    peer: IpAddr,
    stranger: IpAddr,
    /// A local pod: traffic to it is forwarded, not the host's.
    pod: IpAddr,
}

fn nets() -> [Net; 2] {
    [
        Net {
            host: ip("172.31.0.11"),
            peer: ip("10.244.1.5"),
            stranger: ip("192.0.2.7"),
            pod: ip("10.244.0.9"),
        },
        Net {
            host: ip("fd00:5e::11"),
            peer: ip("fd00:10:244:1::5"),
            stranger: ip("2001:db8::7"),
            pod: ip("fd00:10:244::9"),
        },
    ]
}

/// Ordinary policy: ingress TCP 80 from the peer and TCP 8080 from anyone allowed, egress
/// denied; failsafe inbound TCP 22. Untracked, ingress: TCP 80 from the peer denied, UDP 5353
/// allowed, TCP 22 denied, UDP 9999 denied, the rest "passed every tier"; egress: UDP 5353
/// allowed, the rest "no policy".
fn setup(untracked_ep_id: u32) -> Option<Dataplane> {
    if !serval_sys::testing::require_root("dp-bpf untracked host endpoint policy test") {
        return None;
    }
    let mut dp = load_hep(hep_sizes(), LogLevel::Off);
    dp.set_hep_iface(
        TEST_RUN_IFINDEX,
        &HepIfaceVal {
            ep_id: HEP,
            flags: 0,
            untracked_ep_id,
        },
    )
    .unwrap();
    dp.set_hep_failsafe(&HepFsMatch::key(SV_DIR_INGRESS, PROTO_TCP, 22, None))
        .unwrap();
    let mut m = dp.maps();
    for net in nets() {
        for (addr, identity, flags) in [
            (net.host, HOST_ID, SV_RT_F_HOST),
            (net.peer, PEER_ID, SV_RT_F_REMOTE_WORKLOAD),
            (net.pod, PEER_ID, SV_RT_F_LOCAL_WORKLOAD),
        ] {
            route(&mut m, addr, host_len(addr), identity, flags);
        }
    }
    let (allow, deny) = (SV_VERDICT_ALLOW, SV_VERDICT_DENY);
    let (ing, egr) = (SV_DIR_INGRESS, SV_DIR_EGRESS);
    let any = SV_IDENTITY_ANY;
    let entries = [
        // ordinary
        (full(HEP, PEER_ID, ing, PROTO_TCP, 80), val(allow, 10)),
        (pol_key_any_proto(HEP, PEER_ID, ing), val(deny, 11)),
        (full(HEP, any, ing, PROTO_TCP, 8080), val(allow, 12)),
        (pol_key_any_proto(HEP, any, ing), val(deny, 11)),
        (pol_key_any_proto(HEP, any, egr), val(deny, 13)),
        // untracked
        (
            full(UNTRACKED, PEER_ID, ing, PROTO_TCP, 80),
            val(deny, RULE),
        ),
        (
            pol_key_any_proto(UNTRACKED, PEER_ID, ing),
            val(allow, RULE_PASSED_ALL_TIERS),
        ),
        (full(UNTRACKED, any, ing, PROTO_UDP, 5353), val(allow, RULE)),
        (full(UNTRACKED, any, ing, PROTO_TCP, 22), val(deny, RULE)),
        (full(UNTRACKED, any, ing, PROTO_UDP, 9999), val(deny, RULE)),
        (
            pol_key_any_proto(UNTRACKED, any, ing),
            val(allow, RULE_PASSED_ALL_TIERS),
        ),
        (full(UNTRACKED, any, egr, PROTO_UDP, 5353), val(allow, RULE)),
        (
            pol_key_any_proto(UNTRACKED, any, egr),
            val(allow, RULE_NO_POLICY),
        ),
    ];
    for (k, v) in entries {
        m.set_policy(&k, &v).unwrap();
    }
    Some(dp)
}

/// The verdict of `pkt` at `hook`.
fn run(dp: &Dataplane, hook: Hook, pkt: &[u8]) -> i32 {
    fixture::run(dp, hook, pkt).0
}

#[test]
fn untracked_deny_and_allow_decide_before_ordinary_policy() {
    let Some(mut dp) = setup(UNTRACKED) else {
        return;
    };
    let mut denied = 0;
    for net in nets() {
        let cases = [
            // untracked Deny beats the ordinary Allow
            (net.peer, tcp(40000, 80, TCP_SYN), TC_ACT_SHOT),
            // untracked Allow beats the ordinary deny
            (net.stranger, udp(40001, 5353), TC_ACT_NEXT),
            // no untracked decision: ordinary policy (allow 8080, deny 81)
            (net.stranger, tcp(40002, 8080, TCP_SYN), TC_ACT_NEXT),
            (net.peer, tcp(40003, 81, TCP_SYN), TC_ACT_SHOT),
            // failsafe before the untracked Deny of TCP 22
            (net.stranger, tcp(40004, 22, TCP_SYN), TC_ACT_NEXT),
        ];
        denied += expect_verdicts(&dp, Hook::HostIngress, net.host, &cases);
    }
    assert_eq!(drops(&mut dp, SV_DROP_HOST_POLICY), denied);
    // Conntrack holds the two tracked flows per family (8080 by policy, 22 by failsafe), not
    // the untracked UDP 5353.
    let ct = dp.hep_conntrack().unwrap();
    assert_eq!(ct.len(), 4, "{ct:?}");
}

#[test]
fn replies_of_untracked_flows_need_their_own_rule() {
    let Some(mut dp) = setup(UNTRACKED) else {
        return;
    };
    for net in nets() {
        // In: UDP 5353 accepted untracked. The host's reply leaves: no untracked egress rule
        // for source port 5353 and no conntrack entry, so ordinary egress policy denies it.
        let q = packet(net.stranger, net.host, udp(40010, 5353));
        assert_eq!(run(&dp, Hook::HostIngress, &q), TC_ACT_NEXT);
        let reply = packet(net.host, net.stranger, udp(5353, 40010));
        assert_eq!(run(&dp, Hook::HostEgress, &reply), TC_ACT_SHOT);
        // A tracked flow's reply passes by conntrack although egress policy denies.
        let syn = packet(net.stranger, net.host, tcp(40011, 8080, TCP_SYN));
        assert_eq!(run(&dp, Hook::HostIngress, &syn), TC_ACT_NEXT);
        let synack = packet(net.host, net.stranger, tcp(8080, 40011, TCP_SYN | TCP_ACK));
        assert_eq!(run(&dp, Hook::HostEgress, &synack), TC_ACT_NEXT);
        // Egress with an untracked Allow: accepted, not tracked.
        let out = packet(net.host, net.stranger, udp(40012, 5353));
        assert_eq!(run(&dp, Hook::HostEgress, &out), TC_ACT_NEXT);
    }
    let ct = dp.hep_conntrack().unwrap();
    assert_eq!(ct.len(), 2, "only the TCP 8080 flows are tracked: {ct:?}");
}

#[test]
fn untracked_policy_applies_to_forwarded_traffic() {
    let Some(dp) = setup(UNTRACKED) else { return };
    for net in nets() {
        // To a local pod through the host interface: the ordinary host endpoint policy
        // ignores forwarded traffic, the untracked one judges it.
        let denied = packet(net.stranger, net.pod, udp(40020, 9999));
        assert_eq!(run(&dp, Hook::HostIngress, &denied), TC_ACT_SHOT);
        let other = packet(net.stranger, net.pod, udp(40021, 9998));
        assert_eq!(run(&dp, Hook::HostIngress, &other), TC_ACT_NEXT);
    }
}

#[test]
fn without_an_untracked_set_nothing_changes() {
    let Some(dp) = setup(0) else { return };
    for net in nets() {
        let peer80 = packet(net.peer, net.host, tcp(40030, 80, TCP_SYN));
        assert_eq!(run(&dp, Hook::HostIngress, &peer80), TC_ACT_NEXT);
        let udp5353 = packet(net.stranger, net.host, udp(40031, 5353));
        assert_eq!(run(&dp, Hook::HostIngress, &udp5353), TC_ACT_SHOT);
        let fwd = packet(net.stranger, net.pod, udp(40032, 9999));
        assert_eq!(run(&dp, Hook::HostIngress, &fwd), TC_ACT_NEXT);
    }
}
