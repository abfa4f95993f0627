//! BGP routing with the real BIRD 2, as Calico does it.
//!
//! - [`config`]: render one node's BIRD configuration from Nodes, BGPConfigurations,
//!   BGPPeers and the node's IPAM blocks (pure), and a BIRD configuration for an external
//!   router.
//! - [`bird`]: the per-node BIRD supervisor (start in a network namespace, reload on change
//!   with a parse check first, restart when it died, stop).
//! - [`status`]: `birdc show protocols all` parsed into sessions, and the
//!   `serval node status` table.
//! - [`frr`]: an FRR (zebra + bgpd) router in a namespace, for the lab's home router.

pub mod bird;
pub mod config;
pub mod frr;
mod process;
pub mod status;

pub use bird::{Bird, BirdError, BirdPaths, ReloadOutcome};
pub use config::{
    BgpInputs, ConfigError, PeerExtras, PlannedSession, RTPROT_BGP, RTPROT_BIRD, RenderOptions,
    RenderedConfig, RouterNeighbor, RouterSpec, SessionKind, SourceAddress, Timers, render,
    render_router,
};
pub use frr::{ExternalRouter, FrrError, FrrRouter, RouterKind, render_bgpd};
pub use status::{NodeStatus, Session, StatusError, parse_protocols, render_table};
