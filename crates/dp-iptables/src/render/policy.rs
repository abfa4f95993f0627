//! Policy: per-endpoint chains, per-policy chains, host endpoints and failsafe ports (filter
//! table). See the module docs of [`crate::render`] for the layout.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serval_calc::{
    DesiredState, IpSetId,
    compile::partition::PartitionCache,
    policy::{
        Action, Direction, EndOfTier, EndpointPolicy, FailsafePort, HostEndpointState, IcmpMatch,
        IpProto, PolicyRules, PortRange, RuleMatch, TierRules,
    },
};
use serval_model::calico::EndpointToHostAction;

use super::{
    MARK_ACCEPT, MARK_PASS, NFLOG_GROUP, chains, comment, hashed_chain, set_name, set_type_of,
};
use crate::rules::{Family, FamilyRules, Hook, IpSet, Table, TableRules};

/// ICMPv6 types a pod must always be able to send to its host: MLD query/report/done (130,
/// 131, 132), router solicitation (133), neighbour solicitation/advertisement (135, 136).
const NDP_TYPES: [u8; 6] = [130, 131, 132, 133, 135, 136];

/// Largest number of ports in one `-m multiport` match (a range counts two).
const MULTIPORT_SLOTS: usize = 15;

pub(super) struct Ctx<'a> {
    pub(super) state: &'a DesiredState,
    pub(super) family: Family,
    used: &'a mut BTreeSet<IpSetId>,
    /// Per-policy chains already rendered: (policy, direction) → chain name.
    policy_chains: BTreeMap<(String, Direction), String>,
    /// Prefixes of the per-policy chains (ingress, egress).
    policy_prefixes: (&'static str, &'static str),
    /// Partitions of endpoint directions (shared by both families); `None`: render tiers
    /// policy by policy.
    pub(super) partitions: Option<&'a PartitionCache>,
    /// The sets of decision groups ([`super::compiled`]).
    pub(super) sets: BTreeMap<String, IpSet>,
}

impl<'a> Ctx<'a> {
    /// A context whose per-policy chains are named `PREFIX` + hash, per direction
    /// (ingress, egress).
    pub(super) fn new(
        state: &'a DesiredState,
        family: Family,
        used: &'a mut BTreeSet<IpSetId>,
        policy_prefixes: (&'static str, &'static str),
        partitions: Option<&'a PartitionCache>,
    ) -> Self {
        Self {
            state,
            family,
            used,
            policy_chains: BTreeMap::new(),
            policy_prefixes,
            partitions,
            sets: BTreeMap::new(),
        }
    }

    fn set(&mut self, id: &IpSetId) -> String {
        self.used.insert(id.clone());
        set_name(id, set_type_of(self.state.ipsets.get(id)), self.family)
    }
}

pub(super) fn render(
    state: &DesiredState,
    family: Family,
    out: &mut FamilyRules,
    used: &mut BTreeSet<IpSetId>,
    partitions: &PartitionCache,
) {
    let mut ctx = Ctx::new(
        state,
        family,
        used,
        ("SERVAL-PI-", "SERVAL-PO-"),
        Some(partitions),
    );
    let t = out.table(Table::Filter);
    for (chain, builtin) in [
        (chains::FORWARD, "FORWARD"),
        (chains::INPUT, "INPUT"),
        (chains::OUTPUT, "OUTPUT"),
    ] {
        t.chain(chains::SVC_REJECT);
        t.push(
            chain,
            "-m conntrack --ctstate NEW -j SERVAL-SVC-REJECT".to_owned(),
        );
        t.hooks.insert(Hook::new(builtin, chain));
    }
    let clear = format!("-j MARK --set-xmark 0x0/{:#x}", MARK_ACCEPT | MARK_PASS);
    t.push(chains::FORWARD, clear.clone());
    t.push(chains::INPUT, clear);
    if family == Family::V6 {
        // Neighbour discovery, router solicitation and MLD from link-local addresses: never
        // subject to anti-spoofing or policy (as Calico allows them to the host).
        for icmp_type in NDP_TYPES {
            t.push(
                chains::INPUT,
                format!("-p ipv6-icmp -m icmp6 --icmpv6-type {icmp_type} -j ACCEPT"),
            );
        }
    }

    let mut from_rules = Vec::new();
    let mut to_rules = Vec::new();
    for (key, (ep, pol)) in &state.endpoints {
        if ep.iface.is_empty() {
            tracing::debug!(endpoint = %key, "no host interface yet; not rendered");
            continue;
        }
        let name = key.to_string();
        let fw = hashed_chain("SERVAL-FW-", &[&name]);
        let tw = hashed_chain("SERVAL-TW-", &[&name]);
        let addrs: Vec<String> = ep
            .addrs
            .iter()
            .filter(|a| Family::of(a) == family)
            .map(ToString::to_string)
            .collect();
        let own = Own {
            name: &name,
            addrs: &ep.addrs,
        };
        endpoint_chain(
            &mut ctx,
            t,
            &fw,
            &own,
            pol,
            Direction::Egress,
            Some(&addrs),
            true,
        );
        endpoint_chain(&mut ctx, t, &tw, &own, pol, Direction::Ingress, None, true);
        let c = comment(&name);
        from_rules.push(format!("-i {} {c} -j {fw}", ep.iface));
        to_rules.push(format!("-o {} {c} -j {tw}", ep.iface));
        t.push(chains::INPUT, format!("-i {} {c} -j {fw}", ep.iface));
        t.push(chains::OUTPUT, format!("-o {} {c} -j RETURN", ep.iface));
    }
    for rule in from_rules.into_iter().chain(to_rules) {
        t.push(chains::FORWARD, rule);
    }
    let accepted = format!("-m mark --mark {MARK_ACCEPT:#x}/{MARK_ACCEPT:#x}");
    t.push(chains::FORWARD, format!("{accepted} -j ACCEPT"));
    // A pod reaching its own node, after its egress policy: FelixConfiguration
    // defaultEndpointToHostAction (Return: on to the host endpoint rules below).
    match state.endpoint_to_host {
        EndpointToHostAction::Accept => t.push(chains::INPUT, format!("{accepted} -j ACCEPT")),
        EndpointToHostAction::Drop => t.push(
            chains::INPUT,
            format!(
                "{accepted} {} -j DROP",
                comment("defaultEndpointToHostAction Drop")
            ),
        ),
        EndpointToHostAction::Return => {}
    }

    // Host endpoints: INPUT (ingress) and OUTPUT (egress), after the workload rules.
    for (name, hep) in &state.host_endpoints {
        let hi = hashed_chain("SERVAL-HI-", &[name]);
        let ho = hashed_chain("SERVAL-HO-", &[name]);
        let Some((ins, outs)) = host_endpoint_matches(hep, family) else {
            continue;
        };
        let owner = format!("host endpoint {name}");
        let own = Own {
            name: &owner,
            addrs: &hep.addrs,
        };
        endpoint_chain(
            &mut ctx,
            t,
            &hi,
            &own,
            &hep.policy,
            Direction::Ingress,
            None,
            false,
        );
        endpoint_chain(
            &mut ctx,
            t,
            &ho,
            &own,
            &hep.policy,
            Direction::Egress,
            None,
            false,
        );
        let c = comment(&format!("host endpoint {name}"));
        for m in ins {
            t.push(chains::INPUT, format!("{m} {c} -j {hi}"));
        }
        for m in outs {
            t.push(chains::OUTPUT, format!("{m} {c} -j {ho}"));
        }
    }
    out.ipsets.extend(std::mem::take(&mut ctx.sets));
}

/// The matches selecting a host endpoint's packets (alternatives), for ingress and egress:
/// its interface; without one (or `*`), its expected addresses of this family; with neither,
/// every interface but `lo`. `None`: addresses, but none of this family.
pub(super) fn host_endpoint_matches(
    hep: &HostEndpointState,
    family: Family,
) -> Option<(Vec<String>, Vec<String>)> {
    match hep.iface.as_deref() {
        Some(iface) if iface != "*" => {
            Some((vec![format!("-i {iface}")], vec![format!("-o {iface}")]))
        }
        _ if !hep.addrs.is_empty() => {
            let addrs: Vec<_> = hep
                .addrs
                .iter()
                .filter(|a| Family::of(a) == family)
                .collect();
            if addrs.is_empty() {
                return None;
            }
            Some((
                addrs.iter().map(|a| format!("-d {a}")).collect(),
                addrs.iter().map(|a| format!("-s {a}")).collect(),
            ))
        }
        _ => Some((vec!["! -i lo".to_owned()], vec!["! -o lo".to_owned()])),
    }
}

/// Whose chain: the endpoint's name (set names) and its own addresses (local-side rules).
struct Own<'a> {
    name: &'a str,
    addrs: &'a [IpAddr],
}

/// One endpoint's chain for one direction. `anti_spoof`: the addresses the endpoint may send
/// from (egress of workloads). `workload`: with no tier, allow (workloads) or deny (hosts,
/// after the failsafe ports). Tiers are rendered from their partition
/// ([`super::compiled`]) unless it cannot express them.
#[expect(
    clippy::too_many_arguments,
    reason = "one call per endpoint kind; a struct would only rename them"
)]
fn endpoint_chain(
    ctx: &mut Ctx<'_>,
    t: &mut TableRules,
    chain: &str,
    own: &Own<'_>,
    pol: &EndpointPolicy,
    dir: Direction,
    anti_spoof: Option<&[String]>,
    workload: bool,
) {
    t.chain(chain);
    t.push(
        chain,
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    );
    t.push(chain, "-m conntrack --ctstate INVALID -j DROP");
    t.push(
        chain,
        format!("-j MARK --set-xmark 0x0/{:#x}", MARK_ACCEPT | MARK_PASS),
    );
    if let Some(addrs) = anti_spoof {
        match addrs {
            [] => t.push(
                chain,
                format!(
                    "{} -j DROP",
                    comment("anti-spoofing: no address of this family")
                ),
            ),
            [addr] => t.push(
                chain,
                format!("! -s {addr} {} -j DROP", comment("anti-spoofing")),
            ),
            many => {
                // Accept-list: return for each own address is not possible mid-chain, so mark.
                for addr in many {
                    t.push(
                        chain,
                        format!("-s {addr} -j MARK --set-xmark {MARK_PASS:#x}/{MARK_PASS:#x}"),
                    );
                }
                t.push(
                    chain,
                    format!(
                        "-m mark --mark 0x0/{MARK_PASS:#x} {} -j DROP",
                        comment("anti-spoofing")
                    ),
                );
            }
        }
    }
    if !workload {
        let failsafe = match dir {
            Direction::Ingress => &ctx.state.failsafe.inbound,
            Direction::Egress => &ctx.state.failsafe.outbound,
        };
        for fs in failsafe {
            if let Some(rule) = failsafe_rule(fs, dir, ctx.family) {
                t.push(chain, rule);
            }
        }
    }
    let tiers = pol.direction(dir);
    if !tiers.is_empty() {
        match super::compiled::render(ctx, t, chain, own.name, own.addrs, workload, tiers, dir) {
            Ok(()) => return,
            Err(why) => tracing::debug!(
                endpoint = own.name,
                ?dir,
                %why,
                "policy rendered policy by policy"
            ),
        }
    }
    for tier in tiers {
        tier_rules(ctx, t, chain, tier, dir);
    }
    if !workload && tiers.is_empty() {
        t.push(
            chain,
            format!("{} -j DROP", comment("host endpoint: no policy")),
        );
    } else {
        t.push(
            chain,
            format!(
                "{} -j MARK --set-xmark {MARK_ACCEPT:#x}/{MARK_ACCEPT:#x}",
                comment("allowed: no tier decided")
            ),
        );
    }
}

fn failsafe_rule(fs: &FailsafePort, dir: Direction, family: Family) -> Option<String> {
    failsafe_accept(fs, dir, "--dport", family, "failsafe")
}

/// `-j ACCEPT` for a failsafe port: `port_flag` `--dport` for the port itself, `--sport` for
/// its replies; the port's network is the remote side of a packet travelling in `dir`
/// (ingress: source, egress: destination). `None` when the network is of the other family.
pub(super) fn failsafe_accept(
    fs: &FailsafePort,
    dir: Direction,
    port_flag: &str,
    family: Family,
    why: &str,
) -> Option<String> {
    let net = match fs.net {
        Some(net) if Family::of(&net.addr()) != family => return None,
        Some(net) => match dir {
            Direction::Ingress => format!(" -s {net}"),
            Direction::Egress => format!(" -d {net}"),
        },
        None => String::new(),
    };
    let proto = fs.protocol.as_str().to_ascii_lowercase();
    Some(format!(
        "-p {proto}{net} {port_flag} {} {} -j ACCEPT",
        fs.port,
        comment(why)
    ))
}

pub(super) fn tier_rules(
    ctx: &mut Ctx<'_>,
    t: &mut TableRules,
    chain: &str,
    tier: &TierRules,
    dir: Direction,
) {
    t.push(chain, format!("-j MARK --set-xmark 0x0/{MARK_PASS:#x}"));
    for policy in &tier.policies {
        let pchain = policy_chain(ctx, t, policy, dir);
        t.push(
            chain,
            format!(
                "-m mark --mark 0x0/{MARK_PASS:#x} {} -j {pchain}",
                comment(&policy.name.to_string())
            ),
        );
        t.push(
            chain,
            format!("-m mark --mark {MARK_ACCEPT:#x}/{MARK_ACCEPT:#x} -j RETURN"),
        );
    }
    if tier.default_action == EndOfTier::Deny {
        t.push(
            chain,
            format!(
                "-m mark --mark 0x0/{MARK_PASS:#x} {} -j DROP",
                comment(&format!("end of tier {}", tier.name))
            ),
        );
    }
}

/// The chain of one policy in one direction, rendered once and shared.
fn policy_chain(
    ctx: &mut Ctx<'_>,
    t: &mut TableRules,
    policy: &PolicyRules,
    dir: Direction,
) -> String {
    let id = policy.name.to_string();
    if let Some(chain) = ctx.policy_chains.get(&(id.clone(), dir)) {
        return chain.clone();
    }
    let prefix = match dir {
        Direction::Ingress => ctx.policy_prefixes.0,
        Direction::Egress => ctx.policy_prefixes.1,
    };
    let chain = hashed_chain(prefix, &[&id]);
    ctx.policy_chains.insert((id.clone(), dir), chain.clone());
    t.chain(&chain);
    for rule in &policy.rules {
        let Some(alts) = rule_matches(ctx, &rule.r#match) else {
            continue;
        };
        let c = comment(&rule.id.to_string());
        let with = |alt: &str, target: &str| {
            if alt.is_empty() {
                format!("{c} {target}")
            } else {
                format!("{alt} {c} {target}")
            }
        };
        match rule.action {
            Action::Allow => {
                for alt in &alts {
                    t.push(
                        &chain,
                        with(
                            alt,
                            &format!("-j MARK --set-xmark {MARK_ACCEPT:#x}/{MARK_ACCEPT:#x}"),
                        ),
                    );
                }
                t.push(
                    &chain,
                    format!("-m mark --mark {MARK_ACCEPT:#x}/{MARK_ACCEPT:#x} -j RETURN"),
                );
            }
            Action::Deny => {
                for alt in &alts {
                    t.push(&chain, with(alt, "-j DROP"));
                }
            }
            Action::Pass => {
                for alt in &alts {
                    t.push(
                        &chain,
                        with(
                            alt,
                            &format!("-j MARK --set-xmark {MARK_PASS:#x}/{MARK_PASS:#x}"),
                        ),
                    );
                }
                t.push(
                    &chain,
                    format!("-m mark --mark {MARK_PASS:#x}/{MARK_PASS:#x} -j RETURN"),
                );
            }
            Action::Log => {
                let prefix: String = format!("serval {id}")
                    .chars()
                    .filter(|c| !matches!(c, '"' | '\\'))
                    .take(60)
                    .collect();
                for alt in &alts {
                    t.push(
                        &chain,
                        with(
                            alt,
                            &format!(
                                "-j NFLOG --nflog-group {NFLOG_GROUP} --nflog-prefix \"{prefix}\""
                            ),
                        ),
                    );
                }
            }
        }
    }
    chain
}

fn proto_name(p: IpProto) -> String {
    match p {
        IpProto::Tcp => "tcp".into(),
        IpProto::Udp => "udp".into(),
        IpProto::Sctp => "sctp".into(),
        IpProto::Icmp => "icmp".into(),
        IpProto::IcmpV6 => "ipv6-icmp".into(),
        IpProto::UdpLite => "udplite".into(),
        IpProto::Other(n) => n.to_string(),
    }
}

fn icmp_proto(family: Family) -> IpProto {
    match family {
        Family::V4 => IpProto::Icmp,
        Family::V6 => IpProto::IcmpV6,
    }
}

pub(super) fn icmp_match(family: Family, m: &IcmpMatch, negate: bool) -> String {
    let (module, opt) = match family {
        Family::V4 => ("icmp", "--icmp-type"),
        Family::V6 => ("icmp6", "--icmpv6-type"),
    };
    let not = if negate { "! " } else { "" };
    match m.code {
        Some(code) => format!("-m {module} {not}{opt} {}/{code}", m.type_),
        None => format!("-m {module} {not}{opt} {}", m.type_),
    }
}

pub(super) fn port_list(ranges: &[PortRange]) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut slots = 0;
    for r in ranges {
        let (text, cost) = if r.first == r.last {
            (r.first.to_string(), 1)
        } else {
            (format!("{}:{}", r.first, r.last), 2)
        };
        if slots + cost > MULTIPORT_SLOTS {
            chunks.push(current.join(","));
            current.clear();
            slots = 0;
        }
        current.push(text);
        slots += cost;
    }
    if !current.is_empty() {
        chunks.push(current.join(","));
    }
    chunks
}

/// The alternatives (OR) of one port side: multiport chunks and named-port sets; `None` when
/// any port matches.
fn port_alternatives(
    ctx: &mut Ctx<'_>,
    ranges: &[PortRange],
    named: &[IpSetId],
    side: &str,
) -> Option<Vec<String>> {
    if ranges.is_empty() && named.is_empty() {
        return None;
    }
    let flag = if side == "src" {
        "--sports"
    } else {
        "--dports"
    };
    let mut alts: Vec<String> = port_list(ranges)
        .into_iter()
        .map(|list| format!("-m multiport {flag} {list}"))
        .collect();
    for id in named {
        alts.push(format!("-m set --match-set {} {side},{side}", ctx.set(id)));
    }
    Some(alts)
}

/// The iptables match texts (alternatives, OR) for a rule match in this family; `None` when
/// it cannot match in this family.
fn rule_matches(ctx: &mut Ctx<'_>, m: &RuleMatch) -> Option<Vec<String>> {
    let family = ctx.family;
    if let Some(v) = m.ip_version
        && v != if family == Family::V4 { 4 } else { 6 }
    {
        return None;
    }
    let fam_icmp = icmp_proto(family);
    let mut protocol = m.protocol;
    if matches!(protocol, Some(IpProto::Icmp | IpProto::IcmpV6)) && protocol != Some(fam_icmp) {
        return None;
    }
    if m.icmp.is_some() {
        match protocol {
            None => protocol = Some(fam_icmp),
            Some(p) if p != fam_icmp => return None,
            Some(_) => {}
        }
    }
    let has_ports = !(m.src_ports.is_empty()
        && m.dst_ports.is_empty()
        && m.not_src_ports.is_empty()
        && m.not_dst_ports.is_empty());

    // Protocol alternatives, each with an optional trailing match: ports without a protocol
    // mean any port-carrying protocol; notICMP without a protocol means "not ICMP, or ICMP
    // of another type".
    let icmp_name = proto_name(fam_icmp);
    let protos: Vec<(Option<String>, Option<String>)> = match (protocol, &m.not_icmp) {
        (Some(p), Some(n)) if p == fam_icmp => vec![(
            Some(format!("-p {}", proto_name(p))),
            Some(icmp_match(family, n, true)),
        )],
        (Some(p), _) => vec![(Some(format!("-p {}", proto_name(p))), None)],
        (None, _) if has_ports => ["tcp", "udp", "sctp"]
            .iter()
            .map(|p| (Some(format!("-p {p}")), None))
            .collect(),
        (None, Some(n)) => vec![
            (Some(format!("! -p {icmp_name}")), None),
            (
                Some(format!("-p {icmp_name}")),
                Some(icmp_match(family, n, true)),
            ),
        ],
        (None, None) => vec![(None, None)],
    };

    let mut common: Vec<String> = Vec::new();
    let mut protos = protos;
    if let Some(q) = m.not_protocol {
        let excluded = format!("-p {}", proto_name(q));
        if protos
            .iter()
            .any(|(p, _)| p.as_deref().is_some_and(|p| p.starts_with("-p ")))
        {
            // Fixed protocols: the exclusion removes alternatives instead of adding a match.
            protos.retain(|(p, _)| p.as_deref() != Some(excluded.as_str()));
            if protos.is_empty() {
                return None;
            }
        } else {
            common.push(format!("! {excluded}"));
        }
    }
    for id in &m.src_sets {
        common.push(format!("-m set --match-set {} src", ctx.set(id)));
    }
    for id in &m.not_src_sets {
        common.push(format!("-m set ! --match-set {} src", ctx.set(id)));
    }
    for id in &m.dst_sets {
        common.push(format!("-m set --match-set {} dst", ctx.set(id)));
    }
    for id in &m.not_dst_sets {
        common.push(format!("-m set ! --match-set {} dst", ctx.set(id)));
    }
    for list in port_list(&m.not_src_ports) {
        common.push(format!("-m multiport ! --sports {list}"));
    }
    for list in port_list(&m.not_dst_ports) {
        common.push(format!("-m multiport ! --dports {list}"));
    }
    for id in &m.not_src_named_port_sets {
        common.push(format!("-m set ! --match-set {} src,src", ctx.set(id)));
    }
    for id in &m.not_dst_named_port_sets {
        common.push(format!("-m set ! --match-set {} dst,dst", ctx.set(id)));
    }
    if let Some(icmp) = &m.icmp {
        common.push(icmp_match(family, icmp, false));
    }
    let src_alts = port_alternatives(ctx, &m.src_ports, &m.src_named_port_sets, "src");
    let dst_alts = port_alternatives(ctx, &m.dst_ports, &m.dst_named_port_sets, "dst");

    let src_alts = src_alts.unwrap_or_else(|| vec![String::new()]);
    let dst_alts = dst_alts.unwrap_or_else(|| vec![String::new()]);
    let mut out = Vec::new();
    for (proto, tail) in &protos {
        for s in &src_alts {
            for d in &dst_alts {
                let parts: Vec<&str> = proto
                    .iter()
                    .map(String::as_str)
                    .chain(common.iter().map(String::as_str))
                    .chain([s.as_str(), d.as_str()])
                    .chain(tail.iter().map(String::as_str))
                    .filter(|x| !x.is_empty())
                    .collect();
                out.push(parts.join(" "));
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(family: Family, m: &RuleMatch) -> Option<Vec<String>> {
        let state = DesiredState::default();
        let mut used = BTreeSet::new();
        let mut ctx = Ctx::new(
            &state,
            family,
            &mut used,
            ("SERVAL-PI-", "SERVAL-PO-"),
            None,
        );
        rule_matches(&mut ctx, m)
    }

    #[test]
    fn family_specific_rules_are_skipped_in_the_other_family() {
        let v6_only = RuleMatch {
            ip_version: Some(6),
            ..Default::default()
        };
        assert_eq!(matches(Family::V4, &v6_only), None);
        assert_eq!(matches(Family::V6, &v6_only), Some(vec![String::new()]));
        let icmp = RuleMatch {
            protocol: Some(IpProto::Icmp),
            icmp: Some(IcmpMatch {
                type_: 8,
                code: Some(0),
            }),
            ..Default::default()
        };
        assert_eq!(
            matches(Family::V4, &icmp),
            Some(vec!["-p icmp -m icmp --icmp-type 8/0".to_owned()])
        );
        assert_eq!(matches(Family::V6, &icmp), None);
    }

    #[test]
    fn protocol_alternatives() {
        // Ports without a protocol: every port-carrying protocol.
        let ports = RuleMatch {
            dst_ports: vec![PortRange::single(80)],
            ..Default::default()
        };
        let alts = matches(Family::V4, &ports).unwrap();
        assert_eq!(alts.len(), 3, "{alts:?}");
        assert!(alts[2].starts_with("-p sctp -m multiport --dports 80"));
        // ... minus an excluded one, which then needs no `! -p`.
        let not_udp = RuleMatch {
            not_protocol: Some(IpProto::Udp),
            ..ports.clone()
        };
        let alts = matches(Family::V4, &not_udp).unwrap();
        assert_eq!(alts.len(), 2, "{alts:?}");
        assert!(alts.iter().all(|a| !a.contains("udp")), "{alts:?}");
        // A protocol equal to the excluded one never matches.
        let contradiction = RuleMatch {
            protocol: Some(IpProto::Tcp),
            not_protocol: Some(IpProto::Tcp),
            ..Default::default()
        };
        assert_eq!(matches(Family::V4, &contradiction), None);
        // No protocol: the exclusion is a negated match.
        let only_not = RuleMatch {
            not_protocol: Some(IpProto::Tcp),
            ..Default::default()
        };
        assert_eq!(
            matches(Family::V6, &only_not),
            Some(vec!["! -p tcp".to_owned()])
        );
        // notICMP without a protocol: "not ICMP, or ICMP of another type".
        let not_icmp = RuleMatch {
            not_icmp: Some(IcmpMatch {
                type_: 128,
                code: None,
            }),
            ..Default::default()
        };
        assert_eq!(
            matches(Family::V6, &not_icmp).unwrap(),
            [
                "! -p ipv6-icmp",
                "-p ipv6-icmp -m icmp6 ! --icmpv6-type 128"
            ]
        );
    }

    #[test]
    fn ports_and_named_ports_are_one_or_list() {
        let id = IpSetId("p:1".into());
        let m = RuleMatch {
            protocol: Some(IpProto::Tcp),
            dst_ports: vec![PortRange {
                first: 80,
                last: 81,
            }],
            dst_named_port_sets: vec![id.clone()],
            src_sets: vec![IpSetId("s:1".into())],
            ..Default::default()
        };
        let alts = matches(Family::V4, &m).unwrap();
        assert_eq!(alts.len(), 2, "{alts:?}");
        assert!(alts[0].ends_with("-m multiport --dports 80:81"), "{alts:?}");
        assert!(alts[1].contains("dst,dst"), "{alts:?}");
        // The source set is required by both alternatives (AND).
        assert!(alts.iter().all(|a| a.contains(" src")), "{alts:?}");
    }

    #[test]
    fn port_lists_fit_multiport() {
        let ranges: Vec<PortRange> = (1..=20).map(PortRange::single).collect();
        let chunks = port_list(&ranges);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].split(',').count(), 15);
        let ranges = vec![
            PortRange {
                first: 80,
                last: 90,
            },
            PortRange::single(443),
        ];
        assert_eq!(port_list(&ranges), ["80:90,443"]);
        let many: Vec<PortRange> = (0..8)
            .map(|i| PortRange {
                first: i * 10,
                last: i * 10 + 5,
            })
            .collect();
        assert_eq!(port_list(&many).len(), 2, "a range takes two slots");
    }
}
