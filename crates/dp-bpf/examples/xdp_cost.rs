//! Cost of the XDP program per packet (BPF_PROG_TEST_RUN, the kernel's own timing averaged
//! over many runs) with 4 and with 60,002 blocklist entries (the map holds 65,536), for a blocked source, a failsafe
//! port and a passing packet, IPv4 and IPv6: the per-packet work is a fixed number of LPM
//! lookups, whatever the blocklist holds. Root. `cargo run -p serval-dp-bpf --example xdp_cost`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serval_dp_bpf::{
    LoadOptions, XdpDataplane,
    abi::{XdpBlVal, xdp_bl_key, xdp_fs_key},
};

/// Ethernet + IP + TCP SYN from `src` to `dst`:`dport` (checksums left zero: XDP does not
/// check them).
fn packet(src: IpAddr, dst: IpAddr, dport: u16) -> Vec<u8> {
    let mut p = vec![0u8; 12];
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend([0x08, 0x00, 0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0]);
            p.extend(s.octets());
            p.extend(d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend([0x86, 0xdd, 0x60, 0, 0, 0, 0, 20, 6, 64]);
            p.extend(s.octets());
            p.extend(d.octets());
        }
        _ => panic!("mixed families"),
    }
    p.extend(tcp);
    p
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const REPEAT: u32 = 2_000_000;
    for entries in [1u32, 30_000] {
        let mut dp = XdpDataplane::load(&LoadOptions::default())?;
        dp.set_failsafe(&xdp_fs_key(6, 22, None))?;
        let val = XdpBlVal { rule_id: 1, pad: 0 };
        for i in 0..entries {
            // distinct /32s in 11.0.0.0/8 and /128s, plus the blocked test prefixes
            let v4 = Ipv4Addr::from(0x0b00_0000 + i);
            dp.set_block(&xdp_bl_key(0, 0, 0, IpAddr::V4(v4), 32), &val)?;
            let v6 = Ipv6Addr::from(0xfd00_0011_u128 << 96 | u128::from(i));
            dp.set_block(&xdp_bl_key(0, 6, 80, IpAddr::V6(v6), 128), &val)?;
        }
        dp.set_block(&xdp_bl_key(0, 0, 0, "10.9.0.0".parse()?, 16), &val)?;
        dp.set_block(&xdp_bl_key(0, 0, 0, "fd00:9::".parse()?, 64), &val)?;
        for (what, src, dst, port) in [
            ("IPv4 blocked", "10.9.0.7", "172.18.0.2", 80),
            ("IPv4 failsafe", "10.9.0.7", "172.18.0.2", 22),
            ("IPv4 passing", "10.8.0.7", "172.18.0.2", 80),
            ("IPv6 blocked", "fd00:9::7", "fd00:18::2", 80),
            ("IPv6 passing", "fd00:8::7", "fd00:18::2", 80),
        ] {
            let pkt = packet(src.parse()?, dst.parse()?, port);
            let (verdict, per_run) = dp.test_run_timed(&pkt, REPEAT)?;
            let verdict = match verdict {
                1 => "XDP_DROP",
                2 => "XDP_PASS",
                _ => "other",
            };
            println!(
                "entries={:>6} {what:<14} {verdict:<9} {:>4} ns/packet",
                2 * entries + 2,
                per_run.as_nanos()
            );
        }
    }
    Ok(())
}
