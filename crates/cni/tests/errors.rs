//! The spec's error JSON from the real binary: bad configuration, missing environment, an
//! exhausted pool (with nothing leaked); and VERSION.

mod common;

use common::*;
use serde_json::json;
use serval_sys::testing::NetNsGuard;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configs_and_env_get_spec_errors() {
    if !root("bad_configs_and_env_get_spec_errors") {
        return;
    }
    let world = World::new(vec![pool("p4", "10.81.0.0/16", 26)]).await;
    let pod_ns = NetNsGuard::new("svcni-err").unwrap();
    let netns = pod_ns.path().display().to_string();
    let env = |cmd: &'static str| -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", "c-err".to_string()),
            ("CNI_NETNS", netns.clone()),
            ("CNI_IFNAME", "eth0".to_string()),
            (
                "CNI_ARGS",
                "K8S_POD_NAMESPACE=default;K8S_POD_NAME=e".to_string(),
            ),
            ("CNI_PATH", "/usr/lib/cni".to_string()),
        ]
    };
    let run = |env: &[(&'static str, String)], stdin: &[u8]| {
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        world.invoke(&pairs, stdin)
    };

    // Malformed JSON: 6 (decode failure).
    let e = run(&env("ADD"), b"{\"cniVersion\": \"1.0.0\", ").err(6);
    assert!(e["msg"].as_str().unwrap().contains("not valid JSON"), "{e}");
    // Missing fields: 7 (invalid network config), naming the field.
    let mut conf = world.conf("1.0.0", true, false);
    conf.as_object_mut().unwrap().remove("datastore");
    let e = run(&env("ADD"), conf.to_string().as_bytes()).err(7);
    assert!(e["msg"].as_str().unwrap().contains("datastore"), "{e}");
    let mut conf = world.conf("1.0.0", true, false);
    conf.as_object_mut().unwrap().remove("cniVersion");
    run(&env("ADD"), conf.to_string().as_bytes()).err(7);
    // Unsupported version: 1, listing what is supported.
    let conf = world.conf("2.0.0", true, false);
    let e = run(&env("ADD"), conf.to_string().as_bytes()).err(1);
    assert!(e["msg"].as_str().unwrap().contains("1.0.0"), "{e}");
    // A pool the config names that does not exist: 7.
    let mut conf = world.conf("1.0.0", true, false);
    conf["ipam"]["ipv4_pools"] = json!(["no-such-pool"]);
    let e = run(&env("ADD"), conf.to_string().as_bytes()).err(7);
    assert!(e["msg"].as_str().unwrap().contains("no-such-pool"), "{e}");
    // A netns that does not exist: 3 (unknown container), nothing allocated.
    let conf = world.conf("1.0.0", true, false);
    let mut gone = env("ADD");
    gone[2].1 = "/run/netns/svcni-definitely-not-there".into();
    run(&gone, conf.to_string().as_bytes()).err(3);
    let ipam = serval_ipam::Ipam::new(world.client.store().clone());
    assert!(ipam.handle("c-err").await.unwrap().is_none());

    // Missing environment: 4, naming the variable.
    for missing in [
        "CNI_COMMAND",
        "CNI_CONTAINERID",
        "CNI_NETNS",
        "CNI_IFNAME",
        "CNI_PATH",
    ] {
        let e: Vec<_> = env("ADD")
            .into_iter()
            .filter(|(k, _)| *k != missing)
            .collect();
        let out = run(&e, conf.to_string().as_bytes()).err(4);
        assert!(out["msg"].as_str().unwrap().contains(missing), "{out}");
    }
    let mut e = env("ADD");
    e[0].1 = "FROB".into();
    run(&e, conf.to_string().as_bytes()).err(4);
    // ADD without the pod in CNI_ARGS: 4.
    let e: Vec<_> = env("ADD")
        .into_iter()
        .filter(|(k, _)| *k != "CNI_ARGS")
        .collect();
    run(&e, conf.to_string().as_bytes()).err(4);
    // Error output carries the configuration's version.
    let old = world.conf("0.4.0", true, false);
    let e: Vec<_> = env("ADD")
        .into_iter()
        .filter(|(k, _)| *k != "CNI_IFNAME")
        .collect();
    assert_eq!(
        run(&e, old.to_string().as_bytes()).err(4)["cniVersion"],
        "0.4.0"
    );
    // Nothing was left behind by any of these.
    let node = world.node_netlink();
    let links = node.links().await.unwrap();
    assert!(links.iter().all(|l| !l.name.starts_with("sv")), "{links:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_pool_is_an_error_naming_the_pool_and_leaks_nothing() {
    if !root("exhausted_pool_is_an_error_naming_the_pool_and_leaks_nothing") {
        return;
    }
    let world = World::new(vec![pool("tiny", "10.82.0.0/30", 30)]).await;
    let conf = world.conf("1.0.0", true, false);
    let mut pods = Vec::new();
    let mut ok = Vec::new();
    let mut failed = None;
    for i in 0..5 {
        let ns = NetNsGuard::new("svcni-ex").unwrap();
        let out = world.cni("ADD", &format!("c{i}"), ns.path(), &format!("p{i}"), &conf);
        if out.code == 0 {
            ok.push(result_ips(&out.json())[0]);
        } else if failed.is_none() {
            failed = Some((i, out));
        }
        pods.push(ns);
    }
    assert_eq!(ok.len(), 4, "a /30 block holds 4 addresses: {ok:?}");
    let (i, out) = failed.expect("the fifth ADD fails");
    assert_eq!(i, 4);
    let e = out.err(101);
    assert!(
        e["msg"].as_str().unwrap().contains("tiny"),
        "msg must name the pool: {e}"
    );
    // No leak: the failed container holds nothing and has no interfaces.
    let ipam = serval_ipam::Ipam::new(world.client.store().clone());
    assert!(ipam.handle("c4").await.unwrap().is_none());
    let node = world.node_netlink();
    assert!(
        node.link(&serval_cni::host_iface_name("default", "p4"))
            .await
            .is_err()
    );
    let pod = pods[4].netlink().unwrap();
    assert!(pod.link("eth0").await.is_err());
    // Releasing one makes room again.
    world.cni("DEL", "c0", pods[0].path(), "p0", &conf).ok();
    let again = world.cni("ADD", "c4", pods[4].path(), "p4", &conf).ok();
    assert_eq!(result_ips(&again), vec![ok[0]]);
    for (i, ns) in pods.iter().enumerate().skip(1) {
        world
            .cni("DEL", &format!("c{i}"), ns.path(), &format!("p{i}"), &conf)
            .ok();
    }
    assert!(ipam.handles().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_after_allocation_releases_everything() {
    if !root("failure_after_allocation_releases_everything") {
        return;
    }
    let world = World::new(vec![pool("p4", "10.83.0.0/16", 26)]).await;
    let conf = world.conf("1.0.0", true, false);
    let pod_ns = NetNsGuard::new("svcni-fail").unwrap();
    // Something else already occupies eth0 in the pod: creating the veth fails after IPAM
    // gave out an address.
    let pod = pod_ns.netlink().unwrap();
    pod.veth_add(&serval_sys::Veth::new("eth0", "other0"))
        .await
        .unwrap();
    let out = world.cni("ADD", "c-fail", pod_ns.path(), "f", &conf);
    let e = out.err(104);
    assert!(e["msg"].as_str().unwrap().contains("veth"), "{e}");
    let ipam = serval_ipam::Ipam::new(world.client.store().clone());
    assert!(
        ipam.handle("c-fail").await.unwrap().is_none(),
        "address leaked"
    );
    assert!(ipam.handles().await.unwrap().is_empty());
    let node = world.node_netlink();
    assert!(
        node.link(&serval_cni::host_iface_name("default", "f"))
            .await
            .is_err_and(|e| e.is_not_found())
    );
    // The pod's own interface was not ours and stays.
    assert!(pod.link("eth0").await.is_ok());
    let (weps, _) = world
        .client
        .list(serval_model::Kind::WorkloadEndpoint, None)
        .await
        .unwrap();
    assert!(weps.is_empty());
}

#[test]
fn version_lists_supported_versions() {
    let out = invoke_in(
        None,
        &[("CNI_COMMAND", "VERSION")],
        b"{\"cniVersion\":\"1.0.0\"}",
    );
    let v = out.ok();
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(
        v["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    // With no stdin at all, it still answers.
    let out = invoke_in(None, &[("CNI_COMMAND", "VERSION")], b"");
    assert_eq!(out.ok()["supportedVersions"].as_array().unwrap().len(), 5);
}
