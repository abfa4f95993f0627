//! Identity classes over a prefix trie, and an emulation of the kernel's LPM trie lookup.
//!
//! Every member prefix of every remote-side set is a node of the trie. The class of a prefix
//! P is the set of [`SetKey`]s having a member that is P or an ancestor of P: an LPM lookup
//! of an address returns its most specific prefix P, and exactly the sets in P's class
//! contain the address (a set whose member is a descendant of P does not contain the
//! addresses that stop at P). A prefix whose class equals its nearest ancestor's adds
//! nothing to a lookup and is left out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

use super::SetKey;

/// `(v4, sets)`: the family is part of a class (rules may depend on the family).
pub type ClassKey = (bool, BTreeSet<SetKey>);

fn sort_key(n: &IpNet) -> (bool, u128, u8) {
    match n {
        IpNet::V4(n) => (false, u128::from(u32::from(n.network())), n.prefix_len()),
        IpNet::V6(n) => (true, u128::from(n.network()), n.prefix_len()),
    }
}

/// The identity prefixes of a list of `(member prefix, set)`: each returned prefix with its
/// class; `0.0.0.0/0` and `::/0` always come first, redundant prefixes are left out.
pub fn classes(members: impl IntoIterator<Item = (IpNet, SetKey)>) -> Vec<(IpNet, ClassKey)> {
    let mut by_net: BTreeMap<(bool, u128, u8), (IpNet, BTreeSet<SetKey>)> = BTreeMap::new();
    let roots: [IpNet; 2] = [
        IpNet::V4(ipnet::Ipv4Net::default()),
        IpNet::V6(ipnet::Ipv6Net::default()),
    ];
    for r in roots {
        by_net.insert(sort_key(&r), (r, BTreeSet::new()));
    }
    for (net, set) in members {
        let net = net.trunc();
        by_net
            .entry(sort_key(&net))
            .or_insert_with(|| (net, BTreeSet::new()))
            .1
            .insert(set);
    }
    // Sorted by (family, network, length): every ancestor comes before its descendants, so
    // a stack of the open prefixes gives each prefix its nearest emitted ancestor.
    let mut out = Vec::new();
    let mut stack: Vec<(IpNet, ClassKey)> = Vec::new();
    for (_, (net, own)) in by_net {
        while stack.last().is_some_and(|(top, _)| !top.contains(&net)) {
            stack.pop();
        }
        let v4 = matches!(net, IpNet::V4(_));
        let class: ClassKey = match stack.last() {
            Some((_, (_, parent))) => (v4, parent.union(&own).cloned().collect()),
            None => (v4, own),
        };
        let redundant = net.prefix_len() > 0 && stack.last().is_some_and(|(_, c)| *c == class);
        if !redundant {
            out.push((net, class.clone()));
            stack.push((net, class));
        }
    }
    out
}

/// The 16-byte route-map address (IPv4-mapped for IPv4) and prefix length of a network, as
/// `sv_route_key` holds them.
pub fn route_key(net: &IpNet) -> (u32, [u8; 16]) {
    match net {
        IpNet::V4(n) => (
            96 + u32::from(n.prefix_len()),
            n.network().to_ipv6_mapped().octets(),
        ),
        IpNet::V6(n) => (u32::from(n.prefix_len()), n.network().octets()),
    }
}

/// The 16-byte route-map address of an address.
pub fn addr_bytes(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// The address of 16 route-map bytes (IPv4-mapped → IPv4).
pub fn bytes_addr(b: [u8; 16]) -> IpAddr {
    let a = Ipv6Addr::from(b);
    match a.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(a),
    }
}

fn masked<const N: usize>(data: &[u8; N], prefix_len: u32) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, b) in data.iter().enumerate() {
        let bit = (i as u32) * 8;
        if bit + 8 <= prefix_len {
            out[i] = *b;
        } else if bit < prefix_len {
            out[i] = *b & (0xffu8 << (8 - (prefix_len - bit)));
        }
    }
    out
}

/// A longest-prefix-match map over `N` bytes of data, as `BPF_MAP_TYPE_LPM_TRIE` behaves:
/// a lookup returns the value of the entry with the longest prefix that matches.
#[derive(Debug, Clone)]
pub struct Lpm<const N: usize, V> {
    entries: BTreeMap<(u32, [u8; N]), V>,
    lens: BTreeSet<u32>,
}

impl<const N: usize, V> Default for Lpm<N, V> {
    fn default() -> Self {
        Lpm {
            entries: BTreeMap::new(),
            lens: BTreeSet::new(),
        }
    }
}

impl<const N: usize, V> Lpm<N, V> {
    /// Inserts (or replaces) an entry; the data beyond `prefix_len` is ignored, as the kernel
    /// ignores it.
    pub fn insert(&mut self, prefix_len: u32, data: [u8; N], v: V) {
        let prefix_len = prefix_len.min(N as u32 * 8);
        self.lens.insert(prefix_len);
        self.entries
            .insert((prefix_len, masked(&data, prefix_len)), v);
    }

    pub fn lookup(&self, data: &[u8; N]) -> Option<&V> {
        self.lens
            .iter()
            .rev()
            .find_map(|&len| self.entries.get(&(len, masked(data, len))))
    }

    /// The entry with exactly this prefix (the data beyond it ignored).
    pub fn get_exact(&self, prefix_len: u32, data: &[u8; N]) -> Option<&V> {
        self.entries.get(&(prefix_len, masked(data, prefix_len)))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipsets::IpSetId;

    fn set(s: &str) -> SetKey {
        SetKey::Set(IpSetId(s.to_string()))
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    /// The class an LPM lookup of `addr` yields.
    fn class_of(cls: &[(IpNet, ClassKey)], addr: &str) -> BTreeSet<SetKey> {
        let a: IpAddr = addr.parse().unwrap();
        cls.iter()
            .filter(|(n, _)| n.contains(&a))
            .max_by_key(|(n, _)| n.prefix_len())
            .map(|(_, c)| c.1.clone())
            .unwrap()
    }

    #[test]
    fn overlapping_cidrs_except_and_host_inside_a_cidr() {
        // A = 10.0.0.0/8; B = 10.1.0.0/16 (an `except` of A, say); C = the pod 10.1.2.3;
        // D = 10.0.0.0/8 again (same prefix, another set); E = a v6 pod.
        let cls = classes([
            (net("10.0.0.0/8"), set("A")),
            (net("10.1.0.0/16"), set("B")),
            (net("10.1.2.3/32"), set("C")),
            (net("10.0.0.0/8"), set("D")),
            (net("10.1.0.0/17"), set("A")), // redundant: A already covers it
            (net("fd00::1/128"), set("E")),
        ]);
        let s = |v: &[&str]| v.iter().map(|x| set(x)).collect::<BTreeSet<_>>();
        assert_eq!(class_of(&cls, "10.1.2.3"), s(&["A", "B", "C", "D"]));
        assert_eq!(class_of(&cls, "10.1.2.4"), s(&["A", "B", "D"]));
        assert_eq!(class_of(&cls, "10.2.0.1"), s(&["A", "D"]));
        assert_eq!(class_of(&cls, "11.0.0.1"), s(&[]));
        assert_eq!(class_of(&cls, "fd00::1"), s(&["E"]));
        assert_eq!(class_of(&cls, "fd00::2"), s(&[]));
        assert!(!cls.iter().any(|(n, _)| *n == net("10.1.0.0/17")));
        // Families stay apart even with equal sets.
        let v4_world = cls.iter().find(|(n, _)| *n == net("0.0.0.0/0")).unwrap();
        let v6_world = cls.iter().find(|(n, _)| *n == net("::/0")).unwrap();
        assert_ne!(v4_world.1, v6_world.1);
    }

    #[test]
    fn lpm_prefers_the_longest_prefix() {
        let mut m: Lpm<16, u32> = Lpm::default();
        for (n, v) in [
            ("0.0.0.0/0", 1),
            ("10.0.0.0/8", 2),
            ("10.1.0.0/16", 3),
            ("::/0", 9),
        ] {
            let (len, data) = route_key(&net(n));
            m.insert(len, data, v);
        }
        let get = |a: &str| *m.lookup(&addr_bytes(a.parse().unwrap())).unwrap();
        assert_eq!(get("10.1.0.1"), 3);
        assert_eq!(get("10.2.0.1"), 2);
        assert_eq!(get("192.168.0.1"), 1);
        assert_eq!(get("fd00::1"), 9);
        assert_eq!(
            bytes_addr(addr_bytes("10.0.0.1".parse().unwrap())).to_string(),
            "10.0.0.1"
        );
    }
}
