//! Which services a change to one resource can affect, so a caller recomputes only those
//! ([`super::frontends_of`] + [`super::ServiceState::replace_service`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serval_model::Resource;

use super::build::services_selecting;
use crate::model::{Model, NsName};

/// The services whose frontends may change when a resource goes from `old` to `new` (`None`:
/// absent before / after). `model` is the model AFTER the change. Kinds services do not read
/// (policies, namespaces, pools, …) affect none.
///
/// * Service: itself.
/// * EndpointSlice: the service its `kubernetes.io/service-name` label names, before and after.
/// * Pod / WorkloadEndpoint: the services whose selector matches its labels before or after (and
///   the endpoint's current labels, which come from the Pod when there is one), plus the
///   selector-less services whose EndpointSlices list one of its addresses (a slice endpoint
///   without `nodeName` or `targetRef` borrows them from the pod).
/// * Node: every service with node ports (its addresses are NodePort frontends).
pub fn affected_services(
    model: &Model,
    old: Option<&Resource>,
    new: Option<&Resource>,
) -> BTreeSet<NsName> {
    let mut out = BTreeSet::new();
    for r in old.into_iter().chain(new) {
        let ns = r.meta().namespace_str().to_string();
        match r {
            Resource::Service(_) => {
                out.insert((ns, r.meta().name.clone()));
            }
            Resource::EndpointSlice(s) => {
                if let Some(name) = s.service_name() {
                    out.insert((ns, name.to_string()));
                }
            }
            Resource::Pod(p) => {
                let (ns, pod) = (ns, p.metadata.name.clone());
                pod_services(model, &ns, &pod, &p.metadata.labels, &p.ips(), &mut out);
            }
            Resource::WorkloadEndpoint(w) => {
                let (ns, pod) = (ns, w.spec.pod.clone());
                pod_services(model, &ns, &pod, &w.metadata.labels, &w.addrs(), &mut out);
            }
            Resource::Node(_) => out.extend(
                model
                    .services
                    .iter()
                    .filter(|(_, s)| s.has_node_ports())
                    .map(|(k, _)| k.clone()),
            ),
            _ => {}
        }
    }
    out
}

fn pod_services(
    model: &Model,
    ns: &str,
    pod: &str,
    labels: &BTreeMap<String, String>,
    addrs: &[IpAddr],
    out: &mut BTreeSet<NsName>,
) {
    out.extend(services_selecting(model, ns, labels));
    let key = crate::endpoints::EndpointKey::new(ns, pod);
    let mut addrs: Vec<IpAddr> = addrs.to_vec();
    if let Some(ep) = model.endpoint(&key) {
        out.extend(services_selecting(model, ns, &ep.labels));
        addrs.extend(ep.addrs);
    }
    for ((slice_ns, _), slice) in &model.endpoint_slices {
        let Some(svc) = slice.service_name() else {
            continue;
        };
        let lists = slice
            .endpoints
            .iter()
            .flat_map(|e| e.ip_addrs())
            .any(|a| addrs.contains(&a));
        if lists {
            out.insert((slice_ns.clone(), svc.to_string()));
        }
    }
}
