//! Cross-resource validation for one apply: duplicate keys, overlapping IP pools, policies in
//! tiers that do not exist.

use std::collections::{BTreeSet, HashMap};

use crate::calico::{DEFAULT_TIER, IPPool};
use crate::kind::Kind;
use crate::net;
use crate::parse::{ValidationError, ValidationErrors};
use crate::resource::Resource;

/// A resource's key, borrowed from it: kind, namespace, name (what [`Resource::key`] copies),
/// so checking 50,000 resources for duplicates copies no key.
type KeyRef<'a> = (Kind, Option<&'a str>, &'a str);

fn key_ref(r: &Resource) -> KeyRef<'_> {
    let m = r.meta();
    (r.kind(), m.namespace.as_deref(), m.name.as_str())
}

fn error(r: &Resource, path: &str, reason: String) -> ValidationError {
    let m = r.meta();
    ValidationError {
        file: String::new(),
        document: 0,
        kind: Some(r.kind().name().to_string()),
        namespace: m.namespace.clone(),
        name: Some(m.name.clone()),
        path: path.to_string(),
        reason,
    }
}

/// Checks `new` (the documents of one apply, already individually valid) against each other
/// and against `existing` (what the datastore holds). A resource in `new` replaces the one
/// in `existing` with the same key.
///
/// Rules: a key appears at most once in `new`; enabled IP pools do not overlap (disabled pools
/// are exempt, so a pool can be replaced by disabling it first); a Calico policy's tier is
/// `default` or exists. Namespace existence is not checked here.
pub fn validate_set(new: &[Resource], existing: &[Resource]) -> Result<(), ValidationErrors> {
    let mut errors = Vec::new();

    // How often each key appears in `new`.
    let mut seen: HashMap<KeyRef<'_>, usize> = HashMap::with_capacity(new.len());
    for r in new {
        let n = seen.entry(key_ref(r)).or_default();
        *n += 1;
        if *n == 2 {
            errors.push(error(
                r,
                "",
                format!(
                    "{} is defined more than once in this apply; keep one",
                    r.key()
                ),
            ));
        }
    }

    let pool = |r: &Resource| match r {
        Resource::IPPool(p) if !p.spec.disabled => Some(p.clone()),
        _ => None,
    };
    let new_pools: Vec<IPPool> = new.iter().filter_map(pool).collect();
    let old_pools: Vec<IPPool> = existing
        .iter()
        .filter(|r| !seen.contains_key(&key_ref(r)))
        .filter_map(pool)
        .collect();
    for (i, a) in new_pools.iter().enumerate() {
        let later_new = new_pools[i + 1..]
            .iter()
            .filter(|b| b.metadata.name != a.metadata.name);
        for b in later_new.chain(&old_pools) {
            if net::overlaps(&a.spec.cidr, &b.spec.cidr) {
                errors.push(error(
                    &Resource::IPPool(a.clone()),
                    "spec.cidr",
                    format!(
                        "pool {} overlaps pool {} ({}); change cidr or disable one",
                        a.spec.cidr, b.metadata.name, b.spec.cidr
                    ),
                ));
            }
        }
    }

    let tiers: BTreeSet<&str> = new
        .iter()
        .chain(existing)
        .filter(|r| r.kind() == Kind::Tier)
        .map(|r| r.meta().name.as_str())
        .chain([DEFAULT_TIER])
        .collect();
    for r in new {
        let tier = match r {
            Resource::NetworkPolicy(p) => &p.spec.tier,
            Resource::GlobalNetworkPolicy(p) => &p.spec.tier,
            _ => continue,
        };
        if !tiers.contains(tier.as_str()) {
            errors.push(error(
                r,
                "spec.tier",
                format!("tier {tier:?} does not exist; create the Tier first or in the same apply"),
            ));
        }
    }

    if errors.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors(errors))
    }
}
