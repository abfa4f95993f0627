//! The reference evaluator: what must happen to a NEW connection's first packet, from the
//! model alone. End-to-end tests compute their expected matrices from it; `serval trace`
//! explains a packet with it.
//!
//! The path of a packet, as the dataplanes implement it:
//!
//! 1. **Anti-spoofing.** A packet sent by a pod ([`Packet::sender`]) from an address that is
//!    not the pod's own is dropped.
//! 2. **Loopback.** A pod reaching its own address directly never leaves its namespace:
//!    always allowed, no policy.
//! 3. **Services.** A destination that is a service frontend is resolved with
//!    [`crate::services::resolve`]: no backends → rejected; a node-local traffic policy with no
//!    local backend → dropped; else DNAT to one of the candidate backends. Every candidate
//!    is evaluated ([`Verdict::per_backend`]); the verdict allows only when EVERY candidate is
//!    allowed (so a probe is certain to pass), and [`Verdict::partially_allowed`] tells when
//!    some are.
//! 4. **Egress** policy of the source endpoint (a pod, or a host endpoint with its outbound
//!    failsafe ports), against the destination after DNAT. Host endpoint policy does not
//!    apply from a host to its own workloads (as in Calico).
//! 5. **Endpoint to host.** A pod reaching an address of its own node meets the node's
//!    FelixConfiguration `defaultEndpointToHostAction` (Calico's default: Drop) after its
//!    egress policy; Return goes on to the host endpoint's policy.
//! 6. **Ingress** policy of the destination endpoint (a pod, or a host endpoint with its
//!    inbound failsafe ports). When the service masquerades the source to the node, ingress
//!    sees the node's address as the source.
//! 7. **NAT outgoing** for pod traffic leaving the pools ([`NatApplied::masquerade`]).
//!
//! Replies of allowed connections always pass (conntrack); the evaluator judges new
//! connections only.

pub mod matrix;
pub mod rules;

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serval_model::calico::EndpointToHostAction;

use crate::endpoints::EndpointKey;
use crate::model::Model;
use crate::natoutgoing::should_masquerade;
use crate::policy::{Direction, EndpointPolicy, FailsafePort, IpProto, RuleId, TierRules};
use crate::services::{Backend, FrontendKey, ServiceDecision, hairpin_snat, resolve};
use crate::state::{DesiredState, desired_state};

pub use matrix::{Matrix, MatrixError, expected_matrix};
use rules::{Flow, walk};

/// A packet (the first of a new connection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: IpProto,
    pub src_port: u16,
    pub dst_port: u16,
    /// ICMP `(type, code)` for ICMP/ICMPv6 packets.
    pub icmp: Option<(u8, u8)>,
    /// For traffic from outside the cluster: the node it arrives at.
    pub ingress_node: Option<String>,
    /// The pod that sends the packet, when known; its packets from an address that is not
    /// its own are dropped (anti-spoofing). `None`: the sender is whoever owns `src`.
    pub sender: Option<EndpointKey>,
}

impl Packet {
    /// A TCP/UDP/SCTP packet from `src` to `dst:port` (source port 40000).
    pub fn l4(src: IpAddr, dst: IpAddr, protocol: IpProto, dst_port: u16) -> Packet {
        Packet {
            src,
            dst,
            protocol,
            src_port: 40000,
            dst_port,
            icmp: None,
            ingress_node: None,
            sender: None,
        }
    }

    /// An ICMP (or ICMPv6, by the family of `src`) packet.
    pub fn icmp(src: IpAddr, dst: IpAddr, type_: u8, code: u8) -> Packet {
        Packet {
            protocol: if src.is_ipv4() {
                IpProto::Icmp
            } else {
                IpProto::IcmpV6
            },
            icmp: Some((type_, code)),
            ..Packet::l4(src, dst, IpProto::Icmp, 0)
        }
    }
}

/// Who or what decided one direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DecidedBy {
    /// An Allow or Deny rule.
    Rule(RuleId),
    /// The end of this tier (policies selected the endpoint, no rule decided).
    EndOfTier(String),
    /// No tier has a policy selecting the endpoint for this direction: allowed.
    NoPolicy,
    /// Every tier passed: allowed (Calico's profile).
    PassedAllTiers,
    /// A failsafe port of a host endpoint: allowed before any policy.
    Failsafe(FailsafePort),
    /// A host endpoint with no policy for this direction: denied (Calico's default).
    HostEndpointDefaultDeny,
    /// The sender used an address that is not its own.
    AntiSpoofing,
    /// A workload reaching its own node: FelixConfiguration `defaultEndpointToHostAction`
    /// (Drop or Accept decide; Return hands on to host endpoint policy and is not reported).
    EndpointToHost(EndpointToHostAction),
}

/// One direction's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub allowed: bool,
    pub by: DecidedBy,
    /// Log rules the packet matched on the way.
    pub logged: Vec<RuleId>,
}

/// NAT applied to the packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatApplied {
    /// The service frontend and the backends it may be DNATed to.
    pub frontend: Option<FrontendKey>,
    pub candidates: Vec<Backend>,
    /// The source is masqueraded to the DNATing node (service traffic policy).
    pub snat_to_node: bool,
    /// NAT outgoing: a pod in a natOutgoing pool reaching outside every pool.
    pub masquerade: bool,
}

/// The verdict for one candidate backend of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendVerdict {
    pub backend: Backend,
    pub allowed: bool,
    pub egress: Option<Decision>,
    pub ingress: Option<Decision>,
    /// Hairpin (the backend is the client): the source is masqueraded too.
    pub hairpin: bool,
}

/// What happens to a packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub allowed: bool,
    /// For a service: some but not all candidate backends allow it.
    pub partially_allowed: bool,
    pub nat: Option<NatApplied>,
    /// The source endpoint's egress decision (`None`: the source is not policed — outside
    /// the cluster, or a node without a host endpoint). For a service, the first denying
    /// candidate's (else the first candidate's).
    pub egress: Option<Decision>,
    /// The destination endpoint's ingress decision (as `egress`).
    pub ingress: Option<Decision>,
    /// Per candidate backend, for a packet to a service.
    pub per_backend: Vec<BackendVerdict>,
    /// One line for humans.
    pub reason: String,
}

/// Which endpoint an address belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owner {
    Workload(EndpointKey),
    Host(String),
}

/// The evaluator over one model: computes the cluster-wide desired state once, then judges
/// any number of packets.
#[derive(Debug, Clone)]
pub struct Evaluator {
    state: DesiredState,
    owners: BTreeMap<IpAddr, Owner>,
    /// Node name → its addresses (from Node resources).
    node_addrs: BTreeMap<String, Vec<IpAddr>>,
    /// Node name → its effective `defaultEndpointToHostAction` (nodes with a Node resource
    /// or an endpoint; others use the cluster default in the state).
    endpoint_to_host: BTreeMap<String, EndpointToHostAction>,
}

/// The host endpoint's untracked (`doNotTrack`) tiers: a rule's Allow or Deny decides,
/// anything else (no rule matched, Pass, every tier's end) goes on to ordinary policy
/// (`None`). After the failsafe ports, before ordinary policy, as Calico's raw table.
fn untracked(
    tiers: &[TierRules],
    flow: &Flow,
    sets: &BTreeMap<crate::ipsets::IpSetId, crate::ipsets::IpSetMembers>,
) -> Option<Decision> {
    let d = walk(tiers, flow, sets, true);
    matches!(d.by, DecidedBy::Rule(_)).then_some(d)
}

/// Evaluates one packet against a model. For many packets build an [`Evaluator`] once.
pub fn evaluate(model: &Model, packet: &Packet) -> Verdict {
    Evaluator::new(model).evaluate(packet)
}

impl Evaluator {
    pub fn new(model: &Model) -> Evaluator {
        let state = desired_state(model, None);
        let mut owners = BTreeMap::new();
        for (name, h) in &state.host_endpoints {
            for a in &h.addrs {
                owners.insert(*a, Owner::Host(name.clone()));
            }
        }
        for (k, (ep, _)) in &state.endpoints {
            for a in &ep.addrs {
                owners.insert(*a, Owner::Workload(k.clone()));
            }
        }
        let node_addrs = model
            .nodes
            .iter()
            .map(|(n, node)| (n.clone(), node.bgp_addrs()))
            .collect();
        let nodes: std::collections::BTreeSet<String> = model
            .nodes
            .keys()
            .cloned()
            .chain(state.endpoints.values().map(|(e, _)| e.node.clone()))
            .chain(state.host_endpoints.values().map(|h| h.node.clone()))
            .collect();
        let endpoint_to_host = nodes
            .into_iter()
            .map(|n| {
                let a = model.felix(Some(&n)).default_endpoint_to_host_action;
                (n, a)
            })
            .collect();
        Evaluator {
            state,
            owners,
            node_addrs,
            endpoint_to_host,
        }
    }

    /// The cluster-wide desired state the evaluator walks.
    pub fn state(&self) -> &DesiredState {
        &self.state
    }

    fn workload_policy(&self, k: &EndpointKey) -> Option<&EndpointPolicy> {
        self.state.endpoints.get(k).map(|(_, p)| p)
    }

    fn node_of(&self, addr: IpAddr) -> Option<String> {
        match self.owners.get(&addr)? {
            Owner::Workload(k) => self
                .state
                .endpoints
                .get(k)
                .map(|(e, _)| e.node.clone())
                .filter(|n| !n.is_empty()),
            Owner::Host(h) => self.state.host_endpoints.get(h).map(|h| h.node.clone()),
        }
    }

    fn is_node_addr(&self, a: IpAddr) -> bool {
        self.node_addrs.values().any(|v| v.contains(&a))
    }

    /// One direction for the endpoint owning `addr` (`None`: not policed).
    fn direction(&self, addr: IpAddr, dir: Direction, flow: &Flow) -> Option<Decision> {
        match self.owners.get(&addr)? {
            Owner::Workload(k) => {
                let pol = self.workload_policy(k)?;
                Some(walk(pol.direction(dir), flow, &self.state.ipsets, true))
            }
            Owner::Host(h) => {
                let hep = self.state.host_endpoints.get(h)?;
                let (list, remote) = match dir {
                    Direction::Ingress => (&self.state.failsafe.inbound, flow.src),
                    Direction::Egress => (&self.state.failsafe.outbound, flow.dst),
                };
                if let Some(fs) = list
                    .iter()
                    .find(|f| f.covers(flow.protocol, flow.dst_port, remote))
                {
                    return Some(Decision {
                        allowed: true,
                        by: DecidedBy::Failsafe(fs.clone()),
                        logged: Vec::new(),
                    });
                }
                if let Some(d) = untracked(hep.untracked.direction(dir), flow, &self.state.ipsets) {
                    return Some(d);
                }
                Some(walk(
                    hep.policy.direction(dir),
                    flow,
                    &self.state.ipsets,
                    false,
                ))
            }
        }
    }

    /// Egress of `flow.src`'s endpoint, then ingress of `ingress_flow.dst`'s.
    ///
    /// A workload reaching an address of its own node meets the node's
    /// `defaultEndpointToHostAction` after its egress policy: Drop denies, Accept allows, Return
    /// goes on to the ingress policy of an all-interfaces (`*`) host endpoint (and failsafe
    /// ports), and is accepted when the node has none, as Calico does.
    fn legs(&self, flow: &Flow, ingress_flow: &Flow) -> (Option<Decision>, Option<Decision>) {
        // Host endpoint policy does not apply between a host and its own workloads.
        let host_to_local_workload = matches!(self.owners.get(&flow.src), Some(Owner::Host(_)))
            && matches!(self.owners.get(&ingress_flow.dst), Some(Owner::Workload(_)))
            && self.node_of(flow.src).is_some()
            && self.node_of(flow.src) == self.node_of(ingress_flow.dst);
        let egress = if host_to_local_workload {
            None
        } else {
            self.direction(flow.src, Direction::Egress, flow)
        };
        if let Some(Owner::Workload(_)) = self.owners.get(&flow.src)
            && let Some(node) = self.node_of(flow.src)
            && self.is_addr_of_node(&node, ingress_flow.dst)
        {
            let action = self
                .endpoint_to_host
                .get(&node)
                .copied()
                .unwrap_or(self.state.endpoint_to_host);
            let decided = |allowed| Decision {
                allowed,
                by: DecidedBy::EndpointToHost(action),
                logged: Vec::new(),
            };
            let ingress = match action {
                EndpointToHostAction::Drop => Some(decided(false)),
                EndpointToHostAction::Accept => Some(decided(true)),
                // Return: on to the host's INPUT processing. A host endpoint's policy sees the
                // packet only when the endpoint covers every interface (`*`): a pod's packet
                // to its node arrives on the pod's veth, not on a named host interface (as in
                // Calico, where only all-interfaces host endpoints police workload-to-host
                // traffic). No such endpoint: the host accepts it.
                EndpointToHostAction::Return => match self.owners.get(&ingress_flow.dst) {
                    Some(Owner::Host(h))
                        if self
                            .state
                            .host_endpoints
                            .get(h)
                            .is_some_and(|h| h.iface.as_deref().is_none_or(|i| i == "*")) =>
                    {
                        self.direction(ingress_flow.dst, Direction::Ingress, ingress_flow)
                    }
                    _ => Some(decided(true)),
                },
            };
            return (egress, ingress);
        }
        let ingress = self.direction(ingress_flow.dst, Direction::Ingress, ingress_flow);
        (egress, ingress)
    }

    /// True when `a` is an address of `node` (its Node resource, or a host endpoint on it).
    fn is_addr_of_node(&self, node: &str, a: IpAddr) -> bool {
        self.node_addrs.get(node).is_some_and(|v| v.contains(&a))
            || matches!(self.owners.get(&a), Some(Owner::Host(h))
                if self.state.host_endpoints.get(h).is_some_and(|h| h.node == node))
    }

    /// Judges one packet.
    pub fn evaluate(&self, p: &Packet) -> Verdict {
        let flow = Flow {
            src: p.src,
            dst: p.dst,
            protocol: p.protocol,
            src_port: p.src_port,
            dst_port: p.dst_port,
            icmp: p.icmp,
        };
        let deny = |reason: String, egress: Option<Decision>| Verdict {
            allowed: false,
            partially_allowed: false,
            nat: None,
            egress,
            ingress: None,
            per_backend: Vec::new(),
            reason,
        };
        if let Some(sender) = &p.sender {
            let own = self
                .state
                .endpoints
                .get(sender)
                .is_some_and(|(e, _)| e.may_send_from(p.src));
            if !own {
                return deny(
                    format!(
                        "{sender} sent from {}, which is not its address: dropped by anti-spoofing",
                        p.src
                    ),
                    Some(Decision {
                        allowed: false,
                        by: DecidedBy::AntiSpoofing,
                        logged: Vec::new(),
                    }),
                );
            }
        }
        let src_owner = self.owners.get(&p.src);
        if let Some(Owner::Workload(k)) = src_owner
            && self.owners.get(&p.dst) == src_owner
        {
            return Verdict {
                allowed: true,
                partially_allowed: false,
                nat: None,
                egress: None,
                ingress: None,
                per_backend: Vec::new(),
                reason: format!("{k} reaches its own address without leaving its namespace"),
            };
        }
        let src_is_pod = matches!(src_owner, Some(Owner::Workload(_)));
        let via_node = if src_owner.is_some() {
            self.node_of(p.src)
        } else {
            p.ingress_node.clone()
        };
        let src_local = src_owner.is_some() || self.is_node_addr(p.src);
        let decision = match p.protocol.to_k8s() {
            Some(proto) => resolve(
                &self.state.services,
                p.dst,
                p.dst_port,
                proto,
                via_node.as_deref(),
                src_local,
            ),
            None => ServiceDecision::NotAService,
        };
        let masquerade =
            |dst: IpAddr| src_is_pod && should_masquerade(&self.state.nat_outgoing, p.src, dst);
        match decision {
            ServiceDecision::NotAService => {
                let (egress, ingress) = self.legs(&flow, &flow);
                let allowed = egress.as_ref().is_none_or(|d| d.allowed)
                    && ingress.as_ref().is_none_or(|d| d.allowed);
                let reason = explain(&egress, &ingress, allowed);
                let masq = masquerade(p.dst);
                Verdict {
                    allowed,
                    partially_allowed: false,
                    nat: masq.then(|| NatApplied {
                        frontend: None,
                        candidates: Vec::new(),
                        snat_to_node: false,
                        masquerade: true,
                    }),
                    egress,
                    ingress,
                    per_backend: Vec::new(),
                    reason,
                }
            }
            ServiceDecision::Reject => deny(
                format!(
                    "{}:{}/{} is a service without backends: rejected",
                    p.dst, p.dst_port, p.protocol
                ),
                None,
            ),
            ServiceDecision::Drop => deny(
                format!(
                    "{}:{}/{} is a service with a node-local traffic policy and no backend on {}: dropped",
                    p.dst,
                    p.dst_port,
                    p.protocol,
                    via_node.as_deref().unwrap_or("the receiving node")
                ),
                None,
            ),
            ServiceDecision::Dnat {
                frontend,
                candidates,
                snat_to_node,
            } => {
                let mut per_backend = Vec::new();
                for b in &candidates {
                    let hairpin = hairpin_snat(p.src, b);
                    let dnat = Flow {
                        dst: b.ip,
                        dst_port: b.port,
                        ..flow
                    };
                    let ingress_src = if snat_to_node || hairpin {
                        via_node
                            .as_ref()
                            .and_then(|n| self.node_addrs.get(n))
                            .and_then(|v| v.iter().find(|a| a.is_ipv4() == b.ip.is_ipv4()))
                            .copied()
                            .unwrap_or(p.src)
                    } else {
                        p.src
                    };
                    let ingress_flow = Flow {
                        src: ingress_src,
                        ..dnat
                    };
                    let (egress, ingress) = self.legs(&dnat, &ingress_flow);
                    let allowed = egress.as_ref().is_none_or(|d| d.allowed)
                        && ingress.as_ref().is_none_or(|d| d.allowed);
                    per_backend.push(BackendVerdict {
                        backend: b.clone(),
                        allowed,
                        egress,
                        ingress,
                        hairpin,
                    });
                }
                let n_ok = per_backend.iter().filter(|b| b.allowed).count();
                let allowed = n_ok == per_backend.len() && n_ok > 0;
                let shown = per_backend
                    .iter()
                    .find(|b| !b.allowed)
                    .or(per_backend.first());
                let (egress, ingress) = shown
                    .map(|b| (b.egress.clone(), b.ingress.clone()))
                    .unwrap_or((None, None));
                let reason = format!(
                    "service {frontend}: {n_ok} of {} backends allowed; {}",
                    per_backend.len(),
                    explain(&egress, &ingress, allowed)
                );
                let masq = candidates.iter().any(|b| masquerade(b.ip));
                Verdict {
                    allowed,
                    partially_allowed: n_ok > 0 && !allowed,
                    nat: Some(NatApplied {
                        frontend: Some(frontend),
                        candidates,
                        snat_to_node,
                        masquerade: masq,
                    }),
                    egress,
                    ingress,
                    per_backend,
                    reason,
                }
            }
        }
    }
}

fn describe(d: &Decision) -> String {
    let verb = if d.allowed { "allowed" } else { "denied" };
    match &d.by {
        DecidedBy::Rule(id) => format!("{verb} by {id}"),
        DecidedBy::EndOfTier(t) => format!("{verb} at the end of tier {t}"),
        DecidedBy::NoPolicy => format!("{verb}: no policy selects the endpoint"),
        DecidedBy::PassedAllTiers => format!("{verb}: every tier passed"),
        DecidedBy::Failsafe(f) => format!("{verb} by failsafe port {}/{}", f.protocol, f.port),
        DecidedBy::HostEndpointDefaultDeny => {
            format!("{verb}: host endpoint with no policy for this direction")
        }
        DecidedBy::AntiSpoofing => format!("{verb} by anti-spoofing"),
        DecidedBy::EndpointToHost(a) => {
            format!("{verb} by defaultEndpointToHostAction {a:?} (a pod reaching its own node)")
        }
    }
}

fn explain(egress: &Option<Decision>, ingress: &Option<Decision>, allowed: bool) -> String {
    let e = egress
        .as_ref()
        .map_or("egress not policed".to_string(), |d| {
            format!("egress {}", describe(d))
        });
    let i = ingress
        .as_ref()
        .map_or("ingress not policed".to_string(), |d| {
            format!("ingress {}", describe(d))
        });
    format!("{}: {e}; {i}", if allowed { "allowed" } else { "denied" })
}
