//! End-to-end tests of `serval lab up --routing bgp` (root; real BIRD on every node, real FRR
//! or BIRD as the home router, real agents and CNI plugin).
//!
//! Every test brings up its own uniquely named lab and removes it on drop, even on panic, so
//! the tests run in parallel with each other and with other labs on the host. The lab uses
//! short BGP timers (`serval agent --bgp-fast-timers`), so sessions come up within seconds.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde_json::Value;

use common::{Lab, serval, text};

/// Skips (with the reason) unless we are root and BIRD and FRR are installed.
macro_rules! require_bgp_lab {
    () => {
        common::require_root!("BGP lab tests");
        for bin in ["/usr/sbin/bird", "/usr/sbin/birdc", "/usr/lib/frr/bgpd"] {
            if !Path::new(bin).exists() {
                eprintln!("skipped: {bin} is missing (install Debian's bird2 and frr)");
                return;
            }
        }
    };
}

impl Lab {
    /// `tag` ≤ 7 characters; the name adds this process's id.
    fn up(tag: &str, args: &[&str]) -> Lab {
        Lab::up_with(tag, &["--routing", "bgp"], args)
    }

    fn node_netns(&self, node: &str) -> String {
        format!("sv-{}-{node}", self.name)
    }

    fn router_netns(&self) -> String {
        format!("sv-{}-router", self.name)
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut all = vec!["--lab", self.name.as_str()];
        all.extend_from_slice(args);
        serval(&all)
    }

    fn apply(&self, yaml: &str) {
        let path = self.dir().join(format!("test-{}.yaml", fnv(yaml)));
        std::fs::write(&path, yaml).expect("write yaml");
        let o = self.run(&["apply", "-f", path.to_str().expect("utf-8")]);
        assert!(o.status.success(), "apply: {}", text(&o));
    }

    fn wait_pods(&self) {
        let o = serval(&["lab", "wait", "--name", &self.name, "--timeout-secs", "60"]);
        assert!(o.status.success(), "lab wait: {}", text(&o));
    }

    /// `serval node status -o json`.
    fn node_status(&self) -> Value {
        let o = self.run(&["node", "status", "-o", "json"]);
        assert!(o.status.success(), "node status: {}", text(&o));
        serde_json::from_slice(&o.stdout).expect("node status json")
    }

    /// Pod id → (node, addresses), from `get pods -o json`... via the WorkloadEndpoints.
    fn pods(&self) -> BTreeMap<String, (String, Vec<IpAddr>)> {
        let o = self.run(&["get", "workloadendpoints", "-A", "-o", "json"]);
        assert!(o.status.success(), "get weps: {}", text(&o));
        let v: Value = serde_json::from_slice(&o.stdout).expect("weps json");
        let items = v
            .get("items")
            .and_then(Value::as_array)
            .cloned()
            .or_else(|| v.as_array().cloned())
            .unwrap_or_default();
        items
            .iter()
            .map(|w| {
                let ns = w["metadata"]["namespace"].as_str().expect("ns");
                let pod = w["spec"]["pod"].as_str().expect("pod");
                let node = w["spec"]["node"].as_str().expect("node").to_owned();
                let ips = w["spec"]["ipNetworks"]
                    .as_array()
                    .expect("ipNetworks")
                    .iter()
                    .map(|n| {
                        n.as_str()
                            .expect("str")
                            .parse::<IpNet>()
                            .expect("cidr")
                            .addr()
                    })
                    .collect();
                (format!("{ns}/{pod}"), (node, ips))
            })
            .collect()
    }

    fn probe(&self, from: &str, to: &str) -> Output {
        serval(&[
            "lab",
            "probe",
            "--name",
            &self.name,
            "--from",
            from,
            "--to",
            to,
            "--port",
            "80",
            "--timeout-ms",
            "1000",
        ])
    }

    /// Every pod reaches every pod, and the replies name the target.
    fn assert_full_matrix(&self, expected_pods: usize) {
        let o = serval(&[
            "lab",
            "matrix",
            "--name",
            &self.name,
            "-o",
            "json",
            "--timeout-ms",
            "1000",
        ]);
        assert!(o.status.success(), "matrix: {}", text(&o));
        let m: Value = serde_json::from_slice(&o.stdout).expect("matrix json");
        assert_eq!(
            m["pods"].as_array().expect("pods").len(),
            expected_pods,
            "{m:#}"
        );
        for r in m["results"].as_array().expect("results") {
            assert_eq!(
                r["reached"], true,
                "{} -> {} not reached: {r:#}",
                r["from"], r["to"]
            );
            assert_eq!(r["reply"], r["to"], "wrong pod answered: {r:#}");
        }
    }

    fn pid(&self, rel: &str) -> Option<u32> {
        std::fs::read_to_string(self.dir().join(rel))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// One pod per node (`p1` on node1, …) in namespace `default`, serving TCP 80.
fn pods_yaml(nodes: u32) -> String {
    (1..=nodes)
        .map(|k| {
            format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p{k}\n  namespace: default\nspec:\n  \
                 nodeName: node{k}\n  containers:\n    - name: srv\n      ports:\n        - containerPort: 80\n"
            )
        })
        .collect()
}

/// A kernel route as `ip -j route` prints it.
#[derive(Debug, Clone)]
struct KRoute {
    dst: IpNet,
    protocol: String,
    kind: String,
}

fn kernel_routes(netns: &str) -> Vec<KRoute> {
    let mut out = Vec::new();
    for fam in ["-4", "-6"] {
        let o = Command::new("ip")
            .args([fam, "-j", "-n", netns, "route", "show"])
            .output()
            .expect("ip route");
        assert!(o.status.success(), "ip route in {netns}: {}", text(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Array(vec![]));
        for r in v.as_array().into_iter().flatten() {
            let dst = r["dst"].as_str().unwrap_or("");
            let dst: IpNet = match dst.parse::<IpNet>() {
                Ok(n) => n,
                Err(_) => match dst.parse::<IpAddr>() {
                    Ok(a) => IpNet::from(a),
                    Err(_) => continue,
                },
            };
            out.push(KRoute {
                dst,
                protocol: r["protocol"]
                    .as_str()
                    .map(str::to_owned)
                    .or_else(|| r["protocol"].as_u64().map(|n| n.to_string()))
                    .unwrap_or_default(),
                kind: r["type"].as_str().unwrap_or("unicast").to_owned(),
            });
        }
    }
    out
}

/// The most specific route to `ip`.
fn route_to(routes: &[KRoute], ip: IpAddr) -> Option<&KRoute> {
    routes
        .iter()
        .filter(|r| r.dst.contains(&ip))
        .max_by_key(|r| r.dst.prefix_len())
}

fn is_bird(r: &KRoute) -> bool {
    r.protocol == "bird" || r.protocol == "12"
}

/// Polls `check` (which returns why it is not yet true) until it passes or `secs` pass.
fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match check() {
            Ok(()) => return,
            Err(why) if Instant::now() > deadline => panic!("{what}: not within {secs} s: {why}"),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// On every node, the route to every other node's pods is BIRD's (`proto bird`), a unicast
/// /26 or /122 block route — never Serval's static routing (protocol 80).
fn routes_to_remote_pods_are_birds(
    lab: &Lab,
    pods: &BTreeMap<String, (String, Vec<IpAddr>)>,
    nodes: &[&str],
) -> Result<(), String> {
    for node in nodes {
        let routes = kernel_routes(&lab.node_netns(node));
        for (pod, (pod_node, ips)) in pods {
            if pod_node == node || !nodes.contains(&pod_node.as_str()) {
                continue;
            }
            for ip in ips {
                let r = route_to(&routes, *ip).ok_or(format!("{node}: no route to {pod} {ip}"))?;
                if !is_bird(r) || r.kind != "unicast" {
                    return Err(format!("{node}: route to {pod} {ip} is {r:?}, not BIRD's"));
                }
                // And nothing else for that block: Serval's static routing (protocol 80) stays
                // out of it.
                if let Some(other) = routes.iter().find(|o| o.dst == r.dst && !is_bird(o)) {
                    return Err(format!("{node}: {other:?} next to BIRD's route to {pod}"));
                }
                let block_len = if ip.is_ipv4() { 26 } else { 122 };
                if r.dst.prefix_len() != block_len {
                    return Err(format!("{node}: route to {pod} {ip} is {r:?}, not a block"));
                }
            }
        }
    }
    Ok(())
}

/// The home router holds a route (its implementation's protocol) for every pod's block.
fn router_routes_every_pod(
    lab: &Lab,
    pods: &BTreeMap<String, (String, Vec<IpAddr>)>,
    protocol: &[&str],
) -> Result<(), String> {
    let routes = kernel_routes(&lab.router_netns());
    for (pod, (_, ips)) in pods {
        for ip in ips {
            let r = route_to(&routes, *ip).ok_or(format!("router: no route to {pod} {ip}"))?;
            if !protocol.contains(&r.protocol.as_str()) {
                return Err(format!("router: route to {pod} {ip} is {r:?}"));
            }
        }
    }
    Ok(())
}

/// Every node's BIRD runs with exactly `sessions` sessions, all Established; returns the
/// status.
fn all_established(lab: &Lab, sessions: &[(&str, usize)]) -> Result<Value, String> {
    let st = lab.node_status();
    for (node, n) in sessions {
        let s = st
            .as_array()
            .and_then(|a| a.iter().find(|x| x["node"] == *node))
            .ok_or(format!("{node} missing from node status"))?;
        if s["running"] != true {
            return Err(format!("{node}: BIRD not running: {s}"));
        }
        let list = s["sessions"].as_array().cloned().unwrap_or_default();
        if list.len() != *n || list.iter().any(|x| x["established"] != true) {
            return Err(format!("{node}: want {n} established sessions: {s:#}"));
        }
    }
    Ok(st)
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X")
    })
}

/// 3 nodes in a full mesh plus the home router: BIRD's routes between nodes, the router's
/// routes to every block, pod-to-pod and outside-to-pod without NAT, node status, and
/// `lab down` stopping every BIRD and FRR daemon.
fn mesh_lab(tag: &str, family: &str) {
    let lab = Lab::up(tag, &["--nodes", "3", "--ip-family", family]);
    lab.apply(&pods_yaml(3));
    lab.wait_pods();
    let pods = lab.pods();
    assert_eq!(pods.len(), 3, "{pods:?}");
    for (_, ips) in pods.values() {
        assert!(
            ips.iter().all(|ip| ip.is_ipv6() == (family == "ipv6")),
            "{pods:?}"
        );
    }
    let nodes = ["node1", "node2", "node3"];
    // Two mesh sessions and the home router, per node.
    let st = all_established(&lab, &[("node1", 3), ("node2", 3), ("node3", 3)])
        .unwrap_or_else(|e| panic!("{e}"));
    let kinds: Vec<&str> = st[0]["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| s["type"].as_str().expect("type"))
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "node-to-node mesh").count(),
        2,
        "{st:#}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "global").count(),
        1,
        "{st:#}"
    );
    let o = serval(&["lab", "status", "--name", &lab.name, "-o", "json"]);
    let ls: Value = serde_json::from_slice(&o.stdout).expect("lab status json");
    assert_eq!(ls[0]["routing"], "bgp", "{ls:#}");
    assert_eq!(ls[0]["bgp_router"], "frr", "{ls:#}");
    let table = lab.run(&["node", "status"]);
    let t = String::from_utf8_lossy(&table.stdout);
    assert!(
        t.contains("Node node2: BIRD is running.") && t.contains("Established"),
        "{t}"
    );

    eventually(30, "BIRD's routes to remote blocks", || {
        routes_to_remote_pods_are_birds(&lab, &pods, &nodes)
    });
    eventually(30, "FRR's routes to every block", || {
        router_routes_every_pod(&lab, &pods, &["bgp", "186"])
    });
    lab.assert_full_matrix(3);
    for pod in pods.keys() {
        let o = lab.probe("outside", pod);
        assert!(o.status.success(), "outside -> {pod}: {}", text(&o));
    }

    // `lab down` stops every BIRD and the FRR daemons, and removes their files.
    let mut pids: Vec<u32> = nodes
        .iter()
        .filter_map(|n| lab.pid(&format!("nodes/{n}/bird/bird.pid")))
        .collect();
    assert_eq!(pids.len(), 3, "a BIRD pid file per node");
    pids.extend(
        ["router/run/zebra.pid", "router/run/bgpd.pid"]
            .iter()
            .filter_map(|f| lab.pid(f)),
    );
    assert_eq!(pids.len(), 5, "FRR's zebra and bgpd pid files");
    assert!(pids.iter().all(|p| alive(*p)));
    let dir = lab.dir();
    let o = serval(&["lab", "down", "--name", &lab.name]);
    assert!(o.status.success(), "lab down: {}", text(&o));
    let still: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    assert!(still.is_empty(), "still running after lab down: {still:?}");
    assert!(!dir.exists());
}

#[test]
fn mesh_ipv4_with_frr_router() {
    require_bgp_lab!();
    mesh_lab("bgp4m", "ipv4");
}

#[test]
fn mesh_ipv6_only_with_frr_router() {
    require_bgp_lab!();
    mesh_lab("bgp6m", "ipv6");
}

/// 4 nodes, mesh off, node1 a route reflector (routeReflectorClusterID) peered with every
/// other node by a peerSelector; the home router runs BIRD. Every pod reaches every pod over
/// reflected routes.
#[test]
fn route_reflector_with_bird_router() {
    require_bgp_lab!();
    let lab = Lab::up("bgprr", &["--nodes", "4", "--router", "bird"]);
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(lab.dir().join("lab.json")).expect("lab.json"),
    )
    .expect("lab.json parses");
    let addr_of = |node: &str| -> String {
        state["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .find(|n| n["name"] == node)
            .and_then(|n| n["addrs"][0].as_str())
            .expect("node address")
            .to_owned()
    };
    let rr = format!(
        "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata:\n  name: default\nspec:\n  \
         asNumber: 64512\n  nodeToNodeMeshEnabled: false\n  serviceClusterIPs:\n    - cidr: 10.96.0.0/12\n---\napiVersion: projectcalico.org/v3\nkind: Node\n\
         metadata:\n  name: node1\n  labels:\n    kubernetes.io/hostname: node1\n    serval.dev/lab-subnet: \"0\"\n    \
         route-reflector: \"true\"\nspec:\n  bgp:\n    ipv4Address: {}\n    routeReflectorClusterID: 224.0.0.1\n\
         ---\napiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: peer-with-rr\nspec:\n  \
         nodeSelector: all()\n  peerSelector: route-reflector == 'true'\n",
        addr_of("node1")
    );
    lab.apply(&rr);
    lab.apply(&pods_yaml(4));
    lab.wait_pods();
    let pods = lab.pods();
    assert_eq!(pods.len(), 4);
    // node1: three reflector clients and the router; the others: the reflector and the router.
    let st = {
        let mut last = Value::Null;
        eventually(30, "route reflector sessions", || {
            last = all_established(
                &lab,
                &[("node1", 4), ("node2", 2), ("node3", 2), ("node4", 2)],
            )?;
            Ok(())
        });
        last
    };
    for n in st.as_array().expect("nodes") {
        for s in n["sessions"].as_array().expect("sessions") {
            assert_ne!(s["type"], "node-to-node mesh", "mesh is off: {st:#}");
        }
    }
    let node2: Vec<&str> = st[1]["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| s["type"].as_str().expect("type"))
        .collect();
    assert!(node2.contains(&"route reflector"), "{st:#}");
    let nodes = ["node1", "node2", "node3", "node4"];
    eventually(30, "reflected routes on every node", || {
        routes_to_remote_pods_are_birds(&lab, &pods, &nodes)
    });
    eventually(30, "the BIRD router's routes to every block", || {
        router_routes_every_pod(&lab, &pods, &["bird", "12"])
    });
    // BGPConfiguration serviceClusterIPs: every node announces the range; the router has it.
    eventually(30, "the service range on the router", || {
        let routes = kernel_routes(&lab.router_netns());
        match routes.iter().find(|r| r.dst.to_string() == "10.96.0.0/12") {
            Some(r) if is_bird(r) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    lab.assert_full_matrix(4);
    let o = lab.probe("outside", "default/p3");
    assert!(o.status.success(), "outside -> p3: {}", text(&o));
}

/// BIRD killed on a node: the agent starts it again and the routes come back. A node
/// removed: its routes are withdrawn on every node and on the router.
#[test]
fn bird_restart_and_node_removal() {
    require_bgp_lab!();
    let lab = Lab::up("bgpkr", &["--nodes", "3"]);
    lab.apply(&pods_yaml(3));
    lab.wait_pods();
    let pods = lab.pods();
    let nodes = ["node1", "node2", "node3"];
    eventually(30, "BIRD's routes", || {
        routes_to_remote_pods_are_birds(&lab, &pods, &nodes)
    });

    // Kill node2's BIRD and flush the routes it had installed.
    let old = lab.pid("nodes/node2/bird/bird.pid").expect("bird pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(old).expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill BIRD");
    let o = Command::new("ip")
        .args([
            "-n",
            &lab.node_netns("node2"),
            "route",
            "flush",
            "proto",
            "bird",
        ])
        .output()
        .expect("ip route flush");
    assert!(o.status.success(), "{}", text(&o));
    eventually(30, "a new BIRD on node2", || {
        match lab.pid("nodes/node2/bird/bird.pid") {
            Some(p) if p != old && alive(p) => Ok(()),
            other => Err(format!("pid {other:?}")),
        }
    });
    eventually(30, "node2's sessions back", || {
        all_established(&lab, &[("node1", 3), ("node2", 3), ("node3", 3)]).map(|_| ())
    });
    eventually(30, "node2's routes back", || {
        routes_to_remote_pods_are_birds(&lab, &pods, &nodes)
    });
    lab.assert_full_matrix(3);

    // Remove node3: its Node resource goes; the others drop the session, its BIRD stops.
    let (_, p3_ips) = pods.get("default/p3").expect("p3").clone();
    let o = lab.run(&["delete", "node", "node3"]);
    assert!(o.status.success(), "delete node: {}", text(&o));
    let p3_ips = &p3_ips;
    let withdrawn = |netns: String| {
        move || -> Result<(), String> {
            let routes = kernel_routes(&netns);
            for ip in p3_ips {
                if let Some(r) = route_to(&routes, *ip).filter(|r| r.kind == "unicast") {
                    return Err(format!("{netns} still routes {ip}: {r:?}"));
                }
            }
            Ok(())
        }
    };
    eventually(
        30,
        "node3's block withdrawn on node1",
        withdrawn(lab.node_netns("node1")),
    );
    eventually(
        30,
        "node3's block withdrawn on node2",
        withdrawn(lab.node_netns("node2")),
    );
    eventually(
        30,
        "node3's block withdrawn on the router",
        withdrawn(lab.router_netns()),
    );
    eventually(30, "node3 gone from the mesh", || {
        all_established(&lab, &[("node1", 2), ("node2", 2)]).map(|_| ())
    });
    // The remaining nodes still reach each other.
    let o = lab.probe("default/p1", "default/p2");
    assert!(o.status.success(), "p1 -> p2: {}", text(&o));
}
