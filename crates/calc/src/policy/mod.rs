//! Calico's rule model, dataplane-neutral: what every dataplane renders and what the
//! reference evaluator walks.
//!
//! # Evaluation semantics (for one endpoint and one direction)
//!
//! 1. Tiers in [`EndpointPolicy::ingress`] / [`EndpointPolicy::egress`] are in evaluation
//!    order and contain only the policies that select the endpoint for that direction (a tier
//!    with none is left out).
//! 2. Within a tier, policies in order; within a policy, rules in order. A rule matches when
//!    every part of its [`RuleMatch`] matches. The first matching rule with [`Action::Allow`]
//!    or [`Action::Deny`] decides. [`Action::Log`] records the packet and goes on.
//!    [`Action::Pass`] leaves the tier: evaluation continues with the next tier.
//! 3. When no rule of the tier's policies decided or passed, the tier's
//!    [`TierRules::default_action`] applies: Deny (end-of-tier drop, the default) or Pass.
//! 4. An endpoint with no tier for a direction, or one that passed every tier, is allowed
//!    (Calico's namespace profile allows).
//!
//! Replies of allowed connections always pass (conntrack); policy judges new connections.
//!
//! # Host endpoints
//!
//! [`HostEndpointState`] carries the same [`EndpointPolicy`] for a host interface, with one
//! difference: a host endpoint with no tier for a direction DENIES (Calico's default for host
//! endpoints), except for the [`Failsafe`] ports, which are allowed before any policy.

pub mod calico;
pub mod compile;
pub mod k8s;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serval_model::calico::TierDefaultAction;
use serval_model::types::{CalicoProtocol, Protocol};

pub use crate::ipsets::{IpSetId, IpSetMembers};

/// An IP protocol as policy matches it (wider than [`Protocol`], which only has the
/// port-carrying protocols Kubernetes knows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum IpProto {
    Tcp,
    Udp,
    Sctp,
    Icmp,
    IcmpV6,
    UdpLite,
    Other(u8),
}

impl IpProto {
    /// The IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            IpProto::Tcp => 6,
            IpProto::Udp => 17,
            IpProto::Sctp => 132,
            IpProto::Icmp => 1,
            IpProto::IcmpV6 => 58,
            IpProto::UdpLite => 136,
            IpProto::Other(n) => n,
        }
    }

    /// The protocol with this number, named when known.
    pub fn from_number(n: u8) -> IpProto {
        match n {
            6 => IpProto::Tcp,
            17 => IpProto::Udp,
            132 => IpProto::Sctp,
            1 => IpProto::Icmp,
            58 => IpProto::IcmpV6,
            136 => IpProto::UdpLite,
            n => IpProto::Other(n),
        }
    }

    /// True for protocols with ports (TCP, UDP, SCTP, UDPLite).
    pub fn has_ports(self) -> bool {
        matches!(self.number(), 6 | 17 | 132 | 136)
    }

    /// The Kubernetes protocol, for TCP, UDP and SCTP.
    pub fn to_k8s(self) -> Option<Protocol> {
        match self {
            IpProto::Tcp => Some(Protocol::Tcp),
            IpProto::Udp => Some(Protocol::Udp),
            IpProto::Sctp => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl From<Protocol> for IpProto {
    fn from(p: Protocol) -> IpProto {
        IpProto::from_number(p.number())
    }
}

impl From<CalicoProtocol> for IpProto {
    fn from(p: CalicoProtocol) -> IpProto {
        IpProto::from_number(p.number())
    }
}

impl std::fmt::Display for IpProto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IpProto::Tcp => f.write_str("TCP"),
            IpProto::Udp => f.write_str("UDP"),
            IpProto::Sctp => f.write_str("SCTP"),
            IpProto::Icmp => f.write_str("ICMP"),
            IpProto::IcmpV6 => f.write_str("ICMPv6"),
            IpProto::UdpLite => f.write_str("UDPLite"),
            IpProto::Other(n) => write!(f, "{n}"),
        }
    }
}

/// An inclusive port range (`first == last` for one port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn single(p: u16) -> PortRange {
        PortRange { first: p, last: p }
    }

    pub fn contains(self, p: u16) -> bool {
        (self.first..=self.last).contains(&p)
    }
}

/// An ICMP type with an optional code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IcmpMatch {
    pub type_: u8,
    pub code: Option<u8>,
}

/// What a rule matches. Every non-empty part must match (AND). Within a part:
///
/// - `src_sets` / `dst_sets`: the address must be in EVERY listed set (a set is an OR of its
///   members); `not_*_sets`: the address must be in NONE of them.
/// - Ports: `dst_ports` and `dst_named_port_sets` together form one OR list (as Calico's
///   `ports: [80, "http"]`): the port must be in one of the ranges, or `(dst addr, protocol,
///   dst port)` must be in one of the named-port sets. Both empty means any port.
///   `not_dst_ports` / `not_dst_named_port_sets`: in none of them. Same for `src_*`.
/// - `icmp`: the ICMP type (and code when given); `not_icmp`: not that type/code.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct RuleMatch {
    /// 4 or 6: the rule only applies to that family.
    pub ip_version: Option<u8>,
    pub protocol: Option<IpProto>,
    pub not_protocol: Option<IpProto>,
    pub src_sets: Vec<IpSetId>,
    pub not_src_sets: Vec<IpSetId>,
    pub dst_sets: Vec<IpSetId>,
    pub not_dst_sets: Vec<IpSetId>,
    pub src_ports: Vec<PortRange>,
    pub not_src_ports: Vec<PortRange>,
    pub dst_ports: Vec<PortRange>,
    pub not_dst_ports: Vec<PortRange>,
    pub src_named_port_sets: Vec<IpSetId>,
    pub not_src_named_port_sets: Vec<IpSetId>,
    pub dst_named_port_sets: Vec<IpSetId>,
    pub not_dst_named_port_sets: Vec<IpSetId>,
    pub icmp: Option<IcmpMatch>,
    pub not_icmp: Option<IcmpMatch>,
}

impl RuleMatch {
    /// Every ip set the match refers to.
    pub fn sets(&self) -> impl Iterator<Item = &IpSetId> {
        self.src_sets
            .iter()
            .chain(&self.not_src_sets)
            .chain(&self.dst_sets)
            .chain(&self.not_dst_sets)
            .chain(&self.src_named_port_sets)
            .chain(&self.not_src_named_port_sets)
            .chain(&self.dst_named_port_sets)
            .chain(&self.not_dst_named_port_sets)
    }
}

/// A rule's action, as in Calico.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    Allow,
    Deny,
    Log,
    Pass,
}

impl From<serval_model::calico::Action> for Action {
    fn from(a: serval_model::calico::Action) -> Action {
        match a {
            serval_model::calico::Action::Allow => Action::Allow,
            serval_model::calico::Action::Deny => Action::Deny,
            serval_model::calico::Action::Log => Action::Log,
            serval_model::calico::Action::Pass => Action::Pass,
        }
    }
}

/// Ingress (to the endpoint) or egress (from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Direction {
    Ingress,
    Egress,
}

/// The kind of policy a rule came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PolicyKind {
    /// `networking.k8s.io/v1` NetworkPolicy (always in the default tier, order 1000).
    K8s,
    /// `projectcalico.org/v3` NetworkPolicy (namespaced).
    Calico,
    /// `projectcalico.org/v3` GlobalNetworkPolicy.
    Global,
}

/// Identifies a policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PolicyId {
    pub tier: String,
    pub kind: PolicyKind,
    /// `None` for a GlobalNetworkPolicy.
    pub namespace: Option<String>,
    pub name: String,
}

impl std::fmt::Display for PolicyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            PolicyKind::K8s => "knp",
            PolicyKind::Calico => "np",
            PolicyKind::Global => "gnp",
        };
        match &self.namespace {
            Some(ns) => write!(f, "{}/{kind}:{ns}/{}", self.tier, self.name),
            None => write!(f, "{}/{kind}:{}", self.tier, self.name),
        }
    }
}

/// Identifies the source rule a [`Rule`] came from: the policy, direction and the index of
/// the rule in the policy's `ingress`/`egress` list. One source rule may expand to several
/// [`Rule`]s (one per Kubernetes peer and protocol), which share the id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RuleId {
    pub policy: PolicyId,
    pub direction: Direction,
    pub index: u32,
}

impl std::fmt::Display for RuleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = match self.direction {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        };
        write!(f, "{} {d}[{}]", self.policy, self.index)
    }
}

/// One compiled rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rule {
    pub r#match: RuleMatch,
    pub action: Action,
    pub id: RuleId,
}

/// One policy's rules for one direction, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyRules {
    pub name: PolicyId,
    /// Calico's order; a policy without one sorts last (`f64::INFINITY`).
    pub order: f64,
    pub rules: Vec<Rule>,
}

/// What happens at the end of a tier when no rule decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EndOfTier {
    Deny,
    Pass,
}

impl From<TierDefaultAction> for EndOfTier {
    fn from(a: TierDefaultAction) -> EndOfTier {
        match a {
            TierDefaultAction::Deny => EndOfTier::Deny,
            TierDefaultAction::Pass => EndOfTier::Pass,
        }
    }
}

/// One tier's policies that select an endpoint for one direction, in evaluation order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierRules {
    pub name: String,
    pub order: f64,
    pub default_action: EndOfTier,
    pub policies: Vec<PolicyRules>,
}

/// An endpoint's policy: per direction, only the tiers with a policy selecting it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EndpointPolicy {
    pub ingress: Vec<TierRules>,
    pub egress: Vec<TierRules>,
}

impl EndpointPolicy {
    pub fn direction(&self, d: Direction) -> &[TierRules] {
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Every ip set the policy refers to.
    pub fn sets(&self) -> BTreeSet<IpSetId> {
        self.ingress
            .iter()
            .chain(&self.egress)
            .flat_map(|t| &t.policies)
            .flat_map(|p| &p.rules)
            .flat_map(|r| r.r#match.sets())
            .cloned()
            .collect()
    }
}

/// A host interface with policy (a HostEndpoint resource on this node).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostEndpointState {
    pub name: String,
    pub node: String,
    /// The interface; `None` or `"*"` means every host interface (an all-interfaces
    /// endpoint); with only `addrs`, the interface is the one holding those addresses.
    pub iface: Option<String>,
    pub addrs: Vec<IpAddr>,
    pub labels: BTreeMap<String, String>,
    pub policy: EndpointPolicy,
    /// The untracked (`doNotTrack`) GlobalNetworkPolicies selecting it, per direction, in
    /// tiers whose end PASSES: evaluated before conntrack and before [`Self::policy`], for
    /// traffic to/from the host and forwarded through its interface; Allow accepts without
    /// conntrack (replies need a rule of their own), Deny drops, no decision goes on to the
    /// failsafe ports, conntrack and [`Self::policy`] (Calico renders no end-of-tier drop for
    /// untracked policy).
    #[serde(default)]
    pub untracked: EndpointPolicy,
}

/// A port that host-endpoint policy can never close.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FailsafePort {
    pub protocol: Protocol,
    pub port: u16,
    /// Only traffic from (inbound) / to (outbound) this network; `None`: any address.
    pub net: Option<IpNet>,
}

impl FailsafePort {
    /// True when a packet with `protocol`, destination port `port` and remote address
    /// `remote` is covered.
    pub fn covers(&self, protocol: IpProto, port: u16, remote: IpAddr) -> bool {
        IpProto::from(self.protocol) == protocol
            && self.port == port
            && self.net.is_none_or(|n| n.contains(&remote))
    }
}

/// Failsafe ports (FelixConfiguration `failsafeInboundHostPorts` /
/// `failsafeOutboundHostPorts`): inbound matches the destination port of traffic TO a host
/// endpoint, outbound the destination port of traffic FROM it. Allowed before any policy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Failsafe {
    pub inbound: Vec<FailsafePort>,
    pub outbound: Vec<FailsafePort>,
}
