//! Connect-time load balancing for the eBPF driver: FelixConfiguration
//! `bpfConnectTimeLoadBalancing` and `bpfHostNetworkedNATWithoutCTLB`, and the node's cgroup.
//!
//! - **`bpfConnectTimeLoadBalancing`** (Calico's meaning): `TCP` (default) attaches the cgroup
//!   programs of [`serval_dp_bpf::cgroup`] and translates TCP service frontends at
//!   `connect()`; UDP stays with the tc programs' per-packet NAT. `Enabled` translates TCP
//!   and UDP (`connect`, unconnected `sendmsg`, `recvmsg`, `getpeername`). `Disabled`
//!   attaches nothing (links of an earlier run are removed) and tc does all service NAT.
//! - **The cgroup** is the agent's `--cgroup` ([`set_thread_cgroup`], set on the driver
//!   thread by the daemon): in the lab each node's own subtree (only its pods are below it),
//!   on a real host the cgroup v2 root (every process). Without one (library users, tests
//!   that do not ask for it) nothing is attached whatever the setting says: programs on a
//!   shared root would translate other nodes' processes.
//! - **`bpfHostNetworkedNATWithoutCTLB`** (Calico: whether the tc programs NAT service
//!   traffic of host-networked processes that connect-time LB does not handle; with `TCP`
//!   Calico always NATs host-networked UDP in tc, with `Disabled` + `Disabled` it warns that
//!   host-networked clients cannot reach services). Resolved as Calico resolves it
//!   ([`HostNetworkedNat`]): with `TCP` (Calico's "host-networked UDP only") the cgroup
//!   programs also translate UDP for sockets of the node's own network namespace
//!   ([`serval_dp_bpf::HostSockets`]); unless both settings are `Disabled`, the uplink's tc
//!   egress program also NATs what host processes still send to a frontend (flag
//!   `SV_HOST_F_HOST_NAT` of `sv_host`, `bpf/serval_hostnat.h`: the packets leave by the
//!   node's default route, are DNATed and forwarded by FIB lookup at the uplink's egress,
//!   and their replies reverse-NATed before the host stack sees them).

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use serval_dp_bpf::{Ctlb, CtlbProtocols, HostSockets, LogLevel, MapSizes, PinScope, cgroup};
use serval_model::calico::felix::{BpfConnectTimeLoadBalancing, EnabledDisabled, FelixSettings};

thread_local! {
    /// The cgroup the current driver thread attaches to (set by the daemon).
    static THREAD_CGROUP: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

/// Records the node's cgroup v2 directory for drivers opened on the calling (driver) thread.
pub fn set_thread_cgroup(path: Option<PathBuf>) {
    THREAD_CGROUP.with(|c| *c.borrow_mut() = path);
}

/// The cgroup recorded for the calling thread.
pub fn thread_cgroup() -> Option<PathBuf> {
    THREAD_CGROUP.with(|c| c.borrow().clone())
}

/// How host-networked service traffic that connect-time LB does not handle would be NATed
/// (Calico's resolution of the two settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostNetworkedNat {
    /// `bpfConnectTimeLoadBalancing: TCP`: host-networked UDP is NATed in tc.
    #[default]
    UdpOnly,
    /// CTLB `Enabled`/`Disabled` with `bpfHostNetworkedNATWithoutCTLB: Enabled`.
    Enabled,
    /// Neither: host-networked clients of uncovered protocols do not reach services.
    Disabled,
}

/// The connect-time LB part of the eBPF load settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CtlbSettings {
    /// None: `Disabled`.
    pub protocols: Option<CtlbProtocols>,
    pub host_networked_nat: HostNetworkedNat,
}

impl CtlbSettings {
    pub fn from_felix(f: &FelixSettings) -> CtlbSettings {
        let protocols = match f.bpf_connect_time_load_balancing {
            BpfConnectTimeLoadBalancing::Tcp => Some(CtlbProtocols::Tcp),
            BpfConnectTimeLoadBalancing::Enabled => Some(CtlbProtocols::TcpUdp),
            BpfConnectTimeLoadBalancing::Disabled => None,
        };
        let host_networked_nat = match (
            f.bpf_connect_time_load_balancing,
            f.bpf_host_networked_nat_without_ctlb,
        ) {
            (BpfConnectTimeLoadBalancing::Tcp, _) => HostNetworkedNat::UdpOnly,
            (_, EnabledDisabled::Enabled) => HostNetworkedNat::Enabled,
            (_, EnabledDisabled::Disabled) => HostNetworkedNat::Disabled,
        };
        CtlbSettings {
            protocols,
            host_networked_nat,
        }
    }
}

/// Makes the kernel match `settings` for the node's cgroup ([`thread_cgroup`]): loads and
/// attaches the programs (replacing links of an earlier run), or removes them. Call after the
/// tc object is loaded (it creates the NAT maps). A failure is logged, not returned: the tc
/// programs still NAT every service packet, only slower.
pub fn sync(pins: &PinScope, settings: &CtlbSettings, sizes: &MapSizes, log_level: LogLevel) {
    let cgroup = thread_cgroup();
    log_host_networked(settings);
    match (settings.protocols, cgroup) {
        (Some(protocols), Some(cg)) => {
            if let Err(e) = attach(pins, &cg, settings, protocols, sizes, log_level) {
                tracing::error!(
                    cgroup = %cg.display(),
                    error = %e,
                    "connect-time load balancing unavailable; the tc programs NAT service traffic instead"
                );
                let _ = cgroup::detach(pins);
            }
        }
        (protocols, cg) => {
            if protocols.is_some() {
                tracing::info!(
                    "connect-time load balancing not attached: the agent has no --cgroup (the tc programs NAT service traffic)"
                );
            } else {
                tracing::info!(
                    cgroup = ?cg,
                    "bpfConnectTimeLoadBalancing: Disabled; the tc programs NAT service traffic"
                );
            }
            match cgroup::detach(pins) {
                Ok(0) => {}
                Ok(n) => tracing::info!(programs = n, "removed connect-time load balancer"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not remove the connect-time load balancer")
                }
            }
        }
    }
}

/// Re-attaches if the links went missing (resync); no-op otherwise.
pub fn repair(pins: &PinScope, settings: &CtlbSettings, sizes: &MapSizes, log_level: LogLevel) {
    if settings.protocols.is_none() || thread_cgroup().is_none() {
        return;
    }
    let have = cgroup::attached(pins).map(|a| a.len()).unwrap_or(0);
    if have != cgroup::CTLB_PROGRAMS.len() {
        tracing::warn!(
            have,
            "connect-time load balancer links missing; attaching again"
        );
        sync(pins, settings, sizes, log_level);
    }
}

/// The host's own sockets' extra protocols: UDP under `TCP` (Calico's UdpOnly host NAT), in
/// the calling (driver) thread's namespace, the node's.
fn host_sockets(settings: &CtlbSettings) -> Option<HostSockets> {
    if settings.protocols != Some(CtlbProtocols::Tcp)
        || settings.host_networked_nat != HostNetworkedNat::UdpOnly
    {
        return None;
    }
    match serval_dp_bpf::cgroup::netns_cookie() {
        Ok(netns_cookie) => Some(HostSockets {
            netns_cookie,
            tcp: false,
            udp: true,
        }),
        Err(e) => {
            tracing::warn!(error = %e, "no network namespace cookie (SO_NETNS_COOKIE, Linux 5.14+): host-networked UDP to services is not translated");
            None
        }
    }
}

fn attach(
    pins: &PinScope,
    cg: &Path,
    settings: &CtlbSettings,
    protocols: CtlbProtocols,
    sizes: &MapSizes,
    log_level: LogLevel,
) -> Result<(), serval_dp_bpf::CgroupError> {
    let host = host_sockets(settings);
    let mut ctlb = Ctlb::load_with_host(pins, sizes, log_level, protocols, host)?;
    ctlb.attach(cg)?;
    // Dropping the loader's handles is fine: the pinned links hold the programs.
    Ok(())
}

fn log_host_networked(settings: &CtlbSettings) {
    match settings.host_networked_nat {
        HostNetworkedNat::Disabled if settings.protocols.is_none() => tracing::warn!(
            "bpfConnectTimeLoadBalancing: Disabled with bpfHostNetworkedNATWithoutCTLB: Disabled: \
             host-networked processes cannot reach services"
        ),
        HostNetworkedNat::Disabled => {}
        HostNetworkedNat::UdpOnly => tracing::info!(
            "host-networked UDP to services is translated by the cgroup programs for the node's \
             own sockets (Calico NATs it in tc)"
        ),
        HostNetworkedNat::Enabled => tracing::info!(
            "host-networked clients reach services through connect-time LB (Enabled), else \
             through the uplink's tc egress NAT (bpf/serval_hostnat.h)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn felix(ctlb: BpfConnectTimeLoadBalancing, host: EnabledDisabled) -> FelixSettings {
        FelixSettings {
            bpf_connect_time_load_balancing: ctlb,
            bpf_host_networked_nat_without_ctlb: host,
            ..FelixSettings::default()
        }
    }

    #[test]
    fn settings_resolve_as_calico_does() {
        let d = CtlbSettings::from_felix(&FelixSettings::default());
        assert_eq!(d.protocols, Some(CtlbProtocols::Tcp));
        assert_eq!(d.host_networked_nat, HostNetworkedNat::UdpOnly);
        let e = CtlbSettings::from_felix(&felix(
            BpfConnectTimeLoadBalancing::Enabled,
            EnabledDisabled::Enabled,
        ));
        assert_eq!(e.protocols, Some(CtlbProtocols::TcpUdp));
        assert_eq!(e.host_networked_nat, HostNetworkedNat::Enabled);
        let off = CtlbSettings::from_felix(&felix(
            BpfConnectTimeLoadBalancing::Disabled,
            EnabledDisabled::Disabled,
        ));
        assert_eq!(off.protocols, None);
        assert_eq!(off.host_networked_nat, HostNetworkedNat::Disabled);
    }

    #[test]
    fn the_cgroup_is_per_thread() {
        set_thread_cgroup(Some(PathBuf::from("/x")));
        assert_eq!(thread_cgroup(), Some(PathBuf::from("/x")));
        std::thread::spawn(|| assert_eq!(thread_cgroup(), None))
            .join()
            .unwrap();
    }
}
