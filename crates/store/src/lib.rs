//! The datastore: a revisioned key-value store with compare-and-swap, multi-key transactions
//! and ordered watches. Two backends implement [`Datastore`]: an embedded sqlite file (the
//! default, shared by several processes on one host) and a real etcd v3 server.
//!
//! The store knows nothing of resource types; it moves bytes under string keys. Every write
//! advances one global revision (etcd's model), and every key remembers the revision that
//! created it and the one that last modified it.

use async_trait::async_trait;

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
    Update { key: String, value: Vec<u8>, expected: Revision },
    /// Create or replace, unconditionally.
    Put { key: String, value: Vec<u8> },
    /// Delete a key; with `expected`, only if its `mod_revision` equals it. Deleting a key that
    /// does not exist fails with `NotFound` when `expected` is set and succeeds otherwise.
    Delete { key: String, expected: Option<Revision> },
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
    Conflict { key: String, expected: Revision, actual: Revision },
    #[error("transaction operation {index} failed: {source}")]
    TxnFailed {
        index: usize,
        #[source]
        source: Box<StoreError>,
    },
    /// The watch start revision was compacted away: the caller must list again and resync.
    #[error("revision {requested} has been compacted (oldest available {compacted}); list and resync")]
    Compacted { requested: Revision, compacted: Revision },
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
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision>;

    /// Replace a key if its `mod_revision` equals `expected` (compare-and-swap).
    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<Revision>;

    /// Delete a key; with `expected`, only if its `mod_revision` equals it.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Revision>;

    /// Apply every operation at one revision, or none (error names the failing operation).
    async fn txn(&self, ops: Vec<TxnOp>) -> Result<Revision>;

    /// Every change under `prefix` with a revision greater than `after`, in order.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<Watch>;

    /// The current store revision.
    async fn revision(&self) -> Result<Revision>;

    /// Discard history up to and including `revision` (watches from before it get
    /// `Compacted`).
    async fn compact(&self, revision: Revision) -> Result<()>;
}
