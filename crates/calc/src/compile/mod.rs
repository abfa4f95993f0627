//! The policy compiler of the eBPF dataplane: a [`DesiredState`] → an address-to-identity
//! LPM table and per-endpoint verdict entries, laid out exactly as the maps `sv_routes` and
//! `sv_policy` of `crates/dp-bpf/bpf/serval_maps.h` hold them, so the map writer dumps
//! [`CompiledPolicy`] as it is. Per packet the dataplane then does three lookups, whatever
//! the number of policies, rules or endpoints (DESIGN.md principle 3).
//!
//! # Identities
//!
//! The sets that local endpoints' rules evaluate on the REMOTE address (ingress: `src_sets`,
//! `not_src_sets`; egress: `dst_sets`, `not_dst_sets` and the destination named-port sets)
//! are laid on a prefix trie ([`trie::classes`]). An identity is an equivalence class of
//! addresses: same family, same set membership. A named-port set `S` with members
//! `(addr, proto, port)` becomes one pseudo-set [`SetKey::NamedPort`] `(S, proto, port)` per
//! distinct (proto, port), whose members are the addresses: the address part is an identity
//! condition, the port part goes to the port dimension of the verdict key (the set usually
//! has one or two (proto, port) pairs, so this adds few classes).
//!
//! Reserved ids: [`IDENTITY_ANY`] (0, the verdict wildcard, never an address's identity),
//! [`IDENTITY_WORLD`] (1: IPv4 addresses in no set, `0.0.0.0/0`) and [`IDENTITY_WORLD6`]
//! (2: IPv6 addresses in no set, `::/0`; the families must differ because `ipVersion` rules
//! and the endpoint's own per-family address make verdicts family-dependent). Other ids
//! are `fnv1a(class)` folded to 32 bits (probing upwards on a clash), and
//! [`compile_incremental`] keeps every class's previous id, so ids survive recompiles and,
//! barring hash clashes, restarts.
//!
//! # Verdict entries
//!
//! For each local endpoint and direction, the tiers are resolved over (remote identity
//! group × protocol × port interval) into a disjoint partition (see [`resolve`]): Calico's
//! semantics, first Allow/Deny decides, Log goes on, Pass leaves the tier, the tier's
//! default action at its end, no tier → allow. The decision map shared by the most
//! identities goes under [`IDENTITY_ANY`]; every identity whose map differs gets a complete
//! entry set (with a prefix-72 entry), so the program's two lookups, (ep, identity, …)
//! then (ep, ANY, …), are exact. Within one identity the entries rely on longest match:
//! prefix 72 (any protocol), 80 (a protocol's default) and 80+k aligned port blocks
//! ([`ports::port_blocks`]). ICMP's "port" is `type << 8 | code`.
//!
//! Endpoint ids ([`CompiledPolicy::endpoints`]) are `fnv1a("namespace/pod")` folded to 32
//! bits, never 0, probing upwards on a clash, previous ids kept. Rule ids
//! ([`CompiledPolicy::rules`]) name what decided: a rule, a tier's end, no policy, every tier
//! passed (see [`RuleRef`]); allocated the same way.
//!
//! # Bounds
//!
//! - Identities ≤ distinct member prefixes of remote-side sets + 2; identity prefixes ≤
//!   that (a prefix whose class equals its parent's is left out).
//! - Per endpoint and direction: entries = (identities whose decision differs from the
//!   ANY decision + 1) × entries per decision map. A map has 1 (prefix 72) + per relevant
//!   protocol (port/ICMP protocols and those rules name) at most 1 + 30 × (its intervals
//!   of non-default outcome); intervals are at most 2 × the port ranges the rules name
//!   plus 1. `notNets` / `notSelector` name their set's identities like `nets` do (they do not
//!   enumerate the complement), and negated ports cost one interval per named range, so
//!   neither explodes.
//! - Compile time: one resolution per distinct (policy shape, local address view,
//!   identity group); endpoints with the same policy and local view share the work.
//!
//! # Source ports
//!
//! Source-port conditions (`src_ports`, `not_src_ports`, source named ports) are exact, at
//! one more lookup for the packets they concern: a verdict entry whose decision depends on
//! the source port has verdict [`PolicyVerdict::BySourcePort`] and, in place of the rule id,
//! the id of a *source-port table*; the program then looks up `sv_pol_sport` at (table,
//! source port), an LPM trie of aligned source-port blocks ([`SportEntry`]: prefix 32 = any
//! source port, 32 + k = ports sharing the top k bits). Tables are resolved per identity
//! group ([`resolve`]: once per elementary source-port interval the rules cut), deduplicated
//! by content across endpoints and keep their ids across recompiles like identities do.
//! Source named ports are identity conditions on the source address (the remote's on
//! ingress, so they join the identity classes like destination named ports on egress).
//!
//! An endpoint with two addresses of one family is compiled with its first (local-side sets
//! are evaluated on it).
//!
//! # For the map writer (dp-bpf)
//!
//! - `sv_routes`: one entry per [`CompiledPolicy::identities`] prefix ([`trie::route_key`]
//!   gives prefixlen and the IPv4-mapped address), merged with the routes: a route prefix
//!   gets `identity = PolicyIndex::identity_of_net(route)`, an identity prefix that is not
//!   a route gets the flags of the longest route containing it. `::/0` carries
//!   [`IDENTITY_WORLD6`] (2), which serval_maps.h should name (`SV_IDENTITY_WORLD6`).
//! - `sv_policy`: one entry per [`PolicyEntry`]: key `{prefix_len, key_data()}`, value
//!   `{verdict.code(), rule_id}`.
//! - `sv_pol_sport`: one entry per [`SportEntry`]: key `{prefix_len, key_data()}`, value
//!   `{verdict.code(), rule_id}`; written before the `sv_policy` entries naming its table.
//! - `sv_eps`: `ep_id` from [`CompiledPolicy::endpoints`].
//! - Updates: [`diff()`] and the order documented on [`CompiledDelta`]; keep the previous
//!   [`CompiledPolicy`] and pass it to [`compile_incremental`].
//! - The program's policy port must be the destination port for SCTP (and UDPLite) too,
//!   as [`policy_port`] has it; otherwise SCTP port rules cannot match.

pub mod diff;
pub mod encode;
pub mod hep;
pub mod lookup;
pub mod partition;
pub mod ports;
pub mod resolve;
pub mod trie;

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::endpoints::{Endpoint, EndpointKey};
use crate::ipsets::{IpSetId, IpSetMembers};
use crate::policy::{Action, Direction, EndOfTier, RuleId, TierRules};
use crate::state::DesiredState;

pub use diff::{CompiledDelta, diff};
pub use lookup::{PolicyIndex, lookup, policy_port};
use resolve::{DecisionMap, Group, LocalFam, RuleIds};

/// The verdict wildcard identity (`SV_IDENTITY_ANY`).
pub const IDENTITY_ANY: u32 = 0;
/// IPv4 addresses in no set (`SV_IDENTITY_WORLD`; `0.0.0.0/0`).
pub const IDENTITY_WORLD: u32 = 1;
/// IPv6 addresses in no set (`::/0`). Not yet in serval_maps.h; the map writer installs
/// `::/0` with it, so the program's miss fallback (WORLD) only serves unwritten maps.
pub const IDENTITY_WORLD6: u32 = 2;
/// Allocated identities, endpoint ids and rule ids are at least this.
pub const FIRST_ALLOCATED_ID: u32 = 16;

/// `SV_DIR_INGRESS` / `SV_DIR_EGRESS`.
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;
/// `SV_POL_PREFIX_*`.
pub const PREFIX_ANY_PROTO: u32 = 72;
pub const PREFIX_ANY_PORT: u32 = 80;
pub const PREFIX_FULL: u32 = 96;

/// Rule ids with a fixed meaning.
pub const RULE_NONE: u32 = 0;
pub const RULE_NO_POLICY: u32 = 1;
pub const RULE_PASSED_ALL_TIERS: u32 = 2;

/// `SV_DIR_*` of a direction.
pub fn dir_code(d: Direction) -> u8 {
    match d {
        Direction::Ingress => DIR_INGRESS,
        Direction::Egress => DIR_EGRESS,
    }
}

/// `SV_VERDICT_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PolicyVerdict {
    Allow = 1,
    Deny = 2,
    /// `SV_VERDICT_BY_SPORT`: the decision depends on the source port; the entry's rule id
    /// is a source-port table id (see [`SportEntry`]). Never in a [`SportEntry`].
    BySourcePort = 3,
}

/// `SV_POL_SPORT_PREFIX_*`: `sv_pol_sport` prefix lengths (table id, then source port).
pub const SPORT_PREFIX_ANY: u32 = 32;
pub const SPORT_PREFIX_FULL: u32 = 48;

/// One `sv_pol_sport` entry, host byte order: in source-port table `table`, the source ports
/// sharing the top `prefix_len - 32` bits with `sport` get `verdict` (Allow or Deny) by
/// `rule_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SportEntry {
    pub table: u32,
    pub sport: u16,
    /// 32 + k (k ≤ 16).
    pub prefix_len: u32,
    pub verdict: PolicyVerdict,
    pub rule_id: u32,
}

/// The key of a [`SportEntry`]: (table, source port, prefix length).
pub type SportKey = (u32, u16, u32);

impl SportEntry {
    /// `struct sv_pol_sport_match` as bytes (network byte order).
    pub fn key_data(&self) -> [u8; 8] {
        sport_key_data(self.table, self.sport)
    }

    pub fn key(&self) -> SportKey {
        (self.table, self.sport, self.prefix_len)
    }
}

/// `struct sv_pol_sport_match` as bytes (network byte order).
pub fn sport_key_data(table: u32, sport: u16) -> [u8; 8] {
    let mut d = [0u8; 8];
    d[0..4].copy_from_slice(&table.to_be_bytes());
    d[4..6].copy_from_slice(&sport.to_be_bytes());
    d
}

impl PolicyVerdict {
    pub fn code(self) -> u32 {
        self as u32
    }
}

/// What an identity class is made of.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SetKey {
    /// Member of an address set.
    Set(IpSetId),
    /// Address part of a named-port set member `(addr, proto, port)`.
    NamedPort { set: IpSetId, proto: u8, port: u16 },
}

/// The class an identity stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IdentityClass {
    pub v4: bool,
    pub sets: BTreeSet<SetKey>,
}

/// What a rule id names (for flow logs and `serval trace`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RuleRef {
    /// An Allow or Deny rule.
    Rule(RuleId),
    /// The end of this tier (default action Deny).
    EndOfTier(String),
    /// No tier selects the endpoint for the direction: allowed.
    NoPolicy,
    /// Every tier passed: allowed.
    PassedAllTiers,
}

impl std::fmt::Display for RuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuleRef::Rule(r) => write!(f, "{r}"),
            RuleRef::EndOfTier(t) => write!(f, "end of tier {t}"),
            RuleRef::NoPolicy => f.write_str("no policy"),
            RuleRef::PassedAllTiers => f.write_str("passed every tier"),
        }
    }
}

/// One `sv_policy` entry, in host byte order (the writer converts `ep_id`,
/// `remote_identity` and `port` to network order; see [`PolicyEntry::key_data`]). `proto`
/// and `port` are zero beyond `prefix_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PolicyEntry {
    pub ep_id: u32,
    pub remote_identity: u32,
    /// [`DIR_INGRESS`] or [`DIR_EGRESS`].
    pub dir: u8,
    pub proto: u8,
    pub port: u16,
    /// 72, 80 or 80 + k (k ≤ 16).
    pub prefix_len: u32,
    pub verdict: PolicyVerdict,
    pub rule_id: u32,
}

/// The key of a [`PolicyEntry`] (what identifies it in the map).
pub type EntryKey = (u32, u32, u8, u8, u16, u32);

impl PolicyEntry {
    /// `struct sv_pol_match` as bytes (network byte order).
    pub fn key_data(&self) -> [u8; 12] {
        key_data(
            self.ep_id,
            self.remote_identity,
            self.dir,
            self.proto,
            self.port,
        )
    }

    pub fn key(&self) -> EntryKey {
        (
            self.ep_id,
            self.remote_identity,
            self.dir,
            self.proto,
            self.port,
            self.prefix_len,
        )
    }
}

/// `struct sv_pol_match` as bytes (network byte order).
pub fn key_data(ep_id: u32, remote: u32, dir: u8, proto: u8, port: u16) -> [u8; 12] {
    let mut d = [0u8; 12];
    d[0..4].copy_from_slice(&ep_id.to_be_bytes());
    d[4..8].copy_from_slice(&remote.to_be_bytes());
    d[8] = dir;
    d[9] = proto;
    d[10..12].copy_from_slice(&port.to_be_bytes());
    d
}

/// Entry counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CompileStats {
    pub endpoints: usize,
    /// Distinct identities (classes), WORLD and WORLD6 included.
    pub identities: usize,
    /// Identity prefixes (`identities` of [`CompiledPolicy`]).
    pub identity_prefixes: usize,
    pub entries: usize,
    pub max_entries_per_endpoint: usize,
    /// Distinct (policy, local view) shapes resolved.
    pub shapes: usize,
    /// Source-port tables and their `sv_pol_sport` entries.
    pub sport_tables: usize,
    pub sport_entries: usize,
}

/// The compiled policy of a node: a straight dump of `sv_routes` identities and
/// `sv_policy`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CompiledPolicy {
    /// Identity prefixes, sorted; `0.0.0.0/0` and `::/0` are always present. The map writer
    /// merges them with the routes: a route prefix takes the identity of the longest
    /// identity prefix containing it ([`PolicyIndex::identity_of_net`]), an identity prefix
    /// takes the routing flags of the longest route containing it.
    pub identities: Vec<(IpNet, u32)>,
    /// What each identity stands for.
    pub classes: BTreeMap<u32, IdentityClass>,
    /// `ep_id` of every local endpoint (for `sv_ep_val.ep_id`).
    pub endpoints: BTreeMap<EndpointKey, u32>,
    /// Every `sv_policy` entry, sorted by key.
    pub entries: Vec<PolicyEntry>,
    /// rule id → what it names.
    pub rules: BTreeMap<u32, RuleRef>,
    /// Source-port table id → its partition of the source ports (first, last, verdict,
    /// rule id), for id reuse and `serval trace`.
    pub sport_tables: BTreeMap<u32, Vec<(u16, u16, PolicyVerdict, u32)>>,
    /// Every `sv_pol_sport` entry, sorted by key.
    pub sport_entries: Vec<SportEntry>,
    pub stats: CompileStats,
}

/// 64-bit FNV-1a (stable across builds), folded to 32 bits.
fn fnv32(s: &str) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h ^ (h >> 32)) as u32
}

/// Gives every key an id: its previous one when it had one, else its hash probing upwards
/// past taken ids; `fixed` keys get their fixed id. Ids below [`FIRST_ALLOCATED_ID`] are
/// only given by `fixed`.
fn allocate<K: Ord + Clone>(
    keys: impl IntoIterator<Item = (K, String)>,
    fixed: &BTreeMap<K, u32>,
    previous: &BTreeMap<K, u32>,
) -> BTreeMap<K, u32> {
    let keys: Vec<(K, String)> = keys.into_iter().collect();
    let mut out: BTreeMap<K, u32> = BTreeMap::new();
    let mut taken: BTreeSet<u32> = fixed.values().copied().collect();
    for (k, _) in &keys {
        if let Some(&id) = fixed.get(k) {
            out.insert(k.clone(), id);
        } else if let Some(&id) = previous.get(k)
            && id >= FIRST_ALLOCATED_ID
            && taken.insert(id)
        {
            out.insert(k.clone(), id);
        }
    }
    for (k, text) in keys {
        if out.contains_key(&k) {
            continue;
        }
        let mut id = fnv32(&text).max(FIRST_ALLOCATED_ID);
        while !taken.insert(id) {
            id = id.checked_add(1).unwrap_or(FIRST_ALLOCATED_ID);
        }
        out.insert(k, id);
    }
    out
}

/// What one endpoint's direction needs from the sets.
#[derive(Default)]
struct SetsUsed {
    remote: BTreeSet<IpSetId>,
    remote_named: BTreeSet<IpSetId>,
    local: BTreeSet<IpSetId>,
    local_named: BTreeSet<IpSetId>,
}

fn sets_used(tiers: &[TierRules], dir: Direction) -> SetsUsed {
    let mut u = SetsUsed::default();
    for r in tiers
        .iter()
        .flat_map(|t| &t.policies)
        .flat_map(|p| &p.rules)
    {
        let m = &r.r#match;
        match dir {
            Direction::Ingress => {
                u.remote
                    .extend(m.src_sets.iter().chain(&m.not_src_sets).cloned());
                u.remote_named.extend(
                    m.src_named_port_sets
                        .iter()
                        .chain(&m.not_src_named_port_sets)
                        .cloned(),
                );
                u.local
                    .extend(m.dst_sets.iter().chain(&m.not_dst_sets).cloned());
                u.local_named.extend(
                    m.dst_named_port_sets
                        .iter()
                        .chain(&m.not_dst_named_port_sets)
                        .cloned(),
                );
            }
            Direction::Egress => {
                u.remote
                    .extend(m.dst_sets.iter().chain(&m.not_dst_sets).cloned());
                u.remote_named.extend(
                    m.dst_named_port_sets
                        .iter()
                        .chain(&m.not_dst_named_port_sets)
                        .cloned(),
                );
                u.local
                    .extend(m.src_sets.iter().chain(&m.not_src_sets).cloned());
                u.local_named.extend(
                    m.src_named_port_sets
                        .iter()
                        .chain(&m.not_src_named_port_sets)
                        .cloned(),
                );
            }
        }
    }
    u
}

fn local_fam(
    ep: &Endpoint,
    v4: bool,
    used: &SetsUsed,
    ipsets: &BTreeMap<IpSetId, IpSetMembers>,
) -> LocalFam {
    let Some(addr) = ep.addrs.iter().copied().find(|a| a.is_ipv4() == v4) else {
        return LocalFam::default();
    };
    let in_sets = used
        .local
        .iter()
        .filter(|id| ipsets.get(*id).is_some_and(|m| m.contains_addr(addr)))
        .cloned()
        .collect();
    let mut named = BTreeSet::new();
    for id in &used.local_named {
        if let Some(IpSetMembers::NamedPorts(ms)) = ipsets.get(id) {
            for (a, proto, port) in ms {
                if *a == addr {
                    named.insert((id.clone(), proto.number(), *port));
                }
            }
        }
    }
    LocalFam {
        present: true,
        in_sets,
        named,
    }
}

fn tiers_fingerprint(tiers: &[TierRules]) -> u64 {
    let mut h = DefaultHasher::new();
    for t in tiers {
        t.name.hash(&mut h);
        t.order.to_bits().hash(&mut h);
        matches!(t.default_action, EndOfTier::Deny).hash(&mut h);
        for p in &t.policies {
            p.name.hash(&mut h);
            p.order.to_bits().hash(&mut h);
            p.rules.hash(&mut h);
        }
    }
    h.finish()
}

/// The entries of one shape, without the endpoint id.
struct ShapeResult {
    /// `(remote identity, raw entries, index into tables)`, ANY first; an outcome's
    /// `table` t > 0 is `tables[index][t - 1]`.
    per_identity: Vec<(u32, Vec<encode::RawEntry>, usize)>,
    tables: Vec<Vec<resolve::SportTable>>,
}

/// Resolves one (direction, tiers, local view) for every identity.
fn resolve_shape(
    dir: Direction,
    tiers: &[TierRules],
    locals: &(LocalFam, LocalFam),
    used: &SetsUsed,
    classes: &BTreeMap<u32, IdentityClass>,
    rule_ids: &RuleIds,
) -> ShapeResult {
    let (protos, other) = resolve::relevant_protos(tiers);
    // Group identities by what the rules can see of them.
    let mut groups: BTreeMap<(bool, BTreeSet<SetKey>), Vec<u32>> = BTreeMap::new();
    for (&id, class) in classes {
        let projected: BTreeSet<SetKey> = class
            .sets
            .iter()
            .filter(|k| match k {
                SetKey::Set(s) => used.remote.contains(s),
                SetKey::NamedPort { set, .. } => used.remote_named.contains(set),
            })
            .cloned()
            .collect();
        groups.entry((class.v4, projected)).or_default().push(id);
    }
    let mut maps: Vec<(DecisionMap, Vec<u32>)> = Vec::new();
    for ((v4, remote), ids) in &groups {
        let g = Group {
            dir,
            v4: *v4,
            remote,
            local: if *v4 { &locals.0 } else { &locals.1 },
        };
        let map = resolve::resolve(tiers, &g, &protos, other, rule_ids);
        match maps.iter_mut().find(|(m, _)| *m == map) {
            Some((_, v)) => v.extend(ids),
            None => maps.push((map, ids.clone())),
        }
    }
    // The map most identities share goes under ANY (first such on a tie: deterministic).
    let mut best = 0;
    for (i, (_, ids)) in maps.iter().enumerate() {
        if ids.len() > maps[best].1.len() {
            best = i;
        }
    }
    let mut per_identity = Vec::new();
    let mut tables = Vec::new();
    if let Some((any_map, _)) = maps.get(best) {
        tables.push(any_map.sport_tables.clone());
        per_identity.push((IDENTITY_ANY, encode::encode(any_map), tables.len() - 1));
    }
    for (i, (map, ids)) in maps.iter().enumerate() {
        if i == best {
            continue;
        }
        let raw = encode::encode(map);
        tables.push(map.sport_tables.clone());
        for &id in ids {
            per_identity.push((id, raw.clone(), tables.len() - 1));
        }
    }
    ShapeResult {
        per_identity,
        tables,
    }
}

/// Compiles the policy of a desired state from scratch.
pub fn compile(state: &DesiredState) -> CompiledPolicy {
    compile_incremental(state, &CompiledPolicy::default())
}

/// Compiles the policy of a desired state, keeping the identity, endpoint and rule ids of
/// `previous` for whatever still exists (so [`diff()`] finds few changes).
pub fn compile_incremental(state: &DesiredState, previous: &CompiledPolicy) -> CompiledPolicy {
    // Host endpoints are compiled as endpoints too (keys from hep::host_endpoint_key).
    let with_hosts = hep::with_host_endpoints(state);
    let state = with_hosts.as_ref().unwrap_or(state);
    let dirs = [Direction::Ingress, Direction::Egress];
    // Endpoint ids.
    let fixed_none = BTreeMap::new();
    let endpoints = allocate(
        state.endpoints.keys().map(|k| (k.clone(), k.to_string())),
        &fixed_none,
        &previous.endpoints,
    );

    // Sets each endpoint direction uses; every remote-side set of any of them.
    let mut used: BTreeMap<(EndpointKey, u8), SetsUsed> = BTreeMap::new();
    let mut remote_sets = BTreeSet::new();
    let mut remote_named = BTreeSet::new();
    let mut rule_refs: BTreeSet<RuleRef> = BTreeSet::new();
    for (k, (_, pol)) in &state.endpoints {
        for dir in dirs {
            let tiers = pol.direction(dir);
            let u = sets_used(tiers, dir);
            remote_sets.extend(u.remote.iter().cloned());
            remote_named.extend(u.remote_named.iter().cloned());
            used.insert((k.clone(), dir_code(dir)), u);
            for t in tiers {
                if t.default_action == EndOfTier::Deny {
                    rule_refs.insert(RuleRef::EndOfTier(t.name.clone()));
                }
                for r in t.policies.iter().flat_map(|p| &p.rules) {
                    if matches!(r.action, Action::Allow | Action::Deny) {
                        rule_refs.insert(RuleRef::Rule(r.id.clone()));
                    }
                }
            }
        }
    }

    // Identity classes.
    let prefixes = trie::classes(remote_members(&state.ipsets, &remote_sets, &remote_named));
    let class_of = |(v4, sets): &trie::ClassKey| IdentityClass {
        v4: *v4,
        sets: sets.clone(),
    };
    let distinct: BTreeSet<IdentityClass> = prefixes.iter().map(|(_, c)| class_of(c)).collect();
    let fixed: BTreeMap<IdentityClass, u32> = [
        (
            IdentityClass {
                v4: true,
                sets: BTreeSet::new(),
            },
            IDENTITY_WORLD,
        ),
        (
            IdentityClass {
                v4: false,
                sets: BTreeSet::new(),
            },
            IDENTITY_WORLD6,
        ),
    ]
    .into_iter()
    .collect();
    let prev_classes: BTreeMap<IdentityClass, u32> = previous
        .classes
        .iter()
        .map(|(id, c)| (c.clone(), *id))
        .collect();
    let class_ids = allocate(
        distinct.iter().map(|c| {
            let text = format!("{}|{:?}", if c.v4 { 4 } else { 6 }, c.sets);
            (c.clone(), text)
        }),
        &fixed,
        &prev_classes,
    );
    let mut identities: Vec<(IpNet, u32)> = prefixes
        .iter()
        .map(|(n, c)| (*n, class_ids[&class_of(c)]))
        .collect();
    identities.sort();
    // Every class is an identity even when no prefix has it (the WORLDs when a set covers
    // a whole family): the verdicts cover them so a stale route still finds an entry.
    let mut classes: BTreeMap<u32, IdentityClass> =
        class_ids.iter().map(|(c, id)| (*id, c.clone())).collect();
    for (c, id) in &fixed {
        classes.entry(*id).or_insert_with(|| c.clone());
    }

    // Rule ids.
    let fixed_rules: BTreeMap<RuleRef, u32> = [
        (RuleRef::NoPolicy, RULE_NO_POLICY),
        (RuleRef::PassedAllTiers, RULE_PASSED_ALL_TIERS),
    ]
    .into_iter()
    .collect();
    rule_refs.extend(fixed_rules.keys().cloned());
    let prev_rules: BTreeMap<RuleRef, u32> = previous
        .rules
        .iter()
        .map(|(id, r)| (r.clone(), *id))
        .collect();
    let rule_ids = allocate(
        rule_refs.iter().map(|r| (r.clone(), r.to_string())),
        &fixed_rules,
        &prev_rules,
    );

    // Verdicts, one resolution per distinct shape.
    type ShapeKey = (u8, u64, LocalFam, LocalFam);
    let mut memo: HashMap<ShapeKey, Vec<(Vec<TierRules>, ShapeResult)>> = HashMap::new();
    let mut entries = Vec::new();
    // Source-port tables by content → a provisional number (ids are allocated below), and
    // the entries that name one.
    let mut table_nums: BTreeMap<resolve::SportTable, u32> = BTreeMap::new();
    let mut max_per_ep = 0;
    let mut shapes = 0;
    for (k, (ep, pol)) in &state.endpoints {
        let ep_id = endpoints[k];
        let before = entries.len();
        for dir in dirs {
            let tiers = pol.direction(dir);
            let u = &used[&(k.clone(), dir_code(dir))];
            let locals = (
                local_fam(ep, true, u, &state.ipsets),
                local_fam(ep, false, u, &state.ipsets),
            );
            let key: ShapeKey = (
                dir_code(dir),
                tiers_fingerprint(tiers),
                locals.0.clone(),
                locals.1.clone(),
            );
            let bucket = memo.entry(key).or_default();
            let idx = match bucket.iter().position(|(t, _)| t.as_slice() == tiers) {
                Some(i) => i,
                None => {
                    shapes += 1;
                    let r = resolve_shape(dir, tiers, &locals, u, &classes, &rule_ids);
                    bucket.push((tiers.to_vec(), r));
                    bucket.len() - 1
                }
            };
            let shape = &bucket[idx].1;
            for (remote, raw, t) in &shape.per_identity {
                for &(proto, port, prefix_len, o) in raw {
                    let (verdict, rule_id) = if o.table != 0 {
                        let content = &shape.tables[*t][o.table as usize - 1];
                        let next = u32::try_from(table_nums.len()).unwrap_or(u32::MAX);
                        let num = *table_nums.entry(content.clone()).or_insert(next);
                        (PolicyVerdict::BySourcePort, num)
                    } else if o.allow {
                        (PolicyVerdict::Allow, o.rule)
                    } else {
                        (PolicyVerdict::Deny, o.rule)
                    };
                    entries.push(PolicyEntry {
                        ep_id,
                        remote_identity: *remote,
                        dir: dir_code(dir),
                        proto,
                        port,
                        prefix_len,
                        verdict,
                        rule_id,
                    });
                }
            }
        }
        max_per_ep = max_per_ep.max(entries.len() - before);
    }

    // Source-port table ids: by content, previous ids kept.
    let as_verdicts = |t: &resolve::SportTable| -> Vec<(u16, u16, PolicyVerdict, u32)> {
        t.iter()
            .map(|&(a, b, o)| {
                let v = if o.allow {
                    PolicyVerdict::Allow
                } else {
                    PolicyVerdict::Deny
                };
                (a as u16, b as u16, v, o.rule)
            })
            .collect()
    };
    let prev_tables: BTreeMap<Vec<(u16, u16, PolicyVerdict, u32)>, u32> = previous
        .sport_tables
        .iter()
        .map(|(id, t)| (t.clone(), *id))
        .collect();
    let table_ids = allocate(
        table_nums.keys().map(|t| {
            let v = as_verdicts(t);
            let text = format!("{v:?}");
            (v, text)
        }),
        &BTreeMap::new(),
        &prev_tables,
    );
    let mut num_to_id: BTreeMap<u32, u32> = BTreeMap::new();
    let mut sport_tables = BTreeMap::new();
    let mut sport_entries = Vec::new();
    for (t, num) in &table_nums {
        let v = as_verdicts(t);
        let id = table_ids[&v];
        num_to_id.insert(*num, id);
        for (sport, prefix_len, o) in encode::encode_sport(t) {
            sport_entries.push(SportEntry {
                table: id,
                sport,
                prefix_len,
                verdict: if o.allow {
                    PolicyVerdict::Allow
                } else {
                    PolicyVerdict::Deny
                },
                rule_id: o.rule,
            });
        }
        sport_tables.insert(id, v);
    }
    for e in entries
        .iter_mut()
        .filter(|e| e.verdict == PolicyVerdict::BySourcePort)
    {
        e.rule_id = num_to_id[&e.rule_id];
    }
    entries.sort();
    sport_entries.sort();

    let stats = CompileStats {
        endpoints: endpoints.len(),
        identities: classes.len(),
        identity_prefixes: identities.len(),
        entries: entries.len(),
        max_entries_per_endpoint: max_per_ep,
        shapes,
        sport_tables: sport_tables.len(),
        sport_entries: sport_entries.len(),
    };
    tracing::debug!(
        endpoints = stats.endpoints,
        identities = stats.identities,
        identity_prefixes = stats.identity_prefixes,
        entries = stats.entries,
        max_entries_per_endpoint = stats.max_entries_per_endpoint,
        shapes = stats.shapes,
        sport_tables = stats.sport_tables,
        "policy compiled"
    );
    CompiledPolicy {
        identities,
        classes,
        endpoints,
        entries,
        rules: rule_ids.into_iter().map(|(r, id)| (id, r)).collect(),
        sport_tables,
        sport_entries,
        stats,
    }
}

/// The members of the remote-side sets as prefix-trie input: each address set's nets under
/// its set, each named-port set's addresses under one pseudo-set per (proto, port) (see the
/// module docs, "Identities").
pub(crate) fn remote_members<'a>(
    ipsets: &BTreeMap<IpSetId, IpSetMembers>,
    sets: impl IntoIterator<Item = &'a IpSetId>,
    named: impl IntoIterator<Item = &'a IpSetId>,
) -> Vec<(IpNet, SetKey)> {
    let mut members: Vec<(IpNet, SetKey)> = Vec::new();
    for id in sets {
        if let Some(IpSetMembers::Nets(nets)) = ipsets.get(id) {
            members.extend(nets.iter().map(|n| (*n, SetKey::Set(id.clone()))));
        }
    }
    for id in named {
        if let Some(IpSetMembers::NamedPorts(ms)) = ipsets.get(id) {
            members.extend(ms.iter().map(|(a, proto, port)| {
                (
                    IpNet::from(*a),
                    SetKey::NamedPort {
                        set: id.clone(),
                        proto: proto.number(),
                        port: *port,
                    },
                )
            }));
        }
    }
    members
}
