//! `metadata` of every resource and the name rules Kubernetes and Calico apply to each kind.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::kind::Kind;
use crate::labelselector::{validate_label_key, validate_label_value};
use crate::types::FieldErrors;

/// Kubernetes-style object metadata (the subset Serval stores).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Set by the datastore (its revision of this key); ignored on apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// RFC 3339 time the resource was first stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
}

impl ObjectMeta {
    /// Metadata with just a name (cluster-scoped kinds).
    pub fn named(name: impl Into<String>) -> ObjectMeta {
        ObjectMeta {
            name: name.into(),
            ..Default::default()
        }
    }

    /// Metadata with a namespace and a name.
    pub fn namespaced(namespace: impl Into<String>, name: impl Into<String>) -> ObjectMeta {
        ObjectMeta {
            name: name.into(),
            namespace: Some(namespace.into()),
            ..Default::default()
        }
    }

    /// The namespace, or `""` for cluster-scoped resources.
    pub fn namespace_str(&self) -> &str {
        self.namespace.as_deref().unwrap_or("")
    }
}

/// Which syntax a kind's names must follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 label: at most 63 of `a-z0-9-`, starting and ending alphanumeric.
    Dns1123Label,
    /// RFC 1123 subdomain: at most 253 characters, dot-separated RFC 1123 labels.
    Dns1123Subdomain,
    /// RFC 1035 label: like a 1123 label but starting with a letter (Service names).
    Dns1035Label,
}

impl NameRule {
    /// The rule Kubernetes (for core kinds) or Calico (for `projectcalico.org` kinds) applies.
    pub fn for_kind(kind: Kind) -> NameRule {
        match kind {
            Kind::Namespace | Kind::Tier => NameRule::Dns1123Label,
            Kind::Service => NameRule::Dns1035Label,
            _ => NameRule::Dns1123Subdomain,
        }
    }

    pub fn check(self, s: &str) -> Result<(), String> {
        match self {
            NameRule::Dns1123Label => check_dns1123_label(s),
            NameRule::Dns1123Subdomain => check_dns1123_subdomain(s),
            NameRule::Dns1035Label => check_dns1035_label(s),
        }
    }
}

fn is_label_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
}

/// RFC 1123 label (Kubernetes `IsDNS1123Label`).
pub fn check_dns1123_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 63 {
        return Err(format!(
            "{s:?} is {} characters; it must be at most 63",
            s.len()
        ));
    }
    let b = s.as_bytes();
    if !b.iter().all(|&c| is_label_char(c))
        || !b[0].is_ascii_alphanumeric()
        || !b[b.len() - 1].is_ascii_alphanumeric()
    {
        return Err(format!(
            "{s:?} must consist of lower-case letters, digits and '-', and start and end with a \
             letter or digit (e.g. my-name or 123-abc)"
        ));
    }
    Ok(())
}

/// RFC 1123 subdomain (Kubernetes `IsDNS1123Subdomain`).
pub fn check_dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 253 {
        return Err(format!(
            "{s:?} is {} characters; it must be at most 253",
            s.len()
        ));
    }
    for part in s.split('.') {
        let b = part.as_bytes();
        if b.is_empty()
            || !b.iter().all(|&c| is_label_char(c))
            || !b[0].is_ascii_alphanumeric()
            || !b[b.len() - 1].is_ascii_alphanumeric()
        {
            return Err(format!(
                "{s:?} must consist of lower-case letters, digits, '-' and '.', each \
                 dot-separated part starting and ending with a letter or digit (e.g. example.com)"
            ));
        }
    }
    Ok(())
}

/// RFC 1035 label (Kubernetes `IsDNS1035Label`, used for Service names).
pub fn check_dns1035_label(s: &str) -> Result<(), String> {
    check_dns1123_label(s)?;
    if !s.as_bytes()[0].is_ascii_lowercase() {
        return Err(format!(
            "{s:?} must start with a lower-case letter (e.g. my-name)"
        ));
    }
    Ok(())
}

impl ObjectMeta {
    /// Checks name, namespace, label and annotation syntax for a resource of `kind`.
    pub fn validate(&self, kind: Kind, errs: &mut FieldErrors) {
        if self.name.is_empty() {
            errs.add("metadata.name", "is required");
        } else if let Err(why) = NameRule::for_kind(kind).check(&self.name) {
            errs.add("metadata.name", why);
        }
        match (&self.namespace, kind.is_namespaced()) {
            (Some(ns), true) => {
                if let Err(why) = check_dns1123_label(ns) {
                    errs.add("metadata.namespace", why);
                }
            }
            (Some(_), false) => errs.add(
                "metadata.namespace",
                format!("{kind} is cluster-scoped; remove metadata.namespace"),
            ),
            (None, _) => {}
        }
        for (k, v) in &self.labels {
            if let Err(why) = validate_label_key(k) {
                errs.add(format!("metadata.labels[{k:?}]"), why);
            }
            if let Err(why) = validate_label_value(v) {
                errs.add(format!("metadata.labels[{k:?}]"), why);
            }
        }
        for k in self.annotations.keys() {
            if let Err(why) = validate_label_key(k) {
                errs.add(format!("metadata.annotations[{k:?}]"), why);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules() {
        assert!(check_dns1123_label("web-1").is_ok());
        assert!(check_dns1123_label("1web").is_ok());
        assert!(check_dns1123_label("Web").is_err());
        assert!(check_dns1123_label("web.a").is_err());
        assert!(check_dns1123_label(&"a".repeat(64)).is_err());
        assert!(check_dns1123_subdomain("web.example-1.com").is_ok());
        assert!(check_dns1123_subdomain("web..com").is_err());
        assert!(check_dns1123_subdomain("-web").is_err());
        assert!(check_dns1035_label("web").is_ok());
        assert!(check_dns1035_label("1web").is_err());
    }

    #[test]
    fn cluster_kind_with_namespace_is_an_error() {
        let mut errs = FieldErrors::default();
        ObjectMeta::namespaced("default", "pool").validate(Kind::IPPool, &mut errs);
        assert_eq!(errs.0.len(), 1);
        assert_eq!(errs.0[0].path, "metadata.namespace");
        assert!(errs.0[0].reason.contains("cluster-scoped"));
    }

    #[test]
    fn bad_labels_are_named() {
        let mut m = ObjectMeta::named("x");
        m.labels.insert("app".into(), "bad value".into());
        let mut errs = FieldErrors::default();
        m.validate(Kind::Node, &mut errs);
        assert_eq!(errs.0[0].path, "metadata.labels[\"app\"]");
    }
}
