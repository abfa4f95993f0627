//! veth pairs between namespaces: addresses, link attributes, moving and deleting links, and
//! real TCP connectivity over IPv4 and IPv6.

mod common;

use common::{ip, net, tcp_check};
use serval_sys::{
    MacAddr, NetNs, Veth,
    testing::{NetNsGuard, require_root},
};

#[tokio::test]
async fn veth_between_namespaces_carries_tcp_v4_and_v6() -> anyhow::Result<()> {
    if !require_root("veth_between_namespaces_carries_tcp_v4_and_v6") {
        return Ok(());
    }
    let a = NetNsGuard::new("svt-veth-a")?;
    let b = NetNsGuard::new("svt-veth-b")?;
    let nla = a.netlink()?;
    let nlb = b.netlink()?;

    nla.veth_add(&Veth::new("va", "vb").peer_netns(&b).mtu(1400))
        .await?;
    // The netlink socket is bound to its namespace: `va` is in a, `vb` only in b.
    assert!(nla.link("vb").await.expect_err("vb is in b").is_not_found());
    let va = nla.link("va").await?;
    let vb = nlb.link("vb").await?;
    assert_eq!(va.kind.as_deref(), Some("veth"));
    assert_eq!((va.mtu, vb.mtu), (Some(1400), Some(1400)));
    assert!(!va.up);

    for (nl, dev, v4, v6) in [
        (&nla, "va", "10.1.0.1/24", "fd01::1/64"),
        (&nlb, "vb", "10.1.0.2/24", "fd01::2/64"),
    ] {
        nl.addr_add(dev, net(v4)).await?;
        nl.addr_add(dev, net(v6)).await?;
        nl.link_set_up(dev).await?;
        nl.link_set_up("lo").await?;
    }
    let addrs = nla.addrs(Some("va")).await?;
    assert!(
        addrs
            .iter()
            .any(|a| a.net == net("10.1.0.1/24") && a.index == va.index),
        "{addrs:?}"
    );
    assert!(
        addrs.iter().any(|a| a.net == net("fd01::1/64")),
        "{addrs:?}"
    );
    assert!(nla.link("va").await?.up);

    let err = nla
        .addr_add("va", net("10.1.0.1/24"))
        .await
        .expect_err("duplicate address");
    assert!(err.is_exists(), "{err}");
    assert!(
        err.to_string().contains(&format!("in netns {}", a.name())),
        "{err}"
    );
    nla.addr_replace("va", net("10.1.0.1/24")).await?;

    tcp_check(&a, &b, ip("10.1.0.2"))?;
    tcp_check(&b, &a, ip("10.1.0.1"))?;
    tcp_check(&a, &b, ip("fd01::2"))?;
    tcp_check(&b, &a, ip("fd01::1"))?;

    nla.addr_del("va", net("10.1.0.1/24")).await?;
    let err = nla
        .addr_del("va", net("10.1.0.1/24"))
        .await
        .expect_err("already deleted");
    assert!(err.is_not_found(), "{err}");
    assert!(
        !nla.addrs(Some("va"))
            .await?
            .iter()
            .any(|a| a.net == net("10.1.0.1/24"))
    );
    Ok(())
}

#[tokio::test]
async fn link_attributes_move_and_delete() -> anyhow::Result<()> {
    if !require_root("link_attributes_move_and_delete") {
        return Ok(());
    }
    let a = NetNsGuard::new("svt-link-a")?;
    let b = NetNsGuard::new("svt-link-b")?;
    let nla = a.netlink()?;
    let nlb = b.netlink()?;

    let mac: MacAddr = "02:00:5e:00:53:01".parse()?;
    nla.veth_add(&Veth::new("x0", "x1").mac(mac)).await?;
    assert_eq!(nla.link_mac("x0").await?, mac);
    let other: MacAddr = "02:00:5e:00:53:02".parse()?;
    nla.link_set_mac("x0", other).await?;
    assert_eq!(nla.link("x0").await?.mac, Some(other));

    nla.link_set_mtu("x0", 1280).await?;
    assert_eq!(nla.link("x0").await?.mtu, Some(1280));
    nla.link_set_up("x0").await?;
    assert!(nla.link("x0").await?.up);
    nla.link_set_down("x0").await?;
    assert!(!nla.link("x0").await?.up);

    nla.link_set_name("x0", "renamed0").await?;
    let renamed = nla.link("renamed0").await?;
    assert_eq!(nla.link_by_index(renamed.index).await?.name, "renamed0");
    assert!(nla.link("x0").await.expect_err("old name").is_not_found());

    let err = nla
        .veth_add(&Veth::new("renamed0", "x9"))
        .await
        .expect_err("name taken");
    assert!(err.is_exists(), "{err}");

    // Move x1 to b, and back to a via a handle to a's namespace.
    nla.link_set_netns("x1", &b).await?;
    assert!(nla.link("x1").await.expect_err("moved away").is_not_found());
    nlb.link("x1").await?;
    let names: Vec<String> = nlb.links().await?.into_iter().map(|l| l.name).collect();
    assert_eq!(names, ["lo", "x1"]);
    nlb.link_set_netns("x1", &NetNs::open(a.name())?).await?;
    nla.link("x1").await?;

    // Deleting one end of a veth removes both.
    nla.link_del("renamed0").await?;
    assert!(
        nla.link("x1")
            .await
            .expect_err("peer gone too")
            .is_not_found()
    );
    assert!(
        nla.link_del("renamed0")
            .await
            .expect_err("gone")
            .is_not_found()
    );

    let err = nla.link_set_up("no-such-link").await.expect_err("missing");
    assert!(err.is_not_found(), "{err}");
    assert!(nla.link("this-name-is-too-long").await.is_err());
    Ok(())
}
