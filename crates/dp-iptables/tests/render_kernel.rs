//! The renderer's output in a real kernel (root): the golden fixture applies in a fresh
//! network namespace for IPv4 and IPv6, reads back equal, and model changes become partial
//! updates that touch only what they affect.

mod common;

use serval_calc::desired_state;
use serval_dp_iptables::{Exec, Family, IptablesDataplane, Table, kernel::KernelState};
use serval_model::Resource;
use serval_sys::testing::{NetNsGuard, require_root};

fn run(ns: &NetNsGuard, program: &'static str, args: &[&str]) -> String {
    Exec::in_netns(ns.try_clone().unwrap())
        .run(program, args, None)
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"))
}

/// Compares read-back and expected state piece by piece, naming the first difference.
fn assert_same(actual: &KernelState, expected: &KernelState) {
    for family in Family::ALL {
        let (a, e) = (actual.family(family), expected.family(family));
        for (name, set) in &e.ipsets {
            assert_eq!(a.ipsets.get(name), Some(set), "{family} ipset {name}");
        }
        assert_eq!(a.ipsets.len(), e.ipsets.len(), "{family} ipsets");
        assert_eq!(
            a.tables.keys().collect::<Vec<_>>(),
            e.tables.keys().collect::<Vec<_>>(),
            "{family} tables"
        );
        for (table, t) in &e.tables {
            let at = &a.tables[table];
            for (chain, hashes) in &t.chains {
                assert_eq!(
                    at.chains.get(chain),
                    Some(hashes),
                    "{family} {table} {chain}"
                );
            }
            assert_eq!(at, t, "{family} {table}");
        }
    }
    assert_eq!(actual, expected);
}

#[test]
fn fixture_applies_and_model_changes_are_partial() {
    if !require_root("fixture_applies_and_model_changes_are_partial") {
        return;
    }
    let ns = NetNsGuard::new("sv-dprk").expect("netns");
    let mut dp = IptablesDataplane::new(Exec::in_netns(ns.try_clone().unwrap()), &Family::ALL);
    let mut model = common::model();
    let state = desired_state(&model, Some("n1"));
    let report = dp
        .apply(&state)
        .expect("the kernel takes every rendered rule");
    assert!(report.chains_written.len() > 20, "{report:?}");
    let rendering = common::rendering();
    assert_same(
        &dp.read_state().unwrap(),
        &KernelState::from_rendering(&rendering),
    );
    let saved = run(&ns, "iptables-save", &[]);
    assert!(saved.contains("--match-set serval-4-"), "{saved}");
    assert!(run(&ns, "ip6tables-save", &[]).contains("DNAT --to-destination [fd00:244::1:1]:8080"));

    // Relabel pod y/b: it leaves the selector set of the policy; no chain changes, only the
    // set's members (one IPv4 and one IPv6 address).
    let pod = |ns: &str, name: &str| model.pods[&(ns.to_owned(), name.to_owned())].clone();
    let pod_b = pod("y", "b");
    let pod_d = pod("x", "d");
    let mut pod_b = pod_b;
    pod_b.metadata.labels.insert("app".into(), "other".into());
    model.apply(Resource::Pod(pod_b));
    let report = dp.apply(&desired_state(&model, Some("n1"))).unwrap();
    assert!(report.chains_written.is_empty(), "{report:?}");
    assert_eq!(report.members_changed, 2, "{report:?}");
    assert_eq!(report.sets_updated.len(), 2, "{report:?}");

    // Delete backend pod x/d: only nat chains change (its SEP chains go away).
    model.remove(&Resource::Pod(pod_d).key());
    let report = dp.apply(&desired_state(&model, Some("n1"))).unwrap();
    assert!(
        !report.chains_written.is_empty() && !report.chains_deleted.is_empty(),
        "{report:?}"
    );
    for (family, table, chain) in report.chains_written.iter().chain(&report.chains_deleted) {
        assert_eq!(
            (*family, *table),
            (Family::V4, Table::Nat),
            "{chain} touched"
        );
    }
    assert!(
        report
            .chains_deleted
            .iter()
            .all(|(_, _, c)| c.starts_with("SERVAL-SEP-"))
    );

    dp.cleanup().unwrap();
    for tool in ["iptables-save", "ip6tables-save"] {
        assert!(!run(&ns, tool, &[]).contains("SERVAL"), "{tool}");
    }
    assert!(!run(&ns, "ipset", &["list", "-n"]).contains("serval"));
}
