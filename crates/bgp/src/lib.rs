//! BGP routing with the real BIRD 2, as Calico does it.
//!
//! - [`config`]: render one node's BIRD configuration from Nodes, BGPConfigurations,
//!   BGPPeers and the node's IPAM blocks (pure), and a BIRD configuration for an external
//!   router.
//! - [`bird`]: the per-node BIRD supervisor (start in a network namespace, reload on change
//!   with a parse check first, restart when it died, stop).
//! - [`status`]: `birdc show protocols all` parsed into sessions, and the
//!   `serval node status` table.
//! - [`driver`]: what the agent calls in BGP mode ([`BgpDriver`]: apply, tick, status).
//! - [`frr`]: an FRR (zebra + bgpd) router in a namespace, for the lab's home router.

pub mod bird;
pub mod config;
pub mod driver;
pub mod frr;
mod process;
pub mod status;

pub use bird::{Bird, BirdError, BirdPaths, ReloadOutcome};
pub use config::{
    BgpInputs, ConfigError, OwnedBgpInputs, PeerExtras, PlannedSession, RTPROT_BGP, RTPROT_BIRD,
    RenderOptions, RenderedConfig, RouterNeighbor, RouterSpec, SessionKind, SourceAddress, Timers,
    render, render_router,
};
pub use driver::{ApplyReport, BgpDriver, DriverError};
pub use frr::{ExternalRouter, FrrError, FrrRouter, RouterKind, render_bgpd};
pub use status::{NodeStatus, Session, StatusError, parse_protocols, query, render_table};
