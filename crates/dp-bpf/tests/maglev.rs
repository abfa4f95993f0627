//! Maglev backend selection in the real programs (BPF_PROG_TEST_RUN, root): two dataplanes
//! loaded independently (private maps each, as two nodes have), given the same Maglev table
//! built by `serval_calc::maglev` but their backend slots in different orders (each node puts
//! its own local backends first), choose the same backend for the same 5-tuple, and the one
//! `serval_calc::maglev::flow_hash` predicts; different tuples spread over every backend.
//! Without the Maglev flag the same two dataplanes disagree (random choice), so the
//! agreement above is the table's doing.

#[expect(
    dead_code,
    reason = "the shared packet helpers include ones (FIN/RST, udp_csum) this test does not use"
)]
mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;

use common::fixture::{ip, load_tc, small_sizes, verdict};
use common::packet::{PROTO_TCP, PROTO_UDP, TCP_SYN, packet, parse, tcp, udp};
use serval_calc::maglev::{Table, flow_hash};
use serval_dp_bpf::{Dataplane, Hook, LogLevel, MapSizes, TC_ACT_OK, TEST_RUN_IFINDEX, abi::*};

const EP: u32 = 10;
const SVC: u32 = 7;
/// A small prime table keeps the test quick; the algorithm is the same at 10007.
const M: u32 = 1009;

struct Net {
    client: IpAddr,
    vip: IpAddr,
    backends: Vec<(IpAddr, u16)>,
}

fn nets() -> [Net; 2] {
    [
        Net {
            client: ip("192.0.2.50"),
            vip: ip("198.51.100.10"),
            backends: (1..=5)
                .map(|i| (ip(&format!("10.244.{i}.7")), 8080))
                .collect(),
        },
        Net {
            client: ip("2001:db8::50"),
            vip: ip("2001:db8:100::10"),
            backends: (1..=5)
                .map(|i| (ip(&format!("fd00:244:{i}::7")), 8080))
                .collect(),
        },
    ]
}

/// A dataplane whose test-run endpoint is the client (both families) with an allow-all
/// egress policy; or None (skipped) without root.
fn load() -> Option<Dataplane> {
    load_level(LogLevel::Off)
}

fn load_level(level: LogLevel) -> Option<Dataplane> {
    if !serval_sys::testing::require_root("dp-bpf maglev test") {
        return None;
    }
    let sizes = MapSizes {
        conntrack: 4096,
        ..small_sizes()
    };
    let mut dp = load_tc(sizes, level);
    let [n4, n6] = nets();
    let mut maps = dp.maps();
    maps.set_endpoint(TEST_RUN_IFINDEX, &EpVal::new(EP, &[n4.client, n6.client]))
        .unwrap();
    maps.set_policy(
        &pol_key_any_proto(EP, SV_IDENTITY_ANY, SV_DIR_EGRESS),
        &verdict(SV_VERDICT_ALLOW, 1),
    )
    .unwrap();
    Some(dp)
}

/// Installs the service of `net` (svc id per family) with its backends in sv_nat_be in
/// `slot_order`, the frontend flags `flags`, and (when `table`) its Maglev table.
fn install(
    dp: &mut Dataplane,
    net: &Net,
    proto: u8,
    slot_order: &[usize],
    flags: u32,
    table: bool,
) {
    let svc_id = SVC + u32::from(net.vip.is_ipv6()) + 10 * u32::from(proto);
    let mut maps = dp.maps();
    for (slot, &i) in slot_order.iter().enumerate() {
        let (addr, port) = net.backends[i];
        maps.set_backend(
            &NatBeKey {
                svc_id,
                slot: slot as u32,
            },
            &NatBeVal::new(addr, port, 0),
        )
        .unwrap();
    }
    maps.set_frontend(
        &NatFeKey::new(net.vip, 80, proto),
        &NatFeVal {
            svc_id,
            count: net.backends.len() as u32,
            local_count: 0,
            flags: SV_NAT_FE_F_EXTERNAL | flags,
            affinity_timeout_s: 0,
            pad: 0,
        },
    )
    .unwrap();
    if table {
        let t = Table::build(net.backends.iter().copied(), M).unwrap();
        maps.set_maglev(
            &MaglevKey {
                svc_id,
                index: SV_MAGLEV_META,
            },
            &MaglevVal::meta(M),
        )
        .unwrap();
        for (index, (addr, port)) in t.entries() {
            maps.set_maglev(&MaglevKey { svc_id, index }, &MaglevVal::new(addr, port, M))
                .unwrap();
        }
    }
}

/// The backend the program DNATs a new flow from `sport` to.
fn pick(dp: &Dataplane, net: &Net, proto: u8, sport: u16) -> (IpAddr, u16) {
    let l4 = if proto == PROTO_TCP {
        tcp(sport, 80, TCP_SYN)
    } else {
        udp(sport, 80)
    };
    let pkt = packet(net.client, net.vip, l4);
    let out = dp
        .test_run(Hook::FromEndpoint, &pkt)
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}: {e:?}"));
    assert_eq!(
        out.verdict, TC_ACT_OK,
        "{} -> {} sport {sport}",
        net.client, net.vip
    );
    let p = parse(&out.packet);
    assert!(p.l3_csum_ok && p.l4_csum_ok, "checksums after DNAT: {p:?}");
    assert_eq!((p.src, p.sport), (net.client, sport), "source kept");
    (p.dst, p.dport)
}

#[test]
fn the_same_tuple_picks_the_same_backend_in_two_independent_dataplanes() {
    let (Some(mut a), Some(mut b)) = (load(), load()) else {
        return;
    };
    for net in nets() {
        for proto in [PROTO_TCP, PROTO_UDP] {
            let n = net.backends.len();
            let forward: Vec<usize> = (0..n).collect();
            let reversed: Vec<usize> = (0..n).rev().collect();
            install(&mut a, &net, proto, &forward, SV_NAT_FE_F_MAGLEV, true);
            install(&mut b, &net, proto, &reversed, SV_NAT_FE_F_MAGLEV, true);
            let table = Table::build(net.backends.iter().copied(), M).unwrap();
            let mut spread: BTreeMap<(IpAddr, u16), usize> = BTreeMap::new();
            let flows = 400u16;
            for sport in 20000..20000 + flows {
                let (x, y) = (pick(&a, &net, proto, sport), pick(&b, &net, proto, sport));
                assert_eq!(x, y, "{proto} sport {sport}: the two dataplanes disagree");
                let h = flow_hash(net.client, sport, net.vip, 80, proto);
                assert_eq!(
                    Some(x),
                    table.lookup(h),
                    "{proto} sport {sport}: the program's choice is not entry flow_hash % M"
                );
                *spread.entry(x).or_default() += 1;
            }
            // different tuples spread over every backend, none far from its share
            assert_eq!(spread.len(), n, "flows reached {spread:?}");
            let share = usize::from(flows) / n;
            for (be, c) in &spread {
                assert!(
                    *c >= share / 2 && *c <= share * 2,
                    "{be:?} got {c} of {flows} flows (share {share}): {spread:?}"
                );
            }
            // a flow already tracked keeps its backend: the second packet of a flow
            // follows conntrack, not a new pick (same answer either way)
            assert_eq!(pick(&a, &net, proto, 20000), pick(&b, &net, proto, 20000));
        }
    }
}

#[test]
fn without_the_flag_the_choice_is_random_and_a_missing_table_falls_back() {
    let (Some(mut a), Some(mut b)) = (load(), load()) else {
        return;
    };
    let [net, _] = nets();
    let n = net.backends.len();
    let order: Vec<usize> = (0..n).collect();
    // table written but flag off: random per dataplane, so two dataplanes disagree somewhere
    install(&mut a, &net, PROTO_TCP, &order, 0, true);
    install(&mut b, &net, PROTO_TCP, &order, 0, true);
    let disagree = (30000..30200u16)
        .filter(|&sport| pick(&a, &net, PROTO_TCP, sport) != pick(&b, &net, PROTO_TCP, sport))
        .count();
    assert!(disagree > 0, "random choice agreed on 200 flows");
    // flag on but no table (e.g. before the agent wrote it): every flow still gets a backend
    install(&mut a, &net, PROTO_UDP, &order, SV_NAT_FE_F_MAGLEV, false);
    for sport in 31000..31050u16 {
        let be = pick(&a, &net, PROTO_UDP, sport);
        assert!(net.backends.contains(&be), "{be:?}");
    }
}

#[test]
fn the_debug_build_picks_the_same_backends() {
    let (Some(mut off), Some(mut debug)) = (load(), load_level(LogLevel::Debug)) else {
        return;
    };
    let [n4, n6] = nets();
    for net in [n4, n6] {
        let order: Vec<usize> = (0..net.backends.len()).collect();
        install(&mut off, &net, PROTO_TCP, &order, SV_NAT_FE_F_MAGLEV, true);
        install(
            &mut debug,
            &net,
            PROTO_TCP,
            &order,
            SV_NAT_FE_F_MAGLEV,
            true,
        );
        for sport in 32000..32040u16 {
            assert_eq!(
                pick(&off, &net, PROTO_TCP, sport),
                pick(&debug, &net, PROTO_TCP, sport)
            );
        }
    }
}
