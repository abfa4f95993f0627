//! Host endpoints for the eBPF dataplane's policy compiler: every host endpoint of the
//! state ([`DesiredState::host_endpoints`], computed by the same code the iptables dataplane
//! renders from) is compiled like a workload endpoint, under the key
//! [`host_endpoint_key`], so it gets an endpoint id in [`CompiledPolicy::endpoints`] and its
//! own `sv_policy` entries.
//!
//! The one difference in semantics (see [`crate::policy`]): a host endpoint with no tier for
//! a direction DENIES. That is compiled as one synthetic tier, [`HOST_DEFAULT_DENY_TIER`],
//! with no policies and an end-of-tier Deny, in place of the missing tiers.
//!
//! Failsafe ports are NOT compiled into the entries: the eBPF program checks them before
//! policy in a map of their own (`sv_hep_fs`, written from [`DesiredState::failsafe`]), so a
//! FelixConfiguration change rewrites a few failsafe entries, not every host endpoint's
//! policy, and a failsafe port stays open whatever the policy entries hold.
//!
//! [`CompiledPolicy::endpoints`]: super::CompiledPolicy::endpoints

use std::collections::BTreeMap;

use crate::endpoints::{Endpoint, EndpointKey};
use crate::policy::{Direction, EndOfTier, EndpointPolicy, HostEndpointState, TierRules};
use crate::state::DesiredState;

/// The namespace of host endpoints' keys (no Kubernetes namespace can have this name:
/// namespace names are lowercase DNS labels).
pub const HOST_ENDPOINT_NAMESPACE: &str = "HostEndpoint";

/// The synthetic tier that stands for "no policy selects this host endpoint for this
/// direction: deny" (its end-of-tier rule id names it).
pub const HOST_DEFAULT_DENY_TIER: &str = "(host endpoint without policy)";

/// The key a host endpoint is compiled under.
pub fn host_endpoint_key(name: &str) -> EndpointKey {
    EndpointKey::new(HOST_ENDPOINT_NAMESPACE, name)
}

/// True for a key [`host_endpoint_key`] made.
pub fn is_host_endpoint_key(k: &EndpointKey) -> bool {
    k.namespace == HOST_ENDPOINT_NAMESPACE
}

/// The host endpoint's policy with the host default: a direction without tiers denies.
pub fn host_endpoint_policy(h: &HostEndpointState) -> EndpointPolicy {
    let deny = || {
        vec![TierRules {
            name: HOST_DEFAULT_DENY_TIER.to_string(),
            order: f64::INFINITY,
            default_action: EndOfTier::Deny,
            policies: Vec::new(),
        }]
    };
    let dir = |d: Direction| {
        let tiers = h.policy.direction(d);
        if tiers.is_empty() {
            deny()
        } else {
            tiers.to_vec()
        }
    };
    EndpointPolicy {
        ingress: dir(Direction::Ingress),
        egress: dir(Direction::Egress),
    }
}

/// The host endpoint as an endpoint for the compiler: its expected IPs are its local
/// addresses (what local-side selectors and nets of its rules are evaluated on).
fn as_endpoint(h: &HostEndpointState) -> Endpoint {
    Endpoint {
        namespace: HOST_ENDPOINT_NAMESPACE.to_string(),
        pod: h.name.clone(),
        node: h.node.clone(),
        addrs: h.addrs.clone(),
        iface: String::new(),
        labels: h.labels.clone(),
        named_ports: Vec::new(),
        ready: true,
    }
}

/// The endpoints the compiler sees: the workloads, then every host endpoint under
/// [`host_endpoint_key`] with [`host_endpoint_policy`], and, for a host endpoint with
/// untracked policy, its untracked tier under [`untracked_host_endpoint_key`].
pub fn endpoints_with_hosts(
    state: &DesiredState,
) -> BTreeMap<EndpointKey, (Endpoint, EndpointPolicy)> {
    let mut all = state.endpoints.clone();
    for (name, h) in &state.host_endpoints {
        all.insert(
            host_endpoint_key(name),
            (as_endpoint(h), host_endpoint_policy(h)),
        );
        add_untracked(&mut all, name, h);
    }
    all
}

/// The namespace of host endpoints' untracked verdict sets (see [`untracked_host_endpoint_key`]).
pub const UNTRACKED_HOST_ENDPOINT_NAMESPACE: &str = "HostEndpointUntracked";

/// The key a host endpoint's untracked (`doNotTrack`) policy is compiled under: an endpoint
/// of its own, with the host endpoint's addresses and [`HostEndpointState::untracked`] as its
/// policy, so it gets a separate endpoint id and verdict set. Its verdicts read: Allow with a
/// rule of a policy = accept untracked; Deny = drop; Allow with
/// [`super::RULE_NO_POLICY`] / [`super::RULE_PASSED_ALL_TIERS`] = no untracked rule decided,
/// go on to conntrack and ordinary policy (untracked tiers end in Pass).
pub fn untracked_host_endpoint_key(name: &str) -> EndpointKey {
    EndpointKey::new(UNTRACKED_HOST_ENDPOINT_NAMESPACE, name)
}

/// True when the host endpoint has an untracked policy in either direction.
pub fn has_untracked(h: &HostEndpointState) -> bool {
    !h.untracked.ingress.is_empty() || !h.untracked.egress.is_empty()
}

fn add_untracked(
    all: &mut BTreeMap<EndpointKey, (Endpoint, EndpointPolicy)>,
    name: &str,
    h: &HostEndpointState,
) {
    if has_untracked(h) {
        let mut ep = as_endpoint(h);
        ep.namespace = UNTRACKED_HOST_ENDPOINT_NAMESPACE.to_string();
        all.insert(untracked_host_endpoint_key(name), (ep, h.untracked.clone()));
    }
}

/// `state` with its host endpoints among the endpoints (see the module docs); `None` when it
/// has none (compile `state` as it is).
pub fn with_host_endpoints(state: &DesiredState) -> Option<DesiredState> {
    if state.host_endpoints.is_empty() {
        return None;
    }
    let mut s = DesiredState {
        endpoints: BTreeMap::new(),
        ..state.clone()
    };
    s.endpoints = endpoints_with_hosts(state);
    Some(s)
}

#[cfg(test)]
mod tests {
    use serval_model::parse_documents;

    use super::*;
    use crate::compile::{PolicyIndex, PolicyVerdict, RuleRef, compile};
    use crate::{Model, desired_state};

    const HEP: &str = r#"
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: n1-eth0, labels: {role: host}}
spec: {node: n1, interfaceName: eth0, expectedIPs: ["172.31.0.11"]}
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: n2-eth0, labels: {role: host}}
spec: {node: n2, interfaceName: eth0, expectedIPs: ["172.31.0.12"]}
"#;

    fn compiled(extra: &str) -> (crate::compile::CompiledPolicy, u32) {
        let rs = parse_documents("test", &format!("{HEP}{extra}")).unwrap();
        let state = desired_state(&Model::from_resources(rs), Some("n1"));
        let c = compile(&state);
        let ep = c.endpoints[&host_endpoint_key("n1-eth0")];
        assert!(
            !c.endpoints.contains_key(&host_endpoint_key("n2-eth0")),
            "another node's host endpoint is not compiled here"
        );
        (c, ep)
    }

    fn verdict(
        c: &crate::compile::CompiledPolicy,
        ep: u32,
        dir: Direction,
        port: u16,
    ) -> PolicyVerdict {
        PolicyIndex::new(c)
            .lookup(ep, dir, "10.244.1.5".parse().unwrap(), 6, port)
            .0
    }

    #[test]
    fn a_host_endpoint_without_policy_denies_both_ways() {
        let (c, ep) = compiled("");
        assert_eq!(verdict(&c, ep, Direction::Ingress, 80), PolicyVerdict::Deny);
        assert_eq!(verdict(&c, ep, Direction::Egress, 80), PolicyVerdict::Deny);
        let (_, rule) = PolicyIndex::new(&c).lookup(
            ep,
            Direction::Ingress,
            "10.244.1.5".parse().unwrap(),
            6,
            80,
        );
        assert_eq!(
            c.rules.get(&rule),
            Some(&RuleRef::EndOfTier(HOST_DEFAULT_DENY_TIER.to_string()))
        );
    }

    #[test]
    fn global_policy_selecting_the_host_endpoint_is_compiled_for_it() {
        let gnp = r#"---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: web}
spec:
  selector: role == 'host'
  types: [Ingress]
  ingress: [{action: Allow, protocol: TCP, destination: {ports: [80]}}]
"#;
        let (c, ep) = compiled(gnp);
        assert_eq!(
            verdict(&c, ep, Direction::Ingress, 80),
            PolicyVerdict::Allow
        );
        assert_eq!(verdict(&c, ep, Direction::Ingress, 81), PolicyVerdict::Deny);
        // No egress policy: the host default (deny) stays for egress.
        assert_eq!(verdict(&c, ep, Direction::Egress, 80), PolicyVerdict::Deny);
    }

    const UNTRACKED: &str = r#"---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: raw}
spec:
  selector: role == 'host'
  doNotTrack: true
  applyOnForward: true
  types: [Ingress]
  ingress:
  - {action: Deny, protocol: TCP, source: {nets: [10.244.1.0/24]}, destination: {ports: [22]}}
  - {action: Allow, protocol: UDP, destination: {ports: [53]}}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: ssh}
spec:
  selector: role == 'host'
  types: [Ingress]
  ingress: [{action: Allow, protocol: TCP, destination: {ports: [22]}}]
"#;

    #[test]
    fn untracked_policy_is_a_separate_verdict_set_that_passes_when_no_rule_decides() {
        let (c, ep) = compiled(UNTRACKED);
        let uep = c.endpoints[&untracked_host_endpoint_key("n1-eth0")];
        assert_ne!(uep, ep);
        assert!(
            !c.endpoints
                .contains_key(&untracked_host_endpoint_key("n2-eth0"))
        );
        let idx = PolicyIndex::new(&c);
        let at = |ep: u32, dir: Direction, src: &str, proto: u8, port: u16| {
            let (v, rule) = idx.lookup(ep, dir, src.parse().unwrap(), proto, port);
            (v, c.rules.get(&rule).cloned())
        };
        // Untracked: Deny decides; Allow by its rule; anything else passes on.
        let (v, r) = at(uep, Direction::Ingress, "10.244.1.5", 6, 22);
        assert_eq!(v, PolicyVerdict::Deny);
        assert!(matches!(r, Some(RuleRef::Rule(_))));
        let (v, r) = at(uep, Direction::Ingress, "10.9.9.9", 17, 53);
        assert_eq!(v, PolicyVerdict::Allow);
        assert!(matches!(r, Some(RuleRef::Rule(_))));
        assert_eq!(
            at(uep, Direction::Ingress, "10.9.9.9", 6, 22),
            (PolicyVerdict::Allow, Some(RuleRef::PassedAllTiers))
        );
        assert_eq!(
            at(uep, Direction::Egress, "10.9.9.9", 17, 53),
            (PolicyVerdict::Allow, Some(RuleRef::NoPolicy))
        );
        // The ordinary set ignores the untracked policy: 22 allowed, 53 denied.
        assert_eq!(
            at(ep, Direction::Ingress, "10.244.1.5", 6, 22).0,
            PolicyVerdict::Allow
        );
        assert_eq!(
            at(ep, Direction::Ingress, "10.9.9.9", 17, 53).0,
            PolicyVerdict::Deny
        );
    }

    #[test]
    fn no_untracked_set_without_untracked_policy() {
        let (c, _) = compiled("");
        assert!(
            !c.endpoints
                .contains_key(&untracked_host_endpoint_key("n1-eth0"))
        );
    }

    #[test]
    fn workload_endpoints_are_unchanged_and_keys_do_not_collide() {
        assert!(is_host_endpoint_key(&host_endpoint_key("x")));
        assert!(!is_host_endpoint_key(&EndpointKey::new("x", "a")));
        let rs = parse_documents("test", HEP).unwrap();
        let state = desired_state(&Model::from_resources(rs), Some("n1"));
        let with = with_host_endpoints(&state).expect("has host endpoints");
        assert_eq!(with.endpoints.len(), state.endpoints.len() + 1);
        assert_eq!(with.services, state.services);
    }
}
