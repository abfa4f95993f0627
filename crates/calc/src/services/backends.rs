//! Backends of one service port in one IP family: ready pods matched by the selector, or the
//! service's EndpointSlices when it has no selector.

use std::net::IpAddr;

use serval_model::k8s::{AddressType, EndpointPort, ServicePort};
use serval_model::net::IpFamily;
use serval_model::types::IntOrString;

use super::Backend;
use super::build::{Context, ServiceView};

/// The backends of `port` of `svc` (`namespace/name`) with addresses of `family`, sorted and
/// without duplicates.
pub(super) fn backends(
    ctx: &Context<'_>,
    namespace: &str,
    name: &str,
    svc: &ServiceView<'_>,
    port: &ServicePort,
    family: IpFamily,
) -> Vec<Backend> {
    let mut out = if svc.selector.is_empty() {
        from_slices(ctx, namespace, name, port, family)
    } else {
        from_pods(ctx, namespace, svc, port, family)
    };
    out.sort();
    out.dedup();
    out
}

/// The target port on one pod: the number, or the pod's container port of that name and the
/// service port's protocol (Kubernetes' `FindPort`).
fn target_port(port: &ServicePort, named: impl Fn(&str) -> Option<u16>) -> Option<u16> {
    match port.target() {
        IntOrString::Int(n) => u16::try_from(n).ok().filter(|p| *p != 0),
        IntOrString::String(s) => named(&s),
    }
}

fn from_pods(
    ctx: &Context<'_>,
    namespace: &str,
    svc: &ServiceView<'_>,
    port: &ServicePort,
    family: IpFamily,
) -> Vec<Backend> {
    ctx.endpoints_in(namespace)
        .filter(|ep| {
            (ep.ready || svc.spec.publish_not_ready_addresses) && svc.selector.matches(&ep.labels)
        })
        .filter_map(|ep| {
            let p = target_port(port, |n| ep.named_port(n, port.protocol))?;
            Some((ep, p))
        })
        .flat_map(|(ep, p)| {
            ep.addrs
                .iter()
                .filter(move |a| IpFamily::of_addr(a) == family)
                .map(move |a| Backend {
                    ip: *a,
                    port: p,
                    node: ep.node.clone(),
                    endpoint: Some((ep.namespace.clone(), ep.pod.clone())),
                })
        })
        .collect()
}

/// A slice port serves a service port when names agree (unset and empty are the same) and
/// protocols are equal.
fn slice_port_matches(sp: &EndpointPort, port: &ServicePort) -> bool {
    let a = sp.name.as_deref().unwrap_or("");
    let b = port.name.as_deref().unwrap_or("");
    a == b && sp.protocol == port.protocol
}

fn from_slices(
    ctx: &Context<'_>,
    namespace: &str,
    name: &str,
    port: &ServicePort,
    family: IpFamily,
) -> Vec<Backend> {
    let want = match family {
        IpFamily::V4 => AddressType::IPv4,
        IpFamily::V6 => AddressType::IPv6,
    };
    let mut out = Vec::new();
    for ((ns, slice_name), slice) in &ctx.model.endpoint_slices {
        if ns != namespace || slice.service_name() != Some(name) || slice.address_type != want {
            continue;
        }
        let Some(p) = slice
            .ports
            .iter()
            .find(|sp| slice_port_matches(sp, port))
            .and_then(|sp| sp.port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            tracing::debug!(
                namespace,
                service = name,
                slice = %slice_name,
                port = ?port.name,
                "services: EndpointSlice has no port for this service port"
            );
            continue;
        };
        for ep in slice.endpoints.iter().filter(|e| e.is_ready()) {
            for ip in ep.ip_addrs() {
                if IpFamily::of_addr(&ip) != family {
                    continue;
                }
                out.push(slice_backend(ctx, namespace, ep, ip, p));
            }
        }
    }
    out
}

fn slice_backend(
    ctx: &Context<'_>,
    namespace: &str,
    ep: &serval_model::k8s::Endpoint,
    ip: IpAddr,
    port: u16,
) -> Backend {
    let known = ctx.endpoint_by_ip(ip);
    let endpoint = ep
        .target_ref
        .as_ref()
        .filter(|r| r.kind.as_deref().is_none_or(|k| k == "Pod"))
        .and_then(|r| {
            let name = r.name.clone()?;
            let ns = r.namespace.clone().unwrap_or_else(|| namespace.to_string());
            Some((ns, name))
        })
        .or_else(|| known.map(|e| (e.namespace.clone(), e.pod.clone())));
    let node = ep
        .node_name
        .clone()
        .or_else(|| known.map(|e| e.node.clone()))
        .unwrap_or_default();
    Backend {
        ip,
        port,
        node,
        endpoint,
    }
}
