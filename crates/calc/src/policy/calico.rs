//! Calico NetworkPolicy / GlobalNetworkPolicy → the rule model.
//!
//! Selector scoping, as Calico does it: in a namespaced NetworkPolicy, a rule's `selector` /
//! `notSelector` match endpoints of the policy's namespace unless the rule sets
//! `namespaceSelector`; in a GlobalNetworkPolicy they match endpoints of every namespace
//! (and host endpoints). A rule `namespaceSelector` alone selects every endpoint of the
//! matching namespaces. `nets` is an OR list, `notNets` excludes; named `ports` are looked up
//! on the endpoints the side's selector picks (every endpoint when there is none).

use std::collections::BTreeSet;

use serval_model::calico::{EntityRule, IcmpMatch as ModelIcmp, PolicySpec};
use serval_model::selector::Selector;
use serval_model::types::CalicoPort;

use super::compile::{CompiledPolicy, Selects, SetRegistry, parse_selector};
use super::{
    Direction, IcmpMatch, IpProto, PolicyId, PolicyKind, PortRange, Rule, RuleId, RuleMatch,
};
use crate::ipsets::{IpSetId, IpSetSpec, NamespaceScope};

#[derive(Default)]
struct Side {
    sets: Vec<IpSetId>,
    not_sets: Vec<IpSetId>,
    ports: Vec<PortRange>,
    not_ports: Vec<PortRange>,
    named: Vec<IpSetId>,
    not_named: Vec<IpSetId>,
}

fn icmp(m: &Option<ModelIcmp>) -> Option<IcmpMatch> {
    let m = (*m)?;
    let type_ = u8::try_from(m.type_?).ok()?;
    Some(IcmpMatch {
        type_,
        code: m.code.and_then(|c| u8::try_from(c).ok()),
    })
}

fn side(
    e: &EntityRule,
    policy_ns: Option<&str>,
    protocol: Option<IpProto>,
    reg: &mut SetRegistry,
) -> Side {
    let mut s = Side::default();
    let scope = match (&e.namespace_selector, policy_ns) {
        (Some(nss), _) => NamespaceScope::Selector(parse_selector(nss).to_string()),
        (None, Some(ns)) => NamespaceScope::Namespace(ns.to_string()),
        (None, None) => NamespaceScope::All,
    };
    let selector = e.selector.as_deref().map(parse_selector);
    if selector.is_some() || e.namespace_selector.is_some() {
        let sel = selector.clone().unwrap_or_else(Selector::all);
        s.sets
            .push(reg.add(IpSetSpec::selector(&sel, scope.clone())));
    }
    if let Some(ns) = &e.not_selector {
        s.not_sets
            .push(reg.add(IpSetSpec::selector(&parse_selector(ns), scope.clone())));
    }
    if !e.nets.is_empty() {
        s.sets
            .push(reg.add(IpSetSpec::Nets(e.nets.iter().copied().collect())));
    }
    if !e.not_nets.is_empty() {
        s.not_sets.push(reg.add(IpSetSpec::Nets(
            e.not_nets.iter().copied().collect::<BTreeSet<_>>(),
        )));
    }
    let named_scope = if selector.is_some() || e.namespace_selector.is_some() {
        (selector.unwrap_or_else(Selector::all), scope)
    } else {
        (Selector::all(), NamespaceScope::All)
    };
    for (ports, ranges, named) in [
        (&e.ports, &mut s.ports, &mut s.named),
        (&e.not_ports, &mut s.not_ports, &mut s.not_named),
    ] {
        for p in ports {
            match p {
                CalicoPort::Named(name) => {
                    // Named ports need a port protocol (validated); without TCP/UDP/SCTP
                    // the name cannot resolve and the rule's protocol match decides.
                    if let Some(proto) = protocol.and_then(IpProto::to_k8s) {
                        named.push(reg.add(IpSetSpec::NamedPort {
                            selector: named_scope.0.to_string(),
                            scope: named_scope.1.clone(),
                            name: name.clone(),
                            protocol: proto,
                        }));
                    }
                }
                other => {
                    if let Some((first, last)) = other.range() {
                        ranges.push(PortRange { first, last });
                    }
                }
            }
        }
    }
    s
}

fn rules(
    list: &[serval_model::calico::Rule],
    id: &PolicyId,
    direction: Direction,
    ns: Option<&str>,
    reg: &mut SetRegistry,
) -> Vec<Rule> {
    list.iter()
        .enumerate()
        .map(|(i, r)| {
            let protocol = r.protocol.map(IpProto::from);
            let src = side(&r.source, ns, protocol, reg);
            let dst = side(&r.destination, ns, protocol, reg);
            Rule {
                r#match: RuleMatch {
                    ip_version: r.ip_version,
                    protocol,
                    not_protocol: r.not_protocol.map(IpProto::from),
                    src_sets: src.sets,
                    not_src_sets: src.not_sets,
                    dst_sets: dst.sets,
                    not_dst_sets: dst.not_sets,
                    src_ports: src.ports,
                    not_src_ports: src.not_ports,
                    dst_ports: dst.ports,
                    not_dst_ports: dst.not_ports,
                    src_named_port_sets: src.named,
                    not_src_named_port_sets: src.not_named,
                    dst_named_port_sets: dst.named,
                    not_dst_named_port_sets: dst.not_named,
                    icmp: icmp(&r.icmp),
                    not_icmp: icmp(&r.not_icmp),
                },
                action: r.action.into(),
                id: RuleId {
                    policy: id.clone(),
                    direction,
                    index: i as u32,
                },
            }
        })
        .collect()
}

/// Compiles a Calico policy: `namespace` is `Some` for a NetworkPolicy, `None` for a
/// GlobalNetworkPolicy.
pub fn compile(
    name: &str,
    namespace: Option<&str>,
    spec: &PolicySpec,
    reg: &mut SetRegistry,
) -> CompiledPolicy {
    let id = PolicyId {
        tier: spec.tier.clone(),
        kind: if namespace.is_some() {
            PolicyKind::Calico
        } else {
            PolicyKind::Global
        },
        namespace: namespace.map(str::to_string),
        name: name.to_string(),
    };
    let selector = parse_selector(&spec.selector);
    let selects = match namespace {
        Some(ns) => Selects::Namespaced {
            namespace: ns.to_string(),
            selector,
        },
        None => Selects::Global {
            selector,
            namespace_selector: spec.namespace_selector.as_deref().map(parse_selector),
        },
    };
    let ingress = spec
        .applies_to_ingress()
        .then(|| rules(&spec.ingress, &id, Direction::Ingress, namespace, reg));
    let egress = spec
        .applies_to_egress()
        .then(|| rules(&spec.egress, &id, Direction::Egress, namespace, reg));
    CompiledPolicy {
        id,
        order: spec.order.unwrap_or(f64::INFINITY),
        selects,
        ingress,
        egress,
    }
}
