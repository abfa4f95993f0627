//! The syncer: keeps the [`Cache`] equal to the datastore. For each half (resources through
//! [`Client::list_all`] / [`Client::watch`], IPAM block affinities through the store's own
//! list/watch of [`AFFINITY_PREFIX`]) it lists once, then follows the watch from the list's
//! revision. A compacted watch start means events were lost: list again and replace. Any other
//! error (the datastore restarting, a network hiccup to etcd) reconnects with backoff.

use std::time::Duration;

use serval_api::{ApiError, Client};
use serval_ipam::{AFFINITY_PREFIX, Affinity, parse_affinity_key};
use serval_store::{EventKind, StoreError};

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

fn is_compacted(e: &ApiError) -> bool {
    matches!(e, ApiError::Store(StoreError::Compacted { .. }))
}

async fn resources_round(client: &Client, cache: &Cache, backoff: &mut Backoff) -> RoundEnd {
    let (items, rev) = match client.list_all().await {
        Ok(x) => x,
        Err(e) => return RoundEnd::Failed(SyncError::Resources(e)),
    };
    tracing::debug!(count = items.len(), rev, "listed resources");
    cache.replace_resources(items, rev);
    let mut watch = match client.watch(rev).await {
        Ok(w) => w,
        Err(e) if is_compacted(&e) => return RoundEnd::Compacted,
        Err(e) => return RoundEnd::Failed(SyncError::Resources(e)),
    };
    backoff.reset();
    loop {
        match watch.next().await {
            Some(Ok((event, rev))) => cache.apply_resource(event, rev),
            Some(Err(e)) if is_compacted(&e) => return RoundEnd::Compacted,
            // A value this agent cannot decode: resync rather than run with a hole in the cache.
            Some(Err(e)) => return RoundEnd::Failed(SyncError::Resources(e)),
            None => return RoundEnd::Failed(SyncError::WatchEnded { what: "resource" }),
        }
    }
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
