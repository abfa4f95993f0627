//! The lab's cgroup v2 subtree: `<cgroup2 mount>/serval/<lab>/<node>`, one per node.
//!
//! Each node's agent attaches its connect-time load balancer to its node's cgroup
//! (`serval agent --cgroup`), and the node's pod servers (and `serval lab exec` into the
//! node's pods or the node itself) run inside it, so one node's cgroup programs never see
//! another node's, or another lab's, processes. `lab down` kills what is left inside and
//! removes the directories.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::layout::Layout;
use super::state::LabState;

/// `<cgroup2 mount>/serval/<lab>`, or None without a cgroup v2 hierarchy.
pub fn lab_cgroup(layout: &Layout) -> Option<PathBuf> {
    Some(
        serval_dp_bpf::cgroup::cgroup2_mount()?
            .join("serval")
            .join(&layout.name),
    )
}

/// `<cgroup2 mount>/serval/<lab>/<node>`.
pub fn node_cgroup(layout: &Layout, node: &str) -> Option<PathBuf> {
    Some(lab_cgroup(layout)?.join(node))
}

/// Creates the node's cgroup; None (with the reason logged) when there is no cgroup v2.
pub fn create(layout: &Layout, node: &str) -> anyhow::Result<Option<PathBuf>> {
    let Some(path) = node_cgroup(layout, node) else {
        tracing::warn!(
            node,
            "no cgroup v2 hierarchy mounted: the node gets no cgroup and no connect-time load balancing"
        );
        return Ok(None);
    };
    fs::create_dir_all(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
    Ok(Some(path))
}

/// The node a `lab exec` target belongs to: a node itself, or the node whose pod runtime
/// runs pod NS/POD (its pid file is under that node's directory). None for `outside`.
pub fn node_of_target(layout: &Layout, st: &LabState, target: &str) -> Option<String> {
    if st.node(target).is_some() {
        return Some(target.to_string());
    }
    let (ns, pod) = target.split_once('/')?;
    st.nodes
        .iter()
        .find(|n| {
            layout
                .node_dir(&n.name)
                .join("pods")
                .join(format!("{ns}_{pod}.pid"))
                .exists()
        })
        .map(|n| n.name.clone())
}

/// Moves the calling process into `cgroup` (all its threads).
pub fn join(cgroup: &Path) -> anyhow::Result<()> {
    let procs = cgroup.join("cgroup.procs");
    fs::OpenOptions::new()
        .write(true)
        .open(&procs)
        .and_then(|mut f| f.write_all(b"0"))
        .with_context(|| format!("joining cgroup {}", cgroup.display()))
}

/// Kills every process left in the lab's cgroups and removes them (and `serval/` when it is
/// empty). Idempotent; returns how many directories were removed.
pub fn remove(layout: &Layout) -> anyhow::Result<usize> {
    let Some(lab) = lab_cgroup(layout) else {
        return Ok(0);
    };
    if !lab.exists() {
        return Ok(0);
    }
    // cgroup.kill (5.14+) kills the whole subtree.
    let _ = fs::write(lab.join("cgroup.kill"), b"1");
    let mut dirs: Vec<PathBuf> = fs::read_dir(&lab)
        .with_context(|| format!("listing {}", lab.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    dirs.push(lab.clone());
    let mut removed = 0;
    for dir in dirs {
        // Killed processes leave the cgroup once they are reaped (by their parents).
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match fs::remove_dir(&dir) {
                Ok(()) => {
                    removed += 1;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(dir = %dir.display(), error = %e, "cgroup still busy");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "removing cgroup {} (processes still inside: see its cgroup.procs)",
                            dir.display()
                        )
                    });
                }
            }
        }
    }
    if let Some(parent) = lab.parent() {
        let _ = fs::remove_dir(parent); // serval/: only if no other lab uses it
    }
    Ok(removed)
}
