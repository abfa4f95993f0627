//! Property tests for the selector language.
//!
//! The evaluation properties do not use the production syntax tree, printer or evaluator:
//! they generate a tree of their own ([`T`]), render it to text with a randomized renderer
//! (whitespace, quote style, redundant parentheses), evaluate it with a direct interpreter
//! written here, and compare with `Selector::parse(text).matches(..)`.

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::selector::{Expr, Scope, Selector};

// ---------------------------------------------------------------------------------------
// (a) parse(print(ast)) == ast for random production trees.

fn valid_key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9]([A-Za-z0-9._-]{0,8}[A-Za-z0-9])?",
        "[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?(\\.[a-z0-9]{1,4}){0,2}/[A-Za-z0-9]([A-Za-z0-9._-]{0,6}[A-Za-z0-9])?",
        // Words that are keywords elsewhere in the grammar are still fine as keys.
        prop::sample::select(vec![
            "in",
            "not",
            "has",
            "all",
            "global",
            "contains",
            "starts",
            "ends",
            "with",
            "startswith",
            "endswith",
        ])
        .prop_map(String::from),
    ]
}

/// Any string a selector can carry: anything except both quote characters at once.
fn printable_value() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z '\"]{0,6}", ".{0,8}", any::<String>(),]
        .prop_filter("both quote kinds cannot be written", |s| {
            !(s.contains('\'') && s.contains('"'))
        })
}

fn leaf_expr() -> impl Strategy<Value = Expr> {
    let kv = || (valid_key(), printable_value());
    let kset = || {
        (
            valid_key(),
            prop::collection::btree_set(printable_value(), 0..4),
        )
    };
    prop_oneof![
        Just(Expr::All),
        Just(Expr::Global),
        valid_key().prop_map(Expr::Has),
        kv().prop_map(|(key, value)| Expr::Eq { key, value }),
        kv().prop_map(|(key, value)| Expr::Ne { key, value }),
        kset().prop_map(|(key, values)| Expr::In { key, values }),
        kset().prop_map(|(key, values)| Expr::NotIn { key, values }),
        kv().prop_map(|(key, value)| Expr::Contains { key, value }),
        kv().prop_map(|(key, value)| Expr::StartsWith { key, value }),
        kv().prop_map(|(key, value)| Expr::EndsWith { key, value }),
    ]
}

fn any_expr() -> impl Strategy<Value = Expr> {
    leaf_expr().prop_recursive(6, 48, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
            prop::collection::vec(inner.clone(), 2..5).prop_map(Expr::And),
            prop::collection::vec(inner, 2..5).prop_map(Expr::Or),
        ]
    })
}

// ---------------------------------------------------------------------------------------
// (b) An independent tree, renderer and interpreter.

const KEYS: &[&str] = &["a", "app", "x.io/tier", "in", "has"];
const VALUES: &[&str] = &[
    "",
    "x",
    "xy",
    "yx",
    "front",
    "frontend",
    "end",
    "a b",
    "it's",
    "say \"hi\"",
];

#[derive(Debug, Clone)]
enum T {
    All,
    Global,
    Has(&'static str),
    Eq(&'static str, &'static str),
    Ne(&'static str, &'static str),
    In(&'static str, Vec<&'static str>),
    NotIn(&'static str, Vec<&'static str>),
    Contains(&'static str, &'static str),
    Starts(&'static str, &'static str),
    Ends(&'static str, &'static str),
    Not(Box<T>),
    And(Box<T>, Box<T>),
    Or(Box<T>, Box<T>),
}

fn t_leaf() -> impl Strategy<Value = T> {
    let k = || prop::sample::select(KEYS);
    let v = || prop::sample::select(VALUES);
    let vs = || prop::collection::vec(prop::sample::select(VALUES), 0..4);
    prop_oneof![
        Just(T::All),
        Just(T::Global),
        k().prop_map(T::Has),
        (k(), v()).prop_map(|(k, v)| T::Eq(k, v)),
        (k(), v()).prop_map(|(k, v)| T::Ne(k, v)),
        (k(), vs()).prop_map(|(k, v)| T::In(k, v)),
        (k(), vs()).prop_map(|(k, v)| T::NotIn(k, v)),
        (k(), v()).prop_map(|(k, v)| T::Contains(k, v)),
        (k(), v()).prop_map(|(k, v)| T::Starts(k, v)),
        (k(), v()).prop_map(|(k, v)| T::Ends(k, v)),
    ]
}

fn t_tree() -> impl Strategy<Value = T> {
    t_leaf().prop_recursive(5, 32, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|t| T::Not(Box::new(t))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| T::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner).prop_map(|(a, b)| T::Or(Box::new(a), Box::new(b))),
        ]
    })
}

fn label_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        prop::sample::select(KEYS).prop_map(String::from),
        prop::sample::select(VALUES).prop_map(String::from),
        0..5,
    )
}

/// The direct interpreter: reads the label map by hand.
fn naive_eval(t: &T, labels: &BTreeMap<String, String>, global: bool) -> bool {
    let mut value: Option<&str> = None;
    let mut key_present = false;
    if let T::Has(k)
    | T::Eq(k, _)
    | T::Ne(k, _)
    | T::In(k, _)
    | T::NotIn(k, _)
    | T::Contains(k, _)
    | T::Starts(k, _)
    | T::Ends(k, _) = t
    {
        for (lk, lv) in labels {
            if lk == k {
                key_present = true;
                value = Some(lv);
            }
        }
    }
    match t {
        T::All => true,
        T::Global => global,
        T::Has(_) => key_present,
        T::Eq(_, v) => key_present && value == Some(*v),
        T::Ne(_, v) => !key_present || value != Some(*v),
        T::In(_, vs) => key_present && vs.iter().any(|v| Some(*v) == value),
        T::NotIn(_, vs) => !key_present || vs.iter().all(|v| Some(*v) != value),
        T::Contains(_, v) => value.is_some_and(|x| x.find(v).is_some()),
        T::Starts(_, v) => value.is_some_and(|x| x.len() >= v.len() && &x[..v.len()] == *v),
        T::Ends(_, v) => value.is_some_and(|x| x.len() >= v.len() && &x[x.len() - v.len()..] == *v),
        T::Not(a) => !naive_eval(a, labels, global),
        T::And(a, b) => naive_eval(a, labels, global) && naive_eval(b, labels, global),
        T::Or(a, b) => naive_eval(a, labels, global) || naive_eval(b, labels, global),
    }
}

/// A tiny deterministic random source for rendering choices.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, n: u64) -> u64 {
        // xorshift64*
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
    fn ws(&mut self) -> &'static str {
        ["", " ", "  ", "\t", "\n "][self.roll(5) as usize]
    }
    /// Whitespace that separates two words: never empty.
    fn ws1(&mut self) -> &'static str {
        [" ", "  ", "\t", " \n"][self.roll(4) as usize]
    }
    fn quote(&mut self, v: &str) -> String {
        let single = if v.contains('\'') {
            false
        } else if v.contains('"') {
            true
        } else {
            self.roll(2) == 0
        };
        if single {
            format!("'{v}'")
        } else {
            format!("\"{v}\"")
        }
    }
}

/// Renders with full parentheses around binary operators, random spacing and quotes.
fn render(t: &T, d: &mut Dice) -> String {
    let s = match t {
        T::All => format!("all({})", d.ws()),
        T::Global => format!("global({})", d.ws()),
        T::Has(k) => format!("has({}{k}{})", d.ws(), d.ws()),
        T::Eq(k, v) => format!("{k}{}=={}{}", d.ws(), d.ws(), d.quote(v)),
        T::Ne(k, v) => format!("{k}{}!={}{}", d.ws(), d.ws(), d.quote(v)),
        T::In(k, vs) | T::NotIn(k, vs) => {
            let op = if matches!(t, T::In(..)) {
                "in".to_string()
            } else {
                format!("not{}in", d.ws1())
            };
            let items: Vec<String> = vs
                .iter()
                .map(|v| format!("{}{}{}", d.ws(), d.quote(v), d.ws()))
                .collect();
            format!("{k}{}{op}{}{{{}}}", d.ws1(), d.ws(), items.join(","))
        }
        T::Contains(k, v) => format!("{k}{}contains{}{}", d.ws1(), d.ws(), d.quote(v)),
        T::Starts(k, v) => format!(
            "{k}{}starts{}with{}{}",
            d.ws1(),
            d.ws1(),
            d.ws(),
            d.quote(v)
        ),
        T::Ends(k, v) => format!("{k}{}ends{}with{}{}", d.ws1(), d.ws1(), d.ws(), d.quote(v)),
        T::Not(a) => format!("!{}({})", d.ws(), render(a, d)),
        T::And(a, b) => format!("({}){}&&{}({})", render(a, d), d.ws(), d.ws(), render(b, d)),
        T::Or(a, b) => format!("({}){}||{}({})", render(a, d), d.ws(), d.ws(), render(b, d)),
    };
    if d.roll(8) == 0 {
        format!("({}{s}{})", d.ws(), d.ws())
    } else {
        s
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn print_then_parse_round_trips(e in any_expr()) {
        let s = Selector::from_expr(e.clone());
        let text = s.to_string();
        let back = Selector::parse(&text);
        prop_assert_eq!(back.as_ref().map(Selector::expr), Ok(&e), "text: {}", text);
        // And printing is idempotent.
        prop_assert_eq!(back.map(|b| b.to_string()), Ok(text));
    }

    #[test]
    fn evaluation_agrees_with_naive_interpreter(
        t in t_tree(),
        seed in 1..u64::MAX,
        maps in prop::collection::vec(label_map(), 1..6),
    ) {
        let text = render(&t, &mut Dice(seed));
        let s = Selector::parse(&text);
        prop_assert!(s.is_ok(), "{:?} failed to parse: {:?}", text, s);
        let s = s.unwrap_or_default();
        for labels in &maps {
            prop_assert_eq!(s.matches(labels), naive_eval(&t, labels, false),
                "namespaced: {} on {:?}", text, labels);
            prop_assert_eq!(s.matches_in(labels, Scope::Global), naive_eval(&t, labels, true),
                "global: {} on {:?}", text, labels);
        }
    }

    /// Precedence without parentheses: `x0 op x1 op x2 ...` is an OR of AND-groups.
    #[test]
    fn unparenthesized_chains_follow_precedence(
        atoms in prop::collection::vec((t_leaf(), any::<bool>()), 1..7),
        ops in prop::collection::vec(any::<bool>(), 6),
        seed in 1..u64::MAX,
        maps in prop::collection::vec(label_map(), 1..6),
    ) {
        let mut d = Dice(seed);
        let mut text = String::new();
        for (i, (atom, negate)) in atoms.iter().enumerate() {
            if i > 0 {
                text.push_str(if ops[i - 1] { " && " } else { " || " });
            }
            if *negate {
                text.push('!');
            }
            text.push_str(&render(atom, &mut d));
        }
        let s = Selector::parse(&text);
        prop_assert!(s.is_ok(), "{:?} failed to parse: {:?}", text, s);
        let s = s.unwrap_or_default();
        for labels in &maps {
            // Split at every `||`; a group holds when all its atoms hold.
            let mut any_group = false;
            let mut group = true;
            for (i, (atom, negate)) in atoms.iter().enumerate() {
                if i > 0 && !ops[i - 1] {
                    any_group |= group;
                    group = true;
                }
                group &= naive_eval(atom, labels, false) != *negate;
            }
            any_group |= group;
            prop_assert_eq!(s.matches(labels), any_group, "{} on {:?}", text, labels);
        }
    }

    #[test]
    fn arbitrary_strings_never_panic(input in any::<String>()) {
        if let Ok(s) = Selector::parse(&input) {
            prop_assert_eq!(Selector::parse(&s.to_string()), Ok(s));
        }
    }

    /// Strings made of selector-ish pieces parse more often, which exercises more paths.
    #[test]
    fn selector_like_strings_never_panic_and_round_trip(
        pieces in prop::collection::vec(prop::sample::select(vec![
            "a", "b.io/c", "has", "(", ")", "!", "&&", "||", "==", "!=", "in", "not",
            "{", "}", ",", "'x'", "\"y\"", "'", "\"", "all()", "global()", "contains",
            "starts", "ends", "with", " ", "&", "=", "|", "é", "/",
        ]), 0..24),
    ) {
        let input = pieces.concat();
        match Selector::parse(&input) {
            Ok(s) => prop_assert_eq!(Selector::parse(&s.to_string()), Ok(s)),
            Err(e) => prop_assert!(e.column >= 1 && e.column <= input.chars().count() + 1,
                "column {} out of range for {:?}", e.column, input),
        }
    }
}

#[test]
fn naive_interpreter_is_not_vacuous() {
    // Sanity-check the oracle itself on a few hand-computed cases.
    let l: BTreeMap<String, String> = [("app".to_string(), "frontend".to_string())].into();
    assert!(naive_eval(&T::Ne("a", "x"), &l, false));
    assert!(!naive_eval(&T::Eq("a", ""), &l, false));
    assert!(naive_eval(&T::Ends("app", "end"), &l, false));
    assert!(!naive_eval(&T::Starts("app", "end"), &l, false));
    assert!(naive_eval(&T::NotIn("a", vec!["x"]), &l, false));
    assert!(!naive_eval(&T::Global, &l, false));
}
