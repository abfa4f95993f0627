//! Host endpoints (`bpf/serval_hep.c`): the object is loaded with
//! [`Dataplane::load_hep`] into the same pin scope as the workload programs (it shares
//! `sv_routes`, `sv_policy` and `sv_drops` with them) and attached with
//! [`Hook::HostIngress`](crate::Hook::HostIngress) / [`Hook::HostEgress`](crate::Hook::HostEgress).
//! This module holds the writers and readers of its own maps:
//!
//! - `sv_hep_ifaces`: host interface ifindex → the host endpoint's endpoint id in `sv_policy`;
//! - `sv_hep_fs`: failsafe ports (direction, protocol, port, remote prefix), LPM;
//! - `sv_hep_ct`: the LRU conntrack of host flows the programs allowed.

use aya::maps::{HashMap, LpmTrie, Map, MapData, MapError};
use aya::programs::{TestRun, TestRunOptions};

use crate::{
    abi::{CtKey, HepCtVal, HepFsKey, HepFsMatch, HepIfaceVal},
    attach::Hook,
    error::{MapsError, TestRunError},
    loader::Dataplane,
    object::{MAP_HEP_CT, MAP_HEP_FAILSAFE, MAP_HEP_IFACES},
    test_run::RunOutcome,
};

fn op_err(op: &'static str, map: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Map { op, map, source }
}

fn removed(result: Result<(), MapError>, map: &'static str) -> Result<bool, MapsError> {
    match result {
        Ok(()) => Ok(true),
        Err(MapError::KeyNotFound) => Ok(false),
        Err(source) => Err(op_err("deleting from", map)(source)),
    }
}

impl Dataplane {
    fn hep_map(&mut self, name: &'static str) -> Result<&mut Map, MapsError> {
        self.ebpf
            .map_mut(name)
            .ok_or(MapsError::Missing { map: name })
    }

    fn hep_ifaces_map(&mut self) -> Result<HashMap<&mut MapData, u32, HepIfaceVal>, MapsError> {
        let m = self.hep_map(MAP_HEP_IFACES)?;
        HashMap::try_from(m).map_err(op_err("opening", MAP_HEP_IFACES))
    }

    fn hep_fs_map(&mut self) -> Result<LpmTrie<&mut MapData, HepFsMatch, u32>, MapsError> {
        let m = self.hep_map(MAP_HEP_FAILSAFE)?;
        LpmTrie::try_from(m).map_err(op_err("opening", MAP_HEP_FAILSAFE))
    }

    /// Puts host endpoint policy on the interface `ifindex` (its programs must be attached).
    pub fn set_hep_iface(&mut self, ifindex: u32, val: &HepIfaceVal) -> Result<(), MapsError> {
        self.hep_ifaces_map()?
            .insert(ifindex, *val, 0)
            .map_err(op_err("writing", MAP_HEP_IFACES))
    }

    pub fn remove_hep_iface(&mut self, ifindex: u32) -> Result<bool, MapsError> {
        removed(self.hep_ifaces_map()?.remove(&ifindex), MAP_HEP_IFACES)
    }

    /// Every `sv_hep_ifaces` entry.
    pub fn hep_ifaces(&mut self) -> Result<Vec<(u32, HepIfaceVal)>, MapsError> {
        let m = self.hep_ifaces_map()?;
        m.iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(op_err("reading", MAP_HEP_IFACES))
    }

    /// Allows a failsafe port (key from [`HepFsMatch::key`]).
    pub fn set_hep_failsafe(&mut self, key: &HepFsKey) -> Result<(), MapsError> {
        self.hep_fs_map()?
            .insert(key, 1, 0)
            .map_err(op_err("writing", MAP_HEP_FAILSAFE))
    }

    pub fn remove_hep_failsafe(&mut self, key: &HepFsKey) -> Result<bool, MapsError> {
        removed(self.hep_fs_map()?.remove(key), MAP_HEP_FAILSAFE)
    }

    /// Every `sv_hep_fs` entry, as (prefix length, match).
    pub fn hep_failsafe(&mut self) -> Result<Vec<(u32, HepFsMatch)>, MapsError> {
        let m = self.hep_fs_map()?;
        let mut out = Vec::new();
        for kv in m.iter() {
            let (k, _) = kv.map_err(op_err("reading", MAP_HEP_FAILSAFE))?;
            out.push((k.prefix_len(), k.data()));
        }
        Ok(out)
    }

    /// Every live-or-stale entry of the host flow conntrack (entries evicted while reading
    /// are skipped).
    pub fn hep_conntrack(&mut self) -> Result<Vec<(CtKey, HepCtVal)>, MapsError> {
        let m = self.hep_map(MAP_HEP_CT)?;
        let m: HashMap<&mut MapData, CtKey, HepCtVal> =
            HashMap::try_from(m).map_err(op_err("opening", MAP_HEP_CT))?;
        let mut out = Vec::new();
        for kv in m.iter() {
            match kv {
                Ok(e) => out.push(e),
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(op_err("reading", MAP_HEP_CT)(e)),
            }
        }
        Ok(out)
    }

    /// [`Dataplane::test_run`] with `skb->mark` set to `mark` (the run's `struct __sk_buff`
    /// context carries it), e.g. a packet another Serval program marked SV_MARK_SEEN.
    pub fn test_run_marked(
        &self,
        hook: Hook,
        packet: &[u8],
        mark: u32,
    ) -> Result<RunOutcome, TestRunError> {
        let program = hook.program();
        let run_err = |source| TestRunError::Run {
            program,
            len: packet.len(),
            source,
        };
        let tc = self
            .program(program)
            .map_err(|source| TestRunError::Program { program, source })?;
        // struct __sk_buff: 192 bytes; `mark` at offset 8 (len, pkt_type before it). Every
        // other field zero: the kernel accepts only a few set ones.
        let mut ctx = [0u8; SK_BUFF_SIZE];
        ctx[SK_BUFF_MARK..SK_BUFF_MARK + 4].copy_from_slice(&mark.to_ne_bytes());
        let mut out = vec![0u8; packet.len() + 256];
        let result = tc
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..TestRunOptions::default()
            })
            .map_err(run_err)?;
        out.truncate(result.data_size_out as usize);
        Ok(RunOutcome {
            verdict: result.return_value as i32,
            packet: out,
        })
    }
}

/// `sizeof(struct __sk_buff)` and `offsetof(struct __sk_buff, mark)` (linux/bpf.h, stable UAPI).
const SK_BUFF_SIZE: usize = 192;
const SK_BUFF_MARK: usize = 8;

/// What the host endpoint programs return for a packet they let through: `TC_ACT_UNSPEC`
/// (-1), TCX_NEXT under TCX (the next program, then the stack, decides).
pub const TC_ACT_NEXT: i32 = -1;
