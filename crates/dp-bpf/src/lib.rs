//! Serval's eBPF dataplane, foundation: the tc programs (C, `bpf/`), their map ABI, loading
//! with aya into per-node pinned maps, and TCX attachment.
//!
//! - `bpf/serval_maps.h` defines every map key and value; [`abi`] mirrors it (`#[repr(C)]`,
//!   explicit padding) and build.rs checks every size, offset and constant against the header.
//! - `bpf/serval_tc.c` holds the workload programs (`serval_from_ep`, `serval_to_ep`):
//!   parsing, anti-spoofing, conntrack, policy verdict lookups, service DNAT and reverse NAT,
//!   drop counters. build.rs compiles it twice (plain and `-DSERVAL_DEBUG`); [`object`]
//!   embeds and validates both.
//! - [`loader`]: [`Dataplane::load`] with [`LoadOptions`] (pin scope, map sizes, log level).
//! - [`attach`]: [`Dataplane::attach`] (TCX, clsact fallback) inside a namespace, pinned links
//!   that survive restarts, [`attach::detach`], [`attach::cleanup`] of a whole scope.
//! - [`cgroup`]: connect-time load balancing, `bpf/serval_ctlb.c` (cgroup v2 connect,
//!   sendmsg, recvmsg and getpeername programs) loaded in the same pin scope and attached to
//!   a node's cgroup with pinned links; [`cleanup`] removes them with the rest of a scope.
//! - [`maps`]: typed readers and writers; [`conntrack`]: timeouts and the expiry sweep;
//!   [`test_run`]: `BPF_PROG_TEST_RUN`.
//!
//! ```no_run
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use serval_dp_bpf::{AttachMode, Dataplane, Hook, LoadOptions, PinScope, abi::EpVal};
//! let node = serval_sys::NetNs::open("sv-lab-n1")?;
//! let mut dp = Dataplane::load(&LoadOptions {
//!     pins: Some(PinScope::new("lab-n1")?),
//!     ..LoadOptions::default()
//! })?;
//! dp.maps().set_endpoint(42, &EpVal::new(7, &["10.65.0.5".parse()?]))?;
//! dp.attach(&node, "svabc123", Hook::FromEndpoint, AttachMode::Auto)?;
//! dp.attach(&node, "svabc123", Hook::ToEndpoint, AttachMode::Auto)?;
//! # Ok(()) }
//! ```

#![expect(
    clippy::result_large_err,
    reason = "errors keep aya's error values (large) as sources; they are on cold paths"
)]

pub mod abi;
pub mod attach;
pub mod cgroup;
pub mod conntrack;
pub mod error;
pub mod hep;
pub mod loader;
pub mod maps;
pub mod object;
pub mod policy_sport;
pub mod test_run;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tunnel;
pub mod xdp;

pub use attach::{AttachMode, Attachment, CleanupReport, Hook, attachments, detach};
pub use cgroup::{CgroupError, Ctlb, CtlbProtocols, HostSockets, cleanup};
pub use conntrack::{CtTimeouts, SweepReport, monotonic_now_ns};
pub use error::{AttachError, LoadError, MapsError, ObjectError, TestRunError};
pub use loader::{BPFFS, Dataplane, LoadOptions, MapSizes, PinScope, ensure_bpffs};
pub use maps::{DropCounters, Maps};
pub use object::LogLevel;
pub use test_run::{RunOutcome, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TEST_RUN_IFINDEX};
pub use xdp::{XdpAttachMode, XdpDataplane, XdpError, XdpStats};
