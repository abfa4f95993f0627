//! Writers do not checkpoint the sqlite WAL after their commits (below a large backstop); a
//! store with a watch does, once the store is quiet, and restarts the WAL itself. This checks
//! that the WAL's contents reach the database file while a watch is open (the WAL cannot grow
//! without bound in a cluster whose agent watches), with inotify wake-ups and with the polling
//! fallback, and that everything written is still there and was seen in order. It waits for the
//! checkpoint with a generous failure timeout; no duration is asserted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use serval_store::testing::SqliteFile;
use serval_store::{Datastore, TxnOp};

#[tokio::test]
async fn a_watched_store_checkpoints_the_wal_when_quiet() -> Result<()> {
    let file = SqliteFile::new()?;
    checkpoints_when_quiet(&file, file.open().await?).await
}

/// The same when the watch polls instead of being woken (no inotify).
#[tokio::test]
async fn a_polling_store_checkpoints_the_wal_when_quiet() -> Result<()> {
    let file = SqliteFile::new()?;
    checkpoints_when_quiet(&file, file.open_polling().await?).await
}

async fn checkpoints_when_quiet(file: &SqliteFile, store: Arc<dyn Datastore>) -> Result<()> {
    // About 8 MiB of values: twice the size above which the quiet checkpoint runs.
    let value = vec![b'x'; 4096];
    let mut last = 0;
    for batch in 0..20 {
        let ops = (0..50)
            .map(|i| TxnOp::Put {
                key: format!("/c/{batch:02}/{i:02}"),
                value: value.clone(),
            })
            .collect();
        last = store.txn(ops).await?;
    }
    let db_before = std::fs::metadata(file.path())?.len();
    ensure!(
        db_before < 1 << 20,
        "the writes were checkpointed by the writer ({db_before} bytes in the database file)"
    );
    // The watch (and with it the store's poller) starts only now: a poller running during the
    // writes would checkpoint in any pause of a second between two of them (a loaded machine),
    // and the check above would blame the writer. The poller sees the writes as a change and
    // checkpoints once the store has been quiet for a second after that.
    let mut w = store.watch("/c/", 0).await?;
    // Checkpointed into the database file, and the WAL restarted and truncated back by the
    // poller's small write (so that the next writer does not pay for it).
    let wal = file.dir().join("store.db-wal");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let db = std::fs::metadata(file.path())?.len();
        let wal_len = std::fs::metadata(&wal)?.len();
        if db >= 4 << 20 && wal_len <= 4 << 20 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the WAL was not checkpointed and restarted (database {db} bytes, WAL {wal_len})"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // That write made no revision.
    ensure!(
        store.revision().await? == last,
        "the checkpoint moved the revision"
    );
    let mut seen = 0;
    while seen < 1000 {
        match tokio::time::timeout(Duration::from_secs(20), w.next()).await {
            Ok(Some(Ok(e))) => {
                ensure!(
                    e.kv.key == format!("/c/{:02}/{:02}", seen / 50, seen % 50),
                    "event {seen} out of order: {}",
                    e.kv.key
                );
                seen += 1;
            }
            other => bail!("watch ended or went quiet after {seen} events: {other:?}"),
        }
    }
    let (kvs, rev) = store.list("/c/").await?;
    ensure!(
        kvs.len() == 1000 && rev == last,
        "{} keys at {rev}",
        kvs.len()
    );
    Ok(())
}
