//! XDP on host interfaces through the real agent (root): a node namespace running the eBPF
//! dataplane with a host endpoint on its uplink `xo` (a veth to an "outside" namespace), and
//! a `doNotTrack` GlobalNetworkPolicy denying a source CIDR. Packets from that CIDR are
//! dropped at XDP (the counter rises, the host's TCP listener never accepts them), the
//! failsafe port 22 stays reachable from it, another source is unaffected, IPv4 and IPv6;
//! turning `xdpEnabled` off detaches the program and the tc host endpoint program enforces
//! the untracked deny instead.
//!
//! Every namespace is a `NetNsGuard` (unique name, deleted on drop, even on panic); the pin
//! scope is the node namespace's name, removed on drop.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use aya::maps::{Map, MapData, PerCpuArray};
use serval_agent::dataplane::bpf::scope_name;
use serval_api::{ApplyMode, Client};
use serval_dp_bpf::PinScope;
use serval_dp_bpf::abi::{SV_XDP_DROP_BLOCKLIST, SV_XDP_PASS_FAILSAFE};
use serval_store::testing::SqliteFile;
use serval_sys::testing::{NetNsGuard, require_root};

#[expect(
    dead_code,
    reason = "the shared harness has helpers this test does not use"
)]
mod common;

use common::agent::{Agent, apply, config};
use common::node::{Node, in_ns, ip};
use common::wait::wait_for;

fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("serval_agent=info,serval_dp_bpf=info")
        .try_init();
}

struct PinsGuard(PinScope);

impl Drop for PinsGuard {
    fn drop(&mut self) {
        let _ = serval_dp_bpf::cleanup(&self.0, None);
    }
}

/// A TCP listener of the host (the node namespace itself) on `port`, IPv4 and IPv6, counting
/// accepted connections per source address; stopped on drop.
struct HostListener {
    accepted: Arc<Mutex<BTreeMap<IpAddr, usize>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl HostListener {
    fn start(node: &NetNsGuard, port: u16) -> Result<HostListener> {
        let accepted = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for bind in ["0.0.0.0", "::"] {
            let listener = node.run(move || -> std::io::Result<TcpListener> {
                let s = socket2::Socket::new(
                    if bind == "::" {
                        socket2::Domain::IPV6
                    } else {
                        socket2::Domain::IPV4
                    },
                    socket2::Type::STREAM,
                    None,
                )?;
                if bind == "::" {
                    s.set_only_v6(true)?;
                }
                s.set_reuse_address(true)?;
                let addr = SocketAddr::new(bind.parse().expect("address"), port);
                s.bind(&addr.into())?;
                s.listen(64)?;
                Ok(s.into())
            })??;
            listener.set_nonblocking(true)?;
            let (acc, flag) = (accepted.clone(), stop.clone());
            threads.push(thread::spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut c, peer)) => {
                            let ip = match peer.ip() {
                                IpAddr::V6(v6) => {
                                    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
                                }
                                v4 => v4,
                            };
                            *acc.lock().expect("lock").entry(ip).or_default() += 1;
                            let _ = c.set_nonblocking(false);
                            let _ = c.write_all(b"host\n");
                        }
                        Err(_) => thread::sleep(Duration::from_millis(10)),
                    }
                }
            }));
        }
        Ok(HostListener {
            accepted,
            stop,
            threads,
        })
    }

    fn from(&self, src: &str) -> usize {
        let ip: IpAddr = src.parse().expect("address");
        self.accepted
            .lock()
            .expect("lock")
            .get(&ip)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for HostListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The node's uplink `xo` and an outside namespace behind it (`xi`), with an allowed and a
/// blocked source per family.
const NODE4: &str = "192.168.77.1";
const NODE6: &str = "fd00:77::1";
const ALLOWED4: &str = "192.168.77.2";
const BLOCKED4: &str = "192.168.77.130";
const ALLOWED6: &str = "fd00:77::2";
const BLOCKED6: &str = "fd00:77::82";

fn outside(node: &Node) -> Result<NetNsGuard> {
    let out = NetNsGuard::new("svag-xdpo")?;
    let (n, o) = (node.name().to_string(), out.name().to_string());
    ip(&[
        "-n", &n, "link", "add", "xo", "type", "veth", "peer", "name", "xi", "netns", &o,
    ])?;
    for (ns, dev, addrs) in [
        (&n, "xo", vec![format!("{NODE4}/24"), format!("{NODE6}/64")]),
        (
            &o,
            "xi",
            vec![
                format!("{ALLOWED4}/24"),
                format!("{BLOCKED4}/24"),
                format!("{ALLOWED6}/64"),
                format!("{BLOCKED6}/64"),
            ],
        ),
    ] {
        for a in addrs {
            if a.contains(':') {
                ip(&["-n", ns, "addr", "add", &a, "dev", dev, "nodad"])?;
            } else {
                ip(&["-n", ns, "addr", "add", &a, "dev", dev])?;
            }
        }
        ip(&["-n", ns, "link", "set", dev, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    Ok(out)
}

/// Connects from `src` in `out` to `dst:port`; the host's answer, or the error kind.
fn connect(
    out: &NetNsGuard,
    src: &str,
    dst: &str,
    port: u16,
) -> Result<String, std::io::ErrorKind> {
    let src: IpAddr = src.parse().expect("address");
    let dst: SocketAddr = SocketAddr::new(dst.parse().expect("address"), port);
    out.run(move || -> std::io::Result<String> {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(dst),
            socket2::Type::STREAM,
            None,
        )?;
        s.bind(&SocketAddr::new(src, 0).into())?;
        s.connect_timeout(&dst.into(), Duration::from_millis(500))?;
        let mut c: TcpStream = s.into();
        c.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut buf = String::new();
        std::io::Read::read_to_string(&mut c, &mut buf)?;
        Ok(buf)
    })
    .map_err(|_| std::io::ErrorKind::Other)?
    .map_err(|e| e.kind())
}

fn xdp_counter(pins: &PinScope, which: u32) -> Result<u64> {
    let d = MapData::from_pin(pins.map_path("sv_xdp_stats"))?;
    let m: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(d))?;
    Ok(m.get(&which, 0)?.iter().sum())
}

/// The node's `sv_drops` counter of host endpoint policy drops (tc).
fn host_policy_drops(pins: &PinScope) -> Result<u64> {
    let d = MapData::from_pin(pins.map_path("sv_drops"))?;
    let m: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(d))?;
    Ok(m.get(&serval_dp_bpf::abi::SV_DROP_HOST_POLICY, 0)?
        .iter()
        .sum())
}

/// What `ip link` says about XDP on `xo` (the program id when attached).
fn xdp_on_uplink(node: &Node) -> Result<bool> {
    let out = in_ns(node.name(), &["ip", "-d", "link", "show", "xo"])?;
    Ok(out.contains("prog/xdp"))
}

const HOST_ENDPOINT: &str = r#"
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: node1-xo, labels: {role: edge}}
spec: {node: node1, interfaceName: xo}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: edge-allow}
spec:
  selector: role == 'edge'
  ingress: [{action: Allow}]
  egress: [{action: Allow}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: blocklist}
spec:
  selector: role == 'edge'
  doNotTrack: true
  applyOnForward: true
  order: 10
  ingress:
  - action: Deny
    source: {nets: [192.168.77.128/25]}
  - action: Deny
    source: {nets: ["fd00:77::80/121"]}
"#;

fn felix(xdp: bool) -> String {
    format!(
        "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {{name: default}}\nspec: {{bpfEnabled: true, xdpEnabled: {xdp}}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xdp_blocklist_drops_before_the_host_failsafe_stays_open_and_disabling_detaches()
-> Result<()> {
    if !require_root(
        "xdp_blocklist_drops_before_the_host_failsafe_stays_open_and_disabling_detaches",
    ) {
        return Ok(());
    }
    logs();
    let node = Node::start("svag-xdp", "svag-xdpp", &[("a", "10.244.7.1")])?;
    let pins = PinsGuard(PinScope::new(&scope_name(node.name()))?);
    let out = outside(&node)?;
    let web = HostListener::start(&node.node, 8080)?;
    let ssh = HostListener::start(&node.node, 22)?;

    let store = SqliteFile::new()?;
    let client = Client::open(&store.url()).await?;
    client.apply(node.resources()?, ApplyMode::Apply).await?;
    apply(&client, &felix(true)).await?;
    apply(&client, HOST_ENDPOINT).await?;
    let dir = tempfile::tempdir()?;
    let mut agent = Agent::start(&node.node, config(&store, &dir, Duration::from_secs(2)))?;
    agent.wait_ready().await?;

    wait_for("the XDP program on the uplink", || async {
        Ok(
            serval_dp_bpf::xdp::attachments(&pins.0)? == vec!["xo".to_string()]
                && xdp_on_uplink(&node)?,
        )
    })
    .await?;

    for (family, node_ip, allowed, blocked) in [
        ("IPv4", NODE4, ALLOWED4, BLOCKED4),
        ("IPv6", NODE6, ALLOWED6, BLOCKED6),
    ] {
        // Another source is unaffected.
        let answer = connect(&out, allowed, node_ip, 8080);
        ensure!(
            answer.as_deref() == Ok("host\n"),
            "{family} allowed source: {answer:?}"
        );
        ensure!(web.from(allowed) == 1);

        // The blocked source: dropped at XDP, counted, never accepted by the listener.
        let before = xdp_counter(&pins.0, SV_XDP_DROP_BLOCKLIST)?;
        let answer = connect(&out, blocked, node_ip, 8080);
        ensure!(
            answer.is_err(),
            "{family} blocked source got through: {answer:?}"
        );
        let after = xdp_counter(&pins.0, SV_XDP_DROP_BLOCKLIST)?;
        ensure!(
            after > before,
            "{family}: the XDP blocklist counter did not rise ({before} -> {after})"
        );
        ensure!(
            web.from(blocked) == 0,
            "{family}: the listener saw the blocked source"
        );

        // The failsafe port (tcp:22, Calico's default) stays reachable from the blocked source.
        let fs_before = xdp_counter(&pins.0, SV_XDP_PASS_FAILSAFE)?;
        let answer = connect(&out, blocked, node_ip, 22);
        ensure!(
            answer.as_deref() == Ok("host\n"),
            "{family} failsafe 22: {answer:?}"
        );
        ensure!(ssh.from(blocked) == 1);
        ensure!(xdp_counter(&pins.0, SV_XDP_PASS_FAILSAFE)? > fs_before);
    }

    // Restart: the stopped agent leaves the program attached (pinned link) and enforcing;
    // the next agent re-points the same link at its program and keeps enforcing.
    agent.stop().context("agent stop")?;
    ensure!(
        xdp_on_uplink(&node)?,
        "the XDP program must survive the agent"
    );
    let before = xdp_counter(&pins.0, SV_XDP_DROP_BLOCKLIST)?;
    ensure!(connect(&out, BLOCKED4, NODE4, 8080).is_err());
    ensure!(xdp_counter(&pins.0, SV_XDP_DROP_BLOCKLIST)? > before);
    let mut agent = Agent::start(&node.node, config(&store, &dir, Duration::from_secs(2)))?;
    agent.wait_ready().await?;
    ensure!(serval_dp_bpf::xdp::attachments(&pins.0)? == vec!["xo".to_string()]);
    let before = xdp_counter(&pins.0, SV_XDP_DROP_BLOCKLIST)?;
    ensure!(connect(&out, BLOCKED6, NODE6, 8080).is_err());
    ensure!(
        xdp_counter(&pins.0, SV_XDP_DROP_BLOCKLIST)? > before,
        "counters kept across the restart"
    );
    ensure!(connect(&out, ALLOWED4, NODE4, 8080).as_deref() == Ok("host\n"));

    // xdpEnabled: false detaches the program and removes its maps; the untracked deny is
    // still enforced, by the tc host endpoint program (counted as host_policy), as Calico
    // enforces doNotTrack policy in its raw table without XDP.
    apply(&client, &felix(false)).await?;
    wait_for("the XDP program to be detached", || async {
        Ok(serval_dp_bpf::xdp::attachments(&pins.0)?.is_empty()
            && !xdp_on_uplink(&node)?
            && !pins.0.map_path("sv_xdp_bl").exists())
    })
    .await?;
    let before = host_policy_drops(&pins.0)?;
    let answer = connect(&out, BLOCKED4, NODE4, 8080);
    ensure!(answer.is_err(), "after disabling XDP: {answer:?}");
    ensure!(web.from(BLOCKED4) == 0);
    ensure!(
        host_policy_drops(&pins.0)? > before,
        "the tc host endpoint program did not count the untracked deny"
    );
    ensure!(connect(&out, ALLOWED4, NODE4, 8080).as_deref() == Ok("host\n"));

    // Back on: attached again (the restart path is the same as a first attach).
    apply(&client, &felix(true)).await?;
    wait_for("the XDP program back on the uplink", || async {
        xdp_on_uplink(&node)
    })
    .await?;
    ensure!(connect(&out, BLOCKED6, NODE6, 8080).is_err());

    // Switching to the iptables dataplane removes the XDP program, its link and maps too.
    apply(
        &client,
        "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {name: default}\nspec: {bpfEnabled: false}\n",
    )
    .await?;
    wait_for("the eBPF pins and the XDP program to be gone", || async {
        Ok(!xdp_on_uplink(&node)? && !pins.0.dir().exists())
    })
    .await?;

    agent.stop().context("agent stop")?;
    Ok(())
}
