//! Walking an endpoint's tiers for one packet, exactly as [`crate::policy`] documents.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{DecidedBy, Decision};
use crate::ipsets::{IpSetId, IpSetMembers};
use crate::policy::{Action, EndOfTier, IcmpMatch, IpProto, PortRange, RuleMatch, TierRules};

/// The fields of a packet that policy matches on (after any DNAT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: IpProto,
    pub src_port: u16,
    pub dst_port: u16,
    pub icmp: Option<(u8, u8)>,
}

type Sets = BTreeMap<IpSetId, IpSetMembers>;

fn in_set(sets: &Sets, id: &IpSetId, addr: IpAddr) -> bool {
    sets.get(id).is_some_and(|m| m.contains_addr(addr))
}

fn in_named(sets: &Sets, id: &IpSetId, flow: &Flow, addr: IpAddr, port: u16) -> bool {
    let Some(proto) = flow.protocol.to_k8s() else {
        return false;
    };
    sets.get(id)
        .is_some_and(|m| m.contains_port(addr, proto, port))
}

/// Ports: ranges OR named sets; both empty = any. `None` when the packet has no ports but
/// the rule asks for them (never matches).
fn ports_match(
    flow: &Flow,
    sets: &Sets,
    ranges: &[PortRange],
    named: &[IpSetId],
    addr: IpAddr,
    port: u16,
) -> bool {
    if ranges.is_empty() && named.is_empty() {
        return true;
    }
    if !flow.protocol.has_ports() {
        return false;
    }
    ranges.iter().any(|r| r.contains(port))
        || named.iter().any(|id| in_named(sets, id, flow, addr, port))
}

fn not_ports_match(
    flow: &Flow,
    sets: &Sets,
    ranges: &[PortRange],
    named: &[IpSetId],
    addr: IpAddr,
    port: u16,
) -> bool {
    if ranges.is_empty() && named.is_empty() {
        return true;
    }
    if !flow.protocol.has_ports() {
        // Calico requires a port protocol for notPorts; a packet without ports cannot match.
        return false;
    }
    !ranges.iter().any(|r| r.contains(port))
        && !named.iter().any(|id| in_named(sets, id, flow, addr, port))
}

fn icmp_matches(m: &IcmpMatch, flow: &Flow) -> bool {
    if !matches!(flow.protocol, IpProto::Icmp | IpProto::IcmpV6) {
        return false;
    }
    match flow.icmp {
        Some((t, c)) => t == m.type_ && m.code.is_none_or(|mc| mc == c),
        None => false,
    }
}

/// True when every part of `m` matches `flow`.
pub fn rule_matches(m: &RuleMatch, flow: &Flow, sets: &Sets) -> bool {
    if let Some(v) = m.ip_version {
        let fam = if flow.src.is_ipv4() { 4 } else { 6 };
        if v != fam {
            return false;
        }
    }
    if m.protocol.is_some_and(|p| p != flow.protocol) {
        return false;
    }
    if m.not_protocol.is_some_and(|p| p == flow.protocol) {
        return false;
    }
    if !m.src_sets.iter().all(|s| in_set(sets, s, flow.src))
        || m.not_src_sets.iter().any(|s| in_set(sets, s, flow.src))
        || !m.dst_sets.iter().all(|s| in_set(sets, s, flow.dst))
        || m.not_dst_sets.iter().any(|s| in_set(sets, s, flow.dst))
    {
        return false;
    }
    if !ports_match(
        flow,
        sets,
        &m.src_ports,
        &m.src_named_port_sets,
        flow.src,
        flow.src_port,
    ) || !not_ports_match(
        flow,
        sets,
        &m.not_src_ports,
        &m.not_src_named_port_sets,
        flow.src,
        flow.src_port,
    ) || !ports_match(
        flow,
        sets,
        &m.dst_ports,
        &m.dst_named_port_sets,
        flow.dst,
        flow.dst_port,
    ) || !not_ports_match(
        flow,
        sets,
        &m.not_dst_ports,
        &m.not_dst_named_port_sets,
        flow.dst,
        flow.dst_port,
    ) {
        return false;
    }
    if m.icmp.is_some_and(|i| !icmp_matches(&i, flow)) {
        return false;
    }
    if m.not_icmp.is_some_and(|i| icmp_matches(&i, flow)) {
        return false;
    }
    true
}

/// Walks tiers for one direction. `no_policy` is the decision when no tier selects the
/// endpoint (allow for workloads, deny for host endpoints).
pub fn walk(tiers: &[TierRules], flow: &Flow, sets: &Sets, no_policy: bool) -> Decision {
    let mut logged = Vec::new();
    if tiers.is_empty() {
        return Decision {
            allowed: no_policy,
            by: if no_policy {
                DecidedBy::NoPolicy
            } else {
                DecidedBy::HostEndpointDefaultDeny
            },
            logged,
        };
    }
    'tiers: for tier in tiers {
        for policy in &tier.policies {
            for rule in &policy.rules {
                if !rule_matches(&rule.r#match, flow, sets) {
                    continue;
                }
                match rule.action {
                    Action::Allow | Action::Deny => {
                        return Decision {
                            allowed: rule.action == Action::Allow,
                            by: DecidedBy::Rule(rule.id.clone()),
                            logged,
                        };
                    }
                    Action::Log => logged.push(rule.id.clone()),
                    Action::Pass => continue 'tiers,
                }
            }
        }
        if tier.default_action == EndOfTier::Deny {
            return Decision {
                allowed: false,
                by: DecidedBy::EndOfTier(tier.name.clone()),
                logged,
            };
        }
    }
    Decision {
        allowed: true,
        by: DecidedBy::PassedAllTiers,
        logged,
    }
}
