//! Kubernetes NetworkPolicy → Calico rule model, with exact Kubernetes semantics:
//!
//! - the policy selects pods of its namespace by `podSelector`, and isolates them for each
//!   type in `policyTypes` (defaulted by the model: Ingress always, Egress when there are
//!   egress rules); an isolating policy with no rules allows nothing;
//! - every rule allows (the union of all rules of all selecting policies is allowed; the
//!   default tier's end-of-tier deny drops the rest);
//! - a rule's peers are ORed: one compiled rule per peer (and per port group); an empty
//!   `from`/`to` means every source/destination;
//! - a peer is `podSelector` (pods of the policy's namespace), `namespaceSelector` (every pod
//!   of the matching namespaces, whose labels include `kubernetes.io/metadata.name`), both
//!   (pods matching podSelector IN the matching namespaces), or `ipBlock` (cidr minus
//!   except);
//! - ports are ORed: numbers and `endPort` ranges grouped per protocol, a port entry without
//!   a port opens the whole protocol, and a named port is a named-port ip set: for ingress the
//!   DESTINATION (the selected pod) must expose it, for egress the destination pod matched by
//!   the peer (any pod, for an ipBlock or empty peer list) must expose it. No `ports` means
//!   every protocol and port.
//!
//! Both directions compile through one path (`PolicyContext::rules`): a rule's peers match
//! the source of an ingress rule and the destination of an egress rule; ports always match
//! the destination.

use std::collections::{BTreeMap, BTreeSet};

use serval_model::k8s::{K8S_POLICY_ORDER, K8sNetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use serval_model::selector::Selector;
use serval_model::types::{IntOrString, Protocol};

use super::compile::{CompiledPolicy, Selects, SetRegistry};
use super::{Action, Direction, IpProto, PolicyId, PolicyKind, PortRange, Rule, RuleId, RuleMatch};
use crate::ipsets::{IpSetId, IpSetSpec, NamespaceScope};

/// A peer compiled to ip sets.
struct Peer {
    sets: Vec<IpSetId>,
    not_sets: Vec<IpSetId>,
    /// The pods a named port of an egress rule is looked up on.
    named_port_pods: (Selector, NamespaceScope),
}

impl Peer {
    /// The peer of a rule with an empty `from`/`to`: every source/destination.
    fn everyone() -> Self {
        Peer {
            sets: Vec::new(),
            not_sets: Vec::new(),
            named_port_pods: (Selector::all(), NamespaceScope::All),
        }
    }
}

enum PortGroup {
    /// Every protocol and port.
    Any,
    /// One protocol; `ranges` empty means every port.
    Numeric {
        protocol: Protocol,
        ranges: Vec<PortRange>,
    },
    Named {
        protocol: Protocol,
        name: String,
    },
}

fn peer(p: &NetworkPolicyPeer, ns: &str, reg: &mut SetRegistry) -> Peer {
    if let Some(b) = &p.ip_block {
        let sets = vec![reg.add(IpSetSpec::Nets(BTreeSet::from([b.cidr])))];
        let not_sets = if b.except.is_empty() {
            Vec::new()
        } else {
            vec![reg.add(IpSetSpec::Nets(b.except.iter().copied().collect()))]
        };
        return Peer {
            sets,
            not_sets,
            named_port_pods: (Selector::all(), NamespaceScope::All),
        };
    }
    let sel = p
        .pod_selector
        .as_ref()
        .map_or_else(Selector::all, |s| s.to_selector());
    let scope = match &p.namespace_selector {
        Some(nss) => NamespaceScope::Selector(nss.to_selector().to_string()),
        None => NamespaceScope::Namespace(ns.to_string()),
    };
    Peer {
        sets: vec![reg.add(IpSetSpec::selector(&sel, scope.clone()))],
        not_sets: Vec::new(),
        named_port_pods: (sel, scope),
    }
}

fn port_groups(ports: &[NetworkPolicyPort]) -> Vec<PortGroup> {
    if ports.is_empty() {
        return vec![PortGroup::Any];
    }
    // Per protocol: None = the whole protocol, Some(ranges) otherwise.
    let mut numeric: BTreeMap<Protocol, Option<Vec<PortRange>>> = BTreeMap::new();
    let mut named = Vec::new();
    for p in ports {
        match &p.port {
            None => {
                numeric.insert(p.protocol, None);
            }
            Some(IntOrString::Int(n)) => {
                let first = u16::try_from(*n).unwrap_or(0);
                let last = p
                    .end_port
                    .and_then(|e| u16::try_from(e).ok())
                    .unwrap_or(first);
                let entry = numeric
                    .entry(p.protocol)
                    .or_insert_with(|| Some(Vec::new()));
                if let Some(ranges) = entry {
                    ranges.push(PortRange { first, last });
                }
            }
            Some(IntOrString::String(name)) => named.push(PortGroup::Named {
                protocol: p.protocol,
                name: name.clone(),
            }),
        }
    }
    let mut out: Vec<PortGroup> = numeric
        .into_iter()
        .map(|(protocol, ranges)| PortGroup::Numeric {
            protocol,
            ranges: ranges
                .map(|mut r| {
                    r.sort();
                    r.dedup();
                    r
                })
                .unwrap_or_default(),
        })
        .collect();
    out.extend(named);
    out
}

/// What the rules of one policy share, in both directions.
struct PolicyContext<'a> {
    id: &'a PolicyId,
    ns: &'a str,
    /// The pods the policy selects (in `ns`).
    selector: &'a Selector,
}

impl PolicyContext<'_> {
    /// Compiles the rules of one direction, each given as its peers (`from` of an ingress
    /// rule, `to` of an egress rule) and its ports: one compiled rule per peer and port group,
    /// in rule order.
    fn rules<'r>(
        &self,
        direction: Direction,
        rules: impl Iterator<Item = (&'r [NetworkPolicyPeer], &'r [NetworkPolicyPort])>,
        reg: &mut SetRegistry,
    ) -> Vec<Rule> {
        let mut out = Vec::new();
        for (i, (peers, ports)) in rules.enumerate() {
            let id = RuleId {
                policy: self.id.clone(),
                direction,
                index: i as u32,
            };
            let peers: Vec<Peer> = if peers.is_empty() {
                vec![Peer::everyone()]
            } else {
                peers.iter().map(|p| peer(p, self.ns, reg)).collect()
            };
            let groups = port_groups(ports);
            for peer in &peers {
                for g in &groups {
                    out.push(self.rule(&id, direction, peer, g, reg));
                }
            }
        }
        out
    }

    /// One allow rule: the peer is the source of an ingress rule and the destination of an
    /// egress rule; ports are always the destination's.
    fn rule(
        &self,
        id: &RuleId,
        direction: Direction,
        peer: &Peer,
        group: &PortGroup,
        reg: &mut SetRegistry,
    ) -> Rule {
        let mut m = RuleMatch::default();
        let (sets, not_sets) = match direction {
            Direction::Ingress => (&mut m.src_sets, &mut m.not_src_sets),
            Direction::Egress => (&mut m.dst_sets, &mut m.not_dst_sets),
        };
        sets.clone_from(&peer.sets);
        not_sets.clone_from(&peer.not_sets);
        match group {
            PortGroup::Any => {}
            PortGroup::Numeric { protocol, ranges } => {
                m.protocol = Some(IpProto::from(*protocol));
                m.dst_ports = ranges.clone();
            }
            PortGroup::Named { protocol, name } => {
                m.protocol = Some(IpProto::from(*protocol));
                // The destination exposes the named port: the selected pod for ingress,
                // the pods the peer matches for egress.
                let (selector, scope) = match direction {
                    Direction::Ingress => (
                        self.selector.to_string(),
                        NamespaceScope::Namespace(self.ns.to_string()),
                    ),
                    Direction::Egress => (
                        peer.named_port_pods.0.to_string(),
                        peer.named_port_pods.1.clone(),
                    ),
                };
                m.dst_named_port_sets = vec![reg.add(IpSetSpec::NamedPort {
                    selector,
                    scope,
                    name: name.clone(),
                    protocol: *protocol,
                })];
            }
        }
        Rule {
            r#match: m,
            action: Action::Allow,
            id: id.clone(),
        }
    }
}

/// Compiles one Kubernetes NetworkPolicy (default tier, order 1000).
pub fn compile(p: &K8sNetworkPolicy, reg: &mut SetRegistry) -> CompiledPolicy {
    let ns = p.metadata.namespace_str().to_string();
    let spec = &p.spec;
    let id = PolicyId {
        tier: serval_model::calico::DEFAULT_TIER.to_string(),
        kind: PolicyKind::K8s,
        namespace: Some(ns.clone()),
        name: p.metadata.name.clone(),
    };
    let selector = spec.pod_selector.to_selector();
    let cx = PolicyContext {
        id: &id,
        ns: &ns,
        selector: &selector,
    };
    let ingress = spec.applies_to_ingress().then(|| {
        let rules = spec.ingress.iter().map(|r| (&r.from[..], &r.ports[..]));
        cx.rules(Direction::Ingress, rules, reg)
    });
    let egress = spec.applies_to_egress().then(|| {
        let rules = spec.egress.iter().map(|r| (&r.to[..], &r.ports[..]));
        cx.rules(Direction::Egress, rules, reg)
    });
    CompiledPolicy {
        id,
        order: K8S_POLICY_ORDER,
        selects: Selects::Namespaced {
            namespace: ns,
            selector,
        },
        ingress,
        egress,
    }
}

#[cfg(test)]
mod tests {
    use serval_model::Resource;
    use serval_model::parse_documents;

    use super::*;

    fn compile_one(yaml: &str) -> (CompiledPolicy, SetRegistry) {
        let Resource::K8sNetworkPolicy(p) = parse_documents("t", yaml).unwrap().remove(0) else {
            panic!("a NetworkPolicy")
        };
        let mut reg = SetRegistry::default();
        (compile(&p, &mut reg), reg)
    }

    #[test]
    fn peers_become_one_rule_each_and_ip_blocks_exclude_except() {
        let (p, reg) = compile_one(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchLabels: {pod: c}}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    ports:
    - {port: 80}
    - {port: 81, protocol: UDP}
"#,
        );
        assert_eq!(p.order, K8S_POLICY_ORDER);
        assert!(p.egress.is_none(), "policyTypes default to Ingress only");
        let rules = p.ingress.unwrap();
        // 3 peers × 2 protocols.
        assert_eq!(rules.len(), 6);
        assert!(
            rules
                .iter()
                .all(|r| r.action == Action::Allow && r.id.index == 0)
        );
        let spec = |id: &IpSetId| reg.spec(id).cloned().unwrap();
        assert_eq!(
            spec(&rules[0].r#match.src_sets[0]),
            IpSetSpec::Selector {
                selector: "pod == \"b\"".into(),
                scope: NamespaceScope::Namespace("x".into())
            }
        );
        assert_eq!(rules[0].r#match.protocol, Some(IpProto::Tcp));
        assert_eq!(rules[0].r#match.dst_ports, [PortRange::single(80)]);
        assert_eq!(rules[1].r#match.protocol, Some(IpProto::Udp));
        assert_eq!(
            spec(&rules[2].r#match.src_sets[0]),
            IpSetSpec::Selector {
                selector: "pod == \"c\"".into(),
                scope: NamespaceScope::Selector("ns == \"y\"".into())
            }
        );
        let block = &rules[4].r#match;
        assert_eq!(
            spec(&block.src_sets[0]),
            IpSetSpec::Nets(BTreeSet::from(["10.0.0.0/8".parse().unwrap()]))
        );
        assert_eq!(
            spec(&block.not_src_sets[0]),
            IpSetSpec::Nets(BTreeSet::from(["10.1.0.0/16".parse().unwrap()]))
        );
    }

    #[test]
    fn named_ports_resolve_on_the_destination() {
        let (p, reg) = compile_one(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports: [{port: http}]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {ns: y}}
    ports: [{port: dns, protocol: UDP}, {protocol: TCP}]
"#,
        );
        let ing = p.ingress.unwrap();
        assert_eq!(ing.len(), 1);
        let m = &ing[0].r#match;
        assert!(m.src_sets.is_empty(), "no peers: every source");
        assert_eq!(
            reg.spec(&m.dst_named_port_sets[0]),
            Some(&IpSetSpec::NamedPort {
                selector: "pod == \"a\"".into(),
                scope: NamespaceScope::Namespace("x".into()),
                name: "http".into(),
                protocol: Protocol::Tcp
            })
        );
        let eg = p.egress.unwrap();
        // TCP (all ports) and the UDP named port.
        assert_eq!(eg.len(), 2);
        assert_eq!(eg[0].r#match.protocol, Some(IpProto::Tcp));
        assert!(eg[0].r#match.dst_ports.is_empty());
        assert_eq!(
            reg.spec(&eg[1].r#match.dst_named_port_sets[0]),
            Some(&IpSetSpec::NamedPort {
                selector: "all()".into(),
                scope: NamespaceScope::Selector("ns == \"y\"".into()),
                name: "dns".into(),
                protocol: Protocol::Udp
            })
        );
    }

    #[test]
    fn an_isolating_policy_without_rules_has_an_empty_rule_list() {
        let (p, _) = compile_one(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
"#,
        );
        assert_eq!(p.ingress, Some(Vec::new()));
        assert_eq!(p.egress, Some(Vec::new()));
    }
}
