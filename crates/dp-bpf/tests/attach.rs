//! Privileged: attaching to a veth inside a throwaway namespace, surviving an agent restart
//! (pinned maps keep their contents, pinned links keep programs attached), map resizing, and
//! cleanup that leaves no pin and no attachment. Every test owns a unique namespace,
//! interface names and pin scope, removed on drop even on panic.

#[expect(
    dead_code,
    reason = "the shared helpers include packet builders and private-map fixtures this test does not use"
)]
mod common;

use std::process::Command;

use aya::programs::{SchedClassifier, tc::TcAttachType};
use common::fixture::small_sizes as sizes;
use serval_dp_bpf::testing::ScopeGuard;
use serval_dp_bpf::{
    AttachMode, Dataplane, Hook, LoadOptions, LogLevel, MapSizes, PinScope, abi::*, attachments,
    cleanup,
};
use serval_sys::{
    NetNs, Veth,
    testing::{NetNsGuard, require_root, unique_name},
};

/// A namespace with a veth pair (both ends up); returns (ns, host end, its ifindex).
fn veth_ns() -> (NetNsGuard, String, u32) {
    let ns = NetNsGuard::new("sv-dpbpf").expect("create namespace");
    let host = unique_name("svb", 15);
    let peer = unique_name("svp", 15);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ifindex = rt
        .block_on(async {
            let nl = ns.netlink()?;
            nl.veth_add(&Veth::new(&host, &peer)).await?;
            nl.link_set_up(&host).await?;
            nl.link_set_up(&peer).await?;
            nl.link_index(&host).await
        })
        .expect("veth in namespace");
    (ns, host, ifindex)
}

/// TCX program ids on (ingress, egress) of `ifname` in `ns`.
fn tcx_ids(ns: &NetNs, ifname: &str) -> (Vec<u32>, Vec<u32>) {
    ns.run(|| {
        let ids = |t| {
            SchedClassifier::query_tcx(ifname, t)
                .expect("query tcx")
                .1
                .iter()
                .map(|p| p.id())
                .collect::<Vec<_>>()
        };
        (ids(TcAttachType::Ingress), ids(TcAttachType::Egress))
    })
    .unwrap()
}

/// Names of the TCX programs on (ingress, egress) of `ifname` in `ns`. (Debian's bpftool 7.1
/// predates TCX support in `bpftool net show`, so the kernel is asked directly.)
fn tcx_names(ns: &NetNs, ifname: &str) -> (Vec<String>, Vec<String>) {
    ns.run(|| {
        let names = |t| {
            SchedClassifier::query_tcx(ifname, t)
                .expect("query tcx")
                .1
                .iter()
                .map(|p| p.name_as_str().unwrap_or_default().to_owned())
                .collect::<Vec<_>>()
        };
        (names(TcAttachType::Ingress), names(TcAttachType::Egress))
    })
    .unwrap()
}

#[test]
fn tcx_attachment_survives_agent_restart_and_cleanup_leaves_nothing() {
    if !require_root("tcx_attachment_survives_agent_restart_and_cleanup_leaves_nothing") {
        return;
    }
    let (ns, host, ifindex) = veth_ns();
    let scope = PinScope::new(&unique_name("test-", 40)).unwrap();
    let _guard = ScopeGuard(scope.clone());
    let opts = LoadOptions {
        pins: Some(scope.clone()),
        sizes: sizes(),
        log_level: LogLevel::Off,
    };

    let mut dp = Dataplane::load(&opts).expect("load with pins");
    let ep = EpVal::new(
        3,
        &["10.1.1.1".parse().unwrap(), "fd00::1:1".parse().unwrap()],
    );
    dp.maps().set_endpoint(ifindex, &ep).unwrap();
    let (ct_key, _) = CtKey::of(
        "10.1.1.1".parse().unwrap(),
        1111,
        "10.1.1.2".parse().unwrap(),
        80,
        6,
    );
    let ct_val = CtVal {
        created_ns: 1,
        last_seen_ns: 2,
        flags: SV_CT_F_SEEN_A | SV_CT_F_APPROVED_SRC,
        ..CtVal::default()
    };
    dp.maps().set_conntrack(&ct_key, &ct_val).unwrap();
    for hook in Hook::ALL {
        let a = dp
            .attach(&ns, &host, hook, AttachMode::Tcx)
            .expect("attach");
        assert!(!a.reused);
        assert_eq!(a.mode, AttachMode::Tcx);
    }
    let (ingress, egress) = tcx_ids(&ns, &host);
    assert_eq!(
        (ingress.len(), egress.len()),
        (1, 1),
        "one program per direction"
    );
    assert_eq!(
        tcx_names(&ns, &host),
        (
            vec!["serval_from_ep".to_owned()],
            vec!["serval_to_ep".to_owned()]
        )
    );
    let listed = attachments(&scope).unwrap();
    assert_eq!(
        listed,
        vec![
            (host.clone(), Hook::FromEndpoint, AttachMode::Tcx),
            (host.clone(), Hook::ToEndpoint, AttachMode::Tcx),
        ]
    );

    // The agent exits: programs stay attached (the pinned links hold them).
    drop(dp);
    assert_eq!(tcx_ids(&ns, &host), (ingress.clone(), egress.clone()));

    // The agent starts again: the maps come back with their contents, attaching reuses the
    // links and swaps in the new programs without a second attachment.
    let mut dp = Dataplane::load(&opts).expect("reload with pins");
    assert_eq!(dp.maps().endpoint(ifindex).unwrap(), Some(ep));
    assert_eq!(dp.maps().conntrack(&ct_key).unwrap(), Some(ct_val));
    for hook in Hook::ALL {
        let a = dp
            .attach(&ns, &host, hook, AttachMode::Tcx)
            .expect("re-attach");
        assert!(a.reused, "{hook:?} should reuse its pinned link");
    }
    let (ingress2, egress2) = tcx_ids(&ns, &host);
    assert_eq!(
        (ingress2.len(), egress2.len()),
        (1, 1),
        "still one program per direction"
    );
    assert_ne!(ingress2, ingress, "the new program runs in the old link");
    assert_ne!(egress2, egress);
    drop(dp);

    // A changed conntrack size recreates that map (empty); other maps keep their contents.
    let resized = LoadOptions {
        sizes: MapSizes {
            conntrack: 2048,
            ..sizes()
        },
        ..opts.clone()
    };
    let mut dp = Dataplane::load(&resized).expect("reload with a new conntrack size");
    assert_eq!(dp.maps().conntrack(&ct_key).unwrap(), None);
    assert_eq!(dp.maps().endpoint(ifindex).unwrap(), Some(ep));
    let info = aya::maps::MapInfo::from_pin(scope.map_path("sv_ct")).unwrap();
    assert_eq!(info.max_entries(), 2048);
    drop(dp);

    // Cleanup: nothing attached, nothing pinned.
    let report = cleanup(&scope, Some(&ns)).expect("cleanup");
    assert_eq!(report.detached.len(), 2);
    assert_eq!(report.maps_removed, serval_dp_bpf::object::MAPS.len());
    assert_eq!(tcx_ids(&ns, &host), (vec![], vec![]));
    assert!(
        !scope.dir().exists(),
        "{} left behind",
        scope.dir().display()
    );
    // idempotent
    assert_eq!(cleanup(&scope, Some(&ns)).unwrap().detached.len(), 0);
}

#[test]
fn pinned_link_of_a_recreated_interface_is_replaced() {
    if !require_root("pinned_link_of_a_recreated_interface_is_replaced") {
        return;
    }
    let (ns, host, _) = veth_ns();
    let scope = PinScope::new(&unique_name("test-", 40)).unwrap();
    let _guard = ScopeGuard(scope.clone());
    let opts = LoadOptions {
        pins: Some(scope.clone()),
        sizes: sizes(),
        log_level: LogLevel::Off,
    };
    let mut dp = Dataplane::load(&opts).unwrap();
    dp.attach(&ns, &host, Hook::FromEndpoint, AttachMode::Tcx)
        .unwrap();
    // the interface goes away and comes back under the same name
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let nl = ns.netlink()?;
        nl.link_del(&host).await?;
        nl.veth_add(&Veth::new(&host, unique_name("svq", 15)))
            .await?;
        nl.link_set_up(&host).await
    })
    .unwrap();
    assert_eq!(tcx_ids(&ns, &host).0.len(), 0);
    let a = dp
        .attach(&ns, &host, Hook::FromEndpoint, AttachMode::Tcx)
        .unwrap();
    assert!(
        !a.reused,
        "a link of the old interface must not count as attached"
    );
    assert_eq!(tcx_ids(&ns, &host).0.len(), 1);
}

#[test]
fn clsact_fallback_attaches_and_cleanup_removes_filters() {
    if !require_root("clsact_fallback_attaches_and_cleanup_removes_filters") {
        return;
    }
    let (ns, host, _) = veth_ns();
    let scope = PinScope::new(&unique_name("test-", 40)).unwrap();
    let _guard = ScopeGuard(scope.clone());
    let opts = LoadOptions {
        pins: Some(scope.clone()),
        sizes: sizes(),
        log_level: LogLevel::Off,
    };
    let tc_filters = |dir: &str| {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns.name(),
                "tc",
                "filter",
                "show",
                "dev",
                &host,
                dir,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut dp = Dataplane::load(&opts).unwrap();
    for hook in Hook::ALL {
        let a = dp.attach(&ns, &host, hook, AttachMode::Clsact).unwrap();
        assert_eq!(a.mode, AttachMode::Clsact);
    }
    // attaching again replaces our filter instead of stacking a second one
    dp.attach(&ns, &host, Hook::FromEndpoint, AttachMode::Clsact)
        .unwrap();
    drop(dp);
    let ingress = tc_filters("ingress");
    let ours = ingress
        .lines()
        .filter(|l| l.contains("serval_from_ep"))
        .count();
    assert_eq!(ours, 1, "one filter of ours: {ingress}");
    assert!(tc_filters("egress").contains("serval_to_ep"));
    assert_eq!(attachments(&scope).unwrap().len(), 2);

    let report = cleanup(&scope, Some(&ns)).unwrap();
    assert_eq!(report.detached.len(), 2);
    assert!(!tc_filters("ingress").contains("serval"));
    assert!(!tc_filters("egress").contains("serval"));
    assert!(!scope.dir().exists());
}

#[test]
fn bpffs_is_mounted_once_even_by_concurrent_callers() {
    if !require_root("bpffs_is_mounted_once_even_by_concurrent_callers") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| serval_dp_bpf::ensure_bpffs(&path).expect("ensure bpffs"));
        }
    });
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let shown = path.to_str().unwrap();
    let count = mounts
        .lines()
        .filter(|l| l.split(' ').nth(1) == Some(shown))
        .count();
    nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH).unwrap();
    assert_eq!(count, 1, "exactly one bpffs mount at {shown}");
    // a pin scope on that bpffs works like the default one
    assert_eq!(
        PinScope::with_bpffs(&path, "x").unwrap().dir(),
        path.join("serval/x")
    );
}
