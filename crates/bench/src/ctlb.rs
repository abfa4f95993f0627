//! The `serval-bpf-ctlb` column: the same eBPF lab as `serval-bpf`, with the latency client
//! inside the client node's cgroup (`<cgroup2>/serval/<lab>/node1`, where `serval lab up`
//! puts node1's pods and node1's agent attaches its connect-time load balancer). The bench
//! process joins that cgroup for the column's measurements ([`InCgroup`]) and goes back to
//! its own cgroup afterwards; sockets opened meanwhile have their service address replaced
//! by a backend at `connect()`, so their packets need no NAT. `serval-bpf` measures the same
//! lab from outside the cgroup: per-packet NAT in tc.

use std::fs;
use std::path::{Path, PathBuf};

use crate::lab::Lab;

/// The cgroup v2 mount point (`/sys/fs/cgroup` or `/sys/fs/cgroup/unified`).
fn cgroup2_mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mut fields = left.split_whitespace();
            let root = fields.nth(3)?;
            let mount = fields.next()?;
            (fstype == "cgroup2" && root == "/").then(|| PathBuf::from(mount))
        })
        .collect();
    found.sort_by_key(|p| p.as_os_str().len());
    found.into_iter().next()
}

/// node1's cgroup in `lab`.
fn node_cgroup(lab: &Lab, node: &str) -> Option<PathBuf> {
    Some(cgroup2_mount()?.join("serval").join(&lab.name).join(node))
}

/// The pinned cgroup links of node1's agent (`/sys/fs/bpf/serval/<node netns>/cgroup`).
fn attached_programs(lab: &Lab) -> usize {
    let scope: String = lab
        .node1_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    fs::read_dir(Path::new("/sys/fs/bpf/serval").join(scope).join("cgroup"))
        .map(|d| d.flatten().count())
        .unwrap_or(0)
}

/// Whether the column can be measured in `lab` (an eBPF lab whose services work): node1 has
/// a cgroup and its agent attached the connect-time load balancer. `Err` is the reason.
pub fn check(lab: &Lab) -> std::result::Result<(), String> {
    let Some(cg) = node_cgroup(lab, "node1") else {
        return Err("no cgroup v2 hierarchy is mounted on this host".into());
    };
    if !cg.exists() {
        return Err(format!(
            "the lab gave node1 no cgroup ({} is missing): connect-time load balancing needs one",
            cg.display()
        ));
    }
    // The agent attaches at its first apply; give it a moment after `lab up`.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while attached_programs(lab) == 0 {
        if std::time::Instant::now() >= deadline {
            return Err(
                "node1's agent attached no connect-time load balancer (FelixConfiguration \
                 bpfConnectTimeLoadBalancing is Disabled, or attaching failed: see nodes/node1/agent.log)"
                    .into(),
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}

/// The bench process inside node1's cgroup while this lives; back in its own cgroup after.
/// (The client keeps its ordinary ephemeral ports: a connect-time flow reusing the tuple of an
/// earlier, closed NATed one starts a new conntrack entry, bpf/serval_ct.h.)
#[derive(Debug)]
pub struct InCgroup {
    previous: PathBuf,
}

fn move_self(cgroup: &Path) -> std::io::Result<()> {
    fs::write(cgroup.join("cgroup.procs"), b"0")
}

impl InCgroup {
    /// Moves the whole bench process (every thread) into `node`'s cgroup of `lab`.
    pub fn join(lab: &Lab, node: &str) -> std::result::Result<InCgroup, String> {
        let mount = cgroup2_mount().ok_or("no cgroup v2 hierarchy is mounted")?;
        let own = fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("0::").map(|p| p.trim().to_string()))
            })
            .ok_or("cannot read this process's cgroup v2 path from /proc/self/cgroup")?;
        let previous = mount.join(own.trim_start_matches('/'));
        let target = node_cgroup(lab, node).ok_or("no cgroup v2 hierarchy is mounted")?;
        let guard = InCgroup { previous };
        move_self(&target).map_err(|e| format!("joining {}: {e}", target.display()))?;
        Ok(guard)
    }
}

impl Drop for InCgroup {
    fn drop(&mut self) {
        if let Err(e) = move_self(&self.previous) {
            tracing::warn!(cgroup = %self.previous.display(), error = %e, "could not return the bench to its cgroup");
        }
    }
}
