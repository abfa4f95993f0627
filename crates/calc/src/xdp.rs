//! XDP on host interfaces (FelixConfiguration `xdpEnabled`): the untracked (`doNotTrack`)
//! Deny rules of host endpoint policy that an XDP program can enforce before the kernel
//! allocates a socket buffer, as a blocklist of source prefixes (optionally per protocol and
//! destination port), per host interface or for every host interface.
//!
//! # What XDP can express
//!
//! For each host endpoint of the node (the ones [`crate::state::desired_state`] computes, the
//! same the iptables dataplane renders), the GlobalNetworkPolicies with `doNotTrack: true`
//! that select it and apply to ingress, in evaluation order (tier order, policy order, name).
//! Their ingress rules are walked in order:
//!
//! - a **Deny** rule whose only matches are `source.nets` (optionally `ipVersion`,
//!   `protocol` and numeric `destination.ports`, ranges of at most [`MAX_RANGE_PORTS`] ports)
//!   becomes blocklist entries (source prefix × protocol × port);
//! - any other Deny rule is **not** expressible (selectors, notNets, source ports, named
//!   ports, ICMP, notProtocol, ...): it is left to the tc path and listed in
//!   [`XdpState::skipped`] (the driver logs each once);
//! - an Allow, Pass or Log rule ends the walk: a later Deny could be shadowed by it for some
//!   packets, which a blocklist cannot know, so every later rule of the endpoint is left to
//!   the tc path (listed too). Earlier Deny rules never shadow later ones (the packet is
//!   dropped either way), so the walk goes on past them.
//!
//! Failsafe inbound ports (`failsafeInboundHostPorts`) are never dropped: the program checks
//! them before the blocklist ([`crate::DesiredState::failsafe`]).
//!
//! # Interfaces
//!
//! A host endpoint with `interfaceName: "*"` (or neither interface nor expected IPs) covers
//! every non-workload interface of the node: its entries are global ([`XdpIface::All`]); one
//! with only `expectedIPs` covers the interfaces holding those addresses
//! ([`XdpIface::ByAddrs`], resolved by the driver with [`resolve_interfaces`]). A packet is
//! dropped when any entry of its interface or any global entry matches (the deny rules of a
//! named and of an all-interfaces endpoint add up).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serval_model::calico::{Action, GlobalNetworkPolicy, Rule};
use serval_model::types::CalicoPort;

use crate::model::Model;
use crate::policy::HostEndpointState;
use crate::policy::compile::parse_selector;

/// Port ranges wider than this are not expanded into entries (left to the tc path).
pub const MAX_RANGE_PORTS: u32 = 256;

/// Which host interfaces an entry (or a host endpoint) covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum XdpIface {
    /// Every non-workload interface of the node (`interfaceName: "*"`).
    All,
    /// One interface by name.
    Named(String),
    /// The interfaces that hold any of these addresses (a host endpoint with only
    /// `expectedIPs`).
    ByAddrs(Vec<IpAddr>),
}

/// One blocklist entry: packets from `src` (to `port` over `proto`) are dropped at XDP.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlockEntry {
    pub iface: XdpIface,
    /// Source prefix (truncated).
    pub src: IpNet,
    /// IP protocol number; 0: any protocol.
    pub proto: u8,
    /// Destination port; 0: any port.
    pub port: u16,
}

/// What the XDP program of this node should enforce.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct XdpState {
    /// FelixConfiguration `xdpEnabled` (Calico's default: true).
    pub enabled: bool,
    /// The interfaces the program goes on: those of host endpoints with at least one entry.
    pub interfaces: BTreeSet<XdpIface>,
    /// Entry → the rule it came from (`policy ingress[i]`), for logs.
    pub entries: BTreeMap<BlockEntry, String>,
    /// Untracked rules of the node's host endpoints left to the tc path, with why.
    pub skipped: Vec<String>,
}

impl XdpState {
    /// True when the program should be attached anywhere.
    pub fn active(&self) -> bool {
        self.enabled && !self.entries.is_empty()
    }
}

/// The untracked GlobalNetworkPolicies that select `hep`, in evaluation order.
fn untracked_policies<'m>(
    model: &'m Model,
    hep: &HostEndpointState,
) -> Vec<(&'m str, &'m GlobalNetworkPolicy)> {
    let tiers = model.tiers();
    let tier_rank = |t: &str| {
        tiers
            .iter()
            .position(|x| x.metadata.name == t)
            .unwrap_or(usize::MAX)
    };
    let mut out: Vec<(&str, &GlobalNetworkPolicy)> = model
        .global_policies
        .iter()
        .filter(|(_, p)| p.spec.do_not_track)
        .filter(|(_, p)| {
            p.spec
                .namespace_selector
                .as_deref()
                .is_none_or(|ns| crate::ipsets::selects_global_only(&parse_selector(ns)))
                && parse_selector(&p.spec.selector).matches_global(&hep.labels)
        })
        .filter(|(_, p)| tier_rank(&p.spec.tier) != usize::MAX)
        .map(|(n, p)| (n.as_str(), p))
        .collect();
    out.sort_by(|(an, a), (bn, b)| {
        tier_rank(&a.spec.tier)
            .cmp(&tier_rank(&b.spec.tier))
            .then_with(|| {
                a.spec
                    .order
                    .unwrap_or(f64::INFINITY)
                    .total_cmp(&b.spec.order.unwrap_or(f64::INFINITY))
            })
            .then_with(|| an.cmp(bn))
    });
    out
}

/// What XDP enforces of one rule: source prefixes × (protocol, port) pairs.
type Expressed = (Vec<IpNet>, Vec<(u8, u16)>);

/// The source prefixes and (protocol, port) pairs of a rule XDP can express, or why not.
fn expressible(rule: &Rule) -> Result<Expressed, &'static str> {
    let s = &rule.source;
    let d = &rule.destination;
    if s.nets.is_empty() {
        return Err("no source nets");
    }
    if !s.not_nets.is_empty()
        || s.selector.is_some()
        || s.not_selector.is_some()
        || s.namespace_selector.is_some()
        || !s.ports.is_empty()
        || !s.not_ports.is_empty()
    {
        return Err("source matches other than nets");
    }
    if !d.nets.is_empty()
        || !d.not_nets.is_empty()
        || d.selector.is_some()
        || d.not_selector.is_some()
        || d.namespace_selector.is_some()
        || !d.not_ports.is_empty()
    {
        return Err("destination matches other than ports");
    }
    if rule.not_protocol.is_some() || rule.icmp.is_some() || rule.not_icmp.is_some() {
        return Err("notProtocol / ICMP matches");
    }
    let nets: Vec<IpNet> = s
        .nets
        .iter()
        .filter(|n| {
            !matches!(
                (rule.ip_version, n),
                (Some(4), IpNet::V6(_)) | (Some(6), IpNet::V4(_))
            )
        })
        .map(IpNet::trunc)
        .collect();
    let proto = rule.protocol.map_or(0, |p| p.number());
    if d.ports.is_empty() {
        return Ok((nets, vec![(proto, 0)]));
    }
    if !rule.protocol.is_some_and(|p| p.has_ports()) {
        return Err("ports without a port protocol");
    }
    let mut ports = Vec::new();
    for p in &d.ports {
        let (lo, hi) = match p {
            CalicoPort::Number(n) => (*n, *n),
            CalicoPort::Range(a, b) => (*a, *b),
            CalicoPort::Named(_) => return Err("named ports"),
        };
        if lo == 0 {
            return Err("port 0");
        }
        if u32::from(hi) - u32::from(lo) + 1 > MAX_RANGE_PORTS {
            return Err("a port range wider than 256 ports");
        }
        ports.extend((lo..=hi).map(|port| (proto, port)));
    }
    Ok((nets, ports))
}

/// The host interfaces `hep` covers.
fn hep_iface(hep: &HostEndpointState) -> XdpIface {
    match hep.iface.as_deref() {
        Some("*") => XdpIface::All,
        Some(name) => XdpIface::Named(name.to_string()),
        None if hep.addrs.is_empty() => XdpIface::All,
        None => XdpIface::ByAddrs(hep.addrs.clone()),
    }
}

/// The XDP state of a node: `host_endpoints` are the node's (as in its desired state).
pub fn xdp_state(
    model: &Model,
    host_endpoints: &BTreeMap<String, HostEndpointState>,
    xdp_enabled: bool,
) -> XdpState {
    let mut out = XdpState {
        enabled: xdp_enabled,
        ..XdpState::default()
    };
    for hep in host_endpoints.values() {
        let iface = hep_iface(hep);
        let mut stopped: Option<String> = None;
        for (name, policy) in untracked_policies(model, hep) {
            if policy.spec.applies_to_egress() && !policy.spec.egress.is_empty() {
                out.skipped.push(format!(
                    "{}/{name} egress on host endpoint {}: XDP sees ingress only",
                    policy.spec.tier, hep.name
                ));
            }
            if !policy.spec.applies_to_ingress() {
                continue;
            }
            for (i, rule) in policy.spec.ingress.iter().enumerate() {
                let id = format!("{}/{name} ingress[{i}]", policy.spec.tier);
                if let Some(by) = &stopped {
                    out.skipped.push(format!(
                        "{id} on host endpoint {}: after non-Deny rule {by}",
                        hep.name
                    ));
                    continue;
                }
                if rule.action != Action::Deny {
                    stopped = Some(id);
                    continue;
                }
                match expressible(rule) {
                    Ok((nets, pp)) => {
                        for net in &nets {
                            for &(proto, port) in &pp {
                                out.entries
                                    .entry(BlockEntry {
                                        iface: iface.clone(),
                                        src: *net,
                                        proto,
                                        port,
                                    })
                                    .or_insert_with(|| id.clone());
                            }
                        }
                        if !nets.is_empty() {
                            out.interfaces.insert(iface.clone());
                        }
                    }
                    Err(why) => out
                        .skipped
                        .push(format!("{id} on host endpoint {}: {why}", hep.name)),
                }
            }
        }
    }
    out
}

/// The interfaces the program goes on, by name: `host_ifaces` are the node's interfaces with
/// their addresses, `workload_ifaces` the workload veths (never host endpoints). Loopback is
/// never included.
pub fn resolve_interfaces(
    state: &XdpState,
    host_ifaces: &BTreeMap<String, Vec<IpAddr>>,
    workload_ifaces: &BTreeSet<String>,
) -> BTreeSet<String> {
    let host = |name: &str| name != "lo" && !workload_ifaces.contains(name);
    let mut out = BTreeSet::new();
    for iface in &state.interfaces {
        match iface {
            XdpIface::All => out.extend(host_ifaces.keys().filter(|n| host(n)).cloned()),
            XdpIface::Named(n) => {
                if host_ifaces.contains_key(n) && host(n) {
                    out.insert(n.clone());
                }
            }
            XdpIface::ByAddrs(addrs) => out.extend(
                host_ifaces
                    .iter()
                    .filter(|(n, a)| host(n) && a.iter().any(|x| addrs.contains(x)))
                    .map(|(n, _)| n.clone()),
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serval_model::parse_documents;

    use super::*;

    const NODE: &str = r#"
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: n1-eth0, labels: {role: edge}}
spec: {node: n1, interfaceName: eth0}
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: n2-eth0, labels: {role: edge}}
spec: {node: n2, interfaceName: eth0}
"#;

    fn state(extra: &str) -> XdpState {
        let model = Model::from_resources(
            parse_documents("test", &format!("{NODE}---\n{extra}")).expect("parse"),
        );
        crate::state::desired_state(&model, Some("n1")).xdp
    }

    fn entry(iface: &str, src: &str, proto: u8, port: u16) -> BlockEntry {
        BlockEntry {
            iface: XdpIface::Named(iface.into()),
            src: src.parse().unwrap(),
            proto,
            port,
        }
    }

    #[test]
    fn deny_source_nets_become_entries_for_the_nodes_host_endpoint() {
        let s = state(
            r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: block}
spec:
  selector: role == 'edge'
  doNotTrack: true
  applyOnForward: true
  ingress:
  - action: Deny
    source: {nets: [10.9.0.0/16]}
  - action: Deny
    source: {nets: ["fd00:9::/64"]}
  - action: Deny
    protocol: TCP
    source: {nets: [10.8.0.1/32]}
    destination: {ports: [80, "8000:8001"]}
"#,
        );
        assert!(s.enabled, "xdpEnabled defaults to true");
        assert!(s.active());
        let keys: Vec<BlockEntry> = s.entries.keys().cloned().collect();
        assert_eq!(
            keys,
            vec![
                entry("eth0", "10.8.0.1/32", 6, 80),
                entry("eth0", "10.8.0.1/32", 6, 8000),
                entry("eth0", "10.8.0.1/32", 6, 8001),
                entry("eth0", "10.9.0.0/16", 0, 0),
                entry("eth0", "fd00:9::/64", 0, 0),
            ]
        );
        assert_eq!(
            s.interfaces,
            [XdpIface::Named("eth0".into())].into_iter().collect()
        );
        assert_eq!(
            s.entries[&entry("eth0", "10.9.0.0/16", 0, 0)],
            "default/block ingress[0]"
        );
        assert_eq!(
            s.entries[&entry("eth0", "10.8.0.1/32", 6, 80)],
            "default/block ingress[2]"
        );
        assert!(s.skipped.is_empty(), "{:?}", s.skipped);
    }

    #[test]
    fn tracked_policies_and_other_nodes_give_nothing() {
        let s = state(
            r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: tracked}
spec:
  selector: role == 'edge'
  ingress:
  - action: Deny
    source: {nets: [10.9.0.0/16]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: elsewhere}
spec:
  selector: role == 'other'
  doNotTrack: true
  applyOnForward: true
  ingress:
  - action: Deny
    source: {nets: [10.9.0.0/16]}
"#,
        );
        assert!(s.entries.is_empty(), "{:?}", s.entries);
        assert!(!s.active());
    }

    #[test]
    fn inexpressible_rules_are_skipped_and_non_deny_ends_the_walk() {
        let s = state(
            r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: a}
spec:
  order: 1
  selector: all()
  doNotTrack: true
  applyOnForward: true
  ingress:
  - action: Deny
    source: {selector: "app == 'x'"}
  - action: Deny
    protocol: TCP
    source: {nets: [10.1.0.0/16], ports: [1234]}
  - action: Deny
    source: {nets: [10.2.0.0/16]}
  - action: Allow
    source: {nets: [10.3.0.0/16]}
  - action: Deny
    source: {nets: [10.3.0.0/16]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: b}
spec:
  order: 2
  selector: all()
  doNotTrack: true
  applyOnForward: true
  ingress:
  - action: Deny
    source: {nets: [10.4.0.0/16]}
  egress:
  - action: Deny
    destination: {nets: [10.5.0.0/16]}
"#,
        );
        let srcs: Vec<String> = s.entries.keys().map(|e| e.src.to_string()).collect();
        assert_eq!(srcs, vec!["10.2.0.0/16"], "only the deny before the allow");
        assert_eq!(s.skipped.len(), 5, "{:#?}", s.skipped);
        assert!(s.skipped[0].contains("no source nets"), "{}", s.skipped[0]);
        assert!(s.skipped[1].contains("source matches"), "{}", s.skipped[1]);
        assert!(s.skipped[2].contains("after non-Deny rule default/a ingress[3]"));
        assert!(
            s.skipped[3].contains("default/b egress"),
            "{}",
            s.skipped[3]
        );
        assert!(s.skipped[4].contains("default/b ingress[0]"));
    }

    #[test]
    fn xdp_enabled_false_keeps_the_entries_but_attaches_nothing() {
        let s = state(
            r#"
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {name: default}
spec: {xdpEnabled: false}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: v6only}
spec:
  selector: all()
  doNotTrack: true
  applyOnForward: true
  ingress:
  - action: Deny
    ipVersion: 6
    source: {nets: ["fd00:9::/64"]}
"#,
        );
        assert!(!s.enabled);
        assert!(!s.active(), "disabled: nothing attached");
        let srcs: Vec<String> = s.entries.keys().map(|e| e.src.to_string()).collect();
        assert_eq!(srcs, vec!["fd00:9::/64"]);
    }

    #[test]
    fn interfaces_resolve_all_named_and_by_address() {
        let host: BTreeMap<String, Vec<IpAddr>> = [
            ("lo", vec!["127.0.0.1"]),
            ("eth0", vec!["172.18.0.2"]),
            ("eth1", vec!["192.168.5.1"]),
            ("svabc", vec![]),
        ]
        .into_iter()
        .map(|(n, a)| {
            (
                n.to_string(),
                a.iter().map(|a| a.parse().unwrap()).collect(),
            )
        })
        .collect();
        let workloads: BTreeSet<String> = ["svabc".to_string()].into_iter().collect();
        let with = |ifaces: Vec<XdpIface>| XdpState {
            enabled: true,
            interfaces: ifaces.into_iter().collect(),
            ..XdpState::default()
        };
        let names = |s: &XdpState| -> Vec<String> {
            resolve_interfaces(s, &host, &workloads)
                .into_iter()
                .collect()
        };
        assert_eq!(names(&with(vec![XdpIface::All])), vec!["eth0", "eth1"]);
        assert_eq!(
            names(&with(vec![
                XdpIface::Named("eth1".into()),
                XdpIface::Named("nope".into())
            ])),
            vec!["eth1"]
        );
        assert_eq!(
            names(&with(vec![XdpIface::ByAddrs(vec![
                "172.18.0.2".parse().unwrap()
            ])])),
            vec!["eth0"]
        );
    }
}
