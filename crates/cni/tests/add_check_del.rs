//! ADD / CHECK / DEL of the real binary for IPv4, IPv6 and dual-stack pods (root): addresses,
//! routes, host routes, sysctls, the endpoint and IPAM records, and TCP both ways.

mod common;

use std::net::IpAddr;

use common::*;
use serval_model::{Kind, Resource, ResourceKey};
use serval_sys::testing::NetNsGuard;
use serval_sys::{IpFamily, RTPROT_SERVAL};

async fn add_check_del(test: &str, v4: bool, v6: bool) {
    if !root(test) {
        return;
    }
    let world = World::new(vec![
        pool("p4", "10.77.0.0/16", 26),
        pool("p6", "fd00:77::/112", 122),
    ])
    .await;
    world.pod("web", &[("app", "web")]).await;
    let pod_ns = NetNsGuard::new("svcni-pod").expect("pod netns");
    let mut conf = world.conf("1.0.0", v4, v6);
    conf["dns"] =
        serde_json::json!({"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]});
    let container = "c-web-1";

    // ADD
    let result = world
        .cni("ADD", container, pod_ns.path(), "web", &conf)
        .ok();
    assert_eq!(result["cniVersion"], "1.0.0");
    let host_iface = serval_cni::host_iface_name("default", "web");
    assert_eq!(result["interfaces"][0]["name"], host_iface.as_str());
    assert_eq!(result["interfaces"][0]["mac"], "ee:ee:ee:ee:ee:ee");
    assert!(result["interfaces"][0].get("sandbox").is_none());
    assert_eq!(result["interfaces"][1]["name"], "eth0");
    assert_eq!(
        result["interfaces"][1]["sandbox"],
        pod_ns.path().display().to_string()
    );
    let pod_mac = result["interfaces"][1]["mac"]
        .as_str()
        .expect("pod mac")
        .to_string();
    let ips = result_ips(&result);
    assert_eq!(ips.len(), usize::from(v4) + usize::from(v6), "{result}");
    for (i, ip) in ips.iter().enumerate() {
        assert_eq!(ip.prefix_len(), if ip.addr().is_ipv4() { 32 } else { 128 });
        assert_eq!(result["ips"][i]["interface"], 1);
        let gw = if ip.addr().is_ipv4() {
            "169.254.1.1"
        } else {
            "fe80::1"
        };
        assert_eq!(result["ips"][i]["gateway"], gw);
        let pool: ipnet::IpNet = if ip.addr().is_ipv4() {
            "10.77.0.0/16"
        } else {
            "fd00:77::/112"
        }
        .parse()
        .unwrap();
        assert!(pool.contains(&ip.addr()), "{ip} not from {pool}");
    }
    assert_eq!(result["routes"].as_array().unwrap().len(), ips.len());
    assert_eq!(
        result["dns"]["nameservers"][0], "10.96.0.10",
        "the config's dns comes back"
    );

    // Logs went to the configured file (stdout carried only the result, parsed above).
    let log = world.log();
    assert!(
        log.contains("CNI invocation") && log.contains("assigned addresses"),
        "log:\n{log}"
    );

    // The pod side.
    let pod = pod_ns.netlink().expect("pod netlink");
    let eth0 = pod.link("eth0").await.expect("eth0 in pod");
    assert!(eth0.up);
    assert_eq!(eth0.mtu, Some(1400));
    assert_eq!(eth0.mac.unwrap().to_string(), pod_mac);
    let addrs: Vec<_> = pod
        .addrs(Some("eth0"))
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.net)
        .collect();
    for ip in &ips {
        assert!(addrs.contains(ip), "{ip} missing in pod: {addrs:?}");
    }
    if v4 {
        let routes = pod.routes(IpFamily::V4, None).await.unwrap();
        let default = routes
            .iter()
            .find(|r| r.dst.prefix_len() == 0)
            .expect("v4 default route");
        assert_eq!(default.gateway, Some("169.254.1.1".parse().unwrap()));
        assert_eq!(default.oif, Some(eth0.index));
    }
    if v6 {
        let routes = pod.routes(IpFamily::V6, None).await.unwrap();
        let default = routes
            .iter()
            .find(|r| r.dst.prefix_len() == 0)
            .expect("v6 default route");
        assert_eq!(default.gateway, Some("fe80::1".parse().unwrap()));
        assert_eq!(default.oif, Some(eth0.index));
    }

    // The host side.
    let node = world.node_netlink();
    let host = node.link(&host_iface).await.expect("host side");
    assert!(host.up);
    assert_eq!(host.mtu, Some(1400));
    for ip in &ips {
        let fam = if ip.addr().is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        };
        let routes = node.routes(fam, Some(RTPROT_SERVAL)).await.unwrap();
        let r = routes
            .iter()
            .find(|r| r.dst == *ip)
            .unwrap_or_else(|| panic!("no host route to {ip}: {routes:?}"));
        assert_eq!(r.oif, Some(host.index));
        assert_eq!(r.gateway, None);
        if ip.addr().is_ipv4() {
            assert_eq!(r.scope, Some(253), "IPv4 host route must be scope link");
        }
    }
    if v4 {
        assert_eq!(
            sysctl(
                &world.node_ns,
                &format!("net/ipv4/conf/{host_iface}/proxy_arp")
            ),
            "1"
        );
        assert_eq!(sysctl(&world.node_ns, "net/ipv4/ip_forward"), "1");
    }
    if v6 {
        assert_eq!(
            sysctl(
                &world.node_ns,
                &format!("net/ipv6/conf/{host_iface}/proxy_ndp")
            ),
            "1"
        );
        assert_eq!(sysctl(&world.node_ns, "net/ipv6/conf/all/forwarding"), "1");
    }

    // The endpoint and the allocation.
    let key = ResourceKey::new(
        Kind::WorkloadEndpoint,
        Some("default"),
        &format!("{NODE}-k8s-web-eth0"),
    );
    let Some(Resource::WorkloadEndpoint(wep)) = world.client.get(&key).await.unwrap() else {
        panic!("no endpoint {key}; log:\n{}", world.log());
    };
    assert_eq!(wep.spec.container_id, container);
    assert_eq!(wep.spec.node, NODE);
    assert_eq!(wep.spec.pod, "web");
    assert_eq!(wep.spec.endpoint, "eth0");
    assert_eq!(wep.spec.interface_name, host_iface);
    assert_eq!(wep.spec.mac.as_deref(), Some(pod_mac.as_str()));
    assert_eq!(wep.spec.ip_networks, ips);
    assert_eq!(
        wep.metadata.labels.get("app").map(String::as_str),
        Some("web")
    );
    assert_eq!(
        wep.metadata
            .labels
            .get("projectcalico.org/namespace")
            .map(String::as_str),
        Some("default")
    );
    assert_eq!(
        wep.metadata
            .labels
            .get("projectcalico.org/orchestrator")
            .map(String::as_str),
        Some("k8s")
    );
    assert_eq!(wep.spec.ports.len(), 1);
    assert_eq!(wep.spec.ports[0].name, "http");
    let ipam = serval_ipam::Ipam::new(world.client.store().clone());
    let handle = ipam.handle(container).await.unwrap().expect("IPAM handle");
    let mut held = handle.addrs();
    held.sort();
    let mut want: Vec<IpAddr> = ips.iter().map(|n| n.addr()).collect();
    want.sort();
    assert_eq!(held, want);

    // Connectivity, both ways, per family.
    for ip in &ips {
        let at = serve(&pod_ns, ip.addr(), "from-pod");
        assert_eq!(
            fetch(&world.node_ns, at).as_deref(),
            Ok("from-pod"),
            "host -> pod {at}"
        );
        let host_ip: IpAddr = if ip.addr().is_ipv4() {
            HOST_V4
        } else {
            HOST_V6
        }
        .parse()
        .unwrap();
        let at = serve(&world.node_ns, host_ip, "from-host");
        assert_eq!(
            fetch(&pod_ns, at).as_deref(),
            Ok("from-host"),
            "pod -> host {at}"
        );
    }

    // CHECK passes with the ADD result...
    let mut check_conf = conf.clone();
    check_conf["prevResult"] = result.clone();
    world
        .cni("CHECK", container, pod_ns.path(), "web", &check_conf)
        .ok();
    // ...and names what is wrong once something is.
    let first = ips[0];
    let fam = if first.addr().is_ipv4() {
        IpFamily::V4
    } else {
        IpFamily::V6
    };
    let route = node
        .routes(fam, Some(RTPROT_SERVAL))
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.dst == first)
        .unwrap();
    node.route_del(&route).await.expect("delete host route");
    let err = world
        .cni("CHECK", container, pod_ns.path(), "web", &check_conf)
        .err(105);
    let msg = err["msg"].as_str().unwrap();
    assert!(
        msg.contains(&first.to_string()) && msg.contains(&host_iface),
        "{msg}"
    );

    // DEL removes everything; a second DEL succeeds too.
    let mut del_conf = conf.clone();
    del_conf["prevResult"] = result.clone();
    for round in 0..2 {
        let out = world.cni("DEL", container, pod_ns.path(), "web", &del_conf);
        assert_eq!(
            out.code,
            0,
            "DEL round {round}: {out:?}\nlog:\n{}",
            world.log()
        );
        assert!(out.stdout.trim().is_empty(), "DEL prints nothing: {out:?}");
        assert!(
            node.link(&host_iface)
                .await
                .is_err_and(|e| e.is_not_found()),
            "host side still there"
        );
        assert!(
            pod.link("eth0").await.is_err_and(|e| e.is_not_found()),
            "eth0 still there"
        );
        assert!(
            world.client.get(&key).await.unwrap().is_none(),
            "endpoint still there"
        );
        assert!(
            ipam.handle(container).await.unwrap().is_none(),
            "addresses not released"
        );
        for fam in [IpFamily::V4, IpFamily::V6] {
            let left: Vec<_> = node.routes(fam, Some(RTPROT_SERVAL)).await.unwrap();
            assert!(left.is_empty(), "host routes left: {left:?}");
        }
    }
    // DEL without CNI_NETNS, and with a netns that no longer exists, succeeds as well.
    world
        .invoke(
            &[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", container),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", "/usr/lib/cni"),
            ],
            del_conf.to_string().as_bytes(),
        )
        .ok();
    world
        .cni(
            "DEL",
            container,
            std::path::Path::new("/run/netns/svcni-no-such-netns"),
            "web",
            &del_conf,
        )
        .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_add_check_del() {
    add_check_del("ipv4_add_check_del", true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_add_check_del() {
    add_check_del("ipv6_add_check_del", false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_add_check_del() {
    add_check_del("dual_stack_add_check_del", true, true).await;
}

/// Two pods on one node reach each other through the host (forwarding, host routes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_talk_through_the_node() {
    if !root("two_pods_talk_through_the_node") {
        return;
    }
    let world = World::new(vec![
        pool("p4", "10.78.0.0/16", 26),
        pool("p6", "fd00:78::/112", 122),
    ])
    .await;
    let conf = world.conf("1.0.0", true, true);
    let a_ns = NetNsGuard::new("svcni-a").unwrap();
    let b_ns = NetNsGuard::new("svcni-b").unwrap();
    let a = world.cni("ADD", "ca", a_ns.path(), "a", &conf).ok();
    let b = world.cni("ADD", "cb", b_ns.path(), "b", &conf).ok();
    assert_ne!(result_ips(&a), result_ips(&b));
    for ip in result_ips(&b) {
        let at = serve(&b_ns, ip.addr(), "b");
        assert_eq!(fetch(&a_ns, at).as_deref(), Ok("b"), "a -> b at {at}");
    }
    world.cni("DEL", "ca", a_ns.path(), "a", &conf).ok();
    world.cni("DEL", "cb", b_ns.path(), "b", &conf).ok();
}

/// A pod unknown to the datastore still gets wired (no labels); the result speaks 0.3.1 when
/// asked to (IPs carry "version").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_spec_versions_get_old_results() {
    if !root("old_spec_versions_get_old_results") {
        return;
    }
    let world = World::new(vec![pool("p4", "10.79.0.0/16", 26)]).await;
    let pod_ns = NetNsGuard::new("svcni-old").unwrap();
    let conf = world.conf("0.3.1", true, false);
    let r = world
        .cni("ADD", "c-old", pod_ns.path(), "ghost", &conf)
        .ok();
    assert_eq!(r["cniVersion"], "0.3.1");
    assert_eq!(r["ips"][0]["version"], "4");
    // CHECK did not exist before 0.4.0.
    let mut check = conf.clone();
    check["prevResult"] = r.clone();
    world
        .cni("CHECK", "c-old", pod_ns.path(), "ghost", &check)
        .err(1);
    world
        .cni("DEL", "c-old", pod_ns.path(), "ghost", &conf)
        .ok();
}

/// kubelet replaced the pod's sandbox: the old container's DEL releases only its own
/// addresses and leaves the new container's veth and endpoint alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn del_of_a_replaced_sandbox_keeps_the_new_one() {
    if !root("del_of_a_replaced_sandbox_keeps_the_new_one") {
        return;
    }
    let world = World::new(vec![pool("p4", "10.80.0.0/16", 26)]).await;
    let conf = world.conf("1.0.0", true, false);
    let old_ns = NetNsGuard::new("svcni-old").unwrap();
    let new_ns = NetNsGuard::new("svcni-new").unwrap();
    world.cni("ADD", "c-old", old_ns.path(), "web", &conf).ok();
    let new = world.cni("ADD", "c-new", new_ns.path(), "web", &conf).ok();
    world.cni("DEL", "c-old", old_ns.path(), "web", &conf).ok();

    let ipam = serval_ipam::Ipam::new(world.client.store().clone());
    assert!(ipam.handle("c-old").await.unwrap().is_none());
    assert!(ipam.handle("c-new").await.unwrap().is_some());
    let key = ResourceKey::new(
        Kind::WorkloadEndpoint,
        Some("default"),
        &format!("{NODE}-k8s-web-eth0"),
    );
    let Some(Resource::WorkloadEndpoint(wep)) = world.client.get(&key).await.unwrap() else {
        panic!("the new sandbox's endpoint is gone");
    };
    assert_eq!(wep.spec.container_id, "c-new");
    let ip = result_ips(&new)[0].addr();
    let at = serve(&new_ns, ip, "new");
    assert_eq!(fetch(&world.node_ns, at).as_deref(), Ok("new"));
    world.cni("DEL", "c-new", new_ns.path(), "web", &conf).ok();
    assert!(world.client.get(&key).await.unwrap().is_none());
}

/// The gateways resolve even without the static neighbour entries (flushed when something
/// changes the pod interface's MAC): fe80::1 because the host side owns it, 169.254.1.1 by
/// proxy ARP once the node has a route covering it (as Calico requires).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_resolve_without_static_neighbours() {
    if !root("gateways_resolve_without_static_neighbours") {
        return;
    }
    let world = World::new(vec![
        pool("p4", "10.76.0.0/16", 26),
        pool("p6", "fd00:76::/112", 122),
    ])
    .await;
    let conf = world.conf("1.0.0", true, true);
    let pod_ns = NetNsGuard::new("svcni-gw").unwrap();
    world.cni("ADD", "c-gw", pod_ns.path(), "gw", &conf).ok();
    let pod = pod_ns.netlink().unwrap();
    let neigh = pod.neighbours(Some("eth0")).await.unwrap();
    for gw in ["169.254.1.1", "fe80::1"] {
        let ip: IpAddr = gw.parse().unwrap();
        let n = neigh
            .iter()
            .find(|n| n.ip == ip)
            .unwrap_or_else(|| panic!("no neighbour {gw}: {neigh:?}"));
        assert!(n.permanent);
        assert_eq!(n.mac.unwrap().to_string(), "ee:ee:ee:ee:ee:ee");
        pod.neigh_del("eth0", ip).await.unwrap();
    }
    // IPv6: neighbour discovery for fe80::1 is answered by the host side.
    let at = serve(&world.node_ns, HOST_V6.parse().unwrap(), "v6");
    assert_eq!(fetch(&pod_ns, at).as_deref(), Ok("v6"));
    // IPv4: proxy ARP answers once the node routes 169.254.1.1 somewhere (here: default dev lo).
    let node = world.node_netlink();
    let lo = node.link_index("lo").await.unwrap();
    node.route_add(&serval_sys::Route::new("0.0.0.0/0".parse().unwrap()).dev(lo))
        .await
        .unwrap();
    let at = serve(&world.node_ns, HOST_V4.parse().unwrap(), "v4");
    assert_eq!(fetch(&pod_ns, at).as_deref(), Ok("v4"));
    let learned = pod.neighbours(Some("eth0")).await.unwrap();
    for gw in ["169.254.1.1", "fe80::1"] {
        let ip: IpAddr = gw.parse().unwrap();
        let n = learned
            .iter()
            .find(|n| n.ip == ip)
            .unwrap_or_else(|| panic!("{gw} not resolved: {learned:?}"));
        assert!(!n.permanent);
        assert_eq!(n.mac.unwrap().to_string(), "ee:ee:ee:ee:ee:ee");
    }
    world.cni("DEL", "c-gw", pod_ns.path(), "gw", &conf).ok();
}
