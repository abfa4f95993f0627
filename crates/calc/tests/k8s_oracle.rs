//! Property test: for random sets of Kubernetes NetworkPolicies on the standard cluster, the
//! evaluator (policy → Calico rules → ip sets → tier walk) agrees with a direct reading of
//! the Kubernetes NetworkPolicy specification, written here independently.

use std::collections::BTreeMap;
use std::net::IpAddr;

use proptest::prelude::*;
use serval_calc::Model;
use serval_calc::evaluator::{Evaluator, Packet};
use serval_calc::policy::IpProto;
use serval_calc::scenarios::{standard_pods, test_cluster};
use serval_model::k8s::{K8sNetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, Pod};
use serval_model::types::{IntOrString, Protocol};
use serval_model::{Resource, parse_documents};

const PEERS: &[&str] = &[
    "{podSelector: {matchLabels: {pod: b}}}",
    "{podSelector: {}}",
    "{namespaceSelector: {matchLabels: {ns: y}}}",
    "{namespaceSelector: {}}",
    "{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}, podSelector: {matchLabels: {pod: c}}}",
    "{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}, podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, b]}]}}",
    "{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.1.0/24]}}",
    "{ipBlock: {cidr: 10.0.2.2/32}}",
];

const PORTS: &[&str] = &[
    "{port: 80}",
    "{port: 81, protocol: UDP}",
    "{port: serve-80-tcp}",
    "{port: serve-81-udp, protocol: UDP}",
    "{protocol: UDP}",
    "{port: 80, endPort: 81}",
    "{port: 80, protocol: SCTP}",
];

const SELECTORS: &[&str] = &[
    "{}",
    "{matchLabels: {pod: a}}",
    "{matchExpressions: [{key: pod, operator: NotIn, values: [a]}]}",
];

fn rule_strategy() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(0..PEERS.len(), 0..3),
        prop::collection::vec(0..PORTS.len(), 0..3),
    )
        .prop_map(|(peers, ports)| {
            let peers: Vec<&str> = peers.iter().map(|i| PEERS[*i]).collect();
            let ports: Vec<&str> = ports.iter().map(|i| PORTS[*i]).collect();
            (peers, ports)
        })
        .prop_map(|(peers, ports)| {
            format!(
                "{{PEERS: [{}], ports: [{}]}}",
                peers.join(", "),
                ports.join(", ")
            )
        })
}

fn policy_strategy() -> impl Strategy<Value = String> {
    (
        0..3usize,
        0..SELECTORS.len(),
        prop::option::of(0..3usize),
        prop::collection::vec(rule_strategy(), 0..3),
        prop::collection::vec(rule_strategy(), 0..3),
    )
        .prop_map(|(ns, sel, types, ingress, egress)| {
            let ns = ["x", "y", "z"][ns];
            let types = match types {
                None => String::new(),
                Some(0) => "  policyTypes: [Ingress]\n".into(),
                Some(1) => "  policyTypes: [Egress]\n".into(),
                Some(_) => "  policyTypes: [Ingress, Egress]\n".into(),
            };
            let ingress: Vec<String> = ingress.iter().map(|r| r.replace("PEERS", "from")).collect();
            let egress: Vec<String> = egress.iter().map(|r| r.replace("PEERS", "to")).collect();
            format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{namespace: {ns}, name: NAME}}\nspec:\n  podSelector: {}\n{types}  ingress: [{}]\n  egress: [{}]\n",
                SELECTORS[sel],
                ingress.join(", "),
                egress.join(", ")
            )
        })
}

/// The Kubernetes specification, read directly.
struct Oracle<'a> {
    model: &'a Model,
    policies: Vec<K8sNetworkPolicy>,
}

struct PodInfo<'a> {
    ns: &'a str,
    pod: &'a Pod,
    ip: IpAddr,
}

impl Oracle<'_> {
    fn ns_labels(&self, ns: &str) -> BTreeMap<String, String> {
        self.model.namespace_labels(ns)
    }

    fn peer_matches(&self, peer: &NetworkPolicyPeer, policy_ns: &str, other: &PodInfo) -> bool {
        if let Some(b) = &peer.ip_block {
            return b.cidr.contains(&other.ip) && !b.except.iter().any(|e| e.contains(&other.ip));
        }
        let ns_ok = match &peer.namespace_selector {
            Some(s) => s.matches(&self.ns_labels(other.ns)),
            None => other.ns == policy_ns,
        };
        let pod_ok = peer
            .pod_selector
            .as_ref()
            .is_none_or(|s| s.matches(&other.pod.metadata.labels));
        ns_ok && pod_ok
    }

    fn port_matches(p: &NetworkPolicyPort, proto: Protocol, port: u16, dst: &PodInfo) -> bool {
        if p.protocol != proto {
            return false;
        }
        match &p.port {
            None => true,
            Some(IntOrString::Int(n)) => {
                let end = p.end_port.unwrap_or(*n);
                (*n..=end).contains(&i32::from(port))
            }
            Some(IntOrString::String(name)) => dst
                .pod
                .named_port(name)
                .is_some_and(|cp| cp.protocol == proto && cp.container_port.get() == port),
        }
    }

    fn allowed(&self, src: &PodInfo, dst: &PodInfo, proto: Protocol, port: u16) -> bool {
        if src.ns == dst.ns && src.pod.metadata.name == dst.pod.metadata.name {
            return true;
        }
        let selecting = |p: &PodInfo, ingress: bool| -> Vec<&K8sNetworkPolicy> {
            self.policies
                .iter()
                .filter(|pol| {
                    pol.metadata.namespace_str() == p.ns
                        && pol.spec.pod_selector.matches(&p.pod.metadata.labels)
                        && if ingress {
                            pol.spec.applies_to_ingress()
                        } else {
                            pol.spec.applies_to_egress()
                        }
                })
                .collect()
        };
        let ports_ok = |ports: &[NetworkPolicyPort]| {
            ports.is_empty()
                || ports
                    .iter()
                    .any(|p| Self::port_matches(p, proto, port, dst))
        };
        let egress = selecting(src, false);
        let egress_ok = egress.is_empty()
            || egress.iter().any(|pol| {
                pol.spec.egress.iter().any(|r| {
                    (r.to.is_empty()
                        || r.to
                            .iter()
                            .any(|peer| self.peer_matches(peer, pol.metadata.namespace_str(), dst)))
                        && ports_ok(&r.ports)
                })
            });
        let ingress = selecting(dst, true);
        let ingress_ok = ingress.is_empty()
            || ingress.iter().any(|pol| {
                pol.spec.ingress.iter().any(|r| {
                    (r.from.is_empty()
                        || r.from
                            .iter()
                            .any(|peer| self.peer_matches(peer, pol.metadata.namespace_str(), src)))
                        && ports_ok(&r.ports)
                })
            });
        egress_ok && ingress_ok
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn evaluator_agrees_with_the_kubernetes_specification(
        policies in prop::collection::vec(policy_strategy(), 1..4)
    ) {
        let (resources, b4, _) = test_cluster();
        let mut model = Model::from_resources(resources);
        let mut k8s = Vec::new();
        for (i, p) in policies.iter().enumerate() {
            let yaml = p.replace("NAME", &format!("p{i}"));
            let docs = parse_documents("generated", &yaml)
                .unwrap_or_else(|e| panic!("generated policy must parse:\n{yaml}\n{e}"));
            for r in docs {
                if let Resource::K8sNetworkPolicy(np) = &r {
                    k8s.push(np.clone());
                }
                model.apply(r);
            }
        }
        let oracle = Oracle { model: &model, policies: k8s };
        let ev = Evaluator::new(&model);
        let pods: Vec<PodInfo> = standard_pods()
            .iter()
            .map(|(ns, pod)| {
                let (k, p) = model.pods.get_key_value(&(ns.clone(), pod.clone())).unwrap();
                PodInfo { ns: &k.0, pod: p, ip: b4.pods[&format!("{ns}/{pod}")] }
            })
            .collect();
        for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
            for port in [80u16, 81] {
                for s in &pods {
                    for d in &pods {
                        let want = oracle.allowed(s, d, proto, port);
                        let v = ev.evaluate(&Packet::l4(s.ip, d.ip, IpProto::from(proto), port));
                        prop_assert_eq!(
                            v.allowed, want,
                            "{}/{} -> {}/{} {}/{}: {}\npolicies:\n{}",
                            s.ns, s.pod.metadata.name, d.ns, d.pod.metadata.name, port, proto,
                            v.reason, policies.join("---\n")
                        );
                    }
                }
            }
        }
    }
}
