//! Calico HostEndpoint: a host interface (or the host's addresses) that policy applies to.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::meta::{ObjectMeta, check_dns1123_subdomain};
use crate::types::{CalicoProtocol, FieldErrors, validate_port_name};

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostEndpoint {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: HostEndpointSpec,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostEndpointSpec {
    /// The node this endpoint is on.
    #[serde(default)]
    pub node: String,
    /// The host interface; `*` means all of the host's interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_name: Option<String>,
    #[serde(default, rename = "expectedIPs", skip_serializing_if = "Vec::is_empty")]
    pub expected_ips: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    /// Named ports for policy rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<EndpointPort>,
}

/// A named port on an endpoint (HostEndpoint, WorkloadEndpoint).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointPort {
    pub name: String,
    pub protocol: CalicoProtocol,
    pub port: u16,
}

impl EndpointPort {
    pub(crate) fn validate(&self, p: &str, errs: &mut FieldErrors) {
        if let Err(why) = validate_port_name(&self.name) {
            errs.add(format!("{p}.name"), why);
        }
        if !self.protocol.has_ports() {
            errs.add(
                format!("{p}.protocol"),
                format!("{} has no ports; use TCP, UDP or SCTP", self.protocol),
            );
        }
        if self.port == 0 {
            errs.add(format!("{p}.port"), "0 is out of range 1-65535");
        }
    }
}

/// Largest Linux interface name (IFNAMSIZ - 1).
pub const MAX_IFACE_NAME_LEN: usize = 15;

/// Checks a Linux interface name (or `*`).
pub(crate) fn check_iface_name(s: &str) -> Result<(), String> {
    if s == "*" {
        return Ok(());
    }
    if s.is_empty() || s.len() > MAX_IFACE_NAME_LEN {
        return Err(format!(
            "{s:?} must be 1 to {MAX_IFACE_NAME_LEN} characters"
        ));
    }
    if s.bytes()
        .any(|b| b == b'/' || b.is_ascii_whitespace() || b == b':')
        || s == "."
        || s == ".."
    {
        return Err(format!("{s:?} is not a valid interface name"));
    }
    Ok(())
}

impl HostEndpoint {
    pub(crate) fn validate(&self, errs: &mut FieldErrors) {
        let s = &self.spec;
        if s.node.is_empty() {
            errs.add("spec.node", "is required");
        } else if let Err(why) = check_dns1123_subdomain(&s.node) {
            errs.add("spec.node", why);
        }
        match &s.interface_name {
            Some(i) => {
                if let Err(why) = check_iface_name(i) {
                    errs.add("spec.interfaceName", why);
                }
            }
            None if s.expected_ips.is_empty() => errs.add(
                "spec.interfaceName",
                "set interfaceName or expectedIPs (or both)",
            ),
            None => {}
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
