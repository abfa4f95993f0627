//! Readiness polling shared by the agent's integration tests (not a timing assertion).
//! Included as `common::wait` or, by tests that need nothing else of `common`, with
//! `#[path = "common/wait.rs"] mod wait;`.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// Polls `check` until true (a readiness condition, not a timing assertion).
pub async fn wait_for<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    while Instant::now() < deadline {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("gave up waiting for {what} (last error: {last:?})")
}
