//! The kube-proxy renderings against the real tools: loaded into a fresh network namespace
//! with `iptables-restore --noflush` / `nft -f`, read back, one service added, and removed
//! again by the cleanup rendering without leaving anything behind. Root only.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Command;

use serval_bench::kubeproxy::{self, ServicePort, iptables, nftables};
use serval_sys::testing::{NetNsGuard, require_root};

fn services(n: usize) -> Vec<ServicePort> {
    let mut v = kubeproxy::bench_services(n, SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, 1), 7777));
    // One service with three endpoints, for the statistic sequence.
    v[0].endpoints = (1..=3)
        .map(|k| SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, k), 7777))
        .collect();
    v
}

/// Runs `program args` inside `ns` with `input` on stdin; returns stdout, panics on failure.
fn run_in(ns: &str, program: &str, args: &[&str], input: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning ip netns exec");
    if let Some(text) = input {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("writing stdin");
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().expect("waiting");
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn iptables_legacy_restore_loads_adds_and_cleans_up() {
    if !require_root("iptables_legacy_restore_loads_adds_and_cleans_up") {
        return;
    }
    iptables_round_trip("iptables-legacy");
}

#[test]
fn iptables_nft_restore_loads_adds_and_cleans_up() {
    if !require_root("iptables_nft_restore_loads_adds_and_cleans_up") {
        return;
    }
    iptables_round_trip("iptables-nft");
}

fn iptables_round_trip(binaries: &str) {
    let restore = format!("{binaries}-restore");
    let save = format!("{binaries}-save");
    let ns = NetNsGuard::new("svbench-ipt").expect("netns");
    let mut svcs = services(3);
    let full = iptables::render_full(&svcs, "10.244.0.0/16");
    run_in(ns.name(), &restore, &["-w", "--noflush"], Some(&full));
    let saved = run_in(ns.name(), &save, &[], None);
    for s in &svcs {
        assert!(
            saved.contains(&format!(":{} - ", iptables::service_chain(s))),
            "{saved}"
        );
    }
    assert!(
        saved.contains("-m statistic --mode random --probability 0.33333333349"),
        "{saved}"
    );
    assert!(saved.contains(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
    ));

    let extra = kubeproxy::bench_service(3, SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, 1), 7777));
    svcs.push(extra.clone());
    let add = iptables::render_add(&svcs, &extra, "10.244.0.0/16");
    run_in(ns.name(), &restore, &["-w", "--noflush"], Some(&add));
    let saved = run_in(ns.name(), &save, &["-t", "nat"], None);
    // The rewritten KUBE-SERVICES holds all four, in order, with the nodeports rule last.
    let order: Vec<&str> = saved
        .lines()
        .filter(|l| l.starts_with("-A KUBE-SERVICES"))
        .collect();
    assert_eq!(order.len(), 5, "{saved}");
    assert!(order[3].contains("default/svc-3:p80 cluster IP"));
    assert!(order[4].contains("KUBE-NODEPORTS"));
    // The untouched chains of the first services are still there.
    assert!(saved.contains(&format!("-A {} ", iptables::service_chain(&svcs[0]))));

    run_in(
        ns.name(),
        &restore,
        &["-w", "--noflush"],
        Some(&iptables::render_cleanup(&svcs)),
    );
    let saved = run_in(ns.name(), &save, &[], None);
    assert!(!saved.contains("KUBE-"), "left behind:\n{saved}");
}

#[test]
fn nft_loads_adds_and_cleans_up() {
    if !require_root("nft_loads_adds_and_cleans_up") {
        return;
    }
    if Command::new("nft").arg("--version").output().is_err() {
        eprintln!("skipped: nft is not installed (Debian package nftables)");
        return;
    }
    let ns = NetNsGuard::new("svbench-nft").expect("netns");
    let svcs = services(3);
    run_in(
        ns.name(),
        "nft",
        &["-f", "-"],
        Some(&nftables::render_full(&svcs, "10.244.0.0/16")),
    );
    let extra = kubeproxy::bench_service(3, SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, 1), 7777));
    run_in(
        ns.name(),
        "nft",
        &["-f", "-"],
        Some(&nftables::render_add(&extra, "10.244.0.0/16")),
    );
    let listed = run_in(
        ns.name(),
        "nft",
        &["list", "map", "ip", "kube-proxy", "service-ips"],
        None,
    );
    for s in svcs.iter().chain([&extra]) {
        assert!(
            listed.contains(&format!(
                "{} . tcp . 80 : goto {}",
                s.cluster_ip,
                nftables::service_chain(s)
            )),
            "{listed}"
        );
    }
    let chain = run_in(
        ns.name(),
        "nft",
        &[
            "list",
            "chain",
            "ip",
            "kube-proxy",
            &nftables::service_chain(&svcs[0]),
        ],
        None,
    );
    assert!(chain.contains("numgen random mod 3 vmap"), "{chain}");
    run_in(
        ns.name(),
        "nft",
        &["-f", "-"],
        Some(&nftables::render_cleanup()),
    );
    let tables = run_in(ns.name(), "nft", &["list", "tables"], None);
    assert!(!tables.contains("kube-proxy"), "{tables}");
}
