//! serval-cni: the CNI plugin (spec 1.0.0; STATUS and GC from 1.1.0) and the runtime side
//! that executes conflists.
//!
//! - The binary `serval-cni` is [`plugin::run`] plus process I/O: ADD wires a pod (veth pair,
//!   /32 and /128 addresses, link-local gateways, host routes, a WorkloadEndpoint, addresses
//!   from serval-ipam), DEL undoes it, CHECK verifies it.
//! - [`host_iface_name`] names the host side of a pod's veth (the agent and CLI use it too).
//! - [`runtime`] runs a conflist as a container runtime does (the lab's pod runtime and the
//!   tests use it).

pub mod config;
pub mod endpoint;
pub mod env;
pub mod error;
mod logging;
pub mod naming;
pub mod netsetup;
pub mod plugin;
pub mod pools;
pub mod runtime;
pub mod spec;

pub use naming::{host_iface_name, host_iface_name_for, workload_endpoint_name};
pub use runtime::{Conflist, Runtime, RuntimeConf, RuntimeError};
