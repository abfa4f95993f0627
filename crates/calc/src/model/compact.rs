//! Compact forms of the resources a large cluster has many of, as the [`super::Model`] keeps
//! them. A `BTreeMap` with one label allocates a whole node (over 500 bytes for `String`
//! pairs); label selectors here are sorted slices instead, and a resource's key is not stored
//! again in its metadata. Each form gives back exactly the resource it was made from.

use std::collections::BTreeMap;

use serval_model::ObjectMeta;
use serval_model::k8s::{
    EgressRule, IngressRule, K8sNetworkPolicy, K8sNetworkPolicySpec, NetworkPolicyPeer,
    NetworkPolicyPort,
};
use serval_model::labelselector::{LabelSelector, LabelSelectorRequirement};
use serval_model::types::PolicyType;

/// Labels as a sorted slice (from a `BTreeMap`, so sorted and without duplicate keys).
pub(super) type Labels = Box<[(Box<str>, Box<str>)]>;

/// `labels` as a [`Labels`] slice.
pub(super) fn labels_from(labels: BTreeMap<String, String>) -> Labels {
    labels
        .into_iter()
        .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
        .collect()
}

/// The map `labels` was made from.
pub(super) fn labels_to(labels: &[(Box<str>, Box<str>)]) -> BTreeMap<String, String> {
    labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Metadata worth storing: `None` when it is exactly the key (namespace set, nothing else).
pub(super) fn meta_beyond_key(m: ObjectMeta) -> Option<Box<ObjectMeta>> {
    let only_key = m.namespace.is_some()
        && m.labels.is_empty()
        && m.annotations.is_empty()
        && m.resource_version.is_none()
        && m.uid.is_none()
        && m.creation_timestamp.is_none();
    (!only_key).then(|| Box::new(m))
}

/// The metadata [`meta_beyond_key`] was given, for the resource `namespace/name`.
pub(super) fn meta_of(meta: &Option<Box<ObjectMeta>>, namespace: &str, name: &str) -> ObjectMeta {
    match meta {
        Some(m) => (**m).clone(),
        None => ObjectMeta::namespaced(namespace, name),
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Selector {
    labels: Labels,
    expressions: Vec<LabelSelectorRequirement>,
}

impl Selector {
    fn new(s: LabelSelector) -> Selector {
        let mut expressions = s.match_expressions;
        expressions.shrink_to_fit();
        Selector {
            labels: labels_from(s.match_labels),
            expressions,
        }
    }

    fn get(&self) -> LabelSelector {
        LabelSelector {
            match_labels: labels_to(&self.labels),
            match_expressions: self.expressions.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Peer {
    pod_selector: Option<Selector>,
    namespace_selector: Option<Selector>,
    ip_block: Option<serval_model::k8s::IpBlock>,
}

impl Peer {
    fn new(p: NetworkPolicyPeer) -> Peer {
        Peer {
            pod_selector: p.pod_selector.map(Selector::new),
            namespace_selector: p.namespace_selector.map(Selector::new),
            ip_block: p.ip_block,
        }
    }

    fn get(&self) -> NetworkPolicyPeer {
        NetworkPolicyPeer {
            pod_selector: self.pod_selector.as_ref().map(Selector::get),
            namespace_selector: self.namespace_selector.as_ref().map(Selector::get),
            ip_block: self.ip_block.clone(),
        }
    }
}

/// One ingress or egress rule: its peers (`from` / `to`) and ports.
#[derive(Debug, Clone, PartialEq)]
struct Rule {
    peers: Vec<Peer>,
    ports: Vec<NetworkPolicyPort>,
}

impl Rule {
    fn new(peers: Vec<NetworkPolicyPeer>, mut ports: Vec<NetworkPolicyPort>) -> Rule {
        // Kept as long as the policy: without the spare capacity a decoded list may have
        // grown with (a collect in place keeps its source's capacity, too).
        let mut peers: Vec<Peer> = peers.into_iter().map(Peer::new).collect();
        peers.shrink_to_fit();
        ports.shrink_to_fit();
        Rule { peers, ports }
    }

    fn peers(&self) -> Vec<NetworkPolicyPeer> {
        self.peers.iter().map(Peer::get).collect()
    }
}

/// A Kubernetes NetworkPolicy as the [`super::Model`] keeps it (see the module docs);
/// [`K8sPolicyEntry::to_policy`] gives the policy back.
#[derive(Debug, Clone, PartialEq)]
pub struct K8sPolicyEntry {
    pod_selector: Selector,
    policy_types: Vec<PolicyType>,
    ingress: Vec<Rule>,
    egress: Vec<Rule>,
    meta: Option<Box<ObjectMeta>>,
}

impl K8sPolicyEntry {
    /// The entry for `p`, stored under `(p.metadata.namespace_str(), p.metadata.name)`.
    pub fn new(p: K8sNetworkPolicy) -> K8sPolicyEntry {
        let spec = p.spec;
        let mut entry = K8sPolicyEntry {
            pod_selector: Selector::new(spec.pod_selector),
            policy_types: spec.policy_types,
            ingress: spec
                .ingress
                .into_iter()
                .map(|r| Rule::new(r.from, r.ports))
                .collect(),
            egress: spec
                .egress
                .into_iter()
                .map(|r| Rule::new(r.to, r.ports))
                .collect(),
            meta: meta_beyond_key(p.metadata),
        };
        // As in `Rule::new`: no spare capacity in what lives as long as the policy.
        entry.policy_types.shrink_to_fit();
        entry.ingress.shrink_to_fit();
        entry.egress.shrink_to_fit();
        entry
    }

    /// The policy this entry was made from; `namespace` and `name` are its key in
    /// [`super::Model::k8s_policies`].
    pub fn to_policy(&self, namespace: &str, name: &str) -> K8sNetworkPolicy {
        K8sNetworkPolicy {
            metadata: meta_of(&self.meta, namespace, name),
            spec: K8sNetworkPolicySpec {
                pod_selector: self.pod_selector.get(),
                policy_types: self.policy_types.clone(),
                ingress: self
                    .ingress
                    .iter()
                    .map(|r| IngressRule {
                        from: r.peers(),
                        ports: r.ports.clone(),
                    })
                    .collect(),
                egress: self
                    .egress
                    .iter()
                    .map(|r| EgressRule {
                        to: r.peers(),
                        ports: r.ports.clone(),
                    })
                    .collect(),
            },
        }
    }
}
