//! The stage of one run: a small lab made with the `serval` binary (`serval lab up`), with a
//! client pod and a server pod on node1 and a second server pod on node2, removed again
//! (`serval lab down`) when dropped, even on panic.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serval_sys::NetNs;

use crate::error::{BenchError, Result};

/// Where `serval lab` keeps its labs (one directory per lab).
pub const LABS_DIR: &str = "/var/lib/serval/labs";

/// The pods every bench lab has: (name, node).
const PODS: [(&str, &str); 3] = [
    ("client", "node1"),
    ("server", "node1"),
    ("server2", "node2"),
];

/// One pod of the bench lab.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    pub node: String,
    pub netns_name: String,
    pub netns: NetNs,
    pub ip: Ipv4Addr,
}

/// A lab brought up for the bench; `serval lab down` on drop.
#[derive(Debug)]
pub struct Lab {
    pub name: String,
    pub dataplane: String,
    serval: PathBuf,
    work_dir: PathBuf,
    pub client: Pod,
    pub server: Pod,
    pub server2: Pod,
    /// node1's network namespace: the client's node, where the baselines' rules go.
    pub node1: NetNs,
    pub node1_name: String,
}

/// Runs a command, returning stdout; a non-zero exit is an error carrying stderr.
pub fn run_command(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|source| BenchError::Spawn {
        command: shown.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(BenchError::CommandFailed {
            command: shown,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A fresh lab name `bench-XXXX` (at most 12 characters, as `serval lab` requires).
pub fn fresh_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mix = (u64::from(std::process::id()) << 20) ^ u64::from(nanos) ^ u64::from(nanos >> 13);
    format!("bench-{:04x}", mix & 0xffff)
}

fn pods_yaml() -> String {
    let mut y = String::new();
    for (pod, node) in PODS {
        let app = if pod == "client" {
            "bench-client"
        } else {
            "bench-server"
        };
        // Only `server` (node1) is a service backend; `server2` is for cross-node throughput.
        let role = if pod == "server" { "backend" } else { "other" };
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\n  namespace: default\n  labels:\n    \
             app: {app}\n    bench-role: {role}\nspec:\n  nodeName: {node}\n  containers:\n    - name: main\n      \
             ports:\n        - name: http\n          containerPort: 8080\n"
        ));
    }
    y
}

impl Lab {
    /// `serval lab up --name NAME --dataplane DP -f pods.yaml`, then opens the pods'
    /// namespaces and reads their addresses. `work_dir` holds the files handed to `serval`.
    pub fn up(serval: &Path, dataplane: &str, work_dir: &Path) -> Result<Lab> {
        let name = fresh_name();
        std::fs::create_dir_all(work_dir).map_err(|source| BenchError::Io {
            op: "creating",
            path: work_dir.to_path_buf(),
            source,
        })?;
        let pods_file = work_dir.join(format!("{name}-pods.yaml"));
        write_file(&pods_file, &pods_yaml())?;
        let up = run_command(
            Command::new(serval)
                .args(["lab", "up", "--name", &name, "--nodes", "2", "--dataplane"])
                .arg(dataplane)
                .arg("-f")
                .arg(&pods_file),
        );
        // From here on the lab (or what was made of it) exists: the guard removes it.
        let guard = DownGuard {
            serval: serval.to_path_buf(),
            name: name.clone(),
            armed: true,
        };
        up?;
        let node1_name = node_netns(&name, "node1")?;
        let node1 = NetNs::open(&node1_name).map_err(|source| BenchError::Netns {
            what: "opening",
            netns: node1_name.clone(),
            source,
        })?;
        let client = open_pod(&name, PODS[0].0, PODS[0].1)?;
        let server = open_pod(&name, PODS[1].0, PODS[1].1)?;
        let server2 = open_pod(&name, PODS[2].0, PODS[2].1)?;
        let mut guard = guard;
        guard.armed = false;
        Ok(Lab {
            name,
            dataplane: dataplane.to_string(),
            serval: serval.to_path_buf(),
            work_dir: work_dir.to_path_buf(),
            client,
            server,
            server2,
            node1,
            node1_name,
        })
    }

    /// `serval --lab NAME apply -f FILE` with `yaml` written to the work directory.
    pub fn apply(&self, file_stem: &str, yaml: &str) -> Result<()> {
        let path = self
            .work_dir
            .join(format!("{}-{file_stem}.yaml", self.name));
        write_file(&path, yaml)?;
        run_command(
            Command::new(&self.serval)
                .args(["--lab", &self.name, "apply", "-f"])
                .arg(&path),
        )
        .map(|_| ())
    }

    /// [`Lab::apply`], also noting when `serval apply` reported its outcome: it prints one
    /// line per resource only after its datastore transaction has committed, so the first
    /// byte on its stdout marks the end of the datastore write. The process exits later
    /// (after printing and freeing the parsed input; tens of ms at 50,000 Services), and the
    /// agents may already be at work by then.
    pub fn apply_timed(&self, file_stem: &str, yaml: &str) -> Result<Applied> {
        let path = self
            .work_dir
            .join(format!("{}-{file_stem}.yaml", self.name));
        write_file(&path, yaml)?;
        let mut cmd = Command::new(&self.serval);
        cmd.args(["--lab", &self.name, "apply", "-f"]).arg(&path);
        let shown = format!("{cmd:?}");
        let spawn_err = |source| BenchError::Spawn {
            command: shown.clone(),
            source,
        };
        let started = std::time::Instant::now();
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        let mut stderr = child.stderr.take();
        let errors = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(e) = stderr.as_mut() {
                let _ = std::io::Read::read_to_string(e, &mut text);
            }
            text
        });
        let mut reported = None;
        if let Some(mut out) = child.stdout.take() {
            let mut buf = [0u8; 64 * 1024];
            loop {
                match std::io::Read::read(&mut out, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        reported.get_or_insert_with(std::time::Instant::now);
                    }
                }
            }
        }
        let status = child.wait().map_err(spawn_err)?;
        let exited = std::time::Instant::now();
        let stderr = errors.join().unwrap_or_default();
        if !status.success() {
            return Err(BenchError::CommandFailed {
                command: shown,
                status: status.to_string(),
                stderr: stderr.trim().to_string(),
            });
        }
        Ok(Applied {
            started,
            reported,
            exited,
        })
    }

    /// `serval --lab NAME delete -f FILE` (the file written by an earlier [`Lab::apply`]).
    pub fn delete(&self, file_stem: &str) -> Result<()> {
        let path = self
            .work_dir
            .join(format!("{}-{file_stem}.yaml", self.name));
        run_command(
            Command::new(&self.serval)
                .args(["--lab", &self.name, "delete", "-f"])
                .arg(&path),
        )
        .map(|_| ())
    }

    /// The pid of a node's agent (from its pid file), if it runs.
    pub fn agent_pid(&self, node: &str) -> Option<u32> {
        let path = Path::new(LABS_DIR)
            .join(&self.name)
            .join("nodes")
            .join(node)
            .join("agent.pid");
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    /// Waits until both agents have used no CPU (at most one clock tick per
    /// [`IDLE_SAMPLE`]) for [`IDLE_FOR`] in a row, or [`IDLE_WAIT_MAX`] has passed; how long it
    /// waited. After a burst, node2's agent may still be writing its maps, each agent returns
    /// freed memory to the kernel once quiet, and each checkpoints the datastore's WAL 1 s
    /// after the last change: a measurement taken "when N exist" starts after that, as it
    /// would in a cluster that holds N services, not in the middle of their programming.
    pub fn wait_agents_idle(&self) -> Duration {
        let started = Instant::now();
        let pids: Vec<u32> = ["node1", "node2"]
            .iter()
            .filter_map(|node| self.agent_pid(node))
            .collect();
        let ticks = || -> u64 { pids.iter().filter_map(|&pid| cpu_ticks(pid)).sum() };
        let mut last = ticks();
        let mut quiet = Duration::ZERO;
        while quiet < IDLE_FOR && started.elapsed() < IDLE_WAIT_MAX {
            std::thread::sleep(IDLE_SAMPLE);
            let now = ticks();
            quiet = if now.saturating_sub(last) <= 1 {
                quiet + IDLE_SAMPLE
            } else {
                Duration::ZERO
            };
            last = now;
        }
        started.elapsed()
    }

    /// Why node1's agent may hold no BPF maps in this lab, for the memory notes.
    pub fn no_bpf_maps_reason(&self) -> String {
        if self.dataplane != "bpf" {
            return format!("a `--dataplane {}` lab uses no BPF maps", self.dataplane);
        }
        self.agent_dataplane("node1")
            .and_then(|a| a.not_working())
            .unwrap_or_else(|| "the eBPF dataplane created none".into())
    }

    /// What a node's agent says about its dataplane in its ready file (`agent.ready`):
    /// `None` when the file is missing or unreadable.
    pub fn agent_dataplane(&self, node: &str) -> Option<AgentDataplane> {
        let path = Path::new(LABS_DIR)
            .join(&self.name)
            .join("nodes")
            .join(node)
            .join("agent.ready");
        AgentDataplane::parse(&std::fs::read_to_string(path).ok()?)
    }
}

/// When a [`Lab::apply_timed`] started and finished its parts.
#[derive(Debug, Clone, Copy)]
pub struct Applied {
    /// `serval apply` was started: its input file was already written, as a baseline's rules
    /// file is before `iptables-restore` / `nft -f` starts.
    pub started: std::time::Instant,
    /// `serval apply` printed its first outcome: its datastore transaction had committed.
    /// `None` if it printed nothing.
    pub reported: Option<std::time::Instant>,
    /// The process exited.
    pub exited: std::time::Instant,
}

/// A node agent's own account of its dataplane (its ready file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentDataplane {
    /// `iptables` or `bpf`.
    pub dataplane: String,
    /// `programmed`, `unavailable` or `failing`.
    pub state: String,
    /// Why, when not programmed.
    pub error: Option<String>,
}

impl AgentDataplane {
    /// Parses the agent's ready file (JSON with `dataplane`, `dataplane_state`,
    /// `dataplane_error`).
    pub fn parse(text: &str) -> Option<AgentDataplane> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        Some(AgentDataplane {
            dataplane: v["dataplane"].as_str()?.to_string(),
            state: v["dataplane_state"].as_str()?.to_string(),
            error: v["dataplane_error"].as_str().map(str::to_string),
        })
    }

    /// `Some(reason)` when the agent itself says its dataplane does not work.
    pub fn not_working(&self) -> Option<String> {
        (self.state != "programmed").then(|| {
            format!(
                "node1's agent reports its {} dataplane {}: {}",
                self.dataplane,
                self.state,
                self.error.as_deref().unwrap_or("no reason given")
            )
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        lab_down(&self.serval, &self.name);
    }
}

struct DownGuard {
    serval: PathBuf,
    name: String,
    armed: bool,
}

impl Drop for DownGuard {
    fn drop(&mut self) {
        if self.armed {
            lab_down(&self.serval, &self.name);
        }
    }
}

fn lab_down(serval: &Path, name: &str) {
    match run_command(Command::new(serval).args(["lab", "down", "--name", name])) {
        Ok(_) => tracing::debug!(lab = name, "lab removed"),
        Err(e) => {
            eprintln!("warning: removing lab {name}: {e}; run `serval lab down --name {name}`")
        }
    }
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|source| BenchError::Io {
        op: "writing",
        path: path.to_path_buf(),
        source,
    })
}

/// A node's netns name, from the lab's `lab.json` (falling back to the lab's convention).
fn node_netns(lab: &str, node: &str) -> Result<String> {
    let path = Path::new(LABS_DIR).join(lab).join("lab.json");
    let text = std::fs::read_to_string(&path).map_err(|source| BenchError::Io {
        op: "reading",
        path: path.clone(),
        source,
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| BenchError::Json { path, source })?;
    let found = v["nodes"].as_array().and_then(|nodes| {
        nodes
            .iter()
            .find(|n| n["name"] == node)
            .and_then(|n| n["netns"].as_str())
            .map(str::to_string)
    });
    Ok(found.unwrap_or_else(|| format!("sv-{lab}-{node}")))
}

fn open_pod(lab: &str, pod: &str, node: &str) -> Result<Pod> {
    let netns_name = format!("sv-{lab}-default-{pod}");
    let netns = NetNs::open(&netns_name).map_err(|source| BenchError::Netns {
        what: "opening pod",
        netns: netns_name.clone(),
        source,
    })?;
    let ip = netns
        .run(eth0_ipv4)
        .map_err(|source| BenchError::Netns {
            what: "reading eth0's address",
            netns: netns_name.clone(),
            source,
        })?
        .ok_or_else(|| BenchError::NoPodAddress {
            pod: format!("default/{pod}"),
            netns: netns_name.clone(),
        })?;
    Ok(Pod {
        name: pod.to_string(),
        node: node.to_string(),
        netns_name,
        netns,
        ip,
    })
}

/// The IPv4 address of `eth0` in the calling thread's namespace.
fn eth0_ipv4() -> Option<Ipv4Addr> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|ifa| {
        if ifa.interface_name != "eth0" {
            return None;
        }
        ifa.address
            .as_ref()
            .and_then(|a| a.as_sockaddr_in())
            .map(|sin| sin.ip())
    })
}

/// How often [`Lab::wait_agents_idle`] reads the agents' CPU time.
pub const IDLE_SAMPLE: Duration = Duration::from_millis(250);
/// How long the agents must stay idle: longer than their WAL checkpoint's quiet delay (1 s).
pub const IDLE_FOR: Duration = Duration::from_millis(1500);
/// The longest [`Lab::wait_agents_idle`] waits.
pub const IDLE_WAIT_MAX: Duration = Duration::from_secs(10);

/// A process's CPU time (user + system) in clock ticks, from `/proc/PID/stat`.
fn cpu_ticks(pid: u32) -> Option<u64> {
    parse_cpu_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Fields 14 and 15 (utime, stime) of a `/proc/PID/stat` line; the command name (field 2)
/// may hold spaces and parentheses, so the fields are counted after its last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_utime_plus_stime_after_the_command_name() {
        let stat = "4242 (serval (agent) x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 31 0 0 20 0 6 0 100 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(281));
        assert_eq!(parse_cpu_ticks("4242 (short) S 1"), None);
        assert_eq!(parse_cpu_ticks("no parenthesis"), None);
        // This process's own figure reads.
        assert!(cpu_ticks(std::process::id()).is_some());
    }

    #[test]
    fn names_fit_the_lab_limit() {
        let n = fresh_name();
        assert!(n.len() <= 12, "{n}");
        assert!(n.starts_with("bench-"));
        assert!(
            n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        );
    }

    #[test]
    fn pods_yaml_has_three_pods_on_their_nodes() {
        let y = pods_yaml();
        assert_eq!(y.matches("kind: Pod").count(), 3);
        assert!(y.contains("name: server2\n  namespace: default"));
        assert!(y.contains("nodeName: node2"));
        assert_eq!(y.matches("bench-role: backend").count(), 1);
    }

    #[test]
    fn agent_ready_file() {
        let bpf = AgentDataplane::parse(
            r#"{"dataplane":"bpf","dataplane_error":"bpf dataplane not available in this build: not yet","dataplane_state":"unavailable","node":"node1","pid":1}"#,
        )
        .expect("parsed");
        assert_eq!(bpf.state, "unavailable");
        let reason = bpf.not_working().expect("not working");
        assert!(
            reason.contains("bpf dataplane unavailable: bpf dataplane not available in this build"),
            "{reason}"
        );
        let ipt = AgentDataplane::parse(
            r#"{"dataplane":"iptables","dataplane_state":"programmed","node":"node1","pid":2}"#,
        )
        .expect("parsed");
        assert_eq!(ipt.not_working(), None);
        assert_eq!(AgentDataplane::parse("{}"), None);
        assert_eq!(AgentDataplane::parse("not json"), None);
    }
}
