//! Routes in the main table: via a gateway, device-scoped, on-link, blackhole; each tagged with
//! a routing protocol number so an owner can find (and remove) exactly its own routes.

use std::{fmt, net::IpAddr};

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::{
    AddressFamily,
    route::{
        RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol,
        RouteScope, RouteType,
    },
};

use crate::{Netlink, error::Result};

/// Serval's routing protocol number (`proto 80` in `ip route`), carried by every route the
/// agent and CNI install so they can list and remove only their own.
///
/// Numbers 0-4 belong to the kernel and boot scripts and larger ones to routing daemons
/// (see `/etc/iproute2/rt_protos`: bird 12, zebra 11, babel 42, ospf 188, bgp 186, ...);
/// Calico's Felix uses 80 for the same purpose, and nothing common claims it otherwise.
pub const RTPROT_SERVAL: u8 = 80;

/// `RTPROT_STATIC`: what `ip route add` uses by default.
pub const RTPROT_STATIC: u8 = 4;

/// `RTPROT_KERNEL`: routes the kernel makes itself (connected subnets).
pub const RTPROT_KERNEL: u8 = 2;

/// Which address family to list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// The kind of route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// Forward (`RTN_UNICAST`).
    Unicast,
    /// Silently drop (`RTN_BLACKHOLE`), e.g. for a node's own IPAM blocks.
    Blackhole,
    /// Reject with ICMP unreachable (`RTN_UNREACHABLE`).
    Unreachable,
    /// Any other kernel route type (local, broadcast, ...), by number.
    Other(u8),
}

/// A route in the main table.
///
/// Build one with [`Route::new`] and the chained setters:
/// `Route::new(dst).via(gw).dev(ifindex).onlink()`, `Route::new(dst).blackhole()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Destination prefix (host bits are cleared when sent: `10.0.0.7/24` means `10.0.0.0/24`).
    pub dst: IpNet,
    /// Next hop.
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Next hop is on the link even if no prefix says so (`onlink`).
    pub onlink: bool,
    /// Route type.
    pub kind: RouteKind,
    /// Routing protocol number; [`RTPROT_SERVAL`] by default.
    pub protocol: u8,
    /// Metric (`RTA_PRIORITY`).
    pub metric: Option<u32>,
    /// Scope; `None` picks what `ip route` would: link for IPv4 routes with a device and no
    /// gateway, universe otherwise.
    pub scope: Option<u8>,
}

impl Route {
    /// A unicast route to `dst` with protocol [`RTPROT_SERVAL`] and nothing else set.
    pub fn new(dst: IpNet) -> Self {
        Self {
            dst,
            gateway: None,
            oif: None,
            onlink: false,
            kind: RouteKind::Unicast,
            protocol: RTPROT_SERVAL,
            metric: None,
            scope: None,
        }
    }

    /// Next hop `gateway`.
    pub fn via(mut self, gateway: IpAddr) -> Self {
        self.gateway = Some(gateway);
        self
    }

    /// Output interface (index; see [`Netlink::link_index`]).
    pub fn dev(mut self, oif: u32) -> Self {
        self.oif = Some(oif);
        self
    }

    /// Treat the gateway as directly reachable on the device (`onlink`).
    pub fn onlink(mut self) -> Self {
        self.onlink = true;
        self
    }

    /// Make it a blackhole route.
    pub fn blackhole(mut self) -> Self {
        self.kind = RouteKind::Blackhole;
        self
    }

    /// Tag with another protocol number.
    pub fn protocol(mut self, protocol: u8) -> Self {
        self.protocol = protocol;
        self
    }

    /// Set the metric.
    pub fn metric(mut self, metric: u32) -> Self {
        self.metric = Some(metric);
        self
    }

    fn family(&self) -> AddressFamily {
        match self.dst {
            IpNet::V4(_) => AddressFamily::Inet,
            IpNet::V6(_) => AddressFamily::Inet6,
        }
    }

    fn effective_scope(&self) -> RouteScope {
        if let Some(scope) = self.scope {
            return RouteScope::from(scope);
        }
        match (self.dst, self.kind, self.gateway, self.oif) {
            (IpNet::V4(_), RouteKind::Unicast, None, Some(_)) => RouteScope::Link,
            _ => RouteScope::Universe,
        }
    }

    fn message(&self, for_delete: bool) -> RouteMessage {
        let mut msg = RouteMessage::default();
        msg.header.address_family = self.family();
        msg.header.destination_prefix_length = self.dst.prefix_len();
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::from(self.protocol);
        // Deleting matches any scope (as `ip route del` does).
        msg.header.scope = if for_delete {
            RouteScope::NoWhere
        } else {
            self.effective_scope()
        };
        msg.header.kind = match self.kind {
            RouteKind::Unicast => RouteType::Unicast,
            RouteKind::Blackhole => RouteType::BlackHole,
            RouteKind::Unreachable => RouteType::Unreachable,
            RouteKind::Other(n) => RouteType::from(n),
        };
        if self.onlink {
            msg.header.flags.insert(RouteFlags::Onlink);
        }
        msg.attributes
            .push(RouteAttribute::Destination(route_address(
                self.dst.network(),
            )));
        if let Some(gw) = self.gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(route_address(gw)));
        }
        if let Some(oif) = self.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        if let Some(metric) = self.metric {
            msg.attributes.push(RouteAttribute::Priority(metric));
        }
        msg
    }

    fn from_message(msg: &RouteMessage) -> Option<Self> {
        let mut dst = None;
        let mut route = Self::new(match msg.header.address_family {
            AddressFamily::Inet => "0.0.0.0/0".parse().ok()?,
            AddressFamily::Inet6 => "::/0".parse().ok()?,
            _ => return None,
        });
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(addr) => dst = ip_of(addr),
                RouteAttribute::Gateway(addr) => route.gateway = ip_of(addr),
                RouteAttribute::Oif(oif) => route.oif = Some(*oif),
                RouteAttribute::Priority(metric) => route.metric = Some(*metric),
                _ => {}
            }
        }
        if let Some(dst) = dst {
            route.dst = IpNet::new(dst, msg.header.destination_prefix_length).ok()?;
        }
        route.onlink = msg.header.flags.contains(RouteFlags::Onlink);
        route.protocol = u8::from(msg.header.protocol);
        route.scope = Some(u8::from(msg.header.scope));
        route.kind = match msg.header.kind {
            RouteType::Unicast => RouteKind::Unicast,
            RouteType::BlackHole => RouteKind::Blackhole,
            RouteType::Unreachable => RouteKind::Unreachable,
            other => RouteKind::Other(u8::from(other)),
        };
        Some(route)
    }

    fn table_of(msg: &RouteMessage) -> u32 {
        msg.attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(u32::from(msg.header.table))
    }
}

impl fmt::Display for Route {
    /// Like `ip route`: `10.0.0.0/26 via 192.168.0.2 dev #3 onlink proto 80`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            RouteKind::Unicast => {}
            RouteKind::Blackhole => f.write_str("blackhole ")?,
            RouteKind::Unreachable => f.write_str("unreachable ")?,
            RouteKind::Other(n) => write!(f, "type {n} ")?,
        }
        write!(f, "{}", self.dst)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " dev #{oif}")?;
        }
        if self.onlink {
            f.write_str(" onlink")?;
        }
        if let Some(metric) = self.metric {
            write!(f, " metric {metric}")?;
        }
        write!(f, " proto {}", self.protocol)
    }
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

fn ip_of(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

impl Netlink {
    /// Adds a route (`ip route add`). [`crate::Error::is_exists`] when one to the same destination
    /// (and metric) is already there.
    pub async fn route_add(&self, route: &Route) -> Result<()> {
        self.handle()
            .route()
            .add(route.message(false))
            .execute()
            .await
            .map_err(self.err("adding route", route))
    }

    /// Adds or overwrites the route to the same destination (`ip route replace`).
    pub async fn route_replace(&self, route: &Route) -> Result<()> {
        self.handle()
            .route()
            .add(route.message(false))
            .replace()
            .execute()
            .await
            .map_err(self.err("replacing route", route))
    }

    /// Deletes a route. Destination, type and protocol must match; gateway, device and metric
    /// must match when set. [`crate::Error::is_not_found`] when there is no such route.
    pub async fn route_del(&self, route: &Route) -> Result<()> {
        self.handle()
            .route()
            .del(route.message(true))
            .execute()
            .await
            .map_err(self.err("deleting route", route))
    }

    /// The main table's routes of one family, only those with `protocol` when given (e.g.
    /// [`RTPROT_SERVAL`] for ours). Cached and multipath-only entries are left out.
    pub async fn routes(&self, family: IpFamily, protocol: Option<u8>) -> Result<Vec<Route>> {
        let mut query = RouteMessage::default();
        query.header.address_family = match family {
            IpFamily::V4 => AddressFamily::Inet,
            IpFamily::V6 => AddressFamily::Inet6,
        };
        let msgs: Vec<RouteMessage> = self
            .handle()
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(self.err("listing routes", format!("{family:?}")))?;
        Ok(msgs
            .iter()
            .filter(|m| Route::table_of(m) == u32::from(RouteHeader::RT_TABLE_MAIN))
            .filter(|m| !m.header.flags.contains(RouteFlags::Cloned))
            .filter(|m| protocol.is_none_or(|p| u8::from(m.header.protocol) == p))
            .filter_map(Route::from_message)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_reads_like_ip_route() {
        let r = Route::new("10.0.0.0/26".parse().unwrap())
            .via("192.168.0.2".parse().unwrap())
            .dev(3)
            .onlink();
        assert_eq!(
            r.to_string(),
            "10.0.0.0/26 via 192.168.0.2 dev #3 onlink proto 80"
        );
        let b = Route::new("fd00::/122".parse().unwrap()).blackhole();
        assert_eq!(b.to_string(), "blackhole fd00::/122 proto 80");
    }

    #[test]
    fn scope_defaults_follow_ip_route() {
        let dev_only = Route::new("10.0.0.5/32".parse().unwrap()).dev(2);
        assert_eq!(dev_only.effective_scope(), RouteScope::Link);
        let via = Route::new("10.0.0.0/24".parse().unwrap())
            .via("10.1.0.1".parse().unwrap())
            .dev(2);
        assert_eq!(via.effective_scope(), RouteScope::Universe);
        let v6 = Route::new("fd00::5/128".parse().unwrap()).dev(2);
        assert_eq!(v6.effective_scope(), RouteScope::Universe);
    }

    #[test]
    fn message_round_trips() {
        let r = Route::new("10.0.0.0/26".parse().unwrap())
            .via("192.168.0.2".parse().unwrap())
            .dev(3)
            .onlink()
            .metric(7);
        let back = Route::from_message(&r.message(false)).expect("parse back");
        assert_eq!(back.dst, r.dst);
        assert_eq!(back.gateway, r.gateway);
        assert_eq!(back.oif, Some(3));
        assert!(back.onlink);
        assert_eq!(back.metric, Some(7));
        assert_eq!(back.protocol, RTPROT_SERVAL);
        assert_eq!(back.kind, RouteKind::Unicast);
    }
}
