//! Incremental service writes: the driver's write cost proportional to the frontends that
//! changed, not to the number of services.
//!
//! [`ServiceMirror`] keeps the services last written (one copy, updated entry by entry) and
//! the service ids in use. On a write it walks the new desired state's frontends next to its
//! copy (both sorted by key), renders only the frontends that differ ([`render`], the same
//! rendering as [`super::desired_contents`]) and returns the `sv_nat_fe` / `sv_nat_be` upserts
//! and deletes that turn the driver's mirror into the new contents, updating the mirror in
//! place. The full path ([`super::desired_contents`] + diff) stays the reference and is used
//! whenever the mirror does not apply: nothing written yet, the kernel read back, another node
//! name, or any Maglev frontend (its tables are capped across frontends).

use std::collections::{BTreeMap, HashMap, HashSet};

use serval_calc::DesiredState;
use serval_calc::services::{Frontend, FrontendKey};
use serval_dp_bpf::abi::{
    NatBeKey, NatBeVal, NatFeKey, NatFeVal, SV_NAT_BE_F_LOCAL, SV_NAT_FE_F_AFFINITY,
    SV_NAT_FE_F_EXT_LOCAL, SV_NAT_FE_F_EXTERNAL, SV_NAT_FE_F_INT_LOCAL,
};

use super::{MapContents, fnv32};

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
    let (mut local, mut remote): (Vec<_>, Vec<_>) =
        fe.backends.iter().partition(|b| b.node == node);
    local.sort();
    remote.sort();
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
    let backends: Vec<(NatBeKey, NatBeVal)> = local
        .iter()
        .chain(remote.iter())
        .enumerate()
        .map(|(slot, b)| {
            let bflags = if b.node == node { SV_NAT_BE_F_LOCAL } else { 0 };
            (
                NatBeKey {
                    svc_id,
                    slot: u32::try_from(slot).unwrap_or(u32::MAX),
                },
                NatBeVal::new(b.ip, b.port, bflags),
            )
        })
        .collect();
    let val = NatFeVal {
        svc_id,
        count: u32::try_from(backends.len()).unwrap_or(u32::MAX),
        local_count: u32::try_from(local.len()).unwrap_or(u32::MAX),
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

/// The services last written and the service ids they hold (see the module docs).
#[derive(Debug, Default)]
pub(super) struct ServiceMirror {
    /// False after a failed write: the next write takes the full path.
    valid: bool,
    node: String,
    frontends: BTreeMap<FrontendKey, Frontend>,
    taken: HashSet<u32>,
    maglev: usize,
}

impl ServiceMirror {
    /// The mirror after a full write of `state` whose written frontends are `frontends`.
    pub(super) fn after_full_write(
        state: &DesiredState,
        frontends: &HashMap<NatFeKey, NatFeVal>,
    ) -> ServiceMirror {
        ServiceMirror {
            valid: true,
            node: state.node.clone().unwrap_or_default(),
            frontends: state.services.frontends.clone(),
            taken: frontends.values().map(|v| v.svc_id).collect(),
            maglev: state
                .services
                .frontends
                .values()
                .filter(|f| f.maglev)
                .count(),
        }
    }

    /// The services last written (for a resync).
    pub(super) fn frontends(&self) -> &BTreeMap<FrontendKey, Frontend> {
        &self.frontends
    }

    /// The write failed: the kernel's contents are unknown, the next write takes the full
    /// path (the services last written successfully stay for a resync).
    pub(super) fn invalidate(&mut self) {
        self.valid = false;
    }

    /// The write of `pending` (from [`Self::update`]) succeeded.
    pub(super) fn commit(&mut self, pending: Pending) {
        for (k, f) in pending.0 {
            match f {
                Some(f) => self.frontends.insert(k, f),
                None => self.frontends.remove(&k),
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
        fe: &mut HashMap<NatFeKey, NatFeVal>,
        be: &mut HashMap<NatBeKey, NatBeVal>,
    ) -> Option<(ServiceDelta, Pending)> {
        let node = state.node.as_deref().unwrap_or("");
        if !self.valid || self.maglev > 0 || node != self.node {
            return None;
        }
        let mut changes: Vec<(&FrontendKey, Option<&Frontend>)> = Vec::new();
        if let Some(keys) = hint {
            let mut seen = HashSet::new();
            for k in keys {
                let new = state.services.frontends.get(k);
                if seen.insert(k) && self.frontends.get(k) != new {
                    changes.push((k, new));
                }
            }
        } else {
            self.walk(state, &mut changes);
        }
        if changes.iter().any(|(_, f)| f.is_some_and(|f| f.maglev)) {
            return None;
        }
        let changes: Vec<(FrontendKey, Option<Frontend>)> = changes
            .into_iter()
            .map(|(k, f)| (k.clone(), f.cloned()))
            .collect();
        Some(self.apply_changes(changes, node, fe, be))
    }

    /// What differs, by a walk of both sorted maps.
    fn walk<'a>(
        &'a self,
        state: &'a DesiredState,
        changes: &mut Vec<(&'a FrontendKey, Option<&'a Frontend>)>,
    ) {
        let mut old = self.frontends.iter().peekable();
        let mut new = state.services.frontends.iter().peekable();
        loop {
            match (old.peek(), new.peek()) {
                (None, None) => break,
                (Some((ok, _)), None) => {
                    changes.push((ok, None));
                    old.next();
                }
                (None, Some((nk, nf))) => {
                    changes.push((nk, Some(nf)));
                    new.next();
                }
                (Some((ok, of)), Some((nk, nf))) => match ok.cmp(nk) {
                    std::cmp::Ordering::Less => {
                        changes.push((ok, None));
                        old.next();
                    }
                    std::cmp::Ordering::Greater => {
                        changes.push((nk, Some(nf)));
                        new.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if of != nf {
                            changes.push((nk, Some(nf)));
                        }
                        old.next();
                        new.next();
                    }
                },
            }
        }
    }

    fn apply_changes(
        &mut self,
        changes: Vec<(FrontendKey, Option<Frontend>)>,
        node: &str,
        fe: &mut HashMap<NatFeKey, NatFeVal>,
        be: &mut HashMap<NatBeKey, NatBeVal>,
    ) -> (ServiceDelta, Pending) {
        let mut d = ServiceDelta::default();
        // The ids of removed frontends are freed only after this write: a new frontend
        // taking one now would have its backends' upserts undone by the deletes.
        let mut freed = Vec::new();
        for (k, f) in &changes {
            if f.is_some() {
                continue;
            }
            let fk = fe_key(k);
            if let Some(v) = fe.remove(&fk) {
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
                d.fe_del.push(fk);
            }
        }
        for (k, f) in &changes {
            let Some(f) = f else { continue };
            let fk = fe_key(k);
            let old = fe.get(&fk).copied();
            let svc_id = match old {
                Some(v) if v.svc_id != 0 => v.svc_id,
                _ => {
                    let mut id = fnv32(&k.to_string()).max(1);
                    while !self.taken.insert(id) {
                        id = id.checked_add(1).unwrap_or(1);
                    }
                    id
                }
            };
            let (val, entries) = render(f, node, svc_id);
            let new_count = val.count;
            for (bk, bv) in entries {
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
        }
        for id in freed {
            self.taken.remove(&id);
        }
        (d, Pending(changes))
    }
}

/// Frontend changes written but not yet committed to the mirror ([`ServiceMirror::commit`]).
#[derive(Debug, Default)]
pub(super) struct Pending(Vec<(FrontendKey, Option<Frontend>)>);

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
    use std::net::{IpAddr, Ipv4Addr};

    use serval_calc::services::{Backend, FrontendKind};
    use serval_model::types::Protocol;

    use super::super::{HostView, desired_contents, map_diff};
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
            let mut mirror = ServiceMirror::after_full_write(&s, &mirror_contents.frontends);
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
                assert_eq!(mirror.frontends(), &fronts);
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
        let mut mirror = ServiceMirror::after_full_write(&s, &kernel.frontends);
        fronts.insert(key(2), frontend(&mut r, true));
        let s2 = state(&fronts);
        let mut want = MapContents::default();
        let before = kernel.clone();
        assert!(services_into(&mut mirror, &s2, None, &mut kernel, &mut want).is_none());
        assert_eq!(kernel, before, "the mirror is left as it was");
        assert_eq!(mirror.frontends().len(), 1);
    }
}
