//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016) for services annotated
//! `lb.projectcalico.org/external-traffic-strategy: maglev`, as Calico names it.
//!
//! * **Which frontends.** As Calico documents it ("Add Maglev load balancing to a service"):
//!   the service's externalIP and LoadBalancer ingress IP frontends, i.e. the addresses that
//!   can be advertised to the outside and reached through any node. Not its ClusterIP (pod to
//!   service traffic keeps the random choice), not its NodePorts (a node port is tied to one
//!   node, so nothing is gained), and not under `externalTrafficPolicy: Local` (only the
//!   receiving node's backends may be chosen, which no cluster-wide table can express): those
//!   frontends keep the ordinary random choice. The annotation value is compared without
//!   regard to case, as Calico does.
//! * **The table.** A lookup table of `M` entries (`M` prime), each naming a backend, filled
//!   by the paper's population algorithm from one permutation per backend (offset and skip
//!   from two hashes of the backend's address and port). The backends are taken in a
//!   node-independent order (sorted by address, then port, duplicates dropped), and every
//!   hash is fixed (no per-process seed), so every node computes the same table for the same
//!   backend set: a flow reaching the service through any node goes to the same backend.
//!   Each backend gets ⌊M/N⌋ or ⌈M/N⌉ entries (the population gives every backend one entry
//!   per round), and removing one of N backends moves about 1/N of the entries (those of the
//!   removed backend, plus a small number of others).
//! * **The flow hash.** [`flow_hash`] of the packet's 5-tuple (source address and port,
//!   destination address and port, protocol; nothing node-specific), the same function the
//!   BPF programs compute (`sv_maglev_hash` in `serval_tc.c`); a flow uses entry
//!   `flow_hash % M`.
//! * **Size.** FelixConfiguration `bpfMaglevMaxEndpointsPerService` (Calico's name) bounds
//!   the backends of one table; `M` is the smallest prime ≥ [`ENTRIES_PER_ENDPOINT`] times
//!   that, so every backend gets ≥ 100 entries and the load stays within 1% of even
//!   (`M` = 10007 for the default 100). `bpfMaglevMaxServices` bounds how many frontends
//!   have a table; the dataplane sizes its map from both.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serval_model::k8s::Service;

use crate::services::FrontendKind;

/// The Service annotation selecting the load-balancing strategy of external traffic.
pub const ANNOTATION: &str = "lb.projectcalico.org/external-traffic-strategy";
/// The annotation value selecting Maglev (compared without regard to case).
pub const STRATEGY_MAGLEV: &str = "maglev";

/// Table entries per backend: `M` ≥ this × the most backends a table holds.
pub const ENTRIES_PER_ENDPOINT: u32 = 100;
/// Default of FelixConfiguration `bpfMaglevMaxEndpointsPerService`.
pub const DEFAULT_MAX_ENDPOINTS_PER_SERVICE: u32 = 100;
/// Default of FelixConfiguration `bpfMaglevMaxServices`.
pub const DEFAULT_MAX_SERVICES: u32 = 100;
/// `M` for the default `bpfMaglevMaxEndpointsPerService`: [`table_size`]`(100)`.
pub const DEFAULT_TABLE_SIZE: u32 = 10007;
/// The largest `M` [`table_size`] gives (Calico caps both settings at 3000): 300007.
pub const MAX_TABLE_SIZE: u32 = 300_007;

/// Seed of [`flow_hash`]; the BPF programs use the same (`SV_MAGLEV_SEED`).
pub const FLOW_HASH_SEED: u32 = 0x5e7a_1c0d;

/// Errors building a table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    #[error(
        "maglev table size {size} is not a prime ≥ 2; use maglev::table_size(max endpoints per \
         service)"
    )]
    NotPrime { size: u32 },
    #[error(
        "maglev table of {size} entries cannot hold {backends} backends; raise \
         bpfMaglevMaxEndpointsPerService"
    )]
    TooManyBackends { size: u32, backends: usize },
}

/// Whether `svc` asks for Maglev (its annotation, case-insensitive).
pub fn wants_maglev(svc: &Service) -> bool {
    annotation_wants_maglev(&svc.metadata.annotations)
}

/// [`wants_maglev`] of a Service with these annotations.
pub(crate) fn annotation_wants_maglev(annotations: &BTreeMap<String, String>) -> bool {
    annotations
        .get(ANNOTATION)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(STRATEGY_MAGLEV))
}

/// Whether a frontend of a service that asks for Maglev uses it: externalIP and LoadBalancer
/// frontends without `externalTrafficPolicy: Local` (see the module docs).
pub fn applies(wants: bool, kind: FrontendKind, external_local: bool) -> bool {
    wants
        && matches!(kind, FrontendKind::ExternalIP | FrontendKind::LoadBalancer)
        && !external_local
}

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u32;
    while u64::from(d) * u64::from(d) <= u64::from(n) {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// `M` for tables of at most `max_endpoints` backends: the smallest prime ≥
/// [`ENTRIES_PER_ENDPOINT`] × `max_endpoints` (clamped to 1..=3000, Calico's bounds).
pub fn table_size(max_endpoints: u32) -> u32 {
    let mut n = max_endpoints.clamp(1, 3000) * ENTRIES_PER_ENDPOINT;
    while !is_prime(n) {
        n += 1;
    }
    n
}

/// A backend's bytes as the hashes see them: the address (IPv4 as IPv4-mapped IPv6, the
/// BPF maps' form) and the port, network byte order.
fn backend_bytes(ip: IpAddr, port: u16) -> [u8; 18] {
    let a = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let mut b = [0u8; 18];
    b[..16].copy_from_slice(&a);
    b[16..].copy_from_slice(&port.to_be_bytes());
    b
}

/// FNV-1a 64 of `bytes` from `seed`, then the murmur3 64-bit finalizer (fixed: the same on
/// every node and every build).
fn hash64(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

const OFFSET_SEED: u64 = 0x6d61_676c_6576_3031; // "maglev01"
const SKIP_SEED: u64 = 0x6d61_676c_6576_3032; // "maglev02"

/// A Maglev lookup table: entry `i` names one of [`Table::backends`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    backends: Vec<(IpAddr, u16)>,
    entries: Vec<u32>,
}

impl Table {
    /// The table of `backends` (any order, duplicates ignored) with `size` entries (a prime,
    /// at least the number of distinct backends). No backends: an empty table.
    pub fn build(
        backends: impl IntoIterator<Item = (IpAddr, u16)>,
        size: u32,
    ) -> Result<Table, MaglevError> {
        if !is_prime(size) {
            return Err(MaglevError::NotPrime { size });
        }
        let mut backends: Vec<(IpAddr, u16)> = backends.into_iter().collect();
        // Node-independent order: IPv4 (mapped) and IPv6 alike by their 16 bytes, then port.
        backends.sort_by_key(|&(ip, port)| backend_bytes(ip, port));
        backends.dedup();
        let n = backends.len();
        if n > size as usize {
            return Err(MaglevError::TooManyBackends { size, backends: n });
        }
        if n == 0 {
            return Ok(Table {
                backends,
                entries: Vec::new(),
            });
        }
        let m = u64::from(size);
        let perms: Vec<(u64, u64)> = backends
            .iter()
            .map(|&(ip, port)| {
                let b = backend_bytes(ip, port);
                let offset = hash64(&b, OFFSET_SEED) % m;
                let skip = if m > 1 {
                    hash64(&b, SKIP_SEED) % (m - 1) + 1
                } else {
                    1
                };
                (offset, skip)
            })
            .collect();
        const EMPTY: u32 = u32::MAX;
        let mut entries = vec![EMPTY; size as usize];
        let mut next = vec![0u64; n];
        let mut filled = 0usize;
        // The paper's population: backends take turns claiming their next preferred free
        // entry. skip ∈ 1..M and M prime: each permutation visits every entry.
        'fill: loop {
            for (i, &(offset, skip)) in perms.iter().enumerate() {
                let mut c = ((offset + next[i] * skip) % m) as usize;
                while entries[c] != EMPTY {
                    next[i] += 1;
                    c = ((offset + next[i] * skip) % m) as usize;
                }
                entries[c] = i as u32;
                next[i] += 1;
                filled += 1;
                if filled == size as usize {
                    break 'fill;
                }
            }
        }
        Ok(Table { backends, entries })
    }

    /// `M` (0 for a table without backends).
    pub fn size(&self) -> u32 {
        self.entries.len() as u32
    }

    /// The distinct backends, in the table's (node-independent) order.
    pub fn backends(&self) -> &[(IpAddr, u16)] {
        &self.backends
    }

    /// The backend of entry `index`.
    pub fn entry(&self, index: u32) -> Option<(IpAddr, u16)> {
        let i = *self.entries.get(index as usize)?;
        self.backends.get(i as usize).copied()
    }

    /// Every entry in order: `(index, backend)`.
    pub fn entries(&self) -> impl Iterator<Item = (u32, (IpAddr, u16))> + '_ {
        self.entries
            .iter()
            .enumerate()
            .map(|(i, &b)| (i as u32, self.backends[b as usize]))
    }

    /// The backend of a flow whose [`flow_hash`] is `hash`: entry `hash % M`.
    pub fn lookup(&self, hash: u32) -> Option<(IpAddr, u16)> {
        if self.entries.is_empty() {
            return None;
        }
        self.entry(hash % self.size())
    }
}

fn addr_words(ip: IpAddr) -> [u32; 4] {
    let b = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    std::array::from_fn(|i| {
        u32::from_be_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
    })
}

/// murmur3's 32-bit block mix.
fn mix32(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

/// The flow hash the BPF programs compute for a new flow to a Maglev frontend (murmur3-32 of
/// ten 32-bit words: the source address (IPv4-mapped for IPv4) as four big-endian words, the
/// destination address likewise, `sport << 16 | dport`, and the protocol; seed
/// [`FLOW_HASH_SEED`]). Only the 5-tuple enters it, so every node agrees.
pub fn flow_hash(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, proto: u8) -> u32 {
    let mut h = FLOW_HASH_SEED;
    for w in addr_words(src).into_iter().chain(addr_words(dst)) {
        h = mix32(h, w);
    }
    h = mix32(h, (u32::from(sport) << 16) | u32::from(dport));
    h = mix32(h, u32::from(proto));
    h ^= 40; // length in bytes, as murmur3 finalizes
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;

    fn v4(a: u8, b: u8, port: u16) -> (IpAddr, u16) {
        (IpAddr::V4(Ipv4Addr::new(10, 0, a, b)), port)
    }

    fn counts(t: &Table) -> BTreeMap<(IpAddr, u16), usize> {
        let mut c = BTreeMap::new();
        for (_, b) in t.entries() {
            *c.entry(b).or_default() += 1;
        }
        c
    }

    /// Fraction of entries whose backend differs.
    fn moved(a: &Table, b: &Table) -> f64 {
        let changed = a
            .entries()
            .zip(b.entries())
            .filter(|((_, x), (_, y))| x != y)
            .count();
        changed as f64 / f64::from(a.size())
    }

    #[test]
    fn table_sizes_are_primes_of_a_hundred_entries_per_endpoint() {
        assert_eq!(
            table_size(DEFAULT_MAX_ENDPOINTS_PER_SERVICE),
            DEFAULT_TABLE_SIZE
        );
        assert_eq!(table_size(3000), MAX_TABLE_SIZE);
        assert_eq!(table_size(20), 2003);
        assert_eq!(table_size(0), 101);
        for n in [1u32, 7, 20, 100, 3000, 5000] {
            let m = table_size(n);
            assert!(is_prime(m));
            assert!(m >= n.clamp(1, 3000) * ENTRIES_PER_ENDPOINT);
        }
        assert!(!is_prime(10005) && is_prime(10007) && is_prime(65537) && !is_prime(1));
    }

    #[test]
    fn bad_sizes_are_refused_with_the_fix() {
        let e = Table::build([v4(0, 1, 80)], 10000).unwrap_err();
        assert_eq!(e, MaglevError::NotPrime { size: 10000 });
        let e = Table::build((0..8).map(|i| v4(0, i, 80)), 7).unwrap_err();
        assert!(e.to_string().contains("bpfMaglevMaxEndpointsPerService"));
        let empty = Table::build([], 7).unwrap();
        assert_eq!(empty.size(), 0);
        assert_eq!(empty.lookup(12345), None);
    }

    #[test]
    fn the_order_of_backends_does_not_matter() {
        let mut bs: Vec<_> = (0..17).map(|i| v4(i / 4, i, 8080)).collect();
        bs.push((IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5)), 80));
        let a = Table::build(bs.clone(), 1009).unwrap();
        bs.reverse();
        bs.push(bs[3]); // a duplicate
        let b = Table::build(bs, 1009).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.backends().len(), 18);
    }

    #[test]
    fn a_single_backend_takes_every_entry() {
        let t = Table::build([v4(0, 1, 80)], 101).unwrap();
        assert!(t.entries().all(|(_, b)| b == v4(0, 1, 80)));
    }

    #[test]
    fn the_flow_hash_is_fixed_and_uses_the_whole_tuple() {
        let c = IpAddr::V4(Ipv4Addr::new(192, 168, 50, 7));
        let vip = IpAddr::V4(Ipv4Addr::new(10, 200, 0, 1));
        let h = flow_hash(c, 40000, vip, 80, 6);
        // Pinned: the BPF side computes the same value (crates/dp-bpf/tests/maglev.rs checks
        // the programs against flow_hash); a change here changes every node's choice.
        assert_eq!(h, flow_hash(c, 40000, vip, 80, 6));
        assert_ne!(h, flow_hash(c, 40001, vip, 80, 6));
        assert_ne!(h, flow_hash(c, 40000, vip, 81, 6));
        assert_ne!(h, flow_hash(c, 40000, vip, 80, 17));
        assert_ne!(h, flow_hash(vip, 40000, c, 80, 6));
    }

    #[test]
    fn wants_maglev_reads_the_annotation_case_insensitively() {
        let mut svc = Service::default();
        assert!(!wants_maglev(&svc));
        svc.metadata
            .annotations
            .insert(ANNOTATION.to_string(), "Maglev".to_string());
        assert!(wants_maglev(&svc));
        svc.metadata
            .annotations
            .insert(ANNOTATION.to_string(), "random".to_string());
        assert!(!wants_maglev(&svc));
        assert!(applies(true, FrontendKind::LoadBalancer, false));
        assert!(applies(true, FrontendKind::ExternalIP, false));
        assert!(!applies(true, FrontendKind::ExternalIP, true));
        assert!(!applies(true, FrontendKind::NodePort, false));
        assert!(!applies(true, FrontendKind::ClusterIP, false));
        assert!(!applies(false, FrontendKind::LoadBalancer, false));
    }

    #[test]
    fn only_external_ip_and_load_balancer_frontends_of_annotated_services_use_maglev() {
        let text = r#"
apiVersion: v1
kind: Service
metadata:
  namespace: x
  name: lb
  annotations: {lb.projectcalico.org/external-traffic-strategy: maglev}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  externalIPs: [192.0.2.10]
  selector: {app: web}
  ports: [{port: 80, nodePort: 30080}]
status: {loadBalancer: {ingress: [{ip: 198.51.100.10}]}}
---
apiVersion: v1
kind: Service
metadata:
  namespace: x
  name: local
  annotations: {lb.projectcalico.org/external-traffic-strategy: maglev}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  clusterIP: 10.96.0.11
  externalIPs: [192.0.2.11]
  selector: {app: web}
  ports: [{port: 80, nodePort: 30081}]
---
apiVersion: v1
kind: Service
metadata: {namespace: x, name: plain}
spec:
  clusterIP: 10.96.0.12
  externalIPs: [192.0.2.12]
  selector: {app: web}
  ports: [{port: 80}]
"#;
        let res = serval_model::parse_documents("test", text).unwrap();
        let model = crate::Model::from_resources(res);
        let state =
            crate::services::services(&model, Some("n1"), &["192.168.0.1".parse().unwrap()]);
        let on: Vec<String> = state
            .frontends
            .iter()
            .filter(|(_, f)| f.maglev)
            .map(|(k, _)| k.to_string())
            .collect();
        assert_eq!(on, ["192.0.2.10:80/TCP", "198.51.100.10:80/TCP"]);
        // the same service's ClusterIP and NodePort frontends exist, without Maglev
        assert!(
            state
                .frontends
                .iter()
                .any(|(k, f)| k.port == 30080 && !f.maglev)
        );
        assert!(state.frontends.iter().any(|(k, f)| k.port == 80
            && f.kind == FrontendKind::ClusterIP
            && f.service.1 == "lb"
            && !f.maglev));
    }

    fn backend_set() -> impl Strategy<Value = Vec<(IpAddr, u16)>> {
        prop::collection::btree_set((any::<u32>(), 1u16..), 2..=60).prop_map(|s| {
            s.into_iter()
                .map(|(a, p)| (IpAddr::V4(Ipv4Addr::from(a)), p))
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Balanced: the population gives every backend one entry per round, so counts
        /// differ by at most one (⌊M/N⌋ or ⌈M/N⌉).
        #[test]
        fn every_backend_gets_m_over_n_entries(bs in backend_set()) {
            let t = Table::build(bs.clone(), DEFAULT_TABLE_SIZE).unwrap();
            let c = counts(&t);
            prop_assert_eq!(c.len(), bs.len());
            let lo = DEFAULT_TABLE_SIZE as usize / bs.len();
            for (_, n) in c {
                prop_assert!(n == lo || n == lo + 1, "{} entries, want {} or {}", n, lo, lo + 1);
            }
        }

        /// Deterministic: building twice (as two nodes do) gives the same table.
        #[test]
        fn two_builds_agree(bs in backend_set()) {
            let a = Table::build(bs.clone(), 2003).unwrap();
            let mut rev = bs;
            rev.reverse();
            prop_assert_eq!(a, Table::build(rev, 2003).unwrap());
        }

        /// The disruption bound: removing one of N backends changes about 1/N of the entries
        /// (the removed backend's ⌈M/N⌉ must move; Maglev moves a few others). Maglev is not
        /// minimal-disruption in the worst case: over random sets the extra is typically
        /// 0.3–2 points (see the measurement below), but proptest found a 13-backend set that
        /// moved 11.55% (1/N = 7.7%; kept in proptest-regressions/maglev.txt), so the bound
        /// is 1.5/N + 0.03.
        #[test]
        fn removing_one_of_n_backends_moves_about_one_nth(bs in backend_set(), pick in any::<prop::sample::Index>()) {
            let n = bs.len();
            let full = Table::build(bs.clone(), DEFAULT_TABLE_SIZE).unwrap();
            let gone = bs[pick.index(n)];
            let rest: Vec<_> = bs.iter().copied().filter(|b| *b != gone).collect();
            let less = Table::build(rest, DEFAULT_TABLE_SIZE).unwrap();
            let f = moved(&full, &less);
            let bound = 1.5 / n as f64 + 0.03;
            prop_assert!(f <= bound, "removing 1 of {} moved {:.4} of the entries (bound {:.4})", n, f, bound);
            // every entry of the removed backend moved, nothing else points at it
            prop_assert!(less.entries().all(|(_, b)| b != gone));
        }
    }

    /// The disruption over many random sets, printed (run with --nocapture to see it): the
    /// mean moved fraction beyond the removed backend's own share.
    #[test]
    fn disruption_measured_over_random_backend_sets() {
        let mut rng = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for n in [3usize, 5, 10, 20, 50, 100] {
            let (mut sum, mut worst) = (0.0f64, 0.0f64);
            let runs = 20;
            for _ in 0..runs {
                let bs: Vec<_> = (0..n)
                    .map(|_| {
                        let r = next();
                        (IpAddr::V4(Ipv4Addr::from(r as u32)), (r >> 32) as u16 | 1)
                    })
                    .collect();
                let full = Table::build(bs.clone(), DEFAULT_TABLE_SIZE).unwrap();
                let gone = bs[(next() % n as u64) as usize];
                let less = Table::build(bs.into_iter().filter(|b| *b != gone), DEFAULT_TABLE_SIZE)
                    .unwrap();
                let f = moved(&full, &less);
                sum += f;
                worst = worst.max(f);
            }
            let mean = sum / f64::from(runs);
            println!(
                "maglev M={DEFAULT_TABLE_SIZE} N={n}: removing one backend moved mean {mean:.4}, \
                 worst {worst:.4} of entries (1/N = {:.4})",
                1.0 / n as f64
            );
            assert!(worst <= 1.0 / n as f64 + 0.02, "N={n}: worst {worst}");
        }
    }
}
