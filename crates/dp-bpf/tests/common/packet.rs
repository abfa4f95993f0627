//! A small packet builder (Ethernet + IPv4/IPv6 + TCP/UDP/SCTP/ICMP/ICMPv6, correct checksums)
//! and a parser/checksum verifier for what the programs hand back.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;
pub const PROTO_UDPLITE: u8 = 136;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

const PAYLOAD: &[u8] = b"serval-test-payload";

#[derive(Clone, Copy, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    /// `zero_csum`: IPv4 UDP without a checksum.
    Udp {
        sport: u16,
        dport: u16,
        zero_csum: bool,
    },
    /// An SCTP common header (verification tag 0x5e57a1, CRC32c) and one DATA-like chunk.
    Sctp {
        sport: u16,
        dport: u16,
    },
    /// ICMP (IPv4) or ICMPv6 (IPv6) of this type/code; echo types carry id/seq.
    Icmp {
        kind: u8,
        code: u8,
        id: u16,
    },
}

pub fn tcp(sport: u16, dport: u16, flags: u8) -> L4 {
    L4::Tcp {
        sport,
        dport,
        flags,
    }
}

pub fn sctp(sport: u16, dport: u16) -> L4 {
    L4::Sctp { sport, dport }
}

/// CRC32c (Castagnoli), SCTP's checksum (RFC 9260 appendix A), bitwise.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The SCTP checksum of a segment: CRC32c with the checksum field zeroed, little-endian.
fn sctp_csum(seg: &[u8]) -> [u8; 4] {
    let mut zeroed = seg.to_vec();
    zeroed[8..12].fill(0);
    crc32c(&zeroed).to_le_bytes()
}

pub fn udp(sport: u16, dport: u16) -> L4 {
    L4::Udp {
        sport,
        dport,
        zero_csum: false,
    }
}

/// The one's complement fold of a 32-bit sum of 16-bit words.
pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The sum of `data` as big-endian 16-bit words (an odd last byte padded with 0).
pub fn sum16(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

/// Sum of the pseudo header for an L4 segment of `len` bytes.
pub fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            sum16(&s.octets()) + sum16(&d.octets()) + u32::from(proto) + len as u32
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            sum16(&s.octets())
                + sum16(&d.octets())
                + sum16(&(len as u32).to_be_bytes())
                + u32::from(proto)
        }
        _ => panic!("mixed address families"),
    }
}

/// An Ethernet frame from `src` to `dst` carrying `l4`.
pub fn packet(src: IpAddr, dst: IpAddr, l4: L4) -> Vec<u8> {
    let v4 = src.is_ipv4();
    let (proto, mut seg) = match l4 {
        L4::Tcp {
            sport,
            dport,
            flags,
        } => {
            let mut s = Vec::new();
            s.extend(sport.to_be_bytes());
            s.extend(dport.to_be_bytes());
            s.extend(1000u32.to_be_bytes()); // seq
            s.extend(if flags & TCP_ACK != 0 { 2000u32 } else { 0 }.to_be_bytes());
            s.push(5 << 4);
            s.push(flags);
            s.extend(64240u16.to_be_bytes());
            s.extend([0, 0, 0, 0]); // checksum, urgent
            s.extend(PAYLOAD);
            (PROTO_TCP, s)
        }
        L4::Udp { sport, dport, .. } => {
            let mut s = Vec::new();
            s.extend(sport.to_be_bytes());
            s.extend(dport.to_be_bytes());
            s.extend(((8 + PAYLOAD.len()) as u16).to_be_bytes());
            s.extend([0, 0]);
            s.extend(PAYLOAD);
            (PROTO_UDP, s)
        }
        L4::Sctp { sport, dport } => {
            let mut s = Vec::new();
            s.extend(sport.to_be_bytes());
            s.extend(dport.to_be_bytes());
            s.extend(0x005e_57a1u32.to_be_bytes()); // verification tag
            s.extend([0, 0, 0, 0]); // checksum
            // chunk: type 0 (DATA), flags, length, then the payload (padded to 4 bytes)
            s.extend([0, 3]);
            s.extend(((4 + PAYLOAD.len()) as u16).to_be_bytes());
            s.extend(PAYLOAD);
            s.resize(s.len().next_multiple_of(4), 0);
            let c = sctp_csum(&s);
            s[8..12].copy_from_slice(&c);
            (PROTO_SCTP, s)
        }
        L4::Icmp { kind, code, id } => {
            let mut s = vec![kind, code, 0, 0];
            s.extend(id.to_be_bytes());
            s.extend(1u16.to_be_bytes());
            s.extend(PAYLOAD);
            (if v4 { PROTO_ICMP } else { PROTO_ICMPV6 }, s)
        }
    };
    let csum_off = match (proto, l4) {
        (PROTO_TCP, _) => Some(16),
        (
            PROTO_UDP,
            L4::Udp {
                zero_csum: true, ..
            },
        ) => None,
        (PROTO_UDP, _) => Some(6),
        (PROTO_SCTP, _) => None, // CRC32c, set above
        _ => Some(2),
    };
    if let Some(off) = csum_off {
        let base = if proto == PROTO_ICMP {
            0
        } else {
            pseudo(src, dst, proto, seg.len())
        };
        let mut c = !fold(base + sum16(&seg));
        if c == 0 && proto == PROTO_UDP {
            c = 0xffff;
        }
        seg[off..off + 2].copy_from_slice(&c.to_be_bytes());
    }

    frame(src, dst, proto, &seg)
}

/// An Ethernet frame from `src` to `dst` carrying the transport segment `seg` (protocol
/// `proto`) as it is; the IPv4 header checksum is set.
pub fn frame(src: IpAddr, dst: IpAddr, proto: u8, seg: &[u8]) -> Vec<u8> {
    let mut pkt = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pkt.extend(0x0800u16.to_be_bytes());
            let mut ip = vec![0x45, 0];
            ip.extend(((20 + seg.len()) as u16).to_be_bytes());
            ip.extend([0x12, 0x34, 0x40, 0x00, 64, proto, 0, 0]);
            ip.extend(s.octets());
            ip.extend(d.octets());
            let c = !fold(sum16(&ip));
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            pkt.extend(ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pkt.extend(0x86ddu16.to_be_bytes());
            pkt.extend([0x60, 0, 0, 0]);
            pkt.extend((seg.len() as u16).to_be_bytes());
            pkt.extend([proto, 64]);
            pkt.extend(s.octets());
            pkt.extend(d.octets());
        }
        _ => panic!("mixed address families"),
    }
    pkt.extend(seg);
    pkt
}

/// The interesting fields of a frame, and whether its checksums verify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub l3_csum_ok: bool,
    pub l4_csum_ok: bool,
}

pub fn parse(pkt: &[u8]) -> Parsed {
    let ethertype = u16::from_be_bytes([pkt[12], pkt[13]]);
    let ip = &pkt[14..];
    let (src, dst, proto, seg, l3_csum_ok) = match ethertype {
        0x0800 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let src = IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]));
            let dst = IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
            (
                src,
                dst,
                ip[9],
                &ip[ihl..total],
                fold(sum16(&ip[..ihl])) == 0xffff,
            )
        }
        0x86dd => {
            let len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            let s: [u8; 16] = ip[8..24].try_into().unwrap();
            let d: [u8; 16] = ip[24..40].try_into().unwrap();
            let src = IpAddr::V6(Ipv6Addr::from(s));
            let dst = IpAddr::V6(Ipv6Addr::from(d));
            (src, dst, ip[6], &ip[40..40 + len], true)
        }
        other => panic!("not IP: ethertype {other:#06x}"),
    };
    let (sport, dport) = match proto {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => (
            u16::from_be_bytes([seg[0], seg[1]]),
            u16::from_be_bytes([seg[2], seg[3]]),
        ),
        _ => (0, 0),
    };
    let l4_csum_ok = match proto {
        PROTO_UDP if src.is_ipv4() && seg[6] == 0 && seg[7] == 0 => true, // no checksum
        PROTO_ICMP => fold(sum16(seg)) == 0xffff,
        PROTO_SCTP => seg[8..12] == sctp_csum(seg),
        _ => fold(pseudo(src, dst, proto, seg.len()) + sum16(seg)) == 0xffff,
    };
    Parsed {
        src,
        dst,
        proto,
        sport,
        dport,
        l3_csum_ok,
        l4_csum_ok,
    }
}

/// The UDP checksum field of a frame (0 = none).
pub fn udp_csum(pkt: &[u8]) -> u16 {
    let ip = &pkt[14..];
    let off = if pkt[12] == 0x08 {
        usize::from(ip[0] & 0x0f) * 4
    } else {
        40
    };
    u16::from_be_bytes([ip[off + 6], ip[off + 7]])
}

#[test]
fn crc32c_matches_the_standard_check_value() {
    assert_eq!(crc32c(b"123456789"), 0xe306_9283);
}

#[test]
fn builder_makes_valid_checksums_and_verifier_catches_corruption() {
    let a: IpAddr = "10.0.0.2".parse().unwrap();
    let b: IpAddr = "10.0.0.3".parse().unwrap();
    let a6: IpAddr = "fd00::2".parse().unwrap();
    let b6: IpAddr = "fd00::3".parse().unwrap();
    for (s, d) in [(a, b), (a6, b6)] {
        for l4 in [
            tcp(1234, 80, TCP_SYN),
            udp(5353, 53),
            sctp(5000, 80),
            L4::Icmp {
                kind: if s.is_ipv4() { 8 } else { 128 },
                code: 0,
                id: 77,
            },
        ] {
            let mut p = packet(s, d, l4);
            let parsed = parse(&p);
            assert!(parsed.l3_csum_ok && parsed.l4_csum_ok, "{l4:?} {parsed:?}");
            assert_eq!((parsed.src, parsed.dst), (s, d));
            let last = p.len() - 1;
            p[last] ^= 0x40;
            assert!(!parse(&p).l4_csum_ok, "corruption not detected for {l4:?}");
        }
    }
}
