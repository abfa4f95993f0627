//! [`ServiceTracker`]: keeps a [`ServiceState`] equal to [`super::services`] while services
//! change one at a time, with work proportional to the services that changed (not to all of
//! them), including frontend keys two services claim.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

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
    claims: HashMap<NsName, Vec<FrontendKey>>,
    /// Keys claimed by two or more services, with every claimant.
    contested: BTreeMap<FrontendKey, BTreeSet<NsName>>,
}

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
        let mut tracker = ServiceTracker::default();
        let mut state = ServiceState::default();
        let mut delta = FrontendDelta::default();
        for ((ns, name), svc) in &model.services {
            let key = (ns.clone(), name.clone());
            let new = ctx.frontends(ns, name, &svc.to_service(ns, name));
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
        for key in changed {
            let new = match model.services.get(key) {
                Some(entry) => ctx.frontends(&key.0, &key.1, &entry.to_service(&key.0, &key.1)),
                None => BTreeMap::new(),
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
        new: BTreeMap<FrontendKey, Frontend>,
        delta: &mut FrontendDelta,
    ) {
        let old = self.claims.remove(service).unwrap_or_default();
        for k in old.iter().filter(|k| !new.contains_key(*k)) {
            self.release(ctx, state, k, service, delta);
        }
        let keys: Vec<FrontendKey> = new.keys().cloned().collect();
        for (k, f) in new {
            self.claim(state, k, service, f, delta);
        }
        if !keys.is_empty() {
            self.claims.insert(service.clone(), keys);
        }
    }

    fn set(state: &mut ServiceState, k: FrontendKey, f: Frontend, delta: &mut FrontendDelta) {
        delta.removed.remove(&k);
        delta.changed.insert(k.clone());
        state.frontends.insert(k, f);
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
        match state.frontends.get(&k) {
            None => Self::set(state, k, f, delta),
            Some(cur) if cur.service == *service => {
                if *cur != f {
                    Self::set(state, k, f, delta);
                }
            }
            Some(cur) => {
                let holder = cur.service.clone();
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
            let Some(svc) = ctx
                .model
                .services
                .get(&other)
                .map(|e| e.to_service(&other.0, &other.1))
            else {
                continue;
            };
            if let Some(f) = ctx.frontends(&other.0, &other.1, &svc).remove(k) {
                Self::set(state, k.clone(), f, delta);
                return;
            }
        }
        Self::unset(state, k, delta);
    }
}
