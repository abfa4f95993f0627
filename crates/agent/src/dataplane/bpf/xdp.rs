//! XDP on host interfaces (FelixConfiguration `xdpEnabled`) for the eBPF driver: renders
//! [`DesiredState::xdp`] (the untracked deny rules [`serval_calc::xdp`] can express) and the
//! failsafe inbound ports into the maps of the XDP program ([`serval_dp_bpf::xdp`]) and
//! attaches it to the host interfaces of the node's host endpoints.
//!
//! - Loaded lazily, only when there is something to enforce (xdpEnabled and at least one
//!   blocklist entry); maps and links are pinned in the driver's scope, so a restarted agent
//!   re-points the links at its new program and reconciles the maps (diff: upserts, attach,
//!   detach, deletes).
//! - With xdpEnabled false, or no entries left, every XDP link of the scope is detached and
//!   the XDP maps are removed; [`serval_dp_bpf::cleanup`] (switching dataplanes) removes them
//!   too.
//! - Rules XDP cannot express are left to the tc path; each is logged once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use serval_calc::DesiredState;
use serval_calc::xdp::{XdpIface, resolve_interfaces};
use serval_dp_bpf::abi::{XdpBlVal, xdp_bl_key, xdp_fs_key};
use serval_dp_bpf::xdp::{self as bpf_xdp, Blocklist, FailsafeSet};
use serval_dp_bpf::{LoadOptions, LogLevel, PinScope, XdpDataplane, XdpError, XdpStats};
use serval_sys::NetNs;

/// What the XDP maps hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct XdpContents {
    pub blocklist: Blocklist,
    pub failsafe: FailsafeSet,
}

/// The node's interfaces with their addresses (the calling thread's namespace).
pub fn host_interfaces() -> BTreeMap<String, (u32, Vec<IpAddr>)> {
    let mut out: BTreeMap<String, (u32, Vec<IpAddr>)> = BTreeMap::new();
    if let Ok(ifs) = nix::net::if_::if_nameindex() {
        for i in ifs.iter() {
            if let Ok(name) = i.name().to_str() {
                out.insert(name.to_string(), (i.index(), Vec::new()));
            }
        }
    }
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(sa) = a.address else { continue };
            let ip = if let Some(v4) = sa.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else if let Some(v6) = sa.as_sockaddr_in6() {
                IpAddr::V6(v6.ip())
            } else {
                continue;
            };
            if let Some((_, list)) = out.get_mut(&a.interface_name) {
                list.push(ip);
            }
        }
    }
    out
}

/// 64-bit FNV-1a folded to 32 bits (a stable rule id for logs).
fn rule_id(s: &str) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h ^ (h >> 32)) as u32
}

/// The interfaces to attach to (name → ifindex) and the map contents, for `state`: pure.
pub fn desired(
    state: &DesiredState,
    host: &BTreeMap<String, (u32, Vec<IpAddr>)>,
) -> (BTreeMap<String, u32>, XdpContents) {
    let mut out = XdpContents::default();
    if !state.xdp.active() {
        return (BTreeMap::new(), out);
    }
    let workloads: BTreeSet<String> = state
        .endpoints
        .values()
        .map(|(ep, _)| ep.iface.clone())
        .collect();
    let addrs: BTreeMap<String, Vec<IpAddr>> = host
        .iter()
        .map(|(n, (_, a))| (n.clone(), a.clone()))
        .collect();
    let ifaces: BTreeMap<String, u32> = resolve_interfaces(&state.xdp, &addrs, &workloads)
        .into_iter()
        .filter_map(|n| Some((n.clone(), host.get(&n)?.0)))
        .collect();
    for (e, rule) in &state.xdp.entries {
        let indexes: Vec<u32> = match &e.iface {
            XdpIface::All => vec![0],
            XdpIface::Named(n) => ifaces.get(n).copied().into_iter().collect(),
            XdpIface::ByAddrs(want) => host
                .iter()
                .filter(|(n, (_, a))| ifaces.contains_key(*n) && a.iter().any(|x| want.contains(x)))
                .map(|(_, (i, _))| *i)
                .collect(),
        };
        for ifindex in indexes {
            let k = xdp_bl_key(ifindex, e.proto, e.port, e.src.addr(), e.src.prefix_len());
            out.blocklist
                .entry((k.prefix_len(), k.data()))
                .or_insert(XdpBlVal {
                    rule_id: rule_id(rule),
                    pad: 0,
                });
        }
    }
    for fs in &state.failsafe.inbound {
        let k = xdp_fs_key(
            fs.protocol.number(),
            fs.port,
            fs.net.map(|n| (n.trunc().addr(), n.prefix_len())),
        );
        out.failsafe.insert((k.prefix_len(), k.data()), 1);
    }
    (ifaces, out)
}

fn diff<K: std::hash::Hash + Eq + Copy, V: PartialEq + Copy>(
    old: &HashMap<K, V>,
    new: &HashMap<K, V>,
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

/// The XDP part of the eBPF driver.
#[derive(Debug, Default)]
pub struct XdpDriver {
    dp: Option<XdpDataplane>,
    /// What the maps hold, as far as we know; `None`: read them back first.
    kernel: Option<XdpContents>,
    /// Attached interfaces and the ifindex they had.
    attached: BTreeMap<String, u32>,
    /// Skipped rules already logged.
    logged: BTreeSet<String>,
    stats: XdpStats,
}

impl XdpDriver {
    /// Forget what the maps hold (resync: read them back; attachments are checked against
    /// their pins at the next apply).
    pub fn invalidate(&mut self) {
        self.kernel = None;
    }

    /// Packets dropped at XDP (as of the last read).
    pub fn drops(&self) -> u64 {
        self.stats.drops()
    }

    /// The counters as of the last read.
    pub fn stats(&self) -> XdpStats {
        self.stats
    }

    /// Makes the kernel hold the XDP part of `state`; returns the number of attachments
    /// changed.
    pub fn apply(
        &mut self,
        pins: &PinScope,
        netns: &NetNs,
        log_level: LogLevel,
        state: &DesiredState,
    ) -> Result<usize, XdpError> {
        for why in &state.xdp.skipped {
            if self.logged.insert(why.clone()) {
                tracing::warn!(rule = %why, "untracked rule not enforced at XDP (left to the tc path)");
            }
        }
        let host = host_interfaces();
        let (wanted, want) = desired(state, &host);
        if wanted.is_empty() {
            return self.remove(pins);
        }
        if self.dp.is_none() {
            let dp = XdpDataplane::load(&LoadOptions {
                pins: Some(pins.clone()),
                log_level,
                ..LoadOptions::default()
            })?;
            tracing::info!(scope = pins.scope(), "XDP program loaded (host interfaces)");
            self.dp = Some(dp);
            self.kernel = None;
            self.attached.clear();
        }
        let Some(dp) = self.dp.as_mut() else {
            return Ok(0);
        };
        let kernel = match self.kernel.take() {
            Some(k) => k,
            None => XdpContents {
                blocklist: dp.blocklist()?,
                failsafe: dp.failsafe()?,
            },
        };
        let (bl_up, bl_del) = diff(&kernel.blocklist, &want.blocklist);
        let (fs_up, fs_del) = diff(&kernel.failsafe, &want.failsafe);
        for ((len, m), _) in &fs_up {
            dp.set_failsafe(&aya::maps::lpm_trie::Key::new(*len, *m))?;
        }
        for ((len, m), v) in &bl_up {
            dp.set_block(&aya::maps::lpm_trie::Key::new(*len, *m), v)?;
        }
        // An interface counts as attached only while its pinned link exists (drift repair).
        let recorded = bpf_xdp::attachments(pins)?;
        self.attached.retain(|i, _| recorded.contains(i));
        let mut changed = 0;
        for (ifname, ifindex) in &wanted {
            if self.attached.get(ifname) == Some(ifindex) {
                continue;
            }
            let mode = dp.attach(netns, ifname)?;
            tracing::info!(
                ifname,
                mode = mode.name(),
                "XDP blocklist enforced on host interface"
            );
            self.attached.insert(ifname.clone(), *ifindex);
            changed += 1;
        }
        let stale: BTreeSet<String> = recorded
            .into_iter()
            .chain(self.attached.keys().cloned())
            .filter(|i| !wanted.contains_key(i))
            .collect();
        for ifname in stale {
            if bpf_xdp::detach(pins, &ifname)? {
                changed += 1;
            }
            self.attached.remove(&ifname);
        }
        for (len, m) in &bl_del {
            dp.remove_block(&aya::maps::lpm_trie::Key::new(*len, *m))?;
        }
        for (len, m) in &fs_del {
            dp.remove_failsafe(&aya::maps::lpm_trie::Key::new(*len, *m))?;
        }
        if !(bl_up.is_empty() && bl_del.is_empty()) {
            tracing::info!(
                entries = want.blocklist.len(),
                added_or_changed = bl_up.len(),
                removed = bl_del.len(),
                "XDP blocklist updated"
            );
        }
        self.kernel = Some(want);
        Ok(changed)
    }

    /// Detaches every XDP link of the scope and removes the XDP maps (nothing to enforce,
    /// or xdpEnabled false).
    fn remove(&mut self, pins: &PinScope) -> Result<usize, XdpError> {
        self.dp = None;
        self.kernel = None;
        self.attached.clear();
        let detached = bpf_xdp::cleanup_links(pins)?;
        let maps = bpf_xdp::remove_maps(pins)?;
        if !detached.is_empty() || maps > 0 {
            tracing::info!(interfaces = ?detached, maps, "XDP removed (xdpEnabled false or no untracked deny rule XDP can enforce)");
        }
        Ok(detached.len())
    }

    /// Drops our handles (the caller removes the scope's pins, XDP ones included).
    pub fn forget(&mut self) {
        self.dp = None;
        self.kernel = None;
        self.attached.clear();
    }

    /// Reads the counters, logging those that grew.
    pub fn housekeeping(&mut self) {
        let Some(dp) = self.dp.as_mut() else { return };
        match dp.stats() {
            Ok(now) => {
                for (i, (after, before)) in now.0.iter().zip(self.stats.0.iter()).enumerate() {
                    if after != before {
                        tracing::info!(
                            counter = serval_dp_bpf::abi::xdp_stat_name(i as u32),
                            packets = after,
                            since_last = after.saturating_sub(*before),
                            "XDP counters"
                        );
                    }
                }
                self.stats = now;
            }
            Err(e) => tracing::warn!(error = %e, "reading XDP counters failed"),
        }
    }
}

impl super::BpfDriver {
    /// The XDP counters (blocklist and malformed drops, failsafe passes) as of the last apply
    /// or resync, like [`super::BpfDriver::drop_counters`] for the tc programs.
    pub fn xdp_counters(&self) -> XdpStats {
        self.xdp.stats()
    }

    /// The host-interface parts of an apply: XDP (an error fails the apply, which is retried)
    /// and, once per open and per resync, kube-proxy coexistence (an error is logged and
    /// retried at the next resync). Returns the attachments changed.
    pub(super) fn apply_host_features(
        &mut self,
        state: &DesiredState,
    ) -> Result<usize, super::BpfError> {
        let pins = self.pins();
        let changed = self
            .xdp
            .apply(&pins, &self.netns, self.settings.log_level, state)
            .map_err(|source| super::BpfError::Xdp { source })?;
        if self.settings.kube_proxy_cleanup && !self.kube_proxy_checked {
            match super::kubeproxy::cleanup(&serval_dp_iptables::Exec::current()) {
                Ok(_) => self.kube_proxy_checked = true,
                Err(e) => {
                    tracing::warn!(error = %e, "could not remove kube-proxy's rules; retrying at the next resync")
                }
            }
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use serval_calc::{Model, desired_state};
    use serval_dp_bpf::abi::{SV_XDP_BL_PREFIX_BASE, SV_XDP_FS_PREFIX_BASE};
    use serval_model::parse_documents;

    use super::*;

    fn state(felix: &str) -> DesiredState {
        let yaml = format!(
            r#"
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {{name: n1-eth0, labels: {{role: edge}}}}
spec: {{node: n1, interfaceName: eth0}}
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {{name: n1-all, labels: {{role: all}}}}
spec: {{node: n1, interfaceName: "*"}}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: block}}
spec:
  selector: role == 'edge'
  doNotTrack: true
  applyOnForward: true
  ingress:
  - action: Deny
    source: {{nets: [10.9.0.0/16]}}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: block-all}}
spec:
  selector: role == 'all'
  doNotTrack: true
  applyOnForward: true
  ingress:
  - action: Deny
    protocol: UDP
    source: {{nets: ["fd00:9::/64"]}}
    destination: {{ports: [53]}}
{felix}"#
        );
        let model = Model::from_resources(parse_documents("t", &yaml).unwrap());
        desired_state(&model, Some("n1"))
    }

    fn host() -> BTreeMap<String, (u32, Vec<IpAddr>)> {
        [
            ("lo", 1, vec!["127.0.0.1"]),
            ("eth0", 2, vec!["172.18.0.2"]),
            ("eth1", 3, vec![]),
        ]
        .into_iter()
        .map(|(n, i, a)| {
            (
                n.to_string(),
                (i, a.iter().map(|x| x.parse().unwrap()).collect()),
            )
        })
        .collect()
    }

    #[test]
    fn entries_are_keyed_by_interface_and_failsafe_ports_are_written() {
        let s = state("");
        let (ifaces, c) = desired(&s, &host());
        assert_eq!(
            ifaces.into_iter().collect::<Vec<_>>(),
            vec![("eth0".to_string(), 2), ("eth1".to_string(), 3)],
            "eth0 (named) and every non-loopback interface (*)"
        );
        let mut keys: Vec<(u32, u32, u8, u16)> = c
            .blocklist
            .keys()
            .map(|(len, m)| (*len, u32::from_be(m.ifindex), m.proto, u16::from_be(m.port)))
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            vec![
                (SV_XDP_BL_PREFIX_BASE + 64, 0, 17, 53),
                (SV_XDP_BL_PREFIX_BASE + 96 + 16, 2, 0, 0),
            ]
        );
        // Calico's default failsafe inbound ports include tcp:22.
        assert!(
            c.failsafe
                .keys()
                .any(|(len, m)| *len == SV_XDP_FS_PREFIX_BASE
                    && m.proto == 6
                    && u16::from_be(m.port) == 22),
            "{:?}",
            c.failsafe.keys()
        );
    }

    #[test]
    fn xdp_disabled_wants_nothing() {
        let s = state(
            "---\napiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {name: default}\nspec: {xdpEnabled: false}\n",
        );
        let (ifaces, c) = desired(&s, &host());
        assert!(ifaces.is_empty());
        assert!(c.blocklist.is_empty() && c.failsafe.is_empty());
    }
}
