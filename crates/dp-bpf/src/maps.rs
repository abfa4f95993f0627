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
