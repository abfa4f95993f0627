//! Links: look up, list, up/down, MTU, rename, MAC address, move to another namespace, delete.

use std::{fmt, str::FromStr};

use futures::TryStreamExt;
use rtnetlink::{
    LinkUnspec,
    packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
};

use crate::{
    NetNs, Netlink,
    error::{Error, Result},
};

/// The longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// `00:00:00:00:00:00`, the all-zero address used for VXLAN default FDB entries.
    pub const ZERO: Self = Self([0; 6]);

    /// The six bytes.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 6]>::try_from(bytes).ok().map(Self)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// A MAC address string that is not six colon-separated hex bytes.
#[derive(Debug, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six colon-separated hex bytes like 02:00:00:00:00:01")]
pub struct ParseMacError(String);

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(|| ParseMacError(s.to_owned()))?;
            if part.len() != 2 {
                return Err(ParseMacError(s.to_owned()));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| ParseMacError(s.to_owned()))?;
        }
        if parts.next().is_some() {
            return Err(ParseMacError(s.to_owned()));
        }
        Ok(Self(bytes))
    }
}

/// A link as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Interface index (unique within its namespace).
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MTU.
    pub mtu: Option<u32>,
    /// Hardware address (Ethernet-like links only).
    pub mac: Option<MacAddr>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Link kind (`veth`, `vxlan`, `bridge`, ...), when it has one.
    pub kind: Option<String>,
    /// Index of the controller (bridge) this link is enslaved to.
    pub controller: Option<u32>,
}

impl Link {
    pub(crate) fn from_message(msg: &LinkMessage) -> Self {
        let mut link = Self {
            index: msg.header.index,
            name: String::new(),
            mtu: None,
            mac: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            kind: None,
            controller: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name.clone_from(name),
                LinkAttribute::Mtu(mtu) => link.mtu = Some(*mtu),
                LinkAttribute::Address(bytes) => link.mac = MacAddr::from_slice(bytes),
                LinkAttribute::Controller(index) if *index != 0 => link.controller = Some(*index),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            link.kind = Some(kind_name(kind));
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

fn kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Other(name) => name.clone(),
        other => other.to_string(),
    }
}

/// Refuses interface names the kernel would refuse, before anything is changed.
pub fn validate_ifname(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "an interface name must not be empty"
    } else if name.len() > MAX_IFNAME_LEN {
        "an interface name must be at most 15 bytes (IFNAMSIZ)"
    } else if name.contains(['/', ' ', ':', '\0']) || name == "." || name == ".." {
        "an interface name must not contain '/', ':', spaces or NUL, nor be '.' or '..'"
    } else {
        return Ok(());
    };
    Err(Error::Invalid {
        what: "interface name",
        value: name.to_owned(),
        reason,
    })
}

impl Netlink {
    /// The link called `name`; [`Error::is_not_found`] when there is none.
    pub async fn link(&self, name: &str) -> Result<Link> {
        validate_ifname(name)?;
        let msg = self
            .handle()
            .link()
            .get()
            .match_name(name)
            .execute()
            .try_next()
            .await
            .map_err(self.err("getting link", name))?;
        match msg {
            Some(msg) => Ok(Link::from_message(&msg)),
            None => Err(Error::NotFound {
                kind: "link",
                name: name.to_owned(),
                netns: self.netns().clone(),
            }),
        }
    }

    /// The link with interface index `index`.
    pub async fn link_by_index(&self, index: u32) -> Result<Link> {
        let msg = self
            .handle()
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_next()
            .await
            .map_err(self.err("getting link with index", index))?;
        match msg {
            Some(msg) => Ok(Link::from_message(&msg)),
            None => Err(Error::NotFound {
                kind: "link with index",
                name: index.to_string(),
                netns: self.netns().clone(),
            }),
        }
    }

    /// The interface index of the link called `name`.
    pub async fn link_index(&self, name: &str) -> Result<u32> {
        Ok(self.link(name).await?.index)
    }

    /// Every link in the namespace, by index.
    pub async fn links(&self) -> Result<Vec<Link>> {
        let msgs: Vec<LinkMessage> = self
            .handle()
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(self.err("listing links", "(all)"))?;
        let mut links: Vec<Link> = msgs.iter().map(Link::from_message).collect();
        links.sort_by_key(|l| l.index);
        Ok(links)
    }

    async fn link_set(
        &self,
        op: &'static str,
        name: &str,
        build: impl FnOnce(u32) -> LinkMessage,
    ) -> Result<()> {
        let index = self.link_index(name).await?;
        self.handle()
            .link()
            .set(build(index))
            .execute()
            .await
            .map_err(self.err(op, name))
    }

    /// Sets the link administratively up.
    pub async fn link_set_up(&self, name: &str) -> Result<()> {
        self.link_set("setting up link", name, |i| {
            LinkUnspec::new_with_index(i).up().build()
        })
        .await
    }

    /// Sets the link administratively down.
    pub async fn link_set_down(&self, name: &str) -> Result<()> {
        self.link_set("setting down link", name, |i| {
            LinkUnspec::new_with_index(i).down().build()
        })
        .await
    }

    /// Sets the link's MTU.
    pub async fn link_set_mtu(&self, name: &str, mtu: u32) -> Result<()> {
        self.link_set("setting MTU of link", name, |i| {
            LinkUnspec::new_with_index(i).mtu(mtu).build()
        })
        .await
    }

    /// Renames the link (the kernel refuses this while it is up).
    pub async fn link_set_name(&self, name: &str, new_name: &str) -> Result<()> {
        validate_ifname(new_name)?;
        self.link_set("renaming link", name, |i| {
            LinkUnspec::new_with_index(i).name(new_name).build()
        })
        .await
    }

    /// Sets the link's MAC address.
    pub async fn link_set_mac(&self, name: &str, mac: MacAddr) -> Result<()> {
        self.link_set("setting MAC address of link", name, |i| {
            LinkUnspec::new_with_index(i)
                .address(mac.0.to_vec())
                .build()
        })
        .await
    }

    /// The link's MAC address.
    pub async fn link_mac(&self, name: &str) -> Result<MacAddr> {
        self.link(name).await?.mac.ok_or_else(|| Error::NotFound {
            kind: "MAC address of link",
            name: name.to_owned(),
            netns: self.netns().clone(),
        })
    }

    /// Moves the link into another namespace (it keeps its name; it goes down).
    pub async fn link_set_netns(&self, name: &str, target: &NetNs) -> Result<()> {
        use std::os::fd::AsRawFd;
        let fd = target.as_raw_fd();
        self.link_set("moving link to another namespace", name, |i| {
            LinkUnspec::new_with_index(i).setns_by_fd(fd).build()
        })
        .await
    }

    /// Enslaves the link to a bridge (or other controller) called `controller`.
    pub async fn link_set_controller(&self, name: &str, controller: &str) -> Result<()> {
        let controller_index = self.link_index(controller).await?;
        self.link_set("attaching link to bridge", name, |i| {
            LinkUnspec::new_with_index(i)
                .controller(controller_index)
                .build()
        })
        .await
    }

    /// Detaches the link from its controller.
    pub async fn link_set_nocontroller(&self, name: &str) -> Result<()> {
        self.link_set("detaching link from bridge", name, |i| {
            LinkUnspec::new_with_index(i).nocontroller().build()
        })
        .await
    }

    /// Deletes the link (for a veth, both ends). [`Error::is_not_found`] when it is gone.
    pub async fn link_del(&self, name: &str) -> Result<()> {
        let index = self.link_index(name).await?;
        self.handle()
            .link()
            .del(index)
            .execute()
            .await
            .map_err(self.err("deleting link", name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips() {
        let mac: MacAddr = "02:0a:ff:00:10:ee".parse().expect("parse");
        assert_eq!(mac.0, [0x02, 0x0a, 0xff, 0x00, 0x10, 0xee]);
        assert_eq!(mac.to_string(), "02:0a:ff:00:10:ee");
        for bad in [
            "",
            "02:0a:ff:00:10",
            "02:0a:ff:00:10:ee:01",
            "2:0a:ff:00:10:ee",
            "zz:0a:ff:00:10:ee",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?}");
        }
        assert_eq!(MacAddr::ZERO.to_string(), "00:00:00:00:00:00");
    }

    #[test]
    fn ifnames_are_validated() {
        assert!(validate_ifname("vxlan.serval").is_ok());
        assert!(validate_ifname("abcdefghijklmno").is_ok());
        for bad in ["", "abcdefghijklmnop", "a/b", "a b", "a:b", ".", ".."] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
    }
}
