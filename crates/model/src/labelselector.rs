//! Kubernetes `LabelSelector` (`matchLabels` + `matchExpressions`), its validation, and
//! the Kubernetes label key/value syntax checks shared with resource metadata validation.
//!
//! Semantics follow `k8s.io/apimachinery/pkg/apis/meta/v1`: all requirements are ANDed, an
//! empty selector matches everything, `NotIn` and `DoesNotExist` match when the key is absent.
//! Whether a *missing* (null) selector means "nothing" or "everything" depends on the field
//! that holds it, so that decision belongs to the caller.

use std::collections::{BTreeMap, BTreeSet};

use crate::selector::{Expr, Selector};

/// Longest label name (the part after the optional `prefix/`) and label value.
const MAX_LABEL_NAME_LEN: usize = 63;
/// Longest DNS subdomain (label key prefix).
const MAX_DNS_SUBDOMAIN_LEN: usize = 253;

/// A Kubernetes label selector, as used by NetworkPolicy `podSelector`/`namespaceSelector`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// `key: value` pairs; each is equivalent to an `In` requirement with one value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements, ANDed with `match_labels`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: LabelSelectorOperator,
    /// Must be non-empty for `In`/`NotIn` and empty for `Exists`/`DoesNotExist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// The operator of a [`LabelSelectorRequirement`]; serialized as `In`, `NotIn`, `Exists`,
/// `DoesNotExist`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum LabelSelectorOperator {
    /// The label is present and its value is one of `values`.
    In,
    /// The label is absent, or its value is none of `values`.
    NotIn,
    /// The label is present (any value).
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// A [`LabelSelector`] that breaks the Kubernetes rules: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct LabelSelectorError {
    /// Path of the offending field relative to the selector, e.g. `matchExpressions[0].values`
    /// or `matchLabels["app"]`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub reason: String,
}

impl LabelSelector {
    /// Checks the selector against the Kubernetes rules: valid label keys and values, at least
    /// one value for `In`/`NotIn`, none for `Exists`/`DoesNotExist`. Returns the first problem.
    pub fn validate(&self) -> Result<(), LabelSelectorError> {
        for (key, value) in &self.match_labels {
            let field = format!("matchLabels[{key:?}]");
            validate_label_key(key).map_err(|reason| LabelSelectorError {
                field: field.clone(),
                reason,
            })?;
            validate_label_value(value).map_err(|reason| LabelSelectorError { field, reason })?;
        }
        for (i, req) in self.match_expressions.iter().enumerate() {
            let err = |suffix: &str, reason: String| LabelSelectorError {
                field: format!("matchExpressions[{i}].{suffix}"),
                reason,
            };
            validate_label_key(&req.key).map_err(|reason| err("key", reason))?;
            match req.operator {
                LabelSelectorOperator::In | LabelSelectorOperator::NotIn => {
                    if req.values.is_empty() {
                        return Err(err(
                            "values",
                            format!(
                                "operator {:?} needs at least one value; add values or use \
                                 Exists/DoesNotExist",
                                req.operator
                            ),
                        ));
                    }
                    for (j, value) in req.values.iter().enumerate() {
                        validate_label_value(value)
                            .map_err(|reason| err(&format!("values[{j}]"), reason))?;
                    }
                }
                LabelSelectorOperator::Exists | LabelSelectorOperator::DoesNotExist => {
                    if !req.values.is_empty() {
                        return Err(err(
                            "values",
                            format!(
                                "operator {:?} takes no values; remove them or use In/NotIn",
                                req.operator
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether `labels` satisfy every requirement. An empty selector matches everything.
    /// Invalid selectors are evaluated literally (an `In` with no values matches nothing).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|req| req.matches(labels))
    }

    /// True when there are no requirements at all (the selector matches everything).
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// The equivalent Calico selector: `k == 'v'` per `matchLabels` entry, `k in {..}`,
    /// `k not in {..}`, `has(k)`, `!has(k)` per expression, ANDed; `all()` when empty.
    ///
    /// It agrees with [`LabelSelector::matches`] on every label map. Its `Display` form parses
    /// back to an equal selector whenever `self` passes [`LabelSelector::validate`] (Calico
    /// strings have no escapes, so a value holding both quote characters cannot be written).
    pub fn to_selector(&self) -> Selector {
        let mut terms: Vec<Expr> = Vec::new();
        for (key, value) in &self.match_labels {
            terms.push(Expr::Eq {
                key: key.clone(),
                value: value.clone(),
            });
        }
        for req in &self.match_expressions {
            let key = req.key.clone();
            let values = || req.values.iter().cloned().collect::<BTreeSet<String>>();
            terms.push(match req.operator {
                LabelSelectorOperator::In => Expr::In {
                    key,
                    values: values(),
                },
                LabelSelectorOperator::NotIn => Expr::NotIn {
                    key,
                    values: values(),
                },
                LabelSelectorOperator::Exists => Expr::Has(key),
                LabelSelectorOperator::DoesNotExist => Expr::Not(Box::new(Expr::Has(key))),
            });
        }
        let expr = match terms.len() {
            0 => Expr::All,
            1 => terms.pop().unwrap_or(Expr::All),
            _ => Expr::And(terms),
        };
        Selector::from_expr(expr)
    }
}

impl LabelSelectorRequirement {
    /// Whether `labels` satisfy this one requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            LabelSelectorOperator::In => value.is_some_and(|v| self.values.contains(v)),
            LabelSelectorOperator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            LabelSelectorOperator::Exists => value.is_some(),
            LabelSelectorOperator::DoesNotExist => value.is_none(),
        }
    }
}

/// Checks a Kubernetes label key: an optional DNS-subdomain prefix and `/`, then a name of at
/// most 63 characters from `[A-Za-z0-9._-]` that starts and ends alphanumeric.
/// The error says what is wrong, for use after a field path.
pub fn validate_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        None => (None, key),
        Some((prefix, name)) => (Some(prefix), name),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Err(format!(
                "label key {key:?}: the prefix before '/' must not be empty; drop the '/' or \
                 add a DNS subdomain such as example.com/"
            ));
        }
        if name.contains('/') {
            return Err(format!(
                "label key {key:?}: at most one '/' is allowed (prefix/name)"
            ));
        }
        if prefix.len() > MAX_DNS_SUBDOMAIN_LEN {
            return Err(format!(
                "label key {key:?}: the prefix is {} characters; it must be at most \
                 {MAX_DNS_SUBDOMAIN_LEN}",
                prefix.len()
            ));
        }
        if !is_dns_subdomain(prefix) {
            return Err(format!(
                "label key {key:?}: the prefix {prefix:?} must be a DNS subdomain (lowercase \
                 letters, digits, '-' and '.', each part starting and ending alphanumeric)"
            ));
        }
    }
    if name.is_empty() {
        return Err(format!("label key {key:?}: the name must not be empty"));
    }
    check_label_name(name).map_err(|why| format!("label key {key:?}: the name {why}"))
}

/// Checks a Kubernetes label value: empty, or at most 63 characters from `[A-Za-z0-9._-]`
/// starting and ending alphanumeric.
pub fn validate_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    check_label_name(value).map_err(|why| format!("label value {value:?} {why}"))
}

/// The shared rule for label names and non-empty label values.
fn check_label_name(s: &str) -> Result<(), String> {
    if s.len() > MAX_LABEL_NAME_LEN {
        return Err(format!(
            "is {} characters; it must be at most {MAX_LABEL_NAME_LEN}",
            s.len()
        ));
    }
    let bytes = s.as_bytes();
    let inner_ok = bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let ends_ok = bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
    if inner_ok && ends_ok {
        Ok(())
    } else {
        Err(
            "must consist of letters, digits, '-', '_' or '.', and start and end with a \
             letter or digit"
                .to_string(),
        )
    }
}

/// RFC 1123 subdomain as Kubernetes checks it: dot-separated labels of `[a-z0-9-]`, each
/// starting and ending alphanumeric (the total length is checked by the caller).
fn is_dns_subdomain(s: &str) -> bool {
    s.split('.').all(|part| {
        let b = part.as_bytes();
        !b.is_empty()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    })
}

#[cfg(test)]
mod tests;
