//! BPF program tests of host-networked clients' service NAT in tc (`bpf/serval_hostnat.h`,
//! the `SV_HOST_F_HOST_NAT` flag of `sv_host`): a packet from this node's own address to a
//! frontend is DNATed at the uplink's egress with its conntrack entries, the flow's next
//! packets follow the NAT_FWD entry, and the backend's replies arriving at the uplink are
//! reverse-NATed (source = the frontend) although their port is no SNAT port; without the flag,
//! or from a pod, nothing changes. The real object, private maps, BPF_PROG_TEST_RUN, inside a
//! fresh network namespace (no routes: the FIB lookup after the DNAT finds nothing and leaves
//! the packet to the stack, verdict TCX_NEXT).

#[expect(
    dead_code,
    reason = "the shared packet helpers include ones this test does not use"
)]
mod common;

use std::net::IpAddr;

use common::fixture::{
    NEXT, add_frontend, host_len as len, in_fresh_netns, ip, load_tc, route, run, small_sizes,
};
use common::packet::{PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_SYN, packet, parse, tcp, udp};
use serval_dp_bpf::{Dataplane, Hook, LogLevel, TC_ACT_SHOT, abi::*};
const PORT: u16 = 8080;
/// The host client's port: outside the SNAT port range.
const CLIENT_PORT: u16 = 40000;

struct Net {
    node: IpAddr,
    backend: IpAddr,
    pod: IpAddr,
    vip: IpAddr,
    empty_vip: IpAddr,
}

fn nets() -> [Net; 2] {
    [
        Net {
            node: ip("172.31.1.12"),
            backend: ip("10.244.1.5"),
            pod: ip("10.244.2.7"),
            vip: ip("10.96.0.9"),
            empty_vip: ip("10.96.0.10"),
        },
        Net {
            node: ip("fd00:5e:1::12"),
            backend: ip("fd00:10:244:1::5"),
            pod: ip("fd00:10:244:2::7"),
            vip: ip("fd00:10:96::9"),
            empty_vip: ip("fd00:10:96::10"),
        },
    ]
}

/// The programs with this node's entry (flag as given), routes, and per family a TCP and a UDP
/// frontend `vip:PORT` with one backend on another node, and a TCP frontend without backends.
fn load(host_nat: bool) -> Dataplane {
    let mut dp = load_tc(small_sizes(), LogLevel::Off);
    let mut m = dp.maps();
    let [a, b] = nets();
    let mut host = HostVal::new(&[a.node, b.node], (20000, 20009));
    if host_nat {
        host.flags |= SV_HOST_F_HOST_NAT;
    }
    m.set_host(&host).unwrap();
    let mut svc = 1;
    for net in nets() {
        for pod in [net.backend, net.pod] {
            route(&mut m, pod, len(pod), 50, SV_RT_F_IN_POOL);
        }
        route(&mut m, net.node, len(net.node), 3, SV_RT_F_HOST);
        for proto in [PROTO_TCP, PROTO_UDP] {
            add_frontend(
                &mut m,
                (net.vip, PORT, proto),
                svc,
                0,
                &[(net.backend, 80, false)],
            );
            svc += 1;
        }
        add_frontend(&mut m, (net.empty_vip, PORT, PROTO_TCP), svc, 0, &[]);
        svc += 1;
    }
    dp
}

#[test]
fn host_client_flows_are_dnated_at_the_uplink_egress_and_replies_come_from_the_frontend() {
    in_fresh_netns("svhn", "hostnat", || {
        let mut dp = load(true);
        for net in nets() {
            for (proto, first, next, reply) in [
                (
                    PROTO_TCP,
                    tcp(CLIENT_PORT, PORT, TCP_SYN),
                    tcp(CLIENT_PORT, PORT, TCP_ACK),
                    tcp(80, CLIENT_PORT, TCP_SYN | TCP_ACK),
                ),
                (
                    PROTO_UDP,
                    udp(CLIENT_PORT, PORT),
                    udp(CLIENT_PORT, PORT),
                    udp(80, CLIENT_PORT),
                ),
            ] {
                let (verdict, out) =
                    run(&dp, Hook::UplinkEgress, &packet(net.node, net.vip, first));
                assert_eq!(
                    verdict, NEXT,
                    "no route here: left to the stack after the DNAT"
                );
                let p = parse(&out);
                assert_eq!(
                    (p.src, p.sport, p.dst, p.dport),
                    (net.node, CLIENT_PORT, net.backend, 80)
                );
                assert!(p.l3_csum_ok && p.l4_csum_ok, "{p:?}");
                let (key, _) = CtKey::of(net.node, CLIENT_PORT, net.vip, PORT, proto);
                let fwd = dp.maps().conntrack(&key).unwrap().expect("NAT_FWD entry");
                assert_eq!(fwd.kind, SV_CT_TYPE_NAT_FWD);
                assert_eq!(
                    (fwd.nat_addr.ip(), u16::from_be(fwd.nat_port)),
                    (net.backend, 80)
                );
                let (key, _) = CtKey::of(net.node, CLIENT_PORT, net.backend, 80, proto);
                let wire = dp.maps().conntrack(&key).unwrap().expect("wire entry");
                assert_ne!(wire.flags & SV_CT_F_DNAT, 0, "{wire:?}");
                assert_eq!(
                    (wire.nat_addr.ip(), u16::from_be(wire.nat_port)),
                    (net.vip, PORT)
                );

                // the flow's next packet: the same backend, from the NAT_FWD entry
                let (verdict, out) = run(&dp, Hook::UplinkEgress, &packet(net.node, net.vip, next));
                let p = parse(&out);
                assert_eq!((verdict, p.dst, p.dport), (NEXT, net.backend, 80));
                assert!(p.l3_csum_ok && p.l4_csum_ok);

                // the backend's reply arrives: reverse-NATed, the source is the frontend
                let (verdict, out) = run(
                    &dp,
                    Hook::UplinkIngress,
                    &packet(net.backend, net.node, reply),
                );
                assert_eq!(verdict, NEXT, "on to the host stack");
                let p = parse(&out);
                assert_eq!(
                    (p.src, p.sport, p.dst, p.dport),
                    (net.vip, PORT, net.node, CLIENT_PORT)
                );
                assert!(p.l3_csum_ok && p.l4_csum_ok, "{p:?}");
            }
            // a frontend without backends: dropped, counted
            let before = dp.maps().drop_counters().unwrap().get(SV_DROP_NO_BACKEND);
            let syn = packet(net.node, net.empty_vip, tcp(CLIENT_PORT, PORT, TCP_SYN));
            assert_eq!(run(&dp, Hook::UplinkEgress, &syn).0, TC_ACT_SHOT);
            assert_eq!(
                dp.maps().drop_counters().unwrap().get(SV_DROP_NO_BACKEND),
                before + 1
            );
        }
    });
}

#[test]
fn without_the_flag_or_from_a_pod_nothing_changes() {
    in_fresh_netns("svhn", "hostnat_off", || {
        for (flag, src_is_pod) in [(false, false), (true, true)] {
            let mut dp = load(flag);
            for net in nets() {
                let src = if src_is_pod { net.pod } else { net.node };
                let syn = packet(src, net.vip, tcp(CLIENT_PORT, PORT, TCP_SYN));
                let (verdict, out) = run(&dp, Hook::UplinkEgress, &syn);
                assert_eq!((verdict, &out), (NEXT, &syn), "flag {flag} from {src}");
                let (key, _) = CtKey::of(src, CLIENT_PORT, net.vip, PORT, PROTO_TCP);
                assert_eq!(dp.maps().conntrack(&key).unwrap(), None);
            }
        }
    });
}
