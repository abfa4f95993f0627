//! Property test: for random Calico tiers, NetworkPolicies and GlobalNetworkPolicies on the
//! standard cluster, the evaluator (compiled rules over ip sets) agrees with a direct reading
//! of Calico's semantics over the resources: tiers by order, policies by order then name,
//! first Allow/Deny decides, Log goes on, Pass leaves the tier, the tier's default action at
//! its end, allow when no tier applies or every tier passed; rule selectors scoped to the
//! policy's namespace (or the rule's namespaceSelector), notSelector unscoped.

use std::collections::BTreeMap;
use std::net::IpAddr;

use proptest::prelude::*;
use serval_calc::Model;
use serval_calc::evaluator::{Evaluator, Packet};
use serval_calc::policy::IpProto;
use serval_calc::scenarios::{standard_pods, test_cluster};
use serval_model::calico::{Action, EntityRule, PolicySpec, Rule, TierDefaultAction};
use serval_model::selector::Selector;
use serval_model::types::{CalicoProtocol, PolicyType};
use serval_model::{Resource, parse_documents};

const SELECTORS: &[&str] = &["all()", "pod == 'a'", "pod != 'b'", "pod in {'b', 'c'}"];
const NS_SELECTORS: &[&str] = &["ns == 'y'", "ns != 'x'", "all()"];
const NETS: &[&str] = &["10.0.1.0/24", "10.0.0.2/32"];

fn side() -> impl Strategy<Value = String> {
    (
        prop::option::of(0..SELECTORS.len()),
        prop::option::of(0..SELECTORS.len()),
        prop::option::of(0..NS_SELECTORS.len()),
        prop::option::of(0..NETS.len()),
        prop::option::of(0..NETS.len()),
    )
        .prop_map(|(sel, not_sel, nss, nets, not_nets)| {
            let mut f = Vec::new();
            if let Some(i) = sel {
                f.push(format!("selector: \"{}\"", SELECTORS[i]));
            }
            if let Some(i) = not_sel {
                f.push(format!("notSelector: \"{}\"", SELECTORS[i]));
            }
            if let Some(i) = nss {
                f.push(format!("namespaceSelector: \"{}\"", NS_SELECTORS[i]));
            }
            if let Some(i) = nets {
                f.push(format!("nets: [{}]", NETS[i]));
            }
            if let Some(i) = not_nets {
                f.push(format!("notNets: [{}]", NETS[i]));
            }
            format!("{{{}}}", f.join(", "))
        })
}

fn rule() -> impl Strategy<Value = String> {
    (0..4usize, 0..3usize, side(), 0..3usize).prop_map(|(action, proto, peer, ports)| {
        let action = ["Allow", "Deny", "Pass", "Log"][action];
        let proto = ["", "protocol: TCP, ", "protocol: UDP, "][proto];
        let ports = if proto.is_empty() {
            ""
        } else {
            ["", "ports: [80], ", "ports: [\"81:90\"], "][ports]
        };
        // PEER is the remote side; the local side carries the ports.
        format!("{{action: {action}, {proto}PEER: {peer}, LOCAL: {{{ports}}}}}")
    })
}

fn policy() -> impl Strategy<Value = String> {
    (
        prop::option::of(0..3usize),
        0..2usize,
        prop::option::of(0..4u8),
        0..SELECTORS.len(),
        prop::option::of(0..NS_SELECTORS.len()),
        prop::collection::vec(rule(), 0..4),
        prop::collection::vec(rule(), 0..3),
        0..2usize,
    )
        .prop_map(|(ns, tier, order, sel, nss, ingress, egress, types)| {
            let tier = ["default", "security"][tier];
            let order = order.map_or(String::new(), |o| format!("  order: {}\n", o * 10));
            let ingress: Vec<String> = ingress
                .iter()
                .map(|r| r.replace("PEER", "source").replace("LOCAL", "destination"))
                .collect();
            let egress: Vec<String> = egress
                .iter()
                .map(|r| r.replace("PEER", "destination").replace("LOCAL", "source"))
                .collect();
            let types = if types == 0 {
                String::new()
            } else {
                "  types: [Ingress, Egress]\n".to_string()
            };
            let head = match ns {
                Some(i) => format!(
                    "kind: NetworkPolicy\nmetadata: {{namespace: {}, name: NAME}}\n",
                    ["x", "y", "z"][i]
                ),
                None => {
                    let nss = nss.map_or(String::new(), |i| {
                        format!("  namespaceSelector: \"{}\"\n", NS_SELECTORS[i])
                    });
                    format!("kind: GlobalNetworkPolicy\nmetadata: {{name: NAME}}\nspec:\n{nss}")
                }
            };
            let head = if head.ends_with("spec:\n") || head.contains("spec:\n") {
                head
            } else {
                format!("{head}spec:\n")
            };
            format!(
                "apiVersion: projectcalico.org/v3\n{head}  tier: {tier}\n{order}  selector: \"{}\"\n{types}  ingress: [{}]\n  egress: [{}]\n",
                SELECTORS[sel],
                ingress.join(", "),
                egress.join(", ")
            )
        })
}

struct Pod {
    ns: String,
    labels: BTreeMap<String, String>,
    ip: IpAddr,
}

struct Policy {
    namespace: Option<String>,
    name: String,
    spec: PolicySpec,
}

struct Oracle<'a> {
    model: &'a Model,
    tiers: Vec<(String, f64, TierDefaultAction)>,
    policies: Vec<Policy>,
}

fn sel(s: &str) -> Selector {
    Selector::parse(s).unwrap()
}

impl Oracle<'_> {
    fn selects(&self, p: &Policy, pod: &Pod) -> bool {
        let mut labels = pod.labels.clone();
        labels.insert("projectcalico.org/namespace".into(), pod.ns.clone());
        let ns_ok = match &p.namespace {
            Some(ns) => *ns == pod.ns,
            None => p
                .spec
                .namespace_selector
                .as_deref()
                .is_none_or(|s| sel(s).matches(&self.model.namespace_labels(&pod.ns))),
        };
        ns_ok && sel(&p.spec.selector).matches(&labels)
    }

    fn entity_matches(&self, p: &Policy, e: &EntityRule, pod: &Pod) -> bool {
        let mut labels = pod.labels.clone();
        labels.insert("projectcalico.org/namespace".into(), pod.ns.clone());
        let scope_ok = match (&e.namespace_selector, &p.namespace) {
            (Some(nss), _) => sel(nss).matches(&self.model.namespace_labels(&pod.ns)),
            (None, Some(ns)) => {
                // Scoped only when the side names a selector of some kind.
                !(e.selector.is_some() || e.not_selector.is_some()) || *ns == pod.ns
            }
            (None, None) => true,
        };
        scope_ok
            && e.selector
                .as_deref()
                .is_none_or(|s| sel(s).matches(&labels))
            && e.not_selector
                .as_deref()
                .is_none_or(|s| !sel(s).matches(&labels))
            && (e.nets.is_empty() || e.nets.iter().any(|n| n.contains(&pod.ip)))
            && !e.not_nets.iter().any(|n| n.contains(&pod.ip))
    }

    fn ports_ok(e: &EntityRule, port: u16) -> bool {
        e.ports.is_empty()
            || e.ports
                .iter()
                .any(|p| p.range().is_some_and(|(a, b)| (a..=b).contains(&port)))
    }

    fn rule_matches(
        &self,
        p: &Policy,
        r: &Rule,
        ingress: bool,
        src: &Pod,
        dst: &Pod,
        (proto, port): (CalicoProtocol, u16),
    ) -> bool {
        if r.protocol.is_some_and(|rp| rp != proto) {
            return false;
        }
        let (peer, peer_rule, local_rule) = if ingress {
            (src, &r.source, &r.destination)
        } else {
            (dst, &r.destination, &r.source)
        };
        // The local side carries only ports (on the destination for ingress; on the source
        // for egress, where the source port is 40000 and never in 80..90).
        let local_port = if ingress { port } else { 40000 };
        self.entity_matches(p, peer_rule, peer) && Self::ports_ok(local_rule, local_port)
    }

    fn direction(
        &self,
        ingress: bool,
        src: &Pod,
        dst: &Pod,
        proto: CalicoProtocol,
        port: u16,
    ) -> bool {
        let endpoint = if ingress { dst } else { src };
        for (tier, _, default_action) in &self.tiers {
            let mut ps: Vec<&Policy> = self
                .policies
                .iter()
                .filter(|p| p.spec.tier == *tier)
                .filter(|p| {
                    let t = if ingress {
                        PolicyType::Ingress
                    } else {
                        PolicyType::Egress
                    };
                    p.spec.types.contains(&t)
                })
                .filter(|p| self.selects(p, endpoint))
                .collect();
            if ps.is_empty() {
                continue;
            }
            ps.sort_by(|a, b| {
                let oa = a.spec.order.unwrap_or(f64::INFINITY);
                let ob = b.spec.order.unwrap_or(f64::INFINITY);
                oa.total_cmp(&ob)
                    .then_with(|| a.name.cmp(&b.name))
                    .then_with(|| a.namespace.cmp(&b.namespace))
            });
            let mut passed = false;
            'policies: for p in ps {
                let rules = if ingress {
                    &p.spec.ingress
                } else {
                    &p.spec.egress
                };
                for r in rules {
                    if !self.rule_matches(p, r, ingress, src, dst, (proto, port)) {
                        continue;
                    }
                    match r.action {
                        Action::Allow => return true,
                        Action::Deny => return false,
                        Action::Log => {}
                        Action::Pass => {
                            passed = true;
                            break 'policies;
                        }
                    }
                }
            }
            if !passed && *default_action == TierDefaultAction::Deny {
                return false;
            }
        }
        true
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn evaluator_agrees_with_calico_semantics(
        policies in prop::collection::vec(policy(), 1..5),
        security_passes in any::<bool>(),
    ) {
        let (resources, b4, _) = test_cluster();
        let mut model = Model::from_resources(resources);
        let tier = format!(
            "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {{name: security}}\nspec: {{order: 100, defaultAction: {}}}\n",
            if security_passes { "Pass" } else { "Deny" }
        );
        for r in parse_documents("tier", &tier).unwrap() {
            model.apply(r);
        }
        let mut oracle_policies = Vec::new();
        for (i, p) in policies.iter().enumerate() {
            let yaml = p.replace("NAME", &format!("p{i}"));
            let docs = parse_documents("generated", &yaml)
                .unwrap_or_else(|e| panic!("generated policy must parse:\n{yaml}\n{e}"));
            for r in docs {
                match &r {
                    Resource::NetworkPolicy(np) => oracle_policies.push(Policy {
                        namespace: np.metadata.namespace.clone(),
                        name: np.metadata.name.clone(),
                        spec: np.spec.clone(),
                    }),
                    Resource::GlobalNetworkPolicy(g) => oracle_policies.push(Policy {
                        namespace: None,
                        name: g.metadata.name.clone(),
                        spec: g.spec.clone(),
                    }),
                    _ => {}
                }
                model.apply(r);
            }
        }
        let tiers = model
            .tiers()
            .into_iter()
            .map(|t| {
                (
                    t.metadata.name.clone(),
                    t.spec.order.unwrap_or(f64::INFINITY),
                    t.spec.default_action.unwrap_or_default(),
                )
            })
            .collect();
        let oracle = Oracle { model: &model, tiers, policies: oracle_policies };
        let ev = Evaluator::new(&model);
        let pods: Vec<(String, Pod)> = standard_pods()
            .into_iter()
            .map(|(ns, pod)| {
                let p = &model.pods[&(ns.clone(), pod.clone())];
                let id = format!("{ns}/{pod}");
                let ip = b4.pods[&id];
                (id, Pod { ns, labels: p.metadata.labels.clone(), ip })
            })
            .collect();
        for (proto, cproto) in [(IpProto::Tcp, CalicoProtocol::Tcp), (IpProto::Udp, CalicoProtocol::Udp)] {
            for port in [80u16, 85] {
                for (sid, s) in &pods {
                    for (did, d) in &pods {
                        if sid == did {
                            continue;
                        }
                        let want = oracle.direction(false, s, d, cproto, port)
                            && oracle.direction(true, s, d, cproto, port);
                        let v = ev.evaluate(&Packet::l4(s.ip, d.ip, proto, port));
                        prop_assert_eq!(
                            v.allowed, want,
                            "{} -> {} {}/{}: {}\npolicies:\n{}",
                            sid, did, port, proto, v.reason, policies.join("---\n")
                        );
                    }
                }
            }
        }
    }
}
