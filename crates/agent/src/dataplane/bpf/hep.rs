//! Host endpoints in the eBPF dataplane: the programs of `bpf/serval_hep.c` on the host
//! interfaces the node's HostEndpoints name, their interface and failsafe maps.
//!
//! - **Interfaces.** A host endpoint with `interfaceName: NAME` polices NAME; one with only
//!   `expectedIPs` polices the interfaces holding those addresses; `interfaceName: '*'` (or
//!   neither) polices every other Ethernet interface of the node except workload veths (not
//!   `lo`, not L3 tunnels: the programs parse Ethernet frames). An interface named by an
//!   endpoint is not also given to a `*` one; among endpoints of one kind the first by name
//!   wins.
//! - **Policy.** The compiler compiles every host endpoint like a workload
//!   ([`serval_calc::compile::hep`]); `sv_hep_ifaces` maps the interface to that endpoint id.
//! - **Failsafe ports** go to `sv_hep_fs` (checked by the programs before policy), from
//!   [`DesiredState::failsafe`].
//! - **Order.** Before the workload maps are written, interfaces that lost their host
//!   endpoint are detached and their entries removed; after them (the endpoint's policy
//!   entries are in `sv_policy` by then) failsafe and interface entries are written and new
//!   interfaces attached (ingress after, egress before the other Serval programs).
//! - **Reconcile.** Every write reads the object's maps and the recorded attachments back,
//!   so a resync repairs them. The object is loaded only once a host endpoint needs it.
//! - **Cleanup** is the scope's ([`serval_dp_bpf::cleanup`] detaches every hook and removes
//!   every pinned map, `sv_hep_*` included); [`HepDriver::forget`] drops our handles first.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serval_calc::DesiredState;
use serval_calc::compile::hep::{host_endpoint_key, untracked_host_endpoint_key};
use serval_calc::compile::ports::{PORT_MAX, port_blocks};
use serval_calc::compile::{self, CompiledPolicy, EntryKey, PolicyIndex, PolicyVerdict};
use serval_calc::policy::Direction;
use serval_dp_bpf::abi::{
    HepFsKey, HepFsMatch, HepIfaceVal, PolVal, SV_DIR_EGRESS, SV_DIR_INGRESS, SV_HEP_F_ALL_IFACES,
    SV_VERDICT_ALLOW, SV_VERDICT_DENY,
};
use serval_dp_bpf::{AttachMode, Hook, LoadOptions, PinScope};
use serval_model::calico::EndpointToHostAction;
use serval_sys::NetNs;

use super::{BpfError, bpf_err, maps_err};
use crate::dataplane::{DataplaneError, Written};

/// One interface of the node's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostIface {
    pub name: String,
    pub ifindex: u32,
    pub addrs: Vec<IpAddr>,
    /// An Ethernet interface (ARPHRD_ETHER): the programs parse Ethernet frames, so only
    /// these are policed (L3 tunnels and loopback are left alone).
    pub ether: bool,
}

/// `ARPHRD_ETHER`.
const ARPHRD_ETHER: u16 = 1;

/// Every interface of the calling thread's namespace, with its addresses, by name.
pub fn read_ifaces() -> Vec<HostIface> {
    let mut by_name: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    let mut ether: BTreeSet<String> = BTreeSet::new();
    if let Ok(it) = nix::ifaddrs::getifaddrs() {
        for a in it {
            let addrs = by_name.entry(a.interface_name.clone()).or_default();
            let Some(sa) = a.address else { continue };
            if let Some(link) = sa.as_link_addr() {
                if link.hatype() == ARPHRD_ETHER {
                    ether.insert(a.interface_name.clone());
                }
            } else if let Some(v4) = sa.as_sockaddr_in() {
                addrs.push(IpAddr::V4(v4.ip()));
            } else if let Some(v6) = sa.as_sockaddr_in6() {
                addrs.push(IpAddr::V6(v6.ip()));
            }
        }
    }
    by_name
        .into_iter()
        .filter_map(|(name, mut addrs)| {
            let ifindex = nix::net::if_::if_nametoindex(name.as_str()).ok()?;
            addrs.sort();
            addrs.dedup();
            Some(HostIface {
                ether: ether.contains(&name),
                name,
                ifindex,
                addrs,
            })
        })
        .collect()
}

/// The wanted `sv_hep_ifaces` contents by interface name (pure, see the module docs).
pub fn wanted_ifaces(
    state: &DesiredState,
    compiled: &CompiledPolicy,
    ifaces: &[HostIface],
) -> BTreeMap<String, (u32, HepIfaceVal)> {
    let workload: BTreeSet<&str> = state
        .endpoints
        .values()
        .map(|(ep, _)| ep.iface.as_str())
        .collect();
    let host_ifaces: Vec<&HostIface> = ifaces
        .iter()
        .filter(|i| i.ether && i.name != "lo" && !workload.contains(i.name.as_str()))
        .collect();
    // (precedence, interface) → endpoint name: named 0, by address 1, every interface 2.
    let mut claims: BTreeMap<String, (u8, String)> = BTreeMap::new();
    let mut claim = |iface: &str, rank: u8, hep: &str| {
        let e = claims
            .entry(iface.to_string())
            .or_insert((rank, hep.to_string()));
        if (rank, hep) < (e.0, e.1.as_str()) {
            *e = (rank, hep.to_string());
        }
    };
    for (name, h) in &state.host_endpoints {
        match h.iface.as_deref() {
            Some(i) if i != "*" => {
                if host_ifaces.iter().any(|hi| hi.name == i) {
                    claim(i, 0, name);
                }
            }
            None if !h.addrs.is_empty() => {
                for hi in &host_ifaces {
                    if hi.addrs.iter().any(|a| h.addrs.contains(a)) {
                        claim(&hi.name, 1, name);
                    }
                }
            }
            _ => {
                for hi in &host_ifaces {
                    claim(&hi.name, 2, name);
                }
            }
        }
    }
    claims
        .into_iter()
        .filter_map(|(iface, (rank, hep))| {
            let ep_id = *compiled.endpoints.get(&host_endpoint_key(&hep))?;
            let ifindex = host_ifaces.iter().find(|i| i.name == iface)?.ifindex;
            let flags = if rank == 2 { SV_HEP_F_ALL_IFACES } else { 0 };
            let untracked_ep_id = compiled
                .endpoints
                .get(&untracked_host_endpoint_key(&hep))
                .copied()
                .unwrap_or(0);
            let val = HepIfaceVal {
                ep_id,
                flags,
                untracked_ep_id,
            };
            Some((iface, (ifindex, val)))
        })
        .collect()
}

/// `sv_hep_fs` key bytes (prefix length, match), comparable.
type FsEntry = (u32, [u8; 20]);

fn fs_entry(prefix_len: u32, m: &HepFsMatch) -> FsEntry {
    let mut b = [0u8; 20];
    b[0] = m.dir;
    b[1] = m.proto;
    b[2..4].copy_from_slice(&m.port.to_ne_bytes());
    b[4..].copy_from_slice(&m.remote.0);
    (prefix_len, b)
}

fn fs_key(e: &FsEntry) -> HepFsKey {
    let (len, b) = e;
    let mut remote = [0u8; 16];
    remote.copy_from_slice(&b[4..]);
    aya::maps::lpm_trie::Key::new(
        *len,
        HepFsMatch {
            dir: b[0],
            proto: b[1],
            port: u16::from_ne_bytes([b[2], b[3]]),
            remote: serval_dp_bpf::abi::Addr(remote),
        },
    )
}

/// The wanted `sv_hep_fs` entries: inbound and outbound failsafe ports.
pub fn wanted_failsafe(state: &DesiredState) -> BTreeSet<FsEntry> {
    let mut out = BTreeSet::new();
    for (dir, list) in [
        (SV_DIR_INGRESS, &state.failsafe.inbound),
        (SV_DIR_EGRESS, &state.failsafe.outbound),
    ] {
        for fs in list {
            let net = fs.net.map(|n| (n.addr(), n.prefix_len()));
            let k = HepFsMatch::key(dir, fs.protocol.number(), fs.port, net);
            out.insert(fs_entry(k.prefix_len(), &k.data()));
        }
    }
    out
}

/// A pod's traffic to its own node under `defaultEndpointToHostAction: Return`, when an
/// all-interfaces (`*`, or no interfaceName) host endpoint owns the address (its
/// `expectedIPs`, as the evaluator has it): the packet arrives on the pod's veth, where only
/// the workload program runs, so the host endpoint's ingress policy (after the inbound
/// failsafe ports) is folded at compile time into the pod's egress entries for the address's
/// host identity: allowed = egress policy allows AND (failsafe OR host endpoint ingress
/// allows), for every (protocol, port).
///
/// `host_ids`: this node's addresses → the host identity the driver gave them. Returns, per
/// host identity, the complete `(ep, host identity, egress)` entry set of every workload
/// endpoint (they replace the copied ones). An identity shared by several addresses is
/// folded with the first owned one.
pub fn fold_all_interfaces_return(
    state: &DesiredState,
    compiled: &CompiledPolicy,
    index: &PolicyIndex,
    host_ids: &BTreeMap<IpAddr, u32>,
) -> BTreeMap<u32, Vec<(EntryKey, PolVal)>> {
    let mut out = BTreeMap::new();
    if !matches!(state.endpoint_to_host, EndpointToHostAction::Return) {
        return out;
    }
    // Address → the all-interfaces endpoint owning it (the last by name, as the evaluator's
    // owner map has it).
    let mut owner: BTreeMap<IpAddr, u32> = BTreeMap::new();
    for (name, h) in &state.host_endpoints {
        if h.iface.as_deref().is_some_and(|i| i != "*") {
            continue;
        }
        let Some(&hep_ep) = compiled.endpoints.get(&host_endpoint_key(name)) else {
            continue;
        };
        for a in &h.addrs {
            owner.insert(*a, hep_ep);
        }
    }
    for (addr, &h) in host_ids {
        let Some(&hep_ep) = owner.get(addr) else {
            continue;
        };
        if out.contains_key(&h) {
            continue;
        }
        let mut entries = Vec::new();
        for (key, (ep, _)) in &state.endpoints {
            let Some(&ep_id) = compiled.endpoints.get(key) else {
                continue;
            };
            let Some(pod) = ep
                .addrs
                .iter()
                .copied()
                .find(|p| p.is_ipv4() == addr.is_ipv4())
            else {
                continue;
            };
            entries.extend(fold_one(
                state, compiled, index, ep_id, h, *addr, pod, hep_ep,
            ));
        }
        out.insert(h, entries);
    }
    out
}

/// The folded entries of one workload endpoint (see [`fold_all_interfaces_return`]).
#[expect(
    clippy::too_many_arguments,
    reason = "one pod, one host address, one endpoint"
)]
fn fold_one(
    state: &DesiredState,
    compiled: &CompiledPolicy,
    index: &PolicyIndex,
    ep_id: u32,
    host_id: u32,
    host_addr: IpAddr,
    pod: IpAddr,
    hep_ep: u32,
) -> Vec<(EntryKey, PolVal)> {
    let real = index.identity(host_addr);
    let pod_id = index.identity(pod);
    let failsafe: Vec<_> = state
        .failsafe
        .inbound
        .iter()
        .filter(|f| f.net.is_none_or(|n| n.contains(&pod)))
        .collect();
    // Protocols and port breakpoints where either side's entries (or a failsafe port) can
    // change the outcome.
    let mut protos: BTreeMap<u8, BTreeSet<u32>> = [1u8, 6, 17, 58, 132, 136]
        .into_iter()
        .map(|p| (p, BTreeSet::new()))
        .collect();
    for e in &compiled.entries {
        let mine = (e.ep_id == ep_id
            && e.dir == compile::DIR_EGRESS
            && (e.remote_identity == real || e.remote_identity == compile::IDENTITY_ANY))
            || (e.ep_id == hep_ep
                && e.dir == compile::DIR_INGRESS
                && (e.remote_identity == pod_id || e.remote_identity == compile::IDENTITY_ANY));
        if !mine || e.prefix_len < compile::PREFIX_ANY_PORT {
            continue;
        }
        let bps = protos.entry(e.proto).or_default();
        if e.prefix_len > compile::PREFIX_ANY_PORT {
            let size = 1u32 << (compile::PREFIX_FULL - e.prefix_len);
            bps.insert(u32::from(e.port));
            bps.insert(u32::from(e.port) + size);
        }
    }
    for f in &failsafe {
        let bps = protos.entry(f.protocol.number()).or_default();
        bps.insert(u32::from(f.port));
        bps.insert(u32::from(f.port) + 1);
    }
    let other = (0..=255u8).find(|p| !protos.contains_key(p)).unwrap_or(255);
    let eval = |proto: u8, port: u16| -> PolVal {
        let (v, rule) = index.lookup(ep_id, Direction::Egress, host_addr, proto, port);
        if v != PolicyVerdict::Allow {
            return PolVal {
                verdict: SV_VERDICT_DENY,
                rule_id: rule,
            };
        }
        let ports = matches!(proto, 6 | 17 | 132 | 136);
        if ports
            && failsafe
                .iter()
                .any(|f| f.protocol.number() == proto && f.port == port)
        {
            return PolVal {
                verdict: SV_VERDICT_ALLOW,
                rule_id: rule,
            };
        }
        let (v, rule) = index.lookup(hep_ep, Direction::Ingress, pod, proto, port);
        PolVal {
            verdict: if v == PolicyVerdict::Allow {
                SV_VERDICT_ALLOW
            } else {
                SV_VERDICT_DENY
            },
            rule_id: rule,
        }
    };
    let base = eval(other, 0);
    let mut out = vec![(
        (
            ep_id,
            host_id,
            compile::DIR_EGRESS,
            0,
            0,
            compile::PREFIX_ANY_PROTO,
        ),
        base,
    )];
    for (proto, bps) in protos {
        let mut starts: Vec<u32> = bps.into_iter().filter(|&b| b <= PORT_MAX).collect();
        starts.push(0);
        starts.sort_unstable();
        starts.dedup();
        for (i, &first) in starts.iter().enumerate() {
            let last = starts.get(i + 1).map_or(PORT_MAX, |n| n - 1);
            let v = eval(proto, u16::try_from(first).unwrap_or(u16::MAX));
            if v == base {
                continue;
            }
            for blk in port_blocks(first, last) {
                out.push((
                    (
                        ep_id,
                        host_id,
                        compile::DIR_EGRESS,
                        proto,
                        blk.base,
                        compile::PREFIX_ANY_PORT + u32::from(blk.fixed_bits),
                    ),
                    v,
                ));
            }
        }
    }
    out
}

/// The host endpoint part of the eBPF driver (see the module docs).
#[derive(Default)]
pub struct HepDriver {
    dp: Option<serval_dp_bpf::Dataplane>,
    /// Interfaces whose programs we attached, with the ifindex they had.
    attached: BTreeMap<String, u32>,
    /// What the last [`HepDriver::prepare`] wants, for [`HepDriver::finish`].
    want: BTreeMap<String, (u32, HepIfaceVal)>,
}

impl std::fmt::Debug for HepDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HepDriver")
            .field("loaded", &self.dp.is_some())
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

fn attach_err(ifname: &str) -> impl FnOnce(serval_dp_bpf::AttachError) -> DataplaneError + '_ {
    move |source| {
        bpf_err(BpfError::Attach {
            ifname: ifname.to_string(),
            source,
        })
    }
}

impl HepDriver {
    /// Host interfaces with our programs (recorded pins of this or an earlier run).
    fn recorded(pins: &PinScope) -> Result<BTreeSet<String>, DataplaneError> {
        let rec = serval_dp_bpf::attachments(pins).map_err(attach_err("*"))?;
        Ok(rec
            .into_iter()
            .filter(|(_, h, _)| Hook::HOST.contains(h))
            .map(|(i, _, _)| i)
            .collect())
    }

    /// Step 1 of a write: computes what is wanted, detaches interfaces that lost their host
    /// endpoint (or were re-created) and removes their `sv_hep_ifaces` entries.
    pub fn prepare(
        &mut self,
        pins: &PinScope,
        netns: &NetNs,
        state: &DesiredState,
        compiled: &CompiledPolicy,
        w: &mut Written,
    ) -> Result<(), DataplaneError> {
        self.want = wanted_ifaces(state, compiled, &read_ifaces());
        let recorded = Self::recorded(pins)?;
        let stale: BTreeSet<String> = recorded
            .iter()
            .chain(self.attached.keys())
            .filter(|i| !self.want.contains_key(*i))
            .cloned()
            .collect();
        for ifname in &stale {
            for hook in Hook::HOST {
                if serval_dp_bpf::detach(pins, Some(netns), ifname, hook)
                    .map_err(attach_err(ifname))?
                {
                    w.hooks_changed += 1;
                }
            }
            self.attached.remove(ifname);
        }
        // A pin that vanished (resync) or an interface re-created: attach again.
        self.attached
            .retain(|i, idx| recorded.contains(i) && self.want.get(i).map(|w| w.0) == Some(*idx));
        if let Some(dp) = self.dp.as_mut() {
            let wanted_idx: BTreeSet<u32> = self.want.values().map(|(i, _)| *i).collect();
            for (ifindex, _) in dp.hep_ifaces().map_err(maps_err)? {
                if !wanted_idx.contains(&ifindex) {
                    dp.remove_hep_iface(ifindex).map_err(maps_err)?;
                    w.members_changed += 1;
                }
            }
        }
        Ok(())
    }

    /// Step 2, after the workload maps (and so the host endpoints' policy entries) are
    /// written: failsafe and interface entries, then attachments of new interfaces.
    pub fn finish(
        &mut self,
        pins: &PinScope,
        netns: &NetNs,
        opts: &LoadOptions,
        state: &DesiredState,
        w: &mut Written,
    ) -> Result<(), DataplaneError> {
        if self.want.is_empty() && self.dp.is_none() {
            return Ok(());
        }
        if self.dp.is_none() {
            let dp = serval_dp_bpf::Dataplane::load_hep(opts).map_err(|source| {
                bpf_err(BpfError::Load {
                    scope: pins.scope().to_string(),
                    source: Box::new(source),
                })
            })?;
            tracing::info!(scope = pins.scope(), "host endpoint programs loaded");
            self.dp = Some(dp);
        }
        let Some(dp) = self.dp.as_mut() else {
            return Ok(());
        };
        // Failsafe ports.
        let want_fs = wanted_failsafe(state);
        let have_fs: BTreeSet<FsEntry> = dp
            .hep_failsafe()
            .map_err(maps_err)?
            .iter()
            .map(|(len, m)| fs_entry(*len, m))
            .collect();
        for e in want_fs.difference(&have_fs) {
            dp.set_hep_failsafe(&fs_key(e)).map_err(maps_err)?;
            w.members_changed += 1;
        }
        for e in have_fs.difference(&want_fs) {
            dp.remove_hep_failsafe(&fs_key(e)).map_err(maps_err)?;
            w.members_changed += 1;
        }
        // Interfaces: the entry first, then the programs.
        let have: BTreeMap<u32, HepIfaceVal> =
            dp.hep_ifaces().map_err(maps_err)?.into_iter().collect();
        for (ifindex, val) in self.want.values() {
            if have.get(ifindex) != Some(val) {
                dp.set_hep_iface(*ifindex, val).map_err(maps_err)?;
                w.members_changed += 1;
            }
        }
        for (ifname, (ifindex, _)) in &self.want {
            if self.attached.get(ifname) == Some(ifindex) {
                continue;
            }
            for hook in Hook::HOST {
                dp.attach(netns, ifname, hook, AttachMode::Auto)
                    .map_err(attach_err(ifname))?;
                w.hooks_changed += 1;
            }
            self.attached.insert(ifname.clone(), *ifindex);
        }
        Ok(())
    }

    /// Drops our handles (before the scope's pins are removed).
    pub fn forget(&mut self) {
        self.dp = None;
        self.attached.clear();
        self.want.clear();
    }
}

#[cfg(test)]
mod tests {
    use serval_calc::compile::compile;
    use serval_calc::{Model, desired_state};
    use serval_model::parse_documents;

    use super::*;

    fn iface(name: &str, ifindex: u32, addrs: &[&str]) -> HostIface {
        HostIface {
            name: name.into(),
            ifindex,
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            ether: name != "lo" && name != "tun0",
        }
    }

    fn wanted(yaml: &str) -> BTreeMap<String, (u32, HepIfaceVal)> {
        let rs = parse_documents("test", yaml).unwrap();
        let state = desired_state(&Model::from_resources(rs), Some("n1"));
        let c = compile(&state);
        let ifaces = [
            iface("lo", 1, &["127.0.0.1"]),
            iface("eth0", 2, &["172.31.0.11"]),
            iface("eth1", 3, &["192.168.7.1"]),
            iface("tun0", 4, &["192.168.8.1"]),
        ];
        wanted_ifaces(&state, &c, &ifaces)
    }

    const HEPS: &str = r#"
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: a-eth0}
spec: {node: n1, interfaceName: eth0}
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: b-all}
spec: {node: n1, interfaceName: "*"}
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: c-other-node}
spec: {node: n2, interfaceName: eth1}
"#;

    #[test]
    fn named_interfaces_win_over_all_interfaces_and_lo_and_l3_devices_are_never_policed() {
        let w = wanted(HEPS);
        assert_eq!(
            w.keys().map(String::as_str).collect::<Vec<_>>(),
            ["eth0", "eth1"]
        );
        assert_eq!(w["eth0"].0, 2);
        assert_eq!(w["eth0"].1.flags, 0);
        assert_eq!(w["eth1"].1.flags, SV_HEP_F_ALL_IFACES);
        assert_ne!(w["eth0"].1.ep_id, w["eth1"].1.ep_id);
    }

    #[test]
    fn expected_ips_select_the_interface_holding_them() {
        let w = wanted(
            "apiVersion: projectcalico.org/v3\nkind: HostEndpoint\nmetadata: {name: by-ip}\nspec: {node: n1, expectedIPs: [192.168.7.1]}\n",
        );
        assert_eq!(w.keys().map(String::as_str).collect::<Vec<_>>(), ["eth1"]);
    }

    /// What the workload program reaches for (ep, identity, egress, proto, port) in `m`:
    /// longest prefix at the identity, then at ANY; a miss is a deny.
    fn lookup(m: &super::super::MapContents, ep: u32, id: u32, proto: u8, port: u16) -> u32 {
        for remote in [id, compile::IDENTITY_ANY] {
            for k in (0..=16u32).rev() {
                let masked = if k == 0 {
                    0
                } else {
                    port & (u16::MAX << (16 - k))
                };
                let key = (ep, remote, SV_DIR_EGRESS, proto, masked, 80 + k);
                if let Some(v) = m.policy.get(&key) {
                    return v.verdict;
                }
            }
            if let Some(v) = m.policy.get(&(ep, remote, SV_DIR_EGRESS, 0, 0, 72)) {
                return v.verdict;
            }
        }
        SV_VERDICT_DENY
    }

    const POD_TO_HOST: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
spec: {nodeName: n1, containers: [{name: c}]}
status: {phase: Running, podIPs: [{ip: 10.244.0.1}]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: hosts}
spec:
  selector: role == 'host'
  types: [Ingress]
  ingress: [{action: Allow, protocol: TCP, destination: {ports: [8080]}}]
"#;

    fn pod_to_host(hep_iface: &str, action: &str) -> impl Fn(u8, u16) -> u32 {
        let yaml = format!(
            "{POD_TO_HOST}---\napiVersion: projectcalico.org/v3\nkind: HostEndpoint\nmetadata: {{name: n1, labels: {{role: host}}}}\nspec: {{node: n1, interfaceName: '{hep_iface}', expectedIPs: [172.31.0.11]}}\n---\napiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {{name: default}}\nspec: {{defaultEndpointToHostAction: {action}}}\n"
        );
        let rs = parse_documents("test", &yaml).unwrap();
        let state = desired_state(&Model::from_resources(rs), Some("n1"));
        let c = compile(&state);
        let host = super::super::HostView {
            ifindex: BTreeMap::new(),
            addrs: vec!["172.31.0.11".parse().unwrap()],
        };
        let m = super::super::desired_contents(&state, &c, &host, &Default::default());
        let ep = c.endpoints[&serval_calc::endpoints::EndpointKey::new("x", "a")];
        let h = m.routes[&(
            128,
            serval_dp_bpf::abi::Addr::new("172.31.0.11".parse().unwrap()).0,
        )]
            .identity;
        assert_eq!(h, super::super::FIRST_HOST_IDENTITY);
        move |proto, port| lookup(&m, ep, h, proto, port)
    }

    #[test]
    fn return_with_an_all_interfaces_endpoint_applies_its_ingress_policy_to_pods() {
        let v = pod_to_host("*", "Return");
        assert_eq!(v(6, 8080), SV_VERDICT_ALLOW, "allowed by the host policy");
        assert_eq!(v(6, 80), SV_VERDICT_DENY, "end of the host policy's tier");
        assert_eq!(v(6, 22), SV_VERDICT_ALLOW, "inbound failsafe");
        assert_eq!(v(17, 68), SV_VERDICT_ALLOW, "inbound failsafe");
        assert_eq!(v(17, 8080), SV_VERDICT_DENY);
        assert_eq!(v(1, 8 << 8), SV_VERDICT_DENY, "ICMP: no failsafe, no rule");
    }

    #[test]
    fn return_with_a_named_interface_endpoint_accepts_and_drop_drops() {
        let v = pod_to_host("eth0", "Return");
        assert_eq!(
            v(6, 80),
            SV_VERDICT_ALLOW,
            "the eth0 endpoint does not see it"
        );
        let v = pod_to_host("*", "Drop");
        assert_eq!(v(6, 8080), SV_VERDICT_DENY);
        assert_eq!(
            v(6, 22),
            SV_VERDICT_DENY,
            "failsafe ports are host endpoint ports"
        );
        let v = pod_to_host("*", "Accept");
        assert_eq!(v(6, 80), SV_VERDICT_ALLOW);
    }

    #[test]
    fn failsafe_entries_cover_both_directions_and_round_trip() {
        let rs = parse_documents("test", HEPS).unwrap();
        let state = desired_state(&Model::from_resources(rs), Some("n1"));
        let fs = wanted_failsafe(&state);
        assert_eq!(
            fs.len(),
            state.failsafe.inbound.len() + state.failsafe.outbound.len()
        );
        assert!(fs.iter().any(|e| e.1[0] == SV_DIR_INGRESS));
        assert!(fs.iter().any(|e| e.1[0] == SV_DIR_EGRESS));
        for e in &fs {
            let k = fs_key(e);
            assert_eq!(&fs_entry(k.prefix_len(), &k.data()), e);
        }
    }
}
