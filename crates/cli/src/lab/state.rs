//! `lab.json`: what a lab is made of (nodes, their netns and underlay addresses, the
//! datastore), and the underlay address plan.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use anyhow::Context;
use clap::ValueEnum;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::layout::{self, Layout};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IpFamily {
    Ipv4,
    Ipv6,
    Dual,
}

impl IpFamily {
    pub fn v4(self) -> bool {
        matches!(self, IpFamily::Ipv4 | IpFamily::Dual)
    }
    pub fn v6(self) -> bool {
        matches!(self, IpFamily::Ipv6 | IpFamily::Dual)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Encapsulation {
    None,
    Vxlan,
    VxlanCrossSubnet,
}

impl Encapsulation {
    /// The IPPool `spec.encapsulation` value.
    pub fn pool_value(self) -> &'static str {
        match self {
            Encapsulation::None => "None",
            Encapsulation::Vxlan => "VXLAN",
            Encapsulation::VxlanCrossSubnet => "VXLANCrossSubnet",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Dataplane {
    Iptables,
    Bpf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DatastoreKind {
    Sqlite,
    Etcd,
}

/// Who routes between nodes: the agents' static routes, or BGP (BIRD on every node, and a
/// home router peered with every node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Routing {
    #[default]
    Static,
    Bgp,
}

/// The home router's BGP implementation (`--router`), different from the nodes' BIRD by
/// default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RouterImpl {
    #[default]
    Frr,
    Bird,
}

impl RouterImpl {
    pub fn kind(self) -> serval_bgp::RouterKind {
        match self {
            RouterImpl::Frr => serval_bgp::RouterKind::Frr,
            RouterImpl::Bird => serval_bgp::RouterKind::Bird,
        }
    }
}

/// The home router's AS (eBGP to the cluster's [`CLUSTER_AS`]).
pub const ROUTER_AS: u32 = 64513;
/// The cluster's AS (BGPConfiguration `default`, Calico's default).
pub const CLUSTER_AS: u32 = 64512;

macro_rules! display_via_value_enum {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let v = self.to_possible_value().expect("no skipped variants");
                f.write_str(v.get_name())
            }
        }
    )*};
}
display_via_value_enum!(
    IpFamily,
    Encapsulation,
    Dataplane,
    DatastoreKind,
    Routing,
    RouterImpl
);

/// A netns on the underlay: its name, the root-side veth, and `eth0`'s addresses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Host {
    pub netns: String,
    pub host_veth: String,
    /// `eth0`'s addresses with the underlay prefix length.
    pub addrs: Vec<IpNet>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    #[serde(flatten)]
    pub host: Host,
    /// Which underlay subnet (0 or 1; 1 only with vxlan-cross-subnet).
    pub subnet: u8,
    /// The datastore URL as seen from inside this node's netns.
    pub datastore_url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EtcdInfo {
    pub pid: u32,
    pub client_port: u16,
    pub peer_port: u16,
}

/// Everything `lab.json` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    /// The `<n>` of the underlay subnets 172.31.<n>.0/24 and fd00:5e:<n>::/64.
    pub index: u16,
    pub ip_family: IpFamily,
    pub encapsulation: Encapsulation,
    pub dataplane: Dataplane,
    pub datastore: DatastoreKind,
    /// The datastore URL as seen from the root netns (also in the `datastore` file).
    pub datastore_url: String,
    pub bridge: String,
    /// The root netns' addresses on the bridge.
    pub bridge_addrs: Vec<IpNet>,
    pub nodes: Vec<NodeInfo>,
    pub outside: Option<Host>,
    /// The router host: between the two subnets (vxlan-cross-subnet) and/or the BGP home
    /// router (`--routing bgp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<Host>,
    #[serde(default)]
    pub routing: Routing,
    /// With `routing: bgp`: what runs on the router host (files under `<lab>/router/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp_router: Option<RouterImpl>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdInfo>,
    /// RFC 3339.
    pub created: String,
}

impl LabState {
    pub fn load(layout: &Layout) -> anyhow::Result<LabState> {
        let path = layout.lab_json();
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "lab {:?} not found ({} missing); `serval lab status` lists labs",
                layout.name,
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))
    }

    pub fn save(&self, layout: &Layout) -> anyhow::Result<()> {
        let path = layout.lab_json();
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).context("encoding lab.json")?;
        std::fs::write(&tmp, text + "\n").with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// Reads a decimal number's digits as hex, so `::11` reads like `.11`.
fn hexlike(n: u32) -> u128 {
    u128::from_str_radix(&n.to_string(), 16).expect("decimal digits are hex digits")
}

/// The underlay address plan of lab index `n`.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub index: u16,
    pub family: IpFamily,
    /// Two subnets (vxlan-cross-subnet) or one.
    pub two_subnets: bool,
}

/// Host ids within a subnet.
pub const HOST_ID_BRIDGE: u32 = 1;
pub const HOST_ID_OUTSIDE: u32 = 100;
pub const HOST_ID_ROUTER: u32 = 126;
pub const HOST_ID_NODE_BASE: u32 = 10;
/// Node ids run from 11 up to below the outside host's 100.
pub const MAX_NODES: u32 = 60;

impl Plan {
    pub fn subnet_count(&self) -> u8 {
        if self.two_subnets { 2 } else { 1 }
    }

    /// Which subnet node `k` (1-based) sits in: alternating with two subnets.
    pub fn node_subnet(&self, k: u32) -> u8 {
        if self.two_subnets && k.is_multiple_of(2) {
            1
        } else {
            0
        }
    }

    /// The underlay subnets of subnet `s`, one per family of the lab.
    pub fn subnets(&self, s: u8) -> Vec<IpNet> {
        let mut out = Vec::new();
        if self.family.v4() {
            let n = u8::try_from(self.index).expect("index <= 250");
            if self.two_subnets {
                let base = if s == 0 { 0 } else { 128 };
                out.push(
                    IpNet::new(IpAddr::V4(Ipv4Addr::new(172, 31, n, base)), 25).expect("valid"),
                );
            } else {
                out.push(IpNet::new(IpAddr::V4(Ipv4Addr::new(172, 31, n, 0)), 24).expect("valid"));
            }
        }
        if self.family.v6() {
            let seg = u16::try_from(hexlike(u32::from(self.index))).expect("index <= 250 fits");
            let ip = Ipv6Addr::new(0xfd00, 0x5e, seg, u16::from(s), 0, 0, 0, 0);
            out.push(IpNet::new(IpAddr::V6(ip), 64).expect("valid"));
        }
        out
    }

    /// Host `id` of subnet `s`, one address per family, with the subnet's prefix length.
    pub fn addrs(&self, s: u8, id: u32) -> Vec<IpNet> {
        self.subnets(s)
            .into_iter()
            .map(|net| {
                let ip = match net.network() {
                    IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) + id)),
                    IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) + hexlike(id))),
                };
                IpNet::new(ip, net.prefix_len()).expect("same prefix")
            })
            .collect()
    }
}

/// Picks the lowest free lab index (1..=250) not used by another lab's `lab.json`.
pub fn free_index(except: &str) -> anyhow::Result<u16> {
    let mut used = std::collections::BTreeSet::new();
    for other in layout::list_labs() {
        if other == except {
            continue;
        }
        if let Ok(st) = LabState::load(&Layout::new(&other)) {
            used.insert(st.index);
        } else if let Ok(text) =
            std::fs::read_to_string(Path::new(layout::LABS_DIR).join(&other).join("index"))
        {
            // A lab still coming up records its index before lab.json.
            if let Ok(i) = text.trim().parse::<u16>() {
                used.insert(i);
            }
        }
    }
    (1..=250u16).find(|i| !used.contains(i)).ok_or_else(|| {
        anyhow::anyhow!(
            "all 250 lab subnets are in use; remove a lab with `serval lab down --name NAME`"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_addresses() {
        let p = Plan {
            index: 7,
            family: IpFamily::Dual,
            two_subnets: false,
        };
        let a: Vec<String> = p
            .addrs(0, HOST_ID_NODE_BASE + 1)
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(a, ["172.31.7.11/24", "fd00:5e:7::11/64"]);
        let p = Plan {
            index: 12,
            family: IpFamily::Dual,
            two_subnets: true,
        };
        let b: Vec<String> = p
            .addrs(1, HOST_ID_NODE_BASE + 2)
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(b, ["172.31.12.140/25", "fd00:5e:12:1::12/64"]);
        assert_eq!(p.node_subnet(1), 0);
        assert_eq!(p.node_subnet(2), 1);
        assert_eq!(
            p.addrs(1, HOST_ID_ROUTER)[0].to_string(),
            "172.31.12.254/25"
        );
    }

    #[test]
    fn enums_print_like_the_command_line() {
        assert_eq!(
            Encapsulation::VxlanCrossSubnet.to_string(),
            "vxlan-cross-subnet"
        );
        assert_eq!(IpFamily::Dual.to_string(), "dual");
        assert_eq!(
            serde_json::to_string(&Encapsulation::VxlanCrossSubnet).unwrap(),
            "\"vxlan-cross-subnet\""
        );
    }
}
