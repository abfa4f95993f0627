//! IP fragments through the real programs (BPF_PROG_TEST_RUN, root): the first fragment of
//! a datagram carries the transport header and records the datagram's ports in `sv_frags`;
//! later fragments take the ports from there and get the same policy, conntrack and NAT
//! decisions; a later fragment whose first fragment was never seen is dropped and counted
//! as `fragment`. NAT of a later fragment rewrites only the IP header, so the reassembled
//! datagram's transport checksum (fixed in the first fragment) still verifies. IPv4 and
//! IPv6 (fragment extension header).

#[expect(
    dead_code,
    reason = "the shared helpers include ones (frames, netns, frontends) this test does not use"
)]
mod common;

use std::net::IpAddr;

use common::fixture::{drops, host_len, ip, load_tc, route, small_sizes, verdict};
use common::packet::{fold, pseudo, sum16};
use serval_dp_bpf::{
    Dataplane, Hook, LogLevel, MapSizes, TC_ACT_OK, TC_ACT_SHOT, TEST_RUN_IFINDEX, abi::*,
};

const EP: u32 = 10;
const SERVER_ID: u32 = 100;
const CLIENT_ID: u32 = 101;
const UDP: u8 = 17;

struct Net {
    client: IpAddr,
    server: IpAddr,
    vip: IpAddr,
}

fn nets() -> [Net; 2] {
    [
        Net {
            client: ip("10.0.0.2"),
            server: ip("10.0.0.3"),
            vip: ip("10.96.0.10"),
        },
        Net {
            client: ip("fd00::2"),
            server: ip("fd00::3"),
            vip: ip("fd00:96::10"),
        },
    ]
}

/// The test-run endpoint is the client; its egress policy allows UDP 53 and 5353 to the
/// server's identity and denies the rest; ingress allows everything. A UDP service VIP:53
/// has the server:5353 as its only backend.
fn setup() -> Option<Dataplane> {
    if !serval_sys::testing::require_root("dp-bpf fragment test") {
        return None;
    }
    let sizes = MapSizes {
        policy: 256,
        ..small_sizes()
    };
    let mut dp = load_tc(sizes, LogLevel::Off);
    let [v4, v6] = nets();
    let mut m = dp.maps();
    m.set_endpoint(TEST_RUN_IFINDEX, &EpVal::new(EP, &[v4.client, v6.client]))
        .unwrap();
    for net in [&v4, &v6] {
        for (addr, id) in [(net.server, SERVER_ID), (net.client, CLIENT_ID)] {
            route(&mut m, addr, host_len(addr), id, SV_RT_F_LOCAL_WORKLOAD);
        }
    }
    let allow = verdict(SV_VERDICT_ALLOW, 1);
    let deny = verdict(SV_VERDICT_DENY, 2);
    let eg = SV_DIR_EGRESS;
    for port in [53, 5353] {
        let k = aya::maps::lpm_trie::Key::new(
            SV_POL_PREFIX_FULL,
            PolMatch::new(EP, SERVER_ID, eg, UDP, port),
        );
        m.set_policy(&k, &allow).unwrap();
    }
    // ICMP / ICMPv6 echo requests (type 8 / 128, any code) to the server.
    for (proto, kind) in [(1u8, 8u16), (58, 128)] {
        let k = aya::maps::lpm_trie::Key::new(
            SV_POL_PREFIX_ANY_PORT + 8,
            PolMatch::new(EP, SERVER_ID, eg, proto, kind << 8),
        );
        m.set_policy(&k, &allow).unwrap();
    }
    m.set_policy(&pol_key_any_proto(EP, SERVER_ID, eg), &deny)
        .unwrap();
    m.set_policy(&pol_key_any_proto(EP, SV_IDENTITY_ANY, eg), &deny)
        .unwrap();
    m.set_policy(
        &pol_key_any_proto(EP, SV_IDENTITY_ANY, SV_DIR_INGRESS),
        &allow,
    )
    .unwrap();
    for (i, net) in [&v4, &v6].into_iter().enumerate() {
        let svc_id = 40 + i as u32;
        m.set_backend(
            &NatBeKey { svc_id, slot: 0 },
            &NatBeVal::new(net.server, 5353, SV_NAT_BE_F_LOCAL),
        )
        .unwrap();
        m.set_frontend(
            &NatFeKey::new(net.vip, 53, UDP),
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
    }
    Some(dp)
}

// ---- datagrams and fragments ------------------------------------------------------------

/// An ICMP / ICMPv6 echo request (`kind`) of `len` payload bytes with identifier `id`
/// (checksum left 0: the programs do not check it).
fn echo_segment(kind: u8, id: u16, len: usize) -> Vec<u8> {
    let mut s = vec![kind, 0, 0, 0];
    s.extend(id.to_be_bytes());
    s.extend(1u16.to_be_bytes());
    s.extend((0..len).map(|i| i as u8));
    s
}

/// A UDP datagram (header + `len` payload bytes) with a valid checksum.
fn udp_segment(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, len: usize) -> Vec<u8> {
    let mut s = Vec::with_capacity(8 + len);
    s.extend(sport.to_be_bytes());
    s.extend(dport.to_be_bytes());
    s.extend(((8 + len) as u16).to_be_bytes());
    s.extend([0, 0]);
    s.extend((0..len).map(|i| (i % 251) as u8));
    let c = !fold(pseudo(src, dst, UDP, s.len()) + sum16(&s));
    s[6..8].copy_from_slice(&c.to_be_bytes());
    s
}

/// The segment split into Ethernet frames of IP fragments (payload chunks of at most
/// `chunk` bytes, a multiple of 8) with identification `id`.
fn fragments(src: IpAddr, dst: IpAddr, seg: &[u8], id: u32, chunk: usize) -> Vec<Vec<u8>> {
    fragments_of(src, dst, UDP, seg, id, chunk)
}

/// As [`fragments`] for a segment of transport protocol `proto`.
fn fragments_of(
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    seg: &[u8],
    id: u32,
    chunk: usize,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < seg.len() {
        let end = (off + chunk).min(seg.len());
        let more = end < seg.len();
        let data = &seg[off..end];
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend([0x08, 0x00]);
                let fo = (off / 8) as u16 | if more { 0x2000 } else { 0 };
                let mut h = vec![0x45, 0];
                h.extend(((20 + data.len()) as u16).to_be_bytes());
                h.extend((id as u16).to_be_bytes());
                h.extend(fo.to_be_bytes());
                h.extend([64, proto, 0, 0]);
                h.extend(s.octets());
                h.extend(d.octets());
                let c = !fold(sum16(&h));
                h[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend(h);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend([0x86, 0xdd, 0x60, 0, 0, 0]);
                f.extend(((8 + data.len()) as u16).to_be_bytes());
                f.extend([44, 64]); // next header: fragment
                f.extend(s.octets());
                f.extend(d.octets());
                f.extend([proto, 0]);
                f.extend((off as u16 | u16::from(more)).to_be_bytes());
                f.extend(id.to_be_bytes());
            }
            _ => panic!("mixed families"),
        }
        f.extend(data);
        out.push(f);
        off = end;
    }
    out
}

/// (source, destination, fragment offset, payload, IPv4 header checksum ok) of a fragment.
fn parse_fragment(f: &[u8]) -> (IpAddr, IpAddr, usize, Vec<u8>, bool) {
    let ip = &f[14..];
    if f[12] == 0x08 {
        let s: [u8; 4] = ip[12..16].try_into().unwrap();
        let d: [u8; 4] = ip[16..20].try_into().unwrap();
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        let off = usize::from(u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff) * 8;
        let ok = fold(sum16(&ip[..20])) == 0xffff;
        (s.into(), d.into(), off, ip[20..total].to_vec(), ok)
    } else {
        let s: [u8; 16] = ip[8..24].try_into().unwrap();
        let d: [u8; 16] = ip[24..40].try_into().unwrap();
        let len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
        let off = usize::from(u16::from_be_bytes([ip[42], ip[43]]) & 0xfff8);
        (s.into(), d.into(), off, ip[48..40 + len].to_vec(), true)
    }
}

fn run(dp: &Dataplane, frame: &[u8]) -> (i32, Vec<u8>) {
    let out = dp.test_run(Hook::FromEndpoint, frame).expect("test run");
    (out.verdict, out.packet)
}

/// Chunk sizes giving three fragments for a 3000-byte datagram over a 1500-byte MTU.
fn chunk(v4: bool) -> usize {
    if v4 { 1480 } else { 1448 }
}

#[test]
fn later_fragments_get_the_first_fragments_policy_verdict() {
    let Some(mut dp) = setup() else { return };
    for (n, net) in nets().iter().enumerate() {
        let v4 = net.client.is_ipv4();
        // Allowed: UDP to the server's port 53, 3000 bytes in three fragments.
        let seg = udp_segment(net.client, net.server, 40000, 53, 3000);
        let frags = fragments(net.client, net.server, &seg, 0x1234 + n as u32, chunk(v4));
        assert_eq!(frags.len(), 3);
        for (i, f) in frags.iter().enumerate() {
            let (verdict, _) = run(&dp, f);
            assert_eq!(
                verdict, TC_ACT_OK,
                "{} fragment {i} of an allowed datagram",
                net.client
            );
        }
        // Denied: port 54. Every fragment is dropped by policy, none as an unknown fragment.
        let (pol, frag) = (
            drops(&mut dp, SV_DROP_POLICY),
            drops(&mut dp, SV_DROP_FRAGMENT),
        );
        let seg = udp_segment(net.client, net.server, 40001, 54, 3000);
        for (i, f) in fragments(net.client, net.server, &seg, 0x2234 + n as u32, chunk(v4))
            .iter()
            .enumerate()
        {
            let (verdict, _) = run(&dp, f);
            assert_eq!(
                verdict, TC_ACT_SHOT,
                "{} fragment {i} of a denied datagram",
                net.client
            );
        }
        assert_eq!(drops(&mut dp, SV_DROP_POLICY), pol + 3);
        assert_eq!(drops(&mut dp, SV_DROP_FRAGMENT), frag);
    }
}

#[test]
fn a_later_fragment_without_its_first_is_dropped_and_counted() {
    let Some(mut dp) = setup() else { return };
    for (n, net) in nets().iter().enumerate() {
        let v4 = net.client.is_ipv4();
        let seg = udp_segment(net.client, net.server, 40002, 53, 3000);
        let frags = fragments(net.client, net.server, &seg, 0x3234 + n as u32, chunk(v4));
        let before = drops(&mut dp, SV_DROP_FRAGMENT);
        for f in &frags[1..] {
            let (verdict, _) = run(&dp, f);
            assert_eq!(verdict, TC_ACT_SHOT, "{}: orphan fragment", net.client);
        }
        assert_eq!(drops(&mut dp, SV_DROP_FRAGMENT), before + 2);
        // Once the first fragment has been seen, the same later fragments pass.
        assert_eq!(run(&dp, &frags[0]).0, TC_ACT_OK);
        for f in &frags[1..] {
            assert_eq!(run(&dp, f).0, TC_ACT_OK, "{}: after the first", net.client);
        }
        // An unfragmented datagram is no fragment: it never touches the counter.
        assert_eq!(drops(&mut dp, SV_DROP_FRAGMENT), before + 2);
    }
}

#[test]
fn service_nat_of_later_fragments_rewrites_only_the_ip_header() {
    let Some(dp) = setup() else { return };
    for (n, net) in nets().iter().enumerate() {
        let v4 = net.client.is_ipv4();
        let seg = udp_segment(net.client, net.vip, 40003, 53, 3000);
        let frags = fragments(net.client, net.vip, &seg, 0x4234 + n as u32, chunk(v4));
        let mut reassembled = vec![0u8; seg.len()];
        for (i, f) in frags.iter().enumerate() {
            let (verdict, out) = run(&dp, f);
            assert_eq!(verdict, TC_ACT_OK, "{} fragment {i} to the VIP", net.client);
            assert_eq!(out.len(), f.len(), "fragment {i} keeps its length");
            let (src, dst, off, payload, l3_ok) = parse_fragment(&out);
            assert_eq!((src, dst), (net.client, net.server), "fragment {i} DNATed");
            assert!(l3_ok, "IPv4 header checksum of fragment {i}");
            let (_, _, off_in, payload_in, _) = parse_fragment(f);
            assert_eq!(off, off_in);
            if i > 0 {
                // No transport header here: the payload is untouched.
                assert_eq!(payload, payload_in, "payload of later fragment {i}");
            }
            reassembled[off..off + payload.len()].copy_from_slice(&payload);
        }
        // The reassembled datagram goes to the backend port with a valid checksum.
        assert_eq!(u16::from_be_bytes([reassembled[2], reassembled[3]]), 5353);
        assert_eq!(
            fold(pseudo(net.client, net.server, UDP, reassembled.len()) + sum16(&reassembled)),
            0xffff,
            "UDP checksum of the reassembled datagram"
        );
    }
}

#[test]
fn fragmented_icmp_echo_follows_its_first_fragment() {
    let Some(mut dp) = setup() else { return };
    for (n, net) in nets().iter().enumerate() {
        let v4 = net.client.is_ipv4();
        let (proto, request) = if v4 { (1u8, 8u8) } else { (58, 128) };
        let seg = echo_segment(request, 0x77 + n as u16, 3000);
        let frags = fragments_of(
            net.client,
            net.server,
            proto,
            &seg,
            0x5234 + n as u32,
            chunk(v4),
        );
        assert_eq!(frags.len(), 3);
        for (i, f) in frags.iter().enumerate() {
            assert_eq!(run(&dp, f).0, TC_ACT_OK, "{} echo fragment {i}", net.client);
        }
        // ICMP timestamp / ICMPv6 node information queries are not allowed: the later
        // fragments share the first fragment's fate.
        let before = drops(&mut dp, SV_DROP_POLICY);
        let seg = echo_segment(if v4 { 13 } else { 139 }, 0x99 + n as u16, 3000);
        for f in fragments_of(
            net.client,
            net.server,
            proto,
            &seg,
            0x6234 + n as u32,
            chunk(v4),
        ) {
            assert_eq!(
                run(&dp, &f).0,
                TC_ACT_SHOT,
                "{} denied ICMP fragment",
                net.client
            );
        }
        assert_eq!(drops(&mut dp, SV_DROP_POLICY), before + 3);
    }
}
