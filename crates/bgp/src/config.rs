//! Renders one node's BIRD 2 configuration from the datastore's resources (pure).
//!
//! What the rendered configuration does, with Calico's semantics:
//!
//! - **Announces** the node's IPAM blocks, one route per block (aggregated, never per pod),
//!   and the service ranges BGPConfiguration asks for, from `static` protocols
//!   (`serval_blocks4`/`6`, `serval_svc4`/`6`) holding `blackhole` routes. BIRD does not
//!   push these to the kernel (the agent owns the kernel blackholes, protocol 80); they only
//!   exist in BIRD's table so that they can be exported. Choosing `static` over learning the
//!   agent's kernel blackholes keeps the announcement independent of the agent's route
//!   programming order and of other routes in the kernel table.
//! - **Installs** what it learns over BGP into the kernel (`kernel4`/`kernel6`: export only
//!   `source = RTS_BGP`, `learn off`, `merge paths on` for ECMP). BIRD tags these routes with
//!   protocol `bird` ([`RTPROT_BIRD`], 12) and the configured `metric` (default 32), which is how
//!   the agent tells them from its own (protocol 80).
//! - **Peers**: the node-to-node full mesh (default; every other Node with an address of the
//!   session's family), BGPPeers that apply to this node (`node` = this node, `nodeSelector`
//!   matching it, or neither = global), each either one `peerIP[:port]` or every Node that
//!   `peerSelector` selects. Route reflectors: a node with `routeReflectorClusterID` renders
//!   `rr cluster id`, and treats selected peer nodes outside its cluster as `rr client`s.
//!   IPv4 sessions carry the `ipv4` channel and IPv6 sessions the `ipv6` channel.
//!
//! Protocol names encode the session kind for [`crate::status`]: `Mesh_…`, `RR_…`, `Global_…`,
//! `Node_…`, followed by the peer address with `.`/`:` turned into `_` (and `_port<N>` for a
//! non-default port).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use serval_model::Resource;
use serval_model::calico::{
    BGPConfiguration, BGPConfigurationSpec, BGPPeer, Encapsulation, IPPool, Node,
};
use serval_model::selector::Selector;
use serval_model::types::AsNumber;

/// The kernel route protocol BIRD uses for the routes it installs (`proto bird`).
pub const RTPROT_BIRD: u8 = 12;
/// The kernel route protocol zebra (FRR) uses for BGP routes (`proto bgp`).
pub const RTPROT_BGP: u8 = 186;
/// BIRD's default kernel metric, rendered explicitly.
pub const DEFAULT_KERNEL_METRIC: u32 = 32;

/// Problems that stop a configuration from being rendered.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("node {node:?} has no Node resource; create it (serval apply) before starting BGP")]
    NodeNotFound { node: String },
    #[error(
        "node {node:?} has neither spec.bgp.ipv4Address nor spec.bgp.ipv6Address; set at least \
         one so BIRD has an address to peer from"
    )]
    NoAddress { node: String },
}

/// BGP timers. Defaults are Calico's (BIRD's hold time 240 s and keepalive 80 s; connect delay
/// 2 s, connect retry 5 s, error wait 5-30 s); tests use short ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timers {
    pub hold_time: u32,
    pub keepalive_time: u32,
    pub connect_delay_time: u32,
    pub connect_retry_time: u32,
    pub error_wait_min: u32,
    pub error_wait_max: u32,
    /// Kernel table scan interval (seconds).
    pub kernel_scan_time: u32,
}

impl Default for Timers {
    fn default() -> Timers {
        Timers {
            hold_time: 240,
            keepalive_time: 80,
            connect_delay_time: 2,
            connect_retry_time: 5,
            error_wait_min: 5,
            error_wait_max: 30,
            kernel_scan_time: 10,
        }
    }
}

impl Timers {
    /// Short timers for tests and labs: sessions come up within a second or two and a dead
    /// peer is noticed after 6 s.
    pub fn fast() -> Timers {
        Timers {
            hold_time: 6,
            keepalive_time: 2,
            connect_delay_time: 1,
            connect_retry_time: 1,
            error_wait_min: 1,
            error_wait_max: 3,
            kernel_scan_time: 5,
        }
    }
}

/// Calico's BGPPeer `sourceAddress`: peer from the node's address (default) or let the kernel
/// choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceAddress {
    #[default]
    UseNodeIp,
    None,
}

/// Per-BGPPeer session settings (`sourceAddress`, `password`); taken from the BGPPeer
/// resource unless [`RenderOptions::peer_extras`] overrides them by BGPPeer name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerExtras {
    pub source_address: SourceAddress,
    /// TCP MD5 password (Calico reads it from a Secret).
    pub password: Option<String>,
}

/// Rendering knobs that are not resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderOptions {
    pub timers: Timers,
    /// Kernel metric of the routes BIRD installs.
    pub kernel_metric: u32,
    /// Extra per-BGPPeer settings, keyed by BGPPeer name.
    pub peer_extras: BTreeMap<String, PeerExtras>,
    /// Interfaces BIRD's `direct` protocol ignores (pod veths and Serval's VXLAN devices), as
    /// BIRD patterns.
    pub direct_exclude: Vec<String>,
}

impl Default for RenderOptions {
    fn default() -> RenderOptions {
        RenderOptions {
            timers: Timers::default(),
            kernel_metric: DEFAULT_KERNEL_METRIC,
            peer_extras: BTreeMap::new(),
            direct_exclude: vec!["sv*".into(), "*.serval".into()],
        }
    }
}

/// Everything one node's configuration depends on.
#[derive(Debug, Clone, Copy)]
pub struct BgpInputs<'a> {
    /// This node's name.
    pub node: &'a str,
    /// All Nodes (this one included).
    pub nodes: &'a [Node],
    /// BGPConfigurations: `default` and any `node.<name>`.
    pub configs: &'a [BGPConfiguration],
    /// All BGPPeers.
    pub peers: &'a [BGPPeer],
    /// This node's IPAM blocks (affine blocks), both families.
    pub blocks: &'a [IpNet],
    /// All IPPools: blocks of pools with `disableBGPExport` are not announced, and BIRD
    /// leaves routes inside VXLAN pools to the agent (it programs those itself).
    pub pools: &'a [IPPool],
}

/// Owned [`BgpInputs`], gathered from a set of resources (e.g. the agent's cache).
#[derive(Debug, Clone, Default)]
pub struct OwnedBgpInputs {
    pub node: String,
    pub nodes: Vec<Node>,
    pub configs: Vec<BGPConfiguration>,
    pub peers: Vec<BGPPeer>,
    pub blocks: Vec<IpNet>,
    pub pools: Vec<IPPool>,
}

impl OwnedBgpInputs {
    /// Picks the Nodes, BGPConfigurations, BGPPeers and IPPools out of `resources`; `blocks`
    /// are this node's affine blocks.
    pub fn from_resources<'a>(
        node: &str,
        resources: impl IntoIterator<Item = &'a Resource>,
        blocks: impl IntoIterator<Item = IpNet>,
    ) -> OwnedBgpInputs {
        let mut out = OwnedBgpInputs {
            node: node.to_owned(),
            blocks: blocks.into_iter().collect(),
            ..Default::default()
        };
        for r in resources {
            match r {
                Resource::Node(n) => out.nodes.push(n.clone()),
                Resource::BGPConfiguration(c) => out.configs.push(c.clone()),
                Resource::BGPPeer(p) => out.peers.push(p.clone()),
                Resource::IPPool(p) => out.pools.push(p.clone()),
                _ => {}
            }
        }
        out
    }

    pub fn as_inputs(&self) -> BgpInputs<'_> {
        BgpInputs {
            node: &self.node,
            nodes: &self.nodes,
            configs: &self.configs,
            peers: &self.peers,
            blocks: &self.blocks,
            pools: &self.pools,
        }
    }
}

/// How a session came about; shown by `serval node status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SessionKind {
    /// The node-to-node mesh.
    Mesh,
    /// To or from a route reflector (a BGPPeer's `peerSelector` selecting nodes where either
    /// side has a `routeReflectorClusterID`).
    RouteReflector,
    /// A BGPPeer with neither `node` nor `nodeSelector`.
    Global,
    /// A BGPPeer with `node` or `nodeSelector`.
    NodeSpecific,
}

impl SessionKind {
    /// The protocol-name prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            SessionKind::Mesh => "Mesh",
            SessionKind::RouteReflector => "RR",
            SessionKind::Global => "Global",
            SessionKind::NodeSpecific => "Node",
        }
    }

    /// Reads the kind back from a protocol name.
    pub fn from_protocol_name(name: &str) -> Option<SessionKind> {
        let (prefix, _) = name.split_once('_')?;
        [
            SessionKind::Mesh,
            SessionKind::RouteReflector,
            SessionKind::Global,
            SessionKind::NodeSpecific,
        ]
        .into_iter()
        .find(|k| k.prefix() == prefix)
    }

    /// As `calicoctl node status` words it.
    pub fn describe(self) -> &'static str {
        match self {
            SessionKind::Mesh => "node-to-node mesh",
            SessionKind::RouteReflector => "route reflector",
            SessionKind::Global => "global",
            SessionKind::NodeSpecific => "node specific",
        }
    }
}

/// One BGP session the configuration declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedSession {
    /// BIRD protocol name.
    pub name: String,
    pub kind: SessionKind,
    pub peer: IpAddr,
    pub port: u16,
    pub peer_as: AsNumber,
    /// The peer node's name or `BGPPeer <name>`.
    pub description: String,
    /// This side is the peer's route reflector.
    pub rr_client: bool,
}

/// A rendered configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedConfig {
    /// The BIRD configuration text.
    pub text: String,
    pub router_id: Ipv4Addr,
    pub local_as: AsNumber,
    pub sessions: Vec<PlannedSession>,
    /// Peers left out and why (e.g. an IPv6 peer on a node without an IPv6 address).
    pub skipped: Vec<String>,
}

/// BGPConfiguration `default` overlaid with `node.<node>`.
pub fn effective_config(configs: &[BGPConfiguration], node: &str) -> BGPConfigurationSpec {
    let mut out = configs
        .iter()
        .find(|c| c.metadata.name == "default")
        .map(|c| c.spec.clone())
        .unwrap_or_default();
    let per_node = format!("node.{node}");
    if let Some(c) = configs.iter().find(|c| c.metadata.name == per_node) {
        let s = &c.spec;
        if s.log_severity_screen.is_some() {
            out.log_severity_screen.clone_from(&s.log_severity_screen);
        }
        if s.node_to_node_mesh_enabled.is_some() {
            out.node_to_node_mesh_enabled = s.node_to_node_mesh_enabled;
        }
        if s.as_number.is_some() {
            out.as_number = s.as_number;
        }
        if s.listen_port.is_some() {
            out.listen_port = s.listen_port;
        }
        for (dst, src) in [
            (&mut out.service_cluster_ips, &s.service_cluster_ips),
            (&mut out.service_external_ips, &s.service_external_ips),
            (
                &mut out.service_load_balancer_ips,
                &s.service_load_balancer_ips,
            ),
        ] {
            if !src.is_empty() {
                dst.clone_from(src);
            }
        }
    }
    out
}

/// A stable router id for a node without an IPv4 address: FNV-1a of the name, never 0.
pub fn router_id_from_name(name: &str) -> Ipv4Addr {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    if h == 0 {
        h = 1;
    }
    Ipv4Addr::from(h)
}

/// The node's AS: its own `spec.bgp.asNumber`, else the cluster's.
pub fn node_as(node: &Node, cluster: &BGPConfigurationSpec) -> AsNumber {
    node.spec
        .bgp
        .as_ref()
        .and_then(|b| b.as_number)
        .unwrap_or_else(|| cluster.effective_as_number())
}

fn node_addr(node: &Node, v6: bool) -> Option<IpNet> {
    let b = node.spec.bgp.as_ref()?;
    if v6 { b.ipv6_address } else { b.ipv4_address }
}

fn rr_cluster(node: &Node) -> Option<Ipv4Addr> {
    node.spec
        .bgp
        .as_ref()
        .and_then(|b| b.route_reflector_cluster_id)
}

/// Protocol name for a session: `<Kind>_<address>[_port<N>]`.
pub fn protocol_name(kind: SessionKind, peer: IpAddr, port: u16) -> String {
    let addr: String = peer
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if port == serval_model::calico::DEFAULT_BGP_PORT {
        format!("{}_{addr}", kind.prefix())
    } else {
        format!("{}_{addr}_port{port}", kind.prefix())
    }
}

struct Candidate {
    kind: SessionKind,
    peer: IpAddr,
    port: u16,
    peer_as: AsNumber,
    description: String,
    rr_client: bool,
    keep_next_hop: bool,
    /// Peer is a Calico node (mesh or peerSelector): also pass on BGP-learned routes so route
    /// reflectors reflect (iBGP rules stop everything else).
    node_peer: bool,
    extras: PeerExtras,
}

fn peer_applies(peer: &BGPPeer, node: &Node) -> bool {
    let s = &peer.spec;
    if let Some(n) = &s.node {
        return *n == node.metadata.name;
    }
    if let Some(sel) = &s.node_selector {
        // Validation rejects selectors that do not parse; treat one that slipped through as
        // matching nothing.
        return Selector::parse(sel).is_ok_and(|sel| sel.matches_global(&node.metadata.labels));
    }
    true
}

/// Renders the BIRD configuration for `inputs.node`.
pub fn render(inputs: &BgpInputs<'_>, opts: &RenderOptions) -> Result<RenderedConfig, ConfigError> {
    let me = inputs
        .nodes
        .iter()
        .find(|n| n.metadata.name == inputs.node)
        .ok_or_else(|| ConfigError::NodeNotFound {
            node: inputs.node.to_owned(),
        })?;
    let my_v4 = node_addr(me, false);
    let my_v6 = node_addr(me, true);
    if my_v4.is_none() && my_v6.is_none() {
        return Err(ConfigError::NoAddress {
            node: inputs.node.to_owned(),
        });
    }
    let cluster = effective_config(inputs.configs, inputs.node);
    let local_as = node_as(me, &cluster);
    let listen_port = cluster.effective_listen_port();
    let router_id = match my_v4.map(|n| n.addr()) {
        Some(IpAddr::V4(a)) => a,
        _ => router_id_from_name(inputs.node),
    };
    let my_rr = rr_cluster(me);
    let mut skipped = Vec::new();

    let node_port =
        |n: &Node| effective_config(inputs.configs, &n.metadata.name).effective_listen_port();
    let mut candidates: Vec<Candidate> = Vec::new();

    // Explicit BGPPeers: node-specific first, then global (first one per address wins).
    let mut sorted: Vec<&BGPPeer> = inputs.peers.iter().collect();
    sorted.sort_by_key(|p| {
        (
            p.spec.node.is_none() && p.spec.node_selector.is_none(),
            p.metadata.name.clone(),
        )
    });
    for p in sorted {
        let s = &p.spec;
        let specific = s.node.is_some() || s.node_selector.is_some();
        // The resource's sourceAddress/password, overridden by RenderOptions::peer_extras.
        let extras = opts
            .peer_extras
            .get(&p.metadata.name)
            .cloned()
            .unwrap_or_else(|| PeerExtras {
                source_address: match s.source_address {
                    Some(serval_model::calico::bgp::BGPSourceAddress::None) => SourceAddress::None,
                    _ => SourceAddress::UseNodeIp,
                },
                password: s.password.as_ref().and_then(|pw| pw.value.clone()),
            });
        if let Some((ip, port)) = s.peer_addr() {
            if !peer_applies(p, me) {
                continue;
            }
            let Some(peer_as) = s.as_number else {
                skipped.push(format!(
                    "BGPPeer {}: peerIP {ip} without asNumber",
                    p.metadata.name
                ));
                continue;
            };
            candidates.push(Candidate {
                kind: if specific {
                    SessionKind::NodeSpecific
                } else {
                    SessionKind::Global
                },
                peer: ip,
                port: port.unwrap_or(serval_model::calico::DEFAULT_BGP_PORT),
                peer_as,
                description: format!("BGPPeer {}", p.metadata.name),
                rr_client: false,
                keep_next_hop: s.keep_original_next_hop,
                node_peer: false,
                extras,
            });
        } else if let Some(sel) = &s.peer_selector {
            let Ok(sel) = Selector::parse(sel) else {
                skipped.push(format!(
                    "BGPPeer {}: peerSelector does not parse",
                    p.metadata.name
                ));
                continue;
            };
            // As in Calico, a peerSelector peering is symmetric: the nodes the BGPPeer applies
            // to peer with the selected nodes, and the selected nodes with them.
            let i_apply = peer_applies(p, me);
            let i_am_selected = sel.matches_global(&me.metadata.labels);
            for other in inputs.nodes {
                if other.metadata.name == inputs.node {
                    continue;
                }
                let forward = i_apply && sel.matches_global(&other.metadata.labels);
                let backward = i_am_selected && peer_applies(p, other);
                if !forward && !backward {
                    continue;
                }
                let other_rr = rr_cluster(other);
                let rr_client = my_rr.is_some() && other_rr != my_rr;
                let kind = if my_rr.is_some() || other_rr.is_some() {
                    SessionKind::RouteReflector
                } else if specific {
                    SessionKind::NodeSpecific
                } else {
                    SessionKind::Global
                };
                for addr in other.bgp_addrs() {
                    candidates.push(Candidate {
                        kind,
                        peer: addr,
                        port: node_port(other),
                        peer_as: node_as(other, &cluster),
                        description: other.metadata.name.clone(),
                        rr_client,
                        keep_next_hop: s.keep_original_next_hop,
                        node_peer: true,
                        extras: extras.clone(),
                    });
                }
            }
        }
    }
    if cluster.effective_node_to_node_mesh() {
        for other in inputs.nodes {
            if other.metadata.name == inputs.node {
                continue;
            }
            for addr in other.bgp_addrs() {
                candidates.push(Candidate {
                    kind: SessionKind::Mesh,
                    peer: addr,
                    port: node_port(other),
                    peer_as: node_as(other, &cluster),
                    description: other.metadata.name.clone(),
                    rr_client: false,
                    keep_next_hop: false,
                    node_peer: true,
                    extras: PeerExtras::default(),
                });
            }
        }
    }

    let mut seen = BTreeSet::new();
    let mut sessions = Vec::new();
    let mut session_text = String::new();
    for c in candidates {
        if !seen.insert((c.peer, c.port)) {
            continue;
        }
        let local = match c.peer {
            IpAddr::V4(_) => my_v4,
            IpAddr::V6(_) => my_v6,
        };
        let Some(local) = local else {
            skipped.push(format!(
                "{} {} ({}): this node has no {} address",
                c.kind.describe(),
                c.peer,
                c.description,
                if c.peer.is_ipv4() { "IPv4" } else { "IPv6" }
            ));
            continue;
        };
        if me.bgp_addrs().contains(&c.peer) {
            continue;
        }
        if c.extras
            .password
            .as_deref()
            .is_some_and(|p| p.contains(['"', '\\', '\n']))
        {
            skipped.push(format!(
                "{} ({}): BIRD cannot quote a password containing '\"', '\\' or a newline",
                c.peer, c.description
            ));
            continue;
        }
        let name = protocol_name(c.kind, c.peer, c.port);
        render_session(&mut session_text, &name, &c, local, local_as, my_rr);
        sessions.push(PlannedSession {
            name,
            kind: c.kind,
            peer: c.peer,
            port: c.port,
            peer_as: c.peer_as,
            description: c.description,
            rr_client: c.rr_client,
        });
    }

    let mut t = String::new();
    let _ = writeln!(
        t,
        "# BIRD configuration for node {} rendered by Serval; do not edit, the agent rewrites it.",
        inputs.node
    );
    let _ = writeln!(t, "router id {router_id};");
    t.push_str("timeformat protocol iso long;\n");
    render_log(&mut t, cluster.log_severity_screen.as_deref());
    let vxlan_pools: Vec<IpNet> = inputs
        .pools
        .iter()
        .filter(|p| p.spec.encapsulation != Encapsulation::None)
        .map(|p| p.spec.cidr.trunc())
        .collect();
    render_base(&mut t, opts, my_v4.is_some(), my_v6.is_some(), &vxlan_pools);
    let mut blocks = Vec::new();
    for b in inputs.blocks {
        match inputs
            .pools
            .iter()
            .find(|p| p.spec.disable_bgp_export && p.spec.cidr.contains(b))
        {
            Some(p) => skipped.push(format!(
                "block {b}: IPPool {} has disableBGPExport",
                p.metadata.name
            )),
            None => blocks.push(*b),
        }
    }
    render_statics(&mut t, &blocks, &cluster);
    render_template(&mut t, opts, local_as, listen_port, my_rr);
    t.push_str(&session_text);
    Ok(RenderedConfig {
        text: t,
        router_id,
        local_as,
        sessions,
        skipped,
    })
}

fn render_log(t: &mut String, severity: Option<&str>) {
    let classes = match severity.map(str::to_ascii_lowercase).as_deref() {
        Some("debug") => Some("all"),
        None | Some("info") => Some("{ info, remote, warning, error, auth, fatal, bug }"),
        Some("warning") => Some("{ warning, error, auth, fatal, bug }"),
        Some("error") => Some("{ error, auth, fatal, bug }"),
        Some("fatal") => Some("{ fatal, bug }"),
        _ => None,
    };
    match classes {
        Some(c) => {
            let _ = writeln!(t, "log stderr {c};");
        }
        None => t.push_str("# logSeverityScreen None: no logging\n"),
    }
    if severity.is_some_and(|s| s.eq_ignore_ascii_case("debug")) {
        t.push_str("debug protocols { states, events };\n");
    }
}

fn render_base(t: &mut String, opts: &RenderOptions, v4: bool, v6: bool, vxlan_pools: &[IpNet]) {
    let tm = &opts.timers;
    t.push_str("\nprotocol device {\n  scan time 10;\n}\n");
    // Device routes let BIRD resolve (recursive) BGP next hops on the underlay; they are never
    // exported anywhere.
    let mut ifaces: Vec<String> = opts
        .direct_exclude
        .iter()
        .map(|p| format!("-\"{p}\""))
        .collect();
    ifaces.push("\"*\"".into());
    let _ = writeln!(
        t,
        "\nprotocol direct {{\n{}{}  interface {};\n}}",
        if v4 { "  ipv4;\n" } else { "" },
        if v6 { "  ipv6;\n" } else { "" },
        ifaces.join(", ")
    );
    for (fam, on) in [("4", v4), ("6", v6)] {
        if !on {
            continue;
        }
        let vxlan: Vec<String> = vxlan_pools
            .iter()
            .filter(|p| matches!(p, IpNet::V6(_)) == (fam == "6"))
            .map(|p| format!("{p}+"))
            .collect();
        let export = if vxlan.is_empty() {
            "export where source = RTS_BGP;".to_owned()
        } else {
            format!(
                "export filter {{\n      # VXLAN pools: the agent programs these routes.\n      if net ~ \
                 [ {} ] then reject;\n      if source = RTS_BGP then accept;\n      reject;\n    }};",
                vxlan.join(", ")
            )
        };
        let _ = writeln!(
            t,
            "\n# Routes learned over BGP go to the kernel (proto bird, metric {m}); nothing is learned \
             from it.\nprotocol kernel kernel{fam} {{\n  ipv{fam} {{\n    import none;\n    {export}\n  \
             }};\n  learn off;\n  merge paths on;\n  metric {m};\n  graceful restart;\n  scan time \
             {scan};\n}}",
            m = opts.kernel_metric,
            scan = tm.kernel_scan_time,
        );
    }
}

fn render_statics(t: &mut String, blocks: &[IpNet], cluster: &BGPConfigurationSpec) {
    let mut blocks: Vec<IpNet> = blocks.iter().map(IpNet::trunc).collect();
    blocks.sort();
    blocks.dedup();
    let services: BTreeSet<IpNet> = cluster
        .service_cluster_ips
        .iter()
        .chain(&cluster.service_external_ips)
        .chain(&cluster.service_load_balancer_ips)
        .map(|c| c.cidr.trunc())
        .collect();
    for (name, what, nets) in [
        ("serval_blocks", "this node's IPAM blocks", blocks),
        (
            "serval_svc",
            "service ranges (BGPConfiguration)",
            services.into_iter().collect(),
        ),
    ] {
        for (fam, v6) in [("4", false), ("6", true)] {
            let nets: Vec<&IpNet> = nets
                .iter()
                .filter(|n| matches!(n, IpNet::V6(_)) == v6)
                .collect();
            if nets.is_empty() {
                continue;
            }
            let _ = writeln!(
                t,
                "\n# Announced: {what} (blackhole here, never exported to the kernel).\nprotocol \
                 static {name}{fam} {{\n  ipv{fam};"
            );
            for n in nets {
                let _ = writeln!(t, "  route {n} blackhole;");
            }
            t.push_str("}\n");
        }
    }
}

fn render_template(
    t: &mut String,
    opts: &RenderOptions,
    local_as: AsNumber,
    listen_port: u16,
    my_rr: Option<Ipv4Addr>,
) {
    let tm = &opts.timers;
    t.push_str(
        "\n# Own announcements only (blocks, service ranges).\nfilter serval_export_own {\n  if \
         source = RTS_STATIC then accept;\n  reject;\n}\n\n# To other nodes: own announcements, and \
         BGP-learned routes (BIRD's iBGP rules only let route\n# reflectors pass those on).\nfilter \
         serval_export_nodes {\n  if source = RTS_STATIC then accept;\n  if source = RTS_BGP then \
         accept;\n  reject;\n}\n",
    );
    let _ = writeln!(
        t,
        "\ntemplate bgp serval_peer {{\n  local port {listen_port} as {local_as};\n  hold time {};\n  \
         keepalive time {};\n  connect delay time {};\n  connect retry time {};\n  error wait time \
         {}, {};\n  graceful restart;",
        tm.hold_time,
        tm.keepalive_time,
        tm.connect_delay_time,
        tm.connect_retry_time,
        tm.error_wait_min,
        tm.error_wait_max,
    );
    if let Some(id) = my_rr {
        let _ = writeln!(t, "  rr cluster id {id};");
    }
    t.push_str("}\n");
}

fn render_session(
    t: &mut String,
    name: &str,
    c: &Candidate,
    local: IpNet,
    local_as: AsNumber,
    my_rr: Option<Ipv4Addr>,
) {
    let _ = writeln!(t, "\nprotocol bgp {name} from serval_peer {{");
    let _ = writeln!(t, "  description \"{}\";", c.description.replace('"', "'"));
    let _ = writeln!(t, "  neighbor {} port {} as {};", c.peer, c.port, c.peer_as);
    if c.extras.source_address == SourceAddress::UseNodeIp {
        let _ = writeln!(t, "  source address {};", local.addr());
    }
    // eBGP to a neighbour outside the node's subnet needs multihop; iBGP is multihop already.
    if c.peer_as != local_as && !local.contains(&c.peer) {
        t.push_str("  multihop;\n");
    }
    if c.rr_client && my_rr.is_some() {
        t.push_str("  rr client;\n");
    }
    if let Some(pw) = &c.extras.password {
        let _ = writeln!(t, "  password \"{pw}\";");
    }
    let fam = if c.peer.is_ipv4() { "4" } else { "6" };
    let export = if c.node_peer {
        "serval_export_nodes"
    } else {
        "serval_export_own"
    };
    let _ = writeln!(
        t,
        "  ipv{fam} {{\n    gateway recursive;\n    import all;\n    export filter {export};{}\n  }};\n}}",
        if c.keep_next_hop {
            "\n    next hop keep;"
        } else {
            ""
        }
    );
}

/// An external BGP router's neighbour (for [`render_router`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterNeighbor {
    /// Shown as the description.
    pub name: String,
    pub addr: IpAddr,
    pub asn: AsNumber,
}

/// An external router (the lab's "home router") speaking BGP to the nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterSpec {
    pub router_id: Ipv4Addr,
    pub asn: AsNumber,
    /// Its own underlay addresses (source addresses of its sessions).
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<std::net::Ipv6Addr>,
    pub neighbors: Vec<RouterNeighbor>,
    pub timers: Timers,
}

/// Renders a BIRD configuration for an external router: eBGP/iBGP sessions to every
/// neighbour, importing everything into its kernel table and announcing nothing.
pub fn render_router(r: &RouterSpec) -> String {
    let tm = &r.timers;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# BIRD configuration for an external router rendered by Serval.\nrouter id {};\ntimeformat protocol iso long;\nlog stderr {{ info, remote, warning, error, auth, fatal, bug }};\n\nprotocol device {{\n  scan time 10;\n}}\n\nprotocol direct {{\n  ipv4;\n  ipv6;\n  interface \"*\";\n}}",
        r.router_id
    );
    for fam in ["4", "6"] {
        let _ = writeln!(
            t,
            "\nprotocol kernel kernel{fam} {{\n  ipv{fam} {{\n    import none;\n    export where source = RTS_BGP;\n  }};\n  merge paths on;\n  metric {DEFAULT_KERNEL_METRIC};\n  scan time {};\n}}",
            tm.kernel_scan_time
        );
    }
    let _ = writeln!(
        t,
        "\ntemplate bgp router_peer {{\n  local as {};\n  hold time {};\n  keepalive time {};\n  connect delay time {};\n  connect retry time {};\n  error wait time {}, {};\n}}",
        r.asn,
        tm.hold_time,
        tm.keepalive_time,
        tm.connect_delay_time,
        tm.connect_retry_time,
        tm.error_wait_min,
        tm.error_wait_max
    );
    for n in &r.neighbors {
        let fam = if n.addr.is_ipv4() { "4" } else { "6" };
        let src: Option<IpAddr> = if n.addr.is_ipv4() {
            r.ipv4.map(IpAddr::V4)
        } else {
            r.ipv6.map(IpAddr::V6)
        };
        let _ = writeln!(
            t,
            "\nprotocol bgp {} from router_peer {{\n  description \"{}\";\n  neighbor {} as {};{}\n  ipv{fam} {{\n    import all;\n    export none;\n  }};\n}}",
            protocol_name(
                SessionKind::Global,
                n.addr,
                serval_model::calico::DEFAULT_BGP_PORT
            ),
            n.name.replace('"', "'"),
            n.addr,
            n.asn,
            src.map(|s| format!("\n  source address {s};"))
                .unwrap_or_default(),
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use serval_model::ObjectMeta;
    use serval_model::calico::ServiceCidr;
    use serval_model::types::Port;

    use super::*;

    #[test]
    fn protocol_names_are_bird_symbols_and_round_trip_the_kind() {
        for (kind, peer, port, want) in [
            (SessionKind::Mesh, "172.31.7.12", 179, "Mesh_172_31_7_12"),
            (
                SessionKind::RouteReflector,
                "fd00:5e:7::11",
                179,
                "RR_fd00_5e_7__11",
            ),
            (
                SessionKind::Global,
                "10.0.0.1",
                1179,
                "Global_10_0_0_1_port1179",
            ),
            (SessionKind::NodeSpecific, "fd00::1", 179, "Node_fd00__1"),
        ] {
            let name = protocol_name(kind, peer.parse().unwrap(), port);
            assert_eq!(name, want);
            assert!(
                name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            );
            assert_eq!(SessionKind::from_protocol_name(&name), Some(kind));
        }
        assert_eq!(SessionKind::from_protocol_name("kernel4"), None);
        assert_eq!(SessionKind::from_protocol_name("serval_blocks4"), None);
        let longest = protocol_name(
            SessionKind::RouteReflector,
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
            65535,
        );
        assert!(longest.len() <= 64, "{longest}");
    }

    #[test]
    fn router_ids_from_names_are_stable_and_spread() {
        assert_eq!(router_id_from_name("node1"), router_id_from_name("node1"));
        let ids: BTreeSet<Ipv4Addr> = (0..1000)
            .map(|i| router_id_from_name(&format!("node{i}")))
            .collect();
        assert_eq!(ids.len(), 1000);
        assert!(!ids.contains(&Ipv4Addr::UNSPECIFIED));
    }

    #[test]
    fn per_node_configuration_overrides_the_default() {
        let mut default = BGPConfiguration {
            metadata: ObjectMeta::named("default"),
            ..Default::default()
        };
        default.spec.as_number = Some(AsNumber(65000));
        default.spec.listen_port = Some(Port(1179));
        default.spec.service_cluster_ips = vec![ServiceCidr {
            cidr: "10.96.0.0/12".parse().unwrap(),
        }];
        let mut node1 = BGPConfiguration {
            metadata: ObjectMeta::named("node.node1"),
            ..Default::default()
        };
        node1.spec.listen_port = Some(Port(2179));
        node1.spec.log_severity_screen = Some("Debug".into());
        let configs = [default, node1];
        let e1 = effective_config(&configs, "node1");
        assert_eq!(e1.effective_listen_port(), 2179);
        assert_eq!(e1.effective_as_number(), AsNumber(65000));
        assert_eq!(e1.service_cluster_ips.len(), 1);
        assert_eq!(e1.log_severity_screen.as_deref(), Some("Debug"));
        let e2 = effective_config(&configs, "node2");
        assert_eq!(e2.effective_listen_port(), 1179);
        assert_eq!(e2.log_severity_screen, None);
        let none = effective_config(&[], "node1");
        assert_eq!(none.effective_as_number(), AsNumber(64512));
        assert!(none.effective_node_to_node_mesh());
        assert_eq!(none.effective_listen_port(), 179);
    }

    fn node(name: &str, v4: Option<&str>, v6: Option<&str>) -> Node {
        Node {
            metadata: ObjectMeta::named(name),
            spec: serval_model::calico::NodeSpec {
                bgp: Some(serval_model::calico::NodeBgpSpec {
                    ipv4_address: v4.map(|a| a.parse().unwrap()),
                    ipv6_address: v6.map(|a| a.parse().unwrap()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        }
    }

    #[test]
    fn peers_of_a_family_the_node_lacks_are_skipped_and_mesh_off_leaves_explicit_peers() {
        let nodes = [
            node("a", None, Some("fd00::a/64")),
            node("b", Some("10.0.0.2/24"), Some("fd00::b/64")),
        ];
        let mut conf = BGPConfiguration {
            metadata: ObjectMeta::named("default"),
            ..Default::default()
        };
        let r = render(
            &BgpInputs {
                node: "a",
                nodes: &nodes,
                configs: std::slice::from_ref(&conf),
                peers: &[],
                blocks: &[],
                pools: &[],
            },
            &RenderOptions::default(),
        )
        .unwrap();
        assert_eq!(r.sessions.len(), 1);
        assert_eq!(r.sessions[0].peer.to_string(), "fd00::b");
        assert!(
            r.skipped.iter().any(|s| s.contains("10.0.0.2")),
            "{:?}",
            r.skipped
        );

        conf.spec.node_to_node_mesh_enabled = Some(false);
        let peer = BGPPeer {
            metadata: ObjectMeta::named("tor"),
            spec: serval_model::calico::BGPPeerSpec {
                node: Some("a".into()),
                peer_ip: Some("fd00::1".into()),
                as_number: Some(AsNumber(65001)),
                ..Default::default()
            },
        };
        let r = render(
            &BgpInputs {
                node: "a",
                nodes: &nodes,
                configs: std::slice::from_ref(&conf),
                peers: std::slice::from_ref(&peer),
                blocks: &[],
                pools: &[],
            },
            &RenderOptions::default(),
        )
        .unwrap();
        let kinds: Vec<SessionKind> = r.sessions.iter().map(|s| s.kind).collect();
        assert_eq!(kinds, [SessionKind::NodeSpecific]);
        let r = render(
            &BgpInputs {
                node: "b",
                nodes: &nodes,
                configs: std::slice::from_ref(&conf),
                peers: std::slice::from_ref(&peer),
                blocks: &[],
                pools: &[],
            },
            &RenderOptions::default(),
        )
        .unwrap();
        assert!(r.sessions.is_empty(), "the peer is node a's only");
    }

    #[test]
    fn source_address_and_password_come_from_the_bgppeer() {
        let nodes = [node("a", Some("10.0.0.1/24"), None)];
        let mk = |source: Option<serval_model::calico::BGPSourceAddress>| BGPPeer {
            metadata: ObjectMeta::named("tor"),
            spec: serval_model::calico::BGPPeerSpec {
                peer_ip: Some("10.0.0.254".into()),
                as_number: Some(AsNumber(65001)),
                source_address: source,
                password: Some(serval_model::calico::BGPPassword {
                    value: Some("s3cret".into()),
                    secret_key_ref: None,
                }),
                ..Default::default()
            },
        };
        let text = |peer: BGPPeer| {
            render(
                &BgpInputs {
                    node: "a",
                    nodes: &nodes,
                    configs: &[],
                    peers: std::slice::from_ref(&peer),
                    blocks: &[],
                    pools: &[],
                },
                &RenderOptions::default(),
            )
            .unwrap()
            .text
        };
        let with_source = text(mk(None));
        assert!(
            with_source.contains("password \"s3cret\";"),
            "{with_source}"
        );
        assert!(
            with_source.contains("source address 10.0.0.1;"),
            "{with_source}"
        );
        let without = text(mk(Some(serval_model::calico::BGPSourceAddress::None)));
        assert!(!without.contains("source address"), "{without}");
    }

    #[test]
    fn a_peer_listed_twice_gets_one_session_node_specific_first() {
        let nodes = [node("a", Some("10.0.0.1/24"), None)];
        let mk = |name: &str, node: Option<&str>| BGPPeer {
            metadata: ObjectMeta::named(name),
            spec: serval_model::calico::BGPPeerSpec {
                node: node.map(Into::into),
                peer_ip: Some("10.0.0.254".into()),
                as_number: Some(AsNumber(65001)),
                ..Default::default()
            },
        };
        let peers = [mk("all-nodes", None), mk("just-a", Some("a"))];
        let r = render(
            &BgpInputs {
                node: "a",
                nodes: &nodes,
                configs: &[],
                peers: &peers,
                blocks: &[],
                pools: &[],
            },
            &RenderOptions::default(),
        )
        .unwrap();
        assert_eq!(r.sessions.len(), 1);
        assert_eq!(r.sessions[0].kind, SessionKind::NodeSpecific);
        assert_eq!(r.sessions[0].description, "BGPPeer just-a");
    }
}
