//! What the agent drives when its routing mode is BGP: render this node's configuration from
//! the cluster's resources, put it in force in BIRD (start, reconfigure, or nothing when
//! unchanged), restart BIRD when it died, and report session status.
//!
//! ```no_run
//! # fn demo(resources: Vec<serval_model::Resource>, blocks: Vec<ipnet::IpNet>) -> Result<(), serval_bgp::DriverError> {
//! use serval_bgp::{BgpDriver, BirdPaths, OwnedBgpInputs, RenderOptions};
//! let mut bgp = BgpDriver::new(BirdPaths::in_dir("/var/lib/serval/bird"), None, RenderOptions::default());
//! // On every cache change (debounced):
//! let inputs = OwnedBgpInputs::from_resources("node1", &resources, blocks);
//! let report = bgp.apply(&inputs.as_inputs())?;
//! for why in &report.skipped { tracing::warn!(%why, "BGP peer left out"); }
//! // Every few seconds:
//! bgp.tick()?;
//! # Ok(()) }
//! ```

use serval_sys::NetNs;

use crate::bird::{Bird, BirdError, BirdPaths, ReloadOutcome};
use crate::config::{BgpInputs, ConfigError, RenderOptions, RenderedConfig, render};
use crate::status::NodeStatus;

/// Errors from [`BgpDriver`].
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("rendering the BIRD configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Bird(#[from] BirdError),
}

/// What [`BgpDriver::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    pub outcome: ReloadOutcome,
    /// Sessions in the configuration now in force.
    pub sessions: usize,
    /// Peers left out and why.
    pub skipped: Vec<String>,
}

/// One node's BGP: a [`Bird`] plus the rendering options.
#[derive(Debug)]
pub struct BgpDriver {
    bird: Bird,
    opts: RenderOptions,
    last: Option<RenderedConfig>,
}

impl BgpDriver {
    /// BIRD's files in `paths`, BIRD run in `netns` (None: the caller's namespace, which is
    /// the node's when the agent runs inside it).
    pub fn new(paths: BirdPaths, netns: Option<NetNs>, opts: RenderOptions) -> BgpDriver {
        BgpDriver {
            bird: Bird::new(paths, netns),
            opts,
            last: None,
        }
    }

    /// Renders and puts the configuration in force. A render error or a configuration BIRD
    /// rejects leaves the previous configuration running.
    pub fn apply(&mut self, inputs: &BgpInputs<'_>) -> Result<ApplyReport, DriverError> {
        let rendered = render(inputs, &self.opts)?;
        let outcome = self.bird.reload(&rendered.text)?;
        let report = ApplyReport {
            outcome,
            sessions: rendered.sessions.len(),
            skipped: rendered.skipped.clone(),
        };
        if outcome != ReloadOutcome::Unchanged {
            tracing::info!(
                ?outcome,
                sessions = report.sessions,
                router_id = %rendered.router_id,
                local_as = %rendered.local_as,
                "BGP configuration in force"
            );
        }
        self.last = Some(rendered);
        Ok(report)
    }

    /// Restarts BIRD if it died (call every few seconds). Returns whether it did.
    pub fn tick(&mut self) -> Result<bool, DriverError> {
        Ok(self.bird.supervise()?)
    }

    /// The configuration last rendered.
    pub fn rendered(&self) -> Option<&RenderedConfig> {
        self.last.as_ref()
    }

    pub fn bird(&self) -> &Bird {
        &self.bird
    }

    pub fn bird_mut(&mut self) -> &mut Bird {
        &mut self.bird
    }

    /// This node's sessions, for `serval node status`.
    pub fn status(&self, node: &str) -> NodeStatus {
        match self.bird.sessions() {
            Ok(sessions) => NodeStatus {
                node: node.to_owned(),
                running: true,
                error: None,
                sessions,
            },
            Err(e) => NodeStatus {
                node: node.to_owned(),
                running: false,
                error: Some(e.to_string()),
                sessions: Vec::new(),
            },
        }
    }

    /// Stops BIRD (it withdraws its routes).
    pub fn stop(&mut self) -> Result<(), DriverError> {
        Ok(self.bird.stop()?)
    }

    /// Leaves BIRD running (agent exit for a restart: sessions and routes stay; the next
    /// agent's first `apply` adopts it).
    pub fn detach(self) {
        self.bird.detach();
    }
}
