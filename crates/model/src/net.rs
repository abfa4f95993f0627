//! IP and CIDR helpers shared by the model, calc, ipam and the dataplanes.
//!
//! Conventions: a bare address given where a network is expected means the host network
//! (`/32` or `/128`), as Calico's `ParseCIDROrIP` reads it; networks are normalised to their
//! network address ([`IpNet::trunc`]) wherever the model stores them as a range (pools, policy
//! nets, ipBlock), as Calico normalises an IPPool's `cidr` before storing it.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

pub use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The IP family of an address, network or resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of_addr(addr: &IpAddr) -> IpFamily {
        match addr {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    pub fn of_net(net: &IpNet) -> IpFamily {
        match net {
            IpNet::V4(_) => IpFamily::V4,
            IpNet::V6(_) => IpFamily::V6,
        }
    }

    /// Longest prefix length of this family (32 or 128).
    pub fn max_prefix_len(self) -> u8 {
        match self {
            IpFamily::V4 => 32,
            IpFamily::V6 => 128,
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
    }
}

/// An address or network that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error(
        "{input:?} is not an IP address or CIDR (expected e.g. 10.0.0.0/16, fd00::/64 or 10.0.0.1)"
    )]
    BadCidr { input: String },
    #[error("{input:?} is not an IP address (expected e.g. 10.0.0.1 or fd00::1)")]
    BadIp { input: String },
}

/// Parses `10.0.0.0/16`, `fd00::/64`, or a bare address (as `/32` / `/128`). Host bits are
/// kept as written; call [`IpNet::trunc`] (or [`parse_network`]) to normalise.
pub fn parse_ip_or_cidr(s: &str) -> Result<IpNet, NetError> {
    let t = s.trim();
    if t.contains('/') {
        IpNet::from_str(t).map_err(|_| NetError::BadCidr {
            input: s.to_string(),
        })
    } else {
        IpAddr::from_str(t)
            .map(IpNet::from)
            .map_err(|_| NetError::BadCidr {
                input: s.to_string(),
            })
    }
}

/// Like [`parse_ip_or_cidr`], normalised to the network address (`10.0.0.5/16` → `10.0.0.0/16`).
pub fn parse_network(s: &str) -> Result<IpNet, NetError> {
    parse_ip_or_cidr(s).map(|n| n.trunc())
}

/// Parses a bare IP address.
pub fn parse_ip(s: &str) -> Result<IpAddr, NetError> {
    IpAddr::from_str(s.trim()).map_err(|_| NetError::BadIp {
        input: s.to_string(),
    })
}

/// Whether the two networks share at least one address.
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    if IpFamily::of_net(a) != IpFamily::of_net(b) {
        return false;
    }
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Whether `inner` lies entirely within `outer` (equal counts).
pub fn contains_net(outer: &IpNet, inner: &IpNet) -> bool {
    outer.contains(inner)
}

/// Whether host bits are set beyond the prefix (`10.0.0.5/16`).
pub fn has_host_bits(net: &IpNet) -> bool {
    net.addr() != net.network()
}

/// Serde adapter for one network field: accepts a CIDR or a bare IP, stores it normalised.
pub mod serde_network {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::IpNet;

    pub fn serialize<S: Serializer>(net: &IpNet, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(net)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<IpNet, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_network(&s).map_err(serde::de::Error::custom)
    }
}

/// Serde adapter for an optional network field.
pub mod serde_network_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::IpNet;

    pub fn serialize<S: Serializer>(net: &Option<IpNet>, s: S) -> Result<S::Ok, S::Error> {
        match net {
            Some(n) => s.collect_str(n),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpNet>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => super::parse_network(&s)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Serde adapter for a list of networks (CIDRs or bare IPs), stored normalised.
pub mod serde_network_list {
    use serde::de::{SeqAccess, Visitor};
    use serde::ser::SerializeSeq;
    use serde::{Deserializer, Serializer};

    use super::IpNet;

    pub fn serialize<S: Serializer>(nets: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(nets.len()))?;
        for n in nets {
            seq.serialize_element(&n.to_string())?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<IpNet>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of CIDRs")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<IpNet>, A::Error> {
                let mut out = Vec::new();
                // Each element goes through `Cidr` so serde_path_to_error can name its index.
                while let Some(c) = seq.next_element::<Cidr>()? {
                    out.push(c.0);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V)
    }

    struct Cidr(IpNet);
    impl<'de> serde::Deserialize<'de> for Cidr {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            super::serde_network::deserialize(d).map(Cidr)
        }
    }
}

/// Serde adapter for an address with a prefix kept exactly as written (host bits matter),
/// e.g. a Calico Node's `bgp.ipv4Address: 192.168.1.10/24`.
pub mod serde_interface_addr_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::IpNet;

    pub fn serialize<S: Serializer>(net: &Option<IpNet>, s: S) -> Result<S::Ok, S::Error> {
        match net {
            Some(n) => s.collect_str(n),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpNet>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => super::parse_ip_or_cidr(&s)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn bare_ip_is_host_network() {
        assert_eq!(
            parse_ip_or_cidr("10.1.2.3").unwrap().to_string(),
            "10.1.2.3/32"
        );
        assert_eq!(
            parse_ip_or_cidr("fd00::1").unwrap().to_string(),
            "fd00::1/128"
        );
        assert_eq!(
            parse_network("10.1.2.3/16").unwrap().to_string(),
            "10.1.0.0/16"
        );
        assert!(has_host_bits(&parse_ip_or_cidr("10.1.2.3/16").unwrap()));
        assert!(parse_ip_or_cidr("10.1.2.300/16").is_err());
        assert!(parse_ip_or_cidr("10.1.2.3/33").is_err());
        assert!(parse_ip_or_cidr("").is_err());
        assert!(parse_ip("10.0.0.0/8").is_err());
    }

    #[test]
    fn overlap_cases() {
        let n = |s| parse_network(s).unwrap();
        assert!(overlaps(&n("10.0.0.0/8"), &n("10.1.0.0/16")));
        assert!(overlaps(&n("10.1.0.0/16"), &n("10.0.0.0/8")));
        assert!(overlaps(&n("10.1.0.0/16"), &n("10.1.0.0/16")));
        assert!(!overlaps(&n("10.1.0.0/16"), &n("10.2.0.0/16")));
        assert!(!overlaps(&n("10.0.0.0/8"), &n("fd00::/8")));
        assert!(overlaps(&n("fd00::/64"), &n("fd00::1")));
    }

    proptest! {
        #[test]
        fn v4_cidr_round_trips(a: u32, len in 0u8..=32) {
            let net = Ipv4Net::new(std::net::Ipv4Addr::from(a), len).unwrap();
            let parsed = parse_ip_or_cidr(&net.to_string()).unwrap();
            prop_assert_eq!(parsed, IpNet::V4(net));
            let norm = parse_network(&net.to_string()).unwrap();
            prop_assert!(!has_host_bits(&norm));
            prop_assert!(norm.contains(&IpAddr::V4(net.addr())));
        }

        #[test]
        fn v6_cidr_round_trips(a: u128, len in 0u8..=128) {
            let net = Ipv6Net::new(std::net::Ipv6Addr::from(a), len).unwrap();
            prop_assert_eq!(parse_ip_or_cidr(&net.to_string()).unwrap(), IpNet::V6(net));
        }

        #[test]
        fn overlap_is_symmetric_and_matches_containment(a: u32, la in 0u8..=32, b: u32, lb in 0u8..=32) {
            let x = IpNet::V4(Ipv4Net::new(a.into(), la).unwrap().trunc());
            let y = IpNet::V4(Ipv4Net::new(b.into(), lb).unwrap().trunc());
            prop_assert_eq!(overlaps(&x, &y), overlaps(&y, &x));
            // Naive: the address intervals intersect.
            let (IpNet::V4(x4), IpNet::V4(y4)) = (x, y) else { unreachable!() };
            let (xs, xe) = (u32::from(x4.network()), u32::from(x4.broadcast()));
            let (ys, ye) = (u32::from(y4.network()), u32::from(y4.broadcast()));
            let naive = xs <= ye && ys <= xe;
            prop_assert_eq!(overlaps(&x, &y), naive);
            if la == lb { prop_assert_eq!(overlaps(&x, &y), x == y); }
        }

        #[test]
        fn garbage_never_panics(s in "\\PC{0,40}") {
            let _ = parse_ip_or_cidr(&s);
        }
    }
}
