//! Privileged test of the lab pod runtime, end to end with real parts: a node namespace, a
//! real agent ([`serval_agent::run`] with a lab dir) on a thread inside it, the reference CNI
//! plugins `ptp` + `host-local` (from Debian's containernetworking-plugins) in the node's
//! conflist, and real pod-server processes.
//!
//! No libtest harness (`harness = false`): this binary is also the pod server the runtime
//! starts (`<this binary> pod-server --name … --tcp … --udp … --ready-file …`), the way the
//! `serval` binary is in a lab.

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serval_agent::{AgentConfig, PodServerConfig};
use serval_api::{ApplyMode, Client};
use serval_model::k8s::Pod;
use serval_model::workloadendpoint::WorkloadEndpoint;
use serval_model::{Kind, Resource, ResourceKey};
use serval_store::testing::SqliteFile;
use serval_sys::NetNs;
use serval_sys::testing::{NetNsGuard, unique_name};
use tokio::sync::oneshot;

#[path = "common/wait.rs"]
mod wait;

use wait::wait_for;

const PLUGINS: &str = "/usr/lib/cni";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("pod-server") {
        return pod_server(&args[2..]);
    }
    // `cargo test -- --list` and friends: nothing to list but this one test.
    if args.iter().any(|a| a == "--list") {
        println!("pod_runtime: test");
        return ExitCode::SUCCESS;
    }
    if !serval_sys::testing::require_root("pod_runtime") {
        return ExitCode::SUCCESS;
    }
    if !Path::new(PLUGINS).join("ptp").exists() || !Path::new(PLUGINS).join("host-local").exists() {
        eprintln!(
            "skipping pod_runtime: needs the reference CNI plugins ptp and host-local in {PLUGINS} (apt install containernetworking-plugins)"
        );
        return ExitCode::SUCCESS;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter("serval_agent=info")
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(pod_runtime()) {
        Ok(()) => {
            println!("test pod_runtime ... ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("test pod_runtime ... FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The pod server role: the same flags `serval pod-server` takes.
fn pod_server(args: &[String]) -> ExitCode {
    let mut config = PodServerConfig::default();
    let ports = |s: &str| {
        s.split(',')
            .filter_map(|p| p.parse().ok())
            .collect::<Vec<u16>>()
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().cloned().unwrap_or_default();
        match flag.as_str() {
            "--name" => config.name = value,
            "--tcp" => config.tcp_ports = ports(&value),
            "--udp" => config.udp_ports = ports(&value),
            "--ready-file" => config.ready_file = Some(PathBuf::from(value)),
            other => {
                eprintln!("pod-server: unknown flag {other}");
                return ExitCode::from(2);
            }
        }
    }
    match serval_agent::podserver::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pod-server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// An agent on a thread inside `ns`, stopped (its tasks dropped) on drop.
struct Agent {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<serval_sys::Result<Result<(), String>>>>,
}

impl Agent {
    fn start(ns: &NetNs, config: AgentConfig) -> Result<Agent> {
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = ns.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                tokio::select! {
                    r = serval_agent::run(config) => r.map_err(|e| e.to_string()),
                    _ = stopped => Ok(()),
                }
            })
        })?;
        Ok(Agent {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Removes whatever the runtime left of the pod if the test fails half-way.
struct PodCleanup {
    netns: String,
    pid_file: PathBuf,
}

impl Drop for PodCleanup {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = NetNs::delete(&self.netns);
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

async fn wep_ready(client: &Client) -> Result<bool> {
    let (items, _) = client.list(Kind::WorkloadEndpoint, Some("default")).await?;
    Ok(items
        .iter()
        .any(|r| matches!(r, Resource::WorkloadEndpoint(w) if w.spec.pod == "web" && w.spec.ready)))
}

/// The pod's IPv4 address from the runtime's record (the CNI ADD result).
fn pod_ip(record: &Path) -> Result<IpAddr> {
    let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(record)?)?;
    let addr = rec["cni_result"]["ips"][0]["address"]
        .as_str()
        .context("an address in the CNI result")?;
    Ok(addr.split('/').next().unwrap_or_default().parse()?)
}

/// TCP and UDP to the pod from the node namespace: both answer with the pod's name.
fn probe(node: &NetNs, ip: IpAddr) -> Result<()> {
    node.run(move || -> Result<()> {
        let mut conn =
            TcpStream::connect_timeout(&SocketAddr::new(ip, 8080), Duration::from_secs(5))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer)?;
        anyhow::ensure!(answer == "default/web\n", "TCP answer {answer:?}");
        let udp = UdpSocket::bind("0.0.0.0:0")?;
        udp.set_read_timeout(Some(Duration::from_secs(5)))?;
        udp.send_to(b"?", SocketAddr::new(ip, 5353))?;
        let mut buf = [0u8; 64];
        let (n, _) = udp.recv_from(&mut buf)?;
        anyhow::ensure!(&buf[..n] == b"default/web\n", "UDP answer {:?}", &buf[..n]);
        Ok(())
    })?
}

async fn pod_runtime() -> Result<()> {
    let node_ns = NetNsGuard::new("svag-rtm")?;
    node_ns.netlink()?.link_set_up("lo").await?;
    let lab = tempfile::tempdir()?;
    let node_dir = lab.path().join("nodes").join("node1");
    let cni = node_dir.join("cni");
    std::fs::create_dir_all(cni.join("net.d"))?;
    std::fs::create_dir_all(cni.join("bin"))?;
    for p in ["ptp", "host-local"] {
        std::os::unix::fs::symlink(Path::new(PLUGINS).join(p), cni.join("bin").join(p))?;
    }
    let ipam_dir = lab.path().join("host-local");
    std::fs::write(
        cni.join("net.d").join("10-test.conflist"),
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": unique_name("svagt", 15),
            "plugins": [{
                "type": "ptp",
                "ipam": {"type": "host-local", "subnet": "10.251.0.0/24", "dataDir": ipam_dir}
            }]
        })
        .to_string(),
    )?;

    let store = SqliteFile::new()?;
    let client = Client::open(&store.url()).await?;
    let docs = serval_model::parse_documents(
        "test",
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: default}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web}}
spec:
  nodeName: node1
  containers:
  - name: web
    ports:
    - {containerPort: 8080}
    - {containerPort: 5353, protocol: UDP}
"#,
    )?;
    client.apply(docs, ApplyMode::Apply).await?;
    let pod_key = ResourceKey::new(Kind::Pod, Some("default"), "web");
    let Some(Resource::Pod(pod)) = client.get(&pod_key).await? else {
        bail!("the pod was not stored")
    };
    let pod: Pod = pod;
    // ptp writes no workload endpoint (serval-cni does): write the one serval-cni would.
    let cid = serval_agent::runtime::container_id(
        "default",
        "web",
        pod.metadata.uid.as_deref().unwrap_or_default(),
    );
    let wep = WorkloadEndpoint::for_pod(&pod, "node1", &cid, "svtestveth0", Vec::new());
    client.put(Resource::WorkloadEndpoint(wep), Some(0)).await?;

    let prefix = unique_name("svagt", 15);
    let netns = format!("{prefix}-default-web");
    let pods = node_dir.join("pods");
    let pid_file = pods.join("default_web.pid");
    let record = pods.join("default_web.json");
    let _cleanup = PodCleanup {
        netns: netns.clone(),
        pid_file: pid_file.clone(),
    };
    let config = || {
        let mut c = AgentConfig::new("node1", store.url());
        c.lab_dir = Some(lab.path().to_path_buf());
        c.netns_prefix = Some(prefix.clone());
        c.ready_file = Some(lab.path().join("agent.ready"));
        c.pod_server_command = Some(vec![
            std::env::current_exe().unwrap_or_default().into(),
            "pod-server".into(),
        ]);
        c
    };

    // The pod comes up: netns, CNI ADD, server, readiness.
    let agent = Agent::start(&node_ns, config())?;
    wait_for("the workload endpoint to be marked ready", || {
        wep_ready(&client)
    })
    .await?;
    wait_for("the pod's status to say Running and Ready", || async {
        Ok(matches!(client.get(&pod_key).await?, Some(Resource::Pod(p)) if p.is_ready()))
    })
    .await?;
    anyhow::ensure!(NetNs::exists(&netns), "pod netns {netns} exists");
    let pid = read_pid(&pid_file).context("pod server pid file")?;
    let ip = pod_ip(&record)?;
    probe(&node_ns, ip).context("pod answers after creation")?;

    // Agent restart: the running pod is kept, not recreated.
    drop(agent);
    let agent = Agent::start(&node_ns, config())?;
    let ready = lab.path().join("agent.ready");
    wait_for("the restarted agent to be ready", || {
        let ready = ready.clone();
        async move { Ok(ready.exists()) }
    })
    .await?;
    // Give the runtime one reconcile after readiness (it adopts before its first reconcile).
    tokio::time::sleep(Duration::from_millis(500)).await;
    anyhow::ensure!(
        read_pid(&pid_file) == Some(pid),
        "the pod server was kept across the agent restart"
    );
    anyhow::ensure!(pod_ip(&record)? == ip, "same pod address after the restart");
    probe(&node_ns, ip).context("pod answers after an agent restart")?;

    // The server dies: the runtime starts a new one.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let pf = pid_file.clone();
    wait_for("a new pod server", || {
        let pf = pf.clone();
        async move { Ok(read_pid(&pf).is_some_and(|p| p != pid)) }
    })
    .await?;
    probe(&node_ns, ip).context("pod answers after its server was restarted")?;
    let new_pid = read_pid(&pid_file).unwrap_or_default();

    // The pod is deleted: server stopped, CNI DEL (host-local frees the address), netns gone.
    client.delete(&[pod_key], false).await?;
    let ns = netns.clone();
    wait_for("the pod netns to be deleted", || {
        let ns = ns.clone();
        async move { Ok(!NetNs::exists(&ns)) }
    })
    .await?;
    wait_for("the pod files to be removed", || {
        let (pf, rec) = (pid_file.clone(), record.clone());
        async move { Ok(!pf.exists() && !rec.exists()) }
    })
    .await?;
    let cmdline = std::fs::read(format!("/proc/{new_pid}/cmdline")).unwrap_or_default();
    anyhow::ensure!(cmdline.is_empty(), "the pod server {new_pid} is gone");
    let leased = std::fs::read_dir(ipam_dir.join(&*ipam_net_name(&cni)?))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("10.251."))
        .count();
    anyhow::ensure!(
        leased == 0,
        "CNI DEL released the address ({leased} leases left)"
    );
    drop(agent);
    Ok(())
}

/// The network name of the conflist (host-local keeps its leases under dataDir/<name>).
fn ipam_net_name(cni: &Path) -> Result<String> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cni.join("net.d").join("10-test.conflist"))?)?;
    Ok(v["name"].as_str().unwrap_or_default().to_string())
}
