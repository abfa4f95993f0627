//! Workload endpoints as the calculation sees them: a pod's addresses, interface, CURRENT
//! labels and named ports. Also the anti-spoofing data (the source addresses a pod may use).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serval_model::k8s::{Pod, PodPhase};
use serval_model::types::{CalicoProtocol, Protocol};
use serval_model::workloadendpoint::WorkloadEndpoint;

use crate::model::Model;

/// Identifies a workload endpoint: the pod's namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EndpointKey {
    pub namespace: String,
    pub pod: String,
}

impl EndpointKey {
    pub fn new(namespace: impl Into<String>, pod: impl Into<String>) -> EndpointKey {
        EndpointKey {
            namespace: namespace.into(),
            pod: pod.into(),
        }
    }
}

impl std::fmt::Display for EndpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.pod)
    }
}

/// One pod's network endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub namespace: String,
    pub pod: String,
    /// The node the pod runs on (empty when unknown).
    pub node: String,
    /// One address per family, sorted. These are also the only source addresses the pod
    /// may send from (anti-spoofing, see [`Endpoint::allowed_sources`]).
    pub addrs: Vec<IpAddr>,
    /// The host-side interface (the veth in the root namespace); empty for a pod known only
    /// from its Pod resource (no WorkloadEndpoint yet).
    pub iface: String,
    /// The Pod's CURRENT labels (a relabel takes effect), falling back to the
    /// WorkloadEndpoint's labels when the Pod resource is absent.
    pub labels: BTreeMap<String, String>,
    /// Named container ports `(name, protocol, port)`, sorted.
    pub named_ports: Vec<(String, Protocol, u16)>,
    pub ready: bool,
}

impl Endpoint {
    pub fn key(&self) -> EndpointKey {
        EndpointKey::new(&self.namespace, &self.pod)
    }

    /// The source networks this pod may send from: its own addresses as host networks
    /// (/32, /128). The dataplanes drop a pod's packets from any other source.
    pub fn allowed_sources(&self) -> Vec<IpNet> {
        self.addrs.iter().map(|a| IpNet::from(*a)).collect()
    }

    /// True when `src` is one of the pod's own addresses.
    pub fn may_send_from(&self, src: IpAddr) -> bool {
        self.addrs.contains(&src)
    }

    /// The port number of a named port for `protocol`.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.named_ports
            .iter()
            .find(|(n, p, _)| n == name && *p == protocol)
            .map(|(_, _, port)| *port)
    }
}

fn pod_named_ports(pod: &Pod) -> Vec<(String, Protocol, u16)> {
    let mut v: Vec<_> = pod
        .spec
        .containers
        .iter()
        .flat_map(|c| &c.ports)
        .filter_map(|p| Some((p.name.clone()?, p.protocol, p.container_port.get())))
        .collect();
    v.sort();
    v.dedup();
    v
}

fn wep_named_ports(wep: &WorkloadEndpoint) -> Vec<(String, Protocol, u16)> {
    let mut v: Vec<_> = wep
        .spec
        .ports
        .iter()
        .filter_map(|p| {
            let proto = match p.protocol {
                CalicoProtocol::Tcp => Protocol::Tcp,
                CalicoProtocol::Udp => Protocol::Udp,
                CalicoProtocol::Sctp => Protocol::Sctp,
                _ => return None,
            };
            Some((p.name.clone(), proto, p.port))
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

impl Model {
    /// Every workload endpoint, sorted by key: one per WorkloadEndpoint (with the Pod's
    /// current labels and ports when the Pod exists), plus one per Pod that has addresses
    /// but no WorkloadEndpoint (and is neither host-networked nor finished), so a model
    /// written by hand (tests, scenarios) needs only Pods.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let mut out: BTreeMap<EndpointKey, Endpoint> = BTreeMap::new();
        for ((ns, _), wep) in &self.workload_endpoints {
            let pod = self.pods.get(&(ns.clone(), wep.spec.pod.clone()));
            let mut addrs = wep.addrs();
            addrs.sort();
            addrs.dedup();
            let ep = Endpoint {
                namespace: ns.clone(),
                pod: wep.spec.pod.clone(),
                node: wep.spec.node.clone(),
                addrs,
                iface: wep.spec.interface_name.clone(),
                labels: pod
                    .map(|p| p.metadata.labels.clone())
                    .unwrap_or_else(|| wep.metadata.labels.clone()),
                named_ports: pod
                    .map(pod_named_ports)
                    .unwrap_or_else(|| wep_named_ports(wep)),
                ready: pod.map_or(wep.spec.ready, Pod::is_ready),
            };
            out.insert(ep.key(), ep);
        }
        for ((ns, name), pod) in &self.pods {
            let key = EndpointKey::new(ns, name);
            let finished = pod
                .status
                .as_ref()
                .is_some_and(|st| matches!(st.phase, Some(PodPhase::Succeeded | PodPhase::Failed)));
            if out.contains_key(&key) || pod.spec.host_network || finished {
                continue;
            }
            let mut addrs = pod.ips();
            if addrs.is_empty() {
                continue;
            }
            addrs.sort();
            addrs.dedup();
            out.insert(
                key,
                Endpoint {
                    namespace: ns.clone(),
                    pod: name.clone(),
                    node: pod.spec.node_name.clone().unwrap_or_default(),
                    addrs,
                    iface: String::new(),
                    labels: pod.metadata.labels.clone(),
                    named_ports: pod_named_ports(pod),
                    ready: pod.is_ready(),
                },
            );
        }
        out.into_values().collect()
    }

    /// The endpoint that owns `ip`, if any.
    pub fn endpoint_by_ip(&self, ip: IpAddr) -> Option<Endpoint> {
        self.endpoints().into_iter().find(|e| e.addrs.contains(&ip))
    }

    /// The endpoint of one pod, if it has one.
    pub fn endpoint(&self, key: &EndpointKey) -> Option<Endpoint> {
        self.endpoints().into_iter().find(|e| e.key() == *key)
    }
}

/// Labels a selector is evaluated against for an endpoint: its own labels plus Calico's
/// automatic `projectcalico.org/namespace` (so GlobalNetworkPolicy selectors can name it).
pub fn selector_labels(ep: &Endpoint) -> BTreeMap<String, String> {
    let mut l = ep.labels.clone();
    l.entry(CALICO_NAMESPACE_LABEL.to_string())
        .or_insert_with(|| ep.namespace.clone());
    l
}

/// The label Calico adds to every workload endpoint with its namespace.
pub const CALICO_NAMESPACE_LABEL: &str = "projectcalico.org/namespace";

#[cfg(test)]
mod tests {
    use serval_model::parse_documents;

    use super::*;

    const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec:
  nodeName: n1
  containers:
  - name: c
    ports:
    - {name: serve-80-tcp, containerPort: 80}
    - {name: serve-81-udp, containerPort: 81, protocol: UDP}
status: {phase: Running, podIPs: [{ip: 10.0.0.1}, {ip: "fd00::1"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: new}}
spec: {nodeName: n2}
status: {phase: Running, podIPs: [{ip: 10.0.0.2}]}
"#;

    /// The pods, plus a WorkloadEndpoint for x/b (as the CNI plugin writes it) with stale
    /// labels.
    fn model() -> Model {
        let mut m = Model::from_resources(parse_documents("t", PODS).unwrap());
        let mut wep = WorkloadEndpoint {
            metadata: serval_model::ObjectMeta::namespaced("x", "b"),
            ..Default::default()
        };
        wep.metadata.labels.insert("pod".into(), "old".into());
        wep.spec.pod = "b".into();
        wep.spec.node = "n2".into();
        wep.spec.interface_name = "cali123".into();
        wep.spec.ip_networks = vec!["10.0.0.2/32".parse().unwrap()];
        wep.spec.ready = true;
        m.apply(serval_model::Resource::WorkloadEndpoint(wep));
        m
    }

    #[test]
    fn endpoints_use_current_pod_labels_and_fall_back_to_pods() {
        let m = model();
        let eps = m.endpoints();
        assert_eq!(eps.len(), 2);
        let a = &eps[0];
        assert_eq!(a.pod, "a");
        assert_eq!(a.iface, "");
        assert_eq!(a.addrs.len(), 2);
        assert_eq!(a.named_port("serve-81-udp", Protocol::Udp), Some(81));
        assert_eq!(a.named_port("serve-81-udp", Protocol::Tcp), None);
        let b = &eps[1];
        assert_eq!(b.iface, "cali123");
        assert_eq!(b.labels.get("pod").map(String::as_str), Some("new"));
        assert_eq!(
            m.endpoint_by_ip("10.0.0.2".parse().unwrap()).unwrap().pod,
            "b"
        );
        assert!(m.endpoint_by_ip("10.0.0.3".parse().unwrap()).is_none());
    }

    #[test]
    fn allowed_sources_are_the_pods_own_host_networks() {
        let m = model();
        let a = m.endpoint(&EndpointKey::new("x", "a")).unwrap();
        let nets: Vec<String> = a.allowed_sources().iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["10.0.0.1/32", "fd00::1/128"]);
        assert!(a.may_send_from("10.0.0.1".parse().unwrap()));
        assert!(!a.may_send_from("10.0.0.9".parse().unwrap()));
    }
}
