//! Named namespaces: create / open / list / delete like `ip netns`, cleanup of the bind
//! mount, guards on panic, parallel creation, and that nothing moves the caller's thread.

use std::{fs, os::unix::fs::MetadataExt, process::Command, thread};

use serval_sys::{
    NETNS_RUN_DIR, NetNs,
    testing::{NetNsGuard, require_root, unique_name},
};

fn mounted(name: &str) -> bool {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let target = format!("{NETNS_RUN_DIR}/{name}");
    mountinfo
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(target.as_str()))
}

fn own_netns_inode() -> u64 {
    fs::metadata("/proc/thread-self/ns/net")
        .expect("own netns")
        .ino()
}

#[tokio::test]
async fn create_open_list_delete_like_ip_netns() -> anyhow::Result<()> {
    if !require_root("create_open_list_delete_like_ip_netns") {
        return Ok(());
    }
    let guard = NetNsGuard::new("svt-ns")?;
    let name = guard.name().to_owned();
    assert!(NetNs::exists(&name));
    assert!(mounted(&name), "bind mount at /run/netns/{name}");
    assert!(NetNs::list()?.contains(&name));
    let err = NetNs::create(&name).expect_err("exists");
    assert!(err.is_exists(), "{err}");

    // iproute2 agrees it is a namespace and can enter it.
    let out = Command::new("ip")
        .args(["netns", "exec", &name, "ip", "-o", "link", "show"])
        .output()?;
    assert!(out.status.success(), "{out:?}");
    let links = String::from_utf8(out.stdout)?;
    assert_eq!(
        links.lines().count(),
        1,
        "only lo in a new namespace: {links}"
    );

    // Our netlink socket is bound inside too: only lo.
    let nl = guard.netlink()?;
    let names: Vec<String> = nl.links().await?.into_iter().map(|l| l.name).collect();
    assert_eq!(names, ["lo"]);

    let by_path = NetNs::open_path(format!("{NETNS_RUN_DIR}/{name}"))?;
    let by_name = NetNs::open(&name)?;
    assert_eq!(by_name.name(), Some(name.as_str()));
    let inode_by_path = by_path.run(own_netns_inode)?;
    let inode_by_name = by_name.run(own_netns_inode)?;
    assert_eq!(inode_by_path, inode_by_name);
    assert_ne!(inode_by_name, own_netns_inode(), "different from ours");

    // Deleting removes the file and the mount; an open handle keeps the namespace usable.
    NetNs::delete(&name)?;
    assert!(!NetNs::exists(&name));
    assert!(!mounted(&name), "bind mount gone");
    assert!(!fs::exists(format!("{NETNS_RUN_DIR}/{name}"))?);
    assert!(!NetNs::list()?.contains(&name));
    assert_eq!(by_name.run(own_netns_inode)?, inode_by_name);
    assert_eq!(nl.links().await?.len(), 1);

    assert!(NetNs::open(&name).expect_err("deleted").is_not_found());
    assert!(NetNs::delete(&name).expect_err("deleted").is_not_found());
    drop(guard); // finds it already gone, quietly
    Ok(())
}

#[test]
fn run_never_moves_the_calling_thread() -> anyhow::Result<()> {
    if !require_root("run_never_moves_the_calling_thread") {
        return Ok(());
    }
    let before = own_netns_inode();
    let ns = NetNsGuard::new("svt-run")?;
    let inside = ns.run(own_netns_inode)?;
    assert_ne!(inside, before);
    assert_eq!(own_netns_inode(), before);
    let spawned = ns.spawn(own_netns_inode)?.join().expect("thread")?;
    assert_eq!(spawned, inside);
    assert_eq!(own_netns_inode(), before);
    Ok(())
}

#[test]
fn guard_deletes_its_namespace_on_panic() {
    if !require_root("guard_deletes_its_namespace_on_panic") {
        return;
    }
    let result = std::panic::catch_unwind(|| {
        let guard = NetNsGuard::new("svt-panic").expect("create");
        let name = guard.name().to_owned();
        assert!(NetNs::exists(&name));
        std::panic::panic_any(name);
    });
    let payload = result.expect_err("panicked");
    let name = payload.downcast_ref::<String>().expect("name payload");
    assert!(!NetNs::exists(name), "guard removed {name}");
    assert!(!mounted(name));
}

#[test]
fn parallel_creation_and_deletion() -> anyhow::Result<()> {
    if !require_root("parallel_creation_and_deletion") {
        return Ok(());
    }
    let names: Vec<String> = (0..8).map(|_| unique_name("svt-par-", 40)).collect();
    thread::scope(|s| {
        for name in &names {
            s.spawn(move || {
                let ns = NetNs::create(name).expect("create in parallel");
                assert_eq!(ns.run(|| 1).expect("enter"), 1);
                NetNs::delete(name).expect("delete in parallel");
            });
        }
    });
    for name in &names {
        assert!(!NetNs::exists(name));
        assert!(!mounted(name));
    }
    Ok(())
}
