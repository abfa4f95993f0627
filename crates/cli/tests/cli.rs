//! The `serval` CLI end to end against a fresh sqlite datastore per test: apply, create, get,
//! delete, atomicity and error reporting.

use std::io::Write;
use std::process::{Command, Output, Stdio};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn url(&self) -> String {
        format!("sqlite://{}/serval.db", self.dir.path().display())
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_stdin(args, None)
    }

    fn run_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_serval"));
        cmd.arg("--datastore").arg(self.url()).args(args);
        cmd.env_remove("SERVAL_DATASTORE");
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn serval");
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("write stdin");
        }
        drop(child.stdin.take());
        child.wait_with_output().expect("wait serval")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "serval {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).expect("utf8")
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "serval {args:?} unexpectedly succeeded"
        );
        String::from_utf8(out.stderr).expect("utf8")
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write file");
        p.display().to_string()
    }
}

fn examples_dir() -> String {
    format!("{}/../../examples", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn apply_the_examples_then_list_every_kind() {
    let env = Env::new();
    let out = env.ok(&["apply", "-f", &examples_dir()]);
    assert!(out.contains("pod/web-1 (namespace shop) created"), "{out}");
    assert!(
        out.contains("ippool.projectcalico.org/default-ipv4-ippool created"),
        "{out}"
    );

    let pods = env.ok(&["get", "pods", "-A"]);
    assert!(
        pods.lines().next().unwrap().starts_with("NAMESPACE"),
        "{pods}"
    );
    for p in ["web-1", "web-2", "client"] {
        assert!(pods.contains(p), "{pods}");
    }
    // Short and singular forms as kubectl and calicoctl accept them.
    for alias in ["po", "pod", "pods"] {
        assert!(env.ok(&["get", alias, "-n", "shop"]).contains("web-1"));
    }
    assert!(
        env.ok(&["get", "svc", "-n", "shop"])
            .contains("web-nodeport")
    );
    assert!(
        env.ok(&["get", "netpol", "-n", "shop"])
            .contains("web-allow-client")
    );
    assert!(
        env.ok(&["get", "networkpolicies", "-n", "shop"])
            .contains("allow-web-from-retail")
    );
    assert!(env.ok(&["get", "gnp"]).contains("security.deny-metadata"));
    assert!(env.ok(&["get", "tiers"]).contains("security"));
    assert!(env.ok(&["get", "felixconfigurations"]).contains("default"));
    let pools = env.ok(&["get", "ippools", "-o", "wide"]);
    assert!(
        pools.contains("10.244.0.0/16") && pools.contains("fd00:10:244::/112"),
        "{pools}"
    );

    // Re-applying the same files changes nothing.
    let again = env.ok(&["apply", "-f", &examples_dir()]);
    assert!(again.lines().all(|l| l.ends_with("unchanged")), "{again}");
}

#[test]
fn get_yaml_and_json_show_defaults_and_round_trip_through_apply() {
    let env = Env::new();
    env.ok(&[
        "apply",
        "-f",
        &format!("{}/10-ippools.yaml", examples_dir()),
    ]);
    let yaml = env.ok(&["get", "ippool", "default-ipv6-ippool", "-o", "yaml"]);
    assert!(yaml.contains("blockSize: 122"), "{yaml}");
    assert!(yaml.contains("resourceVersion:"), "{yaml}");
    let json = env.ok(&["get", "ippools", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json output parses");
    assert_eq!(v["kind"], "List");
    assert_eq!(v["items"].as_array().map(Vec::len), Some(2));

    // The YAML printed by get applies back unchanged (after dropping the resourceVersion
    // precondition, it is the same object).
    let f = env.write("back.yaml", &yaml);
    let out = env.ok(&["apply", "-f", &f]);
    assert!(out.contains("unchanged"), "{out}");
}

#[test]
fn one_bad_document_stores_nothing_and_is_named() {
    let env = Env::new();
    let f = env.write(
        "mixed.yaml",
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: good
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: good
spec:
  ports:
    - port: 70000
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: p
spec:
  cidr: 10.0.0.0/16
"#,
    );
    let err = env.fails(&["apply", "-f", &f]);
    assert!(err.contains("mixed.yaml"), "{err}");
    assert!(err.contains("document 2"), "{err}");
    assert!(err.contains("spec.ports[0].port"), "{err}");
    // Nothing was stored: not even the good documents.
    let out = env.run(&["get", "namespaces"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("good"));
    let out = env.run(&["get", "ippools"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("10.0.0.0/16"));
}

#[test]
fn overlapping_pools_are_rejected_against_stored_pools() {
    let env = Env::new();
    let a = env.write(
        "a.yaml",
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: a\nspec:\n  cidr: 10.0.0.0/8\n",
    );
    let b = env.write(
        "b.yaml",
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: b\nspec:\n  cidr: 10.1.0.0/16\n",
    );
    env.ok(&["apply", "-f", &a]);
    let err = env.fails(&["apply", "-f", &b]);
    assert!(err.contains("overlaps"), "{err}");
    assert!(err.contains("10.0.0.0/8"), "{err}");
}

#[test]
fn create_refuses_existing_and_apply_updates() {
    let env = Env::new();
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels:\n    a: b\n";
    let f = env.write("ns.yaml", ns);
    assert!(env.ok(&["create", "-f", &f]).contains("created"));
    let err = env.fails(&["create", "-f", &f]);
    assert!(err.contains("already exists"), "{err}");
    let f2 = env.write("ns2.yaml", &ns.replace("a: b", "a: c"));
    assert!(env.ok(&["apply", "-f", &f2]).contains("configured"));
    assert!(env.ok(&["get", "ns", "x", "-o", "yaml"]).contains("a: c"));
}

#[test]
fn stdin_input_and_a_stale_resource_version_is_a_conflict() {
    let env = Env::new();
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: s\n";
    let out = env.run_stdin(&["apply", "-f", "-"], Some(ns));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = env.ok(&["get", "ns", "s", "-o", "yaml"]);
    // Change it once, then apply the old copy with its old resourceVersion: refused.
    env.run_stdin(
        &["apply", "-f", "-"],
        Some(&format!("{ns}  labels:\n    v: '2'\n")),
    );
    let stale = yaml.replace("name: s", "name: s\n  labels:\n    v: '3'");
    let out = env.run_stdin(&["apply", "-f", "-"], Some(&stale));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("modified concurrently") || err.contains("revision"),
        "{err}"
    );
}

#[test]
fn delete_by_name_by_file_and_namespace_cascade() {
    let env = Env::new();
    env.ok(&["apply", "-f", &examples_dir()]);
    assert!(
        env.ok(&["delete", "pod", "web-1", "-n", "shop"])
            .contains("deleted")
    );
    assert!(!env.ok(&["get", "pods", "-n", "shop"]).contains("web-1"));
    let err = env.fails(&["delete", "pod", "web-1", "-n", "shop"]);
    assert!(err.contains("not found"), "{err}");
    env.ok(&["delete", "pod", "web-1", "-n", "shop", "--ignore-not-found"]);

    env.ok(&[
        "delete",
        "-f",
        &format!("{}/40-policies.yaml", examples_dir()),
    ]);
    let out = env.run(&["get", "gnp"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("security.deny-metadata"));

    // Deleting a namespace deletes what is in it.
    env.ok(&["delete", "namespace", "shop"]);
    let out = env.run(&["get", "svc", "-n", "shop"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("web"));
    assert!(env.ok(&["get", "pods", "-A"]).contains("client"));
}

#[test]
fn services_get_cluster_ips_and_node_ports_allocated_and_kept() {
    let env = Env::new();
    let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: np\nspec:\n  type: NodePort\n  selector:\n    app: x\n  ports:\n    - port: 80\n";
    let f = env.write("svc.yaml", svc);
    env.ok(&["apply", "-f", &f]);
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["get", "svc", "np", "-o", "json"])).unwrap();
    let ip = v["spec"]["clusterIP"]
        .as_str()
        .expect("allocated clusterIP")
        .to_string();
    assert!(ip.starts_with("10.9"), "{ip}");
    let np = v["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .expect("allocated nodePort");
    assert!((30000..=32767).contains(&np));
    // Re-applying the same file keeps both.
    env.ok(&["apply", "-f", &f]);
    let v2: serde_json::Value =
        serde_json::from_str(&env.ok(&["get", "svc", "np", "-o", "json"])).unwrap();
    assert_eq!(v2["spec"]["clusterIP"], v["spec"]["clusterIP"]);
    assert_eq!(
        v2["spec"]["ports"][0]["nodePort"],
        v["spec"]["ports"][0]["nodePort"]
    );
    // Another service asking for the same node port is refused.
    let other = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: np2\nspec:\n  type: NodePort\n  ports:\n    - port: 81\n      nodePort: {np}\n"
    );
    let f2 = env.write("svc2.yaml", &other);
    let err = env.fails(&["apply", "-f", &f2]);
    assert!(err.contains("already allocated"), "{err}");
}

#[test]
fn usage_errors_name_the_problem() {
    let env = Env::new();
    let err = env.fails(&["get", "nonsense"]);
    assert!(err.contains("unknown resource type"), "{err}");
    let err = env.fails(&["get", "pods", "missing"]);
    assert!(err.contains("not found"), "{err}");
    let err = env.fails(&["apply", "-f", "/nonexistent/file.yaml"]);
    assert!(err.contains("/nonexistent/file.yaml"), "{err}");
    let wep = "apiVersion: serval.dev/v1\nkind: WorkloadEndpoint\nmetadata:\n  name: w\n  namespace: default\nspec:\n  pod: w\n  node: n\n  interfaceName: x\n";
    let f = env.write("wep.yaml", wep);
    let err = env.fails(&["apply", "-f", &f]);
    assert!(err.to_lowercase().contains("workloadendpoint"), "{err}");
}
