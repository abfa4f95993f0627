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
    /// The `direct` baseline measured interleaved with this column (blocks in ABBA order):
    /// the base of this point's ratios. `None` for `direct` itself, and in results written
    /// before the paired method (their ratios are to the `direct` point at the same N).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paired: Option<PairedDirect>,
}

/// The `direct` exchanges interleaved with one column's (see `paired.rs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairedDirect {
    /// The backend pod's own address, in the bench's lab kept free of service rules.
    pub target: String,
    pub summary: Option<Summary>,
    pub failures: usize,
    pub last_error: Option<String>,
    pub stopped_early: bool,
    /// Every direct sample, microseconds, in the order taken.
    pub samples_us: Vec<f64>,
    /// Exchanges per block (per side).
    pub block_len: usize,
    /// The block pairs in the order taken; their sample counts slice `samples_us` of both
    /// sides.
    pub blocks: Vec<BlockPair>,
    /// The column's percentile over the direct one's (p50: the ratio of the paired medians).
    pub ratio_p50: Option<f64>,
    pub ratio_p90: Option<f64>,
    pub ratio_p99: Option<f64>,
}

impl PairedDirect {
    /// Summarises the direct side `run` of a paired measurement against the column's.
    pub fn new(
        target: String,
        run: crate::net::LatencyRun,
        block_len: usize,
        blocks: Vec<BlockPair>,
        column: &crate::net::LatencyRun,
    ) -> PairedDirect {
        let summary = Summary::of(&run.samples_us);
        let col = Summary::of(&column.samples_us);
        let r = |pick: fn(&Summary) -> f64| match (col, summary) {
            (Some(c), Some(d)) if pick(&d) > 0.0 => Some(pick(&c) / pick(&d)),
            _ => None,
        };
        PairedDirect {
            target,
            summary,
            failures: run.failures,
            last_error: run.last_error,
            stopped_early: run.stopped_early,
            samples_us: run.samples_us,
            block_len,
            blocks,
            ratio_p50: r(|s| s.p50),
            ratio_p90: r(|s| s.p90),
            ratio_p99: r(|s| s.p99),
        }
    }

    /// The ratios of the block pairs' medians (column over direct), in the order taken.
    pub fn block_ratios(&self) -> Vec<f64> {
        self.blocks
            .iter()
            .filter_map(|b| match (b.column_p50, b.direct_p50) {
                (Some(c), Some(d)) if d > 0.0 => Some(c / d),
                _ => None,
            })
            .collect()
    }
}

/// One block of the column's exchanges and the adjacent block of direct ones.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct BlockPair {
    /// The column's block came first (ABBA: every other pair).
    pub column_first: bool,
    /// Successful exchanges in each block.
    pub column_samples: usize,
    pub direct_samples: usize,
    /// Each block's median, µs.
    pub column_p50: Option<f64>,
    pub direct_p50: Option<f64>,
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
    /// Serval columns: the datastore-write part of `answer_ms` — from the start of `serval
    /// apply` until it reported its outcome (printed only once its datastore transaction has
    /// committed; the process exits later, at `load_ms`). `None` for the kube-proxy
    /// baselines and in results written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastore_write_ms: Option<f64>,
    /// Serval columns: the dataplane part of `answer_ms` — from `serval apply` reporting its
    /// committed write until the last service answered: the agent noticing the change,
    /// calculating and writing its dataplane. `answer_ms = datastore_write_ms +
    /// dataplane_ms`. `None` for the kube-proxy baselines, whose `load_ms` is the rule load
    /// itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane_ms: Option<f64>,
    /// The same two for the one service added at N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_one_datastore_write_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_one_dataplane_ms: Option<f64>,
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
    /// Every round's rate, in the order run (this point is the median round's; see
    /// [`crate::median_round`]). Empty for a single run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rounds: Vec<f64>,
}

/// 1-byte request/response rate on one connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RatePoint {
    pub dataplane: String,
    pub path: String,
    pub seconds: f64,
    pub requests: u64,
    pub per_second: f64,
    /// Every round's rate, in the order run (this point is the median round's). Empty for a
    /// single run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rounds: Vec<f64>,
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
