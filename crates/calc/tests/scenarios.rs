//! Runs every scenario under tests/netpol (the upstream Kubernetes NetworkPolicy e2e cases)
//! and tests/calico against the reference evaluator, for IPv4 and IPv6, on the standard
//! cluster. A failure prints the expected and the evaluator's table.

use std::path::Path;

use serval_calc::scenarios::{Scenario, load_dir};
use serval_model::net::IpFamily;

fn run_dir(dir: &str, min: usize) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(dir);
    let scenarios: Vec<Scenario> =
        load_dir(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
    assert!(
        scenarios.len() >= min,
        "expected at least {min} scenarios in {}, found {}",
        path.display(),
        scenarios.len()
    );
    let mut report = String::new();
    for s in &scenarios {
        assert!(!s.steps.is_empty(), "{}: no steps", s.name);
        let checked: usize = s
            .steps
            .iter()
            .map(|st| st.expect.len() + st.checks.len())
            .sum();
        assert!(checked > 0, "{}: nothing is checked", s.name);
        for fam in [IpFamily::V4, IpFamily::V6] {
            let failures = s
                .run_with_evaluator(fam)
                .unwrap_or_else(|e| panic!("{}: {e}", s.name));
            for f in failures {
                report.push_str(&format!("=== {} ({}):\n{f}\n", s.name, s.file.display()));
            }
        }
    }
    assert!(report.is_empty(), "scenario failures:\n{report}");
}

#[test]
fn kubernetes_netpol_scenarios_hold_in_the_evaluator() {
    run_dir("netpol", 15);
}

#[test]
fn calico_scenarios_hold_in_the_evaluator() {
    run_dir("calico", 6);
}
