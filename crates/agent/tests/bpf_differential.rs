//! Randomized differential test of the LOADED eBPF programs against the reference evaluator.
//!
//! For seeded random models ([`serval_calc::testing`]: pods with random labels and named
//! ports on two nodes, random Kubernetes NetworkPolicies and Calico NetworkPolicies /
//! GlobalNetworkPolicies in random tiers with Allow/Deny/Pass/Log, orders, selectors and notSelectors, namespaceSelectors,
//! nets and notNets, ports, notPorts, port ranges and named ports on either side — source
//! ports included — protocols, notProtocol, ipVersion, ICMP type/code and notICMP), the
//! policy of `node-1` is compiled by serval_calc's compiler, turned into map contents by the
//! agent's eBPF driver ([`desired_contents`]) and written into the maps of the real, verified
//! `serval_tc` object. Random packets (IPv4 and IPv6; TCP, UDP, SCTP, ICMP/ICMPv6 and GRE;
//! random source and destination ports) between a `node-1` endpoint and pods or outside
//! addresses then go through `serval_from_ep` (the endpoint's egress) or `serval_to_ep` (its
//! ingress) with BPF_PROG_TEST_RUN, and the program's verdict must equal the evaluator's
//! decision for that leg, for every packet.
//!
//! The seed is fixed (`SERVAL_DIFF_SEED` overrides it, `SERVAL_DIFF_CASES` the number of
//! models), so a failure is reproducible; it prints the model, the packet and both
//! verdicts. The programs are loaded once with private (unpinned) maps; each model's entries
//! replace the previous model's, and the conntrack entry a packet creates is removed before
//! the next packet, so every packet is judged as the first of a new flow.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use aya::maps::lpm_trie::Key;
use serval_agent::dataplane::bpf::{HostView, MapContents, desired_contents, polsport};
use serval_calc::compile::{self, CompiledPolicy, PolicyIndex, policy_port};
use serval_calc::desired_state;
use serval_calc::evaluator::{Evaluator, Packet};
use serval_calc::policy::{Direction, IpProto};
use serval_calc::testing::{Case, Rng, model_of};
use serval_dp_bpf::abi::{Addr, EpVal, PolMatch, drop_reason_name};
use serval_dp_bpf::{
    Dataplane, Hook, LoadOptions, LogLevel, TC_ACT_OK, TC_ACT_REDIRECT, TEST_RUN_IFINDEX,
};
use serval_sys::testing::require_root;

// ---- random models: serval_calc::testing ---------------------------------------------------

/// Addresses outside every pod (none is a node address: workload-to-host is another leg).
const OUTSIDE: [&str; 8] = [
    "10.0.0.200",
    "10.0.0.3",
    "192.0.2.9",
    "172.16.0.1",
    "fd00:10::ff",
    "fd00:10::3",
    "2001:db8::9",
    "2001:db9::1",
];

// ---- random packets ---------------------------------------------------------------------

/// Ports near the edges the generated rules name, and some arbitrary ones.
const PORT_POOL: [u16; 22] = [
    0, 1, 53, 79, 80, 81, 85, 86, 443, 1023, 1024, 8000, 8050, 8080, 8100, 8101, 30000, 32767,
    32768, 40000, 49151, 65535,
];

fn port(rng: &mut Rng) -> u16 {
    if rng.chance(0.8) {
        *rng.pick(&PORT_POOL)
    } else {
        rng.next_u64() as u16
    }
}

fn random_packet(rng: &mut Rng, src: IpAddr, dst: IpAddr) -> Packet {
    let v4 = src.is_ipv4();
    let (sport, dport) = (port(rng), port(rng));
    match rng.below(9) {
        0..=2 => Packet {
            src_port: sport,
            ..Packet::l4(src, dst, IpProto::Tcp, dport)
        },
        3 | 4 => Packet {
            src_port: sport,
            ..Packet::l4(src, dst, IpProto::Udp, dport)
        },
        5 => Packet {
            src_port: sport,
            ..Packet::l4(src, dst, IpProto::Sctp, dport)
        },
        6 => Packet {
            src_port: 0,
            ..Packet::l4(src, dst, IpProto::Other(47), 0)
        },
        _ => {
            // No ICMPv6 neighbour discovery (133-137): the programs always pass it.
            let types: &[(u8, u8)] = if v4 {
                &[(8, 0), (0, 0), (3, 1), (3, 2), (3, 3), (11, 0)]
            } else {
                &[(128, 0), (129, 0), (1, 3), (1, 4), (3, 0)]
            };
            let (t, c) = *rng.pick(types);
            Packet::icmp(src, dst, t, c)
        }
    }
}

/// The packet as an Ethernet frame (checksums are not checked by the programs' policy path).
fn frame(p: &Packet) -> Vec<u8> {
    let proto = p.protocol.number();
    let mut l4 = Vec::new();
    match p.protocol {
        IpProto::Tcp => {
            l4.extend(p.src_port.to_be_bytes());
            l4.extend(p.dst_port.to_be_bytes());
            l4.extend(1000u32.to_be_bytes());
            l4.extend(0u32.to_be_bytes());
            l4.extend([5 << 4, 0x02]); // SYN
            l4.extend(64240u16.to_be_bytes());
            l4.extend([0, 0, 0, 0]);
        }
        IpProto::Udp => {
            l4.extend(p.src_port.to_be_bytes());
            l4.extend(p.dst_port.to_be_bytes());
            l4.extend(12u16.to_be_bytes());
            l4.extend([0, 0]);
            l4.extend(*b"data");
        }
        IpProto::Sctp => {
            l4.extend(p.src_port.to_be_bytes());
            l4.extend(p.dst_port.to_be_bytes());
            l4.extend([0, 0x5e, 0x57, 0xa1, 0, 0, 0, 0]);
            l4.extend([0, 3, 0, 8, 1, 2, 3, 4]);
        }
        IpProto::Icmp | IpProto::IcmpV6 => {
            let (t, c) = p.icmp.unwrap_or((0, 0));
            l4.extend([t, c, 0, 0, 0x12, 0x34, 0, 1]);
        }
        _ => l4.extend([0u8; 8]),
    }
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
    match (p.src, p.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend([0x08, 0x00]);
            let total = (20 + l4.len()) as u16;
            let mut ip = vec![0x45, 0];
            ip.extend(total.to_be_bytes());
            ip.extend([0, 1, 0x40, 0, 64, proto, 0, 0]);
            ip.extend(s.octets());
            ip.extend(d.octets());
            let sum: u32 = ip
                .chunks(2)
                .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
                .sum();
            let sum = (sum & 0xffff) + (sum >> 16);
            let sum = !((sum & 0xffff) + (sum >> 16)) as u16;
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
            f.extend(ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend([0x86, 0xdd]);
            f.extend([0x60, 0, 0, 0]);
            f.extend((l4.len() as u16).to_be_bytes());
            f.extend([proto, 64]);
            f.extend(s.octets());
            f.extend(d.octets());
        }
        _ => panic!("mixed families"),
    }
    f.extend(l4);
    f
}

// ---- the maps ---------------------------------------------------------------------------

fn pol_key(k: &compile::EntryKey) -> Key<PolMatch> {
    let (ep, remote, dir, proto, port, prefix) = *k;
    Key::new(prefix, PolMatch::new(ep, remote, dir, proto, port))
}

/// Replaces the policy, source-port table and route entries of `old` with those of `new`.
fn write_maps(dp: &mut Dataplane, old: &MapContents, new: &MapContents) {
    for (k, v) in &new.policy_sport {
        dp.set_policy_sport(&polsport::key(k), v)
            .expect("write source-port entry");
    }
    for k in old
        .policy_sport
        .keys()
        .filter(|k| !new.policy_sport.contains_key(*k))
    {
        dp.remove_policy_sport(&polsport::key(k))
            .expect("remove source-port entry");
    }
    let mut m = dp.maps();
    for k in old.policy.keys().filter(|k| !new.policy.contains_key(*k)) {
        m.remove_policy(&pol_key(k)).expect("remove policy entry");
    }
    for k in old.routes.keys().filter(|k| !new.routes.contains_key(*k)) {
        m.remove_route(&Key::new(k.0, Addr(k.1)))
            .expect("remove route");
    }
    for (k, v) in &new.policy {
        m.set_policy(&pol_key(k), v).expect("write policy entry");
    }
    for (k, v) in &new.routes {
        m.set_route(&Key::new(k.0, Addr(k.1)), v)
            .expect("write route");
    }
}

/// Removes every conntrack entry (at most the one the last packet created).
fn clear_conntrack(dp: &mut Dataplane) {
    let mut m = dp.maps();
    for (k, _) in m.conntrack_entries().expect("read conntrack") {
        m.remove_conntrack(&k).expect("remove conntrack entry");
    }
}

struct Outcome {
    packets: usize,
    allowed: usize,
}

/// One model: compile, write, run `packets` random packets; `Err` describes a mismatch.
fn run_case(
    dp: &mut Dataplane,
    rng: &mut Rng,
    prev: &mut MapContents,
    packets: usize,
) -> Result<Outcome, String> {
    let yaml = Case::random(rng).yaml();
    let model = model_of(&yaml);
    let state = desired_state(&model, Some("node-1"));
    let compiled: CompiledPolicy = compile::compile(&state);
    let contents = desired_contents(&state, &compiled, &HostView::default(), &HashMap::new());
    write_maps(dp, prev, &contents);
    *prev = contents;

    let ev = Evaluator::new(&model);
    let index = PolicyIndex::new(&compiled);
    let locals: Vec<(String, u32, Vec<IpAddr>)> = state
        .endpoints
        .iter()
        .filter_map(|(k, (ep, _))| {
            Some((k.to_string(), *compiled.endpoints.get(k)?, ep.addrs.clone()))
        })
        .collect();
    if locals.is_empty() {
        return Ok(Outcome {
            packets: 0,
            allowed: 0,
        });
    }
    let mut remotes: Vec<IpAddr> = ev
        .state()
        .endpoints
        .values()
        .flat_map(|(e, _)| e.addrs.clone())
        .collect();
    remotes.extend(
        OUTSIDE
            .iter()
            .map(|a| a.parse::<IpAddr>().expect("address")),
    );
    let mut current_ep: Option<u32> = None;
    let mut out = Outcome {
        packets: 0,
        allowed: 0,
    };
    let mut by_ep: BTreeMap<u32, EpVal> = BTreeMap::new();
    for (_, ep_id, addrs) in &locals {
        by_ep.insert(*ep_id, EpVal::new(*ep_id, addrs));
    }
    for _ in 0..packets {
        let (name, ep_id, addrs) = rng.pick(&locals).clone();
        let local = *rng.pick(&addrs);
        let candidates: Vec<IpAddr> = remotes
            .iter()
            .copied()
            .filter(|r| r.is_ipv4() == local.is_ipv4() && !addrs.contains(r))
            .collect();
        let remote = *rng.pick(&candidates);
        let dir = if rng.chance(0.5) {
            Direction::Ingress
        } else {
            Direction::Egress
        };
        let p = match dir {
            Direction::Ingress => random_packet(rng, remote, local),
            Direction::Egress => random_packet(rng, local, remote),
        };
        let v = ev.evaluate(&p);
        let want = match dir {
            Direction::Ingress => v.ingress.as_ref(),
            Direction::Egress => v.egress.as_ref(),
        }
        .ok_or_else(|| format!("evaluator has no {dir:?} leg for {p:?}:\n{yaml}"))?;

        if current_ep != Some(ep_id) {
            dp.maps()
                .set_endpoint(TEST_RUN_IFINDEX, &by_ep[&ep_id])
                .expect("write endpoint");
            current_ep = Some(ep_id);
        }
        let hook = match dir {
            Direction::Ingress => Hook::ToEndpoint,
            Direction::Egress => Hook::FromEndpoint,
        };
        let drops_before = dp.maps().drop_counters().expect("drop counters");
        let run = dp.test_run(hook, &frame(&p)).expect("BPF_PROG_TEST_RUN");
        clear_conntrack(dp);
        let drops_after = dp.maps().drop_counters().expect("drop counters");
        // Passed: TC_ACT_OK, or a redirect of the forwarding fast path (never a reject here:
        // the models have no services).
        let program_allows = run.verdict == TC_ACT_OK || run.verdict == TC_ACT_REDIRECT;
        if program_allows != want.allowed {
            let grew: Vec<&str> = (0..serval_dp_bpf::abi::SV_DROP_REASONS)
                .filter(|r| drops_after.get(*r) != drops_before.get(*r))
                .map(drop_reason_name)
                .collect();
            let (emulated, rule) = index.lookup(
                ep_id,
                dir,
                remote,
                p.protocol.number(),
                policy_port(p.protocol, p.dst_port, p.icmp),
            );
            return Err(format!(
                "MISMATCH for endpoint {name} (ep_id {ep_id}), {dir:?} leg\n\
                 packet: {} {}:{} -> {}:{} icmp {:?}\n\
                 evaluator: {} ({:?})\n\
                 program:   verdict {} ({}; drop reasons counted: {grew:?})\n\
                 compiler's emulated lookup: {emulated:?} by rule {rule} = {:?} (remote identity {})\n\
                 model:\n{yaml}",
                p.protocol,
                p.src,
                p.src_port,
                p.dst,
                p.dst_port,
                p.icmp,
                if want.allowed { "ALLOW" } else { "DENY" },
                want.by,
                run.verdict,
                if program_allows { "ALLOW" } else { "DENY" },
                compiled.rules.get(&rule),
                index.identity(remote),
            ));
        }
        out.packets += 1;
        out.allowed += usize::from(program_allows);
    }
    Ok(out)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
fn loaded_program_verdicts_equal_the_reference_evaluator() {
    if !require_root("eBPF differential test (loads programs, BPF_PROG_TEST_RUN)") {
        return;
    }
    let seed = env_u64("SERVAL_DIFF_SEED", 0x5e7a_1d1f);
    let cases = env_u64("SERVAL_DIFF_CASES", 200);
    let mut dp = Dataplane::load(&LoadOptions {
        pins: None,
        log_level: LogLevel::Off,
        ..LoadOptions::default()
    })
    .expect("load the embedded programs");
    let mut prev = MapContents::default();
    let (mut packets, mut allowed) = (0, 0);
    for case in 0..cases {
        // One generator per case: a failing case is reproduced by its seed alone.
        let case_seed = seed ^ case.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let mut rng = Rng(case_seed);
        match run_case(&mut dp, &mut rng, &mut prev, 40) {
            Ok(o) => {
                packets += o.packets;
                allowed += o.allowed;
            }
            Err(e) => panic!("case {case} (seed {case_seed:#x}):\n{e}"),
        }
    }
    eprintln!("{cases} models, {packets} packets ({allowed} allowed) matched the evaluator");
    // The generator must exercise both outcomes.
    assert!(packets > 1000, "too few packets checked: {packets}");
    assert!(allowed > packets / 10 && allowed < packets * 9 / 10);
}
