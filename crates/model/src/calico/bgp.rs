//! Calico BGPConfiguration (cluster or per-node BGP settings) and BGPPeer.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::check_selector;
use crate::meta::{ObjectMeta, check_dns1123_subdomain};
use crate::net::{self, IpNet};
use crate::types::{AsNumber, FieldErrors, Port};

/// Calico's default cluster AS number.
pub const DEFAULT_AS_NUMBER: AsNumber = AsNumber(64512);
/// The BGP port.
pub const DEFAULT_BGP_PORT: u16 = 179;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BGPConfiguration {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: BGPConfigurationSpec,
}

/// Unset fields fall back to Calico's defaults (see the `effective_*` accessors). They are not
/// filled in at parse time because per-node configurations (`node.<name>`) only override
/// what they set.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BGPConfigurationSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_severity_screen: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_to_node_mesh_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<AsNumber>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_port: Option<Port>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        rename = "serviceClusterIPs"
    )]
    pub service_cluster_ips: Vec<ServiceCidr>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        rename = "serviceExternalIPs"
    )]
    pub service_external_ips: Vec<ServiceCidr>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        rename = "serviceLoadBalancerIPs"
    )]
    pub service_load_balancer_ips: Vec<ServiceCidr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceCidr {
    #[serde(with = "net::serde_network")]
    pub cidr: IpNet,
}

impl BGPConfigurationSpec {
    pub fn effective_as_number(&self) -> AsNumber {
        self.as_number.unwrap_or(DEFAULT_AS_NUMBER)
    }

    pub fn effective_node_to_node_mesh(&self) -> bool {
        self.node_to_node_mesh_enabled.unwrap_or(true)
    }

    pub fn effective_listen_port(&self) -> u16 {
        self.listen_port.map_or(DEFAULT_BGP_PORT, Port::get)
    }
}

const LOG_LEVELS: &[&str] = &["Debug", "Info", "Warning", "Error", "Fatal", "None"];

impl BGPConfiguration {
    pub(crate) fn validate(&self, errs: &mut FieldErrors) {
        let s = &self.spec;
        if let Some(l) = &s.log_severity_screen
            && !LOG_LEVELS.iter().any(|x| x.eq_ignore_ascii_case(l))
        {
            errs.add(
                "spec.logSeverityScreen",
                format!("{l:?} is not one of {}", LOG_LEVELS.join(", ")),
            );
        }
        let name = &self.metadata.name;
        if name != "default" && !name.starts_with("node.") {
            errs.add(
                "metadata.name",
                format!("{name:?}: a BGPConfiguration is named \"default\" or \"node.<nodename>\""),
            );
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BGPPeer {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: BGPPeerSpec,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BGPPeerSpec {
    /// The one node that peers; unset (and no nodeSelector) means every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Nodes that peer (Calico selector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<String>,
    /// The remote address: `10.0.0.1`, `10.0.0.1:1179`, `fd00::1` or `[fd00::1]:1179`.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "peerIP")]
    pub peer_ip: Option<String>,
    /// Peer with every Calico node matching this selector instead of one address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<AsNumber>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_original_next_hop: bool,
    /// The local address of the session: the node's own address (Calico's default,
    /// `UseNodeIP`) or left to the kernel (`None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<BGPSourceAddress>,
    /// TCP MD5 password of the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<BGPPassword>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum BGPSourceAddress {
    #[default]
    #[serde(rename = "UseNodeIP")]
    UseNodeIp,
    None,
}

/// Calico reads the password from a Secret (`secretKeyRef`); Serval has no Secrets, so the
/// value is given inline (`password: {value: "..."}`). A `secretKeyRef` is refused with a
/// message saying so.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BGPPassword {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// Parses a BGPPeer `peerIP`: an address, optionally with a port (`[v6]:port` for IPv6).
pub fn parse_peer_ip(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok((ip, None));
    }
    match s.parse::<SocketAddr>() {
        Ok(sa) if sa.port() != 0 => Ok((sa.ip(), Some(sa.port()))),
        Ok(_) => Err(format!("{s:?}: port 0 is out of range 1-65535")),
        Err(_) => Err(format!(
            "{s:?} is not an IP address or address:port (e.g. 10.0.0.1, 10.0.0.1:1179, [fd00::1]:1179)"
        )),
    }
}

impl BGPPeerSpec {
    /// The remote address and optional port, when `peerIP` is set and valid.
    pub fn peer_addr(&self) -> Option<(IpAddr, Option<u16>)> {
        self.peer_ip.as_deref().and_then(|s| parse_peer_ip(s).ok())
    }
}

impl BGPPeer {
    pub(crate) fn validate(&self, errs: &mut FieldErrors) {
        let s = &self.spec;
        if s.node.is_some() && s.node_selector.is_some() {
            errs.add("spec.nodeSelector", "set node or nodeSelector, not both");
        }
        if let Some(n) = &s.node
            && let Err(why) = check_dns1123_subdomain(n)
        {
            errs.add("spec.node", why);
        }
        if let Some(sel) = &s.node_selector {
            check_selector(sel, "spec.nodeSelector", errs);
        }
        if let Some(sel) = &s.peer_selector {
            check_selector(sel, "spec.peerSelector", errs);
        }
        match (&s.peer_ip, &s.peer_selector) {
            (Some(_), Some(_)) => {
                errs.add("spec.peerSelector", "set peerIP or peerSelector, not both")
            }
            (None, None) => errs.add("spec.peerIP", "set peerIP (with asNumber) or peerSelector"),
            (Some(ip), None) => {
                if let Err(why) = parse_peer_ip(ip) {
                    errs.add("spec.peerIP", why);
                }
                if s.as_number.is_none() {
                    errs.add("spec.asNumber", "is required with peerIP");
                }
            }
            (None, Some(_)) => {}
        }
        if let Some(pw) = &s.password {
            match (&pw.value, &pw.secret_key_ref) {
                (_, Some(_)) => errs.add(
                    "spec.password.secretKeyRef",
                    "Secrets are not modelled in Serval; give the password inline as password.value",
                ),
                (None, None) => errs.add("spec.password.value", "is required"),
                (Some(v), None) if v.is_empty() => errs.add("spec.password.value", "must not be empty"),
                (Some(v), None) if v.chars().any(|c| c == '"' || c == '\\' || c.is_control()) => errs.add(
                    "spec.password.value",
                    "must not contain quotes, backslashes or control characters (BIRD cannot quote them)",
                ),
                _ => {}
            }
        }
    }
}
