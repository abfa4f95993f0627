//! What `lab up` writes: the initial resources (IPPools, Nodes, the `default` Namespace,
//! FelixConfiguration), the per-node CNI configuration, and the `--demo` pods.
//!
//! Resources are written as YAML and read back through `serval_model::parse_documents`, the
//! same path as `serval apply -f`, so they are validated exactly like user input.

use std::fmt::Write as _;
use std::net::IpAddr;

use serval_model::Resource;

use super::state::{CLUSTER_AS, Dataplane, IpFamily, LabState, NodeInfo, ROUTER_AS, Routing};

pub const POOL_V4_NAME: &str = "default-ipv4-ippool";
pub const POOL_V6_NAME: &str = "default-ipv6-ippool";
pub const POOL_V4_CIDR: &str = "10.244.0.0/16";
pub const POOL_V6_CIDR: &str = "fd00:10:244::/112";

/// The initial resources of a lab, as YAML.
pub fn initial_yaml(st: &LabState) -> String {
    let mut y = String::new();
    let enc = st.encapsulation.pool_value();
    y.push_str("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n");
    if st.ip_family.v4() {
        let _ = write!(
            y,
            "---\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: {POOL_V4_NAME}\n\
             spec:\n  cidr: {POOL_V4_CIDR}\n  blockSize: 26\n  encapsulation: {enc}\n  natOutgoing: true\n  \
             nodeSelector: all()\n"
        );
    }
    if st.ip_family.v6() {
        let _ = write!(
            y,
            "---\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: {POOL_V6_NAME}\n\
             spec:\n  cidr: {POOL_V6_CIDR}\n  blockSize: 122\n  encapsulation: {enc}\n  nodeSelector: all()\n"
        );
    }
    for node in &st.nodes {
        y.push_str(&node_yaml(node));
    }
    if st.routing == Routing::Bgp {
        y.push_str(&bgp_yaml(st));
    }
    let bpf = st.dataplane == Dataplane::Bpf;
    let _ = write!(
        y,
        "---\napiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata:\n  name: default\n\
         spec:\n  bpfEnabled: {bpf}\n"
    );
    y
}

fn node_yaml(node: &NodeInfo) -> String {
    let mut y = format!(
        "---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: {}\n  labels:\n    \
         kubernetes.io/hostname: {}\n    serval.dev/lab-subnet: \"{}\"\nspec:\n  bgp:\n",
        node.name, node.name, node.subnet
    );
    for a in &node.host.addrs {
        let field = if a.addr().is_ipv4() {
            "ipv4Address"
        } else {
            "ipv6Address"
        };
        let _ = writeln!(y, "    {field}: {a}");
    }
    y
}

/// Parses YAML written by this module (or a user file) into resources.
pub fn parse(source: &str, yaml: &str) -> anyhow::Result<Vec<Resource>> {
    serval_model::parse_documents(source, yaml).map_err(anyhow::Error::from)
}

/// The conflist of one node: `serval` alone (the CNI engineer's chained test covers portmap
/// and tuning; the lab keeps pod setup fast).
pub fn conflist(st: &LabState, node: &NodeInfo, log_file: &str) -> String {
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "serval",
        "plugins": [{
            "type": "serval",
            "datastore": node.datastore_url,
            "nodename": node.name,
            "log_level": "info",
            "log_file": log_file,
            "ipam": {
                "type": "serval-ipam",
                "assign_ipv4": st.ip_family.v4(),
                "assign_ipv6": st.ip_family.v6(),
                "ipv4_pools": if st.ip_family.v4() { vec![POOL_V4_NAME] } else { vec![] },
                "ipv6_pools": if st.ip_family.v6() { vec![POOL_V6_NAME] } else { vec![] },
            },
        }],
    });
    serde_json::to_string_pretty(&conf).expect("json value encodes") + "\n"
}

/// The `--demo` pods: namespaces `demo-a` and `demo-b`, two pods each, serving TCP/UDP 80
/// and 81, spread round-robin over the nodes.
pub fn demo_yaml(nodes: &[NodeInfo]) -> String {
    let mut y = String::new();
    let mut i = 0usize;
    for ns in ["demo-a", "demo-b"] {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    demo: \"{ns}\"\n"
        );
        for pod in ["web", "db"] {
            let node = &nodes[i % nodes.len()].name;
            i += 1;
            let _ = write!(
                y,
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\n  namespace: {ns}\n  labels:\n    \
                 app: {pod}\nspec:\n  nodeName: {node}\n  containers:\n    - name: {pod}\n      ports:\n        \
                 - name: http\n          containerPort: 80\n        - name: alt\n          containerPort: 81\n        \
                 - name: udp\n          containerPort: 80\n          protocol: UDP\n"
            );
        }
    }
    y
}

/// Addresses of one family from a list.
pub fn of_family(addrs: &[ipnet::IpNet], v4: bool) -> Option<IpAddr> {
    addrs.iter().map(|a| a.addr()).find(|a| a.is_ipv4() == v4)
}

/// The pool CIDRs of a family setting.
pub fn pool_cidrs(family: IpFamily) -> Vec<ipnet::IpNet> {
    let mut out = Vec::new();
    if family.v4() {
        out.push(POOL_V4_CIDR.parse().expect("valid cidr"));
    }
    if family.v6() {
        out.push(POOL_V6_CIDR.parse().expect("valid cidr"));
    }
    out
}

/// `--routing bgp`: BGPConfiguration `default` (AS 64512, node-to-node mesh on) and BGPPeers
/// making every node peer with the home router (AS 64513), one per router address. With two
/// underlay subnets each node peers with the router's address in its own subnet (a
/// nodeSelector on the `serval.dev/lab-subnet` label); otherwise the peers are global.
pub fn bgp_yaml(st: &LabState) -> String {
    let mut y = format!(
        "---\napiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata:\n  name: default\n\
         spec:\n  asNumber: {CLUSTER_AS}\n  nodeToNodeMeshEnabled: true\n  logSeverityScreen: Info\n"
    );
    let Some(router) = &st.router else {
        return y;
    };
    let two = st.nodes.iter().any(|n| n.subnet == 1);
    for addr in &router.addrs {
        // Which subnet this router address is in: the one whose nodes hold it.
        let subnet = st
            .nodes
            .iter()
            .find(|n| {
                n.host
                    .addrs
                    .iter()
                    .any(|a| a.trunc().contains(&addr.addr()))
            })
            .map(|n| n.subnet);
        let Some(subnet) = subnet else { continue };
        let fam = if addr.addr().is_ipv4() { "v4" } else { "v6" };
        let name = if two {
            format!("router-s{subnet}-{fam}")
        } else {
            format!("router-{fam}")
        };
        let _ = write!(
            y,
            "---\napiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: {name}\nspec:\n  \
             peerIP: \"{}\"\n  asNumber: {ROUTER_AS}\n",
            addr.addr()
        );
        if two {
            let _ = writeln!(y, "  nodeSelector: serval.dev/lab-subnet == '{subnet}'");
        }
    }
    y
}
