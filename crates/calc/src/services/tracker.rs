//! [`ServiceTracker`]: keeps a [`ServiceState`] equal to [`super::services`] while services
//! change one at a time, with work proportional to the services that changed (not to all of
//! them), including frontend keys two services claim.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use foldhash::HashMapExt;

use super::build::Context;
use super::{Frontend, FrontendDelta, FrontendKey, ServiceState};
use crate::model::{Model, NsName};

/// Which frontend keys each service claims, and the keys more than one service claims. With
/// it, [`ServiceTracker::update`] recomputes only the services named and hands a contested key
/// to the next claimant (first by namespace/name, as [`super::services`] does) when its holder
/// gives it up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceTracker {
    /// Every key each service's frontends claim (held or not), sorted.
    claims: foldhash::HashMap<NsName, Vec<FrontendKey>>,
    /// Keys claimed by two or more services, with every claimant.
    contested: BTreeMap<FrontendKey, BTreeSet<NsName>>,
}

/// [`ServiceTracker::update`] walks the model's services alongside the changed names (rather
/// than searching for each) when they are at least one in this many of the model's.
const WALK_FRACTION: usize = 16;

fn warn_conflict(k: &FrontendKey, holder: &NsName, service: &NsName) {
    tracing::warn!(
        frontend = %k,
        holder = ?holder,
        service = ?service,
        "services: frontend already held by another service; ignored"
    );
}

impl ServiceTracker {
    /// The tracker and the state for `model`: the state equals
    /// [`super::services`]`(model, this_node, node_addrs)`.
    pub fn build(
        model: &Model,
        this_node: Option<&str>,
        node_addrs: &[IpAddr],
    ) -> (ServiceTracker, ServiceState) {
        let ctx = Context::new(model, this_node, node_addrs);
        let mut tracker = ServiceTracker {
            claims: foldhash::HashMap::with_capacity(model.services.len()),
            ..ServiceTracker::default()
        };
        let mut state = ServiceState::default();
        let mut delta = FrontendDelta::default();
        for ((ns, name), svc) in &model.services {
            let key = (ns.clone(), name.clone());
            let new = ctx.frontend_list(ns, name, &svc.view());
            tracker.replace(&ctx, &mut state, &key, new, &mut delta);
        }
        (tracker, state)
    }

    /// Recomputes the services in `changed` (their Service, EndpointSlices or backends
    /// changed; absent from `model` = deleted) and updates `state` to what
    /// [`super::services`] would compute for `model`. Returns what changed in `state`.
    ///
    /// `state` must be the state this tracker built or last updated. Changes to what every
    /// service reads (Node addresses, `node_addrs`) need every service with node ports in
    /// `changed` ([`super::affected_services`] says which).
    pub fn update(
        &mut self,
        state: &mut ServiceState,
        model: &Model,
        this_node: Option<&str>,
        node_addrs: &[IpAddr],
        changed: &BTreeSet<NsName>,
    ) -> FrontendDelta {
        let mut delta = FrontendDelta::default();
        if changed.is_empty() {
            return delta;
        }
        let ctx = Context::new(model, this_node, node_addrs);
        // A burst of new services: room for their claims at once (at most as many as the
        // model holds services beyond those with claims).
        self.claims.reserve(
            changed
                .len()
                .min(model.services.len().saturating_sub(self.claims.len())),
        );
        // Both `changed` and the model's services are sorted by name: a large batch (a
        // fraction of the services) walks the two in step instead of searching the model's
        // tree once per name.
        let walk = changed.len().saturating_mul(WALK_FRACTION) >= model.services.len();
        let mut services = walk
            .then(|| changed.first().map(|first| model.services.range(first..)))
            .flatten()
            .map(Iterator::peekable);
        for key in changed {
            let entry = match services.as_mut() {
                Some(it) => {
                    while it.next_if(|(k, _)| *k < key).is_some() {}
                    it.next_if(|(k, _)| *k == key).map(|(_, e)| e)
                }
                None => model.services.get(key),
            };
            let new = match entry {
                Some(entry) => ctx.frontend_list(&key.0, &key.1, &entry.view()),
                None => Vec::new(),
            };
            self.replace(&ctx, state, key, new, &mut delta);
        }
        delta
    }

    /// How many services hold claims (for logs and tests).
    pub fn len(&self) -> usize {
        self.claims.len()
    }

    /// Whether no service claims anything.
    pub fn is_empty(&self) -> bool {
        self.claims.is_empty()
    }

    fn replace(
        &mut self,
        ctx: &Context<'_>,
        state: &mut ServiceState,
        service: &NsName,
        new: Vec<(FrontendKey, Frontend)>,
        delta: &mut FrontendDelta,
    ) {
        // `new` is sorted by key, without duplicates.
        let old = self.claims.remove(service);
        for k in old.iter().flatten() {
            if new.binary_search_by(|(n, _)| n.cmp(k)).is_err() {
                self.release(ctx, state, k, service, delta);
            }
        }
        if new.is_empty() {
            return;
        }
        // The claim list reuses the old one's allocation when there was one.
        let mut keys = old.unwrap_or_default();
        keys.clear();
        keys.extend(new.iter().map(|(k, _)| k.clone()));
        keys.shrink_to_fit();
        for (k, f) in new {
            self.claim(state, k, service, f, delta);
        }
        self.claims.insert(service.clone(), keys);
    }

    fn set(state: &mut ServiceState, k: FrontendKey, f: Frontend, delta: &mut FrontendDelta) {
        Self::changed(&k, delta);
        state.frontends.insert(k, f);
    }

    /// Records `k` as changed in `delta`.
    fn changed(k: &FrontendKey, delta: &mut FrontendDelta) {
        if !delta.removed.is_empty() {
            delta.removed.remove(k);
        }
        delta.changed.insert(k.clone());
    }

    fn unset(state: &mut ServiceState, k: &FrontendKey, delta: &mut FrontendDelta) {
        if state.frontends.remove(k).is_some() {
            delta.changed.remove(k);
            delta.removed.insert(k.clone());
        }
    }

    fn claim(
        &mut self,
        state: &mut ServiceState,
        k: FrontendKey,
        service: &NsName,
        f: Frontend,
        delta: &mut FrontendDelta,
    ) {
        // One search of the frontends for the common cases (a new key, the holder's own).
        let cur = match state.frontends.entry(k) {
            Entry::Vacant(slot) => {
                Self::changed(slot.key(), delta);
                slot.insert(f);
                return;
            }
            Entry::Occupied(mut cur) if cur.get().service == *service => {
                if *cur.get() != f {
                    Self::changed(cur.key(), delta);
                    cur.insert(f);
                }
                return;
            }
            Entry::Occupied(cur) => cur,
        };
        let (k, holder) = (cur.key().clone(), cur.get().service.clone());
        let claimants = self
            .contested
            .entry(k.clone())
            .or_insert_with(|| BTreeSet::from([holder.clone()]));
        let new_claim = claimants.insert(service.clone());
        if *service < holder {
            if new_claim {
                warn_conflict(&k, service, &holder);
            }
            Self::set(state, k, f, delta);
        } else if new_claim {
            warn_conflict(&k, &holder, service);
        }
    }

    fn release(
        &mut self,
        ctx: &Context<'_>,
        state: &mut ServiceState,
        k: &FrontendKey,
        service: &NsName,
        delta: &mut FrontendDelta,
    ) {
        let held = state
            .frontends
            .get(k)
            .is_some_and(|f| f.service == *service);
        let Some(claimants) = self.contested.get_mut(k) else {
            if held {
                Self::unset(state, k, delta);
            }
            return;
        };
        claimants.remove(service);
        let others: Vec<NsName> = claimants.iter().cloned().collect();
        if claimants.len() < 2 {
            self.contested.remove(k);
        }
        if !held {
            return;
        }
        // The next claimant in order takes the key over. A claimant whose frontends no longer
        // hold it is itself in this update and will release it.
        for other in others {
            let Some(entry) = ctx.model.services.get(&other) else {
                continue;
            };
            let mut theirs = ctx.frontend_list(&other.0, &other.1, &entry.view());
            if let Ok(i) = theirs.binary_search_by(|(n, _)| n.cmp(k)) {
                Self::set(state, k.clone(), theirs.swap_remove(i).1, delta);
                return;
            }
        }
        Self::unset(state, k, delta);
    }
}
