//! Desired routing state for one node, computed purely from the cluster's nodes, IP pools and
//! block affinities: routes to every other node's blocks, blackhole routes for this node's own
//! blocks, and the VXLAN devices, neighbour and FDB entries the VXLAN routes need.
//!
//! No kernel access here: [`compute`] is a function of its [`Inputs`], unit-tested without
//! privileges. The routing programmer ([`crate::routing`]) diffs the result against the kernel.
//!
//! The scheme (as in the brief; no extra Node fields needed):
//! - encapsulation `None`: `<block> via <remote underlay IP>` on the underlay link;
//! - `VXLAN`: `<block> via <remote underlay IP> dev vxlan.serval onlink`, with a permanent
//!   neighbour `<remote underlay IP> lladdr <remote VTEP MAC>` and an FDB entry
//!   `<remote VTEP MAC> dst <remote underlay IP>` on the device; the VTEP MAC of every node is
//!   derived from its name ([`vtep_mac`]), so no node has to publish it;
//! - `VXLANCrossSubnet`: VXLAN towards nodes outside this node's underlay subnet, `None`
//!   semantics towards nodes inside it;
//! - over an IPv6 underlay the VXLAN next hop is the remote VTEP's link-local address instead
//!   of its underlay address ([`vxlan_next_hop`]: the kernel refuses IPv6 `onlink` gateways
//!   inside a subnet connected on another device);
//! - one VXLAN device per underlay family: [`VXLAN_V4_DEVICE`] over IPv4, [`VXLAN_V6_DEVICE`]
//!   over IPv6. A pool's blocks travel over the underlay of the pool's own family.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// The VXLAN device over an IPv4 underlay (Calico's `vxlan.calico`).
pub const VXLAN_V4_DEVICE: &str = "vxlan.serval";
/// The VXLAN device over an IPv6 underlay (Calico's `vxlan-v6.calico`).
pub const VXLAN_V6_DEVICE: &str = "vxlan-v6.serval";
/// The VXLAN network identifier (Calico's default).
pub const VXLAN_VNI: u32 = 4096;
/// The VXLAN UDP port (IANA).
pub const VXLAN_PORT: u16 = 4789;
/// Bytes VXLAN adds to a packet over an IPv4 underlay (outer IPv4 20 + UDP 8 + VXLAN 8 +
/// inner Ethernet 14).
pub const VXLAN_V4_OVERHEAD: u32 = 50;
/// Bytes VXLAN adds over an IPv6 underlay (outer IPv6 40 + 30).
pub const VXLAN_V6_OVERHEAD: u32 = 70;
/// The MTU assumed for the underlay when the link's own is unknown.
pub const DEFAULT_UNDERLAY_MTU: u32 = 1500;

/// An IP family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of_net(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }

    pub fn of_addr(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The VXLAN device carrying this family's pools.
    pub fn vxlan_device(self) -> &'static str {
        match self {
            Family::V4 => VXLAN_V4_DEVICE,
            Family::V6 => VXLAN_V6_DEVICE,
        }
    }

    /// VXLAN's per-packet overhead over an underlay of this family.
    pub fn vxlan_overhead(self) -> u32 {
        match self {
            Family::V4 => VXLAN_V4_OVERHEAD,
            Family::V6 => VXLAN_V6_OVERHEAD,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// An IPPool's `encapsulation` (Calico's `vxlanMode`/`ipipMode` folded into one field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Encapsulation {
    #[default]
    None,
    Vxlan,
    VxlanCrossSubnet,
}

/// A node as routing sees it: its name and underlay addresses (with the underlay prefix
/// length, as in `spec.bgp.ipv4Address: 172.31.7.11/24`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub ipv4: Option<IpNet>,
    pub ipv6: Option<IpNet>,
}

impl NodeInfo {
    /// The underlay address (with prefix) of `family`.
    pub fn underlay(&self, family: Family) -> Option<IpNet> {
        match family {
            Family::V4 => self.ipv4,
            Family::V6 => self.ipv6,
        }
    }
}

/// An IP pool as routing sees it. Disabled pools are still routed: their existing blocks
/// keep their pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolInfo {
    pub name: String,
    pub cidr: IpNet,
    pub encapsulation: Encapsulation,
}

/// One block affinity: `node` owns `block`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BlockInfo {
    pub node: String,
    pub block: IpNet,
}

/// Everything [`compute`] reads.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// This node's name.
    pub node: String,
    /// Every node by name (this one included).
    pub nodes: BTreeMap<String, NodeInfo>,
    pub pools: Vec<PoolInfo>,
    pub blocks: Vec<BlockInfo>,
    /// MTU of this node's underlay link (per family; both are normally the same link).
    pub underlay_mtu: u32,
}

impl Inputs {
    /// The inputs for `node` from the cached resources and affinities.
    pub fn from_state(state: &crate::cache::State, node: &str, underlay_mtu: u32) -> Inputs {
        use serval_model::Resource;
        use serval_model::calico::Encapsulation as ModelEncap;
        let mut inputs = Inputs {
            node: node.to_string(),
            underlay_mtu,
            ..Default::default()
        };
        for r in state.resources.values() {
            match r {
                Resource::Node(n) => {
                    let bgp = n.spec.bgp.as_ref();
                    inputs.nodes.insert(
                        n.metadata.name.clone(),
                        NodeInfo {
                            name: n.metadata.name.clone(),
                            ipv4: bgp.and_then(|b| b.ipv4_address),
                            ipv6: bgp.and_then(|b| b.ipv6_address),
                        },
                    );
                }
                Resource::IPPool(p) => inputs.pools.push(PoolInfo {
                    name: p.metadata.name.clone(),
                    cidr: p.spec.cidr,
                    encapsulation: match p.spec.encapsulation {
                        ModelEncap::None => Encapsulation::None,
                        ModelEncap::Vxlan => Encapsulation::Vxlan,
                        ModelEncap::VxlanCrossSubnet => Encapsulation::VxlanCrossSubnet,
                    },
                }),
                _ => {}
            }
        }
        inputs.blocks = state
            .affinities
            .values()
            .map(|a| BlockInfo {
                node: a.node.clone(),
                block: a.block,
            })
            .collect();
        inputs
    }
}

/// Which device a unicast route leaves by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteDev {
    /// The link that holds this node's underlay address of the route's family (resolved by
    /// the programmer).
    Underlay,
    /// A VXLAN device by name.
    Vxlan(&'static str),
}

impl fmt::Display for RouteDev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteDev::Underlay => f.write_str("underlay"),
            RouteDev::Vxlan(name) => f.write_str(name),
        }
    }
}

/// Where a desired route sends packets.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteTarget {
    /// Drop: a block of this node (more specific per-pod routes made by the CNI win).
    Blackhole,
    /// Forward via `gateway` out of `dev`, `onlink` for VXLAN.
    Via {
        gateway: IpAddr,
        dev: RouteDev,
        onlink: bool,
    },
}

/// One desired route (always Serval's route protocol, main table).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DesiredRoute {
    pub dst: IpNet,
    pub target: RouteTarget,
    /// The node owning the block (for logs).
    pub node: String,
}

/// A VXLAN device this node needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanDevice {
    pub name: &'static str,
    pub family: Family,
    pub vni: u32,
    pub port: u16,
    /// This node's underlay address (the VTEP's source).
    pub local: IpAddr,
    /// This node's VTEP MAC ([`vtep_mac`]).
    pub mac: [u8; 6],
    pub mtu: u32,
}

/// A permanent neighbour entry on a VXLAN device: the remote VTEP's underlay IP resolves to
/// its VTEP MAC.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Neighbour {
    pub dev: &'static str,
    pub ip: IpAddr,
    pub mac: [u8; 6],
    pub node: String,
}

/// A permanent FDB entry on a VXLAN device: frames for `mac` go to underlay `dst`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FdbEntry {
    pub dev: &'static str,
    pub mac: [u8; 6],
    pub dst: IpAddr,
    pub node: String,
}

/// Something the calculation could not route, reported in the logs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Skipped {
    /// A remote block whose node has no underlay address of the block's family.
    NoUnderlayAddress {
        node: String,
        block: IpNet,
        family: Family,
    },
    /// A remote block that lies in no pool (the pool was deleted).
    NoPool { node: String, block: IpNet },
    /// A block affine to a node that does not exist (a leftover affinity).
    UnknownNode { node: String, block: IpNet },
    /// A VXLAN pool of a family this node has no underlay address of.
    NoLocalUnderlay { pool: String, family: Family },
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skipped::NoUnderlayAddress {
                node,
                block,
                family,
            } => write!(
                f,
                "block {block} of node {node}: the node has no {family} underlay address \
                 (spec.bgp.ipv{}Address); set it to route the block",
                if *family == Family::V4 { 4 } else { 6 }
            ),
            Skipped::NoPool { node, block } => {
                write!(
                    f,
                    "block {block} of node {node} lies in no IP pool; not routed"
                )
            }
            Skipped::UnknownNode { node, block } => {
                write!(
                    f,
                    "block {block} is affine to node {node}, which does not exist; not routed"
                )
            }
            Skipped::NoLocalUnderlay { pool, family } => write!(
                f,
                "pool {pool} uses VXLAN but this node has no {family} underlay address; \
                 no VXLAN device for it"
            ),
        }
    }
}

/// The desired routing state of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// By destination (one route per block).
    pub routes: BTreeMap<IpNet, DesiredRoute>,
    /// By device name.
    pub vxlan_devices: BTreeMap<&'static str, VxlanDevice>,
    pub neighbours: BTreeSet<Neighbour>,
    pub fdb: BTreeSet<FdbEntry>,
    /// The MTU pods of this node should use: the underlay MTU less the largest VXLAN overhead
    /// in use (the same rule as the CNI's own computation).
    pub pod_mtu: u32,
    pub skipped: Vec<Skipped>,
}

/// This node's VTEP MAC on the device of `family`: locally administered unicast
/// (`0e:…`), from an FNV-1a hash of the node name, so every node computes every other's.
pub fn vtep_mac(node: &str, family: Family) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let tag: &[u8] = match family {
        Family::V4 => b"v4/",
        Family::V6 => b"v6/",
    };
    for b in tag.iter().chain(node.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    [0x0e, b[3], b[4], b[5], b[6], b[7]]
}

/// The IPv6 link-local address (`fe80::/64` + modified EUI-64) of a MAC: the address the
/// kernel gives a device with that MAC.
pub fn link_local_of_mac(mac: &[u8; 6]) -> std::net::Ipv6Addr {
    let [a, b, c, d, e, f] = *mac;
    std::net::Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        a ^ 0x02,
        b,
        c,
        0xff,
        0xfe,
        d,
        e,
        f,
    ])
}

/// The next hop of a VXLAN route towards `node`, whose underlay address is `underlay`, and
/// whether it needs `onlink`.
///
/// Over IPv4 it is the remote underlay address itself, `onlink` (the brief's scheme). Over
/// IPv6 the kernel refuses an `onlink` gateway that a connected route places on another
/// device (the underlay subnet is connected on eth0), so the next hop is the remote VTEP's
/// link-local address (from its MAC, [`link_local_of_mac`]), which needs no `onlink`; the
/// neighbour entry maps that address to the VTEP MAC and the FDB entry the MAC to the
/// underlay address, as over IPv4.
pub fn vxlan_next_hop(node: &str, family: Family, underlay: IpAddr) -> (IpAddr, bool) {
    match family {
        Family::V4 => (underlay, true),
        Family::V6 => (
            IpAddr::V6(link_local_of_mac(&vtep_mac(node, Family::V6))),
            false,
        ),
    }
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, g] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
}

/// The pool holding `block` (the most specific one if pools nest).
fn pool_of<'a>(pools: &'a [PoolInfo], block: &IpNet) -> Option<&'a PoolInfo> {
    pools
        .iter()
        .filter(|p| p.cidr.trunc().contains(block))
        .max_by_key(|p| p.cidr.prefix_len())
}

/// Computes the desired routing state of `inputs.node`.
pub fn compute(inputs: &Inputs) -> Desired {
    let mut out = Desired::default();
    let underlay_mtu = if inputs.underlay_mtu == 0 {
        DEFAULT_UNDERLAY_MTU
    } else {
        inputs.underlay_mtu
    };
    let local = inputs.nodes.get(&inputs.node);

    // VXLAN devices: one per family that has a VXLAN pool and a local underlay address.
    let mut vxlan_families = BTreeSet::new();
    for pool in &inputs.pools {
        if pool.encapsulation == Encapsulation::None {
            continue;
        }
        let family = Family::of_net(&pool.cidr);
        match local.and_then(|n| n.underlay(family)) {
            Some(addr) => {
                if vxlan_families.insert(family) {
                    let name = family.vxlan_device();
                    out.vxlan_devices.insert(
                        name,
                        VxlanDevice {
                            name,
                            family,
                            vni: VXLAN_VNI,
                            port: VXLAN_PORT,
                            local: addr.addr(),
                            mac: vtep_mac(&inputs.node, family),
                            mtu: underlay_mtu.saturating_sub(family.vxlan_overhead()),
                        },
                    );
                }
            }
            None => out.skipped.push(Skipped::NoLocalUnderlay {
                pool: pool.name.clone(),
                family,
            }),
        }
    }
    out.pod_mtu = vxlan_families
        .iter()
        .map(|f| underlay_mtu.saturating_sub(f.vxlan_overhead()))
        .min()
        .unwrap_or(underlay_mtu);

    // Neighbour and FDB entries towards every remote VTEP of each device's family.
    for family in &vxlan_families {
        let dev = family.vxlan_device();
        for node in inputs.nodes.values().filter(|n| n.name != inputs.node) {
            if let Some(addr) = node.underlay(*family) {
                let mac = vtep_mac(&node.name, *family);
                out.neighbours.insert(Neighbour {
                    dev,
                    ip: vxlan_next_hop(&node.name, *family, addr.addr()).0,
                    mac,
                    node: node.name.clone(),
                });
                out.fdb.insert(FdbEntry {
                    dev,
                    mac,
                    dst: addr.addr(),
                    node: node.name.clone(),
                });
            }
        }
    }

    let mut blocks = inputs.blocks.clone();
    blocks.sort();
    blocks.dedup();
    for BlockInfo { node, block } in blocks {
        let block = block.trunc();
        if node == inputs.node {
            out.routes.insert(
                block,
                DesiredRoute {
                    dst: block,
                    target: RouteTarget::Blackhole,
                    node: node.clone(),
                },
            );
            continue;
        }
        let Some(remote) = inputs.nodes.get(&node) else {
            out.skipped.push(Skipped::UnknownNode { node, block });
            continue;
        };
        let Some(pool) = pool_of(&inputs.pools, &block) else {
            out.skipped.push(Skipped::NoPool { node, block });
            continue;
        };
        let family = Family::of_net(&block);
        let Some(remote_addr) = remote.underlay(family) else {
            out.skipped.push(Skipped::NoUnderlayAddress {
                node,
                block,
                family,
            });
            continue;
        };
        let gateway = remote_addr.addr();
        let vxlan = match pool.encapsulation {
            Encapsulation::None => false,
            Encapsulation::Vxlan => true,
            Encapsulation::VxlanCrossSubnet => {
                // Same subnet: this node's underlay network holds the remote address.
                !local
                    .and_then(|l| l.underlay(family))
                    .is_some_and(|l| l.trunc().contains(&gateway))
            }
        };
        let target = if vxlan && vxlan_families.contains(&family) {
            let (gateway, onlink) = vxlan_next_hop(&node, family, gateway);
            RouteTarget::Via {
                gateway,
                dev: RouteDev::Vxlan(family.vxlan_device()),
                onlink,
            }
        } else if vxlan {
            // No local VTEP of this family (reported above); nothing can carry the block.
            continue;
        } else {
            RouteTarget::Via {
                gateway,
                dev: RouteDev::Underlay,
                onlink: false,
            }
        };
        out.routes.insert(
            block,
            DesiredRoute {
                dst: block,
                target,
                node,
            },
        );
    }
    out
}

#[cfg(test)]
mod tests;
