//! Host-networked clients of services NATed in tc (FelixConfiguration
//! `bpfHostNetworkedNATWithoutCTLB: Enabled` with `bpfConnectTimeLoadBalancing: Disabled`, so
//! no connect-time program translates anything), in a real dual-stack eBPF lab of two nodes,
//! as root. A process in node1's own network namespace (not a pod) reaches a ClusterIP whose
//! backend runs on node1 and one whose backend runs on node2, TCP and UDP, IPv4 and IPv6: the
//! backend answers, and the answer comes from the ClusterIP (the TCP socket's peer; the source
//! of the datagram an unconnected UDP socket receives). The packets leave by node1's default
//! route through the uplink, whose egress program DNATs them (bpf/serval_hostnat.h).
//!
//! Runs only with `SERVAL_CONFORMANCE_DATAPLANE=bpf`: `SERVAL_CONFORMANCE_DATAPLANE=bpf cargo
//! test -p serval-conformance --test host_clients`.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use anyhow::{Context, bail};
use serval_conformance::{Lab, converge, converge_timeout};
use serval_model::types::Protocol;
use serval_model::{Kind, Resource, ResourceKey};
use serval_sys::NetNs;

const PORT: u16 = 8080;

fn yaml() -> String {
    let mut y = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: hc}\n---\n\
         apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {name: default}\n\
         spec: {bpfEnabled: true, bpfConnectTimeLoadBalancing: Disabled, \
         bpfHostNetworkedNATWithoutCTLB: Enabled}\n",
    );
    for (pod, node) in [("be-1", "node1"), ("be-2", "node2")] {
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: hc, labels: {{app: {pod}}}}}\n\
             spec:\n  nodeName: {node}\n  containers:\n  - name: c\n    ports:\n    \
             - {{containerPort: 80, protocol: TCP}}\n    - {{containerPort: 80, protocol: UDP}}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {{name: {pod}, namespace: hc}}\n\
             spec:\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  \
             selector: {{app: {pod}}}\n  ports:\n  - {{name: t, port: {PORT}, targetPort: 80, protocol: TCP}}\n  \
             - {{name: u, port: {PORT}, targetPort: 80, protocol: UDP}}\n"
        ));
    }
    y
}

/// The service's ClusterIPs.
fn cluster_ips(lab: &Lab, name: &str) -> anyhow::Result<Vec<IpAddr>> {
    let key = ResourceKey::new(Kind::Service, Some("hc"), name);
    let Some(Resource::Service(svc)) = lab.get(&key)? else {
        bail!("service hc/{name} not found");
    };
    let mut ips: Vec<String> = svc.spec.cluster_ips.clone();
    ips.extend(svc.spec.cluster_ip.clone());
    let mut out: Vec<IpAddr> = ips.iter().filter_map(|a| a.parse().ok()).collect();
    out.sort();
    out.dedup();
    if out.len() != 2 {
        bail!("hc/{name}: expected an IPv4 and an IPv6 ClusterIP, got {out:?}");
    }
    Ok(out)
}

/// From the node's own namespace: the answer and the address it came from.
fn ask(node: &NetNs, vip: IpAddr, proto: Protocol) -> io::Result<(String, SocketAddr)> {
    node.run(|| -> io::Result<(String, SocketAddr)> {
        let to = SocketAddr::new(vip, PORT);
        let timeout = Duration::from_millis(1000);
        match proto {
            Protocol::Udp => {
                let any: SocketAddr = if vip.is_ipv4() {
                    "0.0.0.0:0".parse().expect("literal")
                } else {
                    "[::]:0".parse().expect("literal")
                };
                // unconnected: the kernel hands over whatever source the reply has
                let u = UdpSocket::bind(any)?;
                u.set_read_timeout(Some(Duration::from_millis(500)))?;
                let mut buf = [0u8; 256];
                for _ in 0..3 {
                    u.send_to(b"host?", to)?;
                    if let Ok((n, from)) = u.recv_from(&mut buf) {
                        return Ok((String::from_utf8_lossy(&buf[..n]).trim().to_string(), from));
                    }
                }
                Err(io::Error::new(io::ErrorKind::TimedOut, "no UDP answer"))
            }
            _ => {
                let mut t = TcpStream::connect_timeout(&to, timeout)?;
                let peer = t.peer_addr()?;
                t.set_read_timeout(Some(timeout))?;
                let _ = t.write_all(b"host?\n");
                let mut out = String::new();
                t.read_to_string(&mut out)?;
                Ok((out.trim().to_string(), peer))
            }
        }
    })
    .map_err(io::Error::other)?
}

#[test]
fn node_processes_reach_cluster_ips_with_backends_on_this_and_another_node() {
    if !serval_conformance::is_root() {
        eprintln!("skipped: the lab test needs root (labs: network namespaces, veths)");
        return;
    }
    if std::env::var("SERVAL_CONFORMANCE_DATAPLANE").as_deref() != Ok("bpf") {
        eprintln!(
            "skipped: bpfHostNetworkedNATWithoutCTLB is an eBPF dataplane setting; run with SERVAL_CONFORMANCE_DATAPLANE=bpf"
        );
        return;
    }
    let lab = Lab::up("hostc", &["--nodes", "2", "--ip-family", "dual"]).expect("lab up");
    lab.apply_yaml("host clients", &yaml()).expect("apply");
    lab.wait_pods().expect("pods ready");
    let node1 = NetNs::open(&lab.netns("node1")).expect("node1 netns");
    let mut failures = Vec::new();
    for backend in ["be-1", "be-2"] {
        let vips = cluster_ips(&lab, backend)
            .context("cluster IPs")
            .expect("cluster IPs");
        for vip in vips {
            for proto in [Protocol::Tcp, Protocol::Udp] {
                let want = format!("hc/{backend}");
                let r = converge(converge_timeout(), || {
                    let got = ask(&node1, vip, proto);
                    let ok = matches!(&got, Ok((a, from)) if *a == want && *from == SocketAddr::new(vip, PORT));
                    Ok::<_, anyhow::Error>((ok, got))
                });
                match r {
                    Ok((true, _)) => {}
                    Ok((false, got)) => failures.push(format!(
                        "node1 -> {vip}:{PORT}/{proto:?} ({backend}): {got:?}"
                    )),
                    Err(e) => failures.push(format!("node1 -> {vip}/{proto:?}: {e:#}")),
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
