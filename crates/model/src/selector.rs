//! The Calico selector language: parsing, evaluation against a label map, and a canonical
//! printed form.
//!
//! Grammar (precedence `!` > `&&` > `||`, binary operators left-associative):
//!
//! ```text
//! selector := ws* ( or-expr )? ws*          -- empty input means all()
//! or-expr  := and-expr ( "||" and-expr )*
//! and-expr := unary ( "&&" unary )*
//! unary    := "!" unary | "(" or-expr ")" | "all()" | "global()" | "has(" key ")"
//!           | key "==" string | key "!=" string
//!           | key "in" set | key "not" "in" set
//!           | key "contains" string | key "starts" "with" string | key "ends" "with" string
//! set      := "{" ( string ( "," string )* )? "}"
//! string   := "'" [^']* "'" | '"' [^"]* '"'       -- no escapes, as in Calico
//! key      := a Kubernetes label key: [prefix "/"] name
//! ```
//!
//! Semantics are Calico's: `k != 'v'` and `k not in {..}` are true when `k` is absent;
//! `==`, `in`, `contains`, `starts with`, `ends with` are false when it is absent.
//! Words such as `has`, `in` or `contains` are only keywords where the grammar expects one,
//! so `in == 'x'` compares the label `in`.
//!
//! ## `global()`
//!
//! In Calico, `global()` matches resources that have no namespace (host endpoints, global
//! network sets), and is meant for `namespaceSelector`. We model the context explicitly with
//! [`Scope`]: [`Selector::matches`] evaluates in [`Scope::Namespaced`] (so `global()` is false,
//! the right answer for pods and workload endpoints), [`Selector::matches_global`] in
//! [`Scope::Global`] (so `global()` is true), and [`Selector::matches_in`] takes the scope.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

mod parser;

/// A parsed Calico selector. Compare, print (canonical form) and evaluate it; build one with
/// [`Selector::parse`], [`Selector::all`] or [`crate::labelselector::LabelSelector::to_selector`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Selector {
    expr: Expr,
}

/// The syntax tree of a selector. Parentheses leave no node behind; `a && b && c` is one
/// [`Expr::And`] with three children, and `(a && b) && c` is an `And` inside an `And`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Expr {
    /// `all()`: matches everything.
    All,
    /// `global()`: matches only in [`Scope::Global`].
    Global,
    /// `has(k)`.
    Has(String),
    /// `k == 'v'`.
    Eq { key: String, value: String },
    /// `k != 'v'` (true when `k` is absent).
    Ne { key: String, value: String },
    /// `k in { 'a', 'b' }`.
    In {
        key: String,
        values: BTreeSet<String>,
    },
    /// `k not in { 'a', 'b' }` (true when `k` is absent).
    NotIn {
        key: String,
        values: BTreeSet<String>,
    },
    /// `k contains 's'`.
    Contains { key: String, value: String },
    /// `k starts with 's'`.
    StartsWith { key: String, value: String },
    /// `k ends with 's'`.
    EndsWith { key: String, value: String },
    /// `!e`.
    Not(Box<Expr>),
    /// `a && b && ...` (two or more children when produced by the parser).
    And(Vec<Expr>),
    /// `a || b || ...` (two or more children when produced by the parser).
    Or(Vec<Expr>),
}

/// Where a selector is evaluated; decides what `global()` means. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Scope {
    /// A namespaced resource (pod, workload endpoint, namespace labels): `global()` is false.
    #[default]
    Namespaced,
    /// A non-namespaced resource (host endpoint, global network set): `global()` is true.
    Global,
}

/// A selector that does not parse: where (1-based column, counted in characters) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at column {column}: {message}")]
pub struct SelectorError {
    /// 1-based character column of the offending token (input length + 1 at end of input).
    pub column: usize,
    /// What was expected and what was found.
    pub message: String,
}

impl Selector {
    /// Parses a selector. The empty (or all-whitespace) string means `all()`, as in Calico.
    pub fn parse(s: &str) -> Result<Selector, SelectorError> {
        parser::parse(s).map(Selector::from_expr)
    }

    /// The selector that matches everything.
    pub fn all() -> Selector {
        Selector { expr: Expr::All }
    }

    /// Wraps a syntax tree (crate-internal so every public way in yields printable trees).
    pub(crate) fn from_expr(expr: Expr) -> Selector {
        Selector { expr }
    }

    /// The syntax tree, for code that compiles selectors (e.g. into ipsets).
    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    /// Evaluates against an endpoint's labels in [`Scope::Namespaced`] (`global()` is false).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_in(labels, Scope::Namespaced)
    }

    /// Evaluates against a non-namespaced resource's labels (`global()` is true).
    pub fn matches_global(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_in(labels, Scope::Global)
    }

    /// Evaluates in the given scope.
    pub fn matches_in(&self, labels: &BTreeMap<String, String>, scope: Scope) -> bool {
        self.expr.eval(labels, scope)
    }

    /// The label keys the selector refers to, sorted and without duplicates.
    pub fn referenced_keys(&self) -> Vec<String> {
        let mut keys = BTreeSet::new();
        self.expr.visit(&mut |e| {
            if let Some(key) = e.key() {
                keys.insert(key.to_string());
            }
        });
        keys.into_iter().collect()
    }

    /// The `(key, value)` pairs compared for equality or set membership (`==`, `!=`, `in`,
    /// `not in`), sorted and without duplicates.
    pub fn referenced_key_values(&self) -> Vec<(String, String)> {
        let mut pairs = BTreeSet::new();
        self.expr.visit(&mut |e| match e {
            Expr::Eq { key, value } | Expr::Ne { key, value } => {
                pairs.insert((key.clone(), value.clone()));
            }
            Expr::In { key, values } | Expr::NotIn { key, values } => {
                for value in values {
                    pairs.insert((key.clone(), value.clone()));
                }
            }
            _ => {}
        });
        pairs.into_iter().collect()
    }

    /// True for a selector equal to `all()` (including the parse of the empty string).
    pub fn is_all(&self) -> bool {
        self.expr == Expr::All
    }
}

impl Default for Selector {
    fn default() -> Self {
        Selector::all()
    }
}

impl std::str::FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Selector::parse(s)
    }
}

impl Expr {
    /// The label key of a leaf, if it has one.
    fn key(&self) -> Option<&str> {
        match self {
            Expr::Has(key)
            | Expr::Eq { key, .. }
            | Expr::Ne { key, .. }
            | Expr::In { key, .. }
            | Expr::NotIn { key, .. }
            | Expr::Contains { key, .. }
            | Expr::StartsWith { key, .. }
            | Expr::EndsWith { key, .. } => Some(key),
            Expr::All | Expr::Global | Expr::Not(_) | Expr::And(_) | Expr::Or(_) => None,
        }
    }

    /// Calls `f` on this node and every descendant.
    fn visit(&self, f: &mut impl FnMut(&Expr)) {
        f(self);
        match self {
            Expr::Not(e) => e.visit(f),
            Expr::And(es) | Expr::Or(es) => es.iter().for_each(|e| e.visit(f)),
            _ => {}
        }
    }

    /// Evaluates against `labels` in `scope`.
    pub fn eval(&self, labels: &BTreeMap<String, String>, scope: Scope) -> bool {
        let get = |key: &String| labels.get(key).map(String::as_str);
        match self {
            Expr::All => true,
            Expr::Global => scope == Scope::Global,
            Expr::Has(key) => labels.contains_key(key),
            Expr::Eq { key, value } => get(key) == Some(value.as_str()),
            Expr::Ne { key, value } => get(key) != Some(value.as_str()),
            Expr::In { key, values } => labels.get(key).is_some_and(|v| values.contains(v)),
            Expr::NotIn { key, values } => labels.get(key).is_none_or(|v| !values.contains(v)),
            Expr::Contains { key, value } => get(key).is_some_and(|v| v.contains(value.as_str())),
            Expr::StartsWith { key, value } => {
                get(key).is_some_and(|v| v.starts_with(value.as_str()))
            }
            Expr::EndsWith { key, value } => get(key).is_some_and(|v| v.ends_with(value.as_str())),
            Expr::Not(e) => !e.eval(labels, scope),
            Expr::And(es) => es.iter().all(|e| e.eval(labels, scope)),
            Expr::Or(es) => es.iter().any(|e| e.eval(labels, scope)),
        }
    }

    /// Binding strength for printing: leaves and `!` bind tightest.
    fn precedence(&self) -> u8 {
        match self {
            Expr::Or(_) => 1,
            Expr::And(_) => 2,
            _ => 3,
        }
    }

    /// Writes `child`, parenthesized when it binds no tighter than `min` requires.
    fn fmt_child(child: &Expr, min: u8, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if child.precedence() < min {
            write!(f, "({child})")
        } else {
            write!(f, "{child}")
        }
    }
}

/// Writes a string literal, double-quoted unless the value contains `"`.
/// (A value holding both quote characters cannot be written in Calico's syntax.)
fn write_quoted(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    if s.contains('"') {
        write!(f, "'{s}'")
    } else {
        write!(f, "\"{s}\"")
    }
}

fn write_set(f: &mut fmt::Formatter<'_>, values: &BTreeSet<String>) -> fmt::Result {
    f.write_str("{")?;
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write_quoted(f, v)?;
    }
    f.write_str("}")
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::All => f.write_str("all()"),
            Expr::Global => f.write_str("global()"),
            Expr::Has(key) => write!(f, "has({key})"),
            Expr::Eq { key, value } => {
                write!(f, "{key} == ")?;
                write_quoted(f, value)
            }
            Expr::Ne { key, value } => {
                write!(f, "{key} != ")?;
                write_quoted(f, value)
            }
            Expr::In { key, values } => {
                write!(f, "{key} in ")?;
                write_set(f, values)
            }
            Expr::NotIn { key, values } => {
                write!(f, "{key} not in ")?;
                write_set(f, values)
            }
            Expr::Contains { key, value } => {
                write!(f, "{key} contains ")?;
                write_quoted(f, value)
            }
            Expr::StartsWith { key, value } => {
                write!(f, "{key} starts with ")?;
                write_quoted(f, value)
            }
            Expr::EndsWith { key, value } => {
                write!(f, "{key} ends with ")?;
                write_quoted(f, value)
            }
            Expr::Not(e) => match **e {
                // `!has(k)` and `!!x` read naturally; other operands get parentheses.
                Expr::Has(_) | Expr::All | Expr::Global | Expr::Not(_) => write!(f, "!{e}"),
                _ => write!(f, "!({e})"),
            },
            Expr::And(es) | Expr::Or(es) => {
                let (op, prec) = if matches!(self, Expr::And(_)) {
                    (" && ", 2)
                } else {
                    (" || ", 1)
                };
                for (i, e) in es.iter().enumerate() {
                    if i > 0 {
                        f.write_str(op)?;
                    }
                    // A same-operator child must keep its own node: parenthesize it too.
                    Expr::fmt_child(e, prec + 1, f)?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Selector {
    /// The canonical form: parses back to an equal `Selector`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.expr.fmt(f)
    }
}

impl serde::Serialize for Selector {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Selector {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Selector::parse(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid selector {s:?}: {e}")))
    }
}

#[cfg(test)]
mod tests;
