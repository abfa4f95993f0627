//! The tier-3 conformance suite (issue 4), end to end in real labs, as root. One test per
//! scenario group, each in its own lab; the groups run in parallel (their time is mostly
//! spent waiting for probes, not computing).
//!
//! - `netpol`: the upstream Kubernetes NetworkPolicy e2e cases (crates/calc/tests/netpol).
//! - `calico`: Calico policy scenarios (crates/calc/tests/calico).
//! - `services`: ClusterIP, named targetPort, affinity, no backends, NodePort, externalIP,
//!   externalTrafficPolicy Local, hairpin, UDP.
//! - `nat_outgoing`: what the outside host sees.
//!
//! Run: `cargo test -p serval-conformance` (as root). `SERVAL_CONFORMANCE_ONLY=a,b` limits
//! the policy groups to scenarios whose names contain a or b; `SERVAL_CONFORMANCE_KEEP=1`
//! keeps the labs; `SERVAL_CONFORMANCE_CONVERGE_SECS` sets how long to wait for the agents.

mod policy;
mod services;

/// Skips (with the reason) unless we are root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !serval_conformance::is_root() {
            eprintln!("skipped: the conformance suite needs root (labs: network namespaces, veths, bridges)");
            return;
        }
    };
}
