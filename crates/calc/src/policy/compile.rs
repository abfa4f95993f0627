//! Policies of every kind compiled once per model, then picked per endpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serval_model::calico::{FelixSettings, HostEndpoint, ProtoPort};
use serval_model::selector::Selector;
use serval_model::types::Protocol;

use super::{
    EndOfTier, EndpointPolicy, Failsafe, FailsafePort, HostEndpointState, PolicyId, PolicyRules,
    Rule, TierRules,
};
use crate::endpoints::{Endpoint, selector_labels};
use crate::ipsets::{IpSetId, IpSetSpec};
use crate::model::Model;

/// The ip set definitions rules refer to, by id.
#[derive(Debug, Clone, Default)]
pub struct SetRegistry {
    specs: BTreeMap<IpSetId, IpSetSpec>,
}

impl SetRegistry {
    /// Registers a definition; identical definitions get the same id.
    pub fn add(&mut self, spec: IpSetSpec) -> IpSetId {
        let id = spec.id();
        self.specs.entry(id.clone()).or_insert(spec);
        id
    }

    pub fn spec(&self, id: &IpSetId) -> Option<&IpSetSpec> {
        self.specs.get(id)
    }

    pub fn ids(&self) -> impl Iterator<Item = &IpSetId> {
        self.specs.keys()
    }
}

/// A selector that matches nothing (for a selector that does not parse).
fn never() -> Selector {
    Selector::parse("has(serval.invalid/never) && !has(serval.invalid/never)").unwrap_or_default()
}

/// Parses a selector from a stored (validated) resource; one that does not parse selects
/// nothing, with a warning.
pub(crate) fn parse_selector(s: &str) -> Selector {
    Selector::parse(s).unwrap_or_else(|e| {
        tracing::warn!(selector = s, error = %e, "selector does not parse; it selects nothing");
        never()
    })
}

/// Which endpoints a policy applies to.
#[derive(Debug, Clone)]
pub enum Selects {
    /// Workload endpoints of one namespace matching the selector.
    Namespaced {
        namespace: String,
        selector: Selector,
    },
    /// Workload endpoints of namespaces matching `namespace_selector` (all when `None`)
    /// matching `selector`; host endpoints matching `selector` (when there is no namespace
    /// selector, or one such as `global()`).
    Global {
        selector: Selector,
        namespace_selector: Option<Selector>,
    },
}

/// One policy, compiled.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    pub id: PolicyId,
    pub order: f64,
    pub selects: Selects,
    /// `None` when the policy does not apply to ingress (its `types`), else the rules.
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

impl CompiledPolicy {
    fn selects_workload(
        &self,
        ep_labels: &BTreeMap<String, String>,
        ep_ns: &str,
        ns_labels: &BTreeMap<String, String>,
    ) -> bool {
        match &self.selects {
            Selects::Namespaced {
                namespace,
                selector,
            } => namespace == ep_ns && selector.matches(ep_labels),
            Selects::Global {
                selector,
                namespace_selector,
            } => {
                namespace_selector
                    .as_ref()
                    .is_none_or(|n| n.matches(ns_labels))
                    && selector.matches(ep_labels)
            }
        }
    }

    fn selects_host(&self, labels: &BTreeMap<String, String>) -> bool {
        match &self.selects {
            Selects::Namespaced { .. } => false,
            Selects::Global {
                selector,
                namespace_selector,
            } => {
                namespace_selector
                    .as_ref()
                    .is_none_or(crate::ipsets::selects_global_only)
                    && selector.matches_global(labels)
            }
        }
    }
}

/// A tier with its compiled policies in evaluation order.
#[derive(Debug, Clone)]
pub struct CompiledTier {
    pub name: String,
    pub order: f64,
    pub default_action: EndOfTier,
    pub policies: Vec<CompiledPolicy>,
}

/// Compiles every policy of the model into its tier; tiers in evaluation order, policies
/// by order then name. A policy naming a tier that does not exist is left out (Calico
/// refuses it) with a warning, as are `doNotTrack` and `preDNAT` GlobalNetworkPolicies
/// (not supported yet).
pub fn compile_policies(model: &Model, reg: &mut SetRegistry) -> Vec<CompiledTier> {
    let mut tiers: Vec<CompiledTier> = model
        .tiers()
        .into_iter()
        .map(|t| CompiledTier {
            name: t.metadata.name.clone(),
            order: t.spec.order.unwrap_or(f64::INFINITY),
            default_action: t.spec.default_action.unwrap_or_default().into(),
            policies: Vec::new(),
        })
        .collect();
    let mut all = Vec::new();
    for ((ns, name), p) in &model.k8s_policies {
        all.push(super::k8s::compile(&p.to_policy(ns, name), reg));
    }
    for ((ns, name), p) in &model.policies {
        all.push(super::calico::compile(name, Some(ns), &p.spec, reg));
    }
    for (name, p) in &model.global_policies {
        if p.spec.do_not_track {
            continue; // host endpoints' untracked tier: compile_untracked_policies
        }
        if p.spec.pre_dnat {
            // Runs in another netfilter hook (mangle before DNAT) with other semantics;
            // not modelled yet, and wrong to evaluate as ordinary policy.
            tracing::warn!(policy = %name, "preDNAT policies are not supported yet; ignored");
            continue;
        }
        all.push(super::calico::compile(name, None, &p.spec, reg));
    }
    for p in all {
        match tiers.iter_mut().find(|t| t.name == p.id.tier) {
            Some(t) => t.policies.push(p),
            None => {
                tracing::warn!(policy = %p.id, tier = %p.id.tier, "policy names a tier that does not exist; ignored until the tier is created")
            }
        }
    }
    for t in &mut tiers {
        t.policies.sort_by(|a, b| {
            a.order
                .total_cmp(&b.order)
                .then_with(|| a.id.name.cmp(&b.id.name))
                .then_with(|| a.id.namespace.cmp(&b.id.namespace))
                .then_with(|| a.id.kind.cmp(&b.id.kind))
        });
    }
    tiers
}

fn pick(tiers: &[CompiledTier], selects: impl Fn(&CompiledPolicy) -> bool) -> EndpointPolicy {
    let mut out = EndpointPolicy::default();
    for t in tiers {
        let chosen: Vec<&CompiledPolicy> = t.policies.iter().filter(|p| selects(p)).collect();
        for (dir, list) in [(true, &mut out.ingress), (false, &mut out.egress)] {
            let policies: Vec<PolicyRules> = chosen
                .iter()
                .filter_map(|p| {
                    let rules = if dir {
                        p.ingress.as_ref()
                    } else {
                        p.egress.as_ref()
                    }?;
                    Some(PolicyRules {
                        name: p.id.clone(),
                        order: p.order,
                        rules: rules.clone(),
                    })
                })
                .collect();
            if !policies.is_empty() {
                list.push(TierRules {
                    name: t.name.clone(),
                    order: t.order,
                    default_action: t.default_action,
                    policies,
                });
            }
        }
    }
    out
}

/// The policy of one workload endpoint.
pub fn endpoint_policy(model: &Model, tiers: &[CompiledTier], ep: &Endpoint) -> EndpointPolicy {
    let labels = selector_labels(ep);
    let ns_labels = model.namespace_labels(&ep.namespace);
    pick(tiers, |p| {
        p.selects_workload(&labels, &ep.namespace, &ns_labels)
    })
}

/// A host endpoint with the GlobalNetworkPolicies that select it.
pub fn host_endpoint_state(tiers: &[CompiledTier], hep: &HostEndpoint) -> HostEndpointState {
    let labels = &hep.metadata.labels;
    let mut addrs: Vec<IpAddr> = hep.spec.expected_ips.clone();
    addrs.sort();
    addrs.dedup();
    HostEndpointState {
        name: hep.metadata.name.clone(),
        node: hep.spec.node.clone(),
        iface: hep.spec.interface_name.clone(),
        addrs,
        labels: labels.clone(),
        policy: pick(tiers, |p| p.selects_host(labels)),
        untracked: EndpointPolicy::default(),
    }
}

/// The `doNotTrack` GlobalNetworkPolicies in their tiers, as [`compile_policies`] does for
/// the others, except that every tier's end passes (no end-of-tier drop for untracked
/// policy, as Calico renders it): a packet no untracked rule decides goes on to conntrack
/// and the host endpoint's ordinary policy.
pub fn compile_untracked_policies(model: &Model, reg: &mut SetRegistry) -> Vec<CompiledTier> {
    let mut tiers: Vec<CompiledTier> = model
        .tiers()
        .into_iter()
        .map(|t| CompiledTier {
            name: t.metadata.name.clone(),
            order: t.spec.order.unwrap_or(f64::INFINITY),
            default_action: EndOfTier::Pass,
            policies: Vec::new(),
        })
        .collect();
    for (name, p) in &model.global_policies {
        if !p.spec.do_not_track {
            continue;
        }
        let c = super::calico::compile(name, None, &p.spec, reg);
        match tiers.iter_mut().find(|t| t.name == c.id.tier) {
            Some(t) => t.policies.push(c),
            None => {
                tracing::warn!(policy = %c.id, tier = %c.id.tier, "untracked policy names a tier that does not exist; ignored until the tier is created")
            }
        }
    }
    for t in &mut tiers {
        t.policies.sort_by(|a, b| {
            a.order
                .total_cmp(&b.order)
                .then_with(|| a.id.name.cmp(&b.id.name))
        });
    }
    tiers
}

/// The untracked policy of a host endpoint (see [`HostEndpointState::untracked`]) from
/// [`compile_untracked_policies`].
pub fn host_endpoint_untracked(untracked: &[CompiledTier], hep: &HostEndpoint) -> EndpointPolicy {
    let labels = &hep.metadata.labels;
    pick(untracked, |p| p.selects_host(labels))
}

fn failsafe_port(p: &ProtoPort) -> Option<FailsafePort> {
    let protocol = match p.protocol.as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        _ => return None,
    };
    let net = match &p.net {
        None => None,
        Some(n) => Some(serval_model::net::parse_ip_or_cidr(n).ok()?),
    };
    Some(FailsafePort {
        protocol,
        port: p.port,
        net,
    })
}

/// The failsafe ports of effective Felix settings, sorted.
pub fn failsafe(felix: &FelixSettings) -> Failsafe {
    let conv = |l: &[ProtoPort]| {
        l.iter()
            .filter_map(failsafe_port)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    Failsafe {
        inbound: conv(&felix.failsafe_inbound_host_ports),
        outbound: conv(&felix.failsafe_outbound_host_ports),
    }
}
