//! The plugin: reads the environment and stdin, runs one command, and answers on stdout with a
//! result or the spec's error JSON. [`run`] is the whole binary minus process I/O.

mod add;
mod check;
mod del;
mod gc;

use std::collections::BTreeMap;
use std::sync::Arc;

use serval_api::Client;
use serval_ipam::{AllocationAttrs, Ipam};

use crate::config::{NetConf, peek_version};
use crate::env::{CniEnv, Command};
use crate::error::{PluginError, Result};
use crate::spec::{LATEST_VERSION, SUPPORTED_VERSIONS, Version, VersionInfo};

/// What the binary prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
}

/// Runs one plugin invocation with the given environment variables and stdin.
pub fn run(vars: &BTreeMap<String, String>, stdin: &[u8]) -> Outcome {
    let version_hint = peek_version(stdin)
        .filter(|v| Version::is_supported(v))
        .unwrap_or_else(|| LATEST_VERSION.to_string());
    let fail = |e: PluginError, version: &str| {
        tracing::error!(code = e.code(), error = %e, "CNI command failed");
        Outcome {
            exit_code: 1,
            stdout: to_line(&e.to_json(version)),
        }
    };
    let env = match CniEnv::from_vars(vars) {
        Ok(env) => env,
        Err(e) => return fail(e.into(), &version_hint),
    };
    if env.command == Command::Version {
        let info = VersionInfo {
            cni_version: version_hint,
            supported_versions: SUPPORTED_VERSIONS.iter().map(|s| s.to_string()).collect(),
        };
        return Outcome {
            exit_code: 0,
            stdout: to_line(&info),
        };
    }
    let conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => return fail(e.into(), &version_hint),
    };
    crate::logging::init(&conf.log_level, conf.log_file.as_deref());
    let node = conf.node_name(vars.get("NODENAME").map(String::as_str));
    tracing::info!(
        command = env.command.as_str(),
        container = %env.container_id,
        netns = ?env.netns,
        ifname = %env.ifname,
        args = ?env.args.pairs,
        node = %node,
        "CNI invocation"
    );
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(source) => return fail(PluginError::AsyncRuntime { source }, &conf.cni_version),
    };
    let cni_version = conf.cni_version.clone();
    let ctx = Ctx { env, conf, node };
    match rt.block_on(ctx.dispatch()) {
        Ok(stdout) => {
            tracing::info!("CNI command succeeded");
            Outcome {
                exit_code: 0,
                stdout,
            }
        }
        Err(e) => fail(e, &cni_version),
    }
}

fn to_line<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).expect("CNI output serialises");
    out.push(b'\n');
    out
}

/// One invocation's inputs.
pub(crate) struct Ctx {
    pub env: CniEnv,
    pub conf: NetConf,
    pub node: String,
}

impl Ctx {
    async fn dispatch(&self) -> Result<Vec<u8>> {
        match self.env.command {
            Command::Add => self.add().await.map(|r| to_line(&r)),
            Command::Del => self.del().await.map(|()| Vec::new()),
            Command::Check => {
                self.conf.require_version("CHECK", Version::V0_4_0)?;
                self.check().await.map(|()| Vec::new())
            }
            Command::Status => {
                self.conf.require_version("STATUS", Version::V1_1_0)?;
                self.status().await.map(|()| Vec::new())
            }
            Command::Gc => {
                self.conf.require_version("GC", Version::V1_1_0)?;
                self.gc().await.map(|()| Vec::new())
            }
            Command::Version => {
                unreachable!("VERSION is answered before the configuration is read")
            }
        }
    }

    pub(crate) async fn client(&self) -> Result<Client> {
        Client::open(&self.conf.datastore)
            .await
            .map_err(|source| PluginError::Open {
                url: self.conf.datastore.clone(),
                source: Box::new(source),
            })
    }

    pub(crate) fn ipam(client: &Client) -> Ipam {
        Ipam::new(Arc::clone(client.store()))
    }

    /// The pod's namespace and name from CNI_ARGS.
    pub(crate) fn pod(&self) -> Option<(&str, &str)> {
        Some((self.env.args.pod_namespace()?, self.env.args.pod_name()?))
    }

    pub(crate) fn require_pod(&self) -> Result<(&str, &str)> {
        self.pod().ok_or_else(|| PluginError::NoPod {
            command: self.env.command.as_str(),
            args: self
                .env
                .args
                .pairs
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(";"),
        })
    }

    pub(crate) fn attrs(&self, namespace: &str, pod: &str) -> AllocationAttrs {
        AllocationAttrs {
            namespace: Some(namespace.to_string()),
            pod: Some(pod.to_string()),
            node: self.node.clone(),
            container_id: Some(self.env.container_id.clone()),
        }
    }
}
