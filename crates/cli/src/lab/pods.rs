//! The lab's pods as the datastore describes them: Pods joined with the WorkloadEndpoints the
//! CNI plugin wrote (addresses) and the agent marked ready.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use serval_api::Client;
use serval_model::{Kind, Resource};

/// One pod of the lab.
#[derive(Debug, Clone)]
pub struct PodEndpoint {
    pub namespace: String,
    pub name: String,
    pub node: Option<String>,
    /// From the WorkloadEndpoint (empty until the CNI plugin ran).
    pub ips: Vec<IpAddr>,
    pub ready: bool,
}

impl PodEndpoint {
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The pod's address of family `v4`/v6, else its first.
    pub fn ip(&self, family: Option<u8>) -> Option<IpAddr> {
        match family {
            Some(4) => self.ips.iter().copied().find(IpAddr::is_ipv4),
            Some(6) => self.ips.iter().copied().find(IpAddr::is_ipv6),
            _ => self.ips.first().copied(),
        }
    }
}

fn json(r: &Resource) -> Value {
    serde_json::from_slice(&r.to_json()).unwrap_or(Value::Null)
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// Every pod (except hostNetwork ones), sorted by namespace and name, with its endpoint.
pub async fn list(client: &Client) -> anyhow::Result<Vec<PodEndpoint>> {
    let (pods, _) = client.list(Kind::Pod, None).await?;
    let (weps, _) = client.list(Kind::WorkloadEndpoint, None).await?;
    let mut by_pod: BTreeMap<(String, String), Value> = BTreeMap::new();
    for w in &weps {
        let v = json(w);
        let ns = str_at(&v, &["metadata", "namespace"])
            .unwrap_or_default()
            .to_string();
        if let Some(pod) = str_at(&v, &["spec", "pod"]) {
            by_pod.insert((ns, pod.to_string()), v);
        }
    }
    let mut out = Vec::new();
    for p in &pods {
        let v = json(p);
        if v.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        let namespace = str_at(&v, &["metadata", "namespace"])
            .unwrap_or("default")
            .to_string();
        let name = str_at(&v, &["metadata", "name"])
            .unwrap_or_default()
            .to_string();
        let mut ep = PodEndpoint {
            node: str_at(&v, &["spec", "nodeName"]).map(str::to_string),
            namespace,
            name,
            ips: Vec::new(),
            ready: false,
        };
        if let Some(w) = by_pod.get(&(ep.namespace.clone(), ep.name.clone())) {
            ep.ips = w
                .pointer("/spec/ipNetworks")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter_map(|s| s.parse::<ipnet::IpNet>().ok())
                .map(|n| n.addr())
                .collect();
            ep.ready = w
                .pointer("/spec/ready")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if ep.node.is_none() {
                ep.node = str_at(w, &["spec", "node"]).map(str::to_string);
            }
        }
        out.push(ep);
    }
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(out)
}

/// Whether the most specific route to `ip` in `routes` forwards (not blackhole/unreachable).
fn forwards(routes: &[serval_sys::Route], ip: IpAddr) -> bool {
    routes
        .iter()
        .filter(|r| r.dst.contains(&ip))
        .max_by_key(|r| r.dst.prefix_len())
        .is_some_and(|r| r.kind == serval_sys::RouteKind::Unicast)
}

/// Waits until every node has a forwarding route to every pod address (the agents program
/// routes to other nodes' blocks asynchronously, after the pods became ready), so that a
/// probe right after `lab up` sees the converged network.
pub async fn wait_routes(
    client: &Client,
    node_netns: &[serval_sys::NetNs],
    deadline: Instant,
) -> anyhow::Result<()> {
    let ips: Vec<(String, IpAddr)> = list(client)
        .await?
        .iter()
        .flat_map(|p| p.ips.iter().map(move |ip| (p.id(), *ip)))
        .collect();
    let netlinks = node_netns
        .iter()
        .map(|ns| ns.netlink().map_err(anyhow::Error::from))
        .collect::<anyhow::Result<Vec<_>>>()?;
    loop {
        let mut missing = Vec::new();
        for (ns, nl) in node_netns.iter().zip(&netlinks) {
            let mut routes = nl.routes(serval_sys::IpFamily::V4, None).await?;
            routes.extend(nl.routes(serval_sys::IpFamily::V6, None).await?);
            for (pod, ip) in &ips {
                if !forwards(&routes, *ip) {
                    missing.push(format!(
                        "{} has no route to {pod} ({ip})",
                        ns.name().unwrap_or("?")
                    ));
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "routes did not converge in time: {}; see the agents' logs",
                missing.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every pod is ready; returns how many there are.
pub async fn wait_ready(client: &Client, deadline: Instant) -> anyhow::Result<usize> {
    loop {
        let pods = list(client).await?;
        let waiting: Vec<String> = pods
            .iter()
            .filter(|p| !p.ready)
            .map(PodEndpoint::id)
            .collect();
        if waiting.is_empty() {
            return Ok(pods.len());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "pods not ready in time: {}; see the agents' logs under nodes/*/agent.log in the lab directory",
                waiting.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until each node's dataplane has programmed the pods on that node (the agent lists
/// them in `nodes/<node>/dataplane.programmed` after each successful apply), so policy and
/// services are in force for them. A node whose agent has no working dataplane (no such
/// file once the agent is ready) is not waited for.
pub async fn wait_programmed(
    client: &Client,
    layout: &super::layout::Layout,
    deadline: Instant,
) -> anyhow::Result<()> {
    let pods = list(client).await?;
    loop {
        let mut missing = Vec::new();
        for p in &pods {
            let Some(node) = &p.node else { continue };
            let path = layout.node_dir(node).join("dataplane.programmed");
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let programmed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let listed = programmed["endpoints"]
                .as_array()
                .is_some_and(|eps| eps.iter().any(|e| e.as_str() == Some(p.id().as_str())));
            if !listed {
                missing.push(format!("{} on {node}", p.id()));
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the dataplane did not program these pods in time: {}; see the agents' logs",
                missing.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
