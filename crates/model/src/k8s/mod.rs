//! Kubernetes kinds: `v1` Namespace, Pod, Service; `discovery.k8s.io/v1` EndpointSlice;
//! `networking.k8s.io/v1` NetworkPolicy.

pub mod endpointslice;
pub mod namespace;
pub mod networkpolicy;
pub mod pod;
pub mod service;

pub use endpointslice::*;
pub use namespace::*;
pub use networkpolicy::*;
pub use pod::*;
pub use service::*;
