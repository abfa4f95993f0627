//! Network sysctls (`/proc/sys/net/...`), read and written inside a given namespace.
//!
//! How the namespace is chosen: the kernel resolves `/proc/sys/net` entries against the
//! network namespace of the *calling thread* (`current->nsproxy->net_ns`) when a file is looked
//! up and opened, and the open file stays bound to that namespace's value. So a thread that
//! `setns()`-ed (see [`NetNs::run`]) and then opens `/proc/sys/net/...` gets that namespace's
//! value, while other threads keep theirs; the integration tests check this. (`/proc/net`, by
//! contrast, is a link to `/proc/self/net`, the thread-group leader's view: code that needs
//! per-thread `/proc/net` files must use `/proc/thread-self/net`.)
//!
//! Keys are paths relative to `/proc/sys`, slash-separated (`net/ipv4/conf/eth0/proxy_arp`),
//! which, unlike sysctl's dotted form, keeps interface names with dots (`vxlan.serval`) intact.
//! The functions below build the keys Serval uses.

use std::{fs, path::PathBuf};

use crate::{
    NetNs,
    error::{Error, NsLabel, Result},
    link::validate_ifname,
};

const PROC_SYS: &str = "/proc/sys";

fn validate_key(key: &str) -> Result<PathBuf> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.contains('\0')
        || key
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..");
    if bad {
        return Err(Error::Invalid {
            what: "sysctl key",
            value: key.to_owned(),
            reason: "expected a path relative to /proc/sys like net/ipv4/ip_forward",
        });
    }
    Ok(PathBuf::from(PROC_SYS).join(key))
}

fn read_in(key: &str, netns: &NsLabel) -> Result<String> {
    let path = validate_key(key)?;
    let value = fs::read_to_string(&path).map_err(|source| Error::Io {
        op: "reading sysctl",
        object: key.to_owned(),
        netns: netns.clone(),
        source,
    })?;
    Ok(value.trim_end().to_owned())
}

fn write_in(key: &str, value: &str, netns: &NsLabel) -> Result<()> {
    let path = validate_key(key)?;
    fs::write(&path, value).map_err(|source| Error::Io {
        op: "writing sysctl",
        object: format!("{key} = {value}"),
        netns: netns.clone(),
        source,
    })?;
    tracing::debug!(key, value, netns = ?netns.name(), "set sysctl");
    Ok(())
}

/// Reads a sysctl in the calling thread's namespace (trailing newline removed).
pub fn read(key: &str) -> Result<String> {
    read_in(key, &NsLabel::current())
}

/// Writes a sysctl in the calling thread's namespace.
pub fn write(key: &str, value: &str) -> Result<()> {
    write_in(key, value, &NsLabel::current())
}

impl NetNs {
    /// Reads a sysctl inside this namespace (on a thread that entered it).
    pub fn sysctl_read(&self, key: &str) -> Result<String> {
        let label = self.label().clone();
        self.run(move || read_in(key, &label))?
    }

    /// Writes a sysctl inside this namespace (on a thread that entered it).
    pub fn sysctl_write(&self, key: &str, value: &str) -> Result<()> {
        let label = self.label().clone();
        self.run(move || write_in(key, value, &label))?
    }
}

fn iface_key(family: &str, iface: &str, leaf: &str) -> Result<String> {
    // "all" and "default" are the kernel's pseudo-interfaces.
    if iface != "all" && iface != "default" {
        validate_ifname(iface)?;
    }
    Ok(format!("net/{family}/conf/{iface}/{leaf}"))
}

/// `net/ipv4/ip_forward`: IPv4 forwarding for the whole namespace.
pub fn ip_forward() -> String {
    "net/ipv4/ip_forward".to_owned()
}

/// `net/ipv4/conf/IFACE/forwarding` (IFACE may be `all` or `default`).
pub fn ipv4_forwarding(iface: &str) -> Result<String> {
    iface_key("ipv4", iface, "forwarding")
}

/// `net/ipv6/conf/IFACE/forwarding` (`all` turns on IPv6 routing for the namespace).
pub fn ipv6_forwarding(iface: &str) -> Result<String> {
    iface_key("ipv6", iface, "forwarding")
}

/// `net/ipv4/conf/IFACE/proxy_arp`: answer ARP for addresses routed elsewhere (host-side veth).
pub fn proxy_arp(iface: &str) -> Result<String> {
    iface_key("ipv4", iface, "proxy_arp")
}

/// `net/ipv6/conf/IFACE/proxy_ndp`: answer NDP for addresses with a `neigh proxy` entry.
pub fn proxy_ndp(iface: &str) -> Result<String> {
    iface_key("ipv6", iface, "proxy_ndp")
}

/// `net/ipv6/conf/IFACE/accept_ra`: 0 ignores router advertisements.
pub fn accept_ra(iface: &str) -> Result<String> {
    iface_key("ipv6", iface, "accept_ra")
}

/// `net/ipv6/conf/IFACE/disable_ipv6`.
pub fn disable_ipv6(iface: &str) -> Result<String> {
    iface_key("ipv6", iface, "disable_ipv6")
}

/// `net/ipv4/neigh/IFACE/proxy_delay`: how long (in jiffies, up to a random amount) proxy ARP
/// waits before answering; the default (80, i.e. up to 0.8 s) delays a pod's first packet, so
/// host-side veths set it to 0.
pub fn ipv4_proxy_delay(iface: &str) -> Result<String> {
    neigh_key("ipv4", iface, "proxy_delay")
}

/// `net/ipv6/neigh/IFACE/proxy_delay`: as [`ipv4_proxy_delay`] for proxy NDP.
pub fn ipv6_proxy_delay(iface: &str) -> Result<String> {
    neigh_key("ipv6", iface, "proxy_delay")
}

fn neigh_key(family: &str, iface: &str, leaf: &str) -> Result<String> {
    if iface != "default" {
        validate_ifname(iface)?;
    }
    Ok(format!("net/{family}/neigh/{iface}/{leaf}"))
}

/// `net/ipv4/conf/IFACE/rp_filter`: 0 off, 1 strict, 2 loose.
pub fn rp_filter(iface: &str) -> Result<String> {
    iface_key("ipv4", iface, "rp_filter")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_built_and_validated() {
        assert_eq!(
            proxy_arp("vxlan.serval").unwrap(),
            "net/ipv4/conf/vxlan.serval/proxy_arp"
        );
        assert_eq!(
            ipv6_forwarding("all").unwrap(),
            "net/ipv6/conf/all/forwarding"
        );
        assert!(proxy_arp("../../x").is_err());
        for bad in [
            "",
            "/proc/sys/net/ipv4/ip_forward",
            "net/../kernel/x",
            "net//ipv4",
            "net/./x",
        ] {
            assert!(read(bad).is_err(), "{bad:?}");
            assert!(
                matches!(validate_key(bad), Err(Error::Invalid { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn reads_a_real_key_in_own_namespace() {
        let value = read(&ip_forward()).expect("read ip_forward");
        assert!(value == "0" || value == "1", "{value:?}");
    }
}
