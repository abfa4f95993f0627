//! Unit tests: frontends, backends, traffic policies and per-packet decisions. Shared
//! fixtures here; the tests in the submodules.

mod frontends;
mod incremental;
mod policies;
mod tracker;

use std::collections::BTreeMap;
use std::net::IpAddr;

use serval_model::k8s::{
    Container, ContainerPort, Pod, PodCondition, PodIp, PodPhase, PodSpec, PodStatus,
};
use serval_model::types::{Port, Protocol};
use serval_model::{Kind, ObjectMeta, Resource, ResourceKey, parse_documents};

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn key(a: &str, port: u16, protocol: Protocol) -> FrontendKey {
    FrontendKey {
        ip: ip(a),
        port,
        protocol,
    }
}

fn tcp(a: &str, port: u16) -> FrontendKey {
    key(a, port, Protocol::Tcp)
}

fn yaml(text: &str) -> Vec<Resource> {
    parse_documents("test", text).unwrap_or_else(|e| panic!("bad test yaml:\n{e}"))
}

/// A pod as the tests need it.
struct P<'a> {
    ns: &'a str,
    name: &'a str,
    node: &'a str,
    ips: &'a [&'a str],
    labels: &'a [(&'a str, &'a str)],
    ports: &'a [(&'a str, Protocol, u16)],
    ready: bool,
}

impl Default for P<'_> {
    fn default() -> Self {
        P {
            ns: "x",
            name: "a",
            node: "n1",
            ips: &[],
            labels: &[("app", "web")],
            ports: &[],
            ready: true,
        }
    }
}

fn pod(p: P<'_>) -> Resource {
    let mut metadata = ObjectMeta::namespaced(p.ns, p.name);
    metadata.labels = p
        .labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let ports = p
        .ports
        .iter()
        .map(|(n, proto, port)| ContainerPort {
            name: Some(n.to_string()),
            container_port: Port(*port),
            protocol: *proto,
            host_port: None,
        })
        .collect();
    Resource::Pod(Pod {
        metadata,
        spec: PodSpec {
            node_name: Some(p.node.to_string()),
            containers: vec![Container {
                name: "c".to_string(),
                ports,
                ..Default::default()
            }],
            host_network: false,
        },
        status: Some(PodStatus {
            phase: Some(PodPhase::Running),
            pod_ip: p.ips.first().map(|a| ip(a)),
            pod_ips: p.ips.iter().map(|a| PodIp { ip: ip(a) }).collect(),
            conditions: vec![PodCondition {
                type_: "Ready".to_string(),
                status: if p.ready { "True" } else { "False" }.to_string(),
            }],
            ..Default::default()
        }),
    })
}

const NODES: &str = r#"
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: n1}
spec: {bgp: {ipv4Address: 192.168.0.1/24, ipv6Address: "fd01::1/64"}}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: n2}
spec: {bgp: {ipv4Address: 192.168.0.2/24, ipv6Address: "fd01::2/64"}}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: n3}
spec: {bgp: {ipv4Address: 192.168.0.3/24}}
"#;

/// Three ready `app: web` pods on n1, n2, n3 in namespace x, dual-stack except c.
fn web_pods() -> Vec<Resource> {
    vec![
        pod(P {
            name: "a",
            node: "n1",
            ips: &["10.244.1.1", "fd00::1:1"],
            ..Default::default()
        }),
        pod(P {
            name: "b",
            node: "n2",
            ips: &["10.244.2.1", "fd00::2:1"],
            ..Default::default()
        }),
        pod(P {
            name: "c",
            node: "n3",
            ips: &["10.244.3.1"],
            ..Default::default()
        }),
    ]
}

fn model(parts: impl IntoIterator<Item = Vec<Resource>>) -> Model {
    Model::from_resources(parts.into_iter().flatten())
}

fn backend_ips(f: &Frontend) -> Vec<String> {
    f.backends
        .iter()
        .map(|b| format!("{}:{}@{}", b.ip, b.port, b.node))
        .collect()
}

fn dnat(d: ServiceDecision) -> (Vec<String>, bool) {
    match d {
        ServiceDecision::Dnat {
            candidates,
            snat_to_node,
            ..
        } => (
            candidates
                .iter()
                .map(|b| format!("{}:{}", b.ip, b.port))
                .collect(),
            snat_to_node,
        ),
        other => panic!("expected DNAT, got {other:?}"),
    }
}

const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#;

fn nodeport_svc(name: &str, extra: &str) -> Vec<Resource> {
    yaml(&format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: x}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080, nodePort: 30080}}]
{extra}
"#
    ))
}

const LOCAL: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: local, namespace: x}
spec:
  type: NodePort
  clusterIP: 10.96.0.60
  selector: {app: local}
  externalIPs: [203.0.113.60]
  externalTrafficPolicy: Local
  ports: [{port: 80, targetPort: 8080, nodePort: 30060}]
"#;

fn local_pods() -> Vec<Resource> {
    vec![
        pod(P {
            name: "l1",
            node: "n1",
            ips: &["10.244.1.10"],
            labels: &[("app", "local")],
            ..Default::default()
        }),
        pod(P {
            name: "l2",
            node: "n2",
            ips: &["10.244.2.10"],
            labels: &[("app", "local")],
            ..Default::default()
        }),
    ]
}

const WEP_READY: &str = r#"
apiVersion: serval.dev/v1
kind: WorkloadEndpoint
metadata: {name: w1, namespace: x, labels: {app: web}}
spec: {pod: w1, node: n1, interfaceName: cali1, ipNetworks: [10.244.1.21/32], ready: true}
"#;

const WEP_UNREADY: &str = r#"
apiVersion: serval.dev/v1
kind: WorkloadEndpoint
metadata: {name: w2, namespace: x, labels: {app: web}}
spec: {pod: w2, node: n2, interfaceName: cali2, ipNetworks: [10.244.2.22/32], ready: false}
"#;

/// The stored version of `key` in `m`, for the kinds the sequence test changes.
fn current(m: &Model, key: &ResourceKey) -> Option<Resource> {
    let nn = (key.namespace.clone().unwrap_or_default(), key.name.clone());
    match key.kind {
        Kind::Pod => m.pods.get(&nn).cloned().map(Resource::Pod),
        Kind::WorkloadEndpoint => m
            .workload_endpoints
            .get(&nn)
            .cloned()
            .map(Resource::WorkloadEndpoint),
        Kind::Service => m.service(&nn.0, &nn.1).map(Resource::Service),
        Kind::EndpointSlice => m
            .endpoint_slices
            .get(&nn)
            .cloned()
            .map(Resource::EndpointSlice),
        Kind::Node => m.nodes.get(&key.name).cloned().map(Resource::Node),
        Kind::Namespace => m
            .namespaces
            .get(&key.name)
            .cloned()
            .map(Resource::Namespace),
        other => panic!("test helper does not handle {other}"),
    }
}

const SLICED: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: manual, namespace: x}
spec:
  clusterIP: 10.96.0.80
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: manual-v4, namespace: x, labels: {kubernetes.io/service-name: manual}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.244.2.1]
"#;
