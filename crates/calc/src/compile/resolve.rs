//! Ordered Calico policy resolved ahead of time: for one endpoint, one direction and one
//! group of remote identities (same family, same membership in the sets the rules name), the
//! decision for every (protocol, port) as a disjoint partition.
//!
//! Source ports: the source-port ranges the rules name (ranges and the group's named ports)
//! cut the source-port space into a few elementary intervals; the tiers are resolved once
//! per interval (a rule's source-port condition is constant on each), and a destination-port
//! interval whose decision differs between source intervals gets a *source-port table*
//! ([`DecisionMap::sport_tables`]): the program's second lookup.

use std::collections::{BTreeMap, BTreeSet};

use super::ports::{PORT_MAX, PortSet};
use super::{RuleRef, SetKey};
use crate::ipsets::IpSetId;
use crate::policy::{Action, Direction, EndOfTier, Rule, RuleMatch, TierRules};

/// A decision: allow or deny, and the compiled rule id (see [`RuleRef`]) that made it; or,
/// when `table` is not 0, "depends on the source port: see source-port table `table - 1` of
/// the [`DecisionMap`]" (`allow` and `rule` are then false and 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Outcome {
    pub allow: bool,
    pub rule: u32,
    pub table: u32,
}

impl Outcome {
    pub fn fixed(allow: bool, rule: u32) -> Outcome {
        Outcome {
            allow,
            rule,
            table: 0,
        }
    }
}

/// A partition of the source-port space `0..=PORT_MAX` into `(first, last, outcome)`
/// intervals (outcomes without tables), adjacent equal outcomes merged.
pub type SportTable = Vec<(u32, u32, Outcome)>;

/// The decision over (protocol, port) for one group: `other` for every protocol not in
/// `protos`; `protos` maps a protocol to a partition of `0..=PORT_MAX` into intervals
/// `(first, last, outcome)`. Normalised: a protocol whose partition is one interval with
/// the `other` outcome is left out, adjacent intervals with equal outcomes are merged.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DecisionMap {
    pub other: Outcome,
    pub protos: BTreeMap<u8, Vec<(u32, u32, Outcome)>>,
    /// Source-port tables the outcomes refer to (`Outcome::table` - 1).
    pub sport_tables: Vec<SportTable>,
}

impl DecisionMap {
    /// The outcome for one (protocol, port).
    pub fn get(&self, proto: u8, port: u16) -> Outcome {
        match self.protos.get(&proto) {
            None => self.other,
            Some(pieces) => pieces
                .iter()
                .find(|(a, b, _)| *a <= u32::from(port) && u32::from(port) <= *b)
                .map_or(self.other, |p| p.2),
        }
    }

    /// The final outcome for one (protocol, source port, destination port).
    pub fn get_with_sport(&self, proto: u8, sport: u16, port: u16) -> Outcome {
        let o = self.get(proto, port);
        if o.table == 0 {
            return o;
        }
        self.sport_tables[o.table as usize - 1]
            .iter()
            .find(|(a, b, _)| *a <= u32::from(sport) && u32::from(sport) <= *b)
            .map_or(o, |p| p.2)
    }
}

/// What the local endpoint's own address (of one family) is a member of, restricted to the
/// sets the rules evaluate on the local side.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct LocalFam {
    /// The endpoint has an address of this family.
    pub present: bool,
    pub in_sets: BTreeSet<IpSetId>,
    /// `(named-port set, protocol, port)` containing the local address.
    pub named: BTreeSet<(IpSetId, u8, u16)>,
}

/// Inclusive port ranges.
type Ranges = Vec<(u32, u32)>;

/// The protocols with ports (TCP, UDP, SCTP, UDPLite), as the evaluator has them.
pub fn has_ports(proto: u8) -> bool {
    matches!(proto, 6 | 17 | 132 | 136)
}

fn is_icmp(proto: u8) -> bool {
    matches!(proto, 1 | 58)
}

/// True when the rule has a source-port condition (resolved through source-port tables).
pub fn has_src_port_condition(m: &RuleMatch) -> bool {
    !(m.src_ports.is_empty()
        && m.not_src_ports.is_empty()
        && m.src_named_port_sets.is_empty()
        && m.not_src_named_port_sets.is_empty())
}

/// One group of remote identities, with the local view of the family.
pub struct Group<'a> {
    pub dir: Direction,
    pub v4: bool,
    /// The remote identities' class, projected on the sets the rules name on the remote side.
    pub remote: &'a BTreeSet<SetKey>,
    pub local: &'a LocalFam,
}

impl Group<'_> {
    fn remote_in(&self, id: &IpSetId) -> bool {
        self.remote.contains(&SetKey::Set(id.clone()))
    }

    fn local_in(&self, id: &IpSetId) -> bool {
        self.local.present && self.local.in_sets.contains(id)
    }

    /// Ports `p` such that `(dst address, proto, p)` is in the named-port set.
    fn dst_named_ports(&self, id: &IpSetId, proto: u8) -> impl Iterator<Item = u32> + '_ {
        self.named_ports(self.dir == Direction::Egress, id, proto)
    }

    /// Ports `p` such that `(src address, proto, p)` is in the named-port set.
    fn src_named_ports(&self, id: &IpSetId, proto: u8) -> impl Iterator<Item = u32> + '_ {
        self.named_ports(self.dir == Direction::Ingress, id, proto)
    }

    /// Ports of the named-port set for the remote side's address (`remote`) or the local
    /// endpoint's.
    fn named_ports(&self, remote: bool, id: &IpSetId, proto: u8) -> impl Iterator<Item = u32> + '_ {
        let ports: Vec<u32> = if remote {
            self.remote
                .iter()
                .filter_map(|k| match k {
                    SetKey::NamedPort {
                        set,
                        proto: p,
                        port,
                    } if set == id && *p == proto => Some(u32::from(*port)),
                    _ => None,
                })
                .collect()
        } else {
            self.local
                .named
                .iter()
                .filter(|(s, p, _)| self.local.present && s == id && *p == proto)
                .map(|(_, _, port)| u32::from(*port))
                .collect()
        };
        ports.into_iter()
    }

    /// The source-port ranges (`first`, `last`) of the rule's source-port conditions for
    /// this group: `(ports, not_ports)`, each empty when the rule has none.
    fn src_port_ranges(&self, m: &RuleMatch, proto: u8) -> (Ranges, Ranges) {
        let named = |ids: &[IpSetId]| -> Vec<(u32, u32)> {
            ids.iter()
                .flat_map(|id| self.src_named_ports(id, proto).collect::<Vec<_>>())
                .map(|p| (p, p))
                .collect()
        };
        let pos = m
            .src_ports
            .iter()
            .map(|r| (u32::from(r.first), u32::from(r.last)))
            .chain(named(&m.src_named_port_sets))
            .collect();
        let neg = m
            .not_src_ports
            .iter()
            .map(|r| (u32::from(r.first), u32::from(r.last)))
            .chain(named(&m.not_src_named_port_sets))
            .collect();
        (pos, neg)
    }

    /// The destination ports (of `proto`) a rule matches for this group, for packets from
    /// source port `sport`.
    pub fn rule_ports(&self, r: &Rule, proto: u8, sport: u32) -> PortSet {
        let m = &r.r#match;
        let empty = PortSet::empty();
        if m.ip_version.is_some_and(|v| (v == 4) != self.v4) {
            return empty;
        }
        if m.protocol.is_some_and(|p| p.number() != proto)
            || m.not_protocol.is_some_and(|p| p.number() == proto)
        {
            return empty;
        }
        let (remote_sets, not_remote, local_sets, not_local) = match self.dir {
            Direction::Ingress => (&m.src_sets, &m.not_src_sets, &m.dst_sets, &m.not_dst_sets),
            Direction::Egress => (&m.dst_sets, &m.not_dst_sets, &m.src_sets, &m.not_src_sets),
        };
        if !remote_sets.iter().all(|s| self.remote_in(s))
            || not_remote.iter().any(|s| self.remote_in(s))
            || !local_sets.iter().all(|s| self.local_in(s))
            || not_local.iter().any(|s| self.local_in(s))
        {
            return empty;
        }
        let mut acc = PortSet::full();
        let dst_named = |ids: &[IpSetId]| -> Vec<(u32, u32)> {
            ids.iter()
                .flat_map(|id| self.dst_named_ports(id, proto).collect::<Vec<_>>())
                .map(|p| (p, p))
                .collect()
        };
        if !(m.dst_ports.is_empty() && m.dst_named_port_sets.is_empty()) {
            if !has_ports(proto) {
                return empty;
            }
            let ranges = m
                .dst_ports
                .iter()
                .map(|r| (u32::from(r.first), u32::from(r.last)))
                .chain(dst_named(&m.dst_named_port_sets));
            acc = acc.intersect(&PortSet::from_ranges(ranges));
        }
        if !(m.not_dst_ports.is_empty() && m.not_dst_named_port_sets.is_empty()) {
            if !has_ports(proto) {
                return empty;
            }
            let ranges = m
                .not_dst_ports
                .iter()
                .map(|r| (u32::from(r.first), u32::from(r.last)))
                .chain(dst_named(&m.not_dst_named_port_sets));
            acc = acc.subtract(&PortSet::from_ranges(ranges));
        }
        if has_src_port_condition(m) {
            if !has_ports(proto) {
                // A packet without ports never matches a port condition.
                return empty;
            }
            let (pos, neg) = self.src_port_ranges(m, proto);
            let within = |v: &[(u32, u32)]| v.iter().any(|&(a, b)| a <= sport && sport <= b);
            let pos_given = !(m.src_ports.is_empty() && m.src_named_port_sets.is_empty());
            let neg_given = !(m.not_src_ports.is_empty() && m.not_src_named_port_sets.is_empty());
            if (pos_given && !within(&pos)) || (neg_given && within(&neg)) {
                return empty;
            }
        }
        for (icmp, negated) in [(m.icmp, false), (m.not_icmp, true)] {
            let Some(i) = icmp else { continue };
            let t = u32::from(i.type_) << 8;
            let range = match i.code {
                Some(c) => PortSet::from_ranges([(t | u32::from(c), t | u32::from(c))]),
                None => PortSet::from_ranges([(t, t | 0xff)]),
            };
            match (negated, is_icmp(proto)) {
                (false, false) => return empty,
                (false, true) => acc = acc.intersect(&range),
                (true, false) => {}
                (true, true) => acc = acc.subtract(&range),
            }
        }
        acc
    }
}

/// Rule ids by reference (allocated before resolving).
pub type RuleIds = BTreeMap<RuleRef, u32>;

fn rule_id(ids: &RuleIds, r: &RuleRef) -> u32 {
    ids.get(r).copied().unwrap_or(super::RULE_NONE)
}

/// The starts of the elementary source-port intervals of `proto` for a group: the
/// source-port ranges any rule names cut `0..=PORT_MAX` there (always starts with 0).
fn sport_cuts(tiers: &[TierRules], g: &Group<'_>, proto: u8) -> Vec<u32> {
    let mut cuts: BTreeSet<u32> = [0].into_iter().collect();
    if !has_ports(proto) {
        return cuts.into_iter().collect();
    }
    for r in tiers
        .iter()
        .flat_map(|t| &t.policies)
        .flat_map(|p| &p.rules)
        .filter(|r| has_src_port_condition(&r.r#match))
    {
        let (pos, neg) = g.src_port_ranges(&r.r#match, proto);
        for (a, b) in pos.into_iter().chain(neg) {
            if a <= b && a <= PORT_MAX {
                cuts.insert(a);
                if b < PORT_MAX {
                    cuts.insert(b + 1);
                }
            }
        }
    }
    cuts.into_iter().collect()
}

/// The partition of the destination-port space of `proto` for a group and packets from
/// source port `sport`: walks tiers, policies and rules over port intervals instead of one
/// packet.
fn resolve_proto(
    tiers: &[TierRules],
    g: &Group<'_>,
    proto: u8,
    sport: u32,
    ids: &RuleIds,
) -> Vec<(PortSet, Outcome)> {
    if tiers.is_empty() {
        let o = Outcome::fixed(true, rule_id(ids, &RuleRef::NoPolicy));
        return vec![(PortSet::full(), o)];
    }
    let mut out = Vec::new();
    let mut live = PortSet::full();
    for tier in tiers {
        let mut pending = live;
        let mut passed = PortSet::empty();
        'rules: for policy in &tier.policies {
            for rule in &policy.rules {
                if pending.is_empty() {
                    break 'rules;
                }
                if rule.action == Action::Log {
                    continue;
                }
                let hit = pending.intersect(&g.rule_ports(rule, proto, sport));
                if hit.is_empty() {
                    continue;
                }
                pending = pending.subtract(&hit);
                match rule.action {
                    Action::Allow | Action::Deny => {
                        let o = Outcome::fixed(
                            rule.action == Action::Allow,
                            rule_id(ids, &RuleRef::Rule(rule.id.clone())),
                        );
                        out.push((hit, o));
                    }
                    Action::Pass => passed = passed.union(&hit),
                    Action::Log => {}
                }
            }
        }
        match tier.default_action {
            EndOfTier::Deny => {
                if !pending.is_empty() {
                    let o =
                        Outcome::fixed(false, rule_id(ids, &RuleRef::EndOfTier(tier.name.clone())));
                    out.push((pending, o));
                }
            }
            EndOfTier::Pass => passed = passed.union(&pending),
        }
        live = passed;
        if live.is_empty() {
            return out;
        }
    }
    let o = Outcome::fixed(true, rule_id(ids, &RuleRef::PassedAllTiers));
    out.push((live, o));
    out
}

fn pieces(parts: Vec<(PortSet, Outcome)>) -> Vec<(u32, u32, Outcome)> {
    let v: Vec<(u32, u32, Outcome)> = parts
        .iter()
        .flat_map(|(s, o)| s.intervals().iter().map(move |&(a, b)| (a, b, *o)))
        .collect();
    merge_pieces(v)
}

/// Sorts disjoint intervals and merges adjacent ones with equal outcomes.
fn merge_pieces(mut v: Vec<(u32, u32, Outcome)>) -> Vec<(u32, u32, Outcome)> {
    v.sort_unstable();
    let mut out: Vec<(u32, u32, Outcome)> = Vec::with_capacity(v.len());
    for (a, b, o) in v {
        match out.last_mut() {
            Some(last) if last.2 == o && last.1 + 1 == a => last.1 = b,
            _ => out.push((a, b, o)),
        }
    }
    debug_assert!(out.first().is_some_and(|p| p.0 == 0));
    debug_assert!(out.last().is_some_and(|p| p.1 == PORT_MAX));
    debug_assert!(out.windows(2).all(|w| w[0].1 + 1 == w[1].0));
    out
}

/// The protocols whose decisions may differ from the rest: the port and ICMP protocols and
/// every protocol a rule names. Returns them with one protocol number not among them that
/// stands for every other protocol.
pub fn relevant_protos(tiers: &[TierRules]) -> (BTreeSet<u8>, u8) {
    let mut set: BTreeSet<u8> = [1u8, 6, 17, 58, 132, 136].into_iter().collect();
    for r in tiers
        .iter()
        .flat_map(|t| &t.policies)
        .flat_map(|p| &p.rules)
    {
        set.extend(r.r#match.protocol.map(|p| p.number()));
        set.extend(r.r#match.not_protocol.map(|p| p.number()));
    }
    // 256 values and at most 256 named: if every protocol is named there is no "other".
    let other = (0..=255u8).find(|p| !set.contains(p)).unwrap_or(255);
    (set, other)
}

/// The outcome of the piece containing `port` (pieces cover the whole space).
fn piece_at(pieces: &[(u32, u32, Outcome)], port: u32) -> Outcome {
    pieces
        .iter()
        .find(|(a, b, _)| *a <= port && port <= *b)
        .map_or_else(|| pieces[0].2, |p| p.2)
}

/// The destination-port partition of `proto` over every source port: one resolution per
/// elementary source-port interval; where they differ, a source-port table (interned in
/// `tables`).
fn resolve_proto_sports(
    tiers: &[TierRules],
    g: &Group<'_>,
    proto: u8,
    ids: &RuleIds,
    tables: &mut Vec<SportTable>,
) -> Vec<(u32, u32, Outcome)> {
    let cuts = sport_cuts(tiers, g, proto);
    let per_sport: Vec<Vec<(u32, u32, Outcome)>> = cuts
        .iter()
        .map(|&s| pieces(resolve_proto(tiers, g, proto, s, ids)))
        .collect();
    if per_sport.iter().all(|p| *p == per_sport[0]) {
        return per_sport.into_iter().next().unwrap_or_default();
    }
    // Destination-port boundaries of every source interval's partition.
    let bounds: BTreeSet<u32> = per_sport
        .iter()
        .flat_map(|p| p.iter().map(|x| x.0))
        .collect();
    let bounds: Vec<u32> = bounds.into_iter().collect();
    let mut out = Vec::with_capacity(bounds.len());
    for (i, &a) in bounds.iter().enumerate() {
        let b = bounds.get(i + 1).map_or(PORT_MAX, |n| n - 1);
        let outs: Vec<Outcome> = per_sport.iter().map(|p| piece_at(p, a)).collect();
        if outs.iter().all(|o| *o == outs[0]) {
            out.push((a, b, outs[0]));
            continue;
        }
        let table = merge_pieces(
            cuts.iter()
                .enumerate()
                .map(|(j, &s)| (s, cuts.get(j + 1).map_or(PORT_MAX, |n| n - 1), outs[j]))
                .collect(),
        );
        let idx = match tables.iter().position(|t| *t == table) {
            Some(i) => i,
            None => {
                tables.push(table);
                tables.len() - 1
            }
        };
        let o = Outcome {
            allow: false,
            rule: 0,
            table: u32::try_from(idx + 1).unwrap_or(u32::MAX),
        };
        out.push((a, b, o));
    }
    merge_pieces(out)
}

/// The decision map of one group.
pub fn resolve(
    tiers: &[TierRules],
    g: &Group<'_>,
    protos: &BTreeSet<u8>,
    other: u8,
    ids: &RuleIds,
) -> DecisionMap {
    let other_pieces = pieces(resolve_proto(tiers, g, other, 0, ids));
    // Protocols without ports and without ICMP are decided by protocol alone.
    let other_outcome = other_pieces[0].2;
    let mut map = DecisionMap {
        other: other_outcome,
        protos: BTreeMap::new(),
        sport_tables: Vec::new(),
    };
    for &p in protos {
        let pc = resolve_proto_sports(tiers, g, p, ids, &mut map.sport_tables);
        if pc.len() == 1 && pc[0].2 == other_outcome {
            continue;
        }
        map.protos.insert(p, pc);
    }
    map
}
