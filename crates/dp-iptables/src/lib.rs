//! The iptables dataplane: renders Serval's desired state into iptables rules and ipsets,
//! writes them with `iptables-restore --noflush` / `ip6tables-restore --noflush` and
//! `ipset restore`, updates them partially, repairs drift and cleans up.
//!
//! Layers, each usable alone:
//! - [`render`]: the pure renderer, calc's `DesiredState` → [`Rendering`] (chain layout in
//!   its docs);
//! - [`rules`]: the [`Rendering`] (chains, rules, hooks, sets as text) with validation and the
//!   per-rule `sv:HASH` fingerprints;
//! - [`restore`] / [`ipset`]: parse `iptables-save` / `ipset save` back into what we own, and
//!   generate partial `iptables-restore` / `ipset restore` input (pure);
//! - [`exec`]: runs the tools inside a network namespace;
//! - [`kernel`]: read back and ordered write;
//! - [`IptablesDataplane`]: the driver (`apply`, `resync`, `cleanup`, `stats`).
//!
//! # Use from the agent
//!
//! ```no_run
//! use serval_dp_iptables::{Exec, Family, IptablesDataplane};
//! # fn demo(state: &serval_calc::DesiredState, node_ns: serval_sys::NetNs) -> Result<(), Box<dyn std::error::Error>> {
//! // Commands run in the node's namespace (or `Exec::current()` for the caller's own).
//! let mut dp = IptablesDataplane::new(Exec::in_netns(node_ns), &Family::ALL);
//! dp.apply(state)?;   // first call reconciles with what is in the kernel, later ones diff
//! dp.resync()?;       // periodically: repair drift
//! let stats = dp.stats();
//! dp.cleanup()?;      // on `--cleanup` shutdown: remove every chain, hook and set we own
//! # Ok(()) }
//! ```
//!
//! The driver is synchronous (it runs `iptables-restore`, `ip6tables-restore` and `ipset` as
//! child processes, each spawned from a thread inside the target namespace); async callers
//! use `tokio::task::spawn_blocking`.
//!
//! Ownership: we only ever write chains named `SERVAL-…` and ipsets named `serval-…`, plus one
//! jump rule per hooked built-in chain (`-m comment --comment serval -j SERVAL-…`, inserted
//! at position 1 when missing). No other chain or set is edited.

mod dataplane;
pub mod exec;
mod hash;
pub mod ipset;
pub mod kernel;
pub mod render;
pub mod restore;
pub mod rules;

pub use dataplane::{DataplaneError, IptablesDataplane, Stats};
pub use exec::{Exec, ExecError, Failure};
pub use kernel::{KernelError, KernelState, WriteReport};
pub use rules::{
    Family, FamilyRules, Hook, IpSet, Rendering, RenderingError, SetType, Table, TableRules,
};
