//! The CNI specification's wire types: versions, the result, the error JSON and its
//! well-known codes. Shared by the plugin (which writes them) and the runtime side (which
//! reads them).
//!
//! Spec: <https://github.com/containernetworking/cni/blob/main/SPEC.md> (1.0.0, with STATUS
//! and GC from 1.1.0). Older result formats (0.3.x, 0.4.0) differ only in the `version`
//! field of each IP; [`CniResult::to_json`] writes the one the configuration asks for.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Every CNI spec version this plugin speaks, oldest first (reported by VERSION).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest spec version supported.
pub const LATEST_VERSION: &str = "1.1.0";

/// Well-known error codes (spec section "Error codes"); 100 and up are plugin-specific.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables, like CNI_COMMAND, CNI_CONTAINERID, etc.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure (e.g. failed to read the network config from stdin).
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content (e.g. the network config is not JSON).
    pub const DECODE_FAILURE: u32 = 6;
    /// Invalid network config: some validation failed.
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    /// Try again later: a transient condition (here: datastore contention).
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin is not available (cannot service ADD requests).
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;

    /// Serval: the datastore could not be reached or read/written.
    pub const DATASTORE: u32 = 100;
    /// Serval: every usable IPPool of a family is exhausted (the message names the pools).
    pub const POOL_EXHAUSTED: u32 = 101;
    /// Serval: no enabled IPPool of a wanted family matches this node.
    pub const NO_POOL: u32 = 102;
    /// Serval: any other IPAM failure.
    pub const IPAM: u32 = 103;
    /// Serval: the kernel refused a network change (veth, address, route, sysctl).
    pub const KERNEL: u32 = 104;
    /// Serval: CHECK found the container's network different from the previous result.
    pub const CHECK_FAILED: u32 = 105;
}

/// A CNI spec version as `major.minor.patch`, comparable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    pub const V0_4_0: Version = Version(0, 4, 0);
    pub const V1_0_0: Version = Version(1, 0, 0);
    pub const V1_1_0: Version = Version(1, 1, 0);

    /// Parses `1.0.0` (also `1.0`); `None` for anything else.
    pub fn parse(s: &str) -> Option<Version> {
        let mut parts = s.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = match parts.next() {
            Some(p) => p.parse().ok()?,
            None => 0,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Version(major, minor, patch))
    }

    /// Whether this plugin speaks `s`.
    pub fn is_supported(s: &str) -> bool {
        SUPPORTED_VERSIONS.contains(&s)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// The spec's error JSON, printed on stdout with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorJson {
    /// Absent in what some plugins print (the reference plugins omit it).
    #[serde(default)]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

/// VERSION's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    pub cni_version: String,
    pub supported_versions: Vec<String>,
}

/// One interface of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for interfaces inside the container; absent for host-side ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// One address of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with prefix length (`10.244.0.5/32`).
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// One route of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// DNS settings of a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// An ADD result (also the `prevResult` of later plugins, CHECK and DEL). Reads every
/// supported version's format (the 0.3.x/0.4.0 `version` field of an IP is ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Always written (`{}` when empty), as the reference plugins do.
    #[serde(default)]
    pub dns: Dns,
}

impl CniResult {
    /// The result as JSON in the format of `self.cni_version`: before 1.0.0 every IP carries
    /// `"version": "4"|"6"`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("a CNI result always serialises");
        let old = Version::parse(&self.cni_version).is_some_and(|ver| ver < Version::V1_0_0);
        if old && let Some(ips) = v.get_mut("ips").and_then(|ips| ips.as_array_mut()) {
            for (ip, conf) in ips.iter_mut().zip(&self.ips) {
                let family = if conf.address.addr().is_ipv4() {
                    "4"
                } else {
                    "6"
                };
                if let Some(obj) = ip.as_object_mut() {
                    obj.insert("version".into(), family.into());
                }
            }
        }
        v
    }
}

/// One entry of GC's `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The GC configuration key listing attachments that are still in use.
pub const VALID_ATTACHMENTS_KEY: &str = "cni.dev/valid-attachments";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order() {
        assert_eq!(Version::parse("1.0.0"), Some(Version(1, 0, 0)));
        assert_eq!(Version::parse("0.4"), Some(Version(0, 4, 0)));
        assert!(Version::parse("1.0.0.0").is_none());
        assert!(Version::parse("one").is_none());
        assert!(Version(0, 3, 1) < Version::V0_4_0);
        assert!(Version::V1_1_0 > Version::V1_0_0);
        assert!(Version::is_supported("0.3.1"));
        assert!(!Version::is_supported("0.2.0"));
    }

    #[test]
    fn old_results_carry_ip_versions() {
        let r = CniResult {
            cni_version: "0.3.1".into(),
            interfaces: vec![],
            ips: vec![
                IpConfig {
                    address: "10.0.0.1/32".parse().unwrap(),
                    gateway: None,
                    interface: Some(0),
                },
                IpConfig {
                    address: "fd00::1/128".parse().unwrap(),
                    gateway: None,
                    interface: Some(0),
                },
            ],
            routes: vec![],
            dns: Dns::default(),
        };
        let v = r.to_json();
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][1]["version"], "6");
        let new = CniResult {
            cni_version: "1.0.0".into(),
            ..r
        };
        assert!(new.to_json()["ips"][0].get("version").is_none());
        // And an old result reads back.
        let back: CniResult = serde_json::from_value(v).unwrap();
        assert_eq!(back.ips.len(), 2);
    }
}
