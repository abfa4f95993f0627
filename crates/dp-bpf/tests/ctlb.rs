//! Privileged, real kernel: the connect-time load balancer (`bpf/serval_ctlb.c`) attached to a
//! cgroup v2 directory of its own. Client processes (this test binary re-executed as
//! [`client_helper`]) are placed in that cgroup, or in a sibling without programs, and talk
//! to service frontends whose backends are listeners of this process on loopback:
//!
//! - TCP `connect` to the frontend reaches the backend, and `getpeername` shows the frontend;
//! - unconnected UDP `sendto` the frontend reaches the backend and the reply's source, as
//!   `recvfrom` reports it, is the frontend (only with `Enabled`; `TCP` leaves UDP alone);
//! - a process in the sibling cgroup is untouched; after detaching nothing is translated;
//! - a second load replaces the pinned links without leaving any behind.
//!
//! IPv4 and IPv6. Unique cgroups and pin scope, removed on drop (even on panic).

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::time::Duration;

use serval_dp_bpf::testing::{
    ScopeGuard, TcpAnswer, TestCgroups, UdpEcho, client_helper as run_helper, run_client,
};
use serval_dp_bpf::{
    Ctlb, CtlbProtocols, Dataplane, HostSockets, LoadOptions, LogLevel, MapSizes, PinScope, abi::*,
    cgroup, cleanup,
};
use serval_sys::testing::{require_root, unique_name};

const HELPER_ENV: &str = "SERVAL_CTLB_TEST_CLIENT";
const VIP4: &str = "10.77.201.1";
const VIP6: &str = "fd77::c71b";
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// Not a test of its own: the client side, run by the tests in a child process placed in a
/// cgroup (a process is in one cgroup; the test process itself must stay where it is). Does
/// nothing unless `SERVAL_CTLB_TEST_CLIENT` is set (see `serval_dp_bpf::testing`).
#[test]
fn client_helper() {
    run_helper(HELPER_ENV, Duration::from_millis(700));
}

/// Runs [`client_helper`] in `cgroup`: `peer=ADDR reply=TEXT` or `error=KIND`.
fn client(cgroup: &Path, mode: &str, to: SocketAddr) -> String {
    match run_client("client_helper", HELPER_ENV, None, cgroup, mode, to)
        .expect("run the client helper")
    {
        Ok(r) => format!("peer={} reply={}", r.peer, r.reply),
        Err(kind) => format!("error={kind}"),
    }
}

/// Loopback backends: a TCP server answering `be-tcp`, a UDP echo answering `be-udp:MSG`.
struct Backends {
    tcp: SocketAddr,
    udp: SocketAddr,
    _servers: (TcpAnswer, UdpEcho),
}

impl Backends {
    fn start(lo: &str) -> Backends {
        let listener = TcpListener::bind((lo, 0)).unwrap();
        let udp = UdpSocket::bind((lo, 0)).unwrap();
        let (tcp_addr, udp_addr) = (listener.local_addr().unwrap(), udp.local_addr().unwrap());
        Backends {
            tcp: tcp_addr,
            udp: udp_addr,
            _servers: (
                TcpAnswer::spawn(listener, "be-tcp").unwrap(),
                UdpEcho::spawn(udp, "be-udp").unwrap(),
            ),
        }
    }
}

/// Frontends VIP:80/TCP and VIP:53/UDP of both families, each with its loopback backend.
fn program_services(dp: &mut Dataplane, b4: &Backends, b6: &Backends) {
    let mut m = dp.maps();
    let mut id = 100;
    for (vip, be) in [(VIP4, b4), (VIP6, b6)] {
        let vip: IpAddr = vip.parse().unwrap();
        for (port, proto, backend) in [(80, IPPROTO_TCP, be.tcp), (53, IPPROTO_UDP, be.udp)] {
            id += 1;
            m.set_backend(
                &NatBeKey {
                    svc_id: id,
                    slot: 0,
                },
                &NatBeVal::new(backend.ip(), backend.port(), SV_NAT_BE_F_LOCAL),
            )
            .unwrap();
            m.set_frontend(
                &NatFeKey::new(vip, port, proto),
                &NatFeVal {
                    svc_id: id,
                    count: 1,
                    local_count: 1,
                    flags: 0,
                    affinity_timeout_s: 0,
                    pad: 0,
                },
            )
            .unwrap();
        }
    }
}

fn vip(v: &str, port: u16) -> SocketAddr {
    SocketAddr::new(v.parse().unwrap(), port)
}

struct Setup {
    /// Children `a` (where the tests attach) and `b` (no programs).
    cg: TestCgroups,
    scope: ScopeGuard,
    dp: Dataplane,
    _b4: Backends,
    _b6: Backends,
}

fn setup(test: &str) -> Option<Setup> {
    if !require_root(test) {
        return None;
    }
    let Some(cg) = TestCgroups::new("svctlb", &["a", "b"]) else {
        eprintln!("skipping {test}: no writable cgroup v2 hierarchy (cgroup2 not mounted)");
        return None;
    };
    let scope = ScopeGuard(PinScope::new(&unique_name("svctlb", 40)).unwrap());
    let mut dp = Dataplane::load(&LoadOptions {
        pins: Some(scope.0.clone()),
        sizes: MapSizes::default(),
        log_level: LogLevel::Off,
    })
    .expect("load the tc object (creates the pinned maps)");
    let (b4, b6) = (Backends::start("127.0.0.1"), Backends::start("::1"));
    program_services(&mut dp, &b4, &b6);
    Some(Setup {
        cg,
        scope,
        dp,
        _b4: b4,
        _b6: b6,
    })
}

#[test]
fn tcp_mode_translates_tcp_in_its_cgroup_only() {
    let Some(s) = setup("tcp_mode_translates_tcp_in_its_cgroup_only") else {
        return;
    };
    let mut ctlb = Ctlb::load(
        &s.scope.0,
        &MapSizes::default(),
        LogLevel::Off,
        CtlbProtocols::Tcp,
    )
    .expect("load the ctlb object");
    assert_eq!(ctlb.attach(&s.cg.child("a")).expect("attach"), 8);
    assert_eq!(cgroup::attached(&s.scope.0).unwrap().len(), 8);
    for v in [VIP4, VIP6] {
        let got = client(&s.cg.child("a"), "tcp", vip(v, 80));
        assert_eq!(
            got,
            format!("peer={} reply=be-tcp", vip(v, 80)),
            "TCP to {v}:80 from the programs' cgroup"
        );
        // TCP mode: UDP is left to tc (nothing here answers the frontend itself).
        let got = client(&s.cg.child("a"), "udp", vip(v, 53));
        assert!(
            got.starts_with("error="),
            "UDP to {v}:53 in TCP mode: {got}"
        );
        // The sibling cgroup has no programs.
        let got = client(&s.cg.child("b"), "tcp", vip(v, 80));
        assert!(
            got.starts_with("error="),
            "TCP to {v}:80 from the other cgroup: {got}"
        );
    }
    drop(ctlb);
    // The pinned links keep the programs attached after the loader is gone.
    let got = client(&s.cg.child("a"), "tcp", vip(VIP4, 80));
    assert_eq!(got, format!("peer={} reply=be-tcp", vip(VIP4, 80)));
    assert_eq!(cgroup::detach(&s.scope.0).unwrap(), 8);
    assert!(cgroup::attached(&s.scope.0).unwrap().is_empty());
    let got = client(&s.cg.child("a"), "tcp", vip(VIP4, 80));
    assert!(got.starts_with("error="), "after detach: {got}");
    drop(s.dp);
}

#[test]
fn enabled_mode_translates_unconnected_udp_and_replies_come_from_the_service() {
    let Some(s) =
        setup("enabled_mode_translates_unconnected_udp_and_replies_come_from_the_service")
    else {
        return;
    };
    let mut ctlb = Ctlb::load(
        &s.scope.0,
        &MapSizes::default(),
        LogLevel::Debug,
        CtlbProtocols::TcpUdp,
    )
    .expect("load the ctlb object");
    ctlb.attach(&s.cg.child("a")).expect("attach");
    // A second load (an agent restart) replaces the links in place.
    let mut again = Ctlb::load(
        &s.scope.0,
        &MapSizes::default(),
        LogLevel::Off,
        CtlbProtocols::TcpUdp,
    )
    .expect("load again");
    again.attach(&s.cg.child("a")).expect("attach again");
    let pins = cgroup::attached(&s.scope.0).unwrap();
    assert_eq!(pins.len(), 8, "{pins:?}");
    assert!(pins.iter().all(|p| !p.ends_with("-new")), "{pins:?}");
    for v in [VIP4, VIP6] {
        let got = client(&s.cg.child("a"), "udp", vip(v, 53));
        assert_eq!(
            got,
            format!("peer={} reply=be-udp:ping", vip(v, 53)),
            "UDP to {v}:53: the reply must come from the service address"
        );
        let got = client(&s.cg.child("a"), "tcp", vip(v, 80));
        assert_eq!(got, format!("peer={} reply=be-tcp", vip(v, 80)));
        let got = client(&s.cg.child("b"), "udp", vip(v, 53));
        assert!(
            got.starts_with("error="),
            "UDP from the other cgroup: {got}"
        );
    }
    drop((ctlb, again));
    // The crate's cleanup removes the cgroup links with everything else.
    cleanup(&s.scope.0, None).expect("cleanup");
    assert!(!s.scope.0.dir().exists(), "scope directory left behind");
    let got = client(&s.cg.child("a"), "udp", vip(VIP4, 53));
    assert!(got.starts_with("error="), "after cleanup: {got}");
    drop(s.dp);
}

/// `TCP` mode with the host's own sockets ([`HostSockets`]): UDP from a socket of the given
/// network namespace is translated (Calico NATs host-networked UDP in tc in this mode), from
/// any other namespace it is not.
#[test]
fn host_sockets_get_udp_in_tcp_mode() {
    let Some(s) = setup("host_sockets_get_udp_in_tcp_mode") else {
        return;
    };
    let here = cgroup::netns_cookie().expect("SO_NETNS_COOKIE");
    let other_ns = serval_sys::testing::NetNsGuard::new("svctlbh").expect("a namespace");
    let other = other_ns
        .run(cgroup::netns_cookie)
        .expect("run in the namespace")
        .expect("its cookie");
    assert_ne!(here, other);
    for (cookie, translated) in [(other, false), (here, true)] {
        let mut ctlb = Ctlb::load_with_host(
            &s.scope.0,
            &MapSizes::default(),
            LogLevel::Off,
            CtlbProtocols::Tcp,
            Some(HostSockets {
                netns_cookie: cookie,
                tcp: false,
                udp: true,
            }),
        )
        .expect("load the ctlb object");
        ctlb.attach(&s.cg.child("a")).expect("attach");
        for v in [VIP4, VIP6] {
            let got = client(&s.cg.child("a"), "udp", vip(v, 53));
            if translated {
                assert_eq!(
                    got,
                    format!("peer={} reply=be-udp:ping", vip(v, 53)),
                    "host UDP to {v}:53"
                );
            } else {
                assert!(
                    got.starts_with("error="),
                    "UDP of another namespace's host: {got}"
                );
            }
            // TCP as in plain TCP mode.
            let got = client(&s.cg.child("a"), "tcp", vip(v, 80));
            assert_eq!(got, format!("peer={} reply=be-tcp", vip(v, 80)));
        }
    }
    drop(s.dp);
}

/// A loopback TCP server answering `name`; stopped on drop.
struct Named(
    SocketAddr,
    #[expect(dead_code, reason = "held to keep the server running")] TcpAnswer,
);

impl Named {
    fn start(name: &'static str) -> Named {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        Named(addr, TcpAnswer::spawn(listener, name).unwrap())
    }
}

/// The backend names that `tries` connections to `to` from the cgroup reached.
fn reached(cg: &Path, to: SocketAddr, tries: usize) -> std::collections::BTreeSet<String> {
    (0..tries)
        .map(|_| {
            let got = client(cg, "tcp", to);
            got.split_once("reply=")
                .unwrap_or_else(|| panic!("{got}"))
                .1
                .to_string()
        })
        .collect()
}

/// Backend choice as the tc path makes it: ClientIP affinity keeps a client (its network
/// namespace) on one backend and records it in sv_nat_aff; internalTrafficPolicy Local picks
/// among the node-local slots only; otherwise both backends are used.
#[test]
fn affinity_and_internal_traffic_policy_local() {
    let Some(mut s) = setup("affinity_and_internal_traffic_policy_local") else {
        return;
    };
    let (one, two) = (Named::start("be-1"), Named::start("be-2"));
    let vip4: IpAddr = VIP4.parse().unwrap();
    let services = [
        (81, 201, SV_NAT_FE_F_AFFINITY),
        (82, 202, SV_NAT_FE_F_INT_LOCAL),
        (83, 203, 0),
    ];
    {
        let mut m = s.dp.maps();
        for (port, id, flags) in services {
            // Slot 0 is the node-local one (local backends come first).
            for (slot, be, bflags) in [(0, &two, SV_NAT_BE_F_LOCAL), (1, &one, 0)] {
                m.set_backend(
                    &NatBeKey { svc_id: id, slot },
                    &NatBeVal::new(be.0.ip(), be.0.port(), bflags),
                )
                .unwrap();
            }
            m.set_frontend(
                &NatFeKey::new(vip4, port, IPPROTO_TCP),
                &NatFeVal {
                    svc_id: id,
                    count: 2,
                    local_count: 1,
                    flags,
                    affinity_timeout_s: 600,
                    pad: 0,
                },
            )
            .unwrap();
        }
    }
    let mut ctlb = Ctlb::load(
        &s.scope.0,
        &MapSizes::default(),
        LogLevel::Off,
        CtlbProtocols::Tcp,
    )
    .expect("load");
    ctlb.attach(&s.cg.child("a")).expect("attach");

    let sticky = reached(&s.cg.child("a"), vip(VIP4, 81), 12);
    assert_eq!(
        sticky.len(),
        1,
        "affinity: one backend for the client, got {sticky:?}"
    );
    // The affinity entry: client 100::/64 + the client's netns cookie (ours), service 201.
    let cookie = cgroup::netns_cookie().unwrap();
    let mut client = [0u8; 16];
    client[0] = 1;
    client[8..12].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
    client[12..16].copy_from_slice(&(cookie as u32).to_ne_bytes());
    let entry =
        s.dp.maps()
            .affinity(&NatAffKey {
                client: Addr(client),
                svc_id: 201,
            })
            .unwrap()
            .expect("an affinity entry for the client's namespace");
    let chosen = if entry.addr == Addr::new(two.0.ip()) && entry.port == two.0.port().to_be() {
        "be-2"
    } else {
        "be-1"
    };
    assert_eq!(sticky.iter().next().map(String::as_str), Some(chosen));

    let local = reached(&s.cg.child("a"), vip(VIP4, 82), 12);
    assert_eq!(
        local,
        ["be-2".to_string()].into(),
        "internalTrafficPolicy Local: the node-local slot only"
    );
    let both = reached(&s.cg.child("a"), vip(VIP4, 83), 20);
    assert_eq!(
        both.len(),
        2,
        "no affinity, no Local: both backends, got {both:?}"
    );
    drop(ctlb);
}
