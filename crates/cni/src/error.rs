//! The plugin's error type and its mapping to the spec's error JSON codes.

use serval_api::ApiError;
use serval_ipam::IpamError;

use crate::config::ConfigError;
use crate::env::EnvError;
use crate::spec::{ErrorJson, code};

/// Everything a plugin command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("reading the network configuration from stdin: {source}")]
    Stdin {
        #[source]
        source: std::io::Error,
    },
    #[error("starting the async runtime: {source}")]
    AsyncRuntime {
        #[source]
        source: std::io::Error,
    },
    #[error(
        "CNI_ARGS must carry K8S_POD_NAMESPACE and K8S_POD_NAME for {command}; the runtime passed {args:?}"
    )]
    NoPod { command: &'static str, args: String },
    #[error("opening datastore {url}: {source}")]
    Open {
        url: String,
        #[source]
        source: Box<ApiError>,
    },
    #[error("datastore {op} {what}: {source}")]
    Datastore {
        op: &'static str,
        what: String,
        #[source]
        source: Box<ApiError>,
    },
    #[error(
        "IP pool {pool:?} named in ipam.{field} does not exist; create it or fix the network configuration"
    )]
    UnknownPool { pool: String, field: &'static str },
    #[error(
        "IP pool {pool} ({cidr}) named in ipam.{field} is not an {family} pool; list it under the other family"
    )]
    PoolFamily {
        pool: String,
        cidr: String,
        field: &'static str,
        family: &'static str,
    },
    #[error("IP pool {pool}: nodeSelector {selector:?} does not parse: {reason}")]
    BadSelector {
        pool: String,
        selector: String,
        reason: String,
    },
    #[error("IPAM for container {container}: {source}")]
    Ipam {
        container: String,
        #[source]
        source: Box<IpamError>,
    },
    #[error("opening the container's network namespace {path}: {source}")]
    Netns {
        path: String,
        #[source]
        source: serval_sys::Error,
    },
    #[error("{step}: {source}")]
    Kernel {
        step: &'static str,
        #[source]
        source: serval_sys::Error,
    },
    #[error("CHECK found problems: {}", .problems.join("; "))]
    Check { problems: Vec<String> },
    #[error(
        "{command} for container {container}: the previous result (prevResult) is missing; the runtime must pass the ADD result"
    )]
    NoPrevResult {
        command: &'static str,
        container: String,
    },
    #[error("not ready: {reason}")]
    NotReady { reason: String },
}

impl PluginError {
    /// An IPAM failure for `container`.
    pub fn ipam(container: &str, source: IpamError) -> PluginError {
        PluginError::Ipam {
            container: container.to_string(),
            source: Box::new(source),
        }
    }

    /// A datastore failure.
    pub fn datastore(op: &'static str, what: impl Into<String>, source: ApiError) -> PluginError {
        PluginError::Datastore {
            op,
            what: what.into(),
            source: Box::new(source),
        }
    }

    /// The CNI error code.
    pub fn code(&self) -> u32 {
        match self {
            PluginError::Env(_) | PluginError::NoPod { .. } => code::INVALID_ENV,
            PluginError::Config(e) => e.code(),
            PluginError::Stdin { .. } | PluginError::AsyncRuntime { .. } => code::IO_FAILURE,
            PluginError::Open { .. } | PluginError::Datastore { .. } => code::DATASTORE,
            PluginError::UnknownPool { .. }
            | PluginError::PoolFamily { .. }
            | PluginError::BadSelector { .. } => code::INVALID_NETWORK_CONFIG,
            PluginError::Ipam { source, .. } => match **source {
                IpamError::PoolsExhausted { .. } => code::POOL_EXHAUSTED,
                IpamError::NoEnabledPool { .. } => code::NO_POOL,
                IpamError::Contention { .. } => code::TRY_AGAIN_LATER,
                IpamError::Store { .. } => code::DATASTORE,
                _ => code::IPAM,
            },
            PluginError::Netns { .. } => code::UNKNOWN_CONTAINER,
            PluginError::Kernel { .. } => code::KERNEL,
            PluginError::Check { .. } => code::CHECK_FAILED,
            PluginError::NoPrevResult { .. } => code::INVALID_NETWORK_CONFIG,
            PluginError::NotReady { .. } => code::PLUGIN_NOT_AVAILABLE,
        }
    }

    /// The spec's error JSON: `msg` is the short message, `details` the chain of causes.
    pub fn to_json(&self, cni_version: &str) -> ErrorJson {
        let mut details = Vec::new();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            details.push(s.to_string());
            source = s.source();
        }
        ErrorJson {
            cni_version: cni_version.to_string(),
            code: self.code(),
            msg: self.to_string(),
            details: details.join(": "),
        }
    }
}

pub type Result<T, E = PluginError> = std::result::Result<T, E>;
