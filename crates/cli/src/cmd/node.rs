//! `serval node status [--lab L] [--node NAME] [--socket PATH] [-o text|json]`: like
//! `calicoctl node status`, every BGP session of each node's BIRD with its peer, type (mesh,
//! route reflector, global, node specific), state, since, info and routes received/exported.
//!
//! BIRD's control sockets are files, so this works from any network namespace: in a lab,
//! `<lab>/nodes/<node>/bird/bird.ctl` for every node in `lab.json`; otherwise every
//! `/var/lib/serval/bird/<node>/bird.ctl` (the agent's default), or `--socket`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use serval_bgp::NodeStatus;

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// BGP sessions of each node's BIRD (peer, type, state, since, routes).
    Status(StatusArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this node.
    #[arg(long)]
    pub node: Option<String>,
    /// A BIRD control socket to ask (outside a lab), instead of the default location.
    #[arg(long, conflicts_with = "node")]
    pub socket: Option<PathBuf>,
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

pub async fn run(lab: Option<&str>, cmd: NodeCommand) -> anyhow::Result<ExitCode> {
    let NodeCommand::Status(args) = cmd;
    let mut sockets: Vec<(String, PathBuf)> = match (&args.socket, lab) {
        (Some(s), _) => vec![("local".to_owned(), s.clone())],
        (None, Some(lab)) => crate::lab::bird_sockets(lab)?,
        (None, None) => default_sockets(Path::new(serval_agent::bgp::DEFAULT_BIRD_DIR)),
    };
    if let Some(only) = &args.node {
        sockets.retain(|(n, _)| n == only);
        if sockets.is_empty() {
            return Err(crate::lab::Usage(format!("no node named {only:?}")).into());
        }
    }
    if sockets.is_empty() {
        anyhow::bail!(
            "no BIRD found: no lab given (--lab) and nothing under {}/*/bird.ctl; is the agent running with --routing bgp?",
            serval_agent::bgp::DEFAULT_BIRD_DIR
        );
    }
    let status = tokio::task::spawn_blocking(move || crate::lab::query_all(&sockets)).await?;
    match args.output {
        Format::Text => print!("{}", serval_bgp::render_table(&status)),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&status)).expect("json value encodes")
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Every `<dir>/<node>/bird.ctl`, by node name.
fn default_sockets(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let socket = e.path().join("bird.ctl");
            let name = e.file_name().to_str()?.to_owned();
            socket.exists().then_some((name, socket))
        })
        .collect();
    out.sort();
    out
}

fn to_json(status: &[NodeStatus]) -> serde_json::Value {
    status
        .iter()
        .map(|n| {
            json!({
                "node": n.node,
                "running": n.running,
                "error": n.error,
                "sessions": n.sessions.iter().map(|s| json!({
                    "name": s.name,
                    "peer": s.peer.map(|p| p.to_string()),
                    "description": s.description,
                    "type": s.kind.map(|k| k.describe()),
                    "state": s.state,
                    "bgp_state": s.bgp_state,
                    "established": s.is_established(),
                    "since": s.since,
                    "info": s.info,
                    "last_error": s.last_error,
                    "routes_received": s.routes_imported,
                    "routes_exported": s.routes_exported,
                })).collect::<Vec<_>>(),
            })
        })
        .collect()
}
