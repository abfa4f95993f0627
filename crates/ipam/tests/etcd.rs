//! The IPAM scenarios on a real etcd server (Debian `etcd-server`, started by
//! `serval_store::testing::EtcdServer` on free loopback ports and removed on drop). Every
//! `Ipam` opens its own etcd client connection.

mod scenarios;

use std::sync::Arc;

use anyhow::Context;
use scenarios::Opener;
use serval_ipam::IPAM_PREFIX;
use serval_store::testing::EtcdServer;

fn opener(url: String) -> Opener {
    Arc::new(move || {
        let url = url.clone();
        Box::pin(async move { Ok(serval_store::open(&url).await?) })
    })
}

/// Deletes every IPAM record, so the next scenario starts from an empty store.
async fn wipe(open: &Opener) -> anyhow::Result<()> {
    let store = open().await?;
    let (kvs, _) = store.list(IPAM_PREFIX).await?;
    for kv in kvs {
        store.delete(&kv.key, None).await?;
    }
    Ok(())
}

/// Every functional scenario, one after the other on one server (one etcd per scenario would
/// be heavy on a small machine).
#[tokio::test]
async fn scenarios_on_etcd() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let open = opener(etcd.url());
    wipe(&open).await?;
    scenarios::allocate_and_release(open.clone())
        .await
        .context("allocate_and_release")?;
    wipe(&open).await?;
    scenarios::idempotent_readd(open.clone())
        .await
        .context("idempotent_readd")?;
    wipe(&open).await?;
    scenarios::exhaustion_names_the_pool(open.clone())
        .await
        .context("exhaustion_names_the_pool")?;
    wipe(&open).await?;
    scenarios::dual_stack_all_or_nothing(open.clone())
        .await
        .context("dual_stack_all_or_nothing")?;
    wipe(&open).await?;
    scenarios::block_claim_across_nodes(open.clone())
        .await
        .context("block_claim_across_nodes")?;
    wipe(&open).await?;
    scenarios::report_numbers(open.clone())
        .await
        .context("report_numbers")?;
    wipe(&open).await?;
    scenarios::leak_check(open.clone())
        .await
        .context("leak_check")?;
    wipe(&open).await?;
    scenarios::agent_watch(open.clone())
        .await
        .context("agent_watch")?;
    wipe(&open).await?;
    scenarios::odd_records(open.clone())
        .await
        .context("odd_records")?;
    Ok(())
}

/// The test on etcd: 200 concurrent ADDs across 3 nodes, each with its own etcd
/// client, then every DEL in parallel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_adds_and_dels_on_etcd() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    scenarios::concurrent_adds_and_dels(opener(etcd.url()), 200, 3).await
}
