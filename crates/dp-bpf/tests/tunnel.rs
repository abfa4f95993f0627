//! BPF program tests of the NodePort tunnel and DSR (`bpf/serval_tunnel.h`,
//! FelixConfiguration `bpfExternalServiceMode`): the real embedded object loaded twice with
//! private maps, one as the node receiving a client's packet (R) and one as the node of the
//! backend (B); crafted packets go through BPF_PROG_TEST_RUN and the output of one program is
//! the input of the next, as the wire would carry it:
//!
//! client -> R uplink in (DNAT, encapsulate to B) -> B uplink in (decapsulate) ->
//! B from_ep (the backend's reply: back into the tunnel, or DSR) -> R uplink in (decapsulate,
//! reverse NAT) -> client.
//!
//! Asserts the outer headers (addresses, IPv4 header checksum, UDP port/length, the tunnel
//! header with its VNI, frontend and DSR flag), that the inner packet's checksums still
//! verify, the conntrack entries on both nodes and the tunnel counters. Each test runs in a
//! fresh network namespace with forwarding on and routes: the pod network via B's address
//! (the FIB lookup that finds the backend's node), the node subnet connected.

#[expect(
    dead_code,
    reason = "the shared packet helpers include ones (FIN/RST, SCTP, udp_csum) this test does not use"
)]
mod common;

use std::net::IpAddr;

use common::fixture::{
    NEXT, add_frontend, allow_all, ct_entry as ct, host_len, in_fresh_netns, ip, ip_cmd, load_tc,
    route, run, small_sizes, veth_d0,
};
use common::packet::{
    L4, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_SYN, fold, frame, packet, parse, pseudo, sum16, tcp, udp,
};
use serval_dp_bpf::tunnel::TunnelStats;
use serval_dp_bpf::{Dataplane, Hook, LogLevel, TC_ACT_REDIRECT, TEST_RUN_IFINDEX, abi::*};
use serval_sys::testing::require_root;

const NODE_PORT: u16 = 30000;
const BACKEND_PORT: u16 = 8080;
const EP: u32 = 10;
const SVC: u32 = 7;

/// Addresses of one family.
#[derive(Clone, Copy)]
struct Net {
    /// The receiving node (the NodePort's address).
    r: IpAddr,
    /// The backend's node.
    b: IpAddr,
    /// The client, outside the cluster.
    client: IpAddr,
    /// The backend pod on B.
    pod: IpAddr,
    pool: (IpAddr, u8),
}

fn v4() -> Net {
    Net {
        r: ip("172.31.1.12"),
        b: ip("172.31.1.13"),
        client: ip("172.31.1.100"),
        pod: ip("10.244.1.5"),
        pool: (ip("10.244.0.0"), 16),
    }
}

fn v6() -> Net {
    Net {
        r: ip("fd00:5e:1::12"),
        b: ip("fd00:5e:1::13"),
        client: ip("fd00:5e:1::100"),
        pod: ip("fd00:10:244:1::5"),
        pool: (ip("fd00:10:244::"), 48),
    }
}

/// Node `me` of the two (R when `receiving`): its sv_host entry, the other node a remote
/// host, the pool, the pod (a local workload on B, with endpoint EP on the test-run
/// interface), and on R the NodePort frontend with the pod as its one (remote) backend.
fn node(receiving: bool, dsr: bool) -> Dataplane {
    let mut dp = load_tc(small_sizes(), LogLevel::Off);
    let me = |n: Net| if receiving { n.r } else { n.b };
    let other = |n: Net| if receiving { n.b } else { n.r };
    let mut host = HostVal::new(&[me(v4()), me(v6())], (20000, 20009));
    if dsr {
        host.flags |= SV_HOST_F_DSR;
    }
    let mut m = dp.maps();
    m.set_host(&host).unwrap();
    for net in [v4(), v6()] {
        route(&mut m, net.pool.0, net.pool.1, 50, SV_RT_F_IN_POOL);
        route(&mut m, me(net), host_len(net.r), 3, SV_RT_F_HOST);
        route(&mut m, other(net), host_len(net.r), 4, SV_RT_F_REMOTE_HOST);
        let pod_flags = if receiving {
            SV_RT_F_IN_POOL
        } else {
            SV_RT_F_IN_POOL | SV_RT_F_LOCAL_WORKLOAD
        };
        route(&mut m, net.pod, host_len(net.pod), 50, pod_flags);
        if receiving {
            let svc_id = SVC + u32::from(net.r.is_ipv6());
            for proto in [PROTO_TCP, PROTO_UDP] {
                let backends = [(net.pod, BACKEND_PORT, false)];
                add_frontend(
                    &mut m,
                    (net.r, NODE_PORT, proto),
                    svc_id,
                    SV_NAT_FE_F_EXTERNAL,
                    &backends,
                );
            }
        }
    }
    if !receiving {
        m.set_endpoint(TEST_RUN_IFINDEX, &EpVal::new(EP, &[v4().pod, v6().pod]))
            .unwrap();
        allow_all(&mut m, EP);
    }
    dp
}

/// Runs `f` in a fresh namespace with forwarding on, the node subnet on a veth and the pod
/// networks routed via B.
fn in_netns<R: Send>(test: &str, f: impl FnOnce() -> R + Send) -> Option<R> {
    in_fresh_netns("svtun", test, || {
        veth_d0(&["172.31.1.1/24", "fd00:5e:1::1/64"]);
        ip_cmd(&[
            "route",
            "add",
            "10.244.1.0/24",
            "via",
            "172.31.1.13",
            "dev",
            "d0",
        ]);
        ip_cmd(&[
            "-6",
            "route",
            "add",
            "fd00:10:244:1::/64",
            "via",
            "fd00:5e:1::13",
            "dev",
            "d0",
        ]);
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("IPv4 forwarding");
        std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1").expect("IPv6 forwarding");
        f()
    })
}

fn stats(dp: &mut Dataplane) -> TunnelStats {
    dp.maps().tunnel_stats().unwrap()
}

/// An encapsulated frame taken apart (the outer headers checked for what never varies).
#[derive(Debug)]
struct Outer {
    src: IpAddr,
    dst: IpAddr,
    udp_sport: u16,
    hdr: TunHdr,
    /// The inner packet with the outer Ethernet header in front (as decapsulation leaves it).
    inner: Vec<u8>,
}

fn outer(frame: &[u8]) -> Outer {
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let (src, dst, l3_len) = match ethertype {
        0x0800 => {
            let ip4 = &frame[14..34];
            assert_eq!(ip4[0], 0x45, "outer IPv4 header without options");
            assert_eq!(ip4[9], PROTO_UDP, "outer protocol UDP");
            assert_eq!(ip4[8], 64, "outer TTL");
            assert_eq!(
                fold(sum16(ip4)),
                0xffff,
                "outer IPv4 header checksum verifies"
            );
            assert_eq!(
                usize::from(u16::from_be_bytes([ip4[2], ip4[3]])),
                frame.len() - 14,
                "outer total length"
            );
            let s: [u8; 4] = ip4[12..16].try_into().unwrap();
            let d: [u8; 4] = ip4[16..20].try_into().unwrap();
            (IpAddr::from(s), IpAddr::from(d), 20)
        }
        0x86dd => {
            let ip6 = &frame[14..54];
            assert_eq!(ip6[0] >> 4, 6);
            assert_eq!(ip6[6], PROTO_UDP, "outer next header UDP");
            assert_eq!(ip6[7], 64, "outer hop limit");
            assert_eq!(
                usize::from(u16::from_be_bytes([ip6[4], ip6[5]])),
                frame.len() - 54,
                "outer payload length"
            );
            let s: [u8; 16] = ip6[8..24].try_into().unwrap();
            let d: [u8; 16] = ip6[24..40].try_into().unwrap();
            (IpAddr::from(s), IpAddr::from(d), 40)
        }
        other => panic!("not IP: {other:#06x}"),
    };
    let udp = &frame[14 + l3_len..14 + l3_len + 8];
    assert_eq!(
        u16::from_be_bytes([udp[2], udp[3]]),
        SV_TUN_PORT,
        "UDP port"
    );
    assert_eq!(
        usize::from(u16::from_be_bytes([udp[4], udp[5]])),
        frame.len() - 14 - l3_len,
        "UDP length"
    );
    assert_eq!(&udp[6..8], &[0, 0], "no outer UDP checksum (RFC 6935)");
    let h = &frame[14 + l3_len + 8..14 + l3_len + 8 + 28];
    let hdr = TunHdr {
        flags: h[0],
        sv_flags: h[1],
        rsvd: [h[2], h[3]],
        vni: u32::from_ne_bytes(h[4..8].try_into().unwrap()),
        fe_addr: Addr(h[8..24].try_into().unwrap()),
        fe_port: u16::from_ne_bytes(h[24..26].try_into().unwrap()),
        pad: [h[26], h[27]],
    };
    assert_eq!(hdr.flags, SV_TUN_F_VNI, "VXLAN I flag");
    assert_eq!(u32::from_be(hdr.vni), SV_TUN_VNI << 8, "VNI");
    let mut inner = frame[..14].to_vec();
    inner.extend_from_slice(&frame[14 + l3_len + 36..]);
    Outer {
        src,
        dst,
        udp_sport: u16::from_be_bytes([udp[0], udp[1]]),
        hdr,
        inner,
    }
}

/// A flow of the Tunnel test: the client's source port and its first packet's transport.
struct Flow {
    sport: u16,
    l4: fn(u16, u16) -> L4,
}

fn syn(s: u16, d: u16) -> L4 {
    tcp(s, d, TCP_SYN)
}
fn synack(s: u16, d: u16) -> L4 {
    tcp(s, d, TCP_SYN | TCP_ACK)
}
fn dgram(s: u16, d: u16) -> L4 {
    udp(s, d)
}

#[test]
fn tunnel_mode_keeps_the_client_and_replies_return_through_the_receiving_node() {
    in_netns("tunnel_mode", || {
        for (net, flow) in [
            (
                v4(),
                Flow {
                    sport: 40000,
                    l4: syn,
                },
            ),
            (
                v6(),
                Flow {
                    sport: 40000,
                    l4: syn,
                },
            ),
            (
                v4(),
                Flow {
                    sport: 40001,
                    l4: dgram,
                },
            ),
            (
                v6(),
                Flow {
                    sport: 40001,
                    l4: dgram,
                },
            ),
        ] {
            let mut r = node(true, false);
            let mut b = node(false, false);
            let proto = if (flow.l4)(1, 2).is_tcp() {
                PROTO_TCP
            } else {
                PROTO_UDP
            };
            // client -> R: DNAT to the pod, the client kept, into the tunnel to B
            let first = packet(net.client, net.r, (flow.l4)(flow.sport, NODE_PORT));
            let (verdict, out) = run(&r, Hook::UplinkIngress, &first);
            assert_eq!(verdict, TC_ACT_REDIRECT, "sent to B ({proto})");
            let o = outer(&out);
            assert_eq!((o.src, o.dst), (net.r, net.b), "outer R -> B");
            assert!(o.udp_sport >= 0xc000, "entropy source port");
            assert_eq!(o.hdr.sv_flags, 0, "Tunnel: no DSR flag");
            assert_eq!(
                o.hdr.fe_addr,
                Addr::new(net.r),
                "the frontend travels along"
            );
            assert_eq!(u16::from_be(o.hdr.fe_port), NODE_PORT);
            let inner = parse(&o.inner);
            assert_eq!(
                (inner.src, inner.sport, inner.dst, inner.dport),
                (net.client, flow.sport, net.pod, BACKEND_PORT),
                "DNATed, the client's address kept"
            );
            assert!(inner.l3_csum_ok && inner.l4_csum_ok, "inner checksums");
            let wire = ct(&mut r, net.client, flow.sport, net.pod, BACKEND_PORT, proto);
            assert_ne!(wire.flags & SV_CT_F_TUN_FWD, 0, "R's wire entry: tunnelled");
            assert_ne!(wire.flags & SV_CT_F_DNAT, 0);
            assert_eq!(wire.snat_addr, Addr::new(net.b), "B cached");
            assert_eq!(stats(&mut r).encap_fwd, 1);

            // B: decapsulated, the flow's entry remembers R
            let (verdict, dec) = run(&b, Hook::UplinkIngress, &out);
            assert_eq!(verdict, NEXT, "on to the stack and serval_to_ep");
            assert_eq!(dec, o.inner, "exactly the inner packet remains");
            let e = ct(&mut b, net.client, flow.sport, net.pod, BACKEND_PORT, proto);
            assert_eq!(
                e.flags & (SV_CT_F_TUN_REPLY | SV_CT_F_TUN_DSR),
                SV_CT_F_TUN_REPLY
            );
            assert_eq!(e.snat_addr, Addr::new(net.r));
            assert_eq!(stats(&mut b).decap_fwd, 1);

            // the pod answers: back into the tunnel to R
            let reply_l4 = if proto == PROTO_TCP { synack } else { dgram };
            let reply = packet(net.pod, net.client, reply_l4(BACKEND_PORT, flow.sport));
            let (verdict, out) = run(&b, Hook::FromEndpoint, &reply);
            assert_eq!(verdict, TC_ACT_REDIRECT, "sent back to R");
            let o = outer(&out);
            assert_eq!((o.src, o.dst), (net.b, net.r), "outer B -> R");
            assert_eq!(o.hdr.fe_addr, Addr::ZERO);
            assert_eq!(o.inner[14..], reply[14..], "the reply itself unchanged");
            assert_eq!(stats(&mut b).encap_reply, 1);
            assert_eq!(stats(&mut b).dsr_reply, 0);

            // R: decapsulated, reverse-NATed, forwarded to the client
            let (verdict, back) = run(&r, Hook::UplinkIngress, &out);
            assert_eq!(verdict, TC_ACT_REDIRECT, "forwarded to the client");
            let p = parse(&back);
            assert_eq!(
                (p.src, p.sport, p.dst, p.dport),
                (net.r, NODE_PORT, net.client, flow.sport),
                "the client sees the frontend"
            );
            assert!(p.l3_csum_ok && p.l4_csum_ok, "checksums after reverse NAT");
            let s = stats(&mut r);
            assert_eq!((s.decap_reply, s.dropped), (1, 0));
            let fwd = ct(&mut r, net.client, flow.sport, net.r, NODE_PORT, proto);
            assert_eq!(fwd.kind, SV_CT_TYPE_NAT_FWD);
            assert_ne!(
                fwd.flags & SV_CT_F_ESTABLISHED,
                0,
                "R's NAT_FWD entry saw the reply ({proto})"
            );
        }
    });
}

trait IsTcp {
    fn is_tcp(&self) -> bool;
}
impl IsTcp for L4 {
    fn is_tcp(&self) -> bool {
        matches!(self, L4::Tcp { .. })
    }
}

#[test]
fn dsr_mode_answers_from_the_backends_node_and_optout_cidrs_get_tunnel() {
    in_netns("dsr_mode", || {
        for net in [v4(), v6()] {
            let mut r = node(true, true);
            let mut b = node(false, false);
            // DSR: the header says so, B answers the client directly from the frontend
            let first = packet(net.client, net.r, syn(41000, NODE_PORT));
            let (verdict, out) = run(&r, Hook::UplinkIngress, &first);
            assert_eq!(verdict, TC_ACT_REDIRECT);
            let o = outer(&out);
            assert_eq!(o.hdr.sv_flags, SV_TUN_SF_DSR, "DSR flag");
            let (verdict, _) = run(&b, Hook::UplinkIngress, &out);
            assert_eq!(verdict, NEXT);
            let e = ct(&mut b, net.client, 41000, net.pod, BACKEND_PORT, PROTO_TCP);
            assert_eq!(
                e.flags & (SV_CT_F_TUN_REPLY | SV_CT_F_TUN_DSR),
                SV_CT_F_TUN_REPLY | SV_CT_F_TUN_DSR
            );
            assert_eq!(e.nat_addr, Addr::new(net.r), "B knows the frontend");
            assert_eq!(u16::from_be(e.nat_port), NODE_PORT);
            let reply = packet(net.pod, net.client, synack(BACKEND_PORT, 41000));
            let (verdict, back) = run(&b, Hook::FromEndpoint, &reply);
            assert_eq!(verdict, TC_ACT_REDIRECT, "straight to the client");
            let p = parse(&back);
            assert_eq!(
                (p.src, p.sport, p.dst, p.dport),
                (net.r, NODE_PORT, net.client, 41000),
                "not encapsulated: from the frontend to the client"
            );
            assert!(p.l3_csum_ok && p.l4_csum_ok);
            let s = stats(&mut b);
            assert_eq!((s.dsr_reply, s.encap_reply), (1, 0));
            // R never sees the reply; the client's ACK marks the flow established there
            let est = |r: &mut Dataplane| {
                let w = ct(r, net.client, 41000, net.pod, BACKEND_PORT, PROTO_TCP);
                let f = ct(r, net.client, 41000, net.r, NODE_PORT, PROTO_TCP);
                (w.flags & SV_CT_F_ESTABLISHED, f.flags & SV_CT_F_ESTABLISHED)
            };
            assert_eq!(est(&mut r), (0, 0), "half-open until the client's ACK");
            let ack = packet(net.client, net.r, tcp(41000, NODE_PORT, TCP_ACK));
            let (verdict, out) = run(&r, Hook::UplinkIngress, &ack);
            assert_eq!(verdict, TC_ACT_REDIRECT);
            assert_eq!(outer(&out).hdr.sv_flags, SV_TUN_SF_DSR);
            assert_eq!(
                est(&mut r),
                (SV_CT_F_ESTABLISHED, SV_CT_F_ESTABLISHED),
                "established on R"
            );

            // bpfDSROptoutCIDRs: the client's prefix gets Tunnel
            let len = if net.client.is_ipv4() { 24 } else { 64 };
            let prefix = match net.client {
                IpAddr::V4(a) => IpAddr::V4(ipnet_trunc4(a, len)),
                IpAddr::V6(a) => IpAddr::V6(ipnet_trunc6(a, len)),
            };
            r.maps().set_dsr_optout(prefix, len).unwrap();
            assert_eq!(r.maps().dsr_optout().unwrap().len(), 1);
            let first = packet(net.client, net.r, syn(41001, NODE_PORT));
            let (_, out) = run(&r, Hook::UplinkIngress, &first);
            assert_eq!(outer(&out).hdr.sv_flags, 0, "opted out: Tunnel");
            run(&b, Hook::UplinkIngress, &out);
            let reply = packet(net.pod, net.client, synack(BACKEND_PORT, 41001));
            let (_, back) = run(&b, Hook::FromEndpoint, &reply);
            assert_eq!(outer(&back).dst, net.r, "the reply returns through R");
            let (prefix_len, addr) = r.maps().dsr_optout().unwrap()[0];
            assert!(r.maps().remove_dsr_optout(prefix_len, addr).unwrap());
        }
    });
}

/// A TCP SYN frame (with ACK: a SYN-ACK) carrying an MSS option, checksums computed.
fn syn_with_mss(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, ack: bool, mss: u16) -> Vec<u8> {
    let mut tcp = Vec::new();
    tcp.extend(sport.to_be_bytes());
    tcp.extend(dport.to_be_bytes());
    tcp.extend(1000u32.to_be_bytes());
    tcp.extend(if ack { 2000u32 } else { 0 }.to_be_bytes());
    tcp.push(7 << 4); // 28 bytes: 20 + NOP, NOP, MSS(4), NOP, NOP (8 bytes of options)
    tcp.push(if ack { TCP_SYN | TCP_ACK } else { TCP_SYN });
    tcp.extend(64240u16.to_be_bytes());
    tcp.extend([0, 0, 0, 0]);
    tcp.extend([1, 1, 2, 4]);
    tcp.extend(mss.to_be_bytes());
    tcp.extend([1, 1]);
    let c = !fold(pseudo(src, dst, PROTO_TCP, tcp.len()) + sum16(&tcp));
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    frame(src, dst, PROTO_TCP, &tcp)
}

/// The MSS option of a frame built by [`syn_with_mss`] (after any rewrite).
fn mss_of(frame: &[u8]) -> u16 {
    let l4 = if frame[12] == 0x08 { 14 + 20 } else { 14 + 40 };
    u16::from_be_bytes([frame[l4 + 24], frame[l4 + 25]])
}

#[test]
fn tunnelled_syns_get_an_mss_that_fits_after_encapsulation() {
    in_netns("tunnel_mss", || {
        for net in [v4(), v6()] {
            // 1500 (no MTU from the FIB while the neighbour is unresolved) - outer headers
            // - inner IP - TCP
            let max = if net.r.is_ipv4() {
                1500 - 56 - 20 - 20
            } else {
                1500 - 76 - 40 - 20
            };
            let mut r = node(true, false);
            let b = node(false, false);
            let syn = syn_with_mss(net.client, net.r, 43000, NODE_PORT, false, 1460);
            let (verdict, out) = run(&r, Hook::UplinkIngress, &syn);
            assert_eq!(verdict, TC_ACT_REDIRECT);
            let inner = outer(&out).inner;
            assert_eq!(mss_of(&inner), max, "the client's MSS clamped");
            let p = parse(&inner);
            assert!(p.l3_csum_ok && p.l4_csum_ok, "TCP checksum after the clamp");
            // a small MSS is left alone
            let syn = syn_with_mss(net.client, net.r, 43001, NODE_PORT, false, 536);
            let (_, out) = run(&r, Hook::UplinkIngress, &syn);
            assert_eq!(mss_of(&outer(&out).inner), 536);

            // the backend's SYN-ACK back through the tunnel (Tunnel) is clamped too
            run(
                &b,
                Hook::UplinkIngress,
                &run(
                    &r,
                    Hook::UplinkIngress,
                    &syn_with_mss(net.client, net.r, 43002, NODE_PORT, false, 1460),
                )
                .1,
            );
            let synack = syn_with_mss(net.pod, net.client, BACKEND_PORT, 43002, true, 1460);
            let (verdict, out) = run(&b, Hook::FromEndpoint, &synack);
            assert_eq!(verdict, TC_ACT_REDIRECT);
            let inner = outer(&out).inner;
            assert_eq!(mss_of(&inner), max, "the backend's MSS clamped");
            assert!(parse(&inner).l4_csum_ok);
            let _ = stats(&mut r);
        }
    });
}

fn ipnet_trunc4(a: std::net::Ipv4Addr, len: u8) -> std::net::Ipv4Addr {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    std::net::Ipv4Addr::from(u32::from(a) & mask)
}

fn ipnet_trunc6(a: std::net::Ipv6Addr, len: u8) -> std::net::Ipv6Addr {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    std::net::Ipv6Addr::from(u128::from(a) & mask)
}

#[test]
fn tunnel_packets_from_non_nodes_are_left_alone_and_local_backends_need_no_tunnel() {
    in_netns("tunnel_guard", || {
        for net in [v4(), v6()] {
            let r = node(true, false);
            let mut b = node(false, false);
            let first = packet(net.client, net.r, syn(42000, NODE_PORT));
            let (_, mut out) = run(&r, Hook::UplinkIngress, &first);
            // the outer source forged to the client's address (not a node)
            let (off, client) = match net.client {
                IpAddr::V4(a) => (14 + 12, a.octets().to_vec()),
                IpAddr::V6(a) => (14 + 8, a.octets().to_vec()),
            };
            out[off..off + client.len()].copy_from_slice(&client);
            let (verdict, same) = run(&b, Hook::UplinkIngress, &out);
            assert_eq!(
                verdict, NEXT,
                "left to the stack (no socket: dropped there)"
            );
            assert_eq!(same, out, "not decapsulated");
            assert_eq!(stats(&mut b).decap_fwd, 0);

            // a NodePort of B with the pod as its (local) backend: DNAT only, no tunnel,
            // the client's address kept
            let mut m = b.maps();
            m.set_backend(
                &NatBeKey {
                    svc_id: 99,
                    slot: 0,
                },
                &NatBeVal::new(net.pod, BACKEND_PORT, SV_NAT_BE_F_LOCAL),
            )
            .unwrap();
            m.set_frontend(
                &NatFeKey::new(net.b, NODE_PORT, PROTO_TCP),
                &NatFeVal {
                    svc_id: 99,
                    count: 1,
                    local_count: 1,
                    flags: SV_NAT_FE_F_EXTERNAL,
                    ..NatFeVal::default()
                },
            )
            .unwrap();
            let syn_b = packet(net.client, net.b, syn(42001, NODE_PORT));
            let (verdict, out) = run(&b, Hook::UplinkIngress, &syn_b);
            assert_eq!(verdict, NEXT, "on to the stack");
            let p = parse(&out);
            assert_eq!(
                (p.src, p.sport, p.dst, p.dport),
                (net.client, 42001, net.pod, BACKEND_PORT)
            );
            assert!(p.l3_csum_ok && p.l4_csum_ok);
            let s = stats(&mut b);
            assert_eq!((s.encap_fwd, s.dropped), (0, 0));
        }
    });
}

/// The backend's node from its sv_routes entry (a remote workload, next_hop = B) when the
/// host's route to the pod network names no node as gateway (VXLAN over IPv6: the remote
/// VTEP's link-local address); without that entry such a flow is masqueraded to R.
#[test]
fn the_remote_workload_route_names_the_node_when_the_gateway_is_no_node() {
    in_netns("tunnel_route_next_hop", || {
        ip_cmd(&[
            "route",
            "replace",
            "10.244.1.0/24",
            "via",
            "172.31.1.50",
            "dev",
            "d0",
        ]);
        ip_cmd(&[
            "-6",
            "route",
            "replace",
            "fd00:10:244:1::/64",
            "via",
            "fe80::1",
            "dev",
            "d0",
        ]);
        for net in [v4(), v6()] {
            let mut r = node(true, false);
            // no sv_routes next hop: the gateway is no node, kube-proxy's masquerade
            let first = packet(net.client, net.r, syn(43000, NODE_PORT));
            let (_, out) = run(&r, Hook::UplinkIngress, &first);
            let p = parse(&out);
            assert_eq!((p.src, p.dst), (net.r, net.pod), "masqueraded to R");
            assert_eq!(stats(&mut r).encap_fwd, 0, "not tunnelled");

            r.maps()
                .set_route(
                    &route_key(net.pod, host_len(net.pod)),
                    &RouteVal {
                        identity: 50,
                        flags: SV_RT_F_IN_POOL | SV_RT_F_REMOTE_WORKLOAD,
                        next_hop: Addr::new(net.b),
                        ..RouteVal::default()
                    },
                )
                .unwrap();
            let first = packet(net.client, net.r, syn(43001, NODE_PORT));
            let (verdict, out) = run(&r, Hook::UplinkIngress, &first);
            assert_eq!(verdict, TC_ACT_REDIRECT, "sent to B");
            let o = outer(&out);
            assert_eq!((o.src, o.dst), (net.r, net.b), "outer R -> B");
            let inner = parse(&o.inner);
            assert_eq!(
                (inner.src, inner.dst, inner.dport),
                (net.client, net.pod, BACKEND_PORT),
                "DNATed, the client's address kept"
            );
            let wire = ct(&mut r, net.client, 43001, net.pod, BACKEND_PORT, PROTO_TCP);
            assert_eq!(wire.snat_addr, Addr::new(net.b), "B cached");
            assert_eq!(stats(&mut r).encap_fwd, 1);
        }
    });
}

#[test]
fn both_builds_with_the_tunnel_pass_the_verifier() {
    if !require_root("both_builds_with_the_tunnel_pass_the_verifier") {
        return;
    }
    for level in [LogLevel::Off, LogLevel::Debug] {
        load_tc(small_sizes(), level);
    }
}
