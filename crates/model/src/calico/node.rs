//! Calico Node: a host's BGP identity, tunnel addresses and addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::meta::ObjectMeta;
use crate::net::{self, IpNet};
use crate::types::{AsNumber, FieldErrors};

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Node {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: NodeSpec,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<NodeBgpSpec>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "ipv4VXLANTunnelAddr"
    )]
    pub ipv4_vxlan_tunnel_addr: Option<Ipv4Addr>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "ipv6VXLANTunnelAddr"
    )]
    pub ipv6_vxlan_tunnel_addr: Option<Ipv6Addr>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "vxlanTunnelMACAddr"
    )]
    pub vxlan_tunnel_mac_addr: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "vxlanTunnelMACAddrV6"
    )]
    pub vxlan_tunnel_mac_addr_v6: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<NodeAddress>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeBgpSpec {
    /// The node's address with its subnet prefix, e.g. `192.168.1.10/24` (host bits kept).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "net::serde_interface_addr_opt"
    )]
    pub ipv4_address: Option<IpNet>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "net::serde_interface_addr_opt"
    )]
    pub ipv6_address: Option<IpNet>,
    /// Overrides the cluster AS (BGPConfiguration) for this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<AsNumber>,
    /// Set on route reflectors.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "routeReflectorClusterID"
    )]
    pub route_reflector_cluster_id: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeAddress {
    /// An address or CIDR.
    pub address: String,
    /// `InternalIP`, `ExternalIP`, `CalicoNodeIP`.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "type")]
    pub type_: Option<String>,
}

/// Checks a MAC address `aa:bb:cc:dd:ee:ff`.
pub fn check_mac(s: &str) -> Result<(), String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok())
    {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a MAC address (expected e.g. 66:cf:4a:12:34:56)"
        ))
    }
}

impl Node {
    /// The node's IPv4 / IPv6 addresses from `spec.bgp` (without prefix).
    pub fn bgp_addrs(&self) -> Vec<IpAddr> {
        let Some(b) = &self.spec.bgp else {
            return Vec::new();
        };
        b.ipv4_address
            .iter()
            .chain(&b.ipv6_address)
            .map(|n| n.addr())
            .collect()
    }

    pub(crate) fn validate(&self, errs: &mut FieldErrors) {
        let s = &self.spec;
        if let Some(b) = &s.bgp {
            if let Some(a) = &b.ipv4_address
                && !a.addr().is_ipv4()
            {
                errs.add(
                    "spec.bgp.ipv4Address",
                    format!("{a} is not an IPv4 address"),
                );
            }
            if let Some(a) = &b.ipv6_address
                && !a.addr().is_ipv6()
            {
                errs.add(
                    "spec.bgp.ipv6Address",
                    format!("{a} is not an IPv6 address"),
                );
            }
        }
        for (mac, field) in [
            (&s.vxlan_tunnel_mac_addr, "vxlanTunnelMACAddr"),
            (&s.vxlan_tunnel_mac_addr_v6, "vxlanTunnelMACAddrV6"),
        ] {
            if let Some(m) = mac
                && let Err(why) = check_mac(m)
            {
                errs.add(format!("spec.{field}"), why);
            }
        }
        for (i, a) in s.addresses.iter().enumerate() {
            if let Err(e) = net::parse_ip_or_cidr(&a.address) {
                errs.add(format!("spec.addresses[{i}].address"), e.to_string());
            }
            if let Some(t) = &a.type_
                && !matches!(t.as_str(), "InternalIP" | "ExternalIP" | "CalicoNodeIP")
            {
                errs.add(
                    format!("spec.addresses[{i}].type"),
                    format!("{t:?} is not InternalIP, ExternalIP or CalicoNodeIP"),
                );
            }
        }
    }
}
