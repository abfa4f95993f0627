//! The plugin's environment: `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`,
//! `CNI_ARGS`, `CNI_PATH`, read from a map so tests need not touch the process environment.

use std::collections::BTreeMap;

/// A CNI command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }
}

/// A missing or malformed environment variable (CNI error code 4).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("{var} is not set; the container runtime must set it for {command}")]
    Missing {
        var: &'static str,
        command: &'static str,
    },
    #[error(
        "CNI_COMMAND {value:?} is not a CNI command; use ADD, DEL, CHECK, VERSION, STATUS or GC"
    )]
    UnknownCommand { value: String },
    #[error("CNI_ARGS entry {entry:?} is not KEY=VALUE; separate entries with ';'")]
    BadArgs { entry: String },
    #[error(
        "CNI_IFNAME {value:?} is not a valid interface name (1-15 characters, no '/', ':' or whitespace)"
    )]
    BadIfname { value: String },
}

/// `CNI_ARGS`, split. Unknown keys are kept but ignored (as with `IgnoreUnknown=1`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pairs: BTreeMap<String, String>,
}

impl CniArgs {
    /// Parses `K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;IgnoreUnknown=1`.
    pub fn parse(s: &str) -> Result<CniArgs, EnvError> {
        let mut pairs = BTreeMap::new();
        for entry in s.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let Some((k, v)) = entry.split_once('=') else {
                return Err(EnvError::BadArgs {
                    entry: entry.to_string(),
                });
            };
            if k.is_empty() {
                return Err(EnvError::BadArgs {
                    entry: entry.to_string(),
                });
            }
            pairs.insert(k.to_string(), v.to_string());
        }
        Ok(CniArgs { pairs })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn pod_namespace(&self) -> Option<&str> {
        self.get("K8S_POD_NAMESPACE")
    }

    pub fn pod_name(&self) -> Option<&str> {
        self.get("K8S_POD_NAME")
    }
}

/// The environment of one invocation, validated for its command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Command,
    pub container_id: String,
    /// Absent for DEL when the runtime no longer has the namespace (and for VERSION etc.).
    pub netns: Option<String>,
    pub ifname: String,
    pub args: CniArgs,
    pub path: Vec<String>,
}

impl CniEnv {
    /// Reads the variables from `vars` (e.g. `std::env::vars()` collected). Which are
    /// required depends on the command, as the spec lists: ADD and CHECK need
    /// CONTAINERID, NETNS, IFNAME and PATH; DEL needs CONTAINERID and IFNAME (NETNS may be
    /// gone); VERSION, STATUS and GC need none.
    pub fn from_vars(vars: &BTreeMap<String, String>) -> Result<CniEnv, EnvError> {
        let get = |k: &str| vars.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let command = match get("CNI_COMMAND") {
            None => {
                return Err(EnvError::Missing {
                    var: "CNI_COMMAND",
                    command: "any command",
                });
            }
            Some(c) => Command::parse(c).ok_or_else(|| EnvError::UnknownCommand {
                value: c.to_string(),
            })?,
        };
        let required: &[&'static str] = match command {
            Command::Add | Command::Check => {
                &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
            }
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
            Command::Version | Command::Status | Command::Gc => &[],
        };
        for var in required {
            if get(var).is_none() {
                return Err(EnvError::Missing {
                    var,
                    command: command.as_str(),
                });
            }
        }
        let ifname = get("CNI_IFNAME").unwrap_or_default().to_string();
        if !ifname.is_empty() && !valid_ifname(&ifname) {
            return Err(EnvError::BadIfname { value: ifname });
        }
        Ok(CniEnv {
            command,
            container_id: get("CNI_CONTAINERID").unwrap_or_default().to_string(),
            netns: get("CNI_NETNS").map(str::to_string),
            ifname,
            args: CniArgs::parse(get("CNI_ARGS").unwrap_or_default())?,
            path: get("CNI_PATH")
                .map(|p| {
                    p.split(':')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> BTreeMap<String, String> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn args_ignore_unknown_keys_and_reject_garbage() {
        let a = CniArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_UID=x",
        )
        .unwrap();
        assert_eq!(a.pod_namespace(), Some("default"));
        assert_eq!(a.pod_name(), Some("web"));
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
        assert!(matches!(
            CniArgs::parse("novalue"),
            Err(EnvError::BadArgs { .. })
        ));
    }

    #[test]
    fn required_variables_depend_on_the_command() {
        let add = vars(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ]);
        assert_eq!(
            CniEnv::from_vars(&add).unwrap_err(),
            EnvError::Missing {
                var: "CNI_NETNS",
                command: "ADD"
            }
        );
        let mut del = add.clone();
        del.insert("CNI_COMMAND".into(), "DEL".into());
        let env = CniEnv::from_vars(&del).unwrap();
        assert_eq!(env.netns, None);
        assert!(CniEnv::from_vars(&vars(&[("CNI_COMMAND", "VERSION")])).is_ok());
        assert!(matches!(
            CniEnv::from_vars(&vars(&[("CNI_COMMAND", "FROB")])),
            Err(EnvError::UnknownCommand { .. })
        ));
        assert!(matches!(
            CniEnv::from_vars(&vars(&[])),
            Err(EnvError::Missing {
                var: "CNI_COMMAND",
                ..
            })
        ));
        let mut bad = del;
        bad.insert("CNI_IFNAME".into(), "a-very-long-interface".into());
        assert!(matches!(
            CniEnv::from_vars(&bad),
            Err(EnvError::BadIfname { .. })
        ));
    }

    proptest::proptest! {
        /// `K=V;K=V` round-trips for keys and values without ';' and '=' (in keys).
        #[test]
        fn cni_args_round_trip(pairs in proptest::collection::btree_map("[A-Za-z_][A-Za-z0-9_]{0,12}", "[a-z0-9./=-]{0,12}", 0..6)) {
            let text = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";");
            let parsed = CniArgs::parse(&text).unwrap();
            proptest::prop_assert_eq!(parsed.pairs, pairs);
        }
    }
}
