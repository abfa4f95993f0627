//! NodePort Tunnel and DSR end to end (issue 6, FelixConfiguration `bpfExternalServiceMode`),
//! in a real dual-stack eBPF lab of two nodes, as root. One backend pod on node1 behind a
//! NodePort service (externalTrafficPolicy Cluster); the `outside` host connects to the
//! NodePort on node1 (the backend's node) and on node2 (no backend), TCP and UDP, IPv4 and
//! IPv6, in three configurations:
//!
//! - `Tunnel` (the default): the backend's echo server sees the outside host's own address;
//!   through node2 the request crosses the tunnel to node1 (node2 `encap_fwd`, node1
//!   `decap_fwd`) and the reply comes back through node2 (node1 `encap_reply`, node2
//!   `decap_reply`);
//! - `DSR`: same request path; the reply leaves node1 straight for the client (node1
//!   `dsr_reply`), node2 never sees it (its `decap_reply` does not move);
//! - `DSR` with the outside host in `bpfDSROptoutCIDRs`: Tunnel again.
//!
//! Through node1 nothing is tunnelled (no counter moves) and the client is kept as well.
//! The counters are the programs' `sv_tun_stats` (per node, read with bpftool from the node's
//! pin scope), so the reply path is observed where it happens, not inferred.
//!
//! Runs only with `SERVAL_CONFORMANCE_DATAPLANE=bpf`: `SERVAL_CONFORMANCE_DATAPLANE=bpf cargo
//! test -p serval-conformance --test external_modes`.

use std::process::Command;

use anyhow::{Context, bail};
use serval_conformance::echo::parse_echo;
use serval_conformance::lab::PROBE_TIMEOUT_MS;
use serval_conformance::{Lab, converge, converge_timeout};
use serval_model::net::IpFamily;
use serval_model::types::Protocol;
use serval_model::{Kind, Resource, ResourceKey};

const PORT: u16 = 8080;

/// `sv_tun_stats` indices (serval_maps.h `SV_TUN_*`).
const ENCAP_FWD: usize = 0;
const DECAP_FWD: usize = 1;
const ENCAP_REPLY: usize = 2;
const DECAP_REPLY: usize = 3;
const DSR_REPLY: usize = 4;
const NAMES: [&str; 6] = [
    "encap_fwd",
    "decap_fwd",
    "encap_reply",
    "decap_reply",
    "dsr_reply",
    "dropped",
];

fn yaml() -> String {
    "apiVersion: v1\nkind: Namespace\nmetadata: {name: xm}\n---\napiVersion: v1\nkind: Pod\n\
     metadata: {name: be-1, namespace: xm, labels: {app: xm}}\nspec:\n  nodeName: node1\n  \
     containers:\n  - name: c\n    ports:\n    - {name: http, containerPort: 80, protocol: TCP}\n\
     ---\napiVersion: v1\nkind: Service\nmetadata: {name: xm, namespace: xm}\nspec:\n  \
     type: NodePort\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  \
     selector: {app: xm}\n  ports:\n  - {name: t, port: 8080, targetPort: 8080, protocol: TCP}\n  \
     - {name: u, port: 8080, targetPort: 8080, protocol: UDP}\n"
        .to_string()
}

/// The node port of the service's port `name`.
fn node_port(lab: &Lab, name: &str) -> anyhow::Result<u16> {
    let key = ResourceKey::new(Kind::Service, Some("xm"), "xm");
    let Some(Resource::Service(svc)) = lab.get(&key)? else {
        bail!("service xm/xm not found");
    };
    svc.spec
        .ports
        .iter()
        .find(|p| p.name.as_deref() == Some(name))
        .and_then(|p| p.node_port)
        .map(|p| p.get())
        .with_context(|| format!("service port {name} has no nodePort"))
}

/// The sums over CPUs of a node's `sv_tun_stats` counters.
fn counters(lab: &Lab, node: &str) -> anyhow::Result<[u64; 6]> {
    let pin = format!("/sys/fs/bpf/serval/{}/maps/sv_tun_stats", lab.netns(node));
    let o = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned", &pin])
        .output()
        .context("running bpftool")?;
    if !o.status.success() {
        bail!(
            "bpftool map dump {pin}: {}{}",
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).context("bpftool -j output")?;
    let mut out = [0u64; 6];
    for e in v.as_array().context("bpftool: not an array")? {
        // With BTF: {"formatted": {"key": N, "values": [{"cpu": C, "value": V}]}}; without:
        // little-endian byte strings.
        let (key, values) = match e.get("formatted") {
            Some(f) => (
                f["key"].as_u64().context("formatted key")?,
                f["values"]
                    .as_array()
                    .context("formatted values")?
                    .iter()
                    .map(|c| c["value"].as_u64().unwrap_or(0))
                    .collect::<Vec<_>>(),
            ),
            None => {
                let bytes = |x: &serde_json::Value| -> Vec<u8> {
                    x.as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|b| {
                                    u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16)
                                        .ok()
                                })
                                .collect()
                        })
                        .unwrap_or_default()
                };
                let k = bytes(&e["key"]);
                let key = u64::from(u32::from_le_bytes(
                    k.get(..4).context("key bytes")?.try_into()?,
                ));
                let values = e["values"]
                    .as_array()
                    .context("values")?
                    .iter()
                    .map(|c| {
                        let b = bytes(&c["value"]);
                        b.get(..8)
                            .and_then(|b| b.try_into().ok())
                            .map(u64::from_le_bytes)
                            .unwrap_or(0)
                    })
                    .collect();
                (key, values)
            }
        };
        if let Some(slot) = out.get_mut(key as usize) {
            *slot = values.iter().sum();
        }
    }
    Ok(out)
}

fn delta(after: &[u64; 6], before: &[u64; 6]) -> [u64; 6] {
    let mut d = [0; 6];
    for i in 0..6 {
        d[i] = after[i].saturating_sub(before[i]);
    }
    d
}

fn show(d: &[u64; 6]) -> String {
    NAMES
        .iter()
        .zip(d)
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k}+{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The agents' process ids (`serval lab status -o json`): the same before and after the
/// FelixConfiguration changes, so the modes switch without an agent restart.
fn agent_pids(lab: &Lab) -> Vec<u64> {
    fn walk(v: &serde_json::Value, out: &mut Vec<u64>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(p) = m.get("agent_pid").and_then(serde_json::Value::as_u64) {
                    out.push(p);
                }
                m.values().for_each(|x| walk(x, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let o = lab.lab_cmd("status", &["-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    let mut out = Vec::new();
    walk(&v, &mut out);
    out.sort_unstable();
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Tunnel,
    Dsr,
    DsrOptedOut,
}

fn felix_yaml(lab: &Lab, mode: Mode) -> String {
    let spec = match mode {
        Mode::Tunnel => "bpfExternalServiceMode: Tunnel".to_string(),
        Mode::Dsr => "bpfExternalServiceMode: DSR".to_string(),
        Mode::DsrOptedOut => {
            let v4 = lab.outside_addr(IpFamily::V4).expect("outside IPv4");
            let v6 = lab.outside_addr(IpFamily::V6).expect("outside IPv6");
            format!("bpfExternalServiceMode: DSR\n  bpfDSROptoutCIDRs: [\"{v4}/32\", \"{v6}/128\"]")
        }
    };
    format!(
        "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {{name: default}}\n\
         spec:\n  bpfEnabled: true\n  {spec}\n"
    )
}

/// One round of probes from outside to `node`'s node port; what went wrong, if anything.
fn check(
    lab: &Lab,
    mode: Mode,
    family: IpFamily,
    via: &str,
    protocol: Protocol,
    port: u16,
) -> anyhow::Result<Option<String>> {
    let client = lab.outside_addr(family).context("outside address")?;
    let target = lab
        .node_addr(via, family)
        .context("node address")?
        .to_string();
    // Not there yet (the agent has not loaded its programs): another round.
    let before = match (counters(lab, "node1"), counters(lab, "node2")) {
        (Ok(a), Ok(b)) => [a, b],
        (Err(e), _) | (_, Err(e)) => return Ok(Some(format!("{e:#}"))),
    };
    let mut peers = Vec::new();
    for _ in 0..3 {
        let o = lab.probe("outside", &target, port, protocol, PROBE_TIMEOUT_MS)?;
        if !o.reached {
            return Ok(Some(format!("not reached: {}", o.raw)));
        }
        peers.push(o.reply.as_deref().and_then(parse_echo));
    }
    if peers.iter().any(|p| *p != Some(client)) {
        return Ok(Some(format!(
            "the backend saw {peers:?}, not the client {client}"
        )));
    }
    let n1 = delta(&counters(lab, "node1")?, &before[0]);
    let n2 = delta(&counters(lab, "node2")?, &before[1]);
    let seen = format!("node1: [{}], node2: [{}]", show(&n1), show(&n2));
    let ok = if via == "node1" {
        // the backend's own node: nothing tunnelled
        n1 == [0; 6] && n2 == [0; 6]
    } else {
        let request = n2[ENCAP_FWD] >= 3 && n1[DECAP_FWD] >= 3;
        let tunnel_reply = n1[ENCAP_REPLY] >= 3 && n2[DECAP_REPLY] >= 3 && n1[DSR_REPLY] == 0;
        let dsr_reply = n1[DSR_REPLY] >= 3 && n2[DECAP_REPLY] == 0 && n1[ENCAP_REPLY] == 0;
        request
            && match mode {
                Mode::Tunnel | Mode::DsrOptedOut => tunnel_reply,
                Mode::Dsr => dsr_reply,
            }
    };
    eprintln!("external_modes: {mode:?} {family} {protocol:?} via {via}: client kept; {seen}");
    Ok((!ok).then(|| format!("unexpected reply path for {mode:?}: {seen}")))
}

#[test]
fn nodeport_tunnel_and_dsr_keep_the_client_and_take_their_reply_paths() {
    if !serval_conformance::is_root() {
        eprintln!("skipped: the lab test needs root (labs: network namespaces, veths)");
        return;
    }
    if std::env::var("SERVAL_CONFORMANCE_DATAPLANE").as_deref() != Ok("bpf") {
        eprintln!(
            "skipped: bpfExternalServiceMode is an eBPF dataplane feature; run with SERVAL_CONFORMANCE_DATAPLANE=bpf"
        );
        return;
    }
    let lab = Lab::up("xmode", &["--nodes", "2", "--ip-family", "dual"]).expect("lab up");
    lab.apply_yaml("tunnel service", &yaml()).expect("apply");
    lab.wait_pods().expect("pods ready");
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        lab.ensure_echo("xm/be-1", protocol, PORT)
            .expect("echo server in the backend");
    }
    let tcp_port = node_port(&lab, "t").expect("TCP node port");
    let udp_port = node_port(&lab, "u").expect("UDP node port");

    let pids = agent_pids(&lab);
    assert_eq!(pids.len(), 2, "two agents running: {pids:?}");
    let mut failures = Vec::new();
    for mode in [Mode::Tunnel, Mode::Dsr, Mode::DsrOptedOut] {
        lab.apply_yaml("felix", &felix_yaml(&lab, mode))
            .expect("apply FelixConfiguration");
        for family in [IpFamily::V4, IpFamily::V6] {
            for (via, protocol, port) in [
                ("node2", Protocol::Tcp, tcp_port),
                ("node1", Protocol::Tcp, tcp_port),
                ("node2", Protocol::Udp, udp_port),
            ] {
                // the agents reload their programs after the FelixConfiguration change
                let r = converge(converge_timeout(), || {
                    let why = check(&lab, mode, family, via, protocol, port)?;
                    Ok::<_, anyhow::Error>((why.is_none(), why))
                });
                match r {
                    Ok((true, _)) => {}
                    Ok((false, why)) => failures.push(format!(
                        "{mode:?} {family} {protocol:?} via {via}: {}",
                        why.unwrap_or_default()
                    )),
                    Err(e) => {
                        failures.push(format!("{mode:?} {family} {protocol:?} via {via}: {e:#}"))
                    }
                }
            }
        }
    }
    assert_eq!(
        agent_pids(&lab),
        pids,
        "the mode changes were applied by the running agents, not by restarts"
    );
    assert!(
        failures.is_empty(),
        "{} checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// With VXLAN routing (IPPool encapsulation VXLAN) the backend's node is found for both
/// families: the default Tunnel mode keeps the client and uses the NodePort tunnel, not the
/// VXLAN device. IPv4 VXLAN routes name the node's underlay address (onlink); IPv6 ones go
/// via the remote VTEP's link-local address, which is no node address, so the node comes from
/// the driver's sv_routes entry of the backend's IPAM block (docs/architecture.md).
#[test]
fn vxlan_routing_uses_the_tunnel_for_both_families() {
    if !serval_conformance::is_root() {
        eprintln!("skipped: the lab test needs root (labs: network namespaces, veths)");
        return;
    }
    if std::env::var("SERVAL_CONFORMANCE_DATAPLANE").as_deref() != Ok("bpf") {
        eprintln!("skipped: run with SERVAL_CONFORMANCE_DATAPLANE=bpf");
        return;
    }
    let lab = Lab::up(
        "xmvx",
        &[
            "--nodes",
            "2",
            "--ip-family",
            "dual",
            "--encapsulation",
            "vxlan",
        ],
    )
    .expect("lab up");
    lab.apply_yaml("tunnel service", &yaml()).expect("apply");
    lab.wait_pods().expect("pods ready");
    lab.ensure_echo("xm/be-1", Protocol::Tcp, PORT)
        .expect("echo server in the backend");
    let port = node_port(&lab, "t").expect("TCP node port");
    for family in [IpFamily::V4, IpFamily::V6] {
        let r = converge(converge_timeout(), || {
            let why = check(&lab, Mode::Tunnel, family, "node2", Protocol::Tcp, port)?;
            Ok::<_, anyhow::Error>((why.is_none(), why))
        })
        .expect("probe");
        assert!(
            r.0,
            "{family:?} over VXLAN routing: {}",
            r.1.unwrap_or_default()
        );
    }
}
