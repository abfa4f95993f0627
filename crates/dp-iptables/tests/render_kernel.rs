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

    // Relabel pod y/b: it leaves the selector set of x/a's ingress policy, so the decision
    // group it was the only member of goes: x/a's ingress chain loses that group's rule, the
    // group's chain and sets go, the 10.0.0.0/8 group's set loses b's nomatch entry; nothing
    // else changes.
    let pod = |ns: &str, name: &str| model.pods[&(ns.to_owned(), name.to_owned())].clone();
    let tw_a = common::rendering().v4.tables[&Table::Filter]
        .chains
        .iter()
        .find(|(c, rules)| {
            c.starts_with("SERVAL-TW-") && rules.iter().any(|r| r.contains("SERVAL-PD-"))
        })
        .map(|(c, _)| c.clone())
        .expect("x/a's ingress chain");
    let pod_b = pod("y", "b");
    let pod_d = pod("x", "d");
    let mut pod_b = pod_b;
    pod_b.metadata.labels.insert("app".into(), "other".into());
    model.apply(Resource::Pod(pod_b));
    let report = dp.apply(&desired_state(&model, Some("n1"))).unwrap();
    let written: Vec<_> = report
        .chains_written
        .iter()
        .map(|(f, t, c)| (*f, *t, c.as_str()))
        .collect();
    assert_eq!(
        written,
        [
            (Family::V4, Table::Filter, tw_a.as_str()),
            (Family::V6, Table::Filter, tw_a.as_str())
        ],
        "{report:?}"
    );
    assert_eq!(report.chains_deleted.len(), 2, "{report:?}");
    assert!(
        report
            .chains_deleted
            .iter()
            .all(|(_, _, c)| c.starts_with("SERVAL-PD-")),
        "{report:?}"
    );
    assert_eq!(report.sets_destroyed.len(), 2, "{report:?}");
    assert_eq!(report.members_changed, 1, "{report:?}");
    assert_same(
        &dp.read_state().unwrap(),
        &KernelState::from_rendering(&serval_dp_iptables::render::render(&desired_state(
            &model,
            Some("n1"),
        ))),
    );

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
