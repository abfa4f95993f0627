//! The shared IPAM scenarios (`tests/scenarios`) on the in-memory test store. The same
//! scenarios run on the real sqlite and etcd backends in the integration tests.

use std::sync::Arc;

use serval_store::Datastore;

use crate::memstore::MemStore;

#[expect(
    dead_code,
    reason = "agent_watch needs watches, which the MemStore lacks"
)]
#[path = "../tests/scenarios/mod.rs"]
mod scenarios;

use scenarios::Opener;

/// A fresh in-memory store; every "connection" shares it.
fn mem() -> Opener {
    let store: Arc<dyn Datastore> = Arc::new(MemStore::default());
    Arc::new(move || {
        let store = store.clone();
        Box::pin(async move { Ok(store) })
    })
}

#[tokio::test]
async fn allocate_and_release() -> anyhow::Result<()> {
    scenarios::allocate_and_release(mem()).await
}

#[tokio::test]
async fn idempotent_readd() -> anyhow::Result<()> {
    scenarios::idempotent_readd(mem()).await
}

#[tokio::test]
async fn exhaustion_names_the_pool() -> anyhow::Result<()> {
    scenarios::exhaustion_names_the_pool(mem()).await
}

#[tokio::test]
async fn dual_stack_all_or_nothing() -> anyhow::Result<()> {
    scenarios::dual_stack_all_or_nothing(mem()).await
}

#[tokio::test]
async fn block_claim_across_nodes() -> anyhow::Result<()> {
    scenarios::block_claim_across_nodes(mem()).await
}

#[tokio::test]
async fn report_numbers() -> anyhow::Result<()> {
    scenarios::report_numbers(mem()).await
}

#[tokio::test]
async fn leak_check() -> anyhow::Result<()> {
    scenarios::leak_check(mem()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_adds_and_dels() -> anyhow::Result<()> {
    scenarios::concurrent_adds_and_dels(mem(), 200, 3).await
}

#[tokio::test]
async fn odd_records() -> anyhow::Result<()> {
    scenarios::odd_records(mem()).await
}
