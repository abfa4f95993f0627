//! Maglev end to end (issue 6), in a real dual-stack eBPF lab, as root: a service annotated
//! `lb.projectcalico.org/external-traffic-strategy: maglev` with four backends on two nodes,
//! reached from the `outside` host at its externalIPs and LoadBalancer ingress IPs with fixed
//! client source ports,
//!
//! - through node1 and then through node2 (the outside host's route to the externalIP moved):
//!   every flow (same 5-tuple) is answered by the same backend through either node, TCP and
//!   UDP, IPv4 and IPv6, and the flows spread over all four backends;
//! - after one of the four backends is deleted, a set of flows measured through node1 before
//!   and through node2 after (node2 never saw those tuples, so no conntrack entry keeps them):
//!   every flow of the deleted backend moves, and about 1/4 of all flows move (Maglev moves
//!   little else; a random choice would move about 3/4).
//!
//! Runs only with `SERVAL_CONFORMANCE_DATAPLANE=bpf` (Maglev is an eBPF dataplane feature; the
//! iptables dataplane picks backends at random): `SERVAL_CONFORMANCE_DATAPLANE=bpf cargo test
//! -p serval-conformance --test maglev`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use serval_conformance::{Lab, converge, converge_timeout};
use serval_model::net::IpFamily;
use serval_model::types::Protocol;
use serval_model::{Kind, ResourceKey};
use serval_sys::NetNs;
use socket2::{Domain, Socket, Type};

const EXT_V4: &str = "203.0.113.40";
const EXT_V6: &str = "2001:db8:5e::40";
/// The service's LoadBalancer ingress IPs (`status.loadBalancer.ingress`).
const LB_V4: &str = "203.0.113.41";
const LB_V6: &str = "2001:db8:5e::41";
const PORT: u16 = 80;
const BACKENDS: [(&str, &str); 4] = [
    ("mg-1", "node1"),
    ("mg-2", "node2"),
    ("mg-3", "node1"),
    ("mg-4", "node2"),
];

fn yaml() -> String {
    let mut y = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: mg}\n");
    for (pod, node) in BACKENDS {
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: mg, labels: {{app: mg}}}}\n\
             spec:\n  nodeName: {node}\n  containers:\n  - name: c\n    ports:\n    \
             - {{name: http, containerPort: 80, protocol: TCP}}\n    \
             - {{name: dns, containerPort: 80, protocol: UDP}}\n"
        ));
    }
    y.push_str(&format!(
        "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: mg\n  namespace: mg\n  annotations:\n    \
         lb.projectcalico.org/external-traffic-strategy: maglev\nspec:\n  type: LoadBalancer\n  \
         ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  selector: {{app: mg}}\n  \
         externalIPs: [\"{EXT_V4}\", \"{EXT_V6}\"]\n  ports:\n  \
         - {{name: t, port: {PORT}, protocol: TCP}}\n  - {{name: u, port: {PORT}, protocol: UDP}}\n\
         status:\n  loadBalancer:\n    ingress: [{{ip: \"{LB_V4}\"}}, {{ip: \"{LB_V6}\"}}]\n"
    ));
    y
}

/// One flow from the outside host: `src:sport` → `dst:PORT`; the backend pod's answer
/// (`mg/POD`), or the error.
fn ask(
    outside: &NetNs,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    proto: Protocol,
) -> io::Result<String> {
    outside
        .run(|| -> io::Result<String> {
            let to = SocketAddr::new(dst, PORT);
            let from = SocketAddr::new(src, sport);
            let timeout = Duration::from_millis(1500);
            match proto {
                Protocol::Udp => {
                    let u = UdpSocket::bind(from)?;
                    u.connect(to)?;
                    u.set_read_timeout(Some(Duration::from_millis(500)))?;
                    let mut buf = [0u8; 256];
                    for _ in 0..3 {
                        u.send(b"maglev?")?;
                        if let Ok(n) = u.recv(&mut buf) {
                            return Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string());
                        }
                    }
                    Err(io::Error::new(io::ErrorKind::TimedOut, "no UDP answer"))
                }
                _ => {
                    let s = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
                    s.set_reuse_address(true)?;
                    s.bind(&from.into())?;
                    s.connect_timeout(&to.into(), timeout)?;
                    let mut t: TcpStream = s.into();
                    t.set_read_timeout(Some(timeout))?;
                    let _ = t.write_all(b"maglev?\n");
                    let mut out = String::new();
                    t.read_to_string(&mut out)?;
                    Ok(out.trim().to_string())
                }
            }
        })
        .map_err(io::Error::other)?
}

/// Routes the service address `ext` via `node` on the outside host.
fn route_via(lab: &Lab, ext: IpAddr, node: &str) {
    let family = IpFamily::of_addr(&ext);
    let (flag, len) = match family {
        IpFamily::V4 => ("-4", 32),
        IpFamily::V6 => ("-6", 128),
    };
    let gw = lab
        .node_addr(node, family)
        .expect("node address")
        .to_string();
    let dst = format!("{ext}/{len}");
    let o = lab.exec(
        "outside",
        &["ip", flag, "route", "replace", &dst, "via", &gw],
    );
    assert!(
        o.status.success(),
        "routing {dst} via {node}: {}",
        serval_conformance::lab::describe(&o)
    );
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The backend of each flow from `ports` (all must be answered).
fn backends(
    lab: &Lab,
    outside: &NetNs,
    ext: IpAddr,
    proto: Protocol,
    ports: impl IntoIterator<Item = u16>,
) -> BTreeMap<u16, String> {
    let src = lab
        .outside_addr(IpFamily::of_addr(&ext))
        .expect("outside address");
    ports
        .into_iter()
        .map(|sport| {
            let who = ask(outside, src, sport, ext, proto)
                .unwrap_or_else(|e| panic!("{proto:?} from {src}:{sport} to {ext}: {e}"));
            (sport, who)
        })
        .collect()
}

#[test]
fn maglev_picks_one_backend_per_flow_on_every_node_and_moves_one_nth_on_removal() {
    if !serval_conformance::is_root() {
        eprintln!("skipped: the Maglev lab test needs root (labs: network namespaces, veths)");
        return;
    }
    if std::env::var("SERVAL_CONFORMANCE_DATAPLANE").as_deref() != Ok("bpf") {
        eprintln!(
            "skipped: Maglev is an eBPF dataplane feature; run with SERVAL_CONFORMANCE_DATAPLANE=bpf"
        );
        return;
    }
    let lab = Lab::up("mglv", &["--nodes", "2", "--ip-family", "dual"]).expect("lab up");
    lab.apply_yaml("maglev", &yaml()).expect("apply");
    lab.wait_pods().expect("pods ready");
    let outside = NetNs::open(&lab.netns("outside")).expect("outside netns");

    // Every frontend: the externalIPs and the LoadBalancer ingress IPs.
    let frontends = [ip(EXT_V4), ip(EXT_V6), ip(LB_V4), ip(LB_V6)];

    // Before measuring, every backend answers through both nodes (the agents program
    // asynchronously; a node that has not yet seen every backend has another table).
    let mut next_port = 20000u16;
    for ext in frontends {
        let src = lab
            .outside_addr(IpFamily::of_addr(&ext))
            .expect("outside address");
        for node in ["node1", "node2"] {
            route_via(&lab, ext, node);
            let (ok, last) = converge(converge_timeout(), || {
                let mut seen = BTreeSet::new();
                for _ in 0..40 {
                    next_port += 1;
                    match ask(&outside, src, next_port, ext, Protocol::Tcp) {
                        Ok(who) => seen.insert(who),
                        Err(e) => return Ok((false, format!("{e}"))),
                    };
                }
                Ok((seen.len() == BACKENDS.len(), format!("{seen:?}")))
            })
            .unwrap();
            assert!(ok, "{ext} via {node}: not every backend answers: {last}");
        }
    }

    // 1. Same flow, same backend, through either node.
    for ext in frontends {
        for proto in [Protocol::Tcp, Protocol::Udp] {
            let base = if proto == Protocol::Tcp { 30000 } else { 31000 };
            let ports: Vec<u16> = (base..base + 60).collect();
            route_via(&lab, ext, "node1");
            let via1 = backends(&lab, &outside, ext, proto, ports.iter().copied());
            route_via(&lab, ext, "node2");
            let via2 = backends(&lab, &outside, ext, proto, ports.iter().copied());
            let differ: Vec<_> = ports
                .iter()
                .filter(|p| via1[p] != via2[p])
                .map(|p| format!("{p}: {} / {}", via1[p], via2[p]))
                .collect();
            assert!(
                differ.is_empty(),
                "{ext} {proto:?}: flows answered by different backends via node1 / node2: {differ:?}"
            );
            let spread: BTreeSet<&String> = via1.values().collect();
            println!(
                "{ext} {proto:?}: 60 flows, same backend via both nodes, spread over {spread:?}"
            );
            assert_eq!(
                spread.len(),
                BACKENDS.len(),
                "60 flows reached only {spread:?}"
            );
        }
    }

    // 2. Removing one of four backends: measure via node1, delete, measure via node2.
    let exts = [ip(EXT_V4), ip(EXT_V6)];
    let ports: Vec<u16> = (40000..40200).collect();
    let mut before = BTreeMap::new();
    for ext in exts {
        route_via(&lab, ext, "node1");
        let b = backends(&lab, &outside, ext, Protocol::Tcp, ports.iter().copied());
        before.insert(ext, b);
    }
    let gone = "mg/mg-4";
    lab.delete(&[ResourceKey::new(Kind::Pod, Some("mg"), "mg-4")])
        .expect("delete a backend");
    let mut probe_port = 45000u16;
    for ext in exts {
        route_via(&lab, ext, "node2");
        // Until node2's table no longer names the deleted backend: 40 fresh flows in a row
        // answered by the others.
        let src = lab.outside_addr(IpFamily::of_addr(&ext)).unwrap();
        let (ok, last) = converge(converge_timeout(), || {
            let mut answers = Vec::new();
            for _ in 0..40 {
                probe_port += 1;
                let r = ask(&outside, src, probe_port, ext, Protocol::Tcp);
                let done = matches!(&r, Ok(w) if w != gone);
                answers.push(r.map_err(|e| e.to_string()));
                if !done {
                    return Ok((false, answers));
                }
            }
            Ok((true, answers))
        })
        .unwrap();
        assert!(
            ok,
            "{ext}: node2 still answers from {gone} (or fails): {last:?}"
        );
        let after = backends(&lab, &outside, ext, Protocol::Tcp, ports.iter().copied());
        let before = &before[&ext];
        let moved = ports.iter().filter(|p| before[p] != after[p]).count();
        let on_gone = ports.iter().filter(|p| before[*p] == gone).count();
        let f = moved as f64 / ports.len() as f64;
        println!(
            "{ext}: removing 1 of {} backends moved {moved} of {} flows ({f:.3}); {on_gone} \
             were on the removed backend",
            BACKENDS.len(),
            ports.len()
        );
        assert!(after.values().all(|w| w != gone));
        assert!(moved >= on_gone, "the removed backend's flows must move");
        assert!(
            f <= 1.0 / BACKENDS.len() as f64 + 0.1,
            "{ext}: moved {f:.3} of the flows; Maglev should move about 1/{}",
            BACKENDS.len()
        );
    }
}
