//! The eBPF dataplane driver: renders a [`DesiredState`] into the maps and tc attachments of
//! [`serval_dp_bpf`] in the network namespace of the driver thread (the node's).
//!
//! - **Pins.** Maps and TCX links are pinned under `/sys/fs/bpf/serval/SCOPE`, SCOPE being the
//!   name of the node's network namespace (`sv-L-node1`; '.' → '_'), or `node-NAME` when the
//!   agent runs in an unnamed namespace (a real host). Several lab nodes share one kernel, so
//!   every node has its own scope.
//! - **Reconcile, never flush.** The programs are loaded lazily at the first apply (with the
//!   pinned maps reopened, contents kept, and pinned links re-pointed at the new programs).
//!   The first apply after a load, and every resync, reads every map back from the kernel and
//!   writes only the difference to the desired contents (extra entries are deleted).
//! - **Order of writes**, so no packet sees a half-written state: policy entries, routes and
//!   identities, endpoints, backends, frontends, then attachments of new interfaces; then
//!   removals in reverse (frontends, backends, detach, endpoints, routes, policy).
//! - **Maps written:** `sv_eps` (host veth ifindex → endpoint id and addresses), `sv_routes`
//!   (identity prefixes of [`compile`] merged with routing flags: local workloads with their
//!   veth, this node's addresses, other nodes, IP pools with natOutgoing, the WORLD
//!   defaults), `sv_policy` (the compiled verdict entries), `sv_nat_fe` / `sv_nat_be`
//!   (every frontend of [`DesiredState::services`], node-local backends first).
//! - **Workload to host:** this node's addresses get their own identities
//!   ([`FIRST_HOST_IDENTITY`]…), whose egress verdict is FelixConfiguration
//!   `defaultEndpointToHostAction` (Drop by default) and whose ingress verdicts are those of
//!   the class the addresses would have had; with Return and an all-interfaces (`*`) host
//!   endpoint owning the address, that endpoint's ingress policy and failsafe ports are
//!   folded into those egress verdicts ([`hep::fold_all_interfaces_return`]).
//! - **Host endpoints** ([`hep`]): `bpf/serval_hep.c` on the interfaces of the node's
//!   HostEndpoints (policy compiled like a workload's, failsafe ports in `sv_hep_fs`).
//! - **Conntrack cleaner and counters:** every resync expires idle conntrack entries
//!   (Calico's timeouts) and reads the per-reason drop counters, logging the reasons whose
//!   count grew; [`Dataplane::stats`] reports the totals.
//! - **Uplink and VXLAN devices** ([`uplink`]): `serval_uplink_in` / `serval_uplink_out` on
//!   the interface holding the node's address and on `vxlan.serval` / `vxlan-v6.serval`:
//!   NodePort, externalIP and LoadBalancer frontends reached from outside (externalTrafficPolicy
//!   Local: local backends, client address kept, dropped without one; Cluster: the client's
//!   address kept too, a backend on another node reached through the NodePort tunnel with
//!   `bpfExternalServiceMode` Tunnel or DSR, see [`uplink::ExternalSettings`]; masqueraded to
//!   the node only where no node route leads to the backend), NAT outgoing, replies of both;
//!   `sv_host` holds the node's SNAT addresses, FelixConfiguration `bpfPSNATPorts` and the
//!   DSR flag. Hairpin service traffic is masqueraded to the node's
//!   address by `serval_from_ep`. No iptables rule of ours is involved.
//! - **Fast path:** an allowed packet a workload sends to a workload on this node is checked
//!   against the destination's ingress policy inside `serval_from_ep` and redirected into the
//!   destination's namespace (`bpf_redirect_peer`, MACs from a FIB lookup); one to a pool
//!   address on another node leaves by FIB lookup and redirect (`bpf_redirect_neigh` while the
//!   neighbour is unresolved). `serval_uplink_in` does the same for packets arriving for a
//!   workload of this node. What the FIB cannot resolve takes the host stack.
//!
//! Not done by the programs yet (logged once at load, see [`NOT_YET_IN_BPF`]).

#![expect(
    clippy::result_large_err,
    reason = "BpfError keeps serval-dp-bpf's errors (aya's, large) as sources; cold paths, and \
              DataplaneError boxes it"
)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::Hash;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use aya::maps::lpm_trie::Key;
use aya::maps::{Map, MapData, MapError};
use ipnet::IpNet;
use serval_calc::DesiredState;
use serval_calc::compile::{self, CompiledPolicy, EntryKey, PolicyIndex};
use serval_calc::services::FrontendKind;
use serval_dp_bpf::abi::{
    Addr, EpVal, NatBeKey, NatBeVal, NatFeKey, NatFeVal, PolKey, PolMatch, PolVal, RouteVal,
    SV_DROP_REASONS, SV_RT_F_HOST, SV_RT_F_IN_POOL, SV_RT_F_LOCAL_WORKLOAD, SV_RT_F_NAT_OUTGOING,
    SV_RT_F_REMOTE_HOST, SV_RT_F_REMOTE_WORKLOAD, SV_VERDICT_DENY, drop_reason_name,
    lpm_prefix_len,
};
use serval_dp_bpf::abi::{NatAffKey, NatAffVal};
use serval_dp_bpf::object::{MAP_EPS, MAP_NAT_AFF, MAP_NAT_BE, MAP_NAT_FE, MAP_POLICY, MAP_ROUTES};
use serval_dp_bpf::{
    AttachMode, CtTimeouts, DropCounters, Hook, LoadOptions, LogLevel, MapSizes, PinScope,
};
use serval_model::calico::EndpointToHostAction;
use serval_model::calico::felix::{BpfLogLevel, FelixSettings};
use serval_sys::NetNs;

use super::{DataplaneError, DataplaneKind, DataplaneStats, Written};

pub mod ctlb;
mod hep;
mod incremental;
pub mod kubeproxy;
pub mod maglev;
pub mod polsport;
mod services_only;
pub mod uplink;
pub mod xdp;

/// What the eBPF programs do not do yet; logged when they are loaded. The driver does not
/// pretend otherwise: such traffic is handled by the kernel alone (or not at all).
pub const NOT_YET_IN_BPF: &[&str] = &[
    "NodePort tunnel: TCP is MSS-clamped for its 56 (IPv4) / 76 (IPv6) header bytes, other protocols are not and get no fragmentation-needed: their packets within that much of the MTU are dropped once encapsulated",
    "NodePort tunnel: ICMP errors about tunnelled flows (e.g. from a router between the backend's node and the client) are not relayed through the tunnel",
];

/// Identities the driver gives this node's own addresses (one per identity class they
/// would have otherwise), so a workload's egress to its host can get
/// FelixConfiguration `defaultEndpointToHostAction`. Below the compiler's allocated ids.
pub const FIRST_HOST_IDENTITY: u32 = 3;
pub const LAST_HOST_IDENTITY: u32 = compile::FIRST_ALLOCATED_ID - 1;

/// Why the eBPF driver failed.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("XDP on host interfaces: {source}")]
    Xdp {
        #[source]
        source: serval_dp_bpf::XdpError,
    },
    #[error("loading the eBPF programs for pin scope {scope}: {source}")]
    Load {
        scope: String,
        #[source]
        source: Box<serval_dp_bpf::LoadError>,
    },
    #[error("pin scope for node {node}: {source}")]
    Scope {
        node: String,
        #[source]
        source: Box<serval_dp_bpf::LoadError>,
    },
    #[error("attaching/detaching the eBPF programs on {ifname}: {source}")]
    Attach {
        ifname: String,
        #[source]
        source: serval_dp_bpf::AttachError,
    },
    #[error("removing the eBPF pins of scope {scope}: {source}")]
    Cleanup {
        scope: String,
        #[source]
        source: serval_dp_bpf::AttachError,
    },
    #[error("writing eBPF map: {source}")]
    Maps {
        #[source]
        source: serval_dp_bpf::MapsError,
    },
    #[error("reading pinned map {path}: {source}; is bpffs mounted and the agent root?")]
    ReadPinned {
        path: String,
        #[source]
        source: MapError,
    },
    #[error(
        "eBPF map {map} would need {needed} entries during this update but holds at most \
         {max_entries}; raise {field} (nothing was written)"
    )]
    MapFull {
        map: &'static str,
        needed: usize,
        max_entries: u32,
        field: &'static str,
    },
    #[error("opening the driver thread's network namespace: {source}")]
    Netns {
        #[source]
        source: serval_sys::Error,
    },
}

fn bpf_err(e: BpfError) -> DataplaneError {
    DataplaneError::Bpf {
        source: Box::new(e),
    }
}

fn maps_err(source: serval_dp_bpf::MapsError) -> DataplaneError {
    bpf_err(BpfError::Maps { source })
}

thread_local! {
    /// The node the current driver thread serves (set by `DriverThread::spawn`).
    static THREAD_NODE: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Records the node name of the calling (driver) thread, for the pin scope.
pub(crate) fn set_thread_node(node: &str) {
    THREAD_NODE.with(|n| *n.borrow_mut() = Some(node.to_string()));
}

/// The name of the calling thread's network namespace under `/run/netns`, if it has one.
fn current_netns_name() -> Option<String> {
    let me = std::fs::metadata("/proc/thread-self/ns/net").ok()?;
    NetNs::list().ok()?.into_iter().find(|name| {
        std::fs::metadata(Path::new("/run/netns").join(name))
            .is_ok_and(|m| m.dev() == me.dev() && m.ino() == me.ino())
    })
}

/// A pin scope name from any text: `[A-Za-z0-9_-]`, at most 64 characters.
pub fn scope_name(raw: &str) -> String {
    let s: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let s = if s.is_empty() { "node".to_string() } else { s };
    s.chars().take(64).collect()
}

/// The pin scope of the calling thread: its network namespace's name, else `node-NODE`.
pub fn thread_scope() -> String {
    match current_netns_name() {
        Some(ns) => scope_name(&ns),
        None => {
            let node = THREAD_NODE
                .with(|n| n.borrow().clone())
                .or_else(|| nix::unistd::gethostname().ok()?.into_string().ok())
                .unwrap_or_default();
            scope_name(&format!("node-{node}"))
        }
    }
}

/// Load settings from the node's effective FelixConfiguration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BpfSettings {
    pub sizes: MapSizes,
    pub log_level: LogLevel,
    /// `bpfMaglevMaxEndpointsPerService`, `bpfMaglevMaxServices` ([`maglev`]).
    pub maglev: maglev::MaglevSettings,
    /// `bpfConnectTimeLoadBalancing`, `bpfHostNetworkedNATWithoutCTLB` ([`ctlb`]).
    pub ctlb: ctlb::CtlbSettings,
    /// `bpfKubeProxyIptablesCleanupEnabled` ([`kubeproxy`]).
    pub kube_proxy_cleanup: bool,
    /// `bpfPSNATPorts`: the source ports of SNAT ([`uplink`]).
    pub psnat_ports: (u16, u16),
    /// `bpfExternalServiceMode`, `bpfDSROptoutCIDRs` ([`uplink::ExternalSettings`]).
    pub external: uplink::ExternalSettings,
}

impl BpfSettings {
    /// `bpfMapSize*` and `bpfLogLevel` (Debug selects the debug build of the programs).
    pub fn from_felix(f: &FelixSettings) -> BpfSettings {
        BpfSettings {
            sizes: MapSizes {
                nat_frontend: f.bpf_map_size_nat_frontend,
                nat_backend: f.bpf_map_size_nat_backend,
                nat_affinity: f.bpf_map_size_nat_affinity,
                route: f.bpf_map_size_route,
                conntrack: f.bpf_map_size_conntrack,
                ..MapSizes::default()
            },
            maglev: maglev::MaglevSettings::from_felix(f),
            log_level: match f.bpf_log_level {
                BpfLogLevel::Debug => LogLevel::Debug,
                _ => LogLevel::Off,
            },
            ctlb: ctlb::CtlbSettings::from_felix(f),
            kube_proxy_cleanup: f.bpf_kube_proxy_iptables_cleanup_enabled,
            psnat_ports: f.bpf_psnat_ports,
            external: uplink::ExternalSettings::from_felix(f),
        }
    }
}

/// What the driver keeps of the services after writing `contents` for `state` (the digests
/// of [`incremental`], no copy of the frontends); for measurements (`examples/mem_scale`).
#[doc(hidden)]
pub fn service_digests(state: &DesiredState, contents: &MapContents) -> impl std::fmt::Debug {
    incremental::ServiceMirror::after_full_write(state, &contents.frontends, &contents.backends)
}

/// `sv_nat_fe` contents. The service maps hold an entry per frontend and backend (100,000
/// at 50,000 Services) and are searched per changed frontend: keyed with foldhash, not
/// SipHash.
pub type FeMap = foldhash::HashMap<NatFeKey, NatFeVal>;
/// `sv_nat_be` contents (see [`FeMap`]).
pub type BeMap = foldhash::HashMap<NatBeKey, NatBeVal>;

/// The contents of the maps the driver owns (host-side mirror of the kernel's).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MapContents {
    pub eps: HashMap<u32, EpVal>,
    /// (LPM prefix length, address bytes) → value.
    pub routes: HashMap<(u32, [u8; 16]), RouteVal>,
    /// (ep, remote identity, dir, proto, port, prefix length), host order → value.
    pub policy: HashMap<EntryKey, PolVal>,
    pub frontends: FeMap,
    pub backends: BeMap,
    /// Source-port tables (`sv_pol_sport`), see [`polsport`].
    pub policy_sport: HashMap<compile::SportKey, PolVal>,
    /// Maglev tables (`sv_maglev`) of the Maglev frontends, see [`maglev`].
    pub maglev: HashMap<serval_dp_bpf::abi::MaglevKey, serval_dp_bpf::abi::MaglevVal>,
}

/// The service maps of a [`MapContents`] (`sv_nat_fe`, `sv_nat_be`, `sv_maglev`).
#[derive(Debug, Clone, Default)]
pub(crate) struct ServiceMaps {
    frontends: FeMap,
    backends: BeMap,
    maglev: HashMap<serval_dp_bpf::abi::MaglevKey, serval_dp_bpf::abi::MaglevVal>,
}

impl ServiceMaps {
    /// Moves the service maps out of `c`.
    pub(crate) fn take_from(c: &mut MapContents) -> ServiceMaps {
        ServiceMaps {
            frontends: std::mem::take(&mut c.frontends),
            backends: std::mem::take(&mut c.backends),
            maglev: std::mem::take(&mut c.maglev),
        }
    }

    /// Replaces the service maps of `c`.
    fn into_contents(self, c: &mut MapContents) {
        c.frontends = self.frontends;
        c.backends = self.backends;
        c.maglev = self.maglev;
    }
}

/// What the host knows besides the desired state: interfaces and addresses.
#[derive(Debug, Clone, Default)]
pub struct HostView {
    /// Host-side interface name → ifindex (only interfaces that exist).
    pub ifindex: BTreeMap<String, u32>,
    /// This node's own addresses.
    pub addrs: Vec<IpAddr>,
}

impl HostView {
    /// Reads the calling thread's namespace: the ifindex of every endpoint interface and the
    /// addresses of every interface.
    pub fn read(state: &DesiredState) -> HostView {
        let mut ifindex = BTreeMap::new();
        for (ep, _) in state.endpoints.values() {
            if let Ok(i) = nix::net::if_::if_nametoindex(ep.iface.as_str()) {
                ifindex.insert(ep.iface.clone(), i);
            }
        }
        let mut addrs: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
            .map(|it| {
                it.filter_map(|a| {
                    let sa = a.address?;
                    if let Some(v4) = sa.as_sockaddr_in() {
                        Some(IpAddr::V4(v4.ip()))
                    } else {
                        sa.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                    }
                })
                .collect()
            })
            .unwrap_or_default();
        addrs.sort();
        addrs.dedup();
        HostView { ifindex, addrs }
    }
}

/// The least time between two housekeeping runs ([`BpfDriver::housekeeping`]: conntrack
/// sweep, drop counters) after services-only writes; any other write runs it every time.
const SERVICES_ONLY_HOUSEKEEPING: std::time::Duration = std::time::Duration::from_secs(1);

/// 64-bit FNV-1a folded to 32 bits (stable ids).
fn fnv32(s: &str) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h ^ (h >> 32)) as u32
}

fn route_mirror_key(net: &IpNet) -> (u32, [u8; 16]) {
    (
        lpm_prefix_len(net.addr(), net.prefix_len()),
        Addr::new(net.trunc().addr()).0,
    )
}

/// The map contents for `state`: pure (tests run it without privileges).
///
/// `previous_svc_ids` keeps the service id of every frontend that already had one.
pub fn desired_contents(
    state: &DesiredState,
    compiled: &CompiledPolicy,
    host: &HostView,
    previous_svc_ids: &HashMap<NatFeKey, u32>,
) -> MapContents {
    let mut out = desired_base(state, compiled, host);
    let node = state.node.as_deref().unwrap_or("");

    // Services: one service id per frontend (its own backend slots, local ones first).
    let mut taken: BTreeSet<u32> = BTreeSet::new();
    let mut ids: Vec<(NatFeKey, u32)> = Vec::new();
    let keys: Vec<(NatFeKey, &serval_calc::services::FrontendKey)> = state
        .services
        .frontends
        .keys()
        .map(|k| (NatFeKey::new(k.ip, k.port, k.protocol.number()), k))
        .collect();
    for (fk, _) in &keys {
        if let Some(&id) = previous_svc_ids.get(fk)
            && id != 0
            && taken.insert(id)
        {
            ids.push((*fk, id));
        }
    }
    let kept: std::collections::HashSet<NatFeKey> = ids.iter().map(|(f, _)| *f).collect();
    for (fk, k) in &keys {
        if kept.contains(fk) {
            continue;
        }
        let mut id = fnv32(&k.to_string()).max(1);
        while !taken.insert(id) {
            id = id.checked_add(1).unwrap_or(1);
        }
        ids.push((*fk, id));
    }
    let ids: HashMap<NatFeKey, u32> = ids.into_iter().collect();
    for (fk, k) in &keys {
        let fe = &state.services.frontends[*k];
        // Pod clients go to any backend even under externalTrafficPolicy: Local (kube-proxy's
        // short-circuit), so the external kinds keep every backend; the uplink program picks
        // among the first local_count (node-local) ones for clients outside the cluster.
        debug_assert!(matches!(
            fe.kind,
            FrontendKind::ClusterIP
                | FrontendKind::NodePort
                | FrontendKind::ExternalIP
                | FrontendKind::LoadBalancer
        ));
        let (val, backends) = incremental::render(fe, node, ids[fk]);
        out.backends.extend(backends);
        out.frontends.insert(*fk, val);
    }
    out.maglev = maglev::add_tables(
        state,
        &mut out.frontends,
        &maglev::MaglevSettings::default(),
    );
    out
}

/// Everything of [`desired_contents`] but the service maps (`sv_nat_fe`, `sv_nat_be`,
/// `sv_maglev`, left empty).
fn desired_base(state: &DesiredState, compiled: &CompiledPolicy, host: &HostView) -> MapContents {
    let mut out = MapContents::default();

    // Endpoints.
    for (key, (ep, _)) in &state.endpoints {
        let (Some(&ifindex), Some(&ep_id)) =
            (host.ifindex.get(&ep.iface), compiled.endpoints.get(key))
        else {
            continue;
        };
        out.eps.insert(ifindex, EpVal::new(ep_id, &ep.addrs));
    }

    // Policy: the compiled entries as they are, and their source-port tables.
    out.policy_sport = polsport::desired(compiled);
    for e in &compiled.entries {
        out.policy.insert(
            e.key(),
            PolVal {
                verdict: e.verdict.code(),
                rule_id: e.rule_id,
            },
        );
    }

    // Workload to host (this node's addresses): the addresses get host identities; ingress
    // (host to workload) keeps the verdicts of the class they would have had, egress gets
    // defaultEndpointToHostAction (Drop: denied whatever the egress policy says; Accept and
    // Return: the egress policy's verdict).
    let index = PolicyIndex::new(compiled);
    let mut host_ids: BTreeMap<IpAddr, u32> = BTreeMap::new();
    let mut real_to_host: BTreeMap<u32, u32> = BTreeMap::new();
    for a in host.addrs.iter().filter(|a| !a.is_loopback()) {
        let real = index.identity(*a);
        let next = FIRST_HOST_IDENTITY + u32::try_from(real_to_host.len()).unwrap_or(u32::MAX);
        if !real_to_host.contains_key(&real) && next > LAST_HOST_IDENTITY {
            continue;
        }
        let h = *real_to_host.entry(real).or_insert(next);
        host_ids.insert(*a, h);
    }
    let drop_to_host = matches!(state.endpoint_to_host, EndpointToHostAction::Drop);
    for (&real, &h) in &real_to_host {
        for e in compiled
            .entries
            .iter()
            .filter(|e| e.remote_identity == real)
        {
            if drop_to_host && e.dir == compile::DIR_EGRESS {
                continue;
            }
            out.policy.insert(
                (e.ep_id, h, e.dir, e.proto, e.port, e.prefix_len),
                PolVal {
                    verdict: e.verdict.code(),
                    rule_id: e.rule_id,
                },
            );
        }
        if drop_to_host {
            for &ep in compiled.endpoints.values() {
                out.policy.insert(
                    (ep, h, compile::DIR_EGRESS, 0, 0, compile::PREFIX_ANY_PROTO),
                    PolVal {
                        verdict: SV_VERDICT_DENY,
                        rule_id: compile::RULE_NONE,
                    },
                );
            }
        }
    }

    // defaultEndpointToHostAction Return with an all-interfaces host endpoint ([`hep`]).
    for (h, entries) in hep::fold_all_interfaces_return(state, compiled, &index, &host_ids) {
        out.policy
            .retain(|k, _| !(k.1 == h && k.2 == compile::DIR_EGRESS));
        out.policy.extend(entries);
    }

    // Routing flags, by prefix.
    let mut routing: BTreeMap<IpNet, RouteVal> = BTreeMap::new();
    let mut add = |net: IpNet, flags: u32, ifindex: u32| {
        let v = routing.entry(net.trunc()).or_default();
        v.flags |= flags;
        if ifindex != 0 {
            v.ifindex = ifindex;
        }
    };
    let no = &state.nat_outgoing;
    for pool in &no.pools {
        add(*pool, SV_RT_F_IN_POOL, 0);
    }
    for pool in &no.masquerade_from {
        add(*pool, SV_RT_F_IN_POOL | SV_RT_F_NAT_OUTGOING, 0);
    }
    for n in &no.node_nets {
        if !host.addrs.contains(&n.addr()) {
            add(*n, SV_RT_F_REMOTE_HOST, 0);
        }
    }
    for a in &host.addrs {
        add(IpNet::from(*a), SV_RT_F_HOST, 0);
    }
    for (ep, _) in state.endpoints.values() {
        let ifindex = host.ifindex.get(&ep.iface).copied().unwrap_or(0);
        for a in &ep.addrs {
            add(IpNet::from(*a), SV_RT_F_LOCAL_WORKLOAD, ifindex);
        }
    }
    // Other nodes' IPAM blocks: their workloads, behind that node's address (the NodePort
    // tunnel's destination, whatever the kernel route's gateway is).
    let mut next_hops: BTreeMap<IpNet, IpAddr> = BTreeMap::new();
    for (block, node) in &state.remote_blocks {
        add(*block, SV_RT_F_REMOTE_WORKLOAD, 0);
        next_hops.insert(block.trunc(), *node);
    }
    // Merge with the identities: every prefix of either kind; identity of the longest
    // identity prefix containing it, flags of every routing prefix containing it (the most
    // specific one's interface and next hop). A local workload is never a remote one (an
    // address borrowed from another node's block).
    let mut prefixes: BTreeSet<IpNet> = compiled.identities.iter().map(|(n, _)| *n).collect();
    prefixes.extend(routing.keys().copied());
    for net in prefixes {
        let single = net.prefix_len() == net.max_prefix_len();
        let identity = match host_ids.get(&net.addr()) {
            Some(&h) if single => h,
            _ => index.identity_of_net(&net),
        };
        let mut val = RouteVal {
            identity,
            ..RouteVal::default()
        };
        let mut best_len = None;
        for (r, rv) in &routing {
            if r.contains(&net) {
                val.flags |= rv.flags;
                if rv.ifindex != 0 && best_len.is_none_or(|l| r.prefix_len() > l) {
                    val.ifindex = rv.ifindex;
                    best_len = Some(r.prefix_len());
                }
            }
        }
        if val.flags & SV_RT_F_LOCAL_WORKLOAD != 0 {
            val.flags &= !SV_RT_F_REMOTE_WORKLOAD;
        } else if let Some((_, hop)) = next_hops
            .iter()
            .filter(|(b, _)| b.contains(&net))
            .max_by_key(|(b, _)| b.prefix_len())
        {
            val.next_hop = Addr::new(*hop);
        }
        out.routes.insert(route_mirror_key(&net), val);
    }
    out
}

/// (upserts, deletes) turning `old` into `new`.
fn map_diff<K: Hash + Eq + Copy, V: PartialEq + Copy, S: std::hash::BuildHasher>(
    old: &HashMap<K, V, S>,
    new: &HashMap<K, V, S>,
) -> (Vec<(K, V)>, Vec<K>) {
    let up = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, v)| (*k, *v))
        .collect();
    let del = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .copied()
        .collect();
    (up, del)
}

fn pol_key(k: &EntryKey) -> PolKey {
    let (ep, remote, dir, proto, port, prefix) = *k;
    Key::new(prefix, PolMatch::new(ep, remote, dir, proto, port))
}

fn route_key_of(k: &(u32, [u8; 16])) -> Key<Addr> {
    Key::new(k.0, Addr(k.1))
}

/// The number of entries `map` holds at its fullest while `kernel` becomes `want`: upserts
/// are written before deletes, so every key of either side is present at once.
fn peak_entries<K: Hash + Eq, V, S: std::hash::BuildHasher>(
    kernel: &HashMap<K, V, S>,
    want: &HashMap<K, V, S>,
) -> usize {
    kernel.len() + want.keys().filter(|k| !kernel.contains_key(*k)).count()
}

/// Fails, naming the map and the setting to raise, if writing `want` over `kernel` would
/// overflow a map of `sizes` at any point; checked before the first write.
fn check_capacity(
    kernel: &MapContents,
    want: &MapContents,
    sizes: &MapSizes,
) -> Result<(), BpfError> {
    let maps: [(&'static str, usize, &'static str); 5] = [
        (
            MAP_POLICY,
            peak_entries(&kernel.policy, &want.policy),
            "the policy map size (Serval's own, no FelixConfiguration field; fewer rules per node)",
        ),
        (
            MAP_ROUTES,
            peak_entries(&kernel.routes, &want.routes),
            "FelixConfiguration bpfMapSizeRoute",
        ),
        (
            MAP_EPS,
            peak_entries(&kernel.eps, &want.eps),
            "the endpoint map size (Serval's own, no FelixConfiguration field; fewer workloads per node)",
        ),
        (
            MAP_NAT_BE,
            peak_entries(&kernel.backends, &want.backends),
            "FelixConfiguration bpfMapSizeNATBackend",
        ),
        (
            MAP_NAT_FE,
            peak_entries(&kernel.frontends, &want.frontends),
            "FelixConfiguration bpfMapSizeNATFrontend",
        ),
    ];
    for (map, needed, field) in maps {
        let Some(max_entries) = sizes.for_map(map) else {
            continue;
        };
        if needed > max_entries as usize {
            return Err(BpfError::MapFull {
                map,
                needed,
                max_entries,
                field,
            });
        }
    }
    Ok(())
}

/// The affinity entries that point at a backend no longer among their service's wanted
/// `backends` (so clients are not kept on deleted backends).
fn stale_affinity(
    entries: impl IntoIterator<Item = (NatAffKey, NatAffVal)>,
    backends: &BeMap,
) -> Vec<NatAffKey> {
    let live: HashSet<(u32, Addr, u16)> = backends
        .iter()
        .map(|(k, v)| (k.svc_id, v.addr, v.port))
        .collect();
    entries
        .into_iter()
        .filter(|(k, v)| !live.contains(&(k.svc_id, v.addr, v.port)))
        .map(|(k, _)| k)
        .collect()
}

/// Deletes the affinity entries of `pins` that [`stale_affinity`] selects; returns how many.
fn clean_affinity(pins: &PinScope, backends: &BeMap) -> Result<usize, BpfError> {
    remove_affinity(pins, |entries| {
        if entries.is_empty() {
            Vec::new()
        } else {
            stale_affinity(entries, backends)
        }
    })
}

/// Reads every entry of `sv_nat_aff` of `pins`, deletes the keys `select` picks from them
/// (a key gone meanwhile is fine: the map is an LRU); returns how many it picked.
pub(super) fn remove_affinity(
    pins: &PinScope,
    select: impl FnOnce(Vec<(NatAffKey, NatAffVal)>) -> Vec<NatAffKey>,
) -> Result<usize, BpfError> {
    let path = pins.map_path(MAP_NAT_AFF).display().to_string();
    let rd = |source: MapError| BpfError::ReadPinned {
        path: path.clone(),
        source,
    };
    let d = MapData::from_pin(pins.map_path(MAP_NAT_AFF)).map_err(rd)?;
    let mut m: aya::maps::HashMap<MapData, NatAffKey, NatAffVal> =
        aya::maps::HashMap::try_from(Map::LruHashMap(d)).map_err(rd)?;
    let mut entries = Vec::new();
    for kv in m.iter() {
        match kv {
            Ok(e) => entries.push(e),
            // An LRU entry evicted mid-iteration: skip it.
            Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(rd(e)),
        }
    }
    let stale = select(entries);
    for k in &stale {
        match m.remove(k) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(rd(e)),
        }
    }
    Ok(stale.len())
}

/// Reads every entry of the pinned maps of `pins` (what an earlier agent left).
fn read_kernel(pins: &PinScope) -> Result<MapContents, BpfError> {
    fn open(pins: &PinScope, name: &str) -> Result<(MapData, String), BpfError> {
        let path = pins.map_path(name);
        let shown = path.display().to_string();
        MapData::from_pin(&path)
            .map(|d| (d, shown.clone()))
            .map_err(|source| BpfError::ReadPinned {
                path: shown,
                source,
            })
    }
    fn rd(path: &str) -> impl Fn(MapError) -> BpfError + '_ {
        move |source| BpfError::ReadPinned {
            path: path.to_string(),
            source,
        }
    }
    let mut out = MapContents::default();
    {
        let (d, p) = open(pins, MAP_EPS)?;
        let m: aya::maps::HashMap<MapData, u32, EpVal> =
            aya::maps::HashMap::try_from(Map::HashMap(d)).map_err(rd(&p))?;
        for kv in m.iter() {
            let (k, v) = kv.map_err(rd(&p))?;
            out.eps.insert(k, v);
        }
    }
    {
        let (d, p) = open(pins, MAP_ROUTES)?;
        let m: aya::maps::LpmTrie<MapData, Addr, RouteVal> =
            aya::maps::LpmTrie::try_from(Map::LpmTrie(d)).map_err(rd(&p))?;
        for kv in m.iter() {
            let (k, v) = kv.map_err(rd(&p))?;
            out.routes.insert((k.prefix_len(), k.data().0), v);
        }
    }
    {
        let (d, p) = open(pins, MAP_POLICY)?;
        let m: aya::maps::LpmTrie<MapData, PolMatch, PolVal> =
            aya::maps::LpmTrie::try_from(Map::LpmTrie(d)).map_err(rd(&p))?;
        for kv in m.iter() {
            let (k, v) = kv.map_err(rd(&p))?;
            let d = k.data();
            out.policy.insert(
                (
                    u32::from_be(d.ep_id),
                    u32::from_be(d.remote_id),
                    d.dir,
                    d.proto,
                    u16::from_be(d.port),
                    k.prefix_len(),
                ),
                v,
            );
        }
    }
    {
        let (d, p) = open(pins, MAP_NAT_FE)?;
        let m: aya::maps::HashMap<MapData, NatFeKey, NatFeVal> =
            aya::maps::HashMap::try_from(Map::HashMap(d)).map_err(rd(&p))?;
        for kv in m.iter() {
            let (k, v) = kv.map_err(rd(&p))?;
            out.frontends.insert(k, v);
        }
    }
    {
        let (d, p) = open(pins, MAP_NAT_BE)?;
        let m: aya::maps::HashMap<MapData, NatBeKey, NatBeVal> =
            aya::maps::HashMap::try_from(Map::HashMap(d)).map_err(rd(&p))?;
        for kv in m.iter() {
            let (k, v) = kv.map_err(rd(&p))?;
            out.backends.insert(k, v);
        }
    }
    out.maglev = maglev::read_kernel(pins)?;
    out.policy_sport = polsport::read_kernel(pins)?;
    Ok(out)
}

/// Counters of the driver.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    applies: u64,
    apply_failures: u64,
    resyncs: u64,
    resync_repairs: u64,
    conntrack_expired: u64,
    conntrack_entries: usize,
    services_only_writes: u64,
}

/// The eBPF dataplane driver (see the module docs).
pub struct BpfDriver {
    scope: String,
    pins: PinScope,
    settings: BpfSettings,
    netns: NetNs,
    dp: Option<serval_dp_bpf::Dataplane>,
    /// What the kernel maps hold, as far as we know; `None`: read them back first.
    kernel: Option<MapContents>,
    compiled: CompiledPolicy,
    /// Attached interfaces and the ifindex they had.
    attached: BTreeMap<String, u32>,
    last: Option<DesiredState>,
    drops: DropCounters,
    counters: Counters,
    timeouts: CtTimeouts,
    /// Host endpoints: their programs on host interfaces and their maps ([`hep`]).
    hep: hep::HepDriver,
    /// The uplink programs and `sv_host` ([`uplink`]).
    uplink: uplink::UplinkDriver,
    /// XDP on host interfaces ([`xdp`]).
    xdp: xdp::XdpDriver,
    /// kube-proxy's rules were checked since the last open or resync ([`kubeproxy`]).
    kube_proxy_checked: bool,
    /// Digests of the services last written, for incremental service writes
    /// ([`incremental`]); `last` holds the rest of the state, `kernel` the service maps.
    services: Option<incremental::ServiceMirror>,
    /// The service maps a resync writes when `kernel` is unknown (after a failed write: what
    /// that write meant to leave in them).
    services_for_resync: Option<ServiceMaps>,
    /// Set by a resync for its write: the service maps to write instead of rendering them
    /// (the driver keeps no copy of the frontends, see [`incremental`]).
    resync_services: Option<ServiceMaps>,
    /// The frontends the write in progress may change, when the caller knows
    /// ([`super::Dataplane::apply_services_changed`]).
    services_hint: Option<Vec<serval_calc::services::FrontendKey>>,
    /// The last write took the services-only path ([`services_only`]).
    wrote_services_only: bool,
    /// When [`BpfDriver::housekeeping`] last ran.
    housekept_at: Option<std::time::Instant>,
}

impl std::fmt::Debug for BpfDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BpfDriver")
            .field("scope", &self.scope)
            .field("settings", &self.settings)
            .field("loaded", &self.dp.is_some())
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

impl BpfDriver {
    /// A driver for the calling thread's namespace with pin scope [`thread_scope`]. Nothing
    /// is loaded before the first apply (so opening it to clean leftovers is cheap).
    pub fn new(settings: BpfSettings) -> Result<BpfDriver, DataplaneError> {
        Self::with_scope(&thread_scope(), settings)
    }

    /// A driver with an explicit pin scope.
    pub fn with_scope(scope: &str, settings: BpfSettings) -> Result<BpfDriver, DataplaneError> {
        let netns = NetNs::current().map_err(|source| bpf_err(BpfError::Netns { source }))?;
        let pins = PinScope::new(scope).map_err(|source| {
            bpf_err(BpfError::Scope {
                node: scope.to_string(),
                source: Box::new(source),
            })
        })?;
        Ok(BpfDriver {
            scope: scope.to_string(),
            pins,
            settings,
            netns,
            dp: None,
            kernel: None,
            compiled: CompiledPolicy::default(),
            attached: BTreeMap::new(),
            last: None,
            drops: DropCounters::default(),
            counters: Counters::default(),
            timeouts: CtTimeouts::default(),
            hep: hep::HepDriver::default(),
            uplink: uplink::UplinkDriver::default(),
            xdp: xdp::XdpDriver::default(),
            kube_proxy_checked: false,
            services: None,
            services_for_resync: None,
            resync_services: None,
            services_hint: None,
            wrote_services_only: false,
            housekept_at: None,
        })
    }

    /// The pin scope.
    pub fn pins(&self) -> PinScope {
        self.pins.clone()
    }

    /// The drop counters as of the last apply or resync, per reason.
    pub fn drop_counters(&self) -> DropCounters {
        self.drops
    }

    /// The compiled policy last written.
    pub fn compiled(&self) -> &CompiledPolicy {
        &self.compiled
    }

    /// How many successful writes took the services-only path ([`services_only`]).
    pub fn services_only_writes(&self) -> u64 {
        self.counters.services_only_writes
    }

    fn ensure_loaded(&mut self) -> Result<(), DataplaneError> {
        if self.dp.is_some() {
            return Ok(());
        }
        let pins = self.pins();
        let dp = serval_dp_bpf::Dataplane::load(&LoadOptions {
            pins: Some(pins.clone()),
            sizes: self.settings.sizes,
            log_level: self.settings.log_level,
        })
        .map_err(|source| {
            bpf_err(BpfError::Load {
                scope: self.scope.clone(),
                source: Box::new(source),
            })
        })?;
        tracing::info!(
            scope = %self.scope,
            pin_dir = %pins.dir().display(),
            log_level = ?self.settings.log_level,
            sizes = ?self.settings.sizes,
            "eBPF dataplane loaded (pinned maps reopened with their contents)"
        );
        for missing in NOT_YET_IN_BPF {
            tracing::warn!(feature = %missing, "not available in the eBPF dataplane yet");
        }
        self.dp = Some(dp);
        self.kernel = None;
        self.attached.clear();
        self.uplink.forget();
        ctlb::sync(
            &pins,
            &self.settings.ctlb,
            &self.settings.sizes,
            self.settings.log_level,
        );
        Ok(())
    }

    fn write(&mut self, state: &DesiredState) -> Result<Written, DataplaneError> {
        self.ensure_loaded()?;
        // Only services changed: only the service maps are written ([`services_only`]).
        self.wrote_services_only = false;
        if let Some(r) = self.write_services_only(state) {
            self.wrote_services_only = r.is_ok();
            self.counters.services_only_writes += u64::from(r.is_ok());
            return r;
        }
        let pins = self.pins();
        let compiled = compile::compile_incremental(state, &self.compiled);
        let host = HostView::read(state);
        let mut kernel = match self.kernel.take() {
            Some(k) => k,
            None => {
                self.services = None;
                read_kernel(&pins).map_err(bpf_err)?
            }
        };
        // Services incrementally when the mirror applies ([`incremental`]): the service maps
        // move from `kernel` into `want` and only the changed frontends are rendered.
        let mut incremental = None;
        let mut want = MapContents::default();
        if let Some(mirror) = self.services.as_mut() {
            let mut base = desired_base(state, &compiled, &host);
            let hint = self.services_hint.as_deref();
            incremental = incremental::services_into(mirror, state, hint, &mut kernel, &mut base);
            if incremental.is_some() {
                want = base;
            }
        }
        if incremental.is_none() {
            let prev_ids: HashMap<NatFeKey, u32> = kernel
                .frontends
                .iter()
                .map(|(k, v)| (*k, v.svc_id))
                .collect();
            want = desired_contents(state, &compiled, &host, &prev_ids);
            maglev::apply_settings(state, &mut want, &self.settings.maglev);
            if let Some(svc) = self.resync_services.take() {
                svc.into_contents(&mut want);
            }
        }
        let (delta, pending) = match incremental {
            Some((d, p)) => (Some(d), Some(p)),
            None => (None, None),
        };
        let mut w = Written::default();
        // Host endpoints: stale interfaces detached before, new ones attached after the
        // workload maps (which hold the host endpoints' policy entries).
        let mut result = self
            .hep
            .prepare(&pins, &self.netns, state, &compiled, &mut w);
        if result.is_ok() {
            result = self.write_diff(&pins, &kernel, &want, delta, &host, state, &mut w);
        }
        if result.is_ok()
            && let Some(dp) = self.dp.as_mut()
        {
            result = self
                .uplink
                .sync(dp, &pins, &self.netns, state, &self.settings, &mut w);
        }
        // After the uplink programs: a new host endpoint ingress link goes last, behind
        // theirs (their NAT undone and SV_MARK_SEEN set before host policy looks).
        if result.is_ok() {
            let opts = LoadOptions {
                pins: Some(pins.clone()),
                sizes: self.settings.sizes,
                log_level: self.settings.log_level,
            };
            result = self.hep.finish(&pins, &self.netns, &opts, state, &mut w);
        }
        match result {
            Ok(()) => {
                match (self.services.as_mut(), pending) {
                    (Some(mirror), Some(p)) => mirror.commit(p),
                    _ => {
                        self.services = Some(incremental::ServiceMirror::after_full_write(
                            state,
                            &want.frontends,
                            &want.backends,
                        ));
                    }
                }
                self.kernel = Some(want);
                self.services_for_resync = None;
                self.compiled = compiled;
                self.last = Some(incremental::without_services(state));
                w.hooks_changed += self.apply_host_features(state).map_err(bpf_err)?;
                Ok(w)
            }
            Err(e) => {
                // Unknown what the kernel holds now: read it back next time.
                self.kernel = None;
                self.services_for_resync = Some(ServiceMaps::take_from(&mut want));
                if let Some(m) = self.services.as_mut() {
                    m.invalidate();
                }
                Err(e)
            }
        }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the write's inputs, each used once; a struct would only rename them"
    )]
    fn write_diff(
        &mut self,
        pins: &PinScope,
        kernel: &MapContents,
        want: &MapContents,
        services: Option<incremental::ServiceDelta>,
        host: &HostView,
        state: &DesiredState,
        w: &mut Written,
    ) -> Result<(), DataplaneError> {
        let (pol_up, pol_del) = map_diff(&kernel.policy, &want.policy);
        let (sp_up, sp_del) = map_diff(&kernel.policy_sport, &want.policy_sport);
        let (rt_up, rt_del) = map_diff(&kernel.routes, &want.routes);
        let (ep_up, ep_del) = map_diff(&kernel.eps, &want.eps);
        // Incremental: `kernel` has no service maps (they moved into `want`), `services` says
        // what to write.
        let svc_capacity = services
            .as_ref()
            .map(|d| incremental::check_service_capacity(want, d, &self.settings.sizes));
        let ((be_up, be_del), (fe_up, fe_del)) = match services {
            Some(d) => ((d.be_up, d.be_del), (d.fe_up, d.fe_del)),
            None => (
                map_diff(&kernel.backends, &want.backends),
                map_diff(&kernel.frontends, &want.frontends),
            ),
        };
        let (mg_up, mg_del) = map_diff(&kernel.maglev, &want.maglev);
        w.rule_groups_written = pol_up
            .iter()
            .map(|(k, _)| k.0)
            .collect::<BTreeSet<_>>()
            .len();
        let kept_eps: BTreeSet<u32> = want.policy.keys().map(|k| k.0).collect();
        w.rule_groups_deleted = pol_del
            .iter()
            .map(|k| k.0)
            .filter(|ep| !kept_eps.contains(ep))
            .collect::<BTreeSet<_>>()
            .len();
        w.members_changed = pol_up.len()
            + pol_del.len()
            + sp_up.len()
            + sp_del.len()
            + rt_up.len()
            + rt_del.len()
            + ep_up.len()
            + ep_del.len()
            + be_up.len()
            + be_del.len()
            + fe_up.len()
            + fe_del.len()
            + mg_up.len()
            + mg_del.len();
        w.sets_changed = fe_up.len() + fe_del.len();

        let Some(dp) = self.dp.as_mut() else {
            return Ok(());
        };
        check_capacity(kernel, want, &self.settings.sizes).map_err(bpf_err)?;
        if let Some(r) = svc_capacity {
            r.map_err(bpf_err)?;
        }
        // Source-port tables before the verdicts that name them.
        for (k, v) in &sp_up {
            dp.set_policy_sport(&polsport::key(k), v)
                .map_err(maps_err)?;
        }
        {
            let mut m = dp.maps();
            for (k, v) in &pol_up {
                m.set_policy(&pol_key(k), v).map_err(maps_err)?;
            }
            for (k, v) in &rt_up {
                m.set_route(&route_key_of(k), v).map_err(maps_err)?;
            }
            // Hash maps in batches (one bpf(2) call per batch, in order; LPM tries above
            // stay per entry).
            m.set_endpoints(&ep_up).map_err(maps_err)?;
            m.set_backends(&be_up).map_err(maps_err)?;
            // Tables before the frontends that use them (a frontend without its table
            // falls back to the random choice, never fails); stale entries first, so a
            // replaced table never needs room in sv_maglev next to the old one.
            for k in &mg_del {
                m.remove_maglev(k).map_err(maps_err)?;
            }
            for (k, v) in &mg_up {
                m.set_maglev(k, v).map_err(maps_err)?;
            }
            m.set_frontends(&fe_up).map_err(maps_err)?;
        }

        // Attachments: every endpoint interface that exists; re-attach a re-created one.
        let wanted: BTreeMap<&str, u32> = state
            .endpoints
            .values()
            .filter_map(|(ep, _)| Some((ep.iface.as_str(), *host.ifindex.get(&ep.iface)?)))
            .collect();
        for (ifname, ifindex) in &wanted {
            if self.attached.get(*ifname) == Some(ifindex) {
                continue;
            }
            for hook in Hook::ALL {
                dp.attach(&self.netns, ifname, hook, AttachMode::Auto)
                    .map_err(|source| {
                        bpf_err(BpfError::Attach {
                            ifname: ifname.to_string(),
                            source,
                        })
                    })?;
            }
            self.attached.insert(ifname.to_string(), *ifindex);
            w.hooks_changed += 2;
        }
        {
            let mut m = dp.maps();
            m.remove_frontends(&fe_del).map_err(maps_err)?;
            m.remove_backends(&be_del).map_err(maps_err)?;
        }
        if !(be_up.is_empty() && be_del.is_empty() && fe_del.is_empty()) {
            let n = clean_affinity(pins, &want.backends).map_err(bpf_err)?;
            if n > 0 {
                tracing::debug!(entries = n, "removed affinity entries of deleted backends");
            }
        }
        // Detach interfaces no endpoint uses any more (pins of earlier runs included).
        let recorded = serval_dp_bpf::attachments(pins).map_err(|source| {
            bpf_err(BpfError::Attach {
                ifname: "*".into(),
                source,
            })
        })?;
        let stale: BTreeSet<String> = recorded
            .into_iter()
            .filter(|(_, hook, _)| Hook::ALL.contains(hook))
            .map(|(ifname, _, _)| ifname)
            .chain(self.attached.keys().cloned())
            .filter(|i| !wanted.contains_key(i.as_str()))
            .collect();
        for ifname in stale {
            for hook in Hook::ALL {
                if serval_dp_bpf::detach(pins, Some(&self.netns), &ifname, hook).map_err(
                    |source| {
                        bpf_err(BpfError::Attach {
                            ifname: ifname.clone(),
                            source,
                        })
                    },
                )? {
                    w.hooks_changed += 1;
                }
            }
            self.attached.remove(&ifname);
        }
        let mut m = dp.maps();
        for k in &ep_del {
            m.remove_endpoint(*k).map_err(maps_err)?;
        }
        for k in &rt_del {
            m.remove_route(&route_key_of(k)).map_err(maps_err)?;
        }
        for k in &pol_del {
            m.remove_policy(&pol_key(k)).map_err(maps_err)?;
        }
        for k in &sp_del {
            dp.remove_policy_sport(&polsport::key(k))
                .map_err(maps_err)?;
        }
        Ok(())
    }

    /// Expires idle conntrack entries and reads the drop counters, logging reasons that grew.
    fn housekeeping(&mut self) {
        self.housekept_at = Some(std::time::Instant::now());
        self.xdp.housekeeping();
        let Some(dp) = self.dp.as_mut() else { return };
        let mut m = dp.maps();
        match m.expire_conntrack(&self.timeouts, serval_dp_bpf::monotonic_now_ns()) {
            Ok(r) => {
                self.counters.conntrack_expired += r.removed as u64;
                self.counters.conntrack_entries = r.examined - r.removed;
                if r.removed > 0 {
                    tracing::debug!(
                        examined = r.examined,
                        removed = r.removed,
                        "conntrack cleaner expired idle flows"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "conntrack cleaner failed"),
        }
        match m.drop_counters() {
            Ok(now) => {
                for reason in 0..SV_DROP_REASONS {
                    let (before, after) = (self.drops.get(reason), now.get(reason));
                    if after != before {
                        tracing::info!(
                            reason = drop_reason_name(reason),
                            dropped = after,
                            since_last = after.saturating_sub(before),
                            "eBPF dataplane drops"
                        );
                    }
                }
                self.drops = now;
            }
            Err(e) => tracing::warn!(error = %e, "reading eBPF drop counters failed"),
        }
    }
}

impl super::Dataplane for BpfDriver {
    fn name(&self) -> &'static str {
        DataplaneKind::Bpf.as_str()
    }

    fn apply(&mut self, state: &DesiredState) -> Result<Written, DataplaneError> {
        self.counters.applies += 1;
        let r = self.write(state);
        if r.is_err() {
            self.counters.apply_failures += 1;
        } else if !(self.wrote_services_only
            && self
                .housekept_at
                .is_some_and(|t| t.elapsed() < SERVICES_ONLY_HOUSEKEEPING))
        {
            // The conntrack sweep and the drop counters walk maps whose size has nothing to
            // do with the change: a burst of services-only writes runs them at most every
            // SERVICES_ONLY_HOUSEKEEPING.
            self.housekeeping();
        }
        r
    }

    fn apply_services_changed(
        &mut self,
        state: &DesiredState,
        frontends: Vec<serval_calc::services::FrontendKey>,
    ) -> Result<Written, DataplaneError> {
        self.services_hint = Some(frontends);
        let r = self.apply(state);
        self.services_hint = None;
        r
    }

    fn resync(&mut self) -> Result<Written, DataplaneError> {
        self.counters.resyncs += 1;
        let Some(state) = self.last.clone() else {
            return Ok(Written::default());
        };
        // The services: the service maps last written (the driver's copy of the kernel's, or
        // after a failed write what it meant to write), not rendered again.
        self.resync_services = self
            .kernel
            .take()
            .map(|mut k| ServiceMaps::take_from(&mut k))
            .or_else(|| self.services_for_resync.take());
        // Read everything back: entries changed behind our back are rewritten, extra ones
        // deleted; attachments whose pin vanished are re-made.
        self.kernel = None;
        self.xdp.invalidate();
        self.kube_proxy_checked = false;
        let pins = self.pins();
        if let Ok(recorded) = serval_dp_bpf::attachments(&pins) {
            // An interface counts as attached only with both hooks recorded.
            let hooks = |ifname: &str| {
                Hook::ALL
                    .iter()
                    .all(|h| recorded.iter().any(|(i, rh, _)| i == ifname && rh == h))
            };
            self.attached.retain(|i, _| hooks(i));
        }
        let w = self.write(&state);
        // Not consumed (the write failed before rendering): kept for the next resync.
        if let Some(left) = self.resync_services.take()
            && self.services_for_resync.is_none()
        {
            self.services_for_resync = Some(left);
        }
        let w = w?;
        ctlb::repair(
            &pins,
            &self.settings.ctlb,
            &self.settings.sizes,
            self.settings.log_level,
        );
        if !w.is_empty() {
            self.counters.resync_repairs += 1;
        }
        self.housekeeping();
        Ok(w)
    }

    fn cleanup(&mut self) -> Result<Written, DataplaneError> {
        let pins = self.pins();
        // Drop our handles first: only the pins keep programs and maps alive.
        self.dp = None;
        self.hep.forget();
        self.uplink.forget();
        self.xdp.forget();
        self.kernel = None;
        self.attached.clear();
        self.last = None;
        self.services = None;
        self.services_for_resync = None;
        let r = serval_dp_bpf::cleanup(&pins, Some(&self.netns)).map_err(|source| {
            bpf_err(BpfError::Cleanup {
                scope: self.scope.clone(),
                source,
            })
        })?;
        Ok(Written {
            hooks_changed: r.detached.len(),
            sets_changed: r.maps_removed,
            ..Written::default()
        })
    }

    fn stats_now(&mut self) -> DataplaneStats {
        let mut s = self.stats();
        // The drop counters as they are now (the logged ones stay those of the last
        // housekeeping, so its "since_last" is not disturbed).
        if let Some(dp) = self.dp.as_mut()
            && let Ok(now) = dp.maps().drop_counters()
        {
            s.drops = now.0.iter().sum::<u64>() + self.xdp.drops();
            s.drop_counters = now;
        }
        s
    }

    fn stats(&self) -> DataplaneStats {
        let k = self.kernel.as_ref();
        DataplaneStats {
            applies: self.counters.applies,
            apply_failures: self.counters.apply_failures,
            resyncs: self.counters.resyncs,
            resync_repairs: self.counters.resync_repairs,
            rule_groups: k.map_or(0, |k| k.eps.len()),
            rules: k.map_or(0, |k| k.policy.len()),
            sets: k.map_or(0, |k| k.frontends.len()),
            set_members: k.map_or(0, |k| k.routes.len() + k.backends.len()),
            drops: self.drops.0.iter().sum::<u64>() + self.xdp.drops(),
            drop_counters: self.drops,
            conntrack_entries: self.counters.conntrack_entries,
            conntrack_expired: self.counters.conntrack_expired,
        }
    }
}

#[cfg(test)]
mod tests {
    use serval_calc::{Model, desired_state};
    use serval_dp_bpf::abi::{
        SV_DIR_EGRESS, SV_DIR_INGRESS, SV_NAT_BE_F_LOCAL, SV_NAT_FE_F_AFFINITY,
        SV_NAT_FE_F_INT_LOCAL, SV_VERDICT_ALLOW,
    };
    use serval_model::{Resource, parse_documents};

    use super::*;

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: p}
spec: {cidr: 10.244.0.0/16, natOutgoing: true}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a, tier: web}}
spec: {nodeName: n1, containers: [{name: c, ports: [{containerPort: 80}]}]}
status: {phase: Running, podIPs: [{ip: 10.244.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b, tier: web}}
spec: {nodeName: n2, containers: [{name: c, ports: [{containerPort: 80}]}]}
status: {phase: Running, podIPs: [{ip: 10.244.1.2}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  clusterIP: 10.96.0.10
  selector: {tier: web}
  sessionAffinity: ClientIP
  internalTrafficPolicy: Local
  ports: [{port: 8080, targetPort: 80}]
"#;

    fn model(extra: &str) -> Model {
        let mut rs = parse_documents("test", &format!("{CLUSTER}{extra}")).unwrap();
        let weps: Vec<Resource> = rs
            .iter()
            .filter_map(|r| match r {
                Resource::Pod(p) => {
                    let (node, ip) = if p.metadata.name == "a" {
                        ("n1", "10.244.0.1/32")
                    } else {
                        ("n2", "10.244.1.2/32")
                    };
                    let mut w = serval_model::workloadendpoint::WorkloadEndpoint::for_pod(
                        p,
                        node,
                        "cid",
                        &format!("sv{}", p.metadata.name),
                        vec![ip.parse().unwrap()],
                    );
                    w.spec.ready = true;
                    Some(Resource::WorkloadEndpoint(w))
                }
                _ => None,
            })
            .collect();
        rs.extend(weps);
        Model::from_resources(rs)
    }

    fn contents(extra: &str, prev: &HashMap<NatFeKey, u32>) -> (MapContents, CompiledPolicy) {
        let state = desired_state(&model(extra), Some("n1"));
        let compiled = compile::compile(&state);
        let host = HostView {
            ifindex: [("sva".to_string(), 7)].into_iter().collect(),
            addrs: vec!["172.31.0.11".parse().unwrap()],
        };
        (desired_contents(&state, &compiled, &host, prev), compiled)
    }

    fn ep_a(c: &CompiledPolicy) -> u32 {
        *c.endpoints.values().next().unwrap()
    }

    #[test]
    fn an_endpoint_without_policy_gets_the_explicit_allow() {
        let (m, c) = contents("", &HashMap::new());
        let ep = ep_a(&c);
        assert_eq!(m.eps.get(&7).map(|e| e.ep_id), Some(ep));
        for dir in [SV_DIR_INGRESS, SV_DIR_EGRESS] {
            let v = m
                .policy
                .get(&(ep, 0, dir, 0, 0, 72))
                .expect("prefix-72 entry");
            assert_eq!(v.verdict, SV_VERDICT_ALLOW);
        }
    }

    #[test]
    fn remote_blocks_and_the_workloads_inside_them_name_their_node_as_next_hop() {
        let nodes = "---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: n1}\nspec: {bgp: {ipv4Address: 192.168.0.1/24, ipv6Address: \"fd01::1/64\"}}\n---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: n2}\nspec: {bgp: {ipv4Address: 192.168.0.2/24, ipv6Address: \"fd01::2/64\"}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: from-b, namespace: x}\nspec: {podSelector: {matchLabels: {app: a}}, ingress: [{from: [{podSelector: {matchLabels: {app: b}}}]}]}\n";
        let mut m = model(nodes);
        for (block, node) in [
            ("10.244.0.0/26", "n1"),
            ("10.244.1.0/26", "n2"),
            ("fd00:1::/122", "n2"),
            ("10.244.2.0/26", "gone"),
        ] {
            m.ipam_blocks
                .insert(block.parse().unwrap(), node.to_string());
        }
        let state = desired_state(&m, Some("n1"));
        let compiled = compile::compile(&state);
        let host = HostView {
            ifindex: [("sva".to_string(), 7)].into_iter().collect(),
            addrs: vec!["192.168.0.1".parse().unwrap()],
        };
        let c = desired_contents(&state, &compiled, &host, &HashMap::new());
        let route = |net: &str| {
            c.routes
                .get(&route_mirror_key(&net.parse().unwrap()))
                .copied()
        };
        let hop = |a: &str| Addr::new(a.parse().unwrap());

        for (net, node) in [
            ("10.244.1.0/26", "192.168.0.2"),
            ("10.244.1.2/32", "192.168.0.2"),
            ("fd00:1::/122", "fd01::2"),
        ] {
            let v = route(net).unwrap_or_else(|| panic!("{net} has an entry"));
            assert_ne!(v.flags & SV_RT_F_REMOTE_WORKLOAD, 0, "{net}");
            assert_eq!(v.next_hop, hop(node), "{net}");
        }
        // The pod's entry keeps its identity (the policy's peer) and the pool's flags.
        let b = route("10.244.1.2/32").unwrap();
        assert_ne!(b.identity, 0);
        assert_ne!(b.flags & SV_RT_F_IN_POOL, 0);
        // The node's own block and its workload: no remote entry, no next hop.
        for net in ["10.244.0.0/26", "10.244.0.1/32"] {
            if let Some(v) = route(net) {
                assert_eq!(v.flags & SV_RT_F_REMOTE_WORKLOAD, 0, "{net}");
                assert_eq!(v.next_hop, Addr::default(), "{net}");
            }
        }
        assert!(route("10.244.0.1/32").is_some());
        // A block of a node without a Node resource: no address to name, no entry.
        assert!(route("10.244.2.0/26").is_none());
        // The node addresses the next hops name are remote hosts (what the tunnel checks).
        let n2 = route("192.168.0.2/32").expect("node address entry");
        assert_ne!(n2.flags & SV_RT_F_REMOTE_HOST, 0);
    }

    #[test]
    fn default_deny_writes_a_deny_for_ingress_only() {
        let deny = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: d, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n";
        let (m, c) = contents(deny, &HashMap::new());
        let ep = ep_a(&c);
        let verdict = |dir| m.policy.get(&(ep, 0, dir, 0, 0, 72)).map(|v| v.verdict);
        assert_eq!(verdict(SV_DIR_INGRESS), Some(SV_VERDICT_DENY));
        assert_eq!(verdict(SV_DIR_EGRESS), Some(SV_VERDICT_ALLOW));
    }

    #[test]
    fn routes_merge_identities_with_routing_flags() {
        let (m, _) = contents("", &HashMap::new());
        let get = |net: &str| {
            m.routes
                .get(&route_mirror_key(&net.parse().unwrap()))
                .copied()
        };
        let pod = get("10.244.0.1/32").expect("local workload route");
        assert_eq!(
            pod.flags,
            SV_RT_F_LOCAL_WORKLOAD | SV_RT_F_IN_POOL | SV_RT_F_NAT_OUTGOING
        );
        assert_eq!(pod.ifindex, 7);
        let pool = get("10.244.0.0/16").expect("pool route");
        assert_eq!(pool.flags, SV_RT_F_IN_POOL | SV_RT_F_NAT_OUTGOING);
        assert_eq!(pool.identity, compile::IDENTITY_WORLD);
        assert_eq!(get("172.31.0.11/32").map(|r| r.flags), Some(SV_RT_F_HOST));
        assert_eq!(
            get("0.0.0.0/0").map(|r| r.identity),
            Some(compile::IDENTITY_WORLD)
        );
        assert_eq!(
            get("::/0").map(|r| r.identity),
            Some(compile::IDENTITY_WORLD6)
        );
    }

    #[test]
    fn services_put_local_backends_first_and_keep_their_ids() {
        let (m, _) = contents("", &HashMap::new());
        let fk = NatFeKey::new("10.96.0.10".parse().unwrap(), 8080, 6);
        let fe = *m.frontends.get(&fk).expect("ClusterIP frontend");
        assert_eq!((fe.count, fe.local_count), (2, 1));
        assert_eq!(
            fe.flags,
            SV_NAT_FE_F_AFFINITY | SV_NAT_FE_F_INT_LOCAL,
            "{fe:?}"
        );
        assert_eq!(fe.affinity_timeout_s, 10800);
        let slot = |s| {
            m.backends
                .get(&NatBeKey {
                    svc_id: fe.svc_id,
                    slot: s,
                })
                .map(|b| (b.addr.ip().to_string(), u16::from_be(b.port), b.flags))
        };
        assert_eq!(slot(0), Some(("10.244.0.1".into(), 80, SV_NAT_BE_F_LOCAL)));
        assert_eq!(slot(1), Some(("10.244.1.2".into(), 80, 0)));
        // An id the kernel already holds is kept.
        let (again, _) = contents("", &[(fk, 4242)].into_iter().collect());
        assert_eq!(again.frontends[&fk].svc_id, 4242);
        assert_eq!(again.backends.len(), 2);
    }

    #[test]
    fn workload_to_host_follows_default_endpoint_to_host_action() {
        let (m, c) = contents("", &HashMap::new());
        let ep = ep_a(&c);
        let host = m
            .routes
            .get(&route_mirror_key(&"172.31.0.11/32".parse().unwrap()))
            .expect("host route");
        assert_eq!(host.identity, FIRST_HOST_IDENTITY);
        let egress = m
            .policy
            .get(&(ep, FIRST_HOST_IDENTITY, SV_DIR_EGRESS, 0, 0, 72));
        assert_eq!(egress.map(|v| v.verdict), Some(SV_VERDICT_DENY), "Drop");
        // Host to workload: no entry of its own, so the ANY entries (allow) decide.
        assert!(
            !m.policy
                .contains_key(&(ep, FIRST_HOST_IDENTITY, SV_DIR_INGRESS, 0, 0, 72))
        );

        let accept = "---\napiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {name: default}\nspec: {defaultEndpointToHostAction: Accept}\n";
        let (m, c) = contents(accept, &HashMap::new());
        let ep = ep_a(&c);
        assert!(
            !m.policy
                .keys()
                .any(|k| k.0 == ep && k.1 == FIRST_HOST_IDENTITY),
            "Accept: the egress policy (none: allow through ANY) decides"
        );
    }

    fn be(addr: [u8; 16], port: u16) -> NatBeVal {
        NatBeVal {
            addr: Addr(addr),
            port,
            ..NatBeVal::default()
        }
    }

    #[test]
    fn capacity_counts_old_and_new_keys_and_names_the_setting() {
        let key = |svc_id, slot| NatBeKey { svc_id, slot };
        let kernel = MapContents {
            backends: [(key(1, 0), be([1; 16], 80)), (key(1, 1), be([2; 16], 80))]
                .into_iter()
                .collect(),
            ..MapContents::default()
        };
        // One kept (value changed), one deleted, one added: the peak is 3, not 2.
        let want = MapContents {
            backends: [(key(1, 0), be([3; 16], 80)), (key(2, 0), be([4; 16], 80))]
                .into_iter()
                .collect(),
            ..MapContents::default()
        };
        let mut sizes = MapSizes {
            nat_backend: 3,
            ..MapSizes::default()
        };
        check_capacity(&kernel, &want, &sizes).expect("3 entries fit a map of 3");
        sizes.nat_backend = 2;
        let err = check_capacity(&kernel, &want, &sizes).expect_err("3 entries overflow 2");
        match &err {
            BpfError::MapFull {
                map,
                needed,
                max_entries,
                field,
            } => {
                assert_eq!(*map, MAP_NAT_BE);
                assert_eq!(*needed, 3);
                assert_eq!(*max_entries, 2);
                assert!(field.contains("bpfMapSizeNATBackend"), "{field}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("bpfMapSizeNATBackend"), "{err}");
    }

    #[test]
    fn stale_affinity_selects_entries_of_removed_backends() {
        let backends: BeMap = [
            (NatBeKey { svc_id: 7, slot: 0 }, be([1; 16], 80)),
            (NatBeKey { svc_id: 8, slot: 0 }, be([2; 16], 80)),
        ]
        .into_iter()
        .collect();
        let aff = |client: u8, svc_id, addr: u8, port| {
            (
                NatAffKey {
                    client: Addr([client; 16]),
                    svc_id,
                },
                NatAffVal {
                    addr: Addr([addr; 16]),
                    port,
                    ..NatAffVal::default()
                },
            )
        };
        let entries = vec![
            aff(10, 7, 1, 80), // live
            aff(11, 7, 2, 80), // backend of another service, not of 7
            aff(12, 7, 1, 81), // wrong port
            aff(13, 9, 1, 80), // service gone
            aff(14, 8, 2, 80), // live
        ];
        let mut stale: Vec<u8> = stale_affinity(entries, &backends)
            .into_iter()
            .map(|k| k.client.0[0])
            .collect();
        stale.sort();
        assert_eq!(stale, vec![11, 12, 13]);
    }

    #[test]
    fn map_diff_upserts_changes_and_deletes_extras() {
        let old: HashMap<u32, u32> = [(1, 1), (2, 2), (3, 3)].into_iter().collect();
        let new: HashMap<u32, u32> = [(1, 1), (2, 5), (4, 4)].into_iter().collect();
        let (mut up, mut del) = map_diff(&old, &new);
        up.sort();
        del.sort();
        assert_eq!(up, vec![(2, 5), (4, 4)]);
        assert_eq!(del, vec![3]);
    }

    #[test]
    fn scopes_are_bpffs_safe() {
        assert_eq!(scope_name("sv-L-node1"), "sv-L-node1");
        assert_eq!(scope_name("node.example.com"), "node_example_com");
        assert_eq!(scope_name(&"x".repeat(80)).len(), 64);
        assert!(PinScope::new(&scope_name("a.b/c d")).is_ok());
    }

    #[test]
    fn felix_settings_select_sizes_and_the_debug_build() {
        let mut f = FelixSettings {
            bpf_map_size_conntrack: 1000,
            ..FelixSettings::default()
        };
        let s = BpfSettings::from_felix(&f);
        assert_eq!(s.sizes.conntrack, 1000);
        assert_eq!(s.log_level, LogLevel::Off);
        f.bpf_log_level = BpfLogLevel::Debug;
        assert_eq!(BpfSettings::from_felix(&f).log_level, LogLevel::Debug);
    }
}
