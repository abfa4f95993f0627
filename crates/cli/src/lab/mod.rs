//! `serval lab`: a whole cluster on one host, the way kind or k3d make one for Kubernetes.
//!
//! A lab named L is an underlay bridge in the root netns, one netns per node (`sv-L-nodeK`,
//! `eth0` on the bridge, its own `serval agent`), an `outside` host, a datastore (sqlite file
//! or a real etcd), and its directory `/var/lib/serval/labs/L/`. The agents create the pods.

mod bgp;
mod cgroup;
mod down;
mod etcd;
mod exec;
mod layout;
mod net;
mod pods;
mod probe;
mod procs;
mod resources;
mod state;
mod status;
mod up;

use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};

pub use bgp::{bird_sockets, query_all};

/// A mistake in what the user asked for (unknown lab, bad pod name, …): exit status 2.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Create a lab: underlay, nodes with agents, outside host, datastore.
    Up(up::UpArgs),
    /// Remove everything a lab made (processes, namespaces, links, files). Idempotent.
    Down(down::DownArgs),
    /// List labs and their health.
    Status(status::StatusArgs),
    /// Connect from a pod (or `outside`) to a pod or IP; exit 0 reached, 1 not, 2 usage error.
    Probe(probe::ProbeArgs),
    /// Probe every pod from every pod and print the truth table.
    Matrix(probe::MatrixArgs),
    /// Run a command inside a pod's network namespace.
    Exec(exec::ExecArgs),
    /// Wait until every pod is ready and every node has routes to every pod (after an apply).
    Wait(WaitArgs),
}

#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// Lab name (default: the global --lab, else "serval").
    #[arg(long, default_value = "", hide_default_value = true)]
    pub name: String,
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
}

async fn wait(args: WaitArgs) -> anyhow::Result<ExitCode> {
    let layout = load_layout(&args.name)?;
    let st = state::LabState::load(&layout).map_err(|e| Usage(format!("{e:#}")))?;
    let client = serval_api::Client::open(&st.datastore_url).await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(args.timeout_secs);
    let n = pods::wait_ready(&client, deadline).await?;
    let node_ns = st
        .nodes
        .iter()
        .map(|n| serval_sys::NetNs::open(&n.host.netns).map_err(anyhow::Error::from))
        .collect::<anyhow::Result<Vec<_>>>()?;
    pods::wait_routes(&client, &node_ns, deadline).await?;
    pods::wait_programmed(&client, &layout, deadline).await?;
    println!("{n} pods ready, routed and programmed");
    Ok(ExitCode::SUCCESS)
}

/// Runs a lab command. `datastore` is the global `--datastore` flag, which for `lab up`
/// names the kind of datastore to create (`sqlite` or `etcd`).
pub async fn run(
    mut cmd: LabCommand,
    datastore: Option<String>,
    lab: Option<String>,
) -> anyhow::Result<ExitCode> {
    // `--name` defaults to the global `--lab`, else "serval".
    let name = match &mut cmd {
        LabCommand::Up(a) => Some(&mut a.name),
        LabCommand::Down(a) => Some(&mut a.name),
        LabCommand::Probe(a) => Some(&mut a.name),
        LabCommand::Matrix(a) => Some(&mut a.name),
        LabCommand::Exec(a) => Some(&mut a.name),
        LabCommand::Wait(a) => Some(&mut a.name),
        LabCommand::Status(a) => {
            if a.name.is_none() {
                a.name = lab.clone();
            }
            None
        }
    };
    if let Some(name) = name
        && name.is_empty()
    {
        *name = lab.unwrap_or_else(|| layout::DEFAULT_NAME.to_string());
    }
    if matches!(
        cmd,
        LabCommand::Status(_) | LabCommand::Probe(_) | LabCommand::Matrix(_)
    ) {
        // `serval lab matrix | head` should end quietly, not panic in println! (Rust ignores
        // SIGPIPE by default). Not for `up`/`down`, which must finish what they started.
        // SAFETY: setting a signal's disposition to SIG_DFL installs no handler and touches
        // no memory; it only changes how a write to a closed pipe ends this process.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cmd {
        LabCommand::Up(mut a) => match datastore.as_deref() {
            None | Some("sqlite") => up::run(a).await,
            Some("etcd") => {
                a.datastore = state::DatastoreKind::Etcd;
                up::run(a).await
            }
            // A URL here comes from SERVAL_DATASTORE, meant for other commands.
            Some(url) if url.contains("://") => {
                eprintln!("note: ignoring datastore URL {url} for `lab up`; the lab creates its own (--datastore sqlite|etcd)");
                up::run(a).await
            }
            Some(other) => Err(Usage(format!("`lab up --datastore {other}`: use sqlite or etcd (the lab creates its own datastore)")).into()),
        },
        LabCommand::Down(a) => down::run(a).await,
        LabCommand::Status(a) => status::run(a).await,
        LabCommand::Probe(a) => probe::run_probe(a).await,
        LabCommand::Matrix(a) => probe::run_matrix(a).await,
        LabCommand::Exec(a) => exec::run(a).await,
        LabCommand::Wait(a) => wait(a).await,
    };
    match result {
        Err(e) if e.downcast_ref::<Usage>().is_some() => {
            eprintln!("error: {e:#}");
            Ok(ExitCode::from(2))
        }
        other => other,
    }
}

/// The layout of an existing lab; an unknown lab is a usage error.
fn load_layout(name: &str) -> Result<layout::Layout, Usage> {
    layout::validate_name(name).map_err(Usage)?;
    let l = layout::Layout::new(name);
    if !l.lab_json().exists() {
        return Err(Usage(format!(
            "no lab named {name:?} ({} missing); `serval lab status` lists labs",
            l.lab_json().display()
        )));
    }
    Ok(l)
}
