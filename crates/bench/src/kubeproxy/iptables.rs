//! kube-proxy's iptables mode, rendered as the `iptables-restore` input its `syncProxyRules`
//! writes for ClusterIP services:
//!
//! ```text
//! PREROUTING/OUTPUT → KUBE-SERVICES ─(-d VIP --dport P)→ KUBE-SVC-<hash>
//!     KUBE-SVC-<hash>: ! -s <cluster CIDR> → KUBE-MARK-MASQ;
//!                      -m statistic --probability 1/n, 1/(n-1), … → KUBE-SEP-<hash>
//!     KUBE-SEP-<hash>: -s <endpoint> → KUBE-MARK-MASQ; DNAT --to-destination <endpoint>
//! POSTROUTING → KUBE-POSTROUTING: MASQUERADE what KUBE-MARK-MASQ marked
//! ```
//!
//! Chain names use kube-proxy's hashes (`KUBE-SVC-` + base32(sha256(port name + protocol))[:16],
//! `KUBE-SEP-` + base32(sha256(port name + protocol + endpoint))[:16]); comments and match
//! order are kube-proxy's. Not rendered: NodePorts, external IPs, load balancers, session
//! affinity, and the `nfacct` counter on the INVALID drop (it needs the nfacct object) — none
//! of them is on the path of a ClusterIP connection.

use std::fmt::Write as _;

use super::{MASQ_MARK, ServicePort, sha256_base32};

const SERVICES: &str = "KUBE-SERVICES";
const NODEPORTS: &str = "KUBE-NODEPORTS";
const MARK_MASQ: &str = "KUBE-MARK-MASQ";
const POSTROUTING: &str = "KUBE-POSTROUTING";
const FORWARD: &str = "KUBE-FORWARD";
const EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
const FIREWALL: &str = "KUBE-FIREWALL";
const PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";

/// The chains kube-proxy keeps in the filter table (rewritten on every sync).
const FILTER_CHAINS: [&str; 6] = [
    NODEPORTS,
    SERVICES,
    EXTERNAL_SERVICES,
    FIREWALL,
    FORWARD,
    PROXY_FIREWALL,
];
/// The fixed chains kube-proxy keeps in the nat table.
const NAT_CHAINS: [&str; 4] = [NODEPORTS, SERVICES, MARK_MASQ, POSTROUTING];

/// The jumps from the built-in chains, as kube-proxy ensures them (`iptables -I CHAIN 1`):
/// (table, built-in chain, rule spec after the chain name).
const JUMPS: [(&str, &str, &str); 6] = [
    (
        "filter",
        "FORWARD",
        "-m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD",
    ),
    (
        "filter",
        "FORWARD",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
    (
        "filter",
        "OUTPUT",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
    (
        "nat",
        "PREROUTING",
        "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
    (
        "nat",
        "OUTPUT",
        "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
    (
        "nat",
        "POSTROUTING",
        "-m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
    ),
];

/// `KUBE-SVC-…` of a service port.
pub fn service_chain(svc: &ServicePort) -> String {
    let hash = sha256_base32(&format!("{}tcp", svc.port_name_string()));
    format!("KUBE-SVC-{}", &hash[..16])
}

/// `KUBE-SEP-…` of one endpoint of a service port.
pub fn endpoint_chain(svc: &ServicePort, endpoint: &std::net::SocketAddrV4) -> String {
    let hash = sha256_base32(&format!("{}tcp{endpoint}", svc.port_name_string()));
    format!("KUBE-SEP-{}", &hash[..16])
}

/// A comment argument as kube-proxy writes it: quoted when it has spaces.
fn comment(text: &str) -> String {
    if text.contains(' ') {
        format!("-m comment --comment \"{text}\"")
    } else {
        format!("-m comment --comment {text}")
    }
}

/// The whole ruleset for `services`, for `iptables-restore --noflush` into a node with no
/// kube-proxy rules yet: chains, rules, and the jumps from the built-in chains.
/// `cluster_cidr` is kube-proxy's `--cluster-cidr` (traffic from outside it is masqueraded).
pub fn render_full(services: &[ServicePort], cluster_cidr: &str) -> String {
    render(services, services, cluster_cidr, true)
}

/// What kube-proxy's partial sync writes when `new` is added to `all` (which includes it):
/// the fixed chains and the whole `KUBE-SERVICES` chain rewritten, plus the new service's
/// chains; every other service's chains are left alone.
pub fn render_add(all: &[ServicePort], new: &ServicePort, cluster_cidr: &str) -> String {
    render(all, std::slice::from_ref(new), cluster_cidr, false)
}

fn render(
    all: &[ServicePort],
    changed: &[ServicePort],
    cluster_cidr: &str,
    with_jumps: bool,
) -> String {
    let mut out = String::with_capacity(256 + changed.len() * 900 + all.len() * 160);
    // filter
    out.push_str("*filter\n");
    for c in FILTER_CHAINS {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    if with_jumps {
        push_jumps(&mut out, "filter", "-I", " 1");
    }
    let _ = writeln!(out, "-A {FORWARD} -m conntrack --ctstate INVALID -j DROP");
    let _ = writeln!(
        out,
        "-A {FORWARD} {} -m mark --mark {MASQ_MARK:#x}/{MASQ_MARK:#x} -j ACCEPT",
        comment("kubernetes forwarding rules")
    );
    let _ = writeln!(
        out,
        "-A {FORWARD} {} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        comment("kubernetes forwarding conntrack rule")
    );
    out.push_str("COMMIT\n");

    // nat
    out.push_str("*nat\n");
    for c in NAT_CHAINS {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    for svc in changed {
        let _ = writeln!(out, ":{} - [0:0]", service_chain(svc));
        for ep in &svc.endpoints {
            let _ = writeln!(out, ":{} - [0:0]", endpoint_chain(svc, ep));
        }
    }
    if with_jumps {
        push_jumps(&mut out, "nat", "-I", " 1");
    }
    let _ = writeln!(
        out,
        "-A {POSTROUTING} -m mark ! --mark {MASQ_MARK:#x}/{MASQ_MARK:#x} -j RETURN"
    );
    let _ = writeln!(out, "-A {POSTROUTING} -j MARK --xor-mark {MASQ_MARK:#x}");
    let _ = writeln!(
        out,
        "-A {POSTROUTING} {} -j MASQUERADE --random-fully",
        comment("kubernetes service traffic requiring SNAT")
    );
    let _ = writeln!(out, "-A {MARK_MASQ} -j MARK --or-mark {MASQ_MARK:#x}");
    // KUBE-SERVICES: one rule per service port, in order (the target is the last).
    for svc in all {
        let _ = writeln!(
            out,
            "-A {SERVICES} {} -m tcp -p tcp -d {} --dport {} -j {}",
            comment(&format!("{} cluster IP", svc.port_name_string())),
            svc.cluster_ip,
            svc.port,
            service_chain(svc)
        );
    }
    let _ = writeln!(
        out,
        "-A {SERVICES} {} -m addrtype --dst-type LOCAL -j {NODEPORTS}",
        comment("kubernetes service nodeports; NOTE: this must be the last rule in this chain")
    );
    for svc in changed {
        push_service_chains(&mut out, svc, cluster_cidr);
    }
    out.push_str("COMMIT\n");
    out
}

fn push_jumps(out: &mut String, table: &str, op: &str, position: &str) {
    for (t, chain, spec) in JUMPS {
        if t == table {
            let _ = writeln!(out, "{op} {chain}{position} {spec}");
        }
    }
}

/// `KUBE-SVC-…` (masquerade off-cluster sources, then pick an endpoint with the `statistic`
/// match: probability 1/n for the first of n, 1/(n-1) for the next, …, none for the last)
/// and one `KUBE-SEP-…` per endpoint.
fn push_service_chains(out: &mut String, svc: &ServicePort, cluster_cidr: &str) {
    let name = svc.port_name_string();
    let svc_chain = service_chain(svc);
    let _ = writeln!(
        out,
        "-A {svc_chain} {} -m tcp -p tcp -d {} --dport {} ! -s {cluster_cidr} -j {MARK_MASQ}",
        comment(&format!("{name} cluster IP")),
        svc.cluster_ip,
        svc.port
    );
    let n = svc.endpoints.len();
    for (i, ep) in svc.endpoints.iter().enumerate() {
        let sep = endpoint_chain(svc, ep);
        let c = comment(&format!("{name} -> {ep}"));
        if i + 1 < n {
            let p = 1.0 / (n - i) as f64;
            let _ = writeln!(
                out,
                "-A {svc_chain} {c} -m statistic --mode random --probability {p:.10} -j {sep}"
            );
        } else {
            let _ = writeln!(out, "-A {svc_chain} {c} -j {sep}");
        }
    }
    for ep in &svc.endpoints {
        let sep = endpoint_chain(svc, ep);
        let _ = writeln!(
            out,
            "-A {sep} {} -s {} -j {MARK_MASQ}",
            comment(&name),
            ep.ip()
        );
        let _ = writeln!(
            out,
            "-A {sep} {} -m tcp -p tcp -j DNAT --to-destination {ep}",
            comment(&name)
        );
    }
}

/// Removes everything [`render_full`] (and later [`render_add`]s) made, for
/// `iptables-restore --noflush`: the jumps from the built-in chains, then every kube-proxy
/// chain flushed and deleted. Other rules in the node are not touched.
pub fn render_cleanup(services: &[ServicePort]) -> String {
    let mut out = String::with_capacity(128 + services.len() * 120);
    out.push_str("*filter\n");
    for c in FILTER_CHAINS {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    push_jumps(&mut out, "filter", "-D", "");
    for c in FILTER_CHAINS {
        let _ = writeln!(out, "-X {c}");
    }
    out.push_str("COMMIT\n*nat\n");
    let mut chains: Vec<String> = NAT_CHAINS.iter().map(|c| (*c).to_string()).collect();
    for svc in services {
        chains.push(service_chain(svc));
        for ep in &svc.endpoints {
            chains.push(endpoint_chain(svc, ep));
        }
    }
    for c in &chains {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    push_jumps(&mut out, "nat", "-D", "");
    for c in &chains {
        let _ = writeln!(out, "-X {c}");
    }
    out.push_str("COMMIT\n");
    out
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::*;

    fn two_services() -> Vec<ServicePort> {
        let eps = |last: u8| {
            (1..=last)
                .map(|k| SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, k), 7777))
                .collect::<Vec<_>>()
        };
        vec![
            ServicePort {
                namespace: "ns1".into(),
                name: "svc1".into(),
                port_name: "p80".into(),
                cluster_ip: Ipv4Addr::new(172, 30, 0, 41),
                port: 80,
                endpoints: eps(1),
            },
            ServicePort {
                namespace: "ns2".into(),
                name: "svc2".into(),
                port_name: "p80".into(),
                cluster_ip: Ipv4Addr::new(172, 30, 0, 42),
                port: 80,
                endpoints: eps(3),
            },
        ]
    }

    /// kube-proxy's own unit tests fix these names (pkg/proxy/iptables/proxier_test.go).
    #[test]
    fn chain_names_match_kube_proxy() {
        let svc = ServicePort {
            namespace: "ns1".into(),
            name: "svc1".into(),
            port_name: "p80".into(),
            cluster_ip: Ipv4Addr::new(172, 30, 0, 41),
            port: 80,
            endpoints: vec![SocketAddrV4::new(Ipv4Addr::new(10, 180, 0, 1), 80)],
        };
        assert_eq!(service_chain(&svc), "KUBE-SVC-XPGD46QRK7WJZT7O");
        assert_eq!(
            endpoint_chain(&svc, &svc.endpoints[0]),
            "KUBE-SEP-SXIVWICOYRO3J4NJ"
        );
    }

    #[test]
    fn golden_two_services() {
        let services = two_services();
        let text = render_full(&services, "10.244.0.0/16");
        let svc1 = service_chain(&services[0]);
        let sep1 = endpoint_chain(&services[0], &services[0].endpoints[0]);
        let svc2 = service_chain(&services[1]);
        let seps2: Vec<String> = services[1]
            .endpoints
            .iter()
            .map(|e| endpoint_chain(&services[1], e))
            .collect();
        let nat = text.split("*nat\n").nth(1).expect("nat table");
        let expected_services = format!(
            "-A KUBE-SERVICES -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j {svc1}\n\
             -A KUBE-SERVICES -m comment --comment \"ns2/svc2:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.42 --dport 80 -j {svc2}\n\
             -A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n"
        );
        assert!(nat.contains(&expected_services), "{nat}");
        let expected_svc1 = format!(
            "-A {svc1} -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ\n\
             -A {svc1} -m comment --comment \"ns1/svc1:p80 -> 10.244.0.1:7777\" -j {sep1}\n\
             -A {sep1} -m comment --comment ns1/svc1:p80 -s 10.244.0.1 -j KUBE-MARK-MASQ\n\
             -A {sep1} -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.244.0.1:7777\n"
        );
        assert!(nat.contains(&expected_svc1), "{nat}");
        // Three endpoints: 1/3, then 1/2, then the rest.
        let expected_svc2 = format!(
            "-A {svc2} -m comment --comment \"ns2/svc2:p80 -> 10.244.0.1:7777\" -m statistic --mode random --probability 0.3333333333 -j {}\n\
             -A {svc2} -m comment --comment \"ns2/svc2:p80 -> 10.244.0.2:7777\" -m statistic --mode random --probability 0.5000000000 -j {}\n\
             -A {svc2} -m comment --comment \"ns2/svc2:p80 -> 10.244.0.3:7777\" -j {}\n",
            seps2[0], seps2[1], seps2[2]
        );
        assert!(nat.contains(&expected_svc2), "{nat}");
        // Chain declarations precede rules; jumps from the built-in chains are present.
        for c in [&svc1, &svc2, &sep1, &seps2[2]] {
            let decl = format!(":{c} - [0:0]\n");
            let decl_at = nat.find(&decl).expect("declared");
            let first_rule = nat.find(&format!("-A {c} ")).expect("has rules");
            assert!(decl_at < first_rule);
        }
        assert!(nat.contains(
            "-I PREROUTING 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"
        ));
        assert!(nat.contains("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n"));
        assert!(nat.contains("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n"));
        assert_eq!(text.matches("COMMIT\n").count(), 2);
    }

    #[test]
    fn add_rewrites_kube_services_and_only_the_new_chains() {
        let services = two_services();
        let text = render_add(&services, &services[1], "10.244.0.0/16");
        assert!(!text.contains(&format!(":{} ", service_chain(&services[0]))));
        assert!(text.contains(&format!(":{} - [0:0]", service_chain(&services[1]))));
        // The whole KUBE-SERVICES chain, both services.
        assert!(
            text.contains("--comment \"ns1/svc1:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.41")
        );
        assert!(!text.contains("-I PREROUTING"));
    }

    #[test]
    fn cleanup_removes_jumps_before_chains() {
        let services = two_services();
        let text = render_cleanup(&services);
        let nat = text.split("*nat\n").nth(1).expect("nat");
        let del = nat.find("-D PREROUTING").expect("jump removed");
        let x = nat.find("-X KUBE-SERVICES").expect("chain deleted");
        assert!(del < x);
        assert!(nat.contains(&format!("-X {}", service_chain(&services[1]))));
        // 2 + 4 = 6 service chains plus the 4 fixed ones.
        assert_eq!(nat.matches("-X ").count(), 10);
    }
}
