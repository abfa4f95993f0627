//! The uplink programs of the eBPF dataplane (`serval_uplink_in` / `serval_uplink_out` of
//! `bpf/serval_tc.c`): on the node's uplink, the interface holding the node's address, and on
//! its VXLAN devices (`vxlan.serval`, `vxlan-v6.serval`) when they exist.
//!
//! - **Node addresses.** Per family the node's address is the first address of this node's
//!   interfaces that a Node resource names ([`NatOutgoing::node_nets`]); without one, the
//!   first global address of an interface that is not a workload veth, `lo` or a VXLAN
//!   device. Source NAT (NodePort/externalIP/LoadBalancer with externalTrafficPolicy Cluster,
//!   NAT outgoing, hairpin) uses it; it is written with FelixConfiguration `bpfPSNATPorts`
//!   to `sv_host`.
//! - **Attachments.** Both hooks ([`Hook::UPLINK`]) on every wanted interface; an interface
//!   re-created (new ifindex) or with a hook missing from the pins is attached again; an
//!   interface no longer wanted is detached. [`serval_dp_bpf::cleanup`] covers these hooks.
//!
//! - **External service mode** ([`ExternalSettings`]): FelixConfiguration
//!   `bpfExternalServiceMode` is the `SV_HOST_F_DSR` flag of `sv_host` (Tunnel without it),
//!   `bpfDSROptoutCIDRs` the LPM map `sv_dsr_optout`, kept equal to the setting by diff. A
//!   change reloads the driver (the agent compares [`super::BpfSettings`]), not the agent.
//!   What the programs do with them: `bpf/serval_tunnel.h`.
//!
//! [`NatOutgoing::node_nets`]: serval_calc::natoutgoing::NatOutgoing::node_nets

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serval_calc::DesiredState;
use serval_dp_bpf::abi::{Addr, HostVal, SV_HOST_F_DSR, SV_HOST_F_HOST_NAT, lpm_prefix_len};
use serval_dp_bpf::{AttachMode, Hook, PinScope};
use serval_model::calico::felix::{BpfExternalServiceMode, FelixSettings};
use serval_sys::NetNs;

use super::{BpfError, bpf_err, maps_err};
use crate::dataplane::{DataplaneError, Written};

/// The VXLAN devices of the routing code (IPv4 and IPv6 overlays).
pub const VXLAN_DEVICES: [&str; 2] = ["vxlan.serval", "vxlan-v6.serval"];

/// One interface of the node's namespace with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub ifindex: u32,
    pub addrs: Vec<IpAddr>,
}

/// Every interface of the calling thread's namespace, with its addresses.
pub fn read_ifaces() -> Vec<Iface> {
    let mut by_name: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    if let Ok(it) = nix::ifaddrs::getifaddrs() {
        for a in it {
            let addrs = by_name.entry(a.interface_name.clone()).or_default();
            let Some(sa) = a.address else { continue };
            if let Some(v4) = sa.as_sockaddr_in() {
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
            Some(Iface {
                name,
                ifindex,
                addrs,
            })
        })
        .collect()
}

fn is_global(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified(),
        IpAddr::V6(v6) => {
            !v6.is_loopback() && !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}

/// What the uplink programs get on this node (pure: tests run it without privileges).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UplinkPlan {
    /// The node's SNAT address per family (IPv4 first).
    pub addrs: Vec<IpAddr>,
    /// Interfaces to attach to, by name, with their ifindex.
    pub ifaces: BTreeMap<String, u32>,
}

/// The plan for `state` on a node with `ifaces` (see the module docs).
pub fn plan(state: &DesiredState, ifaces: &[Iface]) -> UplinkPlan {
    let workload: BTreeSet<&str> = state
        .endpoints
        .values()
        .map(|(ep, _)| ep.iface.as_str())
        .collect();
    let candidates: Vec<&Iface> = ifaces
        .iter()
        .filter(|i| {
            i.name != "lo"
                && !workload.contains(i.name.as_str())
                && !VXLAN_DEVICES.contains(&i.name.as_str())
        })
        .collect();
    let node_nets = &state.nat_outgoing.node_nets;
    let mut out = UplinkPlan::default();
    for v4 in [true, false] {
        let of_family = |a: &&IpAddr| a.is_ipv4() == v4 && is_global(a);
        let named = candidates.iter().find_map(|i| {
            i.addrs
                .iter()
                .filter(of_family)
                .find(|a| node_nets.iter().any(|n| n.contains(*a)))
                .map(|a| (*i, *a))
        });
        let any = || {
            candidates
                .iter()
                .find_map(|i| i.addrs.iter().find(of_family).map(|a| (*i, *a)))
        };
        if let Some((iface, addr)) = named.or_else(any) {
            out.addrs.push(addr);
            out.ifaces.insert(iface.name.clone(), iface.ifindex);
        }
    }
    for i in ifaces {
        if VXLAN_DEVICES.contains(&i.name.as_str()) {
            out.ifaces.insert(i.name.clone(), i.ifindex);
        }
    }
    out
}

/// FelixConfiguration `bpfExternalServiceMode` and `bpfDSROptoutCIDRs`: how external
/// frontends reached from outside answer when the backend is on another node (the request
/// always goes there through the NodePort tunnel, the client's address kept).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExternalSettings {
    /// DSR: the backend's node answers the client itself; else Tunnel (replies return
    /// through the receiving node).
    pub dsr: bool,
    /// Clients that get Tunnel under DSR.
    pub dsr_optout: Vec<IpNet>,
}

impl ExternalSettings {
    pub fn from_felix(f: &FelixSettings) -> Self {
        let mut dsr_optout: Vec<IpNet> = f.bpf_dsr_optout_cidrs.iter().map(IpNet::trunc).collect();
        dsr_optout.sort();
        dsr_optout.dedup();
        Self {
            dsr: f.bpf_external_service_mode == BpfExternalServiceMode::Dsr,
            dsr_optout,
        }
    }

    /// The `sv_dsr_optout` entries, as (LPM prefix length, address).
    pub fn optout_entries(&self) -> BTreeSet<(u32, [u8; 16])> {
        self.dsr_optout
            .iter()
            .map(IpNet::trunc)
            .map(|n| {
                (
                    lpm_prefix_len(n.addr(), n.prefix_len()),
                    Addr::new(n.addr()).0,
                )
            })
            .collect()
    }
}

/// The uplink part of the driver: what it wrote and attached.
#[derive(Debug, Default)]
pub struct UplinkDriver {
    host: Option<HostVal>,
    attached: BTreeMap<String, u32>,
    /// `sv_dsr_optout` as last written (`None`: read it back first).
    optout: Option<BTreeSet<(u32, [u8; 16])>>,
}

impl UplinkDriver {
    /// Our handles are gone (cleanup, reload): everything is written and checked again.
    pub fn forget(&mut self) {
        self.host = None;
        self.attached.clear();
        self.optout = None;
    }

    /// Makes `sv_dsr_optout` hold exactly the opt-out CIDRs of `external`.
    fn sync_optout(
        &mut self,
        dp: &mut serval_dp_bpf::Dataplane,
        external: &ExternalSettings,
        w: &mut Written,
    ) -> Result<(), DataplaneError> {
        let want = external.optout_entries();
        let have = match self.optout.take() {
            Some(h) => h,
            None => dp
                .maps()
                .dsr_optout()
                .map_err(maps_err)?
                .into_iter()
                .map(|(len, a)| (len, a.0))
                .collect(),
        };
        for &(len, addr) in have.difference(&want) {
            dp.maps()
                .remove_dsr_optout(len, Addr(addr))
                .map_err(maps_err)?;
            w.members_changed += 1;
        }
        for n in external.dsr_optout.iter().map(IpNet::trunc) {
            let key = (
                lpm_prefix_len(n.addr(), n.prefix_len()),
                Addr::new(n.addr()).0,
            );
            if !have.contains(&key) {
                dp.maps()
                    .set_dsr_optout(n.addr(), n.prefix_len())
                    .map_err(maps_err)?;
                w.members_changed += 1;
            }
        }
        self.optout = Some(want);
        Ok(())
    }

    /// Writes `sv_host` (`bpfPSNATPorts`, `bpfExternalServiceMode`) and `sv_dsr_optout`, and
    /// attaches/detaches the uplink programs for `state`.
    pub fn sync(
        &mut self,
        dp: &mut serval_dp_bpf::Dataplane,
        pins: &PinScope,
        netns: &NetNs,
        state: &DesiredState,
        settings: &super::BpfSettings,
        w: &mut Written,
    ) -> Result<(), DataplaneError> {
        let psnat = settings.psnat_ports;
        let external = &settings.external;
        let plan = plan(state, &read_ifaces());
        let mut host = HostVal::new(&plan.addrs, psnat);
        if external.dsr {
            host.flags |= SV_HOST_F_DSR;
        }
        host.flags |= host_nat_flag(&settings.ctlb);
        // The opt-out prefixes before the mode flag: DSR never applies to an opted-out client.
        self.sync_optout(dp, external, w)?;
        if self.host != Some(host) {
            dp.maps().set_host(&host).map_err(maps_err)?;
            tracing::info!(
                addrs = ?plan.addrs,
                psnat_ports = ?psnat,
                external_service_mode = if external.dsr { "DSR" } else { "Tunnel" },
                dsr_optout = ?external.dsr_optout,
                "eBPF uplink programs: node addresses, SNAT ports, external service mode"
            );
            self.host = Some(host);
            w.members_changed += 1;
        }
        let recorded = serval_dp_bpf::attachments(pins).map_err(|source| {
            bpf_err(BpfError::Attach {
                ifname: "*".into(),
                source,
            })
        })?;
        let has = |ifname: &str, hook: Hook| {
            recorded
                .iter()
                .any(|(i, h, _)| i.as_str() == ifname && *h == hook)
        };
        for (ifname, &ifindex) in &plan.ifaces {
            let complete = Hook::UPLINK.iter().all(|h| has(ifname, *h));
            if complete && self.attached.get(ifname) == Some(&ifindex) {
                continue;
            }
            for hook in Hook::UPLINK {
                dp.attach(netns, ifname, hook, AttachMode::Auto)
                    .map_err(|source| {
                        bpf_err(BpfError::Attach {
                            ifname: ifname.clone(),
                            source,
                        })
                    })?;
                w.hooks_changed += 1;
            }
            self.attached.insert(ifname.clone(), ifindex);
        }
        let stale: BTreeSet<String> = recorded
            .iter()
            .filter(|(_, h, _)| Hook::UPLINK.contains(h))
            .map(|(i, _, _)| i.clone())
            .chain(self.attached.keys().cloned())
            .filter(|i| !plan.ifaces.contains_key(i))
            .collect();
        for ifname in stale {
            for hook in Hook::UPLINK {
                if serval_dp_bpf::detach(pins, Some(netns), &ifname, hook).map_err(|source| {
                    bpf_err(BpfError::Attach {
                        ifname: ifname.clone(),
                        source,
                    })
                })? {
                    w.hooks_changed += 1;
                }
            }
            self.attached.remove(&ifname);
        }
        Ok(())
    }
}

/// `SV_HOST_F_HOST_NAT` unless host-networked clients are not to be NATed
/// (`bpfConnectTimeLoadBalancing: Disabled` with `bpfHostNetworkedNATWithoutCTLB: Disabled`).
/// Where the connect-time programs translate a socket its packets never carry a frontend, so
/// the tc path only sees what they leave: UDP under `TCP`, everything without them.
fn host_nat_flag(ctlb: &super::ctlb::CtlbSettings) -> u32 {
    if ctlb.host_networked_nat == super::ctlb::HostNetworkedNat::Disabled {
        0
    } else {
        SV_HOST_F_HOST_NAT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_clients_are_natted_in_tc_unless_both_settings_are_disabled() {
        use serval_model::calico::felix::{BpfConnectTimeLoadBalancing, EnabledDisabled};
        let flag = |ctlb, hn| {
            let f = FelixSettings {
                bpf_connect_time_load_balancing: ctlb,
                bpf_host_networked_nat_without_ctlb: hn,
                ..FelixSettings::default()
            };
            host_nat_flag(&super::super::ctlb::CtlbSettings::from_felix(&f))
        };
        use BpfConnectTimeLoadBalancing as C;
        use EnabledDisabled as E;
        assert_eq!(flag(C::Disabled, E::Disabled), 0);
        assert_eq!(flag(C::Disabled, E::Enabled), SV_HOST_F_HOST_NAT);
        assert_eq!(flag(C::Tcp, E::Disabled), SV_HOST_F_HOST_NAT);
        assert_eq!(flag(C::Enabled, E::Enabled), SV_HOST_F_HOST_NAT);
        assert_eq!(flag(C::Enabled, E::Disabled), 0);
    }

    fn iface(name: &str, ifindex: u32, addrs: &[&str]) -> Iface {
        Iface {
            name: name.into(),
            ifindex,
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn the_uplink_holds_the_node_address_and_vxlan_devices_join() {
        let mut state = DesiredState::default();
        state.nat_outgoing.node_nets = vec![
            "172.31.1.12/32".parse().unwrap(),
            "fd00:5e:1::12/128".parse().unwrap(),
        ];
        let ifaces = [
            iface("lo", 1, &["127.0.0.1", "::1"]),
            iface("dummy0", 2, &["192.0.2.1"]),
            iface("eth0", 3, &["172.31.1.12", "fd00:5e:1::12", "fe80::1"]),
            iface("vxlan.serval", 4, &["10.244.0.0"]),
        ];
        let p = plan(&state, &ifaces);
        assert_eq!(
            p.addrs,
            vec![
                "172.31.1.12".parse::<IpAddr>().unwrap(),
                "fd00:5e:1::12".parse().unwrap()
            ]
        );
        assert_eq!(
            p.ifaces.into_iter().collect::<Vec<_>>(),
            vec![("eth0".to_string(), 3), ("vxlan.serval".to_string(), 4)]
        );
    }

    #[test]
    fn external_settings_follow_felix() {
        let mut f = FelixSettings::default();
        let tunnel = ExternalSettings::from_felix(&f);
        assert!(!tunnel.dsr, "Tunnel is the default");
        f.bpf_external_service_mode = BpfExternalServiceMode::Dsr;
        f.bpf_dsr_optout_cidrs = vec![
            "10.1.2.3/16".parse().unwrap(),
            "fd00::1/64".parse().unwrap(),
            "10.1.0.0/16".parse().unwrap(),
        ];
        let dsr = ExternalSettings::from_felix(&f);
        assert!(dsr.dsr);
        let got: Vec<String> = dsr.dsr_optout.iter().map(ToString::to_string).collect();
        assert_eq!(got, ["10.1.0.0/16", "fd00::/64"], "truncated, deduplicated");
        let entries: Vec<u32> = dsr.optout_entries().iter().map(|e| e.0).collect();
        assert!(entries.contains(&(96 + 16)) && entries.contains(&64));
    }

    #[test]
    fn without_node_resources_the_first_global_address_counts() {
        let state = DesiredState::default();
        let ifaces = [
            iface("lo", 1, &["127.0.0.1"]),
            iface("eth0", 3, &["fe80::1", "10.0.0.5"]),
        ];
        let p = plan(&state, &ifaces);
        assert_eq!(p.addrs, vec!["10.0.0.5".parse::<IpAddr>().unwrap()]);
        assert_eq!(p.ifaces.get("eth0"), Some(&3));
    }
}
