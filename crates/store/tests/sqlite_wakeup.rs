//! A sqlite watch learns of another connection's commits from the cross-process wake-up
//! (inotify on the database's directory, `serval_store::sqlite` module docs), not from its
//! timer: the watching store is opened with a safety poll of an hour
//! ([`SqliteFile::open_woken_only`]), so a watch that sees the writes within the test's
//! failure timeout was woken by them. Nothing here measures or asserts a duration.

#[expect(
    dead_code,
    reason = "the shared helpers include `increment`, which this file does not use"
)]
mod common;

use anyhow::{Result, ensure};
use common::{assert_quiet, next_event};
use serval_store::testing::SqliteFile;
use serval_store::{EventKind, TxnOp};

#[tokio::test]
async fn another_connections_writes_wake_the_watch_in_order() -> Result<()> {
    let file = SqliteFile::new()?;
    let watcher = file.open_woken_only().await?;
    // A separate store: its own connections, as another process would have.
    let writer = file.open_woken_only().await?;
    let start = watcher.revision().await?;
    let mut w = watcher.watch("/w/", start).await?;
    // Let the watch task and the poller settle into waiting, so that the writes below arrive
    // while they sleep (not a timing assertion: a longer or shorter pause changes nothing).
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;

    // Some writes land on a sleeping poller (their events are awaited before the next write),
    // others queue behind one still being read.
    let mut revisions = Vec::new();
    let mut next = 0;
    for i in 0..20usize {
        revisions.push(writer.create(&format!("/w/{i:02}"), vec![i as u8]).await?);
        if i % 3 != 1 || i == 19 {
            while next <= i {
                let e = next_event(&mut w).await?;
                ensure!(
                    e.kv.key == format!("/w/{next:02}") && e.revision == revisions[next],
                    "write {next}: got {e:?}"
                );
                next += 1;
            }
        }
    }
    ensure!(next == 20, "every write seen");
    // A multi-key transaction and a delete, both from the other store.
    let txn_rev = writer
        .txn(vec![
            TxnOp::Put {
                key: "/w/t1".into(),
                value: b"a".to_vec(),
            },
            TxnOp::Put {
                key: "/w/t2".into(),
                value: b"b".to_vec(),
            },
        ])
        .await?;
    let del_rev = writer.delete("/w/00", None).await?;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next_event(&mut w).await?);
    }
    ensure!(
        seen[0].kv.key == "/w/t1" && seen[1].kv.key == "/w/t2",
        "transaction keys out of order: {:?}, {:?}",
        seen[0],
        seen[1]
    );
    ensure!(seen[0].revision == txn_rev && seen[1].revision == txn_rev);
    ensure!(
        seen[2].kind == EventKind::Delete
            && seen[2].kv.key == "/w/00"
            && seen[2].revision == del_rev,
        "delete: got {:?}",
        seen[2]
    );
    assert_quiet(&mut w).await?;
    Ok(())
}

#[tokio::test]
async fn a_watch_resumed_from_a_revision_is_woken_by_later_writes() -> Result<()> {
    let file = SqliteFile::new()?;
    let writer = file.open_woken_only().await?;
    let r1 = writer.create("/r/a", b"1".to_vec()).await?;
    let r2 = writer.create("/r/b", b"2".to_vec()).await?;
    let watcher = file.open_woken_only().await?;
    // History after r1 is replayed from the log, the next write arrives by wake-up.
    let mut w = watcher.watch("/r/", r1).await?;
    let e = next_event(&mut w).await?;
    ensure!(e.kv.key == "/r/b" && e.revision == r2, "replay: got {e:?}");
    let r3 = writer.create("/r/c", b"3".to_vec()).await?;
    let e = next_event(&mut w).await?;
    ensure!(e.kv.key == "/r/c" && e.revision == r3, "woken: got {e:?}");
    assert_quiet(&mut w).await?;
    Ok(())
}

/// The fallback without inotify (`SqliteOptions::wakeups = false`): the same writes arrive by
/// polling, in order.
#[tokio::test]
async fn without_wakeups_the_watch_polls() -> Result<()> {
    let file = SqliteFile::new()?;
    let watcher = file.open_polling().await?;
    let writer = file.open_woken_only().await?;
    let mut w = watcher.watch("/p/", 0).await?;
    let mut revisions = Vec::new();
    for i in 0..10u8 {
        revisions.push(writer.create(&format!("/p/{i}"), vec![i]).await?);
    }
    for (i, rev) in revisions.iter().enumerate() {
        let e = next_event(&mut w).await?;
        ensure!(
            e.kv.key == format!("/p/{i}") && e.revision == *rev,
            "polled event {i}: got {e:?}"
        );
    }
    assert_quiet(&mut w).await?;
    Ok(())
}
