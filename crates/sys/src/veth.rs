//! veth pairs, with the peer created directly in its target namespace (no window in which it
//! exists, possibly clashing, in the creating namespace).

use std::os::fd::AsRawFd;

use rtnetlink::{
    LinkMessageBuilder, LinkUnspec, LinkVeth,
    packet_route::link::{InfoData, InfoKind, InfoVeth},
};

use crate::{MacAddr, NetNs, Netlink, error::Result, link::validate_ifname};

/// A veth pair to create: `name` in the connection's namespace, `peer` in `peer_netns` (or
/// the same namespace). Both ends start down.
#[derive(Debug)]
pub struct Veth<'a> {
    /// This end's name.
    pub name: String,
    /// The other end's name.
    pub peer: String,
    /// Where the other end is created; `None` for this connection's namespace.
    pub peer_netns: Option<&'a NetNs>,
    /// MTU for both ends.
    pub mtu: Option<u32>,
    /// MAC address of this end.
    pub mac: Option<MacAddr>,
    /// MAC address of the other end.
    pub peer_mac: Option<MacAddr>,
}

impl<'a> Veth<'a> {
    /// A pair `name` <-> `peer`, both in the connection's namespace, default MTU and MACs.
    pub fn new(name: impl Into<String>, peer: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            peer: peer.into(),
            peer_netns: None,
            mtu: None,
            mac: None,
            peer_mac: None,
        }
    }

    /// Creates the peer directly in `netns`.
    pub fn peer_netns(mut self, netns: &'a NetNs) -> Self {
        self.peer_netns = Some(netns);
        self
    }

    /// Sets the MTU of both ends.
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }

    /// Sets this end's MAC address.
    pub fn mac(mut self, mac: MacAddr) -> Self {
        self.mac = Some(mac);
        self
    }

    /// Sets the peer's MAC address.
    pub fn peer_mac(mut self, mac: MacAddr) -> Self {
        self.peer_mac = Some(mac);
        self
    }
}

impl Netlink {
    /// Creates a veth pair (`ip link add NAME [mtu M] type veth peer name PEER [netns NS]`).
    /// [`crate::Error::is_exists`] when either name is taken.
    pub async fn veth_add(&self, veth: &Veth<'_>) -> Result<()> {
        validate_ifname(&veth.name)?;
        validate_ifname(&veth.peer)?;
        let mut peer = LinkUnspec::new_with_name(&veth.peer);
        if let Some(ns) = veth.peer_netns {
            // The fd is only read by the kernel while handling this request; `veth` borrows
            // the NetNs for the whole call, so it stays open.
            peer = peer.setns_by_fd(ns.as_raw_fd());
        }
        if let Some(mtu) = veth.mtu {
            peer = peer.mtu(mtu);
        }
        if let Some(mac) = veth.peer_mac {
            peer = peer.address(mac.0.to_vec());
        }
        let mut builder = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(veth.name.clone())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())));
        if let Some(mtu) = veth.mtu {
            builder = builder.mtu(mtu);
        }
        if let Some(mac) = veth.mac {
            builder = builder.address(mac.0.to_vec());
        }
        let object = match veth.peer_netns {
            Some(ns) => format!("{} (peer {}{})", veth.name, veth.peer, ns.label()),
            None => format!("{} (peer {})", veth.name, veth.peer),
        };
        self.handle()
            .link()
            .add(builder.build())
            .execute()
            .await
            .map_err(self.err("creating veth pair", object))?;
        tracing::debug!(name = %veth.name, peer = %veth.peer, netns = ?self.netns().name(), "created veth pair");
        Ok(())
    }
}
