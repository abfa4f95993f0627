//! The sqlite log is compacted automatically: history older than RETAINED_REVISIONS is gone
//! (a watch from there gets Compacted), recent history is kept.

use serval_store::StoreError;
use serval_store::sqlite::RETAINED_REVISIONS;
use serval_store::testing::SqliteFile;

#[tokio::test]
async fn old_history_is_compacted_recent_history_kept() {
    let f = SqliteFile::new().expect("temp sqlite");
    let store = f.open().await.expect("open");
    let target = RETAINED_REVISIONS + 2_000;
    let mut rev = 0;
    for i in 0..target {
        rev = store
            .txn(vec![serval_store::TxnOp::Put {
                key: format!("/k/{}", i % 10),
                value: vec![1],
            }])
            .await
            .unwrap();
    }
    assert!(rev >= target);
    let mut old = store.watch("/k/", 1).await.expect("watch");
    match old.next().await {
        Some(Err(StoreError::Compacted { .. })) => {}
        other => panic!("expected Compacted for a watch from revision 1, got {other:?}"),
    }
    let mut recent = store.watch("/k/", rev - 10).await.expect("watch");
    for expect in rev - 9..=rev {
        let ev = recent.next().await.expect("open").expect("event");
        assert_eq!(ev.revision, expect);
    }
}
