//! Per-packet service decision: which backends a packet to a frontend may go to, and whether
//! its source is masqueraded. The reference evaluator and the tests use this; the dataplanes
//! render the same rules from [`Frontend`](super::Frontend)'s flags.

use std::net::IpAddr;

use serval_model::types::Protocol;

use super::{Backend, FrontendKey, ServiceDecision, ServiceState};

/// Decides what happens to a packet to `(dst, port, proto)`.
///
/// * `via_node`: the node that DNATs the packet — the client pod's node for traffic from a
///   pod, the node the packet arrived at for traffic from outside. `None` when unknown: then
///   node-local policies cannot filter, except that a NodePort frontend's own node
///   ([`Frontend::node`](super::Frontend::node)) stands in for the receiving node.
/// * `src_local`: the source is inside the cluster — a pod, or the DNATing node itself
///   (kube-proxy's "local traffic" detector). Outside clients pass `false`.
///
/// Rules, as kube-proxy:
/// * no backends at all → [`ServiceDecision::Reject`];
/// * ClusterIP: every backend, or with `internalTrafficPolicy: Local` those on `via_node`
///   ([`ServiceDecision::Drop`] when there are none there); masqueraded only when the source
///   is outside the cluster;
/// * external frontend, `externalTrafficPolicy: Cluster`: every backend, always masqueraded;
/// * external frontend, `externalTrafficPolicy: Local`, outside source: backends on the
///   receiving node only, source kept; `Drop` when there are none there;
/// * external frontend, `externalTrafficPolicy: Local`, source inside the cluster:
///   short-circuited like ClusterIP traffic (every backend, or node-local ones under
///   `internalTrafficPolicy: Local`), source kept. (kube-proxy masquerades such traffic when
///   it comes from the node itself rather than a pod; callers that need that distinction
///   masquerade host-sourced packets themselves.)
///
/// Hairpin traffic (the chosen backend is the client) is masqueraded on top of this; see
/// [`hairpin_snat`].
pub fn resolve(
    state: &ServiceState,
    dst: IpAddr,
    port: u16,
    proto: Protocol,
    via_node: Option<&str>,
    src_local: bool,
) -> ServiceDecision {
    let key = FrontendKey {
        ip: dst,
        port,
        protocol: proto,
    };
    let Some(f) = state.frontends.get(&key) else {
        return ServiceDecision::NotAService;
    };
    if f.backends.is_empty() {
        return ServiceDecision::Reject;
    }
    let (candidates, snat_to_node) = if !f.kind.is_external() {
        (f.internal_backends(via_node), !src_local)
    } else if !f.external_local {
        (f.backends.clone(), true)
    } else if src_local {
        (f.internal_backends(via_node), false)
    } else {
        (f.external_backends(via_node), false)
    };
    if candidates.is_empty() {
        ServiceDecision::Drop
    } else {
        ServiceDecision::Dnat {
            frontend: key,
            candidates,
            snat_to_node,
        }
    }
}

/// Whether a DNATed packet from `src` to `backend` must also be masqueraded because it hairpins
/// (the client is the backend itself), as kube-proxy's per-endpoint `KUBE-SEP-*` chains do;
/// without it the reply would bypass the reverse NAT.
pub fn hairpin_snat(src: IpAddr, backend: &Backend) -> bool {
    src == backend.ip
}
