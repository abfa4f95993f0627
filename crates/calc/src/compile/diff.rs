//! What changed between two compiled policies, so the map writer touches only that.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{CompiledPolicy, EntryKey, PolicyEntry, RuleRef, SportEntry, SportKey};
use crate::endpoints::EndpointKey;

/// The changes from an old [`CompiledPolicy`] to a new one.
///
/// A writer that wants no packet to see a half-written state applies, in order:
/// `upsert_sport_entries` (tables exist before a verdict names them),
/// `upsert_entries` (entries of new identities exist before any address maps to them),
/// `upsert_identities`, `delete_identities`, `delete_entries`, then
/// `delete_sport_entries`; endpoint ids change
/// with `endpoints_changed` (for `sv_eps`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CompiledDelta {
    /// New entries and entries whose verdict or rule changed.
    pub upsert_entries: Vec<PolicyEntry>,
    /// Entries (of the old policy) whose key is gone.
    pub delete_entries: Vec<PolicyEntry>,
    /// New and changed `sv_pol_sport` entries, and those whose key is gone.
    pub upsert_sport_entries: Vec<SportEntry>,
    pub delete_sport_entries: Vec<SportEntry>,
    /// New identity prefixes and prefixes whose identity changed.
    pub upsert_identities: Vec<(IpNet, u32)>,
    pub delete_identities: Vec<IpNet>,
    /// Identities whose class appeared, changed or disappeared.
    pub identities_changed: BTreeSet<u32>,
    /// Added endpoints and endpoints whose id changed.
    pub endpoints_changed: BTreeMap<EndpointKey, u32>,
    pub endpoints_removed: BTreeSet<EndpointKey>,
    /// New and changed rule ids (for flow-log lookups).
    pub rules_changed: BTreeMap<u32, RuleRef>,
    pub rules_removed: BTreeSet<u32>,
}

impl CompiledDelta {
    pub fn is_empty(&self) -> bool {
        *self == CompiledDelta::default()
    }
}

fn by_key(c: &CompiledPolicy) -> BTreeMap<EntryKey, &PolicyEntry> {
    c.entries.iter().map(|e| (e.key(), e)).collect()
}

fn sport_by_key(c: &CompiledPolicy) -> BTreeMap<SportKey, &SportEntry> {
    c.sport_entries.iter().map(|e| (e.key(), e)).collect()
}

/// The difference between two compiled policies.
pub fn diff(old: &CompiledPolicy, new: &CompiledPolicy) -> CompiledDelta {
    let (o, n) = (by_key(old), by_key(new));
    let upsert_entries = n
        .iter()
        .filter(|(k, e)| o.get(*k) != Some(*e))
        .map(|(_, e)| **e)
        .collect();
    let delete_entries = o
        .iter()
        .filter(|(k, _)| !n.contains_key(*k))
        .map(|(_, e)| **e)
        .collect();
    let (os, ns) = (sport_by_key(old), sport_by_key(new));
    let upsert_sport_entries = ns
        .iter()
        .filter(|(k, e)| os.get(*k) != Some(*e))
        .map(|(_, e)| **e)
        .collect();
    let delete_sport_entries = os
        .iter()
        .filter(|(k, _)| !ns.contains_key(*k))
        .map(|(_, e)| **e)
        .collect();
    let oi: BTreeMap<IpNet, u32> = old.identities.iter().copied().collect();
    let ni: BTreeMap<IpNet, u32> = new.identities.iter().copied().collect();
    let upsert_identities = ni
        .iter()
        .filter(|(k, v)| oi.get(*k) != Some(*v))
        .map(|(k, v)| (*k, *v))
        .collect();
    let delete_identities = oi
        .keys()
        .filter(|k| !ni.contains_key(*k))
        .copied()
        .collect();
    let identities_changed = old
        .classes
        .keys()
        .chain(new.classes.keys())
        .filter(|id| old.classes.get(*id) != new.classes.get(*id))
        .copied()
        .collect();
    let endpoints_changed = new
        .endpoints
        .iter()
        .filter(|(k, v)| old.endpoints.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let endpoints_removed = old
        .endpoints
        .keys()
        .filter(|k| !new.endpoints.contains_key(*k))
        .cloned()
        .collect();
    let rules_changed = new
        .rules
        .iter()
        .filter(|(k, v)| old.rules.get(*k) != Some(*v))
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    let rules_removed = old
        .rules
        .keys()
        .filter(|k| !new.rules.contains_key(*k))
        .copied()
        .collect();
    CompiledDelta {
        upsert_entries,
        delete_entries,
        upsert_sport_entries,
        delete_sport_entries,
        upsert_identities,
        delete_identities,
        identities_changed,
        endpoints_changed,
        endpoints_removed,
        rules_changed,
        rules_removed,
    }
}
