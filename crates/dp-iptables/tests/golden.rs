//! Golden-file tests of the renderer (no root): a cluster described in YAML
//! (`tests/golden/cluster.yaml`) goes through serval-calc's `Model` and `desired_state` for
//! node n1, and the rendering of each family is compared with `tests/golden/n1-v4.txt` /
//! `n1-v6.txt`. `SERVAL_UPDATE_GOLDEN=1 cargo test -p serval-dp-iptables --test golden`
//! rewrites them; a changed golden file is a reviewed change.

mod common;

use common::{golden_dir, rendering};
use serval_dp_iptables::{Family, Table};

fn check(name: &str, actual: &str) {
    let path = golden_dir().join(name);
    if std::env::var_os("SERVAL_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with SERVAL_UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{name} differs from the rendering at line {}:\n  golden: {:?}\n  actual: {:?}\n\
             (SERVAL_UPDATE_GOLDEN=1 rewrites the golden file; review the diff)",
            first + 1,
            expected.lines().nth(first),
            actual.lines().nth(first),
        );
    }
}

#[test]
fn golden_ipv4() {
    let r = rendering();
    r.validate().expect("valid rendering");
    check("n1-v4.txt", &r.family_text(Family::V4));
}

#[test]
fn golden_ipv6() {
    let r = rendering();
    check("n1-v6.txt", &r.family_text(Family::V6));
}

#[test]
fn rendering_is_deterministic_and_shaped() {
    let a = rendering();
    assert_eq!(a, rendering());
    for family in Family::ALL {
        let f = a.family(family);
        let filter = &f.tables[&Table::Filter];
        let nat = &f.tables[&Table::Nat];
        // Local endpoints get both chains; the remote pod c gets none.
        let fw = filter
            .chains
            .keys()
            .filter(|c| c.starts_with("SERVAL-FW-"))
            .count();
        let tw = filter
            .chains
            .keys()
            .filter(|c| c.starts_with("SERVAL-TW-"))
            .count();
        assert_eq!((fw, tw), (2, 2), "{family}");
        // One hook per built-in chain we use.
        let hooks: Vec<_> = filter.hooks.iter().map(|h| h.builtin.as_str()).collect();
        assert_eq!(hooks, ["FORWARD", "INPUT", "OUTPUT"]);
        assert_eq!(nat.hooks.len(), 3);
        // Every set a rule names is rendered, and every rendered set is named by a rule.
        let text = a.family_text(family);
        for name in f.ipsets.keys() {
            assert!(
                text.contains(&format!("--match-set {name} ")),
                "{family}: {name} unused"
            );
        }
        for word in text.split_whitespace() {
            if word.starts_with("serval-") && !word.starts_with("serval-log") {
                assert!(f.ipsets.contains_key(word), "{family}: {word} not rendered");
            }
        }
    }
    let v4 = a.family_text(Family::V4);
    // The ClusterIP service with three backends spreads 1/3, 1/2, rest.
    assert!(v4.contains("--probability 0.33333333333"), "{v4}");
    assert!(v4.contains("--probability 0.50000000000"));
    // No backends → REJECT (TCP reset for TCP, port unreachable for UDP).
    assert!(v4.contains("-d 10.96.0.53/32 -p tcp --dport 53"));
    assert!(v4.contains("--reject-with tcp-reset"));
    assert!(v4.contains("--reject-with icmp-port-unreachable"));
    assert!(
        a.family_text(Family::V6)
            .contains("DNAT --to-destination [fd00:244::1:1]:8080")
    );
}

#[test]
fn untracked_policy_is_rendered_in_raw_only_while_there_is_some() {
    let r = rendering();
    for family in Family::ALL {
        let f = r.family(family);
        let raw = &f.tables[&Table::Raw];
        let hooks: Vec<_> = raw.hooks.iter().map(|h| h.builtin.as_str()).collect();
        assert_eq!(hooks, ["OUTPUT", "PREROUTING"], "{family}");
        for prefix in ["SERVAL-UI-", "SERVAL-UO-"] {
            let (_, rules) = raw
                .chains
                .iter()
                .find(|(c, _)| c.starts_with(prefix))
                .unwrap_or_else(|| panic!("{family}: no {prefix} chain"));
            // Failsafe ports first, then the untracked policy.
            let last_failsafe = rules.iter().rposition(|r| r.contains("failsafe")).unwrap();
            let policy = rules
                .iter()
                .position(|r| r.contains("-j SERVAL-UP"))
                .unwrap();
            assert!(last_failsafe < policy, "{family} {prefix}: {rules:#?}");
        }
        // The filter dispatch chains accept what untracked policy allowed, before anything.
        let filter = &f.tables[&Table::Filter];
        for chain in ["SERVAL-FORWARD", "SERVAL-INPUT", "SERVAL-OUTPUT"] {
            assert!(
                filter.chains[chain][0].contains("--ctstate UNTRACKED"),
                "{family} {chain}"
            );
        }
    }

    // Without doNotTrack policies: no raw table, and the filter chains lose the rule.
    let mut model = common::model();
    model.global_policies.retain(|_, p| !p.spec.do_not_track);
    let plain = serval_dp_iptables::render::render(&serval_calc::desired_state(&model, Some("n1")));
    for family in Family::ALL {
        let f = plain.family(family);
        assert!(!f.tables.contains_key(&Table::Raw), "{family}");
        assert!(!f.tables[&Table::Filter].chains["SERVAL-INPUT"][0].contains("UNTRACKED"));
    }
}
