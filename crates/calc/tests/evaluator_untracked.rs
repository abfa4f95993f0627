//! The reference evaluator with untracked (`doNotTrack`) host endpoint policy: after the
//! failsafe ports, before ordinary policy; Allow and Deny decide, anything else goes on.

use std::net::IpAddr;

use serval_calc::Model;
use serval_calc::evaluator::{DecidedBy, Evaluator, Packet};
use serval_calc::policy::IpProto;
use serval_calc::scenarios::test_cluster;
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

const HOST: &str = "192.168.0.1";
const XB: &str = "10.0.0.2";

const POLICIES: &str = r#"
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: n1, labels: {role: host}}
spec: {node: node-1, expectedIPs: [192.168.0.1]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: raw}
spec:
  selector: role == 'host'
  doNotTrack: true
  applyOnForward: true
  types: [Ingress, Egress]
  ingress:
  - {action: Deny, protocol: TCP, destination: {ports: [8080]}}
  - {action: Allow, protocol: UDP, destination: {ports: [5353]}}
  - {action: Deny, protocol: TCP, destination: {ports: [22]}}
  egress:
  - {action: Deny, protocol: UDP, destination: {nets: [203.0.113.0/24]}}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: tracked}
spec:
  selector: role == 'host'
  types: [Ingress, Egress]
  ingress: [{action: Allow, protocol: TCP, destination: {ports: [8080, 9090]}}]
  egress: [{action: Allow}]
"#;

fn eval(src: &str, dst: &str, proto: IpProto, port: u16) -> serval_calc::evaluator::Verdict {
    Evaluator::new(&model(POLICIES)).evaluate(&Packet::l4(ip(src), ip(dst), proto, port))
}

#[test]
fn untracked_deny_wins_over_ordinary_allow() {
    let v = eval(XB, HOST, IpProto::Tcp, 8080);
    assert!(!v.allowed, "{}", v.reason);
    assert!(
        matches!(v.ingress.map(|d| d.by), Some(DecidedBy::Rule(r)) if r.to_string().contains("raw")),
    );
}

#[test]
fn untracked_allow_wins_over_ordinary_deny() {
    let v = eval(XB, HOST, IpProto::Udp, 5353);
    assert!(v.allowed, "{}", v.reason);
}

#[test]
fn no_untracked_decision_goes_on_to_ordinary_policy() {
    let v = eval(XB, HOST, IpProto::Tcp, 9090);
    assert!(v.allowed, "{}", v.reason);
    assert!(
        matches!(v.ingress.map(|d| d.by), Some(DecidedBy::Rule(r)) if r.to_string().contains("tracked"))
    );
    let v = eval(XB, HOST, IpProto::Tcp, 80);
    assert!(!v.allowed, "{}", v.reason);
    assert!(matches!(
        v.ingress.map(|d| d.by),
        Some(DecidedBy::EndOfTier(_))
    ));
}

#[test]
fn failsafe_ports_come_before_untracked_policy() {
    // SSH is a default inbound failsafe port: the untracked Deny of TCP 22 does not close it.
    let v = eval(XB, HOST, IpProto::Tcp, 22);
    assert!(v.allowed, "{}", v.reason);
    assert!(matches!(
        v.ingress.map(|d| d.by),
        Some(DecidedBy::Failsafe(_))
    ));
}

#[test]
fn untracked_egress() {
    let v = eval(HOST, "203.0.113.7", IpProto::Udp, 9999);
    assert!(!v.allowed, "{}", v.reason);
    let v = eval(HOST, "198.51.100.7", IpProto::Udp, 9999);
    assert!(v.allowed, "{}", v.reason);
}

#[test]
fn untracked_policy_is_not_ordinary_policy() {
    // Only an untracked policy selects the host endpoint: its ordinary direction has no
    // tier, so the host default (deny) applies to what the untracked rules do not decide.
    let ev = Evaluator::new(&model(
        r#"
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: n1, labels: {role: host}}
spec: {node: node-1, expectedIPs: [192.168.0.1]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: raw}
spec:
  selector: role == 'host'
  doNotTrack: true
  applyOnForward: true
  ingress: [{action: Allow, protocol: TCP, destination: {ports: [80]}}]
"#,
    ));
    let v = ev.evaluate(&Packet::l4(ip(XB), ip(HOST), IpProto::Tcp, 80));
    assert!(v.allowed, "{}", v.reason);
    let v = ev.evaluate(&Packet::l4(ip(XB), ip(HOST), IpProto::Tcp, 81));
    assert!(!v.allowed, "{}", v.reason);
    assert_eq!(
        v.ingress.map(|d| d.by),
        Some(DecidedBy::HostEndpointDefaultDeny)
    );
}

/// The compiled verdict sets (what the eBPF host endpoint program looks up) agree with the
/// evaluator: the untracked set first (a rule's verdict decides; "no policy" / "passed every
/// tier" go on), then the ordinary set.
#[test]
fn compiled_untracked_and_ordinary_sets_agree_with_the_evaluator() {
    use serval_calc::compile::hep::{host_endpoint_key, untracked_host_endpoint_key};
    use serval_calc::compile::{
        PolicyIndex, PolicyVerdict, RULE_NO_POLICY, RULE_PASSED_ALL_TIERS, compile,
    };
    use serval_calc::policy::Direction;

    let m = model(POLICIES);
    let ev = Evaluator::new(&m);
    let c = compile(&serval_calc::desired_state(&m, Some("node-1")));
    let idx = PolicyIndex::new(&c);
    let ep = c.endpoints[&host_endpoint_key("n1")];
    let uep = c.endpoints[&untracked_host_endpoint_key("n1")];
    let mut checked = 0;
    for (dir, remote) in [
        (Direction::Ingress, XB),
        (Direction::Ingress, "203.0.113.9"),
        (Direction::Egress, "203.0.113.9"),
        (Direction::Egress, "198.51.100.9"),
    ] {
        for (proto, num) in [(IpProto::Tcp, 6u8), (IpProto::Udp, 17)] {
            for port in [80u16, 5353, 8080, 9090, 9999] {
                let (src, dst) = match dir {
                    Direction::Ingress => (remote, HOST),
                    Direction::Egress => (HOST, remote),
                };
                let v = ev.evaluate(&Packet::l4(ip(src), ip(dst), proto, port));
                let (uv, urule) = idx.lookup_with_sport(uep, dir, ip(remote), num, 40000, port);
                let compiled = if urule == RULE_NO_POLICY || urule == RULE_PASSED_ALL_TIERS {
                    assert_eq!(uv, PolicyVerdict::Allow);
                    idx.lookup_with_sport(ep, dir, ip(remote), num, 40000, port)
                        .0
                } else {
                    uv
                };
                assert_eq!(
                    compiled == PolicyVerdict::Allow,
                    v.allowed,
                    "{dir:?} {src} -> {dst} {proto:?}/{port}: {}",
                    v.reason
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 40);
}
