//! Privileged tests of the kernel side: each test owns a fresh network namespace
//! (`NetNsGuard`), so iptables and ipset state is private to it and tests run in parallel.

use std::collections::BTreeMap;

use serval_dp_iptables::{
    Exec, Family, Hook, IpSet, IptablesDataplane, Rendering, SetType, Table, kernel::KernelState,
};
use serval_sys::testing::{NetNsGuard, require_root};

fn netns(test: &str) -> Option<NetNsGuard> {
    if !require_root(test) {
        return None;
    }
    Some(NetNsGuard::new("sv-dpipt").expect("create netns"))
}

fn dataplane(ns: &NetNsGuard) -> IptablesDataplane {
    IptablesDataplane::new(
        Exec::in_netns(ns.try_clone().expect("clone netns")),
        &Family::ALL,
    )
}

fn run(ns: &NetNsGuard, program: &'static str, args: &[&str]) -> String {
    Exec::in_netns(ns.try_clone().unwrap())
        .run(program, args, None)
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"))
}

fn set(members: &[&str]) -> IpSet {
    let mut s = IpSet::new(SetType::HashNet);
    s.members.extend(members.iter().map(|m| (*m).to_owned()));
    s
}

/// Filter + nat, v4 + v6, two sets per family.
fn sample() -> Rendering {
    let mut r = Rendering::default();
    for family in Family::ALL {
        let (net, host) = match family {
            Family::V4 => ("10.1.0.0/16", "10.2.0.1"),
            Family::V6 => ("fd00:1::/64", "fd00:2::1"),
        };
        let d = family.digit();
        let rules = r.family_mut(family);
        rules
            .ipsets
            .insert(format!("serval-{d}-a"), set(&[net, host]));
        rules.ipsets.insert(format!("serval-{d}-b"), set(&[host]));
        let f = rules.table(Table::Filter);
        f.push(
            "SERVAL-FORWARD",
            "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        );
        f.push(
            "SERVAL-FORWARD",
            format!("-m set --match-set serval-{d}-a src -j SERVAL-POL"),
        );
        f.push(
            "SERVAL-FORWARD",
            "-p tcp -m multiport --dports 80,90:99 -j SERVAL-OTHER",
        );
        f.push(
            "SERVAL-POL",
            format!("-m set ! --match-set serval-{d}-b dst -j DROP"),
        );
        f.push("SERVAL-POL", "-j RETURN");
        f.push("SERVAL-OTHER", "-j ACCEPT");
        f.hooks.insert(Hook::new("FORWARD", "SERVAL-FORWARD"));
        let n = rules.table(Table::Nat);
        n.push(
            "SERVAL-POSTROUTING",
            "-m mark --mark 0x4000/0x4000 -j MASQUERADE",
        );
        n.hooks
            .insert(Hook::new("POSTROUTING", "SERVAL-POSTROUTING"));
    }
    r
}

fn assert_nothing_of_ours(ns: &NetNsGuard) {
    for tool in ["iptables-save", "ip6tables-save"] {
        let saved = run(ns, tool, &[]);
        assert!(
            !saved.to_ascii_lowercase().contains("serval"),
            "{tool} still shows serval rules:\n{saved}"
        );
    }
    let sets = run(ns, "ipset", &["list", "-n"]);
    assert!(!sets.contains("serval"), "ipsets left: {sets}");
}

#[test]
fn apply_reads_back_equal_and_cleanup_leaves_nothing() {
    let Some(ns) = netns("apply_reads_back_equal_and_cleanup_leaves_nothing") else {
        return;
    };
    let mut dp = dataplane(&ns);
    let r = sample();
    let report = dp.apply_rendering(r.clone()).expect("apply");
    assert_eq!(report.chains_written.len(), 8, "{report:?}");
    assert_eq!(report.sets_created.len(), 4);
    assert_eq!(dp.read_state().unwrap(), KernelState::from_rendering(&r));

    // Applying the same again writes nothing.
    assert!(dp.apply_rendering(r.clone()).unwrap().is_empty());
    // A fresh driver (agent restart) reads back and finds nothing to do either.
    let mut restarted = dataplane(&ns);
    assert!(restarted.apply_rendering(r.clone()).unwrap().is_empty());
    assert!(restarted.resync().unwrap().is_empty());

    // Rules that are not ours survive everything.
    run(
        &ns,
        "iptables",
        &["-A", "FORWARD", "-s", "192.0.2.1", "-j", "DROP"],
    );
    run(&ns, "ipset", &["create", "foreign", "hash:ip"]);

    let stats = dp.stats();
    assert_eq!(stats.chains, 8);
    assert_eq!(stats.ipsets, 4);

    let report = dp.cleanup().expect("cleanup");
    assert_eq!(report.chains_deleted.len(), 8);
    assert_eq!(report.sets_destroyed.len(), 4);
    assert_nothing_of_ours(&ns);
    assert!(run(&ns, "iptables-save", &[]).contains("-A FORWARD -s 192.0.2.1/32 -j DROP"));
    assert!(run(&ns, "ipset", &["list", "-n"]).contains("foreign"));
    assert!(dp.read_state().unwrap().is_empty());
}

/// Packet counters of each of our v4 filter chains' rules, from `iptables-save -c`.
fn counters(ns: &NetNsGuard) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in run(ns, "iptables-save", &["-c", "-t", "filter"]).lines() {
        // "[pkts:bytes] -A CHAIN ..."
        if let Some((count, rest)) = line.split_once(" -A ")
            && let Some(chain) = rest.split_whitespace().next()
            && chain.starts_with("SERVAL-")
        {
            out.entry(chain.to_owned())
                .or_default()
                .push(format!("{count} {rest}"));
        }
    }
    out
}

#[test]
fn partial_update_rewrites_only_the_changed_chain() {
    let Some(ns) = netns("partial_update_rewrites_only_the_changed_chain") else {
        return;
    };
    let mut dp = dataplane(&ns);
    dp.apply_rendering(sample()).unwrap();
    // Give the chains' rules non-zero counters (iptables-restore -c keeps them), so a rewrite
    // of a chain would show as counters reset to zero.
    let text = run(&ns, "iptables-save", &["-c", "-t", "filter"])
        .replace("[0:0] -A SERVAL-", "[7:700] -A SERVAL-");
    Exec::in_netns(ns.try_clone().unwrap())
        .run("iptables-restore", &["-c", "-w", "5"], Some(&text))
        .unwrap();
    let before = counters(&ns);
    assert!(
        before["SERVAL-OTHER"][0].starts_with("[7:700]"),
        "{before:?}"
    );

    let mut next = sample();
    next.v4
        .table(Table::Filter)
        .chains
        .get_mut("SERVAL-POL")
        .unwrap()[1] = "-j DROP".into();
    next.v4
        .ipsets
        .get_mut("serval-4-b")
        .unwrap()
        .members
        .insert("10.9.9.9".into());
    let report = dp.apply_rendering(next.clone()).unwrap();
    assert_eq!(
        report.chains_written,
        [(Family::V4, Table::Filter, "SERVAL-POL".to_owned())]
    );
    assert_eq!(report.sets_updated, ["serval-4-b"]);
    assert_eq!(report.members_changed, 1);
    let after = counters(&ns);
    for chain in ["SERVAL-FORWARD", "SERVAL-OTHER"] {
        assert_eq!(before[chain], after[chain], "{chain} was touched");
    }
    assert!(
        after["SERVAL-POL"][1].starts_with("[0:0]") && after["SERVAL-POL"][1].ends_with("-j DROP"),
        "{after:?}"
    );
    assert!(run(&ns, "ipset", &["list", "serval-4-b"]).contains("10.9.9.9"));

    // Membership: remove a member and a whole set (and the rule referencing it).
    let mut third = next.clone();
    third
        .v4
        .ipsets
        .get_mut("serval-4-a")
        .unwrap()
        .members
        .remove("10.2.0.1");
    third.v4.ipsets.remove("serval-4-b");
    third
        .v4
        .table(Table::Filter)
        .chains
        .get_mut("SERVAL-POL")
        .unwrap()
        .remove(0);
    let report = dp.apply_rendering(third.clone()).unwrap();
    assert_eq!(report.sets_destroyed, ["serval-4-b"]);
    let listed = run(&ns, "ipset", &["list", "serval-4-a"]);
    assert!(
        listed.contains("10.1.0.0/16") && !listed.contains("10.2.0.1"),
        "{listed}"
    );
    assert_eq!(
        dp.read_state().unwrap(),
        KernelState::from_rendering(&third)
    );
    dp.cleanup().unwrap();
    assert_nothing_of_ours(&ns);
}

#[test]
fn resync_repairs_drift() {
    let Some(ns) = netns("resync_repairs_drift") else {
        return;
    };
    let mut dp = dataplane(&ns);
    let r = sample();
    dp.apply_rendering(r.clone()).unwrap();
    let want = KernelState::from_rendering(&r);

    // A deleted rule, a deleted chain (with the rule jumping to it), a deleted hook, an edited
    // ipset, a destroyed set, and a stray chain of ours.
    run(&ns, "iptables", &["-D", "SERVAL-FORWARD", "1"]);
    run(&ns, "iptables", &["-D", "SERVAL-FORWARD", "2"]);
    run(&ns, "iptables", &["-F", "SERVAL-OTHER"]);
    run(&ns, "iptables", &["-X", "SERVAL-OTHER"]);
    run(&ns, "ip6tables", &["-D", "FORWARD", "1"]);
    run(&ns, "iptables", &["-t", "nat", "-N", "SERVAL-STRAY"]);
    run(&ns, "ipset", &["del", "serval-4-a", "10.2.0.1"]);
    run(&ns, "ipset", &["add", "serval-6-a", "fd00:9::1"]);
    run(&ns, "ip6tables", &["-F", "SERVAL-POL"]);
    run(&ns, "ipset", &["destroy", "serval-6-b"]);
    assert_ne!(dp.read_state().unwrap(), want);

    let report = dp.resync().expect("resync");
    assert!(!report.is_empty());
    assert_eq!(dp.stats().resync_repairs, 1);
    assert_eq!(dp.read_state().unwrap(), want);
    // Rules jump where they should: the repaired chains are real.
    let saved = run(&ns, "iptables-save", &["-t", "filter"]);
    assert!(saved.contains("-j SERVAL-OTHER"), "{saved}");
    assert!(dp.resync().unwrap().is_empty());

    dp.cleanup().unwrap();
    assert_nothing_of_ours(&ns);
}

#[test]
fn failed_write_leaves_previous_rules() {
    let Some(ns) = netns("failed_write_leaves_previous_rules") else {
        return;
    };
    let mut dp = dataplane(&ns);
    let r = sample();
    dp.apply_rendering(r.clone()).unwrap();
    let mut bad = r.clone();
    bad.v4
        .table(Table::Filter)
        .push("SERVAL-OTHER", "-j SERVAL-NO-SUCH-CHAIN");
    bad.v4.table(Table::Filter).push("SERVAL-POL", "-j DROP");
    let err = dp
        .apply_rendering(bad)
        .expect_err("a jump to a missing chain fails");
    assert!(err.to_string().contains("IPv4"), "{err}");
    let v4 = dp.read_state().unwrap().v4;
    assert_eq!(v4.tables, KernelState::from_rendering(&r).v4.tables);
    // After the failure the driver re-reads and the next good apply converges.
    dp.apply_rendering(r.clone()).unwrap();
    assert_eq!(dp.read_state().unwrap(), KernelState::from_rendering(&r));
    dp.cleanup().unwrap();
    assert_nothing_of_ours(&ns);
}

#[test]
fn failed_rules_write_restores_previous_set_members() {
    let Some(ns) = netns("failed_rules_write_restores_previous_set_members") else {
        return;
    };
    let mut dp = dataplane(&ns);
    let a = sample();
    dp.apply_rendering(a.clone()).unwrap();
    let want = KernelState::from_rendering(&a);
    assert_eq!(dp.read_state().unwrap(), want);

    // B: members of existing sets differ in both families (small deltas and one big
    // change that goes through a swap), plus a new set; the v6 rules are fine but the v4
    // rules jump to a missing chain, so iptables-restore fails for IPv4 first.
    let mut b = a.clone();
    for family in Family::ALL {
        let d = family.digit();
        let rules = b.family_mut(family);
        let sa = rules.ipsets.get_mut(&format!("serval-{d}-a")).unwrap();
        let first = sa.members.iter().next().unwrap().clone();
        sa.members.remove(&first);
        let extra = match family {
            Family::V4 => "10.9.0.0/16",
            Family::V6 => "fd00:9::/64",
        };
        sa.members.insert(extra.to_owned());
        let sb = rules.ipsets.get_mut(&format!("serval-{d}-b")).unwrap();
        for i in 0..300u32 {
            sb.members.insert(match family {
                Family::V4 => format!("10.8.{}.{}", i / 256, i % 256),
                Family::V6 => format!("fd00:8::{:x}", i + 1),
            });
        }
        rules
            .ipsets
            .insert(format!("serval-{d}-new"), set(&[extra]));
    }
    b.v6.table(Table::Filter).push("SERVAL-OTHER", "-j DROP");
    b.v4.table(Table::Filter)
        .push("SERVAL-OTHER", "-j SERVAL-NO-SUCH-CHAIN");
    let err = dp
        .apply_rendering(b.clone())
        .expect_err("a jump to a missing chain fails");
    assert!(err.to_string().contains("IPv4"), "{err}");

    // Rules and members are A's; the only leftover is the unreferenced new set.
    let mut after = dp.read_state().unwrap();
    for family in Family::ALL {
        let d = family.digit();
        let leftover = match family {
            Family::V4 => after.v4.ipsets.remove(&format!("serval-{d}-new")),
            Family::V6 => after.v6.ipsets.remove(&format!("serval-{d}-new")),
        };
        assert!(leftover.is_some(), "{family}: the new set was created");
    }
    assert_eq!(after, want);

    // The driver re-reads after the failure: the next good apply converges and removes
    // the leftover sets.
    dp.apply_rendering(a.clone()).unwrap();
    assert_eq!(dp.read_state().unwrap(), want);

    // Same when the first family succeeds and the second fails: IPv6 gets its previous
    // members back, IPv4 keeps the rules and members it was rewritten with.
    let mut c = b.clone();
    let v4_other =
        c.v4.table(Table::Filter)
            .chains
            .get_mut("SERVAL-OTHER")
            .unwrap();
    v4_other.pop();
    v4_other.push("-j DROP".to_owned());
    c.v6.table(Table::Filter)
        .push("SERVAL-OTHER", "-j SERVAL-NO-SUCH-CHAIN");
    let err = dp
        .apply_rendering(c.clone())
        .expect_err("a jump to a missing chain fails");
    assert!(err.to_string().contains("IPv6"), "{err}");
    let mut after = dp.read_state().unwrap();
    assert_eq!(after.v4, KernelState::from_rendering(&c).v4);
    assert!(after.v6.ipsets.remove("serval-6-new").is_some());
    assert_eq!(after.v6, want.v6);

    dp.cleanup().unwrap();
    assert_nothing_of_ours(&ns);
}

#[test]
fn big_set_changes_are_swapped_in() {
    let Some(ns) = netns("big_set_changes_are_swapped_in") else {
        return;
    };
    let mut dp = dataplane(&ns);
    let mut r = sample();
    dp.apply_rendering(r.clone()).unwrap();
    let members: Vec<String> = (0..400)
        .map(|i| format!("10.7.{}.{}", i / 256, i % 256))
        .collect();
    r.v4.ipsets.get_mut("serval-4-b").unwrap().members = members.iter().cloned().collect();
    let report = dp.apply_rendering(r.clone()).unwrap();
    assert_eq!(report.sets_updated, ["serval-4-b"]);
    assert_eq!(report.members_changed, 401);
    assert!(report.chains_written.is_empty());
    assert_eq!(dp.read_state().unwrap(), KernelState::from_rendering(&r));
    let names = run(&ns, "ipset", &["list", "-n"]);
    assert!(!names.contains("-tmp"), "temporary set left: {names}");
    dp.cleanup().unwrap();
    assert_nothing_of_ours(&ns);
}
