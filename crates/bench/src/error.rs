//! Errors of `serval bench`.

use std::path::PathBuf;

/// What can stop a benchmark run (a column that cannot run is not an error: it is reported
/// as "not available" with its reason).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("`serval bench` creates labs, network namespaces and rules: run it as root")]
    NotRoot,

    #[error("running {command}: {source}; is it installed? (scripts/install-deps.sh installs it)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{command} failed ({status}): {stderr}")]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
    },

    #[error("{what} in network namespace {netns}: {source}")]
    Netns {
        what: &'static str,
        netns: String,
        #[source]
        source: serval_sys::Error,
    },

    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("socket {op} {addr}: {source}")]
    Socket {
        op: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },

    #[error("pod {pod} has no IPv4 address on eth0 (netns {netns}); the bench needs an IPv4 lab")]
    NoPodAddress { pod: String, netns: String },

    #[error("{target} did not answer within {waited_ms} ms: {last_error}")]
    NoAnswer {
        target: String,
        waited_ms: u64,
        last_error: String,
    },

    /// A removed service, or a pod behind a policy that does not allow the client, kept
    /// answering.
    #[error(
        "{target} still answered {waited_ms} ms after the change that should stop it (its \
         service deleted, or a policy not allowing the client applied): the agent did not \
         program it (see the lab's agent.log)"
    )]
    StillAnswering { target: String, waited_ms: u64 },

    #[error("writing {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("drawing {path}: {reason}")]
    Plot { path: PathBuf, reason: String },

    #[error("bad argument {arg}: {reason}")]
    Usage { arg: &'static str, reason: String },
}

pub type Result<T, E = BenchError> = std::result::Result<T, E>;
