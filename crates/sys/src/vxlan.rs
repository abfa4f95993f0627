//! VXLAN devices (`ip link add vxlan.serval type vxlan id 4096 dstport 4789 local IP dev
//! eth0 nolearning`), as the agent uses them for encapsulated pod traffic between nodes.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::{
    LinkVxlan,
    packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo},
};

use crate::{
    MacAddr, Netlink,
    error::{Error, Result},
    link::validate_ifname,
};

/// The IANA VXLAN UDP port.
pub const VXLAN_PORT: u16 = 4789;

/// A VXLAN device to create. The device starts down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vxlan {
    /// Device name, e.g. `vxlan.serval`.
    pub name: String,
    /// VXLAN network identifier.
    pub vni: u32,
    /// UDP destination port ([`VXLAN_PORT`] by default).
    pub port: u16,
    /// Source address of encapsulated packets (the node's underlay address).
    pub local: Option<IpAddr>,
    /// Underlay device name the tunnel is bound to.
    pub underlay: Option<String>,
    /// Learn remote MACs from received packets (off by default: the agent programs the FDB).
    pub learning: bool,
    /// MTU (underlay MTU minus 50 for IPv4, 70 for IPv6). When bound to an underlay device
    /// the kernel silently caps a larger value at that limit (seen on 6.18: asking 1450 over
    /// an IPv6 underlay with MTU 1500 gives 1430), so read it back with
    /// [`Netlink::vxlan_info`] if it matters.
    pub mtu: Option<u32>,
    /// MAC address (a stable one lets remote nodes' FDB entries survive re-creation).
    pub mac: Option<MacAddr>,
}

impl Vxlan {
    /// A device `name` with `vni`, port 4789, learning off, nothing else set.
    pub fn new(name: impl Into<String>, vni: u32) -> Self {
        Self {
            name: name.into(),
            vni,
            port: VXLAN_PORT,
            local: None,
            underlay: None,
            learning: false,
            mtu: None,
            mac: None,
        }
    }

    /// Sets the local (source) underlay address.
    pub fn local(mut self, local: IpAddr) -> Self {
        self.local = Some(local);
        self
    }

    /// Binds to an underlay device.
    pub fn underlay(mut self, dev: impl Into<String>) -> Self {
        self.underlay = Some(dev.into());
        self
    }

    /// Sets the MTU.
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }

    /// Sets the MAC address.
    pub fn mac(mut self, mac: MacAddr) -> Self {
        self.mac = Some(mac);
        self
    }

    /// Sets the UDP port.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Turns MAC learning on or off.
    pub fn learning(mut self, learning: bool) -> Self {
        self.learning = learning;
        self
    }
}

impl Netlink {
    /// Creates a VXLAN device and returns its interface index. [`crate::Error::is_exists`]
    /// when the name is taken.
    pub async fn vxlan_add(&self, vxlan: &Vxlan) -> Result<u32> {
        validate_ifname(&vxlan.name)?;
        let mut builder = LinkVxlan::new(&vxlan.name, vxlan.vni)
            .port(vxlan.port)
            .learning(vxlan.learning);
        builder = match vxlan.local {
            Some(IpAddr::V4(local)) => builder.local(local),
            Some(IpAddr::V6(local)) => builder.local6(local),
            None => builder,
        };
        if let Some(underlay) = &vxlan.underlay {
            builder = builder.dev(self.link_index(underlay).await?);
        }
        if let Some(mtu) = vxlan.mtu {
            builder = builder.mtu(mtu);
        }
        if let Some(mac) = vxlan.mac {
            builder = builder.address(mac.0.to_vec());
        }
        let object = format!("{} (vni {}, port {})", vxlan.name, vxlan.vni, vxlan.port);
        self.handle()
            .link()
            .add(builder.build())
            .execute()
            .await
            .map_err(self.err("creating VXLAN device", object))?;
        tracing::debug!(name = %vxlan.name, vni = vxlan.vni, netns = ?self.netns().name(), "created VXLAN device");
        self.link_index(&vxlan.name).await
    }

    /// The configuration of an existing VXLAN device, to compare with the desired one (a
    /// mismatch in VNI, port or local address means delete and re-create). `underlay` is
    /// reported by name when the device is bound to one in this namespace.
    /// [`Error::is_not_found`] when there is no such link; [`Error::Invalid`] when it is
    /// not a VXLAN device.
    pub async fn vxlan_info(&self, name: &str) -> Result<Vxlan> {
        validate_ifname(name)?;
        let msg = self
            .handle()
            .link()
            .get()
            .match_name(name)
            .execute()
            .try_next()
            .await
            .map_err(self.err("getting VXLAN device", name))?
            .ok_or_else(|| Error::NotFound {
                kind: "link",
                name: name.to_owned(),
                netns: self.netns().clone(),
            })?;
        let mut vxlan = Vxlan::new(name, 0);
        vxlan.port = 0;
        let mut found = false;
        let mut underlay_index = None;
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::Mtu(mtu) => vxlan.mtu = Some(*mtu),
                LinkAttribute::Address(bytes) => {
                    vxlan.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr)
                }
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        let LinkInfo::Data(InfoData::Vxlan(data)) = info else {
                            continue;
                        };
                        found = true;
                        for item in data {
                            match item {
                                InfoVxlan::Id(vni) => vxlan.vni = *vni,
                                InfoVxlan::Port(port) => vxlan.port = *port,
                                InfoVxlan::Local(ip) => vxlan.local = Some(IpAddr::V4(*ip)),
                                InfoVxlan::Local6(ip) => vxlan.local = Some(IpAddr::V6(*ip)),
                                InfoVxlan::Learning(on) => vxlan.learning = *on,
                                InfoVxlan::Link(index) if *index != 0 => {
                                    underlay_index = Some(*index)
                                }
                                _ => {}
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        if !found {
            return Err(Error::Invalid {
                what: "VXLAN device",
                value: name.to_owned(),
                reason: "the link exists but is not a VXLAN device; delete it or choose another name",
            });
        }
        if let Some(index) = underlay_index {
            vxlan.underlay = self.link_by_index(index).await.ok().map(|l| l.name);
        }
        Ok(vxlan)
    }
}
