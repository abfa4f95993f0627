//! `serval lab status`: every lab (or one) with its nodes, agents and pods.

use std::process::ExitCode;

use clap::Args;
use serde::Serialize;
use serval_sys::NetNs;

use super::layout::{self, Layout};
use super::state::LabState;
use super::{OutputFormat, Usage, procs};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this lab.
    #[arg(long)]
    pub name: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub netns: String,
    pub addresses: Vec<String>,
    pub agent_pid: Option<u32>,
    pub agent_alive: bool,
    /// Pod namespaces present (`sv-L-…` other than nodes, outside, router).
    pub pods: usize,
}

#[derive(Debug, Serialize)]
pub struct LabStatus {
    pub name: String,
    /// `up` (every agent alive), `degraded`, or `broken` (no lab.json).
    pub health: String,
    pub ip_family: Option<String>,
    pub encapsulation: Option<String>,
    pub dataplane: Option<String>,
    pub datastore: Option<String>,
    /// `static` or `bgp` (BIRD on the nodes and a home router).
    pub routing: Option<String>,
    /// With BGP routing: `frr` or `bird`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bgp_router: Option<String>,
    pub etcd_alive: Option<bool>,
    pub nodes: Vec<NodeStatus>,
    pub pods: usize,
    pub created: Option<String>,
}

fn status_of(name: &str, all_labs: &[String], netns: &[String]) -> LabStatus {
    let layout = Layout::new(name);
    let mine: Vec<&String> = netns
        .iter()
        .filter(|n| layout.owns_netns(n, all_labs))
        .collect();
    let Ok(st) = LabState::load(&layout) else {
        return LabStatus {
            name: name.to_string(),
            health: "broken".into(),
            ip_family: None,
            encapsulation: None,
            dataplane: None,
            datastore: None,
            routing: None,
            bgp_router: None,
            etcd_alive: None,
            nodes: Vec::new(),
            pods: mine.len(),
            created: None,
        };
    };
    let infra: Vec<String> = st
        .nodes
        .iter()
        .map(|n| n.host.netns.clone())
        .chain(st.outside.iter().map(|o| o.netns.clone()))
        .chain(st.router.iter().map(|r| r.netns.clone()))
        .collect();
    let pods = mine.iter().filter(|n| !infra.contains(n)).count();
    let nodes: Vec<NodeStatus> = st
        .nodes
        .iter()
        .map(|n| {
            let pid = procs::read_pid(&layout.agent_pid_file(&n.name));
            NodeStatus {
                name: n.name.clone(),
                netns: n.host.netns.clone(),
                addresses: n.host.addrs.iter().map(|a| a.to_string()).collect(),
                agent_pid: pid,
                agent_alive: pid.is_some_and(procs::alive) && NetNs::exists(&n.host.netns),
                pods: pod_count_on(&layout, &n.name),
            }
        })
        .collect();
    let etcd_alive = st.etcd.as_ref().map(|e| procs::alive(e.pid));
    let healthy = nodes.iter().all(|n| n.agent_alive) && etcd_alive != Some(false);
    LabStatus {
        name: name.to_string(),
        health: if healthy { "up" } else { "degraded" }.into(),
        ip_family: Some(st.ip_family.to_string()),
        encapsulation: Some(st.encapsulation.to_string()),
        dataplane: Some(st.dataplane.to_string()),
        datastore: Some(st.datastore_url.clone()),
        routing: Some(st.routing.to_string()),
        bgp_router: st.bgp_router.map(|r| r.to_string()),
        etcd_alive,
        nodes,
        pods,
        created: Some(st.created.clone()),
    }
}

/// Pods the agent of `node` runs: the entries of its `pods/` directory that are pid files.
fn pod_count_on(layout: &Layout, node: &str) -> usize {
    std::fs::read_dir(layout.node_dir(node).join("pods"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
                .filter(|e| procs::read_pid(&e.path()).is_some_and(procs::alive))
                .count()
        })
        .unwrap_or(0)
}

pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let all = layout::list_labs();
    let names: Vec<String> = match &args.name {
        Some(n) => {
            layout::validate_name(n).map_err(Usage)?;
            if !all.contains(n) {
                return Err(Usage(format!(
                    "no lab named {n:?}; `serval lab status` lists labs"
                ))
                .into());
            }
            vec![n.clone()]
        }
        None => all.clone(),
    };
    let netns = NetNs::list().unwrap_or_default();
    let labs: Vec<LabStatus> = names.iter().map(|n| status_of(n, &all, &netns)).collect();
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&labs)?),
        OutputFormat::Text => {
            if labs.is_empty() {
                println!("No labs. Create one with `serval lab up`.");
            }
            for l in &labs {
                println!(
                    "{}\t{}\t{} nodes\t{} pods\t{}\t{}\t{}\t{}",
                    l.name,
                    l.health,
                    l.nodes.len(),
                    l.pods,
                    l.ip_family.as_deref().unwrap_or("-"),
                    l.encapsulation.as_deref().unwrap_or("-"),
                    l.dataplane.as_deref().unwrap_or("-"),
                    l.datastore.as_deref().unwrap_or("-"),
                );
                if let Some(r) = &l.bgp_router {
                    println!("  routing bgp: BIRD on every node, {r} home router");
                }
                for n in &l.nodes {
                    println!(
                        "  {}\t{}\tagent {}\t{} pods\t{}",
                        n.name,
                        n.addresses.join(","),
                        match (n.agent_alive, n.agent_pid) {
                            (true, Some(pid)) => format!("running (pid {pid})"),
                            _ => "down".to_string(),
                        },
                        n.pods,
                        n.netns
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
