//! NAT outgoing: pod traffic from a pool with `natOutgoing: true` to a destination outside
//! every pool and every node is masqueraded to the node's address, as Calico's
//! `cali-nat-outgoing` chain does (`src in masq pools && dst not in all pools → MASQUERADE`).
//! Pod-to-pod, pod-to-pool and pod-to-node traffic keeps the pod's address.
//!
//! Disabled pools stay in both lists: pods already holding addresses from them still need
//! their traffic treated the same way (Calico keeps them in its pool IP sets too).

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serval_model::net;

use crate::model::Model;

/// What the dataplanes need to decide masquerading of pod traffic.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NatOutgoing {
    /// Every pool CIDR, sorted: traffic to these is never masqueraded.
    pub pools: Vec<IpNet>,
    /// CIDRs of the pools with `natOutgoing: true`, sorted: traffic from these to anywhere
    /// outside `pools` and `node_nets` is masqueraded.
    pub masquerade_from: Vec<IpNet>,
    /// Every node's address as a host network (/32, /128), sorted: from Node resources'
    /// `spec.bgp` addresses and `spec.addresses`. Pod-to-node traffic is not masqueraded.
    pub node_nets: Vec<IpNet>,
}

/// The NAT-outgoing state of `model`.
pub fn nat_outgoing(model: &Model) -> NatOutgoing {
    let mut pools = BTreeSet::new();
    let mut masq = BTreeSet::new();
    for pool in model.ip_pools.values() {
        let cidr = pool.spec.cidr.trunc();
        pools.insert(cidr);
        if pool.spec.nat_outgoing {
            masq.insert(cidr);
        }
    }
    let mut nodes = BTreeSet::new();
    for node in model.nodes.values() {
        for a in node.bgp_addrs() {
            nodes.insert(IpNet::from(a));
        }
        for a in &node.spec.addresses {
            match net::parse_ip_or_cidr(&a.address) {
                // `192.168.1.10/24` names the node's address with its subnet: keep the host.
                Ok(n) => {
                    nodes.insert(IpNet::from(n.addr()));
                }
                Err(e) => tracing::debug!(
                    node = %node.metadata.name,
                    address = %a.address,
                    error = %e,
                    "nat outgoing: node address does not parse; ignored"
                ),
            }
        }
    }
    NatOutgoing {
        pools: pools.into_iter().collect(),
        masquerade_from: masq.into_iter().collect(),
        node_nets: nodes.into_iter().collect(),
    }
}

/// Whether a packet from `src` to `dst` leaving the node is masqueraded to the node address.
pub fn should_masquerade(n: &NatOutgoing, src: IpAddr, dst: IpAddr) -> bool {
    let within = |nets: &[IpNet], a: IpAddr| nets.iter().any(|net| net.contains(&a));
    within(&n.masquerade_from, src) && !within(&n.pools, dst) && !within(&n.node_nets, dst)
}

#[cfg(test)]
mod tests {
    use serval_model::parse_documents;

    use super::*;

    const MODEL: &str = r#"
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: masq-v4}
spec: {cidr: 10.244.0.0/16, natOutgoing: true}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: masq-v6}
spec: {cidr: "fd00:244::/64", natOutgoing: true}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: plain}
spec: {cidr: 10.99.0.0/16}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: n1}
spec:
  bgp: {ipv4Address: 192.168.1.10/24, ipv6Address: "fd01::10/64"}
  addresses: [{address: 172.16.0.10/16, type: InternalIP}]
"#;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn model() -> Model {
        Model::from_resources(parse_documents("t", MODEL).unwrap())
    }

    #[test]
    fn lists_are_sorted_and_complete() {
        let n = nat_outgoing(&model());
        let s = |v: &[IpNet]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(
            s(&n.pools),
            ["10.99.0.0/16", "10.244.0.0/16", "fd00:244::/64"]
        );
        assert_eq!(s(&n.masquerade_from), ["10.244.0.0/16", "fd00:244::/64"]);
        assert_eq!(
            s(&n.node_nets),
            ["172.16.0.10/32", "192.168.1.10/32", "fd01::10/128"]
        );
    }

    #[test]
    fn decisions() {
        let n = nat_outgoing(&model());
        // Pool → outside: masqueraded (both families).
        assert!(should_masquerade(&n, ip("10.244.1.5"), ip("8.8.8.8")));
        assert!(should_masquerade(&n, ip("fd00:244::5"), ip("2001:db8::1")));
        // Pool → same pool (pod to pod) and pool → another pool: not.
        assert!(!should_masquerade(&n, ip("10.244.1.5"), ip("10.244.2.7")));
        assert!(!should_masquerade(&n, ip("10.244.1.5"), ip("10.99.0.3")));
        assert!(!should_masquerade(&n, ip("fd00:244::5"), ip("fd00:244::9")));
        // Pool → node (BGP address or listed address): not.
        assert!(!should_masquerade(&n, ip("10.244.1.5"), ip("192.168.1.10")));
        assert!(!should_masquerade(&n, ip("10.244.1.5"), ip("172.16.0.10")));
        assert!(!should_masquerade(&n, ip("fd00:244::5"), ip("fd01::10")));
        // ...but another host in the node's subnet is outside.
        assert!(should_masquerade(&n, ip("10.244.1.5"), ip("192.168.1.11")));
        // A pool without natOutgoing, and a non-pod source: not.
        assert!(!should_masquerade(&n, ip("10.99.0.3"), ip("8.8.8.8")));
        assert!(!should_masquerade(&n, ip("192.168.1.10"), ip("8.8.8.8")));
    }

    #[test]
    fn empty_model_masquerades_nothing() {
        let n = nat_outgoing(&Model::default());
        assert_eq!(n, NatOutgoing::default());
        assert!(!should_masquerade(&n, ip("10.244.1.5"), ip("8.8.8.8")));
    }
}
