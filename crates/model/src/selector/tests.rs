//! Unit tests for the selector language: every operator (including absent-label semantics),
//! precedence, printing, error columns.

use std::collections::{BTreeMap, BTreeSet};

use super::{Expr, Scope, Selector, SelectorError};

mod props;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sel(s: &str) -> Selector {
    Selector::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
}

fn err(s: &str) -> SelectorError {
    match Selector::parse(s) {
        Ok(parsed) => panic!("{s:?} should not parse, got {parsed}"),
        Err(e) => e,
    }
}

/// Each row: selector, labels, expected match.
#[test]
fn operators_with_present_and_absent_labels() {
    let none = labels(&[]);
    let web = labels(&[("app", "web"), ("tier", "frontend")]);
    let db = labels(&[("app", "db")]);
    let cases: &[(&str, &BTreeMap<String, String>, bool)] = &[
        ("all()", &none, true),
        ("all()", &web, true),
        ("", &none, true),
        ("   \t\n", &web, true),
        ("global()", &web, false),
        ("app == 'web'", &web, true),
        ("app == 'web'", &db, false),
        ("app == 'web'", &none, false),
        ("app != 'web'", &web, false),
        ("app != 'web'", &db, true),
        ("app != 'web'", &none, true), // absent: true, as in Calico
        ("app in { 'web', 'api' }", &web, true),
        ("app in { 'web', 'api' }", &db, false),
        ("app in { 'web', 'api' }", &none, false),
        ("app in {}", &web, false),
        ("app not in { 'web', 'api' }", &web, false),
        ("app not in { 'web', 'api' }", &db, true),
        ("app not in { 'web', 'api' }", &none, true), // absent: true
        ("app not in {}", &none, true),
        ("has(app)", &web, true),
        ("has(app)", &none, false),
        ("!has(app)", &web, false),
        ("!has(app)", &none, true),
        ("tier contains 'ont'", &web, true),
        ("tier contains ''", &web, true),
        ("tier contains 'back'", &web, false),
        ("tier contains 'ont'", &none, false),
        ("tier contains ''", &none, false),
        ("tier starts with 'front'", &web, true),
        ("tier starts with 'end'", &web, false),
        ("tier starts with ''", &none, false),
        ("tier ends with 'end'", &web, true),
        ("tier ends with 'front'", &web, false),
        ("tier ends with 'end'", &none, false),
        ("app == 'web' && tier == 'frontend'", &web, true),
        ("app == 'web' && tier == 'frontend'", &db, false),
        ("app == 'db' || tier == 'frontend'", &web, true),
        ("app == 'db' || tier == 'frontend'", &db, true),
        ("app == 'x' || tier == 'y'", &web, false),
        ("!(app == 'web')", &web, false),
        ("!(app == 'web')", &none, true),
        ("!app == 'web'", &db, true),
        ("!!has(app)", &web, true),
        ("(((has(app))))", &web, true),
        ("app == \"web\"", &web, true),
        ("app in {\"db\", 'web'}", &web, true),
    ];
    for (s, l, want) in cases {
        assert_eq!(sel(s).matches(l), *want, "{s:?} on {l:?}");
    }
}

#[test]
fn global_depends_on_scope() {
    let l = labels(&[("app", "web")]);
    let g = sel("global()");
    assert!(!g.matches(&l));
    assert!(g.matches_global(&l));
    assert!(g.matches_in(&l, Scope::Global));
    assert!(!g.matches_in(&l, Scope::Namespaced));
    let either = sel("global() || app == 'web'");
    assert!(either.matches(&l));
    assert!(either.matches_global(&labels(&[])));
    assert!(!either.matches(&labels(&[])));
    assert!(sel("!global()").matches(&l));
    assert!(!sel("!global()").matches_global(&l));
}

#[test]
fn precedence_not_over_and_over_or() {
    let eq = |k: &str, v: &str| Expr::Eq {
        key: k.into(),
        value: v.into(),
    };
    // a || b && c  ==  a || (b && c)
    assert_eq!(
        sel("a == '1' || b == '2' && c == '3'").expr(),
        &Expr::Or(vec![
            eq("a", "1"),
            Expr::And(vec![eq("b", "2"), eq("c", "3")])
        ])
    );
    // a && b || c  ==  (a && b) || c
    assert_eq!(
        sel("a == '1' && b == '2' || c == '3'").expr(),
        &Expr::Or(vec![
            Expr::And(vec![eq("a", "1"), eq("b", "2")]),
            eq("c", "3")
        ])
    );
    // !a && b  ==  (!a) && b
    assert_eq!(
        sel("!has(a) && has(b)").expr(),
        &Expr::And(vec![
            Expr::Not(Box::new(Expr::Has("a".into()))),
            Expr::Has("b".into())
        ])
    );
    // ! binds to the comparison, not to the key.
    assert_eq!(sel("!a == '1'").expr(), &Expr::Not(Box::new(eq("a", "1"))));
    // Chains are flat; parentheses keep their own node.
    assert_eq!(
        sel("has(a) && has(b) && has(c)").expr(),
        &Expr::And(vec![
            Expr::Has("a".into()),
            Expr::Has("b".into()),
            Expr::Has("c".into())
        ])
    );
    assert_eq!(
        sel("(has(a) && has(b)) && has(c)").expr(),
        &Expr::And(vec![
            Expr::And(vec![Expr::Has("a".into()), Expr::Has("b".into())]),
            Expr::Has("c".into())
        ])
    );
    // Evaluation: with a true, "a || b && c" is true even when c is false.
    let l = labels(&[("a", "1"), ("b", "2")]);
    assert!(sel("a == '1' || b == '2' && c == '3'").matches(&l));
    assert!(!sel("(a == '1' || b == '2') && c == '3'").matches(&l));
    assert!(!sel("!has(a) || has(c)").matches(&l));
    assert!(sel("!(has(a) && has(c))").matches(&l));
}

#[test]
fn keys_strings_and_whitespace() {
    let l = labels(&[
        ("projectcalico.org/namespace", "prod"),
        ("in", "x"),
        ("has", "y"),
        ("not", "z"),
        ("k", "it's \"quoted\""),
        ("sp", "a b"),
    ]);
    for s in [
        "projectcalico.org/namespace == 'prod'",
        "in == 'x'",
        "has == 'y'",
        "not == 'z'",
        "in in {'x'}",
        "not not in {'a'}",
        "has(has) && has(in)",
        "k contains \"it's\"",
        "k contains '\"quoted\"'",
        "sp == 'a b'",
        "\t has ( k ) \n&&\n k   starts   with   'it' ",
        "k startswith 'it' && k endswith '\"'",
        "all ( ) && global ( ) || has(k)",
        "a!='b'&&has(k)||c=='d'",
    ] {
        assert!(sel(s).matches(&l), "{s:?} should match");
    }
}

#[test]
fn display_is_canonical_and_reparses() {
    let cases = [
        ("", "all()"),
        ("  all( )", "all()"),
        ("global()", "global()"),
        ("a=='b'", "a == \"b\""),
        ("a == \"say \\\"", "a == \"say \\\""),
        ("a == 'say \"hi\"'", "a == 'say \"hi\"'"),
        ("a!='b'", "a != \"b\""),
        ("a in {'y','x','y'}", "a in {\"x\", \"y\"}"),
        ("a not in {}", "a not in {}"),
        ("a contains 'c'", "a contains \"c\""),
        ("a starts with 'c'", "a starts with \"c\""),
        ("a endswith 'c'", "a ends with \"c\""),
        ("!has(a)", "!has(a)"),
        ("!a == 'b'", "!(a == \"b\")"),
        ("!!a == 'b'", "!!(a == \"b\")"),
        ("!(has(a) || has(b))", "!(has(a) || has(b))"),
        ("has(a) || has(b) && has(c)", "has(a) || has(b) && has(c)"),
        (
            "(has(a) || has(b)) && has(c)",
            "(has(a) || has(b)) && has(c)",
        ),
        (
            "(has(a) && has(b)) && has(c)",
            "(has(a) && has(b)) && has(c)",
        ),
        (
            "has(a) || (has(b) || has(c))",
            "has(a) || (has(b) || has(c))",
        ),
        ("((has(a)))", "has(a)"),
    ];
    for (input, want) in cases {
        let s = sel(input);
        assert_eq!(s.to_string(), want, "display of {input:?}");
        assert_eq!(sel(want), s, "{want:?} reparses");
    }
}

#[test]
fn error_columns_and_messages() {
    let cases = [
        ("(a == 'b'", 10, "expected ')' but found end of input"),
        ("(a == 'b' xx", 11, "expected ')' but found 'xx'"),
        (
            "a == 'b')",
            9,
            "expected '&&', '||' or end of input but found ')'",
        ),
        (
            "a = 'b'",
            3,
            "unexpected character '='; use '==' for equality",
        ),
        (
            "a == 'b' & has(c)",
            10,
            "unexpected character '&'; use '&&' for and",
        ),
        ("a == b", 6, "expected a quoted string but found 'b'"),
        (
            "a == 'b",
            6,
            "unterminated string starting here; close it with ' (strings have no escapes)",
        ),
        ("a", 2, "an operator after label key 'a'"),
        ("a b 'c'", 3, "an operator after label key 'a'"),
        ("a not 'c'", 7, "expected 'in' but found string \"c\""),
        ("a starts 'c'", 10, "expected 'with' but found string \"c\""),
        ("a in 'c'", 6, "expected '{' but found string \"c\""),
        (
            "a in {'c' 'd'}",
            11,
            "expected ',' or '}' but found string \"d\"",
        ),
        ("a in {'c',}", 11, "expected a quoted string but found '}'"),
        (
            "has(a",
            6,
            "expected ')' to close has( but found end of input",
        ),
        ("has()", 5, "expected a label key but found ')'"),
        ("all(a)", 5, "all() takes no arguments"),
        ("global(x)", 8, "global() takes no arguments"),
        (
            "has(a) &&",
            10,
            "expected a label comparison, has(), all(), global(), '!' or '(' but found end of input",
        ),
        ("&& has(a)", 1, "but found '&&'"),
        ("!", 2, "but found end of input"),
        ("()", 2, "but found ')'"),
        (
            "has(a) has(b)",
            8,
            "expected '&&', '||' or end of input but found 'has'",
        ),
        ("a/b/c == 'x'", 1, "at most one '/'"),
        ("/b == 'x'", 1, "prefix before '/' must not be empty"),
        ("Ex.com/b == 'x'", 1, "must be a DNS subdomain"),
        ("-a == 'x'", 1, "start and end with a letter or digit"),
        ("héllo == 'x'", 2, "unexpected character 'é'"),
        ("a == 'é' && #", 13, "unexpected character '#'"),
        // A parse error before a lexing error is reported first.
        (
            "a == 'b' )  #",
            10,
            "expected '&&', '||' or end of input but found ')'",
        ),
    ];
    for (input, column, message) in cases {
        let e = err(input);
        assert_eq!(e.column, column, "column for {input:?}: {e}");
        assert!(
            e.message.contains(message),
            "message for {input:?}: got {:?}, want it to contain {message:?}",
            e.message
        );
    }
    assert_eq!(
        err("(a == 'b'").to_string(),
        "at column 10: expected ')' but found end of input"
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let ok = format!("{}has(a){}", "(".repeat(50), ")".repeat(50));
    assert!(Selector::parse(&ok).is_ok());
    let deep = format!("{}has(a){}", "(".repeat(100_000), ")".repeat(100_000));
    assert!(err(&deep).message.contains("nesting"));
    let bangs = format!("{}has(a)", "!".repeat(100_000));
    assert!(err(&bangs).message.contains("nesting"));
    // Long flat chains are fine: they do not nest.
    let chain = vec!["has(a)"; 10_000].join(" && ");
    assert!(sel(&chain).matches(&labels(&[("a", "")])));
}

#[test]
fn referenced_keys_and_values() {
    let s = sel(
        "app == 'web' && (tier in {'a', 'b'} || !has(x.io/y)) && app != 'db' \
         && name contains 'q' && global()",
    );
    assert_eq!(s.referenced_keys(), ["app", "name", "tier", "x.io/y"]);
    assert_eq!(
        s.referenced_key_values(),
        [
            ("app".to_string(), "db".to_string()),
            ("app".into(), "web".into()),
            ("tier".into(), "a".into()),
            ("tier".into(), "b".into()),
        ]
    );
    assert!(Selector::all().referenced_keys().is_empty());
}

#[test]
fn all_and_default() {
    assert_eq!(Selector::all(), sel(""));
    assert_eq!(Selector::default(), Selector::all());
    assert!(Selector::all().is_all());
    assert!(!sel("has(a)").is_all());
    assert_eq!(Selector::all().to_string(), "all()");
    assert!(Selector::all().matches(&labels(&[])));
    let parsed: Selector = "has(a)".parse().expect("parses");
    assert_eq!(parsed.expr(), &Expr::Has("a".into()));
}

#[test]
fn serde_as_string() {
    let s = sel("app in {'a','b'} && !has(x)");
    let json = serde_json::to_string(&s).expect("serializes");
    assert_eq!(json, r#""app in {\"a\", \"b\"} && !has(x)""#);
    let back: Selector = serde_json::from_str(&json).expect("deserializes");
    assert_eq!(back, s);
    let bad = serde_json::from_str::<Selector>(r#""app == \"x""#).expect_err("bad selector");
    assert!(bad.to_string().contains("at column 8"), "{bad}");
    let yaml: Selector = serde_yaml_ng::from_str("\"!has(a)\"").expect("yaml");
    assert_eq!(yaml.expr(), &Expr::Not(Box::new(Expr::Has("a".into()))));
}

#[test]
fn in_sets_are_sets() {
    let a = sel("k in {'b', 'a', 'b'}");
    assert_eq!(
        a.expr(),
        &Expr::In {
            key: "k".into(),
            values: BTreeSet::from(["a".to_string(), "b".to_string()])
        }
    );
    assert_eq!(a, sel("k in {'a', 'b'}"));
}
