//! kube-proxy coexistence across nodes (FelixConfiguration
//! `bpfKubeProxyIptablesCleanupEnabled: false`), in a real dual-stack eBPF lab of two nodes,
//! as root. Both nodes get kube-proxy-style rules (iptables mode, IPv4 and IPv6): a DNAT of the
//! service's ClusterIPs to an address that does not exist (if netfilter ever NATed the
//! service, connections would fail) and kube-proxy's
//! `FORWARD -j KUBE-FORWARD` with `KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP`.
//! A client pod on node1 reaches the ClusterIP whose only backend is on node2, TCP and UDP,
//! IPv4 and IPv6, answered by the backend; the INVALID drop rule of either node never
//! matches (the tc programs carry the request and its reply past netfilter: the request leaves
//! node1 by `bpf_redirect_neigh`, enters the backend by the receive fast path, the reply leaves
//! node2 by redirect and node1's uplink program reverse-NATs it and redirects it into the
//! client, so neither node's conntrack sees half a flow). The kube-proxy rules are left as
//! they were.
//!
//! Runs only with `SERVAL_CONFORMANCE_DATAPLANE=bpf`: `SERVAL_CONFORMANCE_DATAPLANE=bpf cargo
//! test -p serval-conformance --test kubeproxy_cross_node`.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, bail, ensure};
use serval_conformance::lab::PROBE_TIMEOUT_MS;
use serval_conformance::{Lab, converge, converge_timeout};
use serval_model::types::Protocol;
use serval_model::{Kind, Resource, ResourceKey};

const PORT: u16 = 8080;

fn yaml() -> String {
    "apiVersion: v1\nkind: Namespace\nmetadata: {name: kpx}\n---\napiVersion: v1\nkind: Pod\n\
     metadata: {name: be, namespace: kpx, labels: {app: kpx}}\nspec:\n  nodeName: node2\n  \
     containers:\n  - name: c\n    ports:\n    - {containerPort: 80, protocol: TCP}\n    \
     - {containerPort: 80, protocol: UDP}\n---\napiVersion: v1\nkind: Pod\n\
     metadata: {name: cl, namespace: kpx}\nspec:\n  nodeName: node1\n  containers:\n  \
     - name: c\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: kpx}\n\
     spec:\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  \
     selector: {app: kpx}\n  ports:\n  - {name: t, port: 8080, targetPort: 80, protocol: TCP}\n  \
     - {name: u, port: 8080, targetPort: 80, protocol: UDP}\n---\n\
     apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {name: default}\n\
     spec: {bpfEnabled: true, bpfKubeProxyIptablesCleanupEnabled: false}\n"
        .to_string()
}

/// kube-proxy's rules for the ClusterIP `vip` (of the family of `tool`), DNATing it to
/// `nowhere`.
fn kube_proxy_rules(vip: &str, nowhere: &str) -> String {
    format!(
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-KPX - [0:0]\n\
         -I PREROUTING 1 -j KUBE-SERVICES\n-I OUTPUT 1 -j KUBE-SERVICES\n\
         -A KUBE-SERVICES -d {vip} -p tcp -m tcp --dport {PORT} -j KUBE-SVC-KPX\n\
         -A KUBE-SERVICES -d {vip} -p udp -m udp --dport {PORT} -j KUBE-SVC-KPX\n\
         -A KUBE-SVC-KPX -j DNAT --to-destination {nowhere}\nCOMMIT\n\
         *filter\n:KUBE-FORWARD - [0:0]\n\
         -I FORWARD 1 -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
         -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
         -A KUBE-FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT\nCOMMIT\n"
    )
}

fn restore(netns: &str, tool: &str, input: &str) -> anyhow::Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, tool, "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{tool} in {netns}"))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{tool} in {netns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The packets the `--ctstate INVALID -j DROP` rule of KUBE-FORWARD matched.
fn invalid_drops(netns: &str, tool: &str) -> anyhow::Result<u64> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, tool])
        .args(["-t", "filter", "-L", "KUBE-FORWARD", "-v", "-x", "-n"])
        .output()?;
    ensure!(
        out.status.success(),
        "{tool} -L KUBE-FORWARD in {netns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("INVALID") && l.contains("DROP"))
        .with_context(|| format!("no INVALID drop rule in KUBE-FORWARD of {netns}:\n{text}"))?;
    line.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("packet count of {line:?}"))
}

/// The service's ClusterIPs, IPv4 first.
fn cluster_ips(lab: &Lab) -> anyhow::Result<(String, String)> {
    let key = ResourceKey::new(Kind::Service, Some("kpx"), "web");
    let Some(Resource::Service(svc)) = lab.get(&key)? else {
        bail!("service kpx/web not found");
    };
    let mut ips: Vec<String> = svc.spec.cluster_ips.clone();
    ips.extend(svc.spec.cluster_ip.clone());
    let v4 = ips
        .iter()
        .find(|a| a.contains('.'))
        .context("no IPv4 ClusterIP")?;
    let v6 = ips
        .iter()
        .find(|a| a.contains(':'))
        .context("no IPv6 ClusterIP")?;
    Ok((v4.clone(), v6.clone()))
}

#[test]
fn cluster_ip_to_another_node_answers_with_kube_proxy_rules_and_its_invalid_drop_in_place() {
    if !serval_conformance::is_root() {
        eprintln!("skipped: the lab test needs root (labs: network namespaces, veths)");
        return;
    }
    if std::env::var("SERVAL_CONFORMANCE_DATAPLANE").as_deref() != Ok("bpf") {
        eprintln!(
            "skipped: bpfKubeProxyIptablesCleanupEnabled is an eBPF dataplane setting; run with SERVAL_CONFORMANCE_DATAPLANE=bpf"
        );
        return;
    }
    let lab = Lab::up("kpx", &["--nodes", "2", "--ip-family", "dual"]).expect("lab up");
    lab.apply_yaml("kube-proxy cross-node", &yaml())
        .expect("apply");
    lab.wait_pods().expect("pods ready");
    let (vip4, vip6) = cluster_ips(&lab).expect("cluster IPs");
    let nodes = ["node1", "node2"];
    for node in nodes {
        let ns = lab.netns(node);
        restore(
            &ns,
            "iptables-restore",
            &kube_proxy_rules(&vip4, "10.244.250.250"),
        )
        .expect("kube-proxy IPv4 rules");
        restore(
            &ns,
            "ip6tables-restore",
            &kube_proxy_rules(&vip6, "fd00:10:244:fafa::fa"),
        )
        .expect("kube-proxy IPv6 rules");
    }

    let mut failures = Vec::new();
    for (vip, tool) in [(&vip4, "iptables"), (&vip6, "ip6tables")] {
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let r = converge(converge_timeout(), || {
                let o = lab.probe("kpx/cl", vip, PORT, protocol, PROBE_TIMEOUT_MS)?;
                let ok = o.reached && o.reply.as_deref() == Some("kpx/be");
                Ok::<_, anyhow::Error>((ok, o.raw))
            });
            match r {
                Ok((true, _)) => {}
                Ok((false, raw)) => failures.push(format!("{vip} {protocol:?}: {raw}")),
                Err(e) => failures.push(format!("{vip} {protocol:?}: {e:#}")),
            }
            // More flows once it answers: each must answer too.
            for _ in 0..5 {
                match lab.probe("kpx/cl", vip, PORT, protocol, PROBE_TIMEOUT_MS) {
                    Ok(o) if o.reached && o.reply.as_deref() == Some("kpx/be") => {}
                    Ok(o) => failures.push(format!("{vip} {protocol:?} again: {}", o.raw)),
                    Err(e) => failures.push(format!("{vip} {protocol:?} again: {e:#}")),
                }
            }
        }
        for node in nodes {
            let n = invalid_drops(&lab.netns(node), tool).expect("KUBE-FORWARD counters");
            if n != 0 {
                failures.push(format!(
                    "{node} {tool}: KUBE-FORWARD's INVALID drop matched {n} packets"
                ));
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
