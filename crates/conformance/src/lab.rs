//! A lab driven the way a user drives it: `serval lab up/matrix/probe/wait/down` through the
//! real binary, resources through the lab's datastore (`serval_api::Client`, the same path as
//! `serval --lab L apply`), and the reference evaluator's [`Model`] read back from it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use serval_api::{ApplyMode, Client};
use serval_calc::Model;
use serval_calc::evaluator::Matrix;
use serval_calc::scenarios::Bindings;
use serval_model::net::IpFamily;
use serval_model::types::Protocol;
use serval_model::{Kind, Resource, ResourceKey, parse_documents};

use crate::echo::EchoServer;

/// Where labs keep their state (`serval lab` owns it).
pub const LABS_DIR: &str = "/var/lib/serval/labs";

/// Per-probe timeout of `lab matrix` / `lab probe`. The lab is one host: an answer takes well
/// under a millisecond, so this only bounds how long a blocked probe waits.
pub const PROBE_TIMEOUT_MS: u64 = 600;

/// How long to wait for the agents to program a change before a table counts as wrong
/// (`SERVAL_CONFORMANCE_CONVERGE_SECS` overrides). Waiting for convergence, not a timing test.
pub fn converge_timeout() -> Duration {
    let secs = std::env::var("SERVAL_CONFORMANCE_CONVERGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    Duration::from_secs(secs)
}

/// Whether we run as root (labs need it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The `serval` binary, built (with `serval-cni` next to it) once per test process: `cargo
/// test -p serval-conformance` does not build other packages' binaries. When the build fails
/// (another crate mid-edit) an existing binary is used, with a warning.
pub fn serval_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test binary's path");
        // target/<profile>/deps/<test> -> target/<profile>
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary in target/<profile>/deps")
            .to_path_buf();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "-p", "serval", "-p", "serval-cni"]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let built = cmd.status().is_ok_and(|s| s.success());
        let (serval, cni) = (dir.join("serval"), dir.join("serval-cni"));
        assert!(
            serval.is_file() && cni.is_file(),
            "{} and {} are needed and `cargo build -p serval -p serval-cni` failed",
            serval.display(),
            cni.display()
        );
        if !built {
            eprintln!(
                "warning: `cargo build -p serval -p serval-cni` failed; using the existing binaries"
            );
        }
        serval
    })
    .clone()
}

/// Runs `serval ARGS`.
pub fn serval(args: &[&str]) -> Output {
    Command::new(serval_binary())
        .args(args)
        .output()
        .expect("running serval")
}

/// A command's status and output, for failure messages.
pub fn describe(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `serval lab` speaks of families as `4` / `6`.
pub fn family_arg(f: IpFamily) -> &'static str {
    match f {
        IpFamily::V4 => "4",
        IpFamily::V6 => "6",
    }
}

/// `tcp` / `udp` for `serval lab` (SCTP cannot be probed: this kernel has no SCTP sockets).
pub fn proto_arg(p: Protocol) -> Option<&'static str> {
    match p {
        Protocol::Tcp => Some("tcp"),
        Protocol::Udp => Some("udp"),
        Protocol::Sctp => None,
    }
}

/// One `serval lab matrix -o json`.
#[derive(Debug, Clone)]
pub struct LabMatrix {
    pub matrix: Matrix,
    /// The raw per-probe results (`from`, `to`, `ip`, `reached`, `reply`, `error`, …).
    pub results: Vec<Value>,
}

impl LabMatrix {
    /// Reached cells answered by another pod than the target (always a bug).
    pub fn wrong_replies(&self) -> Vec<String> {
        self.results
            .iter()
            .filter(|r| r["reached"] == true && r["reply"] != r["to"])
            .map(|r| format!("{} -> {} answered by {}", r["from"], r["to"], r["reply"]))
            .collect()
    }

    /// The probes of the cells where `expected` and this matrix disagree, one per line.
    pub fn explain(&self, expected: &Matrix) -> String {
        let mut out = String::new();
        for m in expected.mismatches(&self.matrix) {
            let r = self
                .results
                .iter()
                .find(|r| r["from"] == m.from.as_str() && r["to"] == m.to.as_str());
            let detail = r
                .map(|r| {
                    format!(
                        "ip {} reached {} reply {} error {} after {} ms",
                        r["ip"], r["reached"], r["reply"], r["error"], r["elapsed_ms"]
                    )
                })
                .unwrap_or_else(|| "no probe".into());
            out.push_str(&format!(
                "  {} -> {}: expected {}, got {} ({detail})\n",
                m.from,
                m.to,
                if m.expected { "." } else { "X" },
                if m.actual { "." } else { "X" }
            ));
        }
        out
    }
}

/// One `serval lab probe -o json`.
#[derive(Debug, Clone)]
pub struct ProbeOutcome {
    pub reached: bool,
    /// The answer (a pod's `NS/POD`, or an echo server's line).
    pub reply: Option<String>,
    pub error: Option<String>,
    pub raw: Value,
}

impl ProbeOutcome {
    /// Whether the connection was refused (TCP RST / ICMP port unreachable), as opposed to a
    /// timeout: the probe reports the OS error, `Connection refused (os error 111)`.
    pub fn refused(&self) -> bool {
        self.error
            .as_deref()
            .is_some_and(|e| e.contains("os error 111") || e.contains("refused"))
    }
}

/// A lab for the suite, removed on drop (even on panic). `SERVAL_CONFORMANCE_KEEP=1` keeps it
/// for debugging.
pub struct Lab {
    pub name: String,
    state: Value,
    rt: tokio::runtime::Runtime,
    client: Client,
    echo: Mutex<BTreeMap<(String, Protocol, u16), EchoServer>>,
}

impl Lab {
    /// `serval lab up --name cf<tag><pid> ARGS` (2 nodes unless ARGS say otherwise). The
    /// dataplane is `SERVAL_CONFORMANCE_DATAPLANE` (default iptables).
    pub fn up(tag: &str, args: &[&str]) -> anyhow::Result<Lab> {
        assert!(tag.len() <= 6, "lab tag {tag:?}: at most 6 characters");
        let name = format!("cf{tag}{:04x}", std::process::id() & 0xffff);
        // A leftover of an earlier, killed run with the same pid.
        let _ = serval(&["lab", "down", "--name", &name]);
        let dataplane =
            std::env::var("SERVAL_CONFORMANCE_DATAPLANE").unwrap_or_else(|_| "iptables".into());
        let mut all = vec![
            "lab",
            "up",
            "--name",
            &name,
            "--timeout-secs",
            "120",
            "--dataplane",
            &dataplane,
        ];
        all.extend_from_slice(args);
        let start = Instant::now();
        let o = serval(&all);
        if !o.status.success() {
            let _ = serval(&["lab", "down", "--name", &name]);
            bail!("lab up {args:?} failed: {}", describe(&o));
        }
        eprintln!(
            "lab {name} up in {:.1}s ({args:?})",
            start.elapsed().as_secs_f64()
        );
        // Until the `Lab` (whose Drop takes the lab down) exists, a failure below must not
        // leave the lab behind.
        struct DownOnDrop<'a>(Option<&'a str>);
        impl Drop for DownOnDrop<'_> {
            fn drop(&mut self) {
                if let Some(name) = self.0 {
                    let _ = serval(&["lab", "down", "--name", name]);
                }
            }
        }
        let guard_name = name.clone();
        let mut guard = DownOnDrop(Some(&guard_name));
        let lab_json = Path::new(LABS_DIR).join(&name).join("lab.json");
        let state: Value = serde_json::from_str(
            &std::fs::read_to_string(&lab_json)
                .with_context(|| format!("reading {}", lab_json.display()))?,
        )
        .with_context(|| format!("parsing {}", lab_json.display()))?;
        let url = state["datastore_url"]
            .as_str()
            .context("lab.json has no datastore_url")?
            .to_string();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a tokio runtime")?;
        let client = rt
            .block_on(Client::open(&url))
            .with_context(|| format!("opening the lab datastore {url}"))?;
        guard.0 = None;
        Ok(Lab {
            name,
            state,
            rt,
            client,
            echo: Mutex::new(BTreeMap::new()),
        })
    }

    /// `serval lab SUB --name L ARGS`.
    pub fn lab_cmd(&self, sub: &str, args: &[&str]) -> Output {
        let mut all = vec!["lab", sub, "--name", self.name.as_str()];
        all.extend_from_slice(args);
        serval(&all)
    }

    /// `serval lab wait`: every pod ready and routed from every node.
    pub fn wait_pods(&self) -> anyhow::Result<()> {
        let o = self.lab_cmd("wait", &["--timeout-secs", "120"]);
        if !o.status.success() {
            bail!("lab wait: {}", describe(&o));
        }
        Ok(())
    }

    /// Validates and stores resources (all or nothing), as `serval apply` does.
    pub fn apply(&self, resources: Vec<Resource>) -> anyhow::Result<()> {
        self.rt
            .block_on(self.client.apply(resources, ApplyMode::Apply))
            .context("applying resources to the lab")?;
        Ok(())
    }

    /// Parses multi-document YAML and applies it.
    pub fn apply_yaml(&self, source: &str, yaml: &str) -> anyhow::Result<()> {
        let rs = parse_documents(source, yaml).with_context(|| format!("parsing {source}"))?;
        self.apply(rs)
    }

    /// Deletes resources; missing ones are fine.
    pub fn delete(&self, keys: &[ResourceKey]) -> anyhow::Result<()> {
        self.rt
            .block_on(self.client.delete(keys, true))
            .context("deleting resources from the lab")?;
        Ok(())
    }

    pub fn get(&self, key: &ResourceKey) -> anyhow::Result<Option<Resource>> {
        Ok(self.rt.block_on(self.client.get(key))?)
    }

    pub fn list(&self, kind: Kind) -> anyhow::Result<Vec<Resource>> {
        Ok(self.rt.block_on(self.client.list(kind, None))?.0)
    }

    /// The reference evaluator's model of everything stored in the lab now (pods with the
    /// addresses the CNI plugin gave them, nodes, pools, policies, services …).
    pub fn model(&self) -> anyhow::Result<Model> {
        let (all, _) = self
            .rt
            .block_on(self.client.list_all())
            .context("listing the lab's resources")?;
        Ok(Model::from_resources(all))
    }

    /// Node names (node1, node2, …) and their underlay addresses, from lab.json.
    pub fn nodes(&self) -> Vec<(String, Vec<IpAddr>)> {
        self.state["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| {
                (
                    n["name"].as_str().unwrap_or_default().to_string(),
                    addrs(&n["addrs"]),
                )
            })
            .collect()
    }

    /// A node's underlay address of `family`.
    pub fn node_addr(&self, node: &str, family: IpFamily) -> Option<IpAddr> {
        self.nodes()
            .into_iter()
            .find(|(n, _)| n == node)
            .and_then(|(_, a)| a.into_iter().find(|a| IpFamily::of_addr(a) == family))
    }

    /// The outside host's address of `family`.
    pub fn outside_addr(&self, family: IpFamily) -> Option<IpAddr> {
        addrs(&self.state["outside"]["addrs"])
            .into_iter()
            .find(|a| IpFamily::of_addr(a) == family)
    }

    /// The dataplane the lab's agents run (`SERVAL_CONFORMANCE_DATAPLANE`, default iptables).
    pub fn dataplane(&self) -> String {
        std::env::var("SERVAL_CONFORMANCE_DATAPLANE").unwrap_or_else(|_| "iptables".into())
    }

    /// With the eBPF dataplane, no node may have Serval iptables/ip6tables state (chains,
    /// rules jumping to them, ipsets) in its path: issue 5 requires the whole suite to pass
    /// with no `SERVAL-` rules of ours. Returns the offending lines per node; Ok with iptables.
    pub fn check_no_serval_iptables(&self) -> Result<(), String> {
        if self.dataplane() != "bpf" {
            return Ok(());
        }
        let mut found = Vec::new();
        for (node, _) in self.nodes() {
            let ns = self.netns(&node);
            for cmd in [
                &["iptables-save"][..],
                &["ip6tables-save"][..],
                &["ipset", "list", "-n"][..],
            ] {
                let o = std::process::Command::new("ip")
                    .args(["netns", "exec", &ns])
                    .args(cmd)
                    .output();
                let o = match o {
                    Ok(o) if o.status.success() => o,
                    Ok(o) => {
                        found.push(format!("{node}: {cmd:?} failed: {}", describe(&o)));
                        continue;
                    }
                    Err(e) => {
                        found.push(format!("{node}: running {cmd:?}: {e}"));
                        continue;
                    }
                };
                for line in String::from_utf8_lossy(&o.stdout).lines() {
                    if line.contains("SERVAL") || line.starts_with("serval") {
                        found.push(format!("{node} ({}): {line}", cmd[0]));
                    }
                }
            }
        }
        if found.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the eBPF dataplane left Serval iptables/ipset state on the nodes:\n{}",
                found.join("\n")
            ))
        }
    }

    /// The network namespace of `NS/POD`, a node name, or `outside`.
    pub fn netns(&self, target: &str) -> String {
        if target == "outside" {
            return format!("sv-{}-outside", self.name);
        }
        match target.split_once('/') {
            Some((ns, pod)) => format!("sv-{}-{ns}-{pod}", self.name),
            None => format!("sv-{}-{target}", self.name),
        }
    }

    /// Template bindings for `family`: every pod's address and the nodes in order.
    pub fn bindings(&self, family: IpFamily) -> anyhow::Result<Bindings> {
        let model = self.model()?;
        let pods = model
            .endpoints()
            .into_iter()
            .filter_map(|e| {
                let a = e
                    .addrs
                    .iter()
                    .copied()
                    .find(|a| IpFamily::of_addr(a) == family)?;
                Some((format!("{}/{}", e.namespace, e.pod), a))
            })
            .collect();
        let nodes = self
            .nodes()
            .into_iter()
            .filter_map(|(n, a)| {
                let a = a.into_iter().find(|a| IpFamily::of_addr(a) == family)?;
                Some((n, a))
            })
            .collect();
        Ok(Bindings {
            family: Some(family),
            pods,
            nodes,
        })
    }

    /// `serval lab matrix --port P --protocol tcp|udp --family 4|6 -o json`, every probe at
    /// once.
    pub fn matrix(
        &self,
        port: u16,
        protocol: Protocol,
        family: IpFamily,
    ) -> anyhow::Result<LabMatrix> {
        let proto = proto_arg(protocol).context("SCTP cannot be probed in the lab")?;
        let (port, timeout) = (port.to_string(), PROBE_TIMEOUT_MS.to_string());
        let o = self.lab_cmd(
            "matrix",
            &[
                "--port",
                &port,
                "--protocol",
                proto,
                "--family",
                family_arg(family),
                "--timeout-ms",
                &timeout,
                "--concurrency",
                "128",
                "-o",
                "json",
            ],
        );
        if !o.status.success() {
            bail!("lab matrix: {}", describe(&o));
        }
        let v: Value = serde_json::from_slice(&o.stdout)
            .with_context(|| format!("lab matrix -o json: {}", describe(&o)))?;
        let matrix: Matrix = serde_json::from_value(v.clone())
            .with_context(|| format!("lab matrix -o json has no pods/reachable: {v:#}"))?;
        let results = v["results"].as_array().cloned().unwrap_or_default();
        Ok(LabMatrix { matrix, results })
    }

    /// `serval lab probe --from FROM --to TO --port P --protocol tcp|udp -o json`.
    pub fn probe(
        &self,
        from: &str,
        to: &str,
        port: u16,
        protocol: Protocol,
        timeout_ms: u64,
    ) -> anyhow::Result<ProbeOutcome> {
        let proto = proto_arg(protocol).context("SCTP cannot be probed in the lab")?;
        let (port, timeout) = (port.to_string(), timeout_ms.to_string());
        let o = self.lab_cmd(
            "probe",
            &[
                "--from",
                from,
                "--to",
                to,
                "--port",
                &port,
                "--protocol",
                proto,
                "--timeout-ms",
                &timeout,
                "-o",
                "json",
            ],
        );
        if !matches!(o.status.code(), Some(0 | 1)) {
            bail!("lab probe {from} -> {to}: {}", describe(&o));
        }
        let raw: Value = serde_json::from_slice(&o.stdout)
            .with_context(|| format!("lab probe -o json: {}", describe(&o)))?;
        Ok(ProbeOutcome {
            reached: raw["reached"] == true,
            reply: raw["reply"].as_str().map(str::to_string),
            error: raw["error"].as_str().map(str::to_string),
            raw,
        })
    }

    /// `serval lab exec TARGET -- CMD…`.
    pub fn exec(&self, target: &str, cmd: &[&str]) -> Output {
        let mut args = vec![target, "--"];
        args.extend_from_slice(cmd);
        self.lab_cmd("exec", &args)
    }

    /// Makes sure an echo server (answers with the peer's address) listens on `port`/`proto`
    /// in `target`'s network namespace (a node, `outside`, or a pod); kept until the lab goes.
    pub fn ensure_echo(&self, target: &str, protocol: Protocol, port: u16) -> anyhow::Result<()> {
        let netns = self.netns(target);
        let mut echo = self.echo.lock().unwrap_or_else(|e| e.into_inner());
        let key = (netns.clone(), protocol, port);
        if let std::collections::btree_map::Entry::Vacant(slot) = echo.entry(key) {
            let s = EchoServer::start(&netns, protocol, port)
                .with_context(|| format!("echo server on {port}/{protocol:?} in {target}"))?;
            slot.insert(s);
        }
        Ok(())
    }
}

fn addrs(v: &Value) -> Vec<IpAddr> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|s| s.parse::<ipnet::IpNet>().ok())
        .map(|n| n.addr())
        .collect()
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Echo servers first: their sockets hold the namespaces.
        self.echo.lock().unwrap_or_else(|e| e.into_inner()).clear();
        if std::env::var_os("SERVAL_CONFORMANCE_KEEP").is_some() {
            eprintln!(
                "keeping lab {} (SERVAL_CONFORMANCE_KEEP); remove it with `serval lab down --name {}`",
                self.name, self.name
            );
            return;
        }
        let o = serval(&["lab", "down", "--name", &self.name]);
        if !o.status.success() {
            eprintln!("lab down {} failed: {}", self.name, describe(&o));
        }
    }
}

/// Polls `attempt` until it reports success or `timeout` passes; returns the last outcome.
/// This waits for the agents to converge; it asserts nothing about how long they take.
pub fn converge<T>(
    timeout: Duration,
    mut attempt: impl FnMut() -> anyhow::Result<(bool, T)>,
) -> anyhow::Result<(bool, T)> {
    let deadline = Instant::now() + timeout;
    loop {
        let (ok, t) = attempt()?;
        if ok || Instant::now() >= deadline {
            return Ok((ok, t));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
