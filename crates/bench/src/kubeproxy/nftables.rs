//! kube-proxy's nftables mode, rendered as the `nft -f` transaction it sends (the
//! `add …` command form its knftables library writes) for ClusterIP services:
//!
//! ```text
//! table ip kube-proxy
//!   nat-prerouting / nat-output → services:
//!       ip daddr . meta l4proto . th dport vmap @service-ips
//!   service-ips: VIP . tcp . port : goto service-<hash>-ns/name/tcp/port
//!   service-…:  masquerade off-cluster sources; numgen random mod n vmap { i : goto endpoint-… }
//!   endpoint-…: masquerade hairpin; dnat to endpoint
//!   nat-postrouting → masquerading
//! ```
//!
//! One map lookup per new connection, whatever the number of services. Chain names are
//! kube-proxy's (`service-` + base32(sha256(ns/name/proto/port))[:8] + `-ns/name/proto/port`).
//! The filter-side checks (firewall, no-endpoint services, unallocated cluster IPs) are rendered
//! too: they are on every new connection's path. NodePorts and load balancers are not.

use std::fmt::Write as _;
use std::net::SocketAddrV4;

use super::{MASQ_MARK, ServicePort, sha256_base32};

/// The table kube-proxy owns (IPv4).
pub const TABLE: &str = "ip kube-proxy";

/// kube-proxy's `--service-cluster-ip-range` as the bench uses it.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";

fn hash_and_truncate(name: &str) -> String {
    let hash = sha256_base32(name);
    format!("{}-{name}", &hash[..8])
}

fn service_base(svc: &ServicePort) -> String {
    format!("{}/{}/tcp/{}", svc.namespace, svc.name, svc.port_name)
}

/// `service-…` chain of a service port.
pub fn service_chain(svc: &ServicePort) -> String {
    format!("service-{}", hash_and_truncate(&service_base(svc)))
}

/// `endpoint-…` chain of one endpoint.
pub fn endpoint_chain(svc: &ServicePort, ep: &SocketAddrV4) -> String {
    let base = format!(
        "{}__{}",
        service_base(svc),
        ep.to_string().replace(':', "/")
    );
    format!("endpoint-{}", hash_and_truncate(&base))
}

/// The whole ruleset for `services` from nothing (the table must not exist yet).
/// `cluster_cidr` is kube-proxy's `--cluster-cidr`.
pub fn render_full(services: &[ServicePort], cluster_cidr: &str) -> String {
    let mut out = String::with_capacity(4096 + services.len() * 900);
    let t = TABLE;
    let _ = writeln!(
        out,
        "add table {t} {{ comment \"rules for kube-proxy\" ; }}"
    );
    // Base chains and the fixed chains.
    let _ = writeln!(out, "add chain {t} mark-for-masquerade");
    let _ = writeln!(
        out,
        "add rule {t} mark-for-masquerade mark set mark or {MASQ_MARK:#x}"
    );
    let _ = writeln!(out, "add chain {t} masquerading");
    let _ = writeln!(
        out,
        "add rule {t} masquerading mark and {MASQ_MARK:#x} == 0 return"
    );
    let _ = writeln!(
        out,
        "add rule {t} masquerading mark set mark xor {MASQ_MARK:#x}"
    );
    let _ = writeln!(out, "add rule {t} masquerading masquerade fully-random");
    let _ = writeln!(
        out,
        "add set {t} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}"
    );
    let _ = writeln!(
        out,
        "add set {t} nodeport-ips {{ type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }}"
    );
    for (map, key, what) in [
        (
            "service-ips",
            "ipv4_addr . inet_proto . inet_service",
            "ClusterIP, ExternalIP and LoadBalancer IP traffic",
        ),
        (
            "service-nodeports",
            "inet_proto . inet_service",
            "NodePort traffic",
        ),
        (
            "firewall-ips",
            "ipv4_addr . inet_proto . inet_service",
            "destinations that are subject to LoadBalancerSourceRanges",
        ),
        (
            "no-endpoint-services",
            "ipv4_addr . inet_proto . inet_service",
            "vmap to drop or reject packets to services with no endpoints",
        ),
    ] {
        let _ = writeln!(
            out,
            "add map {t} {map} {{ type {key} : verdict ; comment \"{what}\" ; }}"
        );
    }
    for (chain, hook, priority) in [
        ("filter-prerouting", "type filter hook prerouting", -110),
        ("filter-input", "type filter hook input", -110),
        ("filter-forward", "type filter hook forward", -110),
        ("filter-output", "type filter hook output", -110),
        ("nat-prerouting", "type nat hook prerouting", -100),
        ("nat-output", "type nat hook output", -100),
        ("nat-postrouting", "type nat hook postrouting", 100),
    ] {
        let _ = writeln!(
            out,
            "add chain {t} {chain} {{ {hook} priority {priority} ; }}"
        );
    }
    for chain in [
        "firewall-check",
        "service-endpoints-check",
        "cluster-ips-check",
        "nodeport-endpoints-check",
        "services",
    ] {
        let _ = writeln!(out, "add chain {t} {chain}");
    }
    let rules = [
        ("filter-prerouting", "ct state new jump firewall-check"),
        ("filter-input", "ct state new jump nodeport-endpoints-check"),
        ("filter-input", "ct state new jump service-endpoints-check"),
        (
            "filter-forward",
            "ct state new jump service-endpoints-check",
        ),
        ("filter-forward", "ct state new jump cluster-ips-check"),
        ("filter-output", "ct state new jump service-endpoints-check"),
        ("filter-output", "ct state new jump firewall-check"),
        (
            "firewall-check",
            "ip daddr . meta l4proto . th dport vmap @firewall-ips",
        ),
        (
            "service-endpoints-check",
            "ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
        ),
        (
            "nodeport-endpoints-check",
            "ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports",
        ),
        ("nat-prerouting", "jump services"),
        ("nat-output", "jump services"),
        ("nat-postrouting", "jump masquerading"),
        (
            "services",
            "ip daddr . meta l4proto . th dport vmap @service-ips",
        ),
        (
            "services",
            "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports",
        ),
    ];
    // `no-endpoint-nodeports` is referenced above; declare it with the other maps.
    let _ = writeln!(
        out,
        "add map {t} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }}"
    );
    for (chain, rule) in rules {
        let _ = writeln!(out, "add rule {t} {chain} {rule}");
    }
    let _ = writeln!(
        out,
        "add rule {t} cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\""
    );
    let _ = writeln!(
        out,
        "add rule {t} cluster-ips-check ip daddr {SERVICE_CIDR} drop comment \"Drop traffic to unallocated ClusterIPs\""
    );
    for svc in services {
        push_service(&mut out, svc, cluster_cidr);
    }
    out
}

/// The transaction kube-proxy sends when `new` is added: its chains, its rules, and its
/// elements in `cluster-ips` and `service-ips`. Nothing else changes.
pub fn render_add(new: &ServicePort, cluster_cidr: &str) -> String {
    let mut out = String::with_capacity(1024);
    push_service(&mut out, new, cluster_cidr);
    out
}

fn push_service(out: &mut String, svc: &ServicePort, cluster_cidr: &str) {
    let t = TABLE;
    let chain = service_chain(svc);
    for ep in &svc.endpoints {
        let ep_chain = endpoint_chain(svc, ep);
        let _ = writeln!(out, "add chain {t} {ep_chain}");
        let _ = writeln!(
            out,
            "add rule {t} {ep_chain} ip saddr {} jump mark-for-masquerade",
            ep.ip()
        );
        let _ = writeln!(out, "add rule {t} {ep_chain} meta l4proto tcp dnat to {ep}");
    }
    let _ = writeln!(out, "add chain {t} {chain}");
    let _ = writeln!(
        out,
        "add rule {t} {chain} ip daddr {} tcp dport {} ip saddr != {cluster_cidr} jump mark-for-masquerade",
        svc.cluster_ip, svc.port
    );
    let targets: Vec<String> = svc
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, ep)| format!("{i} : goto {}", endpoint_chain(svc, ep)))
        .collect();
    let _ = writeln!(
        out,
        "add rule {t} {chain} numgen random mod {} vmap {{ {} }}",
        svc.endpoints.len(),
        targets.join(" , ")
    );
    let _ = writeln!(out, "add element {t} cluster-ips {{ {} }}", svc.cluster_ip);
    let _ = writeln!(
        out,
        "add element {t} service-ips {{ {} . tcp . {} : goto {chain} }}",
        svc.cluster_ip, svc.port
    );
}

/// Removes the table and everything in it.
pub fn render_cleanup() -> String {
    format!("delete table {TABLE}\n")
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn svc(ns: &str, name: &str, vip: u8, endpoints: u8) -> ServicePort {
        ServicePort {
            namespace: ns.into(),
            name: name.into(),
            port_name: "p80".into(),
            cluster_ip: Ipv4Addr::new(172, 30, 0, vip),
            port: 80,
            endpoints: (1..=endpoints)
                .map(|k| SocketAddrV4::new(Ipv4Addr::new(10, 180, 0, k), 80))
                .collect(),
        }
    }

    /// kube-proxy's own unit tests fix these names (pkg/proxy/nftables/proxier_test.go).
    #[test]
    fn chain_names_match_kube_proxy() {
        let s = svc("ns1", "svc1", 41, 1);
        assert_eq!(service_chain(&s), "service-ULMVA6XW-ns1/svc1/tcp/p80");
        assert_eq!(
            endpoint_chain(&s, &s.endpoints[0]),
            "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
    }

    #[test]
    fn golden_two_services() {
        let services = [svc("ns1", "svc1", 41, 1), svc("ns2", "svc2", 42, 2)];
        let text = render_full(&services, "10.244.0.0/16");
        assert!(
            text.starts_with("add table ip kube-proxy { comment \"rules for kube-proxy\" ; }\n")
        );
        assert!(text.contains(
            "add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips\n"
        ));
        assert!(text.contains("add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }\n"));
        let c1 = service_chain(&services[0]);
        let e1 = endpoint_chain(&services[0], &services[0].endpoints[0]);
        let expected1 = format!(
            "add chain ip kube-proxy {e1}\n\
             add rule ip kube-proxy {e1} ip saddr 10.180.0.1 jump mark-for-masquerade\n\
             add rule ip kube-proxy {e1} meta l4proto tcp dnat to 10.180.0.1:80\n\
             add chain ip kube-proxy {c1}\n\
             add rule ip kube-proxy {c1} ip daddr 172.30.0.41 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade\n\
             add rule ip kube-proxy {c1} numgen random mod 1 vmap {{ 0 : goto {e1} }}\n\
             add element ip kube-proxy cluster-ips {{ 172.30.0.41 }}\n\
             add element ip kube-proxy service-ips {{ 172.30.0.41 . tcp . 80 : goto {c1} }}\n"
        );
        assert!(text.contains(&expected1), "{text}");
        let c2 = service_chain(&services[1]);
        let e2a = endpoint_chain(&services[1], &services[1].endpoints[0]);
        let e2b = endpoint_chain(&services[1], &services[1].endpoints[1]);
        assert!(text.contains(&format!(
            "add rule ip kube-proxy {c2} numgen random mod 2 vmap {{ 0 : goto {e2a} , 1 : goto {e2b} }}\n"
        )));
        // Every chain is added before a rule or element refers to it.
        for c in [&c1, &c2, &e1, &e2a, &e2b] {
            let add = text
                .find(&format!("add chain ip kube-proxy {c}\n"))
                .expect("added");
            let used = text.find(&format!("goto {c}")).expect("referenced");
            assert!(add < used, "{c}");
        }
    }

    #[test]
    fn add_is_only_the_new_service() {
        let s = svc("ns1", "svc9", 49, 1);
        let text = render_add(&s, "10.244.0.0/16");
        assert_eq!(text.lines().count(), 8);
        assert!(text.lines().all(|l| l.starts_with("add ")));
    }

    /// `nft -c -f` (check only: parsed and validated by the kernel, nothing committed)
    /// accepts the rendered ruleset. Needs root and nft.
    #[test]
    fn nft_accepts_the_syntax() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: `nft -c` needs root (CAP_NET_ADMIN)");
            return;
        }
        if std::process::Command::new("nft")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("skipped: nft is not installed (Debian package nftables)");
            return;
        }
        let services = [svc("ns1", "svc1", 41, 1), svc("ns2", "svc2", 42, 3)];
        let mut text = render_full(&services, "10.244.0.0/16");
        text.push_str(&render_add(&svc("ns3", "svc3", 43, 1), "10.244.0.0/16"));
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        std::io::Write::write_all(&mut file, text.as_bytes()).expect("write");
        let out = std::process::Command::new("nft")
            .arg("-c")
            .arg("-f")
            .arg(file.path())
            .output()
            .expect("running nft");
        assert!(
            out.status.success(),
            "nft -c rejected the ruleset: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
