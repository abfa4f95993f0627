//! The iptables side: reading `iptables-save` output back into what we own, and writing
//! `iptables-restore --noflush` input for one family's changes.
//!
//! Only chains with the `SERVAL-` prefix and the jump rules from built-in chains into them
//! are read; everything else in the save output is skipped and never written.

use std::{collections::BTreeMap, fmt::Write as _};

use crate::rules::{
    HOOK_COMMENT, Hook, RULE_HASH_PREFIX, Table, TableRules, chain_hashes, chain_lines,
    is_our_chain,
};

/// A jump rule from a built-in chain into one of our chains, as found in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedHook {
    /// The built-in chain.
    pub builtin: String,
    /// Our chain it jumps to.
    pub target: String,
    /// The rule as saved, after `-A BUILTIN` (usable verbatim after `-D BUILTIN`).
    pub rule: String,
    /// Whether the rule is exactly one of ours (carries the `serval` comment and nothing else).
    pub exact: bool,
}

/// What we own in one table, as the kernel has it (or as a rendering would leave it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableState {
    /// Our chains → the `sv:` fingerprint of each rule (`None`: a rule without one, i.e. not
    /// written by us or altered).
    pub chains: BTreeMap<String, Vec<Option<String>>>,
    /// Jumps from built-in chains into ours, sorted by built-in chain, target and rule.
    pub hooks: Vec<SavedHook>,
}

impl TableState {
    /// The state a table's rendering leaves behind.
    pub fn from_rules(rules: &TableRules) -> Self {
        let mut state = Self {
            chains: rules
                .chains
                .iter()
                .map(|(name, rs)| {
                    (
                        name.clone(),
                        chain_hashes(name, rs).into_iter().map(Some).collect(),
                    )
                })
                .collect(),
            hooks: rules
                .hooks
                .iter()
                .map(|h| SavedHook {
                    builtin: h.builtin.clone(),
                    target: h.target.clone(),
                    rule: h.rule(),
                    exact: true,
                })
                .collect(),
        };
        sort_hooks(&mut state.hooks);
        state
    }

    /// Number of rules in our chains.
    pub fn rule_count(&self) -> usize {
        self.chains.values().map(Vec::len).sum()
    }
}

/// Splits one line of `iptables-save` output into words, honouring double quotes and the
/// backslash escapes iptables-save writes inside them.
pub fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            c => {
                current.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(current);
    }
    words
}

/// Parses `iptables-save` output (all tables) into what we own in each table. Tables with
/// nothing of ours are left out.
pub fn parse_save(text: &str) -> BTreeMap<Table, TableState> {
    let mut tables: BTreeMap<Table, TableState> = BTreeMap::new();
    let mut current: Option<Table> = None;
    for line in text.lines() {
        let line = line.trim_end();
        if let Some(name) = line.strip_prefix('*') {
            current = Table::from_name(name.trim());
            continue;
        }
        let Some(table) = current else { continue };
        if let Some(decl) = line.strip_prefix(':') {
            let chain = decl.split_whitespace().next().unwrap_or_default();
            if is_our_chain(chain) {
                tables
                    .entry(table)
                    .or_default()
                    .chains
                    .entry(chain.to_owned())
                    .or_default();
            }
            continue;
        }
        let Some(rest) = line.strip_prefix("-A ") else {
            continue;
        };
        let (chain, rule) = rest.split_once(' ').unwrap_or((rest, ""));
        let words = split_words(rule);
        if is_our_chain(chain) {
            let hash = words
                .windows(2)
                .find(|w| w[0] == "--comment" && w[1].starts_with(RULE_HASH_PREFIX))
                .map(|w| w[1][RULE_HASH_PREFIX.len()..].to_owned());
            tables
                .entry(table)
                .or_default()
                .chains
                .entry(chain.to_owned())
                .or_default()
                .push(hash);
        } else if table.builtin_chains().contains(&chain) {
            let target = words
                .windows(2)
                .find(|w| (w[0] == "-j" || w[0] == "-g") && is_our_chain(&w[1]))
                .map(|w| w[1].clone());
            if let Some(target) = target {
                let exact = words == split_words(&Hook::new(chain, &target).rule())
                    || words == ["-m", "comment", "--comment", HOOK_COMMENT, "-j", &target];
                tables.entry(table).or_default().hooks.push(SavedHook {
                    builtin: chain.to_owned(),
                    target,
                    rule: rule.to_owned(),
                    exact,
                });
            }
        }
    }
    for t in tables.values_mut() {
        sort_hooks(&mut t.hooks);
    }
    tables
}

/// Hooks in a canonical order (by built-in chain, target, rule): their position among other
/// rules of the built-in chain is not ours to keep, so states compare regardless of it.
fn sort_hooks(hooks: &mut [SavedHook]) {
    hooks.sort_by(|a, b| (&a.builtin, &a.target, &a.rule).cmp(&(&b.builtin, &b.target, &b.rule)));
}

/// What a table update does, for logs and stats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableChange {
    /// Chains created or rewritten.
    pub written: Vec<String>,
    /// Chains deleted.
    pub deleted: Vec<String>,
    /// Hooks inserted.
    pub hooks_added: usize,
    /// Hook rules deleted (stale, duplicate or altered).
    pub hooks_removed: usize,
}

impl TableChange {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.written.is_empty()
            && self.deleted.is_empty()
            && self.hooks_added == 0
            && self.hooks_removed == 0
    }
}

/// The `iptables-restore --noflush` section (`*table` … `COMMIT`) that turns `current` into
/// `desired` for one table, or `None` when they already agree.
///
/// Only chains whose fingerprints differ are written: a `:CHAIN` declaration creates the
/// chain or flushes it (in `--noflush` mode), followed by all its rules. Order within the
/// transaction: declarations, removal of stale hooks, flushes of chains going away, rules,
/// new hooks, then `-X` of the chains going away (nothing references them by then). The whole
/// section is one transaction: it applies completely or not at all.
pub fn table_update(
    table: Table,
    desired: &TableRules,
    current: &TableState,
) -> Option<(String, TableChange)> {
    let want = TableState::from_rules(desired);
    let mut change = TableChange::default();
    for (chain, hashes) in &want.chains {
        if current.chains.get(chain) != Some(hashes) {
            change.written.push(chain.clone());
        }
    }
    for chain in current.chains.keys() {
        if !want.chains.contains_key(chain) {
            change.deleted.push(chain.clone());
        }
    }
    // Hooks: keep the first exact copy of each desired one, delete everything else.
    let mut kept: Vec<&Hook> = Vec::new();
    let mut remove: Vec<&SavedHook> = Vec::new();
    for saved in &current.hooks {
        let hook = desired
            .hooks
            .iter()
            .find(|h| h.builtin == saved.builtin && h.target == saved.target);
        match hook {
            Some(h) if saved.exact && !kept.contains(&h) => kept.push(h),
            _ => remove.push(saved),
        }
    }
    let add: Vec<&Hook> = desired.hooks.iter().filter(|h| !kept.contains(h)).collect();
    change.hooks_added = add.len();
    change.hooks_removed = remove.len();
    if change.is_empty() {
        return None;
    }

    let mut out = String::new();
    let _ = writeln!(out, "*{table}");
    for chain in &change.written {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    for saved in &remove {
        let _ = writeln!(out, "-D {} {}", saved.builtin, saved.rule);
    }
    for chain in &change.deleted {
        let _ = writeln!(out, "-F {chain}");
    }
    for chain in &change.written {
        for line in chain_lines(chain, &desired.chains[chain]) {
            let _ = writeln!(out, "{line}");
        }
    }
    for hook in &add {
        let _ = writeln!(out, "-I {} 1 {}", hook.builtin, hook.rule());
    }
    for chain in &change.deleted {
        let _ = writeln!(out, "-X {chain}");
    }
    let _ = writeln!(out, "COMMIT");
    Some((out, change))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVE: &str = r#"# Generated by iptables-save v1.8.9 (nf_tables) on Sat Nov 21 16:01:34 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [10:600]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:SERVAL-FORWARD - [0:0]
:SERVAL-EMPTY - [0:0]
-A FORWARD -j DOCKER
-A FORWARD -m comment --comment serval -j SERVAL-FORWARD
-A FORWARD -s 10.0.0.0/8 -j SERVAL-FORWARD
-A DOCKER -j SERVAL-FORWARD
-A SERVAL-FORWARD -m comment --comment "sv:abc" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A SERVAL-FORWARD -j NFLOG --nflog-prefix "serval \"x\" y" --nflog-group 1
COMMIT
# Completed on Sat Nov 21 16:01:34 2026
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -j MASQUERADE
COMMIT
"#;

    #[test]
    fn words_honour_quotes_and_escapes() {
        assert_eq!(
            split_words(r#"-m comment --comment "a \"b\" c"  -j X"#),
            ["-m", "comment", "--comment", r#"a "b" c"#, "-j", "X"]
        );
        assert_eq!(split_words(r#"--comment """#), ["--comment", ""]);
    }

    #[test]
    fn save_output_is_read_for_our_chains_only() {
        let tables = parse_save(SAVE);
        assert_eq!(tables.len(), 1, "nat has nothing of ours: {tables:?}");
        let filter = &tables[&Table::Filter];
        assert_eq!(
            filter.chains.keys().collect::<Vec<_>>(),
            ["SERVAL-EMPTY", "SERVAL-FORWARD"]
        );
        assert_eq!(
            filter.chains["SERVAL-FORWARD"],
            [Some("abc".to_owned()), None]
        );
        assert!(filter.chains["SERVAL-EMPTY"].is_empty());
        // DOCKER is not a built-in chain: its jump is not a hook (and is never touched).
        assert_eq!(filter.hooks.len(), 2);
        assert!(filter.hooks[0].exact);
        assert_eq!(filter.hooks[0].builtin, "FORWARD");
        assert!(!filter.hooks[1].exact);
        assert_eq!(filter.hooks[1].rule, "-s 10.0.0.0/8 -j SERVAL-FORWARD");
    }

    #[test]
    fn update_writes_only_changed_chains_and_fixes_hooks() {
        let mut desired = TableRules::default();
        desired.push("SERVAL-FORWARD", "-j SERVAL-A");
        desired.push("SERVAL-A", "-j ACCEPT");
        desired.push("SERVAL-B", "-j DROP");
        desired.hooks.insert(Hook::new("FORWARD", "SERVAL-FORWARD"));
        desired.hooks.insert(Hook::new("INPUT", "SERVAL-B"));

        // From nothing: everything is written.
        let (text, change) = table_update(Table::Filter, &desired, &TableState::default()).unwrap();
        assert_eq!(change.written.len(), 3);
        assert_eq!(change.hooks_added, 2);
        assert!(text.starts_with("*filter\n:SERVAL-A - [0:0]\n"), "{text}");
        assert!(text.ends_with("-I INPUT 1 -m comment --comment serval -j SERVAL-B\nCOMMIT\n"));

        // Already there: nothing to do.
        let same = TableState::from_rules(&desired);
        assert_eq!(table_update(Table::Filter, &desired, &same), None);

        // One chain changes, one goes away: only those are touched.
        let mut next = desired.clone();
        next.chains.get_mut("SERVAL-A").unwrap()[0] = "-j RETURN".into();
        next.chains.remove("SERVAL-B");
        next.hooks.remove(&Hook::new("INPUT", "SERVAL-B"));
        let (text, change) = table_update(Table::Filter, &next, &same).unwrap();
        assert_eq!(change.written, ["SERVAL-A"]);
        assert_eq!(change.deleted, ["SERVAL-B"]);
        assert_eq!(change.hooks_removed, 1);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], ":SERVAL-A - [0:0]");
        assert_eq!(lines[2], "-D INPUT -m comment --comment serval -j SERVAL-B");
        assert_eq!(lines[3], "-F SERVAL-B");
        assert!(lines[4].starts_with("-A SERVAL-A -m comment --comment \"sv:"));
        assert!(lines[4].ends_with(" -j RETURN"));
        assert_eq!(lines[5], "-X SERVAL-B");
        assert!(!text.contains("SERVAL-FORWARD"), "{text}");

        // Drift: a duplicate and an altered hook are removed, the missing one inserted.
        let drifted = parse_save(SAVE);
        let mut want = TableRules::default();
        want.push("SERVAL-FORWARD", "-j ACCEPT");
        want.hooks.insert(Hook::new("FORWARD", "SERVAL-FORWARD"));
        want.hooks.insert(Hook::new("INPUT", "SERVAL-FORWARD"));
        let (text, change) = table_update(Table::Filter, &want, &drifted[&Table::Filter]).unwrap();
        assert_eq!(change.written, ["SERVAL-FORWARD"]);
        assert_eq!(change.deleted, ["SERVAL-EMPTY"]);
        assert_eq!(change.hooks_removed, 1);
        assert_eq!(change.hooks_added, 1);
        assert!(text.contains("-D FORWARD -s 10.0.0.0/8 -j SERVAL-FORWARD\n"));
        assert!(!text.contains("DOCKER"));
    }
}
