//! Writers for `sv_pol_sport`, the source-port tables of the compiled policy (see
//! `struct sv_pol_sport_key` in serval_maps.h): a verdict of `sv_policy` that depends on the
//! source port (`SV_VERDICT_BY_SPORT`) names a table, and the program looks the packet's
//! source port up in it.

use aya::maps::{LpmTrie, Map, MapData, MapError};

use crate::abi::{PolSportKey, PolSportMatch, PolVal};
use crate::error::MapsError;
use crate::loader::Dataplane;
use crate::object::MAP_POL_SPORT;

fn map_err(op: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Map {
        op,
        map: MAP_POL_SPORT,
        source,
    }
}

impl Dataplane {
    fn pol_sport(&mut self) -> Result<LpmTrie<&mut MapData, PolSportMatch, PolVal>, MapsError> {
        let map: &mut Map = self
            .ebpf
            .map_mut(MAP_POL_SPORT)
            .ok_or(MapsError::Missing { map: MAP_POL_SPORT })?;
        LpmTrie::try_from(map).map_err(map_err("opening"))
    }

    /// Writes one source-port table entry.
    pub fn set_policy_sport(&mut self, key: &PolSportKey, val: &PolVal) -> Result<(), MapsError> {
        self.pol_sport()?
            .insert(key, *val, 0)
            .map_err(map_err("writing"))
    }

    /// Deletes one source-port table entry; `Ok(false)` when it was not there.
    pub fn remove_policy_sport(&mut self, key: &PolSportKey) -> Result<bool, MapsError> {
        match self.pol_sport()?.remove(key) {
            Ok(()) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(map_err("deleting from")(e)),
        }
    }
}
