//! etcd-specific: watches survive an etcd restart (SIGKILL, then start on the same data dir and
//! ports) without losing or repeating events, and a watch that resumes from a compacted revision
//! is told to resync.

mod common;

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use common::{assert_quiet, next_event};
use serval_store::testing::EtcdServer;
use serval_store::{EventKind, StoreError};

/// Long enough for the watch stream to notice the dead server and start retrying.
const DOWN_FOR: Duration = Duration::from_millis(700);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_survives_an_etcd_restart() -> Result<()> {
    let mut server = EtcdServer::start().await?;
    let store = server.open().await?;
    let start = store.revision().await?;
    let mut w = store.watch("/r/", start).await?;

    // Delivered and consumed before the stop.
    let mut before = Vec::new();
    for i in 0..3 {
        before.push(store.create(&format!("/r/before/{i}"), vec![i]).await?);
    }
    for (i, rev) in before.iter().enumerate() {
        let e = next_event(&mut w).await?;
        ensure!(
            e.revision == *rev && e.kv.key == format!("/r/before/{i}"),
            "{e:?}"
        );
    }
    // Written before the stop, consumed only after the restart.
    let pending = store.create("/r/pending", b"p".to_vec()).await?;
    store.create("/r/counter", b"0".to_vec()).await?;

    server.stop().await?;
    tokio::time::sleep(DOWN_FOR).await;
    server.restart().await?;

    // The same store (its connections broke) keeps working after the restart.
    common::increment(&*store, "/r/counter", 3).await?;

    let e = next_event(&mut w).await?;
    ensure!(e.revision == pending && e.kv.key == "/r/pending", "{e:?}");
    let e = next_event(&mut w).await?;
    ensure!(e.kv.key == "/r/counter" && e.kv.value == b"0", "{e:?}");
    let mut last = e.revision;
    for want in 1..=3u8 {
        let e = next_event(&mut w).await?;
        ensure!(
            e.revision > last,
            "revision went from {last} to {}",
            e.revision
        );
        last = e.revision;
        ensure!(
            e.kind == EventKind::Put
                && e.kv.key == "/r/counter"
                && e.kv.value == want.to_string().as_bytes(),
            "increment {want}: {e:?}"
        );
    }
    assert_quiet(&mut w).await?;
    ensure!(store.revision().await? == last);

    // History survived the restart: a new watch from the start replays all of it.
    let mut replay = store.watch("/r/", start).await?;
    let mut count = 0;
    while count < 8 {
        next_event(&mut replay).await?;
        count += 1;
    }
    assert_quiet(&mut replay).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_started_while_etcd_is_down_resumes_from_its_revision() -> Result<()> {
    let mut server = EtcdServer::start().await?;
    let store = server.open().await?;
    let r1 = store.create("/d/1", b"1".to_vec()).await?;
    let r2 = store.create("/d/2", b"2".to_vec()).await?;
    let r3 = store.delete("/d/1", Some(r1)).await?;

    server.stop().await?;
    let mut w = store.watch("/d/", r1).await?;
    tokio::time::sleep(DOWN_FOR).await;
    server.restart().await?;
    let r4 = store.create("/d/3", b"3".to_vec()).await?;

    for (rev, key, kind) in [
        (r2, "/d/2", EventKind::Put),
        (r3, "/d/1", EventKind::Delete),
        (r4, "/d/3", EventKind::Put),
    ] {
        let e = next_event(&mut w).await?;
        ensure!(
            e.revision == rev && e.kv.key == key && e.kind == kind,
            "want {key}@{rev}: {e:?}"
        );
    }
    assert_quiet(&mut w).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resuming_from_a_compacted_revision_is_told_to_resync() -> Result<()> {
    let mut server = EtcdServer::start().await?;
    let store = server.open().await?;
    let r1 = store.create("/c/1", b"1".to_vec()).await?;
    let r2 = store.create("/c/2", b"2".to_vec()).await?;
    store.create("/c/3", b"3".to_vec()).await?;
    store.compact(r2).await?;

    server.stop().await?;
    let mut w = store.watch("/c/", r1).await?;
    tokio::time::sleep(DOWN_FOR).await;
    server.restart().await?;

    match tokio::time::timeout(common::WAIT, w.next()).await {
        Ok(Some(Err(StoreError::Compacted {
            requested,
            compacted,
        }))) => ensure!(
            requested == r1 + 1 && compacted == r2,
            "Compacted {{ requested: {requested}, compacted: {compacted} }}"
        ),
        other => bail!("expected Compacted, got {other:?}"),
    }
    match tokio::time::timeout(common::WAIT, w.next()).await {
        Ok(None) => Ok(()),
        other => bail!("the watch should end after Compacted, got {other:?}"),
    }
}
