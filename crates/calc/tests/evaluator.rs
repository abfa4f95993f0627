//! The reference evaluator beyond pod-to-pod tables: which rule decided, services (DNAT,
//! reject, policy per backend), anti-spoofing, NAT outgoing, host endpoints.

use std::net::IpAddr;

use serval_calc::evaluator::{DecidedBy, Evaluator, Packet};
use serval_calc::policy::{Direction, IpProto, PolicyKind};
use serval_calc::scenarios::test_cluster;
use serval_calc::{EndpointKey, Model};
use serval_model::parse_documents;

fn model(extra: &str) -> Model {
    let (resources, _, _) = test_cluster();
    let mut m = Model::from_resources(resources);
    for r in parse_documents("test", extra).unwrap_or_else(|e| panic!("{e}")) {
        m.apply(r);
    }
    m
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

// Standard test cluster addresses: ns index i, pod index j → 10.0.i.(j+1).
const XA: &str = "10.0.0.1";
const XB: &str = "10.0.0.2";
const YA: &str = "10.0.1.1";
const ZA: &str = "10.0.2.1";

const POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-y, namespace: x}
spec:
  podSelector:
    matchLabels: {pod: a}
  ingress:
  - from:
    - namespaceSelector:
        matchLabels: {ns: y}
    ports:
    - {port: 80}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  clusterIP: 10.96.0.10
  selector: {pod: a}
  ports:
  - {port: 8080, targetPort: 80}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: x}
spec:
  clusterIP: 10.96.0.11
  selector: {pod: nobody}
  ports:
  - {port: 80}
"#;

#[test]
fn the_deciding_rule_and_end_of_tier_are_reported() {
    let ev = Evaluator::new(&model(POLICY));
    let v = ev.evaluate(&Packet::l4(ip(YA), ip(XA), IpProto::Tcp, 80));
    assert!(v.allowed, "{}", v.reason);
    let Some(DecidedBy::Rule(id)) = v.ingress.as_ref().map(|d| d.by.clone()) else {
        panic!("a rule decides: {v:?}")
    };
    assert_eq!(id.policy.name, "a-from-y");
    assert_eq!(id.policy.kind, PolicyKind::K8s);
    assert_eq!(id.policy.tier, "default");
    assert_eq!((id.direction, id.index), (Direction::Ingress, 0));
    assert_eq!(v.egress.as_ref().map(|d| &d.by), Some(&DecidedBy::NoPolicy));

    let v = ev.evaluate(&Packet::l4(ip(ZA), ip(XA), IpProto::Tcp, 80));
    assert!(!v.allowed);
    assert_eq!(
        v.ingress.map(|d| d.by),
        Some(DecidedBy::EndOfTier("default".into()))
    );
    // Port 81 is not in the rule.
    assert!(
        !ev.evaluate(&Packet::l4(ip(YA), ip(XA), IpProto::Tcp, 81))
            .allowed
    );
}

#[test]
fn services_are_judged_per_backend_after_dnat() {
    let ev = Evaluator::new(&model(POLICY));
    // y/a → web:8080 → x/a:80, which admits namespace y on 80.
    let v = ev.evaluate(&Packet::l4(ip(YA), ip("10.96.0.10"), IpProto::Tcp, 8080));
    assert!(v.allowed, "{}", v.reason);
    let nat = v.nat.expect("DNAT applied");
    assert_eq!(nat.candidates.len(), 1);
    assert_eq!(nat.candidates[0].ip, ip(XA));
    assert_eq!(nat.candidates[0].port, 80);
    assert!(!nat.snat_to_node);
    assert_eq!(v.per_backend.len(), 1);
    // z/a is denied by x/a's ingress, after DNAT.
    let v = ev.evaluate(&Packet::l4(ip(ZA), ip("10.96.0.10"), IpProto::Tcp, 8080));
    assert!(!v.allowed);
    assert!(matches!(
        v.ingress.map(|d| d.by),
        Some(DecidedBy::EndOfTier(_))
    ));
    // A service without backends rejects.
    let v = ev.evaluate(&Packet::l4(ip(YA), ip("10.96.0.11"), IpProto::Tcp, 80));
    assert!(!v.allowed);
    assert!(v.reason.contains("without backends"), "{}", v.reason);
    // The wrong protocol is not the service.
    let v = ev.evaluate(&Packet::l4(ip(YA), ip("10.96.0.10"), IpProto::Udp, 8080));
    assert!(v.nat.is_none());
}

#[test]
fn a_pod_sending_from_another_address_is_dropped() {
    let ev = Evaluator::new(&model(""));
    let mut p = Packet::l4(ip(XB), ip(YA), IpProto::Tcp, 80);
    p.sender = Some(EndpointKey::new("x", "a"));
    let v = ev.evaluate(&p);
    assert!(!v.allowed);
    assert_eq!(v.egress.map(|d| d.by), Some(DecidedBy::AntiSpoofing));
    p.src = ip(XA);
    assert!(ev.evaluate(&p).allowed);
}

#[test]
fn nat_outgoing_masquerades_only_leaving_the_pools() {
    let ev = Evaluator::new(&model(
        r#"
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pods}
spec: {cidr: 10.0.0.0/16, natOutgoing: true}
"#,
    ));
    let out = ev.evaluate(&Packet::l4(ip(XA), ip("203.0.113.7"), IpProto::Tcp, 443));
    assert!(out.allowed);
    assert!(out.nat.is_some_and(|n| n.masquerade));
    let pod = ev.evaluate(&Packet::l4(ip(XA), ip(YA), IpProto::Tcp, 80));
    assert!(pod.nat.is_none());
    let node = ev.evaluate(&Packet::l4(ip(XA), ip("192.168.0.2"), IpProto::Tcp, 80));
    assert!(node.nat.is_none(), "pod to node is not masqueraded");
}

#[test]
fn egress_named_ports_resolve_on_the_destination_pod() {
    // x/a may send to y's pods on the port named serve-81-tcp; z's pods expose the same
    // name but are not peers.
    let ev = Evaluator::new(&model(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named, namespace: x}
spec:
  podSelector:
    matchLabels: {pod: a}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector:
        matchLabels: {ns: y}
    ports:
    - port: serve-81-tcp
"#,
    ));
    assert!(
        ev.evaluate(&Packet::l4(ip(XA), ip(YA), IpProto::Tcp, 81))
            .allowed
    );
    assert!(
        !ev.evaluate(&Packet::l4(ip(XA), ip(YA), IpProto::Tcp, 80))
            .allowed
    );
    assert!(
        !ev.evaluate(&Packet::l4(ip(XA), ip(ZA), IpProto::Tcp, 81))
            .allowed
    );
}

#[test]
fn host_endpoints_deny_without_policy_except_failsafe_and_egress_failsafe() {
    let ev = Evaluator::new(&model(
        r#"
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: n1, labels: {role: host}}
spec: {node: node-1, expectedIPs: [192.168.0.1]}
"#,
    ));
    // No policy selects the host endpoint: denied, except failsafe.
    let v = ev.evaluate(&Packet::l4(ip(XB), ip("192.168.0.1"), IpProto::Tcp, 80));
    assert!(!v.allowed);
    assert_eq!(
        v.ingress.map(|d| d.by),
        Some(DecidedBy::HostEndpointDefaultDeny)
    );
    let v = ev.evaluate(&Packet::l4(ip(XB), ip("192.168.0.1"), IpProto::Tcp, 22));
    assert!(v.allowed);
    assert!(matches!(
        v.ingress.map(|d| d.by),
        Some(DecidedBy::Failsafe(_))
    ));
    // From the host: outbound failsafe (DNS) passes, other egress is denied.
    let dns = ev.evaluate(&Packet::l4(
        ip("192.168.0.1"),
        ip("203.0.113.1"),
        IpProto::Udp,
        53,
    ));
    assert!(dns.allowed, "{}", dns.reason);
    let web = ev.evaluate(&Packet::l4(
        ip("192.168.0.1"),
        ip("203.0.113.1"),
        IpProto::Tcp,
        80,
    ));
    assert!(!web.allowed);
}

#[test]
fn host_endpoint_policy_skips_the_hosts_own_workloads() {
    let ev = Evaluator::new(&model(
        r#"
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: n1, labels: {role: host}}
spec: {node: node-1, expectedIPs: [192.168.0.1]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: host-egress}
spec:
  selector: role == 'host'
  types: [Egress]
"#,
    ));
    // x/a runs on node-1: not policed by node-1's host endpoint; x/b on node-2 is.
    let local = ev.evaluate(&Packet::l4(ip("192.168.0.1"), ip(XA), IpProto::Tcp, 80));
    assert!(local.allowed, "{}", local.reason);
    assert!(local.egress.is_none());
    let remote = ev.evaluate(&Packet::l4(ip("192.168.0.1"), ip(XB), IpProto::Tcp, 80));
    assert!(!remote.allowed);
    assert!(matches!(
        remote.egress.map(|d| d.by),
        Some(DecidedBy::EndOfTier(_))
    ));
}
