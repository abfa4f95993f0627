//! `networking.k8s.io/v1` NetworkPolicy — the full v1 spec.

use serde::{Deserialize, Serialize};

use crate::labelselector::LabelSelector;
use crate::meta::ObjectMeta;
use crate::net::{self, IpNet};
use crate::types::{FieldErrors, IntOrString, PolicyType, Protocol};

/// Kubernetes NetworkPolicies are evaluated in Calico's `default` tier at this order.
pub const K8S_POLICY_ORDER: f64 = 1000.0;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct K8sNetworkPolicy {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: K8sNetworkPolicySpec,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct K8sNetworkPolicySpec {
    /// Pods in the policy's namespace it applies to; empty selects all of them.
    #[serde(default)]
    pub pod_selector: LabelSelector,
    /// Defaulted at parse time as the API server does: `Ingress`, plus `Egress` when there
    /// are egress rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_types: Vec<PolicyType>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressRule>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressRule {
    /// Empty: from anywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<NetworkPolicyPeer>,
    /// Empty: all ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NetworkPolicyPort>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    /// Empty: to anywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<NetworkPolicyPeer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NetworkPolicyPort>,
}

/// One peer: pods (in this or selected namespaces), namespaces, or an IP block.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyPeer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpBlock {
    /// Normalised to the network address.
    #[serde(with = "net::serde_network")]
    pub cidr: IpNet,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "net::serde_network_list"
    )]
    pub except: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyPort {
    #[serde(default)]
    pub protocol: Protocol,
    /// Number or named container port; unset means all ports of the protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i32>,
}

impl K8sNetworkPolicySpec {
    pub fn applies_to_ingress(&self) -> bool {
        self.policy_types.contains(&PolicyType::Ingress)
    }

    pub fn applies_to_egress(&self) -> bool {
        self.policy_types.contains(&PolicyType::Egress)
    }
}

impl K8sNetworkPolicy {
    pub(crate) fn apply_defaults(&mut self) {
        let s = &mut self.spec;
        if s.policy_types.is_empty() {
            s.policy_types.push(PolicyType::Ingress);
            if !s.egress.is_empty() {
                s.policy_types.push(PolicyType::Egress);
            }
        }
    }

    pub(crate) fn validate(&self, errs: &mut FieldErrors) {
        let s = &self.spec;
        if let Err(e) = s.pod_selector.validate() {
            errs.add(format!("spec.podSelector.{}", e.field), e.reason);
        }
        let mut seen = Vec::new();
        for (i, t) in s.policy_types.iter().enumerate() {
            if seen.contains(t) {
                errs.add(format!("spec.policyTypes[{i}]"), format!("duplicate {t:?}"));
            }
            seen.push(*t);
        }
        for (i, r) in s.ingress.iter().enumerate() {
            let p = format!("spec.ingress[{i}]");
            for (j, peer) in r.from.iter().enumerate() {
                validate_peer(peer, &format!("{p}.from[{j}]"), errs);
            }
            for (j, port) in r.ports.iter().enumerate() {
                validate_port(port, &format!("{p}.ports[{j}]"), errs);
            }
        }
        for (i, r) in s.egress.iter().enumerate() {
            let p = format!("spec.egress[{i}]");
            for (j, peer) in r.to.iter().enumerate() {
                validate_peer(peer, &format!("{p}.to[{j}]"), errs);
            }
            for (j, port) in r.ports.iter().enumerate() {
                validate_port(port, &format!("{p}.ports[{j}]"), errs);
            }
        }
    }
}

fn validate_peer(peer: &NetworkPolicyPeer, p: &str, errs: &mut FieldErrors) {
    let selectors = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
    match (&peer.ip_block, selectors) {
        (None, false) => errs.add(
            p,
            "a peer needs podSelector, namespaceSelector or ipBlock (an empty list entry selects nothing)",
        ),
        (Some(_), true) => {
            errs.add(p, "ipBlock cannot be combined with podSelector or namespaceSelector")
        }
        _ => {}
    }
    if let Some(sel) = &peer.pod_selector
        && let Err(e) = sel.validate()
    {
        errs.add(format!("{p}.podSelector.{}", e.field), e.reason);
    }
    if let Some(sel) = &peer.namespace_selector
        && let Err(e) = sel.validate()
    {
        errs.add(format!("{p}.namespaceSelector.{}", e.field), e.reason);
    }
    if let Some(b) = &peer.ip_block {
        for (k, ex) in b.except.iter().enumerate() {
            let inside = net::contains_net(&b.cidr, ex) && ex.prefix_len() > b.cidr.prefix_len();
            if !inside {
                errs.add(
                    format!("{p}.ipBlock.except[{k}]"),
                    format!("{ex} must be a strict subset of cidr {}", b.cidr),
                );
            }
        }
    }
}

fn validate_port(port: &NetworkPolicyPort, p: &str, errs: &mut FieldErrors) {
    if let Some(pt) = &port.port {
        pt.validate_port(&format!("{p}.port"), errs);
    }
    if let Some(end) = port.end_port {
        match &port.port {
            Some(IntOrString::Int(start)) => {
                if !(1..=65535).contains(&end) {
                    errs.add(
                        format!("{p}.endPort"),
                        format!("{end} is out of range 1-65535"),
                    );
                } else if end < *start {
                    errs.add(
                        format!("{p}.endPort"),
                        format!("{end} is below port {start}"),
                    );
                }
            }
            Some(IntOrString::String(_)) => {
                errs.add(format!("{p}.endPort"), "cannot be used with a named port")
            }
            None => errs.add(format!("{p}.endPort"), "requires port"),
        }
    }
}
