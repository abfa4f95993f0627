//! The concurrency test across OS processes: several processes share one sqlite store file,
//! each running its share of 200 ADDs across 3 nodes as concurrent tasks with a connection
//! each; the parent checks that no address was given twice, then the processes DEL everything
//! in parallel and the parent checks that every block is empty again.
//!
//! This binary has no libtest harness: run normally, it is the parent and re-executes itself
//! with `SERVAL_IPAM_TEST_CHILD` set (to `add` or `del`) to become a child. A child prints its
//! results as one JSON object (`{"<i>": [addresses]}`) on stdout.

#[expect(
    dead_code,
    reason = "this binary uses only the concurrency helpers of the shared scenarios"
)]
mod scenarios;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use serval_ipam::Ipam;
use serval_store::testing::SqliteFile;

const CHILD_ENV: &str = "SERVAL_IPAM_TEST_CHILD";
const URL_ENV: &str = "SERVAL_IPAM_TEST_URL";
const SHARE_ENV: &str = "SERVAL_IPAM_TEST_SHARE";
const PROCS: usize = 4;
const ADDS: usize = 200;
const NODES: usize = 3;

type Results = BTreeMap<usize, Vec<IpAddr>>;

/// Runs this process's share (`i % PROCS == share`) of the ADDs or DELs, concurrently.
async fn child(mode: &str, url: &str, share: usize) -> Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in (share..ADDS).step_by(PROCS) {
        let ipam = Ipam::new(serval_store::open(url).await?);
        let mode = mode.to_string();
        tasks.spawn(async move {
            let r = match mode.as_str() {
                "add" => scenarios::concurrent_add(&ipam, i, NODES).await,
                _ => ipam
                    .release_by_handle(&format!("c{i}"))
                    .await
                    .map_err(anyhow::Error::from),
            };
            (i, r)
        });
    }
    let mut out = Results::new();
    while let Some(r) = tasks.join_next().await {
        let (i, addrs) = r?;
        out.insert(i, addrs.with_context(|| format!("{mode} c{i}"))?);
    }
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

/// Runs one child per share at once and merges what they print.
async fn run_children(mode: &str, url: &str) -> Result<Results> {
    let exe = std::env::current_exe()?;
    let mut waiters = Vec::new();
    for share in 0..PROCS {
        let child = Command::new(&exe)
            .env(CHILD_ENV, mode)
            .env(URL_ENV, url)
            .env(SHARE_ENV, share.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("spawning a child process")?;
        waiters.push(tokio::task::spawn_blocking(move || {
            child.wait_with_output()
        }));
    }
    let mut all = Results::new();
    for (share, w) in waiters.into_iter().enumerate() {
        let out = w.await??;
        ensure!(
            out.status.success(),
            "{mode} child {share} failed: {}",
            out.status
        );
        let got: Results = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("{mode} child {share} printed no results"))?;
        all.extend(got);
    }
    Ok(all)
}

async fn parent() -> Result<()> {
    let file = SqliteFile::new()?;
    let url = file.url();
    let added = run_children("add", &url).await?;
    let ipam = Ipam::new(file.open().await?);
    scenarios::check_concurrent_adds(&ipam, &added, ADDS, NODES).await?;
    scenarios::check_consistency(&ipam).await?;
    let freed = run_children("del", &url).await?;
    for (i, held) in &added {
        let mut held = held.clone();
        held.sort();
        ensure!(
            freed.get(i) == Some(&held),
            "DEL c{i} freed {:?}, held {held:?}",
            freed.get(i)
        );
    }
    scenarios::check_all_free(&ipam).await?;
    scenarios::check_consistency(&ipam).await?;
    println!(
        "ipam sqlite_processes: {ADDS} ADDs and DELs in {PROCS} processes across {NODES} nodes: ok"
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    match std::env::var(CHILD_ENV) {
        Ok(mode) => {
            let url = std::env::var(URL_ENV).context("child without a store URL")?;
            let share = std::env::var(SHARE_ENV)
                .context("child without a share")?
                .parse()?;
            child(&mode, &url, share).await
        }
        Err(_) => parent().await,
    }
}
