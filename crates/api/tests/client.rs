//! The typed client against a real sqlite datastore (and etcd for the watch): atomic apply,
//! pod binding, typed watch events.

use serval_api::{ApplyMode, Client, Outcome, ResourceEvent, key_from_store_key};
use serval_model::{Kind, Resource, ResourceKey, parse_documents};
use serval_store::testing::{EtcdServer, SqliteFile};

fn parse(text: &str) -> Vec<Resource> {
    parse_documents("test.yaml", text).expect("valid test input")
}

const NODES: &str = "
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: node1}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: node2}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: node3}
";

fn pod(name: &str, node: Option<&str>) -> String {
    let node = node
        .map(|n| format!("  nodeName: {n}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n{node}  containers:\n    - name: c\n"
    )
}

async fn client(f: &SqliteFile) -> Client {
    Client::new(f.open().await.expect("open sqlite"))
}

#[tokio::test]
async fn apply_is_all_or_nothing_across_documents() {
    let f = SqliteFile::new().expect("temp sqlite");
    let c = client(&f).await;
    let pools = parse(
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: a}\nspec: {cidr: 10.0.0.0/16}\n",
    );
    c.apply(pools, ApplyMode::Apply).await.expect("first pool");
    // A namespace plus a pool overlapping the stored one: neither is stored.
    let batch = parse(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: n}\n---\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: b}\nspec: {cidr: 10.0.128.0/17}\n",
    );
    let err = c
        .apply(batch, ApplyMode::Apply)
        .await
        .expect_err("overlap must be refused");
    assert!(err.to_string().contains("overlaps"), "{err}");
    let (nss, _) = c.list(Kind::Namespace, None).await.unwrap();
    assert!(nss.is_empty(), "nothing of a failed apply is stored");
}

#[tokio::test]
async fn pods_without_a_node_are_bound_round_robin_and_keep_their_node() {
    let f = SqliteFile::new().expect("temp sqlite");
    let c = client(&f).await;
    c.apply(parse(NODES), ApplyMode::Apply).await.unwrap();
    let text: Vec<String> = (0..6).map(|i| pod(&format!("p{i}"), None)).collect();
    c.apply(parse(&text.join("---\n")), ApplyMode::Apply)
        .await
        .unwrap();
    let (pods, _) = c.list(Kind::Pod, Some("default")).await.unwrap();
    let mut per_node = std::collections::BTreeMap::new();
    for p in &pods {
        let Resource::Pod(p) = p else { unreachable!() };
        *per_node
            .entry(p.spec.node_name.clone().expect("bound"))
            .or_insert(0) += 1;
    }
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2],
        "{per_node:?}"
    );

    // Re-applying a pod without nodeName keeps its binding (and is unchanged).
    let before = match c.get(&pods[0].key()).await.unwrap().unwrap() {
        Resource::Pod(p) => p.spec.node_name,
        _ => unreachable!(),
    };
    let out = c
        .apply(parse(&pod(&pods[0].meta().name, None)), ApplyMode::Apply)
        .await
        .unwrap();
    assert_eq!(out[0].1, Outcome::Unchanged);
    let after = match c.get(&pods[0].key()).await.unwrap().unwrap() {
        Resource::Pod(p) => p.spec.node_name,
        _ => unreachable!(),
    };
    assert_eq!(before, after);

    // An explicit node is respected.
    c.apply(parse(&pod("fixed", Some("node3"))), ApplyMode::Apply)
        .await
        .unwrap();
    let key = ResourceKey {
        kind: Kind::Pod,
        namespace: Some("default".into()),
        name: "fixed".into(),
    };
    match c.get(&key).await.unwrap().unwrap() {
        Resource::Pod(p) => assert_eq!(p.spec.node_name.as_deref(), Some("node3")),
        _ => unreachable!(),
    }
}

async fn watch_sees_applies_and_deletes(c: Client) {
    let (_, rev) = c.list_all().await.unwrap();
    let mut w = c.watch(rev).await.unwrap();
    c.apply(parse(NODES), ApplyMode::Apply).await.unwrap();
    let key = ResourceKey {
        kind: Kind::Node,
        namespace: None,
        name: "node2".into(),
    };
    c.delete(std::slice::from_ref(&key), false).await.unwrap();
    let mut applied = Vec::new();
    let mut last_rev = rev;
    while applied.len() < 3 {
        let (ev, r) = w.next().await.expect("watch open").expect("event");
        assert!(r >= last_rev);
        last_rev = r;
        match ev {
            ResourceEvent::Applied(res) => applied.push(res.meta().name.clone()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(applied, ["node1", "node2", "node3"]);
    match w.next().await.expect("watch open").expect("event").0 {
        ResourceEvent::Deleted { key: k, .. } => assert_eq!(k, key),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn typed_watch_on_sqlite() {
    let f = SqliteFile::new().expect("temp sqlite");
    watch_sees_applies_and_deletes(client(&f).await).await;
}

#[tokio::test]
async fn typed_watch_on_etcd() {
    let etcd = EtcdServer::start().await.expect("start etcd");
    watch_sees_applies_and_deletes(Client::new(etcd.open().await.unwrap())).await;
}

#[test]
fn store_keys_map_back_to_resource_keys() {
    for key in [
        ResourceKey {
            kind: Kind::Pod,
            namespace: Some("ns".into()),
            name: "p".into(),
        },
        ResourceKey {
            kind: Kind::IPPool,
            namespace: None,
            name: "pool".into(),
        },
        ResourceKey {
            kind: Kind::K8sNetworkPolicy,
            namespace: Some("x".into()),
            name: "np".into(),
        },
    ] {
        assert_eq!(key_from_store_key(&key.store_key()), Some(key));
    }
    assert_eq!(key_from_store_key("/serval/ipam/blocks/x"), None);
    assert_eq!(key_from_store_key("/serval/resources/pods/ns"), None);
}

#[tokio::test]
async fn an_apply_without_status_keeps_the_stored_status() {
    let f = SqliteFile::new().expect("temp sqlite");
    let c = client(&f).await;
    c.apply(parse(NODES), ApplyMode::Apply).await.unwrap();
    c.apply(parse(&pod("p", Some("node1"))), ApplyMode::Apply)
        .await
        .unwrap();
    let key = ResourceKey {
        kind: Kind::Pod,
        namespace: Some("default".into()),
        name: "p".into(),
    };
    // The node's runtime records the pod's status (as a kubelet would).
    let mut stored = c.get(&key).await.unwrap().unwrap();
    let rev: i64 = stored
        .meta()
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    if let Resource::Pod(p) = &mut stored {
        p.status = Some(serde_json::from_value(serde_json::json!({"phase": "Running"})).unwrap());
    }
    c.put(stored, Some(rev)).await.unwrap();
    // The user re-applies the pod with a new label and no status: the status stays.
    let relabelled = pod("p", Some("node1")).replace("name: p\n", "name: p\n  labels: {x: y}\n");
    let out = c.apply(parse(&relabelled), ApplyMode::Apply).await.unwrap();
    assert_eq!(out[0].1, Outcome::Configured);
    match c.get(&key).await.unwrap().unwrap() {
        Resource::Pod(p) => {
            assert_eq!(p.metadata.labels.get("x").map(String::as_str), Some("y"));
            assert!(p.status.is_some(), "status kept");
        }
        _ => unreachable!(),
    }
    // Re-applying the same input again is unchanged (status does not count as a difference).
    let out = c.apply(parse(&relabelled), ApplyMode::Apply).await.unwrap();
    assert_eq!(out[0].1, Outcome::Unchanged);
}

#[tokio::test]
async fn a_stale_resource_version_is_refused_even_when_the_content_is_unchanged() {
    let f = SqliteFile::new().expect("temp sqlite");
    let c = client(&f).await;
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: n}\n";
    c.apply(parse(ns), ApplyMode::Apply).await.unwrap();
    c.apply(
        parse(&format!(
            "{ns}---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: m}}\n"
        )),
        ApplyMode::Apply,
    )
    .await
    .unwrap();
    let stale = "apiVersion: v1\nkind: Namespace\nmetadata: {name: n, resourceVersion: '999'}\n";
    let err = c
        .apply(parse(stale), ApplyMode::Apply)
        .await
        .expect_err("stale version");
    assert!(err.to_string().contains("modified concurrently"), "{err}");
}

#[tokio::test]
async fn deleting_a_namespace_without_an_object_deletes_its_resources() {
    let f = SqliteFile::new().expect("temp sqlite");
    let c = client(&f).await;
    let p = pod("p", None).replace("name: p\n", "name: p\n  namespace: ghost\n");
    c.apply(parse(&p), ApplyMode::Apply).await.unwrap();
    let key = ResourceKey {
        kind: Kind::Namespace,
        namespace: None,
        name: "ghost".into(),
    };
    let deleted = c.delete(std::slice::from_ref(&key), false).await.unwrap();
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert!(c.list(Kind::Pod, Some("ghost")).await.unwrap().0.is_empty());
    // Nothing left: now it is not found.
    assert!(c.delete(std::slice::from_ref(&key), false).await.is_err());
}

#[tokio::test]
async fn concurrent_applies_never_share_a_cluster_ip_or_node_port() {
    let f = SqliteFile::new().expect("temp sqlite");
    let mut tasks = Vec::new();
    for i in 0..8 {
        let c = Client::new(f.open().await.unwrap());
        tasks.push(tokio::spawn(async move {
            let svc = format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\nspec:\n  type: NodePort\n  ports: [{{port: 80}}]\n"
            );
            c.apply(parse(&svc), ApplyMode::Apply).await
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("apply");
    }
    let c = client(&f).await;
    let (svcs, _) = c.list(Kind::Service, None).await.unwrap();
    let mut ips = std::collections::BTreeSet::new();
    let mut ports = std::collections::BTreeSet::new();
    for s in &svcs {
        let Resource::Service(s) = s else {
            unreachable!()
        };
        assert!(
            ips.insert(s.spec.cluster_ip.clone().expect("allocated")),
            "duplicate cluster IP"
        );
        assert!(
            ports.insert(s.spec.ports[0].node_port.expect("allocated").0),
            "duplicate node port"
        );
    }
    assert_eq!(ips.len(), 8);
}

fn service(name: &str, extra: &str) -> Vec<Resource> {
    parse(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  ports: [{{port: 80}}]\n{extra}"
    ))
}

fn svc_of(r: &Resource) -> &serval_model::k8s::Service {
    match r {
        Resource::Service(s) => s,
        other => panic!("not a service: {other:?}"),
    }
}

async fn get_service(c: &Client, name: &str) -> serval_model::k8s::Service {
    let key = ResourceKey::new(Kind::Service, Some("default"), name);
    svc_of(&c.get(&key).await.unwrap().expect("stored")).clone()
}

#[tokio::test]
async fn deleted_services_free_their_addresses_and_node_ports_for_others() {
    let f = SqliteFile::new().expect("temp sqlite");
    let c = client(&f).await;
    let fixed = "  clusterIP: 10.96.5.5\n  type: NodePort\n";
    c.apply(service("a", fixed), ApplyMode::Apply)
        .await
        .unwrap();
    let a = get_service(&c, "a").await;
    let np = a.spec.ports[0].node_port.expect("allocated").0;
    // Held: another service may take neither the address nor the port.
    let err = c
        .apply(service("b", "  clusterIP: 10.96.5.5\n"), ApplyMode::Apply)
        .await
        .expect_err("address held by a");
    assert!(err.to_string().contains("already allocated"), "{err}");
    let port = format!("  type: NodePort\n  ports: [{{port: 80, nodePort: {np}}}]\n");
    let err = c
        .apply(
            parse(&format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: b}}\nspec:\n{port}"
            )),
            ApplyMode::Apply,
        )
        .await
        .expect_err("port held by a");
    assert!(err.to_string().contains("already allocated"), "{err}");
    // Re-applying `a` itself is fine and keeps both.
    let outcome = c
        .apply(service("a", fixed), ApplyMode::Apply)
        .await
        .unwrap();
    assert_eq!(outcome[0].1, Outcome::Unchanged);
    // Deleted: both are free again, in one apply.
    let key = ResourceKey::new(Kind::Service, Some("default"), "a");
    c.delete(&[key], false).await.unwrap();
    let both = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: b}}\nspec:\n  clusterIP: 10.96.5.5\n{port}"
    );
    c.apply(parse(&both), ApplyMode::Apply).await.unwrap();
    let b = get_service(&c, "b").await;
    assert_eq!(b.spec.cluster_ip.as_deref(), Some("10.96.5.5"));
    assert_eq!(b.spec.ports[0].node_port.map(|p| p.0), Some(np));
    // Automatic allocation never hands out a held address.
    for i in 0..5 {
        c.apply(service(&format!("auto{i}"), ""), ApplyMode::Apply)
            .await
            .unwrap();
    }
    let (svcs, _) = c.list(Kind::Service, None).await.unwrap();
    let ips: std::collections::BTreeSet<String> = svcs
        .iter()
        .map(|s| svc_of(s).spec.cluster_ip.clone().expect("allocated"))
        .collect();
    assert_eq!(ips.len(), 6, "{ips:?}");
}

#[tokio::test]
async fn the_allocation_index_is_built_from_services_stored_without_it() {
    let f = SqliteFile::new().expect("temp sqlite");
    let c = client(&f).await;
    // Written as an earlier version did: the service only, no index, an empty sentinel.
    let mut old = parse(
        "apiVersion: v1\nkind: Service\nmetadata: {name: old}\nspec:\n  clusterIP: 10.96.0.2\n  type: NodePort\n  ports: [{port: 80, nodePort: 30000}]\n",
    );
    let Resource::Service(s) = &mut old[0] else {
        unreachable!()
    };
    s.spec.cluster_ips = vec!["10.96.0.2".into()];
    c.put(old.remove(0), None).await.unwrap();
    c.store()
        .txn(vec![serval_store::TxnOp::Put {
            key: "/serval/allocations/services".into(),
            value: Vec::new(),
        }])
        .await
        .unwrap();
    // The first automatic allocation would be 10.96.0.2 and port 30000: both are taken.
    c.apply(service("new", "  type: NodePort\n"), ApplyMode::Apply)
        .await
        .unwrap();
    let new = get_service(&c, "new").await;
    assert_ne!(new.spec.cluster_ip.as_deref(), Some("10.96.0.2"));
    assert_ne!(new.spec.ports[0].node_port.map(|p| p.0), Some(30000));
    let err = c
        .apply(
            service("third", "  clusterIP: 10.96.0.2\n"),
            ApplyMode::Apply,
        )
        .await
        .expect_err("held by the service stored before the index");
    assert!(err.to_string().contains("already allocated"), "{err}");
}

#[tokio::test]
async fn a_policy_of_a_stored_tier_applies_on_its_own_and_an_unknown_tier_is_refused() {
    let f = SqliteFile::new().expect("temp sqlite");
    let c = client(&f).await;
    c.apply(
        parse("apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: security}\nspec: {order: 100}\n"),
        ApplyMode::Apply,
    )
    .await
    .expect("tier");
    let policy = |tier: &str| {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: {tier}.p, namespace: default}}\nspec:\n  tier: {tier}\n  selector: all()\n  ingress:\n    - action: Allow\n"
        )
    };
    c.apply(parse(&policy("security")), ApplyMode::Apply)
        .await
        .expect("a policy of a stored tier, applied without its Tier, is accepted");
    let global = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: security.g}\nspec:\n  tier: security\n  selector: all()\n  ingress:\n    - action: Allow\n";
    c.apply(parse(global), ApplyMode::Apply)
        .await
        .expect("a global policy of a stored tier is accepted");
    let err = c
        .apply(parse(&policy("nosuch")), ApplyMode::Apply)
        .await
        .expect_err("a tier that is neither stored nor applied is refused");
    assert!(err.to_string().contains("does not exist"), "{err}");
}

const INDEX: &str = "/serval/allocations/services";

/// The allocation index's address keys and their values (JSON objects address → holder).
async fn index_buckets(
    c: &Client,
) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>> {
    let (kvs, _) = c.store().list(&format!("{INDEX}/ip")).await.unwrap();
    kvs.into_iter()
        .map(|kv| {
            let v = serde_json::from_slice(&kv.value)
                .unwrap_or_else(|e| panic!("{} is not a bucket object: {e}", kv.key));
            (kv.key, v)
        })
        .collect()
}

fn holder(name: &str) -> String {
    format!("/serval/resources/services/default/{name}")
}

#[tokio::test]
async fn many_services_write_one_index_row_per_bucket() {
    let f = SqliteFile::new().expect("temp sqlite");
    let c = client(&f).await;
    // 1,100 addresses over five buckets (10.96.4.x to 10.96.7.x, 10.96.8.0-75); an apply
    // this large also takes the path that copies its input on a blocking thread.
    let text: Vec<String> = (0..1100)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\nspec:\n  clusterIP: 10.96.{}.{}\n  ports: [{{port: 80}}]\n",
                4 + i / 256,
                i % 256
            )
        })
        .collect();
    // A set with one bad document (a second s699, found by the set's validation, which runs
    // on a blocking thread for an apply this large) stores none of them and is named.
    let mut bad = parse(&text.join("---\n"));
    bad[700].meta_mut().name = "s699".into();
    let err = c
        .apply(bad, ApplyMode::Apply)
        .await
        .expect_err("a duplicate is refused");
    assert!(
        matches!(err, serval_api::ApiError::Invalid(_)) && err.to_string().contains("s699"),
        "{err}"
    );
    assert!(c.list(Kind::Service, None).await.unwrap().0.is_empty());
    c.apply(parse(&text.join("---\n")), ApplyMode::Apply)
        .await
        .unwrap();
    let buckets = index_buckets(&c).await;
    assert_eq!(
        buckets.keys().cloned().collect::<Vec<_>>(),
        (4..=8)
            .map(|b| format!("{INDEX}/ip4/0a60{b:02x}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(buckets.values().map(|b| b.len()).sum::<usize>(), 1100);
    assert_eq!(buckets[&format!("{INDEX}/ip4/0a6008")].len(), 76);
    assert_eq!(
        buckets[&format!("{INDEX}/ip4/0a6005")]["10.96.5.7"],
        holder("s263")
    );
    // A second Service asking for a held address is refused.
    let err = c
        .apply(
            service("late", "  clusterIP: 10.96.6.1\n"),
            ApplyMode::Apply,
        )
        .await
        .expect_err("held by s513");
    // Re-applying all of them changes nothing.
    let outcomes = c
        .apply(parse(&text.join("---\n")), ApplyMode::Apply)
        .await
        .unwrap();
    assert!(outcomes.iter().all(|(_, o)| *o == Outcome::Unchanged));
    assert!(err.to_string().contains("already allocated"), "{err}");
}

#[tokio::test]
async fn the_allocation_index_of_the_per_address_layout_is_converted_to_buckets() {
    let f = SqliteFile::new().expect("temp sqlite");
    let c = client(&f).await;
    // Written as version 1 of the index did: one key per address and per node port, and a
    // marker whose cursor says automatic allocation continues at offset 5.
    let mut old = parse(
        "apiVersion: v1\nkind: Service\nmetadata: {name: old}\nspec:\n  clusterIP: 10.96.0.2\n  type: NodePort\n  ports: [{port: 80, nodePort: 30000}]\n",
    );
    let Resource::Service(s) = &mut old[0] else {
        unreachable!()
    };
    s.spec.cluster_ips = vec!["10.96.0.2".into()];
    c.put(old.remove(0), None).await.unwrap();
    let put = |key: String, value: &str| serval_store::TxnOp::Put {
        key,
        value: value.as_bytes().to_vec(),
    };
    c.store()
        .txn(vec![
            put(format!("{INDEX}/ip4/0a600002"), &holder("old")),
            put(format!("{INDEX}/nodeport/Tcp/30000"), &holder("old")),
            put(INDEX.into(), r#"{"version":1,"next":{"4":"5"}}"#),
        ])
        .await
        .unwrap();
    c.apply(service("new", "  type: NodePort\n"), ApplyMode::Apply)
        .await
        .unwrap();
    let new = get_service(&c, "new").await;
    // The cursor survived the conversion: 10.96.0.2 + 5.
    assert_eq!(new.spec.cluster_ip.as_deref(), Some("10.96.0.7"));
    assert_ne!(new.spec.ports[0].node_port.map(|p| p.0), Some(30000));
    // The per-address key is gone; one bucket holds both addresses.
    let buckets = index_buckets(&c).await;
    assert_eq!(buckets.len(), 1, "{buckets:?}");
    let bucket = &buckets[&format!("{INDEX}/ip4/0a6000")];
    assert_eq!(bucket["10.96.0.2"], holder("old"));
    assert_eq!(bucket["10.96.0.7"], holder("new"));
    let marker = c.store().get(INDEX).await.unwrap().expect("marker");
    let marker: serde_json::Value = serde_json::from_slice(&marker.value).unwrap();
    assert_eq!(marker["version"], 2, "{marker}");
    let err = c
        .apply(
            service("third", "  clusterIP: 10.96.0.2\n"),
            ApplyMode::Apply,
        )
        .await
        .expect_err("held by the service of the converted index");
    assert!(err.to_string().contains("already allocated"), "{err}");
}

#[tokio::test]
async fn concurrent_applies_in_one_bucket_all_land_and_never_share_an_address() {
    let f = SqliteFile::new().expect("temp sqlite");
    // A stored Service makes the bucket exist, so the racers all update it (compare-and-swap).
    let c = client(&f).await;
    c.apply(
        service("first", "  clusterIP: 10.96.9.1\n"),
        ApplyMode::Apply,
    )
    .await
    .unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let c = Client::new(f.open().await.unwrap());
        tasks.push(tokio::spawn(async move {
            // Distinct addresses of one bucket, plus two racers for the same address.
            let ip = if i < 6 {
                format!("10.96.9.{}", 10 + i)
            } else {
                "10.96.9.100".to_string()
            };
            let svc = format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: r{i}}}\nspec:\n  clusterIP: {ip}\n  ports: [{{port: 80}}]\n"
            );
            c.apply(parse(&svc), ApplyMode::Apply).await
        }));
    }
    let mut refused = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Ok(_) => {}
            Err(e) if i >= 6 && e.to_string().contains("already allocated") => refused += 1,
            Err(e) => panic!("r{i}: {e}"),
        }
    }
    assert_eq!(
        refused, 1,
        "exactly one of the two racers for 10.96.9.100 loses"
    );
    let buckets = index_buckets(&c).await;
    let bucket = &buckets[&format!("{INDEX}/ip4/0a6009")];
    assert_eq!(bucket.len(), 8, "{bucket:?}");
    for i in 0..6 {
        assert_eq!(
            bucket[&format!("10.96.9.{}", 10 + i)],
            holder(&format!("r{i}"))
        );
    }
    let winner = &bucket["10.96.9.100"];
    let (svcs, _) = c.list(Kind::Service, None).await.unwrap();
    assert_eq!(svcs.len(), 8);
    let winner = key_from_store_key(winner).expect("a service key");
    assert_eq!(
        get_service(&c, &winner.name)
            .await
            .spec
            .cluster_ip
            .as_deref(),
        Some("10.96.9.100")
    );
}

#[tokio::test]
async fn a_deleted_service_frees_its_address_in_its_bucket_for_reuse() {
    let f = SqliteFile::new().expect("temp sqlite");
    let c = client(&f).await;
    c.apply(service("a", "  clusterIP: 10.96.7.7\n"), ApplyMode::Apply)
        .await
        .unwrap();
    c.apply(service("b", "  clusterIP: 10.96.7.8\n"), ApplyMode::Apply)
        .await
        .unwrap();
    let key = format!("{INDEX}/ip4/0a6007");
    assert_eq!(index_buckets(&c).await[&key].len(), 2);
    // A delete racing an apply in the same bucket: both land, the bucket stays exact.
    let (c1, c2) = (
        Client::new(f.open().await.unwrap()),
        Client::new(f.open().await.unwrap()),
    );
    let del = tokio::spawn(async move {
        c1.delete(
            &[ResourceKey::new(Kind::Service, Some("default"), "a")],
            false,
        )
        .await
    });
    let add = tokio::spawn(async move {
        c2.apply(service("c", "  clusterIP: 10.96.7.9\n"), ApplyMode::Apply)
            .await
    });
    del.await.unwrap().expect("delete");
    add.await.unwrap().expect("apply");
    let bucket = index_buckets(&c).await[&key].clone();
    assert_eq!(
        bucket.keys().cloned().collect::<Vec<_>>(),
        vec!["10.96.7.8".to_string(), "10.96.7.9".to_string()]
    );
    // The freed address is taken by another Service.
    c.apply(service("d", "  clusterIP: 10.96.7.7\n"), ApplyMode::Apply)
        .await
        .expect("10.96.7.7 is free again");
    assert_eq!(index_buckets(&c).await[&key]["10.96.7.7"], holder("d"));
    // Deleting every holder leaves an empty bucket, and nothing holds the addresses.
    let keys: Vec<ResourceKey> = ["b", "c", "d"]
        .iter()
        .map(|n| ResourceKey::new(Kind::Service, Some("default"), n))
        .collect();
    c.delete(&keys, false).await.unwrap();
    assert!(index_buckets(&c).await[&key].is_empty());
    c.apply(service("e", "  clusterIP: 10.96.7.8\n"), ApplyMode::Apply)
        .await
        .expect("10.96.7.8 is free again");
}

#[tokio::test]
async fn a_dual_stack_service_holds_an_address_in_a_bucket_of_each_family() {
    let f = SqliteFile::new().expect("temp sqlite");
    let c = client(&f).await;
    c.apply(
        parse("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: v4}\nspec: {cidr: 10.0.0.0/16}\n---\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: v6}\nspec: {cidr: 'fd00:1::/64'}\n"),
        ApplyMode::Apply,
    )
    .await
    .unwrap();
    c.apply(
        service("dual", "  ipFamilyPolicy: RequireDualStack\n"),
        ApplyMode::Apply,
    )
    .await
    .unwrap();
    let dual = get_service(&c, "dual").await;
    assert_eq!(
        dual.spec.cluster_ips.len(),
        2,
        "{:?}",
        dual.spec.cluster_ips
    );
    let buckets = index_buckets(&c).await;
    let held: Vec<(&String, &String)> = buckets.values().flatten().collect();
    assert_eq!(held.len(), 2, "{buckets:?}");
    for ip in &dual.spec.cluster_ips {
        assert!(
            held.iter().any(|(a, h)| *a == ip && **h == holder("dual")),
            "{ip} in {buckets:?}"
        );
    }
    // Deleting it frees both.
    c.delete(
        &[ResourceKey::new(Kind::Service, Some("default"), "dual")],
        false,
    )
    .await
    .unwrap();
    assert!(index_buckets(&c).await.values().all(|b| b.is_empty()));
}

/// Asserts the allocation index holds exactly what the stored Services hold: every cluster IP
/// in its bucket under its Service's key, every node port key valued with its holder, and
/// nothing else (no leak, no duplicate).
async fn assert_index_matches_services(c: &Client) {
    let (svcs, _) = c.list(Kind::Service, None).await.unwrap();
    let mut want_ips = std::collections::BTreeMap::new();
    let mut want_ports = std::collections::BTreeMap::new();
    for r in &svcs {
        let s = svc_of(r);
        let skey = r.key().store_key();
        for ip in &s.spec.cluster_ips {
            assert!(
                want_ips.insert(ip.clone(), skey.clone()).is_none(),
                "{ip} is held twice"
            );
        }
        for p in &s.spec.ports {
            if let Some(np) = p.node_port {
                let key = format!("{INDEX}/nodeport/{:?}/{}", p.protocol, np.0);
                assert!(
                    want_ports.insert(key, skey.clone()).is_none(),
                    "node port {} is held twice",
                    np.0
                );
            }
        }
    }
    let got_ips: std::collections::BTreeMap<String, String> =
        index_buckets(c).await.into_values().flatten().collect();
    assert_eq!(got_ips, want_ips, "index addresses vs stored Services");
    let (kvs, _) = c.store().list(&format!("{INDEX}/nodeport/")).await.unwrap();
    let got_ports: std::collections::BTreeMap<String, String> = kvs
        .into_iter()
        .map(|kv| (kv.key, String::from_utf8(kv.value).unwrap()))
        .collect();
    assert_eq!(got_ports, want_ports, "index node ports vs stored Services");
}

#[tokio::test]
async fn concurrent_applies_and_deletes_in_one_bucket_keep_the_index_exact() {
    let f = SqliteFile::new().expect("temp sqlite");
    let c = client(&f).await;
    // Six stored Services allocated automatically: all in the first bucket, with node ports.
    for i in 0..6 {
        c.apply(
            service(&format!("d{i}"), "  type: NodePort\n"),
            ApplyMode::Apply,
        )
        .await
        .unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..6 {
        // Deleting d{i} races applying n{i}, allocated automatically in the same bucket.
        let del = Client::new(f.open().await.unwrap());
        tasks.push(tokio::spawn(async move {
            del.delete(
                &[ResourceKey::new(
                    Kind::Service,
                    Some("default"),
                    &format!("d{i}"),
                )],
                false,
            )
            .await
            .map(|_| ())
        }));
        let app = Client::new(f.open().await.unwrap());
        tasks.push(tokio::spawn(async move {
            app.apply(
                service(&format!("n{i}"), "  type: NodePort\n"),
                ApplyMode::Apply,
            )
            .await
            .map(|_| ())
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("every apply and delete lands");
    }
    let (svcs, _) = c.list(Kind::Service, None).await.unwrap();
    assert_eq!(svcs.len(), 6);
    assert_index_matches_services(&c).await;
}

#[tokio::test]
async fn concurrent_writers_converting_a_per_address_index_all_land() {
    let f = SqliteFile::new().expect("temp sqlite");
    let c = client(&f).await;
    // A version 1 index (one key per address and per node port) of four stored Services.
    let mut ops = Vec::new();
    for i in 0..4 {
        store_without_index(&c, i).await;
        ops.push(serval_store::TxnOp::Put {
            key: format!("{INDEX}/ip4/0a6000{:02x}", 2 + i),
            value: holder(&format!("old{i}")).into_bytes(),
        });
        ops.push(serval_store::TxnOp::Put {
            key: format!("{INDEX}/nodeport/Tcp/{}", 30000 + i),
            value: holder(&format!("old{i}")).into_bytes(),
        });
    }
    ops.push(serval_store::TxnOp::Put {
        key: INDEX.into(),
        value: br#"{"version":1,"next":{"4":"4"}}"#.to_vec(),
    });
    c.store().txn(ops).await.unwrap();
    // Several processes meet the old layout at once: each converts it or finds it converted
    // (a lost conversion retries), none fails.
    six_applies_and_a_delete_race(&f, "old0").await;
    assert_index_matches_services(&c).await;
    let (svcs, _) = c.list(Kind::Service, None).await.unwrap();
    assert_eq!(svcs.len(), 9);
}

#[tokio::test]
async fn a_service_dropping_and_regaining_a_family_frees_and_takes_an_address_in_its_bucket() {
    let f = SqliteFile::new().expect("temp sqlite");
    let c = client(&f).await;
    c.apply(
        parse("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: v4}\nspec: {cidr: 10.0.0.0/16}\n---\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: v6}\nspec: {cidr: 'fd00:1::/64'}\n"),
        ApplyMode::Apply,
    )
    .await
    .unwrap();
    c.apply(
        service(
            "dual",
            "  ipFamilyPolicy: RequireDualStack\n  type: NodePort\n",
        ),
        ApplyMode::Apply,
    )
    .await
    .unwrap();
    let dual = get_service(&c, "dual").await;
    let (v4, v6) = (
        dual.spec.cluster_ips[0].clone(),
        dual.spec.cluster_ips[1].clone(),
    );
    assert_index_matches_services(&c).await;
    // Single stack again: the IPv6 address is freed, the node port given up.
    c.apply(
        service(
            "dual",
            &format!(
                "  ipFamilyPolicy: SingleStack\n  ipFamilies: [IPv4]\n  clusterIPs: ['{v4}']\n"
            ),
        ),
        ApplyMode::Apply,
    )
    .await
    .unwrap();
    assert_eq!(
        get_service(&c, "dual").await.spec.cluster_ips,
        vec![v4.clone()]
    );
    assert_index_matches_services(&c).await;
    // Another Service may take the freed IPv6 address now.
    c.apply(
        service(
            "six",
            &format!(
                "  ipFamilyPolicy: SingleStack\n  ipFamilies: [IPv6]\n  clusterIPs: ['{v6}']\n"
            ),
        ),
        ApplyMode::Apply,
    )
    .await
    .unwrap();
    // Dual stack again: a new IPv6 address, not the one `six` holds.
    c.apply(
        service("dual", "  ipFamilyPolicy: RequireDualStack\n"),
        ApplyMode::Apply,
    )
    .await
    .unwrap();
    let dual = get_service(&c, "dual").await;
    assert_eq!(
        dual.spec.cluster_ips.len(),
        2,
        "{:?}",
        dual.spec.cluster_ips
    );
    assert_eq!(dual.spec.cluster_ips[0], v4);
    assert_ne!(dual.spec.cluster_ips[1], v6);
    assert_index_matches_services(&c).await;
}

#[tokio::test]
async fn an_apply_of_ten_services_with_one_taken_address_stores_none_and_names_it() {
    let f = SqliteFile::new().expect("temp sqlite");
    let c = client(&f).await;
    c.apply(
        service("holder", "  clusterIP: 10.96.3.7\n"),
        ApplyMode::Apply,
    )
    .await
    .unwrap();
    let before = index_buckets(&c).await;
    let docs: Vec<String> = (0..10)
        .map(|i| {
            let ip = if i == 6 { "10.96.3.7".to_string() } else { format!("10.96.3.{}", 20 + i) };
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\nspec:\n  clusterIP: {ip}\n  type: NodePort\n  ports: [{{port: 80}}]\n"
            )
        })
        .collect();
    let err = c
        .apply(parse(&docs.join("---\n")), ApplyMode::Apply)
        .await
        .expect_err("10.96.3.7 is held");
    assert!(err.to_string().contains("s6"), "{err}");
    assert!(err.to_string().contains("already allocated"), "{err}");
    let (svcs, _) = c.list(Kind::Service, None).await.unwrap();
    assert_eq!(svcs.len(), 1, "nothing of the failed apply is stored");
    assert_eq!(index_buckets(&c).await, before);
    assert_index_matches_services(&c).await;
}

/// Stores Service `old{i}` (cluster IP 10.96.0.{2+i}, node port 30000+i) with `put`, as a
/// datastore written without the allocation index holds it.
async fn store_without_index(c: &Client, i: u16) {
    let mut old = service(
        &format!("old{i}"),
        &format!("  clusterIP: 10.96.0.{}\n  type: NodePort\n", 2 + i),
    );
    let Resource::Service(s) = &mut old[0] else {
        unreachable!()
    };
    s.spec.cluster_ips = vec![format!("10.96.0.{}", 2 + i)];
    s.spec.ports[0].node_port = Some(serval_model::types::Port(30000 + i));
    c.put(old.remove(0), None).await.unwrap();
}

/// Six processes apply a NodePort Service each (`n0`…`n5`) while a seventh deletes Service
/// `deleted`, all at once; every one of them must succeed.
async fn six_applies_and_a_delete_race(f: &SqliteFile, deleted: &'static str) {
    let mut tasks = Vec::new();
    for i in 0..6 {
        let app = Client::new(f.open().await.unwrap());
        tasks.push(tokio::spawn(async move {
            app.apply(
                service(&format!("n{i}"), "  type: NodePort\n"),
                ApplyMode::Apply,
            )
            .await
            .map(|_| ())
        }));
    }
    let del = Client::new(f.open().await.unwrap());
    tasks.push(tokio::spawn(async move {
        del.delete(
            &[ResourceKey::new(Kind::Service, Some("default"), deleted)],
            false,
        )
        .await
        .map(|_| ())
    }));
    for (i, t) in tasks.into_iter().enumerate() {
        t.await
            .unwrap()
            .unwrap_or_else(|e| panic!("writer {i} failed: {e}"));
    }
}

#[tokio::test]
async fn concurrent_writers_building_a_missing_index_all_land() {
    let f = SqliteFile::new().expect("temp sqlite");
    let c = client(&f).await;
    // Services stored before the index existed: no marker at all, no index keys.
    for i in 0..4u16 {
        store_without_index(&c, i).await;
    }
    assert!(c.store().get(INDEX).await.unwrap().is_none());
    six_applies_and_a_delete_race(&f, "old1").await;
    let (svcs, _) = c.list(Kind::Service, None).await.unwrap();
    assert_eq!(svcs.len(), 9);
    assert_index_matches_services(&c).await;
}

/// The allocated fields of a stored Service: cluster IPs, families, policy, node ports.
fn allocated(s: &serval_model::k8s::Service) -> String {
    let ports: Vec<Option<u16>> = s
        .spec
        .ports
        .iter()
        .map(|p| p.node_port.map(|p| p.0))
        .collect();
    format!(
        "{:?} {:?} {:?} {:?} {:?}",
        s.spec.cluster_ip, s.spec.cluster_ips, s.spec.ip_families, s.spec.ip_family_policy, ports
    )
}

#[tokio::test]
async fn an_apply_needing_allocation_stores_the_allocations_and_retries_from_the_untouched_input() {
    let f = SqliteFile::new().expect("temp sqlite");
    let c = client(&f).await;
    store_without_index(&c, 0).await;
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  type: NodePort\n  ports: [{name: web, port: 80}, {name: dns, port: 53, protocol: UDP}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec:\n  clusterIP: 10.96.0.9\n  ports: [{port: 80}]\n";
    let input = std::sync::Arc::new(parse(text));
    let (outcomes, _) = c
        .apply_keeping(std::sync::Arc::clone(&input), ApplyMode::Apply)
        .await
        .unwrap();
    assert_eq!(
        outcomes.iter().map(|(_, o)| *o).collect::<Vec<_>>(),
        [Outcome::Created, Outcome::Created]
    );
    assert_eq!(*input, parse(text), "the input is never written");
    assert_eq!(
        allocated(&get_service(&c, "a").await),
        r#"Some("10.96.0.3") ["10.96.0.3"] [IPv4] Some(SingleStack) [Some(30001), Some(30000)]"#
    );
    assert_eq!(
        allocated(&get_service(&c, "b").await),
        r#"Some("10.96.0.9") ["10.96.0.9"] [IPv4] Some(SingleStack) [None]"#
    );
    assert_index_matches_services(&c).await;

    // As a raced retry would: the same input again after its allocations went to another
    // Service. Started from the input, `a` takes the next free values; started from the first
    // attempt's result, it would ask for node port 30001, now held by `x`.
    let keys = [
        ResourceKey::new(Kind::Service, Some("default"), "a"),
        ResourceKey::new(Kind::Service, Some("default"), "b"),
    ];
    c.delete(&keys, false).await.unwrap();
    c.apply(
        parse("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec:\n  type: NodePort\n  ports: [{port: 80, nodePort: 30001}]\n"),
        ApplyMode::Apply,
    )
    .await
    .unwrap();
    c.apply_keeping(std::sync::Arc::clone(&input), ApplyMode::Apply)
        .await
        .unwrap();
    assert_eq!(*input, parse(text), "the input is never written");
    assert_eq!(
        allocated(&get_service(&c, "a").await),
        r#"Some("10.96.0.5") ["10.96.0.5"] [IPv4] Some(SingleStack) [Some(30002), Some(30000)]"#
    );
    assert_index_matches_services(&c).await;

    // Applies that race each other (and a delete) retry from their untouched inputs.
    let inputs: Vec<std::sync::Arc<Vec<Resource>>> = (0..4)
        .map(|i| std::sync::Arc::new(service(&format!("r{i}"), "  type: NodePort\n")))
        .collect();
    let mut tasks = Vec::new();
    for input in &inputs {
        let app = Client::new(f.open().await.unwrap());
        let input = std::sync::Arc::clone(input);
        tasks.push(tokio::spawn(async move {
            app.apply_keeping(input, ApplyMode::Apply).await.map(|_| ())
        }));
    }
    six_applies_and_a_delete_race(&f, "old0").await;
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    for (i, input) in inputs.iter().enumerate() {
        assert_eq!(**input, service(&format!("r{i}"), "  type: NodePort\n"));
        let s = get_service(&c, &format!("r{i}")).await;
        assert!(s.spec.cluster_ip.is_some() && s.spec.ports[0].node_port.is_some());
    }
    assert_index_matches_services(&c).await;
}
