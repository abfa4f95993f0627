//! The resource model: Kubernetes- and Calico-shaped resources, their validation and
//! defaults, the selector languages, and IP/CIDR helpers. Pure: no I/O beyond parsing text.

pub mod kind;
pub mod labelselector;
pub mod selector;

pub use kind::Kind;
