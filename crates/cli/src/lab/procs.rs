//! Processes the lab starts (agents, etcd) and stops (those, and anything else left inside
//! the lab's namespaces, such as pod servers).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Starts `cmd` detached from the CLI (own session, stdin from /dev/null, stdout and stderr to
/// `log`), inside network namespace `netns` when given, and records its pid in `pid_file`.
pub fn spawn_detached(
    mut cmd: Command,
    netns: Option<&serval_sys::NetNs>,
    log: &Path,
    pid_file: &Path,
) -> anyhow::Result<u32> {
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out
        .try_clone()
        .with_context(|| format!("duplicating {}", log.display()))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let ns_fd = netns.map(|ns| ns.as_raw_fd());
    // SAFETY: the closure runs in the forked child before exec and only makes the
    // async-signal-safe system calls setns(2) and setsid(2) on an fd that stays open in the
    // parent (the NetNs outlives `spawn`, which returns only after exec or failure).
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = ns_fd
                && libc::setns(fd, libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let pid = child.id();
    // The child is not waited for: it lives on after the CLI exits (init reaps it).
    drop(child);
    std::fs::write(pid_file, format!("{pid}\n"))
        .with_context(|| format!("writing {}", pid_file.display()))?;
    Ok(pid)
}

pub fn read_pid(pid_file: &Path) -> Option<u32> {
    std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3, after the parenthesised command name, is the state.
        Ok(stat) => {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL. Returns when every process is gone.
pub fn terminate(pids: &[u32], grace: Duration) {
    let live: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|p| *p > 1 && alive(*p))
        .collect();
    for pid in &live {
        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && live.iter().any(|p| alive(*p)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in live.iter().filter(|p| alive(**p)) {
        tracing::warn!(pid, "process did not stop on SIGTERM; killing it");
        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && live.iter().any(|p| alive(*p)) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The inode of a namespace file (`/run/netns/X` or `/proc/PID/ns/net`).
fn ns_inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Every process whose network namespace is one of `netns_names` (named namespaces).
pub fn processes_in(netns_names: &[String]) -> Vec<u32> {
    let inodes: std::collections::HashSet<u64> = netns_names
        .iter()
        .filter_map(|n| ns_inode(&Path::new(serval_sys::NETNS_RUN_DIR).join(n)))
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Some(ino) = ns_inode(&e.path().join("ns/net"))
            && inodes.contains(&ino)
        {
            out.push(pid);
        }
    }
    out
}
