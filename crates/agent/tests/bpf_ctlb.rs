//! Connect-time load balancing through the real agent (root, real kernel): the node
//! namespace and pods of `tests/bpf_dataplane.rs`, the agent given a cgroup v2 directory of
//! its own (`AgentConfig::cgroup`, the lab's `--cgroup`), and clients that are processes in
//! a pod's network namespace *and* in a cgroup (this test binary re-executed as
//! [`client_helper`]):
//!
//! - default `bpfConnectTimeLoadBalancing: TCP`: a TCP connection from a process in the
//!   node's cgroup to the ClusterIP reaches the backend, `getpeername` shows the ClusterIP,
//!   and `sv_ct` holds the plain flow pod → backend and no NAT entry at all;
//! - a process in another node's cgroup (a sibling without programs) is untouched: its
//!   connection is NATed by tc (a NAT entry for its port appears);
//! - TCP mode leaves a pod's UDP to tc (NATed), but a host-networked client's UDP (a socket
//!   of the node's own namespace) is translated (`bpfHostNetworkedNATWithoutCTLB`);
//! - `Enabled`: UDP from an unconnected socket to the ClusterIP gets its reply from the
//!   ClusterIP (recvfrom), no NAT entry;
//! - `Disabled`: nothing stays attached and the same TCP connection is NATed by tc;
//! - the agent's cleanup leaves no pin (cgroup links included) behind.
//!
//! IPv4, and IPv6 in [`connect_time_load_balancing_ipv6`] (the harness' pods get IPv6
//! addresses there). Unique namespaces, cgroups and pin scope, removed on drop.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, ensure};
use aya::maps::{Map, MapData};
use serval_agent::dataplane::bpf::scope_name;
use serval_api::{ApplyMode, Client};
use serval_dp_bpf::PinScope;
use serval_dp_bpf::abi::{Addr, CtKey, CtVal, SV_CT_F_DNAT, SV_CT_TYPE_NAT_FWD};
use serval_dp_bpf::testing::{
    self as bpf_testing, ClientReport, ScopeGuard, TcpAnswer, TestCgroups, UdpEcho,
};
use serval_store::testing::SqliteFile;
use serval_sys::testing::require_root;

#[expect(
    dead_code,
    reason = "the shared harness has helpers this test does not use"
)]
mod common;

use common::agent::{Agent, apply, config};
use common::node::{Node, ip};
use common::wait::wait_for;

const HELPER_ENV: &str = "SERVAL_CTLB_AGENT_CLIENT";
const VIP: &str = "10.96.0.53";

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: ctlb, namespace: x}
spec:
  clusterIP: 10.96.0.53
  selector: {app: b}
  ports:
  - {name: web, protocol: TCP, port: 8080, targetPort: 80}
  - {name: dns, protocol: UDP, port: 53, targetPort: 5353}
"#;

fn felix(ctlb: &str) -> String {
    format!(
        "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {{name: default}}\n\
         spec: {{bpfEnabled: true, bpfConnectTimeLoadBalancing: {ctlb}}}\n"
    )
}

fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("serval_agent=info,serval_dp_bpf=info")
        .try_init();
}

/// Not a test of its own: the client, run by the test in a child process that `ip netns
/// exec` put in a pod's namespace and the test put in a cgroup. Does nothing unless
/// `SERVAL_CTLB_AGENT_CLIENT` is set (see `serval_dp_bpf::testing`).
#[test]
fn client_helper() {
    bpf_testing::client_helper(HELPER_ENV, Duration::from_secs(1));
}

/// Runs [`client_helper`] in network namespace `netns` and in `cgroup`.
fn run_client(netns: &str, cgroup: &Path, mode: &str, to: &str) -> Result<ClientReport> {
    let to: SocketAddr = to.parse()?;
    match bpf_testing::run_client("client_helper", HELPER_ENV, Some(netns), cgroup, mode, to)? {
        Ok(report) => Ok(report),
        Err(kind) => anyhow::bail!("client {mode} {to} failed: {kind}"),
    }
}

/// `<cgroup2>/svctlb-XXXX/{node,other}`: the agent's node, and another node's (no programs of
/// this agent); removed on drop.
fn cgroups() -> Option<TestCgroups> {
    TestCgroups::new("svctlb", &["node", "other"])
}

/// A UDP echo server in pod `b` on `addr` (replies `pong:MSG`); stopped on drop.
fn udp_echo(node: &Node, addr: &'static str) -> Result<UdpEcho> {
    let sock = node.pod("b").run(move || UdpSocket::bind(addr))??;
    Ok(UdpEcho::spawn(sock, "pong")?)
}

/// The conntrack entries whose side a or b is `(addr, port)`.
fn ct_entries_of(pins: &PinScope, addr: &str, port: u16) -> Result<Vec<(CtKey, CtVal)>> {
    let d = MapData::from_pin(pins.map_path("sv_ct"))?;
    let m: aya::maps::HashMap<MapData, CtKey, CtVal> =
        aya::maps::HashMap::try_from(Map::HashMap(d))?;
    let a = Addr::new(addr.parse()?);
    let p = port.to_be();
    let mut out = Vec::new();
    for kv in m.iter() {
        let (k, v) = kv?;
        if (k.addr_a == a && k.port_a == p) || (k.addr_b == a && k.port_b == p) {
            out.push((k, v));
        }
    }
    Ok(out)
}

fn is_nat(v: &CtVal) -> bool {
    v.kind == SV_CT_TYPE_NAT_FWD || v.flags & SV_CT_F_DNAT != 0
}

/// The agent of `node` (store `store`, state in `dir`), attaching to the node's cgroup of
/// `cg` and cleaning up on exit; ready.
async fn start_agent(
    node: &Node,
    store: &SqliteFile,
    dir: &tempfile::TempDir,
    cg: &TestCgroups,
) -> Result<Agent> {
    let mut cfg = config(store, dir, Duration::from_secs(2));
    cfg.cgroup = Some(cg.child("node"));
    cfg.cleanup_on_exit = true;
    let mut agent = Agent::start(&node.node, cfg)?;
    agent.wait_ready().await?;
    Ok(agent)
}

/// Ensures the flow of `o` from `addr` passed tc without a NAT entry (translated at the
/// socket), or with `nat` that tc NATed it; `what` names the case.
fn ensure_nat(
    pins: &ScopeGuard,
    addr: &str,
    o: &ClientReport,
    nat: bool,
    what: &str,
) -> Result<()> {
    let ct = ct_entries_of(&pins.0, addr, o.local_port)?;
    if nat {
        ensure!(
            ct.iter().any(|(_, v)| is_nat(v)),
            "{what}: NATed by tc: {ct:#?}"
        );
    } else {
        ensure!(
            !ct.is_empty() && ct.iter().all(|(_, v)| !is_nat(v)),
            "{what}: a conntrack entry for the flow (it passed tc) and none of NAT: {ct:#?}"
        );
    }
    Ok(())
}

/// Whether UDP from `pod` in the node's cgroup to `vip` is answered from `vip` with no NAT
/// entry (translated at sendmsg/recvmsg).
fn udp_translated(pod: &str, cg: &TestCgroups, vip: &str, pins: &ScopeGuard, addr: &str) -> bool {
    run_client(pod, &cg.child("node"), "udp", vip).is_ok_and(|o| {
        o.reply == "pong:ping" && o.peer == vip && ensure_nat(pins, addr, &o, false, "").is_ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_time_load_balancing_through_the_agent() -> Result<()> {
    if !require_root("connect_time_load_balancing_through_the_agent") {
        return Ok(());
    }
    let Some(cg) = cgroups() else {
        eprintln!(
            "skipping connect_time_load_balancing_through_the_agent: no writable cgroup v2 hierarchy"
        );
        return Ok(());
    };
    logs();
    let node = Node::start(
        "svag-ctlb",
        "svag-ctlbp",
        &[("a", "10.244.7.1"), ("b", "10.244.7.2")],
    )?;
    let pins = ScopeGuard(PinScope::new(&scope_name(node.name()))?);
    let _echo = udp_echo(&node, "0.0.0.0:5353")?;
    let pod_a = node.pod("a").name().to_string();
    let a_addr = node.addr("a");
    let store = SqliteFile::new()?;
    let client = Client::open(&store.url()).await?;
    client.apply(node.resources()?, ApplyMode::Apply).await?;
    apply(&client, &felix("TCP")).await?;
    apply(&client, SERVICE).await?;
    let dir = tempfile::tempdir()?;
    let agent = start_agent(&node, &store, &dir, &cg).await?;
    let vip_tcp = format!("{VIP}:8080");
    let vip_udp = format!("{VIP}:53");

    // TCP mode: the connection from the node's cgroup is translated at connect().
    wait_for(
        "the ClusterIP to answer over TCP from the node's cgroup",
        || async { Ok(client_ok(&pod_a, &cg.child("node"), "tcp", &vip_tcp)) },
    )
    .await?;
    ensure!(
        serval_dp_bpf::cgroup::attached(&pins.0)?.len() == 8,
        "the eight cgroup programs are pinned"
    );
    let o = run_client(&pod_a, &cg.child("node"), "tcp", &vip_tcp)?;
    ensure!(o.reply == "x/b", "reached {o:?}");
    ensure!(
        o.peer == vip_tcp,
        "getpeername must show the ClusterIP: {o:?}"
    );
    ensure_nat(&pins, a_addr, &o, false, "connect-time LB")?;

    // Another node's cgroup: untouched by this node's programs; tc NATs its connection.
    let o = run_client(&pod_a, &cg.child("other"), "tcp", &vip_tcp)?;
    ensure!(o.reply == "x/b" && o.peer == vip_tcp, "{o:?}");
    ensure_nat(
        &pins,
        a_addr,
        &o,
        true,
        "a process outside the node's cgroup",
    )?;

    // TCP mode leaves UDP to tc (NATed, reply reverse-NATed by tc).
    let o = run_client(&pod_a, &cg.child("node"), "udp", &vip_udp)?;
    ensure!(o.reply == "pong:ping" && o.peer == vip_udp, "{o:?}");
    ensure_nat(&pins, a_addr, &o, true, "UDP in TCP mode")?;

    // ... but a host-networked client's UDP (a socket of the node's own namespace) is
    // translated by the cgroup programs (Calico NATs it in tc; Serval's tc sees none of it).
    ip(&[
        "-n",
        node.name(),
        "addr",
        "add",
        "172.30.77.1/32",
        "dev",
        "svup",
    ])?;
    let o = run_client(node.name(), &cg.child("node"), "udp", &vip_udp)?;
    ensure!(
        o.reply == "pong:ping" && o.peer == vip_udp,
        "host-networked UDP in TCP mode: {o:?}"
    );

    // Enabled: unconnected UDP is translated too; the reply comes from the ClusterIP.
    apply(&client, &felix("Enabled")).await?;
    wait_for("UDP to be translated at sendmsg (no NAT entry)", || async {
        Ok(udp_translated(&pod_a, &cg, &vip_udp, &pins, a_addr))
    })
    .await?;

    // Disabled: nothing attached; tc NATs the node's TCP connections again.
    apply(&client, &felix("Disabled")).await?;
    wait_for("the cgroup programs to be removed", || async {
        Ok(serval_dp_bpf::cgroup::attached(&pins.0)?.is_empty())
    })
    .await?;
    let o = run_client(&pod_a, &cg.child("node"), "tcp", &vip_tcp)?;
    ensure!(o.reply == "x/b" && o.peer == vip_tcp, "{o:?}");
    ensure_nat(&pins, a_addr, &o, true, "Disabled: the connection")?;

    // Back to TCP, then a clean stop: nothing of the scope is left (cgroup links included).
    apply(&client, &felix("TCP")).await?;
    wait_for("the cgroup programs to be attached again", || async {
        Ok(serval_dp_bpf::cgroup::attached(&pins.0)?.len() == 8)
    })
    .await?;
    agent.stop()?;
    ensure!(
        !pins.0.dir().exists(),
        "pins left after the agent's cleanup: {:?}",
        std::fs::read_dir(pins.0.dir()).map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
    );
    Ok(())
}

fn client_ok(netns: &str, cgroup: &Path, mode: &str, to: &str) -> bool {
    run_client(netns, cgroup, mode, to).is_ok_and(|o| o.reply == "x/b")
}

const VIP6: &str = "fd00:10:96::35";

const SERVICE6: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: ctlb6, namespace: x}
spec:
  clusterIP: fd00:10:96::35
  ipFamilies: [IPv6]
  selector: {app: b}
  ports:
  - {name: web, protocol: TCP, port: 8080, targetPort: 8081}
  - {name: dns, protocol: UDP, port: 53, targetPort: 5354}
"#;

/// Gives the harness' pods IPv6 addresses too: `fd00:244::N/128` on the pod's eth0, the
/// node's veth end `fe80::1` as the pods' gateway, host routes to the pods in the node.
fn add_ipv6(node: &Node, pods: &[(&str, &str)]) -> Result<()> {
    let n = node.name();
    node.node
        .sysctl_write("net/ipv6/conf/all/forwarding", "1")?;
    for (pod, addr) in pods {
        let p = node.pod(pod).name();
        let host = format!("sv{pod}");
        ip(&["-n", n, "addr", "add", "fe80::1/64", "dev", &host, "nodad"])?;
        ip(&[
            "-n",
            n,
            "route",
            "add",
            &format!("{addr}/128"),
            "dev",
            &host,
        ])?;
        ip(&[
            "-n",
            p,
            "addr",
            "add",
            &format!("{addr}/128"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        ip(&[
            "-n", p, "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0",
        ])?;
    }
    Ok(())
}

/// The harness' resources with the pods' IPv6 addresses added (podIPs, WorkloadEndpoints)
/// and an IPv6 pool.
fn dual_stack_resources(node: &Node, v6: &[(&str, &str)]) -> Result<Vec<serval_model::Resource>> {
    use serval_model::Resource;
    let mut out = Vec::new();
    for r in node.resources()? {
        match r {
            Resource::Pod(mut p) => {
                if let Some((_, a)) = v6.iter().find(|(n, _)| *n == p.metadata.name)
                    && let Some(st) = p.status.as_mut()
                {
                    st.pod_ips
                        .push(serval_model::k8s::pod::PodIp { ip: a.parse()? });
                }
                out.push(Resource::Pod(p));
            }
            Resource::WorkloadEndpoint(mut w) => {
                if let Some((_, a)) = v6.iter().find(|(n, _)| *n == w.spec.pod) {
                    w.spec.ip_networks.push(format!("{a}/128").parse()?);
                }
                out.push(Resource::WorkloadEndpoint(w));
            }
            other => out.push(other),
        }
    }
    out.extend(serval_model::parse_documents(
        "test",
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p6}\nspec: {cidr: 'fd00:244::/64'}\n",
    )?);
    Ok(out)
}

/// A TCP server on `[::]:8081` in pod `b` answering `x/b6`; stopped on drop.
fn tcp6(node: &Node) -> Result<TcpAnswer> {
    let l = node
        .pod("b")
        .run(|| std::net::TcpListener::bind("[::]:8081"))??;
    Ok(TcpAnswer::spawn(l, "x/b6")?)
}

/// IPv6: TCP to an IPv6 ClusterIP from the node's cgroup is translated at connect()
/// (getpeername shows the ClusterIP, no NAT conntrack entry); another cgroup's connection is
/// NATed by tc; with `Enabled`, unconnected UDP replies come from the ClusterIP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_time_load_balancing_ipv6() -> Result<()> {
    if !require_root("connect_time_load_balancing_ipv6") {
        return Ok(());
    }
    let Some(cg) = cgroups() else {
        eprintln!("skipping connect_time_load_balancing_ipv6: no writable cgroup v2 hierarchy");
        return Ok(());
    };
    logs();
    let v6 = [("a", "fd00:244::1"), ("b", "fd00:244::2")];
    let node = Node::start(
        "svag-ctlb6",
        "svag-ctlb6p",
        &[("a", "10.244.6.1"), ("b", "10.244.6.2")],
    )?;
    add_ipv6(&node, &v6)?;
    let pins = ScopeGuard(PinScope::new(&scope_name(node.name()))?);
    let _echo = udp_echo(&node, "[::]:5354")?;
    let _tcp = tcp6(&node)?;
    let pod_a = node.pod("a").name().to_string();
    let a6 = v6[0].1;
    let store = SqliteFile::new()?;
    let client = Client::open(&store.url()).await?;
    client
        .apply(dual_stack_resources(&node, &v6)?, ApplyMode::Apply)
        .await?;
    apply(&client, &felix("TCP")).await?;
    apply(&client, SERVICE6).await?;
    let dir = tempfile::tempdir()?;
    let agent = start_agent(&node, &store, &dir, &cg).await?;
    let vip_tcp = format!("[{VIP6}]:8080");
    let vip_udp = format!("[{VIP6}]:53");

    wait_for("the IPv6 ClusterIP to answer over TCP", || async {
        Ok(run_client(&pod_a, &cg.child("node"), "tcp", &vip_tcp).is_ok_and(|o| o.reply == "x/b6"))
    })
    .await?;
    let o = run_client(&pod_a, &cg.child("node"), "tcp", &vip_tcp)?;
    ensure!(
        o.peer == vip_tcp,
        "getpeername must show the ClusterIP: {o:?}"
    );
    ensure_nat(&pins, a6, &o, false, "IPv6 connect-time LB")?;

    let o = run_client(&pod_a, &cg.child("other"), "tcp", &vip_tcp)?;
    ensure!(o.reply == "x/b6" && o.peer == vip_tcp, "{o:?}");
    ensure_nat(&pins, a6, &o, true, "IPv6 from the other cgroup")?;

    apply(&client, &felix("Enabled")).await?;
    wait_for(
        "IPv6 UDP to be translated at sendmsg (no NAT entry)",
        || async { Ok(udp_translated(&pod_a, &cg, &vip_udp, &pins, a6)) },
    )
    .await?;
    agent.stop()?;
    ensure!(
        !pins.0.dir().exists(),
        "pins left after the agent's cleanup"
    );
    Ok(())
}
