//! Faithful renderings of the rules kube-proxy writes for ClusterIP services, in its iptables
//! mode ([`iptables`]) and its nftables mode ([`nftables`]): the baselines `serval bench`
//! measures Serval against, generated here (no kube-proxy binary needed) with kube-proxy's own
//! chain names, hashes, comments and rule shapes.

pub mod iptables;
pub mod nftables;

use std::net::{Ipv4Addr, SocketAddrV4};

use sha2::{Digest, Sha256};

/// The mark kube-proxy uses for "masquerade this" (`--masquerade-bit` 14).
pub const MASQ_MARK: u32 = 0x4000;

/// One ClusterIP service port with its endpoints, as kube-proxy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    /// The port's name (kube-proxy's `ServicePortName.Port`), e.g. `p80`.
    pub port_name: String,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    /// TCP only: the bench measures TCP.
    pub endpoints: Vec<SocketAddrV4>,
}

impl ServicePort {
    /// `ns/name:port` — kube-proxy's `ServicePortName.String()`.
    pub fn port_name_string(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}:{}", self.namespace, self.name, self.port_name)
        }
    }
}

/// The services the bench programs: `count` services `default/svc-<i>` with cluster IPs taken
/// in order from 10.96.0.0/12 (starting at 10.96.1.0, clear of the conventional 10.96.0.1 and
/// 10.96.0.10), port 80, each with the one endpoint `backend`. The target of the latency test
/// is the last one.
pub fn bench_services(count: usize, backend: SocketAddrV4) -> Vec<ServicePort> {
    (0..count).map(|i| bench_service(i, backend)).collect()
}

/// Service number `i` of [`bench_services`].
pub fn bench_service(i: usize, backend: SocketAddrV4) -> ServicePort {
    ServicePort {
        namespace: "default".into(),
        name: format!("svc-{i}"),
        port_name: "p80".into(),
        cluster_ip: service_ip(i),
        port: 80,
        endpoints: vec![backend],
    }
}

/// The cluster IP of service `i`: 10.96.1.0 + i (10.96.0.0/12 holds over a million).
pub fn service_ip(i: usize) -> Ipv4Addr {
    let base = u32::from(Ipv4Addr::new(10, 96, 1, 0));
    let offset = u32::try_from(i).unwrap_or(u32::MAX).min((1 << 20) - 512);
    Ipv4Addr::from(base + offset)
}

/// Base32 (RFC 4648 standard alphabet, as Go's `base32.StdEncoding`) of SHA-256 of `input`.
pub fn sha256_base32(input: &str) -> String {
    base32_std(&Sha256::digest(input.as_bytes()))
}

fn base32_std(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let mut buffer: u64 = 0;
    let mut bits = 0u32;
    for &b in data {
        buffer = (buffer << 8) | u64::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 0x1f) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(
            ALPHABET[((buffer << (5 - bits)) & 0x1f) as usize],
        ));
    }
    while !out.len().is_multiple_of(8) {
        out.push('=');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc4648_vectors() {
        assert_eq!(base32_std(b""), "");
        assert_eq!(base32_std(b"f"), "MY======");
        assert_eq!(base32_std(b"fo"), "MZXQ====");
        assert_eq!(base32_std(b"foo"), "MZXW6===");
        assert_eq!(base32_std(b"foob"), "MZXW6YQ=");
        assert_eq!(base32_std(b"fooba"), "MZXW6YTB");
        assert_eq!(base32_std(b"foobar"), "MZXW6YTBOI======");
    }

    #[test]
    fn service_ips_are_distinct_and_in_the_service_range() {
        let range_start = u32::from(Ipv4Addr::new(10, 96, 0, 0));
        let range_end = range_start + (1 << 20);
        let mut seen = std::collections::HashSet::new();
        for i in [0, 1, 255, 256, 49_999, 50_000] {
            let ip = u32::from(service_ip(i));
            assert!((range_start..range_end).contains(&ip), "{i}");
            assert!(seen.insert(ip));
        }
        assert_eq!(service_ip(0), Ipv4Addr::new(10, 96, 1, 0));
        assert_eq!(service_ip(256), Ipv4Addr::new(10, 96, 2, 0));
    }

    #[test]
    fn port_name_string_is_kube_proxys() {
        let backend = SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, 1), 7777);
        let s = bench_service(3, backend);
        assert_eq!(s.port_name_string(), "default/svc-3:p80");
        let unnamed = ServicePort {
            port_name: String::new(),
            ..s
        };
        assert_eq!(unnamed.port_name_string(), "default/svc-3");
    }
}
