//! `serval bench`: the performance tables of the seed (service-routing latency against the
//! number of services, rule-update times, memory), measured on the user's own machine in one
//! run, side by side with kernel baselines measured in the same run.
//!
//! A run brings up its own small lab (`serval lab up`: two nodes, a client pod and a server
//! pod on node1, a second server on node2), then for each size N and each column:
//!
//! - `direct`: new-connection latency to the backend pod's own address (the floor);
//! - `kube-proxy-iptables` / `kube-proxy-nftables`: kube-proxy's rules for N services
//!   ([`kubeproxy`]) loaded into the client's node, timed until the last answers, latency to
//!   the last, one more service added, then removed;
//! - `serval-iptables`, `serval-bpf`, `serval-bpf-ctlb`: the same through Serval (Services
//!   applied to the lab), each first checked to really work; a column that cannot run is
//!   reported as "not available: <reason>", never estimated.
//!
//! It writes `report.md`, `results.json` (every raw sample) and PNG plots into `--out`.

pub mod error;
pub mod kubeproxy;
pub mod lab;
pub mod machine;
pub mod net;
pub mod paired;
pub mod plot;
pub mod progress;
pub mod report;
pub mod results;
pub mod stats;

pub mod baseline;
mod ctlb;
mod serval;
mod throughput;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::ValueEnum;

pub use error::{BenchError, Result};
use lab::{Lab, Pod};
use progress::Progress;
use results::{Failure, RatePoint, Results, RunConfig, Skipped, ThroughputPoint, Unavailable};

/// The default service counts.
pub const DEFAULT_SIZES: [usize; 7] = [1, 100, 1_000, 5_000, 10_000, 25_000, 50_000];
/// The sizes of [`DEFAULT_SIZES`] that the default set runs only for the columns that program
/// them in seconds ([`Dataplane::fast_at_large_sizes`]); the other pairs are listed in the
/// report as skipped.
pub const DEFAULT_LARGE_SIZES: [usize; 2] = [25_000, 50_000];
/// Why a (column, size) pair is not in the default set.
pub const SKIPPED_REASON: &str = "skipped in the default set (takes minutes at this size here; run with --sizes N --dataplanes COLUMN to measure)";
/// `--quick` service counts.
pub const QUICK_SIZES: [usize; 3] = [1, 100, 1_000];
/// The default policy counts.
pub const DEFAULT_POLICY_SIZES: [usize; 4] = [1, 100, 1_000, 10_000];
/// `--quick` policy counts.
pub const QUICK_POLICY_SIZES: [usize; 2] = [1, 100];

/// A part of the benchmark (`--only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Section {
    /// Service scale: new-connection latency to the last of N services.
    Latency,
    /// Time to program N services, and one more at N.
    Programming,
    /// Policy scale: allowed-connection latency with N policies (Serval columns only).
    Policy,
    /// iperf3 throughput and 1-byte request rate, pod to pod.
    Throughput,
    /// Agent resident memory and BPF map memory.
    Memory,
}

impl Section {
    pub fn name(self) -> &'static str {
        match self {
            Section::Latency => "latency",
            Section::Programming => "programming",
            Section::Policy => "policy",
            Section::Throughput => "throughput",
            Section::Memory => "memory",
        }
    }
}

/// A column (`--dataplanes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Dataplane {
    /// The backend pod's own address: no service rules (the floor).
    Direct,
    /// kube-proxy's iptables-mode rules, loaded with iptables-restore.
    KubeProxyIptables,
    /// kube-proxy's nftables-mode rules, loaded with nft -f.
    KubeProxyNftables,
    /// Serval's iptables dataplane (a `--dataplane iptables` lab).
    ServalIptables,
    /// Serval's eBPF dataplane (a `--dataplane bpf` lab).
    ServalBpf,
    /// Serval's eBPF dataplane with connect-time load balancing.
    ServalBpfCtlb,
}

impl Dataplane {
    pub fn name(self) -> &'static str {
        match self {
            Dataplane::Direct => "direct",
            Dataplane::KubeProxyIptables => "kube-proxy-iptables",
            Dataplane::KubeProxyNftables => "kube-proxy-nftables",
            Dataplane::ServalIptables => "serval-iptables",
            Dataplane::ServalBpf => "serval-bpf",
            Dataplane::ServalBpfCtlb => "serval-bpf-ctlb",
        }
    }

    /// Whether the default set runs this column at [`DEFAULT_LARGE_SIZES`]. Measured on a
    /// 2-core VM (docs/bench/latest and docs/bench/large): `direct` programs nothing;
    /// `iptables-legacy-restore` of 50,000 services took 8.4 s and serval-bpf 61 s (the
    /// ctlb column shares serval-bpf's lab and programming path). `nft -f` (21 s at 10,000),
    /// serval-iptables (15 s at 10,000) and `iptables-nft-restore` grow faster than linearly
    /// and would take many minutes at 50,000.
    pub fn fast_at_large_sizes(self, iptables_backend: baseline::IptablesBackend) -> bool {
        match self {
            Dataplane::Direct | Dataplane::ServalBpf | Dataplane::ServalBpfCtlb => true,
            Dataplane::KubeProxyIptables => iptables_backend == baseline::IptablesBackend::Legacy,
            Dataplane::KubeProxyNftables | Dataplane::ServalIptables => false,
        }
    }

    fn is_serval(self) -> bool {
        matches!(
            self,
            Dataplane::ServalIptables | Dataplane::ServalBpf | Dataplane::ServalBpfCtlb
        )
    }

    /// The `serval lab up --dataplane` of the lab this column runs in.
    fn lab_dataplane(self) -> &'static str {
        match self {
            Dataplane::ServalBpf | Dataplane::ServalBpfCtlb => "bpf",
            _ => "iptables",
        }
    }
}

/// `serval bench` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Small sizes and few samples (N = 1, 100, 1000; 300 samples; 1 s throughput runs):
    /// about two minutes.
    #[arg(long)]
    pub quick: bool,
    /// Service counts, comma-separated, run for every selected column [default:
    /// 1,100,1000,5000,10000 for every column, plus 25000,50000 for direct,
    /// kube-proxy-iptables (legacy backend), serval-bpf and serval-bpf-ctlb].
    #[arg(long, value_delimiter = ',')]
    pub sizes: Vec<usize>,
    /// Policy counts for the policy section, comma-separated [default: 1,100,1000,10000].
    #[arg(long, value_delimiter = ',')]
    pub policy_sizes: Vec<usize>,
    /// Run only these sections [default: all].
    #[arg(long, value_delimiter = ',', value_enum)]
    pub only: Vec<Section>,
    /// Columns to measure [default: all].
    #[arg(long, value_delimiter = ',', value_enum)]
    pub dataplanes: Vec<Dataplane>,
    /// Latency samples per point [default: 2000; 300 with --quick].
    #[arg(long)]
    pub samples: Option<usize>,
    /// Unrecorded exchanges before each latency run [default: 50; 10 with --quick].
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Seconds per throughput and request-rate run [default: 5; 1 with --quick].
    #[arg(long)]
    pub duration_secs: Option<u64>,
    /// iptables binaries for the kube-proxy iptables baseline: legacy (x_tables) or nft
    /// (nf_tables compatibility layer).
    #[arg(long, value_enum, default_value = "legacy")]
    pub iptables_backend: baseline::IptablesBackend,
    /// Directory for report.md, results.json and the plots.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// The `serval` binary that makes the labs [default: this program].
    #[arg(long, hide = true)]
    pub serval_bin: Option<PathBuf>,
}

/// What a run wrote.
#[derive(Debug, Clone)]
pub struct RunOutput {
    pub report: PathBuf,
    pub json: PathBuf,
    pub plots: Vec<PathBuf>,
}

/// The resolved plan of a run.
#[derive(Debug, Clone)]
struct Plan {
    sizes: Vec<usize>,
    policy_sizes: Vec<usize>,
    sections: Vec<Section>,
    dataplanes: Vec<Dataplane>,
    samples: usize,
    warmup: usize,
    duration: Duration,
    out: PathBuf,
    serval: PathBuf,
    quick: bool,
    iptables_backend: baseline::IptablesBackend,
    /// (column, size) pairs of the default size list not run (see [`SKIPPED_REASON`]).
    skipped: Vec<(Dataplane, usize)>,
}

impl Plan {
    fn from_args(args: BenchArgs) -> Result<Plan> {
        let quick = args.quick;
        let default_sizes = args.sizes.is_empty();
        let sizes = if default_sizes {
            if quick {
                QUICK_SIZES.to_vec()
            } else {
                DEFAULT_SIZES.to_vec()
            }
        } else {
            args.sizes
        };
        if sizes.contains(&0) {
            return Err(BenchError::Usage {
                arg: "--sizes",
                reason: "every size must be at least 1 (the target is the last service)".into(),
            });
        }
        let policy_sizes = if args.policy_sizes.is_empty() {
            if quick {
                QUICK_POLICY_SIZES.to_vec()
            } else {
                DEFAULT_POLICY_SIZES.to_vec()
            }
        } else {
            args.policy_sizes
        };
        if policy_sizes.contains(&0) {
            return Err(BenchError::Usage {
                arg: "--policy-sizes",
                reason: "every size must be at least 1 (the last policy allows the client)".into(),
            });
        }
        let mut sections = args.only;
        if sections.is_empty() {
            sections = Section::value_variants().to_vec();
        }
        sections.dedup();
        let mut dataplanes = args.dataplanes;
        if dataplanes.is_empty() {
            dataplanes = Dataplane::value_variants().to_vec();
        }
        dataplanes.dedup();
        // Only the default size list leaves pairs out; explicit --sizes run what was asked.
        let skipped = if default_sizes {
            sizes
                .iter()
                .filter(|n| DEFAULT_LARGE_SIZES.contains(n))
                .flat_map(|&n| {
                    dataplanes
                        .iter()
                        .filter(|d| !d.fast_at_large_sizes(args.iptables_backend))
                        .map(move |&d| (d, n))
                })
                .collect()
        } else {
            Vec::new()
        };
        let samples = args.samples.unwrap_or(if quick { 300 } else { 2000 });
        if samples == 0 {
            return Err(BenchError::Usage {
                arg: "--samples",
                reason: "at least one sample is needed".into(),
            });
        }
        let serval = match args.serval_bin {
            Some(p) => p,
            None => std::env::current_exe().map_err(|source| BenchError::Io {
                op: "locating",
                path: "the serval binary (/proc/self/exe)".into(),
                source,
            })?,
        };
        Ok(Plan {
            sizes,
            policy_sizes,
            sections,
            dataplanes,
            samples,
            warmup: args.warmup.unwrap_or(if quick { 10 } else { 50 }),
            duration: Duration::from_secs(args.duration_secs.unwrap_or(if quick { 1 } else { 5 })),
            out: args.out,
            serval,
            quick,
            iptables_backend: args.iptables_backend,
            skipped,
        })
    }

    fn has(&self, s: Section) -> bool {
        self.sections.contains(&s)
    }

    /// Whether the service-scale sections run `dp` at `n`.
    fn runs(&self, dp: Dataplane, n: usize) -> bool {
        self.sizes.contains(&n) && !self.skipped.contains(&(dp, n))
    }

    /// The largest N the service-scale sections run `dp` at (where memory is taken).
    fn largest_size(&self, dp: Dataplane) -> Option<usize> {
        self.sizes
            .iter()
            .copied()
            .filter(|&n| self.runs(dp, n))
            .max()
    }
}

/// The labs of a run, brought up when first needed and removed at the end.
struct Labs<'a> {
    plan: &'a Plan,
    work: PathBuf,
    iptables: Option<Lab>,
    bpf: Option<Lab>,
    /// An iptables lab that never gets a Service or policy: the `direct` column and the
    /// direct exchanges interleaved with every other column's ([`paired`]) run here, so the
    /// rules a column loads into its own lab (kube-proxy's `KUBE-SERVICES`, which every new
    /// connection through node1 walks) are never on the baseline's path.
    direct: Option<Lab>,
    progress: &'a Progress,
    /// Per Serval column: `Err(reason)` when its services do not work in its lab.
    service_check: Vec<(Dataplane, std::result::Result<(), String>)>,
    policy_check: Vec<(Dataplane, std::result::Result<(), String>)>,
}

impl Labs<'_> {
    /// The lab of `dataplane` if it is up (see [`Labs::get`]).
    fn peek(&self, dataplane: &str) -> Option<&Lab> {
        match dataplane {
            "bpf" => self.bpf.as_ref(),
            "direct" => self.direct.as_ref(),
            _ => self.iptables.as_ref(),
        }
    }

    /// The lab of `dataplane` (`bpf`, `iptables`, or `direct`: the iptables lab of the
    /// direct baseline).
    fn get(&mut self, dataplane: &str) -> Result<&Lab> {
        let (slot, purpose) = match dataplane {
            "bpf" => (&mut self.bpf, ""),
            "direct" => (
                &mut self.direct,
                ", kept free of service rules for the direct baseline",
            ),
            _ => (&mut self.iptables, ""),
        };
        let dataplane = if dataplane == "bpf" {
            "bpf"
        } else {
            "iptables"
        };
        if slot.is_none() {
            self.progress.line(&format!(
                "bringing up a lab (`serval lab up --dataplane {dataplane}`, 2 nodes, pods client/server on node1, server2 on node2{purpose})"
            ));
            let lab = Lab::up(&self.plan.serval, dataplane, &self.work)?;
            self.progress.line(&format!(
                "lab {} is up: client {} server {} server2 {}",
                lab.name, lab.client.ip, lab.server.ip, lab.server2.ip
            ));
            *slot = Some(lab);
        }
        slot.as_ref().ok_or(BenchError::Usage {
            arg: "--dataplanes",
            reason: "internal: lab slot empty".into(),
        })
    }

    /// Whether a Serval column's Services work; checked once per column.
    fn services(&mut self, dp: Dataplane) -> std::result::Result<(), String> {
        if let Some((_, r)) = self.service_check.iter().find(|(d, _)| *d == dp) {
            return r.clone();
        }
        let result = if dp == Dataplane::ServalBpfCtlb {
            match ctlb(self.services(Dataplane::ServalBpf)) {
                Ok(()) => match self.get("bpf") {
                    Ok(lab) => ctlb::check(lab),
                    Err(e) => Err(format!("its lab did not come up: {e}")),
                },
                Err(e) => Err(e),
            }
        } else {
            self.check(dp, serval::check_services)
        };
        self.service_check.push((dp, result.clone()));
        result
    }

    fn policy(&mut self, dp: Dataplane) -> std::result::Result<(), String> {
        if let Some((_, r)) = self.policy_check.iter().find(|(d, _)| *d == dp) {
            return r.clone();
        }
        let result = if dp == Dataplane::ServalBpfCtlb {
            ctlb(self.policy(Dataplane::ServalBpf))
        } else {
            self.check(dp, serval::check_policy)
        };
        self.policy_check.push((dp, result.clone()));
        result
    }

    fn check(
        &mut self,
        dp: Dataplane,
        check: fn(&Lab) -> std::result::Result<(), String>,
    ) -> std::result::Result<(), String> {
        let progress = self.progress;
        match self.get(dp.lab_dataplane()) {
            Ok(lab) => {
                progress.line(&format!(
                    "{}: checking that the dataplane works in lab {}",
                    dp.name(),
                    lab.name
                ));
                let r = check(lab);
                match &r {
                    Ok(()) => progress.line(&format!("{}: available", dp.name())),
                    Err(e) => progress.line(&format!("{}: not available: {e}", dp.name())),
                }
                r
            }
            Err(e) => Err(format!("its lab did not come up: {e}")),
        }
    }
}

/// The connect-time load-balancing column shares serval-bpf's lab (and its programs): it
/// works only where plain serval-bpf does ([`ctlb::check`] then checks the cgroup part).
fn ctlb(bpf: std::result::Result<(), String>) -> std::result::Result<(), String> {
    bpf.map_err(|e| format!("as serval-bpf: {e}"))
}

/// Runs the benchmark and writes the report, the JSON and the plots.
pub fn run(args: BenchArgs) -> Result<RunOutput> {
    if !nix::unistd::geteuid().is_root() {
        return Err(BenchError::NotRoot);
    }
    let plan = Plan::from_args(args)?;
    std::fs::create_dir_all(&plan.out).map_err(|source| BenchError::Io {
        op: "creating",
        path: plan.out.clone(),
        source,
    })?;
    let progress = Progress::new();
    let started = machine::now_utc();
    let mut r = Results {
        machine: machine::describe(),
        started_utc: started.clone(),
        finished_utc: String::new(),
        duration_s: 0.0,
        config: RunConfig {
            sizes: plan.sizes.clone(),
            samples: plan.samples,
            warmup: plan.warmup,
            sections: plan.sections.iter().map(|s| s.name().to_string()).collect(),
            dataplanes: plan
                .dataplanes
                .iter()
                .map(|d| d.name().to_string())
                .collect(),
            quick: plan.quick,
            iptables_backend: plan.iptables_backend.name().into(),
        },
        latency: vec![],
        programming: vec![],
        policy: vec![],
        throughput: vec![],
        request_rate: vec![],
        memory: vec![],
        unavailable: vec![],
        failures: vec![],
        skipped: vec![],
    };
    if plan.has(Section::Latency) || plan.has(Section::Programming) {
        r.skipped = plan
            .skipped
            .iter()
            .map(|&(d, n)| Skipped {
                dataplane: d.name().into(),
                n,
                reason: SKIPPED_REASON.into(),
            })
            .collect();
    }
    progress.line(&format!(
        "serval bench: sections {}; columns {}; sizes {:?}; {} samples per point; output in {}",
        r.config.sections.join(","),
        r.config.dataplanes.join(","),
        plan.sizes,
        plan.samples,
        plan.out.display()
    ));
    if !r.skipped.is_empty() {
        let pairs: Vec<String> = r
            .skipped
            .iter()
            .map(|s| format!("{} N={}", s.dataplane, s.n))
            .collect();
        progress.line(&format!("{SKIPPED_REASON}: {}", pairs.join(", ")));
    }
    let mut labs = Labs {
        plan: &plan,
        work: plan.out.join("work"),
        iptables: None,
        bpf: None,
        direct: None,
        progress: &progress,
        service_check: vec![],
        policy_check: vec![],
    };
    let outcome = run_sections(&plan, &mut labs, &mut r, &progress);
    // The labs go before the files are written: their removal is part of the run.
    drop(labs);
    if let Err(e) = &outcome {
        progress.line(&format!("the run stopped early: {e}"));
        r.failures.push(Failure {
            section: "run".into(),
            dataplane: "-".into(),
            n: None,
            error: e.to_string(),
        });
    }
    r.finished_utc = machine::now_utc();
    r.machine.load_end = machine::loadavg();
    r.duration_s = progress.elapsed_s();
    let out = write_outputs(&r, &plan.out)?;
    progress.line(&format!(
        "wrote {}, {} and {} plot(s)",
        out.report.display(),
        out.json.display(),
        out.plots.len()
    ));
    outcome.map(|()| out)
}

/// Writes results.json, the plots and report.md into `dir`.
pub fn write_outputs(r: &Results, dir: &Path) -> Result<RunOutput> {
    let json = dir.join("results.json");
    let text = serde_json::to_string_pretty(r).map_err(|source| BenchError::Json {
        path: json.clone(),
        source,
    })?;
    std::fs::write(&json, text).map_err(|source| BenchError::Io {
        op: "writing",
        path: json.clone(),
        source,
    })?;
    let mut plots = Vec::new();
    let mut shown = Vec::new();
    for (title, made) in [
        ("latency vs N", plot::latency(r, dir)?),
        ("programming time vs N", plot::programming(r, dir)?),
    ] {
        if let Some(p) = made {
            let file = p
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            shown.push((title.to_string(), file));
            plots.push(p);
        }
    }
    let report = dir.join("report.md");
    std::fs::write(&report, report::render(r, &shown)).map_err(|source| BenchError::Io {
        op: "writing",
        path: report.clone(),
        source,
    })?;
    Ok(RunOutput {
        report,
        json,
        plots,
    })
}

fn unavailable(r: &mut Results, section: Section, dp: Dataplane, reason: &str) {
    if r.unavailable
        .iter()
        .any(|u| u.section == section.name() && u.dataplane == dp.name())
    {
        return;
    }
    r.unavailable.push(Unavailable {
        section: section.name().into(),
        dataplane: dp.name().into(),
        reason: reason.to_string(),
    });
}

fn failed(
    r: &mut Results,
    section: Section,
    dp: Dataplane,
    n: Option<usize>,
    e: &BenchError,
    p: &Progress,
) {
    let at = n.map(|n| format!(" N={n}")).unwrap_or_default();
    p.line(&format!(
        "{} {}{at}: failed: {e}",
        section.name(),
        dp.name()
    ));
    r.failures.push(Failure {
        section: section.name().into(),
        dataplane: dp.name().into(),
        n,
        error: e.to_string(),
    });
}

fn run_sections(plan: &Plan, labs: &mut Labs<'_>, r: &mut Results, p: &Progress) -> Result<()> {
    if plan.has(Section::Latency) || plan.has(Section::Programming) {
        service_scale(plan, labs, r, p)?;
    }
    if plan.has(Section::Policy) {
        policy_scale(plan, labs, r, p)?;
    }
    if plan.has(Section::Throughput) {
        throughput_section(plan, labs, r, p)?;
    }
    if plan.has(Section::Memory) {
        memory_section(plan, labs, r, p)?;
    }
    Ok(())
}

fn service_scale(plan: &Plan, labs: &mut Labs<'_>, r: &mut Results, p: &Progress) -> Result<()> {
    let latency = plan.has(Section::Latency);
    let programming = plan.has(Section::Programming);
    let samples = if latency { plan.samples } else { 0 };
    let sections: Vec<Section> = [Section::Latency, Section::Programming]
        .into_iter()
        .filter(|s| plan.has(*s))
        .collect();
    // The echo servers live as long as this section. The direct lab's serves the `direct`
    // column and the direct exchanges interleaved with every other column's.
    // Only the latency section needs it (programming alone measures no direct column).
    let (direct_echo, direct_at) = if latency {
        let lab = labs.get("direct")?;
        let echo = net::EchoServer::start(
            &lab.server.netns,
            &lab.server.netns_name,
            std::net::SocketAddrV4::new(lab.server.ip, net::ECHO_PORT),
        )?;
        let at = paired::Endpoint::new(&lab.client, echo.addr)?;
        (Some(echo), Some(at))
    } else {
        (None, None)
    };
    let direct = direct_at.as_ref();
    let needs_iptables_lab = plan.dataplanes.iter().any(|d| {
        matches!(
            d,
            Dataplane::KubeProxyIptables | Dataplane::KubeProxyNftables | Dataplane::ServalIptables
        )
    });
    let echo = if needs_iptables_lab {
        let lab = labs.get("iptables")?;
        Some(net::EchoServer::start(
            &lab.server.netns,
            &lab.server.netns_name,
            std::net::SocketAddrV4::new(lab.server.ip, net::ECHO_PORT),
        )?)
    } else {
        None
    };
    let mut bpf_echo = None;
    for &n in &plan.sizes {
        for &dp in &plan.dataplanes {
            if !plan.runs(dp, n) {
                continue;
            }
            match dp {
                Dataplane::Direct => {
                    // Set exactly when the latency section runs.
                    let Some(direct_at) = direct else {
                        continue;
                    };
                    p.line(&format!(
                        "direct N={n}: {samples} exchanges with {} (alone)",
                        direct_at.addr
                    ));
                    match paired::measure_point(
                        dp.name(),
                        n,
                        direct_at,
                        None,
                        samples,
                        plan.warmup,
                        p,
                    ) {
                        Ok(point) => r.latency.push(point),
                        Err(e) => failed(r, Section::Latency, dp, Some(n), &e, p),
                    }
                }
                Dataplane::KubeProxyIptables | Dataplane::KubeProxyNftables => {
                    let mode = if dp == Dataplane::KubeProxyIptables {
                        baseline::Mode::Iptables(plan.iptables_backend)
                    } else {
                        baseline::Mode::Nftables
                    };
                    let work = labs.work.clone();
                    let lab = labs.get("iptables")?;
                    match baseline::measure(
                        lab,
                        mode,
                        n,
                        samples,
                        plan.warmup,
                        programming,
                        direct,
                        &work,
                        p,
                    ) {
                        Ok(m) => {
                            r.latency.extend(m.latency);
                            if programming {
                                r.programming.push(m.programming);
                            }
                        }
                        Err(e) => {
                            for &s in &sections {
                                failed(r, s, dp, Some(n), &e, p);
                            }
                        }
                    }
                }
                Dataplane::ServalIptables | Dataplane::ServalBpf | Dataplane::ServalBpfCtlb => {
                    if let Err(reason) = labs.services(dp) {
                        for &s in &sections {
                            unavailable(r, s, dp, &reason);
                        }
                        continue;
                    }
                    let lab = labs.get(dp.lab_dataplane())?;
                    if dp.lab_dataplane() == "bpf" && bpf_echo.is_none() {
                        bpf_echo = Some(net::EchoServer::start(
                            &lab.server.netns,
                            &lab.server.netns_name,
                            std::net::SocketAddrV4::new(lab.server.ip, net::ECHO_PORT),
                        )?);
                    }
                    // serval-bpf-ctlb: the client (this process) inside node1's cgroup.
                    let _in_cgroup = if dp == Dataplane::ServalBpfCtlb {
                        match ctlb::InCgroup::join(lab, &lab.client.node) {
                            Ok(g) => Some(g),
                            Err(reason) => {
                                for &s in &sections {
                                    unavailable(r, s, dp, &reason);
                                }
                                continue;
                            }
                        }
                    } else {
                        None
                    };
                    match serval::measure_services(
                        lab,
                        dp.name(),
                        n,
                        samples,
                        plan.warmup,
                        programming,
                        plan.has(Section::Memory) && Some(n) == plan.largest_size(dp),
                        direct,
                        p,
                    ) {
                        Ok((lat, prog, mem)) => {
                            r.latency.extend(lat);
                            if programming {
                                r.programming.push(prog);
                            }
                            r.memory.extend(mem);
                        }
                        Err(e) => {
                            for &s in &sections {
                                failed(r, s, dp, Some(n), &e, p);
                            }
                        }
                    }
                }
            }
        }
    }
    drop(bpf_echo);
    drop(echo);
    drop(direct_echo);
    Ok(())
}

fn policy_scale(plan: &Plan, labs: &mut Labs<'_>, r: &mut Results, p: &Progress) -> Result<()> {
    let columns: Vec<Dataplane> = plan
        .dataplanes
        .iter()
        .copied()
        .filter(|d| matches!(d, Dataplane::ServalIptables | Dataplane::ServalBpf))
        .collect();
    if columns.is_empty() {
        p.line("policy: no Serval iptables or eBPF column selected; the policy section compares those only");
    }
    for dp in columns {
        // The echo server must run before the enforcement check can see a blocked client.
        let lab = labs.get(dp.lab_dataplane())?;
        let echo = net::EchoServer::start(
            &lab.server.netns,
            &lab.server.netns_name,
            std::net::SocketAddrV4::new(lab.server.ip, net::ECHO_PORT),
        )?;
        if let Err(reason) = labs.policy(dp) {
            unavailable(r, Section::Policy, dp, &reason);
            drop(echo);
            continue;
        }
        let lab = labs.get(dp.lab_dataplane())?;
        for &n in &plan.policy_sizes {
            match serval::measure_policies(lab, dp.name(), n, plan.samples, plan.warmup, p) {
                Ok(point) => r.policy.push(point),
                Err(e) => failed(r, Section::Policy, dp, Some(n), &e, p),
            }
        }
        drop(echo);
    }
    Ok(())
}

/// Rounds of the throughput section: in each, every column runs once (same node, then across
/// nodes), the columns in an order rotated by one per round; each figure reported is the
/// median round's. A slow moment of a shared machine then falls on every column alike,
/// instead of on whichever column ran at that moment.
const THROUGHPUT_ROUNDS: usize = 3;

/// The lab a column's throughput runs in: `direct` in the lab kept free of service and policy
/// rules, the Serval columns in their own.
fn throughput_lab(dp: Dataplane) -> &'static str {
    match dp {
        Dataplane::Direct => "direct",
        other => other.lab_dataplane(),
    }
}

fn throughput_section(
    plan: &Plan,
    labs: &mut Labs<'_>,
    r: &mut Results,
    p: &Progress,
) -> Result<()> {
    // The columns that run, each in its lab, the Serval ones with their policy applied.
    let mut columns = Vec::new();
    for &dp in &plan.dataplanes {
        match dp {
            Dataplane::Direct => {}
            Dataplane::KubeProxyIptables | Dataplane::KubeProxyNftables => continue,
            Dataplane::ServalBpfCtlb => {
                unavailable(
                    r,
                    Section::Throughput,
                    dp,
                    "pod-to-pod throughput does not involve connect-time load balancing; see serval-bpf",
                );
                continue;
            }
            Dataplane::ServalIptables | Dataplane::ServalBpf => {
                if let Err(reason) = labs.services(dp) {
                    unavailable(r, Section::Throughput, dp, &reason);
                    continue;
                }
            }
        }
        let lab = labs.get(throughput_lab(dp))?;
        // The Serval columns: traffic through policy rules (one policy allowing the client).
        if dp.is_serval()
            && let Err(e) = lab.apply("throughput-policy", &serval::throughput_policy_yaml())
        {
            failed(r, Section::Throughput, dp, None, &e, p);
            continue;
        }
        columns.push(dp);
    }
    if columns.iter().any(|dp| dp.is_serval()) {
        // Time for the agents to program it (a policy at N=1 takes ~0.2 s in this lab).
        std::thread::sleep(Duration::from_secs(1));
    }
    let result = throughput_rounds(plan, labs, &columns, r, p);
    for &dp in &columns {
        if dp.is_serval()
            && let Some(lab) = labs.peek(throughput_lab(dp))
            && let Err(e) = lab.delete("throughput-policy")
        {
            failed(r, Section::Throughput, dp, None, &e, p);
        }
    }
    result
}

/// The two paths of the throughput section: the client to `server` (same node) and to
/// `server2` (across nodes).
const THROUGHPUT_PATHS: [&str; 2] = ["same-node", "cross-node"];

/// One column of the throughput rounds: its lab, its echo servers (one per path) and what
/// each round measured.
struct ThroughputColumn<'l> {
    dp: Dataplane,
    lab: &'l Lab,
    echo: [net::EchoServer; 2],
    throughput: [Vec<ThroughputPoint>; 2],
    rate: [Vec<RatePoint>; 2],
}

fn throughput_rounds(
    plan: &Plan,
    labs: &Labs<'_>,
    columns: &[Dataplane],
    r: &mut Results,
    p: &Progress,
) -> Result<()> {
    let secs = plan.duration.as_secs().max(1);
    let mut cols = Vec::new();
    for &dp in columns {
        let Some(lab) = labs.peek(throughput_lab(dp)) else {
            continue;
        };
        let echo = |pod: &Pod| {
            net::EchoServer::start(
                &pod.netns,
                &pod.netns_name,
                std::net::SocketAddrV4::new(pod.ip, net::ECHO_PORT),
            )
        };
        cols.push(ThroughputColumn {
            dp,
            lab,
            echo: [echo(&lab.server)?, echo(&lab.server2)?],
            throughput: Default::default(),
            rate: Default::default(),
        });
    }
    for round in 0..THROUGHPUT_ROUNDS {
        let count = cols.len();
        for i in 0..count {
            let c = &mut cols[(i + round) % count];
            let name = c.dp.name();
            for (k, path) in THROUGHPUT_PATHS.into_iter().enumerate() {
                let server = if k == 0 {
                    &c.lab.server
                } else {
                    &c.lab.server2
                };
                p.line(&format!(
                    "{name} {path} (round {} of {THROUGHPUT_ROUNDS}): iperf3 {secs} s to {}",
                    round + 1,
                    server.ip
                ));
                match throughput::iperf3(name, path, &c.lab.client, server, secs) {
                    Ok(t) => {
                        p.line(&format!(
                            "{name} {path}: {:.2} Gbit/s",
                            t.bits_per_second / 1e9
                        ));
                        c.throughput[k].push(t);
                    }
                    Err(e) => failed(r, Section::Throughput, c.dp, None, &e, p),
                }
                match net::request_rate(
                    &c.lab.client.netns,
                    &c.lab.client.netns_name,
                    c.echo[k].addr,
                    plan.duration,
                ) {
                    Ok((count, took)) => {
                        let per_second = count as f64 / took.as_secs_f64();
                        p.line(&format!(
                            "{name} {path}: {per_second:.0} requests/s on one connection"
                        ));
                        c.rate[k].push(RatePoint {
                            dataplane: name.into(),
                            path: path.into(),
                            seconds: took.as_secs_f64(),
                            requests: count,
                            per_second,
                            rounds: Vec::new(),
                        });
                    }
                    Err(e) => failed(r, Section::Throughput, c.dp, None, &e, p),
                }
            }
        }
    }
    // One figure per column and path, in the plan's order: the median round's.
    for c in cols {
        for k in 0..THROUGHPUT_PATHS.len() {
            let rounds: Vec<f64> = c.throughput[k].iter().map(|t| t.bits_per_second).collect();
            if let Some(i) = median_round(&rounds) {
                r.throughput.push(ThroughputPoint {
                    rounds,
                    ..c.throughput[k][i].clone()
                });
            }
            let rounds: Vec<f64> = c.rate[k].iter().map(|t| t.per_second).collect();
            if let Some(i) = median_round(&rounds) {
                r.request_rate.push(RatePoint {
                    rounds,
                    ..c.rate[k][i].clone()
                });
            }
        }
    }
    Ok(())
}

/// The index of the median of `values` (the lower one of the middle two for an even count,
/// as when a round failed); `None` when there is none.
pub(crate) fn median_round(values: &[f64]) -> Option<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    order.get(values.len().saturating_sub(1) / 2).copied()
}

fn memory_section(plan: &Plan, labs: &mut Labs<'_>, r: &mut Results, p: &Progress) -> Result<()> {
    for &dp in &plan.dataplanes {
        if !dp.is_serval() {
            continue;
        }
        if dp == Dataplane::ServalBpfCtlb {
            continue;
        }
        let state = match labs.services(dp) {
            Ok(()) => "after the runs: 3 pods, Services and policies removed".to_string(),
            Err(reason) => {
                unavailable(
                    r,
                    Section::Memory,
                    dp,
                    &format!(
                        "memory at 50,000 services and 10,000 policies needs working Services: {reason}; the idle agent is shown instead"
                    ),
                );
                "idle: 3 pods, no Services or policies".to_string()
            }
        };
        // Services and policies together: the largest N this column runs (50,000 for
        // serval-bpf in the default set) with the largest policy count.
        let policies = plan.policy_sizes.iter().copied().max().unwrap_or(0);
        if labs.services(dp).is_ok()
            && let Some(n) = plan.largest_size(dp)
        {
            let lab = labs.get(dp.lab_dataplane())?;
            // The client must get answers through the services (and be refused by the
            // policies) to see each step in force.
            let echo = net::EchoServer::start(
                &lab.server.netns,
                &lab.server.netns_name,
                std::net::SocketAddrV4::new(lab.server.ip, net::ECHO_PORT),
            )?;
            let measured = serval::measure_combined_memory(lab, dp.name(), n, policies, p);
            drop(echo);
            match measured {
                Ok(point) => {
                    p.line(&format!(
                        "{} memory with {n} Services + {policies} policies: agent RSS {}",
                        dp.name(),
                        point.agent_rss_kib.map_or("unknown".into(), |k| format!(
                            "{:.1} MiB",
                            k as f64 / 1024.0
                        ))
                    ));
                    r.memory.push(point);
                }
                Err(e) => failed(r, Section::Memory, dp, Some(n), &e, p),
            }
        }
        let lab = labs.get(dp.lab_dataplane())?;
        let point = throughput::agent_memory(
            &format!("{} lab ({})", dp.name(), lab.name),
            &state,
            lab.agent_pid("node1"),
            &lab.no_bpf_maps_reason(),
        );
        p.line(&format!(
            "{} memory: agent RSS {}",
            dp.name(),
            point.agent_rss_kib.map_or("unknown".into(), |k| format!(
                "{:.1} MiB",
                k as f64 / 1024.0
            ))
        ));
        r.memory.push(point);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_round_is_the_middle_one_or_the_lower_middle_one() {
        assert_eq!(median_round(&[]), None);
        assert_eq!(median_round(&[7.0]), Some(0));
        assert_eq!(median_round(&[3.0, 1.0, 2.0]), Some(2));
        assert_eq!(median_round(&[9.0, 1.0, 5.0]), Some(2));
        // Two rounds (one failed): the lower one.
        assert_eq!(median_round(&[4.0, 2.0]), Some(1));
        assert_eq!(median_round(&[1.0, 5.0, 3.0, 4.0]), Some(2));
    }

    fn args() -> BenchArgs {
        BenchArgs {
            quick: false,
            sizes: vec![],
            policy_sizes: vec![],
            only: vec![],
            dataplanes: vec![],
            samples: None,
            warmup: None,
            duration_secs: None,
            iptables_backend: baseline::IptablesBackend::Legacy,
            out: "bench-results".into(),
            serval_bin: Some("/nonexistent/serval".into()),
        }
    }

    fn ran(plan: &Plan) -> Vec<(Dataplane, usize)> {
        plan.sizes
            .iter()
            .flat_map(|&n| plan.dataplanes.iter().map(move |&d| (d, n)))
            .filter(|&(d, n)| plan.runs(d, n))
            .collect()
    }

    #[test]
    fn default_plan_runs_large_sizes_only_for_the_fast_columns() {
        let plan = Plan::from_args(args()).expect("plan");
        assert_eq!(plan.sizes, DEFAULT_SIZES);
        let all = Dataplane::value_variants();
        for &n in &[1, 100, 1_000, 5_000, 10_000] {
            for &d in all {
                assert!(plan.runs(d, n), "{} at {n}", d.name());
            }
        }
        let fast = [
            Dataplane::Direct,
            Dataplane::KubeProxyIptables,
            Dataplane::ServalBpf,
            Dataplane::ServalBpfCtlb,
        ];
        for n in DEFAULT_LARGE_SIZES {
            for &d in &fast {
                assert!(plan.runs(d, n), "{} at {n}", d.name());
            }
        }
        assert_eq!(
            plan.skipped,
            vec![
                (Dataplane::KubeProxyNftables, 25_000),
                (Dataplane::ServalIptables, 25_000),
                (Dataplane::KubeProxyNftables, 50_000),
                (Dataplane::ServalIptables, 50_000),
            ]
        );
        // Every pair of the default sizes is either run or listed as skipped.
        assert_eq!(
            ran(&plan).len() + plan.skipped.len(),
            DEFAULT_SIZES.len() * all.len()
        );
        for &(d, n) in &plan.skipped {
            assert!(!plan.runs(d, n));
        }
        // Memory is taken at the largest N each column runs.
        assert_eq!(plan.largest_size(Dataplane::ServalBpf), Some(50_000));
        assert_eq!(plan.largest_size(Dataplane::ServalIptables), Some(10_000));
    }

    #[test]
    fn default_plan_with_the_nft_backend_skips_kube_proxy_iptables_at_large_sizes() {
        let mut a = args();
        a.iptables_backend = baseline::IptablesBackend::Nft;
        a.dataplanes = vec![Dataplane::Direct, Dataplane::KubeProxyIptables];
        let plan = Plan::from_args(a).expect("plan");
        assert_eq!(
            plan.skipped,
            vec![
                (Dataplane::KubeProxyIptables, 25_000),
                (Dataplane::KubeProxyIptables, 50_000),
            ]
        );
        assert!(plan.runs(Dataplane::Direct, 50_000));
        assert!(plan.runs(Dataplane::KubeProxyIptables, 10_000));
    }

    #[test]
    fn explicit_sizes_run_every_pair_asked_for() {
        let mut a = args();
        a.sizes = vec![1, 25_000, 50_000];
        let plan = Plan::from_args(a).expect("plan");
        assert!(plan.skipped.is_empty());
        assert_eq!(
            ran(&plan).len(),
            3 * Dataplane::value_variants().len(),
            "every column at every size"
        );
        assert!(plan.runs(Dataplane::KubeProxyNftables, 50_000));
        assert!(plan.runs(Dataplane::ServalIptables, 25_000));
    }

    #[test]
    fn quick_plan_skips_nothing() {
        let mut a = args();
        a.quick = true;
        let plan = Plan::from_args(a).expect("plan");
        assert_eq!(plan.sizes, QUICK_SIZES);
        assert!(plan.skipped.is_empty());
        assert_eq!(ran(&plan).len(), 3 * Dataplane::value_variants().len());
    }
}
