//! Cross-resource validation (`validate_set`) and property tests over parsing.

use proptest::prelude::*;
use serval_model::{Resource, parse_documents, validate_set};

fn parse(text: &str) -> Vec<Resource> {
    parse_documents("set.yaml", text).unwrap_or_else(|e| panic!("{e}"))
}

fn pool(name: &str, cidr: &str, disabled: bool) -> String {
    format!(
        "---\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: {name}}}\nspec: {{cidr: '{cidr}', disabled: {disabled}}}\n"
    )
}

#[test]
fn overlapping_pools_are_rejected_with_both_named() {
    let existing = parse(&pool("default-ipv4", "10.0.0.0/8", false));
    let new = parse(&pool("pool-b", "10.0.0.0/16", false));
    let errs = validate_set(&new, &existing).unwrap_err();
    assert_eq!(
        errs.to_string(),
        "IPPool pool-b: spec.cidr: pool 10.0.0.0/16 overlaps pool default-ipv4 (10.0.0.0/8); change cidr or disable one"
    );

    // New against new.
    let new = parse(&(pool("a", "192.168.0.0/16", false) + &pool("b", "192.168.128.0/17", false)));
    let errs = validate_set(&new, &[]).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert!(
        errs.0[0]
            .reason
            .contains("overlaps pool b (192.168.128.0/17)"),
        "{errs}"
    );
}

#[test]
fn pools_that_do_not_overlap_or_replace_themselves_are_fine() {
    let existing = parse(&(pool("v4", "10.0.0.0/16", false) + &pool("v6", "fd00::/48", false)));
    // Re-applying the same pool (same name) with a changed cidr replaces it.
    let new = parse(&pool("v4", "10.0.0.0/8", false));
    validate_set(&new, &existing).unwrap();
    // Different family, disjoint ranges.
    let new = parse(&(pool("other", "10.1.0.0/16", false) + &pool("v6b", "fd01::/48", false)));
    validate_set(&new, &existing).unwrap();
    // A disabled pool may overlap (the way to migrate from one pool to another).
    let new = parse(&pool("old", "10.0.0.0/20", true));
    validate_set(&new, &existing).unwrap();
    // ... and an enabled one may overlap an existing disabled one.
    let disabled = parse(&pool("old", "10.0.0.0/20", true));
    validate_set(&parse(&pool("new", "10.0.0.0/24", false)), &disabled).unwrap();
}

#[test]
fn duplicate_keys_in_one_apply() {
    let doc = "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n";
    let new = parse(&format!("{doc}{doc}{doc}"));
    let errs = validate_set(&new, &[]).unwrap_err();
    assert_eq!(errs.len(), 1, "reported once: {errs}");
    assert!(
        errs.to_string()
            .contains("Namespace/a is defined more than once"),
        "{errs}"
    );
    // Same name, different namespace: fine.
    let new = parse(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: a}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: b}\n",
    );
    validate_set(&new, &[]).unwrap();
}

#[test]
fn policies_need_their_tier() {
    let pol = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec: {tier: security}\n";
    let errs = validate_set(&parse(pol), &[]).unwrap_err();
    assert!(
        errs.to_string()
            .contains("tier \"security\" does not exist"),
        "{errs}"
    );
    let tier = "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: security}\nspec: {order: 10}\n";
    validate_set(&parse(&format!("{pol}---\n{tier}")), &[]).unwrap();
    validate_set(&parse(pol), &parse(tier)).unwrap();
    let default_tier =
        "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: n}\nspec: {}\n";
    validate_set(&parse(default_tier), &[]).unwrap();
}

fn service_with_port(port: i64) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\nspec:\n  ports:\n    - port: {port}\n"
    )
}

proptest! {
    #[test]
    fn service_port_accepted_iff_in_range(port in -5i64..70_000) {
        let r = parse_documents("p.yaml", &service_with_port(port));
        if (1..=65535).contains(&port) {
            let rs = r.unwrap();
            let Resource::Service(s) = &rs[0] else { unreachable!() };
            prop_assert_eq!(i64::from(s.spec.ports[0].port.get()), port);
        } else {
            let errs = r.unwrap_err();
            prop_assert_eq!(errs.len(), 1);
            prop_assert_eq!(&errs.0[0].path, "spec.ports[0].port");
            prop_assert_eq!(errs.0[0].reason.clone(), format!("{port} is out of range 1-65535"));
        }
    }

    #[test]
    fn pool_cidrs_parse_normalised_and_round_trip(a: u32, len in 8u8..=26) {
        let net = ipnet::Ipv4Net::new(a.into(), len).unwrap();
        let text = pool("p", &net.to_string(), false);
        match parse_documents("p.yaml", &text) {
            Ok(rs) => {
                let Resource::IPPool(p) = &rs[0] else { unreachable!() };
                prop_assert_eq!(p.spec.cidr, ipnet::IpNet::V4(net.trunc()));
                prop_assert_eq!(Resource::from_json(&rs[0].to_json()).unwrap(), rs[0].clone());
            }
            // Only reserved ranges (loopback, link-local, multicast and above) are refused.
            Err(e) => prop_assert!(
                net.trunc().addr().is_loopback() || net.trunc().addr().is_link_local() || net.trunc().addr().octets()[0] >= 224,
                "{} rejected: {}", net, e
            ),
        }
    }

    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,200}") {
        let _ = parse_documents("fuzz.yaml", &s);
    }

    #[test]
    fn overlap_matches_pairwise_containment(a: u32, la in 8u8..=24, b: u32, lb in 8u8..=24) {
        let x = ipnet::Ipv4Net::new(a.into(), la).unwrap().trunc();
        let y = ipnet::Ipv4Net::new(b.into(), lb).unwrap().trunc();
        prop_assume!(!x.addr().is_loopback() && !y.addr().is_loopback());
        prop_assume!(!x.addr().is_link_local() && !y.addr().is_link_local());
        prop_assume!(x.addr().octets()[0] < 224 && y.addr().octets()[0] < 224);
        let new = parse(&(pool("x", &x.to_string(), false) + &pool("y", &y.to_string(), false)));
        let overlap = x.contains(&y.network()) || y.contains(&x.network());
        prop_assert_eq!(validate_set(&new, &[]).is_err(), overlap);
    }
}
