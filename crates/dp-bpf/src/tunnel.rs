//! NodePort tunnel and DSR (`bpf/serval_tunnel.h`): FelixConfiguration
//! `bpfExternalServiceMode` and `bpfDSROptoutCIDRs` as the programs read them, and the
//! tunnel's counters.
//!
//! - The mode is the [`SV_HOST_F_DSR`](crate::abi::SV_HOST_F_DSR) flag of `sv_host`
//!   ([`crate::maps::Maps::set_host`]).
//! - The opt-out CIDRs are the LPM map `sv_dsr_optout` ([`Maps::set_dsr_optout`]): a client
//!   in one of them gets Tunnel under DSR.
//! - `sv_tun_stats` counts encapsulated/decapsulated packets per direction
//!   ([`Maps::tunnel_stats`]): on the receiving node `decap_reply` grows in Tunnel mode and
//!   stays put in DSR, where the backend's node counts `dsr_reply` instead.

use aya::maps::{LpmTrie, Map, MapData, PerCpuArray, lpm_trie::Key};
use std::net::IpAddr;

use crate::{
    abi::{
        Addr, SV_TUN_DECAP_FWD, SV_TUN_DECAP_REPLY, SV_TUN_DROP, SV_TUN_DSR_REPLY,
        SV_TUN_ENCAP_FWD, SV_TUN_ENCAP_REPLY, lpm_prefix_len,
    },
    error::MapsError,
    maps::Maps,
    object::{MAP_DSR_OPTOUT, MAP_TUN_STATS},
};

/// The tunnel's packet counters (`sv_tun_stats`), summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelStats {
    /// Receiving node: client packets sent to the backend's node.
    pub encap_fwd: u64,
    /// Backend's node: client packets received from the tunnel.
    pub decap_fwd: u64,
    /// Backend's node: replies sent back through the tunnel (Tunnel mode).
    pub encap_reply: u64,
    /// Receiving node: replies received from the tunnel (Tunnel mode).
    pub decap_reply: u64,
    /// Backend's node: replies sent straight to the client (DSR).
    pub dsr_reply: u64,
    /// Tunnel packets dropped (bad header, no node address, failed rewrite).
    pub dropped: u64,
}

impl TunnelStats {
    /// From the per-counter sums, indexed by `SV_TUN_*`.
    pub fn from_counters(c: &[u64]) -> Self {
        let at = |i: u32| c.get(i as usize).copied().unwrap_or(0);
        Self {
            encap_fwd: at(SV_TUN_ENCAP_FWD),
            decap_fwd: at(SV_TUN_DECAP_FWD),
            encap_reply: at(SV_TUN_ENCAP_REPLY),
            decap_reply: at(SV_TUN_DECAP_REPLY),
            dsr_reply: at(SV_TUN_DSR_REPLY),
            dropped: at(SV_TUN_DROP),
        }
    }
}

/// The LPM key of prefix `addr/len` (`addr` already truncated to the prefix).
fn optout_key(addr: IpAddr, len: u8) -> Key<Addr> {
    Key::new(lpm_prefix_len(addr, len), Addr::new(addr))
}

impl Maps<'_> {
    fn map_named(&mut self, name: &'static str) -> Result<&mut Map, MapsError> {
        self.dp_mut()
            .ebpf
            .map_mut(name)
            .ok_or(MapsError::Missing { map: name })
    }

    /// Adds a `bpfDSROptoutCIDRs` prefix `addr/len` (`addr` truncated to the prefix).
    pub fn set_dsr_optout(&mut self, addr: IpAddr, len: u8) -> Result<(), MapsError> {
        let map = self.map_named(MAP_DSR_OPTOUT)?;
        let mut m =
            LpmTrie::<&mut MapData, Addr, u32>::try_from(map).map_err(|source| MapsError::Map {
                op: "opening",
                map: MAP_DSR_OPTOUT,
                source,
            })?;
        m.insert(&optout_key(addr, len), 1, 0)
            .map_err(|source| MapsError::Map {
                op: "writing",
                map: MAP_DSR_OPTOUT,
                source,
            })
    }

    /// Every prefix of `sv_dsr_optout`, as (LPM prefix length, address).
    pub fn dsr_optout(&mut self) -> Result<Vec<(u32, Addr)>, MapsError> {
        let map = self.map_named(MAP_DSR_OPTOUT)?;
        let m =
            LpmTrie::<&mut MapData, Addr, u32>::try_from(map).map_err(|source| MapsError::Map {
                op: "opening",
                map: MAP_DSR_OPTOUT,
                source,
            })?;
        m.keys()
            .map(|k| k.map(|k| (k.prefix_len(), k.data())))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| MapsError::Map {
                op: "iterating",
                map: MAP_DSR_OPTOUT,
                source,
            })
    }

    /// Removes an `sv_dsr_optout` entry (as [`Maps::dsr_optout`] lists it); `false` when
    /// there was none.
    pub fn remove_dsr_optout(&mut self, prefix_len: u32, addr: Addr) -> Result<bool, MapsError> {
        let map = self.map_named(MAP_DSR_OPTOUT)?;
        let mut m =
            LpmTrie::<&mut MapData, Addr, u32>::try_from(map).map_err(|source| MapsError::Map {
                op: "opening",
                map: MAP_DSR_OPTOUT,
                source,
            })?;
        match m.remove(&Key::new(prefix_len, addr)) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(source) => Err(MapsError::Map {
                op: "deleting from",
                map: MAP_DSR_OPTOUT,
                source,
            }),
        }
    }

    /// The tunnel counters, summed over CPUs.
    pub fn tunnel_stats(&mut self) -> Result<TunnelStats, MapsError> {
        let map = self.map_named(MAP_TUN_STATS)?;
        let m =
            PerCpuArray::<&mut MapData, u64>::try_from(map).map_err(|source| MapsError::Map {
                op: "opening",
                map: MAP_TUN_STATS,
                source,
            })?;
        let mut sums = Vec::new();
        for i in 0..crate::abi::SV_TUN_STATS {
            let per_cpu = m.get(&i, 0).map_err(|source| MapsError::Map {
                op: "reading",
                map: MAP_TUN_STATS,
                source,
            })?;
            sums.push(per_cpu.iter().sum());
        }
        Ok(TunnelStats::from_counters(&sums))
    }
}
