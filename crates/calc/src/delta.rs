//! [`Delta`]: what changed between two desired states, so a dataplane rewrites only that.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::endpoints::EndpointKey;
use crate::ipsets::IpSetId;
use crate::services::FrontendKey;
use crate::state::DesiredState;

/// What changed about one endpoint present in both states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EndpointChange {
    /// The endpoint itself (addresses, interface, labels, named ports, readiness).
    pub endpoint: bool,
    /// Its policy (the rules to render for it).
    pub policy: bool,
}

/// The difference between two desired states, by key. Values are read from the new state:
/// "changed" covers added and modified entries.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Delta {
    /// Added endpoints (both flags set) and changed ones.
    pub endpoints_changed: BTreeMap<EndpointKey, EndpointChange>,
    pub endpoints_removed: BTreeSet<EndpointKey>,
    /// Added sets and sets whose members changed.
    pub ipsets_changed: BTreeSet<IpSetId>,
    pub ipsets_removed: BTreeSet<IpSetId>,
    pub frontends_changed: BTreeSet<FrontendKey>,
    pub frontends_removed: BTreeSet<FrontendKey>,
    pub host_endpoints_changed: BTreeSet<String>,
    pub host_endpoints_removed: BTreeSet<String>,
    pub nat_outgoing_changed: bool,
    /// Failsafe ports or `endpoint_to_host` changed.
    pub failsafe_changed: bool,
}

impl Delta {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        *self == Delta::default()
    }
}

fn diff_maps<K: Ord + Clone, V: PartialEq>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
) -> (BTreeSet<K>, BTreeSet<K>) {
    let changed = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    let removed = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .cloned()
        .collect();
    (changed, removed)
}

/// The changes that turn `old` into `new`.
pub fn diff(old: &DesiredState, new: &DesiredState) -> Delta {
    let mut endpoints_changed = BTreeMap::new();
    for (k, (ep, pol)) in &new.endpoints {
        let change = match old.endpoints.get(k) {
            None => EndpointChange {
                endpoint: true,
                policy: true,
            },
            Some((oep, opol)) => EndpointChange {
                endpoint: oep != ep,
                policy: opol != pol,
            },
        };
        if change.endpoint || change.policy {
            endpoints_changed.insert(k.clone(), change);
        }
    }
    let endpoints_removed = old
        .endpoints
        .keys()
        .filter(|k| !new.endpoints.contains_key(*k))
        .cloned()
        .collect();
    let (ipsets_changed, ipsets_removed) = diff_maps(&old.ipsets, &new.ipsets);
    let (frontends_changed, frontends_removed) =
        diff_maps(&old.services.frontends, &new.services.frontends);
    let (host_endpoints_changed, host_endpoints_removed) =
        diff_maps(&old.host_endpoints, &new.host_endpoints);
    Delta {
        endpoints_changed,
        endpoints_removed,
        ipsets_changed,
        ipsets_removed,
        frontends_changed,
        frontends_removed,
        host_endpoints_changed,
        host_endpoints_removed,
        nat_outgoing_changed: old.nat_outgoing != new.nat_outgoing,
        failsafe_changed: old.failsafe != new.failsafe
            || old.endpoint_to_host != new.endpoint_to_host,
    }
}
