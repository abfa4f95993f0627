//! Where a lab lives: its directory, file names, network namespace and interface names.
//!
//! Everything a lab makes is named after the lab so that several labs (and several tests) can
//! exist side by side: `/var/lib/serval/labs/L/`, netns `sv-L-…`, bridge `svb-<hash(L)>`,
//! root-side veths `svh<hash(L)>…`.

use std::path::{Path, PathBuf};

/// Root of every lab's directory.
pub const LABS_DIR: &str = "/var/lib/serval/labs";

/// The default lab name.
pub const DEFAULT_NAME: &str = "serval";

/// Checks a lab name: 1-12 of `[a-z0-9-]`.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 12 {
        return Err(format!(
            "lab name {name:?} must be 1-12 characters of a-z, 0-9 and '-'"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "lab name {name:?} may only contain a-z, 0-9 and '-'"
        ));
    }
    Ok(())
}

/// FNV-1a, 64 bit: a stable hash (std's `DefaultHasher` may change between Rust releases,
/// and these names must stay the same for `lab down` run by a newer binary).
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The names and paths of one lab.
#[derive(Debug, Clone)]
pub struct Layout {
    pub name: String,
}

impl Layout {
    pub fn new(name: &str) -> Layout {
        Layout {
            name: name.to_string(),
        }
    }

    pub fn dir(&self) -> PathBuf {
        Path::new(LABS_DIR).join(&self.name)
    }

    /// One line: the datastore URL (`serval --lab L` reads it).
    pub fn datastore_file(&self) -> PathBuf {
        self.dir().join("datastore")
    }

    pub fn lab_json(&self) -> PathBuf {
        self.dir().join("lab.json")
    }

    pub fn sqlite_path(&self) -> PathBuf {
        self.dir().join("serval.db")
    }

    pub fn etcd_dir(&self) -> PathBuf {
        self.dir().join("etcd")
    }

    pub fn etcd_pid_file(&self) -> PathBuf {
        self.dir().join("etcd.pid")
    }

    pub fn etcd_log(&self) -> PathBuf {
        self.dir().join("etcd.log")
    }

    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.dir().join("nodes").join(node)
    }

    pub fn agent_pid_file(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("agent.pid")
    }

    pub fn agent_log(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("agent.log")
    }

    /// A node's BIRD files (`--routing bgp`): `bird.conf`, `bird.ctl`, `bird.pid`, `bird.log`,
    /// written by the node's agent (`serval_agent::AgentConfig::bgp_dir`).
    pub fn bird_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("bird")
    }

    /// The home router's files (FRR or BIRD).
    pub fn router_dir(&self) -> PathBuf {
        self.dir().join("router")
    }

    pub fn cni_conf_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("cni").join("net.d")
    }

    pub fn cni_bin_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("cni").join("bin")
    }

    /// Prefix of every netns of the lab (without the trailing `-`), passed to the agents.
    pub fn netns_prefix(&self) -> String {
        format!("sv-{}", self.name)
    }

    pub fn node_netns(&self, node: &str) -> String {
        format!("sv-{}-{node}", self.name)
    }

    pub fn outside_netns(&self) -> String {
        format!("sv-{}-outside", self.name)
    }

    /// With `vxlan-cross-subnet`: the router between the two underlay subnets; with
    /// `--routing bgp`: the home router.
    pub fn router_netns(&self) -> String {
        format!("sv-{}-router", self.name)
    }

    /// A pod's netns, as the agent names it.
    pub fn pod_netns(&self, namespace: &str, pod: &str) -> String {
        format!("sv-{}-{namespace}-{pod}", self.name)
    }

    fn short_hash(&self) -> String {
        format!("{:016x}", fnv1a(self.name.as_bytes()))
    }

    /// The underlay bridge in the root netns (`svb-` + 11 hex digits: 15 characters).
    pub fn bridge(&self) -> String {
        format!("svb-{}", &self.short_hash()[..11])
    }

    /// Root-side end of a veth whose other end is `eth0` in netns `what` (a node index,
    /// `o` for outside, `r` for the router). At most 15 characters.
    pub fn host_veth(&self, what: &str) -> String {
        format!("svh{}{what}", &self.short_hash()[..8])
    }

    /// The prefix every root-side veth of this lab starts with.
    pub fn host_veth_prefix(&self) -> String {
        format!("svh{}", &self.short_hash()[..8])
    }

    /// Whether netns `ns` belongs to this lab, given the names of the other labs (whose
    /// prefixes may start with ours: `sv-a-` is a prefix of `sv-a-b-…`).
    pub fn owns_netns(&self, ns: &str, other_labs: &[String]) -> bool {
        let mine = format!("sv-{}-", self.name);
        if !ns.starts_with(&mine) {
            return false;
        }
        !other_labs.iter().any(|o| {
            o != &self.name && o.len() > self.name.len() && ns.starts_with(&format!("sv-{o}-"))
        })
    }
}

/// Names of every lab with a directory.
pub fn list_labs() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(LABS_DIR)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| validate_name(n).is_ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("serval").is_ok());
        assert!(validate_name("a-1").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("toolongname13").is_err());
        assert!(validate_name("Upper").is_err());
        assert!(validate_name("a_b").is_err());
        let l = Layout::new("lab-with-12c");
        assert!(l.bridge().len() <= 15);
        assert!(l.host_veth("12").len() <= 15);
        assert_ne!(Layout::new("a").bridge(), Layout::new("b").bridge());
        assert_eq!(l.node_netns("node1"), "sv-lab-with-12c-node1");
    }

    #[test]
    fn netns_ownership_excludes_longer_lab_names() {
        let a = Layout::new("a");
        let others = vec!["a".to_string(), "a-b".to_string()];
        assert!(a.owns_netns("sv-a-node1", &others));
        assert!(a.owns_netns("sv-a-default-web", &others));
        assert!(!a.owns_netns("sv-a-b-node1", &others));
        assert!(!a.owns_netns("sv-ab-node1", &others));
        assert!(Layout::new("a-b").owns_netns("sv-a-b-node1", &others));
    }
}
