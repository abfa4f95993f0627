//! Two "nodes" joined by a veth underlay; each has a VXLAN device programmed the way the
//! agent does it (neighbour for the remote tunnel address, FDB entry for the remote VTEP MAC,
//! on-link route), and TCP crosses the overlay over IPv4 and IPv6.

mod common;

use common::{ip, net, tcp_blocked, tcp_check};
use serval_sys::{
    MacAddr, Netlink, RTPROT_SERVAL, Route, VXLAN_PORT, Veth, Vxlan,
    testing::{NetNsGuard, require_root},
};

const VX: &str = "vxlan.serval";

struct Node {
    underlay: &'static str,
    underlay_ip: &'static str,
    underlay_prefix: u8,
    /// Underlay MTU (1500) minus 50 for an IPv4 underlay, 70 for IPv6: the kernel caps a
    /// VXLAN device's MTU there.
    mtu: u32,
    mac: &'static str,
    tunnel4: &'static str,
    block4: &'static str,
    tunnel6: &'static str,
    block6: &'static str,
}

const N1: Node = Node {
    underlay: "ul1",
    underlay_ip: "192.168.77.1",
    underlay_prefix: 24,
    mtu: 1450,
    mac: "02:5e:00:00:00:01",
    tunnel4: "10.244.1.0",
    block4: "10.244.1.0/26",
    tunnel6: "fd44:0:0:1::",
    block6: "fd44:0:0:1::/122",
};

const N2: Node = Node {
    underlay: "ul2",
    underlay_ip: "192.168.77.2",
    underlay_prefix: 24,
    mtu: 1450,
    mac: "02:5e:00:00:00:02",
    tunnel4: "10.244.2.0",
    block4: "10.244.2.0/26",
    tunnel6: "fd44:0:0:2::",
    block6: "fd44:0:0:2::/122",
};

/// Local setup of one node: underlay address, VXLAN device, tunnel addresses.
async fn setup_local(nl: &Netlink, me: &Node) -> anyhow::Result<()> {
    nl.addr_add(
        me.underlay,
        net(&format!("{}/{}", me.underlay_ip, me.underlay_prefix)),
    )
    .await?;
    nl.link_set_up(me.underlay).await?;
    nl.link_set_up("lo").await?;
    let index = nl
        .vxlan_add(
            &Vxlan::new(VX, 4096)
                .local(ip(me.underlay_ip))
                .underlay(me.underlay)
                .mtu(me.mtu)
                .mac(me.mac.parse()?),
        )
        .await?;
    let link = nl.link(VX).await?;
    assert_eq!(link.index, index);
    assert_eq!(link.kind.as_deref(), Some("vxlan"));
    assert_eq!(link.mtu, Some(me.mtu));
    assert_eq!(link.mac, Some(me.mac.parse()?));
    nl.addr_add(VX, net(&format!("{}/32", me.tunnel4))).await?;
    nl.addr_add(VX, net(&format!("{}/128", me.tunnel6))).await?;
    nl.link_set_up(VX).await?;

    let info = nl.vxlan_info(VX).await?;
    assert_eq!(info.vni, 4096);
    assert_eq!(info.port, VXLAN_PORT);
    assert_eq!(info.local, Some(ip(me.underlay_ip)));
    assert_eq!(info.underlay.as_deref(), Some(me.underlay));
    assert!(!info.learning);
    assert_eq!(info.mtu, Some(me.mtu));
    assert!(matches!(
        nl.vxlan_info("lo").await,
        Err(serval_sys::Error::Invalid { .. })
    ));
    Ok(())
}

/// What the agent programs for one remote node.
async fn program_remote(nl: &Netlink, remote: &Node) -> anyhow::Result<()> {
    let vx = nl.link_index(VX).await?;
    let mac: MacAddr = remote.mac.parse()?;
    nl.neigh_replace(VX, ip(remote.tunnel4), mac).await?;
    nl.neigh_replace(VX, ip(remote.tunnel6), mac).await?;
    nl.fdb_replace(VX, mac, Some(ip(remote.underlay_ip)))
        .await?;
    nl.route_replace(
        &Route::new(net(remote.block4))
            .via(ip(remote.tunnel4))
            .dev(vx)
            .onlink(),
    )
    .await?;
    nl.route_replace(
        &Route::new(net(remote.block6))
            .via(ip(remote.tunnel6))
            .dev(vx)
            .onlink(),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn vxlan_overlay_carries_tcp_between_namespaces() -> anyhow::Result<()> {
    if !require_root("vxlan_overlay_carries_tcp_between_namespaces") {
        return Ok(());
    }
    let n1 = NetNsGuard::new("svt-vx-n1")?;
    let n2 = NetNsGuard::new("svt-vx-n2")?;
    let nl1 = n1.netlink()?;
    let nl2 = n2.netlink()?;
    nl1.veth_add(&Veth::new(N1.underlay, N2.underlay).peer_netns(&n2))
        .await?;
    setup_local(&nl1, &N1).await?;
    setup_local(&nl2, &N2).await?;
    program_remote(&nl1, &N2).await?;
    program_remote(&nl2, &N1).await?;
    assert_eq!(VXLAN_PORT, 4789);

    // Idempotent re-programming.
    program_remote(&nl1, &N2).await?;
    let mac2: MacAddr = N2.mac.parse()?;
    let err = nl1
        .neigh_add(VX, ip(N2.tunnel4), mac2)
        .await
        .expect_err("exists");
    assert!(err.is_exists(), "{err}");

    let neighbours = nl1.neighbours(Some(VX)).await?;
    assert!(
        neighbours
            .iter()
            .any(|n| n.ip == ip(N2.tunnel4) && n.mac == Some(mac2) && n.permanent),
        "{neighbours:#?}"
    );
    assert!(
        neighbours
            .iter()
            .any(|n| n.ip == ip(N2.tunnel6) && n.permanent),
        "{neighbours:#?}"
    );

    // A default (flood) entry besides the per-MAC one, as `bridge fdb append` makes.
    nl1.fdb_append(VX, MacAddr::ZERO, ip(N2.underlay_ip))
        .await?;
    nl1.fdb_append(VX, MacAddr::ZERO, ip("192.168.77.9"))
        .await?;
    let fdb = nl1.fdb_entries(VX).await?;
    assert!(
        fdb.iter()
            .any(|e| e.mac == mac2 && e.dst == Some(ip(N2.underlay_ip))),
        "{fdb:#?}"
    );
    let zeros: Vec<_> = fdb.iter().filter(|e| e.mac == MacAddr::ZERO).collect();
    assert_eq!(zeros.len(), 2, "{fdb:#?}");

    let routes = nl1
        .routes(serval_sys::IpFamily::V4, Some(RTPROT_SERVAL))
        .await?;
    assert!(
        routes.iter().any(|r| r.dst == net(N2.block4) && r.onlink),
        "{routes:#?}"
    );

    tcp_check(&n1, &n2, ip(N2.tunnel4))?;
    tcp_check(&n2, &n1, ip(N1.tunnel4))?;
    tcp_check(&n1, &n2, ip(N2.tunnel6))?;

    // Take the remote away again: the overlay stops at the missing FDB entry.
    nl1.fdb_del(VX, MacAddr::ZERO, Some(ip("192.168.77.9")))
        .await?;
    nl1.fdb_del(VX, MacAddr::ZERO, Some(ip(N2.underlay_ip)))
        .await?;
    nl1.fdb_del(VX, mac2, None).await?;
    let err = nl1.fdb_del(VX, mac2, None).await.expect_err("gone");
    assert!(err.is_not_found(), "{err}");
    assert!(nl1.fdb_entries(VX).await?.iter().all(|e| e.mac != mac2));
    assert!(
        tcp_blocked(&n1, &n2, ip(N2.tunnel4), 1000)?,
        "no FDB entry, no overlay"
    );
    nl1.fdb_replace(VX, mac2, Some(ip(N2.underlay_ip))).await?;
    tcp_check(&n1, &n2, ip(N2.tunnel4))?;
    nl1.neigh_del(VX, ip(N2.tunnel4)).await?;
    let err = nl1.neigh_del(VX, ip(N2.tunnel4)).await.expect_err("gone");
    assert!(err.is_not_found(), "{err}");
    Ok(())
}

#[tokio::test]
async fn vxlan_over_ipv6_underlay() -> anyhow::Result<()> {
    if !require_root("vxlan_over_ipv6_underlay") {
        return Ok(());
    }
    let m1 = Node {
        underlay_ip: "fd77::1",
        underlay_prefix: 64,
        mtu: 1430,
        ..N1
    };
    let m2 = Node {
        underlay_ip: "fd77::2",
        underlay_prefix: 64,
        mtu: 1430,
        ..N2
    };
    let n1 = NetNsGuard::new("svt-vx6-n1")?;
    let n2 = NetNsGuard::new("svt-vx6-n2")?;
    let nl1 = n1.netlink()?;
    let nl2 = n2.netlink()?;
    nl1.veth_add(&Veth::new(m1.underlay, m2.underlay).peer_netns(&n2))
        .await?;
    setup_local(&nl1, &m1).await?;
    setup_local(&nl2, &m2).await?;
    program_remote(&nl1, &m2).await?;
    program_remote(&nl2, &m1).await?;
    let fdb = nl1.fdb_entries(VX).await?;
    assert!(
        fdb.iter()
            .any(|e| e.mac == m2.mac.parse().unwrap() && e.dst == Some(ip("fd77::2"))),
        "{fdb:#?}"
    );
    tcp_check(&n1, &n2, ip(m2.tunnel4))?;
    tcp_check(&n2, &n1, ip(m1.tunnel6))?;
    Ok(())
}
