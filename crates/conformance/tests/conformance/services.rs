//! Services and NAT outgoing in a dual-stack lab: each case is data (who probes which
//! frontend, how often, what must come back), checked in the lab and against the reference
//! evaluator (candidates, rejection, drop, source NAT) on the model read back from the lab.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use serval_calc::Evaluator;
use serval_calc::evaluator::Packet;
use serval_calc::policy::IpProto;
use serval_calc::services::{FrontendKind, ServiceDecision, resolve};
use serval_conformance::echo::{parse_echo, ping};
use serval_conformance::lab::PROBE_TIMEOUT_MS;
use serval_conformance::scenario::pod_addr;
use serval_conformance::{Lab, converge, converge_timeout};
use serval_model::net::IpFamily;
use serval_model::types::Protocol;

use crate::require_root;

/// Port of the test's own echo server inside backend pods (not declared by the pods, so the
/// lab's pod server leaves it free; services reach it by a numeric targetPort).
const ECHO_PORT: u16 = 8080;

/// A pod: namespace svc, name, node, labels, declared ports `(name, port, protocol)`.
type PodSpec = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, u16, &'static str)],
);

const PODS: &[PodSpec] = &[
    // Three web backends across both nodes; the named port `alt` differs per pod.
    (
        "web-1",
        "node1",
        "app: web",
        &[("http", 80, "TCP"), ("dns", 80, "UDP"), ("alt", 81, "TCP")],
    ),
    (
        "web-2",
        "node2",
        "app: web",
        &[("http", 80, "TCP"), ("dns", 80, "UDP"), ("alt", 82, "TCP")],
    ),
    (
        "web-3",
        "node1",
        "app: web",
        &[("http", 80, "TCP"), ("dns", 80, "UDP"), ("alt", 83, "TCP")],
    ),
    ("client", "node2", "app: client", &[("http", 80, "TCP")]),
    // The only backend of the externalTrafficPolicy Local services; an echo server on 8080.
    ("local-1", "node1", "app: local", &[("http", 80, "TCP")]),
    ("hp", "node2", "app: hairpin", &[("http", 80, "TCP")]),
];

fn pods_yaml() -> String {
    let mut y = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: svc\n  labels:\n    ns: svc\n",
    );
    for (name, node, label, ports) in PODS {
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: svc\n  labels:\n    {label}\n\
             spec:\n  nodeName: {node}\n  containers:\n  - name: c\n    ports:\n"
        ));
        for (pname, port, proto) in *ports {
            y.push_str(&format!(
                "    - {{name: {pname}, containerPort: {port}, protocol: {proto}}}\n"
            ));
        }
    }
    y
}

fn service(name: &str, selector: &str, extra_spec: &str, ports: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: svc\nspec:\n  \
         ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  selector: {{{selector}}}\n{extra_spec}  ports:\n{ports}"
    )
}

const EXT_V4: &str = "203.0.113.10";
const EXT_V6: &str = "2001:db8:5e::10";

fn services_yaml() -> String {
    [
        service(
            "web",
            "app: web",
            "",
            "  - {name: tcp, port: 80, protocol: TCP}\n  - {name: udp, port: 80, protocol: UDP}\n",
        ),
        service(
            "web-named",
            "app: web",
            "",
            "  - {name: alt, port: 8081, targetPort: alt}\n",
        ),
        service(
            "web-sticky",
            "app: web",
            "  sessionAffinity: ClientIP\n",
            "  - {port: 80}\n",
        ),
        service(
            "empty",
            "app: nothing",
            "",
            "  - {name: t, port: 80}\n  - {name: u, port: 80, protocol: UDP}\n",
        ),
        service(
            "web-np",
            "app: web",
            &format!("  type: NodePort\n  externalIPs: [\"{EXT_V4}\", \"{EXT_V6}\"]\n"),
            "  - {name: t, port: 80}\n  - {name: u, port: 80, protocol: UDP}\n",
        ),
        service(
            "local-np",
            "app: local",
            "  type: NodePort\n  externalTrafficPolicy: Local\n",
            &format!("  - {{port: {ECHO_PORT}, targetPort: {ECHO_PORT}}}\n"),
        ),
        service(
            "cluster-np",
            "app: local",
            "  type: NodePort\n",
            &format!("  - {{port: {ECHO_PORT}, targetPort: {ECHO_PORT}}}\n"),
        ),
        service("hairpin", "app: hairpin", "", "  - {port: 80}\n"),
        service(
            "web-local",
            "app: web",
            "  internalTrafficPolicy: Local\n",
            "  - {port: 80}\n",
        ),
    ]
    .concat()
}

/// Where a case sends.
#[derive(Debug, Clone, Copy)]
enum To {
    /// The service's cluster IP of the case's family.
    ClusterIp(&'static str),
    /// The service's node port on this node's address.
    NodePort(&'static str, &'static str),
    /// The service's external IP, routed by the outside host via this node.
    ExternalIp(&'static str, &'static str),
}

/// Who must answer.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Every candidate backend the evaluator names answers at least once, nobody else.
    AllBackends,
    /// One backend answers every probe (affinity), one of the evaluator's candidates.
    SameBackend,
    /// Not reached, refused (TCP RST / ICMP unreachable), not a timeout; the evaluator
    /// rejects.
    Refused,
    /// Not reached; the evaluator drops (node-local traffic policy, no local backend).
    Dropped,
    /// This pod answers (hairpin: the client itself).
    Pod(&'static str),
    /// The backend's echo server sees the client's own address (no source NAT).
    PeerIsClient,
    /// The backend's echo server sees this node's address (source NAT to the node).
    PeerIsNode(&'static str),
}

#[derive(Debug, Clone, Copy)]
struct Case {
    name: &'static str,
    /// `svc/POD` or `outside`.
    from: &'static str,
    to: To,
    protocol: Protocol,
    probes: usize,
    expect: Expect,
    /// The backends the case expects to be candidates (checked against the evaluator's);
    /// empty: none (no backends, or not a question for this case).
    backends: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        name: "clusterip-three-backends",
        from: "svc/client",
        to: To::ClusterIp("web"),
        protocol: Protocol::Tcp,
        probes: 30,
        backends: &["svc/web-1", "svc/web-2", "svc/web-3"],
        expect: Expect::AllBackends,
    },
    Case {
        name: "udp-service",
        from: "svc/client",
        to: To::ClusterIp("web"),
        protocol: Protocol::Udp,
        probes: 30,
        backends: &["svc/web-1", "svc/web-2", "svc/web-3"],
        expect: Expect::AllBackends,
    },
    Case {
        name: "named-target-port",
        from: "svc/client",
        to: To::ClusterIp("web-named"),
        protocol: Protocol::Tcp,
        probes: 30,
        backends: &["svc/web-1", "svc/web-2", "svc/web-3"],
        expect: Expect::AllBackends,
    },
    Case {
        name: "client-ip-affinity",
        from: "svc/client",
        to: To::ClusterIp("web-sticky"),
        protocol: Protocol::Tcp,
        probes: 15,
        backends: &["svc/web-1", "svc/web-2", "svc/web-3"],
        expect: Expect::SameBackend,
    },
    Case {
        name: "no-backends-tcp-refused",
        from: "svc/client",
        to: To::ClusterIp("empty"),
        protocol: Protocol::Tcp,
        probes: 1,
        backends: &[],
        expect: Expect::Refused,
    },
    Case {
        name: "no-backends-udp-refused",
        from: "svc/client",
        to: To::ClusterIp("empty"),
        protocol: Protocol::Udp,
        probes: 1,
        backends: &[],
        expect: Expect::Refused,
    },
    Case {
        name: "nodeport-via-node1",
        from: "outside",
        to: To::NodePort("web-np", "node1"),
        protocol: Protocol::Tcp,
        probes: 20,
        backends: &["svc/web-1", "svc/web-2", "svc/web-3"],
        expect: Expect::AllBackends,
    },
    Case {
        name: "nodeport-via-node2",
        from: "outside",
        to: To::NodePort("web-np", "node2"),
        protocol: Protocol::Tcp,
        probes: 20,
        backends: &["svc/web-1", "svc/web-2", "svc/web-3"],
        expect: Expect::AllBackends,
    },
    Case {
        name: "nodeport-udp-via-node2",
        from: "outside",
        to: To::NodePort("web-np", "node2"),
        protocol: Protocol::Udp,
        probes: 20,
        backends: &["svc/web-1", "svc/web-2", "svc/web-3"],
        expect: Expect::AllBackends,
    },
    Case {
        name: "internal-traffic-policy-local",
        from: "svc/client",
        to: To::ClusterIp("web-local"),
        protocol: Protocol::Tcp,
        probes: 10,
        backends: &["svc/web-2"],
        expect: Expect::AllBackends,
    },
    Case {
        name: "external-ip-via-node1",
        from: "outside",
        to: To::ExternalIp("web-np", "node1"),
        protocol: Protocol::Tcp,
        probes: 20,
        backends: &["svc/web-1", "svc/web-2", "svc/web-3"],
        expect: Expect::AllBackends,
    },
    Case {
        name: "external-ip-via-node2",
        from: "outside",
        to: To::ExternalIp("web-np", "node2"),
        protocol: Protocol::Tcp,
        probes: 20,
        backends: &["svc/web-1", "svc/web-2", "svc/web-3"],
        expect: Expect::AllBackends,
    },
    Case {
        name: "etp-local-keeps-client-address",
        from: "outside",
        to: To::NodePort("local-np", "node1"),
        protocol: Protocol::Tcp,
        probes: 3,
        backends: &["svc/local-1"],
        expect: Expect::PeerIsClient,
    },
    Case {
        name: "etp-local-node-without-backend-drops",
        from: "outside",
        to: To::NodePort("local-np", "node2"),
        protocol: Protocol::Tcp,
        probes: 1,
        backends: &[],
        expect: Expect::Dropped,
    },
    Case {
        name: "etp-cluster-masquerades-to-node",
        from: "outside",
        to: To::NodePort("cluster-np", "node2"),
        protocol: Protocol::Tcp,
        probes: 3,
        backends: &["svc/local-1"],
        expect: Expect::PeerIsNode("node2"),
    },
    Case {
        name: "hairpin",
        from: "svc/hp",
        to: To::ClusterIp("hairpin"),
        protocol: Protocol::Tcp,
        probes: 3,
        backends: &["svc/hp"],
        expect: Expect::Pod("svc/hp"),
    },
];

/// The frontend `(ip, port)` a case sends to, from the evaluator's service state.
fn frontend(
    ev: &Evaluator,
    lab: &Lab,
    to: To,
    protocol: Protocol,
    family: IpFamily,
) -> Option<(IpAddr, u16, Option<String>)> {
    let (svc, kind, node) = match to {
        To::ClusterIp(s) => (s, FrontendKind::ClusterIP, None),
        To::NodePort(s, n) => (s, FrontendKind::NodePort, Some(n)),
        To::ExternalIp(s, n) => (s, FrontendKind::ExternalIP, Some(n)),
    };
    let node_ip = node.and_then(|n| lab.node_addr(n, family));
    ev.state()
        .services
        .frontends
        .iter()
        .find(|(k, f)| {
            f.service == ("svc".to_string(), svc.to_string())
                && f.kind == kind
                && k.protocol == protocol
                && IpFamily::of_addr(&k.ip) == family
                && (kind != FrontendKind::NodePort || Some(k.ip) == node_ip)
        })
        .map(|(k, _)| (k.ip, k.port, node.map(str::to_string)))
}

/// Runs one case over one family; returns what went wrong.
fn run_case(lab: &Lab, c: &Case, family: IpFamily) -> Result<(), String> {
    let model = lab.model().map_err(|e| format!("{e:#}"))?;
    let ev = Evaluator::new(&model);
    let (ip, port, via) = frontend(&ev, lab, c.to, c.protocol, family)
        .ok_or_else(|| format!("the evaluator has no {:?} frontend over {family}", c.to))?;
    let src = if c.from == "outside" {
        lab.outside_addr(family)
    } else {
        pod_addr(&model, c.from, family)
    }
    .ok_or_else(|| format!("{} has no {family} address", c.from))?;
    if let To::ExternalIp(_, node) = c.to {
        let gw = lab
            .node_addr(node, family)
            .ok_or_else(|| format!("{node} has no {family} address"))?;
        let (flag, len) = if ip.is_ipv4() {
            ("-4", 32)
        } else {
            ("-6", 128)
        };
        let dst = format!("{ip}/{len}");
        let gw = gw.to_string();
        let o = lab.exec(
            "outside",
            &["ip", flag, "route", "replace", &dst, "via", &gw],
        );
        if !o.status.success() {
            return Err(format!(
                "routing {dst} via {node} on the outside host: {}",
                serval_conformance::lab::describe(&o)
            ));
        }
    }
    // The evaluator's view.
    let proto = match c.protocol {
        Protocol::Udp => IpProto::Udp,
        _ => IpProto::Tcp,
    };
    let mut p = Packet::l4(src, ip, proto, port);
    p.ingress_node = via.clone().filter(|_| c.from == "outside");
    let verdict = ev.evaluate(&p);
    let src_local = c.from != "outside";
    let via_node = if c.from == "outside" {
        via.clone()
    } else {
        model
            .endpoints()
            .into_iter()
            .find(|e| e.addrs.contains(&src))
            .map(|e| e.node)
    };
    let decision = resolve(
        &ev.state().services,
        ip,
        port,
        c.protocol,
        via_node.as_deref(),
        src_local,
    );
    let candidates: BTreeSet<String> = verdict
        .nat
        .iter()
        .flat_map(|n| &n.candidates)
        .filter_map(|b| b.endpoint.as_ref().map(|(ns, p)| format!("{ns}/{p}")))
        .collect();
    let want_backends: BTreeSet<String> = c.backends.iter().map(|b| b.to_string()).collect();
    if candidates != want_backends {
        return Err(format!(
            "to {ip}:{port}: the evaluator's candidate backends are {candidates:?}, the case expects {want_backends:?}"
        ));
    }
    let want_reached = !matches!(c.expect, Expect::Refused | Expect::Dropped);
    if verdict.allowed != want_reached {
        return Err(format!(
            "to {ip}:{port}: the evaluator says {} ({}), the case expects {}",
            if verdict.allowed {
                "allowed"
            } else {
                "not allowed"
            },
            verdict.reason,
            if want_reached {
                "reached"
            } else {
                "not reached"
            }
        ));
    }
    match c.expect {
        Expect::Refused if decision != ServiceDecision::Reject => {
            return Err(format!(
                "the evaluator's decision is {decision:?}, not Reject"
            ));
        }
        Expect::Dropped if decision != ServiceDecision::Drop => {
            return Err(format!(
                "the evaluator's decision is {decision:?}, not Drop"
            ));
        }
        Expect::PeerIsClient | Expect::PeerIsNode(_) => {
            let snat = matches!(
                decision,
                ServiceDecision::Dnat {
                    snat_to_node: true,
                    ..
                }
            );
            if snat != matches!(c.expect, Expect::PeerIsNode(_)) {
                return Err(format!(
                    "the evaluator's decision {decision:?} disagrees with {:?}",
                    c.expect
                ));
            }
        }
        _ => {}
    }
    if matches!(c.expect, Expect::PeerIsClient | Expect::PeerIsNode(_)) {
        for b in verdict.nat.iter().flat_map(|n| &n.candidates) {
            if let Some((ns, pod)) = &b.endpoint {
                lab.ensure_echo(&format!("{ns}/{pod}"), c.protocol, ECHO_PORT)
                    .map_err(|e| format!("{e:#}"))?;
            }
        }
    }

    // The lab, until it converges. The one dataplane-dependent expectation: with externalTrafficPolicy
    // Cluster, kube-proxy (the iptables dataplane, and the reference evaluator, which models it)
    // masquerades outside clients to the receiving node, while the eBPF dataplane's
    // bpfExternalServiceMode (Tunnel by default, or DSR; as in Calico's eBPF dataplane)
    // forwards the packet to the backend's node through its tunnel and keeps the client's
    // address: there the backend sees the client.
    let lab_expect = match c.expect {
        Expect::PeerIsNode(_)
            if std::env::var("SERVAL_CONFORMANCE_DATAPLANE").as_deref() == Ok("bpf") =>
        {
            Expect::PeerIsClient
        }
        e => e,
    };
    let target = ip.to_string();
    let (ok, why) = converge(converge_timeout(), || {
        let mut replies = Vec::new();
        for _ in 0..c.probes {
            let o = lab.probe(c.from, &target, port, c.protocol, PROBE_TIMEOUT_MS)?;
            replies.push(o);
        }
        let got: BTreeSet<String> = replies.iter().filter_map(|o| o.reply.clone()).collect();
        let all_reached = replies.iter().all(|o| o.reached);
        let why = match lab_expect {
            Expect::AllBackends if !all_reached || got != candidates => Some(format!(
                "answered by {got:?}, expected every one of {candidates:?} (all reached: {all_reached})"
            )),
            Expect::SameBackend
                if !all_reached || got.len() != 1 || !got.is_subset(&candidates) =>
            {
                Some(format!(
                    "answered by {got:?}: expected one of {candidates:?} for every probe"
                ))
            }
            Expect::Pod(pod) if !all_reached || got != BTreeSet::from([pod.to_string()]) => {
                Some(format!("answered by {got:?}, expected {pod}"))
            }
            Expect::Refused if replies.iter().any(|o| o.reached || !o.refused()) => Some(format!(
                "expected a refusal (RST / port unreachable), not a timeout or an answer: {:?}",
                replies.iter().map(|o| &o.raw).collect::<Vec<_>>()
            )),
            Expect::Dropped if replies.iter().any(|o| o.reached) => {
                Some(format!("expected no answer, got {got:?}"))
            }
            Expect::PeerIsClient | Expect::PeerIsNode(_) => {
                let want = match lab_expect {
                    Expect::PeerIsNode(n) => lab.node_addr(n, family),
                    _ => Some(src),
                };
                let peers: BTreeSet<Option<IpAddr>> =
                    replies.iter().map(|o| o.reply.as_deref().and_then(parse_echo)).collect();
                (!all_reached || peers != BTreeSet::from([want])).then(|| {
                    format!("the backend saw {peers:?}, expected {want:?}")
                })
            }
            _ => None,
        };
        Ok((why.is_none(), why))
    })
    .map_err(|e| format!("{e:#}"))?;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} -> {ip}:{port}/{:?}: {} (waited {:?} for the agents)",
            c.from,
            c.protocol,
            why.unwrap_or_default(),
            converge_timeout()
        ))
    }
}

#[test]
fn services() {
    require_root!();
    let lab = Lab::up("svc", &["--ip-family", "dual", "--nodes", "2"]).expect("lab up");
    lab.apply_yaml("service pods", &pods_yaml())
        .expect("apply pods");
    lab.wait_pods().expect("pods ready");
    lab.apply_yaml("services", &services_yaml())
        .expect("apply services");
    let mut failures = Vec::new();
    for c in CASES {
        for family in [IpFamily::V4, IpFamily::V6] {
            let start = std::time::Instant::now();
            let r = run_case(&lab, c, family);
            eprintln!(
                "services: {:<40} {family} {} ({:.1}s)",
                c.name,
                if r.is_ok() { "ok" } else { "FAILED" },
                start.elapsed().as_secs_f64()
            );
            if let Err(e) = r {
                failures.push(format!("{} ({family}): {e}", c.name));
            }
        }
    }
    if let Err(e) = lab.check_no_serval_iptables() {
        failures.push(e);
    }
    assert!(
        failures.is_empty(),
        "{} service cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// NAT outgoing: the outside host's echo server sees the node's address for a pod of a
/// natOutgoing pool (the lab's IPv4 pool), the pod's own address otherwise (the IPv6 pool);
/// then natOutgoing is switched on for the IPv6 pool and off for the IPv4 pool.
#[test]
fn nat_outgoing() {
    require_root!();
    let lab = Lab::up("nat", &["--ip-family", "dual", "--nodes", "2"]).expect("lab up");
    lab.apply_yaml(
        "nat pods",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: nat\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  \
         name: p1\n  namespace: nat\nspec:\n  nodeName: node1\n  containers:\n  - name: c\n    ports:\n    - {containerPort: 80}\n\
         ---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p2\n  namespace: nat\nspec:\n  nodeName: node2\n  containers:\n  \
         - name: c\n    ports:\n    - {containerPort: 80}\n",
    )
    .expect("apply pods");
    lab.wait_pods().expect("pods ready");
    // The harness's own ICMP echo: a pod answers, an address nobody has does not.
    let model = lab.model().expect("model");
    for family in [IpFamily::V4, IpFamily::V6] {
        let p2 = pod_addr(&model, "nat/p2", family).expect("p2 address");
        let nobody: IpAddr = if family == IpFamily::V4 {
            "10.244.255.254".parse().expect("address")
        } else {
            "fd00:10:244::fffe".parse().expect("address")
        };
        let netns = lab.netns("nat/p1");
        let (ok, _) = converge(converge_timeout(), || {
            Ok::<_, anyhow::Error>((
                ping(&netns, p2, Duration::from_millis(PROBE_TIMEOUT_MS))?,
                (),
            ))
        })
        .expect("ping");
        assert!(ok, "nat/p1 gets no echo reply from nat/p2 ({p2})");
        let answered = ping(&netns, nobody, Duration::from_millis(PROBE_TIMEOUT_MS)).expect("ping");
        assert!(!answered, "an echo reply from {nobody}, which nobody has");
    }

    const PORT: u16 = 9000;
    lab.ensure_echo("outside", Protocol::Tcp, PORT)
        .expect("echo server on the outside host");
    lab.ensure_echo("outside", Protocol::Udp, PORT)
        .expect("echo server on the outside host");

    let mut failures = Vec::new();
    // Step 1: the lab's pools (IPv4 natOutgoing, IPv6 not). Step 2: swapped.
    for step in 0..2 {
        if step == 1 {
            for (name, on) in [
                ("default-ipv4-ippool", false),
                ("default-ipv6-ippool", true),
            ] {
                let key = serval_model::ResourceKey::new(serval_model::Kind::IPPool, None, name);
                let mut pool = match lab.get(&key) {
                    Ok(Some(serval_model::Resource::IPPool(p))) => p,
                    other => panic!("pool {name}: {other:?}"),
                };
                pool.spec.nat_outgoing = on;
                pool.metadata.resource_version = None;
                lab.apply(vec![serval_model::Resource::IPPool(pool)])
                    .expect("update pool");
            }
        }
        let model = lab.model().expect("model");
        let ev = Evaluator::new(&model);
        // Pods on node2 only over IPv4 or when masqueraded: the outside host routes the
        // pod networks via node1, so an unmasqueraded reply to node2's pod would cross node1.
        for (pod, node) in [("nat/p1", "node1"), ("nat/p2", "node2")] {
            for family in [IpFamily::V4, IpFamily::V6] {
                for protocol in [Protocol::Tcp, Protocol::Udp] {
                    let src = pod_addr(&model, pod, family).expect("pod address");
                    let dst = lab.outside_addr(family).expect("outside address");
                    let proto = if protocol == Protocol::Tcp {
                        IpProto::Tcp
                    } else {
                        IpProto::Udp
                    };
                    let v = ev.evaluate(&Packet::l4(src, dst, proto, PORT));
                    let masq = v.nat.as_ref().is_some_and(|n| n.masquerade);
                    if !masq && node != "node1" {
                        continue;
                    }
                    let want = if masq {
                        lab.node_addr(node, family).expect("node address")
                    } else {
                        src
                    };
                    let target = dst.to_string();
                    let r = converge(converge_timeout(), || {
                        let o = lab.probe(pod, &target, PORT, protocol, PROBE_TIMEOUT_MS)?;
                        let peer = o.reply.as_deref().and_then(parse_echo);
                        Ok((peer == Some(want), o))
                    });
                    let label = format!(
                        "step {} {pod} -> outside {family} {protocol:?} (pool natOutgoing: {masq})",
                        step + 1
                    );
                    match r {
                        Ok((true, _)) => eprintln!("nat_outgoing: {label} ok"),
                        Ok((false, o)) => failures.push(format!(
                            "{label}: the outside host should see {want}; probe: {}",
                            o.raw
                        )),
                        Err(e) => failures.push(format!("{label}: {e:#}")),
                    }
                }
            }
        }
    }
    if let Err(e) = lab.check_no_serval_iptables() {
        failures.push(e);
    }
    assert!(
        failures.is_empty(),
        "{} NAT outgoing checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
