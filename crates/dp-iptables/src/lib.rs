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
