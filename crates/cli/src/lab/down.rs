//! `serval lab down`: remove everything a lab made. Works from what is there (namespaces
//! with the lab's prefix, pid files, processes inside the namespaces, links with the lab's
//! names), so it also cleans up after a half-finished `up` or a lost lab directory.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serval_sys::{NetNs, Netlink};

use super::layout::{self, Layout};
use super::{Usage, net, procs};

#[derive(Debug, Args)]
pub struct DownArgs {
    /// Lab name (default: the global --lab, else "serval").
    #[arg(long, default_value = "", hide_default_value = true)]
    pub name: String,
}

/// What `teardown` removed.
#[derive(Debug, Default)]
pub struct Removed {
    pub processes: usize,
    pub netns: usize,
    pub links: usize,
    pub dir: bool,
}

pub async fn run(args: DownArgs) -> anyhow::Result<ExitCode> {
    layout::validate_name(&args.name).map_err(Usage)?;
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("`serval lab down` deletes network namespaces and links: run it as root");
    }
    let layout = Layout::new(&args.name);
    let r = teardown(&layout).await?;
    if r.processes + r.netns + r.links == 0 && !r.dir {
        println!("Lab {:?}: nothing to remove.", args.name);
    } else {
        println!(
            "Lab {:?} removed: {} processes stopped, {} network namespaces and {} links deleted{}.",
            args.name,
            r.processes,
            r.netns,
            r.links,
            if r.dir { ", directory removed" } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether `/proc/PID/cmdline` contains `needle` (guards pid files against reused pids).
fn cmdline_has(pid: u32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).contains(needle))
        .unwrap_or(false)
}

/// Pids recorded in `*.pid` files under `dir` (recursively), whose command line mentions
/// `needle`.
fn pid_files(dir: &Path, needle: &str, out: &mut Vec<u32>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            pid_files(&p, needle, out);
        } else if p.extension().is_some_and(|x| x == "pid")
            && let Some(pid) = procs::read_pid(&p)
            && procs::alive(pid)
            && cmdline_has(pid, needle)
        {
            out.push(pid);
        }
    }
}

/// Removes every trace of the lab. Idempotent.
pub async fn teardown(layout: &Layout) -> anyhow::Result<Removed> {
    let mut removed = Removed::default();
    let others = layout::list_labs();
    let netns: Vec<String> = NetNs::list()
        .context("listing network namespaces")?
        .into_iter()
        .filter(|n| layout.owns_netns(n, &others))
        .collect();

    // 1. Agents first (so they do not recreate pods), then everything inside the lab's
    //    namespaces (pod servers, anything started by `lab exec`), then etcd.
    let mut agents = Vec::new();
    pid_files(&layout.dir().join("nodes"), "agent", &mut agents);
    agents.sort_unstable();
    agents.dedup();
    procs::terminate(&agents, Duration::from_secs(3));
    let mut rest = procs::processes_in(&netns);
    pid_files(&layout.dir().join("nodes"), "pod-server", &mut rest);
    rest.sort_unstable();
    rest.dedup();
    procs::terminate(&rest, Duration::from_secs(2));
    let mut etcd = Vec::new();
    if let Some(pid) = procs::read_pid(&layout.etcd_pid_file())
        && procs::alive(pid)
        && cmdline_has(pid, &layout.etcd_dir().display().to_string())
    {
        etcd.push(pid);
    }
    procs::terminate(&etcd, Duration::from_secs(5));
    removed.processes = agents.len() + rest.len() + etcd.len();

    // 2. Namespaces: pods first, then nodes, router and outside.
    let is_infra = |n: &str| {
        n == layout.outside_netns()
            || n == layout.router_netns()
            || n.strip_prefix(&format!("sv-{}-node", layout.name))
                .is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
    };
    let (infra, pods): (Vec<&String>, Vec<&String>) = netns.iter().partition(|n| is_infra(n));
    for n in pods.into_iter().chain(infra) {
        match NetNs::delete(n) {
            Ok(()) => removed.netns += 1,
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e).with_context(|| format!("deleting network namespace {n}")),
        }
    }

    // 2b. The eBPF dataplane's pins of each node (maps and links under
    //     /sys/fs/bpf/serval/<node netns>); the attachments went with the namespaces.
    //     Found by name under bpffs, not from the namespaces, so pins left by an earlier,
    //     interrupted `lab down` (namespaces already gone) are removed too.
    let node_scope = serval_agent::dataplane::bpf::scope_name(&format!("sv-{}-node", layout.name));
    let scopes: Vec<String> =
        std::fs::read_dir(std::path::Path::new(serval_dp_bpf::BPFFS).join("serval"))
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| {
                        n.strip_prefix(&node_scope)
                            .is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
                    })
                    .collect()
            })
            .unwrap_or_default();
    for scope in scopes {
        if let Ok(pins) = serval_dp_bpf::PinScope::new(&scope) {
            serval_dp_bpf::cleanup(&pins, None)
                .with_context(|| format!("removing the eBPF pins of {scope}"))?;
        }
    }

    // 2c. The nodes' cgroups (anything still inside is killed first).
    super::cgroup::remove(layout).context("removing the lab's cgroups")?;

    // 3. Links in the root namespace: the veths go with their namespaces (asynchronously);
    //    delete any left, then the bridge.
    let root = Netlink::current().context("opening netlink in the root namespace")?;
    let prefix = layout.host_veth_prefix();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut veths = net::links_with_prefix(&root, &prefix).await?;
    while !veths.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        veths = net::links_with_prefix(&root, &prefix).await?;
    }
    for v in &veths {
        net::delete_link(&root, v).await?;
        removed.links += 1;
    }
    let bridge = layout.bridge();
    if !net::links_with_prefix(&root, &bridge).await?.is_empty() {
        net::delete_link(&root, &bridge).await?;
        removed.links += 1;
    }

    // 4. Files.
    match std::fs::remove_dir_all(layout.dir()) {
        Ok(()) => removed.dir = true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", layout.dir().display())),
    }
    Ok(removed)
}
