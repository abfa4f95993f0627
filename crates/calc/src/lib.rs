//! Resources → dataplane-neutral desired state, and the reference evaluator. Pure: no
//! kernel, no network, no datastore.
//!
//! - [`model::Model`]: an indexed snapshot of the resources, updated one at a time.
//! - [`endpoints`]: workload endpoints (current pod labels, named ports, anti-spoofing).
//! - [`policy`]: Calico's rule model (tiers, policies, rules over ip sets) and the
//!   conversion of Kubernetes and Calico policies into it.
//! - [`ipsets`]: selector, CIDR and named-port sets with stable ids.
//! - [`services`], [`natoutgoing`]: service frontends/backends and NAT outgoing.
//! - [`state::desired_state`] and [`delta::diff`]: what a dataplane renders, and what
//!   changed.
//! - [`evaluator`]: what must happen to a packet (the oracle for end-to-end tests).
//! - [`scenarios`]: policy scenarios as data (shared with the lab conformance suite).

pub mod compile;
pub mod delta;
pub mod endpoints;
pub mod evaluator;
pub mod ipsets;
pub mod maglev;
pub mod model;
pub mod natoutgoing;
pub mod policy;
pub mod scenarios;
pub mod services;
pub mod state;
#[cfg(feature = "testing")]
pub mod testing;
pub mod xdp;

pub use delta::{Delta, EndpointChange, diff};
pub use endpoints::{Endpoint, EndpointKey};
pub use evaluator::{Evaluator, Packet, Verdict, evaluate, expected_matrix};
pub use ipsets::{IpSetId, IpSetMembers};
pub use model::Model;
pub use state::{DesiredState, desired_state};
