//! `serval ipam show` and `serval ipam check [--release]`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use serval_ipam::{AllocationAttrs, Ipam, PoolSpec};
use serval_model::{Kind, Resource};

use crate::datastore::Selection;

#[derive(Debug, Subcommand)]
pub enum IpamCommand {
    /// Pools, their blocks, block affinity and usage.
    Show(ShowArgs),
    /// Find allocations whose pod no longer exists (and with --release, free them).
    Check(CheckArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Also list every block.
    #[arg(long)]
    pub show_blocks: bool,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Release the leaked allocations found.
    #[arg(long)]
    pub release: bool,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
}

pub async fn run(ds: &Selection, cmd: IpamCommand) -> anyhow::Result<ExitCode> {
    let client = ds.client().await?;
    let ipam = Ipam::new(client.store().clone());
    match cmd {
        IpamCommand::Show(args) => {
            let (pools, _) = client.list(Kind::IPPool, None).await?;
            let specs: Vec<PoolSpec> = pools.iter().filter_map(pool_spec).collect();
            let report = ipam.report(&specs).await?;
            match args.output {
                Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Format::Table => print!("{}", show_table(&report, args.show_blocks)),
            }
        }
        IpamCommand::Check(args) => {
            let live = LiveSet::load(&client).await?;
            let is_live = |a: &AllocationAttrs| live.is_live(a);
            let leaks = if args.release {
                ipam.release_leaks(is_live).await?
            } else {
                ipam.leaks(is_live).await?
            };
            match args.output {
                Format::Json => println!("{}", serde_json::to_string_pretty(&leaks)?),
                Format::Table => {
                    if leaks.is_empty() {
                        println!("No leaked allocations.");
                    }
                    for l in &leaks {
                        let owner = match (&l.attrs.namespace, &l.attrs.pod) {
                            (Some(ns), Some(p)) => format!("pod {ns}/{p}"),
                            _ => "no pod".to_string(),
                        };
                        let addrs: Vec<String> =
                            l.addresses.iter().map(ToString::to_string).collect();
                        println!(
                            "{} handle {} ({owner} on node {}): {}",
                            if args.release { "released" } else { "leaked" },
                            l.handle,
                            l.attrs.node,
                            addrs.join(", ")
                        );
                    }
                    if !leaks.is_empty() && !args.release {
                        println!("Run `serval ipam check --release` to free them.");
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The IPAM view of an IPPool resource.
pub fn pool_spec(r: &Resource) -> Option<PoolSpec> {
    let Resource::IPPool(p) = r else { return None };
    Some(PoolSpec {
        name: p.metadata.name.clone(),
        cidr: p.spec.cidr,
        block_size: p.spec.effective_block_size(),
        disabled: p.spec.disabled,
    })
}

/// Who may own an allocation: existing pods (with the container id of their endpoint, when
/// one is recorded) and nodes.
struct LiveSet {
    /// (namespace, pod) → the container ids of its workload endpoints (empty while the pod has
    /// none yet: a CNI ADD may be in flight, so any allocation for the pod counts as live).
    pods: BTreeMap<(String, String), BTreeSet<String>>,
    nodes: BTreeSet<String>,
}

impl LiveSet {
    async fn load(client: &serval_api::Client) -> anyhow::Result<LiveSet> {
        let mut pods: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        for p in client.list(Kind::Pod, None).await?.0 {
            pods.entry((
                p.meta().namespace.clone().unwrap_or_default(),
                p.meta().name.clone(),
            ))
            .or_default();
        }
        for w in client.list(Kind::WorkloadEndpoint, None).await?.0 {
            if let Resource::WorkloadEndpoint(w) = w
                && let Some(ids) = pods.get_mut(&(
                    w.metadata.namespace.clone().unwrap_or_default(),
                    w.spec.pod.clone(),
                ))
            {
                ids.insert(w.spec.container_id.clone());
            }
        }
        let nodes = client
            .list(Kind::Node, None)
            .await?
            .0
            .iter()
            .map(|n| n.meta().name.clone())
            .collect();
        Ok(LiveSet { pods, nodes })
    }

    fn is_live(&self, a: &AllocationAttrs) -> bool {
        match (&a.namespace, &a.pod) {
            (Some(ns), Some(pod)) => match self.pods.get(&(ns.clone(), pod.clone())) {
                None => false,
                Some(ids) if ids.is_empty() => true,
                Some(ids) => a.container_id.as_ref().is_none_or(|c| ids.contains(c)),
            },
            // Node-owned addresses (tunnel addresses) live as long as the node.
            _ => self.nodes.contains(&a.node),
        }
    }
}

fn show_table(report: &serval_ipam::IpamReport, blocks: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:<22} {:>9} {:>14} {:>10} {:>8}",
        "POOL", "CIDR", "BLOCKSIZE", "IPS IN USE", "IPS FREE", "BLOCKS"
    );
    for p in &report.pools {
        let pct = if p.total == 0 {
            0.0
        } else {
            p.allocated as f64 * 100.0 / p.total as f64
        };
        let _ = writeln!(
            out,
            "{:<24} {:<22} {:>9} {:>14} {:>10} {:>8}{}",
            p.name,
            p.cidr.to_string(),
            p.block_size,
            format!("{} ({pct:.0}%)", p.allocated),
            p.total.saturating_sub(p.allocated),
            p.blocks.len(),
            if p.disabled { "  (disabled)" } else { "" }
        );
    }
    if blocks {
        let _ = writeln!(
            out,
            "\n{:<24} {:<26} {:<16} {:>10}",
            "POOL", "BLOCK", "AFFINITY", "IN USE"
        );
        for p in &report.pools {
            for b in &p.blocks {
                let _ = writeln!(
                    out,
                    "{:<24} {:<26} {:<16} {:>10}",
                    p.name,
                    b.cidr.to_string(),
                    b.affinity.as_deref().unwrap_or("<none>"),
                    format!("{}/{}", b.allocated, b.total)
                );
            }
        }
    }
    for b in &report.orphan_blocks {
        let _ = writeln!(
            out,
            "orphan block {} (pool {} no longer covers it), {} in use",
            b.cidr, b.pool, b.allocated
        );
    }
    out
}
