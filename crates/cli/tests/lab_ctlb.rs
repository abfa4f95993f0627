//! Connect-time load balancing in a lab, end to end (root): a dual-stack two-node lab with
//! `--dataplane bpf`, a client pod on node1 and a backend pod on node2 behind a dual-stack
//! ClusterIP Service.
//!
//! - Every node has its own cgroup (`<cgroup2>/serval/LAB/NODE`) and each pod server runs in
//!   its node's; `lab down` removes them.
//! - A TCP connection from `serval lab exec` (which runs in the pod's node cgroup) to the
//!   ClusterIP is translated at `connect()`: the kernel's socket table in the pod
//!   (`/proc/net/tcp{,6}`) has the backend pod's address as the remote end, while
//!   `getpeername` shows the ClusterIP. The same connection from a process in the pod's
//!   namespace but outside the node's cgroup keeps the ClusterIP (tc NATs its packets).
//! - With `bpfConnectTimeLoadBalancing: Enabled`, a connected UDP socket is translated too and
//!   its datagrams are answered.
//!
//! IPv4 and IPv6. The lab is uniquely named and taken down on drop, even on panic.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{Lab, require_root, serval, text};

const RESOURCES: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: cli, namespace: default, labels: {app: cli}}\n\
spec: {nodeName: node1, containers: [{name: c, ports: [{containerPort: 80}]}]}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: srv, namespace: default, labels: {app: srv}}\n\
spec: {nodeName: node2, containers: [{name: c, ports: [{containerPort: 80}, {containerPort: 53, protocol: UDP}]}]}\n---\n\
apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n\
spec:\n  selector: {app: srv}\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  ports:\n  \
- {name: http, port: 80, targetPort: 80}\n  - {name: dns, port: 53, targetPort: 53, protocol: UDP}\n";

/// Connects (TCP or connected UDP) to `ip:port`, exchanges a message and prints
/// `peer=<getpeername ip> remote=<the socket table's remote ip> reply=<answer>`.
const CLIENT: &str = r#"
import socket, sys
proto, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
fam = socket.AF_INET6 if ':' in ip else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM if proto == 'tcp' else socket.SOCK_DGRAM)
s.settimeout(2)
s.connect((ip, port))
if proto == 'udp':
    s.send(b'ping')
reply = s.recv(200).decode().strip()
local = s.getsockname()[1]
table = '/proc/net/' + proto + ('6' if fam == socket.AF_INET6 else '')
remote = None
for line in open(table).readlines()[1:]:
    f = line.split()
    lhex, lport = f[1].split(':')
    if int(lport, 16) == local:
        b = bytes.fromhex(f[2].split(':')[0])
        if len(b) == 4:
            remote = socket.inet_ntop(socket.AF_INET, b[::-1])
        else:
            remote = socket.inet_ntop(socket.AF_INET6, b''.join(b[i:i + 4][::-1] for i in range(0, 16, 4)))
print('peer=%s remote=%s reply=%s' % (s.getpeername()[0], remote, reply))
"#;

fn field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{key}=")))
        .unwrap_or_default()
        .to_string()
}

impl Lab {
    fn get_json(&self, what: &[&str]) -> Value {
        let mut args = vec!["--lab", &self.name, "get"];
        args.extend_from_slice(what);
        args.extend_from_slice(&["-o", "json"]);
        let o = serval(&args);
        assert!(o.status.success(), "get {what:?}: {}", text(&o));
        serde_json::from_slice(&o.stdout).expect("json")
    }

    /// The client run through `serval lab exec` (inside node1's cgroup).
    fn exec_client(&self, proto: &str, ip: &str, port: u16) -> std::process::Output {
        serval(&[
            "lab",
            "exec",
            "--name",
            &self.name,
            "default/cli",
            "--",
            "python3",
            "-c",
            CLIENT,
            proto,
            ip,
            &port.to_string(),
        ])
    }

    /// The client in the pod's namespace but in this test's own cgroup.
    fn outside_cgroup_client(&self, proto: &str, ip: &str, port: u16) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &format!("sv-{}-default-cli", self.name)])
            .args(["python3", "-c", CLIENT, proto, ip, &port.to_string()])
            .output()
            .expect("ip netns exec")
    }
}

fn cgroup2() -> Option<std::path::PathBuf> {
    serval_dp_bpf::cgroup::cgroup2_mount()
}

#[test]
fn connect_time_load_balancing_in_a_dual_stack_lab() {
    require_root!();
    let Some(cg2) = cgroup2() else {
        eprintln!(
            "skipped: no cgroup v2 hierarchy mounted (connect-time load balancing needs one)"
        );
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("ctlb.yaml");
    std::fs::write(&file, RESOURCES).expect("write resources");
    let lab = Lab::up_with(
        "ctlb",
        &["--nodes", "2", "--dataplane", "bpf", "--ip-family", "dual"],
        &["-f", file.to_str().expect("utf-8 path")],
    );
    let lab_cg = cg2.join("serval").join(&lab.name);

    // Per-node cgroups, each pod server in its node's.
    for (pod, node) in [("cli", "node1"), ("srv", "node2")] {
        assert!(lab_cg.join(node).is_dir(), "{node} has no cgroup");
        let pid = std::fs::read_to_string(
            lab.dir()
                .join("nodes")
                .join(node)
                .join("pods")
                .join(format!("default_{pod}.pid")),
        )
        .expect("pod server pid file");
        let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", pid.trim()))
            .expect("the pod server's cgroup");
        let want = format!("0::/serval/{}/{node}", lab.name);
        assert!(
            cgroup.lines().any(|l| l == want),
            "pod server of {pod} is not in {want}: {cgroup}"
        );
    }

    let svc = lab.get_json(&["service", "web", "-n", "default"]);
    let vips: Vec<String> = svc["spec"]["clusterIPs"]
        .as_array()
        .expect("clusterIPs")
        .iter()
        .map(|v| v.as_str().expect("ip").to_string())
        .collect();
    assert_eq!(vips.len(), 2, "a dual-stack service: {svc}");
    let srv = lab.get_json(&["pod", "srv", "-n", "default"]);
    let backends: Vec<String> = srv["status"]["podIPs"]
        .as_array()
        .expect("podIPs")
        .iter()
        .map(|v| v["ip"].as_str().expect("ip").to_string())
        .collect();

    // TCP (the default mode): translated for the node's cgroup only.
    for vip in &vips {
        let v6 = vip.contains(':');
        let backend = backends
            .iter()
            .find(|b| b.contains(':') == v6)
            .expect("a backend of the family");
        let o = lab.exec_client("tcp", vip, 80);
        assert!(
            o.status.success(),
            "TCP to {vip} via lab exec: {}",
            text(&o)
        );
        let line = String::from_utf8_lossy(&o.stdout).to_string();
        assert_eq!(field(&line, "reply"), "default/srv", "{line}");
        assert_eq!(
            &field(&line, "peer"),
            vip,
            "getpeername shows the ClusterIP: {line}"
        );
        assert_eq!(
            &field(&line, "remote"),
            backend,
            "the socket is connected to the backend (translated at connect): {line}"
        );
        let o = lab.outside_cgroup_client("tcp", vip, 80);
        assert!(
            o.status.success(),
            "TCP to {vip} outside the cgroup: {}",
            text(&o)
        );
        let line = String::from_utf8_lossy(&o.stdout).to_string();
        assert_eq!(
            &field(&line, "remote"),
            vip,
            "outside the node's cgroup tc NATs: {line}"
        );
        assert_eq!(field(&line, "reply"), "default/srv", "{line}");
    }

    // Enabled: connected UDP is translated too.
    let felix = dir.path().join("felix.yaml");
    std::fs::write(
        &felix,
        "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {name: default}\n\
         spec: {bpfEnabled: true, bpfConnectTimeLoadBalancing: Enabled}\n",
    )
    .expect("write felix");
    let o = serval(&["--lab", &lab.name, "apply", "-f", felix.to_str().unwrap()]);
    assert!(o.status.success(), "apply felix: {}", text(&o));
    for vip in &vips {
        let v6 = vip.contains(':');
        let backend = backends.iter().find(|b| b.contains(':') == v6).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let o = lab.exec_client("udp", vip, 53);
            let line = String::from_utf8_lossy(&o.stdout).to_string();
            if o.status.success() && &field(&line, "remote") == backend {
                assert_eq!(&field(&line, "peer"), vip, "{line}");
                assert_eq!(field(&line, "reply"), "default/srv", "{line}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "connected UDP to {vip} was not translated to {backend} in time: {}",
                text(&o)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    let name = lab.name.clone();
    drop(lab);
    assert!(
        !Path::new(&lab_cg).exists(),
        "lab down left the cgroups of {name}"
    );
}
