//! The resource model: Kubernetes- and Calico-shaped resources, their validation and
//! defaults, the selector languages, and IP/CIDR helpers. Pure: no I/O beyond parsing text.

pub mod calico;
mod fastjson;
mod fastyaml;
pub mod k8s;
pub mod kind;
pub mod labelselector;
pub mod meta;
pub mod net;
pub mod parse;
pub mod resource;
pub mod selector;
pub mod types;
pub mod validate;
pub mod workloadendpoint;

pub use kind::Kind;
pub use meta::ObjectMeta;
pub use parse::{ValidationError, ValidationErrors, parse_documents};
pub use resource::{Resource, ResourceKey};
pub use validate::validate_set;
