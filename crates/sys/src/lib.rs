//! The kernel seam: network namespaces, links, veth pairs, addresses, routes, neighbours,
//! VXLAN devices, bridges and sysctls. The only crate besides the dataplanes that makes
//! syscalls.
//!
//! Everything that talks netlink goes through a [`Netlink`] connection bound to one network
//! namespace:
//!
//! ```no_run
//! # async fn demo() -> serval_sys::Result<()> {
//! use serval_sys::{NetNs, Route, Veth};
//! let node = NetNs::create("sv-lab-n1")?;
//! let pod = NetNs::create("sv-lab-pod1")?;
//! let nl = node.netlink()?; // a socket opened inside sv-lab-n1
//! nl.veth_add(&Veth::new("svabc123", "eth0").peer_netns(&pod)).await?;
//! nl.link_set_up("svabc123").await?;
//! let dev = nl.link_index("svabc123").await?;
//! nl.route_add(&Route::new("10.65.0.5/32".parse().unwrap()).dev(dev)).await?;
//! pod.sysctl_write("net/ipv4/conf/eth0/rp_filter", "0")?;
//! # Ok(()) }
//! ```
//!
//! Code that must run inside a namespace (sockets, `/proc/sys/net`) uses [`NetNs::run`] or
//! [`NetNs::spawn`], which never move the caller's thread. Errors say what was done to what,
//! where, and the kernel's answer; [`Error::is_exists`] / [`Error::is_not_found`] make ADD
//! and DEL idempotent.
//!
//! Nothing here shells out to `ip`/`bridge`: rtnetlink covers every operation used.

mod addr;
mod bridge;
mod error;
mod link;
mod neigh;
mod netlink;
mod netns;
mod route;
pub mod sysctl;
#[cfg(feature = "testing")]
pub mod testing;
mod veth;
mod vxlan;

pub use addr::Addr;
pub use error::{Error, NsLabel, Result};
pub use link::{Link, MAX_IFNAME_LEN, MacAddr, ParseMacError, validate_ifname};
pub use neigh::{FdbEntry, Neighbour};
pub use netlink::Netlink;
pub use netns::{MAX_NETNS_NAME_LEN, NETNS_RUN_DIR, NetNs};
pub use route::{IpFamily, RTPROT_KERNEL, RTPROT_SERVAL, RTPROT_STATIC, Route, RouteKind};
/// The rtnetlink crate, for requests this crate does not wrap (via [`Netlink::handle`]).
pub use rtnetlink;
pub use veth::Veth;
pub use vxlan::{VXLAN_PORT, Vxlan};
