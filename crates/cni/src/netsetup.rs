//! The kernel side of a pod's network, through serval-sys: the veth pair, the pod's
//! addresses, routes and gateway neighbours, the host side's sysctls and host routes; and the
//! inspection CHECK does.
//!
//! How the link-local gateways work (as Calico, plus static neighbours):
//! - The host side has the fixed MAC `ee:ee:ee:ee:ee:ee`, `proxy_arp=1` (IPv4),
//!   `proxy_ndp=1` and the address `fe80::1/64` (IPv6), forwarding on, no IPv4 address.
//! - In the pod, `default via 169.254.1.1 dev IFNAME onlink` and `default via fe80::1 dev
//!   IFNAME onlink`, and permanent neighbour entries `169.254.1.1` / `fe80::1` →
//!   `ee:ee:ee:ee:ee:ee`. Calico relies on proxy ARP alone for 169.254.1.1, which only
//!   answers when the host has a route covering 169.254.1.1 (normally its default route); a
//!   lab node has none. The static neighbours make the gateway resolve without asking,
//!   whatever the host's routes. If they are flushed (the kernel flushes a link's neighbours,
//!   permanent ones too, when its MAC changes, e.g. by the `tuning` plugin), IPv6 still
//!   resolves fe80::1 (the host side owns it) and IPv4 falls back to proxy ARP, which then
//!   needs a node route covering 169.254.1.1.
//! - DAD is off on both ends (`accept_dad=0` before the links come up; pod addresses are added
//!   `nodad`), so IPv6 works the moment ADD returns instead of a second or two later.

use std::net::IpAddr;

use ipnet::IpNet;
use serval_sys::{
    IpFamily, MacAddr, NetNs, Netlink, RTPROT_SERVAL, Route, RouteKind, Veth, sysctl,
};

use crate::error::{PluginError, Result};
use crate::naming::{GATEWAY_V4, GATEWAY_V6, HOST_SIDE_MAC};

/// What to build for one pod interface.
#[derive(Debug, Clone)]
pub struct PodLink {
    pub host_iface: String,
    pub ifname: String,
    pub addrs: Vec<IpAddr>,
    /// MTU of both ends; for [`inspect`], 0 means "do not compare".
    pub mtu: u32,
}

impl PodLink {
    fn has_v4(&self) -> bool {
        self.addrs.iter().any(IpAddr::is_ipv4)
    }

    fn has_v6(&self) -> bool {
        self.addrs.iter().any(IpAddr::is_ipv6)
    }
}

/// What was built.
#[derive(Debug, Clone)]
pub struct Wired {
    pub host_mac: MacAddr,
    pub pod_mac: MacAddr,
}

fn kernel(step: &'static str) -> impl FnOnce(serval_sys::Error) -> PluginError {
    move |source| PluginError::Kernel { step, source }
}

/// The host network of an address (`/32`, `/128`).
pub fn host_net(addr: IpAddr) -> IpNet {
    IpNet::from(addr)
}

/// Builds the pod's link. On error the caller removes the host side ([`remove_host_side`]),
/// which takes the pod side with it.
pub async fn wire(host: &Netlink, pod_ns: &NetNs, link: &PodLink) -> Result<Wired> {
    // A host side left over from an earlier sandbox of the same pod is replaced, as Calico does.
    remove_host_side(host, &link.host_iface).await?;

    let veth = Veth::new(&link.host_iface, &link.ifname)
        .peer_netns(pod_ns)
        .mtu(link.mtu)
        .mac(MacAddr(HOST_SIDE_MAC));
    host.veth_add(&veth)
        .await
        .map_err(kernel("creating the pod's veth pair"))?;

    // Host side: sysctls first (IPv6 ones must precede link-up to take effect for DAD).
    let h = &link.host_iface;
    let mut host_sysctls: Vec<(String, &str)> = Vec::new();
    if link.has_v4() {
        host_sysctls.push((
            sysctl::proxy_arp(h).map_err(kernel("naming a sysctl"))?,
            "1",
        ));
        host_sysctls.push((format!("net/ipv4/neigh/{h}/proxy_delay"), "0"));
        host_sysctls.push((
            sysctl::ipv4_forwarding(h).map_err(kernel("naming a sysctl"))?,
            "1",
        ));
        host_sysctls.push((sysctl::ip_forward(), "1"));
    }
    if link.has_v6() {
        host_sysctls.push((
            sysctl::disable_ipv6(h).map_err(kernel("naming a sysctl"))?,
            "0",
        ));
        host_sysctls.push((format!("net/ipv6/conf/{h}/accept_dad"), "0"));
        host_sysctls.push((
            sysctl::accept_ra(h).map_err(kernel("naming a sysctl"))?,
            "0",
        ));
        host_sysctls.push((
            sysctl::proxy_ndp(h).map_err(kernel("naming a sysctl"))?,
            "1",
        ));
        host_sysctls.push((
            sysctl::ipv6_forwarding("all").map_err(kernel("naming a sysctl"))?,
            "1",
        ));
    }
    for (key, value) in &host_sysctls {
        set_if_different(key, value).map_err(kernel("setting a host-side sysctl"))?;
    }
    host.link_set_up(h)
        .await
        .map_err(kernel("setting the host side up"))?;
    if link.has_v6() {
        // The host side owns fe80::1 itself (a link-local address is per link, so every
        // host-side veth can carry it): it answers the pod's neighbour solicitations for its
        // gateway whatever the node's routes are.
        let gw = IpNet::new(GATEWAY_V6.into(), 64).expect("fe80::1/64 is valid");
        host.addr_replace(h, gw)
            .await
            .map_err(kernel("adding fe80::1 to the host side"))?;
    }
    let host_index = host
        .link_index(h)
        .await
        .map_err(kernel("looking up the host side"))?;
    for addr in &link.addrs {
        let route = Route::new(host_net(*addr)).dev(host_index);
        host.route_replace(&route)
            .await
            .map_err(kernel("adding the host route to the pod"))?;
    }

    // Pod side.
    let pod = pod_ns
        .netlink()
        .map_err(kernel("opening netlink in the pod"))?;
    let ifname = link.ifname.clone();
    if link.has_v6() {
        let keys = [
            (format!("net/ipv6/conf/{ifname}/disable_ipv6"), "0"),
            (format!("net/ipv6/conf/{ifname}/accept_dad"), "0"),
            (format!("net/ipv6/conf/{ifname}/accept_ra"), "0"),
        ];
        for (key, value) in &keys {
            pod_ns
                .sysctl_write(key, value)
                .map_err(kernel("setting a pod sysctl"))?;
        }
    }
    // The loopback device: a pod talks to itself through it.
    pod.link_set_up("lo")
        .await
        .map_err(kernel("setting lo up in the pod"))?;
    pod.link_set_up(&ifname)
        .await
        .map_err(kernel("setting the pod interface up"))?;
    let pod_index = pod
        .link_index(&ifname)
        .await
        .map_err(kernel("looking up the pod interface"))?;
    for addr in &link.addrs {
        pod.addr_replace(&ifname, host_net(*addr))
            .await
            .map_err(kernel("adding the pod address"))?;
    }
    let gw_mac = MacAddr(HOST_SIDE_MAC);
    if link.has_v4() {
        pod.neigh_replace(&ifname, GATEWAY_V4.into(), gw_mac)
            .await
            .map_err(kernel("adding the IPv4 gateway neighbour in the pod"))?;
        let default = Route::new("0.0.0.0/0".parse().expect("literal"))
            .via(GATEWAY_V4.into())
            .dev(pod_index)
            .onlink();
        pod.route_replace(&default)
            .await
            .map_err(kernel("adding the pod's IPv4 default route"))?;
    }
    if link.has_v6() {
        pod.neigh_replace(&ifname, GATEWAY_V6.into(), gw_mac)
            .await
            .map_err(kernel("adding the IPv6 gateway neighbour in the pod"))?;
        let default = Route::new("::/0".parse().expect("literal"))
            .via(GATEWAY_V6.into())
            .dev(pod_index)
            .onlink();
        pod.route_replace(&default)
            .await
            .map_err(kernel("adding the pod's IPv6 default route"))?;
    }
    let pod_mac = pod
        .link_mac(&ifname)
        .await
        .map_err(kernel("reading the pod interface's MAC"))?;
    let host_mac = host
        .link_mac(h)
        .await
        .map_err(kernel("reading the host side's MAC"))?;
    Ok(Wired { host_mac, pod_mac })
}

/// Writes a sysctl only when its value differs (namespace-wide switches such as ip_forward
/// are then not rewritten on every ADD).
fn set_if_different(key: &str, value: &str) -> serval_sys::Result<()> {
    match sysctl::read(key) {
        Ok(current) if current == value => Ok(()),
        _ => sysctl::write(key, value),
    }
}

/// Deletes the host side (and with it the pod side and the host routes through it). Gone
/// already is fine.
pub async fn remove_host_side(host: &Netlink, host_iface: &str) -> Result<()> {
    match host.link_del(host_iface).await {
        Ok(()) => {
            tracing::info!(iface = host_iface, "removed host-side veth");
            Ok(())
        }
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(kernel("removing the host-side veth")(e)),
    }
}

/// Deletes the pod-side interface inside the pod's namespace. Gone already is fine.
pub async fn remove_pod_side(pod_ns: &NetNs, ifname: &str) -> Result<()> {
    let pod = pod_ns
        .netlink()
        .map_err(kernel("opening netlink in the pod"))?;
    match pod.link_del(ifname).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(kernel("removing the pod interface")(e)),
    }
}

/// CHECK: compares the kernel with what ADD made; returns every difference found.
pub async fn inspect(
    host: &Netlink,
    pod_ns: &NetNs,
    link: &PodLink,
    pod_mac: Option<&str>,
) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let pod = pod_ns
        .netlink()
        .map_err(kernel("opening netlink in the pod"))?;
    let ifname = &link.ifname;
    match pod.link(ifname).await {
        Err(e) if e.is_not_found() => problems.push(format!(
            "interface {ifname} does not exist in the pod's netns"
        )),
        Err(e) => return Err(kernel("looking up the pod interface")(e)),
        Ok(l) => {
            if !l.up {
                problems.push(format!("interface {ifname} in the pod is down"));
            }
            if let (Some(want), Some(have)) = (pod_mac, l.mac)
                && !want.eq_ignore_ascii_case(&have.to_string())
            {
                problems.push(format!(
                    "interface {ifname} has MAC {have}, the result says {want}"
                ));
            }
            if link.mtu != 0 && l.mtu != Some(link.mtu) {
                problems.push(format!(
                    "interface {ifname} has MTU {:?}, expected {}",
                    l.mtu, link.mtu
                ));
            }
            let have: Vec<IpNet> = pod
                .addrs(Some(ifname))
                .await
                .map_err(kernel("listing the pod's addresses"))?
                .into_iter()
                .map(|a| a.net)
                .collect();
            for addr in &link.addrs {
                if !have.contains(&host_net(*addr)) {
                    problems.push(format!(
                        "address {} is missing on {ifname} in the pod",
                        host_net(*addr)
                    ));
                }
            }
            for (fam, gw, has) in [
                (IpFamily::V4, IpAddr::from(GATEWAY_V4), link.has_v4()),
                (IpFamily::V6, IpAddr::from(GATEWAY_V6), link.has_v6()),
            ] {
                if !has {
                    continue;
                }
                let routes = pod
                    .routes(fam, None)
                    .await
                    .map_err(kernel("listing the pod's routes"))?;
                let ok = routes.iter().any(|r| {
                    r.dst.prefix_len() == 0
                        && r.gateway == Some(gw)
                        && r.oif == Some(l.index)
                        && r.kind == RouteKind::Unicast
                });
                if !ok {
                    problems.push(format!(
                        "the pod has no default route via {gw} dev {ifname}"
                    ));
                }
            }
        }
    }
    match host.link(&link.host_iface).await {
        Err(e) if e.is_not_found() => problems.push(format!(
            "host-side interface {} does not exist",
            link.host_iface
        )),
        Err(e) => return Err(kernel("looking up the host side")(e)),
        Ok(l) => {
            if !l.up {
                problems.push(format!("host-side interface {} is down", link.host_iface));
            }
            for addr in &link.addrs {
                let fam = if addr.is_ipv4() {
                    IpFamily::V4
                } else {
                    IpFamily::V6
                };
                let routes = host
                    .routes(fam, Some(RTPROT_SERVAL))
                    .await
                    .map_err(kernel("listing the host's routes"))?;
                if !routes
                    .iter()
                    .any(|r| r.dst == host_net(*addr) && r.oif == Some(l.index))
                {
                    problems.push(format!(
                        "the host has no route {} dev {}",
                        host_net(*addr),
                        link.host_iface
                    ));
                }
            }
            if link.has_v4() {
                let key = sysctl::proxy_arp(&link.host_iface).map_err(kernel("naming a sysctl"))?;
                if sysctl::read(&key).ok().as_deref() != Some("1") {
                    problems.push(format!("proxy_arp is off on {}", link.host_iface));
                }
            }
        }
    }
    Ok(problems)
}
