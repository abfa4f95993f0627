//! WorkloadEndpoint: the internal record the CNI plugin writes for each pod interface it
//! wires (`serval.dev/v1`, not accepted by `serval apply`). It lives in the pod's namespace
//! and is named after the pod ([`WorkloadEndpoint::name_for`]); `metadata.labels` carries the
//! pod's labels at the time of ADD.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::calico::hostendpoint::{EndpointPort, check_iface_name};
use crate::calico::node::check_mac;
use crate::k8s::Pod;
use crate::meta::{ObjectMeta, check_dns1123_subdomain};
use crate::net::{self, IpFamily, IpNet};
use crate::types::{CalicoProtocol, FieldErrors, Protocol};

/// Profile every endpoint in namespace `ns` carries (Calico's `kns.<namespace>`).
pub fn namespace_profile(ns: &str) -> String {
    format!("kns.{ns}")
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEndpoint {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: WorkloadEndpointSpec,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEndpointSpec {
    /// The pod's name (its namespace is `metadata.namespace`).
    pub pod: String,
    pub node: String,
    /// The CNI container id.
    #[serde(default)]
    pub container_id: String,
    /// The interface name inside the pod (`eth0`).
    #[serde(default = "eth0")]
    pub endpoint: String,
    /// The host-side veth name.
    pub interface_name: String,
    /// MAC of the pod-side interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The pod's addresses as host networks (`10.244.1.5/32`, `fd00::5/128`).
    #[serde(default, with = "net::serde_network_list")]
    pub ip_networks: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    /// Named container ports copied from the pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<EndpointPort>,
    /// Set by the node agent once the pod's server listens on every declared port; service
    /// endpoints are derived from ready endpoints only.
    #[serde(default)]
    pub ready: bool,
}

fn eth0() -> String {
    "eth0".to_string()
}

impl WorkloadEndpoint {
    /// The endpoint name for a pod: the pod's name (one endpoint per pod).
    pub fn name_for(pod: &str) -> String {
        pod.to_string()
    }

    /// An endpoint for `pod` (labels, named ports and namespace profile copied from it).
    pub fn for_pod(
        pod: &Pod,
        node: &str,
        container_id: &str,
        interface_name: &str,
        ip_networks: Vec<IpNet>,
    ) -> WorkloadEndpoint {
        let ns = pod.metadata.namespace_str().to_string();
        let mut metadata = ObjectMeta::namespaced(ns.clone(), Self::name_for(&pod.metadata.name));
        metadata.labels = pod.metadata.labels.clone();
        let ports = pod
            .spec
            .containers
            .iter()
            .flat_map(|c| &c.ports)
            .filter_map(|p| {
                let name = p.name.clone()?;
                let protocol = match p.protocol {
                    Protocol::Tcp => CalicoProtocol::Tcp,
                    Protocol::Udp => CalicoProtocol::Udp,
                    Protocol::Sctp => CalicoProtocol::Sctp,
                };
                Some(EndpointPort {
                    name,
                    protocol,
                    port: p.container_port.get(),
                })
            })
            .collect();
        WorkloadEndpoint {
            metadata,
            spec: WorkloadEndpointSpec {
                pod: pod.metadata.name.clone(),
                node: node.to_string(),
                container_id: container_id.to_string(),
                endpoint: eth0(),
                interface_name: interface_name.to_string(),
                mac: None,
                ip_networks,
                profiles: vec![namespace_profile(&ns)],
                ports,
                ready: false,
            },
        }
    }

    pub fn addrs(&self) -> Vec<std::net::IpAddr> {
        self.spec.ip_networks.iter().map(|n| n.addr()).collect()
    }

    pub(crate) fn validate(&self, errs: &mut FieldErrors) {
        let s = &self.spec;
        if let Err(why) = check_dns1123_subdomain(&s.pod) {
            errs.add("spec.pod", why);
        }
        if let Err(why) = check_dns1123_subdomain(&s.node) {
            errs.add("spec.node", why);
        }
        if let Err(why) = check_iface_name(&s.interface_name) {
            errs.add("spec.interfaceName", why);
        }
        if s.interface_name == "*" {
            errs.add("spec.interfaceName", "must name one interface");
        }
        if let Err(why) = check_iface_name(&s.endpoint) {
            errs.add("spec.endpoint", why);
        }
        if let Some(m) = &s.mac
            && let Err(why) = check_mac(m)
        {
            errs.add("spec.mac", why);
        }
        let mut fams = BTreeSet::new();
        for (i, n) in s.ip_networks.iter().enumerate() {
            let fam = IpFamily::of_net(n);
            if n.prefix_len() != fam.max_prefix_len() {
                errs.add(
                    format!("spec.ipNetworks[{i}]"),
                    format!("{n} must be a host network (/32 or /128)"),
                );
            }
            if !fams.insert(fam) {
                errs.add(
                    format!("spec.ipNetworks[{i}]"),
                    format!("a second {fam} address; one per family"),
                );
            }
        }
        for (i, p) in s.profiles.iter().enumerate() {
            if let Err(why) = check_dns1123_subdomain(p) {
                errs.add(format!("spec.profiles[{i}]"), why);
            }
        }
        for (i, p) in s.ports.iter().enumerate() {
            p.validate(&format!("spec.ports[{i}]"), errs);
        }
    }
}
