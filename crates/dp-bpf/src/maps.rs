//! Typed access to the maps of a loaded [`Dataplane`]: the writers the agent uses to install
//! endpoints, routes/identities, compiled policy and services, and the readers for
//! conntrack, affinity and drop counters.

use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray};

use crate::{
    abi::{
        CtKey, CtVal, EpVal, NatAffKey, NatAffVal, NatBeKey, NatBeVal, NatFeKey, NatFeVal, PolKey,
        PolMatch, PolVal, RouteKey, RouteVal, SV_DROP_REASONS, drop_reason_name,
    },
    error::MapsError,
    loader::Dataplane,
    object::{
        MAP_CT, MAP_DROPS, MAP_EPS, MAP_NAT_AFF, MAP_NAT_BE, MAP_NAT_FE, MAP_POLICY, MAP_ROUTES,
    },
};

/// Packets dropped per reason (`SV_DROP_*`), summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounters(pub [u64; SV_DROP_REASONS as usize]);

impl DropCounters {
    pub fn get(&self, reason: u32) -> u64 {
        self.0.get(reason as usize).copied().unwrap_or(0)
    }

    /// (reason name, count) of every non-zero counter.
    pub fn nonzero(&self) -> Vec<(&'static str, u64)> {
        (0..SV_DROP_REASONS)
            .filter(|r| self.get(*r) > 0)
            .map(|r| (drop_reason_name(r), self.get(r)))
            .collect()
    }
}

/// The maps of a loaded dataplane (borrowed from it).
pub struct Maps<'a> {
    dp: &'a mut Dataplane,
}

impl Dataplane {
    /// Typed access to the maps.
    pub fn maps(&mut self) -> Maps<'_> {
        Maps { dp: self }
    }
}

impl Maps<'_> {
    /// The dataplane, for the map writers of other modules ([`crate::tunnel`]).
    pub(crate) fn dp_mut(&mut self) -> &mut Dataplane {
        self.dp
    }
}

fn op_err(op: &'static str, map: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Map { op, map, source }
}

/// `Ok(None)` for a missing key.
fn found<V>(result: Result<V, MapError>, map: &'static str) -> Result<Option<V>, MapsError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(source) => Err(op_err("reading", map)(source)),
    }
}

/// `Ok(false)` for a missing key.
fn removed(result: Result<(), MapError>, map: &'static str) -> Result<bool, MapsError> {
    match result {
        Ok(()) => Ok(true),
        Err(MapError::KeyNotFound) => Ok(false),
        Err(source) => Err(op_err("deleting from", map)(source)),
    }
}

macro_rules! typed {
    ($self:ident, $kind:ident, $name:expr) => {{
        let name: &'static str = $name;
        let map: &mut Map = $self
            .dp
            .ebpf
            .map_mut(name)
            .ok_or(MapsError::Missing { map: name })?;
        $kind::<&mut MapData, _, _>::try_from(map).map_err(op_err("opening", name))?
    }};
}

impl Maps<'_> {
    // ---- endpoints ----

    /// The workload behind host-side interface `ifindex` (anti-spoofing and its policy id).
    pub fn set_endpoint(&mut self, ifindex: u32, ep: &EpVal) -> Result<(), MapsError> {
        let mut m = typed!(self, HashMap, MAP_EPS);
        m.insert(ifindex, *ep, 0)
            .map_err(op_err("writing", MAP_EPS))
    }

    pub fn remove_endpoint(&mut self, ifindex: u32) -> Result<bool, MapsError> {
        let mut m: HashMap<_, u32, EpVal> = typed!(self, HashMap, MAP_EPS);
        removed(m.remove(&ifindex), MAP_EPS)
    }

    pub fn endpoint(&mut self, ifindex: u32) -> Result<Option<EpVal>, MapsError> {
        let m: HashMap<_, u32, EpVal> = typed!(self, HashMap, MAP_EPS);
        found(m.get(&ifindex, 0), MAP_EPS)
    }

    // ---- routes / identities ----

    pub fn set_route(&mut self, key: &RouteKey, val: &RouteVal) -> Result<(), MapsError> {
        let mut m = typed!(self, LpmTrie, MAP_ROUTES);
        m.insert(key, *val, 0)
            .map_err(op_err("writing", MAP_ROUTES))
    }

    pub fn remove_route(&mut self, key: &RouteKey) -> Result<bool, MapsError> {
        let mut m: LpmTrie<_, crate::abi::Addr, RouteVal> = typed!(self, LpmTrie, MAP_ROUTES);
        removed(m.remove(key), MAP_ROUTES)
    }

    /// Longest-prefix lookup, as the programs do.
    pub fn route(&mut self, key: &RouteKey) -> Result<Option<RouteVal>, MapsError> {
        let m: LpmTrie<_, crate::abi::Addr, RouteVal> = typed!(self, LpmTrie, MAP_ROUTES);
        found(m.get(key, 0), MAP_ROUTES)
    }

    // ---- policy ----

    pub fn set_policy(&mut self, key: &PolKey, val: &PolVal) -> Result<(), MapsError> {
        let mut m = typed!(self, LpmTrie, MAP_POLICY);
        m.insert(key, *val, 0)
            .map_err(op_err("writing", MAP_POLICY))
    }

    pub fn remove_policy(&mut self, key: &PolKey) -> Result<bool, MapsError> {
        let mut m: LpmTrie<_, PolMatch, PolVal> = typed!(self, LpmTrie, MAP_POLICY);
        removed(m.remove(key), MAP_POLICY)
    }

    // ---- services ----

    pub fn set_frontend(&mut self, key: &NatFeKey, val: &NatFeVal) -> Result<(), MapsError> {
        let mut m = typed!(self, HashMap, MAP_NAT_FE);
        m.insert(*key, *val, 0)
            .map_err(op_err("writing", MAP_NAT_FE))
    }

    pub fn remove_frontend(&mut self, key: &NatFeKey) -> Result<bool, MapsError> {
        let mut m: HashMap<_, NatFeKey, NatFeVal> = typed!(self, HashMap, MAP_NAT_FE);
        removed(m.remove(key), MAP_NAT_FE)
    }

    pub fn set_backend(&mut self, key: &NatBeKey, val: &NatBeVal) -> Result<(), MapsError> {
        let mut m = typed!(self, HashMap, MAP_NAT_BE);
        m.insert(*key, *val, 0)
            .map_err(op_err("writing", MAP_NAT_BE))
    }

    pub fn remove_backend(&mut self, key: &NatBeKey) -> Result<bool, MapsError> {
        let mut m: HashMap<_, NatBeKey, NatBeVal> = typed!(self, HashMap, MAP_NAT_BE);
        removed(m.remove(key), MAP_NAT_BE)
    }

    pub fn affinity(&mut self, key: &NatAffKey) -> Result<Option<NatAffVal>, MapsError> {
        let m: HashMap<_, NatAffKey, NatAffVal> = typed!(self, HashMap, MAP_NAT_AFF);
        found(m.get(key, 0), MAP_NAT_AFF)
    }

    // ---- Maglev tables ----

    /// Writes one entry of a Maglev table (`sv_maglev`).
    pub fn set_maglev(
        &mut self,
        key: &crate::abi::MaglevKey,
        val: &crate::abi::MaglevVal,
    ) -> Result<(), MapsError> {
        let name = crate::object::MAP_MAGLEV;
        let mut m = typed!(self, HashMap, name);
        m.insert(*key, *val, 0).map_err(op_err("writing", name))
    }

    pub fn remove_maglev(&mut self, key: &crate::abi::MaglevKey) -> Result<bool, MapsError> {
        let name = crate::object::MAP_MAGLEV;
        let mut m: HashMap<_, crate::abi::MaglevKey, crate::abi::MaglevVal> =
            typed!(self, HashMap, name);
        removed(m.remove(key), name)
    }

    // ---- this node ----

    /// Writes the node's SNAT addresses and `bpfPSNATPorts` (`sv_host`, its one entry).
    pub fn set_host(&mut self, val: &crate::abi::HostVal) -> Result<(), MapsError> {
        let mut m = self.host_map()?;
        m.set(0, *val, 0)
            .map_err(op_err("writing", crate::object::MAP_HOST))
    }

    /// The node's entry in `sv_host` (all zero until written).
    pub fn host(&mut self) -> Result<crate::abi::HostVal, MapsError> {
        let m = self.host_map()?;
        m.get(&0, 0)
            .map_err(op_err("reading", crate::object::MAP_HOST))
    }

    fn host_map(&mut self) -> Result<Array<&mut MapData, crate::abi::HostVal>, MapsError> {
        let name = crate::object::MAP_HOST;
        let map: &mut Map = self
            .dp
            .ebpf
            .map_mut(name)
            .ok_or(MapsError::Missing { map: name })?;
        Array::try_from(map).map_err(op_err("opening", name))
    }

    // ---- conntrack ----

    pub fn conntrack(&mut self, key: &CtKey) -> Result<Option<CtVal>, MapsError> {
        let m: HashMap<_, CtKey, CtVal> = typed!(self, HashMap, MAP_CT);
        found(m.get(key, 0), MAP_CT)
    }

    /// Every conntrack entry (for the cleaner and dumps).
    pub fn conntrack_entries(&mut self) -> Result<Vec<(CtKey, CtVal)>, MapsError> {
        let m: HashMap<_, CtKey, CtVal> = typed!(self, HashMap, MAP_CT);
        m.iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(op_err("iterating", MAP_CT))
    }

    /// Writes an entry (the cleaner's updates; tests). Fails when the map is full.
    pub fn set_conntrack(&mut self, key: &CtKey, val: &CtVal) -> Result<(), MapsError> {
        let mut m = typed!(self, HashMap, MAP_CT);
        m.insert(*key, *val, 0).map_err(op_err("writing", MAP_CT))
    }

    pub fn remove_conntrack(&mut self, key: &CtKey) -> Result<bool, MapsError> {
        let mut m: HashMap<_, CtKey, CtVal> = typed!(self, HashMap, MAP_CT);
        removed(m.remove(key), MAP_CT)
    }

    // ---- counters ----

    pub fn drop_counters(&mut self) -> Result<DropCounters, MapsError> {
        let name = MAP_DROPS;
        let map: &mut Map = self
            .dp
            .ebpf
            .map_mut(name)
            .ok_or(MapsError::Missing { map: name })?;
        let m = PerCpuArray::<&mut MapData, u64>::try_from(map).map_err(op_err("opening", name))?;
        let mut counters = DropCounters::default();
        for (reason, slot) in counters.0.iter_mut().enumerate() {
            let per_cpu = m
                .get(&(reason as u32), 0)
                .map_err(op_err("reading", name))?;
            *slot = per_cpu.iter().sum();
        }
        Ok(counters)
    }
}

/// Batched writes of hash maps: `BPF_MAP_UPDATE_BATCH` / `BPF_MAP_DELETE_BATCH` (Linux 5.6+),
/// one bpf(2) call for many entries instead of one per entry. aya does not expose these
/// commands, so this is a small raw wrapper around the syscall.
///
/// The kernel's generic batch operations (what hash maps use) process the entries in order
/// and stop at the first failure, reporting how many were done in `count`: an update batch
/// that fails leaves exactly the entries before the failing one written, as the same
/// writes one by one would. Where a kernel lacks the commands (`EINVAL` / `ENOTSUPP` before
/// any entry was processed), the entries are written one by one instead. LPM tries do not
/// support batch operations; their writers stay per entry.
mod batch {
    use std::io;
    use std::os::fd::{AsRawFd, BorrowedFd};

    use aya::Pod;

    /// `enum bpf_cmd` values (include/uapi/linux/bpf.h).
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
    /// The kernel's `ENOTSUPP` (not in libc: it is kernel-internal, but bpf(2) returns it).
    const ENOTSUPP: i32 = 524;
    /// Entries per call: bounds one syscall's time (the kernel reschedules between entries
    /// anyway) and the size of a failure report.
    pub(super) const CHUNK: usize = 16_384;

    /// The `batch` member of `union bpf_attr` (include/uapi/linux/bpf.h):
    /// `in_batch, out_batch, keys, values` (aligned u64 pointers), `count, map_fd` (u32),
    /// `elem_flags, flags` (u64). The kernel zero-fills the rest of the union.
    #[repr(C)]
    #[derive(Default)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const _: () = assert!(std::mem::size_of::<BatchAttr>() == 56);

    /// How a batch call ended.
    pub(super) enum Outcome {
        /// Every entry was processed.
        Done,
        /// The kernel does not have the command: nothing was written, write one by one.
        Unsupported,
        /// Entry `done` failed with `error`; the entries before it were processed.
        Failed { done: usize, error: io::Error },
    }

    fn call(cmd: libc::c_long, attr: &mut BatchAttr) -> Outcome {
        let want = attr.count as usize;
        // SAFETY: `attr` is a valid, initialised `bpf_attr` prefix of the size passed; the
        // `keys` (and for updates `values`) pointers it holds point at `count` contiguous
        // entries of the map's key (value) size, borrowed by the caller for this call; the
        // kernel reads them and writes back only `attr.count`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                std::ptr::from_mut(attr),
                std::mem::size_of::<BatchAttr>(),
            )
        };
        if rc >= 0 {
            return Outcome::Done;
        }
        let error = io::Error::last_os_error();
        let done = (attr.count as usize).min(want);
        match error.raw_os_error() {
            Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP) if done == 0 => Outcome::Unsupported,
            _ => Outcome::Failed { done, error },
        }
    }

    /// `BPF_MAP_UPDATE_BATCH` of `keys[i] → values[i]` (same length, at most [`CHUNK`]).
    pub(super) fn update<K: Pod, V: Pod>(fd: BorrowedFd<'_>, keys: &[K], values: &[V]) -> Outcome {
        debug_assert_eq!(keys.len(), values.len());
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: u32::try_from(keys.len().min(values.len())).unwrap_or(u32::MAX),
            map_fd: u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX),
            ..BatchAttr::default()
        };
        call(BPF_MAP_UPDATE_BATCH, &mut attr)
    }

    /// `BPF_MAP_DELETE_BATCH` of `keys` (at most [`CHUNK`]).
    pub(super) fn delete<K: Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> Outcome {
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            count: u32::try_from(keys.len()).unwrap_or(u32::MAX),
            map_fd: u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX),
            ..BatchAttr::default()
        };
        call(BPF_MAP_DELETE_BATCH, &mut attr)
    }
}

fn batch_err(
    op: &'static str,
    map: &'static str,
    call: &'static str,
) -> impl FnOnce(std::io::Error) -> MapsError {
    move |io_error| MapsError::Map {
        op,
        map,
        source: MapError::SyscallError(aya::sys::SyscallError { call, io_error }),
    }
}

/// Writes `entries` into hash map `m` in batches (see [`batch`]); entries are written in
/// order, and a failure leaves the ones before the failing entry written.
fn insert_batched<K: aya::Pod, V: aya::Pod>(
    m: &mut HashMap<&mut MapData, K, V>,
    entries: &[(K, V)],
    map: &'static str,
) -> Result<(), MapsError> {
    use aya::maps::IterableMap;
    use std::os::fd::AsFd;
    let mut rest = entries;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(batch::CHUNK));
        let keys: Vec<K> = chunk.iter().map(|(k, _)| *k).collect();
        let values: Vec<V> = chunk.iter().map(|(_, v)| *v).collect();
        match batch::update(m.map().fd().as_fd(), &keys, &values) {
            batch::Outcome::Done => {}
            batch::Outcome::Unsupported => {
                for (k, v) in chunk {
                    m.insert(*k, *v, 0).map_err(op_err("writing", map))?;
                }
            }
            batch::Outcome::Failed { error, .. } => {
                return Err(batch_err("writing", map, "BPF_MAP_UPDATE_BATCH")(error));
            }
        }
        rest = tail;
    }
    Ok(())
}

/// Deletes `keys` from hash map `m` in batches; a key that is not there is skipped (as
/// [`removed`] does). Returns how many were deleted.
fn remove_batched<K: aya::Pod, V: aya::Pod>(
    m: &mut HashMap<&mut MapData, K, V>,
    keys: &[K],
    map: &'static str,
) -> Result<usize, MapsError> {
    use aya::maps::IterableMap;
    use std::os::fd::AsFd;
    let mut deleted = 0;
    let mut rest = keys;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(batch::CHUNK)];
        match batch::delete(m.map().fd().as_fd(), chunk) {
            batch::Outcome::Done => {
                deleted += chunk.len();
                rest = &rest[chunk.len()..];
            }
            batch::Outcome::Unsupported => {
                for k in chunk {
                    deleted += usize::from(removed(m.remove(k), map)?);
                }
                rest = &rest[chunk.len()..];
            }
            // The kernel stops at a key that is not there: skip it, go on after it.
            batch::Outcome::Failed { done, error }
                if error.raw_os_error() == Some(libc::ENOENT) =>
            {
                deleted += done;
                rest = &rest[done + 1..];
            }
            batch::Outcome::Failed { error, .. } => {
                return Err(batch_err("deleting from", map, "BPF_MAP_DELETE_BATCH")(
                    error,
                ));
            }
        }
    }
    Ok(deleted)
}

impl Maps<'_> {
    /// Writes many `sv_nat_fe` entries with batched syscalls, in order (see [`batch`]).
    pub fn set_frontends(&mut self, entries: &[(NatFeKey, NatFeVal)]) -> Result<(), MapsError> {
        let mut m = typed!(self, HashMap, MAP_NAT_FE);
        insert_batched(&mut m, entries, MAP_NAT_FE)
    }

    /// Deletes many `sv_nat_fe` entries (missing ones skipped); how many were there.
    pub fn remove_frontends(&mut self, keys: &[NatFeKey]) -> Result<usize, MapsError> {
        let mut m: HashMap<_, NatFeKey, NatFeVal> = typed!(self, HashMap, MAP_NAT_FE);
        remove_batched(&mut m, keys, MAP_NAT_FE)
    }

    /// Writes many `sv_nat_be` entries with batched syscalls, in order.
    pub fn set_backends(&mut self, entries: &[(NatBeKey, NatBeVal)]) -> Result<(), MapsError> {
        let mut m = typed!(self, HashMap, MAP_NAT_BE);
        insert_batched(&mut m, entries, MAP_NAT_BE)
    }

    /// Deletes many `sv_nat_be` entries (missing ones skipped); how many were there.
    pub fn remove_backends(&mut self, keys: &[NatBeKey]) -> Result<usize, MapsError> {
        let mut m: HashMap<_, NatBeKey, NatBeVal> = typed!(self, HashMap, MAP_NAT_BE);
        remove_batched(&mut m, keys, MAP_NAT_BE)
    }

    /// Writes many `sv_eps` entries with batched syscalls, in order.
    pub fn set_endpoints(&mut self, entries: &[(u32, EpVal)]) -> Result<(), MapsError> {
        let mut m = typed!(self, HashMap, MAP_EPS);
        insert_batched(&mut m, entries, MAP_EPS)
    }

    /// One `sv_nat_fe` entry, `None` when absent.
    pub fn frontend(&mut self, key: &NatFeKey) -> Result<Option<NatFeVal>, MapsError> {
        let m: HashMap<_, NatFeKey, NatFeVal> = typed!(self, HashMap, MAP_NAT_FE);
        found(m.get(key, 0), MAP_NAT_FE)
    }

    /// One `sv_nat_be` entry, `None` when absent.
    pub fn backend(&mut self, key: &NatBeKey) -> Result<Option<NatBeVal>, MapsError> {
        let m: HashMap<_, NatBeKey, NatBeVal> = typed!(self, HashMap, MAP_NAT_BE);
        found(m.get(key, 0), MAP_NAT_BE)
    }
}
