//! The agent's in-memory view of the datastore: every resource by key and every IPAM block
//! affinity, as the syncer last saw them. Each change bumps a generation number that the
//! calculators ([`crate::routing`], [`crate::runtime`]) wait on; they then read a consistent
//! snapshot under the lock and compute their desired state from it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::IpNet;
use serval_api::ResourceEvent;
use serval_ipam::Affinity;
use serval_model::{Resource, ResourceKey};
use serval_store::Revision;
use tokio::sync::watch;

/// Which half of the cache a sync event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Resources under `serval_api::RESOURCE_PREFIX`.
    Resources,
    /// IPAM block affinities under `serval_ipam::AFFINITY_PREFIX`.
    Affinities,
}

/// The cached state. Read it through [`Cache::read`].
#[derive(Debug, Default)]
pub struct State {
    pub resources: BTreeMap<ResourceKey, Resource>,
    /// Block affinities by (node, block).
    pub affinities: BTreeMap<(String, IpNet), Affinity>,
    /// The store revision each half was last brought up to.
    pub resources_rev: Revision,
    pub affinities_rev: Revision,
    /// Whether each half has completed its first list.
    pub resources_synced: bool,
    pub affinities_synced: bool,
}

impl State {
    /// Both halves listed at least once: calculations see the whole cluster.
    pub fn in_sync(&self) -> bool {
        self.resources_synced && self.affinities_synced
    }
}

/// The shared cache: state under a mutex plus a change counter.
#[derive(Debug, Clone)]
pub struct Cache {
    state: Arc<Mutex<State>>,
    changed: Arc<watch::Sender<u64>>,
}

impl Default for Cache {
    fn default() -> Self {
        Self::new()
    }
}

impl Cache {
    pub fn new() -> Cache {
        let (tx, _rx) = watch::channel(0);
        Cache {
            state: Arc::new(Mutex::new(State::default())),
            changed: Arc::new(tx),
        }
    }

    /// A receiver that sees a new value after every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The current state (hold the guard briefly: the syncer waits on it).
    pub fn read(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|g| *g += 1);
    }

    /// Replaces every resource with a fresh list (initial sync and resync after compaction).
    pub fn replace_resources(&self, items: Vec<Resource>, rev: Revision) {
        let fresh: BTreeMap<ResourceKey, Resource> =
            items.into_iter().map(|r| (r.key(), r)).collect();
        let changed = {
            let mut st = self.read();
            let changed = !st.resources_synced || st.resources != fresh;
            if changed {
                tracing::debug!(count = fresh.len(), rev, "resources listed");
            }
            st.resources = fresh;
            st.resources_rev = rev;
            st.resources_synced = true;
            changed
        };
        if changed {
            self.notify();
        }
    }

    /// Applies one watched resource change.
    pub fn apply_resource(&self, event: ResourceEvent, rev: Revision) {
        {
            let mut st = self.read();
            st.resources_rev = rev;
            match event {
                ResourceEvent::Applied(r) => {
                    tracing::debug!(key = %r.key(), rev, "resource applied");
                    st.resources.insert(r.key(), r);
                }
                ResourceEvent::Deleted { key, .. } => {
                    tracing::debug!(%key, rev, "resource deleted");
                    st.resources.remove(&key);
                }
            }
        }
        self.notify();
    }

    /// Replaces every affinity with a fresh list.
    pub fn replace_affinities(&self, items: Vec<Affinity>, rev: Revision) {
        let fresh: BTreeMap<(String, IpNet), Affinity> = items
            .into_iter()
            .map(|a| ((a.node.clone(), a.block), a))
            .collect();
        let changed = {
            let mut st = self.read();
            let changed = !st.affinities_synced || st.affinities != fresh;
            st.affinities = fresh;
            st.affinities_rev = rev;
            st.affinities_synced = true;
            changed
        };
        if changed {
            self.notify();
        }
    }

    /// Records one affinity (created or updated).
    pub fn put_affinity(&self, affinity: Affinity, rev: Revision) {
        {
            let mut st = self.read();
            st.affinities_rev = rev;
            tracing::debug!(node = %affinity.node, block = %affinity.block, rev, "block affinity added");
            st.affinities
                .insert((affinity.node.clone(), affinity.block), affinity);
        }
        self.notify();
    }

    /// Forgets one affinity.
    pub fn delete_affinity(&self, node: &str, block: IpNet, rev: Revision) {
        {
            let mut st = self.read();
            st.affinities_rev = rev;
            tracing::debug!(node, %block, rev, "block affinity removed");
            st.affinities.remove(&(node.to_string(), block));
        }
        self.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aff(node: &str, block: &str) -> Affinity {
        Affinity {
            node: node.into(),
            block: block.parse().unwrap(),
            pool: "p".into(),
        }
    }

    #[test]
    fn changes_bump_the_generation_and_identical_relists_do_not() {
        let cache = Cache::new();
        let mut rx = cache.subscribe();
        assert!(!cache.read().in_sync());
        cache.replace_affinities(vec![aff("n1", "10.0.0.0/26")], 5);
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        cache.replace_resources(Vec::new(), 5);
        assert!(cache.read().in_sync());
        rx.mark_unchanged();
        // The same list again (a resync that found nothing new) wakes no one.
        cache.replace_affinities(vec![aff("n1", "10.0.0.0/26")], 7);
        assert!(!rx.has_changed().unwrap());
        assert_eq!(cache.read().affinities_rev, 7);
        cache.put_affinity(aff("n2", "10.0.0.64/26"), 8);
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        cache.delete_affinity("n1", "10.0.0.0/26".parse().unwrap(), 9);
        assert!(rx.has_changed().unwrap());
        let st = cache.read();
        assert_eq!(st.affinities.len(), 1);
        assert!(
            st.affinities
                .contains_key(&("n2".to_string(), "10.0.0.64/26".parse().unwrap()))
        );
    }
}
