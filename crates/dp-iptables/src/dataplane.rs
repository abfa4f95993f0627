//! [`IptablesDataplane`]: the driver the agent calls.

use serval_calc::DesiredState;

use crate::{
    exec::Exec,
    kernel::{self, KernelError, KernelState, WriteReport},
    rules::{Family, Rendering, RenderingError},
};

/// The dataplane failed.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The rendering is invalid; nothing was written.
    #[error("refusing to write an invalid rendering; nothing was changed")]
    Invalid(#[source] RenderingError),
    /// A kernel read or write failed.
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

/// Counters and gauges, for `/metrics` and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Successful applies.
    pub applies: u64,
    /// Failed applies.
    pub apply_failures: u64,
    /// Resyncs run.
    pub resyncs: u64,
    /// Resyncs that found and repaired drift.
    pub resync_repairs: u64,
    /// Chains written (created or rewritten) in total.
    pub chains_written: u64,
    /// Set members added or deleted in total.
    pub members_changed: u64,
    /// Our chains now (both families, all tables).
    pub chains: usize,
    /// Rules in our chains now.
    pub rules: usize,
    /// Our ipsets now.
    pub ipsets: usize,
    /// Members in our ipsets now.
    pub ipset_members: usize,
}

/// The iptables dataplane for one network namespace.
///
/// A synchronous driver (it runs `iptables-restore` and `ipset` as child processes; call it
/// from `spawn_blocking` in async code):
///
/// - [`apply_rendering`](Self::apply_rendering) (and `apply(&DesiredState)`, which renders
///   first) writes only what differs from the last successfully applied rendering. The first
///   call after construction reads the kernel back instead, so a restarted agent reconciles
///   with what it left behind rather than flushing.
/// - [`resync`](Self::resync) reads the kernel back and repairs any drift from the last
///   applied rendering (deleted or edited chains, rules, hooks, sets, members).
/// - [`cleanup`](Self::cleanup) removes every chain, hook and set we own.
/// - [`stats`](Self::stats) returns counters and gauges.
///
/// After a failed write the driver forgets what it believes is in the kernel, so the next
/// apply reads it back first.
#[derive(Debug)]
pub struct IptablesDataplane {
    exec: Exec,
    families: Vec<Family>,
    desired: Option<Rendering>,
    /// What we believe the kernel holds; `None` = unknown, read it back before writing.
    applied: Option<KernelState>,
    stats: Stats,
}

impl IptablesDataplane {
    /// A driver writing the given families through `exec` (which fixes the namespace).
    pub fn new(exec: Exec, families: &[Family]) -> Self {
        Self {
            exec,
            families: families.to_vec(),
            desired: None,
            applied: None,
            stats: Stats::default(),
        }
    }

    /// The families this driver writes.
    pub fn families(&self) -> &[Family] {
        &self.families
    }

    /// The rendering last applied successfully.
    pub fn applied_rendering(&self) -> Option<&Rendering> {
        self.desired.as_ref()
    }

    /// Reads back what we own in the kernel.
    pub fn read_state(&self) -> Result<KernelState, DataplaneError> {
        Ok(kernel::read_state(&self.exec, &self.families)?)
    }

    /// Writes `rendering`, touching only the chains, hooks and sets that differ from what is
    /// in the kernel. Invalid renderings are refused before anything changes.
    pub fn apply_rendering(&mut self, rendering: Rendering) -> Result<WriteReport, DataplaneError> {
        rendering.validate().map_err(DataplaneError::Invalid)?;
        let current = match self.applied.take() {
            Some(state) => state,
            None => self
                .read_state()
                .inspect_err(|_| self.stats.apply_failures += 1)?,
        };
        match kernel::write(&self.exec, &self.families, &rendering, &current) {
            Ok(report) => {
                self.stats.applies += 1;
                self.record(&report);
                self.applied = Some(self.state_of(&rendering));
                self.desired = Some(rendering);
                self.update_gauges();
                Ok(report)
            }
            Err(err) => {
                self.stats.apply_failures += 1;
                Err(err.into())
            }
        }
    }

    /// Renders `state` ([`crate::render::render`]) and writes it like
    /// [`apply_rendering`](Self::apply_rendering): only the chains and sets that differ from
    /// the last applied rendering are written.
    pub fn apply(&mut self, state: &DesiredState) -> Result<WriteReport, DataplaneError> {
        self.apply_rendering(crate::render::render(state))
    }

    /// Reads the kernel back and repairs drift from the last applied rendering. Before the
    /// first apply there is nothing to compare with and nothing is changed.
    pub fn resync(&mut self) -> Result<WriteReport, DataplaneError> {
        self.stats.resyncs += 1;
        let Some(desired) = self.desired.take() else {
            return Ok(WriteReport::default());
        };
        let result = self.read_state().and_then(|current| {
            Ok(kernel::write(
                &self.exec,
                &self.families,
                &desired,
                &current,
            )?)
        });
        match result {
            Ok(report) => {
                if !report.is_empty() {
                    self.stats.resync_repairs += 1;
                    tracing::info!(
                        chains = report.chains_written.len(),
                        deleted = report.chains_deleted.len(),
                        hooks = report.hooks_changed,
                        members = report.members_changed,
                        "resync repaired drift"
                    );
                }
                self.record(&report);
                self.applied = Some(self.state_of(&desired));
                self.desired = Some(desired);
                self.update_gauges();
                Ok(report)
            }
            Err(err) => {
                self.applied = None;
                self.desired = Some(desired);
                Err(err)
            }
        }
    }

    /// Removes every hook, chain and set we own (read back from the kernel, so leftovers of
    /// earlier runs go too).
    pub fn cleanup(&mut self) -> Result<WriteReport, DataplaneError> {
        self.applied = None;
        self.desired = None;
        let current = self.read_state()?;
        let report = kernel::write(&self.exec, &self.families, &Rendering::default(), &current)?;
        self.applied = Some(KernelState::default());
        self.update_gauges();
        tracing::info!(
            chains = report.chains_deleted.len(),
            sets = report.sets_destroyed.len(),
            "removed all serval iptables rules and ipsets"
        );
        Ok(report)
    }

    /// Counters and gauges.
    pub fn stats(&self) -> Stats {
        self.stats.clone()
    }

    /// The state `rendering` leaves in the kernel for the families we write.
    fn state_of(&self, rendering: &Rendering) -> KernelState {
        let mut state = KernelState::from_rendering(rendering);
        if !self.families.contains(&Family::V4) {
            state.v4 = Default::default();
        }
        if !self.families.contains(&Family::V6) {
            state.v6 = Default::default();
        }
        state
    }

    fn record(&mut self, report: &WriteReport) {
        self.stats.chains_written += report.chains_written.len() as u64;
        self.stats.members_changed += report.members_changed as u64;
    }

    fn update_gauges(&mut self) {
        let state = self.applied.clone().unwrap_or_default();
        let fams = [&state.v4, &state.v6];
        self.stats.chains = fams
            .iter()
            .flat_map(|f| f.tables.values())
            .map(|t| t.chains.len())
            .sum();
        self.stats.rules = fams
            .iter()
            .flat_map(|f| f.tables.values())
            .map(|t| t.rule_count())
            .sum();
        self.stats.ipsets = fams.iter().map(|f| f.ipsets.len()).sum();
        self.stats.ipset_members = fams
            .iter()
            .flat_map(|f| f.ipsets.values())
            .map(|s| s.members.len())
            .sum();
    }
}
