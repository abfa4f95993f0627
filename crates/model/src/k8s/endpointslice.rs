//! `discovery.k8s.io/v1` EndpointSlice. Optional: endpoints are otherwise derived from
//! service selectors over ready pods. A slice belongs to the Service named by its
//! `kubernetes.io/service-name` label.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::meta::{ObjectMeta, check_dns1123_label, check_dns1123_subdomain};
use crate::types::{FieldErrors, Protocol};

/// The label that ties a slice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointSlice {
    pub metadata: ObjectMeta,
    pub address_type: AddressType,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<EndpointPort>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AddressType {
    IPv4,
    IPv6,
    /// Accepted by Kubernetes; Serval rejects it (no DNS-based endpoints).
    FQDN,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    pub addresses: Vec<String>,
    #[serde(default)]
    pub conditions: EndpointConditions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<ObjectReference>,
}

/// Unset `ready` means ready, as Kubernetes reads it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointConditions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminating: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub protocol: Protocol,
    /// Unset means "all ports" in Kubernetes; Serval requires it for service backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

impl Endpoint {
    pub fn is_ready(&self) -> bool {
        self.conditions.ready.unwrap_or(true)
    }

    /// The addresses that parse (all of them, after validation).
    pub fn ip_addrs(&self) -> Vec<IpAddr> {
        self.addresses
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect()
    }
}

impl EndpointSlice {
    /// The Service this slice belongs to (`kubernetes.io/service-name`).
    pub fn service_name(&self) -> Option<&str> {
        self.metadata
            .labels
            .get(SERVICE_NAME_LABEL)
            .map(String::as_str)
    }

    pub(crate) fn validate(&self, errs: &mut FieldErrors) {
        if self.address_type == AddressType::FQDN {
            errs.add(
                "addressType",
                "FQDN endpoints are not supported; use IPv4 or IPv6",
            );
        }
        for (i, ep) in self.endpoints.iter().enumerate() {
            let p = format!("endpoints[{i}]");
            if ep.addresses.is_empty() || ep.addresses.len() > 100 {
                errs.add(format!("{p}.addresses"), "must have 1 to 100 addresses");
            }
            for (j, a) in ep.addresses.iter().enumerate() {
                match a.parse::<IpAddr>() {
                    Ok(ip) => {
                        let want_v4 = self.address_type == AddressType::IPv4;
                        if self.address_type != AddressType::FQDN && ip.is_ipv4() != want_v4 {
                            errs.add(
                                format!("{p}.addresses[{j}]"),
                                format!("{ip} does not match addressType {:?}", self.address_type),
                            );
                        }
                    }
                    Err(_) => errs.add(
                        format!("{p}.addresses[{j}]"),
                        format!("{a:?} is not an IP address"),
                    ),
                }
            }
            if let Some(h) = &ep.hostname
                && let Err(why) = check_dns1123_label(h)
            {
                errs.add(format!("{p}.hostname"), why);
            }
            if let Some(n) = &ep.node_name
                && let Err(why) = check_dns1123_subdomain(n)
            {
                errs.add(format!("{p}.nodeName"), why);
            }
        }
        for (i, port) in self.ports.iter().enumerate() {
            let p = format!("ports[{i}]");
            if let Some(n) = &port.name
                && !n.is_empty()
                && let Err(why) = check_dns1123_label(n)
            {
                errs.add(format!("{p}.name"), why);
            }
            if let Some(n) = port.port
                && !(1..=65535).contains(&n)
            {
                errs.add(format!("{p}.port"), format!("{n} is out of range 1-65535"));
            }
        }
    }
}
