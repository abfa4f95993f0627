//! `serval`: the command line of the Serval container-networking dataplane.

mod cmd;
mod datastore;
mod input;
mod lab;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Serval: container networking with iptables and eBPF dataplanes.
#[derive(Debug, Parser)]
#[command(name = "serval", version, about, propagate_version = true)]
pub struct Cli {
    /// Datastore URL: sqlite:///path/to/file.db or etcd://host:port.
    /// Default: sqlite:///var/lib/serval/serval.db.
    #[arg(long, global = true, env = "SERVAL_DATASTORE", conflicts_with = "lab")]
    datastore: Option<String>,

    /// Use the datastore of the lab with this name.
    #[arg(long, global = true)]
    lab: Option<String>,

    /// Log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(long, global = true, default_value = "warn", env = "SERVAL_LOG_LEVEL")]
    log_level: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or update resources from files, a directory or stdin (-).
    Apply(cmd::apply::ApplyArgs),
    /// Create resources; fails if any already exists.
    Create(cmd::apply::ApplyArgs),
    /// List or show resources.
    Get(cmd::get::GetArgs),
    /// Delete resources named in files or on the command line.
    Delete(cmd::delete::DeleteArgs),
    /// IP address management: pool and block usage, leaked allocations.
    #[command(subcommand)]
    Ipam(cmd::ipam::IpamCommand),
    /// Node information: BGP sessions (`node status`).
    #[command(subcommand)]
    Node(cmd::node::NodeCommand),
    /// A cluster on this host: nodes as network namespaces with their own agents.
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// The per-node agent (run inside the node's network namespace).
    Agent(AgentArgs),
    /// Measure service latency, programming time, throughput and memory against kube-proxy
    /// baselines in one run (report.md, results.json, PNG plots).
    Bench(serval_bench::BenchArgs),
    /// The server inside each lab pod (started by the agent).
    #[command(hide = true)]
    PodServer(PodServerArgs),
}

#[derive(Debug, clap::Args)]
struct AgentArgs {
    /// This node's name (its Node resource).
    #[arg(long)]
    node: String,
    /// The lab directory (/var/lib/serval/labs/NAME): enables the pod runtime.
    #[arg(long, requires = "netns_prefix")]
    lab_dir: Option<std::path::PathBuf>,
    /// Prefix of pod network namespace names (sv-NAME).
    #[arg(long)]
    netns_prefix: Option<String>,
    /// Who installs routes to other nodes' blocks: static (the agent) or bgp (a BIRD the
    /// agent runs and configures from the datastore; files in <lab-dir>/nodes/NODE/bird/ or
    /// /var/lib/serval/bird/NODE/).
    #[arg(long, default_value = "static", value_name = "static|bgp")]
    routing: serval_agent::RoutingMode,
    /// Short BGP timers (hold 6 s, keepalive 2 s) instead of Calico's; for labs and tests.
    #[arg(long)]
    bgp_fast_timers: bool,
    /// On SIGTERM/SIGINT, remove every rule, set and program the dataplane created (by
    /// default they stay in force so a restarted agent keeps connections flowing).
    #[arg(long)]
    cleanup_on_exit: bool,
    /// The node's cgroup v2 directory: the eBPF dataplane attaches its connect-time load
    /// balancer there (FelixConfiguration bpfConnectTimeLoadBalancing) and the lab's pod
    /// servers run in it. Default: the cgroup v2 root (every process on the host, as Calico's
    /// root-cgroup attachment) without --lab-dir; none (no connect-time LB) with it.
    #[arg(long)]
    cgroup: Option<std::path::PathBuf>,
    /// Serve Prometheus metrics (dataplane counters, eBPF drops per reason as
    /// serval_bpf_drops_total{reason}) on http://ADDR/metrics, e.g. 0.0.0.0:9091. Default:
    /// as FelixConfiguration prometheusMetricsEnabled / prometheusMetricsPort say (off).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
}

#[derive(Debug, clap::Args)]
struct PodServerArgs {
    /// NS/POD: what the server answers.
    #[arg(long)]
    name: String,
    /// TCP ports, comma-separated.
    #[arg(long, value_delimiter = ',')]
    tcp: Vec<u16>,
    /// UDP ports, comma-separated.
    #[arg(long, value_delimiter = ',')]
    udp: Vec<u16>,
    /// Created once every port is bound.
    #[arg(long)]
    ready_file: Option<std::path::PathBuf>,
}

/// mimalloc instead of glibc malloc: the agent's burst work (decoding, calculating and writing
/// 50,000 Services) and `serval apply`'s are mostly small allocations, where glibc spent a
/// third of the agent's CPU (malloc, free, consolidation). See docs/bench.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_arena_eager_commit` and `mi_option_purge_delay` (`mi_option_e` of
/// mimalloc v3's mimalloc.h; libmimalloc-sys does not name them), with the environment
/// variables that set them (which win over [`configure_allocator`]).
const MI_OPTIONS: [(
    libmimalloc_sys::mi_option_t,
    &std::ffi::CStr,
    std::ffi::c_long,
); 2] = [
    (4, c"MIMALLOC_ARENA_EAGER_COMMIT", 0),
    (15, c"MIMALLOC_PURGE_DELAY", 0),
];

/// Memory the allocator no longer uses goes back to the kernel at once, and arenas are
/// committed as they are used: with mimalloc's defaults (purge 10 ms later, on a later
/// allocation; eager arenas) an agent that goes idle after a burst keeps its peak resident
/// (159 MiB instead of ~118 MiB at 50,000 Services + 10,000 policies). It runs from
/// `.preinit_array`, before any constructor or allocation: mimalloc reserves its first arena
/// at the first allocation (Rust's runtime allocates before `main`), and an arena reserved
/// before the option is set is committed eagerly (135 MiB when this ran in `main`).
extern "C" fn configure_allocator() {
    for (option, env, value) in MI_OPTIONS {
        // SAFETY: getenv reads the environment glibc set up before calling any initializer;
        // nothing modifies it this early (one thread, no constructor has run yet).
        if !unsafe { libc::getenv(env.as_ptr()) }.is_null() {
            continue;
        }
        // SAFETY: a plain setter of mimalloc's option table, called before any other thread
        // exists (it is not thread safe); both options exist in the vendored mimalloc v3
        // (`libmimalloc-sys` builds v3 unless its `v2` feature is on, and nothing here turns
        // it on).
        unsafe { libmimalloc_sys::mi_option_set(option, value) };
    }
}

/// [`configure_allocator`] at process start, before every `.init_array` constructor.
#[used]
#[unsafe(link_section = ".preinit_array")]
static CONFIGURE_ALLOCATOR: extern "C" fn() = configure_allocator;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log_level);
    // The pod server is plain threads: no async runtime in every pod.
    if let Command::PodServer(args) = cli.command {
        let config = serval_agent::PodServerConfig {
            name: args.name,
            tcp_ports: args.tcp,
            udp_ports: args.udp,
            ready_file: args.ready_file,
        };
        return match serval_agent::podserver::run(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let ds = datastore::Selection {
        url: cli.datastore.clone(),
        lab: cli.lab.clone(),
    };
    match cli.command {
        Command::Apply(args) => cmd::apply::run(&ds, args, serval_api::ApplyMode::Apply).await,
        Command::Create(args) => cmd::apply::run(&ds, args, serval_api::ApplyMode::Create).await,
        Command::Get(args) => cmd::get::run(&ds, args).await,
        Command::Delete(args) => cmd::delete::run(&ds, args).await,
        Command::Ipam(cmd) => cmd::ipam::run(&ds, cmd).await,
        Command::Node(cmd) => cmd::node::run(cli.lab.as_deref(), cmd).await,
        Command::Lab(cmd) => lab::run(cmd, cli.datastore.clone(), cli.lab.clone()).await,
        Command::Agent(args) => {
            let mut config = serval_agent::AgentConfig::new(args.node, ds.url()?);
            config.lab_dir = args.lab_dir;
            config.netns_prefix = args.netns_prefix;
            config.routing = args.routing;
            config.bgp.fast_timers = args.bgp_fast_timers;
            config.cleanup_on_exit = args.cleanup_on_exit;
            config.metrics_addr = args.metrics_addr;
            config.cgroup = match args.cgroup {
                Some(path) => Some(path),
                None if config.lab_dir.is_none() => serval_dp_bpf::cgroup::cgroup2_mount(),
                None => None,
            };
            serval_agent::run(config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => {
            let out = tokio::task::spawn_blocking(move || serval_bench::run(args)).await??;
            println!("{}", out.report.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::PodServer(_) => {
            anyhow::bail!("pod-server is handled before the async runtime starts")
        }
    }
}

fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
