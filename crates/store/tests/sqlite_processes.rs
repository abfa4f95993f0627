//! Several OS processes share one sqlite store file: three children and the parent open the
//! (not yet existing) file at the same moment, the children write while the parent's watch sees
//! every write in order, and all four increment one counter by compare-and-swap without losing an
//! update (cross-process lock contention: `SQLITE_BUSY` must never surface).
//!
//! This binary has no libtest harness: run normally, it is the parent and re-executes itself
//! with `SERVAL_STORE_TEST_CHILD_URL` set to become a child.
//!
//! Wake-ups: the parent's store is opened with a safety poll of an hour
//! (`SqliteFile::open_woken_only`), so its watch learns of the children's commits only through
//! the cross-process wake-up (inotify on the database's directory; every writer touches the WAL
//! after each commit). The measured latency is printed, never asserted (timers are not asserted
//! in tests).

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use common::{assert_quiet, next_event};
use serval_store::testing::SqliteFile;
use serval_store::{Datastore, StoreError};

const CHILD_ENV: &str = "SERVAL_STORE_TEST_CHILD_URL";
const CHILD_ID_ENV: &str = "SERVAL_STORE_TEST_CHILD_ID";
const CHILDREN: usize = 3;
const WRITES: usize = 20;
const INCREMENTS: u64 = 40;
const COUNTER: &str = "/proc/counter";

fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

/// Whoever comes first creates the counter.
async fn ensure_counter(store: &dyn Datastore) -> Result<()> {
    match store.create(COUNTER, b"0".to_vec()).await {
        Ok(_) | Err(StoreError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn child(url: &str, id: &str) -> Result<()> {
    let store = serval_store::open(url).await?;
    ensure_counter(&*store).await?;
    // Interleave watched writes with counter increments so the processes contend.
    let per_write = INCREMENTS / WRITES as u64;
    for i in 0..WRITES {
        store
            .create(
                &format!("/proc/child/{id}/{i:02}"),
                now_micros().to_string().into_bytes(),
            )
            .await?;
        common::increment(&*store, COUNTER, per_write).await?;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

async fn parent() -> Result<()> {
    let file = SqliteFile::new()?;
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for id in 0..CHILDREN {
        children.push(
            Command::new(&exe)
                .env(CHILD_ENV, file.url())
                .env(CHILD_ID_ENV, id.to_string())
                .spawn()
                .context("spawning a child process")?,
        );
    }
    // Open concurrently with the children: whoever is first creates the file and schema.
    let store = file.open_woken_only().await?;
    let mut w = store.watch("/proc/child/", 0).await?;
    let waiters: Vec<_> = children
        .into_iter()
        .map(|mut c| tokio::task::spawn_blocking(move || c.wait()))
        .collect();

    let receiver = tokio::spawn(async move {
        let mut next: BTreeMap<String, usize> = BTreeMap::new();
        let mut max_latency = 0;
        for _ in 0..CHILDREN * WRITES {
            let e = next_event(&mut w).await?;
            let received = now_micros();
            let Some((id, i)) =
                e.kv.key
                    .strip_prefix("/proc/child/")
                    .and_then(|rest| rest.split_once('/'))
            else {
                bail!("unexpected key in {e:?}");
            };
            let want = next.entry(id.to_string()).or_default();
            ensure!(
                i == format!("{want:02}"),
                "child {id}: got {i}, want {want:02}"
            );
            *want += 1;
            let written: u128 = String::from_utf8(e.kv.value)?.parse()?;
            max_latency = max_latency.max(received.saturating_sub(written));
        }
        assert_quiet(&mut w).await?;
        anyhow::Ok(max_latency)
    });

    ensure_counter(&*store).await?;
    let conflicts = common::increment(&*store, COUNTER, INCREMENTS).await?;
    for waiter in waiters {
        let status = waiter.await??;
        ensure!(status.success(), "child process failed: {status}");
    }
    let max_latency = receiver.await??;
    let total = (CHILDREN as u64 + 1) * INCREMENTS;
    let counter = store.get(COUNTER).await?.context("counter missing")?;
    ensure!(
        counter.value == total.to_string().as_bytes(),
        "lost updates across processes: counter {:?}, want {total}",
        String::from_utf8_lossy(&counter.value),
    );
    println!(
        "{CHILDREN} child processes: {} writes seen in order by the parent's watch (max latency \
         {max_latency} µs from before the write to receipt); {total} increments, {conflicts} \
         parent-side CAS conflicts",
        CHILDREN * WRITES
    );
    Ok(())
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if let Ok(url) = std::env::var(CHILD_ENV) {
        let id = std::env::var(CHILD_ID_ENV).unwrap_or_default();
        return runtime.block_on(child(&url, &id));
    }
    // Honour a libtest-style name filter (`cargo test -p serval-store conformance`).
    let name = "sqlite_processes_share_one_file";
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
        println!("{name}: filtered out");
        return Ok(());
    }
    runtime.block_on(parent())?;
    println!("test {name} ... ok");
    Ok(())
}
