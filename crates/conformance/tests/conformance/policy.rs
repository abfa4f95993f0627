//! The policy scenario groups: every file of crates/calc/tests/netpol and .../calico, in a
//! dual-stack lab with the standard x/y/z × a/b/c cluster.

use serval_conformance::scenario::{assert_reports, calc_scenarios, mutant, run_group};

use crate::require_root;

fn only() -> bool {
    std::env::var_os("SERVAL_CONFORMANCE_ONLY").is_some()
}

#[test]
fn netpol() {
    require_root!();
    let (lab, reports) = run_group("np", "netpol").unwrap_or_else(|e| panic!("netpol: {e:#}"));
    assert!(reports.len() >= 20 || only(), "{} scenarios", reports.len());
    // The suite can fail: a table with one wrong cell fails in the lab and in the evaluator,
    // and the report shows the expected, the evaluator's and the lab's tables.
    let s = serval_calc::scenarios::load_file(
        &calc_scenarios("netpol").join("default-deny-ingress.yaml"),
    )
    .expect("default-deny-ingress.yaml");
    let m = mutant(&s, "y/a", "x/b").expect("mutant");
    let r = lab.run(&m);
    let text = r.failures.join("\n");
    for want in [
        "the evaluator (on the lab's model) disagrees",
        "the lab does not give the table",
        "expected:",
        "evaluator:",
        "lab:",
        "y/a -> x/b: expected ., got X",
    ] {
        assert!(
            text.contains(want),
            "the mutant's report lacks {want:?}:\n{text}"
        );
    }
    let clean = lab.lab.check_no_serval_iptables();
    drop(lab);
    assert_reports("netpol", &reports);
    clean.unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn calico() {
    require_root!();
    let (lab, reports) = run_group("cal", "calico").unwrap_or_else(|e| panic!("calico: {e:#}"));
    let clean = lab.lab.check_no_serval_iptables();
    drop(lab);
    assert!(reports.len() >= 8 || only(), "{} scenarios", reports.len());
    assert_reports("calico", &reports);
    clean.unwrap_or_else(|e| panic!("{e}"));
}
