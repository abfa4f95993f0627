//! End-to-end tests of `serval lab` (root; real namespaces, veths, agents, CNI plugin).
//!
//! Every test brings up its own uniquely named lab and removes it on drop, even on panic, so
//! the tests run in parallel with each other and with other labs on the host.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use common::{Lab, ensure_cni, require_root, serval, text, unique};

impl Lab {
    fn up(tag: &str, args: &[&str]) -> Lab {
        Lab::up_with(tag, &[], args)
    }

    fn state(&self) -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(self.dir().join("lab.json")).expect("lab.json"),
        )
        .expect("lab.json parses")
    }

    fn cmd(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.splice(2..2, ["--name", self.name.as_str()]);
        serval(&all)
    }

    fn probe(&self, from: &str, to: &str, port: u16, extra: &[&str]) -> Output {
        let port = port.to_string();
        let mut args = vec![
            "lab",
            "probe",
            "--from",
            from,
            "--to",
            to,
            "--port",
            &port,
            "--timeout-ms",
            "1000",
        ];
        args.extend_from_slice(extra);
        self.cmd(&args)
    }

    fn matrix_json(&self, extra: &[&str]) -> Value {
        let mut args = vec!["lab", "matrix", "-o", "json", "--timeout-ms", "1000"];
        args.extend_from_slice(extra);
        let o = self.cmd(&args);
        assert!(o.status.success(), "matrix: {}", text(&o));
        serde_json::from_slice(&o.stdout).expect("matrix json")
    }
}

/// Three pods: two on node1, one on node2, serving TCP 80 and UDP 80.
fn pods_yaml(dir: &Path) -> PathBuf {
    let mut y = String::from("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: blue\n");
    for (ns, pod, node) in [
        ("default", "a", "node1"),
        ("blue", "b", "node1"),
        ("blue", "c", "node2"),
    ] {
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\n  namespace: {ns}\n  labels:\n    app: {pod}\nspec:\n  \
             nodeName: {node}\n  containers:\n    - name: srv\n      ports:\n        - containerPort: 80\n        \
             - containerPort: 80\n          protocol: UDP\n          name: u80\n"
        ));
    }
    let path = dir.join("pods.yaml");
    std::fs::write(&path, y).expect("write pods.yaml");
    path
}

/// Every pod reaches every pod (within a node and across nodes) over TCP, and the replies
/// name the target pod.
fn assert_full_matrix(lab: &Lab, extra: &[&str], family: Option<&str>) {
    let m = lab.matrix_json(extra);
    let pods: Vec<&str> = m["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .map(|p| p.as_str().expect("str"))
        .collect();
    assert_eq!(pods, ["blue/b", "blue/c", "default/a"], "{m:#}");
    for r in m["results"].as_array().expect("results") {
        assert_eq!(
            r["reached"], true,
            "{} -> {} not reached: {r:#}",
            r["from"], r["to"]
        );
        assert_eq!(r["reply"], r["to"], "wrong pod answered: {r:#}");
        let ip: std::net::IpAddr = r["ip"].as_str().expect("ip").parse().expect("ip parses");
        match family {
            Some("4") => assert!(ip.is_ipv4(), "{r:#}"),
            Some("6") => assert!(ip.is_ipv6(), "{r:#}"),
            _ => {}
        }
    }
}

fn connectivity(tag: &str, family: &str, encap: &str) {
    require_root!();
    let tmp = tempfile::tempdir().expect("tempdir");
    let pods = pods_yaml(tmp.path());
    let lab = Lab::up(
        tag,
        &[
            "--ip-family",
            family,
            "--encapsulation",
            encap,
            "-f",
            pods.to_str().expect("utf8"),
        ],
    );
    match family {
        "dual" => {
            assert_full_matrix(&lab, &["--family", "4"], Some("4"));
            assert_full_matrix(&lab, &["--family", "6"], Some("6"));
        }
        "ipv6" => assert_full_matrix(&lab, &[], Some("6")),
        _ => assert_full_matrix(&lab, &[], Some("4")),
    }
    // UDP across nodes.
    let o = lab.probe("default/a", "blue/c", 80, &["--protocol", "udp"]);
    assert!(o.status.success(), "udp across nodes: {}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("blue/c"),
        "{}",
        text(&o)
    );
    // The outside host reaches pods on both nodes where routing allows it (no encapsulation:
    // it routes the pod CIDR via node1, which forwards natively).
    if encap == "none" {
        for to in ["default/a", "blue/c"] {
            let fams: &[&str] = if family == "dual" { &["4", "6"] } else { &[""] };
            for f in fams {
                let mut extra = vec![];
                if !f.is_empty() {
                    extra = vec!["--family", f];
                }
                let o = lab.probe("outside", to, 80, &extra);
                assert!(
                    o.status.success(),
                    "outside -> {to} (family {f:?}): {}",
                    text(&o)
                );
            }
        }
    }
}

#[test]
fn ipv4_native() {
    connectivity("c4n", "ipv4", "none");
}

#[test]
fn ipv4_vxlan() {
    connectivity("c4v", "ipv4", "vxlan");
}

#[test]
fn ipv6_native() {
    connectivity("c6n", "ipv6", "none");
}

#[test]
fn ipv6_vxlan() {
    connectivity("c6v", "ipv6", "vxlan");
}

#[test]
fn dual_native() {
    connectivity("cdn", "dual", "none");
}

#[test]
fn dual_vxlan() {
    connectivity("cdv", "dual", "vxlan");
}

/// Probe exit codes (0 reached, 1 not, 2 usage), probe JSON, matrix table format, exec
/// status pass-through, pods applied after `up` with `serval --lab`, and `status`.
#[test]
fn probe_matrix_exec_and_apply() {
    require_root!();
    let lab = Lab::up("pm", &["--demo"]);
    let name = lab.name.clone();

    // Pods applied later through the ordinary CLI, with no node: placed round-robin.
    let tmp = tempfile::tempdir().expect("tempdir");
    let extra = tmp.path().join("late.yaml");
    std::fs::write(
        &extra,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: late\n  namespace: default\nspec:\n  containers:\n    - name: c\n      \
         ports:\n        - containerPort: 80\n",
    )
    .expect("write");
    let o = serval(&["--lab", &name, "apply", "-f", extra.to_str().expect("utf8")]);
    assert!(o.status.success(), "apply: {}", text(&o));
    // `lab wait` returns once the pod is ready and routed from every node.
    let o = lab.cmd(&["lab", "wait", "--timeout-secs", "30"]);
    assert!(o.status.success(), "lab wait: {}", text(&o));
    let o = lab.probe("demo-a/web", "default/late", 80, &[]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "the late pod does not answer: {}",
        text(&o)
    );

    // 0: reached, with the JSON shape.
    let o = lab.probe("demo-a/web", "demo-b/db", 80, &["-o", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let j: Value = serde_json::from_slice(&o.stdout).expect("probe json");
    for key in [
        "from",
        "to",
        "ip",
        "port",
        "protocol",
        "reached",
        "reply",
        "elapsed_ms",
    ] {
        assert!(j.get(key).is_some(), "probe json lacks {key}: {j:#}");
    }
    assert_eq!(j["reached"], true);
    assert_eq!(j["reply"], "demo-b/db");
    assert_eq!(j["protocol"], "tcp");
    // By IP too.
    let ip = j["ip"].as_str().expect("ip").to_string();
    let o = lab.probe("outside", &ip, 80, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // 1: a port nothing listens on; an address nobody has.
    let o = lab.probe("demo-a/web", "demo-b/db", 8080, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = lab.probe("demo-a/web", "10.244.255.254", 80, &["--protocol", "udp"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    // 2: usage errors.
    for (from, to) in [
        ("demo-a/nope", "demo-b/db"),
        ("demo-a/web", "demo-b/nope"),
        ("demo-a/web", "not-a-target"),
        ("nonode", "demo-b/db"),
    ] {
        let o = lab.probe(from, to, 80, &[]);
        assert_eq!(o.status.code(), Some(2), "{from} -> {to}: {}", text(&o));
    }
    let o = serval(&[
        "lab",
        "probe",
        "--name",
        "nosuchlab99",
        "--from",
        "outside",
        "--to",
        "1.2.3.4",
        "--port",
        "80",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    // The matrix as a truth table: a header of targets, one row per source.
    let o = lab.cmd(&["lab", "matrix"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let pods = [
        "default/late",
        "demo-a/db",
        "demo-a/web",
        "demo-b/db",
        "demo-b/web",
    ];
    let header = out
        .lines()
        .find(|l| l.starts_with("-\t"))
        .unwrap_or_else(|| panic!("no header in:\n{out}"));
    let cols: Vec<&str> = header.split('\t').skip(1).collect();
    assert_eq!(cols, pods, "{out}");
    for from in pods {
        let row = out
            .lines()
            .find(|l| l.starts_with(&format!("{from}\t")))
            .unwrap_or_else(|| panic!("no row {from}:\n{out}"));
        let marks: Vec<&str> = row.split('\t').skip(1).collect();
        assert_eq!(marks, vec!["."; pods.len()], "{out}");
    }
    // A port only some pods serve (the demo pods serve 81, `late` does not): X in its column.
    let m = lab.matrix_json(&["--port", "81"]);
    let names: Vec<&str> = m["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let late = names
        .iter()
        .position(|p| *p == "default/late")
        .expect("late in matrix");
    for (i, row) in m["reachable"]
        .as_array()
        .expect("reachable")
        .iter()
        .enumerate()
    {
        for (j, cell) in row.as_array().expect("row").iter().enumerate() {
            assert_eq!(
                cell.as_bool(),
                Some(j != late),
                "{} -> {}: {m:#}",
                names[i],
                names[j]
            );
        }
    }

    // exec: runs inside the pod's namespace, exit status passed through.
    let o = lab.cmd(&[
        "lab",
        "exec",
        "demo-a/web",
        "--",
        "sh",
        "-c",
        "cat /proc/net/dev | grep -q eth0 && exit 7",
    ]);
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    let o = lab.cmd(&["lab", "exec", "demo-a/nope", "--", "true"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    // status knows the lab, its agents and pods.
    let o = serval(&["lab", "status", "--name", &name, "-o", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let st: Value = serde_json::from_slice(&o.stdout).expect("status json");
    assert_eq!(st[0]["name"], name.as_str());
    assert_eq!(st[0]["health"], "up", "{st:#}");
    assert_eq!(st[0]["pods"], 5, "{st:#}");
    assert!(
        st[0]["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .all(|n| n["agent_alive"] == true),
        "{st:#}"
    );

    // up for an existing name is a usage error and leaves the lab alone.
    let o = serval(&["lab", "up", "--name", &name]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = lab.probe("demo-a/web", "demo-b/db", 80, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

fn root_links() -> Vec<String> {
    let o = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

fn netns_of(name: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.starts_with(&format!("sv-{name}-")))
                .collect()
        })
        .unwrap_or_default()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next())
                != Some("Z")
        })
        .unwrap_or(false)
}

fn pids_under(dir: &Path, out: &mut Vec<u32>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            pids_under(&p, out);
        } else if p.extension().is_some_and(|x| x == "pid")
            && let Some(pid) = std::fs::read_to_string(&p)
                .ok()
                .and_then(|s| s.trim().parse().ok())
        {
            out.push(pid);
        }
    }
}

/// After `lab down` nothing of the lab remains: namespaces, root links, routes, processes
/// (agents, pod servers, etcd), files. Down is idempotent and cleans up half-made labs.
#[test]
fn hygiene() {
    require_root!();
    let lab = Lab::up(
        "hy",
        &[
            "--datastore",
            "etcd",
            "--encapsulation",
            "vxlan-cross-subnet",
            "--ip-family",
            "dual",
            "--demo",
        ],
    );
    let st = lab.state();
    let bridge = st["bridge"].as_str().expect("bridge").to_string();
    let index = st["index"].as_u64().expect("index");
    let veths: Vec<String> = st["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .chain([&st["outside"], &st["router"]])
        .map(|h| h["host_veth"].as_str().expect("host_veth").to_string())
        .collect();
    // Cross-subnet VXLAN over the routed underlay, etcd datastore: still every pod to every pod.
    for fam in ["4", "6"] {
        let m = lab.matrix_json(&["--family", fam]);
        let n = m["pods"].as_array().expect("pods").len();
        assert_eq!(n, 4, "{m:#}");
        assert!(
            m["results"]
                .as_array()
                .expect("results")
                .iter()
                .all(|r| r["reached"] == true),
            "{m:#}"
        );
    }
    let mut pids = Vec::new();
    pids_under(&lab.dir(), &mut pids);
    assert!(
        pids.len() >= 7, // 2 agents, 4 pod servers, etcd
        "agents, pod servers and etcd have pid files: {pids:?}"
    );
    assert!(pids.iter().all(|p| alive(*p)), "{pids:?}");
    let links = root_links();
    assert!(links.contains(&bridge), "{links:?}");
    assert!(
        netns_of(&lab.name).len() >= 2 + 1 + 1 + 4,
        "{:?}",
        netns_of(&lab.name)
    );

    let o = serval(&["lab", "down", "--name", &lab.name]);
    assert!(o.status.success(), "{}", text(&o));

    assert_eq!(netns_of(&lab.name), Vec::<String>::new());
    let links = root_links();
    assert!(!links.contains(&bridge), "bridge {bridge} left: {links:?}");
    for v in &veths {
        assert!(!links.contains(v), "veth {v} left: {links:?}");
    }
    let routes = Command::new("ip")
        .args(["route", "show"])
        .output()
        .expect("ip route");
    let routes = String::from_utf8_lossy(&routes.stdout).to_string();
    assert!(
        !routes.contains(&format!("172.31.{index}.")),
        "underlay route left:\n{routes}"
    );
    let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "processes left: {left:?}");
    assert!(!lab.dir().exists(), "lab dir left");

    // Idempotent.
    let o = serval(&["lab", "down", "--name", &lab.name]);
    assert!(o.status.success(), "{}", text(&o));

    // A half-made lab: a directory without lab.json and a stray node namespace.
    std::fs::create_dir_all(lab.dir()).expect("mkdir");
    std::fs::write(lab.dir().join("index"), "249\n").expect("write");
    let stray = format!("sv-{}-node1", lab.name);
    let ok = Command::new("ip")
        .args(["netns", "add", &stray])
        .status()
        .expect("ip netns add");
    assert!(ok.success());
    let o = serval(&["lab", "down", "--name", &lab.name]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(netns_of(&lab.name), Vec::<String>::new());
    assert!(!lab.dir().exists());
}

/// An `up` that fails after the agents started (a pod that never becomes ready) removes
/// everything it made.
#[test]
fn failed_up_cleans_up() {
    require_root!();
    ensure_cni();
    let name = unique("fail");
    let _ = serval(&["lab", "down", "--name", &name]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let pod = tmp.path().join("pod.yaml");
    std::fs::write(
        &pod,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: lost\n  namespace: default\nspec:\n  nodeName: node9\n  \
         containers:\n    - name: c\n",
    )
    .expect("write");
    let o = serval(&[
        "lab",
        "up",
        "--name",
        &name,
        "--timeout-secs",
        "2",
        "-f",
        pod.to_str().expect("utf8"),
    ]);
    let guard = Lab { name: name.clone() };
    assert!(!o.status.success(), "up should fail: {}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("did not come up"),
        "{}",
        text(&o)
    );
    assert_eq!(netns_of(&name), Vec::<String>::new());
    assert!(!guard.dir().exists(), "lab dir left after a failed up");
    // Files are checked before anything is made.
    let o = serval(&["lab", "up", "--name", &name, "-f", "/nonexistent/pods.yaml"]);
    assert!(!o.status.success());
    assert!(!guard.dir().exists());
}

/// `--dataplane` is recorded (lab.json, FelixConfiguration `bpfEnabled`), and two labs side
/// by side get their own subnets, bridges and namespaces.
#[test]
fn dataplane_recorded_and_labs_side_by_side() {
    require_root!();
    let a = Lab::up("sba", &["--nodes", "1", "--dataplane", "bpf"]);
    let b = Lab::up("sbb", &["--nodes", "1"]);
    let (sa, sb) = (a.state(), b.state());
    assert_eq!(sa["dataplane"], "bpf");
    assert_eq!(sb["dataplane"], "iptables");
    for (lab, want) in [(&a, true), (&b, false)] {
        let o = serval(&[
            "--lab",
            &lab.name,
            "get",
            "felixconfigurations",
            "default",
            "-o",
            "json",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let fc: Value = serde_json::from_slice(&o.stdout).expect("json");
        assert_eq!(fc["spec"]["bpfEnabled"], want, "{fc:#}");
    }
    assert_ne!(sa["index"], sb["index"]);
    assert_ne!(sa["bridge"], sb["bridge"]);
    assert_ne!(sa["nodes"][0]["addrs"], sb["nodes"][0]["addrs"]);
    assert!(
        netns_of(&a.name)
            .iter()
            .all(|n| !n.starts_with(&format!("sv-{}-", b.name)))
    );
    // Removing one leaves the other working.
    let bname = b.name.clone();
    drop(b);
    assert_eq!(netns_of(&bname), Vec::<String>::new());
    let o = serval(&["lab", "status", "--name", &a.name, "-o", "json"]);
    let st: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(st[0]["health"], "up", "{st:#}");
}
