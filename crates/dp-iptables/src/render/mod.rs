//! The renderer: [`DesiredState`] → [`Rendering`]. Pure (no I/O), deterministic, golden-file
//! tested.
//!
//! # Chain layout (per family; `h` = a 12-character stable hash)
//!
//! filter table:
//! ```text
//! FORWARD ─▶ SERVAL-FORWARD ─┬▶ SERVAL-SVC-REJECT   (NEW conns to services without usable backends)
//!                            ├▶ -i IFACE → SERVAL-FW-h   from workload: egress policy + anti-spoofing
//!                            ├▶ -o IFACE → SERVAL-TW-h   to workload: ingress policy
//!                            └▶ mark ACCEPT → ACCEPT
//! INPUT   ─▶ SERVAL-INPUT   ─┬▶ SERVAL-SVC-REJECT
//!                            ├▶ -i IFACE → SERVAL-FW-h, mark ACCEPT → ACCEPT (pod → host)
//!                            └▶ host endpoint → SERVAL-HI-h (failsafe first, then policy)
//! OUTPUT  ─▶ SERVAL-OUTPUT  ─┬▶ SERVAL-SVC-REJECT
//!                            ├▶ -o IFACE → RETURN (host → its own pods is always allowed)
//!                            └▶ host endpoint → SERVAL-HO-h
//! SERVAL-FW-h / SERVAL-TW-h / SERVAL-HI-h / SERVAL-HO-h:
//!     ESTABLISHED,RELATED → ACCEPT; INVALID → DROP; clear marks; (FW: ! -s ADDR → DROP);
//!     (HI/HO: failsafe ports → ACCEPT); no tier: set ACCEPT mark (workloads) / DROP (hosts);
//!     else, from the compiled partition (see [`compiled`]):
//!     -m set --match-set serval-F-p-h src|dst -g SERVAL-PD-h (one per decision group but
//!     one), -g SERVAL-PD-h (the fall-through group)
//!     or, where the partition cannot express the tiers (Log rules; local-side rules on host
//!     endpoints), policy by policy:
//!     per tier: clear PASS; per policy: (no PASS) → SERVAL-PO-h / SERVAL-PI-h, ACCEPT mark →
//!     RETURN; end of tier (default action Deny): no PASS → DROP;
//!     after all tiers: set ACCEPT mark
//! SERVAL-PD-h (one per distinct decision, named by content): protocol/port → goto
//!     SERVAL-POL-ALLOW (sets the ACCEPT mark), DROP, or goto SERVAL-PS-h (by source port)
//! SERVAL-PI-h / SERVAL-PO-h (one per policy and direction, shared by endpoints):
//!     Allow: match → set ACCEPT mark, then ACCEPT mark → RETURN
//!     Deny:  match → DROP
//!     Pass:  match → set PASS mark, then PASS mark → RETURN
//!     Log:   match → NFLOG (group 20), continue
//! ```
//! Marks: ACCEPT = 0x10000, PASS = 0x20000 (filter); MASQ = 0x4000 (nat, kube-proxy's bit).
//!
//! nat table:
//! ```text
//! PREROUTING, OUTPUT ─▶ SERVAL-SERVICES ─┬▶ -d IP -p P --dport N → SERVAL-SVC-h (ClusterIP, externalIP, LB)
//!                                        └▶ addrtype LOCAL → SERVAL-NODEPORTS → SERVAL-SVC-h
//! SERVAL-SVC-h: masquerade mark as the traffic policy says; eTP Local: cluster sources →
//!     SERVAL-SVI-h (all backends), others → local backends only; affinity `recent --rcheck`
//!     per backend; `statistic --probability 1/(n-i)` → SERVAL-SEP-h
//! SERVAL-SEP-h: -s BACKEND → SERVAL-MARK-MASQ (hairpin); [recent --set] DNAT --to-destination
//! POSTROUTING ─▶ SERVAL-POSTROUTING ─┬▶ MASQ mark → SERVAL-MASQ (clear mark, MASQUERADE)
//!                                    └▶ SERVAL-NAT-OUTGOING (natOutgoing pools → outside)
//! ```
//!
//! raw table (only while a host endpoint has untracked, `doNotTrack`, policy):
//! ```text
//! PREROUTING ─▶ SERVAL-RAW-PREROUTING ─┬ clear marks; -i WORKLOAD → RETURN
//!                                      ├▶ not ACCEPT-marked, host endpoint (-i IFACE, or
//!                                      │  -d ADDR, or ! -i lo for `*`) → SERVAL-UI-h
//!                                      └ ACCEPT mark → NOTRACK, ACCEPT
//! OUTPUT     ─▶ SERVAL-RAW-OUTPUT     ─  the same with -o / -s → SERVAL-UO-h
//! SERVAL-UI-h / SERVAL-UO-h: failsafe ports (--dport) and their replies (--sport) → ACCEPT
//!     (tracked, on to filter); then the untracked tiers as above with SERVAL-UPI-h /
//!     SERVAL-UPO-h policy chains (Allow: ACCEPT mark; Deny: DROP); every tier ends in Pass.
//! filter SERVAL-FORWARD / -INPUT / -OUTPUT then start with: ACCEPT mark + ctstate UNTRACKED
//!     → ACCEPT (untracked Allow skips ordinary policy; the reply needs its own rule).
//! ```
//!
//! ipsets: `serval-4-h` / `serval-6-h` for every calc [`IpSetId`] a rendered rule uses (h =
//! hash of the id and the set type; members of the family only), `serval-F-p-h` for decision
//! groups (h = hash of endpoint, direction and group chain; `nomatch` entries exclude nested
//! prefixes of other groups), plus `serval-F-all-pools`,
//! `serval-F-masq-pools` and `serval-F-nodes` for NAT outgoing and service masquerading.

mod compiled;
mod policy;
mod services;
mod untracked;

use std::collections::BTreeSet;

use serval_calc::{DesiredState, IpSetId, IpSetMembers, compile::partition::PartitionCache};

use crate::{
    hash::short_hash,
    ipset::{ip_port_member, net_member, split_zero_prefix},
    rules::{Family, FamilyRules, IpSet, Rendering, SetType},
};

/// Policy accepted the packet (filter table).
pub const MARK_ACCEPT: u32 = 0x10000;
/// A policy passed the packet to the next tier (filter table).
pub const MARK_PASS: u32 = 0x20000;
/// Masquerade this connection in POSTROUTING (nat table; kube-proxy's bit).
pub const MARK_MASQ: u32 = 0x4000;
/// NFLOG group of Log actions.
pub const NFLOG_GROUP: u16 = 20;

/// Fixed chain names.
pub mod chains {
    /// filter FORWARD dispatch.
    pub const FORWARD: &str = "SERVAL-FORWARD";
    /// filter INPUT dispatch.
    pub const INPUT: &str = "SERVAL-INPUT";
    /// filter OUTPUT dispatch.
    pub const OUTPUT: &str = "SERVAL-OUTPUT";
    /// filter: services without usable backends (REJECT / DROP).
    pub const SVC_REJECT: &str = "SERVAL-SVC-REJECT";
    /// nat PREROUTING/OUTPUT dispatch.
    pub const SERVICES: &str = "SERVAL-SERVICES";
    /// nat: NodePort frontends (local destinations only).
    pub const NODEPORTS: &str = "SERVAL-NODEPORTS";
    /// nat: sets the masquerade mark.
    pub const MARK_MASQ: &str = "SERVAL-MARK-MASQ";
    /// nat POSTROUTING dispatch.
    pub const POSTROUTING: &str = "SERVAL-POSTROUTING";
    /// nat: clears the mark and masquerades.
    pub const MASQ: &str = "SERVAL-MASQ";
    /// nat: NAT outgoing.
    pub const NAT_OUTGOING: &str = "SERVAL-NAT-OUTGOING";
    /// raw PREROUTING dispatch (untracked host endpoint policy, ingress).
    pub const RAW_PREROUTING: &str = "SERVAL-RAW-PREROUTING";
    /// raw OUTPUT dispatch (untracked host endpoint policy, egress).
    pub const RAW_OUTPUT: &str = "SERVAL-RAW-OUTPUT";
    /// filter: policy allowed the packet (sets the ACCEPT mark; reached by goto).
    pub const POLICY_ALLOW: &str = "SERVAL-POL-ALLOW";
}

/// `PREFIX` + 12 hash characters of `parts`.
pub(crate) fn hashed_chain(prefix: &str, parts: &[&str]) -> String {
    format!("{prefix}{}", short_hash(parts, 12))
}

/// The set name for a calc set id in a family.
pub fn set_name(id: &IpSetId, set_type: SetType, family: Family) -> String {
    format!(
        "serval-{}-{}",
        family.digit(),
        short_hash(&[&id.0, set_type.name()], 12)
    )
}

/// A fixed set name (`all-pools`, `masq-pools`, `nodes`) in a family.
pub fn fixed_set_name(name: &str, family: Family) -> String {
    format!("serval-{}-{name}", family.digit())
}

/// A `-m comment` fragment, with characters that would break the restore line removed.
pub(crate) fn comment(text: &str) -> String {
    let clean: String = text
        .chars()
        .filter(|c| !matches!(c, '"' | '\\' | '\n' | '\r' | '\0'))
        .take(200)
        .collect();
    format!("-m comment --comment \"{clean}\"")
}

/// Renders the desired state for both families.
pub fn render(state: &DesiredState) -> Rendering {
    let mut r = Rendering::default();
    let partitions = PartitionCache::new();
    for family in Family::ALL {
        *r.family_mut(family) = render_family(state, family, &partitions);
    }
    r
}

fn render_family(state: &DesiredState, family: Family, partitions: &PartitionCache) -> FamilyRules {
    let mut out = FamilyRules::default();
    let mut used: BTreeSet<IpSetId> = BTreeSet::new();
    policy::render(state, family, &mut out, &mut used, partitions);
    untracked::render(state, family, &mut out, &mut used);
    services::render(state, family, &mut out);
    for id in used {
        let Some(members) = state.ipsets.get(&id) else {
            // calc lists every set a rule uses; an unknown one renders empty (matches nothing).
            tracing::warn!(set = %id, "rule refers to an ip set the desired state lacks");
            continue;
        };
        let (set_type, set) = family_set(members, family);
        out.ipsets.insert(set_name(&id, set_type, family), set);
    }
    out
}

/// The type of the set a calc set becomes.
pub(crate) fn set_type_of(members: Option<&IpSetMembers>) -> SetType {
    match members {
        Some(IpSetMembers::NamedPorts(_)) => SetType::HashIpPort,
        _ => SetType::HashNet,
    }
}

/// A calc set's members of one family.
fn family_set(members: &IpSetMembers, family: Family) -> (SetType, IpSet) {
    match members {
        IpSetMembers::Nets(nets) => {
            let mut set = IpSet::new(SetType::HashNet);
            for net in nets {
                if Family::of(&net.addr()) == family {
                    set.members
                        .extend(split_zero_prefix(net).iter().map(net_member));
                }
            }
            (SetType::HashNet, set)
        }
        IpSetMembers::NamedPorts(ports) => {
            let mut set = IpSet::new(SetType::HashIpPort);
            for (ip, proto, port) in ports {
                if Family::of(ip) == family {
                    set.members
                        .insert(ip_port_member(ip, proto.as_str(), *port));
                }
            }
            (SetType::HashIpPort, set)
        }
    }
}

/// A set of networks of one family.
pub(crate) fn net_set<'a>(
    nets: impl IntoIterator<Item = &'a ipnet::IpNet>,
    family: Family,
) -> IpSet {
    let mut set = IpSet::new(SetType::HashNet);
    for net in nets {
        if Family::of(&net.addr()) == family {
            set.members
                .extend(split_zero_prefix(net).iter().map(net_member));
        }
    }
    set
}
