//! The agent's in-memory view of the datastore: every resource by key and every IPAM block
//! affinity, as the syncer last saw them. Each change bumps a generation number that the
//! calculators ([`crate::routing`], [`crate::runtime`]) wait on; they then read a consistent
//! snapshot under the lock and compute their desired state from it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::IpNet;
use serval_api::ResourceEvent;
use serval_ipam::Affinity;
use serval_model::{Kind, Resource, ResourceKey};
use serval_store::Revision;
use tokio::sync::{mpsc, watch};

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

/// One change to the resource half of the cache, in the order the syncer applied them.
/// Calculators that keep their own incremental model (the policy calculation's
/// `serval_calc::Model`) follow these instead of re-reading the whole cache.
#[derive(Debug, Clone, PartialEq)]
pub enum ResourceChange {
    /// Every resource was (re)listed: the receiver replaces its model with these. The first
    /// event a subscriber sees once the cache has listed resources.
    Replaced(Vec<Resource>),
    /// One resource was created or updated.
    Applied(Box<Resource>),
    /// One resource was deleted.
    Deleted(ResourceKey),
    /// The IPAM blocks changed: every block with its affine node's name, after the change
    /// (sent once the affinities are listed, then on every change to them).
    Blocks(BTreeMap<IpNet, String>),
}

/// Every block of `st` with its affine node's name.
fn blocks_of(st: &State) -> BTreeMap<IpNet, String> {
    st.affinities
        .values()
        .map(|a| (a.block, a.node.clone()))
        .collect()
}

/// The kinds only the policy/service calculation reads (through [`Cache::follow_resources`]);
/// the agent's cache passes them on without keeping a copy ([`Cache::with_follower_only`]).
/// The routing, BGP and pod-runtime loops read Nodes, IPPools, BGP resources, Pods and
/// WorkloadEndpoints from the cache's state.
pub const FOLLOWER_ONLY_KINDS: &[Kind] = &[
    Kind::Namespace,
    Kind::Service,
    Kind::EndpointSlice,
    Kind::K8sNetworkPolicy,
    Kind::NetworkPolicy,
    Kind::GlobalNetworkPolicy,
    Kind::Tier,
    Kind::HostEndpoint,
    Kind::FelixConfiguration,
];

/// One subscriber of [`ResourceChange`]s: every change, or only those of some kinds
/// ([`Cache::follow_kinds`]).
#[derive(Debug)]
struct Follower {
    tx: mpsc::UnboundedSender<ResourceChange>,
    kinds: Option<BTreeSet<Kind>>,
}

impl Follower {
    /// `change` as this follower sees it, when it sees it: a kind filter drops other kinds
    /// (a relist keeps only its kinds; IPAM blocks always pass).
    fn view(&self, change: &ResourceChange) -> Option<ResourceChange> {
        let Some(kinds) = &self.kinds else {
            return Some(change.clone());
        };
        match change {
            ResourceChange::Replaced(all) => Some(ResourceChange::Replaced(
                all.iter()
                    .filter(|r| kinds.contains(&r.kind()))
                    .cloned()
                    .collect(),
            )),
            ResourceChange::Applied(r) => kinds.contains(&r.kind()).then(|| change.clone()),
            ResourceChange::Deleted(k) => kinds.contains(&k.kind).then(|| change.clone()),
            ResourceChange::Blocks(_) => Some(change.clone()),
        }
    }
}

/// The shared cache: state under a mutex plus a change counter.
#[derive(Debug, Clone)]
pub struct Cache {
    state: Arc<Mutex<State>>,
    changed: Arc<watch::Sender<u64>>,
    /// Subscribers of [`ResourceChange`]s (closed ones are dropped on the next send).
    followers: Arc<Mutex<Vec<Follower>>>,
    /// Kinds passed to followers but not kept in [`State::resources`].
    follower_only: Arc<BTreeSet<Kind>>,
}

impl Default for Cache {
    fn default() -> Self {
        Self::new()
    }
}

impl Cache {
    /// A cache that keeps every resource.
    pub fn new() -> Cache {
        Cache::with_follower_only(&[])
    }

    /// A cache that passes resources of `kinds` to its followers only: they are not kept in
    /// [`State::resources`] (one copy fewer of every Service and policy), and their changes do
    /// not wake [`Cache::subscribe`]rs. Followers must subscribe before the first list
    /// ([`Cache::follow_resources`] can only replay what is kept).
    pub fn with_follower_only(kinds: &[Kind]) -> Cache {
        let (tx, _rx) = watch::channel(0);
        Cache {
            state: Arc::new(Mutex::new(State::default())),
            changed: Arc::new(tx),
            followers: Arc::new(Mutex::new(Vec::new())),
            follower_only: Arc::new(kinds.iter().copied().collect()),
        }
    }

    fn keeps(&self, kind: Kind) -> bool {
        !self.follower_only.contains(&kind)
    }

    /// A stream of every resource change from now on. When resources have been listed
    /// already, it starts with a [`ResourceChange::Replaced`] holding the current ones (those
    /// the cache keeps), so no change falls between the snapshot and the stream.
    pub fn follow_resources(&self) -> mpsc::UnboundedReceiver<ResourceChange> {
        self.follow(None)
    }

    /// [`Cache::follow_resources`] restricted to resources of `kinds` (and the IPAM blocks):
    /// other kinds are neither copied nor sent to this follower.
    pub fn follow_kinds(&self, kinds: &[Kind]) -> mpsc::UnboundedReceiver<ResourceChange> {
        self.follow(Some(kinds.iter().copied().collect()))
    }

    fn follow(&self, kinds: Option<BTreeSet<Kind>>) -> mpsc::UnboundedReceiver<ResourceChange> {
        let (tx, rx) = mpsc::unbounded_channel();
        let follower = Follower { tx, kinds };
        // Lock order: state, then followers (as in `publish`).
        let st = self.read();
        if st.resources_synced {
            let all = ResourceChange::Replaced(st.resources.values().cloned().collect());
            if let Some(c) = follower.view(&all) {
                let _ = follower.tx.send(c);
            }
        }
        if st.affinities_synced {
            let _ = follower.tx.send(ResourceChange::Blocks(blocks_of(&st)));
        }
        self.followers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(follower);
        drop(st);
        rx
    }

    /// Sends `change` to every follower. Called with the state lock held, so followers see
    /// changes in the order they were applied.
    fn publish(&self, change: impl FnOnce() -> ResourceChange) {
        let mut followers = self.followers.lock().unwrap_or_else(|p| p.into_inner());
        followers.retain(|f| !f.tx.is_closed());
        if followers.is_empty() {
            return;
        }
        let change = change();
        for f in followers.iter().filter(|f| f.kinds.is_some()) {
            if let Some(c) = f.view(&change) {
                let _ = f.tx.send(c);
            }
        }
        // Followers of everything: copies for all but the last, which gets `change` itself.
        let all: Vec<&Follower> = followers.iter().filter(|f| f.kinds.is_none()).collect();
        if let Some((last, rest)) = all.split_last() {
            for f in rest {
                let _ = f.tx.send(change.clone());
            }
            let _ = last.tx.send(change);
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
        let mut fresh: BTreeMap<ResourceKey, Resource> = BTreeMap::new();
        let mut passed_on = Vec::new();
        for r in items {
            if self.keeps(r.kind()) {
                fresh.insert(r.key(), r);
            } else {
                passed_on.push(r);
            }
        }
        let changed = {
            let mut st = self.read();
            let changed = !st.resources_synced || st.resources != fresh;
            if changed {
                tracing::debug!(count = fresh.len(), rev, "resources listed");
            }
            // Followers compare with what they hold; kinds the cache does not keep cannot be
            // compared here, so a relist always reaches them then.
            if changed || !passed_on.is_empty() || !self.follower_only.is_empty() {
                self.publish(|| {
                    passed_on.extend(fresh.values().cloned());
                    ResourceChange::Replaced(passed_on)
                });
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
        let kept = {
            let mut st = self.read();
            st.resources_rev = rev;
            match event {
                ResourceEvent::Applied(r) => {
                    tracing::trace!(key = %r.key(), rev, "resource applied");
                    if self.keeps(r.kind()) {
                        self.publish(|| ResourceChange::Applied(Box::new(r.clone())));
                        st.resources.insert(r.key(), r);
                        true
                    } else {
                        self.publish(|| ResourceChange::Applied(Box::new(r)));
                        false
                    }
                }
                ResourceEvent::Deleted { key, .. } => {
                    tracing::trace!(%key, rev, "resource deleted");
                    let kept = self.keeps(key.kind);
                    if kept {
                        st.resources.remove(&key);
                    }
                    self.publish(|| ResourceChange::Deleted(key));
                    kept
                }
            }
        };
        if kept {
            self.notify();
        }
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
            if changed {
                self.publish(|| ResourceChange::Blocks(blocks_of(&st)));
            }
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
            self.publish(|| ResourceChange::Blocks(blocks_of(&st)));
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
            self.publish(|| ResourceChange::Blocks(blocks_of(&st)));
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

    fn ns(name: &str) -> Resource {
        Resource::Namespace(serval_model::k8s::Namespace::new(name))
    }

    #[test]
    fn followers_see_the_blocks_after_every_affinity_change() {
        let cache = Cache::new();
        let mut early = cache.follow_resources();
        let blocks = |v: &[(&str, &str)]| {
            ResourceChange::Blocks(
                v.iter()
                    .map(|(b, n)| (b.parse().unwrap(), n.to_string()))
                    .collect(),
            )
        };
        cache.replace_affinities(vec![aff("n1", "10.0.0.0/26")], 1);
        // An identical relist sends nothing.
        cache.replace_affinities(vec![aff("n1", "10.0.0.0/26")], 2);
        cache.put_affinity(aff("n2", "fd00::/122"), 3);
        let mut late = cache.follow_resources();
        cache.delete_affinity("n1", "10.0.0.0/26".parse().unwrap(), 4);
        assert_eq!(early.try_recv().unwrap(), blocks(&[("10.0.0.0/26", "n1")]));
        assert_eq!(
            early.try_recv().unwrap(),
            blocks(&[("10.0.0.0/26", "n1"), ("fd00::/122", "n2")])
        );
        assert_eq!(early.try_recv().unwrap(), blocks(&[("fd00::/122", "n2")]));
        assert!(early.try_recv().is_err());
        // A late follower starts from the current blocks.
        assert_eq!(
            late.try_recv().unwrap(),
            blocks(&[("10.0.0.0/26", "n1"), ("fd00::/122", "n2")])
        );
        assert_eq!(late.try_recv().unwrap(), blocks(&[("fd00::/122", "n2")]));
    }

    #[test]
    fn followers_see_a_snapshot_then_every_change_in_order() {
        let cache = Cache::new();
        let mut early = cache.follow_resources();
        // Nothing before the first list.
        assert!(early.try_recv().is_err());
        cache.replace_resources(vec![ns("a")], 1);
        cache.apply_resource(ResourceEvent::Applied(ns("b")), 2);
        let mut late = cache.follow_resources();
        let key = ns("a").key();
        cache.apply_resource(
            ResourceEvent::Deleted {
                key: key.clone(),
                last: None,
            },
            3,
        );
        assert_eq!(
            early.try_recv().unwrap(),
            ResourceChange::Replaced(vec![ns("a")])
        );
        assert_eq!(
            early.try_recv().unwrap(),
            ResourceChange::Applied(Box::new(ns("b")))
        );
        assert_eq!(
            early.try_recv().unwrap(),
            ResourceChange::Deleted(key.clone())
        );
        // A late follower starts from the current resources.
        assert_eq!(
            late.try_recv().unwrap(),
            ResourceChange::Replaced(vec![ns("a"), ns("b")])
        );
        assert_eq!(late.try_recv().unwrap(), ResourceChange::Deleted(key));
        assert!(late.try_recv().is_err());
        // Dropped followers are forgotten.
        drop(early);
        cache.apply_resource(ResourceEvent::Applied(ns("c")), 4);
        assert_eq!(cache.followers.lock().unwrap().len(), 1);
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

    #[test]
    fn follower_only_kinds_reach_followers_but_are_not_kept() {
        let cache = Cache::with_follower_only(&[Kind::Namespace]);
        let mut follower = cache.follow_resources();
        let mut rx = cache.subscribe();
        let node = Resource::Node(serval_model::calico::Node {
            metadata: serval_model::ObjectMeta::named("n1"),
            ..Default::default()
        });
        cache.replace_resources(vec![ns("a"), node.clone()], 1);
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        match follower.try_recv().unwrap() {
            ResourceChange::Replaced(all) => {
                assert_eq!(all.len(), 2);
                assert!(all.contains(&ns("a")) && all.contains(&node));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(cache.read().resources.len(), 1, "only the node is kept");
        // A namespace change goes to the follower, is not kept and wakes no one.
        cache.apply_resource(ResourceEvent::Applied(ns("b")), 2);
        assert_eq!(
            follower.try_recv().unwrap(),
            ResourceChange::Applied(Box::new(ns("b")))
        );
        assert!(!rx.has_changed().unwrap());
        assert_eq!(cache.read().resources.len(), 1);
        assert_eq!(cache.read().resources_rev, 2);
        cache.apply_resource(
            ResourceEvent::Deleted {
                key: ns("b").key(),
                last: None,
            },
            3,
        );
        assert_eq!(
            follower.try_recv().unwrap(),
            ResourceChange::Deleted(ns("b").key())
        );
        assert!(!rx.has_changed().unwrap());
        // A relist always reaches followers (they compare), even when the kept part is equal.
        cache.replace_resources(vec![ns("a"), node], 4);
        assert!(matches!(
            follower.try_recv().unwrap(),
            ResourceChange::Replaced(_)
        ));
        assert!(!rx.has_changed().unwrap());
    }

    #[test]
    fn kind_followers_see_only_their_kinds() {
        let cache = Cache::with_follower_only(&[Kind::Namespace]);
        let mut all = cache.follow_resources();
        let mut nodes_only = cache.follow_kinds(&[Kind::Node]);
        let node = |n: &str| {
            Resource::Node(serval_model::calico::Node {
                metadata: serval_model::ObjectMeta::named(n),
                ..Default::default()
            })
        };
        cache.replace_resources(vec![ns("a"), node("n1")], 1);
        cache.apply_resource(ResourceEvent::Applied(ns("b")), 2);
        cache.apply_resource(ResourceEvent::Applied(node("n2")), 3);
        cache.apply_resource(
            ResourceEvent::Deleted {
                key: ns("a").key(),
                last: None,
            },
            4,
        );
        cache.put_affinity(aff("n1", "10.0.0.0/26"), 5);
        let mut seen = Vec::new();
        while let Ok(c) = nodes_only.try_recv() {
            seen.push(match c {
                ResourceChange::Replaced(v) => {
                    format!(
                        "replaced {:?}",
                        v.iter().map(|r| r.key().name).collect::<Vec<_>>()
                    )
                }
                ResourceChange::Applied(r) => format!("applied {}", r.key().name),
                ResourceChange::Deleted(k) => format!("deleted {}", k.name),
                ResourceChange::Blocks(b) => format!("blocks {}", b.len()),
            });
        }
        assert_eq!(seen, ["replaced [\"n1\"]", "applied n2", "blocks 1"]);
        // The follower of everything still sees everything.
        let mut n = 0;
        while all.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, 5);
        // A late kind follower starts from the kept resources of its kinds.
        let mut late = cache.follow_kinds(&[Kind::Node]);
        match late.try_recv().unwrap() {
            ResourceChange::Replaced(v) => assert_eq!(v.len(), 2),
            other => panic!("{other:?}"),
        }
    }
}
