//! The policy scenario groups: every file of crates/calc/tests/netpol and .../calico, in a
//! dual-stack lab with the standard x/y/z × a/b/c cluster.

use serval_conformance::scenario::{assert_reports, run_group};

use crate::require_root;

#[test]
fn netpol() {
    require_root!();
    let reports = run_group("np", "netpol").unwrap_or_else(|e| panic!("netpol: {e:#}"));
    assert!(reports.len() >= 20 || std::env::var_os("SERVAL_CONFORMANCE_ONLY").is_some());
    assert_reports("netpol", &reports);
}

#[test]
fn calico() {
    require_root!();
    let reports = run_group("cal", "calico").unwrap_or_else(|e| panic!("calico: {e:#}"));
    assert!(reports.len() >= 8 || std::env::var_os("SERVAL_CONFORMANCE_ONLY").is_some());
    assert_reports("calico", &reports);
}
