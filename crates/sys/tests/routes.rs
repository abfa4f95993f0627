//! Routes: add / replace / list by protocol / delete, device-scoped, on-link and link-local
//! defaults, blackholes.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{ip, net};
use serval_sys::{
    IpFamily, Netlink, RTPROT_SERVAL, RTPROT_STATIC, Route, RouteKind, Veth,
    testing::{NetNsGuard, require_root},
};

async fn router(prefix: &str) -> anyhow::Result<(NetNsGuard, Netlink, u32)> {
    let ns = NetNsGuard::new(prefix)?;
    let nl = ns.netlink()?;
    nl.veth_add(&Veth::new("r0", "r1")).await?;
    nl.addr_add("r0", net("192.168.50.1/24")).await?;
    nl.addr_add("r0", net("fd50::1/64")).await?;
    for dev in ["lo", "r0", "r1"] {
        nl.link_set_up(dev).await?;
    }
    let r0 = nl.link_index("r0").await?;
    Ok((ns, nl, r0))
}

#[tokio::test]
async fn routes_add_list_by_protocol_replace_delete() -> anyhow::Result<()> {
    if !require_root("routes_add_list_by_protocol_replace_delete") {
        return Ok(());
    }
    let (ns, nl, r0) = router("svt-route").await?;

    let via = Route::new(net("10.0.0.0/26")).via(ip("192.168.50.2"));
    let dev_scoped = Route::new(net("10.0.1.5/32")).dev(r0);
    let pod_default = Route::new(net("0.0.0.0/0"))
        .via(ip("169.254.1.1"))
        .dev(r0)
        .onlink();
    let not_ours = Route::new(net("10.0.2.0/24"))
        .via(ip("192.168.50.2"))
        .protocol(RTPROT_STATIC);
    let via6 = Route::new(net("fd00:1::/64")).via(ip("fd50::2"));
    let default6 = Route::new(net("::/0")).via(ip("fe80::1")).dev(r0);
    for route in [&via, &dev_scoped, &pod_default, &not_ours, &via6, &default6] {
        nl.route_add(route).await?;
    }

    let ours = nl.routes(IpFamily::V4, Some(RTPROT_SERVAL)).await?;
    assert_eq!(ours.len(), 3, "{ours:#?}");
    let got_via = ours
        .iter()
        .find(|r| r.dst == net("10.0.0.0/26"))
        .expect("via route listed");
    assert_eq!(got_via.gateway, Some(ip("192.168.50.2")));
    assert_eq!(got_via.oif, Some(r0));
    let got_dev = ours
        .iter()
        .find(|r| r.dst == net("10.0.1.5/32"))
        .expect("dev route listed");
    assert_eq!(
        (got_dev.gateway, got_dev.oif, got_dev.scope),
        (None, Some(r0), Some(253))
    );
    let got_default = ours
        .iter()
        .find(|r| r.dst == net("0.0.0.0/0"))
        .expect("default listed");
    assert!(got_default.onlink);
    assert_eq!(got_default.gateway, Some(ip("169.254.1.1")));

    let all4 = nl.routes(IpFamily::V4, None).await?;
    assert!(
        all4.iter()
            .any(|r| r.dst == net("10.0.2.0/24") && r.protocol == RTPROT_STATIC)
    );
    assert!(
        all4.iter().any(|r| r.dst == net("192.168.50.0/24")),
        "connected route: {all4:#?}"
    );

    let ours6 = nl.routes(IpFamily::V6, Some(RTPROT_SERVAL)).await?;
    assert_eq!(ours6.len(), 2, "{ours6:#?}");
    assert!(
        ours6
            .iter()
            .any(|r| r.dst == net("::/0") && r.gateway == Some(ip("fe80::1")) && r.oif == Some(r0))
    );

    let err = nl.route_add(&via).await.expect_err("duplicate");
    assert!(err.is_exists(), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "adding route 10.0.0.0/26 via 192.168.50.2 proto 80 in netns {}: File exists (os error 17)",
            ns.name()
        )
    );

    let moved = Route::new(net("10.0.0.0/26")).via(ip("192.168.50.3"));
    nl.route_replace(&moved).await?;
    let ours = nl.routes(IpFamily::V4, Some(RTPROT_SERVAL)).await?;
    let replaced: Vec<_> = ours
        .iter()
        .filter(|r| r.dst == net("10.0.0.0/26"))
        .collect();
    assert_eq!(replaced.len(), 1);
    assert_eq!(replaced[0].gateway, Some(ip("192.168.50.3")));

    // Deleting what we listed removes exactly our routes.
    for route in nl.routes(IpFamily::V4, Some(RTPROT_SERVAL)).await? {
        nl.route_del(&route).await?;
    }
    for route in nl.routes(IpFamily::V6, Some(RTPROT_SERVAL)).await? {
        nl.route_del(&route).await?;
    }
    assert!(
        nl.routes(IpFamily::V4, Some(RTPROT_SERVAL))
            .await?
            .is_empty()
    );
    assert!(
        nl.routes(IpFamily::V6, Some(RTPROT_SERVAL))
            .await?
            .is_empty()
    );
    assert!(
        nl.routes(IpFamily::V4, None)
            .await?
            .iter()
            .any(|r| r.dst == net("10.0.2.0/24"))
    );

    let err = nl.route_del(&via).await.expect_err("already gone");
    assert!(err.is_not_found(), "{err}");
    let err = nl.route_del(&via6).await.expect_err("already gone");
    assert!(err.is_not_found(), "{err}");
    // Our protocol number protects routes we do not own.
    let err = nl
        .route_del(&Route::new(net("10.0.2.0/24")).via(ip("192.168.50.2")))
        .await
        .expect_err("not ours");
    assert!(err.is_not_found(), "{err}");
    Ok(())
}

#[tokio::test]
async fn blackhole_routes_drop_traffic() -> anyhow::Result<()> {
    if !require_root("blackhole_routes_drop_traffic") {
        return Ok(());
    }
    let (ns, nl, _r0) = router("svt-blackhole").await?;
    // Without the blackhole the block would follow a default route out of r0.
    nl.route_add(&Route::new(net("0.0.0.0/0")).via(ip("192.168.50.2")))
        .await?;
    let block4 = Route::new(net("10.9.0.0/26")).blackhole();
    let block6 = Route::new(net("fd09::/122")).blackhole();
    nl.route_add(&block4).await?;
    nl.route_add(&block6).await?;

    let ours = nl.routes(IpFamily::V4, Some(RTPROT_SERVAL)).await?;
    let hole = ours
        .iter()
        .find(|r| r.dst == net("10.9.0.0/26"))
        .expect("listed");
    assert_eq!(hole.kind, RouteKind::Blackhole);
    let ours6 = nl.routes(IpFamily::V6, Some(RTPROT_SERVAL)).await?;
    assert!(
        ours6
            .iter()
            .any(|r| r.dst == net("fd09::/122") && r.kind == RouteKind::Blackhole),
        "{ours6:#?}"
    );

    // The kernel refuses to route to a blackhole at connect time.
    let refused = ns.run(|| {
        TcpStream::connect_timeout(&SocketAddr::new(ip("10.9.0.1"), 80), Duration::from_secs(2))
    })?;
    assert!(refused.is_err(), "connect into a blackhole must fail");
    let refused6 = ns.run(|| {
        TcpStream::connect_timeout(&SocketAddr::new(ip("fd09::1"), 80), Duration::from_secs(2))
    })?;
    assert!(refused6.is_err(), "connect into a blackhole must fail");

    nl.route_del(&block4).await?;
    nl.route_del(&block6).await?;
    assert!(
        nl.route_del(&block4)
            .await
            .expect_err("gone")
            .is_not_found()
    );
    Ok(())
}
