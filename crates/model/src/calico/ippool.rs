//! Calico IPPool: a range pods get addresses from, carved into per-node blocks.

use serde::{Deserialize, Serialize};

use super::check_selector;
use crate::meta::ObjectMeta;
use crate::net::{self, IpFamily, IpNet};
use crate::types::FieldErrors;

/// Calico's default block size for IPv4 pools.
pub const DEFAULT_BLOCK_SIZE_V4: u8 = 26;
/// Calico's default block size for IPv6 pools.
pub const DEFAULT_BLOCK_SIZE_V6: u8 = 122;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IPPool {
    pub metadata: ObjectMeta,
    pub spec: IPPoolSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IPPoolSpec {
    /// Normalised to the network address (`10.0.0.5/16` is stored as `10.0.0.0/16`), as
    /// calicoctl does.
    #[serde(with = "net::serde_network")]
    pub cidr: IpNet,
    /// Prefix length of the per-node blocks; 26 (IPv4) / 122 (IPv6) when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u8>,
    #[serde(default)]
    pub encapsulation: Encapsulation,
    #[serde(default)]
    pub nat_outgoing: bool,
    /// Nodes that may allocate from this pool; `all()` when omitted.
    #[serde(default = "all_selector")]
    pub node_selector: String,
    #[serde(default)]
    pub disabled: bool,
    #[serde(
        default,
        rename = "disableBGPExport",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub disable_bgp_export: bool,
}

fn all_selector() -> String {
    "all()".to_string()
}

/// How traffic between pods on different nodes leaves the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Encapsulation {
    /// Routed natively (direct routes or BGP).
    #[default]
    None,
    #[serde(rename = "VXLAN")]
    Vxlan,
    /// VXLAN only to nodes in another subnet.
    #[serde(rename = "VXLANCrossSubnet")]
    VxlanCrossSubnet,
}

impl IPPoolSpec {
    pub fn new(cidr: IpNet) -> IPPoolSpec {
        IPPoolSpec {
            cidr: cidr.trunc(),
            block_size: None,
            encapsulation: Encapsulation::None,
            nat_outgoing: false,
            node_selector: all_selector(),
            disabled: false,
            disable_bgp_export: false,
        }
    }

    pub fn family(&self) -> IpFamily {
        IpFamily::of_net(&self.cidr)
    }

    /// The block size, with Calico's per-family default.
    pub fn effective_block_size(&self) -> u8 {
        self.block_size.unwrap_or(match self.family() {
            IpFamily::V4 => DEFAULT_BLOCK_SIZE_V4,
            IpFamily::V6 => DEFAULT_BLOCK_SIZE_V6,
        })
    }
}

impl IPPool {
    pub fn new(name: impl Into<String>, cidr: IpNet) -> IPPool {
        IPPool {
            metadata: ObjectMeta::named(name),
            spec: IPPoolSpec::new(cidr),
        }
    }

    pub(crate) fn apply_defaults(&mut self) {
        self.spec.block_size = Some(self.spec.effective_block_size());
    }

    pub(crate) fn validate(&self, errs: &mut FieldErrors) {
        let s = &self.spec;
        let bs = s.effective_block_size();
        let (lo, hi) = match s.family() {
            IpFamily::V4 => (20, 32),
            IpFamily::V6 => (116, 128),
        };
        if !(lo..=hi).contains(&bs) {
            errs.add(
                "spec.blockSize",
                format!("{bs} is out of range {lo}-{hi} for an {} pool", s.family()),
            );
        } else if bs < s.cidr.prefix_len() {
            errs.add(
                "spec.blockSize",
                format!(
                    "/{bs} blocks do not fit in pool {} (blockSize must be at least the pool prefix {}); use a larger cidr or blockSize",
                    s.cidr,
                    s.cidr.prefix_len()
                ),
            );
        }
        let a = s.cidr.addr();
        let link_local = match a {
            std::net::IpAddr::V4(v4) => v4.is_link_local(),
            std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        };
        if a.is_loopback() || a.is_multicast() || link_local {
            errs.add(
                "spec.cidr",
                format!(
                    "{} is a loopback, link-local or multicast range; pods need routable addresses",
                    s.cidr
                ),
            );
        }
        check_selector(&s.node_selector, "spec.nodeSelector", errs);
    }
}
