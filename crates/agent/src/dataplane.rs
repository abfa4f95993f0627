//! The dataplane driver seam: one [`Dataplane`] trait that every dataplane implements, the
//! selection between them ([`DataplaneKind`], from FelixConfiguration `bpfEnabled`), and the
//! thread that owns the active driver ([`DriverThread`]).
//!
//! Drivers are synchronous (the iptables driver runs `iptables-restore` / `ipset` as child
//! processes). They run on one dedicated thread, spawned from the agent's own thread, so the
//! tools they start are always in the node's network namespace, whatever thread of the async
//! runtime asked.
//!
//! Built-in drivers:
//! - [`DataplaneKind::Iptables`]: [`IptablesDriver`], wrapping
//!   [`serval_dp_iptables::IptablesDataplane`] (IPv4 and IPv6). Its first apply reads the
//!   kernel back, so a restarted agent reconciles with the rules it left instead of flushing.
//! - [`DataplaneKind::Bpf`]: [`bpf::BpfDriver`], the eBPF dataplane of `serval_dp_bpf`
//!   (tc programs on every workload veth, pinned maps per node; see [`bpf`]). [`open`] uses
//!   Calico's default map sizes; [`open_with`] takes the node's FelixConfiguration
//!   (`bpfMapSize*`, `bpfLogLevel`).

pub mod bpf;

use std::sync::mpsc;
use std::thread;

use serval_calc::DesiredState;
use serval_dp_iptables::{Exec, Family, IptablesDataplane, WriteReport};
use tokio::sync::oneshot;

/// Why a dataplane could not be opened or could not write.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The selected dataplane is not part of this build.
    #[error(
        "{kind} dataplane not available in this build: {reason}; set FelixConfiguration \
         bpfEnabled: false to use the iptables dataplane"
    )]
    Unavailable {
        kind: DataplaneKind,
        reason: &'static str,
    },
    /// The eBPF driver failed (the next apply reads the maps back and retries).
    #[error("bpf dataplane: {source}")]
    Bpf {
        #[source]
        source: Box<bpf::BpfError>,
    },
    /// The iptables driver failed (nothing half-written: see its docs).
    #[error("iptables dataplane: {source}")]
    Iptables {
        #[source]
        source: serval_dp_iptables::DataplaneError,
    },
    /// The driver thread is gone (it panicked); the agent restarts it on the next switch.
    #[error("the dataplane driver thread stopped; its last operation did not complete")]
    ThreadGone,
    #[error("starting the dataplane driver thread: {source}")]
    Spawn {
        #[source]
        source: std::io::Error,
    },
}

/// Which dataplane a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DataplaneKind {
    Iptables,
    Bpf,
}

impl DataplaneKind {
    /// Every kind, in the order leftovers are cleaned.
    pub const ALL: [DataplaneKind; 2] = [DataplaneKind::Iptables, DataplaneKind::Bpf];

    /// The kind FelixConfiguration `bpfEnabled` selects.
    pub fn from_bpf_enabled(bpf_enabled: bool) -> DataplaneKind {
        if bpf_enabled {
            DataplaneKind::Bpf
        } else {
            DataplaneKind::Iptables
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DataplaneKind::Iptables => "iptables",
            DataplaneKind::Bpf => "bpf",
        }
    }
}

impl std::fmt::Display for DataplaneKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one apply, resync or cleanup wrote (dataplane-neutral counts for logs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Rule containers (iptables chains; BPF programs or policy maps) created or rewritten.
    pub rule_groups_written: usize,
    /// Rule containers deleted.
    pub rule_groups_deleted: usize,
    /// Hooks into the kernel's paths (iptables jump rules; tc/tcx attachments) changed.
    pub hooks_changed: usize,
    /// Sets (ipsets; set maps) created plus destroyed.
    pub sets_changed: usize,
    /// Set members added plus deleted.
    pub members_changed: usize,
}

impl Written {
    pub fn is_empty(&self) -> bool {
        *self == Written::default()
    }
}

impl std::fmt::Display for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "groups_written={} groups_deleted={} hooks={} sets={} members={}",
            self.rule_groups_written,
            self.rule_groups_deleted,
            self.hooks_changed,
            self.sets_changed,
            self.members_changed
        )
    }
}

impl From<&WriteReport> for Written {
    fn from(r: &WriteReport) -> Self {
        Written {
            rule_groups_written: r.chains_written.len(),
            rule_groups_deleted: r.chains_deleted.len(),
            hooks_changed: r.hooks_changed,
            sets_changed: r.sets_created.len() + r.sets_destroyed.len(),
            members_changed: r.members_changed,
        }
    }
}

/// Counters and gauges of a driver, for logs and `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataplaneStats {
    pub applies: u64,
    pub apply_failures: u64,
    pub resyncs: u64,
    /// Resyncs that found and repaired drift.
    pub resync_repairs: u64,
    /// Rule containers now (iptables chains).
    pub rule_groups: usize,
    /// Rules now.
    pub rules: usize,
    /// Sets now, and their members.
    pub sets: usize,
    pub set_members: usize,
    /// Packets the dataplane dropped (eBPF: every drop reason summed).
    pub drops: u64,
    /// eBPF: packets dropped per reason (`SV_DROP_*`), as of the last apply or resync.
    pub drop_counters: serval_dp_bpf::DropCounters,
    /// Flows in the dataplane's own conntrack (eBPF), and flows its cleaner expired.
    pub conntrack_entries: usize,
    pub conntrack_expired: u64,
}

/// A dataplane driver: renders [`DesiredState`] into the kernel of the namespace it runs in.
///
/// Every driver keeps what it applied last and writes only the difference; its first apply
/// after construction reconciles with what is already in the kernel (an agent restart keeps
/// connections flowing). All methods are all-or-nothing per kernel transaction: a failed
/// write leaves the previous state in force and the next apply retries.
pub trait Dataplane: Send {
    /// The dataplane's name (`iptables`, `bpf`), as recorded in the agent's health file.
    fn name(&self) -> &'static str;
    /// Makes the kernel hold `state`, touching only what differs from the last apply.
    fn apply(&mut self, state: &DesiredState) -> Result<Written, DataplaneError>;
    /// [`Dataplane::apply`] when the caller knows that, of the services part, only
    /// `frontends` (added, changed or removed) may differ from the state of the previous
    /// successful apply: a driver may look at those alone. By default the same as `apply`.
    fn apply_services_changed(
        &mut self,
        state: &DesiredState,
        frontends: Vec<serval_calc::services::FrontendKey>,
    ) -> Result<Written, DataplaneError> {
        let _ = frontends;
        self.apply(state)
    }
    /// Reads the kernel back and repairs drift from the last applied state.
    fn resync(&mut self) -> Result<Written, DataplaneError>;
    /// Removes everything this dataplane created (including leftovers of earlier runs).
    fn cleanup(&mut self) -> Result<Written, DataplaneError>;
    /// Counters and gauges.
    fn stats(&self) -> DataplaneStats;
    /// [`Dataplane::stats`] with the kernel counters that are cheap to read read now (eBPF
    /// drop counters), for `/metrics`; by default the same as `stats`.
    fn stats_now(&mut self) -> DataplaneStats {
        self.stats()
    }
}

/// The iptables dataplane ([`IptablesDataplane`]) for IPv4 and IPv6, in the calling
/// thread's network namespace.
#[derive(Debug)]
pub struct IptablesDriver {
    inner: IptablesDataplane,
}

impl IptablesDriver {
    /// A driver for both families, running the tools in the caller's network namespace.
    pub fn new() -> IptablesDriver {
        IptablesDriver {
            inner: IptablesDataplane::new(Exec::current(), &[Family::V4, Family::V6]),
        }
    }

    /// The wrapped driver.
    pub fn inner(&self) -> &IptablesDataplane {
        &self.inner
    }
}

impl Default for IptablesDriver {
    fn default() -> Self {
        Self::new()
    }
}

fn ipt(source: serval_dp_iptables::DataplaneError) -> DataplaneError {
    DataplaneError::Iptables { source }
}

impl Dataplane for IptablesDriver {
    fn name(&self) -> &'static str {
        DataplaneKind::Iptables.as_str()
    }

    fn apply(&mut self, state: &DesiredState) -> Result<Written, DataplaneError> {
        self.inner
            .apply(state)
            .map(|r| Written::from(&r))
            .map_err(ipt)
    }

    fn resync(&mut self) -> Result<Written, DataplaneError> {
        self.inner.resync().map(|r| Written::from(&r)).map_err(ipt)
    }

    fn cleanup(&mut self) -> Result<Written, DataplaneError> {
        self.inner.cleanup().map(|r| Written::from(&r)).map_err(ipt)
    }

    fn stats(&self) -> DataplaneStats {
        let s = self.inner.stats();
        DataplaneStats {
            applies: s.applies,
            apply_failures: s.apply_failures,
            resyncs: s.resyncs,
            resync_repairs: s.resync_repairs,
            rule_groups: s.chains,
            rules: s.rules,
            sets: s.ipsets,
            set_members: s.ipset_members,
            ..DataplaneStats::default()
        }
    }
}

/// Opens the driver of `kind` in the calling thread's network namespace, with default
/// settings (Calico's eBPF map sizes, no per-packet logs).
pub fn open(kind: DataplaneKind) -> Result<Box<dyn Dataplane>, DataplaneError> {
    open_with(kind, &serval_model::calico::felix::FelixSettings::default())
}

/// Opens the driver of `kind` in the calling thread's network namespace, configured from the
/// node's effective FelixConfiguration.
pub fn open_with(
    kind: DataplaneKind,
    felix: &serval_model::calico::felix::FelixSettings,
) -> Result<Box<dyn Dataplane>, DataplaneError> {
    match kind {
        DataplaneKind::Iptables => Ok(Box::new(IptablesDriver::new())),
        DataplaneKind::Bpf => Ok(Box::new(bpf::BpfDriver::new(
            bpf::BpfSettings::from_felix(felix),
        )?)),
    }
}

/// The active driver, owned by the [`DriverThread`].
pub type Slot = Option<Box<dyn Dataplane>>;

type Job = Box<dyn FnOnce(&mut Slot) + Send>;

/// A thread owning the active driver; jobs run on it one at a time, in order. Clones send
/// to the same thread.
#[derive(Debug, Clone)]
pub struct DriverThread {
    jobs: mpsc::Sender<Job>,
}

impl DriverThread {
    /// Starts the thread. It inherits the calling thread's network namespace, which is where
    /// every driver it opens writes. Its logs carry `span` (the agent's `node=…`).
    pub fn spawn(name: &str, span: tracing::Span) -> Result<DriverThread, DataplaneError> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let node = name.to_string();
        thread::Builder::new()
            .name(format!("dp-{name}"))
            .spawn(move || {
                bpf::set_thread_node(&node);
                let _in_span = span.enter();
                let mut slot: Slot = None;
                while let Ok(job) = rx.recv() {
                    job(&mut slot);
                }
            })
            .map_err(|source| DataplaneError::Spawn { source })?;
        Ok(DriverThread { jobs })
    }

    /// Runs `f` on the driver thread with the active driver and returns its result.
    pub async fn call<R, F>(&self, f: F) -> Result<R, DataplaneError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Slot) -> R + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |slot| {
            let _ = tx.send(f(slot));
        });
        self.jobs
            .send(job)
            .map_err(|_| DataplaneError::ThreadGone)?;
        rx.await.map_err(|_| DataplaneError::ThreadGone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpf_enabled_selects_the_kind() {
        assert_eq!(
            DataplaneKind::from_bpf_enabled(false),
            DataplaneKind::Iptables
        );
        assert_eq!(DataplaneKind::from_bpf_enabled(true), DataplaneKind::Bpf);
    }

    #[test]
    fn both_dataplanes_open_without_touching_the_kernel() {
        // Opening the bpf driver loads nothing (the agent opens it to clean leftovers).
        let bpf = open(DataplaneKind::Bpf).expect("bpf driver");
        assert_eq!(bpf.name(), "bpf");
        let ipt = open(DataplaneKind::Iptables).expect("iptables driver");
        assert_eq!(ipt.name(), "iptables");
    }

    #[test]
    fn written_counts_a_write_report() {
        let r = WriteReport {
            chains_written: vec![(
                Family::V4,
                serval_dp_iptables::Table::Filter,
                "SERVAL-X".into(),
            )],
            hooks_changed: 2,
            sets_created: vec!["serval-a".into()],
            sets_destroyed: vec!["serval-b".into()],
            members_changed: 5,
            ..Default::default()
        };
        let w = Written::from(&r);
        assert_eq!(w.rule_groups_written, 1);
        assert_eq!(w.sets_changed, 2);
        assert_eq!(w.members_changed, 5);
        assert!(!w.is_empty());
    }

    #[tokio::test]
    async fn jobs_run_in_order_on_the_driver_thread() {
        let t = DriverThread::spawn("test", tracing::Span::none()).unwrap();
        let first = t
            .call(|slot| {
                *slot = open(DataplaneKind::Iptables).ok();
                std::thread::current().name().map(str::to_string)
            })
            .await
            .unwrap();
        assert_eq!(first.as_deref(), Some("dp-test"));
        let name = t
            .call(|slot| slot.as_ref().map(|d| d.name()))
            .await
            .unwrap();
        assert_eq!(name, Some("iptables"));
    }
}
