//! `serval lab exec --name L NS/POD -- CMD…`: run a command inside a pod's (or `outside`'s,
//! or a node's) network namespace; its exit status is ours.

use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitCode};

use anyhow::Context;
use clap::Args;
use serval_sys::NetNs;

use super::Usage;
use super::probe::source_netns;
use super::state::LabState;

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Lab name (default: the global --lab, else "serval").
    #[arg(long, default_value = "", hide_default_value = true)]
    pub name: String,
    /// NS/POD, `outside`, or a node name.
    pub target: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub async fn run(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let layout = super::load_layout(&args.name)?;
    let st = LabState::load(&layout).map_err(|e| Usage(format!("{e:#}")))?;
    let netns = source_netns(&layout, &st, &args.target)?;
    // A pod's (or node's) command runs in its node's cgroup, as the pod servers do, so the
    // node's connect-time load balancer applies to it (and no other node's).
    if let Some(cg) = super::cgroup::node_of_target(&layout, &st, &args.target)
        .and_then(|node| super::cgroup::node_cgroup(&layout, &node))
        .filter(|cg| cg.exists())
    {
        super::cgroup::join(&cg)?;
    }
    let ns = NetNs::open(&netns).with_context(|| format!("opening {netns}"))?;
    let fd = ns.as_raw_fd();
    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..]);
    // SAFETY: runs in the forked child before exec; setns(2) is async-signal-safe and `fd`
    // stays open in the parent (`ns` lives until after `status()` returns).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = tokio::task::spawn_blocking(move || cmd.status())
        .await
        .context("waiting for the command")?
        .with_context(|| format!("running {:?} in {netns}", args.command[0]))?;
    drop(ns);
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    };
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
