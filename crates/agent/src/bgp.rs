//! Routing mode BGP: one BIRD per node, driven by the agent ([`serval_bgp::BgpDriver`]).
//!
//! # How the mode is chosen
//!
//! Calico runs BIRD when a node's `calico_backend` is `bird`. Serval makes it an agent flag:
//! `serval agent --routing bgp` ([`AgentConfig::routing`], [`RoutingMode::Bgp`]); the default
//! is [`RoutingMode::Static`] (the agent programs routes to other nodes' blocks itself). The
//! lab passes `--routing bgp` to every agent with `serval lab up --routing bgp`. A
//! BGPConfiguration alone does not switch the mode: every node of a cluster must agree on it,
//! so it is a deployment choice, like Calico's backend.
//!
//! # What the agent does in BGP mode
//!
//! - [`run`]: on every cache change (debounced) it gathers this node's inputs — all Nodes,
//!   BGPConfigurations, BGPPeers and IPPools, and this node's affine IPAM blocks — renders the
//!   BIRD configuration and puts it in force ([`serval_bgp::BgpDriver::apply`]: start BIRD,
//!   `birdc configure` when the text changed, nothing otherwise; a configuration BIRD
//!   rejects leaves the previous one running). Every [`TICK`] it restarts a BIRD that died.
//!   BIRD runs in the agent's network namespace (the node's), its files in
//!   [`AgentConfig::bgp_dir`]: `<lab-dir>/nodes/<node>/bird/` in a lab, else
//!   [`BgpOptions::dir`] or `/var/lib/serval/bird/<node>/` (`bird.conf`, `bird.ctl`,
//!   `bird.pid`, `bird.log`). `serval node status` reads `bird.ctl`.
//! - [`leave_remote_routes_to_bird`]: the routing programmer no longer installs routes to
//!   other nodes' blocks of pools without encapsulation (BIRD installs what it learns, kernel
//!   protocol `bird`, 12). It still installs the blackholes for this node's own blocks
//!   (BIRD announces those blocks from its own static protocol and never installs them) and
//!   everything VXLAN: BIRD's kernel export skips routes inside VXLAN pools, as the bgp
//!   crate documents.
//! - When this node's own Node resource is deleted, the agent stops BIRD (a removed node
//!   must not keep announcing its blocks); it starts again if the Node comes back.
//! - Agent exit leaves BIRD running (sessions and routes survive an agent restart; the next
//!   agent adopts it by its pid file), unless [`AgentConfig::cleanup_on_exit`] is set. An
//!   agent started in static mode stops a BIRD an earlier BGP-mode agent left behind.
//!   `serval lab down` kills every process in the lab's namespaces, BIRD included.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serval_bgp::{
    BgpDriver, Bird, BirdPaths, ConfigError, DriverError, OwnedBgpInputs, RenderOptions, Timers,
};
use serval_model::Resource;

use crate::AgentConfig;
use crate::cache::{Cache, State};
use crate::routes::{self, Desired, Encapsulation, RouteDev, RouteTarget};

/// How often a dead BIRD is noticed and restarted.
pub const TICK: Duration = Duration::from_secs(2);

/// Where a node's BIRD files live outside a lab, by default (`<this>/<node>/`).
pub const DEFAULT_BIRD_DIR: &str = "/var/lib/serval/bird";

/// Who installs the routes to other nodes' blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RoutingMode {
    /// The agent's routing programmer (routes via the other nodes' underlay addresses).
    #[default]
    Static,
    /// BIRD, from what the other nodes (and peers) announce over BGP.
    Bgp,
}

impl fmt::Display for RoutingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RoutingMode::Static => "static",
            RoutingMode::Bgp => "bgp",
        })
    }
}

/// A routing mode that is neither `static` nor `bgp`.
#[derive(Debug, thiserror::Error)]
#[error("routing mode {given:?} is unknown; use static or bgp")]
pub struct UnknownRoutingMode {
    pub given: String,
}

impl FromStr for RoutingMode {
    type Err = UnknownRoutingMode;

    fn from_str(s: &str) -> Result<RoutingMode, UnknownRoutingMode> {
        match s.to_ascii_lowercase().as_str() {
            "static" => Ok(RoutingMode::Static),
            "bgp" => Ok(RoutingMode::Bgp),
            _ => Err(UnknownRoutingMode {
                given: s.to_owned(),
            }),
        }
    }
}

/// BGP knobs that are not resources.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BgpOptions {
    /// BIRD's directory outside a lab (default `/var/lib/serval/bird/<node>`).
    pub dir: Option<PathBuf>,
    /// Short BGP timers ([`Timers::fast`]: hold 6 s, keepalive 2 s, retry 1 s) instead of
    /// Calico's; for labs and tests.
    pub fast_timers: bool,
}

impl AgentConfig {
    /// BIRD's directory: `<lab_dir>/nodes/<node>/bird`, else [`BgpOptions::dir`], else
    /// `/var/lib/serval/bird/<node>`.
    pub fn bgp_dir(&self) -> PathBuf {
        if let Some(lab) = &self.lab_dir {
            return lab.join("nodes").join(&self.node).join("bird");
        }
        self.bgp
            .dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BIRD_DIR).join(&self.node))
    }
}

/// The BGP inputs of `node` from the cache: every Node, BGPConfiguration, BGPPeer and IPPool,
/// and the blocks affine to `node`.
pub fn inputs_from_state(state: &State, node: &str) -> OwnedBgpInputs {
    let blocks: Vec<IpNet> = state
        .affinities
        .keys()
        .filter(|(n, _)| n == node)
        .map(|(_, b)| *b)
        .collect();
    OwnedBgpInputs::from_resources(
        node,
        state.resources.values().filter(|r| {
            matches!(
                r,
                Resource::Node(_)
                    | Resource::BGPConfiguration(_)
                    | Resource::BGPPeer(_)
                    | Resource::IPPool(_)
            )
        }),
        blocks,
    )
}

/// In BGP mode, removes from `desired` the routes BIRD installs: routes to other nodes'
/// blocks that leave by the underlay and lie in a pool without encapsulation. Own-block
/// blackholes and VXLAN routes (VXLAN and VXLANCrossSubnet pools, whichever device) stay.
/// Does nothing in static mode.
pub fn leave_remote_routes_to_bird(
    mode: RoutingMode,
    desired: &mut Desired,
    inputs: &routes::Inputs,
) {
    if mode != RoutingMode::Bgp {
        return;
    }
    desired.routes.retain(|dst, r| {
        let native_remote = r.node != inputs.node
            && matches!(
                r.target,
                RouteTarget::Via {
                    dev: RouteDev::Underlay,
                    ..
                }
            );
        let pool = inputs
            .pools
            .iter()
            .filter(|p| p.cidr.trunc().contains(dst))
            .max_by_key(|p| p.cidr.prefix_len());
        !(native_remote && pool.is_some_and(|p| p.encapsulation == Encapsulation::None))
    });
}

/// The driver plus what was last logged, moved into blocking calls and back. Dropping it
/// leaves BIRD running, or stops it with `stop_on_drop`.
struct Holder {
    driver: Option<BgpDriver>,
    stop_on_drop: bool,
    node: String,
    last_skipped: BTreeSet<String>,
    last_error: Option<String>,
}

impl Holder {
    /// Restarts a dead BIRD, then puts the configuration for `inputs` in force.
    fn step(&mut self, inputs: Option<&OwnedBgpInputs>) {
        let Some(driver) = self.driver.as_mut() else {
            return;
        };
        match driver.tick() {
            Ok(true) => tracing::warn!(
                node = %self.node,
                restarts = driver.bird().restarts(),
                "BIRD had died; restarted it"
            ),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(node = %self.node, error = %e, "cannot restart BIRD; retrying")
            }
        }
        let Some(inputs) = inputs else { return };
        match driver.apply(&inputs.as_inputs()) {
            Ok(report) => {
                if self.last_error.take().is_some() {
                    tracing::info!(node = %self.node, "BGP configuration accepted again");
                }
                let skipped: BTreeSet<String> = report.skipped.into_iter().collect();
                for why in skipped.difference(&self.last_skipped) {
                    tracing::warn!(node = %self.node, "BGP: {why}");
                }
                self.last_skipped = skipped;
            }
            Err(DriverError::Config(ConfigError::NodeNotFound { .. }))
                if driver.bird_mut().is_running() =>
            {
                // This node was removed from the cluster: stop announcing its blocks (BIRD
                // withdraws everything on a clean shutdown). It starts again if the Node
                // comes back.
                tracing::warn!(node = %self.node, "this node's Node resource is gone; stopping BIRD");
                if let Err(e) = driver.stop() {
                    tracing::warn!(node = %self.node, error = %e, "stopping BIRD");
                }
            }
            Err(e) => {
                let msg = e.to_string();
                if self.last_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(node = %self.node, error = %msg, "BGP configuration not put in force; the previous one (if any) stays");
                }
                self.last_error = Some(msg);
            }
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if let Some(mut d) = self.driver.take() {
            if self.stop_on_drop {
                if let Err(e) = d.stop() {
                    tracing::warn!(error = %e, "stopping BIRD");
                }
            } else {
                d.detach();
            }
        }
    }
}

/// Drives this node's BIRD while the agent runs (BGP mode); in static mode, stops a BIRD an
/// earlier BGP-mode agent left and returns.
pub async fn run(config: AgentConfig, cache: Cache) {
    let paths = BirdPaths::in_dir(config.bgp_dir());
    if config.routing != RoutingMode::Bgp {
        if paths.pid.exists() {
            let stopped = tokio::task::spawn_blocking(move || Bird::stop_in(&paths))
                .await
                .unwrap_or(false);
            if stopped {
                tracing::info!(node = %config.node, "routing mode static: stopped the BIRD a BGP-mode agent left running");
            }
        }
        return;
    }
    let opts = RenderOptions {
        timers: if config.bgp.fast_timers {
            Timers::fast()
        } else {
            Timers::default()
        },
        ..RenderOptions::default()
    };
    tracing::info!(node = %config.node, dir = %paths.dir.display(), fast_timers = config.bgp.fast_timers, "routing mode BGP: driving BIRD");
    let mut holder = Holder {
        driver: Some(BgpDriver::new(paths, None, opts)),
        stop_on_drop: config.cleanup_on_exit,
        node: config.node.clone(),
        last_skipped: BTreeSet::new(),
        last_error: None,
    };
    let mut changes = cache.subscribe();
    loop {
        let inputs = {
            let st = cache.read();
            st.in_sync().then(|| inputs_from_state(&st, &config.node))
        };
        let span = tracing::Span::current();
        let mut h = holder;
        holder = match tokio::task::spawn_blocking(move || {
            let _enter = span.enter();
            h.step(inputs.as_ref());
            h
        })
        .await
        {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "the BGP driver panicked; BGP is no longer managed by this agent");
                return;
            }
        };
        tokio::select! {
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
                tokio::time::sleep(config.debounce).await;
            }
            _ = tokio::time::sleep(TICK) => {}
        }
        changes.mark_unchanged();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::routes::{BlockInfo, Inputs, NodeInfo, PoolInfo};

    fn node(name: &str, v4: &str) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            ipv4: Some(v4.parse().unwrap()),
            ipv6: None,
        }
    }

    fn inputs() -> Inputs {
        let nodes: BTreeMap<String, NodeInfo> = [
            node("node1", "172.31.7.11/24"),
            node("node2", "172.31.7.12/24"),
            node("node3", "172.31.8.13/24"),
        ]
        .into_iter()
        .map(|n| (n.name.clone(), n))
        .collect();
        let pool = |name: &str, cidr: &str, encapsulation| PoolInfo {
            name: name.into(),
            cidr: cidr.parse().unwrap(),
            encapsulation,
        };
        let block = |node: &str, b: &str| BlockInfo {
            node: node.into(),
            block: b.parse().unwrap(),
        };
        Inputs {
            node: "node1".into(),
            nodes,
            pools: vec![
                pool("native", "10.244.0.0/16", Encapsulation::None),
                pool("vx", "10.245.0.0/16", Encapsulation::Vxlan),
                pool("cross", "10.246.0.0/16", Encapsulation::VxlanCrossSubnet),
            ],
            blocks: vec![
                block("node1", "10.244.0.0/26"),
                block("node2", "10.244.0.64/26"),
                block("node2", "10.245.0.64/26"),
                block("node2", "10.246.0.64/26"),
                block("node3", "10.246.0.128/26"),
            ],
            underlay_mtu: 1500,
        }
    }

    #[test]
    fn bgp_mode_leaves_native_remote_blocks_to_bird_and_keeps_the_rest() {
        let inputs = inputs();
        let all = routes::compute(&inputs);
        let mut d = all.clone();
        leave_remote_routes_to_bird(RoutingMode::Static, &mut d, &inputs);
        assert_eq!(d, all, "static mode changes nothing");

        leave_remote_routes_to_bird(RoutingMode::Bgp, &mut d, &inputs);
        let kept: Vec<String> = d.routes.keys().map(ToString::to_string).collect();
        assert_eq!(
            kept,
            [
                // Own block: the blackhole stays.
                "10.244.0.0/26",
                // VXLAN pool: the agent's VXLAN route.
                "10.245.0.64/26",
                // CrossSubnet, same subnet: native route, but BIRD leaves VXLAN pools alone.
                "10.246.0.64/26",
                // CrossSubnet, other subnet: VXLAN.
                "10.246.0.128/26",
            ]
        );
        assert!(!d.routes.contains_key(&"10.244.0.64/26".parse().unwrap()));
        assert_eq!(d.vxlan_devices, all.vxlan_devices);
        assert_eq!(d.fdb, all.fdb);
        assert_eq!(d.neighbours, all.neighbours);
    }

    #[test]
    fn routing_mode_parses_and_prints() {
        assert_eq!("bgp".parse::<RoutingMode>().unwrap(), RoutingMode::Bgp);
        assert_eq!(
            "Static".parse::<RoutingMode>().unwrap(),
            RoutingMode::Static
        );
        let e = "ospf".parse::<RoutingMode>().unwrap_err();
        assert!(e.to_string().contains("static or bgp"), "{e}");
        assert_eq!(RoutingMode::Bgp.to_string(), "bgp");
        assert_eq!(RoutingMode::default(), RoutingMode::Static);
    }

    #[test]
    fn bird_dir_is_in_the_lab_or_the_state_dir() {
        let mut c = AgentConfig::new("node2", "sqlite:///x");
        assert_eq!(c.bgp_dir(), PathBuf::from("/var/lib/serval/bird/node2"));
        c.bgp.dir = Some("/run/x".into());
        assert_eq!(c.bgp_dir(), PathBuf::from("/run/x"));
        c.lab_dir = Some("/var/lib/serval/labs/l".into());
        assert_eq!(
            c.bgp_dir(),
            PathBuf::from("/var/lib/serval/labs/l/nodes/node2/bird")
        );
    }
}
