//! Incremental service writes: the driver's write cost proportional to the frontends that
//! changed, not to the number of services.
//!
//! [`ServiceMirror`] keeps, per frontend last written, a 64-bit digest of its map entries
//! (not a copy of the frontend: the desired state holds those once) and the service ids in
//! use. On a write it renders the frontends that may differ (those the calculation names, or
//! every one) with [`render`] (the same rendering as [`super::desired_contents`]), compares
//! their digests, and returns the `sv_nat_fe` / `sv_nat_be` upserts and deletes that turn the
//! driver's copy of the service maps into the new contents, updating that copy in place. The
//! full path ([`super::desired_contents`] + diff) stays the reference and is used whenever
//! the mirror does not apply: nothing written yet, the kernel read back, another node name,
//! or any Maglev frontend (its tables are capped across frontends).

use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::net::IpAddr;

use foldhash::HashSetExt;

use serval_calc::DesiredState;
use serval_calc::services::{Backend, Frontend, FrontendKey};
use serval_dp_bpf::abi::{
    NatBeKey, NatBeVal, NatFeKey, NatFeVal, SV_NAT_BE_F_LOCAL, SV_NAT_FE_F_AFFINITY,
    SV_NAT_FE_F_EXT_LOCAL, SV_NAT_FE_F_EXTERNAL, SV_NAT_FE_F_INT_LOCAL, SV_NAT_FE_F_MAGLEV,
};

use super::MapContents;

/// The `sv_nat_fe` key of a frontend.
pub(super) fn fe_key(k: &FrontendKey) -> NatFeKey {
    NatFeKey::new(k.ip, k.port, k.protocol.number())
}

/// The `sv_nat_fe` value and the `sv_nat_be` entries of `fe` with service id `svc_id` on
/// `node`: local backends first (each group sorted), the Maglev flag clear.
pub(super) fn render(
    fe: &Frontend,
    node: &str,
    svc_id: u32,
) -> (NatFeVal, Vec<(NatBeKey, NatBeVal)>) {
    let is_local = |b: &Backend| b.node == node;
    // Local backends first, each group sorted. `fe.backends` comes sorted from the
    // calculation (see [`Frontend::backends`]), and so does each group taken from it in order:
    // no copies to sort then.
    let entries = |in_order: &mut dyn Iterator<Item = &Backend>| {
        let mut local = 0usize;
        let mut out: Vec<(NatBeKey, NatBeVal)> = Vec::with_capacity(fe.backends.len());
        for (slot, b) in in_order.enumerate() {
            let bflags = if is_local(b) {
                local += 1;
                SV_NAT_BE_F_LOCAL
            } else {
                0
            };
            out.push((
                NatBeKey {
                    svc_id,
                    slot: u32::try_from(slot).unwrap_or(u32::MAX),
                },
                NatBeVal::new(b.ip, b.port, bflags),
            ));
        }
        (out, local)
    };
    let (backends, local) = if fe.backends.is_sorted() {
        entries(
            &mut fe
                .backends
                .iter()
                .filter(|b| is_local(b))
                .chain(fe.backends.iter().filter(|b| !is_local(b))),
        )
    } else {
        let mut groups: Vec<&Backend> = fe.backends.iter().collect();
        groups.sort_by_key(|b| !is_local(b));
        let local = groups.iter().take_while(|b| is_local(b)).count();
        groups[..local].sort();
        groups[local..].sort();
        entries(&mut groups.into_iter())
    };
    let mut flags = 0;
    if fe.affinity_timeout.is_some() {
        flags |= SV_NAT_FE_F_AFFINITY;
    }
    if fe.internal_local {
        flags |= SV_NAT_FE_F_INT_LOCAL;
    }
    if fe.kind.is_external() {
        flags |= SV_NAT_FE_F_EXTERNAL;
        if fe.external_local {
            flags |= SV_NAT_FE_F_EXT_LOCAL;
        }
    }
    let val = NatFeVal {
        svc_id,
        count: u32::try_from(backends.len()).unwrap_or(u32::MAX),
        local_count: u32::try_from(local).unwrap_or(u32::MAX),
        flags,
        affinity_timeout_s: fe.affinity_timeout.unwrap_or(0),
        pad: 0,
    };
    (val, backends)
}

/// Upserts and deletes of the service maps for one write.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct ServiceDelta {
    pub fe_up: Vec<(NatFeKey, NatFeVal)>,
    pub fe_del: Vec<NatFeKey>,
    pub be_up: Vec<(NatBeKey, NatBeVal)>,
    pub be_del: Vec<NatBeKey>,
}

/// A 64-bit digest of one frontend's map entries, its service id left out: the `sv_nat_fe`
/// value and its `sv_nat_be` values in slot order. Equal digests: equal entries (but for a
/// 2^-64 chance; the hasher's keys are random per driver, so no input is built to collide).
fn digest<'a>(
    keys: &RandomState,
    val: &NatFeVal,
    backends: impl Iterator<Item = &'a NatBeVal>,
) -> u64 {
    let mut h = keys.build_hasher();
    (
        val.count,
        val.local_count,
        val.flags,
        val.affinity_timeout_s,
    )
        .hash(&mut h);
    for b in backends {
        (b.addr.0, b.port, b.flags).hash(&mut h);
    }
    h.finish()
}

/// The digests of the frontends last written (see the module docs) and the service ids
/// they hold: no copy of the frontends themselves.
#[derive(Debug, Default)]
pub(super) struct ServiceMirror {
    /// False after a failed write: the next write takes the full path.
    valid: bool,
    node: String,
    /// `sv_nat_fe` key → [`digest`] of the entries written for it.
    digests: foldhash::HashMap<NatFeKey, u64>,
    keys: RandomState,
    taken: foldhash::HashSet<u32>,
    maglev: usize,
}

impl ServiceMirror {
    /// The mirror after a full write of `state` whose written service maps are `fe` / `be`.
    pub(super) fn after_full_write(
        state: &DesiredState,
        fe: &super::FeMap,
        be: &super::BeMap,
    ) -> ServiceMirror {
        let keys = RandomState::new();
        let digests = fe
            .iter()
            .map(|(k, v)| {
                let slots = (0..v.count).map_while(|slot| {
                    be.get(&NatBeKey {
                        svc_id: v.svc_id,
                        slot,
                    })
                });
                (*k, digest(&keys, v, slots))
            })
            .collect();
        ServiceMirror {
            valid: true,
            node: state.node.clone().unwrap_or_default(),
            digests,
            keys,
            taken: fe.values().map(|v| v.svc_id).collect(),
            maglev: state
                .services
                .frontends
                .values()
                .filter(|f| f.maglev)
                .count()
                + fe.values()
                    .filter(|v| v.flags & SV_NAT_FE_F_MAGLEV != 0)
                    .count(),
        }
    }

    /// How many frontends were last written.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.digests.len()
    }

    /// The write failed: the kernel's contents are unknown, the next write takes the full
    /// path.
    pub(super) fn invalidate(&mut self) {
        self.valid = false;
    }

    /// The write of `pending` (from [`Self::update`]) succeeded.
    pub(super) fn commit(&mut self, pending: Pending) {
        for (k, d) in pending.0 {
            match d {
                Some(d) => self.digests.insert(k, d),
                None => self.digests.remove(&k),
            };
        }
    }

    /// Turns `fe` / `be` (the written `sv_nat_fe` / `sv_nat_be`, Maglev-free) into the
    /// contents for `state`, returning what to write; `None` (nothing changed, mirror
    /// untouched) when the incremental path does not apply and the full path must run.
    ///
    /// `hint`: every frontend key that may differ from the state last written (the
    /// calculation's delta, see [`super::super::Dataplane::apply_services_changed`]); only
    /// those are compared. `None`: every frontend is.
    pub(super) fn update(
        &mut self,
        state: &DesiredState,
        hint: Option<&[FrontendKey]>,
        fe: &mut super::FeMap,
        be: &mut super::BeMap,
    ) -> Option<(ServiceDelta, Pending)> {
        let node = state.node.as_deref().unwrap_or("");
        if !self.valid || self.maglev > 0 || node != self.node {
            return None;
        }
        let expected = hint.map_or(state.services.frontends.len(), <[_]>::len);
        let mut changes: Vec<Change> = Vec::with_capacity(expected);
        let mut seen = foldhash::HashSet::with_capacity(expected);
        let mut consider = |k: &FrontendKey, new: Option<&Frontend>, changes: &mut Vec<Change>| {
            let fk = fe_key(k);
            if !seen.insert(fk) {
                return;
            }
            let old = self.digests.get(&fk).copied();
            match new {
                None => {
                    if old.is_some() {
                        changes.push(Change::Removed(fk));
                    }
                }
                Some(f) => {
                    let (val, entries) = render(f, node, 0);
                    let d = digest(&self.keys, &val, entries.iter().map(|(_, v)| v));
                    if old != Some(d) || f.maglev {
                        changes.push(Change::Set {
                            key: k.clone(),
                            maglev: f.maglev,
                            digest: d,
                            val,
                            entries,
                        });
                    }
                }
            }
        };
        match hint {
            Some(keys) => {
                for k in keys {
                    consider(k, state.services.frontends.get(k), &mut changes);
                }
            }
            None => {
                for (k, f) in &state.services.frontends {
                    consider(k, Some(f), &mut changes);
                }
                for fk in self.digests.keys() {
                    if !seen.contains(fk) {
                        changes.push(Change::Removed(*fk));
                    }
                }
            }
        }
        if changes
            .iter()
            .any(|c| matches!(c, Change::Set { maglev: true, .. }))
        {
            return None;
        }
        Some(self.apply_changes(changes, fe, be))
    }

    fn apply_changes(
        &mut self,
        changes: Vec<Change>,
        fe: &mut super::FeMap,
        be: &mut super::BeMap,
    ) -> (ServiceDelta, Pending) {
        let mut d = ServiceDelta::default();
        let mut pending = Vec::with_capacity(changes.len());
        // Room for the delta at once. Not for the long-lived maps (`fe`, `be`, the ids, the
        // digests): a change of existing frontends would reserve as if each were new, and a
        // map's capacity never shrinks.
        let (sets, entries) = changes.iter().fold((0, 0), |(s, e), c| match c {
            Change::Set { entries, .. } => (s + 1, e + entries.len()),
            Change::Removed(_) => (s, e),
        });
        d.fe_up.reserve(sets);
        d.be_up.reserve(entries);
        // The ids of removed frontends are freed only after this write: a new frontend
        // taking one now would have its backends' upserts undone by the deletes.
        let mut freed = Vec::new();
        for c in &changes {
            let Change::Removed(fk) = c else { continue };
            if let Some(v) = fe.remove(fk) {
                for slot in 0..v.count {
                    let bk = NatBeKey {
                        svc_id: v.svc_id,
                        slot,
                    };
                    if be.remove(&bk).is_some() {
                        d.be_del.push(bk);
                    }
                }
                freed.push(v.svc_id);
                d.fe_del.push(*fk);
            }
            pending.push((*fk, None));
        }
        for c in changes {
            let Change::Set {
                key,
                digest,
                mut val,
                entries,
                ..
            } = c
            else {
                continue;
            };
            let fk = fe_key(&key);
            let old = fe.get(&fk).copied();
            let svc_id = match old {
                Some(v) if v.svc_id != 0 => v.svc_id,
                _ => {
                    let mut id = fnv32_of(&key).max(1);
                    while !self.taken.insert(id) {
                        id = id.checked_add(1).unwrap_or(1);
                    }
                    id
                }
            };
            val.svc_id = svc_id;
            let new_count = val.count;
            for (mut bk, bv) in entries {
                bk.svc_id = svc_id;
                if be.get(&bk) != Some(&bv) {
                    be.insert(bk, bv);
                    d.be_up.push((bk, bv));
                }
            }
            for slot in new_count..old.map_or(0, |v| v.count) {
                let bk = NatBeKey { svc_id, slot };
                if be.remove(&bk).is_some() {
                    d.be_del.push(bk);
                }
            }
            if old != Some(val) {
                fe.insert(fk, val);
                d.fe_up.push((fk, val));
            }
            pending.push((fk, Some(digest)));
        }
        for id in freed {
            self.taken.remove(&id);
        }
        (d, Pending(pending))
    }
}

/// FNV-1a over text, as [`fnv32`](super::fnv32) hashes it.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// `n` in decimal, as `Display` writes it.
    fn decimal(&mut self, n: u16) {
        let mut digits = [0u8; 5];
        let mut at = digits.len();
        let mut n = n;
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.bytes(&digits[at..]);
    }

    fn finish(&self) -> u32 {
        (self.0 ^ (self.0 >> 32)) as u32
    }
}

impl std::fmt::Write for Fnv {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.bytes(s.as_bytes());
        Ok(())
    }
}

/// [`fnv32`](super::fnv32) of `key`'s text (the full path's service id), without building
/// the string; an IPv4 key (`a.b.c.d:port/PROTO`) without the formatting machinery.
fn fnv32_of(key: &FrontendKey) -> u32 {
    let mut h = Fnv::new();
    match key.ip {
        IpAddr::V4(a) => {
            for (i, octet) in a.octets().into_iter().enumerate() {
                if i > 0 {
                    h.bytes(b".");
                }
                h.decimal(u16::from(octet));
            }
            h.bytes(b":");
            h.decimal(key.port);
            h.bytes(b"/");
            h.bytes(key.protocol.as_str().as_bytes());
        }
        // Writing to `Fnv` cannot fail; a Display that fails would only change the id.
        IpAddr::V6(_) => {
            let _ = std::fmt::Write::write_fmt(&mut h, format_args!("{key}"));
        }
    }
    h.finish()
}

/// One frontend that differs from what was last written.
enum Change {
    Removed(NatFeKey),
    /// Added or changed: its rendering with service id 0 (see [`render`]).
    Set {
        key: FrontendKey,
        maglev: bool,
        digest: u64,
        val: NatFeVal,
        entries: Vec<(NatBeKey, NatBeVal)>,
    },
}

/// Digest changes written but not yet committed to the mirror ([`ServiceMirror::commit`]).
#[derive(Debug, Default)]
pub(super) struct Pending(Vec<(NatFeKey, Option<u64>)>);

/// `state` without its services (the driver keeps those in its [`ServiceMirror`]).
pub(super) fn without_services(state: &DesiredState) -> DesiredState {
    DesiredState {
        node: state.node.clone(),
        endpoints: state.endpoints.clone(),
        ipsets: state.ipsets.clone(),
        services: Default::default(),
        nat_outgoing: state.nat_outgoing.clone(),
        host_endpoints: state.host_endpoints.clone(),
        failsafe: state.failsafe.clone(),
        endpoint_to_host: state.endpoint_to_host,
        xdp: state.xdp.clone(),
        remote_blocks: state.remote_blocks.clone(),
    }
}

/// Fails like [`super::check_capacity`] if the service maps would overflow while a delta is
/// written (upserts before deletes: `want` plus the deleted keys at the fullest).
pub(super) fn check_service_capacity(
    want: &MapContents,
    d: &ServiceDelta,
    sizes: &serval_dp_bpf::MapSizes,
) -> Result<(), super::BpfError> {
    use serval_dp_bpf::object::{MAP_NAT_BE, MAP_NAT_FE};
    let maps = [
        (
            MAP_NAT_BE,
            want.backends.len() + d.be_del.len(),
            "FelixConfiguration bpfMapSizeNATBackend",
        ),
        (
            MAP_NAT_FE,
            want.frontends.len() + d.fe_del.len(),
            "FelixConfiguration bpfMapSizeNATFrontend",
        ),
    ];
    for (map, needed, field) in maps {
        let Some(max_entries) = sizes.for_map(map) else {
            continue;
        };
        if needed > max_entries as usize {
            return Err(super::BpfError::MapFull {
                map,
                needed,
                max_entries,
                field,
            });
        }
    }
    Ok(())
}

/// Moves the service maps of `kernel` (the driver's mirror) into `want` (the desired non-
/// service contents) and updates them through `mirror`; `None` (`kernel` and `want`
/// unchanged) when the full path must run.
pub(super) fn services_into(
    mirror: &mut ServiceMirror,
    state: &DesiredState,
    hint: Option<&[FrontendKey]>,
    kernel: &mut MapContents,
    want: &mut MapContents,
) -> Option<(ServiceDelta, Pending)> {
    if !kernel.maglev.is_empty() {
        return None;
    }
    let mut fe = std::mem::take(&mut kernel.frontends);
    let mut be = std::mem::take(&mut kernel.backends);
    match mirror.update(state, hint, &mut fe, &mut be) {
        Some(d) => {
            want.frontends = fe;
            want.backends = be;
            Some(d)
        }
        None => {
            kernel.frontends = fe;
            kernel.backends = be;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap, HashSet};
    use std::net::Ipv4Addr;

    use serval_calc::services::{Backend, FrontendKind};
    use serval_model::types::Protocol;

    use super::super::{HostView, desired_contents, fnv32, map_diff};
    use super::*;

    /// A small deterministic generator (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// The service id the incremental path gives a new frontend is the one the full path
    /// gives it (both hash the key's text).
    #[test]
    fn fnv32_of_hashes_the_text() {
        for i in 0..64 {
            let k = key(i);
            assert_eq!(fnv32_of(&k), fnv32(&k.to_string()), "{k}");
        }
        assert_ne!(fnv32_of(&key(1)), fnv32_of(&key(2)));
        // Every digit count of octets and ports, every protocol, and IPv6 keys.
        let mut r = Rng(11);
        for i in 0..2000u64 {
            let n = r.next();
            let ip = if i % 5 == 0 {
                IpAddr::V6(std::net::Ipv6Addr::from(u128::from(n) << (i % 64)))
            } else {
                let pick = |b: u64| [0, 1, 9, 10, 99, 100, 200, 255][(b % 8) as usize];
                IpAddr::V4(Ipv4Addr::new(
                    pick(n),
                    pick(n >> 3),
                    pick(n >> 6),
                    (n >> 9) as u8,
                ))
            };
            let port =
                [0, 1, 9, 10, 80, 443, 8080, 10000, 65535, (n >> 20) as u16][(i % 10) as usize];
            let protocol = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp][(i % 3) as usize];
            let k = FrontendKey { ip, port, protocol };
            assert_eq!(fnv32_of(&k), fnv32(&k.to_string()), "{k}");
        }
    }

    /// Backends that are not sorted render as the sorted list does (local ones first).
    #[test]
    fn render_sorts_what_comes_unsorted() {
        let mut r = Rng(5);
        for _ in 0..200 {
            let mut f = frontend(&mut r, false);
            let sorted = render(&f, "node1", 7);
            for _ in 0..4 {
                let n = f.backends.len();
                if n > 1 {
                    let (a, b) = (r.below(n as u64) as usize, r.below(n as u64) as usize);
                    f.backends.swap(a, b);
                }
                assert_eq!(render(&f, "node1", 7), sorted);
            }
            let locals = f.backends.iter().filter(|b| b.node == "node1").count();
            assert_eq!(sorted.0.local_count as usize, locals);
            assert_eq!(sorted.0.count as usize, f.backends.len());
            for (slot, (k, v)) in sorted.1.iter().enumerate() {
                assert_eq!((k.svc_id, k.slot as usize), (7, slot));
                assert_eq!(v.flags != 0, slot < locals);
            }
        }
    }

    fn key(i: u64) -> FrontendKey {
        FrontendKey {
            ip: IpAddr::V4(Ipv4Addr::new(10, 96, 0, u8::try_from(i % 8).unwrap())),
            port: 80 + u16::try_from(i / 8).unwrap(),
            protocol: if i.is_multiple_of(3) {
                Protocol::Udp
            } else {
                Protocol::Tcp
            },
        }
    }

    fn frontend(r: &mut Rng, maglev: bool) -> Frontend {
        let mut backends: Vec<Backend> = (0..r.below(5))
            .map(|_| Backend {
                ip: IpAddr::V4(Ipv4Addr::new(10, 244, 0, u8::try_from(r.below(6)).unwrap())),
                port: 8080 + u16::try_from(r.below(2)).unwrap(),
                node: ["node1", "node2", ""][usize::try_from(r.below(3)).unwrap()].to_string(),
                endpoint: None,
            })
            .collect();
        backends.sort();
        backends.dedup();
        let kind = [
            FrontendKind::ClusterIP,
            FrontendKind::NodePort,
            FrontendKind::LoadBalancer,
        ][usize::try_from(r.below(3)).unwrap()];
        Frontend {
            service: ("default".into(), format!("svc-{}", r.below(4))),
            port_name: None,
            kind,
            backends,
            affinity_timeout: (r.below(3) == 0).then_some(60),
            external_local: r.below(2) == 0,
            internal_local: r.below(4) == 0,
            masquerade: false,
            node: None,
            maglev,
        }
    }

    fn state(frontends: &BTreeMap<FrontendKey, Frontend>) -> DesiredState {
        let mut s = DesiredState {
            node: Some("node1".into()),
            ..DesiredState::default()
        };
        s.services.frontends = frontends.clone();
        s
    }

    fn full(s: &DesiredState, prev: &HashMap<NatFeKey, u32>) -> MapContents {
        desired_contents(s, &Default::default(), &HostView::default(), prev)
    }

    fn ids(c: &MapContents) -> HashMap<NatFeKey, u32> {
        c.frontends.iter().map(|(k, v)| (*k, v.svc_id)).collect()
    }

    fn sorted<T: Ord + Clone>(v: &[T]) -> Vec<T> {
        let mut v = v.to_vec();
        v.sort();
        v
    }

    /// After random add / change / remove sequences the incrementally kept service maps equal
    /// the full path's for the final state (with the ids the mirror holds), ids stay unique,
    /// and every step's writes are exactly the diff of the two contents; with and without the
    /// calculation's hint.
    #[test]
    fn incremental_services_equal_the_full_path() {
        for seed in 1..40u64 {
            let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut fronts: BTreeMap<FrontendKey, Frontend> = BTreeMap::new();
            for _ in 0..r.below(20) {
                fronts.insert(key(r.below(64)), frontend(&mut r, false));
            }
            let s = state(&fronts);
            let mut mirror_contents = full(&s, &HashMap::new());
            let mut mirror = ServiceMirror::after_full_write(
                &s,
                &mirror_contents.frontends,
                &mirror_contents.backends,
            );
            for _step in 0..30 {
                // Even seeds: the calculation's hint (the touched keys and an untouched one).
                let mut touched = vec![key(r.below(64))];
                for _ in 0..1 + r.below(4) {
                    let k = key(r.below(64));
                    touched.push(k.clone());
                    match r.below(3) {
                        0 => {
                            fronts.remove(&k);
                        }
                        _ => {
                            fronts.insert(k, frontend(&mut r, false));
                        }
                    }
                }
                let s = state(&fronts);
                let before = mirror_contents.clone();
                let hint = seed.is_multiple_of(2).then_some(touched.as_slice());
                let mut want = MapContents::default();
                let (d, pending) =
                    services_into(&mut mirror, &s, hint, &mut mirror_contents, &mut want)
                        .expect("no Maglev: incremental");
                mirror.commit(pending);
                mirror_contents = want;
                let reference = full(&s, &ids(&mirror_contents));
                assert_eq!(
                    mirror_contents.frontends, reference.frontends,
                    "seed {seed}"
                );
                assert_eq!(mirror_contents.backends, reference.backends, "seed {seed}");
                let unique: HashSet<u32> = mirror_contents
                    .frontends
                    .values()
                    .map(|v| v.svc_id)
                    .collect();
                assert_eq!(unique.len(), mirror_contents.frontends.len());
                assert!(!unique.contains(&0));
                let (fe_up, fe_del) = map_diff(&before.frontends, &mirror_contents.frontends);
                let (be_up, be_del) = map_diff(&before.backends, &mirror_contents.backends);
                let key_of = |k: &NatFeKey| (k.addr.0, k.port, k.proto);
                let fe_sorted = |v: &[(NatFeKey, NatFeVal)]| {
                    let mut v: Vec<_> = v.iter().map(|(k, _)| key_of(k)).collect();
                    v.sort();
                    v
                };
                assert_eq!(fe_sorted(&d.fe_up), fe_sorted(&fe_up), "seed {seed}");
                let dels = |v: &[NatFeKey]| {
                    let mut v: Vec<_> = v.iter().map(key_of).collect();
                    v.sort();
                    v
                };
                assert_eq!(dels(&d.fe_del), dels(&fe_del), "seed {seed}");
                let be_keys = |v: &[(NatBeKey, NatBeVal)]| {
                    sorted(
                        &v.iter()
                            .map(|(k, _)| (k.svc_id, k.slot))
                            .collect::<Vec<_>>(),
                    )
                };
                assert_eq!(be_keys(&d.be_up), be_keys(&be_up), "seed {seed}");
                let be_dels = |v: &[NatBeKey]| {
                    sorted(&v.iter().map(|k| (k.svc_id, k.slot)).collect::<Vec<_>>())
                };
                assert_eq!(be_dels(&d.be_del), be_dels(&be_del), "seed {seed}");
                let written: HashSet<NatFeKey> = mirror.digests.keys().copied().collect();
                assert_eq!(written, fronts.keys().map(fe_key).collect(), "seed {seed}");
                // The digests equal those of a mirror built from the full path's contents.
                let rebuilt =
                    ServiceMirror::after_full_write(&s, &reference.frontends, &reference.backends);
                for (k, f) in &fronts {
                    let (val, entries) = render(f, "node1", 0);
                    let d = digest(&mirror.keys, &val, entries.iter().map(|(_, v)| v));
                    assert_eq!(mirror.digests[&fe_key(k)], d, "seed {seed}");
                    let d = digest(&rebuilt.keys, &val, entries.iter().map(|(_, v)| v));
                    assert_eq!(rebuilt.digests[&fe_key(k)], d, "seed {seed}");
                }
            }
        }
    }

    #[test]
    fn maglev_frontends_take_the_full_path() {
        let mut r = Rng(7);
        let mut fronts = BTreeMap::new();
        fronts.insert(key(1), frontend(&mut r, false));
        let s = state(&fronts);
        let mut kernel = full(&s, &HashMap::new());
        let mut mirror = ServiceMirror::after_full_write(&s, &kernel.frontends, &kernel.backends);
        fronts.insert(key(2), frontend(&mut r, true));
        let s2 = state(&fronts);
        let mut want = MapContents::default();
        let before = kernel.clone();
        assert!(services_into(&mut mirror, &s2, None, &mut kernel, &mut want).is_none());
        assert_eq!(kernel, before, "the mirror is left as it was");
        assert_eq!(mirror.len(), 1);
    }
}
