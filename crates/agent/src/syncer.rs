//! The syncer: keeps the [`Cache`] equal to the datastore. For each half (resources through
//! [`Client::list_all`] / [`Client::watch`], IPAM block affinities through the store's own
//! list/watch of [`AFFINITY_PREFIX`]) it lists once, then follows the watch from the list's
//! revision. A compacted watch start means events were lost: list again and replace. Any other
//! error (the datastore restarting, a network hiccup to etcd) reconnects with backoff.

use std::time::Duration;

use futures::FutureExt;
use serval_api::{ApiError, Client, RESOURCE_PREFIX, ResourceEvent, decode_event};
use serval_ipam::{AFFINITY_PREFIX, Affinity, parse_affinity_key};
use serval_store::{EventKind, Revision, StoreError, WatchEvent};

use crate::cache::{Cache, Source};

/// The first retry delay after an error; doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(200);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Exponential backoff between reconnects.
#[derive(Debug)]
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(MIN_BACKOFF)
    }
    fn reset(&mut self) {
        self.0 = MIN_BACKOFF;
    }
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
    }
}

/// Why a list-and-watch round failed (logged; the syncer reconnects with backoff).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("resource list/watch: {0}")]
    Resources(#[source] serval_api::ApiError),
    #[error("IPAM affinity list/watch under {AFFINITY_PREFIX}: {0}")]
    Affinities(#[source] StoreError),
    #[error("the {what} watch ended (the datastore closed it); relisting")]
    WatchEnded { what: &'static str },
}

/// Why one list-and-watch round ended.
enum RoundEnd {
    /// The watch start was compacted away: relist at once.
    Compacted,
    /// An error: relist after a backoff.
    Failed(SyncError),
}

/// Runs both halves forever (until the task is dropped).
pub async fn run(client: Client, cache: Cache) {
    tokio::join!(
        sync_half(&client, &cache, Source::Resources),
        sync_half(&client, &cache, Source::Affinities)
    );
}

async fn sync_half(client: &Client, cache: &Cache, source: Source) {
    let mut backoff = Backoff::new();
    loop {
        let end = match source {
            Source::Resources => resources_round(client, cache, &mut backoff).await,
            Source::Affinities => affinities_round(client, cache, &mut backoff).await,
        };
        match end {
            RoundEnd::Compacted => {
                tracing::info!(
                    ?source,
                    "watch history compacted; resyncing from a fresh list"
                );
            }
            RoundEnd::Failed(error) => {
                tracing::warn!(?source, %error, retry_in = ?backoff.0, "datastore sync failed; reconnecting");
                backoff.wait().await;
            }
        }
    }
}

async fn resources_round(client: &Client, cache: &Cache, backoff: &mut Backoff) -> RoundEnd {
    let (items, rev) = match client.list_all().await {
        Ok(x) => x,
        Err(e) => return RoundEnd::Failed(SyncError::Resources(e)),
    };
    tracing::debug!(count = items.len(), rev, "listed resources");
    cache.replace_resources(items, rev);
    // The store's own watch of the resources (what [`Client::watch`] wraps): what is queued
    // is taken at once and decoded in parallel ([`decode_events`]), then applied in order.
    let mut watch = match client.store().watch(RESOURCE_PREFIX, rev).await {
        Ok(w) => w,
        Err(StoreError::Compacted { .. }) => return RoundEnd::Compacted,
        Err(e) => return RoundEnd::Failed(SyncError::Resources(e.into())),
    };
    backoff.reset();
    loop {
        let mut events = Vec::new();
        let mut end = None;
        match watch.next().await {
            Some(Ok(ev)) => events.push(ev),
            Some(Err(e)) => end = Some(Some(e)),
            None => end = Some(None),
        }
        while end.is_none() && events.len() < MAX_DECODE_BATCH {
            match watch.next().now_or_never() {
                None => break,
                Some(Some(Ok(ev))) => events.push(ev),
                Some(Some(Err(e))) => end = Some(Some(e)),
                Some(None) => end = Some(None),
            }
        }
        for decoded in decode_events(events).into_iter().flatten() {
            match decoded {
                Ok((event, rev)) => cache.apply_resource(event, rev),
                // A value this agent cannot decode: resync rather than run with a hole in the
                // cache.
                Err(e) => return RoundEnd::Failed(SyncError::Resources(e)),
            }
        }
        match end {
            None => {}
            Some(Some(StoreError::Compacted { .. })) => return RoundEnd::Compacted,
            Some(Some(e)) => return RoundEnd::Failed(SyncError::Resources(e.into())),
            Some(None) => return RoundEnd::Failed(SyncError::WatchEnded { what: "resource" }),
        }
    }
}

/// At most this many queued watch events are taken and decoded at once.
const MAX_DECODE_BATCH: usize = 4096;
/// Batches of at least this many events are decoded on several threads.
const PARALLEL_DECODE_MIN: usize = 256;

/// One decoded watch event.
type Decoded = Result<(ResourceEvent, Revision), ApiError>;

/// Decodes `events` in order, as consecutive parts (not copied into one list: a decoded
/// event is half a kilobyte). A large batch (a burst of writes: decoding JSON is most of the
/// agent's work for it) is split over the available cores with scoped threads.
fn decode_events(events: Vec<WatchEvent>) -> Vec<Vec<Decoded>> {
    // A small batch (one change applied: the latency path) is decoded here without asking
    // how many cores there are: `available_parallelism` reads /proc/self/cgroup and the
    // cgroup's CPU quota files on every call.
    if events.len() < PARALLEL_DECODE_MIN {
        return vec![events.iter().map(decode_event).collect()];
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(4);
    if threads < 2 {
        return vec![events.iter().map(decode_event).collect()];
    }
    let chunk = events.len().div_ceil(threads);
    std::thread::scope(|s| {
        let mut parts = events.chunks(chunk);
        let first = parts.next().unwrap_or_default();
        let handles: Vec<_> = parts
            .map(|part| s.spawn(move || part.iter().map(decode_event).collect::<Vec<_>>()))
            .collect();
        let mut out = vec![first.iter().map(decode_event).collect()];
        for h in handles {
            match h.join() {
                Ok(part) => out.push(part),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}

fn decode_affinity(kv: &serval_store::KeyValue) -> Option<Affinity> {
    match serval_ipam::decode::<Affinity>(kv) {
        Ok(a) => Some(a),
        Err(e) => {
            tracing::warn!(key = %kv.key, error = %e, "skipping an IPAM affinity record that does not decode");
            None
        }
    }
}

async fn affinities_round(client: &Client, cache: &Cache, backoff: &mut Backoff) -> RoundEnd {
    let store = client.store();
    let (kvs, rev) = match store.list(AFFINITY_PREFIX).await {
        Ok(x) => x,
        Err(e) => return RoundEnd::Failed(SyncError::Affinities(e)),
    };
    cache.replace_affinities(kvs.iter().filter_map(decode_affinity).collect(), rev);
    let mut watch = match store.watch(AFFINITY_PREFIX, rev).await {
        Ok(w) => w,
        Err(StoreError::Compacted { .. }) => return RoundEnd::Compacted,
        Err(e) => return RoundEnd::Failed(SyncError::Affinities(e)),
    };
    backoff.reset();
    loop {
        match watch.next().await {
            Some(Ok(ev)) => match ev.kind {
                EventKind::Put => {
                    if let Some(a) = decode_affinity(&ev.kv) {
                        cache.put_affinity(a, ev.revision);
                    }
                }
                // A delete carries only the key.
                EventKind::Delete => match parse_affinity_key(&ev.kv.key) {
                    Ok((node, block)) => cache.delete_affinity(&node, block, ev.revision),
                    Err(e) => {
                        tracing::warn!(key = %ev.kv.key, error = %e, "ignoring a delete of a non-affinity key")
                    }
                },
            },
            Some(Err(StoreError::Compacted { .. })) => return RoundEnd::Compacted,
            Some(Err(e)) => return RoundEnd::Failed(SyncError::Affinities(e)),
            None => return RoundEnd::Failed(SyncError::WatchEnded { what: "affinity" }),
        }
    }
}

#[cfg(test)]
mod tests {
    use serval_model::Resource;
    use serval_store::KeyValue;

    use super::*;

    fn ns(name: &str) -> Resource {
        Resource::Namespace(serval_model::k8s::Namespace::new(name))
    }

    fn kv(r: &Resource, rev: Revision) -> KeyValue {
        KeyValue {
            key: r.key().store_key(),
            value: r.to_json(),
            create_revision: rev,
            mod_revision: rev,
        }
    }

    fn put(r: &Resource, rev: Revision) -> WatchEvent {
        WatchEvent {
            kind: EventKind::Put,
            kv: kv(r, rev),
            prev: None,
            revision: rev,
        }
    }

    fn delete(r: &Resource, rev: Revision, with_prev: bool) -> WatchEvent {
        WatchEvent {
            kind: EventKind::Delete,
            kv: KeyValue {
                value: Vec::new(),
                ..kv(r, rev)
            },
            prev: with_prev.then(|| kv(r, rev - 1)),
            revision: rev,
        }
    }

    fn summary(out: &[Result<(ResourceEvent, Revision), ApiError>]) -> Vec<String> {
        out.iter()
            .map(|r| match r {
                Ok((ResourceEvent::Applied(r), rev)) => format!("put {} {rev}", r.key()),
                Ok((ResourceEvent::Deleted { key, last }, rev)) => {
                    format!("del {key} {rev} {}", last.is_some())
                }
                Err(e) => format!("error {e}"),
            })
            .collect()
    }

    /// A burst large enough to be decoded on several threads comes out complete and in
    /// order, the same as one by one; an undecodable value stays an error in its place.
    #[test]
    fn parallel_decoding_keeps_order_and_errors() {
        let mut events: Vec<WatchEvent> = (0..1000)
            .map(|i| put(&ns(&format!("n{i:04}")), 10 + i))
            .collect();
        events.push(delete(&ns("n0001"), 2000, true));
        events.push(delete(&ns("n0002"), 2001, false));
        let mut bad = put(&ns("bad"), 3000);
        bad.kv.value = b"{not json".to_vec();
        events.insert(700, bad);
        let want: Vec<_> = events.iter().map(decode_event).collect();
        let parts = decode_events(events);
        assert!(parts.len() > 1 || std::thread::available_parallelism().map_or(1, |n| n.get()) < 2);
        let got: Vec<Decoded> = parts.into_iter().flatten().collect();
        assert_eq!(got.len(), 1003);
        assert_eq!(summary(&got), summary(&want));
        assert!(got[700].is_err());
        assert_eq!(summary(&got[..1])[0], "put Namespace/n0000 10");
        assert!(
            summary(&got[1001..])[0].starts_with("del "),
            "{:?}",
            summary(&got[1001..])
        );
        // Small batches take the sequential path, with the same result.
        let small: Vec<WatchEvent> = (0..3).map(|i| put(&ns(&format!("s{i}")), i + 1)).collect();
        let small = decode_events(small);
        assert_eq!(small.len(), 1);
        assert_eq!(summary(&small[0]).len(), 3);
    }
}
