//! The plugin's network configuration (stdin), as a conflist's plugin entry:
//!
//! ```json
//! {"cniVersion":"1.0.0","name":"serval","type":"serval",
//!  "datastore":"sqlite:///var/lib/serval/labs/L/serval.db","nodename":"node1",
//!  "mtu":1500,"log_level":"info","log_file":"/var/lib/serval/labs/L/nodes/node1/cni.log",
//!  "ipam":{"type":"serval-ipam","assign_ipv4":true,"assign_ipv6":false,
//!          "ipv4_pools":["default-ipv4-ippool"],"ipv6_pools":[]}}
//! ```
//!
//! Fields the runtime adds (`prevResult`, `runtimeConfig`, `args`, `capabilities`, GC's
//! `cni.dev/valid-attachments`) are read where they matter and otherwise ignored.

use serde::Deserialize;
use serde_json::Value;

use crate::spec::{Attachment, CniResult, Dns, VALID_ATTACHMENTS_KEY, Version, code};

/// A configuration the plugin cannot use; carries the CNI error code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("the network configuration on stdin is not valid JSON: {source}")]
    NotJson {
        #[source]
        source: serde_json::Error,
    },
    #[error("the network configuration has no cniVersion; set \"cniVersion\": \"1.0.0\"")]
    NoVersion,
    #[error("cniVersion {version:?} is not supported; use one of {}", crate::spec::SUPPORTED_VERSIONS.join(", "))]
    UnsupportedVersion { version: String },
    #[error("the network configuration is invalid at {path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("{command} needs cniVersion {needs} or later; the configuration says {version}")]
    CommandTooNew {
        command: &'static str,
        needs: &'static str,
        version: String,
    },
}

impl ConfigError {
    /// The CNI error code for this problem.
    pub fn code(&self) -> u32 {
        match self {
            ConfigError::NotJson { .. } => code::DECODE_FAILURE,
            ConfigError::UnsupportedVersion { .. } | ConfigError::CommandTooNew { .. } => {
                code::INCOMPATIBLE_VERSION
            }
            ConfigError::NoVersion | ConfigError::Invalid { .. } => code::INVALID_NETWORK_CONFIG,
        }
    }
}

/// IPAM settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IpamConf {
    #[serde(rename = "type", default)]
    pub type_: String,
    #[serde(default = "yes")]
    pub assign_ipv4: bool,
    #[serde(default)]
    pub assign_ipv6: bool,
    /// Pool names to use, in order; empty means every enabled IPv4 pool matching the node.
    #[serde(default)]
    pub ipv4_pools: Vec<String>,
    #[serde(default)]
    pub ipv6_pools: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Default for IpamConf {
    fn default() -> Self {
        IpamConf {
            type_: "serval-ipam".into(),
            assign_ipv4: true,
            assign_ipv6: false,
            ipv4_pools: Vec::new(),
            ipv6_pools: Vec::new(),
        }
    }
}

/// Serval's own fields of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct ServalFields {
    name: String,
    #[serde(rename = "type")]
    type_: String,
    datastore: String,
    #[serde(default)]
    nodename: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    log_level: Option<String>,
    #[serde(default)]
    log_file: Option<String>,
    #[serde(default)]
    ipam: Option<IpamConf>,
}

/// A parsed, validated network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub version: Version,
    pub name: String,
    pub type_: String,
    /// Datastore URL (`sqlite:///path`, `etcd://host:port`).
    pub datastore: String,
    /// Explicit node name; see [`NetConf::node_name`] for the fallbacks.
    pub nodename: Option<String>,
    /// Pod MTU; `None` (or 0 in the file) means computed from the pools' encapsulation.
    pub mtu: Option<u32>,
    pub log_level: String,
    pub log_file: Option<String>,
    pub ipam: IpamConf,
    /// The previous result (CHECK, DEL, and ADD when chained after another plugin).
    pub prev_result: Option<CniResult>,
    /// GC: attachments still in use.
    pub valid_attachments: Vec<Attachment>,
    /// DNS settings to hand back in the result (the network configuration's `dns`).
    pub dns: Dns,
    /// The whole configuration as received.
    pub raw: Value,
}

/// Reads only the `cniVersion` (for VERSION, and for error JSON of configs that fail later).
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    v.get("cniVersion")?.as_str().map(str::to_string)
}

impl NetConf {
    /// Parses and validates the configuration from stdin.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, ConfigError> {
        let raw: Value =
            serde_json::from_slice(stdin).map_err(|source| ConfigError::NotJson { source })?;
        if !raw.is_object() {
            return Err(ConfigError::Invalid {
                path: "$".into(),
                reason: "must be a JSON object".into(),
            });
        }
        let cni_version = match raw.get("cniVersion") {
            None | Some(Value::Null) => return Err(ConfigError::NoVersion),
            Some(Value::String(s)) => s.clone(),
            Some(_) => {
                return Err(ConfigError::Invalid {
                    path: "cniVersion".into(),
                    reason: "must be a string".into(),
                });
            }
        };
        let version = match Version::parse(&cni_version) {
            Some(v) if Version::is_supported(&v.to_string()) => v,
            _ => {
                return Err(ConfigError::UnsupportedVersion {
                    version: cni_version,
                });
            }
        };
        let fields: ServalFields = serde_path_error(&raw)?;
        if fields.datastore.trim().is_empty() {
            return Err(ConfigError::Invalid {
                path: "datastore".into(),
                reason: "must be a datastore URL such as sqlite:///var/lib/serval/serval.db".into(),
            });
        }
        let ipam = fields.ipam.unwrap_or_default();
        if !ipam.assign_ipv4 && !ipam.assign_ipv6 {
            return Err(ConfigError::Invalid {
                path: "ipam".into(),
                reason: "assign_ipv4 and assign_ipv6 are both false; enable at least one".into(),
            });
        }
        let prev_result = match raw.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(p) => {
                Some(
                    serde_json::from_value(p.clone()).map_err(|e| ConfigError::Invalid {
                        path: "prevResult".into(),
                        reason: e.to_string(),
                    })?,
                )
            }
        };
        let valid_attachments = match raw.get(VALID_ATTACHMENTS_KEY) {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| ConfigError::Invalid {
                path: VALID_ATTACHMENTS_KEY.into(),
                reason: e.to_string(),
            })?,
        };
        let dns = match raw.get("dns") {
            None | Some(Value::Null) => Dns::default(),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| ConfigError::Invalid {
                path: "dns".into(),
                reason: e.to_string(),
            })?,
        };
        let log_level = fields
            .log_level
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| "info".into());
        Ok(NetConf {
            cni_version,
            version,
            name: fields.name,
            type_: fields.type_,
            datastore: fields.datastore,
            nodename: fields.nodename.filter(|n| !n.is_empty()),
            mtu: fields.mtu.filter(|m| *m != 0),
            log_level,
            log_file: fields.log_file.filter(|f| !f.is_empty()),
            ipam,
            prev_result,
            valid_attachments,
            dns,
            raw,
        })
    }

    /// The node name: `nodename` from the config, else `$NODENAME`, else the hostname.
    pub fn node_name(&self, env_nodename: Option<&str>) -> String {
        if let Some(n) = &self.nodename {
            return n.clone();
        }
        if let Some(n) = env_nodename.filter(|n| !n.is_empty()) {
            return n.to_string();
        }
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into())
    }

    /// Refuses commands the configured version does not have (CHECK before 0.4.0, STATUS and
    /// GC before 1.1.0).
    pub fn require_version(
        &self,
        command: &'static str,
        needs: Version,
    ) -> Result<(), ConfigError> {
        if self.version < needs {
            let needs = if needs == Version::V0_4_0 {
                "0.4.0"
            } else {
                "1.1.0"
            };
            return Err(ConfigError::CommandTooNew {
                command,
                needs,
                version: self.cni_version.clone(),
            });
        }
        Ok(())
    }
}

/// Deserialises Serval's fields, naming the field at fault.
fn serde_path_error(raw: &Value) -> Result<ServalFields, ConfigError> {
    ServalFields::deserialize(raw).map_err(|e| {
        let text = e.to_string();
        let path = text
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
            .unwrap_or("$")
            .to_string();
        ConfigError::Invalid { path, reason: text }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"cniVersion":"1.0.0","name":"serval","type":"serval",
        "datastore":"sqlite:///tmp/x.db","nodename":"node1","mtu":0,"log_level":"debug",
        "ipam":{"type":"serval-ipam","assign_ipv4":true,"assign_ipv6":true,"ipv4_pools":["p4"]},
        "runtimeConfig":{"portMappings":[]},"args":{"whatever":1}}"#;

    #[test]
    fn parses_the_documented_shape() {
        let c = NetConf::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(c.version, Version::V1_0_0);
        assert_eq!(c.mtu, None);
        assert_eq!(c.node_name(Some("other")), "node1");
        assert!(c.ipam.assign_ipv6);
        assert_eq!(c.ipam.ipv4_pools, vec!["p4".to_string()]);
        assert_eq!(c.log_level, "debug");
    }

    #[test]
    fn errors_map_to_spec_codes() {
        let code = |s: &str| NetConf::parse(s.as_bytes()).unwrap_err().code();
        assert_eq!(code("{not json"), code::DECODE_FAILURE);
        assert_eq!(
            code(r#"{"name":"a","type":"serval","datastore":"x"}"#),
            code::INVALID_NETWORK_CONFIG
        );
        assert_eq!(
            code(r#"{"cniVersion":"9.9.9","name":"a","type":"serval","datastore":"x"}"#),
            code::INCOMPATIBLE_VERSION
        );
        assert_eq!(
            code(r#"{"cniVersion":"0.2.0","name":"a","type":"serval","datastore":"x"}"#),
            code::INCOMPATIBLE_VERSION
        );
        let missing =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"a","type":"serval"}"#).unwrap_err();
        assert_eq!(missing.code(), code::INVALID_NETWORK_CONFIG);
        assert!(missing.to_string().contains("datastore"), "{missing}");
        let no_family = br#"{"cniVersion":"1.0.0","name":"a","type":"serval","datastore":"x","ipam":{"assign_ipv4":false}}"#;
        assert_eq!(
            NetConf::parse(no_family).unwrap_err().code(),
            code::INVALID_NETWORK_CONFIG
        );
    }

    #[test]
    fn gc_attachments_and_prev_result_are_read() {
        let s = br#"{"cniVersion":"1.1.0","name":"a","type":"serval","datastore":"x",
            "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}],
            "prevResult":{"cniVersion":"1.1.0","ips":[{"address":"10.0.0.1/32","interface":1}]}}"#;
        let c = NetConf::parse(s).unwrap();
        assert_eq!(c.valid_attachments[0].container_id, "c1");
        assert_eq!(c.prev_result.as_ref().unwrap().ips.len(), 1);
        assert!(c.require_version("GC", Version::V1_1_0).is_ok());
        let old =
            NetConf::parse(br#"{"cniVersion":"0.3.1","name":"a","type":"serval","datastore":"x"}"#)
                .unwrap();
        assert_eq!(
            old.require_version("CHECK", Version::V0_4_0)
                .unwrap_err()
                .code(),
            code::INCOMPATIBLE_VERSION
        );
    }

    proptest::proptest! {
        /// Whatever the runtime sends, parsing answers (a config or a coded error), never panics.
        #[test]
        fn any_bytes_parse_or_fail_cleanly(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            if let Err(e) = NetConf::parse(&bytes) {
                proptest::prop_assert!([1, 6, 7].contains(&e.code()));
            }
        }

        /// Objects with arbitrary field values: any type confusion is a code-7 error naming a field.
        #[test]
        fn typed_fields_are_checked(
            version in proptest::sample::select(vec!["1.0.0", "0.4.0", "1.1.0"]),
            mtu in proptest::prop_oneof![proptest::strategy::Just(serde_json::json!(1400)), proptest::strategy::Just(serde_json::json!("x")), proptest::strategy::Just(serde_json::json!(-1))],
            v4 in proptest::prop_oneof![proptest::strategy::Just(serde_json::json!(true)), proptest::strategy::Just(serde_json::json!("yes"))],
        ) {
            let conf = serde_json::json!({"cniVersion": version, "name": "n", "type": "serval", "datastore": "sqlite:///x",
                "mtu": mtu, "ipam": {"assign_ipv4": v4}});
            let parsed = NetConf::parse(conf.to_string().as_bytes());
            let valid = conf["mtu"] == 1400 && conf["ipam"]["assign_ipv4"] == true;
            proptest::prop_assert_eq!(parsed.is_ok(), valid);
            if let Err(e) = parsed {
                proptest::prop_assert_eq!(e.code(), code::INVALID_NETWORK_CONFIG);
            }
        }
    }
}
