//! Dataplane fixtures of the program tests: the embedded objects loaded with private
//! (unpinned) maps, the map entries most tests write (routes, an allow-all policy, service
//! frontends with their backends), test runs and map reads, and a fresh network namespace to
//! run in. Each test keeps its own addresses and policies; these are only the mechanics.

use std::net::IpAddr;

use serval_dp_bpf::{Dataplane, Hook, LoadOptions, LogLevel, MapSizes, Maps, TC_ACT_SHOT, abi::*};

use super::packet::{L4, packet};
use serval_sys::testing::{NetNsGuard, require_root};

/// TCX_NEXT / TC_ACT_UNSPEC: "not finished here" (the next program, then the stack, decides).
pub const NEXT: i32 = -1;

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The prefix length of one address of a's family.
pub fn host_len(a: IpAddr) -> u8 {
    if a.is_ipv4() { 32 } else { 128 }
}

/// Map sizes small enough for many tests loading at once (change fields with `..`).
pub fn small_sizes() -> MapSizes {
    MapSizes {
        nat_frontend: 64,
        nat_backend: 64,
        nat_affinity: 64,
        route: 64,
        conntrack: 1024,
        policy: 64,
        endpoints: 16,
    }
}

/// Map sizes of the host endpoint tests (more policy entries, few of the rest).
pub fn hep_sizes() -> MapSizes {
    MapSizes {
        route: 64,
        policy: 256,
        conntrack: 64,
        nat_frontend: 16,
        nat_backend: 16,
        nat_affinity: 16,
        endpoints: 16,
    }
}

/// The workload/uplink object (serval_tc.c) with private maps.
pub fn load_tc(sizes: MapSizes, log_level: LogLevel) -> Dataplane {
    Dataplane::load(&LoadOptions {
        pins: None,
        sizes,
        log_level,
    })
    .unwrap_or_else(|e| panic!("load the embedded programs ({log_level:?} build): {e}: {e:?}"))
}

/// The host endpoint object (serval_hep.c) with private maps.
pub fn load_hep(sizes: MapSizes, log_level: LogLevel) -> Dataplane {
    Dataplane::load_hep(&LoadOptions {
        pins: None,
        sizes,
        log_level,
    })
    .unwrap_or_else(|e| panic!("load the host endpoint programs ({log_level:?} build): {e}: {e:?}"))
}

/// An sv_routes entry `addr/len` with `identity` and `flags` (SV_RT_F_*).
pub fn route(m: &mut Maps<'_>, addr: IpAddr, len: u8, identity: u32, flags: u32) {
    let val = RouteVal {
        identity,
        flags,
        ..RouteVal::default()
    };
    m.set_route(&route_key(addr, len), &val).unwrap();
}

/// A policy verdict (SV_VERDICT_*) naming `rule_id`.
pub fn verdict(verdict: u32, rule_id: u32) -> PolVal {
    PolVal { verdict, rule_id }
}

/// The sv_policy key of one exact (endpoint, remote identity, direction, protocol, port).
pub fn pol_key_full(ep: u32, remote: u32, dir: u8, proto: u8, port: u16) -> PolKey {
    aya::maps::lpm_trie::Key::new(
        SV_POL_PREFIX_FULL,
        PolMatch::new(ep, remote, dir, proto, port),
    )
}

/// Endpoint `ep` allows everything, both directions (rule 1).
pub fn allow_all(m: &mut Maps<'_>, ep: u32) {
    for dir in [SV_DIR_INGRESS, SV_DIR_EGRESS] {
        m.set_policy(
            &pol_key_any_proto(ep, SV_IDENTITY_ANY, dir),
            &verdict(SV_VERDICT_ALLOW, 1),
        )
        .unwrap();
    }
}

/// A frontend `addr:port/proto` of service `svc_id` (frontend flags SV_NAT_FE_F_*) with
/// `backends` (address, port, local) in slot order; local ones must come first.
pub fn add_frontend(
    m: &mut Maps<'_>,
    (addr, port, proto): (IpAddr, u16, u8),
    svc_id: u32,
    flags: u32,
    backends: &[(IpAddr, u16, bool)],
) {
    let local = backends.iter().filter(|b| b.2).count();
    for (slot, (a, p, is_local)) in backends.iter().enumerate() {
        let bflags = if *is_local { SV_NAT_BE_F_LOCAL } else { 0 };
        m.set_backend(
            &NatBeKey {
                svc_id,
                slot: slot as u32,
            },
            &NatBeVal::new(*a, *p, bflags),
        )
        .unwrap();
    }
    m.set_frontend(
        &NatFeKey::new(addr, port, proto),
        &NatFeVal {
            svc_id,
            count: backends.len() as u32,
            local_count: local as u32,
            flags,
            ..NatFeVal::default()
        },
    )
    .unwrap();
}

/// Runs `pkt` through the program at `hook`: (verdict, the packet as it left).
pub fn run(dp: &Dataplane, hook: Hook, pkt: &[u8]) -> (i32, Vec<u8>) {
    let out = dp
        .test_run(hook, pkt)
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}: {e:?}"));
    (out.verdict, out.packet)
}

/// Runs a packet from each `(source, transport)` of `cases` to `dst` through `hook` and
/// asserts its verdict; returns how many were to be dropped (TC_ACT_SHOT).
pub fn expect_verdicts(
    dp: &Dataplane,
    hook: Hook,
    dst: IpAddr,
    cases: &[(IpAddr, L4, i32)],
) -> u64 {
    let mut dropped = 0;
    for &(src, l4, want) in cases {
        let (got, _) = run(dp, hook, &packet(src, dst, l4));
        assert_eq!(got, want, "{hook:?} {src} -> {dst} {l4:?}");
        dropped += u64::from(want == TC_ACT_SHOT);
    }
    dropped
}

/// The conntrack entry of the flow src:sport -> dst:dport/proto, if any.
pub fn ct(
    dp: &mut Dataplane,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    proto: u8,
) -> Option<CtVal> {
    let (key, _) = CtKey::of(src, sport, dst, dport, proto);
    dp.maps().conntrack(&key).unwrap()
}

/// As [`ct`], for an entry that must be there.
pub fn ct_entry(
    dp: &mut Dataplane,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    proto: u8,
) -> CtVal {
    ct(dp, src, sport, dst, dport, proto)
        .unwrap_or_else(|| panic!("no conntrack entry {src}:{sport} -> {dst}:{dport}/{proto}"))
}

/// The drop counter of `reason` (SV_DROP_*).
pub fn drops(dp: &mut Dataplane, reason: u32) -> u64 {
    dp.maps().drop_counters().unwrap().get(reason)
}

/// Runs `f` inside a fresh network namespace named after `prefix` (removed afterwards, even
/// on panic); None (the test skipped, saying why) without root.
pub fn in_fresh_netns<R: Send>(
    prefix: &str,
    test: &str,
    f: impl FnOnce() -> R + Send,
) -> Option<R> {
    if !require_root(test) {
        return None;
    }
    let ns = NetNsGuard::new(prefix).expect("create a test namespace");
    Some(ns.run(f).expect("run in the test namespace"))
}

/// Runs `ip ARGS` in the current namespace and asserts it succeeded.
pub fn ip_cmd(args: &[&str]) {
    let o = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// In the current (test) namespace: lo up and a veth pair d0/d1, both up, with `addrs`
/// (CIDRs; IPv6 ones without duplicate address detection) on d0. Returns d0's ifindex.
pub fn veth_d0(addrs: &[&str]) -> u32 {
    ip_cmd(&["link", "set", "lo", "up"]);
    ip_cmd(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
    for a in addrs {
        if a.contains(':') {
            ip_cmd(&["addr", "add", a, "dev", "d0", "nodad"]);
        } else {
            ip_cmd(&["addr", "add", a, "dev", "d0"]);
        }
    }
    ip_cmd(&["link", "set", "d0", "up"]);
    ip_cmd(&["link", "set", "d1", "up"]);
    nix::net::if_::if_nametoindex("d0").expect("d0 ifindex")
}
