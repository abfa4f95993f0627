//! serval-cni as the first plugin of a conflist with Debian's reference plugins `tuning` and
//! `portmap` after it, driven by this crate's runtime side exactly as a container runtime
//! drives a conflist (root).

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::symlink;
use std::process::Command;

use common::*;
use serde_json::json;
use serval_cni::runtime::{Conflist, Runtime, RuntimeConf, RuntimeError};
use serval_sys::testing::NetNsGuard;

const PORTMAP: &str = "/usr/lib/cni/portmap";
const TUNING: &str = "/usr/lib/cni/tuning";

fn have_reference_plugins(test: &str) -> bool {
    let ok = std::path::Path::new(PORTMAP).exists() && std::path::Path::new(TUNING).exists();
    if !ok {
        eprintln!(
            "skipping {test}: {PORTMAP} or {TUNING} missing (install containernetworking-plugins)"
        );
    }
    ok
}

/// `iptables -t nat -S` inside the node namespace.
fn nat_rules(world: &World) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            world.node_ns.name(),
            "iptables",
            "-w",
            "-t",
            "nat",
            "-S",
        ])
        .output()
        .expect("run iptables");
    assert!(
        out.status.success(),
        "iptables failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A CNI_PATH holding `serval` (this crate's binary, under its conflist type name) and the
/// reference plugins' directory after it.
fn runtime(world: &World) -> Runtime {
    let bin = world.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    symlink(BIN, bin.join("serval")).unwrap();
    Runtime::new(vec![bin, "/usr/lib/cni".into()])
        .in_netns(world.node_ns.path())
        .with_cache_dir(world.dir.path().join("results"))
}

fn conflist(world: &World, v6: bool, tuning: serde_json::Value) -> Conflist {
    let text = json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "plugins": [
            world.conf("1.0.0", true, v6),
            tuning,
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
        ]
    });
    Conflist::parse(&text.to_string(), std::path::Path::new("test.conflist")).expect("conflist")
}

/// ADD, CHECK, DEL of serval + tuning + portmap for a v4 or dual-stack pod.
async fn chained(test: &str, v6: bool) {
    if !root(test) || !have_reference_plugins(test) {
        return;
    }
    let world = World::new(vec![
        pool("p4", "10.84.0.0/16", 26),
        pool("p6", "fd00:84::/112", 122),
    ])
    .await;
    world.pod("web", &[("app", "web")]).await;
    let pod_ns = NetNsGuard::new("svcni-chain").unwrap();
    let rt = runtime(&world);
    let list = conflist(
        &world,
        v6,
        json!({"type": "tuning", "sysctl": {"net.core.somaxconn": "512", "net.ipv4.conf.eth0.arp_ignore": "1"}}),
    );
    let netns = pod_ns.path().display().to_string();
    let mut conf = RuntimeConf::for_pod("c-chain", &netns, "eth0", "default", "web");
    conf.capability_args.insert(
        "portMappings".into(),
        json!([{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]),
    );

    let result = rt
        .add(&list, &conf)
        .await
        .unwrap_or_else(|e| panic!("ADD: {e}\nlog:\n{}", world.log()));
    // serval's result went through tuning and portmap; tuning's sysctls are set in the pod.
    assert_eq!(result["cniVersion"], "1.0.0");
    assert_eq!(
        result_ips(&result).len(),
        if v6 { 2 } else { 1 },
        "{result}"
    );
    assert_eq!(
        result["interfaces"][0]["name"],
        serval_cni::host_iface_name("default", "web")
    );
    let pod = pod_ns.netlink().unwrap();
    assert_eq!(sysctl(&pod_ns, "net/core/somaxconn"), "512");
    assert_eq!(sysctl(&pod_ns, "net/ipv4/conf/eth0/arp_ignore"), "1");

    // portmap's DNAT is in place and works: host port 18080 on the node reaches the pod.
    let rules = nat_rules(&world);
    assert!(rules.contains("-N CNI-HOSTPORT-DNAT"), "{rules}");
    assert!(rules.contains("--dport 18080"), "{rules}");
    let pod_v4 = result_ips(&result)
        .into_iter()
        .find(|n| n.addr().is_ipv4())
        .unwrap();
    let listener = serve_on(
        &pod_ns,
        SocketAddr::new(pod_v4.addr(), 8080),
        "via-hostport",
    );
    let got = fetch(&world.node_ns, format!("{HOST_V4}:18080").parse().unwrap());
    assert_eq!(
        got.as_deref(),
        Ok("via-hostport"),
        "pod {pod_v4}; NAT rules:\n{rules}"
    );
    listener.join().unwrap();
    if v6 {
        let pod_v6 = result_ips(&result)
            .into_iter()
            .find(|n| n.addr().is_ipv6())
            .unwrap();
        let listener = serve_on(
            &pod_ns,
            SocketAddr::new(pod_v6.addr(), 8080),
            "via-hostport-v6",
        );
        let got = fetch(
            &world.node_ns,
            format!("[{HOST_V6}]:18080").parse().unwrap(),
        );
        assert_eq!(got.as_deref(), Ok("via-hostport-v6"), "pod {pod_v6}");
        listener.join().unwrap();
    }

    // CHECK runs the plugins in order with the cached ADD result. Without portmap: Debian's
    // portmap 1.1.1 CHECK also looks for its IPv4 rules in ip6tables (whichever the family)
    // and so always fails where ip6tables works.
    let mut without_portmap = list.clone();
    without_portmap.plugins.truncate(2);
    rt.check(&without_portmap, &conf, None)
        .await
        .unwrap_or_else(|e| panic!("CHECK: {e}\nlog:\n{}", world.log()));
    // The CHECK really looks: with a pod address gone, serval's CHECK fails and says so.
    let first = result_ips(&result)[0];
    pod.addr_del("eth0", first).await.unwrap();
    let err = rt
        .check(&without_portmap, &conf, None)
        .await
        .expect_err("CHECK must notice");
    assert!(err.to_string().contains(&first.to_string()), "{err}");
    pod.addr_replace("eth0", first).await.unwrap();

    // DEL in reverse order: the DNAT rules and serval's pieces are gone.
    rt.del(&list, &conf, None)
        .await
        .unwrap_or_else(|e| panic!("DEL: {e}\nlog:\n{}", world.log()));
    let rules = nat_rules(&world);
    assert!(!rules.contains("--dport 18080"), "{rules}");
    assert!(
        !rules.contains("CNI-DN-"),
        "per-container chain left: {rules}"
    );
    assert!(pod.link("eth0").await.is_err());
    let node = world.node_netlink();
    assert!(
        node.link(&serval_cni::host_iface_name("default", "web"))
            .await
            .is_err()
    );
    let ipam = serval_ipam::Ipam::new(world.client.store().clone());
    assert!(ipam.handles().await.unwrap().is_empty());
    // A second DEL (no cached result any more) succeeds.
    rt.del(&list, &conf, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_with_tuning_and_portmap_ipv4() {
    chained("chained_with_tuning_and_portmap_ipv4", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_with_tuning_and_portmap_dual_stack() {
    chained("chained_with_tuning_and_portmap_dual_stack", true).await;
}

/// A failing later plugin makes the runtime DEL the whole list: nothing of serval's ADD stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_chain_add_is_cleaned_up() {
    if !root("failed_chain_add_is_cleaned_up")
        || !have_reference_plugins("failed_chain_add_is_cleaned_up")
    {
        return;
    }
    let world = World::new(vec![
        pool("p4", "10.85.0.0/16", 26),
        pool("p6", "fd00:85::/112", 122),
    ])
    .await;
    let pod_ns = NetNsGuard::new("svcni-chfail").unwrap();
    let rt = runtime(&world);
    let list = conflist(
        &world,
        true,
        json!({"type": "tuning", "sysctl": {"net.no.such.sysctl": "1"}}),
    );
    let conf = RuntimeConf::for_pod(
        "c-bad",
        &pod_ns.path().display().to_string(),
        "eth0",
        "default",
        "bad",
    );
    let err = rt.add(&list, &conf).await.expect_err("tuning must fail");
    assert!(
        matches!(&err, RuntimeError::Plugin { plugin, command: "ADD", .. } if plugin == "tuning"),
        "{err:?}"
    );
    let ipam = serval_ipam::Ipam::new(world.client.store().clone());
    assert!(ipam.handles().await.unwrap().is_empty(), "addresses leaked");
    assert!(pod_ns.netlink().unwrap().link("eth0").await.is_err());
    let (weps, _) = world
        .client
        .list(serval_model::Kind::WorkloadEndpoint, None)
        .await
        .unwrap();
    assert!(weps.is_empty());
}

/// A plugin that is not in CNI_PATH is named in the error.
#[tokio::test]
async fn missing_plugin_is_named() {
    let list = Conflist::parse(
        r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"nope-plugin"}]}"#,
        std::path::Path::new("x"),
    )
    .unwrap();
    let err = Runtime::new(vec!["/nonexistent".into()])
        .add(
            &list,
            &RuntimeConf::for_pod("c", "/run/netns/x", "eth0", "default", "p"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::PluginNotFound { .. }), "{err}");
    assert!(err.to_string().contains("nope-plugin"));
}

/// Like [`serve`], on a fixed address, returning the server thread.
fn serve_on(
    ns: &serval_sys::NetNs,
    at: SocketAddr,
    reply: &'static str,
) -> std::thread::JoinHandle<()> {
    use std::io::Write;
    let listener = ns
        .run(move || std::net::TcpListener::bind(at))
        .expect("enter netns")
        .unwrap_or_else(|e| panic!("bind {at}: {e}"));
    std::thread::spawn(move || {
        if let Some(Ok(mut conn)) = listener.incoming().next() {
            let _ = conn.write_all(reply.as_bytes());
        }
    })
}

/// A plugin that hangs is killed after the runtime's timeout and named in the error.
#[tokio::test]
async fn hanging_plugin_times_out() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("sleeper");
    std::fs::write(&plugin, "#!/bin/sh\nexec sleep 30\n").unwrap();
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let list = Conflist::parse(
        r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"sleeper"}]}"#,
        std::path::Path::new("x"),
    )
    .unwrap();
    let err = Runtime::new(vec![dir.path().to_path_buf()])
        .with_timeout(std::time::Duration::from_millis(300))
        .check(
            &list,
            &RuntimeConf::for_pod("c", "/run/netns/x", "eth0", "default", "p"),
            Some(&json!({})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RuntimeError::Timeout { plugin, .. } if plugin == "sleeper"),
        "{err}"
    );
}

/// VERSION through the runtime, for serval-cni and (when installed) a reference plugin.
#[tokio::test]
async fn runtime_asks_plugin_versions() {
    let dir = tempfile::tempdir().unwrap();
    symlink(BIN, dir.path().join("serval")).unwrap();
    let rt = Runtime::new(vec![dir.path().to_path_buf(), "/usr/lib/cni".into()]);
    let v = rt.version("serval", "1.1.0").await.unwrap();
    assert_eq!(v.cni_version, "1.1.0");
    assert!(v.supported_versions.contains(&"1.0.0".to_string()));
    if std::path::Path::new(PORTMAP).exists() {
        let v = rt.version("portmap", "1.0.0").await.unwrap();
        assert!(v.supported_versions.contains(&"1.0.0".to_string()));
    }
}
