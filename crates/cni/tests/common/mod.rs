//! Shared fixtures for the plugin's privileged tests: a "node" network namespace (the host
//! the plugin wires pods into), a fresh sqlite datastore with pools applied through
//! serval-api, pod namespaces, and invoking the built `serval-cni` binary exactly as a
//! container runtime does (environment + stdin, inside the node's namespace).

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the fixtures"
)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use serval_api::{ApplyMode, Client};
use serval_model::Resource;
use serval_model::calico::{IPPool, Node};
use serval_model::k8s::{Container, ContainerPort, Namespace, Pod};
use serval_model::meta::ObjectMeta;
use serval_model::types::{Port, Protocol};
use serval_sys::testing::NetNsGuard;
use serval_sys::{NetNs, Netlink};

pub const BIN: &str = env!("CARGO_BIN_EXE_serval-cni");
pub const NODE: &str = "node1";
/// Addresses the node owns (on its `lo`), as sources for host → pod connections and
/// destinations for pod → host ones.
pub const HOST_V4: &str = "192.0.2.1";
pub const HOST_V6: &str = "2001:db8::1";

/// True when running as root; tests return early (saying why) otherwise.
pub fn root(test: &str) -> bool {
    serval_sys::testing::require_root(test)
}

/// One test's world: a node netns, a datastore, a scratch directory.
pub struct World {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub client: Client,
    pub node_ns: NetNsGuard,
}

/// An IPPool to apply: name, cidr, blockSize.
pub fn pool(name: &str, cidr: &str, block_size: u8) -> Resource {
    let mut p = IPPool::new(name, cidr.parse().expect("pool cidr"));
    p.spec.block_size = Some(block_size);
    Resource::IPPool(p)
}

impl World {
    /// A node netns with `lo` up carrying [`HOST_V4`] and [`HOST_V6`], a sqlite datastore
    /// with the namespace `default`, the Node [`NODE`] and `pools`.
    pub async fn new(pools: Vec<Resource>) -> World {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("serval.db").display());
        let client = Client::open(&url).await.expect("open datastore");
        let mut resources = vec![
            Resource::Namespace(Namespace {
                metadata: ObjectMeta::named("default"),
                ..Default::default()
            }),
            Resource::Node(Node {
                metadata: ObjectMeta::named(NODE),
                ..Default::default()
            }),
        ];
        resources.extend(pools);
        client
            .apply(resources, ApplyMode::Apply)
            .await
            .expect("apply pools");
        let node_ns = NetNsGuard::new("svcni-node").expect("node netns");
        let nl = node_ns.netlink().expect("netlink in node");
        nl.link_set_up("lo").await.expect("lo up");
        nl.addr_add("lo", format!("{HOST_V4}/32").parse().unwrap())
            .await
            .expect("v4 on lo");
        nl.addr_add("lo", format!("{HOST_V6}/128").parse().unwrap())
            .await
            .expect("v6 on lo");
        World {
            dir,
            url,
            client,
            node_ns,
        }
    }

    /// Stores a Pod `default/name` with labels and a named TCP port 8080.
    pub async fn pod(&self, name: &str, labels: &[(&str, &str)]) {
        let mut meta = ObjectMeta::namespaced("default", name);
        meta.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut pod = Pod {
            metadata: meta,
            ..Default::default()
        };
        pod.spec.node_name = Some(NODE.into());
        pod.spec.containers.push(Container {
            name: "main".into(),
            ports: vec![ContainerPort {
                name: Some("http".into()),
                container_port: Port(8080),
                protocol: Protocol::Tcp,
                host_port: None,
            }],
            ..Default::default()
        });
        self.client
            .apply(vec![Resource::Pod(pod)], ApplyMode::Apply)
            .await
            .expect("apply pod");
    }

    /// The plugin configuration (`serval` entry of a conflist).
    pub fn conf(&self, version: &str, v4: bool, v6: bool) -> Value {
        json!({
            "cniVersion": version,
            "name": "serval",
            "type": "serval",
            "datastore": self.url,
            "nodename": NODE,
            "mtu": 1400,
            "log_level": "debug",
            "log_file": self.log_path().display().to_string(),
            "ipam": {"type": "serval-ipam", "assign_ipv4": v4, "assign_ipv6": v6,
                     "ipv4_pools": [], "ipv6_pools": []},
        })
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("cni.log")
    }

    /// Runs the plugin binary in the node netns with `env` and `stdin`.
    pub fn invoke(&self, env: &[(&str, &str)], stdin: &[u8]) -> Invocation {
        invoke_in(Some(self.node_ns.path()), env, stdin)
    }

    /// ADD/CHECK/DEL with the usual variables for pod `default/<pod>`.
    pub fn cni(
        &self,
        command: &str,
        container: &str,
        pod_ns: &Path,
        pod: &str,
        conf: &Value,
    ) -> Invocation {
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};K8S_POD_UID=1234"
        );
        let netns = pod_ns.display().to_string();
        self.invoke(
            &[
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", container),
                ("CNI_NETNS", &netns),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", &args),
                ("CNI_PATH", "/usr/lib/cni"),
            ],
            conf.to_string().as_bytes(),
        )
    }

    pub fn node_netlink(&self) -> Netlink {
        self.node_ns.netlink().expect("netlink in node")
    }

    /// The log the plugin wrote, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

/// One finished plugin run.
#[derive(Debug)]
pub struct Invocation {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Invocation {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// Asserts success and returns the stdout JSON (or Null when empty).
    pub fn ok(&self) -> Value {
        assert_eq!(self.code, 0, "plugin failed: {self:?}");
        if self.stdout.trim().is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Asserts a CNI error with `code` and returns the error JSON.
    pub fn err(&self, code: u64) -> Value {
        assert_ne!(
            self.code, 0,
            "plugin succeeded but should have failed: {self:?}"
        );
        let v = self.json();
        assert_eq!(v["code"], code, "wrong error code: {v}");
        assert!(
            v["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "no msg: {v}"
        );
        assert!(v["cniVersion"].is_string(), "no cniVersion: {v}");
        v
    }
}

/// Runs the plugin binary inside the namespace at `netns` (as a runtime on that host would),
/// or in the caller's with `None`.
pub fn invoke_in(netns: Option<&Path>, env: &[(&str, &str)], stdin: &[u8]) -> Invocation {
    let ns = netns.map(|p| std::fs::File::open(p).expect("open node netns"));
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(ns) = &ns {
        let fd = ns.as_raw_fd();
        // SAFETY: runs in the forked child before exec and only calls setns(2), which is
        // async-signal-safe; `ns` stays open until after spawn.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    let mut child = cmd.spawn().expect("spawn serval-cni");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait serval-cni");
    drop(ns);
    Invocation {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The addresses (`ips[].address`) of a result.
pub fn result_ips(result: &Value) -> Vec<ipnet::IpNet> {
    result["ips"]
        .as_array()
        .map(|ips| {
            ips.iter()
                .map(|ip| ip["address"].as_str().unwrap().parse().unwrap())
                .collect()
        })
        .unwrap_or_default()
}

/// A listener in `ns` on `ip` (any port) that answers one connection with `reply`.
pub fn serve(ns: &NetNs, ip: IpAddr, reply: &'static str) -> SocketAddr {
    let listener = ns
        .run(move || TcpListener::bind(SocketAddr::new(ip, 0)))
        .expect("enter netns")
        .unwrap_or_else(|e| panic!("bind {ip}: {e}"));
    let addr = listener.local_addr().expect("local addr");
    std::thread::spawn(move || {
        // One connection, then the thread ends and the listener (and its hold on the
        // namespace) goes away.
        if let Some(Ok(mut conn)) = listener.incoming().next() {
            let _ = conn.write_all(reply.as_bytes());
        }
    });
    addr
}

/// Connects from `ns` to `to` and returns what the server said.
pub fn fetch(ns: &NetNs, to: SocketAddr) -> Result<String, String> {
    ns.run(move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
            .map_err(|e| format!("connect {to}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)
            .map_err(|e| format!("read from {to}: {e}"))?;
        Ok(buf)
    })
    .expect("enter netns")
}

/// Sysctl value inside `ns`.
pub fn sysctl(ns: &NetNs, key: &str) -> String {
    ns.sysctl_read(key).unwrap_or_else(|e| format!("<{e}>"))
}

/// `CNI_ARGS`-style map for the runtime tests.
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
