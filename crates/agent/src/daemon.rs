//! The composition root: opens the datastore and netlink, starts the syncer, the routing
//! calculator/programmer loop, the policy pipeline ([`crate::calc`]) with its dataplane
//! driver thread (and, in a lab, the pod runtime), and stops them on a signal.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serval_api::Client;
use serval_model::{Kind, Resource, ResourceKey};
use serval_sys::Netlink;
use tokio::sync::watch;
use tracing::Instrument;

use crate::cache::Cache;
use crate::calc::{self, DataplaneState, DataplaneStatus};
use crate::dataplane::DriverThread;
use crate::routes::{self, Family, Inputs, Skipped};
use crate::routing::{Programmer, UnderlayLink};
use crate::{AgentConfig, AgentError, runtime, syncer};

/// How long a shutdown waits for the dataplane cleanup (`cleanup_on_exit`) to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);

/// Runs the agent until SIGTERM or SIGINT (`Ok`) or a fatal error. Must run in the node's
/// network namespace (the netlink socket and the dataplane driver thread are created here,
/// on the calling thread).
pub async fn run(config: AgentConfig) -> Result<(), AgentError> {
    use tokio::signal::unix::{SignalKind, signal};
    // The agent process's allocator (several agents sharing a test process use run_until).
    crate::memory::tune_allocator();
    let mut term =
        signal(SignalKind::terminate()).map_err(|source| AgentError::Signals { source })?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|source| AgentError::Signals { source })?;
    run_until(config, async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
    .await
}

/// Runs the agent until `shutdown` completes (`Ok`, after the dataplane cleanup when
/// [`AgentConfig::cleanup_on_exit`] is set) or a fatal error. Same namespace rule as [`run`].
pub async fn run_until(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    if config.node.is_empty() || config.node.contains('/') {
        return Err(AgentError::BadNode {
            node: config.node.clone(),
        });
    }
    if config.lab_dir.is_some() && config.netns_prefix.is_none() {
        return Err(AgentError::MissingNetnsPrefix);
    }
    let nl = Netlink::current().map_err(|source| AgentError::Netlink {
        node: config.node.clone(),
        source,
    })?;
    // Every log line of this agent's tasks carries `node=…` (several agents may share a
    // process in tests).
    let span = tracing::info_span!("agent", node = %config.node);
    let driver =
        DriverThread::spawn(&config.node, span.clone()).map_err(|e| AgentError::TaskEnded {
            task: "dataplane driver",
            reason: e.to_string(),
        })?;
    // The node's cgroup, for the eBPF driver's connect-time load balancer (before any open).
    let cgroup = config.cgroup.clone();
    driver
        .call(move |_| crate::dataplane::bpf::ctlb::set_thread_cgroup(cgroup))
        .await
        .map_err(|e| AgentError::TaskEnded {
            task: "dataplane driver",
            reason: e.to_string(),
        })?;
    // Prometheus /metrics on --metrics-addr (bound here, in the node's namespace; a busy
    // address fails the start), else as FelixConfiguration prometheusMetrics* says.
    let metrics_flag = match config.metrics_addr {
        Some(addr) => Some(crate::metrics::bind(addr).await?),
        None => None,
    };
    let client = Client::open(&config.datastore)
        .await
        .map_err(|source| AgentError::Datastore {
            url: config.datastore.clone(),
            source: Box::new(source),
        })?;
    if let Some(path) = config.ready_path() {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!(
        node = %config.node,
        datastore = %config.datastore,
        lab_dir = ?config.lab_dir,
        resync = ?config.resync_interval,
        cleanup_on_exit = config.cleanup_on_exit,
        "agent starting"
    );
    // Services, policies and the like reach the policy pipeline only (no second copy in the
    // cache); it follows the cache from before the first list.
    let cache = Cache::with_follower_only(crate::cache::FOLLOWER_ONLY_KINDS);
    let follow = cache.follow_resources();
    let metrics = tokio::spawn(
        crate::metrics::run(
            metrics_flag,
            config.node.clone(),
            // Only FelixConfiguration (prometheusMetrics*): no copy of every Service.
            cache.follow_kinds(&[Kind::FelixConfiguration]),
            driver.clone(),
        )
        .instrument(span.clone()),
    );
    let mut syncer =
        tokio::spawn(syncer::run(client.clone(), cache.clone()).instrument(span.clone()));
    let (routed_tx, routed_rx) = watch::channel(false);
    let mut routing = tokio::spawn(
        routing_loop(
            config.clone(),
            cache.clone(),
            Programmer::new(nl),
            routed_tx,
        )
        .instrument(span.clone()),
    );
    // BGP mode: this node's BIRD (static mode: stops one an earlier agent left).
    let bgp = tokio::spawn(crate::bgp::run(config.clone(), cache.clone()).instrument(span.clone()));
    let mut pods = match (&config.lab_dir, &config.netns_prefix) {
        (Some(_), Some(_)) => {
            let rt = runtime::Runtime::new(&config, client.clone());
            Some(tokio::spawn(
                rt.run(cache.clone(), config.resync_interval)
                    .instrument(span.clone()),
            ))
        }
        _ => None,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let (dp_tx, dp_rx) = watch::channel(None);
    let mut policy = tokio::spawn(
        calc::run(config.clone(), follow, driver, dp_tx, stop_rx).instrument(span.clone()),
    );
    let ready = tokio::spawn(ready_writer(config.clone(), routed_rx, dp_rx).instrument(span));

    let pods_done = async {
        match pods.as_mut() {
            Some(h) => h.await,
            None => std::future::pending().await,
        }
    };
    let ended = |task: &'static str, r: Result<(), tokio::task::JoinError>| AgentError::TaskEnded {
        task,
        reason: match r {
            Ok(()) => "returned".into(),
            Err(e) => e.to_string(),
        },
    };
    let result = tokio::select! {
        r = &mut syncer => Err(ended("syncer", r)),
        r = &mut routing => Err(ended("routing", r)),
        r = pods_done => Err(ended("pod runtime", r)),
        r = &mut policy => Err(match r {
            Ok(Err(e)) => AgentError::TaskEnded { task: "policy", reason: e.to_string() },
            Ok(Ok(())) => AgentError::TaskEnded { task: "policy", reason: "returned".into() },
            Err(e) => AgentError::TaskEnded { task: "policy", reason: e.to_string() },
        }),
        () = shutdown => Ok(()),
    };
    ready.abort();
    metrics.abort();
    if result.is_ok() {
        tracing::info!(node = %config.node, "agent stopping");
        if let Some(path) = config.ready_path() {
            let _ = std::fs::remove_file(path);
        }
        let _ = stop_tx.send(true);
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut policy)
            .await
            .is_err()
        {
            tracing::error!(grace = ?SHUTDOWN_GRACE, "the dataplane did not finish stopping in time");
        }
    }
    policy.abort();
    syncer.abort();
    routing.abort();
    bgp.abort();
    if let Some(p) = pods {
        p.abort();
    }
    result
}

/// [`run`] on a runtime of its own, for callers without one.
pub fn run_blocking(config: AgentConfig) -> Result<(), AgentError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| AgentError::Runtime { source })?;
    rt.block_on(run(config))
}

/// The health file's content.
pub(crate) fn ready_body(node: &str, status: &DataplaneStatus) -> serde_json::Value {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (state, error) = match &status.state {
        DataplaneState::Programmed => ("programmed", None),
        DataplaneState::Unavailable { error } => ("unavailable", Some(error.as_str())),
        DataplaneState::Failing { error } => ("failing", Some(error.as_str())),
    };
    let mut body = serde_json::json!({
        "node": node,
        "pid": std::process::id(),
        "since_unix": now,
        "dataplane": status.dataplane.as_str(),
        "dataplane_state": state,
    });
    if let Some(e) = error {
        body["dataplane_error"] = e.into();
    }
    body
}

/// Writes the health file once routing has been programmed from a full sync and the
/// dataplane has settled (applied once, or known unavailable); rewrites it when the
/// dataplane's status changes.
async fn ready_writer(
    config: AgentConfig,
    mut routed: watch::Receiver<bool>,
    mut dataplane: watch::Receiver<Option<DataplaneStatus>>,
) {
    if routed.wait_for(|r| *r).await.is_err() {
        return;
    }
    let mut written: Option<DataplaneStatus> = None;
    loop {
        let status = match dataplane
            .wait_for(|s| {
                s.as_ref()
                    .is_some_and(|s| s.is_settled() && Some(s) != written.as_ref())
            })
            .await
        {
            Ok(s) => s.clone(),
            Err(_) => return,
        };
        let Some(status) = status else { return };
        match config.ready_path() {
            None => {
                tracing::info!(node = %config.node, dataplane = %status.dataplane, "agent ready")
            }
            Some(path) => {
                let body = ready_body(&config.node, &status);
                match write_atomic(&path, body.to_string().as_bytes()) {
                    Ok(()) => {
                        tracing::info!(node = %config.node, dataplane = %status.dataplane, file = %path.display(), "agent ready")
                    }
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "cannot write the agent's ready file")
                    }
                }
            }
        }
        written = Some(status);
    }
}

/// Writes `path` via a temporary file and a rename, so readers never see half a file.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

/// This node's underlay links (one per family it has an address of) and their MTU.
async fn underlay_links(
    programmer: &Programmer,
    inputs: &Inputs,
) -> (BTreeMap<Family, UnderlayLink>, u32) {
    let mut links = BTreeMap::new();
    if let Some(me) = inputs.nodes.get(&inputs.node) {
        for family in [Family::V4, Family::V6] {
            let Some(addr) = me.underlay(family) else {
                continue;
            };
            match programmer.underlay_link(addr.addr()).await {
                Ok(Some(l)) => {
                    links.insert(family, l);
                }
                Ok(None) => tracing::warn!(
                    node = %inputs.node,
                    addr = %addr,
                    "no link in this namespace holds the node's underlay address; routes of its family wait"
                ),
                Err(e) => tracing::warn!(error = %e, "cannot look up the underlay link"),
            }
        }
    }
    let mtu = links
        .values()
        .filter_map(|l| l.mtu)
        .min()
        .unwrap_or(routes::DEFAULT_UNDERLAY_MTU);
    (links, mtu)
}

/// Recomputes and programs routing on every cache change (debounced) and every resync
/// interval.
async fn routing_loop(
    config: AgentConfig,
    cache: Cache,
    programmer: Programmer,
    routed: watch::Sender<bool>,
) {
    let mut changes = cache.subscribe();
    let mut last_skipped: BTreeSet<Skipped> = BTreeSet::new();
    let mut last_mtu = None;
    let mut warned_no_node = false;
    loop {
        let snapshot = {
            let st = cache.read();
            st.in_sync().then(|| {
                let inputs = Inputs::from_state(&st, &config.node, 0);
                let has_node =
                    st.resources
                        .contains_key(&ResourceKey::new(Kind::Node, None, &config.node));
                (inputs, has_node)
            })
        };
        if let Some((mut inputs, has_node)) = snapshot {
            if !has_node && !warned_no_node {
                tracing::warn!(node = %config.node, "there is no Node resource named {}; routing only this node's own blocks until it appears", config.node);
                warned_no_node = true;
            }
            let (links, mtu) = underlay_links(&programmer, &inputs).await;
            inputs.underlay_mtu = mtu;
            let mut desired = routes::compute(&inputs);
            // BGP mode: BIRD installs the routes to other nodes' native blocks.
            crate::bgp::leave_remote_routes_to_bird(config.routing, &mut desired, &inputs);
            let skipped: BTreeSet<Skipped> = desired.skipped.iter().cloned().collect();
            for s in skipped.difference(&last_skipped) {
                tracing::warn!("{s}");
            }
            last_skipped = skipped;
            if last_mtu != Some(desired.pod_mtu) {
                tracing::info!(
                    pod_mtu = desired.pod_mtu,
                    underlay_mtu = mtu,
                    "pod MTU for this node's encapsulation"
                );
                last_mtu = Some(desired.pod_mtu);
            }
            match programmer.sync(&desired, &links).await {
                Ok(report) => {
                    if report.changes() > 0 || report.failures > 0 {
                        tracing::info!(%report, routes = desired.routes.len(), "routing programmed");
                    } else {
                        tracing::debug!(routes = desired.routes.len(), "routing in sync");
                    }
                    routed.send_if_modified(|r| !std::mem::replace(r, true));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "routing sync failed; retrying at the next change or resync")
                }
            }
        }
        tokio::select! {
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
                tokio::time::sleep(config.debounce).await;
            }
            _ = tokio::time::sleep(config.resync_interval) => {
                tracing::debug!("periodic routing resync");
            }
        }
        changes.mark_unchanged();
    }
}

/// The Pods bound to `node`, by (namespace, name).
pub(crate) fn pods_on(
    resources: &BTreeMap<ResourceKey, Resource>,
    node: &str,
) -> Vec<serval_model::k8s::Pod> {
    resources
        .values()
        .filter_map(|r| match r {
            Resource::Pod(p)
                if p.spec.node_name.as_deref() == Some(node) && !p.spec.host_network =>
            {
                Some(p.clone())
            }
            _ => None,
        })
        .collect()
}
