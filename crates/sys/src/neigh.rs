//! Neighbour (ARP/NDP) entries and bridge forwarding-database (FDB) entries, the two halves of
//! how a VXLAN device learns where a remote endpoint is without flooding:
//! - a permanent neighbour maps the remote tunnel IP to the remote VTEP's MAC
//!   (`ip neigh replace IP lladdr MAC dev vxlan.serval nud permanent`);
//! - an FDB entry maps that MAC to the remote node's underlay address
//!   (`bridge fdb replace MAC dst REMOTE dev vxlan.serval self permanent`), or the all-zero MAC
//!   to a flood destination (`bridge fdb append 00:00:00:00:00:00 dst REMOTE dev ...`).

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::{
    packet_core::{NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE},
    packet_route::{
        AddressFamily, RouteNetlinkMessage,
        neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
        },
        route::RouteType,
    },
};

use crate::{MacAddr, Netlink, error::Result};

/// A neighbour (ARP / NDP) entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    /// Interface index.
    pub index: u32,
    /// The neighbour's IP address.
    pub ip: IpAddr,
    /// Its MAC address, when resolved.
    pub mac: Option<MacAddr>,
    /// Permanent (`nud permanent`), i.e. installed by someone rather than learned.
    pub permanent: bool,
}

/// A bridge / VXLAN forwarding-database entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdbEntry {
    /// Interface index (the VXLAN device or bridge port).
    pub index: u32,
    /// Destination MAC ([`MacAddr::ZERO`] for the default/flood entry).
    pub mac: MacAddr,
    /// Remote VTEP underlay address, for VXLAN entries.
    pub dst: Option<IpAddr>,
}

fn neighbour_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }
}

fn ip_of(addr: &NeighbourAddress) -> Option<IpAddr> {
    match addr {
        NeighbourAddress::Inet(a) => Some(IpAddr::V4(*a)),
        NeighbourAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        // In AF_BRIDGE (FDB) messages the VTEP address arrives unparsed; its length says
        // which family it is.
        NeighbourAddress::Other(bytes) => match bytes.len() {
            4 => <[u8; 4]>::try_from(bytes.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(bytes.as_slice())
                .ok()
                .map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

fn neighbour_message(index: u32, ip: IpAddr, mac: Option<MacAddr>) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.kind = RouteType::Unicast;
    msg.attributes
        .push(NeighbourAttribute::Destination(neighbour_address(ip)));
    if let Some(mac) = mac {
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    }
    msg
}

fn fdb_message(index: u32, mac: MacAddr, dst: Option<IpAddr>) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    // NTF_SELF: the entry belongs to the device itself (the VXLAN FDB), not its bridge master.
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    if let Some(dst) = dst {
        msg.attributes
            .push(NeighbourAttribute::Destination(neighbour_address(dst)));
    }
    msg
}

fn fdb_object(mac: MacAddr, dst: Option<IpAddr>, link: &str) -> String {
    match dst {
        Some(dst) => format!("{mac} dst {dst} dev {link}"),
        None => format!("{mac} dev {link}"),
    }
}

impl Netlink {
    /// Adds a permanent neighbour entry. [`crate::Error::is_exists`] when one is there.
    pub async fn neigh_add(&self, link: &str, ip: IpAddr, mac: MacAddr) -> Result<()> {
        let index = self.link_index(link).await?;
        self.request_ack(
            RouteNetlinkMessage::NewNeighbour(neighbour_message(index, ip, Some(mac))),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .await
        .map_err(self.err("adding neighbour", format!("{ip} lladdr {mac} dev {link}")))
    }

    /// Adds or overwrites a permanent neighbour entry (`ip neigh replace ... nud permanent`).
    pub async fn neigh_replace(&self, link: &str, ip: IpAddr, mac: MacAddr) -> Result<()> {
        let index = self.link_index(link).await?;
        self.request_ack(
            RouteNetlinkMessage::NewNeighbour(neighbour_message(index, ip, Some(mac))),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
        .map_err(self.err(
            "replacing neighbour",
            format!("{ip} lladdr {mac} dev {link}"),
        ))
    }

    /// Deletes a neighbour entry. [`crate::Error::is_not_found`] when there is none.
    pub async fn neigh_del(&self, link: &str, ip: IpAddr) -> Result<()> {
        let index = self.link_index(link).await?;
        self.request_ack(
            RouteNetlinkMessage::DelNeighbour(neighbour_message(index, ip, None)),
            0,
        )
        .await
        .map_err(self.err("deleting neighbour", format!("{ip} dev {link}")))
    }

    /// Adds a proxy neighbour entry (`ip -6 neigh add proxy IP dev LINK`): with `proxy_ndp`
    /// (and forwarding) on, the link answers neighbour solicitations for `ip`, e.g. a pod's
    /// `fe80::1` gateway on the host-side veth. Also works for IPv4 (`ip neigh add proxy`).
    /// Idempotent: the kernel accepts re-adding an existing proxy entry.
    pub async fn neigh_proxy_add(&self, link: &str, ip: IpAddr) -> Result<()> {
        let index = self.link_index(link).await?;
        let mut msg = neighbour_message(index, ip, None);
        msg.header.flags = NeighbourFlags::Proxy;
        self.request_ack(RouteNetlinkMessage::NewNeighbour(msg), NLM_F_CREATE)
            .await
            .map_err(self.err("adding proxy neighbour", format!("{ip} dev {link}")))
    }

    /// Deletes a proxy neighbour entry. [`crate::Error::is_not_found`] when there is none.
    pub async fn neigh_proxy_del(&self, link: &str, ip: IpAddr) -> Result<()> {
        let index = self.link_index(link).await?;
        let mut msg = neighbour_message(index, ip, None);
        msg.header.flags = NeighbourFlags::Proxy;
        self.request_ack(RouteNetlinkMessage::DelNeighbour(msg), 0)
            .await
            .map_err(self.err("deleting proxy neighbour", format!("{ip} dev {link}")))
    }

    /// The proxy neighbour entries (IPv4 and IPv6) as (interface index, address).
    pub async fn neigh_proxies(&self) -> Result<Vec<(u32, IpAddr)>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let msgs: Vec<NeighbourMessage> = self
                .handle()
                .neighbours()
                .get()
                .set_address_family(family)
                .proxies()
                .execute()
                .try_collect()
                .await
                .map_err(self.err("listing proxy neighbours", "(all)"))?;
            for msg in msgs {
                let ip = msg.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::Destination(addr) => ip_of(addr),
                    _ => None,
                });
                if let Some(ip) = ip {
                    out.push((msg.header.ifindex, ip));
                }
            }
        }
        Ok(out)
    }

    /// IPv4 and IPv6 neighbour entries, of one link when `link` is given.
    pub async fn neighbours(&self, link: Option<&str>) -> Result<Vec<Neighbour>> {
        let index = match link {
            Some(link) => Some(self.link_index(link).await?),
            None => None,
        };
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let msgs: Vec<NeighbourMessage> = self
                .handle()
                .neighbours()
                .get()
                .set_address_family(family)
                .execute()
                .try_collect()
                .await
                .map_err(self.err("listing neighbours of", link.unwrap_or("all links")))?;
            for msg in msgs {
                if index.is_some_and(|i| i != msg.header.ifindex) {
                    continue;
                }
                let mut ip = None;
                let mut mac = None;
                for attr in &msg.attributes {
                    match attr {
                        NeighbourAttribute::Destination(addr) => ip = ip_of(addr),
                        NeighbourAttribute::LinkLayerAddress(bytes) => {
                            mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr)
                        }
                        _ => {}
                    }
                }
                if let Some(ip) = ip {
                    out.push(Neighbour {
                        index: msg.header.ifindex,
                        ip,
                        mac,
                        permanent: msg.header.state == NeighbourState::Permanent,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Appends an FDB entry (`bridge fdb append MAC dst DST dev LINK self permanent`): several
    /// entries may share a MAC (the all-zero MAC with one `dst` per remote VTEP floods BUM
    /// traffic to each). [`crate::Error::is_exists`] when this exact entry is there.
    pub async fn fdb_append(&self, link: &str, mac: MacAddr, dst: IpAddr) -> Result<()> {
        let index = self.link_index(link).await?;
        self.request_ack(
            RouteNetlinkMessage::NewNeighbour(fdb_message(index, mac, Some(dst))),
            NLM_F_CREATE | NLM_F_APPEND,
        )
        .await
        .map_err(self.err("appending FDB entry", fdb_object(mac, Some(dst), link)))
    }

    /// Adds or overwrites the FDB entry for `mac` (`bridge fdb replace MAC dst DST dev LINK
    /// self permanent`): the per-remote-VTEP entry Serval's VXLAN routing uses.
    pub async fn fdb_replace(&self, link: &str, mac: MacAddr, dst: Option<IpAddr>) -> Result<()> {
        let index = self.link_index(link).await?;
        self.request_ack(
            RouteNetlinkMessage::NewNeighbour(fdb_message(index, mac, dst)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
        .map_err(self.err("replacing FDB entry", fdb_object(mac, dst, link)))
    }

    /// Deletes an FDB entry; give `dst` to remove one of several appended entries for the
    /// same MAC. [`crate::Error::is_not_found`] when there is none.
    pub async fn fdb_del(&self, link: &str, mac: MacAddr, dst: Option<IpAddr>) -> Result<()> {
        let index = self.link_index(link).await?;
        self.request_ack(
            RouteNetlinkMessage::DelNeighbour(fdb_message(index, mac, dst)),
            0,
        )
        .await
        .map_err(self.err("deleting FDB entry", fdb_object(mac, dst, link)))
    }

    /// The FDB entries of one link (`bridge fdb show dev LINK`).
    pub async fn fdb_entries(&self, link: &str) -> Result<Vec<FdbEntry>> {
        let index = self.link_index(link).await?;
        let msgs: Vec<NeighbourMessage> = self
            .handle()
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute()
            .try_collect()
            .await
            .map_err(self.err("listing FDB entries of", link))?;
        let mut out = Vec::new();
        for msg in msgs.iter().filter(|m| m.header.ifindex == index) {
            let mut mac = None;
            let mut dst = None;
            for attr in &msg.attributes {
                match attr {
                    NeighbourAttribute::LinkLayerAddress(bytes) => {
                        mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr)
                    }
                    NeighbourAttribute::Destination(addr) => dst = ip_of(addr),
                    _ => {}
                }
            }
            if let Some(mac) = mac {
                out.push(FdbEntry { index, mac, dst });
            }
        }
        Ok(out)
    }
}
