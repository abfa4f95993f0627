//! Untracked (`doNotTrack`) host endpoint policy: the raw table, before conntrack, as Calico
//! renders it. See the module docs of [`crate::render`] for the layout.
//!
//! Order per packet: failsafe ports (`-j ACCEPT`: on to conntrack and the filter table, so a
//! failsafe connection is tracked and its replies match ESTABLISHED), then the untracked
//! tiers: a rule's Allow marks the packet (→ `NOTRACK` + `ACCEPT` at the end of the dispatch
//! chain, and the filter table accepts it without ordinary policy), Deny drops, anything else
//! returns to the ordinary pipeline (every untracked tier ends in Pass).

use std::collections::BTreeSet;

use serval_calc::{
    DesiredState, IpSetId,
    policy::{Direction, HostEndpointState},
};

use super::{
    MARK_ACCEPT, MARK_PASS, chains, comment, hashed_chain,
    policy::{Ctx, failsafe_accept, host_endpoint_matches, tier_rules},
};
use crate::rules::{Family, FamilyRules, Hook, Table, TableRules};

/// Renders the raw table (and the filter table's acceptance of untracked-allowed packets)
/// when a host endpoint has untracked policy selecting it in this family; otherwise nothing.
pub(super) fn render(
    state: &DesiredState,
    family: Family,
    out: &mut FamilyRules,
    used: &mut BTreeSet<IpSetId>,
) {
    // (host endpoint, its chain, dispatch matches) per direction.
    let mut dispatch: [Vec<(String, String, Vec<String>)>; 2] = [Vec::new(), Vec::new()];
    for (name, hep) in &state.host_endpoints {
        let Some((ins, outs)) = host_endpoint_matches(hep, family) else {
            continue;
        };
        for (i, (dir, matches)) in [(Direction::Ingress, ins), (Direction::Egress, outs)]
            .into_iter()
            .enumerate()
        {
            if !hep.untracked.direction(dir).is_empty() {
                let prefix = match dir {
                    Direction::Ingress => "SERVAL-UI-",
                    Direction::Egress => "SERVAL-UO-",
                };
                dispatch[i].push((name.clone(), hashed_chain(prefix, &[name]), matches));
            }
        }
    }
    if dispatch.iter().all(Vec::is_empty) {
        return;
    }

    let mut ctx = Ctx::new(state, family, used, ("SERVAL-UPI-", "SERVAL-UPO-"), None);
    let raw = out.table(Table::Raw);
    let accepted = format!("-m mark --mark {MARK_ACCEPT:#x}/{MARK_ACCEPT:#x}");
    let not_accepted = format!("-m mark --mark 0x0/{MARK_ACCEPT:#x}");
    for ((chain, builtin, iface_flag, dir), heps) in [
        (
            chains::RAW_PREROUTING,
            "PREROUTING",
            "-i",
            Direction::Ingress,
        ),
        (chains::RAW_OUTPUT, "OUTPUT", "-o", Direction::Egress),
    ]
    .into_iter()
    .zip(&dispatch)
    {
        raw.hooks.insert(Hook::new(builtin, chain));
        raw.push(
            chain,
            format!("-j MARK --set-xmark 0x0/{:#x}", MARK_ACCEPT | MARK_PASS),
        );
        // Workload interfaces are never host endpoints (a `*` endpoint means every other
        // interface); host ↔ own pods is not subject to host endpoint policy.
        let workload_ifaces: BTreeSet<&str> = state
            .endpoints
            .values()
            .map(|(ep, _)| ep.iface.as_str())
            .filter(|i| !i.is_empty())
            .collect();
        for iface in workload_ifaces {
            raw.push(chain, format!("{iface_flag} {iface} -j RETURN"));
        }
        for (name, hep_chain, matches) in heps {
            let hep = &state.host_endpoints[name];
            untracked_chain(&mut ctx, raw, hep_chain, hep, dir);
            let c = comment(&format!("untracked host endpoint {name}"));
            for m in matches {
                raw.push(chain, format!("{not_accepted} {m} {c} -j {hep_chain}"));
            }
        }
        raw.push(
            chain,
            format!(
                "{accepted} {} -j NOTRACK",
                comment("allowed by untracked policy")
            ),
        );
        raw.push(chain, format!("{accepted} -j ACCEPT"));
    }

    // Filter: a packet untracked policy allowed skips ordinary policy (it arrives with the
    // ACCEPT mark and no conntrack entry; the filter dispatch chains clear the mark later).
    let filter = out.table(Table::Filter);
    let rule = format!(
        "{accepted} -m conntrack --ctstate UNTRACKED {} -j ACCEPT",
        comment("allowed by untracked policy")
    );
    for chain in [chains::FORWARD, chains::INPUT, chains::OUTPUT] {
        filter
            .chains
            .entry(chain.to_owned())
            .or_default()
            .insert(0, rule.clone());
    }
}

/// One host endpoint's untracked chain for one direction: failsafe ports (and their replies,
/// which must not fall into untracked policy either), then the untracked tiers.
fn untracked_chain(
    ctx: &mut Ctx<'_>,
    t: &mut TableRules,
    chain: &str,
    hep: &HostEndpointState,
    dir: Direction,
) {
    t.chain(chain);
    let failsafe = &ctx.state.failsafe;
    // Ingress: inbound failsafe ports, and replies from outbound ones; egress the reverse.
    let (own, replies) = match dir {
        Direction::Ingress => (&failsafe.inbound, &failsafe.outbound),
        Direction::Egress => (&failsafe.outbound, &failsafe.inbound),
    };
    let rules: Vec<String> = own
        .iter()
        .filter_map(|fs| failsafe_accept(fs, dir, "--dport", ctx.family, "failsafe"))
        // A reply's remote side is the port's network either way (the inbound port's
        // clients are its egress replies' destinations).
        .chain(
            replies
                .iter()
                .filter_map(|fs| failsafe_accept(fs, dir, "--sport", ctx.family, "failsafe reply")),
        )
        .collect();
    for rule in rules {
        t.push(chain, rule);
    }
    for tier in hep.untracked.direction(dir) {
        tier_rules(ctx, t, chain, tier, dir);
    }
}
