//! Policy scenarios as data, shared by the unit tests (run against the evaluator) and the
//! lab conformance suite (run against a real lab, compared with both the expected table and
//! the evaluator).
//!
//! # The standard cluster
//!
//! As the upstream Kubernetes NetworkPolicy e2e tests: namespaces `x`, `y`, `z` (label
//! `ns: <name>`, plus the automatic `kubernetes.io/metadata.name`), each with pods `a`, `b`,
//! `c` (label `pod: <name>`) serving ports 80 and 81 over TCP, UDP and SCTP, the container
//! ports named `serve-<port>-<tcp|udp|sctp>`. [`standard_cluster_yaml`] writes it (without
//! addresses, for a lab); [`test_cluster`] adds addresses and two nodes for unit tests.
//!
//! # File format (`*.yaml`, one scenario per file)
//!
//! ```yaml
//! name: default-deny-ingress            # unique, used in test names
//! description: what upstream test this ports and why the table looks as it does
//! steps:                                # applied in order, each followed by its checks
//!   - description: optional
//!     apply: |                          # resources (multi-document YAML), templated
//!       apiVersion: networking.k8s.io/v1
//!       kind: NetworkPolicy
//!       ...
//!     delete:                           # resources to delete
//!       - {apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, namespace: x, name: p}
//!     label:                            # relabel pods or namespaces (set, then remove)
//!       - {kind: Pod, namespace: x, name: a, set: {role: web}, remove: [pod]}
//!     expect:                           # truth tables: every probe must give the table
//!       - probes: [{port: 80, protocol: TCP}, {port: 80, protocol: UDP}]
//!         table: |
//!           -   x/a x/b x/c y/a y/b y/c z/a z/b z/c
//!           x/a .   .   .   .   .   .   .   .   .
//!           ...
//!     checks:                           # single packets (ICMP, host endpoints, outside)
//!       - {from: x/a, to: "node:1", protocol: TCP, port: 22, allowed: true}
//! ```
//!
//! A step applies `apply`, then `delete`, then `label`, then checks `expect` and `checks`.
//! Probes with protocol SCTP can be checked only by the evaluator (the lab has no SCTP
//! sockets); the lab suite skips them.
//!
//! Tables use the form `serval lab matrix` prints: `.` reached, `X` not; rows are sources,
//! columns destinations; a pod always reaches itself (the packet never leaves it).
//!
//! Templates, expanded per IP family in `apply` and in `checks` addresses:
//! `${ns/pod}` — the pod's address as a host network (`/32` or `/128`); `${ns/pod/P4/P6}` —
//! the network of prefix length P4 (IPv4) or P6 (IPv6) holding the pod's address;
//! `${ip:ns/pod}` — the bare address; `${node:N}` — the name of the N-th node (1-based);
//! `${nodeip:N}` — its address. In `checks`, `from`/`to` are `ns/pod`, `node:N` (the node's
//! address) or a literal address.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serval_model::net::IpFamily;
use serval_model::types::Protocol;
use serval_model::{Kind, Resource, ResourceKey, ValidationErrors, parse_documents};

use crate::evaluator::{Evaluator, Matrix, MatrixError, Packet, expected_matrix};
use crate::model::Model;
use crate::policy::IpProto;

/// Namespaces of the standard cluster.
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// Pods in each namespace of the standard cluster.
pub const PODS: [&str; 3] = ["a", "b", "c"];
/// Ports every standard pod serves (TCP, UDP and SCTP).
pub const PORTS: [u16; 2] = [80, 81];

/// One scenario file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub steps: Vec<Step>,
    /// The file it was read from (set by the loader).
    #[serde(skip)]
    pub file: PathBuf,
}

/// One step: mutations, then checks.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    #[serde(default)]
    pub description: String,
    /// Resources to create or replace (multi-document YAML, templated).
    #[serde(default)]
    pub apply: String,
    #[serde(default)]
    pub delete: Vec<DeleteRef>,
    #[serde(default)]
    pub label: Vec<Relabel>,
    #[serde(default)]
    pub expect: Vec<Expectation>,
    #[serde(default)]
    pub checks: Vec<Check>,
}

/// A resource to delete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeleteRef {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub namespace: Option<String>,
    pub name: String,
}

/// What a relabel applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LabelTarget {
    Pod,
    Namespace,
}

/// Set and remove labels on a pod or namespace of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relabel {
    pub kind: LabelTarget,
    #[serde(default)]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A probe: port and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

/// Every probe must produce `table`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    pub probes: Vec<Probe>,
    pub table: String,
}

impl Expectation {
    pub fn matrix(&self) -> Result<Matrix, MatrixError> {
        Matrix::parse(&self.table)
    }
}

/// One packet and whether it must pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Check {
    pub from: String,
    pub to: String,
    /// TCP, UDP, SCTP, ICMP (ICMPv6 on IPv6).
    pub protocol: String,
    #[serde(default)]
    pub port: u16,
    /// Default: echo request (8, or 128 for ICMPv6).
    #[serde(default)]
    pub icmp_type: Option<u8>,
    #[serde(default)]
    pub icmp_code: Option<u8>,
    pub allowed: bool,
}

/// A scenario that cannot be read, or does not hold.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("reading scenario {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("scenario {path} is not valid: {source}")]
    Yaml {
        path: PathBuf,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("scenario {scenario} step {step}: the resources do not validate:\n{source}")]
    Resources {
        scenario: String,
        step: usize,
        #[source]
        source: ValidationErrors,
    },
    #[error("scenario {scenario} step {step}: table {index}: {source}")]
    Table {
        scenario: String,
        step: usize,
        index: usize,
        #[source]
        source: MatrixError,
    },
    #[error(
        "scenario {scenario}: unknown template {placeholder:?}; use ${{ns/pod}}, ${{ns/pod/P4/P6}}, ${{ip:ns/pod}}, ${{node:N}} or ${{nodeip:N}}"
    )]
    Template {
        scenario: String,
        placeholder: String,
    },
    #[error("scenario {scenario}: unknown kind {api_version} {kind} in delete")]
    Kind {
        scenario: String,
        api_version: String,
        kind: String,
    },
    #[error(
        "scenario {scenario}: {what} {name} does not exist; relabel only existing pods and namespaces"
    )]
    Missing {
        scenario: String,
        what: &'static str,
        name: String,
    },
    #[error("scenario {scenario}: check {from} -> {to}: {why}")]
    Check {
        scenario: String,
        from: String,
        to: String,
        why: String,
    },
    #[error("two scenarios are named {name}: {first} and {second}")]
    Duplicate {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
}

/// Addresses for one IP family: what templates expand to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bindings {
    pub family: Option<IpFamily>,
    /// `ns/pod` → address of the family.
    pub pods: BTreeMap<String, IpAddr>,
    /// Nodes in order: name and address of the family.
    pub nodes: Vec<(String, IpAddr)>,
}

impl Bindings {
    /// Expands every `${...}` in `text`.
    pub fn render(&self, scenario: &str, text: &str) -> Result<String, ScenarioError> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            let Some(end) = after.find('}') else {
                return Err(ScenarioError::Template {
                    scenario: scenario.to_string(),
                    placeholder: after.to_string(),
                });
            };
            let ph = &after[..end];
            let value = self.expand(ph).ok_or_else(|| ScenarioError::Template {
                scenario: scenario.to_string(),
                placeholder: ph.to_string(),
            })?;
            out.push_str(&value);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn node(&self, n: &str) -> Option<&(String, IpAddr)> {
        let i: usize = n.parse().ok()?;
        self.nodes.get(i.checked_sub(1)?)
    }

    fn expand(&self, ph: &str) -> Option<String> {
        if let Some(n) = ph.strip_prefix("node:") {
            return self.node(n).map(|(name, _)| name.clone());
        }
        if let Some(n) = ph.strip_prefix("nodeip:") {
            return self.node(n).map(|(_, a)| a.to_string());
        }
        if let Some(p) = ph.strip_prefix("ip:") {
            return self.pods.get(p).map(IpAddr::to_string);
        }
        let parts: Vec<&str> = ph.split('/').collect();
        match parts.as_slice() {
            [ns, pod] => self
                .pods
                .get(&format!("{ns}/{pod}"))
                .map(|a| IpNet::from(*a).to_string()),
            [ns, pod, p4, p6] => {
                let a = self.pods.get(&format!("{ns}/{pod}"))?;
                let len: u8 = if a.is_ipv4() {
                    p4.parse().ok()?
                } else {
                    p6.parse().ok()?
                };
                Some(IpNet::new(*a, len).ok()?.trunc().to_string())
            }
            _ => None,
        }
    }

    /// Resolves a check endpoint: `ns/pod`, `node:N` or an address.
    pub fn address(&self, s: &str) -> Option<IpAddr> {
        if let Some(n) = s.strip_prefix("node:") {
            return self.node(n).map(|(_, a)| *a);
        }
        if let Ok(a) = s.parse() {
            return Some(a);
        }
        self.pods.get(s).copied()
    }
}

/// `(ns, pod)` of the standard cluster, in table order.
pub fn standard_pods() -> Vec<(String, String)> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| (ns.to_string(), p.to_string())))
        .collect()
}

fn pod_yaml(ns: &str, pod: &str, node: Option<&str>, ips: &[IpAddr]) -> String {
    let mut ports = String::new();
    for port in PORTS {
        for proto in ["TCP", "UDP", "SCTP"] {
            ports.push_str(&format!(
                "    - {{name: serve-{port}-{}, containerPort: {port}, protocol: {proto}}}\n",
                proto.to_lowercase()
            ));
        }
    }
    let mut y = format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\n  namespace: {ns}\n  labels:\n    pod: {pod}\nspec:\n"
    );
    if let Some(n) = node {
        y.push_str(&format!("  nodeName: {n}\n"));
    }
    y.push_str(&format!(
        "  containers:\n  - name: cont-{pod}\n    ports:\n{ports}"
    ));
    if !ips.is_empty() {
        y.push_str("status:\n  phase: Running\n  podIPs:\n");
        for ip in ips {
            y.push_str(&format!("  - ip: \"{ip}\"\n"));
        }
    }
    y
}

/// The standard cluster's namespaces and pods, without addresses or nodes (for a lab, which
/// schedules and addresses them itself).
pub fn standard_cluster_yaml() -> String {
    let mut y = String::new();
    for ns in NAMESPACES {
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    ns: {ns}\n"
        ));
    }
    for (ns, pod) in standard_pods() {
        y.push_str(&pod_yaml(&ns, &pod, None, &[]));
    }
    y
}

/// The standard cluster for unit tests: two nodes `node-1` (192.168.0.1, fd00:192::1) and
/// `node-2`; pod `ns/p` (namespace index i, pod index j) at 10.0.i.(j+1) and fd00:10::i:(j+1),
/// on node `1 + (j % 2)`. Returns the resources and the bindings of each family.
pub fn test_cluster() -> (Vec<Resource>, Bindings, Bindings) {
    let nodes = [
        ("node-1", [192, 168, 0, 1], "fd00:192::1"),
        ("node-2", [192, 168, 0, 2], "fd00:192::2"),
    ];
    let mut y = String::new();
    let (mut b4, mut b6) = (
        Bindings {
            family: Some(IpFamily::V4),
            ..Bindings::default()
        },
        Bindings {
            family: Some(IpFamily::V6),
            ..Bindings::default()
        },
    );
    for (name, v4, v6) in nodes {
        let v4 = IpAddr::from(v4);
        let v6: IpAddr = v6.parse().unwrap_or(IpAddr::from([0u16; 8]));
        y.push_str(&format!(
            "---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: {name}\nspec:\n  bgp:\n    ipv4Address: {v4}/24\n    ipv6Address: {v6}/64\n"
        ));
        b4.nodes.push((name.to_string(), v4));
        b6.nodes.push((name.to_string(), v6));
    }
    for (i, ns) in NAMESPACES.iter().enumerate() {
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    ns: {ns}\n"
        ));
        for (j, pod) in PODS.iter().enumerate() {
            let v4 = IpAddr::from([10, 0, i as u8, j as u8 + 1]);
            let v6 = IpAddr::from([0xfd00, 0x10, 0, 0, 0, 0, i as u16, j as u16 + 1]);
            let node = nodes[j % 2].0;
            y.push_str(&pod_yaml(ns, pod, Some(node), &[v4, v6]));
            b4.pods.insert(format!("{ns}/{pod}"), v4);
            b6.pods.insert(format!("{ns}/{pod}"), v6);
        }
    }
    let resources = parse_documents("standard test cluster", &y)
        .unwrap_or_else(|e| panic!("the built-in test cluster must parse: {e}"));
    (resources, b4, b6)
}

/// Reads every `*.yaml` scenario in `dir`, sorted by file name, and checks each parses
/// (tables included; templates are checked when rendered).
pub fn load_dir(dir: &Path) -> Result<Vec<Scenario>, ScenarioError> {
    let io = |source| ScenarioError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(io)?
        .into_iter()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut out: Vec<Scenario> = Vec::new();
    for f in files {
        let s = load_file(&f)?;
        if let Some(prev) = out.iter().find(|p| p.name == s.name) {
            return Err(ScenarioError::Duplicate {
                name: s.name,
                first: prev.file.clone(),
                second: f,
            });
        }
        out.push(s);
    }
    Ok(out)
}

/// Reads one scenario file.
pub fn load_file(path: &Path) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut s: Scenario = serde_yaml_ng::from_str(&text).map_err(|source| ScenarioError::Yaml {
        path: path.to_path_buf(),
        source,
    })?;
    s.file = path.to_path_buf();
    for (i, step) in s.steps.iter().enumerate() {
        for (j, e) in step.expect.iter().enumerate() {
            e.matrix().map_err(|source| ScenarioError::Table {
                scenario: s.name.clone(),
                step: i + 1,
                index: j + 1,
                source,
            })?;
        }
    }
    Ok(s)
}

/// One table or check that the evaluator disagrees with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub step: usize,
    pub what: String,
    pub expected: String,
    pub actual: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "step {}: {}\nexpected:\n{}\nevaluator:\n{}",
            self.step, self.what, self.expected, self.actual
        )
    }
}

fn parse_proto(s: &str, v4: bool) -> Option<IpProto> {
    Some(match s.to_ascii_uppercase().as_str() {
        "TCP" => IpProto::Tcp,
        "UDP" => IpProto::Udp,
        "SCTP" => IpProto::Sctp,
        "ICMP" | "ICMPV6" => {
            if v4 {
                IpProto::Icmp
            } else {
                IpProto::IcmpV6
            }
        }
        _ => return None,
    })
}

impl Scenario {
    /// Applies step `i`'s mutations to `model`.
    pub fn apply_step(
        &self,
        model: &mut Model,
        i: usize,
        b: &Bindings,
    ) -> Result<(), ScenarioError> {
        let step = &self.steps[i];
        if !step.apply.trim().is_empty() {
            let text = b.render(&self.name, &step.apply)?;
            let rs =
                parse_documents(&self.name, &text).map_err(|source| ScenarioError::Resources {
                    scenario: self.name.clone(),
                    step: i + 1,
                    source,
                })?;
            for r in rs {
                model.apply(r);
            }
        }
        for d in &step.delete {
            let kind =
                Kind::from_type(&d.api_version, &d.kind).ok_or_else(|| ScenarioError::Kind {
                    scenario: self.name.clone(),
                    api_version: d.api_version.clone(),
                    kind: d.kind.clone(),
                })?;
            model.remove(&ResourceKey::new(kind, d.namespace.as_deref(), &d.name));
        }
        for l in &step.label {
            let missing = |what| ScenarioError::Missing {
                scenario: self.name.clone(),
                what,
                name: format!("{}/{}", l.namespace.as_deref().unwrap_or(""), l.name),
            };
            let mut r = match l.kind {
                LabelTarget::Pod => Resource::Pod(
                    model
                        .pods
                        .get(&(l.namespace.clone().unwrap_or_default(), l.name.clone()))
                        .cloned()
                        .ok_or_else(|| missing("pod"))?,
                ),
                LabelTarget::Namespace => Resource::Namespace(
                    model
                        .namespaces
                        .get(&l.name)
                        .cloned()
                        .ok_or_else(|| missing("namespace"))?,
                ),
            };
            let labels = &mut r.meta_mut().labels;
            labels.extend(l.set.clone());
            for k in &l.remove {
                labels.remove(k);
            }
            model.apply(r);
        }
        Ok(())
    }

    /// Runs the scenario against the evaluator on the [`test_cluster`] for one family;
    /// returns every disagreement (empty when the scenario holds).
    pub fn run_with_evaluator(&self, family: IpFamily) -> Result<Vec<Failure>, ScenarioError> {
        let (resources, b4, b6) = test_cluster();
        let b = if family == IpFamily::V4 { b4 } else { b6 };
        let mut model = Model::from_resources(resources);
        let pods = standard_pods();
        let mut failures = Vec::new();
        for i in 0..self.steps.len() {
            self.apply_step(&mut model, i, &b)?;
            let step = &self.steps[i];
            for (j, e) in step.expect.iter().enumerate() {
                let want = e.matrix().map_err(|source| ScenarioError::Table {
                    scenario: self.name.clone(),
                    step: i + 1,
                    index: j + 1,
                    source,
                })?;
                for p in &e.probes {
                    let got = expected_matrix(&model, &pods, p.port, p.protocol.into(), family);
                    if !want.mismatches(&got).is_empty() {
                        failures.push(Failure {
                            step: i + 1,
                            what: format!("port {}/{} ({family})", p.port, p.protocol),
                            expected: want.table(),
                            actual: got.table(),
                        });
                    }
                }
            }
            let ev = Evaluator::new(&model);
            for c in &step.checks {
                let bad = |why: String| ScenarioError::Check {
                    scenario: self.name.clone(),
                    from: c.from.clone(),
                    to: c.to.clone(),
                    why,
                };
                let src = b
                    .address(&b.render(&self.name, &c.from)?)
                    .ok_or_else(|| bad("unknown source".into()))?;
                let dst = b
                    .address(&b.render(&self.name, &c.to)?)
                    .ok_or_else(|| bad("unknown destination".into()))?;
                let proto = parse_proto(&c.protocol, src.is_ipv4())
                    .ok_or_else(|| bad(format!("unknown protocol {:?}", c.protocol)))?;
                let mut p = Packet::l4(src, dst, proto, c.port);
                if matches!(proto, IpProto::Icmp | IpProto::IcmpV6) {
                    let echo = if src.is_ipv4() { 8 } else { 128 };
                    p.icmp = Some((c.icmp_type.unwrap_or(echo), c.icmp_code.unwrap_or(0)));
                }
                let v = ev.evaluate(&p);
                if v.allowed != c.allowed {
                    failures.push(Failure {
                        step: i + 1,
                        what: format!(
                            "{} -> {} {} {} ({family})",
                            c.from, c.to, c.protocol, c.port
                        ),
                        expected: if c.allowed { "allowed" } else { "denied" }.to_string(),
                        actual: v.reason,
                    });
                }
            }
        }
        Ok(failures)
    }
}
