//! Runs the calc engineer's policy scenario files (`crates/calc/tests/{netpol,calico}/*.yaml`,
//! read with [`serval_calc::scenarios`]) in a lab holding the standard x/y/z × a/b/c
//! cluster.
//!
//! For each scenario: reset (delete every policy, tier and host endpoint, restore labels and
//! the FelixConfiguration, wait until the lab is all-reachable again), then per step apply
//! its mutations to the lab's datastore and, for every expected table × probe × family:
//! 1. the reference evaluator, on the model read back from the lab (the lab's real pod
//!    addresses and nodes), must give the scenario's table;
//! 2. `serval lab matrix` must converge to it within [`converge_timeout`] (polling: waiting
//!    for the agents to program, not a timing assertion).
//!
//! On a mismatch all three tables are printed (expected, evaluator, lab) with the failing
//! probes. Single-packet `checks` run in the lab where the lab can send them (TCP/UDP to a
//! pod's served port or to a node, where an echo server is started; ICMP echo requests) and
//! always against the evaluator. Scenarios whose resources use address templates run once per
//! family (the rendered CIDRs are of one family); the others check both families in one pass.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serval_calc::evaluator::{Evaluator, Matrix, Packet, expected_matrix};
use serval_calc::policy::IpProto;
use serval_calc::scenarios::{
    Bindings, Check, LabelTarget, NAMESPACES, PODS, Scenario, load_dir, standard_cluster_yaml,
    standard_pods,
};
use serval_model::net::IpFamily;
use serval_model::types::Protocol;
use serval_model::{Kind, Resource, ResourceKey, parse_documents};

use crate::echo::ping;
use crate::lab::{Lab, LabMatrix, PROBE_TIMEOUT_MS, converge, converge_timeout};

/// Ports the standard pods' servers answer on.
const SERVED: [u16; 2] = [80, 81];

/// The scenario directory `dir` (`netpol`, `calico`) of the calc crate.
pub fn calc_scenarios(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../calc/tests")
        .join(dir)
}

/// Loads a scenario directory, keeping only the names `SERVAL_CONFORMANCE_ONLY`
/// (comma-separated substrings) selects, when set.
pub fn load(dir: &Path) -> anyhow::Result<Vec<Scenario>> {
    let all = load_dir(dir).with_context(|| format!("loading {}", dir.display()))?;
    Ok(match std::env::var("SERVAL_CONFORMANCE_ONLY") {
        Ok(only) if !only.is_empty() => all
            .into_iter()
            .filter(|s| only.split(',').any(|o| s.name.contains(o.trim())))
            .collect(),
        _ => all,
    })
}

/// The standard cluster for a lab, placed like [`serval_calc::scenarios::test_cluster`]:
/// pods `a` and `c` on node1, `b` on node2 (scenarios such as host-endpoint-failsafe depend
/// on where x/a and x/b run).
pub fn standard_cluster() -> anyhow::Result<Vec<Resource>> {
    let mut rs = parse_documents("standard cluster", &standard_cluster_yaml())?;
    for r in &mut rs {
        if let Resource::Pod(p) = r {
            let j = PODS
                .iter()
                .position(|n| *n == p.metadata.name)
                .context("standard pod")?;
            p.spec.node_name = Some(format!("node{}", 1 + j % 2));
        }
    }
    Ok(rs)
}

/// A dual-stack lab with the standard cluster, and what a reset restores.
pub struct PolicyLab {
    pub lab: Lab,
    baseline: Vec<Resource>,
}

/// What one scenario did.
#[derive(Debug, Default)]
pub struct ScenarioReport {
    pub name: String,
    pub file: PathBuf,
    pub failures: Vec<String>,
    /// What could only be checked against the evaluator, not in the lab.
    pub evaluator_only: Vec<String>,
    pub elapsed: Duration,
}

fn label_key(kind: LabelTarget, ns: Option<&str>, name: &str) -> ResourceKey {
    match kind {
        LabelTarget::Pod => ResourceKey::new(Kind::Pod, ns, name),
        LabelTarget::Namespace => ResourceKey::new(Kind::Namespace, None, name),
    }
}

/// A matrix job: one probe of one family.
#[derive(Debug, Clone, Copy)]
struct Job {
    port: u16,
    protocol: Protocol,
    family: IpFamily,
}

/// The three tables of a mismatch, side by side in one message.
pub fn tables(expected: &Matrix, evaluator: &Matrix, lab: Option<&LabMatrix>) -> String {
    let mut out = format!("expected:\n{expected}evaluator:\n{evaluator}");
    for m in expected.mismatches(evaluator) {
        out.push_str(&format!(
            "  the evaluator differs at {} -> {}: expected {}\n",
            m.from,
            m.to,
            if m.expected { "." } else { "X" }
        ));
    }
    if let Some(l) = lab {
        out.push_str(&format!("lab:\n{}", l.matrix));
        let why = l.explain(expected);
        if !why.is_empty() {
            out.push_str(&format!("failing probes:\n{why}"));
        }
        for w in l.wrong_replies() {
            out.push_str(&format!("wrong pod answered: {w}\n"));
        }
    }
    out
}

impl PolicyLab {
    /// Brings up a dual-stack, 2-node lab with the standard cluster.
    pub fn up(tag: &str) -> anyhow::Result<PolicyLab> {
        let lab = Lab::up(tag, &["--ip-family", "dual", "--nodes", "2"])?;
        lab.apply(standard_cluster()?)?;
        lab.wait_pods()?;
        let mut baseline = Vec::new();
        for ns in NAMESPACES {
            baseline.extend(lab.get(&ResourceKey::new(Kind::Namespace, None, ns))?);
            for pod in PODS {
                baseline.extend(lab.get(&ResourceKey::new(Kind::Pod, Some(ns), pod))?);
            }
        }
        baseline.extend(lab.get(&ResourceKey::new(Kind::FelixConfiguration, None, "default"))?);
        anyhow::ensure!(
            baseline.len() == NAMESPACES.len() * (1 + PODS.len()) + 1,
            "the standard cluster or the FelixConfiguration is missing in lab {}",
            lab.name
        );
        Ok(PolicyLab { lab, baseline })
    }

    /// Deletes every policy, tier and host endpoint; restores labels and the
    /// FelixConfiguration; waits until TCP 80 is all-reachable again (as the evaluator says)
    /// over both families.
    pub fn reset(&self) -> anyhow::Result<()> {
        let mut keys = Vec::new();
        for kind in [
            Kind::K8sNetworkPolicy,
            Kind::NetworkPolicy,
            Kind::GlobalNetworkPolicy,
            Kind::HostEndpoint,
            Kind::Tier,
        ] {
            keys.extend(self.lab.list(kind)?.iter().map(Resource::key));
        }
        keys.retain(|k| !(k.kind == Kind::Tier && k.name == "default"));
        self.lab.delete(&keys)?;
        let mut restore = Vec::new();
        for base in &self.baseline {
            let now = self.lab.get(&base.key())?;
            let same = match (&now, base) {
                (Some(Resource::FelixConfiguration(a)), Resource::FelixConfiguration(b)) => {
                    a.spec == b.spec
                }
                (Some(n), b) => n.meta().labels == b.meta().labels,
                (None, _) => false,
            };
            if !same {
                let mut r = base.clone();
                r.meta_mut().resource_version = None;
                restore.push(r);
            }
        }
        if !restore.is_empty() {
            self.lab.apply(restore)?;
        }
        let model = self.lab.model()?;
        let pods = standard_pods();
        let mut stale = Vec::new();
        std::thread::scope(|s| {
            let handles: Vec<_> = [IpFamily::V4, IpFamily::V6]
                .into_iter()
                .map(|family| {
                    let want = expected_matrix(&model, &pods, 80, IpProto::Tcp, family);
                    let lab = &self.lab;
                    s.spawn(move || {
                        let r = converge(converge_timeout(), || {
                            let got = lab.matrix(80, Protocol::Tcp, family)?;
                            Ok((want.mismatches(&got.matrix).is_empty(), got))
                        });
                        (family, want, r)
                    })
                })
                .collect();
            for h in handles {
                match h.join() {
                    Ok((_, _, Ok((true, _)))) => {}
                    Ok((family, want, Ok((false, got)))) => stale.push(format!(
                        "after the reset, TCP 80 over {family} is not back to the evaluator's table:\n{}",
                        tables(&want, &want, Some(&got))
                    )),
                    Ok((family, _, Err(e))) => stale.push(format!("{family}: {e:#}")),
                    Err(_) => stale.push("a matrix thread panicked".into()),
                }
            }
        });
        anyhow::ensure!(stale.is_empty(), "{}", stale.join("\n"));
        Ok(())
    }

    /// Applies step `i`'s mutations to the lab.
    fn apply_step(&self, s: &Scenario, i: usize, b: &Bindings) -> anyhow::Result<()> {
        let step = &s.steps[i];
        if !step.apply.trim().is_empty() {
            let text = b.render(&s.name, &step.apply)?;
            self.lab.apply_yaml(&s.name, &text)?;
        }
        let mut keys = Vec::new();
        for d in &step.delete {
            let kind = Kind::from_type(&d.api_version, &d.kind)
                .with_context(|| format!("unknown kind {} {}", d.api_version, d.kind))?;
            keys.push(ResourceKey::new(kind, d.namespace.as_deref(), &d.name));
        }
        if !keys.is_empty() {
            self.lab.delete(&keys)?;
        }
        let mut relabelled = Vec::new();
        for l in &step.label {
            let key = label_key(l.kind, l.namespace.as_deref(), &l.name);
            let mut r = self
                .lab
                .get(&key)?
                .with_context(|| format!("relabel: {key:?} does not exist in the lab"))?;
            let labels = &mut r.meta_mut().labels;
            labels.extend(l.set.clone());
            for k in &l.remove {
                labels.remove(k);
            }
            r.meta_mut().resource_version = None;
            relabelled.push(r);
        }
        if !relabelled.is_empty() {
            self.lab.apply(relabelled)?;
        }
        Ok(())
    }

    /// Runs one scenario (after a reset).
    pub fn run(&self, s: &Scenario) -> ScenarioReport {
        let start = Instant::now();
        let mut rep = ScenarioReport {
            name: s.name.clone(),
            file: s.file.clone(),
            ..ScenarioReport::default()
        };
        let templated = s.steps.iter().any(|st| st.apply.contains("${"));
        let passes: Vec<(IpFamily, Vec<IpFamily>)> = if templated {
            vec![
                (IpFamily::V4, vec![IpFamily::V4]),
                (IpFamily::V6, vec![IpFamily::V6]),
            ]
        } else {
            vec![(IpFamily::V4, vec![IpFamily::V4, IpFamily::V6])]
        };
        for (bfam, fams) in passes {
            if let Err(e) = self.run_pass(s, bfam, &fams, &mut rep) {
                rep.failures.push(format!("({bfam} pass) {e:#}"));
            }
        }
        rep.elapsed = start.elapsed();
        rep
    }

    fn run_pass(
        &self,
        s: &Scenario,
        bfam: IpFamily,
        fams: &[IpFamily],
        rep: &mut ScenarioReport,
    ) -> anyhow::Result<()> {
        self.reset().context("reset before the scenario")?;
        let b = self.lab.bindings(bfam)?;
        let pods = standard_pods();
        for i in 0..s.steps.len() {
            let step = &s.steps[i];
            let what = if step.description.is_empty() {
                format!("step {}", i + 1)
            } else {
                format!("step {} ({})", i + 1, step.description)
            };
            self.apply_step(s, i, &b)
                .with_context(|| format!("{what}: applying to the lab"))?;
            let model = self.lab.model()?;
            let before = rep.failures.len();

            // Tables: evaluator first (all protocols), then the lab (TCP/UDP).
            let mut lab_jobs = Vec::new();
            for (k, e) in step.expect.iter().enumerate() {
                let want = e.matrix()?;
                for p in &e.probes {
                    for &family in fams {
                        let ev = expected_matrix(&model, &pods, p.port, p.protocol.into(), family);
                        let job = Job {
                            port: p.port,
                            protocol: p.protocol,
                            family,
                        };
                        if !want.mismatches(&ev).is_empty() {
                            rep.failures.push(format!(
                                "{what}, table {}, {}/{:?} over {family}: the evaluator (on the lab's model) disagrees with the scenario\n{}",
                                k + 1,
                                p.port,
                                p.protocol,
                                tables(&want, &ev, None)
                            ));
                        }
                        if p.protocol == Protocol::Sctp {
                            rep.evaluator_only.push(format!(
                                "{what}: SCTP {} over {family} (no SCTP sockets to probe)",
                                p.port
                            ));
                            continue;
                        }
                        lab_jobs.push((k, job, want.clone(), ev));
                    }
                }
            }
            let outcomes: Vec<_> = std::thread::scope(|sc| {
                let handles: Vec<_> = lab_jobs
                    .iter()
                    .map(|(_, job, want, _)| {
                        let lab = &self.lab;
                        sc.spawn(move || {
                            converge(converge_timeout(), || {
                                let got = lab.matrix(job.port, job.protocol, job.family)?;
                                let ok = want.mismatches(&got.matrix).is_empty()
                                    && got.wrong_replies().is_empty();
                                Ok((ok, got))
                            })
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("matrix thread panicked")))
                    })
                    .collect()
            });
            for ((k, job, want, ev), out) in lab_jobs.iter().zip(outcomes) {
                match out {
                    Ok((true, _)) => {}
                    Ok((false, got)) => rep.failures.push(format!(
                        "{what}, table {}, {}/{:?} over {}: the lab does not give the table (waited {:?} for the agents)\n{}",
                        k + 1,
                        job.port,
                        job.protocol,
                        job.family,
                        converge_timeout(),
                        tables(want, ev, Some(&got))
                    )),
                    Err(e) => rep.failures.push(format!("{what}: lab matrix: {e:#}")),
                }
            }

            for c in &step.checks {
                for &family in fams {
                    if let Err(e) = self.check(s, &what, c, &b, &model, family, rep) {
                        rep.failures.push(format!(
                            "{what}: check {} -> {} {} {}: {e:#}",
                            c.from, c.to, c.protocol, c.port
                        ));
                    }
                }
            }
            if rep.failures.len() > before {
                // Later steps build on this one; do not pile up consequential failures.
                rep.failures.push(format!(
                    "{what} failed: the scenario's later steps were not run"
                ));
                break;
            }
        }
        Ok(())
    }

    /// One single-packet check: against the evaluator, and in the lab where it can be sent.
    #[expect(
        clippy::too_many_arguments,
        reason = "the check's whole context, used once"
    )]
    fn check(
        &self,
        s: &Scenario,
        what: &str,
        c: &Check,
        b: &Bindings,
        model: &serval_calc::Model,
        family: IpFamily,
        rep: &mut ScenarioReport,
    ) -> anyhow::Result<()> {
        // The bindings of this family (a non-templated scenario checks both families with
        // the first family's bindings).
        let fb;
        let b = if b.family == Some(family) {
            b
        } else {
            fb = self.lab.bindings(family)?;
            &fb
        };
        let from = b.render(&s.name, &c.from)?;
        let to = b.render(&s.name, &c.to)?;
        let src = b.address(&from).context("unknown source")?;
        let dst = b.address(&to).context("unknown destination")?;
        let label = format!(
            "{what}: {} -> {} {} {} over {family}",
            c.from, c.to, c.protocol, c.port
        );
        let proto = c.protocol.to_ascii_uppercase();
        let icmp = proto == "ICMP" || proto == "ICMPV6";
        let echo = if family == IpFamily::V4 { 8 } else { 128 };

        // The evaluator on the lab's model.
        let ip_proto = match proto.as_str() {
            "TCP" => IpProto::Tcp,
            "UDP" => IpProto::Udp,
            "SCTP" => IpProto::Sctp,
            _ if icmp && family == IpFamily::V4 => IpProto::Icmp,
            _ if icmp => IpProto::IcmpV6,
            other => anyhow::bail!("unknown protocol {other}"),
        };
        let mut p = Packet::l4(src, dst, ip_proto, c.port);
        if icmp {
            p.icmp = Some((c.icmp_type.unwrap_or(echo), c.icmp_code.unwrap_or(0)));
        }
        let v = Evaluator::new(model).evaluate(&p);
        if v.allowed != c.allowed {
            rep.failures.push(format!(
                "{label}: expected {}, the evaluator (on the lab's model) says: {}",
                if c.allowed { "allowed" } else { "denied" },
                v.reason
            ));
        }

        // The lab: who sends?
        let source = if let Some(n) = from.strip_prefix("node:") {
            let i: usize = n.parse().context("node:N")?;
            b.nodes.get(i.saturating_sub(1)).map(|(n, _)| n.clone())
        } else if from.contains('/') && b.pods.contains_key(&from) {
            Some(from.clone())
        } else {
            None
        };
        let Some(source) = source else {
            rep.evaluator_only
                .push(format!("{label}: the lab cannot send from {from}"));
            return Ok(());
        };
        let to_node = to.strip_prefix("node:").and_then(|n| {
            let i: usize = n.parse().ok()?;
            b.nodes.get(i.checked_sub(1)?).map(|(n, _)| n.clone())
        });
        let reached = if icmp {
            if c.icmp_type.is_some_and(|t| t != echo) || c.icmp_code.is_some_and(|c| c != 0) {
                rep.evaluator_only.push(format!(
                    "{label}: ICMP type {:?} code {:?} (the lab sends echo requests only)",
                    c.icmp_type, c.icmp_code
                ));
                return Ok(());
            }
            let netns = self.lab.netns(&source);
            converge(converge_timeout(), || {
                let got = ping(&netns, dst, Duration::from_millis(PROBE_TIMEOUT_MS))?;
                Ok((got == c.allowed, got))
            })?
            .1
        } else {
            let protocol = match ip_proto {
                IpProto::Tcp => Protocol::Tcp,
                IpProto::Udp => Protocol::Udp,
                _ => {
                    rep.evaluator_only
                        .push(format!("{label}: no SCTP sockets to probe"));
                    return Ok(());
                }
            };
            if let Some(node) = &to_node {
                self.lab.ensure_echo(node, protocol, c.port)?;
            } else if !SERVED.contains(&c.port) {
                rep.evaluator_only.push(format!(
                    "{label}: nothing serves port {} on {to} in the lab",
                    c.port
                ));
                return Ok(());
            }
            let dst_s = dst.to_string();
            let (_, out) = converge(converge_timeout(), || {
                let o = self
                    .lab
                    .probe(&source, &dst_s, c.port, protocol, PROBE_TIMEOUT_MS)?;
                Ok((o.reached == c.allowed, o))
            })?;
            if out.reached != c.allowed {
                rep.failures.push(format!(
                    "{label}: expected {}, the lab: {} (waited {:?}); probe: {}",
                    if c.allowed { "reached" } else { "not reached" },
                    if out.reached {
                        "reached"
                    } else {
                        "not reached"
                    },
                    converge_timeout(),
                    out.raw
                ));
            }
            return Ok(());
        };
        if reached != c.allowed {
            rep.failures.push(format!(
                "{label}: expected the echo request to be {}, the lab: {} (waited {:?})",
                if c.allowed { "answered" } else { "dropped" },
                if reached { "answered" } else { "not answered" },
                converge_timeout()
            ));
        }
        Ok(())
    }
}

/// Runs every scenario of `dir` in one lab, prints a summary, and returns the lab (for more
/// checks) and the reports.
pub fn run_group(tag: &str, dir: &str) -> anyhow::Result<(PolicyLab, Vec<ScenarioReport>)> {
    let scenarios = load(&calc_scenarios(dir))?;
    let start = Instant::now();
    let lab = PolicyLab::up(tag)?;
    eprintln!(
        "{dir}: lab {} with the standard cluster ready in {:.1}s",
        lab.lab.name,
        start.elapsed().as_secs_f64()
    );
    let mut reports = Vec::new();
    for s in &scenarios {
        let r = lab.run(s);
        eprintln!(
            "{dir}: {:<45} {} ({:.1}s)",
            r.name,
            if r.failures.is_empty() {
                "ok"
            } else {
                "FAILED"
            },
            r.elapsed.as_secs_f64()
        );
        reports.push(r);
    }
    eprintln!("{dir}: {:.1}s in all", start.elapsed().as_secs_f64());
    Ok((lab, reports))
}

/// `s` with one cell of its first table flipped: a scenario the lab and the evaluator must
/// both fail (the suite's check that it can fail, and of what it prints).
pub fn mutant(s: &Scenario, from: &str, to: &str) -> anyhow::Result<Scenario> {
    let mut m = s.clone();
    m.name = format!("{}-mutant", s.name);
    let e = m
        .steps
        .first_mut()
        .and_then(|st| st.expect.first_mut())
        .context("the scenario has no table")?;
    let mut t = e.matrix()?;
    let i = t
        .pods
        .iter()
        .position(|p| p == from)
        .context("no such row")?;
    let j = t
        .pods
        .iter()
        .position(|p| p == to)
        .context("no such column")?;
    t.reachable[i][j] = !t.reachable[i][j];
    e.table = t.table();
    Ok(m)
}

/// Panics with every failure of `reports` (the files named, the tables printed); lists what
/// was checked against the evaluator only.
pub fn assert_reports(group: &str, reports: &[ScenarioReport]) {
    let mut only: BTreeMap<&str, &Vec<String>> = BTreeMap::new();
    for r in reports {
        if !r.evaluator_only.is_empty() {
            only.insert(&r.name, &r.evaluator_only);
        }
    }
    for (name, notes) in only {
        for n in notes {
            eprintln!("{group}: {name}: evaluator only: {n}");
        }
    }
    let failed: Vec<&ScenarioReport> = reports.iter().filter(|r| !r.failures.is_empty()).collect();
    if failed.is_empty() {
        return;
    }
    let mut msg = format!(
        "{} of {} {group} scenarios failed: {}\n",
        failed.len(),
        reports.len(),
        failed
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for r in failed {
        msg.push_str(&format!("\n===== {} ({})\n", r.name, r.file.display()));
        for f in &r.failures {
            msg.push_str(f);
            msg.push('\n');
        }
    }
    panic!("{msg}");
}

/// The address of `ns/pod` of `family` in the lab's model.
pub fn pod_addr(model: &serval_calc::Model, id: &str, family: IpFamily) -> Option<IpAddr> {
    let (ns, pod) = id.split_once('/')?;
    model
        .endpoints()
        .into_iter()
        .find(|e| e.namespace == ns && e.pod == pod)?
        .addrs
        .into_iter()
        .find(|a| IpFamily::of_addr(a) == family)
}
