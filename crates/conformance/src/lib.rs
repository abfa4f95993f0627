//! The tier-3 conformance suite's harness (the suite itself is `tests/conformance/`): real
//! labs (`serval lab`), driven through the `serval` binary and the lab's datastore, checked
//! against the scenario files' expected tables AND the reference evaluator
//! ([`serval_calc::evaluator`]) run on the model read back from the lab.
//!
//! - [`lab`]: a lab handle (up/down on drop, apply/delete/relabel, matrix, probe, exec,
//!   the evaluator's model and template bindings of the lab).
//! - [`scenario`]: the policy scenario runner over the calc crate's scenario files.
//! - [`echo`]: an echo server answering with the peer's address and an ICMP echo sender,
//!   run inside the lab's namespaces from the test process.
//!
//! Needs root; every lab is named after the test process and removed on drop.

pub mod echo;
pub mod lab;
pub mod scenario;

pub use lab::{Lab, LabMatrix, ProbeOutcome, converge, converge_timeout, is_root};
