//! The datastore: a revisioned key-value store with compare-and-swap, multi-key transactions
//! and ordered watches. Two backends implement [`Datastore`]: an embedded sqlite file (the
//! default, shared by several processes on one host) and a real etcd v3 server.
//!
//! The store knows nothing of resource types; it moves bytes under string keys. Every write
//! advances one global revision (etcd's model), and every key remembers the revision that
//! created it and the one that last modified it.

use std::sync::Arc;

use async_trait::async_trait;

pub mod etcd;
pub mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;

pub use etcd::EtcdStore;
pub use sqlite::SqliteStore;

/// A global, monotonically increasing store revision (as etcd's). 0 means "none yet".
pub type Revision = i64;

/// One stored key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created this key (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the last write to this key.
    pub mod_revision: Revision,
}

/// What happened to a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change delivered by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    /// For `Put`, the new key-value. For `Delete`, the key with an empty value and
    /// `mod_revision` set to the deletion's revision.
    pub kv: KeyValue,
    /// The value before this change, where the backend knows it (`None` for a create).
    pub prev: Option<KeyValue>,
    /// The revision of the write that made this change.
    pub revision: Revision,
}

/// One operation of a multi-key transaction. All operations of a transaction take effect
/// at one revision, or none do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Create a key that must not exist.
    Create { key: String, value: Vec<u8> },
    /// Replace a key whose `mod_revision` must equal `expected`.
    Update {
        key: String,
        value: Vec<u8>,
        expected: Revision,
    },
    /// Create or replace, unconditionally.
    Put { key: String, value: Vec<u8> },
    /// Delete a key; with `expected`, only if its `mod_revision` equals it. Deleting a key that
    /// does not exist fails with `NotFound` when `expected` is set and succeeds otherwise.
    Delete {
        key: String,
        expected: Option<Revision>,
    },
}

impl TxnOp {
    pub fn key(&self) -> &str {
        match self {
            TxnOp::Create { key, .. }
            | TxnOp::Update { key, .. }
            | TxnOp::Put { key, .. }
            | TxnOp::Delete { key, .. } => key,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{key} already exists")]
    AlreadyExists { key: String },
    #[error("{key} not found")]
    NotFound { key: String },
    #[error("{key} was modified concurrently (expected revision {expected}, found {actual})")]
    Conflict {
        key: String,
        expected: Revision,
        actual: Revision,
    },
    #[error("transaction operation {index} failed: {source}")]
    TxnFailed {
        index: usize,
        #[source]
        source: Box<StoreError>,
    },
    /// The watch start revision was compacted away: the caller must list again and resync.
    #[error(
        "revision {requested} has been compacted (oldest available {compacted}); list and resync"
    )]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    #[error("bad datastore URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("sqlite datastore {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("etcd datastore {endpoint}: {source}")]
    Etcd {
        endpoint: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("datastore I/O at {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the watch ended: {reason}")]
    WatchClosed { reason: String },
    /// A transaction names one key twice (etcd forbids it; both backends reject it before
    /// touching the store). Reported inside [`StoreError::TxnFailed`] with the second index.
    #[error(
        "{key} appears twice in one transaction (first at operation {first}); merge the operations"
    )]
    DuplicateKey { key: String, first: usize },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A stream of watch events, delivered in revision order without gaps or repeats.
/// An `Err(StoreError::Compacted{..})` item means the caller must resync from a fresh list.
pub struct Watch {
    rx: tokio::sync::mpsc::Receiver<Result<WatchEvent>>,
    /// Keeps the backend's watch task alive; aborted when the `Watch` is dropped.
    _task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

impl Watch {
    pub fn new(
        rx: tokio::sync::mpsc::Receiver<Result<WatchEvent>>,
        task: Option<tokio::task::JoinHandle<()>>,
    ) -> Self {
        Watch { rx, _task: task }
    }

    /// The next event, or `None` when the watch has ended.
    pub async fn next(&mut self) -> Option<Result<WatchEvent>> {
        self.rx.recv().await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(t) = &self._task {
            t.abort();
        }
    }
}

/// The datastore. Keys are `/`-separated strings; `list` and `watch` take a key prefix.
#[async_trait]
pub trait Datastore: Send + Sync + std::fmt::Debug {
    /// One key, or `None`.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Every key under `prefix`, sorted by key, and the store revision the list was read at
    /// (pass it to [`Datastore::watch`] to follow on without gaps).
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)>;

    /// Create a key that must not exist; returns the new revision.
    /// (Provided: a one-operation [`Datastore::txn`], with the operation's own error.)
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision> {
        self.txn(vec![TxnOp::Create {
            key: key.to_string(),
            value,
        }])
        .await
        .map_err(unwrap_single)
    }

    /// Replace a key if its `mod_revision` equals `expected` (compare-and-swap).
    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<Revision> {
        self.txn(vec![TxnOp::Update {
            key: key.to_string(),
            value,
            expected,
        }])
        .await
        .map_err(unwrap_single)
    }

    /// Delete a key; with `expected`, only if its `mod_revision` equals it.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Revision> {
        self.txn(vec![TxnOp::Delete {
            key: key.to_string(),
            expected,
        }])
        .await
        .map_err(unwrap_single)
    }

    /// Apply every operation at one revision, or none (error names the failing operation).
    async fn txn(&self, ops: Vec<TxnOp>) -> Result<Revision>;

    /// Every change under `prefix` with a revision greater than `after`, in order.
    ///
    /// Both backends report a compacted start (or a resume point compacted while the watch was
    /// reconnecting) as an `Err(StoreError::Compacted)` item, after which the watch ends; other
    /// item errors also end the watch.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<Watch>;

    /// The current store revision.
    async fn revision(&self) -> Result<Revision>;

    /// Discard history up to and including `revision` (watches from before it get
    /// `Compacted`).
    async fn compact(&self, revision: Revision) -> Result<()>;
}

/// Open the datastore named by `url`:
///
/// - `sqlite:///abs/path/file.db` — the embedded store (the file and its parent directory are
///   created if missing; several processes may share it);
/// - `etcd://host:port[,host:port…]` or `http://host:port[,…]` — an etcd v3 cluster.
pub async fn open(url: &str) -> Result<Arc<dyn Datastore>> {
    if let Some(rest) = url.strip_prefix("sqlite://") {
        let store = SqliteStore::open_url_path(url, rest).await?;
        Ok(Arc::new(store))
    } else if url.starts_with("etcd://") || url.starts_with("http://") {
        let store = EtcdStore::connect(url).await?;
        Ok(Arc::new(store))
    } else {
        Err(StoreError::BadUrl {
            url: url.to_string(),
            reason:
                "unknown scheme; use sqlite:///abs/path/file.db or etcd://host:port[,host:port]"
                    .to_string(),
        })
    }
}

/// Reject a transaction that names a key twice, before anything is read or written.
pub(crate) fn check_duplicates(ops: &[TxnOp]) -> Result<()> {
    let mut seen = std::collections::HashMap::with_capacity(ops.len());
    for (index, op) in ops.iter().enumerate() {
        if let Some(first) = seen.insert(op.key(), index) {
            return Err(StoreError::TxnFailed {
                index,
                source: Box::new(StoreError::DuplicateKey {
                    key: op.key().to_string(),
                    first,
                }),
            });
        }
    }
    Ok(())
}

/// Whether `op` may be applied given the key's current state (shared by both backends so that
/// they report the same error for the same failure).
pub(crate) fn check_op(op: &TxnOp, current: Option<&KeyValue>) -> Result<()> {
    match (op, current) {
        (TxnOp::Create { key, .. }, Some(_)) => Err(StoreError::AlreadyExists { key: key.clone() }),
        (TxnOp::Create { .. }, None) | (TxnOp::Put { .. }, _) => Ok(()),
        (TxnOp::Update { key, .. }, None)
        | (
            TxnOp::Delete {
                key,
                expected: Some(_),
            },
            None,
        ) => Err(StoreError::NotFound { key: key.clone() }),
        (TxnOp::Update { key, expected, .. }, Some(cur))
        | (
            TxnOp::Delete {
                key,
                expected: Some(expected),
            },
            Some(cur),
        ) => {
            if cur.mod_revision == *expected {
                Ok(())
            } else {
                Err(StoreError::Conflict {
                    key: key.clone(),
                    expected: *expected,
                    actual: cur.mod_revision,
                })
            }
        }
        (TxnOp::Delete { expected: None, .. }, _) => Ok(()),
    }
}

/// A single-operation write reports its own error, not "transaction operation 0 failed".
pub(crate) fn unwrap_single(err: StoreError) -> StoreError {
    match err {
        StoreError::TxnFailed { index: 0, source } => *source,
        other => other,
    }
}

/// The smallest byte string greater than every string starting with `prefix`, or `None` when
/// there is none (empty prefix, or all `0xff`).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end(b"/a/"), Some(b"/a0".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b""), None);
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }

    #[test]
    fn duplicate_keys_are_reported_at_the_second_index() {
        let ops = vec![
            TxnOp::Put {
                key: "/a".into(),
                value: vec![],
            },
            TxnOp::Put {
                key: "/b".into(),
                value: vec![],
            },
            TxnOp::Delete {
                key: "/a".into(),
                expected: None,
            },
        ];
        match check_duplicates(&ops) {
            Err(StoreError::TxnFailed { index: 2, source }) => {
                assert!(
                    matches!(*source, StoreError::DuplicateKey { ref key, first: 0 } if key == "/a")
                );
            }
            other => panic!("expected duplicate at 2, got {other:?}"),
        }
    }

    #[test]
    fn check_op_semantics() {
        let cur = KeyValue {
            key: "/k".into(),
            value: vec![1],
            create_revision: 3,
            mod_revision: 5,
        };
        let k = || "/k".to_string();
        assert!(matches!(
            check_op(
                &TxnOp::Create {
                    key: k(),
                    value: vec![]
                },
                Some(&cur)
            ),
            Err(StoreError::AlreadyExists { .. })
        ));
        assert!(
            check_op(
                &TxnOp::Create {
                    key: k(),
                    value: vec![]
                },
                None
            )
            .is_ok()
        );
        assert!(matches!(
            check_op(
                &TxnOp::Update {
                    key: k(),
                    value: vec![],
                    expected: 5
                },
                None
            ),
            Err(StoreError::NotFound { .. })
        ));
        assert!(
            check_op(
                &TxnOp::Update {
                    key: k(),
                    value: vec![],
                    expected: 5
                },
                Some(&cur)
            )
            .is_ok()
        );
        assert!(matches!(
            check_op(
                &TxnOp::Update {
                    key: k(),
                    value: vec![],
                    expected: 4
                },
                Some(&cur)
            ),
            Err(StoreError::Conflict {
                expected: 4,
                actual: 5,
                ..
            })
        ));
        assert!(
            check_op(
                &TxnOp::Delete {
                    key: k(),
                    expected: None
                },
                None
            )
            .is_ok()
        );
        assert!(matches!(
            check_op(
                &TxnOp::Delete {
                    key: k(),
                    expected: Some(5)
                },
                None
            ),
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            check_op(
                &TxnOp::Delete {
                    key: k(),
                    expected: Some(1)
                },
                Some(&cur)
            ),
            Err(StoreError::Conflict { .. })
        ));
        assert!(
            check_op(
                &TxnOp::Put {
                    key: k(),
                    value: vec![]
                },
                Some(&cur)
            )
            .is_ok()
        );
    }
}
