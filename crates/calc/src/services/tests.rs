//! Unit tests: frontends, backends, traffic policies and per-packet decisions.

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

#[test]
fn cluster_ip_with_three_backends() {
    let mut extra = vec![
        // Not ready, other labels, other namespace: none of them is a backend.
        pod(P {
            name: "d",
            ips: &["10.244.1.4"],
            ready: false,
            ..Default::default()
        }),
        pod(P {
            name: "e",
            ips: &["10.244.1.5"],
            labels: &[("app", "db")],
            ..Default::default()
        }),
        pod(P {
            ns: "y",
            name: "a",
            ips: &["10.244.1.6"],
            ..Default::default()
        }),
    ];
    extra.extend(web_pods());
    let m = model([yaml(NODES), yaml(WEB), extra]);
    let st = services(&m, None, &[]);
    assert_eq!(
        st.frontends.keys().cloned().collect::<Vec<_>>(),
        [tcp("10.96.0.10", 80)]
    );
    let f = &st.frontends[&tcp("10.96.0.10", 80)];
    assert_eq!(f.service, ("x".to_string(), "web".to_string()));
    assert_eq!(f.kind, FrontendKind::ClusterIP);
    assert_eq!(f.port_name, None);
    assert_eq!(f.affinity_timeout, None);
    assert!(!f.masquerade && !f.external_local && !f.internal_local);
    assert_eq!(
        backend_ips(f),
        [
            "10.244.1.1:8080@n1",
            "10.244.2.1:8080@n2",
            "10.244.3.1:8080@n3"
        ]
    );
    assert_eq!(
        f.backends[0].endpoint,
        Some(("x".to_string(), "a".to_string()))
    );

    let d = resolve(&st, ip("10.96.0.10"), 80, Protocol::Tcp, Some("n1"), true);
    let (c, snat) = dnat(d);
    assert_eq!(c, ["10.244.1.1:8080", "10.244.2.1:8080", "10.244.3.1:8080"]);
    assert!(!snat, "pod traffic to a ClusterIP keeps its source");
    // From outside the cluster, kube-proxy masquerades ClusterIP traffic.
    let (_, snat) = dnat(resolve(
        &st,
        ip("10.96.0.10"),
        80,
        Protocol::Tcp,
        Some("n1"),
        false,
    ));
    assert!(snat);
    // Wrong port or protocol: not a service.
    for (p, proto) in [(81, Protocol::Tcp), (80, Protocol::Udp)] {
        assert_eq!(
            resolve(&st, ip("10.96.0.10"), p, proto, Some("n1"), true),
            ServiceDecision::NotAService
        );
    }
}

#[test]
fn named_target_port_resolves_per_pod() {
    let svc = yaml(
        r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: dns, port: 53, protocol: UDP, targetPort: dns}
"#,
    );
    let pods = vec![
        pod(P {
            name: "a",
            ips: &["10.244.1.1"],
            ports: &[("http", Protocol::Tcp, 8080), ("dns", Protocol::Udp, 5353)],
            ..Default::default()
        }),
        pod(P {
            name: "b",
            node: "n2",
            ips: &["10.244.2.1"],
            ports: &[("http", Protocol::Tcp, 9090)],
            ..Default::default()
        }),
        // No port named http: no backend for port http.
        pod(P {
            name: "c",
            ips: &["10.244.1.3"],
            ports: &[("metrics", Protocol::Tcp, 9100)],
            ..Default::default()
        }),
        // A port named http but UDP: no backend for the TCP port (Kubernetes' FindPort).
        pod(P {
            name: "d",
            ips: &["10.244.1.4"],
            ports: &[("http", Protocol::Udp, 8080)],
            ..Default::default()
        }),
    ];
    let m = model([svc, pods]);
    let st = services(&m, None, &[]);
    let http = &st.frontends[&tcp("10.96.0.10", 80)];
    assert_eq!(http.port_name.as_deref(), Some("http"));
    assert_eq!(
        backend_ips(http),
        ["10.244.1.1:8080@n1", "10.244.2.1:9090@n2"]
    );
    let dns = &st.frontends[&key("10.96.0.10", 53, Protocol::Udp)];
    assert_eq!(backend_ips(dns), ["10.244.1.1:5353@n1"]);
    assert_eq!(st.frontends.len(), 2);
}

#[test]
fn session_affinity_timeout() {
    let svcs = yaml(
        r#"
apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: x}
spec:
  clusterIP: 10.96.0.11
  selector: {app: web}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: sticky-default, namespace: x}
spec:
  clusterIP: 10.96.0.12
  selector: {app: web}
  sessionAffinity: ClientIP
  ports: [{port: 80}]
"#,
    );
    let m = model([svcs, yaml(WEB), web_pods()]);
    let st = services(&m, None, &[]);
    assert_eq!(
        st.frontends[&tcp("10.96.0.11", 80)].affinity_timeout,
        Some(600)
    );
    assert_eq!(
        st.frontends[&tcp("10.96.0.12", 80)].affinity_timeout,
        Some(serval_model::k8s::DEFAULT_AFFINITY_TIMEOUT_SECONDS)
    );
    assert_eq!(st.frontends[&tcp("10.96.0.10", 80)].affinity_timeout, None);
    // targetPort defaults to port.
    assert_eq!(st.frontends[&tcp("10.96.0.11", 80)].backends[0].port, 80);
}

#[test]
fn no_backends_rejects() {
    let svcs = yaml(
        r#"
apiVersion: v1
kind: Service
metadata: {name: nobody, namespace: x}
spec:
  clusterIP: 10.96.0.20
  selector: {app: nobody}
  ports: [{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: manual, namespace: x}
spec:
  clusterIP: 10.96.0.21
  ports: [{port: 80}]
"#,
    );
    let m = model([svcs, web_pods()]);
    let st = services(&m, None, &[]);
    for (k, proto) in [
        (tcp("10.96.0.20", 80), Protocol::Tcp),
        (key("10.96.0.20", 53, Protocol::Udp), Protocol::Udp),
        (tcp("10.96.0.21", 80), Protocol::Tcp),
    ] {
        assert!(st.frontends[&k].backends.is_empty());
        assert_eq!(
            resolve(&st, k.ip, k.port, proto, Some("n1"), true),
            ServiceDecision::Reject,
            "{k}"
        );
        assert_eq!(
            resolve(&st, k.ip, k.port, proto, None, false),
            ServiceDecision::Reject,
            "{k}"
        );
    }
}

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

#[test]
fn node_port_on_every_node_address_of_the_service_families() {
    let dual = nodeport_svc(
        "dual",
        r#"  clusterIPs: [10.96.0.30, "fd00:96::30"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack"#,
    );
    let m = model([yaml(NODES), dual, web_pods()]);
    // This node's own addresses: one the Node resource has, one only the host knows.
    let st = services(&m, Some("n1"), &[ip("192.168.0.1"), ip("172.16.0.1")]);
    let nodeports: Vec<(String, Option<String>)> = st
        .frontends
        .iter()
        .filter(|(_, f)| f.kind == FrontendKind::NodePort)
        .map(|(k, f)| (k.to_string(), f.node.clone()))
        .collect();
    let n = |s: &str| Some(s.to_string());
    assert_eq!(
        nodeports,
        [
            ("172.16.0.1:30080/TCP".to_string(), n("n1")),
            ("192.168.0.1:30080/TCP".to_string(), n("n1")),
            ("192.168.0.2:30080/TCP".to_string(), n("n2")),
            ("192.168.0.3:30080/TCP".to_string(), n("n3")),
            ("[fd01::1]:30080/TCP".to_string(), n("n1")),
            ("[fd01::2]:30080/TCP".to_string(), n("n2")),
        ]
    );
    // Each family's node ports have that family's backends only.
    let v6 = &st.frontends[&tcp("fd01::2", 30080)];
    assert_eq!(backend_ips(v6), ["fd00::1:1:8080@n1", "fd00::2:1:8080@n2"]);
    let v4 = &st.frontends[&tcp("192.168.0.3", 30080)];
    assert_eq!(v4.backends.len(), 3);
    assert!(v4.masquerade && !v4.external_local);
    // Plus the two cluster IPs.
    assert_eq!(
        st.frontends
            .values()
            .filter(|f| f.kind == FrontendKind::ClusterIP)
            .count(),
        2
    );

    // A single-stack IPv4 NodePort service opens no IPv6 node ports.
    let v4only = nodeport_svc("v4only", "  clusterIP: 10.96.0.31");
    let m = model([yaml(NODES), v4only, web_pods()]);
    let st = services(&m, None, &[]);
    assert!(st.frontends.keys().all(|k| k.ip.is_ipv4()));
    assert_eq!(st.frontends.len(), 4, "{:?}", st.frontends.keys());

    // A ClusterIP service opens none.
    let m = model([yaml(NODES), yaml(WEB), web_pods()]);
    let st = services(&m, Some("n1"), &[ip("172.16.0.1")]);
    assert_eq!(st.frontends.len(), 1);
}

#[test]
fn external_ips() {
    let svc = yaml(
        r#"
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: x}
spec:
  clusterIP: 10.96.0.40
  selector: {app: web}
  externalIPs: [203.0.113.7, "2001:db8::7"]
  ports: [{port: 80, targetPort: 8080}]
"#,
    );
    let m = model([svc, web_pods()]);
    let st = services(&m, None, &[]);
    // The service is IPv4 only: the IPv6 external IP is not served (kube-proxy has no IPv6
    // proxier for it).
    assert_eq!(st.frontends.len(), 2);
    let f = &st.frontends[&tcp("203.0.113.7", 80)];
    assert_eq!(f.kind, FrontendKind::ExternalIP);
    assert_eq!(f.backends.len(), 3);
    assert!(f.masquerade && !f.external_local);
    let (c, snat) = dnat(resolve(
        &st,
        ip("203.0.113.7"),
        80,
        Protocol::Tcp,
        Some("n2"),
        false,
    ));
    assert_eq!(c.len(), 3);
    assert!(snat);
}

#[test]
fn load_balancer_ingress() {
    let svc = yaml(
        r#"
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: x}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.50
  selector: {app: web}
  ports: [{port: 443, targetPort: 8443, nodePort: 30443}]
status:
  loadBalancer:
    ingress: [{ip: 198.51.100.9}, {hostname: lb.example.com}]
"#,
    );
    let m = model([yaml(NODES), svc, web_pods()]);
    let st = services(&m, None, &[]);
    let kinds: BTreeMap<String, FrontendKind> = st
        .frontends
        .iter()
        .map(|(k, f)| (k.to_string(), f.kind))
        .collect();
    assert_eq!(
        kinds,
        BTreeMap::from([
            ("10.96.0.50:443/TCP".to_string(), FrontendKind::ClusterIP),
            ("192.168.0.1:30443/TCP".to_string(), FrontendKind::NodePort),
            ("192.168.0.2:30443/TCP".to_string(), FrontendKind::NodePort),
            ("192.168.0.3:30443/TCP".to_string(), FrontendKind::NodePort),
            (
                "198.51.100.9:443/TCP".to_string(),
                FrontendKind::LoadBalancer
            ),
        ])
    );
    let f = &st.frontends[&tcp("198.51.100.9", 443)];
    assert_eq!(f.backends.len(), 3);
    assert_eq!(f.backends[0].port, 8443);
    assert!(f.masquerade);
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

#[test]
fn external_traffic_policy_local() {
    let m = model([yaml(NODES), yaml(LOCAL), local_pods()]);
    let st = services(&m, None, &[]);
    let np1 = &st.frontends[&tcp("192.168.0.1", 30060)];
    assert!(np1.external_local && !np1.masquerade);
    assert_eq!(np1.backends.len(), 2, "the list keeps every backend");
    let cip = &st.frontends[&tcp("10.96.0.60", 80)];
    assert!(!cip.external_local && !cip.masquerade);

    // Outside → node n1's node port: only n1's backend, source kept.
    let (c, snat) = dnat(resolve(
        &st,
        ip("192.168.0.1"),
        30060,
        Protocol::Tcp,
        Some("n1"),
        false,
    ));
    assert_eq!(c, ["10.244.1.10:8080"]);
    assert!(!snat, "eTP Local keeps the client source");
    // The receiving node defaults to the node owning the address.
    let (c, _) = dnat(resolve(
        &st,
        ip("192.168.0.2"),
        30060,
        Protocol::Tcp,
        None,
        false,
    ));
    assert_eq!(c, ["10.244.2.10:8080"]);
    // n3 has no local backend: drop (not reject), for node ports and external IPs.
    assert_eq!(
        resolve(
            &st,
            ip("192.168.0.3"),
            30060,
            Protocol::Tcp,
            Some("n3"),
            false
        ),
        ServiceDecision::Drop
    );
    assert_eq!(
        resolve(
            &st,
            ip("203.0.113.60"),
            80,
            Protocol::Tcp,
            Some("n3"),
            false
        ),
        ServiceDecision::Drop
    );
    let (c, snat) = dnat(resolve(
        &st,
        ip("203.0.113.60"),
        80,
        Protocol::Tcp,
        Some("n2"),
        false,
    ));
    assert_eq!(c, ["10.244.2.10:8080"]);
    assert!(!snat);
    // From inside the cluster the external frontends reach every backend (kube-proxy's
    // short-circuit), and the ClusterIP is unaffected by eTP.
    let (c, snat) = dnat(resolve(
        &st,
        ip("192.168.0.3"),
        30060,
        Protocol::Tcp,
        Some("n3"),
        true,
    ));
    assert_eq!(c.len(), 2);
    assert!(!snat);
    let (c, _) = dnat(resolve(
        &st,
        ip("10.96.0.60"),
        80,
        Protocol::Tcp,
        Some("n3"),
        true,
    ));
    assert_eq!(c.len(), 2);
}

#[test]
fn external_traffic_policy_cluster_masquerades() {
    let svc = LOCAL.replace(
        "externalTrafficPolicy: Local",
        "externalTrafficPolicy: Cluster",
    );
    let m = model([yaml(NODES), yaml(&svc), local_pods()]);
    let st = services(&m, None, &[]);
    for k in [tcp("192.168.0.3", 30060), tcp("203.0.113.60", 80)] {
        let f = &st.frontends[&k];
        assert!(f.masquerade && !f.external_local, "{k}");
        // Any backend, from a node with none of its own; always masqueraded (kube-proxy),
        // whether the chosen backend is local or not and whoever the client is.
        for (via, src_local) in [("n3", false), ("n1", false), ("n1", true)] {
            let (c, snat) = dnat(resolve(&st, k.ip, k.port, k.protocol, Some(via), src_local));
            assert_eq!(c, ["10.244.1.10:8080", "10.244.2.10:8080"], "{k} via {via}");
            assert!(snat, "{k} via {via}");
        }
    }
    // The default for a NodePort service is Cluster.
    let svc = LOCAL.replace("  externalTrafficPolicy: Local\n", "");
    let m = model([yaml(NODES), yaml(&svc), local_pods()]);
    let st = services(&m, None, &[]);
    assert!(st.frontends[&tcp("192.168.0.1", 30060)].masquerade);
}

#[test]
fn internal_traffic_policy_local() {
    let svc = yaml(
        r#"
apiVersion: v1
kind: Service
metadata: {name: itp, namespace: x}
spec:
  clusterIP: 10.96.0.70
  selector: {app: local}
  internalTrafficPolicy: Local
  ports: [{port: 80, targetPort: 8080}]
"#,
    );
    let m = model([svc, local_pods()]);
    let st = services(&m, None, &[]);
    let f = &st.frontends[&tcp("10.96.0.70", 80)];
    assert!(f.internal_local && !f.external_local && !f.masquerade);
    let (c, snat) = dnat(resolve(
        &st,
        ip("10.96.0.70"),
        80,
        Protocol::Tcp,
        Some("n2"),
        true,
    ));
    assert_eq!(c, ["10.244.2.10:8080"]);
    assert!(!snat);
    assert_eq!(
        resolve(&st, ip("10.96.0.70"), 80, Protocol::Tcp, Some("n3"), true),
        ServiceDecision::Drop
    );
    // The node unknown: no filtering is possible.
    let (c, _) = dnat(resolve(
        &st,
        ip("10.96.0.70"),
        80,
        Protocol::Tcp,
        None,
        true,
    ));
    assert_eq!(c.len(), 2);
}

#[test]
fn endpoint_slice_backed_service() {
    let rs = yaml(
        r#"
apiVersion: v1
kind: Service
metadata: {name: manual, namespace: x}
spec:
  clusterIPs: [10.96.0.80, "fd00:96::80"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  ports:
  - {name: http, port: 80}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: manual-v4, namespace: x, labels: {kubernetes.io/service-name: manual}}
addressType: IPv4
ports:
- {name: http, port: 8080}
- {name: dns, port: 5353, protocol: UDP}
endpoints:
- addresses: [10.244.1.1]
  nodeName: n1
  targetRef: {kind: Pod, namespace: x, name: a}
- addresses: [10.244.2.1]
- addresses: [10.244.9.9]
  conditions: {ready: false}
- addresses: [192.0.2.50]
  conditions: {ready: true}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: manual-v6, namespace: x, labels: {kubernetes.io/service-name: manual}}
addressType: IPv6
ports: [{name: http, port: 8081}]
endpoints:
- addresses: ["fd00::2:1"]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: other, namespace: x, labels: {kubernetes.io/service-name: other}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.244.7.7]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: manual, namespace: y, labels: {kubernetes.io/service-name: manual}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.244.6.6]
"#,
    );
    let m = model([rs, web_pods()]);
    let st = services(&m, None, &[]);
    let http4 = &st.frontends[&tcp("10.96.0.80", 80)];
    // 10.244.2.1 has no nodeName or targetRef: both come from the pod owning the address.
    assert_eq!(
        backend_ips(http4),
        [
            "10.244.1.1:8080@n1",
            "10.244.2.1:8080@n2",
            "192.0.2.50:8080@"
        ]
    );
    assert_eq!(
        http4.backends[1].endpoint,
        Some(("x".to_string(), "b".to_string()))
    );
    assert_eq!(http4.backends[2].endpoint, None);
    let dns4 = &st.frontends[&key("10.96.0.80", 53, Protocol::Udp)];
    assert_eq!(dns4.backends.len(), 3);
    assert_eq!(dns4.backends[0].port, 5353);
    let http6 = &st.frontends[&tcp("fd00:96::80", 80)];
    assert_eq!(backend_ips(http6), ["fd00::2:1:8081@n2"]);
    // The IPv6 slice has no dns port.
    let dns6 = &st.frontends[&key("fd00:96::80", 53, Protocol::Udp)];
    assert!(dns6.backends.is_empty());
    assert_eq!(
        resolve(&st, ip("fd00:96::80"), 53, Protocol::Udp, None, true),
        ServiceDecision::Reject
    );
}

#[test]
fn headless_service_has_no_frontends() {
    let svc = yaml(
        r#"
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: x}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{port: 80}]
"#,
    );
    let m = model([svc, web_pods()]);
    assert!(services(&m, None, &[]).frontends.is_empty());
    assert!(frontends_of(&m, "x", "headless", None, &[]).is_empty());
}

#[test]
fn dual_stack_frontends_get_same_family_backends() {
    let svc = yaml(
        r#"
apiVersion: v1
kind: Service
metadata: {name: dual, namespace: x}
spec:
  clusterIPs: [10.96.0.90, "fd00:96::90"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: PreferDualStack
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#,
    );
    let m = model([svc, web_pods()]);
    let st = services(&m, None, &[]);
    assert_eq!(st.frontends.len(), 2);
    assert_eq!(
        backend_ips(&st.frontends[&tcp("10.96.0.90", 80)]),
        [
            "10.244.1.1:8080@n1",
            "10.244.2.1:8080@n2",
            "10.244.3.1:8080@n3"
        ]
    );
    assert_eq!(
        backend_ips(&st.frontends[&tcp("fd00:96::90", 80)]),
        ["fd00::1:1:8080@n1", "fd00::2:1:8080@n2"]
    );
    let (c, _) = dnat(resolve(
        &st,
        ip("fd00:96::90"),
        80,
        Protocol::Tcp,
        None,
        true,
    ));
    assert!(c.iter().all(|b| b.starts_with("fd00::")));
}

#[test]
fn publish_not_ready_addresses_admits_unready_pods() {
    let svc = WEB.replace(
        "  selector:",
        "  publishNotReadyAddresses: true\n  selector:",
    );
    let pods = vec![pod(P {
        name: "slow",
        ips: &["10.244.1.9"],
        ready: false,
        ..Default::default()
    })];
    let m = model([yaml(&svc), pods.clone()]);
    assert_eq!(
        backend_ips(&services(&m, None, &[]).frontends[&tcp("10.96.0.10", 80)]),
        ["10.244.1.9:8080@n1"]
    );
    let m = model([yaml(WEB), pods]);
    assert!(
        services(&m, None, &[]).frontends[&tcp("10.96.0.10", 80)]
            .backends
            .is_empty()
    );
}

#[test]
fn relabelling_one_pod_changes_only_its_service() {
    let other = yaml(
        r#"
apiVersion: v1
kind: Service
metadata: {name: other, namespace: x}
spec:
  type: NodePort
  clusterIP: 10.96.0.100
  selector: {tier: front}
  ports: [{port: 80, nodePort: 30100}]
"#,
    );
    let tier = |name: &'static str, node: &'static str, a: &'static [&'static str]| {
        pod(P {
            name,
            node,
            ips: a,
            labels: &[("app", "web"), ("tier", "front")],
            ..Default::default()
        })
    };
    let pods = vec![
        tier("a", "n1", &["10.244.1.1"]),
        tier("b", "n2", &["10.244.2.1"]),
    ];
    let mut m = model([yaml(NODES), yaml(WEB), other, pods]);
    let before = services(&m, None, &[]);

    // Pod a leaves `app: web` but stays `tier: front`.
    let old_labels = m.endpoints()[0].labels.clone();
    let relabelled = pod(P {
        name: "a",
        node: "n1",
        ips: &["10.244.1.1"],
        labels: &[("app", "api"), ("tier", "front")],
        ..Default::default()
    });
    let new_labels = match &relabelled {
        Resource::Pod(p) => p.metadata.labels.clone(),
        _ => unreachable!(),
    };
    m.apply(relabelled);
    let after = services(&m, None, &[]);

    let delta = before.diff(&after);
    assert!(delta.removed.is_empty());
    assert_eq!(
        delta.changed.keys().cloned().collect::<Vec<_>>(),
        [tcp("10.96.0.10", 80)]
    );
    assert_eq!(
        backend_ips(&delta.changed[&tcp("10.96.0.10", 80)]),
        ["10.244.2.1:8080@n2"]
    );

    // The incremental path finds the same: the services the old and new labels select, each
    // recomputed alone and swapped in.
    let mut affected = services_selecting(&m, "x", &old_labels);
    affected.extend(services_selecting(&m, "x", &new_labels));
    affected.sort();
    affected.dedup();
    assert_eq!(
        affected,
        [
            ("x".to_string(), "other".to_string()),
            ("x".to_string(), "web".to_string())
        ]
    );
    let mut incremental = before.clone();
    let mut total = FrontendDelta::default();
    for (ns, name) in &affected {
        let d = incremental.replace_service(ns, name, frontends_of(&m, ns, name, None, &[]));
        total.changed.extend(d.changed);
        total.removed.extend(d.removed);
    }
    assert_eq!(incremental, after);
    assert_eq!(total, delta);
}

#[test]
fn replace_service_removes_and_keeps_foreign_keys() {
    let m = model([yaml(NODES), yaml(WEB), web_pods()]);
    let mut st = services(&m, None, &[]);
    // Removing the service removes its frontends.
    let d = st.replace_service("x", "web", BTreeMap::new());
    assert_eq!(d.removed.len(), 1);
    assert!(st.frontends.is_empty());
    // Putting them back restores them.
    let d = st.replace_service("x", "web", frontends_of(&m, "x", "web", None, &[]));
    assert_eq!(d.changed.len(), 1);
    assert_eq!(st, services(&m, None, &[]));
    // Another service claiming the same frontend does not take it over.
    let mut theirs = frontends_of(&m, "x", "web", None, &[]);
    for f in theirs.values_mut() {
        f.service.1 = "thief".to_string();
    }
    let d = st.replace_service("x", "thief", theirs);
    assert!(d.is_empty());
    assert_eq!(st, services(&m, None, &[]));
}

#[test]
fn conflicting_frontends_go_to_the_first_service() {
    let web2 = WEB.replace("name: web,", "name: web2,");
    let web0 = WEB.replace("name: web,", "name: aaa,");
    let m = model([yaml(WEB), yaml(&web2), yaml(&web0), web_pods()]);
    let st = services(&m, None, &[]);
    assert_eq!(st.frontends.len(), 1);
    assert_eq!(st.frontends[&tcp("10.96.0.10", 80)].service.1, "aaa");
}

#[test]
fn output_is_deterministic() {
    let mk = |order: bool| {
        let mut parts = vec![
            yaml(NODES),
            yaml(WEB),
            yaml(LOCAL),
            web_pods(),
            local_pods(),
        ];
        if order {
            parts.reverse();
            for p in &mut parts {
                p.reverse();
            }
        }
        services(
            &model(parts),
            Some("n1"),
            &[ip("172.16.0.1"), ip("fd02::1")],
        )
    };
    let a = mk(false);
    assert_eq!(a, mk(true));
    for f in a.frontends.values() {
        assert!(
            f.backends.windows(2).all(|w| w[0] < w[1]),
            "sorted, no duplicates"
        );
    }
}

#[test]
fn hairpin_is_masqueraded() {
    let m = model([yaml(WEB), web_pods()]);
    let st = services(&m, None, &[]);
    let f = &st.frontends[&tcp("10.96.0.10", 80)];
    assert!(hairpin_snat(ip("10.244.1.1"), &f.backends[0]));
    assert!(!hairpin_snat(ip("10.244.2.1"), &f.backends[0]));
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

#[test]
fn workload_endpoint_readiness_and_current_labels() {
    // Endpoints known only from their WorkloadEndpoint: `spec.ready` decides.
    // Internal records cannot be parsed as user files; decode them as the store does.
    let rs: Vec<Resource> = [WEP_READY, WEP_UNREADY]
        .iter()
        .map(|t| serde_yaml_ng::from_str(t).unwrap())
        .collect();
    let m = model([yaml(WEB), rs]);
    assert_eq!(
        backend_ips(&services(&m, None, &[]).frontends[&tcp("10.96.0.10", 80)]),
        ["10.244.1.21:8080@n1"]
    );
    // The Pod's current labels win over the endpoint record's: relabelled out, no backend.
    let mut m = m;
    m.apply(pod(P {
        name: "w1",
        node: "n1",
        ips: &["10.244.1.21"],
        labels: &[("app", "api")],
        ..Default::default()
    }));
    assert!(
        services(&m, None, &[]).frontends[&tcp("10.96.0.10", 80)]
            .backends
            .is_empty()
    );
}

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
        Kind::Service => m.services.get(&nn).cloned().map(Resource::Service),
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

#[test]
fn incremental_updates_match_a_full_recompute() {
    enum Step {
        Apply(Box<Resource>),
        Remove(ResourceKey),
    }
    let k = |kind, ns: Option<&str>, name: &str| ResourceKey::new(kind, ns, name);
    let svc_web_9090 = WEB.replace("targetPort: 8080", "targetPort: 9090");
    let steps: Vec<(&str, Step, Vec<&str>)> = vec![
        (
            "relabel pod a out of web",
            Step::Apply(Box::new(pod(P {
                name: "a",
                node: "n1",
                ips: &["10.244.1.1", "fd00::1:1"],
                labels: &[("app", "api")],
                ..Default::default()
            }))),
            vec!["web"],
        ),
        (
            // b backs web by selector and manual through its slice (by address).
            "remove pod b",
            Step::Remove(k(Kind::Pod, Some("x"), "b")),
            vec!["manual", "web"],
        ),
        (
            "a local pod on n3",
            Step::Apply(Box::new(pod(P {
                name: "z",
                node: "n3",
                ips: &["10.244.3.30"],
                labels: &[("app", "local")],
                ..Default::default()
            }))),
            vec!["local"],
        ),
        (
            "change web's targetPort",
            Step::Apply(Box::new(yaml(&svc_web_9090).remove(0))),
            vec!["web"],
        ),
        (
            "delete manual's slice",
            Step::Remove(k(Kind::EndpointSlice, Some("x"), "manual-v4")),
            vec!["manual"],
        ),
        (
            "a fourth node",
            Step::Apply(Box::new(
                yaml(
                    r#"
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: n4}
spec: {bgp: {ipv4Address: 192.168.0.4/24}}
"#,
                )
                .remove(0),
            )),
            vec!["local"],
        ),
        (
            "a pod-less ready endpoint joins web",
            Step::Apply(Box::new(serde_yaml_ng::from_str(WEP_READY).unwrap())),
            vec!["web"],
        ),
        (
            "delete service local",
            Step::Remove(k(Kind::Service, Some("x"), "local")),
            vec!["local"],
        ),
        (
            "a namespace label changes nothing",
            Step::Apply(Box::new(
                yaml("apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {a: b}}")
                    .remove(0),
            )),
            vec![],
        ),
    ];

    let mut m = model([
        yaml(NODES),
        yaml(WEB),
        yaml(LOCAL),
        yaml(SLICED),
        web_pods(),
        local_pods(),
    ]);
    let mut st = services(&m, None, &[]);
    assert_eq!(st.frontends_of_service("x", "manual").count(), 1);
    for (what, step, want) in steps {
        let (old, new) = match step {
            Step::Apply(r) => {
                let old = current(&m, &r.key());
                m.apply((*r).clone());
                (old, Some(*r))
            }
            Step::Remove(key) => {
                let old = current(&m, &key);
                assert!(old.is_some(), "{what}: nothing to remove");
                m.remove(&key);
                (old, None)
            }
        };
        let affected = affected_services(&m, old.as_ref(), new.as_ref());
        let names: Vec<&str> = affected.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, want, "{what}");
        let full = services(&m, None, &[]);
        let expected = st.diff(&full);
        let mut delta = FrontendDelta::default();
        for (ns, name) in &affected {
            let d = st.replace_service(ns, name, frontends_of(&m, ns, name, None, &[]));
            delta.changed.extend(d.changed);
            delta.removed.extend(d.removed);
        }
        assert_eq!(st, full, "{what}");
        assert_eq!(delta, expected, "{what}");
        if !want.is_empty() {
            assert!(!delta.is_empty(), "{what}: expected a change");
        }
    }
}
