//! Privileged, end to end: a workload in its own namespace behind a veth whose host end
//! carries the programs connects to a service frontend without backends and is refused
//! (TCP: the RST makes connect fail with ECONNREFUSED; UDP: the ICMP port unreachable makes
//! the next receive fail with ECONNREFUSED), not left to time out. The client's ingress policy
//! denies everything: the answer must still arrive. Unique namespaces, names and pin scope,
//! removed on drop even on panic.

#[expect(
    dead_code,
    reason = "the shared helpers include packet builders and private-map fixtures this test does not use"
)]
mod common;

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

use common::fixture::{small_sizes, verdict};
use serval_dp_bpf::testing::ScopeGuard;
use serval_dp_bpf::{AttachMode, Dataplane, Hook, LoadOptions, LogLevel, PinScope, abi::*};
use serval_sys::testing::{NetNsGuard, require_root, unique_name};

const EP: u32 = 7;
const HOST_MAC: &str = "ee:ee:ee:ee:ee:ee";
const CLIENT4: &str = "10.77.0.2";
const VIP4: &str = "10.77.9.9";
const CLIENT6: &str = "fd77::2";
const VIP6: &str = "fd77::9:9";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ifindex(ns: &str, ifname: &str) -> u32 {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show", ifname])
        .output()
        .expect("run ip");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(':').next().unwrap().trim().parse().unwrap()
}

#[test]
fn workload_connecting_to_a_service_without_backends_is_refused() {
    if !require_root("workload_connecting_to_a_service_without_backends_is_refused") {
        return;
    }
    let host_ns = NetNsGuard::new("sv-rejh").expect("host namespace");
    let pod_ns = NetNsGuard::new("sv-rejp").expect("pod namespace");
    let host = unique_name("svrh", 15);
    let (h, p) = (host_ns.name(), pod_ns.name());
    ip(&[
        "-n", h, "link", "add", &host, "address", HOST_MAC, "type", "veth", "peer", "name", "eth0",
        "netns", p,
    ]);
    ip(&["-n", h, "link", "set", &host, "up"]);
    ip(&["-n", p, "link", "set", "lo", "up"]);
    ip(&["-n", p, "link", "set", "eth0", "up"]);
    ip(&[
        "-n",
        p,
        "addr",
        "add",
        &format!("{CLIENT4}/32"),
        "dev",
        "eth0",
    ]);
    ip(&[
        "-n",
        p,
        "-6",
        "addr",
        "add",
        &format!("{CLIENT6}/128"),
        "dev",
        "eth0",
        "nodad",
    ]);
    for vip in [VIP4, VIP6] {
        ip(&["-n", p, "route", "add", vip, "dev", "eth0"]);
        ip(&[
            "-n",
            p,
            "neigh",
            "add",
            vip,
            "lladdr",
            HOST_MAC,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]);
    }
    let index = ifindex(h, &host);

    let scope = PinScope::new(&unique_name("test-", 40)).unwrap();
    let _guard = ScopeGuard(scope.clone());
    let mut dp = Dataplane::load(&LoadOptions {
        pins: Some(scope.clone()),
        sizes: small_sizes(),
        log_level: LogLevel::Off,
    })
    .expect("load");
    let client4: IpAddr = CLIENT4.parse().unwrap();
    let client6: IpAddr = CLIENT6.parse().unwrap();
    let vip4: IpAddr = VIP4.parse().unwrap();
    let vip6: IpAddr = VIP6.parse().unwrap();
    {
        let mut maps = dp.maps();
        maps.set_endpoint(index, &EpVal::new(EP, &[client4, client6]))
            .unwrap();
        let allow = verdict(SV_VERDICT_ALLOW, 1);
        let deny = verdict(SV_VERDICT_DENY, 2);
        maps.set_policy(
            &pol_key_any_proto(EP, SV_IDENTITY_ANY, SV_DIR_EGRESS),
            &allow,
        )
        .unwrap();
        maps.set_policy(
            &pol_key_any_proto(EP, SV_IDENTITY_ANY, SV_DIR_INGRESS),
            &deny,
        )
        .unwrap();
        for vip in [vip4, vip6] {
            for proto in [6u8, 17] {
                maps.set_frontend(
                    &NatFeKey::new(vip, 80, proto),
                    &NatFeVal {
                        svc_id: 1,
                        ..NatFeVal::default()
                    },
                )
                .unwrap();
            }
        }
    }
    for hook in Hook::ALL {
        dp.attach(&host_ns, &host, hook, AttachMode::Tcx)
            .expect("attach");
    }

    let results = pod_ns
        .run(move || {
            let mut out = Vec::new();
            for vip in [vip4, vip6] {
                let to = SocketAddr::new(vip, 80);
                let tcp = TcpStream::connect_timeout(&to, Duration::from_secs(10))
                    .map(|_| ())
                    .map_err(|e| e.kind());
                let udp = (|| {
                    let bind: SocketAddr = if vip.is_ipv4() {
                        "0.0.0.0:0".parse().unwrap()
                    } else {
                        "[::]:0".parse().unwrap()
                    };
                    let sock = UdpSocket::bind(bind)?;
                    sock.connect(to)?;
                    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
                    sock.send(b"anyone there?")?;
                    let mut buf = [0u8; 64];
                    sock.recv(&mut buf).map(|_| ())
                })()
                .map_err(|e| e.kind());
                out.push((vip, tcp, udp));
            }
            out
        })
        .expect("run in the pod namespace");
    for (vip, tcp, udp) in results {
        assert_eq!(tcp, Err(ErrorKind::ConnectionRefused), "TCP to {vip}:80");
        assert_eq!(udp, Err(ErrorKind::ConnectionRefused), "UDP to {vip}:80");
    }
    assert!(
        dp.maps().drop_counters().unwrap().get(SV_DROP_NO_BACKEND) >= 4,
        "counted as no_backend"
    );
}
