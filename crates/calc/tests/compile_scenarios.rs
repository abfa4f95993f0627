//! The policy scenarios of the conformance suite (tests/netpol: upstream Kubernetes
//! NetworkPolicy cases; tests/calico: tiers, Pass, Log, notNets, ICMP, named ports...) run
//! through the compiler: after every step, for each node of the standard cluster and each
//! family, the emulated BPF lookups on the incrementally recompiled policy give the
//! reference evaluator's decision (and deciding rule) for every leg of a local endpoint,
//! with every pod and node address as the remote, on each probe of the step; and the delta
//! from the previous step's compiled policy turns its maps into the new ones.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use serval_calc::compile::{
    self, CompiledPolicy, PolicyIndex, PolicyVerdict, RuleRef, diff, policy_port,
};
use serval_calc::evaluator::{DecidedBy, Evaluator, Packet};
use serval_calc::policy::{Direction, IpProto};
use serval_calc::scenarios::{Scenario, load_dir, test_cluster};
use serval_calc::{Model, desired_state};
use serval_model::types::Protocol;

/// `(protocol, dst port, icmp type and code)`.
type Probe = (IpProto, u16, Option<(u8, u8)>);

fn probe_packets(v4: bool, protocols: &[(u16, Protocol)]) -> Vec<Probe> {
    let mut v: Vec<Probe> = protocols
        .iter()
        .map(|(port, p)| (IpProto::from(*p), *port, None))
        .collect();
    // Echo requests too (the ICMP scenarios).
    v.push(if v4 {
        (IpProto::Icmp, 0, Some((8, 0)))
    } else {
        (IpProto::IcmpV6, 0, Some((128, 0)))
    });
    v
}

/// Every leg of `node`'s endpoints; the first mismatch as text.
fn check(
    model: &Model,
    ev: &Evaluator,
    node: &str,
    c: &CompiledPolicy,
    remotes: &[IpAddr],
    probes: &[(u16, Protocol)],
) -> Result<usize, String> {
    let index = PolicyIndex::new(c);
    let state = desired_state(model, Some(node));
    let mut n = 0;
    for (key, (ep, _)) in &state.endpoints {
        let ep_id = c.endpoints[key];
        for &local in &ep.addrs {
            for &remote in remotes
                .iter()
                .filter(|r| r.is_ipv4() == local.is_ipv4() && !ep.addrs.contains(r))
            {
                for (proto, port, icmp) in probe_packets(local.is_ipv4(), probes) {
                    for dir in [Direction::Ingress, Direction::Egress] {
                        let (src, dst) = match dir {
                            Direction::Ingress => (remote, local),
                            Direction::Egress => (local, remote),
                        };
                        let p = match icmp {
                            Some((t, code)) => Packet::icmp(src, dst, t, code),
                            None => Packet::l4(src, dst, proto, port),
                        };
                        let v = ev.evaluate(&p);
                        let leg = match dir {
                            Direction::Ingress => v.ingress.as_ref(),
                            Direction::Egress => v.egress.as_ref(),
                        };
                        // Legs decided before policy (a pod reaching its node) are not ours.
                        let Some(want) = leg else { continue };
                        let want_ref = match &want.by {
                            DecidedBy::Rule(id) => RuleRef::Rule(id.clone()),
                            DecidedBy::EndOfTier(t) => RuleRef::EndOfTier(t.clone()),
                            DecidedBy::NoPolicy => RuleRef::NoPolicy,
                            DecidedBy::PassedAllTiers => RuleRef::PassedAllTiers,
                            _ => continue,
                        };
                        // Through the source-port table when the decision depends on it
                        // (the source-ports scenario), as the program does.
                        let (verdict, rule) = index.lookup_with_sport(
                            ep_id,
                            dir,
                            remote,
                            p.protocol.number(),
                            p.src_port,
                            policy_port(p.protocol, p.dst_port, p.icmp),
                        );
                        if (verdict == PolicyVerdict::Allow) != want.allowed
                            || c.rules.get(&rule) != Some(&want_ref)
                        {
                            return Err(format!(
                                "{key} {dir:?} {src} -> {dst} {}/{}: evaluator {} by {want_ref}, compiled {verdict:?} by {:?}",
                                p.protocol,
                                p.dst_port,
                                want.allowed,
                                c.rules.get(&rule)
                            ));
                        }
                        n += 1;
                    }
                }
            }
        }
    }
    Ok(n)
}

fn delta_applies(old: &CompiledPolicy, new: &CompiledPolicy) -> bool {
    let d = diff(old, new);
    let mut entries: BTreeMap<_, _> = old.entries.iter().map(|e| (e.key(), *e)).collect();
    for e in &d.upsert_entries {
        entries.insert(e.key(), *e);
    }
    for e in &d.delete_entries {
        entries.remove(&e.key());
    }
    let mut ids: BTreeMap<_, _> = old.identities.iter().copied().collect();
    ids.extend(d.upsert_identities.iter().copied());
    for net in &d.delete_identities {
        ids.remove(net);
    }
    entries.into_values().collect::<Vec<_>>() == new.entries
        && ids.into_iter().collect::<Vec<_>>() == new.identities
}

fn run_dir(dir: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(dir);
    let scenarios: Vec<Scenario> =
        load_dir(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
    assert!(!scenarios.is_empty(), "no scenarios in {}", path.display());
    let mut checked = 0;
    for s in &scenarios {
        for family in [true, false] {
            let (resources, b4, b6) = test_cluster();
            let b = if family { b4 } else { b6 };
            let mut remotes: Vec<IpAddr> = b.pods.values().copied().collect();
            remotes.extend(b.nodes.iter().map(|(_, a)| *a));
            let mut model = Model::from_resources(resources);
            let mut previous: BTreeMap<String, CompiledPolicy> = BTreeMap::new();
            for i in 0..s.steps.len() {
                s.apply_step(&mut model, i, &b)
                    .unwrap_or_else(|e| panic!("{}: step {}: {e}", s.name, i + 1));
                let probes: Vec<(u16, Protocol)> = s.steps[i]
                    .expect
                    .iter()
                    .flat_map(|e| &e.probes)
                    .map(|p| (p.port, p.protocol))
                    .chain([(80, Protocol::Tcp)])
                    .collect();
                let ev = Evaluator::new(&model);
                for (node, _) in &b.nodes {
                    let prev = previous.remove(node).unwrap_or_default();
                    let c = compile::compile_incremental(&desired_state(&model, Some(node)), &prev);
                    match check(&model, &ev, node, &c, &remotes, &probes) {
                        Ok(n) => checked += n,
                        Err(e) => panic!("{} step {} on {node}: {e}", s.name, i + 1),
                    }
                    assert!(
                        delta_applies(&prev, &c),
                        "{} step {} on {node}: the delta does not reproduce the new maps",
                        s.name,
                        i + 1
                    );
                    previous.insert(node.clone(), c);
                }
            }
        }
    }
    assert!(checked > 1000, "only {checked} legs checked");
}

#[test]
fn netpol_scenarios_compile_to_the_evaluators_verdicts() {
    run_dir("netpol");
}

#[test]
fn calico_scenarios_compile_to_the_evaluators_verdicts() {
    run_dir("calico");
}
