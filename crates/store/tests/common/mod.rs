//! Shared helpers for the store integration tests.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serval_store::{Datastore, StoreError, Watch, WatchEvent};

/// Generous: the machine is shared and etcd may be restarting.
pub const WAIT: Duration = Duration::from_secs(20);

/// The next event, failing on an error item, the end of the watch, or silence.
pub async fn next_event(w: &mut Watch) -> Result<WatchEvent> {
    match tokio::time::timeout(WAIT, w.next()).await {
        Err(_) => bail!("no watch event within {WAIT:?}"),
        Ok(None) => bail!("the watch ended"),
        Ok(Some(Err(e))) => bail!("watch error: {e}"),
        Ok(Some(Ok(ev))) => Ok(ev),
    }
}

/// Nothing more arrives for a short while (checks for repeated or stray events).
pub async fn assert_quiet(w: &mut Watch) -> Result<()> {
    match tokio::time::timeout(Duration::from_millis(300), w.next()).await {
        Err(_) => Ok(()),
        Ok(item) => bail!("expected no more watch items, got {item:?}"),
    }
}

/// `n` compare-and-swap increments of the decimal counter at `key`; returns how many conflicts
/// were retried.
pub async fn increment(store: &dyn Datastore, key: &str, n: u64) -> Result<u64> {
    let mut conflicts = 0;
    for _ in 0..n {
        loop {
            let kv = store
                .get(key)
                .await?
                .with_context(|| format!("{key} missing"))?;
            let v: u64 = String::from_utf8(kv.value)?.parse()?;
            match store
                .update(key, (v + 1).to_string().into_bytes(), kv.mod_revision)
                .await
            {
                Ok(_) => break,
                Err(StoreError::Conflict { .. }) => conflicts += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(conflicts)
}
