//! The XDP program of host interfaces (`bpf/serval_xdp.c`) on crafted packets with
//! BPF_PROG_TEST_RUN: blocklist drops (counted), failsafe ports before the blocklist, per
//! protocol / port entries, per-interface vs global entries, malformed headers, IPv4 and
//! IPv6. Each test loads its own private (unpinned) maps, so tests run in parallel. Root.

#[expect(
    dead_code,
    reason = "the shared packet helpers include ones (FIN/RST, udp_csum, parse) this test does not use"
)]
mod common;

use std::net::IpAddr;

use common::packet::{L4, PROTO_TCP, PROTO_UDP, packet, tcp, udp};
use serval_dp_bpf::{
    LoadOptions, TEST_RUN_IFINDEX, XdpDataplane,
    abi::{
        SV_XDP_DROP_BLOCKLIST, SV_XDP_DROP_MALFORMED, SV_XDP_PASS_FAILSAFE, XdpBlVal, xdp_bl_key,
        xdp_fs_key,
    },
    xdp::{XDP_DROP, XDP_PASS},
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn load() -> XdpDataplane {
    XdpDataplane::load(&LoadOptions::default()).expect("load the XDP program (root?)")
}

fn block(dp: &mut XdpDataplane, ifindex: u32, proto: u8, port: u16, net: &str, len: u8) {
    dp.set_block(
        &xdp_bl_key(ifindex, proto, port, ip(net), len),
        &XdpBlVal { rule_id: 7, pad: 0 },
    )
    .expect("write blocklist");
}

fn run(dp: &mut XdpDataplane, src: &str, dst: &str, l4: L4) -> u32 {
    dp.test_run(&packet(ip(src), ip(dst), l4))
        .expect("test run")
}

/// One family's addresses: a blocked /24 (or /64), a source in it, one outside, the host.
struct Fam {
    net: &'static str,
    len: u8,
    blocked: &'static str,
    other: &'static str,
    host: &'static str,
}

const V4: Fam = Fam {
    net: "10.9.9.0",
    len: 24,
    blocked: "10.9.9.77",
    other: "10.9.8.77",
    host: "172.18.0.2",
};
const V6: Fam = Fam {
    net: "fd00:9::",
    len: 64,
    blocked: "fd00:9::77",
    other: "fd00:8::77",
    host: "fd00:18::2",
};

fn blocked_source_is_dropped_failsafe_passes_others_pass(f: &Fam) {
    let mut dp = load();
    block(&mut dp, 0, 0, 0, f.net, f.len);
    dp.set_failsafe(&xdp_fs_key(PROTO_TCP, 22, None))
        .expect("failsafe");

    let before = dp.stats().unwrap();
    assert_eq!(
        run(&mut dp, f.blocked, f.host, tcp(40000, 80, 0x02)),
        XDP_DROP,
        "blocked source"
    );
    assert_eq!(
        run(&mut dp, f.blocked, f.host, udp(40000, 53)),
        XDP_DROP,
        "any protocol"
    );
    let after = dp.stats().unwrap();
    assert_eq!(
        after.get(SV_XDP_DROP_BLOCKLIST),
        before.get(SV_XDP_DROP_BLOCKLIST) + 2
    );

    // Failsafe port from the blocked source: passes, counted as failsafe.
    assert_eq!(
        run(&mut dp, f.blocked, f.host, tcp(40000, 22, 0x02)),
        XDP_PASS,
        "failsafe tcp/22"
    );
    // UDP/22 is not failsafe.
    assert_eq!(run(&mut dp, f.blocked, f.host, udp(40000, 22)), XDP_DROP);
    let s = dp.stats().unwrap();
    assert_eq!(s.get(SV_XDP_PASS_FAILSAFE), 1);
    assert_eq!(s.get(SV_XDP_DROP_BLOCKLIST), 3);

    // Another source is untouched.
    assert_eq!(
        run(&mut dp, f.other, f.host, tcp(40000, 80, 0x02)),
        XDP_PASS
    );
    assert_eq!(dp.stats().unwrap().get(SV_XDP_DROP_BLOCKLIST), 3);

    // Removing the entry lets the source through.
    assert!(
        dp.remove_block(&xdp_bl_key(0, 0, 0, ip(f.net), f.len))
            .unwrap()
    );
    assert_eq!(
        run(&mut dp, f.blocked, f.host, tcp(40000, 80, 0x02)),
        XDP_PASS
    );
}

#[test]
fn ipv4_blocklist_failsafe_and_counters() {
    blocked_source_is_dropped_failsafe_passes_others_pass(&V4);
}

#[test]
fn ipv6_blocklist_failsafe_and_counters() {
    blocked_source_is_dropped_failsafe_passes_others_pass(&V6);
}

#[test]
fn protocol_and_port_entries_match_only_their_traffic() {
    for f in [&V4, &V6] {
        let mut dp = load();
        block(&mut dp, 0, PROTO_TCP, 80, f.net, f.len);
        block(
            &mut dp,
            0,
            PROTO_UDP,
            0,
            f.blocked,
            if f.len == 24 { 32 } else { 128 },
        );
        assert_eq!(run(&mut dp, f.blocked, f.host, tcp(1, 80, 0x02)), XDP_DROP);
        assert_eq!(run(&mut dp, f.blocked, f.host, tcp(1, 81, 0x02)), XDP_PASS);
        // UDP from the single blocked address, any port; not from the rest of the prefix.
        assert_eq!(run(&mut dp, f.blocked, f.host, udp(1, 5353)), XDP_DROP);
        let neighbour = if f.len == 24 {
            "10.9.9.78"
        } else {
            "fd00:9::78"
        };
        assert_eq!(run(&mut dp, neighbour, f.host, udp(1, 5353)), XDP_PASS);
        assert_eq!(run(&mut dp, neighbour, f.host, tcp(1, 80, 0x02)), XDP_DROP);
    }
}

#[test]
fn entries_of_another_interface_do_not_apply() {
    let mut dp = load();
    // Keyed to an interface that is not the test run's (loopback, ifindex 1).
    block(&mut dp, TEST_RUN_IFINDEX + 1000, 0, 0, V4.net, V4.len);
    assert_eq!(
        run(&mut dp, V4.blocked, V4.host, tcp(1, 80, 0x02)),
        XDP_PASS
    );
    block(&mut dp, TEST_RUN_IFINDEX, 0, 0, V4.net, V4.len);
    assert_eq!(
        run(&mut dp, V4.blocked, V4.host, tcp(1, 80, 0x02)),
        XDP_DROP
    );
}

#[test]
fn failsafe_with_a_net_covers_only_that_net() {
    let mut dp = load();
    block(&mut dp, 0, 0, 0, "10.0.0.0", 8);
    dp.set_failsafe(&xdp_fs_key(PROTO_TCP, 22, Some((ip("10.1.0.0"), 16))))
        .unwrap();
    assert_eq!(
        run(&mut dp, "10.1.2.3", V4.host, tcp(1, 22, 0x02)),
        XDP_PASS
    );
    assert_eq!(
        run(&mut dp, "10.2.2.3", V4.host, tcp(1, 22, 0x02)),
        XDP_DROP
    );
}

#[test]
fn malformed_ip_headers_are_dropped_and_counted_non_ip_passes() {
    let mut dp = load();
    let good = packet(ip(V4.other), ip(V4.host), tcp(1, 80, 0x02));
    // IHL 4 (< 5).
    let mut bad = good.clone();
    bad[14] = 0x44;
    assert_eq!(dp.test_run(&bad).unwrap(), XDP_DROP);
    // Truncated IPv4 header.
    assert_eq!(dp.test_run(&good[..14 + 12]).unwrap(), XDP_DROP);
    // Truncated IPv6 header.
    let v6 = packet(ip(V6.other), ip(V6.host), tcp(1, 80, 0x02));
    assert_eq!(dp.test_run(&v6[..14 + 20]).unwrap(), XDP_DROP);
    assert_eq!(dp.stats().unwrap().get(SV_XDP_DROP_MALFORMED), 3);
    // ARP (not IP): passes.
    let mut arp = good[..42].to_vec();
    arp[12] = 0x08;
    arp[13] = 0x06;
    assert_eq!(dp.test_run(&arp).unwrap(), XDP_PASS);
    assert_eq!(dp.test_run(&good).unwrap(), XDP_PASS);
}

#[test]
fn icmpv6_neighbour_discovery_and_mld_from_a_blocked_source_pass() {
    let mut dp = load();
    block(&mut dp, 0, 0, 0, V6.net, V6.len);
    let icmp = |kind| L4::Icmp {
        kind,
        code: 0,
        id: 7,
    };
    // Neighbour discovery (IPv6's ARP) and MLD.
    for kind in [130, 131, 132, 133, 135, 136, 137, 143] {
        assert_eq!(
            run(&mut dp, V6.blocked, V6.host, icmp(kind)),
            XDP_PASS,
            "type {kind}"
        );
    }
    // Echo request: dropped like everything else from the source.
    assert_eq!(run(&mut dp, V6.blocked, V6.host, icmp(128)), XDP_DROP);
}

#[test]
fn non_first_fragments_match_only_any_protocol_entries() {
    let mut dp = load();
    block(&mut dp, 0, PROTO_TCP, 80, V4.net, V4.len);
    let mut frag = packet(ip(V4.blocked), ip(V4.host), tcp(1, 80, 0x02));
    // fragment offset 8 (x 8 bytes): no transport header in this packet
    frag[20] = 0x00;
    frag[21] = 0x08;
    assert_eq!(dp.test_run(&frag).unwrap(), XDP_PASS);
    block(&mut dp, 0, 0, 0, V4.net, V4.len);
    assert_eq!(dp.test_run(&frag).unwrap(), XDP_DROP);
}
