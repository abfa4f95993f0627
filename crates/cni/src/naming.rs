//! Names the plugin derives: the host side of a pod's veth and the workload endpoint's name,
//! and the fixed addresses of the pod's link-local gateway.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Prefix of every host-side pod interface.
pub const HOST_IFACE_PREFIX: &str = "sv";

/// The IPv4 gateway every pod routes through (Calico's): answered by the host side.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The IPv6 gateway every pod routes through.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// MAC address of every host-side veth (Calico uses the same): pods resolve their gateway to
/// it, and it never collides with a pod's own (random, locally administered) MAC.
pub const HOST_SIDE_MAC: [u8; 6] = [0xee; 6];

/// The host-side interface name of the pod `namespace/pod`: `sv` + the first 13 hex digits of
/// a 64-bit FNV-1a hash of `namespace/pod` (15 characters, the kernel's limit). Stable across
/// builds and processes (the agent, the CLI and the plugin compute the same name).
pub fn host_iface_name(namespace: &str, pod: &str) -> String {
    let hash = fnv1a64(format!("{namespace}/{pod}").as_bytes());
    let hex = format!("{hash:016x}");
    format!("{HOST_IFACE_PREFIX}{}", &hex[..13])
}

/// The host-side name for the pod interface `ifname`: [`host_iface_name`] for `eth0` (the
/// pod's main interface), and a hash of `namespace/pod/ifname` for any further interface of
/// the same pod (a second network), so the two never collide.
pub fn host_iface_name_for(namespace: &str, pod: &str, ifname: &str) -> String {
    if ifname == "eth0" {
        return host_iface_name(namespace, pod);
    }
    host_iface_name(namespace, &format!("{pod}/{ifname}"))
}

/// The WorkloadEndpoint name for a pod's interface, Calico's `<node>-k8s-<pod>-<ifname>`.
/// (Calico escapes '-' in the parts by doubling it; this keeps the parts as they are, which
/// is unique enough within one namespace for names that follow DNS label rules.)
pub fn workload_endpoint_name(node: &str, pod: &str, ifname: &str) -> String {
    format!("{node}-k8s-{pod}-{ifname}")
}

/// 64-bit FNV-1a: tiny, dependency-free and defined by its constants (never changes).
fn fnv1a64(data: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    data.iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_iface_names_are_short_stable_and_distinct() {
        let a = host_iface_name("default", "web");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("sv"));
        assert!(a[2..].chars().all(|c| c.is_ascii_hexdigit()));
        // Pinned: a change here renames every existing pod interface.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(a, host_iface_name("default", "web"));
        assert_ne!(a, host_iface_name("default", "web2"));
        assert_ne!(host_iface_name("a", "b/c"), host_iface_name("a/b", "c-"));
        let long = host_iface_name(&"n".repeat(63), &"p".repeat(253));
        assert_eq!(long.len(), 15);
    }

    #[test]
    fn further_interfaces_get_their_own_names() {
        assert_eq!(
            host_iface_name_for("default", "web", "eth0"),
            host_iface_name("default", "web")
        );
        assert_ne!(
            host_iface_name_for("default", "web", "net1"),
            host_iface_name("default", "web")
        );
        assert_eq!(host_iface_name_for("default", "web", "net1").len(), 15);
    }

    #[test]
    fn workload_endpoint_names() {
        assert_eq!(
            workload_endpoint_name("node1", "web", "eth0"),
            "node1-k8s-web-eth0"
        );
    }
}
