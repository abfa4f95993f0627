//! Services: Service + backends → frontends (address, port, protocol) → backends, as
//! kube-proxy programs them.
//!
//! * **Frontends.** Every cluster IP (all families) × port; for NodePort and LoadBalancer
//!   services the node port on every node address (Node resources' `spec.bgp` addresses plus
//!   the caller's own `node_addrs`); every `externalIP` × port; every LoadBalancer
//!   `status.loadBalancer.ingress[].ip` × port. Headless services (`clusterIP: None`) have no
//!   frontends. A frontend exists only for the IP families the service has (`ipFamilies`,
//!   else the families of its cluster IPs, else both), as kube-proxy runs one proxier per
//!   family.
//! * **Backends.** For a service with a selector: the ready endpoints ([`Endpoint::ready`])
//!   of pods in the service's namespace whose labels match the selector, one per address of
//!   the frontend's family, with `targetPort` resolved per pod (a number, or a named container
//!   port of the same protocol; a pod without that named port is no backend for that port).
//!   For a service without a selector: its EndpointSlices (`kubernetes.io/service-name`), ready
//!   endpoints only, the slice port matched by name and protocol. `publishNotReadyAddresses`
//!   admits endpoints that are not ready.
//! * **Traffic policies and NAT**, decided per packet by [`resolve`]:
//!   - ClusterIP: any backend; with `internalTrafficPolicy: Local` only backends on the node
//!     that DNATs (the client pod's node), dropped when there is none there.
//!   - External frontends (NodePort, ExternalIP, LoadBalancer) with
//!     `externalTrafficPolicy: Cluster`: any backend, and the source is always masqueraded to
//!     the node ([`Frontend::masquerade`]). This is kube-proxy's behaviour (its `KUBE-EXT-*`
//!     chain marks every external packet for masquerade), chosen over masquerading only
//!     packets whose backend sits on another node, so both dataplanes and the evaluator agree
//!     with what users of kube-proxy expect.
//!   - External frontends with `externalTrafficPolicy: Local`: only backends on the receiving
//!     node, client source kept; dropped at a node without one. Traffic from inside the
//!     cluster (a pod, or the node itself) is short-circuited to every backend, as kube-proxy
//!     does.
//!   - A frontend without any backend rejects (TCP RST / ICMP port unreachable), as
//!     kube-proxy does.
//!   - Hairpin (a pod reaching itself through its service) is masqueraded, see
//!     [`hairpin_snat`].
//! * **Determinism.** Everything is in `BTreeMap`s and sorted `Vec`s, so rendering is stable
//!   and diffs are minimal. When two services claim the same frontend (same address, port and
//!   protocol), the first by (namespace, name) keeps it and the other is logged.
//! * **Incrementality.** [`frontends_of`] computes one service's frontends alone;
//!   [`ServiceState::replace_service`] swaps them in and [`ServiceState::diff`] yields the
//!   changed and removed keys. [`affected_services`] tells which services a change to one
//!   resource can affect ([`services_selecting`]: which services a pod's labels feed).
//!   [`ServiceTracker`] keeps a whole [`ServiceState`] equal to [`services`] that way, contested
//!   frontend keys included.
//!
//! Not covered: hostNetwork pods as backends (they have no endpoint record), EndpointSlice
//! `serving`/`terminating` (only `ready` is read), LoadBalancer ingress hostnames,
//! `loadBalancerSourceRanges`, topology-aware hints.

mod affected;
mod backends;
mod build;
mod resolve;
#[cfg(test)]
mod tests;
mod tracker;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serval_model::types::Protocol;

use crate::model::Model;

pub use affected::affected_services;
pub use build::{node_addresses, services_selecting};
pub use resolve::{hairpin_snat, resolve};
pub use tracker::ServiceTracker;

pub(crate) use build::{Selector, ServiceView};

#[cfg(doc)]
use crate::endpoints::Endpoint;

/// Every service frontend, by key.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ServiceState {
    pub frontends: BTreeMap<FrontendKey, Frontend>,
}

/// What a packet's destination must equal to hit a frontend.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FrontendKey {
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl std::fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ip {
            IpAddr::V4(a) => write!(f, "{a}:{}/{}", self.port, self.protocol),
            IpAddr::V6(a) => write!(f, "[{a}]:{}/{}", self.port, self.protocol),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum FrontendKind {
    ClusterIP,
    NodePort,
    ExternalIP,
    LoadBalancer,
}

impl FrontendKind {
    /// NodePort, ExternalIP and LoadBalancer frontends take traffic from outside the cluster;
    /// `externalTrafficPolicy` applies to them.
    pub fn is_external(self) -> bool {
        !matches!(self, FrontendKind::ClusterIP)
    }
}

/// One frontend of one service port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frontend {
    /// `(namespace, name)` of the Service.
    pub service: (String, String),
    /// The Service port's name (`None` for a single unnamed port).
    pub port_name: Option<String>,
    pub kind: FrontendKind,
    /// Every backend of the frontend's IP family, sorted, without duplicates. Traffic
    /// policies do not filter this list; [`resolve`] (and the renderers) apply them using
    /// [`Backend::node`].
    pub backends: Vec<Backend>,
    /// ClientIP session affinity timeout in seconds, when affinity is on.
    pub affinity_timeout: Option<u32>,
    /// `externalTrafficPolicy: Local` on an external frontend: outside traffic goes only to
    /// backends on the receiving node, with the client's source kept.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`: ClusterIP traffic goes only to backends on the client's
    /// node.
    pub internal_local: bool,
    /// `externalTrafficPolicy: Cluster` on an external frontend: outside traffic is
    /// masqueraded to the node (kube-proxy's behaviour, whatever node the backend is on).
    pub masquerade: bool,
    /// NodePort frontends: the node that owns the address (`None` when unknown, e.g. an
    /// address given in `node_addrs` without a node name). `None` for other kinds.
    pub node: Option<String>,
    /// Backends are chosen by Maglev consistent hashing of the flow (the service's
    /// `lb.projectcalico.org/external-traffic-strategy: maglev`; see [`crate::maglev`] for
    /// which frontends it applies to).
    #[serde(default)]
    pub maglev: bool,
}

impl Frontend {
    /// The backends on `node`.
    pub fn backends_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Backend> + 'a {
        self.backends.iter().filter(move |b| b.node == node)
    }

    /// The backends for traffic from inside the cluster DNATed on `node`: every backend, or
    /// those on `node` under `internalTrafficPolicy: Local` (all when `node` is unknown).
    /// What a renderer programs for pod traffic to a ClusterIP, and for pod traffic to an
    /// external frontend with `externalTrafficPolicy: Local` (kube-proxy's short-circuit).
    pub fn internal_backends(&self, node: Option<&str>) -> Vec<Backend> {
        match node {
            Some(n) if self.internal_local => self.backends_on(n).cloned().collect(),
            _ => self.backends.clone(),
        }
    }

    /// The backends for traffic from outside the cluster received on `node` (for a NodePort
    /// frontend `None` means the node owning the address; otherwise all): those on the node
    /// under `externalTrafficPolicy: Local`, else every backend.
    pub fn external_backends(&self, node: Option<&str>) -> Vec<Backend> {
        if !self.external_local {
            return self.backends.clone();
        }
        match node.or(self.node.as_deref()) {
            Some(n) => self.backends_on(n).cloned().collect(),
            None => self.backends.clone(),
        }
    }
}

/// One backend: where a frontend's traffic is DNATed to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Backend {
    pub ip: IpAddr,
    /// The resolved target port.
    pub port: u16,
    /// The node the backend runs on (empty when unknown, e.g. an EndpointSlice endpoint
    /// without `nodeName` whose address is no known pod's).
    pub node: String,
    /// `(namespace, pod)` of the backend's pod, when known.
    pub endpoint: Option<(String, String)>,
}

/// What happens to a packet addressed to `(dst, port, proto)`; see [`resolve`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceDecision {
    /// No frontend has this address, port and protocol.
    NotAService,
    /// DNAT to one of `candidates` (sorted; the dataplane picks one at random, or by
    /// affinity). `snat_to_node`: the source is masqueraded to the DNATing node.
    Dnat {
        frontend: FrontendKey,
        candidates: Vec<Backend>,
        snat_to_node: bool,
    },
    /// The service has no backends: TCP RST / ICMP port unreachable, as kube-proxy does.
    Reject,
    /// A traffic policy allows only node-local backends and the node has none.
    Drop,
}

/// Changes between two [`ServiceState`]s, by frontend key.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FrontendDelta {
    /// Added or changed frontends (their new value is in the state the delta leads to).
    pub changed: BTreeSet<FrontendKey>,
    pub removed: BTreeSet<FrontendKey>,
}

impl FrontendDelta {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.removed.is_empty()
    }
}

impl ServiceState {
    /// The frontends of one service.
    pub fn frontends_of_service<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = (&'a FrontendKey, &'a Frontend)> + 'a {
        self.frontends
            .iter()
            .filter(move |(_, f)| f.service.0 == namespace && f.service.1 == name)
    }

    /// Replaces one service's frontends with `new` (from [`frontends_of`]; empty removes the
    /// service). Returns the keys that changed. A key another service holds goes to the first
    /// of the two by (namespace, name), as in [`services`]. (A key that a removed service held
    /// does not pass to another claimant until that claimant is recomputed too; such
    /// conflicts are misconfigurations and are logged.)
    pub fn replace_service(
        &mut self,
        namespace: &str,
        name: &str,
        new: BTreeMap<FrontendKey, Frontend>,
    ) -> FrontendDelta {
        let mut delta = FrontendDelta::default();
        let old: Vec<FrontendKey> = self
            .frontends_of_service(namespace, name)
            .map(|(k, _)| k.clone())
            .filter(|k| !new.contains_key(k))
            .collect();
        for k in old {
            self.frontends.remove(&k);
            delta.removed.insert(k);
        }
        for (k, f) in new {
            match self.frontends.get(&k) {
                Some(cur) if cur.service < f.service => {
                    tracing::warn!(
                        frontend = %k,
                        holder = ?cur.service,
                        service = ?f.service,
                        "services: frontend already held by another service; ignored"
                    );
                }
                Some(cur) if *cur == f => {}
                _ => {
                    self.frontends.insert(k.clone(), f);
                    delta.changed.insert(k);
                }
            }
        }
        delta
    }

    /// What changed from `self` to `new`.
    pub fn diff(&self, new: &ServiceState) -> FrontendDelta {
        let mut delta = FrontendDelta::default();
        for (k, f) in &new.frontends {
            if self.frontends.get(k) != Some(f) {
                delta.changed.insert(k.clone());
            }
        }
        for k in self.frontends.keys() {
            if !new.frontends.contains_key(k) {
                delta.removed.insert(k.clone());
            }
        }
        delta
    }
}

/// Every service frontend in `model`. `this_node` names the node computing the state (its
/// `node_addrs`, e.g. the host's interface addresses, get NodePort frontends owned by it);
/// `None` for a cluster-wide view. NodePort frontends exist on every node's address (Node
/// resources' `spec.bgp` addresses) plus `node_addrs`.
pub fn services(model: &Model, this_node: Option<&str>, node_addrs: &[IpAddr]) -> ServiceState {
    let ctx = build::Context::new(model, this_node, node_addrs);
    let mut state = ServiceState::default();
    for ((ns, name), svc) in &model.services {
        for (k, f) in ctx.frontend_list(ns, name, &svc.view()) {
            match state.frontends.get(&k) {
                Some(cur) => tracing::warn!(
                    frontend = %k,
                    holder = ?cur.service,
                    service = ?f.service,
                    "services: frontend already held by another service; ignored"
                ),
                None => {
                    state.frontends.insert(k, f);
                }
            }
        }
    }
    state
}

/// The frontends of one service (empty when it does not exist or is headless), computed
/// alone: what [`services`] would hold for it, without cross-service conflict resolution.
/// Use with [`ServiceState::replace_service`] to update a state after a change to one
/// service, its EndpointSlices, or pods it selects ([`services_selecting`]).
pub fn frontends_of(
    model: &Model,
    namespace: &str,
    name: &str,
    this_node: Option<&str>,
    node_addrs: &[IpAddr],
) -> BTreeMap<FrontendKey, Frontend> {
    let Some(svc) = model.service(namespace, name) else {
        return BTreeMap::new();
    };
    let ctx = build::Context::new(model, this_node, node_addrs);
    ctx.frontends(namespace, name, &svc)
}
