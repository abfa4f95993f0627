//! One conformance suite for every [`Datastore`] backend: each case below runs against a fresh
//! sqlite file, a fresh sqlite file in the layout earlier versions created (rowid tables) and a
//! fresh real etcd server (`suite!` at the bottom).

mod common;

use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use common::{assert_quiet, next_event};
use serval_store::testing::{EtcdServer, SqliteFile};
use serval_store::{Datastore, EventKind, Revision, StoreError, TxnOp};

/// A store plus whatever keeps it alive (temp file, etcd process).
struct Fixture {
    store: Arc<dyn Datastore>,
    _guard: Box<dyn std::any::Any + Send>,
}

async fn sqlite() -> Result<Fixture> {
    let file = SqliteFile::new()?;
    let store = file.open().await?;
    Ok(Fixture {
        store,
        _guard: Box::new(file),
    })
}

/// A sqlite file in the layout an earlier version created (rowid tables, 4 KiB pages).
async fn sqlite_rowid() -> Result<Fixture> {
    let file = SqliteFile::with_rowid_layout()?;
    let store = file.open().await?;
    Ok(Fixture {
        store,
        _guard: Box::new(file),
    })
}

async fn etcd() -> Result<Fixture> {
    let server = EtcdServer::start().await?;
    let store = server.open().await?;
    Ok(Fixture {
        store,
        _guard: Box::new(server),
    })
}

fn put(key: &str, value: &str) -> TxnOp {
    TxnOp::Put {
        key: key.into(),
        value: value.into(),
    }
}

async fn value_of(store: &dyn Datastore, key: &str) -> Result<Option<String>> {
    Ok(store
        .get(key)
        .await?
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
}

mod cases {
    use super::*;

    pub async fn get_and_create(store: Arc<dyn Datastore>) -> Result<()> {
        ensure!(store.get("/t/a").await?.is_none(), "empty store has /t/a");
        let r1 = store.create("/t/a", b"one".to_vec()).await?;
        let kv = store
            .get("/t/a")
            .await?
            .context("/t/a missing after create")?;
        ensure!(kv.key == "/t/a" && kv.value == b"one", "bad kv {kv:?}");
        ensure!(
            kv.create_revision == r1 && kv.mod_revision == r1,
            "revisions {kv:?} vs {r1}"
        );
        ensure!(
            store.revision().await? == r1,
            "store revision is not the create's"
        );
        match store.create("/t/a", b"two".to_vec()).await {
            Err(StoreError::AlreadyExists { key }) => ensure!(key == "/t/a"),
            other => bail!("second create: expected AlreadyExists, got {other:?}"),
        }
        ensure!(value_of(&*store, "/t/a").await?.as_deref() == Some("one"));
        ensure!(
            store.revision().await? == r1,
            "a failed create moved the revision"
        );
        let r2 = store.create("/t/b", b"".to_vec()).await?;
        ensure!(r2 > r1, "revisions must grow: {r1} then {r2}");
        Ok(())
    }

    pub async fn list_is_sorted_with_prefix_isolation(store: Arc<dyn Datastore>) -> Result<()> {
        for key in ["/a/2", "/ab/1", "/a/1", "/a", "/b/1", "/a/1/x"] {
            store.create(key, key.as_bytes().to_vec()).await?;
        }
        let head = store.revision().await?;
        let (kvs, rev) = store.list("/a/").await?;
        let keys: Vec<_> = kvs.iter().map(|kv| kv.key.as_str()).collect();
        ensure!(keys == ["/a/1", "/a/1/x", "/a/2"], "list /a/ gave {keys:?}");
        ensure!(rev == head, "list revision {rev} != store revision {head}");
        ensure!(kvs.iter().all(|kv| kv.value == kv.key.as_bytes()));
        let (kvs, _) = store.list("/ab/").await?;
        let keys: Vec<_> = kvs.iter().map(|kv| kv.key.as_str()).collect();
        ensure!(keys == ["/ab/1"], "list /ab/ gave {keys:?}");
        let (kvs, _) = store.list("").await?;
        let keys: Vec<_> = kvs.iter().map(|kv| kv.key.as_str()).collect();
        ensure!(
            keys == ["/a", "/a/1", "/a/1/x", "/a/2", "/ab/1", "/b/1"],
            "list of everything gave {keys:?}"
        );
        ensure!(store.list("/c/").await?.0.is_empty());
        Ok(())
    }

    pub async fn update_is_compare_and_swap(store: Arc<dyn Datastore>) -> Result<()> {
        let r1 = store.create("/t/k", b"1".to_vec()).await?;
        let r2 = store.update("/t/k", b"2".to_vec(), r1).await?;
        ensure!(r2 > r1);
        let kv = store.get("/t/k").await?.context("missing")?;
        ensure!(
            kv.create_revision == r1 && kv.mod_revision == r2 && kv.value == b"2",
            "{kv:?}"
        );
        match store.update("/t/k", b"3".to_vec(), r1).await {
            Err(StoreError::Conflict {
                key,
                expected,
                actual,
            }) => ensure!(key == "/t/k" && expected == r1 && actual == r2),
            other => bail!("stale update: expected Conflict, got {other:?}"),
        }
        ensure!(value_of(&*store, "/t/k").await?.as_deref() == Some("2"));
        match store.update("/t/none", b"x".to_vec(), r2).await {
            Err(StoreError::NotFound { key }) => ensure!(key == "/t/none"),
            other => bail!("update of a missing key: expected NotFound, got {other:?}"),
        }
        match store.update("/t/none", b"x".to_vec(), 0).await {
            Err(StoreError::NotFound { .. }) => {}
            other => bail!("update of a missing key at 0: expected NotFound, got {other:?}"),
        }
        ensure!(store.get("/t/none").await?.is_none());
        ensure!(
            store.revision().await? == r2,
            "failed updates moved the revision"
        );
        Ok(())
    }

    pub async fn delete_with_and_without_expected(store: Arc<dyn Datastore>) -> Result<()> {
        let r0 = store.revision().await?;
        let r = store.delete("/t/none", None).await?;
        ensure!(r == r0, "deleting nothing returned {r}, store is at {r0}");
        match store.delete("/t/none", Some(r0)).await {
            Err(StoreError::NotFound { key }) => ensure!(key == "/t/none"),
            other => bail!("expected NotFound, got {other:?}"),
        }
        let r1 = store.create("/t/k", b"1".to_vec()).await?;
        match store.delete("/t/k", Some(r1 - 1)).await {
            Err(StoreError::Conflict {
                expected, actual, ..
            }) => ensure!(expected == r1 - 1 && actual == r1),
            other => bail!("expected Conflict, got {other:?}"),
        }
        ensure!(
            store.get("/t/k").await?.is_some(),
            "a failed delete removed the key"
        );
        let r2 = store.delete("/t/k", Some(r1)).await?;
        ensure!(r2 > r1);
        ensure!(store.get("/t/k").await?.is_none());
        let r3 = store.create("/t/k", b"again".to_vec()).await?;
        let kv = store.get("/t/k").await?.context("missing")?;
        ensure!(
            kv.create_revision == r3,
            "re-created key keeps an old create_revision: {kv:?}"
        );
        let r4 = store.delete("/t/k", None).await?;
        ensure!(r4 > r3 && store.get("/t/k").await?.is_none());
        Ok(())
    }

    pub async fn txn_applies_everything_at_one_revision(store: Arc<dyn Datastore>) -> Result<()> {
        let rx = store.create("/t/x", b"x1".to_vec()).await?;
        let ry = store.create("/t/y", b"y1".to_vec()).await?;
        let rz = store.create("/t/z", b"z1".to_vec()).await?;
        let rev = store
            .txn(vec![
                TxnOp::Create {
                    key: "/t/a".into(),
                    value: b"a".to_vec(),
                },
                put("/t/b", "b"),
                TxnOp::Update {
                    key: "/t/x".into(),
                    value: b"x2".to_vec(),
                    expected: rx,
                },
                TxnOp::Delete {
                    key: "/t/none".into(),
                    expected: None,
                },
                TxnOp::Delete {
                    key: "/t/y".into(),
                    expected: Some(ry),
                },
                put("/t/z", "z2"),
            ])
            .await?;
        ensure!(
            rev == rz + 1,
            "txn should take exactly one revision: {rz} -> {rev}"
        );
        ensure!(store.revision().await? == rev);
        let (kvs, _) = store.list("/t/").await?;
        let got: Vec<_> = kvs
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_slice(), kv.mod_revision))
            .collect();
        ensure!(
            got == [
                ("/t/a", &b"a"[..], rev),
                ("/t/b", b"b", rev),
                ("/t/x", b"x2", rev),
                ("/t/z", b"z2", rev)
            ],
            "after txn: {got:?}"
        );
        let z = store.get("/t/z").await?.context("z")?;
        ensure!(
            z.create_revision == rz,
            "put over a key changed create_revision: {z:?}"
        );
        ensure!(
            store.txn(vec![]).await? == rev,
            "an empty txn moved the revision"
        );
        Ok(())
    }

    pub async fn txn_failure_is_atomic_and_names_the_operation(
        store: Arc<dyn Datastore>,
    ) -> Result<()> {
        let rx = store.create("/t/x", b"x1".to_vec()).await?;
        let rx2 = store.update("/t/x", b"x2".to_vec(), rx).await?;
        store.create("/t/b", b"b".to_vec()).await?;
        let before = store.list("").await?;
        /// Operations, the index expected to fail, and a check of the cause.
        type Attempt = (Vec<TxnOp>, usize, fn(&StoreError) -> bool);
        let attempts: Vec<Attempt> = vec![
            (
                vec![
                    TxnOp::Create {
                        key: "/t/new1".into(),
                        value: b"1".to_vec(),
                    },
                    put("/t/new2", "2"),
                    TxnOp::Update {
                        key: "/t/x".into(),
                        value: b"x3".to_vec(),
                        expected: rx,
                    },
                    put("/t/new3", "3"),
                ],
                2,
                |e| matches!(e, StoreError::Conflict { expected, actual, .. } if *expected + 1 == *actual),
            ),
            (
                vec![
                    put("/t/new1", "1"),
                    TxnOp::Create {
                        key: "/t/x".into(),
                        value: b"dup".to_vec(),
                    },
                ],
                1,
                |e| matches!(e, StoreError::AlreadyExists { key } if key == "/t/x"),
            ),
            (
                vec![
                    TxnOp::Delete {
                        key: "/t/x".into(),
                        expected: None,
                    },
                    TxnOp::Delete {
                        key: "/t/gone".into(),
                        expected: Some(rx),
                    },
                ],
                1,
                |e| matches!(e, StoreError::NotFound { key } if key == "/t/gone"),
            ),
            (
                vec![
                    TxnOp::Update {
                        key: "/t/missing".into(),
                        value: b"m".to_vec(),
                        expected: rx2,
                    },
                    put("/t/new1", "1"),
                ],
                0,
                |e| matches!(e, StoreError::NotFound { key } if key == "/t/missing"),
            ),
            // Several failing operations: the first in operation order is named, whichever
            // kind fails and however the keys sort.
            (
                vec![
                    TxnOp::Create {
                        key: "/t/x".into(),
                        value: b"dup".to_vec(),
                    },
                    TxnOp::Update {
                        key: "/t/missing".into(),
                        value: b"m".to_vec(),
                        expected: rx2,
                    },
                ],
                0,
                |e| matches!(e, StoreError::AlreadyExists { key } if key == "/t/x"),
            ),
            (
                vec![
                    TxnOp::Create {
                        key: "/t/new1".into(),
                        value: b"1".to_vec(),
                    },
                    TxnOp::Create {
                        key: "/t/x".into(),
                        value: b"dup".to_vec(),
                    },
                    TxnOp::Create {
                        key: "/t/b".into(),
                        value: b"dup".to_vec(),
                    },
                ],
                1,
                |e| matches!(e, StoreError::AlreadyExists { key } if key == "/t/x"),
            ),
            (
                vec![
                    put("/t/new1", "1"),
                    put("/t/new2", "2"),
                    TxnOp::Delete {
                        key: "/t/new1".into(),
                        expected: None,
                    },
                ],
                2,
                |e| matches!(e, StoreError::DuplicateKey { key, first: 0 } if key == "/t/new1"),
            ),
        ];
        for (i, (ops, want_index, want)) in attempts.into_iter().enumerate() {
            match store.txn(ops).await {
                Err(StoreError::TxnFailed { index, source }) => {
                    ensure!(
                        index == want_index,
                        "attempt {i}: failed at {index}, want {want_index}"
                    );
                    ensure!(want(&source), "attempt {i}: unexpected cause {source:?}");
                }
                other => bail!("attempt {i}: expected TxnFailed, got {other:?}"),
            }
            let after = store.list("").await?;
            ensure!(
                after == before,
                "attempt {i} changed the store: {before:?} -> {after:?}"
            );
        }
        Ok(())
    }

    pub async fn watch_delivers_changes_in_order_from_a_revision(
        store: Arc<dyn Datastore>,
    ) -> Result<()> {
        let r1 = store.create("/w/a", b"1".to_vec()).await?;
        let r2 = store.update("/w/a", b"2".to_vec(), r1).await?;
        let r3 = store.create("/w/b", b"b".to_vec()).await?;
        let r4 = store.delete("/w/a", Some(r2)).await?;
        let mut w = store.watch("/w/", r1).await?;

        let e = next_event(&mut w).await?;
        ensure!(
            e.kind == EventKind::Put && e.revision == r2,
            "first event {e:?}"
        );
        ensure!(e.kv.key == "/w/a" && e.kv.value == b"2", "{e:?}");
        ensure!(
            e.kv.create_revision == r1 && e.kv.mod_revision == r2,
            "{e:?}"
        );
        let prev = e.prev.context("update without prev")?;
        ensure!(
            prev.value == b"1" && prev.mod_revision == r1,
            "prev {prev:?}"
        );

        let e = next_event(&mut w).await?;
        ensure!(
            e.kind == EventKind::Put && e.revision == r3 && e.kv.key == "/w/b",
            "{e:?}"
        );
        ensure!(e.prev.is_none(), "create with prev {e:?}");

        let e = next_event(&mut w).await?;
        ensure!(
            e.kind == EventKind::Delete && e.revision == r4 && e.kv.key == "/w/a",
            "{e:?}"
        );
        ensure!(
            e.kv.mod_revision == r4 && e.kv.value.is_empty(),
            "delete kv {e:?}"
        );
        let prev = e.prev.context("delete without prev")?;
        ensure!(
            prev.value == b"2" && prev.mod_revision == r2,
            "prev {prev:?}"
        );

        // Live changes follow the replayed ones.
        let r5 = store.create("/w/c", b"c".to_vec()).await?;
        let e = next_event(&mut w).await?;
        ensure!(e.revision == r5 && e.kv.key == "/w/c", "{e:?}");
        assert_quiet(&mut w).await?;

        // A watch from the current revision sees only what comes next.
        let mut w2 = store.watch("/w/", r5).await?;
        let r6 = store.update("/w/c", b"c2".to_vec(), r5).await?;
        let e = next_event(&mut w2).await?;
        ensure!(e.revision == r6 && e.kv.value == b"c2", "{e:?}");
        assert_quiet(&mut w2).await?;
        Ok(())
    }

    pub async fn watch_sees_a_txn_as_events_with_one_revision(
        store: Arc<dyn Datastore>,
    ) -> Result<()> {
        store.create("/w/gone", b"g".to_vec()).await?;
        let start = store.revision().await?;
        let mut w = store.watch("/w/", start).await?;
        let rev = store
            .txn(vec![
                put("/w/k3", "3"),
                put("/w/k1", "1"),
                TxnOp::Delete {
                    key: "/w/gone".into(),
                    expected: None,
                },
                put("/w/k2", "2"),
            ])
            .await?;
        let mut got = Vec::new();
        for _ in 0..4 {
            let e = next_event(&mut w).await?;
            ensure!(
                e.revision == rev,
                "event at {} in txn at {rev}: {e:?}",
                e.revision
            );
            got.push((e.kind, e.kv.key));
        }
        ensure!(
            got == [
                (EventKind::Put, "/w/k3".to_string()),
                (EventKind::Put, "/w/k1".into()),
                (EventKind::Delete, "/w/gone".into()),
                (EventKind::Put, "/w/k2".into())
            ],
            "txn events {got:?}"
        );
        assert_quiet(&mut w).await?;
        Ok(())
    }

    pub async fn watch_prefix_isolation(store: Arc<dyn Datastore>) -> Result<()> {
        let start = store.revision().await?;
        let mut a = store.watch("/a/", start).await?;
        let mut ab = store.watch("/ab/", start).await?;
        let mut all = store.watch("", start).await?;
        store.create("/ab/x", b"1".to_vec()).await?;
        store.create("/a", b"2".to_vec()).await?;
        let ra = store.create("/a/x", b"3".to_vec()).await?;
        store.create("/b", b"4".to_vec()).await?;
        let rab = store.create("/ab/y", b"5".to_vec()).await?;

        let e = next_event(&mut a).await?;
        ensure!(
            e.kv.key == "/a/x" && e.revision == ra,
            "/a/ watch got {e:?}"
        );
        assert_quiet(&mut a).await?;

        let mut keys = Vec::new();
        for _ in 0..2 {
            keys.push(next_event(&mut ab).await?.kv.key);
        }
        ensure!(keys == ["/ab/x", "/ab/y"], "/ab/ watch got {keys:?}");
        assert_quiet(&mut ab).await?;

        let mut keys = Vec::new();
        for _ in 0..5 {
            keys.push(next_event(&mut all).await?.kv.key);
        }
        ensure!(
            keys == ["/ab/x", "/a", "/a/x", "/b", "/ab/y"],
            "whole-store watch {keys:?}"
        );
        ensure!(store.revision().await? == rab);
        Ok(())
    }

    pub async fn list_then_watch_has_no_gap(store: Arc<dyn Datastore>) -> Result<()> {
        for i in 0..5 {
            store.create(&format!("/l/{i}"), vec![i]).await?;
        }
        let (kvs, rev) = store.list("/l/").await?;
        ensure!(kvs.len() == 5);
        // Written after the list but before the watch starts: must still be delivered.
        let r6 = store.create("/l/5", vec![5]).await?;
        let r7 = store.delete("/l/0", None).await?;
        let mut w = store.watch("/l/", rev).await?;
        let e = next_event(&mut w).await?;
        ensure!(e.revision == r6 && e.kv.key == "/l/5", "{e:?}");
        let e = next_event(&mut w).await?;
        ensure!(e.revision == r7 && e.kind == EventKind::Delete, "{e:?}");
        assert_quiet(&mut w).await?;
        Ok(())
    }

    pub async fn compaction_makes_old_watches_resync(store: Arc<dyn Datastore>) -> Result<()> {
        let r1 = store.create("/c/1", b"1".to_vec()).await?;
        let r2 = store.create("/c/2", b"2".to_vec()).await?;
        let r3 = store.create("/c/3", b"3".to_vec()).await?;
        let r4 = store.update("/c/1", b"1b".to_vec(), r1).await?;
        store.compact(r2).await?;
        // Compacting again (or to an older revision) is harmless.
        store.compact(r2).await?;
        store.compact(r1).await?;

        let mut old = store.watch("/c/", r1).await?;
        match tokio::time::timeout(common::WAIT, old.next()).await {
            Ok(Some(Err(StoreError::Compacted {
                requested,
                compacted,
            }))) => {
                ensure!(
                    requested == r1 + 1,
                    "requested {requested}, want {}",
                    r1 + 1
                );
                ensure!(compacted == r2, "compacted {compacted}, want {r2}");
            }
            other => bail!("watch from before the compaction: expected Compacted, got {other:?}"),
        }
        match tokio::time::timeout(common::WAIT, old.next()).await {
            Ok(None) => {}
            other => bail!("the watch should end after Compacted, got {other:?}"),
        }

        let mut w = store.watch("/c/", r2).await?;
        let e = next_event(&mut w).await?;
        ensure!(e.revision == r3 && e.kv.key == "/c/3", "{e:?}");
        let e = next_event(&mut w).await?;
        ensure!(e.revision == r4 && e.kv.key == "/c/1", "{e:?}");
        assert_quiet(&mut w).await?;

        // Current state is untouched by compaction.
        let (kvs, _) = store.list("/c/").await?;
        ensure!(kvs.len() == 3, "{kvs:?}");
        ensure!(value_of(&*store, "/c/1").await?.as_deref() == Some("1b"));
        Ok(())
    }

    pub async fn concurrent_cas_increments_lose_nothing(store: Arc<dyn Datastore>) -> Result<()> {
        const TASKS: u64 = 8;
        const EACH: u64 = 15;
        let start = store.create("/n/counter", b"0".to_vec()).await?;
        let mut w = store.watch("/n/", start).await?;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..TASKS {
            let store = store.clone();
            tasks.spawn(async move { common::increment(&*store, "/n/counter", EACH).await });
        }
        let mut conflicts = 0;
        while let Some(r) = tasks.join_next().await {
            conflicts += r??;
        }
        let total = TASKS * EACH;
        ensure!(
            value_of(&*store, "/n/counter").await?.as_deref() == Some(total.to_string().as_str()),
            "lost updates: counter is {:?}, want {total}",
            value_of(&*store, "/n/counter").await?
        );
        // The watch sees every increment, in order, exactly once.
        let mut last: Revision = start;
        for want in 1..=total {
            let e = next_event(&mut w).await?;
            ensure!(
                e.revision > last,
                "revision went from {last} to {}",
                e.revision
            );
            last = e.revision;
            ensure!(
                e.kv.value == want.to_string().as_bytes(),
                "event {want}: {e:?}"
            );
        }
        assert_quiet(&mut w).await?;
        eprintln!("{total} increments from {TASKS} tasks, {conflicts} CAS conflicts retried");
        Ok(())
    }

    pub async fn large_txn_is_one_revision(store: Arc<dyn Datastore>) -> Result<()> {
        const N: usize = 3000;
        let start = store.revision().await?;
        let mut w = store.watch("/big/", start).await?;
        let ops: Vec<_> = (0..N)
            .map(|i| TxnOp::Create {
                key: format!("/big/{i:05}"),
                value: vec![b'x'; 200],
            })
            .collect();
        let rev = store.txn(ops).await?;
        let (kvs, at) = store.list("/big/").await?;
        ensure!(
            kvs.len() == N && at == rev,
            "{} keys at {at}, want {N} at {rev}",
            kvs.len()
        );
        ensure!(kvs.iter().all(|kv| kv.mod_revision == rev));
        for i in 0..N {
            let e = next_event(&mut w).await?;
            ensure!(
                e.revision == rev && e.kv.key == format!("/big/{i:05}"),
                "event {i}: {e:?}"
            );
        }
        assert_quiet(&mut w).await?;
        Ok(())
    }
}

#[tokio::test]
async fn open_rejects_unknown_schemes() {
    for url in [
        "postgres://x",
        "/var/lib/serval/store.db",
        "sqlite:relative.db",
        "sqlite://rel/x.db",
    ] {
        match serval_store::open(url).await {
            Err(StoreError::BadUrl { url: u, .. }) => assert_eq!(u, url),
            other => panic!("{url}: expected BadUrl, got {other:?}"),
        }
    }
}

/// Instantiate every case for one backend.
macro_rules! suite {
    ($backend:ident) => {
        mod $backend {
            suite!(@cases $backend;
                get_and_create,
                list_is_sorted_with_prefix_isolation,
                update_is_compare_and_swap,
                delete_with_and_without_expected,
                txn_applies_everything_at_one_revision,
                txn_failure_is_atomic_and_names_the_operation,
                watch_delivers_changes_in_order_from_a_revision,
                watch_sees_a_txn_as_events_with_one_revision,
                watch_prefix_isolation,
                list_then_watch_has_no_gap,
                compaction_makes_old_watches_resync,
                concurrent_cas_increments_lose_nothing,
                large_txn_is_one_revision,
            );
        }
    };
    (@cases $backend:ident; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() -> anyhow::Result<()> {
                let fixture = super::$backend().await?;
                super::cases::$case(fixture.store.clone()).await
            }
        )*
    };
}

suite!(sqlite);
suite!(sqlite_rowid);
suite!(etcd);
