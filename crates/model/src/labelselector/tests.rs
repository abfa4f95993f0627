use std::collections::BTreeMap;

use proptest::prelude::*;

use super::{
    LabelSelector, LabelSelectorOperator as Op, LabelSelectorRequirement, validate_label_key,
    validate_label_value,
};
use crate::selector::Selector;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn req(key: &str, operator: Op, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.into(),
        operator,
        values: values.iter().map(|v| v.to_string()).collect(),
    }
}

#[test]
fn label_keys() {
    for ok in [
        "app",
        "a",
        "A-b_c.d9",
        "projectcalico.org/namespace",
        "kubernetes.io/metadata.name",
        "a/b",
        "x-1.y-2/Z",
        &"a".repeat(63),
        &format!("{}/{}", "a".repeat(253), "b".repeat(63)),
    ] {
        assert_eq!(validate_label_key(ok), Ok(()), "{ok:?}");
    }
    for (bad, why) in [
        ("", "must not be empty"),
        ("/", "prefix before '/' must not be empty"),
        ("/a", "prefix before '/' must not be empty"),
        ("a/", "name must not be empty"),
        ("a/b/c", "at most one '/'"),
        ("-a", "start and end"),
        ("a-", "start and end"),
        ("a b", "must consist of"),
        ("a:b", "must consist of"),
        ("Example.com/a", "DNS subdomain"),
        ("ex_ample.com/a", "DNS subdomain"),
        ("-ex.com/a", "DNS subdomain"),
        ("ex..com/a", "DNS subdomain"),
        ("ex.com./a", "DNS subdomain"),
        (&"a".repeat(64), "at most 63"),
        (&format!("{}/b", "a".repeat(254)), "at most 253"),
        ("é", "must consist of"),
    ] {
        let e = validate_label_key(bad).expect_err(bad);
        assert!(e.contains(why), "{bad:?}: {e}");
    }
}

#[test]
fn label_values() {
    for ok in ["", "a", "web-1", "1.2.3", "A_b", &"v".repeat(63)] {
        assert_eq!(validate_label_value(ok), Ok(()), "{ok:?}");
    }
    for bad in ["-a", "a.", "a b", "a/b", "it's", &"v".repeat(64)] {
        assert!(validate_label_value(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn validation_names_the_field() {
    let cases: Vec<(LabelSelector, &str, &str)> = vec![
        (
            LabelSelector {
                match_labels: [("bad key".to_string(), "v".to_string())].into(),
                ..Default::default()
            },
            "matchLabels[\"bad key\"]",
            "must consist of",
        ),
        (
            LabelSelector {
                match_labels: [("k".to_string(), "bad value".to_string())].into(),
                ..Default::default()
            },
            "matchLabels[\"k\"]",
            "label value",
        ),
        (
            LabelSelector {
                match_expressions: vec![req("ok", Op::Exists, &[]), req("k", Op::In, &[])],
                ..Default::default()
            },
            "matchExpressions[1].values",
            "needs at least one value",
        ),
        (
            LabelSelector {
                match_expressions: vec![req("k", Op::NotIn, &[])],
                ..Default::default()
            },
            "matchExpressions[0].values",
            "needs at least one value",
        ),
        (
            LabelSelector {
                match_expressions: vec![req("k", Op::Exists, &["x"])],
                ..Default::default()
            },
            "matchExpressions[0].values",
            "takes no values",
        ),
        (
            LabelSelector {
                match_expressions: vec![req("k", Op::DoesNotExist, &["x"])],
                ..Default::default()
            },
            "matchExpressions[0].values",
            "takes no values",
        ),
        (
            LabelSelector {
                match_expressions: vec![req("k", Op::In, &["ok", "not ok"])],
                ..Default::default()
            },
            "matchExpressions[0].values[1]",
            "label value",
        ),
        (
            LabelSelector {
                match_expressions: vec![req("a/b/c", Op::Exists, &[])],
                ..Default::default()
            },
            "matchExpressions[0].key",
            "at most one '/'",
        ),
    ];
    for (selector, field, reason) in cases {
        let e = selector.validate().expect_err(field);
        assert_eq!(e.field, field);
        assert!(e.reason.contains(reason), "{field}: {}", e.reason);
        assert_eq!(e.to_string(), format!("{}: {}", e.field, e.reason));
    }
    let good = LabelSelector {
        match_labels: [("app".to_string(), "web".to_string())].into(),
        match_expressions: vec![
            req("tier", Op::In, &["a", "b"]),
            req("env", Op::NotIn, &["prod"]),
            req("x.io/y", Op::Exists, &[]),
            req("z", Op::DoesNotExist, &[]),
        ],
    };
    assert_eq!(good.validate(), Ok(()));
}

#[test]
fn matching_semantics() {
    let s = LabelSelector {
        match_labels: [("app".to_string(), "web".to_string())].into(),
        match_expressions: vec![
            req("tier", Op::In, &["a", "b"]),
            req("env", Op::NotIn, &["prod"]),
            req("x.io/y", Op::Exists, &[]),
            req("z", Op::DoesNotExist, &[]),
        ],
    };
    let base = [("app", "web"), ("tier", "a"), ("x.io/y", "")];
    assert!(s.matches(&labels(&base)));
    assert!(s.matches(&labels(&[
        ("app", "web"),
        ("tier", "b"),
        ("x.io/y", "1"),
        ("env", "dev")
    ])));
    assert!(!s.matches(&labels(&[("app", "web"), ("tier", "c"), ("x.io/y", "")])));
    assert!(!s.matches(&labels(&[("app", "web"), ("x.io/y", "")]))); // In: absent fails
    assert!(!s.matches(&labels(&[
        ("app", "web"),
        ("tier", "a"),
        ("x.io/y", ""),
        ("env", "prod")
    ])));
    assert!(!s.matches(&labels(&[
        ("app", "web"),
        ("tier", "a"),
        ("x.io/y", ""),
        ("z", "")
    ])));
    assert!(!s.matches(&labels(&[("app", "db"), ("tier", "a"), ("x.io/y", "")])));
    assert!(!s.matches(&labels(&[("tier", "a"), ("x.io/y", "")])));

    let empty = LabelSelector::default();
    assert!(empty.is_empty());
    assert!(!s.is_empty());
    assert!(empty.matches(&labels(&[])));
    assert!(empty.matches(&labels(&base)));
    assert_eq!(empty.to_selector(), Selector::all());
}

#[test]
fn to_selector_text() {
    let s = LabelSelector {
        match_labels: [("app".to_string(), "web".to_string())].into(),
        match_expressions: vec![
            req("tier", Op::In, &["b", "a"]),
            req("env", Op::NotIn, &["prod"]),
            req("x.io/y", Op::Exists, &[]),
            req("z", Op::DoesNotExist, &[]),
        ],
    };
    assert_eq!(
        s.to_selector().to_string(),
        "app == \"web\" && tier in {\"a\", \"b\"} && env not in {\"prod\"} && has(x.io/y) \
         && !has(z)"
    );
    let one = LabelSelector {
        match_expressions: vec![req("k", Op::Exists, &[])],
        ..Default::default()
    };
    assert_eq!(one.to_selector().to_string(), "has(k)");
}

#[test]
fn serde_shape() {
    let yaml = "matchLabels:\n  app: web\nmatchExpressions:\n- key: tier\n  operator: NotIn\n  \
                values: [a, b]\n- key: x\n  operator: DoesNotExist\n";
    let s: LabelSelector = serde_yaml_ng::from_str(yaml).expect("parses");
    assert_eq!(s.match_labels, labels(&[("app", "web")]));
    assert_eq!(
        s.match_expressions,
        vec![
            req("tier", Op::NotIn, &["a", "b"]),
            req("x", Op::DoesNotExist, &[])
        ]
    );
    let json = serde_json::to_string(&s).expect("serializes");
    assert_eq!(
        json,
        r#"{"matchLabels":{"app":"web"},"matchExpressions":[{"key":"tier","operator":"NotIn","values":["a","b"]},{"key":"x","operator":"DoesNotExist"}]}"#
    );
    assert_eq!(
        serde_json::to_string(&LabelSelector::default()).expect("ser"),
        "{}"
    );
    let empty: LabelSelector = serde_json::from_str("{}").expect("empty");
    assert!(empty.is_empty());
    for bad in [
        r#"{"matchLabel": {}}"#,
        r#"{"matchExpressions": [{"key": "a", "operator": "Exists", "value": []}]}"#,
        r#"{"matchExpressions": [{"key": "a", "operator": "exists"}]}"#,
        r#"{"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}"#,
    ] {
        assert!(serde_json::from_str::<LabelSelector>(bad).is_err(), "{bad}");
    }
}

const KEYS: &[&str] = &["app", "tier", "x.io/y", "in", "has", "z"];
const VALUES: &[&str] = &["", "a", "b", "web", "web-1", "A.b_c"];

fn requirement() -> impl Strategy<Value = LabelSelectorRequirement> {
    let key = prop::sample::select(KEYS).prop_map(String::from);
    let values = prop::collection::vec(prop::sample::select(VALUES).prop_map(String::from), 1..4);
    prop_oneof![
        (key.clone(), values.clone()).prop_map(|(key, values)| LabelSelectorRequirement {
            key,
            operator: Op::In,
            values
        }),
        (key.clone(), values).prop_map(|(key, values)| LabelSelectorRequirement {
            key,
            operator: Op::NotIn,
            values
        }),
        key.clone().prop_map(|key| LabelSelectorRequirement {
            key,
            operator: Op::Exists,
            values: vec![]
        }),
        key.prop_map(|key| LabelSelectorRequirement {
            key,
            operator: Op::DoesNotExist,
            values: vec![]
        }),
    ]
}

fn label_selector() -> impl Strategy<Value = LabelSelector> {
    (
        prop::collection::btree_map(
            prop::sample::select(KEYS).prop_map(String::from),
            prop::sample::select(VALUES).prop_map(String::from),
            0..3,
        ),
        prop::collection::vec(requirement(), 0..4),
    )
        .prop_map(|(match_labels, match_expressions)| LabelSelector {
            match_labels,
            match_expressions,
        })
}

fn label_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        prop::sample::select(KEYS).prop_map(String::from),
        prop::sample::select(VALUES).prop_map(String::from),
        0..6,
    )
}

proptest! {
    #[test]
    fn to_selector_agrees_with_matches(
        ls in label_selector(),
        maps in prop::collection::vec(label_map(), 1..8),
    ) {
        prop_assert_eq!(ls.validate(), Ok(()));
        let sel = ls.to_selector();
        // The printed form is a real selector with the same meaning.
        let reparsed = Selector::parse(&sel.to_string());
        prop_assert_eq!(reparsed.as_ref(), Ok(&sel));
        for labels in &maps {
            prop_assert_eq!(sel.matches(labels), ls.matches(labels), "{} on {:?}", sel, labels);
            prop_assert_eq!(sel.matches_global(labels), ls.matches(labels));
        }
    }

    #[test]
    fn validators_never_panic(s in any::<String>()) {
        let _ = validate_label_key(&s);
        let _ = validate_label_value(&s);
    }
}
