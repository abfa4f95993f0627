//! IPv4 and IPv6 addresses on links.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};

use crate::{
    Netlink,
    error::{Error, Result},
};

/// An address assigned to a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addr {
    /// Interface index of the link.
    pub index: u32,
    /// Address with prefix length (e.g. `10.0.0.5/32`, `fd00::5/128`).
    pub net: IpNet,
}

fn address_message(index: u32, net: IpNet) -> AddressMessage {
    let mut msg = match net.addr() {
        IpAddr::V4(a) => rtnetlink::AddressMessageBuilder::<std::net::Ipv4Addr>::new()
            .index(index)
            .address(a, net.prefix_len())
            .build(),
        IpAddr::V6(a) => rtnetlink::AddressMessageBuilder::<std::net::Ipv6Addr>::new()
            .index(index)
            .address(a, net.prefix_len())
            .build(),
    };
    if net.addr().is_ipv6() {
        // No duplicate address detection: the address is usable at once (IFA_F_NODAD, `ip addr
        // add ... nodad`). Pods and labs own their addresses through IPAM, so DAD adds only delay.
        msg.header.flags |= AddressHeaderFlags::Nodad;
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    msg
}

fn addr_of(msg: &AddressMessage) -> Option<IpAddr> {
    // IFA_LOCAL is the interface's own address on point-to-point links; prefer it.
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

impl Netlink {
    /// Adds an address to the link `link` (`ip addr add NET dev LINK`; IPv6 with `nodad`).
    /// [`Error::is_exists`] when it is already there.
    pub async fn addr_add(&self, link: &str, net: IpNet) -> Result<()> {
        let index = self.link_index(link).await?;
        let mut req = self
            .handle()
            .address()
            .add(index, net.addr(), net.prefix_len());
        *req.message_mut() = address_message(index, net);
        req.execute()
            .await
            .map_err(self.err("adding address", format!("{net} to {link}")))
    }

    /// Adds or updates an address (`ip addr replace`); never fails because it exists.
    pub async fn addr_replace(&self, link: &str, net: IpNet) -> Result<()> {
        let index = self.link_index(link).await?;
        let mut req = self
            .handle()
            .address()
            .add(index, net.addr(), net.prefix_len())
            .replace();
        *req.message_mut() = address_message(index, net);
        req.execute()
            .await
            .map_err(self.err("replacing address", format!("{net} on {link}")))
    }

    /// Removes an address from a link. [`Error::is_not_found`] when it is not there.
    pub async fn addr_del(&self, link: &str, net: IpNet) -> Result<()> {
        let index = self.link_index(link).await?;
        self.handle()
            .address()
            .del(address_message(index, net))
            .execute()
            .await
            .map_err(self.err("deleting address", format!("{net} from {link}")))
    }

    /// The addresses in this namespace, of one link when `link` is given.
    pub async fn addrs(&self, link: Option<&str>) -> Result<Vec<Addr>> {
        let mut req = self.handle().address().get();
        if let Some(link) = link {
            req = req.set_link_index_filter(self.link_index(link).await?);
        }
        let msgs: Vec<AddressMessage> = req
            .execute()
            .try_collect()
            .await
            .map_err(self.err("listing addresses of", link.unwrap_or("all links")))?;
        let mut addrs = Vec::with_capacity(msgs.len());
        for msg in &msgs {
            let Some(ip) = addr_of(msg) else { continue };
            let net = IpNet::new(ip, msg.header.prefix_len).map_err(|_| Error::Invalid {
                what: "address reported by the kernel",
                value: format!("{ip}/{}", msg.header.prefix_len),
                reason: "prefix length out of range",
            })?;
            addrs.push(Addr {
                index: msg.header.index,
                net,
            });
        }
        Ok(addrs)
    }
}
