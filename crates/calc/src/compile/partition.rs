//! One endpoint's policy for one direction as a partition, for rule-based dataplanes (the
//! iptables renderer): the tiers resolved ahead of time over (remote address × protocol ×
//! port), exactly as the eBPF compiler resolves them ([`super::resolve`]), but kept per
//! endpoint instead of being encoded into `sv_policy` entries.
//!
//! A [`Partition`] is a list of distinct [`DecisionMap`]s (the *groups*) and the identity
//! prefixes of the sets the endpoint's rules evaluate on the remote side, each naming the
//! group of the addresses whose longest matching prefix it is ([`trie::classes`]: an
//! identity class is an equivalence class of addresses for these rules). Rule ids are not
//! kept (every outcome's `rule` is [`super::RULE_NONE`]): two identities whose decisions
//! differ only by the deciding rule share a group.
//!
//! [`set_entries`] turns the prefixes into one `hash:net`-style set per group: match entries
//! and `nomatch` entries for nested prefixes of other groups, so a set's longest matching
//! entry decides membership as the LPM lookup does in eBPF. A dataplane then needs one set
//! test per group plus the group's protocol/port decisions per packet, whatever the number
//! of policies.
//!
//! What a partition cannot express ([`Inexact`]): Log rules (the decision skips them; a
//! dataplane that must still log them renders the tiers rule by rule), and local-side
//! conditions (`dst` sets on ingress, `src` sets on egress, local named ports) when the
//! local address of a packet is not known to be the endpoint's one address of its family
//! (the partition evaluates the local side on that address): an endpoint with several
//! addresses of a family, or a caller that says packets may carry other local addresses
//! (host endpoints).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::rc::Rc;

use ipnet::IpNet;

use super::resolve::{self, DecisionMap, Group, LocalFam, RuleIds};
use super::{local_fam, sets_used, tiers_fingerprint, trie};
use crate::endpoints::Endpoint;
use crate::ipsets::{IpSetId, IpSetMembers};
use crate::policy::{Action, Direction, TierRules};

/// One endpoint direction's policy as decision groups over identity prefixes.
#[derive(Debug, Clone, PartialEq)]
pub struct Partition {
    /// The distinct decision maps (outcomes carry no rule id).
    pub maps: Vec<DecisionMap>,
    /// Identity prefixes in trie order (IPv4 first; within a family by network, then by
    /// length, so an ancestor comes before its descendants), each with the index in `maps`
    /// of the decision of the addresses whose longest matching prefix it is. `0.0.0.0/0` and
    /// `::/0` are always present.
    pub prefixes: Vec<(IpNet, usize)>,
}

impl Partition {
    /// The group of a remote address: that of its longest matching prefix.
    pub fn group_of(&self, addr: IpAddr) -> usize {
        self.prefixes
            .iter()
            .filter(|(n, _)| n.contains(&addr))
            .max_by_key(|(n, _)| n.prefix_len())
            .map_or(0, |(_, g)| *g)
    }

    /// Whether a packet with this remote address, protocol, source port and policy port
    /// ([`super::policy_port`]) is allowed.
    pub fn allows(&self, remote: IpAddr, proto: u8, sport: u16, port: u16) -> bool {
        self.maps[self.group_of(remote)]
            .get_with_sport(proto, sport, port)
            .allow
    }
}

/// Why an endpoint direction's policy is not rendered as a [`Partition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inexact {
    /// A Log rule applies; the partition has no place for it.
    LogRule,
    /// The rules look at the local address and the endpoint has several of this family
    /// (`true`: IPv4).
    SeveralLocalAddresses { v4: bool },
    /// The rules look at the local address, and packets may carry a local address that is
    /// not the endpoint's.
    LocalAddressUnknown,
}

impl std::fmt::Display for Inexact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Inexact::LogRule => f.write_str("a Log rule applies"),
            Inexact::SeveralLocalAddresses { v4 } => write!(
                f,
                "local-side conditions with several IPv{} addresses",
                if *v4 { 4 } else { 6 }
            ),
            Inexact::LocalAddressUnknown => {
                f.write_str("local-side conditions on an endpoint of several local addresses")
            }
        }
    }
}

type ShapeKey = (bool, bool, u64, LocalFam, LocalFam);
type Bucket = Vec<(Vec<TierRules>, Result<Rc<Partition>, Inexact>)>;

/// Partitions of many endpoints; endpoints with the same tiers and local view (replicas
/// selected by the same policies) share one resolution.
#[derive(Debug, Default)]
pub struct PartitionCache {
    memo: RefCell<HashMap<ShapeKey, Bucket>>,
}

impl PartitionCache {
    pub fn new() -> PartitionCache {
        PartitionCache::default()
    }

    /// The partition of `tiers` for an endpoint with local addresses `addrs`, in `dir`.
    /// `local_known`: every packet's local address (destination on ingress, source on
    /// egress) is the endpoint's address of its family (workloads: routing and
    /// anti-spoofing see to it); when false, local-side conditions are [`Inexact`].
    pub fn partition(
        &self,
        ipsets: &BTreeMap<IpSetId, IpSetMembers>,
        addrs: &[IpAddr],
        local_known: bool,
        tiers: &[TierRules],
        dir: Direction,
    ) -> Result<Rc<Partition>, Inexact> {
        let used = sets_used(tiers, dir);
        let ep = Endpoint {
            namespace: String::new(),
            pod: String::new(),
            node: String::new(),
            addrs: addrs.to_vec(),
            iface: String::new(),
            labels: BTreeMap::new(),
            named_ports: Vec::new(),
            ready: true,
        };
        let locals = (
            local_fam(&ep, true, &used, ipsets),
            local_fam(&ep, false, &used, ipsets),
        );
        let key: ShapeKey = (
            local_known,
            dir == Direction::Ingress,
            tiers_fingerprint(tiers),
            locals.0.clone(),
            locals.1.clone(),
        );
        let mut memo = self.memo.borrow_mut();
        let bucket = memo.entry(key).or_default();
        if let Some((_, r)) = bucket.iter().find(|(t, _)| t.as_slice() == tiers) {
            return r.clone();
        }
        let local_side = !(used.local.is_empty() && used.local_named.is_empty());
        let r = if tiers
            .iter()
            .flat_map(|t| &t.policies)
            .flat_map(|p| &p.rules)
            .any(|r| r.action == Action::Log)
        {
            Err(Inexact::LogRule)
        } else if local_side && !local_known {
            Err(Inexact::LocalAddressUnknown)
        } else if let Some(v4) = [true, false]
            .into_iter()
            .find(|v4| local_side && addrs.iter().filter(|a| a.is_ipv4() == *v4).count() > 1)
        {
            Err(Inexact::SeveralLocalAddresses { v4 })
        } else {
            Ok(Rc::new(resolve_partition(
                ipsets, tiers, dir, &used, &locals,
            )))
        };
        bucket.push((tiers.to_vec(), r.clone()));
        r
    }
}

fn resolve_partition(
    ipsets: &BTreeMap<IpSetId, IpSetMembers>,
    tiers: &[TierRules],
    dir: Direction,
    used: &super::SetsUsed,
    locals: &(LocalFam, LocalFam),
) -> Partition {
    let members = super::remote_members(ipsets, &used.remote, &used.remote_named);
    let classes = trie::classes(members);
    let (protos, other) = resolve::relevant_protos(tiers);
    let no_ids = RuleIds::new();
    let mut maps: Vec<DecisionMap> = Vec::new();
    let mut class_group: BTreeMap<&trie::ClassKey, usize> = BTreeMap::new();
    let mut prefixes = Vec::with_capacity(classes.len());
    for (net, class) in &classes {
        let g = match class_group.get(class) {
            Some(g) => *g,
            None => {
                let (v4, remote) = class;
                let group = Group {
                    dir,
                    v4: *v4,
                    remote,
                    local: if *v4 { &locals.0 } else { &locals.1 },
                };
                let map = resolve::resolve(tiers, &group, &protos, other, &no_ids);
                let g = match maps.iter().position(|m| *m == map) {
                    Some(g) => g,
                    None => {
                        maps.push(map);
                        maps.len() - 1
                    }
                };
                class_group.insert(class, g);
                g
            }
        };
        prefixes.push((*net, g));
    }
    Partition { maps, prefixes }
}

/// The members of one `hash:net`-style set per group (key `K`) such that an address's
/// longest matching member is a match entry (`true`) exactly when its longest matching
/// prefix in `prefixes` has that key: a prefix is a match entry of its own key's set and a
/// `nomatch` entry (`false`) of the set of its nearest ancestor's key, when the two keys
/// differ; a prefix with the same key as its nearest ancestor is in no set. `prefixes` must
/// be in trie order ([`Partition::prefixes`]). Every key present gets at least one match
/// entry; a zero-length prefix is returned as it is (the caller splits it if its set type
/// needs that).
pub fn set_entries<K: Ord + Clone>(prefixes: &[(IpNet, K)]) -> BTreeMap<K, Vec<(IpNet, bool)>> {
    let mut out: BTreeMap<K, Vec<(IpNet, bool)>> = BTreeMap::new();
    let mut stack: Vec<(IpNet, &K)> = Vec::new();
    for (net, key) in prefixes {
        while stack.last().is_some_and(|(top, _)| !top.contains(net)) {
            stack.pop();
        }
        match stack.last() {
            Some((_, parent)) if *parent == key => {}
            Some((_, parent)) => {
                out.entry(key.clone()).or_default().push((*net, true));
                out.entry((*parent).clone())
                    .or_default()
                    .push((*net, false));
            }
            None => out.entry(key.clone()).or_default().push((*net, true)),
        }
        stack.push((*net, key));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::compile::policy_port;
    use crate::evaluator::{DecidedBy, Evaluator, Packet};
    use crate::policy::IpProto;
    use crate::scenarios::{Scenario, load_dir, test_cluster};
    use crate::{Model, desired_state};
    use serval_model::types::Protocol;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    /// Whether `addr` is in a set of entries, as hash:net with nomatch decides.
    fn in_set(entries: &[(IpNet, bool)], addr: IpAddr) -> bool {
        entries
            .iter()
            .filter(|(n, _)| n.contains(&addr))
            .max_by_key(|(n, _)| n.prefix_len())
            .is_some_and(|(_, m)| *m)
    }

    #[test]
    fn set_entries_follow_the_longest_prefix() {
        let prefixes = vec![
            (net("0.0.0.0/0"), 'w'),
            (net("10.0.0.0/8"), 'a'),
            (net("10.1.0.0/16"), 'b'),
            (net("10.1.2.0/24"), 'a'),
            (net("10.1.2.3/32"), 'a'),
            (net("10.2.0.0/16"), 'a'),
            (net("11.0.0.0/8"), 'w'),
            (net("::/0"), 'w'),
            (net("fd00::/64"), 'b'),
        ];
        let e = set_entries(&prefixes);
        // Redundant prefixes (same key as the parent) are in no set.
        assert_eq!(
            e[&'a'],
            vec![
                (net("10.0.0.0/8"), true),
                (net("10.1.0.0/16"), false),
                (net("10.1.2.0/24"), true)
            ]
        );
        assert_eq!(e[&'w'].len(), 4, "{:?}", e[&'w']);
        let lpm = |a: IpAddr| {
            prefixes
                .iter()
                .filter(|(n, _)| n.contains(&a))
                .max_by_key(|(n, _)| n.prefix_len())
                .unwrap()
                .1
        };
        for a in [
            "10.0.0.1", "10.1.0.1", "10.1.2.3", "10.1.2.4", "10.1.3.1", "10.2.3.4", "11.1.1.1",
            "1.1.1.1", "fd00::1", "fd01::1",
        ] {
            let a: IpAddr = a.parse().unwrap();
            for (k, entries) in &e {
                assert_eq!(in_set(entries, a), lpm(a) == *k, "{a} in set {k}");
            }
        }
    }

    /// `(protocol, port, ICMP type and code)`.
    type Probe = (IpProto, u16, Option<(u8, u8)>);

    /// The partition decides every leg of the scenarios as the reference evaluator does.
    fn run_dir(dir: &str) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .join(dir);
        let scenarios: Vec<Scenario> = load_dir(&path).unwrap();
        let mut checked = 0;
        let mut inexact = 0;
        for s in &scenarios {
            for v4 in [true, false] {
                let (resources, b4, b6) = test_cluster();
                let b = if v4 { b4 } else { b6 };
                let mut remotes: Vec<IpAddr> = b.pods.values().copied().collect();
                remotes.extend(b.nodes.iter().map(|(_, a)| *a));
                let mut model = Model::from_resources(resources);
                for i in 0..s.steps.len() {
                    s.apply_step(&mut model, i, &b).unwrap();
                    let mut probes: Vec<Probe> = s.steps[i]
                        .expect
                        .iter()
                        .flat_map(|e| &e.probes)
                        .map(|p| (IpProto::from(p.protocol), p.port, None))
                        .chain([(IpProto::from(Protocol::Tcp), 80, None)])
                        .collect();
                    probes.push(if v4 {
                        (IpProto::Icmp, 0, Some((8, 0)))
                    } else {
                        (IpProto::IcmpV6, 0, Some((128, 0)))
                    });
                    let ev = Evaluator::new(&model);
                    let cache = PartitionCache::new();
                    for (node, _) in &b.nodes {
                        let state = desired_state(&model, Some(node));
                        for (key, (ep, pol)) in &state.endpoints {
                            for dir in [Direction::Ingress, Direction::Egress] {
                                let tiers = pol.direction(dir);
                                let part = match cache.partition(
                                    &state.ipsets,
                                    &ep.addrs,
                                    true,
                                    tiers,
                                    dir,
                                ) {
                                    Ok(p) => p,
                                    Err(_) => {
                                        inexact += 1;
                                        continue;
                                    }
                                };
                                for &local in &ep.addrs {
                                    for &remote in remotes.iter().filter(|r| {
                                        r.is_ipv4() == local.is_ipv4() && !ep.addrs.contains(r)
                                    }) {
                                        for &(proto, port, icmp) in &probes {
                                            let (src, dst) = match dir {
                                                Direction::Ingress => (remote, local),
                                                Direction::Egress => (local, remote),
                                            };
                                            let p = match icmp {
                                                Some((t, c)) => Packet::icmp(src, dst, t, c),
                                                None => Packet::l4(src, dst, proto, port),
                                            };
                                            let v = ev.evaluate(&p);
                                            let leg = match dir {
                                                Direction::Ingress => v.ingress.as_ref(),
                                                Direction::Egress => v.egress.as_ref(),
                                            };
                                            let Some(want) = leg else { continue };
                                            if !matches!(
                                                want.by,
                                                DecidedBy::Rule(_)
                                                    | DecidedBy::EndOfTier(_)
                                                    | DecidedBy::NoPolicy
                                                    | DecidedBy::PassedAllTiers
                                            ) {
                                                continue;
                                            }
                                            let got = part.allows(
                                                remote,
                                                p.protocol.number(),
                                                p.src_port,
                                                policy_port(p.protocol, p.dst_port, p.icmp),
                                            );
                                            assert_eq!(
                                                got,
                                                want.allowed,
                                                "{} step {} {key} {dir:?} {src} -> {dst} {}/{}",
                                                s.name,
                                                i + 1,
                                                p.protocol,
                                                p.dst_port
                                            );
                                            checked += 1;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(
            checked > 1000,
            "only {checked} legs checked ({inexact} inexact)"
        );
    }

    #[test]
    fn netpol_scenarios_partition_to_the_evaluators_verdicts() {
        run_dir("netpol");
    }

    #[test]
    fn calico_scenarios_partition_to_the_evaluators_verdicts() {
        run_dir("calico");
    }
}
