//! Frontends and backends: addresses × ports, target ports, slices, families.

use super::*;

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
ports: [{name: http, port: 8081}, {name: dns, port: 5353, protocol: TCP}]
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
    // The IPv6 slice has no UDP dns port (a TCP port of that name does not count).
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

/// One service whose frontends meet on one key (an externalIP and a LoadBalancer ingress
/// equal to a node address, on the node port): the first kind (NodePort, then ExternalIP,
/// then LoadBalancer) keeps the key, with the port's backends; the tracker agrees.
#[test]
fn frontends_of_one_service_on_one_key_keep_the_first_kind() {
    let svc = yaml(
        r#"
apiVersion: v1
kind: Service
metadata: {name: same, namespace: x}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.44
  selector: {app: web}
  externalIPs: [192.168.0.1, 203.0.113.9]
  ports: [{port: 30080, targetPort: 8080, nodePort: 30080}]
status:
  loadBalancer:
    ingress: [{ip: 192.168.0.1}, {ip: 203.0.113.9}, {ip: 198.51.100.4}]
"#,
    );
    let m = model([yaml(NODES), svc, web_pods()]);
    let st = services(&m, None, &[]);
    let kind = |a: &str| st.frontends[&tcp(a, 30080)].kind;
    assert_eq!(kind("192.168.0.1"), FrontendKind::NodePort);
    assert_eq!(kind("203.0.113.9"), FrontendKind::ExternalIP);
    assert_eq!(kind("198.51.100.4"), FrontendKind::LoadBalancer);
    assert_eq!(kind("10.96.0.44"), FrontendKind::ClusterIP);
    // Cluster IP, three node addresses, one more external IP, one more ingress address.
    assert_eq!(st.frontends.len(), 6);
    for f in st.frontends.values() {
        assert_eq!(f.backends.len(), 3, "{f:?}");
    }
    let (_, tracked) = ServiceTracker::build(&m, None, &[]);
    assert_eq!(tracked, st);
    let one = frontends_of(&m, "x", "same", None, &[]);
    assert_eq!(one, st.frontends);
}
