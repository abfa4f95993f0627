//! The embedded sqlite backend (`sqlite:///abs/path/file.db`).
//!
//! Layout: `kv` holds the current keys; `log` is an append-only history (one row per changed
//! key, keyed by `(revision, idx)`) that watches read; `meta` holds the current `revision` and
//! the `compacted` revision; `log_dirs` the key directories each revision touched, so that a
//! watch skips revisions without its keys (module `dirs`). Every write runs in one `BEGIN
//! IMMEDIATE` transaction that reads the revision, bumps it and writes `kv`, `log`, `log_dirs`
//! and `meta` together, so revisions commit in order
//! and a reader that sees revision N sees everything before it. A new database gets `kv` and
//! `log` as `WITHOUT ROWID` tables with 16 KiB pages; a database created by an earlier version
//! keeps its rowid tables and 4 KiB pages, and every statement here works on both (see
//! [`SCHEMA`]).
//!
//! Several processes may share one file (WAL mode, `busy_timeout` plus a retry loop so that
//! `SQLITE_BUSY` never reaches callers). A watch learns about other processes' commits from a
//! per-store poller thread that checks `PRAGMA data_version` whenever inotify reports a change
//! to the database or its WAL (every writer touches the WAL after each commit, see
//! [`wake`]), so delivery across processes takes about as long as a thread wake-up; a timed
//! re-check every [`SqliteOptions::safety_poll`] (100 ms by default) is the safety net, and
//! without inotify the poller checks every [`POLL_INTERVAL`] (10 ms). Writes made through the
//! same store wake its watches directly. Every rusqlite call runs on a blocking thread, never on
//! the tokio runtime.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};

mod dirs;
mod wake;

use crate::{
    Datastore, EventKind, KeyValue, Result, Revision, StoreError, TxnOp, Watch, WatchEvent,
    check_duplicates, check_op, prefix_end,
};

/// How often the poller looks for commits made by other connections (other processes) when
/// inotify is not available to wake it.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// The default [`SqliteOptions::safety_poll`].
pub const SAFETY_POLL: Duration = Duration::from_millis(100);

/// How a [`SqliteStore`] is opened ([`SqliteStore::open_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqliteOptions {
    /// While inotify wakes the watch poller, it also re-checks the store this often when
    /// nothing woke it (a safety net for missed wake-ups; tests set it very long to show that
    /// the wake-ups alone deliver).
    pub safety_poll: Duration,
    /// Use inotify wake-ups (the default). `false`: poll every [`POLL_INTERVAL`] instead, as
    /// when inotify is unavailable (also for a database on a network filesystem written from
    /// other hosts, whose writes inotify does not see).
    pub wakeups: bool,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            safety_poll: SAFETY_POLL,
            wakeups: true,
        }
    }
}
/// How long one lock wait lasts (polled every millisecond by `busy_wait`) before sqlite returns
/// `SQLITE_BUSY` to us.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long we keep retrying `SQLITE_BUSY` on top of `BUSY_TIMEOUT` before giving up.
const BUSY_RETRY_FOR: Duration = Duration::from_secs(60);
/// A watch reads at most this many log rows per query (bounds memory for huge histories).
const WATCH_BATCH: i64 = 2000;
/// Events buffered between a watch's reader task and its consumer.
const WATCH_BUFFER: usize = 1024;
/// Idle read connections kept per store.
const MAX_IDLE_READERS: usize = 4;
/// A commit checkpoints the WAL itself (sqlite's `wal_autocheckpoint`) only when it holds more
/// than this many pages (256 MiB of 4 KiB pages, 1 GiB of the 16 KiB pages of a new database;
/// an apply of 50,000 Services writes ~67 MiB): a backstop. Normally the watch poller of a
/// long-lived process (the agent) checkpoints when the store is quiet ([`poll_loop`]), so no
/// writer, and no `serval apply`, waits for checkpoint copies and fsyncs after its commit.
const AUTOCHECKPOINT_PAGES: i64 = 65_536;
/// The watch poller checkpoints after [`CHECKPOINT_AFTER_QUIET`] without changes when the WAL
/// file is larger than this; a WAL reset after a checkpoint truncates the file back to this size
/// (`journal_size_limit`), so the size says whether it grew since. sqlite's default threshold
/// (1,000 pages).
const QUIET_CHECKPOINT_BYTES: i64 = 4 << 20;
/// The watch poller checkpoints once nothing has changed for this long: after a large write the
/// watching process (the agent) is busy with it for about a second, and the checkpoint's copy
/// and fsyncs should not compete with that.
const CHECKPOINT_AFTER_QUIET: Duration = Duration::from_secs(1);
/// The writer connection's page cache limit (sqlite's `cache_size`, negative = KiB): 16 MiB.
/// A bulk write larger than this spills dirty pages to the WAL before it commits; the bulk
/// writes here fill `kv` in key order and `log` in `(revision, idx)` order, so a spilled page
/// is one the transaction has finished with and is written to the WAL once, as at commit (an
/// apply of 50,000 Services writes the same 4,289 frames with a 2 MiB, 16 MiB or 64 MiB
/// cache). A cache as large as the whole transaction (64 MiB, ~4,300 pages of 16 KiB) cost
/// ~20 ms more in a new process (`serval apply`): fresh memory for every page, page faults and
/// zeroing, instead of reusing the pages already written out.
const WRITER_CACHE_KIB: i64 = -16384;
/// The page size of a new database (existing databases keep theirs; earlier versions created
/// sqlite's default, 4 KiB). Larger pages make shallower B-trees and fewer page splits and WAL
/// frames for bulk writes (an apply of 50,000 Services writes ~70 MB); a small write's commit
/// writes a few more KiB to the WAL.
const NEW_PAGE_SIZE: i64 = 16384;

/// The schema a new database gets. The tables and columns are those of the first layout
/// (rowid tables, `rowid_schema()` in the tests, which databases written by earlier versions have
/// and keep: every
/// statement of this module works on both, and earlier versions work on this one); `kv` and
/// `log` are `WITHOUT ROWID` tables, each stored in the B-tree of its primary key instead of a
/// rowid B-tree plus a separate index of the primary key: one B-tree write per row instead of
/// two, the key stored once, and a watch's scan of `log` in `(revision, idx)` order reads the
/// rows themselves instead of looking each one up by rowid. The `meta` table and its `schema`
/// (1) are the same for both layouts.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (
    key BLOB PRIMARY KEY,
    value BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log (
    revision INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    key BLOB NOT NULL,
    kind INTEGER NOT NULL,
    value BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    prev_value BLOB,
    prev_create INTEGER,
    prev_mod INTEGER,
    PRIMARY KEY (revision, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 0), ('compacted', 0), ('schema', 1);
";

/// The first layout (rowid tables), as earlier versions created it: [`SCHEMA`] without
/// `WITHOUT ROWID`. Only tests create it now (to run the same semantics against a database
/// written by an earlier version).
#[cfg(any(test, feature = "testing"))]
fn rowid_schema() -> String {
    SCHEMA.replace(") WITHOUT ROWID;", ");")
}

/// Write the first layout ([`rowid_schema`], 4 KiB pages: what earlier versions created) to a
/// new database file at `path`, as an earlier version would have. For tests.
#[cfg(any(test, feature = "testing"))]
pub(crate) fn create_rowid_layout(path: &Path) -> rusqlite::Result<()> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "page_size", 4096)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    debug_assert!(mode.eq_ignore_ascii_case("wal"), "journal mode {mode}");
    conn.execute_batch(&format!("BEGIN IMMEDIATE; {} COMMIT;", rowid_schema()))
}

const KIND_PUT: i64 = 0;
const KIND_DELETE: i64 = 1;

/// The sqlite datastore. Cheap to share behind an `Arc`; dropping it closes its connections and
/// stops its poller thread (watches keep their own reference until dropped).
pub struct SqliteStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

struct Shared {
    path: PathBuf,
    /// `path` for error messages.
    name: String,
    /// `path` with symlinks resolved, as sqlite resolves them: its WAL (`<real>-wal`) is next
    /// to the real file, and that directory is the one the watch poller watches.
    real: PathBuf,
    /// The WAL file, touched after every commit to wake other processes' watches.
    wal: PathBuf,
    options: SqliteOptions,
    /// Writes are serialised in-process here, so only other processes contend for sqlite's lock.
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// The newest revision known to be committed; watches wait on it.
    head: tokio::sync::watch::Sender<Revision>,
    poller: OnceLock<()>,
}

impl SqliteStore {
    /// Open (creating if missing, with its parent directory) the store at `path`, which must be
    /// absolute.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, SqliteOptions::default()).await
    }

    /// [`SqliteStore::open`] with non-default options.
    pub async fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let name = path.display().to_string();
        if !path.is_absolute() {
            return Err(StoreError::BadUrl {
                url: format!("sqlite://{name}"),
                reason: "the sqlite path must be absolute: sqlite:///abs/path/file.db".into(),
            });
        }
        let shared = tokio::task::spawn_blocking(move || Shared::open(path, name, options))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        Ok(SqliteStore {
            shared: Arc::new(shared),
        })
    }

    /// `rest` is what follows `sqlite://` in `url`.
    pub(crate) async fn open_url_path(url: &str, rest: &str) -> Result<Self> {
        if !rest.starts_with('/') || rest.len() < 2 {
            return Err(StoreError::BadUrl {
                url: url.to_string(),
                reason: "expected sqlite:///abs/path/file.db (three slashes, absolute path)".into(),
            });
        }
        Self::open(rest).await
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let shared = self.shared.clone();
        run_blocking(move || f(&shared)).await
    }
}

async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(StoreError::WatchClosed {
            reason: format!("the runtime is shutting down: {e}"),
        }),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a connection leaves no open transaction behind (rusqlite rolls
    // back on drop), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Run `f`, retrying while sqlite reports the database busy or locked.
fn retry_busy<T>(name: &str, mut f: impl FnMut() -> rusqlite::Result<T>) -> Result<T> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(1);
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if is_busy(&e) && start.elapsed() < BUSY_RETRY_FOR => {
                tracing::debug!(path = name, error = %e, "sqlite busy; retrying");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(50));
            }
            Err(source) => {
                return Err(StoreError::Sqlite {
                    path: name.to_string(),
                    source,
                });
            }
        }
    }
}

/// How many revisions of history the sqlite log keeps (see [`Shared::txn`]).
pub const RETAINED_REVISIONS: Revision = 10_000;
/// How often (in revisions) the automatic compaction runs.
const COMPACT_EVERY: Revision = 1_000;

/// sqlite's default busy handler sleeps in growing steps (up to 100 ms) while another process
/// holds the write lock; poll it every millisecond instead so the lock changes hands quickly.
fn busy_wait(attempt: i32) -> bool {
    let step = Duration::from_millis(1);
    if step * attempt.unsigned_abs() >= BUSY_TIMEOUT {
        return false;
    }
    std::thread::sleep(step);
    true
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let mut conn = Connection::open(path)?;
    conn.busy_handler(Some(busy_wait))?;
    // Only a new, empty file takes it (before WAL mode writes the header); an existing
    // database keeps its page size.
    conn.pragma_update(None, "page_size", NEW_PAGE_SIZE)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), mode, "sqlite refused WAL mode; concurrent readers will block writers");
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "wal_autocheckpoint", AUTOCHECKPOINT_PAGES)?;
    conn.pragma_update(None, "journal_size_limit", QUIET_CHECKPOINT_BYTES)?;
    Ok(conn)
}

fn meta(conn: &Connection, name: &str) -> rusqlite::Result<Revision> {
    conn.prepare_cached("SELECT value FROM meta WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
}

fn set_meta(conn: &Connection, name: &str, value: Revision) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE meta SET value = ?2 WHERE name = ?1")?
        .execute(params![name, value])?;
    Ok(())
}

fn key_string(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn get_kv(conn: &Connection, key: &str) -> rusqlite::Result<Option<KeyValue>> {
    conn.prepare_cached("SELECT value, create_revision, mod_revision FROM kv WHERE key = ?1")?
        .query_row([key.as_bytes()], |r| {
            Ok(KeyValue {
                key: key.to_string(),
                value: r.get(0)?,
                create_revision: r.get(1)?,
                mod_revision: r.get(2)?,
            })
        })
        .optional()
}

impl Shared {
    fn open(path: PathBuf, name: String, options: SqliteOptions) -> Result<Shared> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::Io {
                path: parent.display().to_string(),
                source,
            })?;
        }
        let mut writer = retry_busy(&name, || open_connection(&path))?;
        // The cache only grows as far as a transaction needs (see WRITER_CACHE_KIB).
        retry_busy(&name, || {
            writer.pragma_update(None, "cache_size", WRITER_CACHE_KIB)
        })?;
        // Every short-lived process (each CLI command) opens the store: read whether the schema
        // exists before taking the write lock to create it.
        let has_schema = retry_busy(&name, || {
            match writer.query_row("SELECT value FROM meta WHERE name = 'schema'", [], |r| {
                r.get::<_, i64>(0)
            }) {
                Ok(_) => Ok(true),
                Err(rusqlite::Error::QueryReturnedNoRows) => Ok(false),
                // No `meta` table yet: a new file.
                Err(e) if e.sqlite_error_code() == Some(ErrorCode::Unknown) => Ok(false),
                Err(e) => Err(e),
            }
        })?;
        // `log_dirs` (see `dirs`) in a new database, and once in one an earlier version created.
        let has_dirs = has_schema && retry_busy(&name, || dirs::exists(&writer))?;
        if !has_schema || !has_dirs {
            retry_busy(&name, || {
                let tx = writer.transaction_with_behavior(TransactionBehavior::Immediate)?;
                tx.execute_batch(SCHEMA)?;
                dirs::ensure(&tx)?;
                tx.commit()
            })?;
        }
        let head = retry_busy(&name, || meta(&writer, "revision"))?;
        // The file exists now (the writer opened it).
        let real = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        Ok(Shared {
            wal: wake::wal_path(&real),
            real,
            options,
            path,
            name,
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            head: tokio::sync::watch::Sender::new(head),
            poller: OnceLock::new(),
        })
    }

    /// Run a read on a pooled connection, retrying busy errors.
    fn read<T>(&self, mut f: impl FnMut(&mut Connection) -> rusqlite::Result<T>) -> Result<T> {
        let pooled = lock(&self.readers).pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => retry_busy(&self.name, || open_connection(&self.path))?,
        };
        let result = retry_busy(&self.name, || f(&mut conn));
        let mut readers = lock(&self.readers);
        if readers.len() < MAX_IDLE_READERS {
            readers.push(conn);
        }
        result
    }

    fn publish(&self, revision: Revision) {
        publish(&self.head, revision);
    }

    fn txn(&self, ops: &[TxnOp]) -> Result<Revision> {
        check_duplicates(ops)?;
        let mut conn = lock(&self.writer);
        let outcome = retry_busy(&self.name, || apply_txn(&mut conn, ops))?;
        drop(conn);
        let revision = outcome?;
        wake::signal_commit(&self.wal);
        self.publish(revision);
        // Automatic compaction keeps the change log bounded: every COMPACT_EVERY revisions,
        // history older than RETAINED_REVISIONS is discarded (as the API server compacts
        // etcd). A watcher that far behind gets `Compacted` and resyncs from a list.
        if revision % COMPACT_EVERY == 0
            && revision > RETAINED_REVISIONS
            && let Err(e) = self.compact(revision - RETAINED_REVISIONS)
        {
            tracing::warn!(error = %e, "automatic compaction failed; will retry later");
        }
        Ok(revision)
    }

    fn compact(&self, revision: Revision) -> Result<()> {
        let mut conn = lock(&self.writer);
        retry_busy(&self.name, || {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let head = meta(&tx, "revision")?;
            let compacted = meta(&tx, "compacted")?;
            let target = revision.min(head);
            if target > compacted {
                tx.prepare_cached("DELETE FROM log WHERE revision <= ?1")?
                    .execute([target])?;
                if dirs::exists(&tx)? {
                    dirs::compact(&tx, target)?;
                }
                set_meta(&tx, "compacted", target)?;
            }
            tx.commit()
        })
    }
}

fn publish(head: &tokio::sync::watch::Sender<Revision>, revision: Revision) {
    head.send_if_modified(|cur| {
        if revision > *cur {
            *cur = revision;
            true
        } else {
            false
        }
    });
}

/// Apply `ops` in one immediate transaction. The outer error is sqlite's (retried by the caller
/// when busy); the inner one is a failed precondition (nothing written).
///
/// [`write_txn`] writes the fast way. When a precondition fails there, it has stopped at one
/// failing operation, not necessarily the first: its transaction is rolled back and
/// [`first_failure`] checks every operation in order, as an earlier version did before writing
/// anything, to report the first one. Should that find none (another process changed the keys
/// in between), the write is tried again from the new state, up to [`TXN_ATTEMPTS`] times in
/// all: a row skipped for another reason (`OR IGNORE` skips any row a constraint or trigger
/// refuses, which no precondition explains) must fail the write, not retry it forever.
fn apply_txn(conn: &mut Connection, ops: &[TxnOp]) -> rusqlite::Result<Result<Revision>> {
    for _ in 0..TXN_ATTEMPTS {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let head = meta(&tx, "revision")?;
        match write_txn(&tx, head, ops)? {
            Some(0) => return Ok(Ok(head)),
            Some(_) => {
                set_meta(&tx, "revision", head + 1)?;
                tx.commit()?;
                return Ok(Ok(head + 1));
            }
            // Dropping `tx` rolls back what `write_txn` wrote.
            None => drop(tx),
        }
        let tx = conn.transaction()?;
        if let Some(failure) = first_failure(&tx, ops)? {
            return Ok(Err(failure));
        }
    }
    Err(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT),
        Some(format!(
            "a row of the write was not inserted {TXN_ATTEMPTS} times in a row, and no operation's precondition fails: a constraint or trigger of the database refuses it"
        )),
    ))
}

/// How many times [`apply_txn`] writes before it gives up (each retry follows another
/// process's change to the keys between the write and the check).
const TXN_ATTEMPTS: usize = 8;

/// The first operation of `ops` whose precondition fails in `tx`'s snapshot, as
/// [`StoreError::TxnFailed`].
fn first_failure(tx: &Connection, ops: &[TxnOp]) -> rusqlite::Result<Option<StoreError>> {
    for (index, op) in ops.iter().enumerate() {
        let cur = get_kv(tx, op.key())?;
        if let Err(e) = check_op(op, cur.as_ref()) {
            return Ok(Some(StoreError::TxnFailed {
                index,
                source: Box::new(e),
            }));
        }
    }
    Ok(None)
}

/// Write `ops` at revision `head + 1` in `tx`: how many log rows were written (0: nothing
/// changed, so no new revision), or `None` when an operation's precondition failed (and `tx`
/// must be rolled back).
///
/// The same checks and writes as an earlier version made (check every operation, then write
/// `kv` and `log` in operation order), ordered for speed: the operations that need
/// the key's current value (`Update`, `Put`, `Delete`: for the check and the log's previous
/// value) read it before anything is written, so they see the state before the transaction; `kv` is then written in key order (sorted B-tree inserts fill pages instead of
/// splitting them: an apply's Services arrive in input order); a `Create` needs no read, its
/// insert is the check (it inserts nothing when the key exists); `log` is written in operation
/// order. The keys are distinct ([`check_duplicates`]), so no write of the transaction changes
/// what another of its operations finds.
fn write_txn(tx: &Connection, head: Revision, ops: &[TxnOp]) -> rusqlite::Result<Option<i64>> {
    let revision = head + 1;
    let mut current: Vec<Option<KeyValue>> = Vec::with_capacity(ops.len());
    for op in ops {
        let cur = match op {
            TxnOp::Create { .. } => None,
            _ => {
                let cur = get_kv(tx, op.key())?;
                if check_op(op, cur.as_ref()).is_err() {
                    return Ok(None);
                }
                cur
            }
        };
        current.push(cur);
    }
    let mut order: Vec<usize> = (0..ops.len()).collect();
    order.sort_unstable_by(|&a, &b| ops[a].key().cmp(ops[b].key()));
    {
        let mut creates = tx.prepare_cached(&KV_CREATE_SQL[1])?;
        let mut create = tx.prepare_cached(&KV_CREATE_SQL[0])?;
        let mut upsert = tx.prepare_cached(
            "INSERT INTO kv (key, value, create_revision, mod_revision) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, mod_revision = excluded.mod_revision",
        )?;
        let mut remove = tx.prepare_cached("DELETE FROM kv WHERE key = ?1")?;
        creates.raw_bind_parameter(1, revision)?;
        create.raw_bind_parameter(1, revision)?;
        // Creates adjacent in key order, inserted together.
        let mut run: Vec<(&[u8], &[u8])> = Vec::with_capacity(ROWS_PER_INSERT);
        for &i in &order {
            match &ops[i] {
                TxnOp::Create { key, value } => {
                    run.push((key.as_bytes(), value));
                    if run.len() < ROWS_PER_INSERT {
                        continue;
                    }
                }
                TxnOp::Update { key, value, .. } | TxnOp::Put { key, value } => {
                    upsert.execute(params![key.as_bytes(), value, revision])?;
                }
                TxnOp::Delete { key, .. } => {
                    if current[i].is_some() {
                        remove.execute([key.as_bytes()])?;
                    }
                }
            }
            if !insert_creates(&mut creates, &mut create, &run)? {
                return Ok(None);
            }
            run.clear();
        }
        if !insert_creates(&mut creates, &mut create, &run)? {
            return Ok(None);
        }
    }
    // The log rows, in operation order (a delete of a missing key changes nothing).
    let rows: Vec<LogRow<'_>> = ops
        .iter()
        .zip(&current)
        .filter_map(|(op, cur)| {
            let (kind, value, create) = match op {
                TxnOp::Delete { .. } if cur.is_none() => return None,
                TxnOp::Delete { .. } => (KIND_DELETE, &[] as &[u8], 0),
                TxnOp::Create { value, .. }
                | TxnOp::Update { value, .. }
                | TxnOp::Put { value, .. } => (
                    KIND_PUT,
                    value.as_slice(),
                    cur.as_ref().map_or(revision, |c| c.create_revision),
                ),
            };
            Some(LogRow {
                key: op.key().as_bytes(),
                kind,
                value,
                create,
                prev: cur.as_ref(),
            })
        })
        .collect();
    let mut many = tx.prepare_cached(&LOG_INSERT_SQL[1])?;
    let mut one = tx.prepare_cached(&LOG_INSERT_SQL[0])?;
    many.raw_bind_parameter(1, revision)?;
    one.raw_bind_parameter(1, revision)?;
    let mut chunks = rows.chunks_exact(ROWS_PER_INSERT);
    let mut idx: i64 = 0;
    for chunk in &mut chunks {
        for (slot, row) in chunk.iter().enumerate() {
            row.bind(&mut many, slot, idx)?;
            idx += 1;
        }
        insert_log(&mut many, revision, idx, chunk.len())?;
    }
    for row in chunks.remainder() {
        row.bind(&mut one, 0, idx)?;
        idx += 1;
        insert_log(&mut one, revision, idx, 1)?;
    }
    if idx > 0 && dirs::exists(tx)? {
        dirs::write(tx, revision, rows.iter().map(|row| row.key))?;
    }
    Ok(Some(idx))
}

/// Run a bound [`log_insert_sql`] statement of `rows` rows, the last of them at `end - 1`; an
/// error (rolling the transaction back) if a row was not inserted: a log row of a revision not
/// yet committed existed, which only a damaged database holds.
fn insert_log(
    stmt: &mut rusqlite::Statement<'_>,
    revision: Revision,
    end: i64,
    rows: usize,
) -> rusqlite::Result<()> {
    let inserted = stmt.raw_execute()?;
    if inserted == rows {
        return Ok(());
    }
    Err(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY),
        Some(format!(
            "log rows of revision {revision} before idx {end} exist already ({inserted} of {rows} inserted): the database is damaged; restore it from a backup"
        )),
    ))
}

/// Rows per multi-row insert of a bulk write. Running a statement costs about as much again
/// as the row it inserts (binding, starting and resetting it); one statement per this many
/// rows spreads that.
const ROWS_PER_INSERT: usize = 64;

/// [`kv_create_sql`] of 1 and of [`ROWS_PER_INSERT`] rows.
static KV_CREATE_SQL: LazyLock<[String; 2]> =
    LazyLock::new(|| [kv_create_sql(1), kv_create_sql(ROWS_PER_INSERT)]);
/// [`log_insert_sql`] of 1 and of [`ROWS_PER_INSERT`] rows.
static LOG_INSERT_SQL: LazyLock<[String; 2]> =
    LazyLock::new(|| [log_insert_sql(1), log_insert_sql(ROWS_PER_INSERT)]);

/// An insert of `rows` rows into `kv` that inserts nothing for a key that exists: ?1 is the
/// revision, then a key and value per row.
///
/// `OR IGNORE`, not `ON CONFLICT (key) DO NOTHING`, and the caller counts the rows inserted
/// (see [`insert_creates`]): a statement of several rows that could abort halfway (a `NOT
/// NULL` column's default `ABORT`, a conflict target other than the primary key's) makes
/// sqlite keep a statement journal, a copy of every page the statement changes that existed
/// before it, to undo its earlier rows; a bulk write copied ~3 pages of 16 KiB per statement
/// there (~20 ms of an apply of 50,000 Services). Under `OR IGNORE` nothing aborts a statement
/// halfway, so sqlite keeps none. Every value bound is non-null, so the only row it can skip
/// is one whose key exists, which the count reports.
fn kv_create_sql(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|r| format!("(?{}, ?{}, ?1, ?1)", 2 + 2 * r, 3 + 2 * r))
        .collect();
    format!(
        "INSERT OR IGNORE INTO kv (key, value, create_revision, mod_revision) VALUES {}",
        values.join(", ")
    )
}

/// Insert `run` (keys and values) into `kv` at the revision bound to ?1 of both statements:
/// `many` inserts [`ROWS_PER_INSERT`] rows, `one` one. False when a key existed (nothing was
/// inserted for it; the transaction must be rolled back).
fn insert_creates(
    many: &mut rusqlite::Statement<'_>,
    one: &mut rusqlite::Statement<'_>,
    run: &[(&[u8], &[u8])],
) -> rusqlite::Result<bool> {
    let stmt = match run.len() {
        0 => return Ok(true),
        ROWS_PER_INSERT => many,
        _ => {
            for &(key, value) in run {
                one.raw_bind_parameter(2, key)?;
                one.raw_bind_parameter(3, value)?;
                if one.raw_execute()? != 1 {
                    return Ok(false);
                }
            }
            return Ok(true);
        }
    };
    for (r, &(key, value)) in run.iter().enumerate() {
        stmt.raw_bind_parameter(2 + 2 * r, key)?;
        stmt.raw_bind_parameter(3 + 2 * r, value)?;
    }
    Ok(stmt.raw_execute()? == run.len())
}

/// One row of `log` to insert.
struct LogRow<'a> {
    key: &'a [u8],
    kind: i64,
    value: &'a [u8],
    create: Revision,
    prev: Option<&'a KeyValue>,
}

impl LogRow<'_> {
    /// Bind this row, at `idx`, to row `slot` of a [`log_insert_sql`] statement.
    fn bind(
        &self,
        stmt: &mut rusqlite::Statement<'_>,
        slot: usize,
        idx: i64,
    ) -> rusqlite::Result<()> {
        let at = 2 + slot * 8;
        stmt.raw_bind_parameter(at, idx)?;
        stmt.raw_bind_parameter(at + 1, self.key)?;
        stmt.raw_bind_parameter(at + 2, self.kind)?;
        stmt.raw_bind_parameter(at + 3, self.value)?;
        stmt.raw_bind_parameter(at + 4, self.create)?;
        stmt.raw_bind_parameter(at + 5, self.prev.map(|p| p.value.as_slice()))?;
        stmt.raw_bind_parameter(at + 6, self.prev.map(|p| p.create_revision))?;
        stmt.raw_bind_parameter(at + 7, self.prev.map(|p| p.mod_revision))
    }
}

/// An insert of `rows` rows into `log`: ?1 is the revision, then 8 parameters per row (see
/// [`LogRow::bind`]). `OR IGNORE` for the reason [`kv_create_sql`] gives; the rows of a new
/// revision cannot exist already (the revision is read and bumped in the same write
/// transaction), and [`insert_log`] checks that every row was inserted all the same.
fn log_insert_sql(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|r| {
            let at = 2 + r * 8;
            let params: Vec<String> = (at..at + 8).map(|p| format!("?{p}")).collect();
            format!("(?1, {})", params.join(", "))
        })
        .collect();
    format!(
        "INSERT OR IGNORE INTO log (revision, idx, key, kind, value, create_revision, prev_value, prev_create, prev_mod)
         VALUES {}",
        values.join(", ")
    )
}

/// Where a watch has read the log up to: every row at or before `(revision, idx)`.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    revision: Revision,
    idx: i64,
}

impl Cursor {
    /// Everything up to and including `revision`.
    fn after(revision: Revision) -> Self {
        Cursor {
            revision,
            idx: i64::MAX,
        }
    }

    /// The last revision whose rows have all been read.
    fn complete(self) -> Revision {
        if self.idx == i64::MAX {
            self.revision
        } else {
            self.revision - 1
        }
    }
}

/// One watch query's result.
enum Window {
    Compacted(Revision),
    Events {
        events: Vec<WatchEvent>,
        /// Everything up to here has been read.
        cursor: Cursor,
        /// More rows may be waiting beyond `cursor` (the batch was full, or the read stopped
        /// before the head: see `dirs::Plan`).
        more: bool,
    },
}

fn read_window(
    conn: &mut Connection,
    prefix: &[u8],
    end: Option<&[u8]>,
    cursor: Cursor,
) -> rusqlite::Result<Window> {
    let tx = conn.transaction()?;
    let head = meta(&tx, "revision")?;
    let compacted = meta(&tx, "compacted")?;
    if cursor.complete() < compacted {
        return Ok(Window::Compacted(compacted));
    }
    // The revisions to read: all after the cursor, or fewer when `log_dirs` shows that some
    // hold none of the prefix's keys (see `dirs`).
    let from = match cursor.idx {
        i64::MAX => cursor.revision + 1,
        _ => cursor.revision,
    };
    let plan = match from <= head && dirs::exists(&tx)? {
        true => Some(dirs::plan(&tx, prefix, from, head)?),
        false => None,
    };
    let (start, last) = match plan {
        None => ((cursor.revision, cursor.idx), head),
        Some(dirs::Plan::Skip { last }) => {
            tx.rollback()?;
            return Ok(Window::Events {
                events: Vec::new(),
                cursor: Cursor::after(last),
                more: last < head,
            });
        }
        Some(dirs::Plan::Read { first, last }) if first > from => ((first - 1, i64::MAX), last),
        Some(dirs::Plan::Read { last, .. }) => ((cursor.revision, cursor.idx), last),
    };
    let mut events = Vec::new();
    let mut last_row = None;
    {
        // The row value `(revision, idx) > (?1, ?2)` lets sqlite seek the primary-key index
        // straight past the cursor; spelled as `revision >= ?1 AND (revision > ?1 OR idx > ?2)`
        // it seeks only on `revision` and walks every row of the cursor's revision already read
        // (100,000 index entries for an apply of 50,000 Services: ~15 ms per window, again for
        // every batch of that revision, and for the first event after it).
        let mut stmt = tx.prepare_cached(
            "SELECT revision, idx, key, kind, value, create_revision, prev_value, prev_create, prev_mod
             FROM log
             WHERE (revision, idx) > (?1, ?2) AND revision <= ?3
               AND key >= ?4 AND (?5 IS NULL OR key < ?5)
             ORDER BY revision, idx LIMIT ?6",
        )?;
        let mut rows = stmt.query(params![start.0, start.1, last, prefix, end, WATCH_BATCH])?;
        while let Some(r) = rows.next()? {
            let revision: Revision = r.get(0)?;
            let idx: i64 = r.get(1)?;
            let key = key_string(r.get(2)?);
            let kind: i64 = r.get(3)?;
            let prev_value: Option<Vec<u8>> = r.get(6)?;
            let prev = match prev_value {
                Some(value) => Some(KeyValue {
                    key: key.clone(),
                    value,
                    create_revision: r.get(7)?,
                    mod_revision: r.get(8)?,
                }),
                None => None,
            };
            events.push(WatchEvent {
                kind: if kind == KIND_DELETE {
                    EventKind::Delete
                } else {
                    EventKind::Put
                },
                kv: KeyValue {
                    key,
                    value: r.get(4)?,
                    create_revision: r.get(5)?,
                    mod_revision: revision,
                },
                prev,
                revision,
            });
            last_row = Some(Cursor { revision, idx });
        }
    }
    // Read-only: a rollback just releases the snapshot.
    tx.rollback()?;
    let full = events.len() as i64 >= WATCH_BATCH;
    let cursor = match last_row {
        Some(c) if full => c,
        // Fewer rows than a batch: this snapshot has nothing more up to `last`.
        _ => Cursor::after(last.max(cursor.complete())),
    };
    Ok(Window::Events {
        events,
        cursor,
        // The batch was full, or the plan stopped before `head`.
        more: full || last < head,
    })
}

/// The revision now committed, if another connection committed since `version` (sqlite's
/// `data_version`) was last read. `version` moves only together with a revision read: when
/// reading the revision fails (busy beyond the retries, an I/O error), the next check reads it
/// again instead of finding `data_version` unchanged and skipping the commit until the next one.
fn poll_head(conn: &Connection, version: &mut Option<i64>, name: &str) -> Result<Option<Revision>> {
    let seen = *version;
    let polled = retry_busy(name, || {
        let v: i64 = conn.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        if seen == Some(v) {
            return Ok(None);
        }
        meta(conn, "revision").map(|head| Some((v, head)))
    })?;
    Ok(polled.map(|(v, head)| {
        *version = Some(v);
        head
    }))
}

fn poll_loop(weak: Weak<Shared>, path: PathBuf, name: String, options: SqliteOptions) {
    let safety_poll = options.safety_poll;
    let mut conn = match retry_busy(&name, || open_connection(&path)) {
        Ok(c) => c,
        Err(error) => {
            tracing::error!(path = name, %error, "sqlite watch poller cannot open the database; watches only see this process's writes");
            return;
        }
    };
    // Opened after the connection, so the WAL file exists and any commit from here on wakes.
    let mut waker = if !options.wakeups {
        None
    } else {
        match wake::CommitWaker::new(&path) {
            Ok(w) => Some(w),
            Err(error) => {
                tracing::warn!(path = name, %error, "no inotify for the sqlite watch; polling every {POLL_INTERVAL:?} instead");
                None
            }
        }
    };
    let mut version: Option<i64> = None;
    let wal = wake::wal_path(&path);
    let mut last_change = Instant::now();
    loop {
        // Check first, then wait: a commit made before the waker existed is seen here, every
        // later one wakes the wait below.
        {
            let Some(shared) = weak.upgrade() else {
                return;
            };
            if shared.head.receiver_count() > 0 {
                match poll_head(&conn, &mut version, &name) {
                    Ok(Some(head)) => {
                        shared.publish(head);
                        last_change = Instant::now();
                    }
                    Ok(None) => {}
                    Err(error) => tracing::warn!(path = name, %error, "sqlite watch poll failed"),
                }
            }
        }
        match waker.as_mut().map(|w| w.wait(safety_poll)) {
            // Without wake-ups, "quiet" is judged by `data_version` alone (above).
            None => {
                std::thread::sleep(POLL_INTERVAL);
                if last_change.elapsed() >= CHECKPOINT_AFTER_QUIET {
                    quiet_checkpoint(&mut conn, &wal, &name);
                }
            }
            Some(Ok(wake::Woken::Changed)) => last_change = Instant::now(),
            Some(Ok(wake::Woken::Timeout)) => {
                if last_change.elapsed() >= CHECKPOINT_AFTER_QUIET {
                    quiet_checkpoint(&mut conn, &wal, &name);
                }
            }
            Some(Ok(wake::Woken::Lost)) => {
                tracing::warn!(
                    path = name,
                    "the sqlite watch's inotify watch is gone; polling every {POLL_INTERVAL:?} instead"
                );
                waker = None;
            }
            Some(Err(error)) => {
                tracing::warn!(path = name, %error, "the sqlite watch's inotify failed; polling every {POLL_INTERVAL:?} instead");
                waker = None;
            }
        }
    }
}

/// Checkpoint the WAL into the database when it has grown past [`QUIET_CHECKPOINT_BYTES`]
/// (see [`AUTOCHECKPOINT_PAGES`]). PASSIVE: never waits for readers or writers; what it cannot
/// copy now is copied next time. When everything was copied, one small write restarts the WAL
/// here: the first commit after a complete checkpoint rewinds the WAL, fsyncs its new header
/// and truncates the file (`journal_size_limit`; tens of milliseconds for a WAL of 50,000
/// resources), which would otherwise fall on the next writer (the next `serval apply`). The
/// write bumps a counter in `meta` (`wal_restarts`; sqlite skips an update that changes
/// nothing, which would not restart the WAL): no revision, no log entry; other watchers'
/// pollers see `data_version` move, find the revision unchanged and publish nothing.
fn quiet_checkpoint(conn: &mut Connection, wal: &Path, name: &str) {
    let size = std::fs::metadata(wal).map_or(0, |m| m.len());
    // Strictly larger: a WAL just restarted is truncated to exactly this size.
    if size <= QUIET_CHECKPOINT_BYTES.unsigned_abs() {
        return;
    }
    let started = Instant::now();
    let checkpointed = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((
            r.get::<_, i64>(0)? != 0,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    });
    let (busy, frames, copied) = match checkpointed {
        Ok(c) => c,
        Err(error) => {
            tracing::debug!(path = name, %error, "sqlite WAL checkpoint failed; will retry when quiet");
            return;
        }
    };
    // Only if the write lock is free right now: the poller must not wait behind a writer.
    // `busy`: another connection (another watcher's poller, a closing process) holds the
    // checkpoint lock; `frames` and `copied` are then both -1, which is not a complete
    // checkpoint.
    let restarted = !busy
        && frames == copied
        && conn.busy_handler(None::<fn(i32) -> bool>).is_ok()
        && conn
            .execute(
                "INSERT INTO meta (name, value) VALUES ('wal_restarts', 1)
                 ON CONFLICT (name) DO UPDATE SET value = value + 1",
                [],
            )
            .is_ok();
    if let Err(error) = conn.busy_handler(Some(busy_wait)) {
        tracing::debug!(path = name, %error, "cannot restore the poller's busy handler");
    }
    tracing::debug!(
        path = name,
        size,
        busy,
        frames,
        copied,
        restarted,
        took_ms = started.elapsed().as_secs_f64() * 1e3,
        "checkpointed the sqlite WAL"
    );
}

async fn watch_task(
    shared: Arc<Shared>,
    prefix: String,
    after: Revision,
    mut head_rx: tokio::sync::watch::Receiver<Revision>,
    tx: tokio::sync::mpsc::Sender<Result<WatchEvent>>,
) {
    let end = prefix_end(prefix.as_bytes());
    let prefix = Arc::new((prefix.into_bytes(), end));
    let mut cursor = Cursor::after(after);
    loop {
        head_rx.borrow_and_update();
        let s = shared.clone();
        let p = prefix.clone();
        let window =
            run_blocking(move || s.read(|conn| read_window(conn, &p.0, p.1.as_deref(), cursor)))
                .await;
        let (events, next, more) = match window {
            Ok(Window::Events {
                events,
                cursor,
                more,
            }) => (events, cursor, more),
            Ok(Window::Compacted(compacted)) => {
                let _ = tx
                    .send(Err(StoreError::Compacted {
                        requested: cursor.complete() + 1,
                        compacted,
                    }))
                    .await;
                return;
            }
            Err(e) => {
                tracing::warn!(path = shared.name, error = %e, "sqlite watch failed");
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        for ev in events {
            if tx.send(Ok(ev)).await.is_err() {
                return;
            }
        }
        cursor = next;
        if more {
            continue;
        }
        // Caught up: wait until someone publishes a newer revision.
        loop {
            if *head_rx.borrow_and_update() > cursor.complete() {
                break;
            }
            tokio::select! {
                changed = head_rx.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
            }
        }
    }
}

#[async_trait]
impl Datastore for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_string();
        self.blocking(move |s| s.read(|conn| get_kv(conn, &key)))
            .await
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        let prefix = prefix.to_string();
        self.blocking(move |s| {
            s.read(|conn| {
                let tx = conn.transaction()?;
                let revision = meta(&tx, "revision")?;
                let end = prefix_end(prefix.as_bytes());
                let mut out = Vec::new();
                {
                    let mut stmt = match end {
                        Some(_) => tx.prepare_cached(
                            "SELECT key, value, create_revision, mod_revision FROM kv
                             WHERE key >= ?1 AND key < ?2 ORDER BY key",
                        )?,
                        None => tx.prepare_cached(
                            "SELECT key, value, create_revision, mod_revision FROM kv
                             WHERE key >= ?1 ORDER BY key",
                        )?,
                    };
                    let map = |r: &rusqlite::Row<'_>| {
                        Ok(KeyValue {
                            key: key_string(r.get(0)?),
                            value: r.get(1)?,
                            create_revision: r.get(2)?,
                            mod_revision: r.get(3)?,
                        })
                    };
                    let rows = match &end {
                        Some(end) => stmt.query_map(params![prefix.as_bytes(), end], map)?,
                        None => stmt.query_map(params![prefix.as_bytes()], map)?,
                    };
                    for row in rows {
                        out.push(row?);
                    }
                }
                tx.rollback()?;
                Ok((out, revision))
            })
        })
        .await
    }

    async fn txn(&self, ops: Vec<TxnOp>) -> Result<Revision> {
        self.blocking(move |s| s.txn(&ops)).await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<Watch> {
        let shared = self.shared.clone();
        shared.poller.get_or_init(|| {
            let weak = Arc::downgrade(&shared);
            let (path, name) = (shared.real.clone(), shared.name.clone());
            let options = shared.options;
            if let Err(error) = std::thread::Builder::new()
                .name("store-sqlite-poll".into())
                .spawn(move || poll_loop(weak, path, name, options))
            {
                tracing::error!(path = shared.name, %error, "cannot start the sqlite watch poller; watches only see this process's writes");
            }
        });
        let head_rx = shared.head.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BUFFER);
        let task = tokio::spawn(watch_task(shared, prefix.to_string(), after, head_rx, tx));
        Ok(Watch::new(rx, Some(task)))
    }

    async fn revision(&self) -> Result<Revision> {
        self.blocking(|s| s.read(|conn| meta(conn, "revision")))
            .await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.blocking(move |s| s.compact(revision)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn relative_and_malformed_urls_are_rejected() {
        assert!(matches!(
            SqliteStore::open("relative/file.db").await,
            Err(StoreError::BadUrl { .. })
        ));
        assert!(matches!(
            crate::open("sqlite://relative.db").await,
            Err(StoreError::BadUrl { .. })
        ));
    }

    #[tokio::test]
    async fn a_revision_split_across_batches_is_resumed_or_reported_compacted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path().join("s.db"))
            .await
            .expect("open");
        let n = WATCH_BATCH as usize + 500;
        let ops = (0..n)
            .map(|i| TxnOp::Put {
                key: format!("/k/{i:05}"),
                value: vec![],
            })
            .collect();
        let rev = store.txn(ops).await.expect("txn");
        let shared = store.shared.clone();
        let read = move |cursor| {
            shared
                .read(|conn| read_window(conn, b"/k/", Some(b"/k0"), cursor))
                .expect("read")
        };
        let Window::Events {
            events,
            cursor,
            more: true,
        } = read(Cursor::after(rev - 1))
        else {
            panic!("first batch should be full");
        };
        assert_eq!(events.len(), WATCH_BATCH as usize);
        assert_eq!((cursor.revision, cursor.complete()), (rev, rev - 1));
        let Window::Events {
            events: rest,
            cursor: end,
            more: false,
        } = read(cursor)
        else {
            panic!("second batch should finish the revision");
        };
        assert_eq!(rest.len(), 500);
        assert_eq!(rest[0].kv.key, format!("/k/{:05}", WATCH_BATCH));
        assert_eq!(end.complete(), rev);
        // Compacting the half-read revision away must not silently drop its other half.
        store.compact(rev).await.expect("compact");
        assert!(matches!(read(cursor), Window::Compacted(c) if c == rev));
        assert!(matches!(read(end), Window::Events { ref events, .. } if events.is_empty()));
    }

    /// Several watching processes (one agent per node) share the file, and their pollers go
    /// quiet at the same moment. A passive checkpoint that cannot take the WAL checkpoint lock
    /// because another process holds it reports busy with -1 frames and -1 copied: that is not
    /// "everything copied", so the poller must not make its WAL-restart write (a write that
    /// restarts nothing, appends to the WAL the other checkpointer is copying and wakes every
    /// other watcher).
    #[tokio::test]
    async fn a_checkpoint_locked_by_another_process_makes_no_restart_write() {
        use nix::fcntl::{FcntlArg, fcntl};
        use nix::libc;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path).await.expect("open");
        // More than QUIET_CHECKPOINT_BYTES of WAL; no watch, so no poller checkpoints it.
        let value = vec![b'x'; 4096];
        for batch in 0..10 {
            let ops = (0..50)
                .map(|i| TxnOp::Put {
                    key: format!("/c/{batch}/{i}"),
                    value: value.clone(),
                })
                .collect();
            store.txn(ops).await.expect("txn");
        }
        let wal = wake::wal_path(&path);
        let wal_len = || std::fs::metadata(&wal).expect("wal").len();
        let big = wal_len();
        assert!(
            big > QUIET_CHECKPOINT_BYTES.unsigned_abs(),
            "WAL {big} bytes"
        );
        let mut conn = open_connection(&path).expect("poller's connection");
        let restarts = |conn: &Connection| {
            conn.query_row(
                "SELECT value FROM meta WHERE name = 'wal_restarts'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .expect("read meta")
        };
        // Another process checkpointing holds sqlite's WAL checkpoint lock: byte 121 of the
        // -shm file (lock base 120 + WAL_CKPT_LOCK 1). An open-file-description lock conflicts
        // with sqlite's POSIX record locks even within this process.
        let shm = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.path().join("s.db-shm"))
            .expect("open -shm");
        let ckpt_lock = |l_type: libc::c_int| libc::flock {
            l_type: l_type as libc::c_short,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: 121,
            l_len: 1,
            l_pid: 0,
        };
        fcntl(&shm, FcntlArg::F_OFD_SETLK(&ckpt_lock(libc::F_WRLCK))).expect("lock");
        quiet_checkpoint(&mut conn, &wal, "test");
        assert_eq!(
            restarts(&conn),
            None,
            "a restart write while another process checkpoints"
        );
        assert_eq!(wal_len(), big);
        // Once the lock is free, the poller checkpoints, restarts and truncates the WAL.
        fcntl(&shm, FcntlArg::F_OFD_SETLK(&ckpt_lock(libc::F_UNLCK))).expect("unlock");
        quiet_checkpoint(&mut conn, &wal, "test");
        assert_eq!(restarts(&conn), Some(1));
        assert!(wal_len() <= QUIET_CHECKPOINT_BYTES.unsigned_abs());
    }

    /// A poll whose revision read fails must not record the new `data_version`: the next poll
    /// would find it unchanged and the commit would reach watches only with the next commit
    /// (never, with wake-ups and nothing else written). The read is made to fail with a
    /// connection-local empty `temp.meta`, which shadows the store's `meta` without changing
    /// the database.
    #[tokio::test]
    async fn a_failed_poll_is_read_again_by_the_next_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path).await.expect("open");
        let conn = open_connection(&path).expect("poller's connection");
        let mut version = None;
        let start = poll_head(&conn, &mut version, "test").expect("first poll");
        assert_eq!(start, Some(0));
        let rev = store.create("/k", b"v".to_vec()).await.expect("create");
        conn.execute_batch("CREATE TEMP TABLE meta (name TEXT, value INTEGER)")
            .expect("shadow meta");
        assert!(poll_head(&conn, &mut version, "test").is_err());
        conn.execute_batch("DROP TABLE temp.meta")
            .expect("unshadow");
        assert_eq!(
            poll_head(&conn, &mut version, "test").expect("poll"),
            Some(rev),
            "the commit seen by the failed poll was skipped"
        );
        assert_eq!(poll_head(&conn, &mut version, "test").expect("poll"), None);
    }

    /// sqlite resolves symlinks and keeps the WAL next to the real file, so a store opened
    /// through a symlink must touch and watch that WAL, not `<link>-wal`: otherwise another
    /// connection's commits reach the watch only by the safety re-check (here an hour).
    #[tokio::test]
    async fn a_store_opened_through_a_symlink_is_woken() {
        let real = tempfile::tempdir().expect("tempdir");
        let links = tempfile::tempdir().expect("tempdir");
        let file = real.path().join("s.db");
        let link = links.path().join("s.db");
        std::os::unix::fs::symlink(&file, &link).expect("symlink");
        let options = SqliteOptions {
            safety_poll: Duration::from_secs(3600),
            wakeups: true,
        };
        let watcher = SqliteStore::open_with(&link, options).await.expect("open");
        let writer = SqliteStore::open_with(&link, options).await.expect("open");
        assert!(
            real.path().join("s.db-wal").exists(),
            "sqlite's WAL is next to the real file"
        );
        let mut w = watcher.watch("/l/", 0).await.expect("watch");
        // Let the poller make its first check and go to sleep, so that the write below has to
        // wake it (a longer or shorter pause changes nothing when wake-ups work).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let rev = writer.create("/l/a", b"1".to_vec()).await.expect("create");
        let e = tokio::time::timeout(Duration::from_secs(20), w.next())
            .await
            .expect("no wake-up: the commit was not seen")
            .expect("watch open")
            .expect("event");
        assert_eq!((e.kv.key.as_str(), e.revision), ("/l/a", rev));
    }

    /// The page size and each table's `CREATE` statement of the database at `path`.
    fn layout(path: &Path) -> (i64, Vec<String>) {
        let conn = Connection::open(path).expect("open");
        let page = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .expect("page size");
        let mut stmt = conn
            .prepare("SELECT sql FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .expect("prepare");
        let tables = stmt
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("tables");
        (page, tables)
    }

    /// A new database gets `WITHOUT ROWID` tables and larger pages; a database in the layout
    /// of earlier versions keeps its layout through opens and writes, and both record the same
    /// history.
    #[tokio::test]
    async fn a_new_database_gets_the_new_layout_and_an_old_one_keeps_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let new = dir.path().join("new.db");
        let old = dir.path().join("old.db");
        create_rowid_layout(&old).expect("old layout");
        let mut histories = Vec::new();
        for path in [&new, &old] {
            let store = SqliteStore::open(path).await.expect("open");
            let r1 = store
                .txn(vec![
                    TxnOp::Create {
                        key: "/a".into(),
                        value: b"1".to_vec(),
                    },
                    TxnOp::Create {
                        key: "/b".into(),
                        value: b"2".to_vec(),
                    },
                ])
                .await
                .expect("create");
            store
                .txn(vec![
                    TxnOp::Update {
                        key: "/b".into(),
                        value: b"3".to_vec(),
                        expected: r1,
                    },
                    TxnOp::Delete {
                        key: "/a".into(),
                        expected: Some(r1),
                    },
                    TxnOp::Put {
                        key: "/c".into(),
                        value: b"4".to_vec(),
                    },
                ])
                .await
                .expect("update");
            let mut w = store.watch("/", 0).await.expect("watch");
            let mut events = Vec::new();
            for _ in 0..5 {
                events.push(w.next().await.expect("open").expect("event"));
            }
            histories.push((events, store.list("/").await.expect("list")));
        }
        assert_eq!(histories[0], histories[1]);
        let (events, _) = &histories[0];
        assert_eq!(
            events[3]
                .prev
                .as_ref()
                .map(|p| (p.value.as_slice(), p.mod_revision)),
            Some((&b"1"[..], 1)),
            "the delete's previous value: {events:?}"
        );
        let (page, tables) = layout(&new);
        assert_eq!(page, NEW_PAGE_SIZE);
        for table in ["kv", "log"] {
            let sql = tables
                .iter()
                .find(|t| t.contains(&format!("TABLE {table} ")))
                .expect("table");
            assert!(sql.ends_with("WITHOUT ROWID"), "{sql}");
        }
        let (page, tables) = layout(&old);
        assert_eq!(page, 4096);
        // The old tables keep their layout; `log_dirs` is added to both (see `dirs`).
        assert!(
            tables
                .iter()
                .filter(|t| !t.contains("TABLE log_dirs "))
                .all(|t| !t.contains("WITHOUT ROWID")),
            "{tables:?}"
        );
        for tables in [&tables, &layout(&new).1] {
            assert!(
                tables.iter().any(|t| t.contains("TABLE log_dirs ")),
                "{tables:?}"
            );
        }
    }

    /// Bulk transactions (multi-row inserts, key-ordered `kv` writes) keep the semantics of
    /// single operations: every kind mixed in one transaction, the log in operation order with
    /// previous values, and a failure in the middle of a full insert batch naming the first
    /// failing operation and writing nothing.
    #[tokio::test]
    async fn a_bulk_txn_writes_and_fails_like_single_operations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path().join("s.db"))
            .await
            .expect("open");
        let key = |i: usize| format!("/m/{i:04}");
        let r1 = store
            .txn(
                (0..300)
                    .filter(|i| i % 3 == 0)
                    .map(|i| TxnOp::Create {
                        key: key(i),
                        value: format!("v{i}").into_bytes(),
                    })
                    .collect(),
            )
            .await
            .expect("first txn");
        // Reverse key order; every third key exists: update or delete it, create the others,
        // and delete a missing key (no log row) in the middle.
        let mut ops: Vec<TxnOp> = (0..300)
            .rev()
            .map(|i| match i % 6 {
                0 => TxnOp::Update {
                    key: key(i),
                    value: format!("u{i}").into_bytes(),
                    expected: r1,
                },
                3 => TxnOp::Delete {
                    key: key(i),
                    expected: Some(r1),
                },
                _ => TxnOp::Create {
                    key: key(i),
                    value: format!("c{i}").into_bytes(),
                },
            })
            .collect();
        ops.insert(
            150,
            TxnOp::Delete {
                key: "/m/missing".into(),
                expected: None,
            },
        );
        let r2 = store.txn(ops.clone()).await.expect("bulk txn");
        assert_eq!(r2, r1 + 1);
        let (kvs, _) = store.list("/m/").await.expect("list");
        let want: Vec<(String, String, Revision)> = (0..300)
            .filter(|i| i % 6 != 3)
            .map(|i| match i % 6 {
                0 => (key(i), format!("u{i}"), r1),
                _ => (key(i), format!("c{i}"), r2),
            })
            .collect();
        let got: Vec<(String, String, Revision)> = kvs
            .iter()
            .map(|kv| {
                assert_eq!(kv.mod_revision, r2, "{kv:?}");
                (
                    kv.key.clone(),
                    String::from_utf8(kv.value.clone()).expect("utf-8"),
                    kv.create_revision,
                )
            })
            .collect();
        assert_eq!(got, want);
        let mut w = store.watch("/m/", r1).await.expect("watch");
        for op in ops.iter().filter(|op| op.key() != "/m/missing") {
            let e = w.next().await.expect("open").expect("event");
            assert_eq!((e.kv.key.as_str(), e.revision), (op.key(), r2));
            match op {
                TxnOp::Create { value, .. } => {
                    assert_eq!((e.kind, &e.kv.value, e.prev), (EventKind::Put, value, None));
                }
                TxnOp::Update { value, .. } => {
                    assert_eq!((e.kind, &e.kv.value), (EventKind::Put, value));
                    let prev = e.prev.expect("previous value");
                    assert_eq!((prev.mod_revision, prev.create_revision), (r1, r1));
                }
                TxnOp::Delete { .. } => {
                    assert_eq!(e.kind, EventKind::Delete);
                    assert_eq!(e.prev.map(|p| p.mod_revision), Some(r1));
                }
                TxnOp::Put { .. } => unreachable!("no puts here"),
            }
        }
        // 200 creates of new keys, two of existing ones (sorting before all the new ones):
        // the first in operation order is named.
        let mut ops: Vec<TxnOp> = (0..200)
            .map(|i| TxnOp::Create {
                key: format!("/n/{i:04}"),
                value: vec![],
            })
            .collect();
        for (at, i) in [(150, 2), (170, 1)] {
            ops.insert(
                at,
                TxnOp::Create {
                    key: key(i),
                    value: vec![],
                },
            );
        }
        match store.txn(ops).await {
            Err(StoreError::TxnFailed { index, source }) => {
                assert_eq!(index, 150);
                assert!(
                    matches!(*source, StoreError::AlreadyExists { ref key } if key == "/m/0002"),
                    "{source:?}"
                );
            }
            other => panic!("expected a failure at 150, got {other:?}"),
        }
        assert_eq!(store.revision().await.expect("revision"), r2);
        assert!(store.list("/n/").await.expect("list").0.is_empty());
    }

    /// A failed create batch is rolled back before the ordered check that names the failure;
    /// another process may write in between. The check then reports what fails in the new
    /// state (another operation than the one the batch tripped on), or, when nothing fails any
    /// more, the transaction is written from the new state.
    #[tokio::test]
    async fn a_failure_is_named_from_the_state_after_another_process_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path).await.expect("open");
        let rx = store.create("/p/x", b"x".to_vec()).await.expect("x");
        let ry = store.create("/p/y", b"y".to_vec()).await.expect("y");
        drop(store);
        let mut a = open_connection(&path).expect("connection a");
        let mut b = open_connection(&path).expect("connection b");
        let create = |key: &str| TxnOp::Create {
            key: key.into(),
            value: b"new".to_vec(),
        };
        // The batch fails on the create of the existing `/p/x`; before the check, another
        // process deletes `/p/x`: nothing fails any more, so the whole transaction is written.
        let ops = vec![create("/p/new"), create("/p/x")];
        let tx = a
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .expect("begin");
        let head = meta(&tx, "revision").expect("head");
        assert!(write_txn(&tx, head, &ops).expect("write").is_none());
        drop(tx);
        let del = vec![TxnOp::Delete {
            key: "/p/x".into(),
            expected: Some(rx),
        }];
        let rd = apply_txn(&mut b, &del).expect("sqlite").expect("delete");
        let r = apply_txn(&mut a, &ops)
            .expect("sqlite")
            .expect("retried txn");
        assert_eq!(r, rd + 1);
        for key in ["/p/new", "/p/x"] {
            let kv = get_kv(&a, key).expect("get").expect("created");
            assert_eq!((kv.value.as_slice(), kv.create_revision), (&b"new"[..], r));
        }
        // The batch fails on `/p/x` (exists again); in between, another process changes
        // `/p/y`, so the update before the create is the first failing operation.
        let ops = vec![
            TxnOp::Update {
                key: "/p/y".into(),
                value: b"y2".to_vec(),
                expected: ry,
            },
            create("/p/x"),
        ];
        let tx = a
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .expect("begin");
        let head = meta(&tx, "revision").expect("head");
        assert!(write_txn(&tx, head, &ops).expect("write").is_none());
        drop(tx);
        let put = vec![TxnOp::Put {
            key: "/p/y".into(),
            value: b"other".to_vec(),
        }];
        let rp = apply_txn(&mut b, &put).expect("sqlite").expect("put");
        match apply_txn(&mut a, &ops).expect("sqlite") {
            Err(StoreError::TxnFailed { index: 0, source }) => assert!(
                matches!(*source, StoreError::Conflict { ref key, expected, .. } if key == "/p/y" && expected == ry),
                "{source:?}"
            ),
            other => panic!("expected the update to fail, got {other:?}"),
        }
        assert_eq!(meta(&a, "revision").expect("revision"), rp);
        let y = get_kv(&a, "/p/y").expect("get").expect("y");
        assert_eq!(y.value, b"other");
    }

    /// A database created in the new layout (`WITHOUT ROWID`, 16 KiB pages) still works with
    /// the statements of the version before it (0204438, verbatim): its reads, writes, watch
    /// query and compaction; and this version reads what they wrote.
    #[tokio::test]
    async fn the_previous_versions_sql_works_on_a_new_database() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path).await.expect("open");
        let r1 = store.create("/o/a", b"a1".to_vec()).await.expect("a");
        store.create("/o/b", b"b1".to_vec()).await.expect("b");
        drop(store);
        let mut old = Connection::open(&path).expect("open");
        let tx = old.transaction().expect("begin");
        let get = |tx: &Connection, key: &str| {
            tx.query_row(
                "SELECT value, create_revision, mod_revision FROM kv WHERE key = ?1",
                [key.as_bytes()],
                |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                },
            )
            .optional()
            .expect("get")
        };
        assert_eq!(get(&tx, "/o/a"), Some((b"a1".to_vec(), r1, r1)));
        let head: i64 = tx
            .query_row(
                "SELECT value FROM meta WHERE name = ?1",
                ["revision"],
                |r| r.get(0),
            )
            .expect("head");
        let rev = head + 1;
        tx.execute(
            "INSERT INTO kv (key, value, create_revision, mod_revision) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, mod_revision = excluded.mod_revision",
            params![b"/o/a".as_slice(), b"a2".as_slice(), rev],
        )
        .expect("upsert");
        tx.execute("DELETE FROM kv WHERE key = ?1", [b"/o/b".as_slice()])
            .expect("remove");
        let log = "INSERT INTO log (revision, idx, key, kind, value, create_revision, prev_value, prev_create, prev_mod)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
        tx.execute(
            log,
            params![
                rev,
                0,
                b"/o/a".as_slice(),
                KIND_PUT,
                b"a2".as_slice(),
                r1,
                b"a1".as_slice(),
                r1,
                r1
            ],
        )
        .expect("log put");
        tx.execute(
            log,
            params![
                rev,
                1,
                b"/o/b".as_slice(),
                KIND_DELETE,
                b"".as_slice(),
                0,
                b"b1".as_slice(),
                r1 + 1,
                r1 + 1
            ],
        )
        .expect("log delete");
        tx.execute(
            "UPDATE meta SET value = ?2 WHERE name = ?1",
            params!["revision", rev],
        )
        .expect("meta");
        tx.commit().expect("commit");
        let keys: Vec<(i64, i64, Vec<u8>)> = old
            .prepare(
                "SELECT revision, idx, key
                 FROM log
                 WHERE revision >= ?1 AND (revision > ?1 OR idx > ?2) AND revision <= ?3
                   AND key >= ?4 AND (?5 IS NULL OR key < ?5)
                 ORDER BY revision, idx LIMIT ?6",
            )
            .expect("watch query")
            .query_map(
                params![r1, 0, rev, b"/o/".as_slice(), b"/o0".as_slice(), 100],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert_eq!(
            keys,
            vec![
                (r1 + 1, 0, b"/o/b".to_vec()),
                (rev, 0, b"/o/a".to_vec()),
                (rev, 1, b"/o/b".to_vec())
            ]
        );
        drop(old);
        let store = SqliteStore::open(&path).await.expect("reopen");
        let (kvs, at) = store.list("/o/").await.expect("list");
        assert_eq!(at, rev);
        let got: Vec<_> = kvs
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_slice(), kv.mod_revision))
            .collect();
        assert_eq!(got, vec![("/o/a", &b"a2"[..], rev)]);
        let mut w = store.watch("/o/", r1 + 1).await.expect("watch");
        let put = w.next().await.expect("open").expect("event");
        assert_eq!(
            (put.kind, put.kv.value.as_slice()),
            (EventKind::Put, &b"a2"[..])
        );
        assert_eq!(put.prev.map(|p| p.value), Some(b"a1".to_vec()));
        let del = w.next().await.expect("open").expect("event");
        assert_eq!((del.kind, del.kv.key.as_str()), (EventKind::Delete, "/o/b"));
        // The previous version's compaction.
        let old = Connection::open(&path).expect("open");
        old.execute("DELETE FROM log WHERE revision <= ?1", [r1 + 1])
            .expect("compact");
        drop(old);
        assert!(
            store
                .txn(vec![TxnOp::Put {
                    key: "/o/c".into(),
                    value: b"c".to_vec()
                }])
                .await
                .is_ok()
        );
    }

    /// The bulk inserts skip rows silently (`OR IGNORE`) and count them instead: a `log` row
    /// already at the new revision (a damaged database) fails the write with sqlite's
    /// constraint error, both in a full batch and in a single-row insert, and nothing of it is
    /// written.
    #[tokio::test]
    async fn a_log_row_in_the_way_fails_the_write_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path).await.expect("open");
        let head = store.create("/d/a", b"a".to_vec()).await.expect("a");
        drop(store);
        for (rows, in_the_way) in [(ROWS_PER_INSERT + 3, 5), (ROWS_PER_INSERT + 3, 65)] {
            let conn = open_connection(&path).expect("connection");
            conn.execute(
                "INSERT INTO log (revision, idx, key, kind, value, create_revision) VALUES (?1, ?2, ?3, 0, x'', ?1)",
                params![head + 1, in_the_way, b"/d/stray".as_slice()],
            )
            .expect("stray log row");
            drop(conn);
            let store = SqliteStore::open(&path).await.expect("open");
            let ops = (0..rows)
                .map(|i| TxnOp::Create {
                    key: format!("/d/n{i:03}"),
                    value: b"n".to_vec(),
                })
                .collect();
            match store.txn(ops).await {
                Err(StoreError::Sqlite { source, .. }) => {
                    assert_eq!(
                        source.sqlite_error_code(),
                        Some(ErrorCode::ConstraintViolation),
                        "{source}"
                    );
                    assert!(source.to_string().contains("damaged"), "{source}");
                }
                other => panic!("expected sqlite's constraint error, got {other:?}"),
            }
            assert_eq!(store.revision().await.expect("revision"), head);
            let (kvs, _) = store.list("/d/").await.expect("list");
            assert_eq!(kvs.len(), 1, "{kvs:?}");
            drop(store);
            let conn = open_connection(&path).expect("connection");
            conn.execute("DELETE FROM log WHERE revision > ?1", [head])
                .expect("remove the stray row");
        }
    }

    /// A row that the database refuses without any failed precondition (here a CHECK
    /// constraint: `OR IGNORE` skips the row) fails the write with an error instead of
    /// retrying it forever, and writes nothing.
    #[tokio::test]
    async fn a_row_refused_without_a_failed_precondition_fails_the_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path).await.expect("open");
        let head = store.create("/d/a", b"a".to_vec()).await.expect("a");
        // `kv` again with a CHECK constraint that refuses one key.
        let conn = open_connection(&path).expect("connection");
        let sql: String = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'kv'",
                [],
                |r| r.get(0),
            )
            .expect("kv's schema");
        let open = sql.find('(').expect("column list");
        let close = sql.rfind(')').expect("column list end");
        let checked = format!(
            "CREATE TABLE kv_checked {}, CHECK (key <> CAST('/d/refused' AS BLOB))){}",
            &sql[open..close],
            &sql[close + 1..]
        );
        conn.execute_batch(&format!(
            "{checked}; INSERT INTO kv_checked SELECT * FROM kv; DROP TABLE kv;
             ALTER TABLE kv_checked RENAME TO kv;"
        ))
        .expect("kv with a CHECK constraint");
        drop(conn);
        for rows in [1, ROWS_PER_INSERT + 3] {
            let mut ops: Vec<TxnOp> = (0..rows)
                .map(|i| TxnOp::Create {
                    key: format!("/d/n{i:03}"),
                    value: b"n".to_vec(),
                })
                .collect();
            ops.push(TxnOp::Create {
                key: "/d/refused".into(),
                value: b"r".to_vec(),
            });
            match store.txn(ops).await {
                Err(StoreError::Sqlite { source, .. }) => {
                    assert_eq!(
                        source.sqlite_error_code(),
                        Some(ErrorCode::ConstraintViolation),
                        "{source}"
                    );
                    assert!(source.to_string().contains("refuses"), "{source}");
                }
                other => panic!("expected a constraint error, got {other:?}"),
            }
            assert_eq!(store.revision().await.expect("revision"), head);
            let (kvs, _) = store.list("/d/").await.expect("list");
            assert_eq!(kvs.len(), 1, "{kvs:?}");
        }
    }

    /// A watch skips the revisions that `log_dirs` shows to hold none of its keys, reads those
    /// with no directories recorded (written by an earlier version), and still delivers every
    /// event of its prefix in order.
    #[tokio::test]
    async fn a_watch_skips_revisions_without_its_keys_and_reads_unrecorded_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path).await.expect("open");
        let put = |key: &str| TxnOp::Put {
            key: key.into(),
            value: key.as_bytes().to_vec(),
        };
        let r1 = store.txn(vec![put("/a/1")]).await.expect("r1");
        let r2 = store
            .txn((0..300).map(|i| put(&format!("/b/x/y/{i}"))).collect())
            .await
            .expect("r2");
        // r3: an earlier version's write (no `log_dirs` rows) of an `/a/` key.
        let conn = open_connection(&path).expect("connection");
        let r3 = r2 + 1;
        conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
        conn.execute(
            "INSERT INTO kv (key, value, create_revision, mod_revision) VALUES (?1, ?1, ?2, ?2)",
            params![b"/a/2".as_slice(), r3],
        )
        .expect("kv");
        conn.execute(
            "INSERT INTO log (revision, idx, key, kind, value, create_revision) VALUES (?1, 0, ?2, 0, ?2, ?1)",
            params![r3, b"/a/2".as_slice()],
        )
        .expect("log");
        set_meta(&conn, "revision", r3).expect("meta");
        conn.execute_batch("COMMIT").expect("commit");
        drop(conn);
        let store = SqliteStore::open(&path).await.expect("reopen");
        let r4 = store
            .txn(vec![put("/b/x/y/z"), put("/a/3")])
            .await
            .expect("r4");
        let r5 = store.txn(vec![put("/b/x/y/w")]).await.expect("r5");
        let r6 = store.txn(vec![put("/a/4")]).await.expect("r6");
        assert_eq!((r5, r6), (r1 + 4, r1 + 5));
        // The reads: r2 skipped, r3-r4 read (r3 unrecorded), r5 skipped, r6 read.
        let mut conn = open_connection(&path).expect("connection");
        let mut cursor = Cursor::after(r1);
        let mut windows = Vec::new();
        loop {
            let Window::Events {
                events,
                cursor: next,
                more,
            } = read_window(&mut conn, b"/a/", Some(b"/a0"), cursor).expect("window")
            else {
                panic!("compacted");
            };
            let keys: Vec<(String, Revision)> =
                events.into_iter().map(|e| (e.kv.key, e.revision)).collect();
            windows.push((keys, next.complete()));
            cursor = next;
            if !more {
                break;
            }
        }
        let a = |key: &str, r| (key.to_string(), r);
        assert_eq!(
            windows,
            vec![
                (vec![a("/a/2", r3), a("/a/3", r4)], r4),
                (vec![a("/a/4", r6)], r6)
            ]
        );
        // The same through the watch, from the start.
        let mut w = store.watch("/a/", 0).await.expect("watch");
        for (key, r) in [("/a/1", r1), ("/a/2", r3), ("/a/3", r4), ("/a/4", r6)] {
            let e = w.next().await.expect("open").expect("event");
            assert_eq!((e.kv.key.as_str(), e.revision), (key, r));
        }
        let r7 = store.txn(vec![put("/b/x/y/v")]).await.expect("r7");
        let r8 = store.txn(vec![put("/a/5")]).await.expect("r8");
        let e = w.next().await.expect("open").expect("event");
        assert_eq!((e.kv.key.as_str(), e.revision), ("/a/5", r8));
        assert_eq!(r8, r7 + 1);
    }

    #[tokio::test]
    async fn creates_the_parent_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a/b/store.db");
        let store = SqliteStore::open(&path).await.expect("open");
        store.create("/k", b"v".to_vec()).await.expect("create");
        assert!(path.exists());
    }
}
