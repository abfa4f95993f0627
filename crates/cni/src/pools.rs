//! Which IPPools a pod's addresses come from, and the pod MTU they imply. Pure.

use std::collections::BTreeMap;

use serval_ipam::PoolSpec;
use serval_model::calico::{Encapsulation, IPPool};
use serval_model::net::IpFamily;
use serval_model::selector::Selector;

use crate::config::IpamConf;
use crate::error::{PluginError, Result};

/// The MTU of an underlay link the pod MTU is computed from.
pub const BASE_MTU: u32 = 1500;
/// VXLAN overhead over an IPv4 underlay (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14).
pub const VXLAN_V4_OVERHEAD: u32 = 50;
/// VXLAN overhead over an IPv6 underlay (outer IPv6 40 + UDP 8 + VXLAN 8 + inner Ethernet 14).
pub const VXLAN_V6_OVERHEAD: u32 = 70;

/// The pools chosen for one pod.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chosen {
    pub v4: Vec<IPPool>,
    pub v6: Vec<IPPool>,
}

impl Chosen {
    pub fn v4_specs(&self) -> Vec<PoolSpec> {
        self.v4.iter().map(spec_of).collect()
    }

    pub fn v6_specs(&self) -> Vec<PoolSpec> {
        self.v6.iter().map(spec_of).collect()
    }

    /// The pod MTU: `BASE_MTU` less the largest encapsulation overhead among the chosen
    /// pools (IPv4 pools tunnel over the IPv4 underlay, IPv6 pools over the IPv6 one, as
    /// Calico's `vxlan.calico` / `vxlan-v6.calico`).
    pub fn mtu(&self) -> u32 {
        let v4 = self.v4.iter().any(encapsulated);
        let v6 = self.v6.iter().any(encapsulated);
        match (v4, v6) {
            (_, true) => BASE_MTU - VXLAN_V6_OVERHEAD,
            (true, false) => BASE_MTU - VXLAN_V4_OVERHEAD,
            (false, false) => BASE_MTU,
        }
    }
}

fn encapsulated(p: &IPPool) -> bool {
    matches!(
        p.spec.encapsulation,
        Encapsulation::Vxlan | Encapsulation::VxlanCrossSubnet
    )
}

/// How IPAM sees a pool.
pub fn spec_of(p: &IPPool) -> PoolSpec {
    PoolSpec {
        name: p.metadata.name.clone(),
        cidr: p.spec.cidr,
        block_size: p.spec.effective_block_size(),
        disabled: p.spec.disabled,
    }
}

/// Chooses the pools for a node with `node_labels`: the ones the configuration names, in its
/// order (they must exist and be of the right family), or, when it names none, every enabled
/// pool of the family whose nodeSelector matches the node, by name.
pub fn choose(
    conf: &IpamConf,
    all: &[IPPool],
    node_labels: &BTreeMap<String, String>,
) -> Result<Chosen> {
    let mut chosen = Chosen::default();
    if conf.assign_ipv4 {
        chosen.v4 = pick(
            &conf.ipv4_pools,
            "ipv4_pools",
            IpFamily::V4,
            all,
            node_labels,
        )?;
    }
    if conf.assign_ipv6 {
        chosen.v6 = pick(
            &conf.ipv6_pools,
            "ipv6_pools",
            IpFamily::V6,
            all,
            node_labels,
        )?;
    }
    Ok(chosen)
}

fn pick(
    names: &[String],
    field: &'static str,
    family: IpFamily,
    all: &[IPPool],
    node_labels: &BTreeMap<String, String>,
) -> Result<Vec<IPPool>> {
    if !names.is_empty() {
        return names
            .iter()
            .map(|name| {
                let pool = all
                    .iter()
                    .find(|p| &p.metadata.name == name)
                    .ok_or_else(|| PluginError::UnknownPool {
                        pool: name.clone(),
                        field,
                    })?;
                if pool.spec.family() != family {
                    return Err(PluginError::PoolFamily {
                        pool: name.clone(),
                        cidr: pool.spec.cidr.to_string(),
                        field,
                        family: if family == IpFamily::V4 {
                            "IPv4"
                        } else {
                            "IPv6"
                        },
                    });
                }
                Ok(pool.clone())
            })
            .collect();
    }
    let mut out = Vec::new();
    for pool in all
        .iter()
        .filter(|p| p.spec.family() == family && !p.spec.disabled)
    {
        let selector =
            Selector::parse(&pool.spec.node_selector).map_err(|e| PluginError::BadSelector {
                pool: pool.metadata.name.clone(),
                selector: pool.spec.node_selector.clone(),
                reason: e.to_string(),
            })?;
        if selector.matches(node_labels) {
            out.push(pool.clone());
        }
    }
    out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, cidr: &str, enc: Encapsulation, selector: &str) -> IPPool {
        let mut p = IPPool::new(name, cidr.parse().unwrap());
        p.spec.encapsulation = enc;
        p.spec.node_selector = selector.into();
        p
    }

    #[test]
    fn automatic_choice_follows_family_selector_and_enabled() {
        let mut off = pool("off", "10.9.0.0/16", Encapsulation::None, "all()");
        off.spec.disabled = true;
        let all = vec![
            pool("b4", "10.1.0.0/16", Encapsulation::None, "all()"),
            pool("a4", "10.2.0.0/16", Encapsulation::Vxlan, "zone == 'a'"),
            pool("z4", "10.3.0.0/16", Encapsulation::None, "zone == 'z'"),
            pool("v6", "fd00::/48", Encapsulation::None, "all()"),
            off,
        ];
        let labels = BTreeMap::from([("zone".to_string(), "a".to_string())]);
        let conf = IpamConf {
            assign_ipv6: true,
            ..IpamConf::default()
        };
        let c = choose(&conf, &all, &labels).unwrap();
        let names: Vec<_> = c.v4.iter().map(|p| p.metadata.name.as_str()).collect();
        assert_eq!(names, ["a4", "b4"]);
        assert_eq!(c.v6.len(), 1);
        assert_eq!(c.mtu(), 1450);
        assert_eq!(c.v4_specs()[0].block_size, 26);
    }

    #[test]
    fn named_pools_must_exist_and_match_the_family() {
        let all = vec![
            pool("p4", "10.1.0.0/16", Encapsulation::None, "all()"),
            pool("p6", "fd00::/48", Encapsulation::Vxlan, "all()"),
        ];
        let named = |v4: &[&str], v6: &[&str]| IpamConf {
            assign_ipv6: !v6.is_empty(),
            ipv4_pools: v4.iter().map(|s| s.to_string()).collect(),
            ipv6_pools: v6.iter().map(|s| s.to_string()).collect(),
            ..IpamConf::default()
        };
        let c = choose(&named(&["p4"], &["p6"]), &all, &BTreeMap::new()).unwrap();
        assert_eq!(c.mtu(), 1430);
        assert!(matches!(
            choose(&named(&["nope"], &[]), &all, &BTreeMap::new()),
            Err(PluginError::UnknownPool { .. })
        ));
        assert!(matches!(
            choose(&named(&["p6"], &[]), &all, &BTreeMap::new()),
            Err(PluginError::PoolFamily { .. })
        ));
    }
}
