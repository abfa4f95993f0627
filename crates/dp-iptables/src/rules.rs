//! The rendering: what this dataplane wants in the kernel, as plain text rules.
//!
//! A [`Rendering`] is the output of the pure renderer and the input of the kernel side. It
//! holds, per IP family, the chains we own (`SERVAL-…`) with their rules in
//! `iptables-restore` syntax (without the leading `-A CHAIN`), the jump rules ("hooks") from
//! built-in chains into ours, and the ipsets (`serval-…`) with their members.
//!
//! Every rule is written with a leading `-m comment --comment "sv:HASH"` whose hash covers
//! the chain name, the previous rule's hash and the rule text. Reading `iptables-save` back
//! therefore needs no normalisation of rule text: a chain is as desired exactly when its
//! sequence of `sv:` hashes is ([`chain_hashes`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::{self, Write as _},
};

use crate::hash::short_hash;

/// Prefix of every chain we own.
pub const CHAIN_PREFIX: &str = "SERVAL-";
/// Prefix of every ipset we own.
pub const IPSET_PREFIX: &str = "serval-";
/// Comment on the jump rules in built-in chains.
pub const HOOK_COMMENT: &str = "serval";
/// Prefix of the per-rule fingerprint comment.
pub const RULE_HASH_PREFIX: &str = "sv:";
/// Longest chain name the kernel takes (`XT_EXTENSION_MAXNAMELEN` - 1).
pub const MAX_CHAIN_LEN: usize = 28;
/// Longest ipset name (`IPSET_MAXNAMELEN` - 1).
pub const MAX_IPSET_LEN: usize = 31;

/// An IP family: iptables or ip6tables, ipset `family inet` or `inet6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4 (`iptables`, `family inet`).
    V4,
    /// IPv6 (`ip6tables`, `family inet6`).
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// `inet` / `inet6`, as ipset spells it.
    pub fn ipset_family(self) -> &'static str {
        match self {
            Family::V4 => "inet",
            Family::V6 => "inet6",
        }
    }

    /// `4` / `6`, as used in set names.
    pub fn digit(self) -> char {
        match self {
            Family::V4 => '4',
            Family::V6 => '6',
        }
    }

    /// The family of an address.
    pub fn of(ip: &std::net::IpAddr) -> Self {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// An iptables table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// `raw`.
    Raw,
    /// `mangle`.
    Mangle,
    /// `nat`.
    Nat,
    /// `filter`.
    Filter,
}

impl Table {
    /// Every table we may write, in the order they are written.
    pub const ALL: [Table; 4] = [Table::Raw, Table::Mangle, Table::Nat, Table::Filter];

    /// The table's name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Raw => "raw",
            Table::Mangle => "mangle",
            Table::Nat => "nat",
            Table::Filter => "filter",
        }
    }

    /// Parses a table name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The table's built-in chains.
    pub fn builtin_chains(self) -> &'static [&'static str] {
        match self {
            Table::Raw => &["PREROUTING", "OUTPUT"],
            Table::Mangle => &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
            Table::Nat => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
            Table::Filter => &["INPUT", "FORWARD", "OUTPUT"],
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The ipset types we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetType {
    /// `hash:net`: addresses and CIDRs (a host address is written without `/32`).
    HashNet,
    /// `hash:ip,port`: named ports, members `IP,PROTO:PORT`.
    HashIpPort,
}

impl SetType {
    /// The ipset type name.
    pub fn name(self) -> &'static str {
        match self {
            SetType::HashNet => "hash:net",
            SetType::HashIpPort => "hash:ip,port",
        }
    }

    /// Parses an ipset type name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "hash:net" => Some(SetType::HashNet),
            "hash:ip,port" => Some(SetType::HashIpPort),
            _ => None,
        }
    }
}

/// One ipset: its type and members, each in the canonical form `ipset save` prints.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IpSet {
    /// The set's type.
    pub set_type: Option<SetType>,
    /// Members, canonical (see [`crate::ipset::net_member`], [`crate::ipset::nomatch_member`]
    /// and [`crate::ipset::ip_port_member`]).
    pub members: BTreeSet<String>,
}

impl IpSet {
    /// An empty set of a type.
    pub fn new(set_type: SetType) -> Self {
        Self {
            set_type: Some(set_type),
            members: BTreeSet::new(),
        }
    }
}

/// A jump from a built-in chain into one of ours: `-I BUILTIN 1 -m comment --comment serval
/// -j TARGET`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hook {
    /// The built-in chain (`FORWARD`, `PREROUTING`, …).
    pub builtin: String,
    /// Our chain it jumps to.
    pub target: String,
}

impl Hook {
    /// A hook.
    pub fn new(builtin: &str, target: &str) -> Self {
        Self {
            builtin: builtin.to_owned(),
            target: target.to_owned(),
        }
    }

    /// The rule text after `-I BUILTIN 1` / `-D BUILTIN`.
    pub fn rule(&self) -> String {
        format!("-m comment --comment {HOOK_COMMENT} -j {}", self.target)
    }
}

/// Our chains and hooks in one table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableRules {
    /// Chain name → rules (each without the leading `-A CHAIN`, without the hash comment).
    pub chains: BTreeMap<String, Vec<String>>,
    /// Jumps from built-in chains, each inserted at position 1 when missing.
    pub hooks: BTreeSet<Hook>,
}

impl TableRules {
    /// Appends a rule to a chain (creating the chain).
    pub fn push(&mut self, chain: &str, rule: impl Into<String>) {
        self.chains
            .entry(chain.to_owned())
            .or_default()
            .push(rule.into());
    }

    /// Makes sure a chain exists (possibly empty).
    pub fn chain(&mut self, chain: &str) {
        self.chains.entry(chain.to_owned()).or_default();
    }

    /// Whether nothing is in the table.
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.hooks.is_empty()
    }
}

/// Everything for one IP family.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FamilyRules {
    /// Tables (absent = nothing of ours in it).
    pub tables: BTreeMap<Table, TableRules>,
    /// ipsets by name (all of this family).
    pub ipsets: BTreeMap<String, IpSet>,
}

impl FamilyRules {
    /// A table's rules, created empty on first use.
    pub fn table(&mut self, table: Table) -> &mut TableRules {
        self.tables.entry(table).or_default()
    }
}

/// The whole rendering: IPv4 and IPv6.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rendering {
    /// iptables + `family inet` sets.
    pub v4: FamilyRules,
    /// ip6tables + `family inet6` sets.
    pub v6: FamilyRules,
}

/// Why a rendering cannot be written; checked before anything changes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderingError {
    /// A chain name without our prefix or too long.
    #[error(
        "{family} table {table}: chain name {chain:?} is not ours or too long: chains must start \
         with {CHAIN_PREFIX:?} and have at most {MAX_CHAIN_LEN} characters"
    )]
    BadChain {
        /// Family.
        family: Family,
        /// Table.
        table: Table,
        /// The name.
        chain: String,
    },
    /// A hook from a chain that is not a built-in chain of the table, or to a missing chain.
    #[error(
        "{family} table {table}: hook {builtin} -> {target} is invalid: the source must be a \
         built-in chain of the table and the target one of our chains in the rendering"
    )]
    BadHook {
        /// Family.
        family: Family,
        /// Table.
        table: Table,
        /// Built-in chain.
        builtin: String,
        /// Target chain.
        target: String,
    },
    /// A rule that would break the restore input.
    #[error(
        "{family} table {table} chain {chain}: rule {rule:?} contains a newline or NUL; a rule is \
         one line of iptables-restore input"
    )]
    BadRule {
        /// Family.
        family: Family,
        /// Table.
        table: Table,
        /// Chain.
        chain: String,
        /// The rule.
        rule: String,
    },
    /// A set name without our prefix or too long.
    #[error(
        "{family}: ipset name {name:?} is not ours or too long: sets must start with \
         {IPSET_PREFIX:?} and have at most {MAX_IPSET_LEN} characters"
    )]
    BadSet {
        /// Family.
        family: Family,
        /// The name.
        name: String,
    },
    /// A set without a type or with a member that is not a single token.
    #[error("{family}: ipset {name} has no type or an invalid member {member:?}")]
    BadMember {
        /// Family.
        family: Family,
        /// Set.
        name: String,
        /// The member (empty when the type is missing).
        member: String,
    },
}

impl Rendering {
    /// The rules of a family.
    pub fn family(&self, family: Family) -> &FamilyRules {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    /// The rules of a family, mutable.
    pub fn family_mut(&mut self, family: Family) -> &mut FamilyRules {
        match family {
            Family::V4 => &mut self.v4,
            Family::V6 => &mut self.v6,
        }
    }

    /// Checks names, hooks, rules and members; the kernel side refuses a rendering that
    /// fails this, before changing anything.
    pub fn validate(&self) -> Result<(), RenderingError> {
        for family in Family::ALL {
            let rules = self.family(family);
            for (table, t) in &rules.tables {
                let table = *table;
                for (chain, chain_rules) in &t.chains {
                    if !is_our_chain(chain) || chain.len() > MAX_CHAIN_LEN {
                        return Err(RenderingError::BadChain {
                            family,
                            table,
                            chain: chain.clone(),
                        });
                    }
                    if let Some(rule) = chain_rules.iter().find(|r| r.contains(['\n', '\r', '\0']))
                    {
                        return Err(RenderingError::BadRule {
                            family,
                            table,
                            chain: chain.clone(),
                            rule: rule.clone(),
                        });
                    }
                }
                for hook in &t.hooks {
                    if !table.builtin_chains().contains(&hook.builtin.as_str())
                        || !t.chains.contains_key(&hook.target)
                    {
                        return Err(RenderingError::BadHook {
                            family,
                            table,
                            builtin: hook.builtin.clone(),
                            target: hook.target.clone(),
                        });
                    }
                }
            }
            for (name, set) in &rules.ipsets {
                if !is_our_set(name) || name.len() > MAX_IPSET_LEN {
                    return Err(RenderingError::BadSet {
                        family,
                        name: name.clone(),
                    });
                }
                let bad_member = set
                    .members
                    .iter()
                    .find(|m| m.is_empty() || m.contains(|c: char| c.is_whitespace() || c == '\0'));
                if set.set_type.is_none() || bad_member.is_some() {
                    return Err(RenderingError::BadMember {
                        family,
                        name: name.clone(),
                        member: bad_member.cloned().unwrap_or_default(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The complete rendering as text: per family, the `ipset restore` input and the
    /// `iptables-restore` input that would create it from nothing. This is what golden files
    /// hold.
    pub fn to_text(&self) -> String {
        Family::ALL.iter().map(|f| self.family_text(*f)).collect()
    }

    /// One family's part of [`Rendering::to_text`].
    pub fn family_text(&self, family: Family) -> String {
        let mut out = String::new();
        {
            let rules = self.family(family);
            let _ = writeln!(out, "# ===== {family} ipsets =====");
            for (name, set) in &rules.ipsets {
                let set_type = set.set_type.map_or("?", SetType::name);
                let _ = writeln!(
                    out,
                    "create {name} {set_type} family {}",
                    family.ipset_family()
                );
                for member in &set.members {
                    let _ = writeln!(out, "add {name} {}", crate::ipset::restore_text(member));
                }
            }
            let _ = writeln!(out, "# ===== {family} iptables =====");
            for (table, t) in &rules.tables {
                let _ = writeln!(out, "*{table}");
                for chain in t.chains.keys() {
                    let _ = writeln!(out, ":{chain} - [0:0]");
                }
                for hook in &t.hooks {
                    let _ = writeln!(out, "-I {} 1 {}", hook.builtin, hook.rule());
                }
                for (chain, chain_rules) in &t.chains {
                    for line in chain_lines(chain, chain_rules) {
                        let _ = writeln!(out, "{line}");
                    }
                }
                let _ = writeln!(out, "COMMIT");
            }
        }
        out
    }
}

/// Whether a chain name is ours.
pub fn is_our_chain(name: &str) -> bool {
    name.starts_with(CHAIN_PREFIX)
}

/// Whether an ipset name is ours.
pub fn is_our_set(name: &str) -> bool {
    name.starts_with(IPSET_PREFIX)
}

/// The fingerprints of a chain's rules, in order: each covers the chain name, the previous
/// rule's fingerprint and the rule text, so any change, insertion, deletion or reordering
/// shows.
pub fn chain_hashes(chain: &str, rules: &[String]) -> Vec<String> {
    let mut prev = String::new();
    rules
        .iter()
        .map(|rule| {
            let h = short_hash(&[chain, &prev, rule], 12);
            prev.clone_from(&h);
            h
        })
        .collect()
}

/// The `-A CHAIN -m comment --comment "sv:HASH" RULE` lines of a chain.
pub fn chain_lines(chain: &str, rules: &[String]) -> Vec<String> {
    chain_hashes(chain, rules)
        .into_iter()
        .zip(rules)
        .map(|(hash, rule)| {
            if rule.is_empty() {
                format!("-A {chain} -m comment --comment \"{RULE_HASH_PREFIX}{hash}\"")
            } else {
                format!("-A {chain} -m comment --comment \"{RULE_HASH_PREFIX}{hash}\" {rule}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Rendering {
        let mut r = Rendering::default();
        let t = r.v4.table(Table::Filter);
        t.push("SERVAL-FORWARD", "-j SERVAL-X");
        t.push("SERVAL-X", "-j ACCEPT");
        t.hooks.insert(Hook::new("FORWARD", "SERVAL-FORWARD"));
        let mut set = IpSet::new(SetType::HashNet);
        set.members.insert("10.0.0.1".into());
        r.v4.ipsets.insert("serval-4-abc".into(), set);
        r
    }

    #[test]
    fn validation_catches_foreign_names_and_bad_hooks() {
        assert_eq!(sample().validate(), Ok(()));

        let mut r = sample();
        r.v4.table(Table::Filter).push("FORWARD", "-j ACCEPT");
        assert!(matches!(r.validate(), Err(RenderingError::BadChain { .. })));

        let mut r = sample();
        r.v4.table(Table::Filter)
            .push(&format!("SERVAL-{}", "X".repeat(30)), "-j ACCEPT");
        assert!(matches!(r.validate(), Err(RenderingError::BadChain { .. })));

        let mut r = sample();
        r.v4.table(Table::Filter)
            .hooks
            .insert(Hook::new("PREROUTING", "SERVAL-X"));
        assert!(matches!(r.validate(), Err(RenderingError::BadHook { .. })));

        let mut r = sample();
        r.v4.table(Table::Filter)
            .hooks
            .insert(Hook::new("INPUT", "SERVAL-MISSING"));
        assert!(matches!(r.validate(), Err(RenderingError::BadHook { .. })));

        let mut r = sample();
        r.v4.table(Table::Filter)
            .push("SERVAL-X", "-j ACCEPT\n-A FORWARD -j DROP");
        assert!(matches!(r.validate(), Err(RenderingError::BadRule { .. })));

        let mut r = sample();
        r.v6.ipsets
            .insert("cali-x".into(), IpSet::new(SetType::HashNet));
        assert!(matches!(r.validate(), Err(RenderingError::BadSet { .. })));

        let mut r = sample();
        r.v4.ipsets
            .get_mut("serval-4-abc")
            .unwrap()
            .members
            .insert("10.0.0.2 10.0.0.3".into());
        assert!(matches!(
            r.validate(),
            Err(RenderingError::BadMember { .. })
        ));
    }

    #[test]
    fn hashes_depend_on_chain_position_and_text() {
        let rules = vec!["-j A".to_owned(), "-j B".to_owned()];
        let h = chain_hashes("SERVAL-X", &rules);
        assert_eq!(h.len(), 2);
        assert_ne!(h[0], h[1]);
        assert_ne!(h, chain_hashes("SERVAL-Y", &rules));
        let swapped = vec!["-j B".to_owned(), "-j A".to_owned()];
        assert_ne!(chain_hashes("SERVAL-X", &swapped)[1], h[0]);
        // The same rule after a different predecessor gets a different hash.
        let other = vec!["-j C".to_owned(), "-j B".to_owned()];
        assert_ne!(chain_hashes("SERVAL-X", &other)[1], h[1]);
        assert!(chain_lines("SERVAL-X", &rules)[0].starts_with("-A SERVAL-X -m comment"));
    }

    #[test]
    fn text_lists_sets_then_tables() {
        let text = sample().to_text();
        assert!(
            text.contains("create serval-4-abc hash:net family inet\nadd serval-4-abc 10.0.0.1\n")
        );
        assert!(text.contains("-I FORWARD 1 -m comment --comment serval -j SERVAL-FORWARD\n"));
        assert!(text.find(":SERVAL-X").unwrap() < text.find("-A SERVAL-X").unwrap());
    }
}
