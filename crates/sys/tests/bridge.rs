//! A Linux bridge with two veth ports joins two namespaces on one L2 segment (the lab's
//! underlay).

mod common;

use common::{ip, net, tcp_blocked, tcp_check};
use serval_sys::{
    Veth,
    testing::{NetNsGuard, require_root},
};

#[tokio::test]
async fn bridge_with_two_veths_switches_traffic() -> anyhow::Result<()> {
    if !require_root("bridge_with_two_veths_switches_traffic") {
        return Ok(());
    }
    let hub = NetNsGuard::new("svt-br-hub")?;
    let a = NetNsGuard::new("svt-br-a")?;
    let b = NetNsGuard::new("svt-br-b")?;
    let nl = hub.netlink()?;

    let br = nl.bridge_add("br0").await?;
    assert_eq!(nl.link("br0").await?.kind.as_deref(), Some("bridge"));
    assert!(nl.bridge_add("br0").await.expect_err("exists").is_exists());

    for (port, pod, addr) in [("p1", &a, "172.30.0.1/24"), ("p2", &b, "172.30.0.2/24")] {
        nl.veth_add(&Veth::new(port, "eth0").peer_netns(pod))
            .await?;
        nl.link_set_controller(port, "br0").await?;
        nl.link_set_up(port).await?;
        let pod_nl = pod.netlink()?;
        pod_nl.addr_add("eth0", net(addr)).await?;
        pod_nl.link_set_up("eth0").await?;
        pod_nl.link_set_up("lo").await?;
    }
    let mut ports: Vec<String> = nl
        .bridge_ports("br0")
        .await?
        .into_iter()
        .map(|l| l.name)
        .collect();
    ports.sort();
    assert_eq!(ports, ["p1", "p2"]);
    assert_eq!(nl.link("p1").await?.controller, Some(br));

    tcp_check(&a, &b, ip("172.30.0.2"))?;
    tcp_check(&b, &a, ip("172.30.0.1"))?;

    // Detached from the bridge, p2 no longer forwards: the segment is split.
    nl.link_set_nocontroller("p2").await?;
    assert_eq!(nl.link("p2").await?.controller, None);
    assert_eq!(nl.bridge_ports("br0").await?.len(), 1);
    assert!(
        tcp_blocked(&a, &b, ip("172.30.0.2"), 1000)?,
        "p2 left the bridge"
    );
    Ok(())
}
