//! The kernel side: reading back what we own, and writing a [`Rendering`] as a partial,
//! ordered update.
//!
//! Write order for one update (both families):
//! 1. `ipset restore`: create new sets and apply member deltas (new rules find their sets);
//! 2. `iptables-restore --noflush -w` / `ip6tables-restore …`: one input per family with one
//!    `*table … COMMIT` section per changed table; each section is atomic, so a failure leaves
//!    that table as it was;
//! 3. `ipset destroy` for each set no longer wanted (no rule references it any more).
//!
//! If step 1 or 2 fails, the member changes of step 1 are undone (the inverse delta) for
//! every family whose rules were not rewritten, so the previous rules run with their
//! previous members; sets created by step 1 stay (unreferenced) until a later write.

use std::collections::BTreeMap;

use crate::{
    exec::{Exec, ExecError, XTABLES_WAIT_SECS},
    ipset::{self, SetChange},
    restore::{self, TableChange, TableState},
    rules::{Family, FamilyRules, IpSet, Rendering, Table, TableRules},
};

/// What we own in the kernel for one family.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FamilyState {
    /// Per table: our chains (rule fingerprints) and hooks.
    pub tables: BTreeMap<Table, TableState>,
    /// Our sets of this family.
    pub ipsets: BTreeMap<String, IpSet>,
}

impl FamilyState {
    /// The state a family's rendering leaves behind.
    pub fn from_rules(rules: &FamilyRules) -> Self {
        Self {
            tables: rules
                .tables
                .iter()
                .filter(|(_, t)| !t.is_empty())
                .map(|(table, t)| (*table, TableState::from_rules(t)))
                .collect(),
            ipsets: rules.ipsets.clone(),
        }
    }

    /// Whether nothing of ours is there.
    pub fn is_empty(&self) -> bool {
        self.ipsets.is_empty()
            && self
                .tables
                .values()
                .all(|t| t.chains.is_empty() && t.hooks.is_empty())
    }
}

/// What we own in the kernel, both families.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KernelState {
    /// IPv4.
    pub v4: FamilyState,
    /// IPv6.
    pub v6: FamilyState,
}

impl KernelState {
    /// The state a rendering leaves behind.
    pub fn from_rendering(r: &Rendering) -> Self {
        Self {
            v4: FamilyState::from_rules(&r.v4),
            v6: FamilyState::from_rules(&r.v6),
        }
    }

    /// One family.
    pub fn family(&self, family: Family) -> &FamilyState {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    fn family_mut(&mut self, family: Family) -> &mut FamilyState {
        match family {
            Family::V4 => &mut self.v4,
            Family::V6 => &mut self.v6,
        }
    }

    /// Whether nothing of ours is there.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

/// What one write changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteReport {
    /// `(family, table, chain)` created or rewritten.
    pub chains_written: Vec<(Family, Table, String)>,
    /// `(family, table, chain)` deleted.
    pub chains_deleted: Vec<(Family, Table, String)>,
    /// Hook rules inserted plus removed.
    pub hooks_changed: usize,
    /// Sets created.
    pub sets_created: Vec<String>,
    /// Sets whose members changed.
    pub sets_updated: Vec<String>,
    /// Sets destroyed.
    pub sets_destroyed: Vec<String>,
    /// Members added plus deleted (all of a new set's members count).
    pub members_changed: usize,
}

impl WriteReport {
    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A step of a write failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// Reading the state back failed.
    #[error("reading back {family} {what} failed")]
    Read {
        /// Family.
        family: Family,
        /// `iptables` or `ipsets`.
        what: &'static str,
        /// Why.
        #[source]
        source: ExecError,
    },
    /// Writing sets failed (the iptables rules were not touched).
    #[error("writing {family} ipsets failed; the iptables rules were left unchanged")]
    Sets {
        /// Family.
        family: Family,
        /// Why.
        #[source]
        source: ExecError,
    },
    /// Writing iptables failed; each table section is atomic.
    #[error(
        "writing {family} iptables rules failed; each table is updated atomically, so a table \
         whose transaction failed still has its previous rules"
    )]
    Rules {
        /// Family.
        family: Family,
        /// Why.
        #[source]
        source: ExecError,
    },
}

fn restore_tool(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables-restore",
        Family::V6 => "ip6tables-restore",
    }
}

fn save_tool(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables-save",
        Family::V6 => "ip6tables-save",
    }
}

/// Reads what we own in the kernel, for the given families (others are left empty).
pub fn read_state(exec: &Exec, families: &[Family]) -> Result<KernelState, KernelError> {
    let mut state = KernelState::default();
    let sets = if families.is_empty() {
        String::new()
    } else {
        exec.run("ipset", &["save"], None)
            .map_err(|source| KernelError::Read {
                family: families[0],
                what: "ipsets",
                source,
            })?
    };
    for &family in families {
        let saved = exec
            .run(save_tool(family), &[], None)
            .map_err(|source| KernelError::Read {
                family,
                what: "iptables",
                source,
            })?;
        let fam = state.family_mut(family);
        fam.tables = restore::parse_save(&saved);
        fam.ipsets = ipset::parse_save(&sets, family);
    }
    Ok(state)
}

/// Writes `desired` over `current` (what we believe or read is in the kernel), touching
/// only what differs, for the given families. On success the kernel holds
/// `KernelState::from_rendering(desired)` for those families.
pub fn write(
    exec: &Exec,
    families: &[Family],
    desired: &Rendering,
    current: &KernelState,
) -> Result<WriteReport, KernelError> {
    let mut report = WriteReport::default();
    let mut set_changes: Vec<(Family, SetChange)> = Vec::new();
    // Families whose `ipset restore` ran (even partly), and those whose rules were rewritten.
    let mut sets_touched: Vec<Family> = Vec::new();
    let mut rules_written: Vec<Family> = Vec::new();

    for &family in families {
        let (text, change) = ipset::sets_update(
            family,
            &desired.family(family).ipsets,
            &current.family(family).ipsets,
        );
        if !text.is_empty() {
            tracing::debug!(%family, created = change.created.len(), updated = change.updated.len(), "writing ipsets");
            sets_touched.push(family);
            if let Err(source) = exec.run("ipset", &["restore"], Some(&text)) {
                restore_sets(exec, &sets_touched, desired, current);
                return Err(KernelError::Sets { family, source });
            }
        }
        set_changes.push((family, change));
    }

    for &family in families {
        let want = desired.family(family);
        let have = current.family(family);
        let empty_rules = TableRules::default();
        let empty_state = TableState::default();
        let mut input = String::new();
        let mut changes: Vec<(Table, TableChange)> = Vec::new();
        for table in Table::ALL {
            let rules = want.tables.get(&table).unwrap_or(&empty_rules);
            let state = have.tables.get(&table).unwrap_or(&empty_state);
            if let Some((text, change)) = restore::table_update(table, rules, state) {
                input.push_str(&text);
                changes.push((table, change));
            }
        }
        if input.is_empty() {
            continue;
        }
        tracing::debug!(%family, tables = changes.len(), "writing iptables rules");
        if let Err(source) = exec.run(
            restore_tool(family),
            &["--noflush", "-w", XTABLES_WAIT_SECS],
            Some(&input),
        ) {
            // The live rules of this family (and of any not yet written) are the previous
            // ones: give them back their previous set members. A family whose rules were
            // already rewritten keeps the new members its new rules were written for.
            let to_restore: Vec<Family> = sets_touched
                .iter()
                .copied()
                .filter(|f| !rules_written.contains(f))
                .collect();
            restore_sets(exec, &to_restore, desired, current);
            return Err(KernelError::Rules { family, source });
        }
        rules_written.push(family);
        for (table, change) in changes {
            report.hooks_changed += change.hooks_added + change.hooks_removed;
            report
                .chains_written
                .extend(change.written.into_iter().map(|c| (family, table, c)));
            report
                .chains_deleted
                .extend(change.deleted.into_iter().map(|c| (family, table, c)));
        }
    }

    for (family, change) in set_changes {
        report.members_changed += change.members_changed;
        report.sets_created.extend(change.created);
        report.sets_updated.extend(change.updated);
        for name in change.destroy {
            match exec.run("ipset", &["destroy", &name], None) {
                Ok(_) => report.sets_destroyed.push(name),
                // Still referenced by a rule we do not own, or already gone: the next
                // resync tries again.
                Err(err) => {
                    tracing::warn!(%family, set = name, error = %err, "could not destroy ipset");
                }
            }
        }
    }
    Ok(report)
}

/// Undoes the member changes of a failed write for `families`: the inverse delta (from the
/// desired sets back to the `current` ones) is written, so existing sets hold their previous
/// members again. Sets the write created are left in place: no live rule references them,
/// and the next write (which re-reads the kernel) destroys them if they are still unwanted.
/// A failure here is logged; the caller reports the original error, and the driver
/// re-reads the kernel before its next write anyway.
fn restore_sets(exec: &Exec, families: &[Family], desired: &Rendering, current: &KernelState) {
    for &family in families {
        let (text, _) = ipset::sets_update(
            family,
            &current.family(family).ipsets,
            &desired.family(family).ipsets,
        );
        if text.is_empty() {
            continue;
        }
        tracing::warn!(%family, "write failed; restoring the previous ipset members");
        if let Err(err) = exec.run("ipset", &["restore"], Some(&text)) {
            tracing::error!(
                %family,
                error = %err,
                "could not restore the previous ipset members after a failed write; the next \
                 write re-reads the kernel and repairs them"
            );
        }
    }
}
