//! The node harness shared by the agent's dataplane tests (root): a "node" network namespace
//! with "pods" wired Calico-style (host veth `sv<pod>`, a /32 route to it, proxy ARP, a
//! default route via 169.254.1.1 in the pod), each pod serving TCP port 80.
//!
//! Every namespace is a `NetNsGuard` (unique name, deleted on drop, even on panic) and every
//! server thread stops on drop, so the tests using it run in parallel and leave nothing behind.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{Result, ensure};
use serval_model::workloadendpoint::WorkloadEndpoint;
use serval_model::{Resource, parse_documents};
use serval_sys::testing::NetNsGuard;

/// The node name the pods and WorkloadEndpoints are scheduled on.
pub const NODE: &str = "node1";

pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output()?;
    ensure!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Runs `cmd` inside `ns`; its stdout.
pub fn in_ns(ns: &str, cmd: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .output()?;
    ensure!(
        out.status.success(),
        "{cmd:?} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A TCP server in a pod answering every connection with the pod's name; stopped on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Server {
    pub fn start(pod: &NetNsGuard, name: &'static str, port: u16) -> Result<Server> {
        let listener = pod.run(move || TcpListener::bind(("0.0.0.0", port)))??;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.write_all(format!("x/{name}\n").as_bytes());
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(Server {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A node namespace with pods `(name, address)` behind host veths `sv<name>`, each pod
/// serving TCP port 80.
pub struct Node {
    pub node: NetNsGuard,
    pub pods: Vec<(NetNsGuard, &'static str, &'static str)>,
    _servers: Vec<Server>,
}

impl Node {
    /// Builds the node namespace (named after `node_prefix`) and its pods (after `pod_prefix`).
    pub fn start(
        node_prefix: &str,
        pod_prefix: &str,
        pods: &[(&'static str, &'static str)],
    ) -> Result<Node> {
        let node = NetNsGuard::new(node_prefix)?;
        let n = node.name().to_string();
        ip(&["-n", &n, "link", "set", "lo", "up"])?;
        // A default route out of another interface, so proxy ARP answers for any address.
        ip(&[
            "-n",
            &n,
            "link",
            "add",
            "svup",
            "type",
            "veth",
            "peer",
            "name",
            "svup-peer",
        ])?;
        ip(&["-n", &n, "link", "set", "svup", "up"])?;
        ip(&["-n", &n, "link", "set", "svup-peer", "up"])?;
        ip(&["-n", &n, "route", "add", "default", "dev", "svup"])?;
        node.sysctl_write("net/ipv4/ip_forward", "1")?;
        let mut out = Vec::new();
        let mut servers = Vec::new();
        for (name, addr) in pods {
            let pod = NetNsGuard::new(pod_prefix)?;
            let p = pod.name().to_string();
            let host = format!("sv{name}");
            ip(&[
                "-n", &n, "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &p,
            ])?;
            ip(&["-n", &n, "link", "set", &host, "up"])?;
            node.sysctl_write(&format!("net/ipv4/conf/{host}/proxy_arp"), "1")?;
            node.sysctl_write(&format!("net/ipv4/neigh/{host}/proxy_delay"), "0")?;
            ip(&[
                "-n",
                &n,
                "route",
                "add",
                &format!("{addr}/32"),
                "dev",
                &host,
            ])?;
            ip(&["-n", &p, "link", "set", "lo", "up"])?;
            ip(&["-n", &p, "link", "set", "eth0", "up"])?;
            ip(&[
                "-n",
                &p,
                "addr",
                "add",
                &format!("{addr}/32"),
                "dev",
                "eth0",
            ])?;
            ip(&[
                "-n",
                &p,
                "route",
                "add",
                "169.254.1.1",
                "dev",
                "eth0",
                "scope",
                "link",
            ])?;
            ip(&[
                "-n",
                &p,
                "route",
                "add",
                "default",
                "via",
                "169.254.1.1",
                "dev",
                "eth0",
            ])?;
            servers.push(Server::start(&pod, name, 80)?);
            out.push((pod, *name, *addr));
        }
        Ok(Node {
            node,
            pods: out,
            _servers: servers,
        })
    }

    pub fn name(&self) -> &str {
        self.node.name()
    }

    pub fn pod(&self, name: &str) -> &NetNsGuard {
        &self
            .pods
            .iter()
            .find(|p| p.1 == name)
            .expect("a test pod")
            .0
    }

    pub fn addr(&self, name: &str) -> &'static str {
        self.pods
            .iter()
            .find(|p| p.1 == name)
            .expect("a test pod")
            .2
    }

    /// Connects from pod `from` to `to` (`IP:PORT`) and reads the answer; `Err(kind)` when
    /// the connection is not established.
    pub fn connect(&self, from: &str, to: &str) -> Result<String, std::io::ErrorKind> {
        let to: SocketAddr = to.parse().expect("IP:PORT");
        self.pod(from)
            .run(move || -> std::io::Result<String> {
                let mut c = TcpStream::connect_timeout(&to, Duration::from_millis(400))?;
                c.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut s = String::new();
                c.read_to_string(&mut s)?;
                Ok(s)
            })
            .map_err(|_| std::io::ErrorKind::Other)?
            .map_err(|e| e.kind())
    }

    /// Whether `from` reaches pod `to` on port 80.
    pub fn reaches(&self, from: &str, to: &str) -> bool {
        self.connect(from, &format!("{}:80", self.addr(to)))
            .is_ok_and(|a| a == format!("x/{to}\n"))
    }

    /// An IPPool and the resources of the pods (namespace `x`, labels `app: NAME`, port 80 named http)
    /// with the WorkloadEndpoints the CNI plugin would write for them.
    pub fn resources(&self) -> Result<Vec<Resource>> {
        // The pool makes pod sources "inside the cluster" (no masquerade towards services).
        let mut yaml = String::from(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n\
             apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.244.0.0/16}\n",
        );
        for (_, name, addr) in &self.pods {
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: {name}}}}}\n\
                 spec: {{nodeName: {NODE}, containers: [{{name: c, ports: [{{name: http, containerPort: 80}}]}}]}}\n\
                 status: {{phase: Running, podIPs: [{{ip: {addr}}}]}}\n"
            ));
        }
        let mut resources = parse_documents("test", &yaml)?;
        let weps: Vec<Resource> = resources
            .iter()
            .filter_map(|r| match r {
                Resource::Pod(p) => {
                    let (_, name, addr) = self.pods.iter().find(|x| x.1 == p.metadata.name)?;
                    let ips = vec![format!("{addr}/32").parse().ok()?];
                    let mut wep =
                        WorkloadEndpoint::for_pod(p, NODE, "cid", &format!("sv{name}"), ips);
                    wep.spec.ready = true;
                    Some(Resource::WorkloadEndpoint(wep))
                }
                _ => None,
            })
            .collect();
        resources.extend(weps);
        Ok(resources)
    }

    /// Our chains and sets in the node namespace (IPv4 and IPv6).
    pub fn serval_objects(&self) -> Result<Vec<String>> {
        let mut found = Vec::new();
        for tool in ["iptables-save", "ip6tables-save"] {
            for line in in_ns(self.name(), &[tool])?.lines() {
                if line.contains("SERVAL-") || line.contains("--comment serval") {
                    found.push(format!("{tool}: {line}"));
                }
            }
        }
        for line in in_ns(self.name(), &["ipset", "list", "-n"])?.lines() {
            if line.starts_with("serval-") {
                found.push(format!("ipset: {line}"));
            }
        }
        Ok(found)
    }
}
