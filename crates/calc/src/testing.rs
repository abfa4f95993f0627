//! Random models for the differential tests (behind the `testing` feature, never in a
//! release build): pods with random labels and named ports on two nodes, random Kubernetes
//! NetworkPolicies and Calico NetworkPolicies / GlobalNetworkPolicies in random tiers with
//! Allow/Deny/Pass/Log, orders, selectors and notSelectors, namespaceSelectors, nets and
//! notNets, ports, notPorts, ranges and named ports on either side (source ports included),
//! protocols, notProtocol, ipVersion, ICMP type/code and notICMP.
//!
//! A [`Case`] is the model as indices into this module's vocabulary; [`Case::yaml`] renders
//! it. Two samplers draw one: [`Case::random`] from a seeded [`Rng`] (the agent's test of the
//! loaded eBPF programs: reproducible from its seed), and [`strategy::case`] as a proptest
//! strategy (this crate's compiler test: failures shrink to a small model).

use std::net::IpAddr;

use serval_model::parse_documents;

use crate::Model;

// ---- a small deterministic generator ------------------------------------------------------

/// SplitMix64: small, seedable, good enough to pick test inputs.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }

    /// With probability `p`, a value in `0..n`.
    pub fn maybe(&mut self, p: f64, n: usize) -> Option<usize> {
        if self.chance(p) {
            Some(self.below(n))
        } else {
            None
        }
    }
}

// ---- the vocabulary -----------------------------------------------------------------------

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const APPS: [&str; 3] = ["web", "db", "api"];
/// The `http` named port of a pod: (port, protocol).
pub const HTTP_PORTS: [(u16, &str); 3] = [(80, "TCP"), (8080, "TCP"), (8080, "SCTP")];

/// Pod `k`'s IPv4 address (10.0.0.k+1).
pub fn pod_v4(k: usize) -> IpAddr {
    IpAddr::from([10, 0, 0, k as u8 + 1])
}

/// Pod `k`'s IPv6 address (fd00:10::k+1).
pub fn pod_v6(k: usize) -> IpAddr {
    IpAddr::from([0xfd00, 0x10, 0, 0, 0, 0, 0, k as u16 + 1])
}

pub const K8S_POD_SELECTORS: [&str; 4] = [
    "{}",
    "{matchLabels: {app: web}}",
    "{matchLabels: {role: fe}}",
    "{matchExpressions: [{key: app, operator: In, values: [db, api]}]}",
];
pub const K8S_NS_SELECTORS: [&str; 3] = [
    "{}",
    "{matchLabels: {team: a}}",
    "{matchLabels: {kubernetes.io/metadata.name: y}}",
];
pub const IP_BLOCKS: [&str; 6] = [
    "{cidr: 10.0.0.0/29, except: [10.0.0.4/30]}",
    "{cidr: 10.0.0.0/8, except: [10.0.0.2/32]}",
    "{cidr: 0.0.0.0/0, except: [10.0.0.0/24]}",
    "{cidr: 192.0.2.0/24}",
    "{cidr: 'fd00:10::/124', except: ['fd00:10::4/126']}",
    "{cidr: '::/0', except: ['fd00::/16']}",
];
pub const K8S_PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];
pub const K8S_POLICY_TYPES: [&str; 3] = ["[Ingress]", "[Egress]", "[Ingress, Egress]"];

pub const SELECTORS: [&str; 5] = [
    "all()",
    "app == 'web'",
    "app != 'db'",
    "has(role)",
    "role in {'fe'}",
];
pub const NS_SELECTORS: [&str; 3] = ["team == 'a'", "ns != 'x'", "all()"];
pub const NETS4: [&str; 5] = [
    "[10.0.0.0/30]",
    "[10.0.0.2/32, 192.0.2.0/24]",
    "[0.0.0.0/0]",
    "[10.0.0.0/8]",
    "[10.0.0.0/29, 172.16.0.0/12]",
];
pub const NETS6: [&str; 4] = [
    "['fd00:10::/126']",
    "['fd00:10::2/128', '2001:db8::/64']",
    "['::/0']",
    "['fd00:10::/120']",
];
/// Destination-port conditions.
pub const PORTS: [&str; 7] = [
    "[80]",
    "[53, '8000:8100']",
    "[http]",
    "['1:1023']",
    "[dns, 443]",
    "['80:85', 8080]",
    "['1024:65535']",
];
/// Source-port conditions (on the source side of a rule: the peer for ingress, the local
/// endpoint for egress).
pub const SRC_PORTS: [&str; 6] = [
    "[40000]",
    "['1024:65535']",
    "[http]",
    "[53, '30000:40000']",
    "[dns, '1:1023']",
    "['32768:49151']",
];
pub const ACTIONS: [&str; 4] = ["Allow", "Deny", "Pass", "Log"];
/// A rule's protocol: none, TCP, UDP, SCTP, ICMP, ICMPv6, 47 (GRE).
pub const PROTOCOLS: [Option<&str>; 7] = [
    None,
    Some("TCP"),
    Some("UDP"),
    Some("SCTP"),
    Some("ICMP"),
    Some("ICMPv6"),
    Some("47"),
];
pub const TIERS: [&str; 3] = ["default", "security", "platform"];

// ---- pods -----------------------------------------------------------------------------------

/// A pod: namespace, app, role (fe/be), `http` named port ([`HTTP_PORTS`]), `dns` (53/UDP).
#[derive(Clone, Debug)]
pub struct PodGen {
    pub ns: usize,
    pub app: usize,
    pub role: Option<usize>,
    pub http: Option<usize>,
    pub dns: bool,
}

impl PodGen {
    pub fn random(rng: &mut Rng) -> PodGen {
        PodGen {
            ns: rng.below(NAMESPACES.len()),
            app: rng.below(APPS.len()),
            role: rng.maybe(0.5, 2),
            http: rng.maybe(0.6, HTTP_PORTS.len()),
            dns: rng.chance(0.4),
        }
    }

    /// Pod `p{k}` on node-1 (even k) or node-2, addresses [`pod_v4`] and [`pod_v6`].
    pub fn yaml(&self, k: usize) -> String {
        let role = self
            .role
            .map_or(String::new(), |r| format!(", role: {}", ["fe", "be"][r]));
        let mut ports = String::new();
        if let Some(h) = self.http {
            let (port, proto) = HTTP_PORTS[h];
            ports.push_str(&format!(
                "    - {{name: http, containerPort: {port}, protocol: {proto}}}\n"
            ));
        }
        if self.dns {
            ports.push_str("    - {name: dns, containerPort: 53, protocol: UDP}\n");
        }
        let ports = if ports.is_empty() {
            "    ports: []\n".to_string()
        } else {
            format!("    ports:\n{ports}")
        };
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{k}, namespace: {}, labels: {{app: {}{role}}}}}\nspec:\n  nodeName: node-{}\n  containers:\n  - name: c\n{ports}status:\n  phase: Running\n  podIPs:\n  - ip: \"{}\"\n  - ip: \"{}\"\n",
            NAMESPACES[self.ns],
            APPS[self.app],
            1 + k % 2,
            pod_v4(k),
            pod_v6(k)
        )
    }
}

// ---- Kubernetes NetworkPolicy ---------------------------------------------------------------

/// A peer: kind (0 podSelector, 1 namespaceSelector, 2 both, 3 ipBlock) and the indices.
#[derive(Clone, Debug)]
pub struct K8sPeer {
    pub kind: usize,
    pub pod_sel: usize,
    pub ns_sel: usize,
    pub ip_block: usize,
}

impl K8sPeer {
    pub fn random(rng: &mut Rng) -> K8sPeer {
        K8sPeer {
            kind: rng.below(4),
            pod_sel: rng.below(K8S_POD_SELECTORS.len()),
            ns_sel: rng.below(K8S_NS_SELECTORS.len()),
            ip_block: rng.below(IP_BLOCKS.len()),
        }
    }

    pub fn yaml(&self) -> String {
        let (ps, ns) = (
            K8S_POD_SELECTORS[self.pod_sel],
            K8S_NS_SELECTORS[self.ns_sel],
        );
        match self.kind {
            0 => format!("{{podSelector: {ps}}}"),
            1 => format!("{{namespaceSelector: {ns}}}"),
            2 => format!("{{podSelector: {ps}, namespaceSelector: {ns}}}"),
            _ => format!("{{ipBlock: {}}}", IP_BLOCKS[self.ip_block]),
        }
    }
}

/// A port: protocol ([`K8S_PROTOCOLS`]) and kind (none, 80, 53, http, dns, 8000-8100).
#[derive(Clone, Debug)]
pub struct K8sPort {
    pub proto: usize,
    pub port: usize,
}

impl K8sPort {
    pub fn random(rng: &mut Rng) -> K8sPort {
        K8sPort {
            proto: rng.below(K8S_PROTOCOLS.len()),
            port: rng.below(6),
        }
    }

    pub fn yaml(&self) -> String {
        let proto = K8S_PROTOCOLS[self.proto];
        match self.port {
            0 => format!("{{protocol: {proto}}}"),
            1 => format!("{{protocol: {proto}, port: 80}}"),
            2 => format!("{{protocol: {proto}, port: 53}}"),
            3 => format!("{{protocol: {proto}, port: http}}"),
            4 => format!("{{protocol: {proto}, port: dns}}"),
            _ => format!("{{protocol: {proto}, port: 8000, endPort: 8100}}"),
        }
    }
}

/// One rule: peers and ports (0-2 each).
#[derive(Clone, Debug)]
pub struct K8sRule {
    pub peers: Vec<K8sPeer>,
    pub ports: Vec<K8sPort>,
}

impl K8sRule {
    pub fn random(rng: &mut Rng) -> K8sRule {
        K8sRule {
            peers: (0..rng.below(3)).map(|_| K8sPeer::random(rng)).collect(),
            ports: (0..rng.below(3)).map(|_| K8sPort::random(rng)).collect(),
        }
    }
}

/// A NetworkPolicy: namespace, podSelector, policyTypes, ingress and egress rules (0-2 each).
#[derive(Clone, Debug)]
pub struct K8sPolicy {
    pub ns: usize,
    pub pod_sel: usize,
    pub types: usize,
    pub ingress: Vec<K8sRule>,
    pub egress: Vec<K8sRule>,
}

impl K8sPolicy {
    pub fn random(rng: &mut Rng) -> K8sPolicy {
        K8sPolicy {
            ns: rng.below(NAMESPACES.len()),
            pod_sel: rng.below(K8S_POD_SELECTORS.len()),
            types: rng.below(K8S_POLICY_TYPES.len()),
            ingress: (0..rng.below(3)).map(|_| K8sRule::random(rng)).collect(),
            egress: (0..rng.below(3)).map(|_| K8sRule::random(rng)).collect(),
        }
    }

    pub fn yaml(&self, name: &str) -> String {
        let rules = |list: &[K8sRule], peers: &str| -> String {
            let r: Vec<String> = list
                .iter()
                .map(|rule| {
                    let p: Vec<String> = rule.peers.iter().map(K8sPeer::yaml).collect();
                    let ports: Vec<String> = rule.ports.iter().map(K8sPort::yaml).collect();
                    format!(
                        "{{{peers}: [{}], ports: [{}]}}",
                        p.join(", "),
                        ports.join(", ")
                    )
                })
                .collect();
            format!("[{}]", r.join(", "))
        };
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {}}}\nspec:\n  podSelector: {}\n  policyTypes: {}\n  ingress: {}\n  egress: {}\n",
            NAMESPACES[self.ns],
            K8S_POD_SELECTORS[self.pod_sel],
            K8S_POLICY_TYPES[self.types],
            rules(&self.ingress, "from"),
            rules(&self.egress, "to"),
        )
    }
}

// ---- Calico policies ------------------------------------------------------------------------

/// One entity side of a Calico rule: selector, notSelector, namespaceSelector ([`SELECTORS`],
/// [`NS_SELECTORS`]), nets and notNets (an index into [`NETS4`], modulo [`NETS6`]'s length
/// for an IPv6 rule).
#[derive(Clone, Debug, Default)]
pub struct Side {
    pub selector: Option<usize>,
    pub not_selector: Option<usize>,
    pub ns_selector: Option<usize>,
    pub nets: Option<usize>,
    pub not_nets: Option<usize>,
}

impl Side {
    pub fn random(rng: &mut Rng) -> Side {
        Side {
            selector: rng.maybe(0.4, SELECTORS.len()),
            not_selector: rng.maybe(0.2, SELECTORS.len()),
            ns_selector: rng.maybe(0.2, NS_SELECTORS.len()),
            nets: rng.maybe(0.3, NETS4.len()),
            not_nets: rng.maybe(0.3, NETS4.len()),
        }
    }

    fn fields(&self, v6: bool) -> Vec<String> {
        let mut f = Vec::new();
        if let Some(i) = self.selector {
            f.push(format!("selector: \"{}\"", SELECTORS[i]));
        }
        if let Some(i) = self.not_selector {
            f.push(format!("notSelector: \"{}\"", SELECTORS[i]));
        }
        if let Some(i) = self.ns_selector {
            f.push(format!("namespaceSelector: \"{}\"", NS_SELECTORS[i]));
        }
        let nets = |i: usize| {
            if v6 { NETS6[i % NETS6.len()] } else { NETS4[i] }
        };
        if let Some(i) = self.nets {
            f.push(format!("nets: {}", nets(i)));
        }
        if let Some(i) = self.not_nets {
            f.push(format!("notNets: {}", nets(i)));
        }
        f
    }
}

/// A Calico rule as indices: action ([`ACTIONS`]), protocol ([`PROTOCOLS`]), notProtocol
/// (TCP/UDP, only without a protocol), ipVersion (Some(true): 6), the nets' family when
/// nothing else fixes it, the peer and (when `local_used`) the local side, destination ports
/// and notPorts ([`PORTS`]), ICMP (type index, with its code) and notICMP, source ports and
/// notPorts ([`SRC_PORTS`]).
#[derive(Clone, Debug)]
pub struct CalicoRule {
    pub action: usize,
    pub proto: usize,
    pub not_proto: Option<usize>,
    pub ip_version: Option<bool>,
    pub v6_nets: bool,
    pub peer: Side,
    pub local: Side,
    pub local_used: bool,
    pub ports: Option<usize>,
    pub not_ports: Option<usize>,
    pub icmp: Option<(usize, bool)>,
    pub not_icmp: Option<usize>,
    pub src_ports: Option<usize>,
    pub not_src_ports: Option<usize>,
}

impl CalicoRule {
    pub fn random(rng: &mut Rng) -> CalicoRule {
        CalicoRule {
            // Allow and Deny twice as often as Pass and Log.
            action: *rng.pick(&[0, 1, 2, 3, 0, 1]),
            proto: rng.below(PROTOCOLS.len()),
            not_proto: rng.maybe(0.15, 2),
            ip_version: rng.chance(0.2).then(|| rng.chance(0.5)),
            v6_nets: rng.chance(0.5),
            peer: Side::random(rng),
            local: Side::random(rng),
            local_used: rng.chance(0.3),
            ports: rng.maybe(0.5, PORTS.len()),
            not_ports: rng.maybe(0.25, PORTS.len()),
            icmp: rng.chance(0.5).then(|| (rng.below(2), rng.chance(0.5))),
            not_icmp: rng.maybe(0.3, 2),
            src_ports: rng.maybe(0.4, SRC_PORTS.len()),
            not_src_ports: rng.maybe(0.2, SRC_PORTS.len()),
        }
    }

    /// The rule as YAML; `ingress` puts the peer on the source side.
    pub fn yaml(&self, ingress: bool) -> String {
        let mut f = vec![format!("action: {}", ACTIONS[self.action])];
        // The rule's family: fixed by ICMP / ICMPv6, else by ipVersion, else by the nets.
        let family_v6 = match self.proto {
            4 => Some(false),
            5 => Some(true),
            _ => self.ip_version,
        };
        let v6 = family_v6.unwrap_or(self.v6_nets);
        if let Some(p) = PROTOCOLS[self.proto] {
            f.push(format!("protocol: {p}"));
        } else if let Some(np) = self.not_proto {
            f.push(format!("notProtocol: {}", ["TCP", "UDP"][np]));
        }
        if let Some(is6) = self.ip_version
            && family_v6.is_none_or(|f| f == is6)
        {
            f.push(format!("ipVersion: {}", if is6 { 6 } else { 4 }));
        }
        let port_proto = matches!(self.proto, 1..=3);
        if matches!(self.proto, 4 | 5) {
            let types: [(u8, u8); 2] = if self.proto == 4 {
                [(8, 0), (3, 1)]
            } else {
                [(128, 0), (1, 3)]
            };
            if let Some((t, with_code)) = self.icmp {
                let (ty, code) = types[t];
                if with_code {
                    f.push(format!("icmp: {{type: {ty}, code: {code}}}"));
                } else {
                    f.push(format!("icmp: {{type: {ty}}}"));
                }
            }
            if let Some(t) = self.not_icmp {
                f.push(format!("notICMP: {{type: {}}}", types[t].0));
            }
        }
        let peer = self.peer.fields(v6);
        let local = if self.local_used {
            self.local.fields(v6)
        } else {
            Vec::new()
        };
        // Ports are on the destination: the local side for ingress, the peer for egress.
        let (mut src, mut dst) = if ingress {
            (peer, local)
        } else {
            (local, peer)
        };
        if port_proto {
            if let Some(i) = self.ports {
                dst.push(format!("ports: {}", PORTS[i]));
            }
            if let Some(i) = self.not_ports {
                dst.push(format!("notPorts: {}", PORTS[i]));
            }
            if let Some(i) = self.src_ports {
                src.push(format!("ports: {}", SRC_PORTS[i]));
            }
            if let Some(i) = self.not_src_ports {
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
}

/// A Calico policy: namespace (None: a GlobalNetworkPolicy, with an optional
/// namespaceSelector), tier ([`TIERS`]), order (x10), selector, ingress and egress rules
/// (0-3 each), and whether `types` names both directions.
#[derive(Clone, Debug)]
pub struct CalicoPolicy {
    pub ns: Option<usize>,
    pub tier: usize,
    pub order: Option<usize>,
    pub selector: usize,
    pub ns_selector: Option<usize>,
    pub ingress: Vec<CalicoRule>,
    pub egress: Vec<CalicoRule>,
    pub both_types: bool,
}

impl CalicoPolicy {
    pub fn random(rng: &mut Rng) -> CalicoPolicy {
        CalicoPolicy {
            ns: rng.maybe(0.6, NAMESPACES.len()),
            tier: rng.below(TIERS.len()),
            order: rng.maybe(0.8, 5),
            selector: rng.below(SELECTORS.len()),
            ns_selector: rng.maybe(0.3, NS_SELECTORS.len()),
            ingress: (0..rng.below(4)).map(|_| CalicoRule::random(rng)).collect(),
            egress: (0..rng.below(4)).map(|_| CalicoRule::random(rng)).collect(),
            both_types: rng.chance(0.5),
        }
    }

    pub fn yaml(&self, name: &str) -> String {
        let order = self
            .order
            .map_or(String::new(), |o| format!("  order: {}\n", o * 10));
        let ingress: Vec<String> = self.ingress.iter().map(|r| r.yaml(true)).collect();
        let egress: Vec<String> = self.egress.iter().map(|r| r.yaml(false)).collect();
        let types = if self.both_types {
            "  types: [Ingress, Egress]\n"
        } else {
            ""
        };
        let head = match self.ns {
            Some(i) => format!(
                "kind: NetworkPolicy\nmetadata: {{namespace: {}, name: {name}}}\nspec:\n",
                NAMESPACES[i]
            ),
            None => {
                let nss = self.ns_selector.map_or(String::new(), |i| {
                    format!("  namespaceSelector: \"{}\"\n", NS_SELECTORS[i])
                });
                format!("kind: GlobalNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n{nss}")
            }
        };
        format!(
            "apiVersion: projectcalico.org/v3\n{head}  tier: {}\n{order}  selector: \"{}\"\n{types}  ingress: [{}]\n  egress: [{}]\n",
            TIERS[self.tier],
            SELECTORS[self.selector],
            ingress.join(", "),
            egress.join(", ")
        )
    }
}

// ---- the model --------------------------------------------------------------------------------

/// A model: two nodes (node-1, node-2), namespaces x, y, z (team a or b), tiers security
/// (order 100) and platform (50) that pass or deny, 2-6 pods, 0-2 Kubernetes and 0-4 Calico
/// policies (named k0.., c0..).
#[derive(Clone, Debug)]
pub struct Case {
    pub teams: [bool; 3],
    pub pods: Vec<PodGen>,
    pub k8s: Vec<K8sPolicy>,
    pub calico: Vec<CalicoPolicy>,
    pub security_passes: bool,
    pub platform_passes: bool,
}

impl Case {
    pub fn random(rng: &mut Rng) -> Case {
        Case {
            teams: [rng.chance(0.5), rng.chance(0.5), rng.chance(0.5)],
            pods: (0..2 + rng.below(5)).map(|_| PodGen::random(rng)).collect(),
            k8s: (0..rng.below(3)).map(|_| K8sPolicy::random(rng)).collect(),
            calico: (0..rng.below(5))
                .map(|_| CalicoPolicy::random(rng))
                .collect(),
            security_passes: rng.chance(0.5),
            platform_passes: rng.chance(0.5),
        }
    }

    pub fn yaml(&self) -> String {
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
            let team = if self.teams[i] { "a" } else { "b" };
            y.push_str(&format!(
                "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}, team: {team}}}}}\n"
            ));
        }
        for (name, order, passes) in [
            ("security", 100, self.security_passes),
            ("platform", 50, self.platform_passes),
        ] {
            y.push_str(&format!(
                "---\napiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {{name: {name}}}\nspec: {{order: {order}, defaultAction: {}}}\n",
                if passes { "Pass" } else { "Deny" }
            ));
        }
        for (k, p) in self.pods.iter().enumerate() {
            y.push_str(&p.yaml(k));
        }
        for (i, p) in self.k8s.iter().enumerate() {
            y.push_str("---\n");
            y.push_str(&p.yaml(&format!("k{i}")));
        }
        for (i, p) in self.calico.iter().enumerate() {
            y.push_str("---\n");
            y.push_str(&p.yaml(&format!("c{i}")));
        }
        y
    }
}

/// The model of generated YAML (which must parse).
pub fn model_of(yaml: &str) -> Model {
    let docs = parse_documents("generated", yaml)
        .unwrap_or_else(|e| panic!("generated model must parse:\n{yaml}\n{e}"));
    Model::from_resources(docs)
}

/// The same models as proptest strategies (with shrinking).
pub mod strategy {
    use proptest::prelude::*;

    use super::*;

    pub fn pod() -> impl Strategy<Value = PodGen> {
        (
            0..NAMESPACES.len(),
            0..APPS.len(),
            prop::option::of(0..2usize),
            prop::option::of(0..HTTP_PORTS.len()),
            any::<bool>(),
        )
            .prop_map(|(ns, app, role, http, dns)| PodGen {
                ns,
                app,
                role,
                http,
                dns,
            })
    }

    fn k8s_rule() -> impl Strategy<Value = K8sRule> {
        let peer = (0..4usize, 0..4usize, 0..3usize, 0..6usize).prop_map(
            |(kind, pod_sel, ns_sel, ip_block)| K8sPeer {
                kind,
                pod_sel,
                ns_sel,
                ip_block,
            },
        );
        let port = (0..3usize, 0..6usize).prop_map(|(proto, port)| K8sPort { proto, port });
        (
            prop::collection::vec(peer, 0..3),
            prop::collection::vec(port, 0..3),
        )
            .prop_map(|(peers, ports)| K8sRule { peers, ports })
    }

    pub fn k8s_policy() -> impl Strategy<Value = K8sPolicy> {
        (
            0..NAMESPACES.len(),
            0..K8S_POD_SELECTORS.len(),
            0..K8S_POLICY_TYPES.len(),
            prop::collection::vec(k8s_rule(), 0..3),
            prop::collection::vec(k8s_rule(), 0..3),
        )
            .prop_map(|(ns, pod_sel, types, ingress, egress)| K8sPolicy {
                ns,
                pod_sel,
                types,
                ingress,
                egress,
            })
    }

    fn side() -> impl Strategy<Value = Side> {
        (
            prop::option::weighted(0.4, 0..SELECTORS.len()),
            prop::option::weighted(0.2, 0..SELECTORS.len()),
            prop::option::weighted(0.2, 0..NS_SELECTORS.len()),
            prop::option::weighted(0.3, 0..NETS4.len()),
            prop::option::weighted(0.3, 0..NETS4.len()),
        )
            .prop_map(
                |(selector, not_selector, ns_selector, nets, not_nets)| Side {
                    selector,
                    not_selector,
                    ns_selector,
                    nets,
                    not_nets,
                },
            )
    }

    pub fn calico_rule() -> impl Strategy<Value = CalicoRule> {
        (
            (
                0..ACTIONS.len(),
                0..PROTOCOLS.len(),
                prop::option::weighted(0.15, 0..2usize),
                prop::option::weighted(0.2, any::<bool>()),
                any::<bool>(),
            ),
            (side(), side(), prop::bool::weighted(0.3)),
            (
                prop::option::weighted(0.5, 0..PORTS.len()),
                prop::option::weighted(0.25, 0..PORTS.len()),
                prop::option::weighted(0.5, (0..2usize, any::<bool>())),
                prop::option::weighted(0.3, 0..2usize),
            ),
            (
                prop::option::weighted(0.3, 0..SRC_PORTS.len()),
                prop::option::weighted(0.15, 0..SRC_PORTS.len()),
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

    pub fn calico_policy() -> impl Strategy<Value = CalicoPolicy> {
        (
            prop::option::of(0..NAMESPACES.len()),
            0..TIERS.len(),
            prop::option::of(0..5usize),
            0..SELECTORS.len(),
            prop::option::weighted(0.3, 0..NS_SELECTORS.len()),
            prop::collection::vec(calico_rule(), 0..4),
            prop::collection::vec(calico_rule(), 0..4),
            any::<bool>(),
        )
            .prop_map(
                |(ns, tier, order, selector, ns_selector, ingress, egress, both_types)| {
                    CalicoPolicy {
                        ns,
                        tier,
                        order,
                        selector,
                        ns_selector,
                        ingress,
                        egress,
                        both_types,
                    }
                },
            )
    }

    pub fn case() -> impl Strategy<Value = Case> {
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
}
