//! sysctls are read and written in the namespace asked for, not the caller's.

use std::process::Command;

use serval_sys::{
    NetNs, Veth, sysctl,
    testing::{NetNsGuard, require_root},
};

#[tokio::test]
async fn sysctls_apply_to_the_given_namespace_only() -> anyhow::Result<()> {
    if !require_root("sysctls_apply_to_the_given_namespace_only") {
        return Ok(());
    }
    let host_before = sysctl::read(&sysctl::ip_forward())?;
    let a = NetNsGuard::new("svt-sysctl-a")?;
    let b = NetNsGuard::new("svt-sysctl-b")?;

    // A new namespace starts with forwarding off; turning it on in `a` changes neither `b`
    // nor the host (read on this, the caller's, thread).
    assert_eq!(a.sysctl_read(&sysctl::ip_forward())?, "0");
    a.sysctl_write(&sysctl::ip_forward(), "1")?;
    assert_eq!(a.sysctl_read(&sysctl::ip_forward())?, "1");
    assert_eq!(b.sysctl_read(&sysctl::ip_forward())?, "0");
    assert_eq!(sysctl::read(&sysctl::ip_forward())?, host_before);

    // iproute2 sees the same namespace through the bind mount.
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            a.name(),
            "cat",
            "/proc/sys/net/ipv4/ip_forward",
        ])
        .output()?;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout)?.trim(), "1");

    // Per-interface keys exist only where the interface is.
    let nl = a.netlink()?;
    nl.veth_add(&Veth::new("s0", "s1")).await?;
    let proxy_arp = sysctl::proxy_arp("s0")?;
    assert_eq!(a.sysctl_read(&proxy_arp)?, "0");
    a.sysctl_write(&proxy_arp, "1")?;
    assert_eq!(a.sysctl_read(&proxy_arp)?, "1");
    let err = b.sysctl_read(&proxy_arp).expect_err("no s0 in b");
    assert!(err.is_not_found(), "{err}");
    assert!(err.to_string().contains(b.name()), "{err}");

    for (key, value) in [
        (sysctl::proxy_ndp("s0")?, "1"),
        (sysctl::ipv6_forwarding("all")?, "1"),
        (sysctl::ipv4_forwarding("s0")?, "1"),
        (sysctl::accept_ra("s0")?, "0"),
        (sysctl::rp_filter("s0")?, "2"),
        (sysctl::disable_ipv6("s1")?, "1"),
    ] {
        a.sysctl_write(&key, value)?;
        assert_eq!(a.sysctl_read(&key)?, value, "{key}");
    }

    // A long-lived thread inside `a` keeps seeing `a` (the /proc/sys/net view follows the
    // thread, not the process), while this thread still sees the host.
    let seen = a
        .spawn(|| sysctl::read("net/ipv4/ip_forward"))?
        .join()
        .expect("thread")??;
    assert_eq!(seen, "1");
    assert_eq!(sysctl::read(&sysctl::ip_forward())?, host_before);
    let own = NetNs::current()?;
    assert_eq!(own.sysctl_read(&sysctl::ip_forward())?, host_before);
    Ok(())
}
