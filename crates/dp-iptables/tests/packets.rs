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

struct Lab {
    node: NetNsGuard,
    pods: Vec<(NetNsGuard, &'static str, &'static str)>,
}

impl Lab {
    /// Pods `(name, address)`, each behind host veth `sv<name>`.
    fn new(pods: &[(&'static str, &'static str)]) -> Self {
        let node = NetNsGuard::new("sv-pkt-node").unwrap();
        let n = node.name();
        ip(&["-n", n, "link", "set", "lo", "up"]);
        // A default route out of another interface, so proxy ARP answers for any address
        // (the kernel here has no dummy driver: an unused veth pair serves).
        ip(&[
            "-n",
            n,
            "link",
            "add",
            "svup",
            "type",
            "veth",
            "peer",
            "name",
            "svup-peer",
        ]);
        ip(&["-n", n, "link", "set", "svup", "up"]);
        ip(&["-n", n, "link", "set", "svup-peer", "up"]);
        ip(&["-n", n, "route", "add", "default", "dev", "svup"]);
        node.sysctl_write("net/ipv4/ip_forward", "1").unwrap();
        let mut out = Vec::new();
        for (name, addr) in pods {
            let pod = NetNsGuard::new("sv-pkt-pod").unwrap();
            let p = pod.name();
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
            ip(&["-n", n, "route", "add", &format!("{addr}/32"), "dev", &host]);
            ip(&["-n", p, "link", "set", "lo", "up"]);
            ip(&["-n", p, "link", "set", "eth0", "up"]);
            ip(&["-n", p, "addr", "add", &format!("{addr}/32"), "dev", "eth0"]);
            ip(&[
                "-n",
                p,
                "route",
                "add",
                "169.254.1.1",
                "dev",
                "eth0",
                "scope",
                "link",
            ]);
            ip(&[
                "-n",
                p,
                "route",
                "add",
                "default",
                "via",
                "169.254.1.1",
                "dev",
                "eth0",
            ]);
            out.push((pod, *name, *addr));
        }
        Self { node, pods: out }
    }

    fn pod(&self, name: &str) -> &NetNsGuard {
        &self.pods.iter().find(|p| p.1 == name).unwrap().0
    }

    fn listen(&self, pod: &str, port: u16) -> TcpListener {
        self.pod(pod)
            .run(move || TcpListener::bind(("0.0.0.0", port)))
            .unwrap()
            .expect("listen")
    }

    /// Whether a TCP connection from `from` to `to` completes (the handshake is answered by
    /// the kernel from the listen backlog).
    fn connects(&self, from: &str, to: &str) -> Result<(), std::io::ErrorKind> {
        let to: SocketAddr = to.parse().unwrap();
        self.pod(from)
            .run(move || TcpStream::connect_timeout(&to, Duration::from_millis(400)))
            .unwrap()
            .map(drop)
            .map_err(|e| e.kind())
    }

    /// The model: pods (in namespace `x`, labelled `app: NAME`) with their CNI records, plus
    /// `extra` YAML.
    fn model(&self, extra: &str) -> Model {
        let mut yaml = String::from(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n\
             apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.244.0.0/16}\n",
        );
        for (_, name, addr) in &self.pods {
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: {name}}}}}\n\
                 spec: {{nodeName: n1, containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]}}\n\
                 status: {{phase: Running, podIPs: [{{ip: {addr}}}]}}\n"
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
                    let ips = vec![format!("{addr}/32").parse().unwrap()];
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
