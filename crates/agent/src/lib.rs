//! `serval-agent`: the per-node daemon. Data flows one way:
//!
//! ```text
//! datastore ──syncer──▶ cache ──routes::compute──▶ desired routing ──routing::Programmer──▶ kernel
//!                         ├────calc: serval_calc::Model ──desired_state──▶ Dataplane (iptables | bpf)
//!                         └────runtime (lab only)──▶ pod netns + CNI ADD/DEL + pod servers
//! ```
//!
//! - [`syncer`]: lists then watches every resource ([`serval_api::Client`]) and every IPAM
//!   block affinity ([`serval_ipam::AFFINITY_PREFIX`]) into the [`cache`]; resyncs after
//!   compaction, reconnects with backoff.
//! - [`cache`]: the current resources and affinities; wakes the calculators on change.
//! - [`routes`]: pure desired routing state (routes, blackholes, VXLAN devices, neighbour and
//!   FDB entries, pod MTU) for this node.
//! - [`routing`]: diffs desired against the kernel (only what Serval owns) and applies it
//!   through `serval-sys`, logging every change; runs on change and every
//!   [`AgentConfig::resync_interval`], which repairs drift.
//! - [`calc`]: keeps a [`serval_calc::Model`] updated from the cache's change stream,
//!   recomputes this node's [`serval_calc::DesiredState`] (policy, ip sets, services, NAT
//!   outgoing) per batch of changes and hands it to the active [`dataplane::Dataplane`]
//!   driver (the one FelixConfiguration `bpfEnabled` selects), logging the delta; resyncs
//!   every [`AgentConfig::resync_interval`]; switches dataplanes when `bpfEnabled` flips.
//! - [`dataplane`]: the driver trait, the iptables driver, dataplane selection.
//! - [`runtime`]: in a lab only, the kubelet + container runtime for this node's Pods.
//! - [`podserver`]: `serval pod-server`, the server inside each lab pod.
//!
//! # Entry points (wired into the `serval` CLI)
//!
//! - `serval agent --node NAME --datastore URL [--lab-dir DIR --netns-prefix sv-L]
//!   [--routing static|bgp] [--bgp-fast-timers] [--log-level info]` ([`AgentConfig::routing`]:
//!   with `bgp` the agent runs and configures this node's BIRD, see [`bgp`])
//!   → [`run`]`(AgentConfig)` (async; or [`run_blocking`] from a plain
//!   `main`). Runs in the network namespace it is started in (the node's); returns only on a
//!   fatal error. Logging is the caller's (a `tracing` subscriber writing to stderr).
//! - `serval pod-server --name NS/POD [--tcp P1,P2] [--udp P1,P2] [--ready-file PATH]`
//!   (hidden) → [`podserver::run`]`(PodServerConfig)`, blocking, never returns `Ok`. The
//!   agent's runtime starts it with exactly these flags (see [`runtime`]).
//!
//! # Files (with a lab dir `L` = `/var/lib/serval/labs/NAME`)
//!
//! - `L/nodes/<node>/agent.ready`: written (JSON: node, pid, time, `dataplane`,
//!   `dataplane_state` and, when the selected dataplane cannot run, `dataplane_error`) once
//!   routing is programmed from the first full sync AND the dataplane has applied the
//!   desired state once (or is known to be unavailable in this build: the node then runs
//!   without policy); rewritten when the dataplane changes; removed at start. Without a lab dir, only [`AgentConfig::ready_file`].
//! - `L/nodes/<node>/cni/net.d/*.conflist` (first by name) and `L/nodes/<node>/cni/bin/`:
//!   the CNI configuration the runtime executes (through `serval_cni::Runtime`, ADD results
//!   cached in `L/nodes/<node>/cni/cache/`).
//! - `L/nodes/<node>/pods/<ns>_<pod>.{json,pid,log,ready}`: per pod: runtime state (container
//!   id, netns, pid, CNI result), the pod server's pid, its output, its ready marker.
//!
//! # Shutdown
//!
//! [`run`] returns `Ok(())` on SIGTERM or SIGINT ([`run_until`] takes any future instead).
//! With [`AgentConfig::cleanup_on_exit`] it first removes every rule and set the dataplanes
//! created; by default they stay, so pods keep their policy and services while the agent
//! restarts, and the next agent reconciles with them instead of flushing.
//!
//! # Kernel objects it owns (in the node's namespace)
//!
//! The iptables dataplane's `SERVAL-…` chains (and one jump rule per hooked built-in chain)
//! and `serval-…` ipsets, IPv4 and IPv6 (see `serval_dp_iptables`).
//!
//! Routes with protocol [`serval_sys::RTPROT_SERVAL`] that are blackholes or leave by the
//! underlay link or a Serval VXLAN device (never the CNI's per-pod routes on host veths, never
//! another protocol's); the devices `vxlan.serval` / `vxlan-v6.serval` with their permanent
//! neighbour and FDB entries. Pod MTU: the CNI computes it from the pools (underlay − 50 for
//! VXLAN over IPv4, − 70 over IPv6); [`routes::Desired::pod_mtu`] applies the same rule and
//! the agent logs it.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

pub mod bgp;
pub mod cache;
pub mod calc;
pub mod dataplane;
pub mod memory;
pub mod metrics;
pub mod podserver;
pub mod routes;
pub mod routing;
pub mod runtime;
pub mod syncer;

mod daemon;

pub use bgp::{BgpOptions, RoutingMode};
pub use daemon::{run, run_blocking, run_until};
pub use podserver::PodServerConfig;

/// How often the programmers resync with the kernel even when nothing changed.
pub const DEFAULT_RESYNC_INTERVAL: Duration = Duration::from_secs(30);

/// How long bursts of datastore changes are coalesced before recomputing.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);

/// Configuration of `serval agent` (no clap here; the CLI fills it).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This node's name (its Node resource's name).
    pub node: String,
    /// Datastore URL (`sqlite:///path`, `etcd://host:port`).
    pub datastore: String,
    /// The lab's directory (`/var/lib/serval/labs/NAME`). Enables the pod runtime.
    pub lab_dir: Option<PathBuf>,
    /// Prefix of pod netns names (`sv-NAME`): pod `ns/pod` lives in `<prefix>-<ns>-<pod>`.
    /// Required with `lab_dir`.
    pub netns_prefix: Option<String>,
    /// Periodic resync of routes, pods and the dataplane with the kernel (drift repair).
    pub resync_interval: Duration,
    /// Batching of datastore changes before the routing and policy calculations run.
    pub debounce: Duration,
    /// On shutdown (SIGTERM/SIGINT, or [`run_until`]'s future), remove every rule and set
    /// the dataplanes created. Default `false`: leave them, so a restart keeps connections
    /// flowing (the next agent reconciles).
    pub cleanup_on_exit: bool,
    /// Where to write the health file; default `<lab_dir>/nodes/<node>/agent.ready`.
    pub ready_file: Option<PathBuf>,
    /// The pod server command: program and leading arguments, to which the runtime appends
    /// `--name NS/POD --tcp … --udp … --ready-file …`. Default: this executable +
    /// `pod-server`.
    pub pod_server_command: Option<Vec<OsString>>,
    /// Who installs routes to other nodes' blocks: the agent ([`RoutingMode::Static`],
    /// default) or BIRD ([`RoutingMode::Bgp`], `--routing bgp`; see [`bgp`]).
    pub routing: RoutingMode,
    /// BIRD's directory and timers in BGP mode.
    pub bgp: BgpOptions,
    /// The node's cgroup v2 directory (`--cgroup`): the eBPF dataplane attaches its
    /// connect-time load balancer there, and the lab's pod runtime starts pod servers in it.
    /// None: no connect-time load balancing (the tc programs NAT every service packet).
    pub cgroup: Option<PathBuf>,
    /// Serve Prometheus `/metrics` on this address (`--metrics-addr`; see [`metrics`]).
    /// None: no metrics endpoint.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl AgentConfig {
    /// An agent for `node` on the datastore at `datastore`, without a lab.
    pub fn new(node: impl Into<String>, datastore: impl Into<String>) -> AgentConfig {
        AgentConfig {
            node: node.into(),
            datastore: datastore.into(),
            lab_dir: None,
            netns_prefix: None,
            resync_interval: DEFAULT_RESYNC_INTERVAL,
            debounce: DEFAULT_DEBOUNCE,
            cleanup_on_exit: false,
            ready_file: None,
            pod_server_command: None,
            routing: RoutingMode::Static,
            bgp: BgpOptions::default(),
            cgroup: None,
            metrics_addr: None,
        }
    }

    /// The health file: [`AgentConfig::ready_file`], or `<lab_dir>/nodes/<node>/agent.ready`.
    pub fn ready_path(&self) -> Option<PathBuf> {
        self.ready_file.clone().or_else(|| {
            self.lab_dir
                .as_ref()
                .map(|d| d.join("nodes").join(&self.node).join("agent.ready"))
        })
    }
}

/// Fatal agent errors (everything else is logged and retried).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("opening datastore {url}: {source}")]
    Datastore {
        url: String,
        #[source]
        source: Box<serval_api::ApiError>,
    },
    #[error(
        "agent for node {node}: opening netlink in this network namespace: {source}; is the agent running as root?"
    )]
    Netlink {
        node: String,
        #[source]
        source: serval_sys::Error,
    },
    #[error("agent config: --lab-dir needs --netns-prefix (e.g. sv-LAB) to name pod namespaces")]
    MissingNetnsPrefix,
    #[error("agent config: node name {node:?} is empty or not a valid node name")]
    BadNode { node: String },
    #[error("starting the agent's async runtime: {source}")]
    Runtime {
        #[source]
        source: std::io::Error,
    },
    #[error("installing the agent's SIGTERM/SIGINT handler: {source}")]
    Signals {
        #[source]
        source: std::io::Error,
    },
    #[error("the agent's {task} task stopped unexpectedly: {reason}")]
    TaskEnded { task: &'static str, reason: String },
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
}
