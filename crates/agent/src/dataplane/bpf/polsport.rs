//! `sv_pol_sport`, the source-port tables of the compiled policy: what the driver writes
//! (one entry per [`serval_calc::compile::SportEntry`]) and reads back on reconcile. A
//! `sv_policy` verdict `SV_VERDICT_BY_SPORT` names a table, so table entries are written
//! before the policy entries and deleted after them.

use std::collections::HashMap;

use aya::maps::lpm_trie::Key;
use aya::maps::{Map, MapData, MapError};
use serval_calc::compile::{CompiledPolicy, SportKey};
use serval_dp_bpf::PinScope;
use serval_dp_bpf::abi::{PolSportKey, PolSportMatch, PolVal};
use serval_dp_bpf::object::MAP_POL_SPORT;

use super::BpfError;

/// The table entries of a compiled policy, by (table, source port, prefix length).
pub fn desired(compiled: &CompiledPolicy) -> HashMap<SportKey, PolVal> {
    compiled
        .sport_entries
        .iter()
        .map(|e| {
            (
                e.key(),
                PolVal {
                    verdict: e.verdict.code(),
                    rule_id: e.rule_id,
                },
            )
        })
        .collect()
}

/// The map key of a mirror key.
pub fn key(k: &SportKey) -> PolSportKey {
    let (table, sport, prefix_len) = *k;
    Key::new(prefix_len, PolSportMatch::new(table, sport))
}

/// Every entry of the pinned `sv_pol_sport` of `pins`.
pub fn read_kernel(pins: &PinScope) -> Result<HashMap<SportKey, PolVal>, BpfError> {
    let path = pins.map_path(MAP_POL_SPORT);
    let shown = path.display().to_string();
    let rd = |source: MapError| BpfError::ReadPinned {
        path: shown.clone(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(rd)?;
    let m: aya::maps::LpmTrie<MapData, PolSportMatch, PolVal> =
        aya::maps::LpmTrie::try_from(Map::LpmTrie(data)).map_err(rd)?;
    let mut out = HashMap::new();
    for kv in m.iter() {
        let (k, v) = kv.map_err(rd)?;
        let d = k.data();
        out.insert(
            (
                u32::from_be(d.table_id),
                u16::from_be(d.sport),
                k.prefix_len(),
            ),
            v,
        );
    }
    Ok(out)
}
