//! Real packets through the rendered rules (root): a "node" namespace with two "pods" wired by
//! veth pairs (Calico-style: /32 routes to the host-side veth, proxy ARP, a default route via
//! 169.254.1.1 in each pod), TCP connections checked before and after policy and service
//! changes. Every namespace is a `NetNsGuard`, so tests run in parallel and leave nothing.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use serval_calc::{Model, desired_state};
use serval_dp_iptables::{Exec, Family, IptablesDataplane};
use serval_model::{Resource, parse_documents, workloadendpoint::WorkloadEndpoint};
use serval_sys::testing::{NetNsGuard, require_root};

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ip -n NS ARGS…` with ARGS split on spaces.
fn ipn(ns: &str, args: &str) {
    let mut all = vec!["-n", ns];
    all.extend(args.split_whitespace());
    ip(&all);
}

struct Lab {
    node: NetNsGuard,
    outside: NetNsGuard,
    pods: Vec<(NetNsGuard, &'static str, &'static str)>,
}

impl Lab {
    /// Pods `(name, address)`, each behind host veth `sv<name>`.
    fn new(pods: &[(&'static str, &'static str)]) -> Self {
        let node = NetNsGuard::new("sv-pkt-node").unwrap();
        let n = node.name();
        ip(&["-n", n, "link", "set", "lo", "up"]);
        // The node's uplink to an "outside" host (192.168.200.2, fd01::2), which is also the
        // default route: proxy ARP on the pod veths answers for any address.
        let outside = NetNsGuard::new("sv-pkt-out").unwrap();
        let o = outside.name();
        outside
            .sysctl_write("net/ipv6/conf/default/accept_dad", "0")
            .unwrap();
        node.sysctl_write("net/ipv6/conf/default/accept_dad", "0")
            .unwrap();
        ipn(
            n,
            &format!("link add svup type veth peer name eth0 netns {o}"),
        );
        ipn(n, "link set svup up");
        ipn(n, "addr add 192.168.200.1/24 dev svup");
        ipn(n, "addr add fd01::1/64 dev svup nodad");
        ipn(n, "route add default via 192.168.200.2 dev svup");
        ipn(n, "-6 route add default via fd01::2 dev svup");
        ipn(o, "link set lo up");
        ipn(o, "link set eth0 up");
        ipn(o, "addr add 192.168.200.2/24 dev eth0");
        ipn(o, "addr add fd01::2/64 dev eth0 nodad");
        ipn(o, "route add default via 192.168.200.1");
        ipn(o, "-6 route add default via fd01::1");
        node.sysctl_write("net/ipv4/ip_forward", "1").unwrap();
        node.sysctl_write("net/ipv6/conf/all/forwarding", "1")
            .unwrap();
        // No duplicate address detection: addresses are usable at once.
        node.sysctl_write("net/ipv6/conf/default/accept_dad", "0")
            .unwrap();
        let mut out = Vec::new();
        for (name, addr) in pods {
            let pod = NetNsGuard::new("sv-pkt-pod").unwrap();
            let p = pod.name();
            pod.sysctl_write("net/ipv6/conf/default/accept_dad", "0")
                .unwrap();
            let v6 = addr.contains(':');
            let host_len = if v6 { 128 } else { 32 };
            let host = format!("sv{name}");
            ip(&[
                "-n", n, "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", p,
            ]);
            ip(&["-n", n, "link", "set", &host, "up"]);
            node.sysctl_write(&format!("net/ipv4/conf/{host}/proxy_arp"), "1")
                .unwrap();
            // Answer ARP at once (the default proxy_delay holds replies up to 0.8 s), as
            // Calico configures its host-side veths.
            node.sysctl_write(&format!("net/ipv4/neigh/{host}/proxy_delay"), "0")
                .unwrap();
            ip(&[
                "-n",
                n,
                "route",
                "add",
                &format!("{addr}/{host_len}"),
                "dev",
                &host,
            ]);
            ipn(p, "link set lo up");
            ipn(p, "link set eth0 up");
            ipn(p, &format!("addr add {addr}/{host_len} dev eth0"));
            if v6 {
                // The gateway is fe80::1 on the host side, as the lab's CNI sets up.
                ipn(n, &format!("addr add fe80::1/64 dev {host}"));
                ipn(p, "-6 route add default via fe80::1 dev eth0");
            } else {
                ipn(p, "route add 169.254.1.1 dev eth0 scope link");
                ipn(p, "route add default via 169.254.1.1 dev eth0");
            }
            out.push((pod, *name, *addr));
        }
        Self {
            node,
            outside,
            pods: out,
        }
    }

    fn pod(&self, name: &str) -> &NetNsGuard {
        if name == "outside" {
            return &self.outside;
        }
        &self.pods.iter().find(|p| p.1 == name).unwrap().0
    }

    fn listen(&self, pod: &str, port: u16) -> TcpListener {
        self.pod(pod)
            .run(move || TcpListener::bind(("::", port)))
            .unwrap()
            .expect("listen")
    }

    /// Whether a TCP connection from `from` to `to` completes (the handshake is answered by
    /// the kernel from the listen backlog).
    fn connects(&self, from: &str, to: &str) -> Result<(), std::io::ErrorKind> {
        let to: SocketAddr = to.parse().unwrap_or_else(|e| panic!("{to}: {e}"));
        self.pod(from)
            .run(move || TcpStream::connect_timeout(&to, Duration::from_millis(400)))
            .unwrap()
            .map(drop)
            .map_err(|e| e.kind())
    }

    /// The model: pods (in namespace `x`, labelled `app: NAME`) with their CNI records, plus
    /// `extra` YAML.
    fn model(&self, extra: &str) -> Model {
        self.model_nat(extra, false)
    }

    /// [`Lab::model`] with the pools' natOutgoing set as given.
    fn model_nat(&self, extra: &str, nat_outgoing: bool) -> Model {
        let mut yaml = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: x}}\n---\n\
             apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {{name: n1}}\n\
             spec: {{bgp: {{ipv4Address: 192.168.200.1/24, ipv6Address: \"fd01::1/64\"}}}}\n---\n\
             apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: p}}\n\
             spec: {{cidr: 10.244.0.0/16, natOutgoing: {nat_outgoing}}}\n---\n\
             apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: p6}}\n\
             spec: {{cidr: \"fd00:244::/64\", natOutgoing: {nat_outgoing}}}\n"
        );
        for (_, name, addr) in &self.pods {
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: {name}, server: \"{}\"}}}}\n\
                 spec: {{nodeName: n1, containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]}}\n\
                 status: {{phase: Running, podIPs: [{{ip: \"{addr}\"}}]}}\n",
                *name != "a"
            ));
        }
        if !extra.is_empty() {
            yaml.push_str("---\n");
            yaml.push_str(extra);
        }
        let mut resources = parse_documents("test", &yaml).unwrap_or_else(|e| panic!("{e}"));
        let weps: Vec<Resource> = resources
            .iter()
            .filter_map(|r| match r {
                Resource::Pod(p) => {
                    let (_, name, addr) = self.pods.iter().find(|x| x.1 == p.metadata.name)?;
                    let len = if addr.contains(':') { 128 } else { 32 };
                    let ips = vec![format!("{addr}/{len}").parse().unwrap()];
                    let mut wep =
                        WorkloadEndpoint::for_pod(p, "n1", "cid", &format!("sv{name}"), ips);
                    wep.spec.ready = true;
                    Some(Resource::WorkloadEndpoint(wep))
                }
                _ => None,
            })
            .collect();
        resources.extend(weps);
        Model::from_resources(resources)
    }
}

const DENY_B: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-b, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  policyTypes: [Ingress]
"#;

const ALLOW_A_TO_B_HTTP: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-to-b, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: a}}}]
    ports: [{port: http}]
"#;

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  clusterIP: 10.96.0.10
  selector: {app: b}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: x}
spec:
  clusterIP: 10.96.0.11
  selector: {app: nobody}
  ports: [{port: 80}]
"#;

#[test]
fn policy_and_services_decide_real_tcp_connections() {
    if !require_root("policy_and_services_decide_real_tcp_connections") {
        return;
    }
    let lab = Lab::new(&[("a", "10.244.1.1"), ("b", "10.244.1.2")]);
    let _l80 = lab.listen("b", 8080);
    let _l81 = lab.listen("b", 8081);
    let mut dp =
        IptablesDataplane::new(Exec::in_netns(lab.node.try_clone().unwrap()), &[Family::V4]);
    let apply = |dp: &mut IptablesDataplane, extra: &str| {
        dp.apply(&desired_state(&lab.model(extra), Some("n1")))
            .expect("apply");
    };

    // No policy: allowed.
    apply(&mut dp, "");
    assert_eq!(lab.connects("a", "10.244.1.2:8080"), Ok(()));

    // Default deny for b's ingress: dropped (a timeout, not a refusal).
    apply(&mut dp, DENY_B);
    assert_eq!(
        lab.connects("a", "10.244.1.2:8080"),
        Err(std::io::ErrorKind::TimedOut)
    );

    // Allow a → b on the named port http (8080) only.
    apply(&mut dp, &format!("{DENY_B}---\n{ALLOW_A_TO_B_HTTP}"));
    assert_eq!(lab.connects("a", "10.244.1.2:8080"), Ok(()));
    assert_eq!(
        lab.connects("a", "10.244.1.2:8081"),
        Err(std::io::ErrorKind::TimedOut)
    );

    // Services: the ClusterIP reaches b through DNAT (policy sees the backend); a service
    // without backends is refused at once (TCP reset), not timed out.
    apply(
        &mut dp,
        &format!("{DENY_B}---\n{ALLOW_A_TO_B_HTTP}---\n{SERVICES}"),
    );
    assert_eq!(lab.connects("a", "10.96.0.10:80"), Ok(()));
    assert_eq!(
        lab.connects("a", "10.96.0.11:80"),
        Err(std::io::ErrorKind::ConnectionRefused)
    );

    // Drift: flush b's ingress chain by hand (now everything to b would be allowed... or
    // dropped) and let resync restore the rendered behaviour.
    let saved = Exec::in_netns(lab.node.try_clone().unwrap())
        .run("iptables-save", &["-t", "filter"], None)
        .unwrap();
    let tw_chain = saved
        .lines()
        .find(|l| l.starts_with("-A SERVAL-FORWARD") && l.contains("-o svb"))
        .and_then(|l| l.split_whitespace().last())
        .expect("dispatch to b's chain")
        .to_owned();
    Exec::in_netns(lab.node.try_clone().unwrap())
        .run("iptables", &["-F", &tw_chain], None)
        .unwrap();
    // Flushed: no mark set, so FORWARD's accept rule does not fire and the built-in policy
    // (ACCEPT) lets 8081 through — drift that opens a hole.
    assert_eq!(lab.connects("a", "10.244.1.2:8081"), Ok(()));
    let report = dp.resync().unwrap();
    assert!(
        report.chains_written.iter().any(|(_, _, c)| *c == tw_chain),
        "{report:?}"
    );
    assert_eq!(
        lab.connects("a", "10.244.1.2:8081"),
        Err(std::io::ErrorKind::TimedOut)
    );

    dp.cleanup().unwrap();
    assert_eq!(lab.connects("a", "10.244.1.2:8081"), Ok(()));
}

/// Calico-shaped scenarios: tiers, order, Deny before Allow, Pass, end-of-tier drop, notNets,
/// plus Kubernetes policy in the default tier. Each is applied on top of the previous one's
/// rules being replaced (a partial update), and the real connectivity matrix over pods a, b,
/// c and ports 8080, 8081 must equal the reference evaluator's.
const SCENARIOS: &[(&str, &str)] = &[
    ("no policy", ""),
    (
        "tier deny before default-tier allow; pass to the next tier",
        r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: security.guard}
spec:
  tier: security
  order: 10
  selector: app == 'c'
  types: [Ingress]
  ingress:
  - action: Deny
    protocol: TCP
    source: {selector: app == 'a'}
  - action: Pass
    protocol: TCP
    destination: {ports: [8080]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: c-from-anyone, namespace: x}
spec:
  podSelector: {matchLabels: {app: c}}
  policyTypes: [Ingress]
  ingress: [{}]
"#,
    ),
    (
        "egress with notNets and order within a tier",
        r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: a-egress-late, namespace: x}
spec:
  order: 200
  selector: app == 'a'
  types: [Egress]
  egress:
  - action: Allow
    protocol: TCP
    destination: {ports: [8081]}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: a-egress-early, namespace: x}
spec:
  order: 100
  selector: app == 'a'
  types: [Egress]
  egress:
  - action: Deny
    destination: {notNets: [10.244.1.2/32]}
    protocol: TCP
    notProtocol: UDP
"#,
    ),
];

#[test]
fn connectivity_matches_the_reference_evaluator() {
    use serval_calc::{
        evaluator::{Packet, evaluate},
        policy::IpProto,
    };
    if !require_root("connectivity_matches_the_reference_evaluator") {
        return;
    }
    let pods = [
        ("a", "10.244.1.1"),
        ("b", "10.244.1.2"),
        ("c", "10.244.1.3"),
    ];
    let lab = Lab::new(&pods);
    let _listeners: Vec<TcpListener> = pods
        .iter()
        .flat_map(|(name, _)| [lab.listen(name, 8080), lab.listen(name, 8081)])
        .collect();
    let mut dp =
        IptablesDataplane::new(Exec::in_netns(lab.node.try_clone().unwrap()), &[Family::V4]);
    let mut failures = Vec::new();
    for (scenario, yaml) in SCENARIOS {
        let model = lab.model(yaml);
        let mut denied = 0;
        dp.apply(&desired_state(&model, Some("n1"))).expect("apply");
        for (from, src) in &pods {
            for (to, dst) in &pods {
                if from == to {
                    continue;
                }
                for port in [8080u16, 8081] {
                    let packet = Packet::l4(
                        src.parse().unwrap(),
                        dst.parse().unwrap(),
                        IpProto::Tcp,
                        port,
                    );
                    let verdict = evaluate(&model, &packet);
                    denied += usize::from(!verdict.allowed);
                    let real = lab.connects(from, &format!("{dst}:{port}")).is_ok();
                    if real != verdict.allowed {
                        failures.push(format!(
                            "{scenario}: {from} -> {to}:{port}: kernel {}, evaluator {} ({})",
                            if real { "allowed" } else { "denied" },
                            if verdict.allowed { "allows" } else { "denies" },
                            verdict.reason
                        ));
                    }
                }
            }
        }
        // Every policy scenario must deny something, or it would test nothing.
        assert_eq!(denied == 0, yaml.is_empty(), "{scenario}: {denied} denied");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    dp.cleanup().unwrap();
}

const SERVICES_V6: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  clusterIP: "fd00:96::10"
  ipFamilies: [IPv6]
  selector: {app: b}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: x}
spec:
  clusterIP: "fd00:96::11"
  ipFamilies: [IPv6]
  selector: {app: nobody}
  ports: [{port: 80}]
"#;

#[test]
fn ipv6_only_policy_and_services() {
    if !require_root("ipv6_only_policy_and_services") {
        return;
    }
    let lab = Lab::new(&[("a", "fd00:244::1"), ("b", "fd00:244::2")]);
    let _l80 = lab.listen("b", 8080);
    let _l81 = lab.listen("b", 8081);
    let mut dp =
        IptablesDataplane::new(Exec::in_netns(lab.node.try_clone().unwrap()), &Family::ALL);
    let apply = |dp: &mut IptablesDataplane, extra: &str| {
        dp.apply(&desired_state(&lab.model(extra), Some("n1")))
            .expect("apply");
    };
    // Neighbour discovery from the pods to fe80::1 passes the anti-spoofing rules.
    apply(&mut dp, "");
    assert_eq!(lab.connects("a", "[fd00:244::2]:8080"), Ok(()));
    apply(
        &mut dp,
        &format!("{DENY_B}---\n{ALLOW_A_TO_B_HTTP}---\n{SERVICES_V6}"),
    );
    assert_eq!(lab.connects("a", "[fd00:244::2]:8080"), Ok(()));
    assert_eq!(
        lab.connects("a", "[fd00:244::2]:8081"),
        Err(std::io::ErrorKind::TimedOut)
    );
    assert_eq!(lab.connects("a", "[fd00:96::10]:80"), Ok(()));
    assert_eq!(
        lab.connects("a", "[fd00:96::11]:80"),
        Err(std::io::ErrorKind::ConnectionRefused)
    );
    dp.cleanup().unwrap();
    assert_eq!(lab.connects("a", "[fd00:244::2]:8081"), Ok(()));
}

const NODEPORT: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web-np, namespace: x}
spec:
  type: NodePort
  clusterIP: 10.96.0.20
  selector: {app: b}
  ports: [{port: 80, targetPort: 8082, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: self, namespace: x}
spec:
  clusterIP: 10.96.0.21
  selector: {app: a}
  ports: [{port: 80, targetPort: 8083}]
---
apiVersion: v1
kind: Service
metadata: {name: web-local, namespace: x}
spec:
  type: NodePort
  clusterIP: 10.96.0.22
  externalTrafficPolicy: Local
  selector: {app: b}
  ports: [{port: 80, targetPort: 8082, nodePort: 30081}]
---
apiVersion: v1
kind: Pod
metadata: {name: r, namespace: x, labels: {app: remote}}
spec: {nodeName: n2}
status: {phase: Running, podIPs: [{ip: 10.244.2.1}]}
---
apiVersion: v1
kind: Service
metadata: {name: remote-local, namespace: x}
spec:
  type: NodePort
  clusterIP: 10.96.0.23
  externalTrafficPolicy: Local
  selector: {app: remote}
  ports: [{port: 80, targetPort: 8082, nodePort: 30082}]
"#;

/// The peer address of the next connection accepted on `listener` (made before the call).
fn peer_of_next(listener: &TcpListener) -> std::net::IpAddr {
    listener.set_nonblocking(true).unwrap();
    let (_, peer) = listener.accept().expect("a connection is waiting");
    peer.ip().to_canonical()
}

#[test]
fn nodeport_from_outside_nat_outgoing_and_hairpin() {
    if !require_root("nodeport_from_outside_nat_outgoing_and_hairpin") {
        return;
    }
    let lab = Lab::new(&[("a", "10.244.1.1"), ("b", "10.244.1.2")]);
    let on_b = lab.listen("b", 8082);
    let on_a = lab.listen("a", 8083);
    let outside = lab.listen("outside", 9000);
    let mut dp =
        IptablesDataplane::new(Exec::in_netns(lab.node.try_clone().unwrap()), &Family::ALL);

    // NAT outgoing off: the outside host sees the pod's own address.
    dp.apply(&desired_state(&lab.model_nat(NODEPORT, false), Some("n1")))
        .unwrap();
    assert_eq!(lab.connects("a", "192.168.200.2:9000"), Ok(()));
    assert_eq!(peer_of_next(&outside).to_string(), "10.244.1.1");

    // NAT outgoing on: masqueraded to the node; pod-to-pod keeps the pod address.
    dp.apply(&desired_state(&lab.model_nat(NODEPORT, true), Some("n1")))
        .unwrap();
    assert_eq!(lab.connects("a", "192.168.200.2:9000"), Ok(()));
    assert_eq!(peer_of_next(&outside).to_string(), "192.168.200.1");
    assert_eq!(lab.connects("a", "10.244.1.2:8082"), Ok(()));
    assert_eq!(peer_of_next(&on_b).to_string(), "10.244.1.1");

    // NodePort from outside (externalTrafficPolicy Cluster): DNAT to b, source masqueraded
    // to the node.
    assert_eq!(lab.connects("outside", "192.168.200.1:30080"), Ok(()));
    assert_eq!(peer_of_next(&on_b).to_string(), "192.168.200.1");

    // externalTrafficPolicy Local: the backend sees the client's address; a node without a
    // local backend drops.
    assert_eq!(lab.connects("outside", "192.168.200.1:30081"), Ok(()));
    assert_eq!(peer_of_next(&on_b).to_string(), "192.168.200.2");
    assert_eq!(
        lab.connects("outside", "192.168.200.1:30082"),
        Err(std::io::ErrorKind::TimedOut)
    );

    // Hairpin: a reaches itself through its service; masqueraded so the reply comes back
    // through the node's reverse NAT.
    assert_eq!(lab.connects("a", "10.96.0.21:80"), Ok(()));
    assert_eq!(peer_of_next(&on_a).to_string(), "192.168.200.1");

    dp.cleanup().unwrap();
}

const AFFINITY: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: spread, namespace: x}
spec:
  clusterIP: 10.96.0.30
  selector: {server: "true"}
  ports: [{port: 80, targetPort: 8084}]
---
apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: x}
spec:
  clusterIP: 10.96.0.31
  selector: {server: "true"}
  sessionAffinity: ClientIP
  ports: [{port: 80, targetPort: 8084}]
"#;

/// How many connections are waiting on `listener`.
fn waiting(listener: &TcpListener) -> usize {
    listener.set_nonblocking(true).unwrap();
    std::iter::from_fn(|| listener.accept().ok()).count()
}

#[test]
fn services_spread_and_affinity_sticks() {
    if !require_root("services_spread_and_affinity_sticks") {
        return;
    }
    let lab = Lab::new(&[
        ("a", "10.244.1.1"),
        ("b", "10.244.1.2"),
        ("c", "10.244.1.3"),
    ]);
    let on_b = lab.listen("b", 8084);
    let on_c = lab.listen("c", 8084);
    let mut dp =
        IptablesDataplane::new(Exec::in_netns(lab.node.try_clone().unwrap()), &[Family::V4]);
    dp.apply(&desired_state(&lab.model(AFFINITY), Some("n1")))
        .unwrap();
    // 24 connections without affinity: both backends get some (all on one side has
    // probability 2^-23).
    for _ in 0..24 {
        assert_eq!(lab.connects("a", "10.96.0.30:80"), Ok(()));
    }
    let (b, c) = (waiting(&on_b), waiting(&on_c));
    assert_eq!(b + c, 24);
    assert!(b > 0 && c > 0, "b {b}, c {c}");
    // With ClientIP affinity every connection of one client goes to the same backend.
    for _ in 0..24 {
        assert_eq!(lab.connects("a", "10.96.0.31:80"), Ok(()));
    }
    let (b, c) = (waiting(&on_b), waiting(&on_c));
    assert!((b, c) == (24, 0) || (b, c) == (0, 24), "b {b}, c {c}");
    dp.cleanup().unwrap();
}

/// The node's uplink as a host endpoint whose ordinary policy allows TCP 8080 in and
/// anything out (IPv6 neighbour discovery from the node included).
const UPLINK_HEP: &str = r#"
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: n1-up, labels: {edge: "true"}}
spec: {node: n1, interfaceName: svup, expectedIPs: [192.168.200.1, "fd01::1"]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: host-web}
spec:
  selector: edge == 'true'
  types: [Ingress, Egress]
  ingress:
  - action: Allow
    protocol: TCP
    destination: {ports: [8080]}
  egress:
  - action: Allow
"#;

/// Untracked policy on the uplink: drop everything from 192.168.200.2 and fd01::2, allow TCP
/// 9090 in and its replies out without conntrack.
const UNTRACKED: &str = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: edge-untracked}
spec:
  selector: edge == 'true'
  doNotTrack: true
  applyOnForward: true
  types: [Ingress, Egress]
  ingress:
  - action: Deny
    source: {nets: [192.168.200.2/32]}
  - action: Deny
    source: {nets: ["fd01::2/128"]}
  - action: Allow
    protocol: TCP
    destination: {ports: [9090]}
  egress:
  - action: Allow
    protocol: TCP
    source: {ports: [9090]}
"#;

/// Whether a TCP connection from the outside namespace, bound to `src`, to `to` completes.
fn connects_from(lab: &Lab, src: &str, to: &str) -> Result<(), std::io::ErrorKind> {
    use socket2::{Domain, Socket, Type};
    let src: std::net::IpAddr = src.parse().unwrap();
    let to: SocketAddr = to.parse().unwrap();
    lab.outside
        .run(move || {
            let socket = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
            socket.bind(&SocketAddr::new(src, 0).into())?;
            socket.connect_timeout(&to.into(), Duration::from_millis(400))
        })
        .unwrap()
        .map_err(|e| e.kind())
}

/// The node namespace's conntrack table (`/proc/net/nf_conntrack`, read by a process
/// inside it).
fn conntrack(lab: &Lab) -> String {
    Exec::in_netns(lab.node.try_clone().unwrap())
        .run("cat", &["/proc/net/nf_conntrack"], None)
        .expect("read /proc/net/nf_conntrack in the node namespace")
}

#[test]
fn untracked_policy_drops_before_conntrack_and_allows_untracked() {
    if !require_root("untracked_policy_drops_before_conntrack_and_allows_untracked") {
        return;
    }
    let lab = Lab::new(&[("a", "10.244.1.1")]);
    // A second source on the outside host, and listeners on the node (22 is a failsafe port).
    ipn(lab.outside.name(), "addr add 192.168.200.3/24 dev eth0");
    ipn(lab.outside.name(), "addr add fd01::3/64 dev eth0 nodad");
    let _listeners: Vec<TcpListener> = [22u16, 8080, 9090]
        .into_iter()
        .map(|port| {
            lab.node
                .run(move || TcpListener::bind(("::", port)))
                .unwrap()
                .expect("listen on the node")
        })
        .collect();
    let exec = Exec::in_netns(lab.node.try_clone().unwrap());
    let mut dp =
        IptablesDataplane::new(Exec::in_netns(lab.node.try_clone().unwrap()), &Family::ALL);
    let apply = |dp: &mut IptablesDataplane, extra: &str| {
        dp.apply(&desired_state(&lab.model(extra), Some("n1")))
            .expect("apply");
    };
    use std::io::ErrorKind::TimedOut;
    let node = |port: u16| [format!("192.168.200.1:{port}"), format!("[fd01::1]:{port}")];
    let sources = |n: u8| [format!("192.168.200.{n}"), format!("fd01::{n}")];

    // Ordinary host endpoint policy only: 8080 from anyone, 9090 from no one; no raw rules.
    apply(&mut dp, UPLINK_HEP);
    for (src2, (src3, (web, other))) in sources(2).iter().zip(
        sources(3)
            .iter()
            .zip(node(8080).iter().zip(node(9090).iter())),
    ) {
        assert_eq!(connects_from(&lab, src2, web), Ok(()), "{src2} -> {web}");
        assert_eq!(connects_from(&lab, src3, web), Ok(()), "{src3} -> {web}");
        assert_eq!(
            connects_from(&lab, src3, other),
            Err(TimedOut),
            "{src3} -> {other}"
        );
    }
    let raw = exec.run("iptables-save", &["-t", "raw"], None).unwrap();
    assert!(
        !raw.contains("SERVAL"),
        "raw rules without untracked policy:\n{raw}"
    );

    // Untracked policy: .2 / ::2 dropped before conntrack, except on a failsafe port; .3 / ::3
    // unaffected; 9090 allowed without a conntrack entry, although ordinary policy denies it.
    apply(&mut dp, &format!("{UPLINK_HEP}---\n{UNTRACKED}"));
    for (src2, (src3, ((web, other), ssh))) in sources(2).iter().zip(
        sources(3).iter().zip(
            node(8080)
                .iter()
                .zip(node(9090).iter())
                .zip(node(22).iter()),
        ),
    ) {
        assert_eq!(
            connects_from(&lab, src2, web),
            Err(TimedOut),
            "{src2} -> {web}"
        );
        assert_eq!(
            connects_from(&lab, src2, ssh),
            Ok(()),
            "{src2} -> {ssh} (failsafe)"
        );
        assert_eq!(connects_from(&lab, src3, web), Ok(()), "{src3} -> {web}");
        assert_eq!(
            connects_from(&lab, src3, other),
            Ok(()),
            "{src3} -> {other}"
        );
    }
    // The reference evaluator agrees, source by source and port by port.
    {
        use serval_calc::{
            evaluator::{Packet, evaluate},
            policy::IpProto,
        };
        let model = lab.model(&format!("{UPLINK_HEP}---\n{UNTRACKED}"));
        for n in [2u8, 3] {
            for (src, dst) in sources(n).iter().zip(["192.168.200.1", "fd01::1"]) {
                for port in [22u16, 8080, 9090] {
                    let to = SocketAddr::new(dst.parse().unwrap(), port).to_string();
                    let real = connects_from(&lab, src, &to).is_ok();
                    let packet = Packet::l4(
                        src.parse().unwrap(),
                        dst.parse().unwrap(),
                        IpProto::Tcp,
                        port,
                    );
                    let verdict = evaluate(&model, &packet);
                    assert_eq!(
                        real, verdict.allowed,
                        "{src} -> {to}: kernel {real}, evaluator: {}",
                        verdict.reason
                    );
                }
            }
        }
    }
    let table = conntrack(&lab);
    // The tracked connections are there (the table is readable and per namespace) ...
    assert!(table.contains("dport=8080"), "{table}");
    assert!(table.contains("dport=22 "), "{table}");
    // ... the untracked ones are not, in either direction or family.
    assert!(
        !table.contains("port=9090 "),
        "untracked connections have conntrack entries:\n{table}"
    );
    // The drops happened in the raw table: the untracked Deny rules counted the packets.
    for (tool, rule) in [
        ("iptables-save", "ingress[0]"),
        ("ip6tables-save", "ingress[1]"),
    ] {
        let raw = exec.run(tool, &["-c", "-t", "raw"], None).unwrap();
        let line = raw
            .lines()
            .find(|l| l.contains(rule) && l.ends_with("-j DROP"))
            .unwrap_or_else(|| panic!("{tool}: no untracked Deny rule:\n{raw}"));
        assert!(
            !line.starts_with("[0:"),
            "{tool}: the Deny rule dropped nothing: {line}"
        );
    }

    // Removing the untracked policy removes the raw chains (a partial write); cleanup
    // leaves nothing.
    apply(&mut dp, UPLINK_HEP);
    assert_eq!(
        connects_from(&lab, "192.168.200.2", "192.168.200.1:8080"),
        Ok(())
    );
    let raw = exec.run("iptables-save", &["-t", "raw"], None).unwrap();
    assert!(!raw.contains("SERVAL"), "{raw}");
    apply(&mut dp, &format!("{UPLINK_HEP}---\n{UNTRACKED}"));
    dp.cleanup().unwrap();
    for tool in ["iptables-save", "ip6tables-save"] {
        let saved = exec.run(tool, &[], None).unwrap();
        assert!(
            !saved.to_ascii_lowercase().contains("serval"),
            "{tool}:\n{saved}"
        );
    }
}

/// `n` NetworkPolicies selecting b, each allowing TCP 8080 from pods labelled `app: p<i>`
/// (none exist), then one allowing a on 8080 and one allowing c on 9090 (as the bench's
/// policy section, plus a second decision).
fn many_policies(n: usize) -> String {
    let mut yaml = String::new();
    for i in 0..n {
        yaml.push_str(&format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {{name: p{i}, namespace: x}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: b}}}}\n  policyTypes: [Ingress]\n\
             \x20 ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: p{i}}}}}}}]\n\
             \x20   ports: [{{protocol: TCP, port: 8080}}]\n---\n"
        ));
    }
    yaml.push_str(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: allow-a, namespace: x}\n\
         spec:\n  podSelector: {matchLabels: {app: b}}\n  policyTypes: [Ingress]\n\
         \x20 ingress:\n  - from: [{podSelector: {matchLabels: {app: a}}}]\n\
         \x20   ports: [{protocol: TCP, port: 8080}]\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: allow-c, namespace: x}\n\
         spec:\n  podSelector: {matchLabels: {app: b}}\n  policyTypes: [Ingress]\n\
         \x20 ingress:\n  - from: [{podSelector: {matchLabels: {app: c}}}]\n\
         \x20   ports: [{protocol: TCP, port: 9090}]\n",
    );
    yaml
}

/// The rules a packet to `iface`'s pod can walk in the filter table of `family`: its
/// `SERVAL-TW` chain and every chain reachable from it by jump or goto.
fn ingress_rules(r: &serval_dp_iptables::Rendering, family: Family, iface: &str) -> usize {
    let filter = &r.family(family).tables[&serval_dp_iptables::Table::Filter];
    let start = filter.chains["SERVAL-FORWARD"]
        .iter()
        .find(|rule| rule.starts_with(&format!("-o {iface} ")))
        .and_then(|rule| rule.split_whitespace().last())
        .expect("dispatch rule")
        .to_owned();
    let mut seen = std::collections::BTreeSet::new();
    let mut todo = vec![start];
    let mut rules = 0;
    while let Some(chain) = todo.pop() {
        if !seen.insert(chain.clone()) {
            continue;
        }
        let chain_rules = &filter.chains[&chain];
        rules += chain_rules.len();
        for rule in chain_rules {
            let words: Vec<&str> = rule.split_whitespace().collect();
            for w in words.windows(2) {
                if matches!(w[0], "-j" | "-g") && w[1].starts_with("SERVAL-") {
                    todo.push(w[1].to_owned());
                }
            }
        }
    }
    rules
}

#[test]
fn policies_selecting_an_endpoint_cost_constant_rules() {
    if !require_root("policies_selecting_an_endpoint_cost_constant_rules") {
        return;
    }
    let lab = Lab::new(&[
        ("a", "10.244.1.1"),
        ("b", "10.244.1.2"),
        ("c", "10.244.1.3"),
    ]);
    // The rendering: the rules reachable from b's ingress chain do not grow with the number
    // of policies selecting b (the per-policy rendering had 2 per policy plus theirs).
    let counts: Vec<usize> = [1, 10, 300]
        .iter()
        .map(|&n| {
            let r = serval_dp_iptables::render::render(&desired_state(
                &lab.model(&many_policies(n)),
                Some("n1"),
            ));
            ingress_rules(&r, Family::V4, "svb")
        })
        .collect();
    assert_eq!(counts[0], counts[2], "{counts:?}");
    assert_eq!(counts[1], counts[2], "{counts:?}");
    assert!(counts[2] < 20, "{counts:?}");

    // In the kernel, with 300 policies: a reaches b on 8080 only, c on 9090 only, and the
    // peer of no policy is dropped.
    let _l8080 = lab.listen("b", 8080);
    let _l9090 = lab.listen("b", 9090);
    let mut dp =
        IptablesDataplane::new(Exec::in_netns(lab.node.try_clone().unwrap()), &[Family::V4]);
    dp.apply(&desired_state(&lab.model(&many_policies(300)), Some("n1")))
        .expect("apply");
    let timeout = Err(std::io::ErrorKind::TimedOut);
    assert_eq!(lab.connects("a", "10.244.1.2:8080"), Ok(()));
    assert_eq!(lab.connects("a", "10.244.1.2:9090"), timeout);
    assert_eq!(lab.connects("c", "10.244.1.2:9090"), Ok(()));
    assert_eq!(lab.connects("c", "10.244.1.2:8080"), timeout);
    // a and c are allowed out (no egress policy), so b's ingress decides both.
    let saved = Exec::in_netns(lab.node.try_clone().unwrap())
        .run("iptables-save", &["-t", "filter"], None)
        .unwrap();
    let policy_rules = saved
        .lines()
        .filter(|l| l.starts_with("-A SERVAL-P"))
        .count();
    assert!(policy_rules < 20, "{policy_rules} policy rules:\n{saved}");
    dp.cleanup().unwrap();
}
