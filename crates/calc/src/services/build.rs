//! Frontends of one service: addresses × ports, with the service's policies.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serval_model::k8s::{
    Service, ServicePort, ServiceSpec, ServiceStatus, ServiceType, TrafficPolicy,
};
use serval_model::net::IpFamily;

use super::{Frontend, FrontendKey, FrontendKind, backends};
use crate::endpoints::Endpoint;
use crate::model::Model;

/// A Service's label selector: the resource's map, or the model's sorted pairs.
#[derive(Clone, Copy)]
pub(crate) enum Selector<'a> {
    Map(&'a BTreeMap<String, String>),
    Sorted(&'a [(Box<str>, Box<str>)]),
}

impl Selector<'_> {
    pub(super) fn is_empty(&self) -> bool {
        match self {
            Selector::Map(m) => m.is_empty(),
            Selector::Sorted(s) => s.is_empty(),
        }
    }

    /// Every key present in `labels` with an equal value.
    pub(super) fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Selector::Map(m) => selects(m, labels),
            Selector::Sorted(s) => s
                .iter()
                .all(|(k, v)| labels.get(&**k).is_some_and(|l| **l == **v)),
        }
    }
}

/// What the frontends of a Service read of it, borrowed from the resource
/// ([`ServiceView::of`]) or from the model's entry (`ServiceEntry::view`), so the model's
/// Services are not turned back into resources for every calculation.
pub(crate) struct ServiceView<'a> {
    /// The spec; its `selector`, `ports` and `clusterIPs` are read from the fields below.
    pub(crate) spec: &'a ServiceSpec,
    pub(crate) cluster_ips: &'a [String],
    pub(crate) selector: Selector<'a>,
    pub(crate) ports: &'a [ServicePort],
    pub(crate) status: Option<&'a ServiceStatus>,
    /// `lb.projectcalico.org/external-traffic-strategy: maglev` ([`crate::maglev::wants_maglev`]).
    pub(crate) wants_maglev: bool,
}

impl<'a> ServiceView<'a> {
    pub(crate) fn of(svc: &'a Service) -> ServiceView<'a> {
        ServiceView {
            spec: &svc.spec,
            cluster_ips: &svc.spec.cluster_ips,
            selector: Selector::Map(&svc.spec.selector),
            ports: &svc.spec.ports,
            status: svc.status.as_ref(),
            wants_maglev: crate::maglev::wants_maglev(svc),
        }
    }

    /// `spec.cluster_addrs()` of the Service.
    fn cluster_addrs(&self) -> Vec<IpAddr> {
        self.cluster_ips
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect()
    }
}

/// What computing frontends needs besides the service itself: the endpoints indexed by
/// namespace and address, and the node addresses with their owners.
pub(super) struct Context<'a> {
    pub(super) model: &'a Model,
    endpoints: Vec<Endpoint>,
    by_ns: BTreeMap<String, Vec<usize>>,
    by_ip: BTreeMap<IpAddr, usize>,
    node_addrs: BTreeMap<IpAddr, Option<String>>,
}

impl<'a> Context<'a> {
    pub(super) fn new(model: &'a Model, this_node: Option<&str>, node_addrs: &[IpAddr]) -> Self {
        let endpoints = model.endpoints();
        let mut by_ns: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut by_ip = BTreeMap::new();
        for (i, ep) in endpoints.iter().enumerate() {
            by_ns.entry(ep.namespace.clone()).or_default().push(i);
            for a in &ep.addrs {
                by_ip.entry(*a).or_insert(i);
            }
        }
        Context {
            model,
            endpoints,
            by_ns,
            by_ip,
            node_addrs: node_addresses(model, this_node, node_addrs),
        }
    }

    /// The endpoints in `namespace`, sorted by pod name.
    pub(super) fn endpoints_in<'s>(
        &'s self,
        namespace: &str,
    ) -> impl Iterator<Item = &'s Endpoint> + 's {
        self.by_ns
            .get(namespace)
            .into_iter()
            .flatten()
            .map(|&i| &self.endpoints[i])
    }

    /// The endpoint that owns `ip`.
    pub(super) fn endpoint_by_ip(&self, ip: IpAddr) -> Option<&Endpoint> {
        self.by_ip.get(&ip).map(|&i| &self.endpoints[i])
    }

    /// Every frontend of `svc` (`namespace/name`), sorted by key.
    pub(super) fn frontends(
        &self,
        namespace: &str,
        name: &str,
        svc: &Service,
    ) -> BTreeMap<FrontendKey, Frontend> {
        self.frontend_list(namespace, name, &ServiceView::of(svc))
            .into_iter()
            .collect()
    }

    /// Every frontend of `svc` (`namespace/name`), sorted by key, without duplicate keys.
    pub(super) fn frontend_list(
        &self,
        namespace: &str,
        name: &str,
        svc: &ServiceView<'_>,
    ) -> Vec<(FrontendKey, Frontend)> {
        let spec = svc.spec;
        let mut out: Vec<(FrontendKey, Frontend)> = Vec::new();
        if spec.is_headless() {
            return out;
        }
        let cluster_addrs = svc.cluster_addrs();
        let families = service_families(spec, &cluster_addrs);
        let in_family = |ip: &IpAddr| families.contains(&IpFamily::of_addr(ip));
        let service = (namespace.to_string(), name.to_string());
        let affinity_timeout = spec.affinity_timeout_seconds();
        let internal_local = spec.internal_traffic_policy == Some(TrafficPolicy::Local);
        let external_local = spec.external_traffic_policy == Some(TrafficPolicy::Local);
        let wants_maglev = svc.wants_maglev;

        let cluster_ips: Vec<IpAddr> = cluster_addrs.into_iter().filter(in_family).collect();
        let node_ips: Vec<(IpAddr, Option<String>)> = if spec.has_node_ports() {
            self.node_addrs
                .iter()
                .filter(|(ip, _)| in_family(ip))
                .map(|(ip, n)| (*ip, n.clone()))
                .collect()
        } else {
            Vec::new()
        };
        let external_ips: Vec<IpAddr> = spec
            .external_ips
            .iter()
            .copied()
            .filter(in_family)
            .collect();
        let lb_ips: Vec<IpAddr> = if spec.type_ == ServiceType::LoadBalancer {
            svc.status
                .iter()
                .filter_map(|s| s.load_balancer.as_ref())
                .flat_map(|lb| &lb.ingress)
                .filter_map(|i| i.ip)
                .filter(in_family)
                .collect()
        } else {
            Vec::new()
        };

        for port in svc.ports {
            // The keys this port adds, with their address family: their backends are
            // filled in below, computed once per family and moved into the last frontend
            // of that family rather than cloned (one frontend per family is the common case).
            // Two frontends of one service on one key (an externalIP equal to a node address,
            // say): the first kind in this order wins (the later ones are dropped after the
            // stable sort below).
            let mut added: Vec<(usize, IpFamily)> = Vec::new();
            let mut add = |ip: IpAddr, p: u16, kind: FrontendKind, node: Option<String>| {
                let key = FrontendKey {
                    ip,
                    port: p,
                    protocol: port.protocol,
                };
                let external = kind.is_external();
                let f = Frontend {
                    service: service.clone(),
                    port_name: port.name.clone(),
                    kind,
                    backends: Vec::new(),
                    affinity_timeout,
                    external_local: external && external_local,
                    internal_local,
                    masquerade: external && !external_local,
                    node,
                    maglev: crate::maglev::applies(wants_maglev, kind, external_local),
                };
                added.push((out.len(), IpFamily::of_addr(&ip)));
                out.push((key, f));
            };
            for ip in &cluster_ips {
                add(*ip, port.port.get(), FrontendKind::ClusterIP, None);
            }
            if let Some(np) = port.node_port {
                for (ip, node) in &node_ips {
                    add(*ip, np.get(), FrontendKind::NodePort, node.clone());
                }
            }
            for ip in &external_ips {
                add(*ip, port.port.get(), FrontendKind::ExternalIP, None);
            }
            for ip in &lb_ips {
                add(*ip, port.port.get(), FrontendKind::LoadBalancer, None);
            }
            for fam in [IpFamily::V4, IpFamily::V6] {
                let at: Vec<usize> = added
                    .iter()
                    .filter(|(_, f)| *f == fam)
                    .map(|(i, _)| *i)
                    .collect();
                let Some((&last, rest)) = at.split_last() else {
                    continue;
                };
                let mut backends = backends::backends(self, namespace, name, svc, port, fam);
                // Moved into a frontend that lives as long as the service: without the spare
                // capacity it grew with (a clone, as the others get, has none either).
                backends.shrink_to_fit();
                for &i in rest {
                    out[i].1.backends = backends.clone();
                }
                out[last].1.backends = backends;
            }
        }
        // Stable: of equal keys the first added stays first, and is the one kept.
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|later, first| later.0 == first.0);
        out
    }
}

/// The IP families a service is served in: `ipFamilies`, else the families of its cluster IPs,
/// else both (a service whose cluster IP is not allocated yet).
fn service_families(spec: &ServiceSpec, cluster_addrs: &[IpAddr]) -> BTreeSet<IpFamily> {
    let mut f: BTreeSet<IpFamily> = spec.ip_families.iter().map(|f| f.family()).collect();
    if f.is_empty() {
        f = cluster_addrs.iter().map(IpFamily::of_addr).collect();
    }
    if f.is_empty() {
        f = [IpFamily::V4, IpFamily::V6].into();
    }
    f
}

/// Every node address that gets NodePort frontends, with the node owning it: each Node's
/// `spec.bgp` IPv4/IPv6 address (without prefix), plus `node_addrs` owned by `this_node`.
/// A Node resource's claim on an address wins over `node_addrs`.
pub fn node_addresses(
    model: &Model,
    this_node: Option<&str>,
    node_addrs: &[IpAddr],
) -> BTreeMap<IpAddr, Option<String>> {
    let mut out = BTreeMap::new();
    for (name, node) in &model.nodes {
        for a in node.bgp_addrs() {
            out.entry(a).or_insert_with(|| Some(name.clone()));
        }
    }
    for a in node_addrs {
        out.entry(*a)
            .or_insert_with(|| this_node.map(str::to_string));
    }
    out
}

/// The services in `namespace` whose (non-empty) selector matches `labels`, sorted. After a
/// pod changes, the services to recompute are those selecting its old labels and those
/// selecting its new ones.
pub fn services_selecting(
    model: &Model,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    model
        .services
        .iter()
        .filter(|((ns, _), svc)| ns == namespace && svc.has_selector() && svc.selects(labels))
        .map(|(k, _)| k.clone())
        .collect()
}

/// A Service selector: every key present with an equal value.
pub(super) fn selects(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
