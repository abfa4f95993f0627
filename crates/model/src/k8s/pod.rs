//! `v1` Pod: labels, node, containers with named ports, and the status the lab reports.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::meta::{ObjectMeta, check_dns1123_label, check_dns1123_subdomain};
use crate::types::{FieldErrors, Port, Protocol, validate_port_name};

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pod {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PodStatus>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodSpec {
    /// The node the pod runs on (`spec.nodeName`); unset means "not scheduled yet".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default)]
    pub containers: Vec<Container>,
    /// Pod shares the node's network namespace (no endpoint of its own).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Container {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerPort {
    /// IANA_SVC_NAME; what Service `targetPort` and policy named ports refer to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub container_port: Port,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<Port>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PodPhase>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "hostIP")]
    pub host_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "podIP")]
    pub pod_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "podIPs")]
    pub pod_ips: Vec<PodIp>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<PodCondition>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodIp {
    pub ip: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodCondition {
    /// `Ready`, `PodScheduled`, `ContainersReady`, `Initialized`, …
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
}

impl Pod {
    /// Every address in the status (`podIPs`, falling back to `podIP`).
    pub fn ips(&self) -> Vec<IpAddr> {
        let Some(st) = &self.status else {
            return Vec::new();
        };
        if !st.pod_ips.is_empty() {
            st.pod_ips.iter().map(|p| p.ip).collect()
        } else {
            st.pod_ip.into_iter().collect()
        }
    }

    /// Ready as the endpoints controller reads it: phase Running and a `Ready` condition that is
    /// `True` (a status without conditions but Running counts as ready).
    pub fn is_ready(&self) -> bool {
        let Some(st) = &self.status else { return false };
        if st.phase != Some(PodPhase::Running) {
            return false;
        }
        match st.conditions.iter().find(|c| c.type_ == "Ready") {
            Some(c) => c.status == "True",
            None => true,
        }
    }

    /// The container port named `name` (for Service `targetPort` / named policy ports).
    pub fn named_port(&self, name: &str) -> Option<&ContainerPort> {
        self.spec
            .containers
            .iter()
            .flat_map(|c| &c.ports)
            .find(|p| p.name.as_deref() == Some(name))
    }

    pub(crate) fn apply_defaults(&mut self) {
        if let Some(st) = &mut self.status
            && st.pod_ips.is_empty()
            && let Some(ip) = st.pod_ip
        {
            st.pod_ips.push(PodIp { ip });
        }
    }

    pub(crate) fn validate(&self, errs: &mut FieldErrors) {
        if let Some(node) = &self.spec.node_name
            && let Err(why) = check_dns1123_subdomain(node)
        {
            errs.add("spec.nodeName", why);
        }
        let mut container_names = BTreeSet::new();
        let mut port_names = BTreeSet::new();
        for (i, c) in self.spec.containers.iter().enumerate() {
            let p = format!("spec.containers[{i}]");
            if let Err(why) = check_dns1123_label(&c.name) {
                errs.add(format!("{p}.name"), why);
            } else if !container_names.insert(c.name.as_str()) {
                errs.add(
                    format!("{p}.name"),
                    format!("duplicate container name {:?}", c.name),
                );
            }
            for (j, port) in c.ports.iter().enumerate() {
                if let Some(name) = &port.name {
                    if let Err(why) = validate_port_name(name) {
                        errs.add(format!("{p}.ports[{j}].name"), why);
                    } else if !port_names.insert(name.as_str()) {
                        errs.add(
                            format!("{p}.ports[{j}].name"),
                            format!("duplicate port name {name:?} in this pod; port names must be unique"),
                        );
                    }
                }
            }
        }
        if let Some(st) = &self.status {
            let mut fams = BTreeSet::new();
            for (i, ip) in st.pod_ips.iter().enumerate() {
                if !fams.insert(ip.ip.is_ipv4()) {
                    errs.add(
                        format!("status.podIPs[{i}]"),
                        "at most one address per IP family",
                    );
                }
            }
            if let (Some(ip), Some(first)) = (st.pod_ip, st.pod_ips.first())
                && ip != first.ip
            {
                errs.add(
                    "status.podIP",
                    format!("{ip} must equal status.podIPs[0] ({})", first.ip),
                );
            }
        }
    }
}
