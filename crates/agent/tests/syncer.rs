//! The syncer against a real sqlite datastore wrapped in a fault injector: it fills the cache
//! from the initial lists, follows resource and IPAM-affinity changes through the watches,
//! relists after a compacted watch start, and retries a failing list with backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use async_trait::async_trait;
use serval_agent::cache::Cache;
use serval_api::{ApplyMode, Client};
use serval_ipam::{AllocationAttrs, AssignRequest, Ipam, PoolSpec};
use serval_model::calico::{IPPool, Node};
use serval_model::{Kind, ObjectMeta, Resource, ResourceKey};
use serval_store::testing::SqliteFile;
use serval_store::{Datastore, KeyValue, Revision, StoreError, TxnOp, Watch};

/// A datastore that fails the first `fail_lists` lists and answers the first `compact_watches`
/// watches with `Compacted`, then behaves.
#[derive(Debug)]
struct Faulty {
    inner: Arc<dyn Datastore>,
    fail_lists: AtomicUsize,
    compact_watches: AtomicUsize,
    lists: AtomicUsize,
}

fn take(n: &AtomicUsize) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}

#[async_trait]
impl Datastore for Faulty {
    async fn get(&self, key: &str) -> serval_store::Result<Option<KeyValue>> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> serval_store::Result<(Vec<KeyValue>, Revision)> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        if take(&self.fail_lists) {
            return Err(StoreError::WatchClosed {
                reason: "injected list failure".into(),
            });
        }
        self.inner.list(prefix).await
    }
    async fn create(&self, key: &str, value: Vec<u8>) -> serval_store::Result<Revision> {
        self.inner.create(key, value).await
    }
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> serval_store::Result<Revision> {
        self.inner.update(key, value, expected).await
    }
    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> serval_store::Result<Revision> {
        self.inner.delete(key, expected).await
    }
    async fn txn(&self, ops: Vec<TxnOp>) -> serval_store::Result<Revision> {
        self.inner.txn(ops).await
    }
    async fn watch(&self, prefix: &str, after: Revision) -> serval_store::Result<Watch> {
        if take(&self.compact_watches) {
            return Err(StoreError::Compacted {
                requested: after,
                compacted: after + 1,
            });
        }
        self.inner.watch(prefix, after).await
    }
    async fn revision(&self) -> serval_store::Result<Revision> {
        self.inner.revision().await
    }
    async fn compact(&self, revision: Revision) -> serval_store::Result<()> {
        self.inner.compact(revision).await
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if check() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("gave up waiting for {what}")
}

fn node(name: &str) -> Resource {
    Resource::Node(Node {
        metadata: ObjectMeta::named(name),
        spec: Default::default(),
    })
}

#[tokio::test]
async fn syncer_lists_follows_watches_and_recovers_from_compaction_and_errors() -> Result<()> {
    let file = SqliteFile::new()?;
    let real = file.open().await?;
    let writer = Client::new(Arc::clone(&real));
    writer
        .apply(
            vec![
                node("node1"),
                Resource::IPPool(IPPool::new("pool", "10.244.0.0/16".parse()?)),
            ],
            ApplyMode::Apply,
        )
        .await?;

    // Both halves: one failed list each, then one compacted watch each.
    let faulty = Arc::new(Faulty {
        inner: Arc::clone(&real),
        fail_lists: AtomicUsize::new(2),
        compact_watches: AtomicUsize::new(2),
        lists: AtomicUsize::new(0),
    });
    let cache = Cache::new();
    let task = tokio::spawn(serval_agent::syncer::run(
        Client::new(faulty.clone()),
        cache.clone(),
    ));

    eventually("the initial sync", || cache.read().in_sync()).await?;
    let has = |c: &Cache, key: &ResourceKey| c.read().resources.contains_key(key);
    let node1 = ResourceKey::new(Kind::Node, None, "node1");
    assert!(has(&cache, &node1));
    assert!(has(&cache, &ResourceKey::new(Kind::IPPool, None, "pool")));

    // Changes after the (re)list arrive through the watches.
    writer.apply(vec![node("node2")], ApplyMode::Apply).await?;
    let node2 = ResourceKey::new(Kind::Node, None, "node2");
    eventually("node2 through the watch", || has(&cache, &node2)).await?;
    writer.delete(std::slice::from_ref(&node1), false).await?;
    eventually("node1's deletion through the watch", || {
        !has(&cache, &node1)
    })
    .await?;

    let ipam = Ipam::new(Arc::clone(&real));
    let addrs = ipam
        .auto_assign(AssignRequest {
            handle: "h1".into(),
            node: "node2".into(),
            attrs: AllocationAttrs {
                node: "node2".into(),
                ..Default::default()
            },
            v4_pools: vec![PoolSpec::new("pool", "10.244.0.0/16".parse()?, 26)],
            v6_pools: vec![],
            want_v4: true,
            want_v6: false,
        })
        .await?;
    let block = ipnet::IpNet::new(addrs[0], 26)?.trunc();
    eventually("node2's block affinity", || {
        cache
            .read()
            .affinities
            .contains_key(&("node2".to_string(), block))
    })
    .await?;

    // Every injected fault was hit: 2 failed lists + 2 relists after compaction + 2 good.
    assert!(
        faulty.lists.load(Ordering::SeqCst) >= 6,
        "lists: {}",
        faulty.lists.load(Ordering::SeqCst)
    );
    assert_eq!(faulty.fail_lists.load(Ordering::SeqCst), 0);
    assert_eq!(faulty.compact_watches.load(Ordering::SeqCst), 0);
    task.abort();
    Ok(())
}
