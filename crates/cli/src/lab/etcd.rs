//! `--datastore etcd`: a real etcd server for the lab, listening on the bridge's host
//! addresses (so node namespaces reach it over the underlay), data in the lab directory.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::layout::Layout;
use super::procs;
use super::state::EtcdInfo;

/// `etcd://ADDR:PORT` with IPv6 addresses in brackets.
pub fn url(addr: IpAddr, port: u16) -> String {
    format!("etcd://{}", SocketAddr::new(addr, port))
}

fn http(addr: IpAddr, port: u16) -> String {
    format!("http://{}", SocketAddr::new(addr, port))
}

/// A port nothing listens on right now, on `addr`.
fn free_port(addr: IpAddr) -> anyhow::Result<u16> {
    let l = TcpListener::bind(SocketAddr::new(addr, 0))
        .with_context(|| format!("finding a free port on {addr}"))?;
    Ok(l.local_addr().context("reading the bound port")?.port())
}

/// Starts etcd listening for clients on every address of `addrs` (the first also serves the
/// peer port) and waits until it answers.
pub async fn start(layout: &Layout, addrs: &[IpAddr]) -> anyhow::Result<EtcdInfo> {
    let first = *addrs.first().context("etcd needs a listen address")?;
    let client_port = free_port(first)?;
    let mut peer_port = free_port(first)?;
    while peer_port == client_port {
        peer_port = free_port(first)?;
    }
    let data = layout.etcd_dir();
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let member = format!("sv-{}", layout.name);
    let clients: Vec<String> = addrs.iter().map(|a| http(*a, client_port)).collect();
    let peer = http(first, peer_port);
    let mut cmd = Command::new("etcd");
    cmd.arg("--name")
        .arg(&member)
        .arg("--data-dir")
        .arg(&data)
        .arg("--listen-client-urls")
        .arg(clients.join(","))
        .arg("--advertise-client-urls")
        .arg(&clients[0])
        .arg("--listen-peer-urls")
        .arg(&peer)
        .arg("--initial-advertise-peer-urls")
        .arg(&peer)
        .arg("--initial-cluster")
        .arg(format!("{member}={peer}"))
        .arg("--initial-cluster-state")
        .arg("new")
        .arg("--log-level")
        .arg("warn");
    let pid = procs::spawn_detached(cmd, None, &layout.etcd_log(), &layout.etcd_pid_file())
        .context("starting etcd (is etcd-server installed? apt-get install etcd-server)")?;
    let info = EtcdInfo {
        pid,
        client_port,
        peer_port,
    };
    let target = url(first, client_port);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if !procs::alive(pid) {
            let log = std::fs::read_to_string(layout.etcd_log()).unwrap_or_default();
            anyhow::bail!(
                "etcd exited during startup; its log ({}):\n{}",
                layout.etcd_log().display(),
                tail(&log, 20)
            );
        }
        let ready = async {
            let c = serval_api::Client::open(&target).await.ok()?;
            c.store().revision().await.ok()
        };
        if tokio::time::timeout(Duration::from_secs(2), ready)
            .await
            .ok()
            .flatten()
            .is_some()
        {
            return Ok(info);
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "etcd at {target} did not answer within 30s; see {}",
                layout.etcd_log().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
