//! Parsing user files: multi-document YAML (or JSON), typed decoding with field paths,
//! defaults, and semantic validation, reporting every problem of every document.

use std::fmt;

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::kind::Kind;
use crate::resource::{DEFAULT_NAMESPACE, Resource, TypeError, decode_typed};

/// One problem in one document of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// The file as the user named it (`-` for stdin); empty for cross-resource errors.
    pub file: String,
    /// 1-based index of the document in the file; 0 when not tied to a document.
    pub document: usize,
    /// The document's `kind`, when known.
    pub kind: Option<String>,
    /// The document's `metadata.namespace`, when set (or defaulted).
    pub namespace: Option<String>,
    /// The document's `metadata.name`, when known.
    pub name: Option<String>,
    /// Field path such as `spec.ports[1].port`; empty for the whole document.
    pub path: String,
    pub reason: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.file.is_empty() {
            write!(f, "{}: ", self.file)?;
        }
        let what = match (&self.kind, &self.name) {
            (Some(k), Some(n)) => match &self.namespace {
                Some(ns) => Some(format!("{k} {ns}/{n}")),
                None => Some(format!("{k} {n}")),
            },
            (Some(k), None) => Some(k.clone()),
            (None, Some(n)) => Some(n.clone()),
            (None, None) => None,
        };
        match (self.document, what) {
            (0, Some(w)) => write!(f, "{w}: ")?,
            (0, None) => {}
            (d, Some(w)) => write!(f, "document {d} ({w}): ")?,
            (d, None) => write!(f, "document {d}: ")?,
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.reason)
    }
}

/// Every problem found; displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ValidationErrors {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &ValidationError> {
        self.0.iter()
    }
}

struct DocContext<'a> {
    file: &'a str,
    document: usize,
    kind: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
}

impl DocContext<'_> {
    fn error(&self, path: impl Into<String>, reason: impl Into<String>) -> ValidationError {
        ValidationError {
            file: self.file.to_string(),
            document: self.document,
            kind: self.kind.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            path: path.into(),
            reason: reason.into(),
        }
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Parses every document in `text` (YAML, many documents separated by `---`; JSON works too),
/// applies defaults and validates each. `file` names the source in errors. Empty documents are
/// skipped (but still counted, so indexes match the file). On any problem, returns all of them.
pub fn parse_documents(file: &str, text: &str) -> Result<Vec<Resource>, ValidationErrors> {
    // Plain block YAML goes straight to typed resources; anything else, and any document with
    // a problem, is read (again) through `Value`, which words every error.
    if let Some(resources) = crate::fastyaml::parse_documents_fast(text) {
        return Ok(resources);
    }
    parse_documents_value(file, text)
}

/// [`parse_documents`] through `serde_yaml_ng::Value`: every YAML feature, every error with
/// its document and field path.
pub(crate) fn parse_documents_value(
    file: &str,
    text: &str,
) -> Result<Vec<Resource>, ValidationErrors> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let mut cx = DocContext {
            file,
            document: i + 1,
            kind: None,
            namespace: None,
            name: None,
        };
        let value = match Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                errors.push(cx.error("", format!("not valid YAML: {e}")));
                // The YAML stream cannot be resynchronised after a syntax error.
                break;
            }
        };
        if let Some(items) = list_items(&value) {
            // `kind: List` (as `kubectl get -o yaml` writes several objects): each item is a
            // resource; errors name it as `items[i]`.
            for (j, item) in items.iter().enumerate() {
                let mut cx = DocContext {
                    file,
                    document: i + 1,
                    kind: None,
                    namespace: None,
                    name: None,
                };
                match parse_value(&mut cx, item.clone()) {
                    Ok(Some(r)) => out.push(r),
                    Ok(None) => {}
                    Err(errs) => errors.extend(errs.into_iter().map(|mut e| {
                        e.path = if e.path.is_empty() {
                            format!("items[{j}]")
                        } else {
                            format!("items[{j}].{}", e.path)
                        };
                        e
                    })),
                }
            }
            continue;
        }
        match parse_value(&mut cx, value) {
            Ok(Some(r)) => out.push(r),
            Ok(None) => {}
            Err(mut errs) => errors.append(&mut errs),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ValidationErrors(errors))
    }
}

/// Extra advice for fields users bring from Calico or Kubernetes that Serval spells differently.
fn hint_for(kind: Kind, path: &str) -> Option<&'static str> {
    let field = path.rsplit('.').next().unwrap_or(path);
    match (kind, field) {
        (Kind::IPPool, "ipipMode" | "vxlanMode") => Some(
            "Serval sets the mode with spec.encapsulation: None, VXLAN or VXLANCrossSubnet (IPIP is not supported)",
        ),
        (Kind::Service, "type") => {
            Some("Serval supports ClusterIP, NodePort and LoadBalancer services")
        }
        _ => None,
    }
}

/// The items of a `v1` `List` document.
fn list_items(v: &Value) -> Option<&Vec<Value>> {
    if str_field(v, "apiVersion") == Some("v1") && str_field(v, "kind") == Some("List") {
        v.get("items").and_then(Value::as_sequence)
    } else {
        None
    }
}

fn parse_value(
    cx: &mut DocContext<'_>,
    value: Value,
) -> Result<Option<Resource>, Vec<ValidationError>> {
    let mut value = match value {
        Value::Null => return Ok(None),
        Value::Tagged(t) => t.value,
        v => v,
    };
    value
        .apply_merge()
        .map_err(|e| vec![cx.error("", format!("YAML merge key: {e}"))])?;
    if !value.is_mapping() {
        return Err(vec![cx.error("", TypeError::NotAMapping.to_string())]);
    }
    cx.kind = str_field(&value, "kind").map(str::to_string);
    if let Some(meta) = value.get("metadata") {
        cx.name = str_field(meta, "name").map(str::to_string);
        cx.namespace = str_field(meta, "namespace").map(str::to_string);
    }
    let api = str_field(&value, "apiVersion").map(str::to_string);
    let kind = match (&api, &cx.kind) {
        (None, _) => {
            return Err(vec![
                cx.error("apiVersion", TypeError::MissingApiVersion.to_string()),
            ]);
        }
        (_, None) => return Err(vec![cx.error("kind", TypeError::MissingKind.to_string())]),
        (Some(api), Some(k)) => match Kind::from_type(api, k) {
            Some(kind) => kind,
            None => {
                let e = TypeError::Unknown {
                    api_version: api.clone(),
                    kind: k.clone(),
                };
                return Err(vec![cx.error("kind", e.to_string())]);
            }
        },
    };
    if !kind.info().user {
        return Err(vec![cx.error(
            "kind",
            format!("{kind} is an internal record written by Serval itself (the CNI plugin); it cannot be applied"),
        )]);
    }
    if kind.is_namespaced() && cx.namespace.is_none() {
        cx.namespace = Some(DEFAULT_NAMESPACE.to_string());
    }
    if let Value::Mapping(m) = &mut value {
        m.remove("apiVersion");
        m.remove("kind");
    }
    let mut resource = decode_typed(kind, value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let mut reason = e.into_inner().to_string();
        if let Some(hint) = hint_for(kind, &path) {
            reason = format!("{reason}; {hint}");
        }
        vec![cx.error(path, reason)]
    })?;
    resource.normalize();
    let errs = resource.validate();
    if errs.is_empty() {
        Ok(Some(resource))
    } else {
        Err(errs
            .into_iter()
            .map(|e| cx.error(e.path, e.reason))
            .collect())
    }
}
