//! The policy/service pipeline: cache → [`serval_calc::Model`] (updated one resource at a
//! time from [`crate::cache::Cache::follow_resources`]) → [`serval_calc::desired_state`] for this node →
//! the active [`Dataplane`] driver.
//!
//! - Bursts of changes are batched ([`AgentConfig::debounce`]); a batch that changes the model
//!   recomputes the desired state and, when it differs from what the driver holds, applies
//!   it. What changed ([`serval_calc::diff`]) is logged at info (`policy updated …`).
//! - Every [`AgentConfig::resync_interval`] the driver reads the kernel back and repairs
//!   drift (a deleted chain comes back). A failed apply is retried after [`RETRY`].
//! - The dataplane is the one the node's effective FelixConfiguration selects (`bpfEnabled`,
//!   `default` overlaid by `node.<name>`). When it flips, the old dataplane is cleaned
//!   completely before the other starts. Nothing is applied before the cache has listed every
//!   resource once (an empty model would wipe a restarted agent's rules).
//! - On shutdown with [`AgentConfig::cleanup_on_exit`], everything the dataplanes created is
//!   removed; otherwise it stays in place, so connections keep flowing across a restart.
//!
//! The node's own NodePort addresses come from its Node resource (`spec.bgp` addresses):
//! `desired_state(model, Some(node))` reads them from the model.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serval_calc::model::NsName;
use serval_calc::services::{FrontendDelta, FrontendKey, ServiceTracker, affected_services};
use serval_calc::state::{desired_state_with_services, node_addrs};
use serval_calc::{Delta, DesiredState, Model, diff};
use serval_model::{Kind, Resource, ResourceKey};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::AgentConfig;
use crate::cache::ResourceChange;
use crate::dataplane::{self, DataplaneError, DataplaneKind, DriverThread, Written};

/// How soon a failed apply is retried.
pub const RETRY: Duration = Duration::from_secs(2);

/// A service-only batch of at least this many changes received at once is a burst: it is
/// gathered ([`BURST_QUIET`], [`BURST_MAX_WAIT`]) before the calculation. A single change
/// (one Service applied) is calculated and written at once.
const BURST_MIN: usize = 2;
/// A burst ends when no change arrived for this long.
const BURST_QUIET: Duration = Duration::from_millis(1);
/// A burst is calculated and written at the latest this long after its first change, even
/// while more keep coming (the next ones form the next batch): large enough that a burst
/// is written in a few dozen passes rather than thousands, small enough that the last
/// pass, which runs after the burst's last change arrived, stays short (a pass costs a
/// few µs per service; its fixed cost on the services-only path is ~0.1 ms).
const BURST_MAX_WAIT: Duration = Duration::from_millis(25);
/// Services batches smaller than this skip returning freed memory to the kernel.
const TRIM_MIN: usize = 32;
/// Freed memory is returned to the kernel once no change has arrived for this long:
/// `malloc_trim` walks the whole heap (milliseconds at 50,000 Services) and holds the
/// allocator meanwhile, so it waits until a burst is over rather than delaying the change
/// that follows it.
const TRIM_QUIET: Duration = Duration::from_millis(250);

/// The dataplane's state as the agent's health file records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataplaneState {
    /// The desired state was applied (at least once since this dataplane was selected).
    Programmed,
    /// The selected dataplane does not exist in this build: routing only, no policy.
    Unavailable { error: String },
    /// Applying failed and has not succeeded since; retried.
    Failing { error: String },
}

/// The selected dataplane and its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneStatus {
    pub dataplane: DataplaneKind,
    pub state: DataplaneState,
}

impl DataplaneStatus {
    /// Settled: programmed, or known to be unavailable (the node runs without policy).
    pub fn is_settled(&self) -> bool {
        !matches!(self.state, DataplaneState::Failing { .. })
    }
}

/// Applies one cache change to the model; true when the model changed.
fn absorb(model: &mut Model, synced: &mut bool, change: ResourceChange) -> bool {
    match change {
        ResourceChange::Replaced(all) => {
            let mut fresh = Model::from_resources(all);
            fresh.ipam_blocks = model.ipam_blocks.clone();
            let changed = !*synced || fresh != *model;
            *model = fresh;
            *synced = true;
            changed
        }
        ResourceChange::Applied(r) => model.apply(*r).is_some(),
        ResourceChange::Deleted(key) => model.remove(&key).is_some(),
        ResourceChange::Blocks(blocks) => {
            let changed = blocks != model.ipam_blocks;
            model.ipam_blocks = blocks;
            changed
        }
    }
}

/// What a batch of changes asks of the calculation.
#[derive(Debug, Default)]
struct Batch {
    /// Changes received.
    changes: usize,
    /// Something other than Services and EndpointSlices changed (or everything was relisted):
    /// the whole desired state is computed again.
    full: bool,
    /// The services whose frontends may have changed.
    services: BTreeSet<NsName>,
    /// A change that can reach any service (pods, workload endpoints, nodes, a relist): the
    /// services part is built again too when `full`; otherwise it is kept and only
    /// `services` are recomputed.
    services_stale: bool,
    /// When the first change of the batch arrived.
    since: Option<Instant>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        !self.full && self.services.is_empty()
    }
}

/// The stored version of `key` in `model`, for the kinds whose changes are followed
/// incrementally (EndpointSlices: the service an old slice fed).
fn old_slice(model: &Model, key: &ResourceKey) -> Option<Resource> {
    (key.kind == Kind::EndpointSlice)
        .then(|| {
            model
                .endpoint_slices
                .get(&(key.namespace.clone().unwrap_or_default(), key.name.clone()))
                .cloned()
                .map(Resource::EndpointSlice)
        })
        .flatten()
}

/// Drops what the datastore adds to every resource and the calculation never reads (uid,
/// creation time, resourceVersion): less memory per resource held in the model, and a
/// write that changes nothing else is no change to the model.
fn slim(r: &mut Resource) {
    let meta = r.meta_mut();
    meta.resource_version = None;
    meta.uid = None;
    meta.creation_timestamp = None;
}

/// Returns the heap pages freed by a batch (the decoded resources, the temporary maps of a
/// calculation and of the driver's write) to the kernel after each write, so the agent's
/// resident memory follows what it holds rather than its peak.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only gives free pages of the malloc arenas back to the kernel; it
    // touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Applies one cache change to the model and records in `batch` what it asks of the
/// calculation. Service and EndpointSlice changes name the services to recompute; any other
/// change to the model makes the batch a full recomputation.
fn absorb_into(
    model: &mut Model,
    synced: &mut bool,
    batch: &mut Batch,
    mut change: ResourceChange,
) {
    match &mut change {
        ResourceChange::Replaced(all) => all.iter_mut().for_each(slim),
        ResourceChange::Applied(r) => slim(r),
        ResourceChange::Deleted(_) | ResourceChange::Blocks(_) => {}
    }
    batch.changes += 1;
    batch.since.get_or_insert_with(Instant::now);
    let incremental = |k: Kind| matches!(k, Kind::Service | Kind::EndpointSlice);
    match change {
        ResourceChange::Applied(r) if *synced && incremental(r.kind()) => {
            // A Service's key is not needed (its old version feeds no other service).
            let old = (r.kind() == Kind::EndpointSlice)
                .then(|| old_slice(model, &r.key()))
                .flatten();
            let new = (r.kind() == Kind::EndpointSlice).then(|| (*r).clone());
            let name = (r.meta().namespace_str().to_string(), r.meta().name.clone());
            let kind = r.kind();
            if model.apply(*r).is_some() {
                if kind == Kind::Service {
                    batch.services.insert(name);
                } else {
                    batch
                        .services
                        .extend(affected_services(model, old.as_ref(), new.as_ref()));
                }
            }
        }
        ResourceChange::Deleted(key) if *synced && incremental(key.kind) => {
            let old = old_slice(model, &key);
            if model.remove(&key).is_some() {
                if key.kind == Kind::Service {
                    batch
                        .services
                        .insert((key.namespace.clone().unwrap_or_default(), key.name.clone()));
                } else {
                    batch
                        .services
                        .extend(affected_services(model, old.as_ref(), None));
                }
            }
        }
        other => {
            // What services read besides Services and EndpointSlices: endpoints (Pods,
            // WorkloadEndpoints) and node addresses (Nodes). A relist may change anything.
            let feeds_services = match &other {
                ResourceChange::Replaced(_) => true,
                ResourceChange::Applied(r) => feeds_services(r.kind()),
                ResourceChange::Deleted(k) => feeds_services(k.kind),
                ResourceChange::Blocks(_) => false,
            };
            if absorb(model, synced, other) {
                batch.full = true;
                batch.services_stale |= feeds_services;
            }
        }
    }
}

/// Kinds other than Service and EndpointSlice whose changes can change service frontends.
fn feeds_services(kind: Kind) -> bool {
    matches!(kind, Kind::Pod | Kind::WorkloadEndpoint | Kind::Node)
}

/// What [`Pipeline::calculate`] did, for the logs.
enum Calculated {
    /// The whole desired state again; `old` is the one before.
    Full {
        batch: Batch,
        old: Option<Arc<DesiredState>>,
    },
    /// Only the services the batch names; what changed in the frontends.
    Services {
        batch: Batch,
        services: FrontendDelta,
    },
    /// Everything but the services part again, and the services the batch names: what
    /// changed besides services (`flags`: NAT outgoing, host endpoints, failsafe) and in the
    /// frontends.
    Policy {
        batch: Batch,
        summary: DeltaSummary,
        flags: (bool, usize, bool),
        services: FrontendDelta,
    },
}

impl Calculated {
    fn batch(&self) -> &Batch {
        match self {
            Calculated::Full { batch, .. }
            | Calculated::Services { batch, .. }
            | Calculated::Policy { batch, .. } => batch,
        }
    }

    fn path(&self) -> &'static str {
        match self {
            Calculated::Full { .. } => "full",
            Calculated::Services { .. } => "services",
            Calculated::Policy { .. } => "policy",
        }
    }
}

/// Milliseconds with a fraction, for timing fields.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// `~changed/-removed` frontends of an incremental update (added ones count as changed).
fn counts_of(d: &FrontendDelta) -> String {
    format!("~{}/-{}", d.changed.len(), d.removed.len())
}

/// `+added/~changed/-removed` of a keyed part of the delta.
fn counts(added: usize, changed: usize, removed: usize) -> String {
    format!("+{added}/~{changed}/-{removed}")
}

/// One line describing `delta` (old → new), for the `policy updated` log.
pub fn describe(old: &DesiredState, new: &DesiredState, delta: &Delta) -> DeltaSummary {
    const MAX_NAMED: usize = 10;
    let mut names: Vec<String> = delta
        .endpoints_changed
        .keys()
        .map(|k| {
            if old.endpoints.contains_key(k) {
                k.to_string()
            } else {
                format!("+{k}")
            }
        })
        .chain(delta.endpoints_removed.iter().map(|k| format!("-{k}")))
        .collect();
    let more = names.len().saturating_sub(MAX_NAMED);
    names.truncate(MAX_NAMED);
    let mut endpoints = names.join(",");
    if more > 0 {
        endpoints.push_str(&format!(",…(+{more} more)"));
    }
    if endpoints.is_empty() {
        endpoints.push('-');
    }
    let sets_added = delta
        .ipsets_changed
        .iter()
        .filter(|s| !old.ipsets.contains_key(*s))
        .count();
    let fe_added = delta
        .frontends_changed
        .iter()
        .filter(|f| !old.services.frontends.contains_key(*f))
        .count();
    DeltaSummary {
        endpoints,
        sets: counts(
            sets_added,
            delta.ipsets_changed.len() - sets_added,
            delta.ipsets_removed.len(),
        ),
        frontends: counts(
            fe_added,
            delta.frontends_changed.len() - fe_added,
            delta.frontends_removed.len(),
        ),
        totals: format!(
            "endpoints={} sets={} frontends={}",
            new.endpoints.len(),
            new.ipsets.len(),
            new.services.frontends.len()
        ),
    }
}

/// The parts of the `policy updated` log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaSummary {
    /// Changed endpoints (`ns/pod`, `+ns/pod` added, `-ns/pod` removed), at most 10 named.
    pub endpoints: String,
    /// `+added/~changed/-removed` ip sets.
    pub sets: String,
    /// `+added/~changed/-removed` service frontends.
    pub frontends: String,
    /// Sizes of the new state.
    pub totals: String,
}

/// The desired state of this node, kept up to date with the model batch by batch.
#[derive(Debug, Default)]
struct Calculation {
    /// The desired state last calculated (kept up to date in place by the incremental path,
    /// so it is shared with the driver only for the length of a call).
    current: Option<Arc<DesiredState>>,
    /// Keeps `current.services` up to date service by service.
    tracker: ServiceTracker,
}

impl Calculation {
    /// Brings `current` up to date with the model: the whole desired state when the batch
    /// needs it (or nothing was calculated yet), else only the services it names. Returns
    /// whether `current` changed, and the old state (full path) or the frontend changes
    /// (incremental path) for the log.
    fn calculate(&mut self, model: &Model, node: Option<&str>, batch: Batch) -> (bool, Calculated) {
        match self.current.as_mut() {
            Some(current) if !batch.full => {
                let addrs = node_addrs(model, node);
                // The driver gave its reference back when its call returned: no copy here.
                let state = Arc::make_mut(current);
                let delta =
                    self.tracker
                        .update(&mut state.services, model, node, &addrs, &batch.services);
                (
                    !delta.is_empty(),
                    Calculated::Services {
                        batch,
                        services: delta,
                    },
                )
            }
            Some(current) if !batch.services_stale => {
                // Policy-side changes: everything but the services part is calculated again;
                // that part is taken over and updated for the services the batch names.
                let mut services = std::mem::take(&mut Arc::make_mut(current).services);
                let mut delta = FrontendDelta::default();
                let tracker = &mut self.tracker;
                let mut new = desired_state_with_services(model, node, |m, n| {
                    delta = tracker.update(&mut services, m, n, &node_addrs(m, n), &batch.services);
                    services
                });
                // Compared and described without the services part (the old state gave it up).
                let services = std::mem::take(&mut new.services);
                let old = self.current.take().unwrap_or_default();
                let rest = diff(&old, &new);
                let changed = *old != new || !delta.is_empty();
                let summary = describe(&old, &new, &rest);
                let flags = (
                    rest.nat_outgoing_changed,
                    rest.host_endpoints_changed.len() + rest.host_endpoints_removed.len(),
                    rest.failsafe_changed,
                );
                drop(old);
                new.services = services;
                self.current = Some(Arc::new(new));
                (
                    changed,
                    Calculated::Policy {
                        batch,
                        summary,
                        flags,
                        services: delta,
                    },
                )
            }
            _ => {
                let mut tracker = ServiceTracker::default();
                let new = desired_state_with_services(model, node, |m, n| {
                    let (t, s) = ServiceTracker::build(m, n, &node_addrs(m, n));
                    tracker = t;
                    s
                });
                self.tracker = tracker;
                let old = self.current.replace(Arc::new(new));
                let changed = old.as_deref() != self.current.as_deref();
                (changed, Calculated::Full { batch, old })
            }
        }
    }
}

/// The pipeline's state between batches.
struct Pipeline {
    config: AgentConfig,
    driver: DriverThread,
    status: watch::Sender<Option<DataplaneStatus>>,
    model: Model,
    synced: bool,
    /// Changes absorbed into `model` and not yet calculated.
    batch: Batch,
    /// The dataplane selected; `None` before the first full sync.
    selected: Option<DataplaneKind>,
    /// The eBPF load settings (map sizes, log level) the open bpf driver was made with.
    bpf_settings: Option<crate::dataplane::bpf::BpfSettings>,
    /// Whether a driver is open for `selected`.
    has_driver: bool,
    /// The desired state calculated from `model`.
    calc: Calculation,
    /// Whether the driver holds `calc.current` (as far as we know).
    in_driver: bool,
    /// The dataplane and endpoints last recorded as programmed (lab only).
    programmed: Option<(DataplaneKind, Vec<String>)>,
    /// An apply is owed (it failed, or the driver was just opened).
    pending: bool,
    /// When freed memory is to be returned to the kernel (after a large apply, once quiet).
    trim_at: Option<Instant>,
}

/// Runs the pipeline until `shutdown` turns true (then cleans up if configured) or the cache
/// goes away. `changes` is [`crate::cache::Cache::follow_resources`], subscribed before the syncer starts.
pub(crate) async fn run(
    config: AgentConfig,
    mut changes: mpsc::UnboundedReceiver<ResourceChange>,
    driver: DriverThread,
    status: watch::Sender<Option<DataplaneStatus>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), DataplaneError> {
    let mut p = Pipeline {
        config,
        driver,
        status,
        model: Model::default(),
        synced: false,
        batch: Batch::default(),
        selected: None,
        bpf_settings: None,
        has_driver: false,
        calc: Calculation::default(),
        in_driver: false,
        programmed: None,
        pending: false,
        trim_at: None,
    };
    let mut resync_at = Instant::now() + p.config.resync_interval;
    loop {
        let wake = if p.pending {
            (Instant::now() + RETRY).min(resync_at)
        } else {
            resync_at
        };
        let wake = p.trim_at.map_or(wake, |t| t.min(wake));
        let mut stop = false;
        tokio::select! {
            c = changes.recv() => {
                let Some(c) = c else { return Ok(()) };
                absorb_into(&mut p.model, &mut p.synced, &mut p.batch, c);
                p.drain(&mut changes);
                // A change that needs the whole state calculated again waits for the rest of
                // its burst; service changes are calculated at once (changes arriving
                // meanwhile form the next batch).
                if p.batch.full {
                    tokio::time::sleep(p.config.debounce).await;
                    p.drain(&mut changes);
                } else if p.batch.changes >= BURST_MIN {
                    // A burst of service changes (a large apply): gather it while it keeps
                    // coming, so it is calculated and written in few large passes.
                    p.coalesce(&mut changes).await;
                }
            }
            _ = tokio::time::sleep_until(wake) => {}
            r = shutdown.changed() => match r {
                // The agent is gone without a shutdown (aborted): leave everything in place.
                Err(_) => return Ok(()),
                Ok(()) => stop = *shutdown.borrow_and_update(),
            },
        }
        if stop {
            p.shutdown().await;
            return Ok(());
        }
        if p.trim_at.is_some_and(|t| Instant::now() >= t) && !p.batch.is_empty() {
            // A change is waiting: it goes first, the trim waits for quiet again.
            p.trim_at = Some(Instant::now() + TRIM_QUIET);
        } else if p.trim_at.is_some_and(|t| Instant::now() >= t) {
            // Due only when no change came for TRIM_QUIET (each apply pushes it back).
            p.trim_at = None;
            let trim_started = Instant::now();
            release_freed_memory();
            tracing::debug!(
                trim_ms = ms(trim_started.elapsed()),
                "freed memory returned to the kernel"
            );
        }
        if !p.synced {
            continue;
        }
        if !p.batch.is_empty() || p.pending || p.selected.is_none() {
            p.select().await;
            if p.has_driver {
                p.apply().await;
            }
        }
        if Instant::now() >= resync_at {
            if p.has_driver && !p.pending {
                p.resync().await;
            }
            resync_at = Instant::now() + p.config.resync_interval;
        }
    }
}

impl Pipeline {
    fn node(&self) -> &str {
        &self.config.node
    }

    /// Absorbs every change already queued into the model and the batch; how many.
    fn drain(&mut self, changes: &mut mpsc::UnboundedReceiver<ResourceChange>) -> usize {
        let mut n = 0;
        while let Ok(c) = changes.try_recv() {
            absorb_into(&mut self.model, &mut self.synced, &mut self.batch, c);
            n += 1;
        }
        n
    }

    /// Keeps absorbing changes while they keep arriving: until [`BURST_QUIET`] passes with
    /// none, or the batch is [`BURST_MAX_WAIT`] old.
    async fn coalesce(&mut self, changes: &mut mpsc::UnboundedReceiver<ResourceChange>) {
        let since = self.batch.since.unwrap_or_else(Instant::now);
        loop {
            tokio::time::sleep(BURST_QUIET).await;
            if self.drain(changes) == 0 || since.elapsed() >= BURST_MAX_WAIT {
                return;
            }
        }
    }

    /// In the lab, records which endpoints the dataplane has programmed
    /// (`<lab-dir>/nodes/<node>/dataplane.programmed`: JSON `{dataplane, endpoints: ["ns/pod"]}`)
    /// so `serval lab up`/`wait` return only once new pods are policed and served, not merely
    /// ready. Written atomically, only when the set changes.
    fn record_programmed(&mut self, kind: DataplaneKind, desired: &DesiredState) {
        let Some(lab_dir) = &self.config.lab_dir else {
            return;
        };
        let endpoints: Vec<String> = desired
            .endpoints
            .values()
            .map(|(e, _)| format!("{}/{}", e.namespace, e.pod))
            .collect();
        if self
            .programmed
            .as_ref()
            .is_some_and(|(k, e)| *k == kind && *e == endpoints)
        {
            return;
        }
        let dir = lab_dir.join("nodes").join(&self.config.node);
        let path = dir.join("dataplane.programmed");
        let tmp = dir.join("dataplane.programmed.tmp");
        let body = serde_json::json!({ "dataplane": kind.to_string(), "endpoints": endpoints });
        let result = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&tmp, body.to_string()))
            .and_then(|()| std::fs::rename(&tmp, &path));
        match result {
            Ok(()) => self.programmed = Some((kind, endpoints)),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "could not record the programmed endpoints")
            }
        }
    }

    fn publish(&self, dataplane: DataplaneKind, state: DataplaneState) {
        let new = Some(DataplaneStatus { dataplane, state });
        self.status.send_if_modified(|s| {
            if *s == new {
                false
            } else {
                *s = new;
                true
            }
        });
    }

    /// Opens the dataplane the node's effective FelixConfiguration selects, cleaning the
    /// previous one (or, at start, leftovers of any other) completely first.
    async fn select(&mut self) {
        let felix = self.model.felix(Some(self.node()));
        let want = DataplaneKind::from_bpf_enabled(felix.bpf_enabled);
        let bpf_settings = (want == DataplaneKind::Bpf)
            .then(|| crate::dataplane::bpf::BpfSettings::from_felix(&felix));
        if self.selected == Some(want) {
            if bpf_settings == self.bpf_settings {
                return;
            }
            // bpfMapSize* or bpfLogLevel changed: reload the programs with the new settings,
            // without cleaning up (pinned maps keep their contents unless their size changed,
            // attachments are swapped in place).
            tracing::info!(
                ?bpf_settings,
                "eBPF settings changed: reloading the programs"
            );
            let felix2 = felix.clone();
            let reopened = self
                .driver
                .call(move |slot| {
                    *slot = None;
                    dataplane::open_with(want, &felix2).map(|d| *slot = Some(d))
                })
                .await
                .and_then(|r| r);
            self.bpf_settings = bpf_settings;
            self.in_driver = false;
            match reopened {
                Ok(()) => {
                    self.has_driver = true;
                    self.pending = true;
                }
                Err(e) => {
                    self.has_driver = false;
                    self.pending = false;
                    tracing::error!(dataplane = %want, error = %e, "could not reload the eBPF dataplane with the new settings; will retry");
                    // Forget the settings so the next wake-up tries again.
                    self.bpf_settings = None;
                    self.publish(
                        want,
                        DataplaneState::Unavailable {
                            error: e.to_string(),
                        },
                    );
                }
            }
            return;
        }
        self.bpf_settings = bpf_settings;
        let from = self.selected;
        match from {
            Some(from) => {
                tracing::info!(%from, to = %want, "FelixConfiguration bpfEnabled changed: switching dataplanes (the old one is removed completely)")
            }
            None => {
                tracing::info!(dataplane = %want, "dataplane selected by FelixConfiguration bpfEnabled")
            }
        }
        let felix2 = felix.clone();
        let opened = self
            .driver
            .call(move |slot| {
                if let Some(mut old) = slot.take() {
                    match old.cleanup() {
                        Ok(w) => tracing::info!(dataplane = old.name(), written = %w, "old dataplane removed"),
                        Err(e) => tracing::error!(dataplane = old.name(), error = %e, "could not remove the old dataplane completely"),
                    }
                }
                // Leftovers of another dataplane (an earlier run may have used it).
                for other in DataplaneKind::ALL {
                    if other == want || Some(other) == from {
                        continue;
                    }
                    if let Ok(mut d) = dataplane::open(other) {
                        match d.cleanup() {
                            Ok(w) if !w.is_empty() => tracing::info!(dataplane = %other, written = %w, "removed leftovers of another dataplane"),
                            Ok(_) => {}
                            Err(e) => tracing::warn!(dataplane = %other, error = %e, "could not check for leftovers of another dataplane"),
                        }
                    }
                }
                dataplane::open_with(want, &felix2).map(|d| {
                    *slot = Some(d);
                })
            })
            .await
            .and_then(|r| r);
        self.selected = Some(want);
        self.in_driver = false;
        match opened {
            Ok(()) => {
                self.has_driver = true;
                self.pending = true;
            }
            Err(e) => {
                self.has_driver = false;
                self.pending = false;
                tracing::error!(dataplane = %want, error = %e, "no dataplane: this node forwards and routes pod traffic but enforces no policy and serves no services; will retry");
                // Not selected: the next wake-up (a change, or the periodic resync) tries again.
                self.selected = None;
                self.publish(
                    want,
                    DataplaneState::Unavailable {
                        error: e.to_string(),
                    },
                );
            }
        }
    }

    fn calculate(&mut self) -> (bool, Calculated) {
        let batch = std::mem::take(&mut self.batch);
        self.calc
            .calculate(&self.model, Some(self.config.node.as_str()), batch)
    }

    /// Calculates the desired state and applies it if the driver does not hold it already.
    async fn apply(&mut self) {
        let Some(kind) = self.selected else { return };
        let started = Instant::now();
        let (changed, calculated) = self.calculate();
        let calc_took = started.elapsed();
        if !self.pending && self.in_driver && !changed {
            tracing::debug!(
                changes = calculated.batch().changes,
                calc_ms = ms(calc_took),
                "changes leave the desired state as it is"
            );
            return;
        }
        let Some(desired) = self.calc.current.clone() else {
            return;
        };
        let d = desired.clone();
        // The frontends the batch changed: the driver may compare only those (it keeps the
        // services of its previous successful apply, which the calculation started from).
        let hint: Option<Vec<FrontendKey>> = match &calculated {
            Calculated::Services { services, .. } | Calculated::Policy { services, .. } => Some(
                services
                    .changed
                    .iter()
                    .chain(services.removed.iter())
                    .cloned()
                    .collect(),
            ),
            Calculated::Full { .. } => None,
        };
        let result = self
            .driver
            .call(move |slot| match (slot.as_mut(), hint) {
                (Some(dp), Some(h)) => dp.apply_services_changed(&d, h),
                (Some(dp), None) => dp.apply(&d),
                (None, _) => Err(DataplaneError::ThreadGone),
            })
            .await
            .and_then(|r| r);
        let driver_took = started.elapsed() - calc_took;
        match result {
            Ok(written) => {
                let waited = calculated
                    .batch()
                    .since
                    .map(|t| started.saturating_duration_since(t))
                    .unwrap_or_default();
                self.log_update(kind, &desired, &calculated, written);
                tracing::info!(
                    dataplane = %kind,
                    path = calculated.path(),
                    changes = calculated.batch().changes,
                    services = calculated.batch().services.len(),
                    wait_ms = ms(waited),
                    calc_ms = ms(calc_took),
                    driver_ms = ms(driver_took),
                    "pipeline timings: first change received → calculation (wait), calculation, driver write"
                );
                self.record_programmed(kind, &desired);
                drop(desired);
                // A small services batch frees little; trimming walks the whole heap.
                let trim = !matches!(calculated, Calculated::Services { .. })
                    || calculated.batch().changes >= TRIM_MIN;
                drop(calculated);
                if trim || self.trim_at.is_some() {
                    // Once quiet (a later change pushes it back).
                    self.trim_at = Some(Instant::now() + TRIM_QUIET);
                }
                self.in_driver = true;
                self.pending = false;
                self.publish(kind, DataplaneState::Programmed);
            }
            Err(e) => {
                tracing::warn!(dataplane = %kind, error = %e, retry_in = ?RETRY, "dataplane apply failed; the previous rules stay in force");
                self.in_driver = false;
                self.pending = true;
                if self
                    .status
                    .borrow()
                    .as_ref()
                    .is_none_or(|s| s.dataplane != kind)
                {
                    self.publish(
                        kind,
                        DataplaneState::Failing {
                            error: e.to_string(),
                        },
                    );
                }
            }
        }
    }

    fn log_update(
        &self,
        kind: DataplaneKind,
        desired: &DesiredState,
        calculated: &Calculated,
        written: Written,
    ) {
        match calculated {
            Calculated::Services { services, .. } => {
                tracing::info!(
                    dataplane = %kind,
                    endpoint = "-",
                    frontends = %counts_of(services),
                    %written,
                    "policy updated"
                );
            }
            Calculated::Policy {
                summary,
                flags,
                services,
                ..
            } => {
                tracing::info!(
                    dataplane = %kind,
                    endpoint = %summary.endpoints,
                    sets = %summary.sets,
                    frontends = %counts_of(services),
                    nat_outgoing = flags.0,
                    host_endpoints = flags.1,
                    failsafe = flags.2,
                    %written,
                    "policy updated"
                );
            }
            Calculated::Full { old: Some(old), .. } if self.in_driver => {
                let delta = diff(old, desired);
                let s = describe(old, desired, &delta);
                tracing::info!(
                    dataplane = %kind,
                    endpoint = %s.endpoints,
                    sets = %s.sets,
                    frontends = %s.frontends,
                    nat_outgoing = delta.nat_outgoing_changed,
                    host_endpoints = delta.host_endpoints_changed.len() + delta.host_endpoints_removed.len(),
                    failsafe = delta.failsafe_changed,
                    %written,
                    "policy updated"
                );
            }
            Calculated::Full { .. } => {
                let s = describe(
                    &DesiredState::default(),
                    desired,
                    &diff(&DesiredState::default(), desired),
                );
                tracing::info!(
                    dataplane = %kind,
                    totals = %s.totals,
                    %written,
                    "dataplane programmed from the full desired state (reconciled with what the kernel held)"
                );
            }
        }
    }

    async fn resync(&mut self) {
        let Some(kind) = self.selected else { return };
        let result = self
            .driver
            .call(|slot| match slot.as_mut() {
                Some(dp) => dp.resync().map(|w| (w, dp.stats())),
                None => Err(DataplaneError::ThreadGone),
            })
            .await
            .and_then(|r| r);
        match result {
            Ok((w, stats)) => {
                if !w.is_empty() {
                    tracing::info!(dataplane = %kind, written = %w, "resync repaired dataplane drift");
                }
                tracing::debug!(dataplane = %kind, ?stats, "dataplane resync");
            }
            Err(e) => {
                tracing::warn!(dataplane = %kind, error = %e, "dataplane resync failed; applying again");
                self.pending = true;
            }
        }
    }

    /// At shutdown: remove everything with `cleanup_on_exit`, otherwise leave it in place.
    async fn shutdown(&mut self) {
        if !self.config.cleanup_on_exit {
            tracing::info!(dataplane = ?self.selected.map(|k| k.as_str()), "agent stopping; dataplane rules left in place (connections keep flowing; the next agent reconciles)");
            return;
        }
        let active = self.selected.filter(|_| self.has_driver);
        let result = self
            .driver
            .call(move |slot| {
                let mut total = Written::default();
                let mut errors = Vec::new();
                if let Some(mut dp) = slot.take() {
                    match dp.cleanup() {
                        Ok(w) => total = w,
                        Err(e) => errors.push(e),
                    }
                }
                // Also whatever another dataplane of an earlier run left.
                for kind in DataplaneKind::ALL {
                    if Some(kind) == active && errors.is_empty() {
                        continue;
                    }
                    if let Ok(mut d) = dataplane::open(kind) {
                        match d.cleanup() {
                            Ok(w) => {
                                total.rule_groups_deleted += w.rule_groups_deleted;
                                total.sets_changed += w.sets_changed;
                                total.hooks_changed += w.hooks_changed;
                            }
                            Err(e) => errors.push(e),
                        }
                    }
                }
                (total, errors)
            })
            .await;
        match result {
            Ok((w, errors)) if errors.is_empty() => {
                tracing::info!(written = %w, "agent stopping: removed every dataplane rule and set (--cleanup-on-exit)")
            }
            Ok((_, errors)) => {
                for e in errors {
                    tracing::error!(error = %e, "cleanup on exit failed; some dataplane state remains");
                }
            }
            Err(e) => tracing::error!(error = %e, "cleanup on exit failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use serval_calc::desired_state;
    use serval_model::{Kind, Resource, ResourceKey, parse_documents};

    use super::*;

    fn resources(yaml: &str) -> Vec<Resource> {
        parse_documents("test", yaml).unwrap()
    }

    #[test]
    fn changes_update_the_model_incrementally() {
        let mut model = Model::default();
        let mut synced = false;
        let all = resources(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: y}\n",
        );
        // The first list counts as a change even when empty of anything calc reads.
        assert!(absorb(
            &mut model,
            &mut synced,
            ResourceChange::Replaced(Vec::new())
        ));
        assert!(synced);
        assert!(absorb(
            &mut model,
            &mut synced,
            ResourceChange::Replaced(all.clone())
        ));
        assert!(!absorb(
            &mut model,
            &mut synced,
            ResourceChange::Replaced(all.clone())
        ));
        assert!(!absorb(
            &mut model,
            &mut synced,
            ResourceChange::Applied(Box::new(all[0].clone()))
        ));
        let key = ResourceKey::new(Kind::Namespace, None, "x");
        assert!(absorb(
            &mut model,
            &mut synced,
            ResourceChange::Deleted(key.clone())
        ));
        assert!(!absorb(
            &mut model,
            &mut synced,
            ResourceChange::Deleted(key)
        ));
        assert_eq!(model.namespaces.keys().collect::<Vec<_>>(), ["y"]);
    }

    #[test]
    fn blocks_are_absorbed_and_survive_a_relist_of_resources() {
        let mut model = Model::default();
        let mut synced = false;
        let blocks: std::collections::BTreeMap<ipnet::IpNet, String> =
            [("10.0.0.0/26".parse().unwrap(), "n2".to_string())].into();
        // Blocks may come before the first list of resources.
        assert!(absorb(
            &mut model,
            &mut synced,
            ResourceChange::Blocks(blocks.clone())
        ));
        assert!(!absorb(
            &mut model,
            &mut synced,
            ResourceChange::Blocks(blocks.clone())
        ));
        assert!(absorb(
            &mut model,
            &mut synced,
            ResourceChange::Replaced(Vec::new())
        ));
        assert!(!absorb(
            &mut model,
            &mut synced,
            ResourceChange::Replaced(Vec::new())
        ));
        assert_eq!(model.ipam_blocks, blocks);
        assert!(absorb(
            &mut model,
            &mut synced,
            ResourceChange::Blocks(Default::default())
        ));
        assert!(model.ipam_blocks.is_empty());
    }

    #[test]
    fn bpf_enabled_is_read_from_the_node_overlay() {
        let base = "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {name: default}\nspec: {bpfEnabled: false}\n";
        let node = "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {name: node.n1}\nspec: {bpfEnabled: true}\n";
        let model = Model::from_resources(resources(&format!("{base}---\n{node}")));
        assert_eq!(
            DataplaneKind::from_bpf_enabled(model.felix(Some("n1")).bpf_enabled),
            DataplaneKind::Bpf
        );
        assert_eq!(
            DataplaneKind::from_bpf_enabled(model.felix(Some("n2")).bpf_enabled),
            DataplaneKind::Iptables
        );
    }

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {nodeName: n1, containers: [{name: c, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {nodeName: n1, containers: [{name: c, ports: [{containerPort: 80}]}]}
"#;

    fn model_with_weps(extra: &str) -> Model {
        let mut rs = resources(&format!("{CLUSTER}{extra}"));
        let weps: Vec<Resource> = rs
            .iter()
            .filter_map(|r| match r {
                Resource::Pod(p) => {
                    let ip = if p.metadata.name == "a" {
                        "10.244.0.1/32"
                    } else {
                        "10.244.0.2/32"
                    };
                    let mut w = serval_model::workloadendpoint::WorkloadEndpoint::for_pod(
                        p,
                        "n1",
                        "cid",
                        &format!("sv{}", p.metadata.name),
                        vec![ip.parse().unwrap()],
                    );
                    w.spec.ready = true;
                    Some(Resource::WorkloadEndpoint(w))
                }
                _ => None,
            })
            .collect();
        rs.extend(weps);
        Model::from_resources(rs)
    }

    #[test]
    fn describe_names_the_endpoints_and_counts_sets() {
        let old = desired_state(&model_with_weps(""), Some("n1"));
        let policy = r#"
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-a, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}]}]
"#;
        let new = desired_state(&model_with_weps(policy), Some("n1"));
        let delta = diff(&old, &new);
        let s = describe(&old, &new, &delta);
        assert_eq!(s.endpoints, "x/b");
        assert!(s.sets.starts_with("+1/"), "{s:?}");
        assert_eq!(s.frontends, "+0/~0/-0");
        let back = diff(&new, &old);
        let s = describe(&new, &old, &back);
        assert!(s.sets.ends_with("/-1"), "{s:?}");
    }

    fn svc(name: &str, ip: &str, app: &str) -> Resource {
        resources(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: x}}\nspec:\n  \
             clusterIP: {ip}\n  selector: {{app: {app}}}\n  ports: [{{port: 80}}]\n"
        ))
        .remove(0)
    }

    fn slice(name: &str, service: &str, addr: &str) -> Resource {
        resources(&format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: x, \
             labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\n\
             ports: [{{port: 8080}}]\nendpoints:\n- addresses: [{addr}]\n"
        ))
        .remove(0)
    }

    /// Batches of changes through the pipeline's calculation: services and slices take the
    /// incremental path, anything else the full one, and after every batch the state equals
    /// a full calculation from the model.
    #[test]
    fn batched_calculation_matches_a_full_calculation_after_every_batch() {
        let svc_key = |n: &str| ResourceKey::new(Kind::Service, Some("x"), n);
        let base = model_with_weps("");
        let mut all: Vec<Resource> = Vec::new();
        all.extend(base.namespaces.values().cloned().map(Resource::Namespace));
        all.extend(base.pods.values().cloned().map(Resource::Pod));
        all.extend(
            base.workload_endpoints
                .values()
                .cloned()
                .map(Resource::WorkloadEndpoint),
        );
        let manual = resources(
            "apiVersion: v1\nkind: Service\nmetadata: {name: manual, namespace: x}\nspec:\n  \
             clusterIP: 10.96.0.80\n  ports: [{port: 80}]\n",
        )
        .remove(0);
        let policy = resources(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n\
             spec: {podSelector: {matchLabels: {app: b}}, ingress: [{}]}\n",
        )
        .remove(0);
        let applied = |r: Resource| ResourceChange::Applied(Box::new(r));
        let mut relabelled_a = base.pods[&("x".to_string(), "a".to_string())].clone();
        relabelled_a
            .metadata
            .labels
            .insert("app".to_string(), "b".to_string());
        let relabelled_a = Resource::Pod(relabelled_a);
        let batches: Vec<(Vec<ResourceChange>, &str)> = vec![
            (vec![ResourceChange::Replaced(all)], "full"),
            (
                vec![
                    applied(svc("a", "10.96.0.1", "a")),
                    applied(svc("b", "10.96.0.2", "b")),
                    applied(manual),
                ],
                "services",
            ),
            (
                vec![applied(slice("m1", "manual", "10.244.0.2"))],
                "services",
            ),
            // b takes a's address: contested, a keeps it (first by name).
            (vec![applied(svc("b", "10.96.0.1", "b"))], "services"),
            // a goes: b gets the address.
            (vec![ResourceChange::Deleted(svc_key("a"))], "services"),
            (
                vec![ResourceChange::Deleted(ResourceKey::new(
                    Kind::EndpointSlice,
                    Some("x"),
                    "m1",
                ))],
                "services",
            ),
            // A policy and a service in one batch: everything but the services part again,
            // and service c.
            (
                vec![applied(policy), applied(svc("c", "10.96.0.3", "a"))],
                "policy",
            ),
            (vec![ResourceChange::Deleted(svc_key("c"))], "services"),
            // A pod (a backend of services) relabelled with a service: the whole state.
            (
                vec![applied(relabelled_a), applied(svc("d", "10.96.0.4", "b"))],
                "full",
            ),
        ];
        let mut model = Model::default();
        let mut synced = false;
        let mut calc = Calculation::default();
        for (i, (changes, path)) in batches.into_iter().enumerate() {
            let mut batch = Batch::default();
            for c in changes {
                absorb_into(&mut model, &mut synced, &mut batch, c);
            }
            let (changed, calculated) = calc.calculate(&model, Some("n1"), batch);
            assert!(changed, "batch {i} changes the state");
            assert_eq!(calculated.path(), path, "batch {i}");
            let want = desired_state(&model, Some("n1"));
            assert_eq!(calc.current.as_deref(), Some(&want), "batch {i}");
        }
        let fe = &calc.current.as_ref().unwrap().services.frontends;
        assert_eq!(fe.len(), 3, "{fe:?}");
        // An empty batch changes nothing.
        let (changed, _) = calc.calculate(&model, Some("n1"), Batch::default());
        assert!(!changed);
    }
}
