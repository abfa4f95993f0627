//! Unit and property tests of the policy compiler's parts: port blocks, the LPM encoding of
//! decision maps and source-port tables, tier / Pass / Deny / Log resolution on a small
//! cluster, exact source ports (source-port tables), entry-count bounds for notNets /
//! notPorts, and id stability.

use std::collections::BTreeMap;
use std::net::IpAddr;

use proptest::prelude::*;
use serval_calc::compile::encode::{encode, encode_sport};
use serval_calc::compile::ports::{PORT_MAX, PortSet, port_blocks};
use serval_calc::compile::resolve::{DecisionMap, Outcome};
use serval_calc::compile::trie::Lpm;
use serval_calc::compile::{
    self, CompiledPolicy, IDENTITY_WORLD, IDENTITY_WORLD6, PolicyIndex, PolicyVerdict, RuleRef,
    diff, key_data, sport_key_data,
};
use serval_calc::endpoints::EndpointKey;
use serval_calc::policy::Direction;
use serval_calc::{Model, desired_state};
use serval_model::parse_documents;

// ---- ports ------------------------------------------------------------------------------

proptest! {
    #[test]
    fn port_blocks_cover_exactly_the_range(a in 0u32..=PORT_MAX, b in 0u32..=PORT_MAX) {
        let (first, last) = (a.min(b), a.max(b));
        let blocks = port_blocks(first, last);
        prop_assert!(blocks.len() <= 30);
        let mut next = first;
        for blk in &blocks {
            // Aligned: the free low bits of the base are zero.
            let size = 1u32 << (16 - u32::from(blk.fixed_bits));
            prop_assert_eq!(blk.first() % size, 0);
            // Contiguous and in order: together they are exactly first..=last.
            prop_assert_eq!(blk.first(), next);
            next = blk.last() + 1;
        }
        prop_assert_eq!(next, last + 1);
    }

    #[test]
    fn port_sets_agree_with_membership(
        r1 in prop::collection::vec((0u32..300, 0u32..300), 0..4),
        r2 in prop::collection::vec((0u32..300, 0u32..300), 0..4),
    ) {
        let a = PortSet::from_ranges(r1.clone());
        let b = PortSet::from_ranges(r2.clone());
        let inr = |r: &[(u32, u32)], p: u32| r.iter().any(|&(x, y)| x <= p && p <= y);
        for p in 0..310 {
            prop_assert_eq!(a.contains(p), inr(&r1, p));
            prop_assert_eq!(a.intersect(&b).contains(p), inr(&r1, p) && inr(&r2, p));
            prop_assert_eq!(a.union(&b).contains(p), inr(&r1, p) || inr(&r2, p));
            prop_assert_eq!(a.subtract(&b).contains(p), inr(&r1, p) && !inr(&r2, p));
            prop_assert_eq!(a.complement().contains(p), !inr(&r1, p));
        }
    }
}

// ---- encoding ---------------------------------------------------------------------------

fn outcome(i: u8) -> Outcome {
    Outcome::fixed(i.is_multiple_of(2), 100 + u32::from(i))
}

/// A random decision map: for a few protocols, cut points and an outcome per piece.
fn decision_map() -> impl Strategy<Value = DecisionMap> {
    (
        0u8..3,
        prop::collection::btree_map(
            prop::sample::select(vec![1u8, 6, 17, 58, 132]),
            (
                prop::collection::btree_set(1u32..=PORT_MAX, 0..6),
                prop::collection::vec(0u8..3, 7),
            ),
            0..4,
        ),
    )
        .prop_map(|(other, protos)| {
            let other = outcome(other);
            let mut map = DecisionMap {
                other,
                protos: BTreeMap::new(),
                sport_tables: Vec::new(),
            };
            for (p, (cuts, outs)) in protos {
                let mut starts = vec![0u32];
                starts.extend(cuts);
                let mut pieces: Vec<(u32, u32, Outcome)> = Vec::new();
                for (i, &s) in starts.iter().enumerate() {
                    let end = starts.get(i + 1).map_or(PORT_MAX, |n| n - 1);
                    let o = outcome(outs[i]);
                    match pieces.last_mut() {
                        Some(last) if last.2 == o => last.1 = end,
                        _ => pieces.push((s, end, o)),
                    }
                }
                if !(pieces.len() == 1 && pieces[0].2 == other) {
                    map.protos.insert(p, pieces);
                }
            }
            map
        })
}

proptest! {
    #[test]
    fn encoded_entries_answer_like_the_map(map in decision_map(), probes in prop::collection::vec(0u32..=PORT_MAX, 32)) {
        let mut lpm: Lpm<12, Outcome> = Lpm::default();
        for (proto, port, len, o) in encode(&map) {
            lpm.insert(len, key_data(7, 9, 0, proto, port), o);
        }
        for proto in [0u8, 1, 6, 17, 47, 58, 132] {
            // Every piece boundary and some random ports.
            let mut ports: Vec<u32> = probes.clone();
            for (a, b, _) in map.protos.get(&proto).into_iter().flatten() {
                ports.extend([*a, *b, a.saturating_sub(1), (*b + 1).min(PORT_MAX)]);
            }
            for port in ports {
                let port = port as u16;
                let got = lpm.lookup(&key_data(7, 9, 0, proto, port)).copied();
                prop_assert_eq!(got, Some(map.get(proto, port)), "proto {} port {}", proto, port);
            }
        }
    }

    #[test]
    fn encoded_sport_tables_answer_like_the_table(
        cuts in prop::collection::btree_set(1u32..=PORT_MAX, 0..6),
        outs in prop::collection::vec(0u8..3, 7),
        probes in prop::collection::vec(0u32..=PORT_MAX, 32),
    ) {
        let mut starts = vec![0u32];
        starts.extend(cuts);
        let mut table: Vec<(u32, u32, Outcome)> = Vec::new();
        for (i, &s) in starts.iter().enumerate() {
            let end = starts.get(i + 1).map_or(PORT_MAX, |n| n - 1);
            let o = outcome(outs[i]);
            match table.last_mut() {
                Some(last) if last.2 == o => last.1 = end,
                _ => table.push((s, end, o)),
            }
        }
        let mut lpm: Lpm<8, Outcome> = Lpm::default();
        for (sport, len, o) in encode_sport(&table) {
            lpm.insert(len, sport_key_data(5, sport), o);
        }
        let mut ports = probes;
        for (a, b, _) in &table {
            ports.extend([*a, *b, a.saturating_sub(1), (*b + 1).min(PORT_MAX)]);
        }
        for p in ports {
            let want = table.iter().find(|(a, b, _)| *a <= p && p <= *b).map(|t| t.2);
            prop_assert_eq!(lpm.lookup(&sport_key_data(5, p as u16)).copied(), want, "sport {}", p);
        }
    }
}

// ---- resolution on a small cluster ------------------------------------------------------

const BASE: &str = r#"
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: n1}
spec: {bgp: {ipv4Address: 192.168.0.1/24}}
---
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y, labels: {ns: y}}
---
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100}
"#;

fn pod(ns: &str, name: &str, app: &str, node: &str, v4: &str, v6: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}\nspec:\n  nodeName: {node}\n  containers:\n  - name: c\n    ports:\n    - {{name: http, containerPort: 8080, protocol: TCP}}\nstatus:\n  phase: Running\n  podIPs:\n  - ip: \"{v4}\"\n  - ip: \"{v6}\"\n"
    )
}

fn pods() -> String {
    [
        pod("x", "web", "web", "n1", "10.0.0.1", "fd00::1"),
        pod("x", "db", "db", "n1", "10.0.0.2", "fd00::2"),
        pod("y", "cli", "cli", "n2", "10.0.1.1", "fd00::101"),
    ]
    .concat()
}

struct Compiled {
    c: CompiledPolicy,
    index: PolicyIndex,
}

impl Compiled {
    fn new(yaml: &str) -> Compiled {
        let docs = parse_documents("test", yaml).unwrap_or_else(|e| panic!("{yaml}\n{e}"));
        let model = Model::from_resources(docs);
        let c = compile::compile(&desired_state(&model, Some("n1")));
        let index = PolicyIndex::new(&c);
        Compiled { c, index }
    }

    fn ep(&self, ns: &str, pod: &str) -> u32 {
        self.c.endpoints[&EndpointKey::new(ns, pod)]
    }

    /// (allowed, what decided) for a TCP packet.
    fn tcp(&self, ns: &str, pod: &str, dir: Direction, remote: &str, port: u16) -> (bool, String) {
        let remote: IpAddr = remote.parse().unwrap();
        let (v, rule) = self.index.lookup(self.ep(ns, pod), dir, remote, 6, port);
        let by = self
            .c
            .rules
            .get(&rule)
            .map_or("-".to_string(), RuleRef::to_string);
        (v == PolicyVerdict::Allow, by)
    }
}

#[test]
fn tiers_pass_log_deny_and_end_of_tier() {
    let yaml = format!(
        "{BASE}{}{}",
        pods(),
        r#"---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: sec}
spec:
  tier: security
  order: 10
  selector: "app == 'web'"
  types: [Ingress]
  ingress:
  - {action: Log}
  - {action: Deny, protocol: TCP, destination: {ports: [22]}}
  - {action: Pass, source: {nets: [10.0.1.0/24]}}
  - {action: Allow, protocol: TCP, destination: {ports: ['8000:8100']}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-http, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress:
  - ports: [{port: http}]
"#
    );
    let c = Compiled::new(&yaml);
    let ing = Direction::Ingress;
    // Deny wins before Pass.
    let (ok, by) = c.tcp("x", "web", ing, "10.0.1.1", 22);
    assert!(!ok);
    assert!(by.contains("gnp:sec ingress[1]"), "{by}");
    // Pass to the default tier, where the k8s policy allows the named port 8080.
    let (ok, by) = c.tcp("x", "web", ing, "10.0.1.1", 8080);
    assert!(ok);
    assert!(by.contains("knp:x/allow-http"), "{by}");
    // Passed, but the default tier has no rule for 9000: end of tier default.
    let (ok, by) = c.tcp("x", "web", ing, "10.0.1.1", 9000);
    assert!(!ok);
    assert_eq!(by, "end of tier default");
    // Not passed (outside 10.0.1.0/24): the security tier's Allow decides, or its end.
    let (ok, by) = c.tcp("x", "web", ing, "203.0.113.5", 8080);
    assert!(ok);
    assert!(by.contains("gnp:sec ingress[3]"), "{by}");
    let (ok, by) = c.tcp("x", "web", ing, "203.0.113.5", 9000);
    assert!(!ok);
    assert_eq!(by, "end of tier security");
    // IPv6 remotes are not in the v4 net: the same as any other outsider.
    assert!(c.tcp("x", "web", ing, "fd00::101", 8080).0);
    // db has no policy: allowed, both ways.
    assert_eq!(
        c.tcp("x", "db", ing, "203.0.113.5", 1).1,
        "no policy",
        "an endpoint without policy needs an explicit ANY allow"
    );
    assert!(c.tcp("x", "db", Direction::Egress, "fd00::9", 1).0);
    // Remote identities: the v4 net is an identity, the v6 world is not the v4 world.
    assert_ne!(
        c.index.identity("10.0.1.7".parse().unwrap()),
        IDENTITY_WORLD
    );
    assert_eq!(
        c.index.identity("203.0.113.5".parse().unwrap()),
        IDENTITY_WORLD
    );
    assert_eq!(
        c.index.identity("2001:db8::1".parse().unwrap()),
        IDENTITY_WORLD6
    );
    assert!(c.c.sport_entries.is_empty());
}

#[test]
fn tier_default_pass_and_passed_all_tiers() {
    let yaml = format!(
        "{BASE}{}{}",
        pods(),
        r#"---
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: platform}
spec: {order: 50, defaultAction: Pass}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: plat}
spec:
  tier: platform
  selector: all()
  types: [Egress]
  egress:
  - {action: Deny, protocol: UDP}
"#
    );
    let c = Compiled::new(&yaml);
    let eg = Direction::Egress;
    let ep = c.ep("x", "web");
    let remote: IpAddr = "8.8.8.8".parse().unwrap();
    let (v, r) = c.index.lookup(ep, eg, remote, 17, 53);
    assert_eq!(v, PolicyVerdict::Deny);
    assert!(c.c.rules[&r].to_string().contains("gnp:plat egress[0]"));
    // TCP falls off the platform tier (Pass) and no other tier selects: allowed.
    let (v, r) = c.index.lookup(ep, eg, remote, 6, 443);
    assert_eq!(v, PolicyVerdict::Allow);
    assert_eq!(c.c.rules[&r], RuleRef::PassedAllTiers);
}

#[test]
fn source_ports_are_exact_through_source_port_tables() {
    let yaml = format!(
        "{BASE}{}{}",
        pods(),
        r#"---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: sp}
spec:
  tier: security
  selector: "app == 'web'"
  types: [Ingress]
  ingress:
  - {action: Deny, protocol: TCP, source: {ports: [1234]}}
  - {action: Allow, protocol: UDP, source: {ports: [53]}}
  - {action: Allow, protocol: TCP, source: {notPorts: ['2000:2999']}}
  - {action: Allow, protocol: ICMP, source: {ports: []}}
"#
    );
    let c = Compiled::new(&yaml);
    let ep = c.ep("x", "web");
    let r: IpAddr = "10.0.1.1".parse().unwrap();
    let ing = Direction::Ingress;
    let rule = |(v, id): (PolicyVerdict, u32)| (v, c.c.rules[&id].to_string());
    // The first lookup says "depends on the source port" for TCP and UDP.
    assert_eq!(
        c.index.lookup(ep, ing, r, 6, 80).0,
        PolicyVerdict::BySourcePort
    );
    // TCP from 1234: the Deny; from 2500: not the Allow (notPorts), the tier's end; else
    // the Allow.
    let (v, by) = rule(c.index.lookup_with_sport(ep, ing, r, 6, 1234, 80));
    assert_eq!(v, PolicyVerdict::Deny);
    assert!(by.contains("ingress[0]"), "{by}");
    let (v, by) = rule(c.index.lookup_with_sport(ep, ing, r, 6, 2500, 80));
    assert_eq!(v, PolicyVerdict::Deny);
    assert!(by.contains("end of tier security"), "{by}");
    for sport in [0, 1233, 1235, 1999, 3000, 65535] {
        let (v, by) = rule(c.index.lookup_with_sport(ep, ing, r, 6, sport, 80));
        assert_eq!(v, PolicyVerdict::Allow, "sport {sport}");
        assert!(by.contains("ingress[2]"), "{by}");
    }
    // UDP from 53 only.
    assert_eq!(
        c.index.lookup_with_sport(ep, ing, r, 17, 53, 9999).0,
        PolicyVerdict::Allow
    );
    assert_eq!(
        c.index.lookup_with_sport(ep, ing, r, 17, 54, 9999).0,
        PolicyVerdict::Deny
    );
    // ICMP has no ports: decided without a table (the rule with `ports: []` is no
    // condition and allows).
    assert_eq!(
        c.index.lookup(ep, ing, r, 1, 8 << 8).0,
        PolicyVerdict::Allow
    );
    // Two tables (TCP's, UDP's), shared by every identity and endpoint that has them.
    assert_eq!(c.c.stats.sport_tables, 2, "{:?}", c.c.sport_tables);
    assert!(c.c.sport_entries.len() <= 2 + 1 + 2 * 30);
    // Recompiling keeps the table ids.
    let again = compile::compile_incremental(
        &desired_state(
            &Model::from_resources(parse_documents("test", &yaml).unwrap()),
            Some("n1"),
        ),
        &c.c,
    );
    assert!(diff(&c.c, &again).is_empty());
}

#[test]
fn not_nets_and_not_ports_stay_small() {
    // 60 pods on the node, every one selected by a policy allowing ingress from anything
    // but a /30 on any port but a range: the entries do not grow with the pods they match.
    let mut y = BASE.to_string();
    for i in 0..60 {
        y.push_str(&pod(
            "x",
            &format!("p{i}"),
            "web",
            "n1",
            &format!("10.0.{}.{}", i / 200, i % 200 + 1),
            &format!("fd00::{:x}", i + 1),
        ));
    }
    y.push_str(
        r#"---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: wide}
spec:
  tier: security
  selector: all()
  types: [Ingress]
  ingress:
  - {action: Allow, protocol: TCP, source: {notNets: [10.0.0.0/30]}, destination: {notPorts: ['1:1023', 8080]}}
"#,
    );
    let c = Compiled::new(&y);
    // Identities: the /30, WORLD and WORLD6 (pods are not named by any rule).
    assert_eq!(c.c.stats.identities, 3, "{:?}", c.c.classes);
    // Per endpoint: a v4-world / v6 map under ANY, the /30 one explicit; per map a handful
    // of blocks around 0, 1..1023 and 8080.
    assert!(
        c.c.stats.max_entries_per_endpoint <= 24,
        "{} entries per endpoint",
        c.c.stats.max_entries_per_endpoint
    );
    // Every endpoint shares one resolution (same policy, same local view).
    assert!(c.c.stats.shapes <= 2, "{} shapes", c.c.stats.shapes);
    let ep = c.ep("x", "p5");
    let ing = Direction::Ingress;
    let lookup = |a: &str, port: u16| c.index.lookup(ep, ing, a.parse().unwrap(), 6, port).0;
    assert_eq!(lookup("10.0.0.9", 2000), PolicyVerdict::Allow);
    assert_eq!(lookup("10.0.0.9", 1023), PolicyVerdict::Deny);
    assert_eq!(lookup("10.0.0.9", 8080), PolicyVerdict::Deny);
    assert_eq!(lookup("10.0.0.2", 2000), PolicyVerdict::Deny);
    assert_eq!(lookup("fd00::77", 2000), PolicyVerdict::Allow);
}

#[test]
fn ids_are_stable_and_an_added_pod_touches_few_entries() {
    let yaml = format!(
        "{BASE}{}{}",
        pods(),
        r#"---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-cli, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
"#
    );
    let docs = parse_documents("test", &yaml).unwrap();
    let model = Model::from_resources(docs);
    let before = compile::compile(&desired_state(&model, Some("n1")));
    // Recompiling from scratch gives the same ids (hash-based).
    assert_eq!(compile::compile(&desired_state(&model, Some("n1"))), before);

    let more = format!(
        "{yaml}{}",
        pod("y", "cli2", "cli", "n2", "10.0.1.2", "fd00::102")
    );
    let model2 = Model::from_resources(parse_documents("test", &more).unwrap());
    let after = compile::compile_incremental(&desired_state(&model2, Some("n1")), &before);
    let d = diff(&before, &after);
    // Only the new pod's addresses join the existing identity; no verdict entry changes.
    assert!(d.upsert_entries.is_empty(), "{:?}", d.upsert_entries);
    assert!(d.delete_entries.is_empty());
    assert_eq!(d.upsert_identities.len(), 2, "{:?}", d.upsert_identities);
    assert!(d.delete_identities.is_empty());
    assert!(d.identities_changed.is_empty());
    assert_eq!(before.endpoints, after.endpoints);
}

#[test]
fn lookup_misses_deny_and_routes_take_the_enclosing_identity() {
    let yaml = format!(
        "{BASE}{}{}",
        pods(),
        r#"---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: nets}
spec:
  selector: all()
  types: [Egress]
  egress:
  - {action: Allow, destination: {nets: [10.0.0.0/16]}}
  - {action: Deny, destination: {nets: [10.0.1.0/24]}}
"#
    );
    let c = Compiled::new(&yaml);
    // An endpoint id with no entries at all: the program's miss is a deny.
    let (v, r) = c
        .index
        .lookup(12345, Direction::Egress, "10.0.0.1".parse().unwrap(), 6, 80);
    assert_eq!((v, r), (PolicyVerdict::Deny, compile::RULE_NONE));
    // A route prefix inside 10.0.0.0/16 (say a pod block) carries that prefix's identity;
    // one covering more than any identity prefix carries the enclosing one (WORLD here).
    let inner = c.index.identity_of_net(&"10.0.1.0/26".parse().unwrap());
    assert_eq!(inner, c.index.identity("10.0.1.5".parse().unwrap()));
    assert_ne!(inner, IDENTITY_WORLD);
    assert_eq!(
        c.index.identity_of_net(&"10.0.0.0/8".parse().unwrap()),
        IDENTITY_WORLD
    );
    assert_eq!(
        c.index.identity_of_net(&"fd00::/64".parse().unwrap()),
        IDENTITY_WORLD6
    );
    // The /24 is inside the /16 but no rule tells them apart beyond membership: both sets
    // hold 10.0.1.x, so it is its own identity; the rule order makes it allowed.
    let (v, _) = c.index.lookup(
        c.ep("x", "web"),
        Direction::Egress,
        "10.0.1.9".parse().unwrap(),
        17,
        53,
    );
    assert_eq!(v, PolicyVerdict::Allow);
}
