//! The delta between two desired states is minimal: a change touches only the ip sets, the
//! endpoints and the frontends it affects.

use std::collections::BTreeSet;

use serval_calc::delta::EndpointChange;
use serval_calc::ipsets::IpSetMembers;
use serval_calc::scenarios::test_cluster;
use serval_calc::{EndpointKey, Model, desired_state, diff};
use serval_model::{Resource, parse_documents};

fn apply(m: &mut Model, yaml: &str) {
    for r in parse_documents("test", yaml).unwrap_or_else(|e| panic!("{e}")) {
        m.apply(r);
    }
}

fn base() -> Model {
    let (resources, _, _) = test_cluster();
    let mut m = Model::from_resources(resources);
    apply(
        &mut m,
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: clients-to-a, namespace: x}
spec:
  podSelector:
    matchLabels: {pod: a}
  ingress:
  - from:
    - podSelector:
        matchLabels: {role: client}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: y-from-x, namespace: y}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector:
        matchLabels: {ns: x}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  clusterIP: 10.96.0.10
  selector: {pod: a}
  ports:
  - {port: 80, targetPort: 80}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: x}
spec:
  clusterIP: 10.96.0.11
  selector: {pod: b}
  ports:
  - {port: 5432, targetPort: 80}
"#,
    );
    m
}

fn key(ns: &str, pod: &str) -> EndpointKey {
    EndpointKey::new(ns, pod)
}

#[test]
fn relabelling_a_pod_changes_one_set_and_that_endpoint_only() {
    let mut m = base();
    let old = desired_state(&m, None);
    let mut pod = m.pods[&("x".to_string(), "b".to_string())].clone();
    pod.metadata
        .labels
        .insert("role".to_string(), "client".to_string());
    m.apply(Resource::Pod(pod));
    let new = desired_state(&m, None);
    let d = diff(&old, &new);

    // Only the role=client set gained x/b's addresses.
    assert_eq!(d.ipsets_changed.len(), 1, "{d:#?}");
    let id = d.ipsets_changed.iter().next().unwrap();
    let IpSetMembers::Nets(nets) = &new.ipsets[id] else {
        panic!("a selector set holds networks")
    };
    assert_eq!(nets.len(), 2, "x/b's IPv4 and IPv6 address: {nets:?}");
    assert!(d.ipsets_removed.is_empty());
    // x/b itself changed (labels), its policy did not; x/a's rules refer to the set by id,
    // so x/a is untouched, as is everything else.
    assert_eq!(
        d.endpoints_changed.into_iter().collect::<Vec<_>>(),
        [(
            key("x", "b"),
            EndpointChange {
                endpoint: true,
                policy: false
            }
        )]
    );
    assert!(d.frontends_changed.is_empty() && d.frontends_removed.is_empty());
    assert!(!d.nat_outgoing_changed && !d.failsafe_changed);
}

#[test]
fn adding_a_policy_for_one_pod_changes_that_pod_and_its_new_set() {
    let m0 = base();
    let old = desired_state(&m0, None);
    let mut m = m0.clone();
    apply(
        &mut m,
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: c-from-b, namespace: z}
spec:
  podSelector:
    matchLabels: {pod: c}
  ingress:
  - from:
    - podSelector:
        matchLabels: {pod: b}
"#,
    );
    let new = desired_state(&m, None);
    let d = diff(&old, &new);
    assert_eq!(
        d.endpoints_changed.into_iter().collect::<Vec<_>>(),
        [(
            key("z", "c"),
            EndpointChange {
                endpoint: false,
                policy: true
            }
        )]
    );
    // One new set: pods b of namespace z.
    assert_eq!(d.ipsets_changed.len(), 1);
    let id = d.ipsets_changed.iter().next().unwrap();
    assert!(!old.ipsets.contains_key(id));
    let addrs: BTreeSet<String> = match &new.ipsets[id] {
        IpSetMembers::Nets(n) => n.iter().map(|n| n.to_string()).collect(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        addrs,
        BTreeSet::from(["10.0.2.2/32".to_string(), "fd00:10::2:2/128".to_string()])
    );
    assert!(d.frontends_changed.is_empty() && d.endpoints_removed.is_empty());

    // Removing it again removes the set and restores the endpoint's policy.
    let back = diff(&new, &desired_state(&m0, None));
    assert_eq!(back.ipsets_removed.len(), 1);
    assert_eq!(back.endpoints_changed.len(), 1);
}

#[test]
fn changing_a_services_backends_changes_only_its_frontends() {
    let mut m = base();
    let old = desired_state(&m, None);
    let mut svc = m.service("x", "web").expect("x/web");
    svc.spec.selector.insert("pod".to_string(), "c".to_string());
    m.apply(Resource::Service(svc));
    let new = desired_state(&m, None);
    let d = diff(&old, &new);
    assert!(!d.frontends_changed.is_empty(), "{d:#?}");
    for k in &d.frontends_changed {
        assert_eq!(
            new.services.frontends[k].service,
            ("x".to_string(), "web".to_string()),
            "only the web service's frontends change"
        );
    }
    assert!(d.frontends_removed.is_empty());
    assert!(d.endpoints_changed.is_empty() && d.ipsets_changed.is_empty());
}

#[test]
fn identical_selectors_share_one_set() {
    let mut m = base();
    let before = desired_state(&m, None).ipsets.len();
    // Same selector (pods role=client in x), spelled with matchExpressions this time.
    apply(
        &mut m,
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: clients-to-c, namespace: x}
spec:
  podSelector:
    matchLabels: {pod: c}
  ingress:
  - from:
    - podSelector:
        matchExpressions:
        - {key: role, operator: In, values: [client]}
"#,
    );
    let s = desired_state(&m, None);
    // `role in {'client'}` prints differently from `role == 'client'`: a second set. The
    // same spelling in a third policy must reuse it.
    assert_eq!(s.ipsets.len(), before + 1);
    apply(
        &mut m,
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: clients-to-b, namespace: x}
spec:
  podSelector:
    matchLabels: {pod: b}
  ingress:
  - from:
    - podSelector:
        matchLabels: {role: client}
"#,
    );
    assert_eq!(desired_state(&m, None).ipsets.len(), before + 1);
}

#[test]
fn a_node_state_holds_its_local_endpoints_and_host_endpoints() {
    let mut m = base();
    apply(
        &mut m,
        r#"
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: n1-eth0, labels: {role: host}}
spec: {node: node-1, interfaceName: eth0, expectedIPs: [192.168.0.1]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: hosts}
spec:
  selector: role == 'host'
  ingress:
  - action: Allow
    protocol: TCP
    destination: {ports: [8080]}
"#,
    );
    let s = desired_state(&m, Some("node-1"));
    let pods: Vec<String> = s.endpoints.keys().map(|k| k.to_string()).collect();
    assert_eq!(pods, ["x/a", "x/c", "y/a", "y/c", "z/a", "z/c"]);
    assert_eq!(s.host_endpoints.len(), 1);
    let h = &s.host_endpoints["n1-eth0"];
    assert_eq!(h.policy.ingress.len(), 1);
    assert!(h.policy.egress.is_empty());
    assert!(
        s.failsafe
            .inbound
            .iter()
            .any(|f| f.port == 22 && f.protocol == serval_model::types::Protocol::Tcp)
    );
    assert!(desired_state(&m, Some("node-2")).host_endpoints.is_empty());
}
