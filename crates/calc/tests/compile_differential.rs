//! Randomized differential test of the policy compiler: for random models (namespaces and
//! pods with random labels and named ports, random Kubernetes NetworkPolicies and Calico
//! NetworkPolicies / GlobalNetworkPolicies in random tiers with Allow/Deny/Pass/Log, nets
//! and notNets, selectors and notSelectors, ports, notPorts, ranges, named ports, protocols,
//! notProtocol, ipVersion, ICMP and notICMP, source ports and source named ports) and every
//! packet (several source ports) between an endpoint of
//! `node-1` and any pod or outside address (IPv4 and IPv6), the emulated BPF lookups on
//! `compile(desired_state(model, "node-1"))` give the reference evaluator's verdict for that
//! endpoint's leg, and the rule that decided.

use std::net::IpAddr;

use proptest::prelude::*;
use serval_calc::compile::{
    self, CompiledPolicy, PolicyIndex, PolicyVerdict, RuleRef, diff, policy_port,
};
use serval_calc::evaluator::{DecidedBy, Decision, Evaluator, Packet};
use serval_calc::policy::{Direction, IpProto};
use serval_calc::{Model, desired_state};
use serval_model::parse_documents;

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const APPS: [&str; 3] = ["web", "db", "api"];

fn v4(k: usize) -> IpAddr {
    IpAddr::from([10, 0, 0, k as u8 + 1])
}

fn v6(k: usize) -> IpAddr {
    IpAddr::from([0xfd00, 0x10, 0, 0, 0, 0, 0, k as u16 + 1])
}

const OUTSIDE: [&str; 6] = [
    "10.0.0.200",
    "192.0.2.9",
    "172.16.0.1",
    "fd00:10::ff",
    "2001:db8::9",
    "2001:db9::1",
];

/// (namespace, app, role, http port, dns)
type PodGen = (usize, usize, Option<usize>, Option<usize>, bool);

fn pod() -> impl Strategy<Value = PodGen> {
    (
        0..3usize,
        0..3usize,
        prop::option::of(0..2usize),
        prop::option::of(0..2usize),
        any::<bool>(),
    )
}

fn pod_yaml(k: usize, (ns, app, role, http, dns): &PodGen) -> String {
    let role = role.map_or(String::new(), |r| format!(", role: {}", ["fe", "be"][r]));
    let mut ports = String::new();
    if let Some(h) = http {
        ports.push_str(&format!(
            "    - {{name: http, containerPort: {}, protocol: TCP}}\n",
            [80, 8080][*h]
        ));
    }
    if *dns {
        ports.push_str("    - {name: dns, containerPort: 53, protocol: UDP}\n");
    }
    let ports = if ports.is_empty() {
        "    ports: []\n".to_string()
    } else {
        format!("    ports:\n{ports}")
    };
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{k}, namespace: {}, labels: {{app: {}{role}}}}}\nspec:\n  nodeName: node-{}\n  containers:\n  - name: c\n{ports}status:\n  phase: Running\n  podIPs:\n  - ip: \"{}\"\n  - ip: \"{}\"\n",
        NAMESPACES[*ns],
        APPS[*app],
        1 + k % 2,
        v4(k),
        v6(k)
    )
}

// ---- Kubernetes NetworkPolicy ----------------------------------------------------------

const K8S_POD_SELECTORS: [&str; 4] = [
    "{}",
    "{matchLabels: {app: web}}",
    "{matchLabels: {role: fe}}",
    "{matchExpressions: [{key: app, operator: In, values: [db, api]}]}",
];
const K8S_NS_SELECTORS: [&str; 3] = [
    "{}",
    "{matchLabels: {team: a}}",
    "{matchLabels: {kubernetes.io/metadata.name: y}}",
];
const IP_BLOCKS: [&str; 6] = [
    "{cidr: 10.0.0.0/29, except: [10.0.0.4/30]}",
    "{cidr: 10.0.0.0/8, except: [10.0.0.2/32]}",
    "{cidr: 0.0.0.0/0, except: [10.0.0.0/24]}",
    "{cidr: 192.0.2.0/24}",
    "{cidr: 'fd00:10::/124', except: ['fd00:10::4/126']}",
    "{cidr: '::/0', except: ['fd00::/16']}",
];

fn k8s_peer() -> impl Strategy<Value = String> {
    (0..4usize, 0..4usize, 0..3usize, 0..6usize).prop_map(|(kind, ps, ns, ib)| match kind {
        0 => format!("{{podSelector: {}}}", K8S_POD_SELECTORS[ps]),
        1 => format!("{{namespaceSelector: {}}}", K8S_NS_SELECTORS[ns]),
        2 => format!(
            "{{podSelector: {}, namespaceSelector: {}}}",
            K8S_POD_SELECTORS[ps], K8S_NS_SELECTORS[ns]
        ),
        _ => format!("{{ipBlock: {}}}", IP_BLOCKS[ib]),
    })
}

fn k8s_port() -> impl Strategy<Value = String> {
    (0..3usize, 0..6usize).prop_map(|(proto, port)| {
        let proto = ["TCP", "UDP", "SCTP"][proto];
        match port {
            0 => format!("{{protocol: {proto}}}"),
            1 => format!("{{protocol: {proto}, port: 80}}"),
            2 => format!("{{protocol: {proto}, port: 53}}"),
            3 => format!("{{protocol: {proto}, port: http}}"),
            4 => format!("{{protocol: {proto}, port: dns}}"),
            _ => format!("{{protocol: {proto}, port: 8000, endPort: 8100}}"),
        }
    })
}

fn k8s_rule() -> impl Strategy<Value = (Vec<String>, Vec<String>)> {
    (
        prop::collection::vec(k8s_peer(), 0..3),
        prop::collection::vec(k8s_port(), 0..3),
    )
}

fn k8s_policy() -> impl Strategy<Value = String> {
    (
        0..3usize,
        0..4usize,
        0..3usize,
        prop::collection::vec(k8s_rule(), 0..3),
        prop::collection::vec(k8s_rule(), 0..3),
    )
        .prop_map(|(ns, sel, types, ingress, egress)| {
            let types = ["[Ingress]", "[Egress]", "[Ingress, Egress]"][types];
            let rules = |list: &[(Vec<String>, Vec<String>)], peers: &str| -> String {
                let r: Vec<String> = list
                    .iter()
                    .map(|(p, ports)| {
                        format!("{{{peers}: [{}], ports: [{}]}}", p.join(", "), ports.join(", "))
                    })
                    .collect();
                format!("[{}]", r.join(", "))
            };
            format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: NAME, namespace: {}}}\nspec:\n  podSelector: {}\n  policyTypes: {types}\n  ingress: {}\n  egress: {}\n",
                NAMESPACES[ns],
                K8S_POD_SELECTORS[sel],
                rules(&ingress, "from"),
                rules(&egress, "to"),
            )
        })
}

// ---- Calico policies -------------------------------------------------------------------

const SELECTORS: [&str; 5] = [
    "all()",
    "app == 'web'",
    "app != 'db'",
    "has(role)",
    "role in {'fe'}",
];
const NS_SELECTORS: [&str; 3] = ["team == 'a'", "ns != 'x'", "all()"];
const NETS4: [&str; 4] = [
    "[10.0.0.0/30]",
    "[10.0.0.2/32, 192.0.2.0/24]",
    "[0.0.0.0/0]",
    "[10.0.0.0/8]",
];
const NETS6: [&str; 3] = [
    "['fd00:10::/126']",
    "['fd00:10::2/128', '2001:db8::/64']",
    "['::/0']",
];
const PORTS: [&str; 6] = [
    "[80]",
    "[53, '8000:8100']",
    "[http]",
    "['1:1023']",
    "[dns, 443]",
    "['80:85', 8080]",
];

/// One entity side: (selector, notSelector, namespaceSelector, nets, notNets).
type SideGen = (
    Option<usize>,
    Option<usize>,
    Option<usize>,
    Option<usize>,
    Option<usize>,
);

fn side() -> impl Strategy<Value = SideGen> {
    (
        prop::option::weighted(0.4, 0..5usize),
        prop::option::weighted(0.2, 0..5usize),
        prop::option::weighted(0.2, 0..3usize),
        prop::option::weighted(0.3, 0..4usize),
        prop::option::weighted(0.3, 0..4usize),
    )
}

fn side_fields(s: &SideGen, v6: bool) -> Vec<String> {
    let mut f = Vec::new();
    if let Some(i) = s.0 {
        f.push(format!("selector: \"{}\"", SELECTORS[i]));
    }
    if let Some(i) = s.1 {
        f.push(format!("notSelector: \"{}\"", SELECTORS[i]));
    }
    if let Some(i) = s.2 {
        f.push(format!("namespaceSelector: \"{}\"", NS_SELECTORS[i]));
    }
    let nets = |i: usize| {
        if v6 { NETS6[i % NETS6.len()] } else { NETS4[i] }
    };
    if let Some(i) = s.3 {
        f.push(format!("nets: {}", nets(i)));
    }
    if let Some(i) = s.4 {
        f.push(format!("notNets: {}", nets(i)));
    }
    f
}

#[derive(Debug, Clone)]
struct CalicoRule {
    action: usize,
    proto: usize,
    not_proto: Option<usize>,
    ip_version: Option<bool>,
    v6_nets: bool,
    peer: SideGen,
    local: SideGen,
    local_used: bool,
    ports: Option<usize>,
    not_ports: Option<usize>,
    icmp: Option<(usize, bool)>,
    not_icmp: Option<usize>,
    src_ports: Option<usize>,
    not_src_ports: Option<usize>,
}

/// Source-port conditions (the source side: the peer for ingress, the local endpoint for
/// egress).
const SRC_PORTS: [&str; 5] = [
    "[40000]",
    "['1024:65535']",
    "[http]",
    "[53, '30000:40000']",
    "[dns, '1:1023']",
];

fn calico_rule() -> impl Strategy<Value = CalicoRule> {
    (
        (
            0..4usize,
            0..7usize,
            prop::option::weighted(0.15, 0..2usize),
            prop::option::weighted(0.2, any::<bool>()),
            any::<bool>(),
        ),
        (side(), side(), prop::bool::weighted(0.3)),
        (
            prop::option::weighted(0.5, 0..6usize),
            prop::option::weighted(0.25, 0..6usize),
            prop::option::weighted(0.5, (0..2usize, any::<bool>())),
            prop::option::weighted(0.3, 0..2usize),
        ),
        (
            prop::option::weighted(0.3, 0..5usize),
            prop::option::weighted(0.15, 0..5usize),
        ),
    )
        .prop_map(
            |(
                (action, proto, not_proto, ip_version, v6_nets),
                (peer, local, local_used),
                (ports, not_ports, icmp, not_icmp),
                (src_ports, not_src_ports),
            )| CalicoRule {
                action,
                proto,
                not_proto,
                ip_version,
                v6_nets,
                peer,
                local,
                local_used,
                ports,
                not_ports,
                icmp,
                not_icmp,
                src_ports,
                not_src_ports,
            },
        )
}

/// The rule as YAML; `ingress` puts the peer on the source side.
fn calico_rule_yaml(r: &CalicoRule, ingress: bool) -> String {
    let action = ["Allow", "Deny", "Pass", "Log"][r.action];
    // none, TCP, UDP, SCTP, ICMP, ICMPv6, 47
    let proto = [
        None,
        Some("TCP"),
        Some("UDP"),
        Some("SCTP"),
        Some("ICMP"),
        Some("ICMPv6"),
        Some("47"),
    ][r.proto];
    let mut f = vec![format!("action: {action}")];
    // The rule's family: fixed by ICMP / ICMPv6, else by ipVersion, else by the nets.
    let family_v6 = match r.proto {
        4 => Some(false),
        5 => Some(true),
        _ => r.ip_version,
    };
    let v6 = family_v6.unwrap_or(r.v6_nets);
    if let Some(p) = proto {
        f.push(format!("protocol: {p}"));
    } else if let Some(np) = r.not_proto {
        f.push(format!("notProtocol: {}", ["TCP", "UDP"][np]));
    }
    if let Some(is6) = r.ip_version
        && family_v6.is_none_or(|f| f == is6)
    {
        f.push(format!("ipVersion: {}", if is6 { 6 } else { 4 }));
    }
    let port_proto = matches!(r.proto, 1..=3);
    let icmp_proto = matches!(r.proto, 4 | 5);
    if icmp_proto {
        let types: [(u8, u8); 2] = if r.proto == 4 {
            [(8, 0), (3, 1)]
        } else {
            [(128, 0), (1, 3)]
        };
        if let Some((t, with_code)) = r.icmp {
            let (ty, code) = types[t];
            if with_code {
                f.push(format!("icmp: {{type: {ty}, code: {code}}}"));
            } else {
                f.push(format!("icmp: {{type: {ty}}}"));
            }
        }
        if let Some(t) = r.not_icmp {
            f.push(format!("notICMP: {{type: {}}}", types[t].0));
        }
    }
    let mut peer = side_fields(&r.peer, v6);
    let mut local = if r.local_used {
        side_fields(&r.local, v6)
    } else {
        Vec::new()
    };
    // Ports are on the destination: the local side for ingress, the peer for egress.
    let dst = if ingress { &mut local } else { &mut peer };
    if port_proto {
        if let Some(i) = r.ports {
            dst.push(format!("ports: {}", PORTS[i]));
        }
        if let Some(i) = r.not_ports {
            dst.push(format!("notPorts: {}", PORTS[i]));
        }
    }
    let (mut src, dst) = if ingress {
        (peer, local)
    } else {
        (local, peer)
    };
    if port_proto {
        if let Some(i) = r.src_ports {
            src.push(format!("ports: {}", SRC_PORTS[i]));
        }
        if let Some(i) = r.not_src_ports {
            src.push(format!("notPorts: {}", SRC_PORTS[i]));
        }
    }
    if !src.is_empty() {
        f.push(format!("source: {{{}}}", src.join(", ")));
    }
    if !dst.is_empty() {
        f.push(format!("destination: {{{}}}", dst.join(", ")));
    }
    format!("{{{}}}", f.join(", "))
}

type CalicoGen = (
    Option<usize>,
    usize,
    Option<usize>,
    usize,
    Option<usize>,
    Vec<CalicoRule>,
    Vec<CalicoRule>,
    bool,
);

fn calico_policy() -> impl Strategy<Value = CalicoGen> {
    (
        prop::option::of(0..3usize),
        0..3usize,
        prop::option::of(0..5usize),
        0..5usize,
        prop::option::weighted(0.3, 0..3usize),
        prop::collection::vec(calico_rule(), 0..4),
        prop::collection::vec(calico_rule(), 0..4),
        any::<bool>(),
    )
}

fn calico_policy_yaml(p: &CalicoGen) -> String {
    let (ns, tier, order, sel, nss, ingress, egress, both) = p;
    let tier = ["default", "security", "platform"][*tier];
    let order = order.map_or(String::new(), |o| format!("  order: {}\n", o * 10));
    let ingress: Vec<String> = ingress.iter().map(|r| calico_rule_yaml(r, true)).collect();
    let egress: Vec<String> = egress.iter().map(|r| calico_rule_yaml(r, false)).collect();
    let types = if *both {
        "  types: [Ingress, Egress]\n"
    } else {
        ""
    };
    let head = match ns {
        Some(i) => format!(
            "kind: NetworkPolicy\nmetadata: {{namespace: {}, name: NAME}}\nspec:\n",
            NAMESPACES[*i]
        ),
        None => {
            let nss = nss.map_or(String::new(), |i| {
                format!("  namespaceSelector: \"{}\"\n", NS_SELECTORS[i])
            });
            format!("kind: GlobalNetworkPolicy\nmetadata: {{name: NAME}}\nspec:\n{nss}")
        }
    };
    format!(
        "apiVersion: projectcalico.org/v3\n{head}  tier: {tier}\n{order}  selector: \"{}\"\n{types}  ingress: [{}]\n  egress: [{}]\n",
        SELECTORS[*sel],
        ingress.join(", "),
        egress.join(", ")
    )
}

// ---- the model and the packets ---------------------------------------------------------

#[derive(Debug, Clone)]
struct Case {
    teams: [bool; 3],
    pods: Vec<PodGen>,
    k8s: Vec<String>,
    calico: Vec<CalicoGen>,
    security_passes: bool,
    platform_passes: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<[bool; 3]>(),
        prop::collection::vec(pod(), 2..7),
        prop::collection::vec(k8s_policy(), 0..3),
        prop::collection::vec(calico_policy(), 0..4),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(teams, pods, k8s, calico, security_passes, platform_passes)| Case {
                teams,
                pods,
                k8s,
                calico,
                security_passes,
                platform_passes,
            },
        )
}

fn case_yaml(c: &Case) -> String {
    let mut y = String::new();
    for (name, v4, v6) in [
        ("node-1", "192.168.0.1", "fd00:192::1"),
        ("node-2", "192.168.0.2", "fd00:192::2"),
    ] {
        y.push_str(&format!(
            "---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {{name: {name}}}\nspec:\n  bgp: {{ipv4Address: {v4}/24, ipv6Address: '{v6}/64'}}\n"
        ));
    }
    for (i, ns) in NAMESPACES.iter().enumerate() {
        let team = if c.teams[i] { "a" } else { "b" };
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}, team: {team}}}}}\n"
        ));
    }
    for (name, order, passes) in [
        ("security", 100, c.security_passes),
        ("platform", 50, c.platform_passes),
    ] {
        y.push_str(&format!(
            "---\napiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {{name: {name}}}\nspec: {{order: {order}, defaultAction: {}}}\n",
            if passes { "Pass" } else { "Deny" }
        ));
    }
    for (k, p) in c.pods.iter().enumerate() {
        y.push_str(&pod_yaml(k, p));
    }
    for (i, p) in c.k8s.iter().enumerate() {
        y.push_str("---\n");
        y.push_str(&p.replace("NAME", &format!("k{i}")));
    }
    for (i, p) in c.calico.iter().enumerate() {
        y.push_str("---\n");
        y.push_str(&calico_policy_yaml(p).replace("NAME", &format!("c{i}")));
    }
    y
}

fn model_of(yaml: &str) -> Model {
    let docs = parse_documents("generated", yaml)
        .unwrap_or_else(|e| panic!("generated model must parse:\n{yaml}\n{e}"));
    Model::from_resources(docs)
}

fn expected_ref(d: &Decision) -> RuleRef {
    match &d.by {
        DecidedBy::Rule(id) => RuleRef::Rule(id.clone()),
        DecidedBy::EndOfTier(t) => RuleRef::EndOfTier(t.clone()),
        DecidedBy::NoPolicy => RuleRef::NoPolicy,
        DecidedBy::PassedAllTiers => RuleRef::PassedAllTiers,
        other => panic!("unexpected decision for a workload leg: {other:?}"),
    }
}

/// Packets of one family between `local` and `remote` (both directions are built by the
/// caller): `(protocol, dst port, icmp)`.
/// `(protocol, dst port, icmp type and code)`.
type Probe = (IpProto, u16, Option<(u8, u8)>);

fn probes(v4: bool) -> Vec<Probe> {
    let mut v = Vec::new();
    for port in [53u16, 80, 85, 443, 1000, 8050, 8080, 40000] {
        v.push((IpProto::Tcp, port, None));
    }
    for port in [53u16, 80, 8090] {
        v.push((IpProto::Udp, port, None));
    }
    v.push((IpProto::Sctp, 80, None));
    v.push((IpProto::Sctp, 53, None));
    v.push((IpProto::Other(47), 0, None));
    if v4 {
        for (t, c) in [(8u8, 0u8), (3, 1), (3, 2), (0, 0)] {
            v.push((IpProto::Icmp, 0, Some((t, c))));
        }
    } else {
        for (t, c) in [(128u8, 0u8), (1, 3), (1, 4), (129, 0)] {
            v.push((IpProto::IcmpV6, 0, Some((t, c))));
        }
    }
    v
}

fn packet(src: IpAddr, dst: IpAddr, proto: IpProto, port: u16, icmp: Option<(u8, u8)>) -> Packet {
    match icmp {
        Some((t, c)) => Packet::icmp(src, dst, t, c),
        None => Packet::l4(src, dst, proto, port),
    }
}

/// Checks every leg of node-1's endpoints; returns a description of the first mismatch.
fn check(model: &Model, compiled: &CompiledPolicy) -> Result<usize, String> {
    let ev = Evaluator::new(model);
    let index = PolicyIndex::new(compiled);
    let state = desired_state(model, Some("node-1"));
    let mut remotes: Vec<IpAddr> = ev
        .state()
        .endpoints
        .values()
        .flat_map(|(e, _)| e.addrs.clone())
        .collect();
    remotes.extend(OUTSIDE.iter().map(|a| a.parse::<IpAddr>().unwrap()));
    let mut checked = 0;
    for (key, (ep, _)) in &state.endpoints {
        let ep_id = *compiled
            .endpoints
            .get(key)
            .ok_or_else(|| format!("no ep_id for {key}"))?;
        for &local in &ep.addrs {
            for &remote in remotes
                .iter()
                .filter(|r| r.is_ipv4() == local.is_ipv4() && !ep.addrs.contains(r))
            {
                for (proto, port, icmp) in probes(local.is_ipv4()) {
                    let sports: &[u16] = if proto.has_ports() {
                        &[40000, 53, 80, 1500]
                    } else {
                        &[0]
                    };
                    for (&sport, dir) in sports
                        .iter()
                        .flat_map(|s| [(s, Direction::Ingress), (s, Direction::Egress)])
                    {
                        let mut p = match dir {
                            Direction::Ingress => packet(remote, local, proto, port, icmp),
                            Direction::Egress => packet(local, remote, proto, port, icmp),
                        };
                        if proto.has_ports() {
                            p.src_port = sport;
                        }
                        let v = ev.evaluate(&p);
                        let want = match dir {
                            Direction::Ingress => v.ingress.as_ref(),
                            Direction::Egress => v.egress.as_ref(),
                        }
                        .ok_or_else(|| format!("evaluator has no {dir:?} leg for {p:?}"))?;
                        let (verdict, rule) = index.lookup_with_sport(
                            ep_id,
                            dir,
                            remote,
                            p.protocol.number(),
                            p.src_port,
                            policy_port(p.protocol, p.dst_port, p.icmp),
                        );
                        let got_ref = compiled.rules.get(&rule);
                        let want_ref = expected_ref(want);
                        if (verdict == PolicyVerdict::Allow) != want.allowed
                            || got_ref != Some(&want_ref)
                        {
                            return Err(format!(
                                "{key} {dir:?} {}:{} -> {} {}/{} {:?}: evaluator {} by {want_ref}, compiled {verdict:?} by {} (rule id {rule}, identity {})",
                                p.src,
                                p.src_port,
                                p.dst,
                                p.protocol,
                                p.dst_port,
                                p.icmp,
                                if want.allowed { "allows" } else { "denies" },
                                got_ref.map_or("nothing".to_string(), |r| r.to_string()),
                                index.identity(remote),
                            ));
                        }
                        checked += 1;
                    }
                }
            }
        }
    }
    Ok(checked)
}

/// Applies a delta to the old policy's maps and checks the result is the new policy's.
fn delta_applies(old: &CompiledPolicy, new: &CompiledPolicy) -> Result<(), String> {
    let d = diff(old, new);
    let mut sport: std::collections::BTreeMap<_, _> =
        old.sport_entries.iter().map(|e| (e.key(), *e)).collect();
    for e in &d.upsert_sport_entries {
        sport.insert(e.key(), *e);
    }
    for e in &d.delete_sport_entries {
        sport.remove(&e.key());
    }
    if sport.into_values().collect::<Vec<_>>() != new.sport_entries {
        return Err("old source-port entries + delta != new ones".into());
    }
    let mut entries: std::collections::BTreeMap<_, _> =
        old.entries.iter().map(|e| (e.key(), *e)).collect();
    for e in &d.upsert_entries {
        entries.insert(e.key(), *e);
    }
    for e in &d.delete_entries {
        entries.remove(&e.key());
    }
    let got: Vec<_> = entries.into_values().collect();
    if got != new.entries {
        return Err("old entries + delta != new entries".into());
    }
    let mut ids: std::collections::BTreeMap<_, _> = old.identities.iter().copied().collect();
    ids.extend(d.upsert_identities.iter().copied());
    for n in &d.delete_identities {
        ids.remove(n);
    }
    let got: Vec<_> = ids.into_iter().collect();
    if got != new.identities {
        return Err("old identities + delta != new identities".into());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn compiled_lookups_equal_the_reference_evaluator(c in case()) {
        let yaml = case_yaml(&c);
        let model = model_of(&yaml);
        let state = desired_state(&model, Some("node-1"));
        let compiled = compile::compile(&state);
        let checked = check(&model, &compiled);
        prop_assert!(checked.is_ok(), "{}\nmodel:\n{yaml}", checked.unwrap_err());

        // Recompiling with the previous ids changes nothing.
        let again = compile::compile_incremental(&state, &compiled);
        prop_assert!(diff(&compiled, &again).is_empty());

        // Drop the last policy: the incremental compile is still exact, and the delta
        // turns the old maps into the new ones.
        let mut smaller = c.clone();
        if smaller.calico.pop().is_none() {
            smaller.k8s.pop();
        }
        let yaml2 = case_yaml(&smaller);
        let model2 = model_of(&yaml2);
        let next = compile::compile_incremental(&desired_state(&model2, Some("node-1")), &compiled);
        let checked = check(&model2, &next);
        prop_assert!(checked.is_ok(), "after removing a policy: {}\nmodel:\n{yaml2}", checked.unwrap_err());
        let applied = delta_applies(&compiled, &next);
        prop_assert!(applied.is_ok(), "{}", applied.unwrap_err());
        // Identities that still exist keep their ids.
        for (id, class) in &next.classes {
            if let Some((old_id, _)) = compiled.classes.iter().find(|(_, c)| *c == class) {
                prop_assert_eq!(old_id, id);
            }
        }
    }
}
