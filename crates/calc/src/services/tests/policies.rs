//! Per-packet decisions: reject, traffic policies, masquerade, hairpin.

use super::*;

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

#[test]
fn external_traffic_policy_local() {
    let m = model([yaml(NODES), yaml(LOCAL), local_pods()]);
    let st = services(&m, None, &[]);
    let np1 = &st.frontends[&tcp("192.168.0.1", 30060)];
    assert!(np1.external_local && !np1.masquerade);
    assert_eq!(np1.backends.len(), 2, "the list keeps every backend");
    // What a renderer on each node programs for outside and inside traffic.
    let ips = |v: Vec<Backend>| v.into_iter().map(|b| b.ip.to_string()).collect::<Vec<_>>();
    assert_eq!(ips(np1.external_backends(None)), ["10.244.1.10"]);
    assert_eq!(ips(np1.external_backends(Some("n2"))), ["10.244.2.10"]);
    assert!(np1.external_backends(Some("n3")).is_empty());
    assert_eq!(np1.internal_backends(Some("n3")).len(), 2);
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
fn hairpin_is_masqueraded() {
    let m = model([yaml(WEB), web_pods()]);
    let st = services(&m, None, &[]);
    let f = &st.frontends[&tcp("10.96.0.10", 80)];
    assert!(hairpin_snat(ip("10.244.1.1"), &f.backends[0]));
    assert!(!hairpin_snat(ip("10.244.2.1"), &f.backends[0]));
}
