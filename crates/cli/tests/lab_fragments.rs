//! IP fragments through the eBPF dataplane, end to end (root): a two-node lab with
//! `--dataplane bpf`, IPv4 and IPv6, no encapsulation (1500-byte MTU), and a policy that
//! admits only UDP 80 from pod `a` (node1) into pod `c` (node2). A 3000-byte UDP datagram
//! leaves `a` as fragments; `serval_from_ep` on node1 and `serval_to_ep` on node2 must give
//! the later fragments (no UDP header) the first fragment's verdict, or `c` never reassembles
//! the datagram and never answers. The same datagram to UDP 81 is denied.
//!
//! The lab is uniquely named and taken down on drop, even on panic.

#[expect(
    dead_code,
    reason = "the shared lab helpers have items this test does not use"
)]
mod common;

use std::path::{Path, PathBuf};

use serde_json::Value;

use common::{Lab, require_root, serval, text};

/// Pods `a` (node1) and `c` (node2) in namespace blue, serving UDP 80 and 81; ingress of
/// `c` admits UDP 80 from `a` only.
fn resources(dir: &Path) -> PathBuf {
    let mut y = String::from("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: blue\n");
    for (pod, node) in [("a", "node1"), ("c", "node2")] {
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\n  namespace: blue\n  labels:\n    app: {pod}\nspec:\n  \
             nodeName: {node}\n  containers:\n    - name: srv\n      ports:\n        - containerPort: 80\n          \
             protocol: UDP\n        - containerPort: 81\n          protocol: UDP\n"
        ));
    }
    y.push_str(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: c-udp80-from-a, namespace: blue}\n\
         spec:\n  podSelector: {matchLabels: {app: c}}\n  policyTypes: [Ingress]\n  ingress:\n  \
         - from: [{podSelector: {matchLabels: {app: a}}}]\n    ports: [{protocol: UDP, port: 80}]\n",
    );
    let path = dir.join("lab.yaml");
    std::fs::write(&path, y).expect("write lab.yaml");
    path
}

/// Sends one `size`-byte UDP datagram from `from` to `ip:port` (three tries) and prints the
/// answer; exit 0 when an answer came.
const SEND: &str = r#"
import socket, sys
ip, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ':' in ip else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.5)
for _ in range(3):
    s.sendto(b'x' * size, (ip, port))
    try:
        data, _ = s.recvfrom(4096)
        print(data.decode().strip())
        sys.exit(0)
    except socket.timeout:
        pass
sys.exit(1)
"#;

impl Lab {
    /// The address of `to` in `family` (from a small UDP probe that the policy admits).
    fn addr_of(&self, from: &str, to: &str, family: &str) -> String {
        let o = serval(&[
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
            "--protocol",
            "udp",
            "--family",
            family,
            "--timeout-ms",
            "2000",
            "-o",
            "json",
        ]);
        assert!(o.status.success(), "probe {from} -> {to}: {}", text(&o));
        let j: Value = serde_json::from_slice(&o.stdout).expect("probe json");
        j["ip"].as_str().expect("ip").to_string()
    }

    /// Exit status and output of sending a `size`-byte datagram from `from`.
    fn send(&self, from: &str, ip: &str, port: u16, size: usize) -> (bool, String) {
        let (port, size) = (port.to_string(), size.to_string());
        let o = serval(&[
            "lab", "exec", "--name", &self.name, from, "--", "python3", "-c", SEND, ip, &port,
            &size,
        ]);
        (o.status.success(), text(&o))
    }
}

#[test]
fn fragmented_udp_between_nodes_passes_bpf_policy() {
    require_root!();
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = resources(tmp.path());
    let lab = Lab::up_with(
        "frag",
        &[],
        &[
            "--nodes",
            "2",
            "--ip-family",
            "dual",
            "--encapsulation",
            "none",
            "--dataplane",
            "bpf",
            "-f",
            file.to_str().expect("utf8"),
        ],
    );
    for family in ["4", "6"] {
        let ip = lab.addr_of("blue/a", "blue/c", family);
        // Small datagrams: admitted on 80, denied on 81.
        let (ok, out) = lab.send("blue/a", &ip, 80, 100);
        assert!(
            ok && out.contains("blue/c"),
            "small UDP 80 (IPv{family}): {out}"
        );
        let (ok, out) = lab.send("blue/a", &ip, 81, 100);
        assert!(!ok, "UDP 81 must be denied (IPv{family}): {out}");
        // 3000 bytes over a 1500-byte MTU: fragments, answered only if every one passes.
        let (ok, out) = lab.send("blue/a", &ip, 80, 3000);
        assert!(
            ok && out.contains("blue/c"),
            "fragmented UDP 80 (IPv{family}) not answered: {out}"
        );
        let (ok, out) = lab.send("blue/a", &ip, 81, 3000);
        assert!(!ok, "fragmented UDP 81 must be denied (IPv{family}): {out}");
    }
    // The datagrams really were fragments: node1's programs recorded their first fragments
    // (at least one per family) in the pinned sv_frags map.
    let pin = format!("/sys/fs/bpf/serval/sv-{}-node1/maps/sv_frags", lab.name);
    let o = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned", &pin])
        .output();
    match o {
        Ok(o) if o.status.success() => {
            let entries: Value = serde_json::from_slice(&o.stdout).expect("bpftool json");
            let n = entries.as_array().map_or(0, Vec::len);
            assert!(n >= 2, "sv_frags of node1 holds {n} datagrams: {entries}");
        }
        other => eprintln!("bpftool not usable, sv_frags not inspected: {other:?}"),
    }
}
