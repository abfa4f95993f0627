//! The IPAM scenarios on the real sqlite backend. Every scenario gets its own store file;
//! every `Ipam` in a scenario opens its own connection (`serval_store::open`), so concurrent
//! allocators race through sqlite's locking exactly as separate CNI processes would.

mod scenarios;

use std::sync::Arc;

use scenarios::Opener;
use serval_store::testing::SqliteFile;

/// A fresh store file (kept alive by the returned guard) and an opener of new connections.
fn sqlite() -> (SqliteFile, Opener) {
    let file = SqliteFile::new().expect("temporary sqlite file");
    let url = file.url();
    let open: Opener = Arc::new(move || {
        let url = url.clone();
        Box::pin(async move { Ok(serval_store::open(&url).await?) })
    });
    (file, open)
}

#[tokio::test]
async fn allocate_and_release() -> anyhow::Result<()> {
    let (_file, open) = sqlite();
    scenarios::allocate_and_release(open).await
}

#[tokio::test]
async fn idempotent_readd() -> anyhow::Result<()> {
    let (_file, open) = sqlite();
    scenarios::idempotent_readd(open).await
}

#[tokio::test]
async fn exhaustion_names_the_pool() -> anyhow::Result<()> {
    let (_file, open) = sqlite();
    scenarios::exhaustion_names_the_pool(open).await
}

#[tokio::test]
async fn dual_stack_all_or_nothing() -> anyhow::Result<()> {
    let (_file, open) = sqlite();
    scenarios::dual_stack_all_or_nothing(open).await
}

#[tokio::test]
async fn block_claim_across_nodes() -> anyhow::Result<()> {
    let (_file, open) = sqlite();
    scenarios::block_claim_across_nodes(open).await
}

#[tokio::test]
async fn report_numbers() -> anyhow::Result<()> {
    let (_file, open) = sqlite();
    scenarios::report_numbers(open).await
}

#[tokio::test]
async fn leak_check() -> anyhow::Result<()> {
    let (_file, open) = sqlite();
    scenarios::leak_check(open).await
}

/// The test: 200 concurrent ADDs across 3 nodes, each on its own sqlite connection,
/// then every DEL in parallel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_adds_and_dels() -> anyhow::Result<()> {
    let (_file, open) = sqlite();
    scenarios::concurrent_adds_and_dels(open, 200, 3).await
}

#[tokio::test]
async fn agent_watch() -> anyhow::Result<()> {
    let (_file, open) = sqlite();
    scenarios::agent_watch(open).await
}

#[tokio::test]
async fn odd_records() -> anyhow::Result<()> {
    let (_file, open) = sqlite();
    scenarios::odd_records(open).await
}
