//! The pod wiring the CNI plugin builds, end to end on this crate's primitives: a pod
//! namespace with /32 and /128 addresses and default routes via link-local gateways
//! (169.254.1.1 on-link, fe80::1), a host-side veth answering for them with proxy ARP / proxy
//! NDP, and host routes to the pod. TCP flows pod -> node over IPv4 and IPv6.

mod common;

use common::{ip, net, tcp_check};
use serval_sys::{
    Route, Veth, sysctl,
    testing::{NetNsGuard, require_root},
};

#[tokio::test]
async fn pod_reaches_node_through_link_local_gateways() -> anyhow::Result<()> {
    if !require_root("pod_reaches_node_through_link_local_gateways") {
        return Ok(());
    }
    let node = NetNsGuard::new("svt-wire-node")?;
    let pod = NetNsGuard::new("svt-wire-pod")?;
    let nl = node.netlink()?;
    let pod_nl = pod.netlink()?;

    // The node: its own addresses on lo, forwarding on, and a default route elsewhere (proxy
    // ARP answers only for destinations routed out of another interface).
    nl.link_set_up("lo").await?;
    nl.addr_add("lo", net("10.99.0.1/32")).await?;
    nl.addr_add("lo", net("fd99::1/128")).await?;
    nl.veth_add(&Veth::new("up0", "up1")).await?;
    nl.addr_add("up0", net("192.0.2.1/24")).await?;
    nl.link_set_up("up0").await?;
    nl.link_set_up("up1").await?;
    nl.route_add(&Route::new(net("0.0.0.0/0")).via(ip("192.0.2.2")))
        .await?;
    node.sysctl_write(&sysctl::ip_forward(), "1")?;
    node.sysctl_write(&sysctl::ipv6_forwarding("all")?, "1")?;

    // The veth: host side "svpod0" in the node, "eth0" in the pod.
    nl.veth_add(&Veth::new("svpod0", "eth0").peer_netns(&pod).mtu(1450))
        .await?;
    for (key, value) in [
        (sysctl::proxy_arp("svpod0")?, "1"),
        (sysctl::ipv4_proxy_delay("svpod0")?, "0"),
        (sysctl::proxy_ndp("svpod0")?, "1"),
        (sysctl::ipv6_proxy_delay("svpod0")?, "0"),
        (sysctl::ipv6_forwarding("svpod0")?, "1"),
        (sysctl::accept_ra("svpod0")?, "0"),
    ] {
        node.sysctl_write(&key, value)?;
    }
    nl.neigh_proxy_add("svpod0", ip("fe80::1")).await?;
    let host_index = nl.link_index("svpod0").await?;
    assert!(
        nl.neigh_proxies()
            .await?
            .contains(&(host_index, ip("fe80::1")))
    );
    // The kernel treats re-adding a proxy entry as success: idempotent by nature.
    nl.neigh_proxy_add("svpod0", ip("fe80::1")).await?;
    let proxies = nl.neigh_proxies().await?;
    assert_eq!(
        proxies
            .iter()
            .filter(|p| **p == (host_index, ip("fe80::1")))
            .count(),
        1
    );
    nl.link_set_up("svpod0").await?;
    nl.route_add(&Route::new(net("10.65.0.5/32")).dev(host_index))
        .await?;
    nl.route_add(&Route::new(net("fd65::5/128")).dev(host_index))
        .await?;

    // The pod.
    pod_nl.link_set_up("lo").await?;
    pod_nl.addr_add("eth0", net("10.65.0.5/32")).await?;
    pod_nl.addr_add("eth0", net("fd65::5/128")).await?;
    pod_nl.link_set_up("eth0").await?;
    let eth0 = pod_nl.link_index("eth0").await?;
    pod_nl
        .route_add(
            &Route::new(net("0.0.0.0/0"))
                .via(ip("169.254.1.1"))
                .dev(eth0)
                .onlink(),
        )
        .await?;
    pod_nl
        .route_add(&Route::new(net("::/0")).via(ip("fe80::1")).dev(eth0))
        .await?;

    tcp_check(&pod, &node, ip("10.99.0.1"))?;
    tcp_check(&pod, &node, ip("fd99::1"))?;
    tcp_check(&node, &pod, ip("10.65.0.5"))?;
    tcp_check(&node, &pod, ip("fd65::5"))?;

    nl.neigh_proxy_del("svpod0", ip("fe80::1")).await?;
    assert!(
        nl.neigh_proxy_del("svpod0", ip("fe80::1"))
            .await
            .expect_err("gone")
            .is_not_found()
    );
    assert!(
        !nl.neigh_proxies()
            .await?
            .contains(&(host_index, ip("fe80::1")))
    );
    Ok(())
}
