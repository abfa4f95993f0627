//! Calico NetworkPolicy / GlobalNetworkPolicy → the rule model.
//!
//! Selector scoping, as Calico's converter does it: in a namespaced NetworkPolicy, a rule
//! side with `selector`, `notSelector` or `namespaceSelector` only matches endpoints of the
//! policy's namespace (or of the namespaces `namespaceSelector` picks), ANDed with
//! `selector` when given; in a GlobalNetworkPolicy without `namespaceSelector` the selector
//! matches endpoints of every namespace and host endpoints. `notSelector` is never scoped:
//! it excludes matching endpoints of every namespace. `nets` is an OR list, `notNets`
//! excludes; named `ports` are looked up on the endpoints the side's (scoped) selector picks
//! (every endpoint when there is none).

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
    // As Calico's converter: the positive selector carries the namespace scope whenever the
    // side names a selector, a notSelector or a namespaceSelector (and there is a scope:
    // a namespaced policy, or a namespaceSelector). notSelector itself is NOT scoped: it
    // excludes matching endpoints of every namespace.
    let scoped = !matches!(scope, NamespaceScope::All)
        && (selector.is_some() || e.not_selector.is_some() || e.namespace_selector.is_some());
    let positive = if scoped || selector.is_some() {
        let sel = selector.unwrap_or_else(Selector::all);
        s.sets
            .push(reg.add(IpSetSpec::selector(&sel, scope.clone())));
        Some((sel, scope))
    } else {
        None
    };
    if let Some(ns) = &e.not_selector {
        s.not_sets.push(reg.add(IpSetSpec::selector(
            &parse_selector(ns),
            NamespaceScope::All,
        )));
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
    // Named ports are looked up on the endpoints the positive selector picks (every
    // endpoint when there is none).
    let named_scope = positive.unwrap_or((Selector::all(), NamespaceScope::All));
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

#[cfg(test)]
mod tests {
    use serval_model::{Resource, parse_documents};

    use super::*;
    use crate::policy::Action;

    fn rules_of(yaml: &str) -> (CompiledPolicy, SetRegistry) {
        let mut reg = SetRegistry::default();
        let p = match parse_documents("t", yaml).unwrap().remove(0) {
            Resource::NetworkPolicy(p) => compile(
                &p.metadata.name,
                Some(p.metadata.namespace_str()),
                &p.spec,
                &mut reg,
            ),
            Resource::GlobalNetworkPolicy(p) => compile(&p.metadata.name, None, &p.spec, &mut reg),
            other => panic!("{other:?}"),
        };
        (p, reg)
    }

    fn sel(s: &str, scope: NamespaceScope) -> IpSetSpec {
        IpSetSpec::selector(&Selector::parse(s).unwrap(), scope)
    }

    #[test]
    fn namespaced_sides_are_scoped_and_not_selectors_are_not() {
        let (p, reg) = rules_of(
            r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  selector: pod == 'a'
  ingress:
  - action: Allow
    source: {notSelector: pod == 'b'}
  - action: Deny
    source: {selector: pod == 'c', namespaceSelector: ns == 'y', nets: [10.0.0.0/8]}
  - action: Allow
    source: {notNets: [10.1.0.0/16]}
"#,
        );
        assert!(matches!(p.selects, Selects::Namespaced { .. }));
        assert_eq!(p.order, f64::INFINITY, "no order sorts last");
        assert!(p.egress.is_none());
        let r = p.ingress.unwrap();
        let spec = |id: &IpSetId| reg.spec(id).cloned().unwrap();
        assert_eq!(
            spec(&r[0].r#match.src_sets[0]),
            sel("all()", NamespaceScope::Namespace("x".into()))
        );
        assert_eq!(
            spec(&r[0].r#match.not_src_sets[0]),
            sel("pod == 'b'", NamespaceScope::All)
        );
        assert_eq!(r[1].action, Action::Deny);
        assert_eq!(
            spec(&r[1].r#match.src_sets[0]),
            sel("pod == 'c'", NamespaceScope::Selector("ns == \"y\"".into()))
        );
        assert!(matches!(
            spec(&r[1].r#match.src_sets[1]),
            IpSetSpec::Nets(_)
        ));
        // Nets only: no selector set, no namespace scope.
        assert!(r[2].r#match.src_sets.is_empty());
        assert_eq!(r[2].r#match.not_src_sets.len(), 1);
    }

    #[test]
    fn global_policy_sides_cover_every_namespace() {
        let (p, reg) = rules_of(
            r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: g}
spec:
  order: 5
  selector: has(role)
  egress:
  - action: Pass
    protocol: TCP
    destination: {selector: app == 'db', ports: [5432, "8000:8080", http], notPorts: [8001]}
  - action: Log
    destination: {notSelector: app == 'db'}
  - action: Allow
    protocol: ICMP
    icmp: {type: 8, code: 0}
"#,
        );
        assert!(
            p.ingress.is_none(),
            "types default to Egress for egress-only rules"
        );
        let r = p.egress.unwrap();
        let m = &r[0].r#match;
        assert_eq!(r[0].action, Action::Pass);
        assert_eq!(
            reg.spec(&m.dst_sets[0]).cloned().unwrap(),
            sel("app == 'db'", NamespaceScope::All)
        );
        assert_eq!(
            m.dst_ports,
            [
                PortRange::single(5432),
                PortRange {
                    first: 8000,
                    last: 8080
                }
            ]
        );
        assert_eq!(m.not_dst_ports, [PortRange::single(8001)]);
        assert_eq!(
            reg.spec(&m.dst_named_port_sets[0]),
            Some(&IpSetSpec::NamedPort {
                selector: "app == \"db\"".into(),
                scope: NamespaceScope::All,
                name: "http".into(),
                protocol: serval_model::types::Protocol::Tcp,
            })
        );
        assert!(
            r[1].r#match.dst_sets.is_empty(),
            "notSelector alone adds no positive set"
        );
        assert_eq!(r[1].action, Action::Log);
        assert_eq!(
            r[2].r#match.icmp,
            Some(IcmpMatch {
                type_: 8,
                code: Some(0)
            })
        );
        assert_eq!(r[2].r#match.protocol, Some(IpProto::Icmp));
    }
}
