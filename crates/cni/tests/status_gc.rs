//! STATUS and GC (spec 1.1) of the real binary, directly and through the runtime (root).

mod common;

use common::*;
use serde_json::json;
use serval_cni::runtime::{Conflist, Runtime};
use serval_cni::spec::Attachment;
use serval_ipam::{AllocationAttrs, AssignRequest, Ipam, PoolSpec};
use serval_sys::testing::NetNsGuard;

fn status(world: &World, conf: &serde_json::Value) -> Invocation {
    world.invoke(
        &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/usr/lib/cni")],
        conf.to_string().as_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_readiness() {
    if !root("status_reports_readiness") {
        return;
    }
    let world = World::new(vec![pool("p4", "10.86.0.0/16", 26)]).await;
    let out = status(&world, &world.conf("1.1.0", true, false));
    assert_eq!(
        out.ok(),
        serde_json::Value::Null,
        "STATUS prints nothing when ready"
    );
    // No IPv6 pool: not available (50), saying why.
    let e = status(&world, &world.conf("1.1.0", true, true)).err(50);
    assert!(e["msg"].as_str().unwrap().contains("IPv6"), "{e}");
    // An unreachable datastore: not available either.
    let mut bad = world.conf("1.1.0", true, false);
    bad["datastore"] = json!("etcd://127.0.0.1:1");
    status(&world, &bad).err(50);
    // STATUS is a 1.1.0 command.
    status(&world, &world.conf("1.0.0", true, false)).err(1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_releases_what_is_not_valid() {
    if !root("gc_releases_what_is_not_valid") {
        return;
    }
    let world = World::new(vec![
        pool("p4", "10.87.0.0/16", 26),
        pool("p6", "fd00:87::/112", 122),
    ])
    .await;
    let conf = world.conf("1.1.0", true, true);
    let keep_ns = NetNsGuard::new("svcni-keep").unwrap();
    let drop_ns = NetNsGuard::new("svcni-drop").unwrap();
    let keep = world
        .cni("ADD", "c-keep", keep_ns.path(), "keep", &conf)
        .ok();
    assert_eq!(
        keep["interfaces"][1]["mtu"], 1400,
        "1.1.0 results carry the interface MTU"
    );
    world
        .cni("ADD", "c-drop", drop_ns.path(), "drop", &conf)
        .ok();
    // An allocation leaked by some crashed ADD: no endpoint, no interface.
    let ipam = Ipam::new(world.client.store().clone());
    ipam.auto_assign(AssignRequest {
        handle: "c-leaked".into(),
        node: NODE.into(),
        attrs: AllocationAttrs {
            namespace: Some("default".into()),
            pod: Some("gone".into()),
            node: NODE.into(),
            container_id: Some("c-leaked".into()),
        },
        v4_pools: vec![PoolSpec::new("p4", "10.87.0.0/16".parse().unwrap(), 26)],
        v6_pools: vec![],
        want_v4: true,
        want_v6: false,
    })
    .await
    .unwrap();
    // Another node's allocation is none of this node's business.
    ipam.auto_assign(AssignRequest {
        handle: "c-other-node".into(),
        node: "node2".into(),
        attrs: AllocationAttrs {
            node: "node2".into(),
            container_id: Some("c-other-node".into()),
            ..Default::default()
        },
        v4_pools: vec![PoolSpec::new("p4", "10.87.0.0/16".parse().unwrap(), 26)],
        v6_pools: vec![],
        want_v4: true,
        want_v6: false,
    })
    .await
    .unwrap();

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c-keep", "ifname": "eth0"}]);
    let out = world.invoke(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")],
        gc.to_string().as_bytes(),
    );
    out.ok();

    let mut handles: Vec<String> = ipam
        .handles()
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.handle)
        .collect();
    handles.sort();
    assert_eq!(handles, ["c-keep", "c-other-node"]);
    let node = world.node_netlink();
    assert!(
        node.link(&serval_cni::host_iface_name("default", "keep"))
            .await
            .is_ok()
    );
    assert!(
        node.link(&serval_cni::host_iface_name("default", "drop"))
            .await
            .is_err()
    );
    let (weps, _) = world
        .client
        .list(serval_model::Kind::WorkloadEndpoint, None)
        .await
        .unwrap();
    let names: Vec<_> = weps.iter().map(|w| w.meta().name.clone()).collect();
    assert_eq!(names, [format!("{NODE}-k8s-keep-eth0")]);
    // The kept pod still works: CHECK passes.
    let mut check = conf.clone();
    check["prevResult"] = keep.clone();
    world
        .cni("CHECK", "c-keep", keep_ns.path(), "keep", &check)
        .ok();

    // Through the runtime: a 1.1.0 conflist, GC with nothing valid releases the rest of ours.
    let bin = world.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(BIN, bin.join("serval")).unwrap();
    let rt = Runtime::new(vec![bin]).in_netns(world.node_ns.path());
    let list = Conflist::parse(
        &json!({"cniVersion": "1.1.0", "name": "net", "plugins": [conf]}).to_string(),
        std::path::Path::new("gc.conflist"),
    )
    .unwrap();
    rt.status(&list).await.expect("STATUS through the runtime");
    rt.gc(
        &list,
        &[Attachment {
            container_id: "unrelated".into(),
            ifname: "eth0".into(),
        }],
    )
    .await
    .expect("GC through the runtime");
    let handles: Vec<String> = ipam
        .handles()
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.handle)
        .collect();
    assert_eq!(handles, ["c-other-node"]);
    assert!(
        node.link(&serval_cni::host_iface_name("default", "keep"))
            .await
            .is_err()
    );
}
