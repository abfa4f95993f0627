//! [`Resource`]: one stored object of any kind, its datastore key, and its JSON/YAML form
//! (`apiVersion` and `kind` first, then `metadata`, `spec`, `status`).

use std::fmt;

use serde::de::Deserializer;
use serde::{Deserialize, Serialize, Serializer};

use crate::calico::{
    BGPConfiguration, BGPPeer, FelixConfiguration, GlobalNetworkPolicy, HostEndpoint, IPPool,
    NetworkPolicy, Node, Tier,
};
use crate::k8s::{EndpointSlice, K8sNetworkPolicy, Namespace, Pod, Service};
use crate::kind::{KINDS, Kind};
use crate::meta::ObjectMeta;
use crate::types::{FieldError, FieldErrors};
use crate::workloadendpoint::WorkloadEndpoint;

/// Root of every resource key in the datastore.
pub const KEY_ROOT: &str = "/serval/resources/";

/// The namespace namespaced resources land in when they name none.
pub const DEFAULT_NAMESPACE: &str = "default";

macro_rules! resources {
    ($($v:ident),* $(,)?) => {
        /// One resource of any kind.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Resource {
            $($v($v),)*
        }

        impl Resource {
            pub fn kind(&self) -> Kind {
                match self { $(Resource::$v(_) => Kind::$v,)* }
            }

            pub fn meta(&self) -> &ObjectMeta {
                match self { $(Resource::$v(r) => &r.metadata,)* }
            }

            pub fn meta_mut(&mut self) -> &mut ObjectMeta {
                match self { $(Resource::$v(r) => &mut r.metadata,)* }
            }

            /// Semantic validation of this one resource (metadata and spec). Cross-resource
            /// rules (pool overlap, duplicates) are in [`crate::validate::validate_set`].
            pub fn validate(&self) -> Vec<FieldError> {
                let mut errs = FieldErrors::default();
                self.meta().validate(self.kind(), &mut errs);
                match self { $(Resource::$v(r) => r.validate(&mut errs),)* }
                errs.0
            }

            fn serialize_enveloped<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let kind = self.kind();
                match self {
                    $(Resource::$v(r) => Envelope {
                        api_version: kind.api_version(),
                        kind: kind.name(),
                        body: r,
                    }.serialize(s),)*
                }
            }
        }

        $(impl From<$v> for Resource {
            fn from(r: $v) -> Resource { Resource::$v(r) }
        })*

        /// Typed deserialization of the body (everything but `apiVersion`/`kind`), with the
        /// failing field's path.
        pub(crate) fn decode_typed<'de, D: Deserializer<'de>>(
            kind: Kind,
            d: D,
        ) -> Result<Resource, serde_path_to_error::Error<D::Error>> {
            match kind {
                $(Kind::$v => serde_path_to_error::deserialize::<_, $v>(d).map(Resource::$v),)*
            }
        }

        /// [`decode_typed`] without tracking the field path (for the fast path of
        /// [`crate::parse_documents`], which falls back to the tracked decoding on any error).
        pub(crate) fn decode_typed_untracked<'de, D: Deserializer<'de>>(
            kind: Kind,
            d: D,
        ) -> Result<Resource, D::Error> {
            match kind {
                $(Kind::$v => $v::deserialize(d).map(Resource::$v),)*
            }
        }
    };
}

resources!(
    Namespace,
    Pod,
    Service,
    EndpointSlice,
    K8sNetworkPolicy,
    Tier,
    NetworkPolicy,
    GlobalNetworkPolicy,
    HostEndpoint,
    IPPool,
    Node,
    BGPConfiguration,
    BGPPeer,
    FelixConfiguration,
    WorkloadEndpoint,
);

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    #[serde(flatten)]
    body: &'a T,
}

impl Serialize for Resource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.serialize_enveloped(s)
    }
}

impl<'de> Deserialize<'de> for Resource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        Resource::from_json_value(v).map_err(serde::de::Error::custom)
    }
}

/// A document's `apiVersion`/`kind` that Serval does not know, or that are missing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypeError {
    #[error("a resource must be a mapping with apiVersion, kind and metadata")]
    NotAMapping,
    #[error("apiVersion is missing; {}", known_kinds_hint())]
    MissingApiVersion,
    #[error("kind is missing; {}", known_kinds_hint())]
    MissingKind,
    #[error(
        "unknown kind {kind:?} in apiVersion {api_version:?}{}; {}",
        api_hint(kind),
        known_kinds_hint()
    )]
    Unknown { api_version: String, kind: String },
}

fn api_hint(kind: &str) -> String {
    let versions: Vec<&str> = KINDS
        .iter()
        .filter(|i| i.name == kind && i.user)
        .map(|i| i.api_version)
        .collect();
    if versions.is_empty() {
        String::new()
    } else {
        format!(" ({kind} is in apiVersion {})", versions.join(" or "))
    }
}

/// "known kinds: v1 Namespace, v1 Pod, …".
pub fn known_kinds_hint() -> String {
    let list: Vec<String> = KINDS
        .iter()
        .filter(|i| i.user)
        .map(|i| format!("{} {}", i.api_version, i.name))
        .collect();
    format!("known kinds: {}", list.join(", "))
}

/// Why stored JSON did not decode into a [`Resource`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("stored resource is not valid JSON: {source}")]
    Json {
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Type(#[from] TypeError),
    #[error("{kind} {path}: {source}")]
    Field {
        kind: Kind,
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

impl Resource {
    pub fn key(&self) -> ResourceKey {
        let m = self.meta();
        ResourceKey {
            kind: self.kind(),
            namespace: m.namespace.clone(),
            name: m.name.clone(),
        }
    }

    /// Compact JSON, as stored in the datastore.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("resources always serialize to JSON")
    }

    /// Pretty JSON for `-o json`.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("resources always serialize to JSON")
    }

    pub fn to_yaml_value(&self) -> serde_yaml_ng::Value {
        serde_yaml_ng::to_value(self).expect("resources always serialize to YAML")
    }

    /// YAML for `-o yaml` (one document, no leading `---`).
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).expect("resources always serialize to YAML")
    }

    /// Decodes stored JSON. Applies the namespace default and parse-time defaults (both
    /// idempotent) but not semantic validation: stored data was validated on the way in.
    ///
    /// Stored JSON as [`Resource::to_json`] writes it is read straight into the typed resource
    /// (`crate::fastjson`); anything else, and any error, goes through
    /// [`Resource::from_json_reference`], which gives the same result or error.
    pub fn from_json(bytes: &[u8]) -> Result<Resource, DecodeError> {
        match crate::fastjson::decode(bytes) {
            Some(r) => Ok(r),
            None => Resource::from_json_reference(bytes),
        }
    }

    /// [`Resource::from_json`] through a `serde_json::Value` tree, with the failing field's
    /// path in errors: the reference the fast path is held to (tests, the decode benchmark).
    pub fn from_json_reference(bytes: &[u8]) -> Result<Resource, DecodeError> {
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|source| DecodeError::Json { source })?;
        Resource::from_json_value(v)
    }

    fn from_json_value(v: serde_json::Value) -> Result<Resource, DecodeError> {
        let serde_json::Value::Object(mut map) = v else {
            return Err(TypeError::NotAMapping.into());
        };
        let api = match map.remove("apiVersion") {
            Some(serde_json::Value::String(s)) => s,
            _ => return Err(TypeError::MissingApiVersion.into()),
        };
        let kind_name = match map.remove("kind") {
            Some(serde_json::Value::String(s)) => s,
            _ => return Err(TypeError::MissingKind.into()),
        };
        let kind = Kind::from_type(&api, &kind_name).ok_or(TypeError::Unknown {
            api_version: api,
            kind: kind_name,
        })?;
        let mut r =
            decode_typed(kind, serde_json::Value::Object(map)).map_err(|e| DecodeError::Field {
                kind,
                path: e.path().to_string(),
                source: e.into_inner(),
            })?;
        r.normalize();
        Ok(r)
    }

    /// Namespace default plus per-kind defaults (what the API server / calicoctl fill in).
    pub(crate) fn normalize(&mut self) {
        if self.kind().is_namespaced() && self.meta().namespace.is_none() {
            self.meta_mut().namespace = Some(DEFAULT_NAMESPACE.to_string());
        }
        match self {
            Resource::Pod(r) => r.apply_defaults(),
            Resource::Service(r) => r.apply_defaults(),
            Resource::K8sNetworkPolicy(r) => r.apply_defaults(),
            Resource::Tier(r) => r.apply_defaults(),
            Resource::NetworkPolicy(r) => r.apply_defaults(),
            Resource::GlobalNetworkPolicy(r) => r.apply_defaults(),
            Resource::IPPool(r) => r.apply_defaults(),
            Resource::FelixConfiguration(r) => r.apply_defaults(),
            Resource::Namespace(_)
            | Resource::EndpointSlice(_)
            | Resource::HostEndpoint(_)
            | Resource::Node(_)
            | Resource::BGPConfiguration(_)
            | Resource::BGPPeer(_)
            | Resource::WorkloadEndpoint(_) => {}
        }
    }
}

/// Identifies a resource: kind, namespace (namespaced kinds only) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub name: String,
}

impl ResourceKey {
    pub fn new(kind: Kind, namespace: Option<&str>, name: &str) -> ResourceKey {
        ResourceKey {
            kind,
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        }
    }

    /// `/serval/resources/<plural>/<namespace>/<name>` or `/serval/resources/<plural>/<name>`.
    pub fn store_key(&self) -> String {
        format!(
            "{}{}",
            ResourceKey::prefix(self.kind, self.namespace.as_deref()),
            self.name
        )
    }

    /// The listing prefix for a kind (all namespaces when `namespace` is `None`), ending in `/`.
    pub fn prefix(kind: Kind, namespace: Option<&str>) -> String {
        let plural = kind.info().plural;
        match namespace {
            Some(ns) if kind.is_namespaced() => format!("{KEY_ROOT}{plural}/{ns}/"),
            _ => format!("{KEY_ROOT}{plural}/"),
        }
    }

    /// The inverse of [`ResourceKey::store_key`].
    pub fn from_store_key(key: &str) -> Option<ResourceKey> {
        let rest = key.strip_prefix(KEY_ROOT)?;
        let (plural, rest) = rest.split_once('/')?;
        let info = KINDS.iter().find(|i| i.plural == plural)?;
        if info.namespaced {
            let (ns, name) = rest.split_once('/')?;
            (!ns.is_empty() && !name.is_empty() && !name.contains('/'))
                .then(|| ResourceKey::new(info.kind, Some(ns), name))
        } else {
            (!rest.is_empty() && !rest.contains('/'))
                .then(|| ResourceKey::new(info.kind, None, rest))
        }
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{}/{}", self.kind, ns, self.name),
            None => write!(f, "{}/{}", self.kind, self.name),
        }
    }
}
