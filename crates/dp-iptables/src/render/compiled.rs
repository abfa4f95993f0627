//! Policy from the compiled partition: an endpoint direction's tiers resolved ahead of time
//! ([`serval_calc::compile::partition`]) into decision groups over identity prefixes, so
//! the first packet of a connection does a constant amount of work whatever the number of
//! policies selecting the endpoint:
//!
//! ```text
//! SERVAL-TW-h (after conntrack, marks, anti-spoofing, failsafe ports):
//!     -m set --match-set serval-F-p-h src -g SERVAL-PD-h    one per decision group but one
//!     -g SERVAL-PD-h                                        the group needing the largest set
//! SERVAL-PD-h (one per distinct decision, named by its content, shared by endpoints):
//!     -p tcp -m multiport --dports 80,443 -g SERVAL-POL-ALLOW    (a protocol's exceptions)
//!     -p tcp -m multiport --dports 8080 -g SERVAL-PS-h           (depends on the source port)
//!     -p udp -j DROP                                             (a protocol's default)
//!     -j DROP / -g SERVAL-POL-ALLOW                              (every other protocol)
//! SERVAL-PS-h: -p tcp -m multiport --sports … verdict; the table's default verdict
//! SERVAL-POL-ALLOW: set the ACCEPT mark (falls off its end: back to SERVAL-FORWARD/-INPUT/
//!     -OUTPUT, which jumped to the endpoint chain; every jump below it is a goto)
//! ```
//!
//! The set of a group (`serval-4-p-h` / `serval-6-p-h`, named by the endpoint, direction and
//! group chain) holds the group's identity prefixes and, as `nomatch` entries, nested
//! prefixes of other groups, so its longest matching entry decides as the eBPF LPM lookup
//! does. Groups are distinct decisions (not policies): per packet, one set test per group,
//! then the group's protocol and port rules; neither grows with the number of policies or
//! of peers they name. The number of groups is the number of distinct decisions (peers
//! allowed different ports), which can reach the number of policies in the worst case; a
//! single lookup (a `skbinfo` set mapping each prefix to a group mark, `-j SET --map-set …
//! --map-mark`) would remove that, but the SET target's map form is refused outside the
//! mangle table (checked with iptables 1.8.9, nf_tables).
//!
//! Exactness: destination and source ports, named ports (local and remote), ICMP type and
//! code, `notProtocol`, `notNets`, `ipVersion`, Pass and tier defaults are all resolved by the
//! partition. Left to the per-policy rendering of [`super::policy`], for that endpoint and
//! direction only: tiers with a Log rule (iptables must still log), and local-side conditions
//! when a packet's local address is not known to be the endpoint's one address of its family
//! (host endpoints, whose packets may be for any local address; [`Inexact`]). ICMP type 255 is
//! iptables' "any type" and cannot be matched on its own: it gets its protocol's default.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serval_calc::{
    compile::{
        partition::{Inexact, Partition, set_entries},
        resolve::{DecisionMap, Outcome, SportTable},
    },
    policy::{Direction, IcmpMatch, PortRange, TierRules},
};

use super::{
    MARK_ACCEPT, chains, hashed_chain,
    policy::{Ctx, icmp_match, port_list},
};
use crate::{
    hash::short_hash,
    ipset::{net_member, nomatch_member, split_zero_prefix},
    rules::{Family, IpSet, SetType, TableRules},
};

/// The set of a decision group of an endpoint direction.
fn group_set_name(family: Family, owner: &str, dir: Direction, group_chain: &str) -> String {
    let d = match dir {
        Direction::Ingress => "in",
        Direction::Egress => "out",
    };
    format!(
        "serval-{}-p-{}",
        family.digit(),
        short_hash(&[owner, d, group_chain], 12)
    )
}

/// Renders an endpoint direction's `tiers` into `chain` from their partition. `owner`
/// names the endpoint (for set names), `addrs` are its own addresses, `local_known` says
/// they are every packet's local address (workloads). `Err` when the partition cannot
/// express them; nothing is rendered then.
#[expect(
    clippy::too_many_arguments,
    reason = "the endpoint chain's context, passed through"
)]
pub(super) fn render(
    ctx: &mut Ctx<'_>,
    t: &mut TableRules,
    chain: &str,
    owner: &str,
    addrs: &[IpAddr],
    local_known: bool,
    tiers: &[TierRules],
    dir: Direction,
) -> Result<(), Inexact> {
    let Some(cache) = ctx.partitions else {
        return Err(Inexact::LogRule);
    };
    let part = cache.partition(&ctx.state.ipsets, addrs, local_known, tiers, dir)?;
    let family = ctx.family;
    let prefixes: Vec<(IpNet, String)> = family_prefixes(ctx, t, &part);
    let entries = set_entries(&prefixes);
    // The group left without a set: the one whose set would be largest (on a tie, the one
    // holding the family's root, then the first name).
    let root = prefixes.first().map(|(_, k)| k.clone()).unwrap_or_default();
    let Some(fall) = entries
        .iter()
        .max_by_key(|(k, v)| (v.len(), **k == root, std::cmp::Reverse(k.as_str())))
        .map(|(k, _)| k.clone())
    else {
        return Err(Inexact::LogRule);
    };
    let side = match dir {
        Direction::Ingress => "src",
        Direction::Egress => "dst",
    };
    for (group, members) in &entries {
        if *group == fall {
            continue;
        }
        let name = group_set_name(family, owner, dir, group);
        let mut set = IpSet::new(SetType::HashNet);
        // Element → token; a later (more specific) entry for the same element wins, which
        // only happens when a /1 prefix meets the split of a /0.
        let mut tokens: BTreeMap<String, String> = BTreeMap::new();
        for (net, matches) in members {
            for n in split_zero_prefix(net) {
                let token = if *matches {
                    net_member(&n)
                } else {
                    nomatch_member(&n)
                };
                tokens.insert(net_member(&n), token);
            }
        }
        set.members.extend(tokens.into_values());
        t.push(
            chain,
            format!("-m set --match-set {name} {side} -g {group}"),
        );
        ctx.sets.insert(name, set);
    }
    t.push(chain, format!("-g {fall}"));
    Ok(())
}

/// The family's identity prefixes, each with its group's chain (rendered on first use).
fn family_prefixes(ctx: &Ctx<'_>, t: &mut TableRules, part: &Partition) -> Vec<(IpNet, String)> {
    let family = ctx.family;
    let mut chain_of: BTreeMap<usize, String> = BTreeMap::new();
    let mut out = Vec::new();
    for (net, g) in &part.prefixes {
        if Family::of(&net.addr()) != family {
            continue;
        }
        let name = chain_of
            .entry(*g)
            .or_insert_with(|| group_chain(t, family, &part.maps[*g]))
            .clone();
        out.push((*net, name));
    }
    out
}

fn allow_chain(t: &mut TableRules) {
    if !t.chains.contains_key(chains::POLICY_ALLOW) {
        t.push(
            chains::POLICY_ALLOW,
            format!("-j MARK --set-xmark {MARK_ACCEPT:#x}/{MARK_ACCEPT:#x}"),
        );
    }
}

/// A chain named by its content: pushed once, shared by whoever renders the same rules.
fn content_chain(t: &mut TableRules, prefix: &str, rules: Vec<String>) -> String {
    let text = rules.join("\n");
    let name = hashed_chain(prefix, &[&text]);
    if !t.chains.contains_key(&name) {
        for r in rules {
            t.push(&name, r);
        }
    }
    name
}

fn proto_text(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "ipv6-icmp".into(),
        132 => "sctp".into(),
        136 => "udplite".into(),
        n => n.to_string(),
    }
}

/// The protocols `-m multiport` serves.
fn has_ports(p: u8) -> bool {
    matches!(p, 6 | 17 | 132 | 136)
}

/// The target of a fixed outcome.
fn verdict(allow: bool) -> String {
    if allow {
        format!("-g {}", chains::POLICY_ALLOW)
    } else {
        "-j DROP".to_owned()
    }
}

/// The rules of one decision group, as a content-named chain.
fn group_chain(t: &mut TableRules, family: Family, map: &DecisionMap) -> String {
    allow_chain(t);
    let own_icmp = match family {
        Family::V4 => 1,
        Family::V6 => 58,
    };
    let other = verdict(map.other.allow);
    let mut rules = Vec::new();
    for (&proto, pieces) in &map.protos {
        let p = proto_text(proto);
        let target = |t: &mut TableRules, o: Outcome| -> String {
            if o.table == 0 {
                verdict(o.allow)
            } else {
                let table = &map.sport_tables[o.table as usize - 1];
                format!("-g {}", sport_chain(t, proto, table))
            }
        };
        // (target, matches) per distinct target; the default is the target with the most
        // matches (it needs none).
        let mut by_target: Vec<(String, Vec<String>)> = Vec::new();
        let mut add =
            |target: String, m: Vec<String>| match by_target.iter_mut().find(|(x, _)| *x == target)
            {
                Some((_, v)) => v.extend(m),
                None => by_target.push((target, m)),
            };
        if has_ports(proto) {
            let mut ranges: Vec<(String, Vec<PortRange>)> = Vec::new();
            for &(a, b, o) in pieces {
                let tg = target(t, o);
                let r = PortRange {
                    first: a as u16,
                    last: b as u16,
                };
                match ranges.iter_mut().find(|(x, _)| *x == tg) {
                    Some((_, v)) => v.push(r),
                    None => ranges.push((tg, vec![r])),
                }
            }
            for (tg, rs) in ranges {
                let m = port_list(&rs)
                    .into_iter()
                    .map(|l| format!("-p {p} -m multiport --dports {l}"))
                    .collect();
                add(tg, m);
            }
        } else if proto == own_icmp {
            for &(a, b, o) in pieces {
                let tg = target(t, o);
                add(tg, icmp_matches(family, &p, a, b));
            }
        } else {
            // No ports (or the other family's ICMP): one decision, the widest piece's.
            let Some(&(_, _, o)) = pieces.iter().max_by_key(|(a, b, _)| b - a) else {
                continue;
            };
            let tg = target(t, o);
            if tg != other {
                rules.push(format!("-p {p} {tg}"));
            }
            continue;
        }
        let Some(default) = by_target
            .iter()
            .max_by_key(|(tg, m)| (m.len(), *tg == other))
            .map(|(tg, _)| tg.clone())
        else {
            continue;
        };
        for (tg, ms) in &by_target {
            if *tg == default {
                continue;
            }
            for m in ms {
                rules.push(format!("{m} {tg}"));
            }
        }
        if default != other {
            rules.push(format!("-p {p} {default}"));
        }
    }
    rules.push(other);
    content_chain(t, "SERVAL-PD-", rules)
}

/// `-p icmp -m icmp --icmp-type T[/C]` matches covering `a..=b` of the `type << 8 | code`
/// space (type 255, iptables' "any", left out).
fn icmp_matches(family: Family, p: &str, a: u32, b: u32) -> Vec<String> {
    let mut out = Vec::new();
    for ty in (a >> 8)..=(b >> 8) {
        let Ok(type_) = u8::try_from(ty) else { break };
        if type_ == u8::MAX {
            continue;
        }
        let lo = if ty == a >> 8 { a & 0xff } else { 0 };
        let hi = if ty == b >> 8 { b & 0xff } else { 0xff };
        if lo == 0 && hi == 0xff {
            out.push(format!(
                "-p {p} {}",
                icmp_match(family, &IcmpMatch { type_, code: None }, false)
            ));
            continue;
        }
        for code in lo..=hi {
            let code = Some(code as u8);
            out.push(format!(
                "-p {p} {}",
                icmp_match(family, &IcmpMatch { type_, code }, false)
            ));
        }
    }
    out
}

/// The chain deciding by source port for one destination-port piece.
fn sport_chain(t: &mut TableRules, proto: u8, table: &SportTable) -> String {
    allow_chain(t);
    let p = proto_text(proto);
    let mut ranges: Vec<(String, Vec<PortRange>)> = Vec::new();
    for &(a, b, o) in table {
        let tg = verdict(o.allow);
        let r = PortRange {
            first: a as u16,
            last: b as u16,
        };
        match ranges.iter_mut().find(|(x, _)| *x == tg) {
            Some((_, v)) => v.push(r),
            None => ranges.push((tg, vec![r])),
        }
    }
    let lists: Vec<(String, Vec<String>)> = ranges
        .into_iter()
        .map(|(tg, rs)| (tg, port_list(&rs)))
        .collect();
    let default = lists
        .iter()
        .max_by_key(|(tg, l)| (l.len(), tg.starts_with("-j")))
        .map_or_else(|| verdict(false), |(tg, _)| tg.clone());
    let mut rules = Vec::new();
    for (tg, ls) in &lists {
        if *tg == default {
            continue;
        }
        for l in ls {
            rules.push(format!("-p {p} -m multiport --sports {l} {tg}"));
        }
    }
    rules.push(default);
    content_chain(t, "SERVAL-PS-", rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_port_decisions_get_a_chain_of_their_own() {
        let deny = Outcome::fixed(false, 0);
        let allow = Outcome::fixed(true, 0);
        let by_sport = Outcome {
            allow: false,
            rule: 0,
            table: 1,
        };
        // TCP: 80 allowed, 8000 allowed from source ports 0..=1023 only; UDP 53 allowed;
        // everything else denied.
        let map = DecisionMap {
            other: deny,
            protos: [
                (
                    6,
                    vec![
                        (0, 79, deny),
                        (80, 80, allow),
                        (81, 7999, deny),
                        (8000, 8000, by_sport),
                        (8001, 0xffff, deny),
                    ],
                ),
                (17, vec![(0, 52, deny), (53, 53, allow), (54, 0xffff, deny)]),
            ]
            .into_iter()
            .collect(),
            sport_tables: vec![vec![(0, 1023, allow), (1024, 0xffff, deny)]],
        };
        let mut t = TableRules::default();
        let pd = group_chain(&mut t, Family::V4, &map);
        let rules = &t.chains[&pd];
        let ps = t
            .chains
            .keys()
            .find(|c| c.starts_with("SERVAL-PS-"))
            .expect("a source-port chain")
            .clone();
        assert_eq!(
            rules,
            &[
                "-p tcp -m multiport --dports 80 -g SERVAL-POL-ALLOW".to_owned(),
                format!("-p tcp -m multiport --dports 8000 -g {ps}"),
                "-p udp -m multiport --dports 53 -g SERVAL-POL-ALLOW".to_owned(),
                "-j DROP".to_owned(),
            ]
        );
        assert_eq!(
            t.chains[&ps],
            [
                "-p tcp -m multiport --sports 0:1023 -g SERVAL-POL-ALLOW",
                "-j DROP"
            ]
        );
        assert_eq!(
            t.chains[chains::POLICY_ALLOW],
            ["-j MARK --set-xmark 0x10000/0x10000"]
        );
        // The same decision renders the same chain (shared by name).
        assert_eq!(group_chain(&mut t, Family::V4, &map), pd);
        assert_eq!(t.chains.len(), 3);
    }

    #[test]
    fn icmp_intervals_become_type_and_code_matches() {
        let all = |a, b| icmp_matches(Family::V4, "icmp", a, b);
        assert_eq!(all(0x800, 0x8ff), ["-p icmp -m icmp --icmp-type 8"]);
        assert_eq!(all(0x800, 0x800), ["-p icmp -m icmp --icmp-type 8/0"]);
        assert_eq!(all(0x7fe, 0x900).len(), 2 + 1 + 1);
        // Type 255 is iptables' "any type": never rendered.
        assert_eq!(all(0xfe00, 0xffff), ["-p icmp -m icmp --icmp-type 254"]);
        assert_eq!(
            icmp_matches(Family::V6, "ipv6-icmp", 0x8000, 0x80ff),
            ["-p ipv6-icmp -m icmp6 --icmpv6-type 128"]
        );
    }
}
