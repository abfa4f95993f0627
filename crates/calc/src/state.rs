//! [`DesiredState`]: everything a dataplane renders, computed from a [`Model`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serval_model::calico::EndpointToHostAction;

use crate::endpoints::{Endpoint, EndpointKey};
use crate::ipsets::{IpSetId, IpSetMembers, MemberIndex};
use crate::model::Model;
use crate::natoutgoing::{NatOutgoing, nat_outgoing};
use crate::policy::compile::{self, SetRegistry};
use crate::policy::{EndpointPolicy, Failsafe, HostEndpointState};
use crate::services::{ServiceState, services};

/// The dataplane-neutral desired state of one node (or of the whole cluster).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DesiredState {
    /// The node this state is for; `None` for the whole cluster.
    pub node: Option<String>,
    /// Workload endpoints with their policy: the node's local ones when a node is given,
    /// every endpoint otherwise.
    pub endpoints: BTreeMap<EndpointKey, (Endpoint, EndpointPolicy)>,
    /// Every ip set a rule above (or a host endpoint's rule) refers to, with its members
    /// drawn from the whole cluster.
    pub ipsets: BTreeMap<IpSetId, IpSetMembers>,
    pub services: ServiceState,
    pub nat_outgoing: NatOutgoing,
    /// Host endpoints of the node (all of them when no node is given), by name.
    pub host_endpoints: BTreeMap<String, HostEndpointState>,
    /// Failsafe ports (from the node's effective FelixConfiguration).
    pub failsafe: Failsafe,
    /// What happens to traffic from a local workload to the host itself, after the
    /// workload's egress policy (FelixConfiguration `defaultEndpointToHostAction`; Calico's
    /// default Drop): Drop, Accept, or Return (on to host endpoint policy and failsafe).
    pub endpoint_to_host: EndpointToHostAction,
    /// XDP on host interfaces: FelixConfiguration `xdpEnabled` and the untracked deny rules
    /// of the node's host endpoints it can enforce ([`crate::xdp`]).
    #[serde(default)]
    pub xdp: crate::xdp::XdpState,
    /// IPAM blocks affine to other nodes, each with that node's address of the block's
    /// family (its BGP address): where the block's workloads live ([`remote_blocks`]).
    #[serde(default)]
    pub remote_blocks: Vec<(ipnet::IpNet, IpAddr)>,
}

/// The IPAM blocks of [`Model::ipam_blocks`] affine to a node other than `node`, each with
/// that node's address of the block's family; blocks of a node without such an address are
/// left out. Empty for the whole cluster (`None`).
pub fn remote_blocks(model: &Model, node: Option<&str>) -> Vec<(ipnet::IpNet, IpAddr)> {
    let Some(node) = node else {
        return Vec::new();
    };
    model
        .ipam_blocks
        .iter()
        .filter(|(_, n)| n.as_str() != node)
        .filter_map(|(block, n)| {
            let addr = model
                .nodes
                .get(n)?
                .bgp_addrs()
                .into_iter()
                .find(|a| a.is_ipv4() == block.addr().is_ipv4())?;
            Some((*block, addr))
        })
        .collect()
}

/// Addresses of `node` (every node when `None`) from Node resources.
pub fn node_addrs(model: &Model, node: Option<&str>) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = model
        .nodes
        .iter()
        .filter(|(name, _)| node.is_none_or(|n| n == name.as_str()))
        .flat_map(|(_, n)| n.bgp_addrs())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Computes the desired state for `node` (or the whole cluster when `None`).
pub fn desired_state(model: &Model, node: Option<&str>) -> DesiredState {
    desired_state_with_services(model, node, |m, n| services(m, n, &node_addrs(m, n)))
}

/// [`desired_state`] with the services part made by `services_of(model, node)` — e.g. a
/// [`crate::services::ServiceTracker`] built alongside (given the same
/// `node_addrs(model, node)`), which then keeps it up to date as services change.
pub fn desired_state_with_services(
    model: &Model,
    node: Option<&str>,
    services_of: impl FnOnce(&Model, Option<&str>) -> ServiceState,
) -> DesiredState {
    let all = model.endpoints();
    let mut reg = SetRegistry::default();
    let policies = compile::compile_policies(model, &mut reg);
    let untracked = compile::compile_untracked_policies(model, &mut reg);
    let mut endpoints = BTreeMap::new();
    for ep in all.iter().filter(|e| node.is_none_or(|n| e.node == n)) {
        let pol = compile::endpoint_policy(model, &policies, ep);
        endpoints.insert(ep.key(), (ep.clone(), pol));
    }
    let mut host_endpoints = BTreeMap::new();
    for (name, hep) in &model.host_endpoints {
        if node.is_some_and(|n| hep.spec.node != n) {
            continue;
        }
        let mut h = compile::host_endpoint_state(&policies, hep);
        h.untracked = compile::host_endpoint_untracked(&untracked, hep);
        host_endpoints.insert(name.clone(), h);
    }
    let used: BTreeSet<IpSetId> = endpoints
        .values()
        .map(|(_, p)| p)
        .chain(
            host_endpoints
                .values()
                .flat_map(|h| [&h.policy, &h.untracked]),
        )
        .flat_map(EndpointPolicy::sets)
        .collect();
    let index = MemberIndex::new(model, &all);
    let ipsets = used
        .into_iter()
        .filter_map(|id| {
            let spec = reg.spec(&id)?;
            Some((id, index.members(spec)))
        })
        .collect();
    let felix = model.felix(node);
    let xdp = crate::xdp::xdp_state(model, &host_endpoints, felix.xdp_enabled);
    DesiredState {
        node: node.map(str::to_string),
        endpoints,
        ipsets,
        services: services_of(model, node),
        nat_outgoing: nat_outgoing(model),
        host_endpoints,
        failsafe: compile::failsafe(&felix),
        endpoint_to_host: felix.default_endpoint_to_host_action,
        xdp,
        remote_blocks: remote_blocks(model, node),
    }
}
