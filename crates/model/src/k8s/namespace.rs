//! `v1` Namespace.

use serde::{Deserialize, Serialize};

use crate::meta::ObjectMeta;
use crate::types::FieldErrors;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Namespace {
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "NamespaceSpec::is_empty")]
    pub spec: NamespaceSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<NamespaceStatus>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
}

impl NamespaceSpec {
    pub fn is_empty(&self) -> bool {
        self.finalizers.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceStatus {
    /// `Active` or `Terminating`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

impl Namespace {
    pub fn new(name: impl Into<String>) -> Namespace {
        Namespace {
            metadata: ObjectMeta::named(name),
            ..Default::default()
        }
    }

    pub(crate) fn validate(&self, errs: &mut FieldErrors) {
        if let Some(phase) = self.status.as_ref().and_then(|s| s.phase.as_deref())
            && !matches!(phase, "Active" | "Terminating")
        {
            errs.add(
                "status.phase",
                format!("{phase:?} is not Active or Terminating"),
            );
        }
    }
}
