//! The lab's underlay: the bridge in the root netns, and netns (nodes, outside, router)
//! plugged into it with `eth0`. All kernel work goes through serval-sys.

use anyhow::Context;
use ipnet::IpNet;
use serval_sys::{NetNs, Netlink, RTPROT_STATIC, Route, Veth, sysctl};

use super::state::Host;

/// Creates the bridge in the root netns with the lab's host addresses, up.
pub async fn create_bridge(root: &Netlink, name: &str, addrs: &[IpNet]) -> anyhow::Result<()> {
    root.bridge_add(name)
        .await
        .with_context(|| format!("creating underlay bridge {name}"))?;
    if addrs.iter().any(|a| a.addr().is_ipv6()) {
        // The bridge's own addresses are added with nodad already; keep the link-local one
        // quiet too, and do not let the host's RA settings matter.
        let _ = sysctl::write(&sysctl::accept_ra(name)?, "0");
    }
    for a in addrs {
        root.addr_add(name, *a)
            .await
            .with_context(|| format!("adding {a} to bridge {name}"))?;
    }
    root.link_set_up(name)
        .await
        .with_context(|| format!("setting bridge {name} up"))?;
    Ok(())
}

/// Creates netns `host.netns` with `eth0` on the bridge (addresses, up), `lo` up, and
/// forwarding on when `forwarding`. Returns the open namespace.
pub async fn create_host(
    root: &Netlink,
    bridge: &str,
    host: &Host,
    forwarding: bool,
) -> anyhow::Result<NetNs> {
    let ns = NetNs::create(&host.netns)
        .with_context(|| format!("creating network namespace {}", host.netns))?;
    // Interfaces created from now on inherit `default`: no DAD delay on the underlay.
    for (key, value) in [
        ("net/ipv6/conf/default/accept_dad", "0"),
        ("net/ipv6/conf/all/accept_dad", "0"),
        ("net/ipv6/conf/default/accept_ra", "0"),
    ] {
        ns.sysctl_write(key, value)
            .with_context(|| format!("setting {key} in {}", host.netns))?;
    }
    if forwarding {
        ns.sysctl_write(&sysctl::ip_forward(), "1")
            .with_context(|| format!("enabling IPv4 forwarding in {}", host.netns))?;
        ns.sysctl_write(&sysctl::ipv6_forwarding("all")?, "1")
            .with_context(|| format!("enabling IPv6 forwarding in {}", host.netns))?;
    }
    root.veth_add(&Veth::new(&host.host_veth, "eth0").peer_netns(&ns))
        .await
        .with_context(|| format!("creating veth {} <-> {}:eth0", host.host_veth, host.netns))?;
    root.link_set_controller(&host.host_veth, bridge)
        .await
        .with_context(|| format!("attaching {} to bridge {bridge}", host.host_veth))?;
    root.link_set_up(&host.host_veth)
        .await
        .with_context(|| format!("setting {} up", host.host_veth))?;
    let nl = ns
        .netlink()
        .with_context(|| format!("opening netlink in {}", host.netns))?;
    nl.link_set_up("lo")
        .await
        .with_context(|| format!("setting lo up in {}", host.netns))?;
    for a in &host.addrs {
        nl.addr_add("eth0", *a)
            .await
            .with_context(|| format!("adding {a} to eth0 in {}", host.netns))?;
    }
    nl.link_set_up("eth0")
        .await
        .with_context(|| format!("setting eth0 up in {}", host.netns))?;
    Ok(ns)
}

/// Adds static routes `dst via gw` inside `ns` (protocol static, which the agent never
/// touches: it owns only routes with Serval's protocol number).
pub async fn add_routes(ns: &NetNs, routes: &[(IpNet, std::net::IpAddr)]) -> anyhow::Result<()> {
    if routes.is_empty() {
        return Ok(());
    }
    let nl = ns
        .netlink()
        .with_context(|| format!("opening netlink in {:?}", ns.name()))?;
    for (dst, gw) in routes {
        nl.route_add(&Route::new(*dst).via(*gw).protocol(RTPROT_STATIC))
            .await
            .with_context(|| format!("adding route {dst} via {gw} in {:?}", ns.name()))?;
    }
    Ok(())
}

/// Deletes a root-netns link if it exists.
pub async fn delete_link(root: &Netlink, name: &str) -> anyhow::Result<()> {
    match root.link_del(name).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting link {name}")),
    }
}

/// Names of root-netns links starting with `prefix`.
pub async fn links_with_prefix(root: &Netlink, prefix: &str) -> anyhow::Result<Vec<String>> {
    Ok(root
        .links()
        .await
        .context("listing links")?
        .into_iter()
        .map(|l| l.name)
        .filter(|n| n.starts_with(prefix))
        .collect())
}
