//! A [`DecisionMap`] as LPM entries of `sv_policy`, relying on longest match: a prefix-72
//! entry for "any protocol", a prefix-80 entry for a protocol whose most common decision
//! differs from it, and aligned port blocks (prefix 80 + k) for the other decisions.

use super::ports::port_blocks;
use super::resolve::{DecisionMap, Outcome, SportTable};
use super::{PREFIX_ANY_PORT, PREFIX_ANY_PROTO, SPORT_PREFIX_ANY};

/// One entry without its endpoint, identity and direction: `(proto, port, prefix_len,
/// outcome)`, port and proto zero beyond the prefix.
pub type RawEntry = (u8, u16, u32, Outcome);

/// The entries of one decision map; looked up by longest prefix they give exactly
/// [`DecisionMap::get`].
pub fn encode(map: &DecisionMap) -> Vec<RawEntry> {
    let mut out = vec![(0u8, 0u16, PREFIX_ANY_PROTO, map.other)];
    for (&proto, pieces) in &map.protos {
        // Blocks needed per outcome if it is NOT the protocol's default.
        let mut cost: Vec<(Outcome, usize)> = Vec::new();
        for &(a, b, o) in pieces {
            let n = port_blocks(a, b).len();
            match cost.iter_mut().find(|(x, _)| *x == o) {
                Some(c) => c.1 += n,
                None => cost.push((o, n)),
            }
        }
        let total: usize = cost.iter().map(|c| c.1).sum();
        // Default: the outcome saving the most blocks; the prefix-72 entry serves for free
        // when the default equals it.
        let default = cost
            .iter()
            .min_by_key(|(o, n)| (total - n + usize::from(*o != map.other), *o))
            .map_or(map.other, |c| c.0);
        if default != map.other {
            out.push((proto, 0, PREFIX_ANY_PORT, default));
        }
        for &(a, b, o) in pieces {
            if o == default {
                continue;
            }
            for blk in port_blocks(a, b) {
                out.push((
                    proto,
                    blk.base,
                    PREFIX_ANY_PORT + u32::from(blk.fixed_bits),
                    o,
                ));
            }
        }
    }
    out
}

/// The `sv_pol_sport` entries of one source-port table, without the table id: `(source
/// port, prefix_len, outcome)`. The outcome covering the most aligned blocks is the table's
/// default (prefix 32); the others are their blocks (prefix 32 + k). Looked up by longest
/// prefix they give exactly the table's outcome for every source port.
pub fn encode_sport(table: &SportTable) -> Vec<(u16, u32, Outcome)> {
    let mut cost: Vec<(Outcome, usize)> = Vec::new();
    for &(a, b, o) in table {
        let n = port_blocks(a, b).len();
        match cost.iter_mut().find(|(x, _)| *x == o) {
            Some(c) => c.1 += n,
            None => cost.push((o, n)),
        }
    }
    let Some(default) = cost
        .iter()
        .max_by_key(|(o, n)| (*n, std::cmp::Reverse(*o)))
        .map(|c| c.0)
    else {
        return Vec::new();
    };
    let mut out = vec![(0u16, SPORT_PREFIX_ANY, default)];
    for &(a, b, o) in table {
        if o == default {
            continue;
        }
        for blk in port_blocks(a, b) {
            out.push((blk.base, SPORT_PREFIX_ANY + u32::from(blk.fixed_bits), o));
        }
    }
    out
}
