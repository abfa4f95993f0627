//! `serval ipam show` and `serval ipam check` against allocations made by the IPAM library in
//! the same sqlite datastore.

use std::process::Command;

use serval_ipam::{AllocationAttrs, AssignRequest, Ipam, PoolSpec};

fn serval(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_serval"))
        .arg("--datastore")
        .arg(url)
        .args(args)
        .env_remove("SERVAL_DATASTORE")
        .output()
        .expect("run serval");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn show_reports_usage_and_check_finds_and_releases_leaks() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/s.db", dir.path().display());
    let yaml = dir.path().join("r.yaml");
    std::fs::write(
        &yaml,
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: pool4}\nspec: {cidr: 10.50.0.0/24, blockSize: 28}\n---\n\
         apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: n1}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: alive}\nspec: {nodeName: n1, containers: [{name: c}]}\n",
    )
    .unwrap();
    let (ok, _, err) = serval(&url, &["apply", "-f", yaml.to_str().unwrap()]);
    assert!(ok, "{err}");

    let ipam = Ipam::new(serval_store::open(&url).await.unwrap());
    let pool = PoolSpec::new("pool4", "10.50.0.0/24".parse().unwrap(), 28);
    for pod in ["alive", "gone"] {
        ipam.auto_assign(AssignRequest {
            handle: format!("cid-{pod}"),
            node: "n1".into(),
            attrs: AllocationAttrs {
                namespace: Some("default".into()),
                pod: Some(pod.into()),
                node: "n1".into(),
                container_id: Some(format!("cid-{pod}")),
            },
            v4_pools: vec![pool.clone()],
            v6_pools: vec![],
            want_v4: true,
            want_v6: false,
        })
        .await
        .unwrap();
    }

    let (ok, out, err) = serval(&url, &["ipam", "show", "--show-blocks"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("pool4") && out.contains("10.50.0.0/24"),
        "{out}"
    );
    assert!(
        out.contains("10.50.0.0/28") && out.contains("n1") && out.contains("2/16"),
        "{out}"
    );
    let (ok, out, _) = serval(&url, &["ipam", "show", "-o", "json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["pools"][0]["allocated"], 2);

    let (ok, out, err) = serval(&url, &["ipam", "check"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("cid-gone") && !out.contains("cid-alive"),
        "{out}"
    );
    let (ok, out, _) = serval(&url, &["ipam", "check", "--release"]);
    assert!(ok);
    assert!(out.contains("released handle cid-gone"), "{out}");
    let (_, out, _) = serval(&url, &["ipam", "check"]);
    assert!(out.contains("No leaked allocations"), "{out}");
    let (_, out, _) = serval(&url, &["ipam", "show", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["pools"][0]["allocated"], 1);
}
