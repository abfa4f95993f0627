//! Randomized differential test of the policy compiler: for random models
//! ([`serval_calc::testing`]: namespaces and pods with random labels and named ports, random
//! Kubernetes NetworkPolicies and Calico NetworkPolicies / GlobalNetworkPolicies in random
//! tiers with Allow/Deny/Pass/Log, nets and notNets, selectors and notSelectors, ports,
//! notPorts, ranges, named ports, protocols, notProtocol, ipVersion, ICMP and notICMP, source
//! ports and source named ports; shrinking proptest strategies) and every packet (several
//! source ports) between an endpoint of `node-1` and any pod or outside address (IPv4 and
//! IPv6), the emulated BPF lookups on
//! `compile(desired_state(model, "node-1"))` give the reference evaluator's verdict for that
//! endpoint's leg, and the rule that decided.

use std::net::IpAddr;

use proptest::prelude::*;
use serval_calc::compile::{
    self, CompiledPolicy, PolicyIndex, PolicyVerdict, RuleRef, diff, policy_port,
};
use serval_calc::evaluator::{DecidedBy, Decision, Evaluator, Packet};
use serval_calc::policy::{Direction, IpProto};
use serval_calc::testing::{model_of, strategy::case};
use serval_calc::{Model, desired_state};

/// Addresses outside every pod (the pods are 10.0.0.k+1 and fd00:10::k+1, k < 6).
const OUTSIDE: [&str; 6] = [
    "10.0.0.200",
    "192.0.2.9",
    "172.16.0.1",
    "fd00:10::ff",
    "2001:db8::9",
    "2001:db9::1",
];

fn expected_ref(d: &Decision) -> RuleRef {
    match &d.by {
        DecidedBy::Rule(id) => RuleRef::Rule(id.clone()),
        DecidedBy::EndOfTier(t) => RuleRef::EndOfTier(t.clone()),
        DecidedBy::NoPolicy => RuleRef::NoPolicy,
        DecidedBy::PassedAllTiers => RuleRef::PassedAllTiers,
        other => panic!("unexpected decision for a workload leg: {other:?}"),
    }
}

/// Packets of one family between `local` and `remote` (both directions are built by the
/// caller): `(protocol, dst port, icmp)`.
/// `(protocol, dst port, icmp type and code)`.
type Probe = (IpProto, u16, Option<(u8, u8)>);

fn probes(v4: bool) -> Vec<Probe> {
    let mut v = Vec::new();
    for port in [53u16, 80, 85, 443, 1000, 8050, 8080, 40000] {
        v.push((IpProto::Tcp, port, None));
    }
    for port in [53u16, 80, 8090] {
        v.push((IpProto::Udp, port, None));
    }
    v.push((IpProto::Sctp, 80, None));
    v.push((IpProto::Sctp, 53, None));
    v.push((IpProto::Other(47), 0, None));
    if v4 {
        for (t, c) in [(8u8, 0u8), (3, 1), (3, 2), (0, 0)] {
            v.push((IpProto::Icmp, 0, Some((t, c))));
        }
    } else {
        for (t, c) in [(128u8, 0u8), (1, 3), (1, 4), (129, 0)] {
            v.push((IpProto::IcmpV6, 0, Some((t, c))));
        }
    }
    v
}

fn packet(src: IpAddr, dst: IpAddr, proto: IpProto, port: u16, icmp: Option<(u8, u8)>) -> Packet {
    match icmp {
        Some((t, c)) => Packet::icmp(src, dst, t, c),
        None => Packet::l4(src, dst, proto, port),
    }
}

/// Checks every leg of node-1's endpoints; returns a description of the first mismatch.
fn check(model: &Model, compiled: &CompiledPolicy) -> Result<usize, String> {
    let ev = Evaluator::new(model);
    let index = PolicyIndex::new(compiled);
    let state = desired_state(model, Some("node-1"));
    let mut remotes: Vec<IpAddr> = ev
        .state()
        .endpoints
        .values()
        .flat_map(|(e, _)| e.addrs.clone())
        .collect();
    remotes.extend(OUTSIDE.iter().map(|a| a.parse::<IpAddr>().unwrap()));
    let mut checked = 0;
    for (key, (ep, _)) in &state.endpoints {
        let ep_id = *compiled
            .endpoints
            .get(key)
            .ok_or_else(|| format!("no ep_id for {key}"))?;
        for &local in &ep.addrs {
            for &remote in remotes
                .iter()
                .filter(|r| r.is_ipv4() == local.is_ipv4() && !ep.addrs.contains(r))
            {
                for (proto, port, icmp) in probes(local.is_ipv4()) {
                    let sports: &[u16] = if proto.has_ports() {
                        &[40000, 53, 80, 1500]
                    } else {
                        &[0]
                    };
                    for (&sport, dir) in sports
                        .iter()
                        .flat_map(|s| [(s, Direction::Ingress), (s, Direction::Egress)])
                    {
                        let mut p = match dir {
                            Direction::Ingress => packet(remote, local, proto, port, icmp),
                            Direction::Egress => packet(local, remote, proto, port, icmp),
                        };
                        if proto.has_ports() {
                            p.src_port = sport;
                        }
                        let v = ev.evaluate(&p);
                        let want = match dir {
                            Direction::Ingress => v.ingress.as_ref(),
                            Direction::Egress => v.egress.as_ref(),
                        }
                        .ok_or_else(|| format!("evaluator has no {dir:?} leg for {p:?}"))?;
                        let (verdict, rule) = index.lookup_with_sport(
                            ep_id,
                            dir,
                            remote,
                            p.protocol.number(),
                            p.src_port,
                            policy_port(p.protocol, p.dst_port, p.icmp),
                        );
                        let got_ref = compiled.rules.get(&rule);
                        let want_ref = expected_ref(want);
                        if (verdict == PolicyVerdict::Allow) != want.allowed
                            || got_ref != Some(&want_ref)
                        {
                            return Err(format!(
                                "{key} {dir:?} {}:{} -> {} {}/{} {:?}: evaluator {} by {want_ref}, compiled {verdict:?} by {} (rule id {rule}, identity {})",
                                p.src,
                                p.src_port,
                                p.dst,
                                p.protocol,
                                p.dst_port,
                                p.icmp,
                                if want.allowed { "allows" } else { "denies" },
                                got_ref.map_or("nothing".to_string(), |r| r.to_string()),
                                index.identity(remote),
                            ));
                        }
                        checked += 1;
                    }
                }
            }
        }
    }
    Ok(checked)
}

/// Applies a delta to the old policy's maps and checks the result is the new policy's.
fn delta_applies(old: &CompiledPolicy, new: &CompiledPolicy) -> Result<(), String> {
    let d = diff(old, new);
    let mut sport: std::collections::BTreeMap<_, _> =
        old.sport_entries.iter().map(|e| (e.key(), *e)).collect();
    for e in &d.upsert_sport_entries {
        sport.insert(e.key(), *e);
    }
    for e in &d.delete_sport_entries {
        sport.remove(&e.key());
    }
    if sport.into_values().collect::<Vec<_>>() != new.sport_entries {
        return Err("old source-port entries + delta != new ones".into());
    }
    let mut entries: std::collections::BTreeMap<_, _> =
        old.entries.iter().map(|e| (e.key(), *e)).collect();
    for e in &d.upsert_entries {
        entries.insert(e.key(), *e);
    }
    for e in &d.delete_entries {
        entries.remove(&e.key());
    }
    let got: Vec<_> = entries.into_values().collect();
    if got != new.entries {
        return Err("old entries + delta != new entries".into());
    }
    let mut ids: std::collections::BTreeMap<_, _> = old.identities.iter().copied().collect();
    ids.extend(d.upsert_identities.iter().copied());
    for n in &d.delete_identities {
        ids.remove(n);
    }
    let got: Vec<_> = ids.into_iter().collect();
    if got != new.identities {
        return Err("old identities + delta != new identities".into());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn compiled_lookups_equal_the_reference_evaluator(c in case()) {
        let yaml = c.yaml();
        let model = model_of(&yaml);
        let state = desired_state(&model, Some("node-1"));
        let compiled = compile::compile(&state);
        let checked = check(&model, &compiled);
        prop_assert!(checked.is_ok(), "{}\nmodel:\n{yaml}", checked.unwrap_err());

        // Recompiling with the previous ids changes nothing.
        let again = compile::compile_incremental(&state, &compiled);
        prop_assert!(diff(&compiled, &again).is_empty());

        // Drop the last policy: the incremental compile is still exact, and the delta
        // turns the old maps into the new ones.
        let mut smaller = c.clone();
        if smaller.calico.pop().is_none() {
            smaller.k8s.pop();
        }
        let yaml2 = smaller.yaml();
        let model2 = model_of(&yaml2);
        let next = compile::compile_incremental(&desired_state(&model2, Some("node-1")), &compiled);
        let checked = check(&model2, &next);
        prop_assert!(checked.is_ok(), "after removing a policy: {}\nmodel:\n{yaml2}", checked.unwrap_err());
        let applied = delta_applies(&compiled, &next);
        prop_assert!(applied.is_ok(), "{}", applied.unwrap_err());
        // Identities that still exist keep their ids.
        for (id, class) in &next.classes {
            if let Some((old_id, _)) = compiled.classes.iter().find(|(_, c)| *c == class) {
                prop_assert_eq!(old_id, id);
            }
        }
    }
}
