//! Everything one run measured, as written to `results.json` (every raw sample included) and
//! read back by the report and the plots.

use serde::{Deserialize, Serialize};

use crate::stats::Summary;

/// The machine the run was taken on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub kernel: String,
    pub hostname: String,
    pub iptables_version: String,
    pub nft_version: String,
    /// The cargo profile `serval` was built with (`debug` or `release`).
    #[serde(default)]
    pub build: String,
    /// /proc/loadavg's 1, 5 and 15 minute averages when the run started and ended: the
    /// machine may be shared with other work.
    #[serde(default)]
    pub load_start: String,
    #[serde(default)]
    pub load_end: String,
}

/// What was asked for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig {
    pub sizes: Vec<usize>,
    pub samples: usize,
    pub warmup: usize,
    pub sections: Vec<String>,
    pub dataplanes: Vec<String>,
    pub quick: bool,
    /// `legacy` or `nft`: the iptables binaries of the kube-proxy iptables baseline.
    #[serde(default)]
    pub iptables_backend: String,
}

/// New-connection latency of one column at one N.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencyPoint {
    pub dataplane: String,
    /// Services programmed (for `direct`: none; N is the row it is compared in).
    pub n: usize,
    /// Address the client connected to.
    pub target: String,
    pub summary: Option<Summary>,
    pub failures: usize,
    pub last_error: Option<String>,
    /// The run stopped after too many failed exchanges (fewer samples than asked for).
    #[serde(default)]
    pub stopped_early: bool,
    /// Every sample, microseconds, in the order taken.
    pub samples_us: Vec<f64>,
}

/// Programming time of one column at one N.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgrammingPoint {
    pub dataplane: String,
    pub n: usize,
    /// The programming command alone (iptables-restore, nft -f, serval apply).
    pub load_ms: f64,
    /// From the start of programming until the last service answered.
    pub answer_ms: f64,
    /// One service added at N: the command alone, and until it answered.
    pub add_one_load_ms: Option<f64>,
    pub add_one_answer_ms: Option<f64>,
    /// Removing everything again (not part of the comparison; for information). For the
    /// Serval columns: until the last service stopped answering.
    pub cleanup_ms: Option<f64>,
    /// Size of the programming input (bytes of rules text or YAML).
    pub input_bytes: usize,
}

/// Single-stream TCP throughput (iperf3).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ThroughputPoint {
    pub dataplane: String,
    /// `same-node` or `cross-node`.
    pub path: String,
    pub seconds: f64,
    pub bits_per_second: f64,
    pub retransmits: Option<u64>,
}

/// 1-byte request/response rate on one connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RatePoint {
    pub dataplane: String,
    pub path: String,
    pub seconds: f64,
    pub requests: u64,
    pub per_second: f64,
}

/// Agent and BPF map memory of one lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryPoint {
    pub dataplane: String,
    /// What the lab held when measured.
    pub state: String,
    pub agent_rss_kib: Option<u64>,
    /// Sum of `memlock` over the BPF maps the agent holds (from /proc/PID/fdinfo).
    pub bpf_map_bytes: Option<u64>,
    pub bpf_maps: usize,
    pub note: Option<String>,
}

/// Allowed-connection latency with N policies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyPoint {
    pub dataplane: String,
    pub n: usize,
    pub summary: Option<Summary>,
    /// One more policy (the one allowing the client) added when N−1 are in force: until the
    /// client answers again when `one_more_in_force`, else `serval apply` alone (N = 1: no
    /// effect to observe, the client is allowed with no policy too).
    pub apply_one_ms: Option<f64>,
    #[serde(default)]
    pub one_more_in_force: bool,
    /// The N−1 policies that do not allow the client: from `serval apply` until the client is
    /// blocked (N > 1).
    #[serde(default)]
    pub base_ms: Option<f64>,
    /// Exchanges of the latency run that failed, and the last error.
    #[serde(default)]
    pub failures: usize,
    #[serde(default)]
    pub last_error: Option<String>,
    pub samples_us: Vec<f64>,
}

/// A column that could not be measured, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Unavailable {
    pub section: String,
    pub dataplane: String,
    pub reason: String,
}

/// A (column, size) pair of the default size list that the default set does not run because
/// it takes minutes at that size (explicit `--sizes` run every pair asked for).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub dataplane: String,
    pub n: usize,
    pub reason: String,
}

/// A measurement that failed during the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    pub section: String,
    pub dataplane: String,
    pub n: Option<usize>,
    pub error: String,
}

/// One whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub machine: Machine,
    pub started_utc: String,
    pub finished_utc: String,
    pub duration_s: f64,
    pub config: RunConfig,
    pub latency: Vec<LatencyPoint>,
    pub programming: Vec<ProgrammingPoint>,
    pub policy: Vec<PolicyPoint>,
    pub throughput: Vec<ThroughputPoint>,
    pub request_rate: Vec<RatePoint>,
    pub memory: Vec<MemoryPoint>,
    pub unavailable: Vec<Unavailable>,
    pub failures: Vec<Failure>,
    /// Pairs of the default size list left out of the default set (listed in the report).
    #[serde(default)]
    pub skipped: Vec<Skipped>,
}

impl Results {
    pub fn latency_at(&self, dataplane: &str, n: usize) -> Option<&LatencyPoint> {
        self.latency
            .iter()
            .find(|p| p.dataplane == dataplane && p.n == n)
    }

    pub fn programming_at(&self, dataplane: &str, n: usize) -> Option<&ProgrammingPoint> {
        self.programming
            .iter()
            .find(|p| p.dataplane == dataplane && p.n == n)
    }

    pub fn unavailable_reason(&self, section: &str, dataplane: &str) -> Option<&str> {
        self.unavailable
            .iter()
            .find(|u| u.section == section && u.dataplane == dataplane)
            .map(|u| u.reason.as_str())
    }

    pub fn skipped_at(&self, dataplane: &str, n: usize) -> bool {
        self.skipped
            .iter()
            .any(|s| s.dataplane == dataplane && s.n == n)
    }

    pub fn failure_at(&self, section: &str, dataplane: &str, n: usize) -> Option<&str> {
        self.failures
            .iter()
            .find(|f| f.section == section && f.dataplane == dataplane && f.n == Some(n))
            .map(|f| f.error.as_str())
    }
}
