//! The etcd v3 backend (`etcd://host:port[,host:port…]` or `http://host:port[,…]`).
//!
//! Mapping: a create compares `create_revision == 0`, an update or a delete with `expected`
//! compares `mod_revision == expected`, and a [`TxnOp`] list becomes one etcd `Txn` holding every
//! compare and every put/delete. When the compares fail, the `else` branch has read every
//! compared key in the same etcd revision, so the failing operation and its error are decided
//! from a consistent snapshot by the same rule the sqlite backend uses.
//!
//! Watches use `start_revision = after + 1` with `prev_kv`. When the gRPC stream breaks (etcd
//! restarted, member lost its leader, network), the watch task reconnects with backoff and
//! re-watches from the last delivered revision + 1: nothing lost, nothing repeated. If that
//! revision was compacted meanwhile, the watch delivers [`StoreError::Compacted`] and ends.
//!
//! Compaction: `compact(r)` discards history up to and including `r`, which is etcd's
//! `Compact(r + 1)`; when `r` is the current revision etcd cannot compact past it, so it
//! compacts at `r` and a watch from `r - 1` is still accepted (and may miss deletions at `r`).
//!
//! The etcd server must accept large transactions: see [`SERVER_FLAGS`].

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KvClient,
    Txn, TxnOpResponse, WatchClient, WatchOptions,
};

use crate::{
    Datastore, EventKind, KeyValue, Result, Revision, StoreError, TxnOp, Watch, WatchEvent,
    check_duplicates, check_op, prefix_end,
};

/// Server flags a Serval etcd needs beyond the defaults: a CLI apply of thousands of resources
/// is one transaction (etcd's default `--max-txn-ops` is 128 and `--max-request-bytes` 1.5 MiB).
pub const SERVER_FLAGS: &[&str] = &[
    "--max-txn-ops=1000000",
    "--max-request-bytes=268435456",
    "--quota-backend-bytes=8589934592",
];

/// Largest gRPC message we accept (big lists, big transactions' watch responses).
const MAX_MESSAGE: usize = 1 << 30;
/// Keys per page when listing.
const LIST_PAGE: i64 = 5000;
/// A unary request that gets no answer within this long fails (etcd down or unreachable).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Events buffered between a watch's task and its consumer.
const WATCH_BUFFER: usize = 1024;

/// The etcd datastore.
#[derive(Clone)]
pub struct EtcdStore {
    /// The URL it was opened with, for error messages.
    endpoint: String,
    kv: KvClient,
    watch: WatchClient,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// `etcd://a:1,b:2` or `http://a:1,http://b:2` → `["http://a:1", "http://b:2"]`.
fn parse_endpoints(url: &str) -> Result<Vec<String>> {
    let bad = |reason: String| StoreError::BadUrl {
        url: url.to_string(),
        reason,
    };
    let rest = url
        .strip_prefix("etcd://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| bad("expected etcd://host:port[,host:port…] or http://host:port".into()))?;
    let mut endpoints = Vec::new();
    for part in rest.split(',') {
        let hostport = part
            .trim()
            .strip_prefix("http://")
            .unwrap_or(part.trim())
            .trim_end_matches('/');
        let port = hostport
            .rsplit_once(':')
            .map(|(host, port)| (host, port.parse::<u16>()));
        match port {
            Some((host, Ok(_))) if !host.is_empty() && !hostport.contains('/') => {
                endpoints.push(format!("http://{hostport}"));
            }
            _ => {
                return Err(bad(format!(
                    "endpoint {part:?} is not host:port (TLS, paths and default ports are not supported)"
                )));
            }
        }
    }
    Ok(endpoints)
}

fn convert(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    }
}

fn is_compacted(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("compacted"))
}

/// The key and range end that select every key under `prefix` (etcd's "\0" means "to the end").
fn range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let end = prefix_end(prefix.as_bytes()).unwrap_or_else(|| vec![0]);
    let start = if prefix.is_empty() {
        vec![0]
    } else {
        prefix.as_bytes().to_vec()
    };
    (start, end)
}

impl EtcdStore {
    /// Connect to the etcd cluster named by `url` (see the module docs). The connection is
    /// made lazily; an unreachable cluster shows up as an error on the first request.
    pub async fn connect(url: &str) -> Result<Self> {
        let endpoints = parse_endpoints(url)?;
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            // A member that lost its leader cancels our watches, so we move to another.
            .with_require_leader(true);
        let client = Client::connect(&endpoints, Some(options))
            .await
            .map_err(|source| StoreError::Etcd {
                endpoint: url.to_string(),
                source,
            })?;
        Ok(EtcdStore {
            endpoint: url.to_string(),
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            watch: client.watch_client().max_decoding_message_size(MAX_MESSAGE),
        })
    }

    fn err(&self, source: etcd_client::Error) -> StoreError {
        StoreError::Etcd {
            endpoint: self.endpoint.clone(),
            source,
        }
    }

    /// Run one request with [`REQUEST_TIMEOUT`].
    async fn call<T>(
        &self,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, etcd_client::Error> {
        match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
            Ok(r) => r,
            Err(_) => Err(etcd_client::Error::IoError(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no answer within {REQUEST_TIMEOUT:?}; is etcd running and reachable at {}?",
                    self.endpoint
                ),
            ))),
        }
    }

    async fn list_once(
        &self,
        prefix: &str,
    ) -> Result<(Vec<KeyValue>, Revision), etcd_client::Error> {
        let (mut start, end) = range(prefix);
        let mut out = Vec::new();
        let mut revision = 0;
        loop {
            let opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE)
                .with_revision(revision);
            let resp = self
                .call(self.kv.clone().get(start.clone(), Some(opts)))
                .await?;
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            out.extend(resp.kvs().iter().map(convert));
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => return Ok((out, revision)),
            }
        }
    }
}

/// Why one watch stream ended.
enum Ended {
    ReceiverGone,
    Compacted(Revision),
    Broken(String),
}

async fn watch_task(
    mut client: WatchClient,
    endpoint: String,
    prefix: String,
    after: Revision,
    tx: tokio::sync::mpsc::Sender<Result<WatchEvent>>,
) {
    let mut last = after;
    let mut backoff = BACKOFF_MIN;
    loop {
        match watch_stream(&mut client, &prefix, &mut last, &mut backoff, &tx).await {
            Ended::ReceiverGone => return,
            Ended::Compacted(compact_revision) => {
                let _ = tx
                    .send(Err(StoreError::Compacted {
                        requested: last + 1,
                        // etcd keeps `compact_revision` itself; everything before is gone.
                        compacted: compact_revision - 1,
                    }))
                    .await;
                return;
            }
            Ended::Broken(reason) => {
                tracing::warn!(endpoint, prefix, resume_after = last, reason, retry_in = ?backoff, "etcd watch stream broke; reconnecting");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = tx.closed() => return,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Follow one etcd watch stream from `*last + 1`, delivering events and advancing `*last`.
async fn watch_stream(
    client: &mut WatchClient,
    prefix: &str,
    last: &mut Revision,
    backoff: &mut Duration,
    tx: &tokio::sync::mpsc::Sender<Result<WatchEvent>>,
) -> Ended {
    let (key, end) = range(prefix);
    let opts = WatchOptions::new()
        .with_range(end)
        .with_start_revision(*last + 1)
        .with_prev_key();
    let mut stream = tokio::select! {
        s = client.watch(key, Some(opts)) => match s {
            Ok(s) => s,
            Err(e) => return Ended::Broken(e.to_string()),
        },
        () = tx.closed() => return Ended::ReceiverGone,
    };
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            () = tx.closed() => return Ended::ReceiverGone,
        };
        let resp = match msg {
            Ok(Some(resp)) => resp,
            Ok(None) => return Ended::Broken("the server closed the watch stream".into()),
            Err(e) => return Ended::Broken(e.to_string()),
        };
        if resp.canceled() {
            if resp.compact_revision() > 0 {
                return Ended::Compacted(resp.compact_revision());
            }
            return Ended::Broken(format!("watch canceled: {}", resp.cancel_reason()));
        }
        if resp.created() {
            *backoff = BACKOFF_MIN;
        }
        // All events of one revision arrive in one response (we do not ask for fragments), so
        // anything at or below `floor` was delivered by an earlier stream.
        let floor = *last;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let revision = kv.mod_revision();
            if revision <= floor {
                continue;
            }
            let event = WatchEvent {
                kind: match ev.event_type() {
                    EventType::Put => EventKind::Put,
                    EventType::Delete => EventKind::Delete,
                },
                kv: convert(kv),
                prev: ev.prev_kv().map(convert),
                revision,
            };
            if tx.send(Ok(event)).await.is_err() {
                return Ended::ReceiverGone;
            }
            *last = (*last).max(revision);
        }
    }
}

#[async_trait]
impl Datastore for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let resp = self
            .call(self.kv.clone().get(key, None))
            .await
            .map_err(|e| self.err(e))?;
        Ok(resp.kvs().first().map(convert))
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        // A compaction between two pages invalidates the pinned revision: start over.
        let mut attempts = 0;
        loop {
            match self.list_once(prefix).await {
                Err(e) if is_compacted(&e) && attempts < 5 => attempts += 1,
                other => return other.map_err(|e| self.err(e)),
            }
        }
    }

    async fn txn(&self, ops: Vec<TxnOp>) -> Result<Revision> {
        check_duplicates(&ops)?;
        if ops.is_empty() {
            return self.revision().await;
        }
        let mut compares = Vec::new();
        let mut then = Vec::with_capacity(ops.len());
        // Operations that can fail, read back in the else branch to find out which did.
        let mut checked = Vec::new();
        let mut reads = Vec::new();
        for (index, op) in ops.iter().enumerate() {
            let key = op.key();
            let must = match op {
                TxnOp::Create { .. } => Some(Compare::create_revision(key, CompareOp::Equal, 0)),
                TxnOp::Update { expected, .. }
                | TxnOp::Delete {
                    expected: Some(expected),
                    ..
                } => {
                    if *expected <= 0 {
                        // A missing key has mod_revision 0: also require that it exists.
                        compares.push(Compare::version(key, CompareOp::Greater, 0));
                    }
                    Some(Compare::mod_revision(key, CompareOp::Equal, *expected))
                }
                TxnOp::Put { .. } | TxnOp::Delete { expected: None, .. } => None,
            };
            if let Some(c) = must {
                compares.push(c);
                checked.push(index);
                reads.push(etcd_client::TxnOp::get(key, None));
            }
            then.push(match op {
                TxnOp::Create { key, value }
                | TxnOp::Update { key, value, .. }
                | TxnOp::Put { key, value } => {
                    etcd_client::TxnOp::put(key.as_str(), value.clone(), None)
                }
                TxnOp::Delete { key, .. } => etcd_client::TxnOp::delete(key.as_str(), None),
            });
        }
        let txn = Txn::new().when(compares).and_then(then).or_else(reads);
        let resp = self
            .call(self.kv.clone().txn(txn))
            .await
            .map_err(|e| self.err(e))?;
        if resp.succeeded() {
            return Ok(resp.header().map(|h| h.revision()).unwrap_or(0));
        }
        let responses = resp.op_responses();
        for (&index, read) in checked.iter().zip(&responses) {
            let current = match read {
                TxnOpResponse::Get(g) => g.kvs().first().map(convert),
                _ => None,
            };
            if let Err(e) = check_op(&ops[index], current.as_ref()) {
                return Err(StoreError::TxnFailed {
                    index,
                    source: Box::new(e),
                });
            }
        }
        // Unreachable in practice: the reads come from the same revision the compares failed
        // at. Report the first checked operation as conflicting rather than pretend success.
        let index = checked.first().copied().unwrap_or(0);
        Err(StoreError::TxnFailed {
            index,
            source: Box::new(StoreError::Conflict {
                key: ops[index].key().to_string(),
                expected: match &ops[index] {
                    TxnOp::Update { expected, .. } => *expected,
                    TxnOp::Delete {
                        expected: Some(e), ..
                    } => *e,
                    _ => 0,
                },
                actual: -1,
            }),
        })
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<Watch> {
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BUFFER);
        let task = tokio::spawn(watch_task(
            self.watch.clone(),
            self.endpoint.clone(),
            prefix.to_string(),
            after,
            tx,
        ));
        Ok(Watch::new(rx, Some(task)))
    }

    async fn revision(&self) -> Result<Revision> {
        let opts = GetOptions::new().with_count_only();
        let resp = self
            .call(self.kv.clone().get(vec![0], Some(opts)))
            .await
            .map_err(|e| self.err(e))?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let current = self.revision().await?;
        let target = revision.min(current);
        // etcd's Compact(r) keeps revision r; ours discards it, so compact one further when
        // etcd allows it (it cannot go past the current revision).
        let etcd_revision = if target < current { target + 1 } else { target };
        if etcd_revision <= 1 {
            return Ok(());
        }
        let opts = CompactionOptions::new().with_physical();
        match self
            .call(self.kv.clone().compact(etcd_revision, Some(opts)))
            .await
        {
            Ok(_) => Ok(()),
            // Already compacted at or past it: nothing to do.
            Err(e) if is_compacted(&e) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_parsed() {
        assert_eq!(
            parse_endpoints("etcd://127.0.0.1:2379").unwrap(),
            ["http://127.0.0.1:2379"]
        );
        assert_eq!(
            parse_endpoints("etcd://a:1,b:2").unwrap(),
            ["http://a:1", "http://b:2"]
        );
        assert_eq!(
            parse_endpoints("http://a:1,http://b:2/").unwrap(),
            ["http://a:1", "http://b:2"]
        );
        for bad in [
            "etcd://",
            "etcd://a",
            "etcd://a:x",
            "etcd://:1",
            "etcd://a:1/p",
            "https://a:1",
        ] {
            assert!(
                matches!(parse_endpoints(bad), Err(StoreError::BadUrl { .. })),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn ranges_cover_the_prefix() {
        assert_eq!(range("/a/"), (b"/a/".to_vec(), b"/a0".to_vec()));
        assert_eq!(range(""), (vec![0], vec![0]));
    }
}
