//! The real agent of the dataplane tests: run on a thread inside the node namespace
//! (stopped through `run_until` by `stop`, and on drop, even on panic), readiness polling,
//! the policies and service both dataplanes are checked with, and apply/delete helpers.

use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serval_agent::AgentConfig;
use serval_api::{ApplyMode, Client};
use serval_model::{Kind, ResourceKey, parse_documents};
use serval_store::testing::SqliteFile;
use serval_sys::NetNs;
use tokio::sync::oneshot;

use super::node::{NODE, Node};
use super::wait::wait_for;

/// One agent on its own thread inside the node namespace; `stop` ends it through
/// `run_until` (the agent's own shutdown path), drop too.
pub struct Agent {
    pub stop: Option<oneshot::Sender<()>>,
    pub thread: Option<thread::JoinHandle<serval_sys::Result<Result<(), String>>>>,
    pub ready: PathBuf,
}

impl Agent {
    pub fn start(ns: &NetNs, config: AgentConfig) -> Result<Agent> {
        let ready = config.ready_file.clone().context("a ready file")?;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = ns.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(serval_agent::run_until(config, async {
                let _ = stopped.await;
            }))
            .map_err(|e| e.to_string())
        })?;
        Ok(Agent {
            stop: Some(stop),
            thread: Some(thread),
            ready,
        })
    }

    /// The agent's health file, once written.
    pub async fn wait_ready(&mut self) -> Result<serde_json::Value> {
        let ready = self.ready.clone();
        wait_for("the agent's ready file", || {
            let ready = ready.clone();
            async move { Ok(ready.exists()) }
        })
        .await
        .with_context(|| {
            if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
                let r = self.thread.take().map(|t| t.join());
                format!("the agent stopped: {r:?}")
            } else {
                "the agent is still running".into()
            }
        })?;
        Ok(serde_json::from_slice(&std::fs::read(&self.ready)?)?)
    }

    /// Stops the agent the way SIGTERM does and waits for it to finish.
    pub fn stop(mut self) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(Ok(Ok(()))) => {}
                other => bail!("the agent did not stop cleanly: {other:?}"),
            }
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits until `from` → `to` reachability equals `want`.
pub async fn wait_reach(node: &Node, from: &str, to: &str, want: bool) -> Result<()> {
    let what = format!(
        "{from} -> {to} to be {}",
        if want { "allowed" } else { "blocked" }
    );
    wait_for(&what, || async { Ok(node.reaches(from, to) == want) }).await
}

pub const DEFAULT_DENY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"#;

pub const ALLOW_A_TO_B: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-a-to-b, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: a}}}]
    ports: [{port: http}]
"#;

pub const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  clusterIP: 10.96.0.10
  selector: {tier: web}
  ports: [{port: 8080, targetPort: http}]
"#;

pub async fn apply(client: &Client, yaml: &str) -> Result<()> {
    client
        .apply(parse_documents("test", yaml)?, ApplyMode::Apply)
        .await?;
    Ok(())
}

pub async fn delete(client: &Client, kind: Kind, ns: Option<&str>, name: &str) -> Result<()> {
    client
        .delete(&[ResourceKey::new(kind, ns, name)], false)
        .await?;
    Ok(())
}

pub fn config(store: &SqliteFile, dir: &tempfile::TempDir, resync: Duration) -> AgentConfig {
    let mut c = AgentConfig::new(NODE, store.url());
    c.ready_file = Some(dir.path().join("agent.ready"));
    c.resync_interval = resync;
    c
}
