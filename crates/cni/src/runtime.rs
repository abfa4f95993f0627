//! The container-runtime side of CNI: run a network configuration list (conflist) the way
//! containerd/CRI-O (through libcni) do. The lab's pod runtime in the agent and this crate's
//! tests use it to drive `serval-cni` and the reference plugins.
//!
//! - ADD runs each plugin in order, injecting the list's `name` and `cniVersion`, the previous
//!   plugin's result as `prevResult`, and `runtimeConfig` for the capabilities a plugin
//!   declares; on a failure it runs DEL for the whole list (reverse order) and reports the
//!   first error.
//! - DEL runs the plugins in reverse order with the last ADD's result as `prevResult`.
//! - CHECK runs them in order with that result (skipped when the list says `disableCheck`).
//! - STATUS and GC (spec 1.1) run only for lists of `cniVersion` 1.1.0 or later.
//!
//! With [`Runtime::with_cache_dir`], the ADD result is kept on disk (as libcni does under
//! `/var/lib/cni/results`) so a DEL or CHECK after a restart still has its `prevResult`.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

use crate::spec::{Attachment, ErrorJson, VALID_ATTACHMENTS_KEY, Version, VersionInfo};

/// What can go wrong running a conflist.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("reading CNI config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI config {path} is not a valid conflist: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("CNI config {path} is not a valid conflist: {reason}")]
    Invalid { path: PathBuf, reason: &'static str },
    #[error("no *.conflist file in {dir}; write one (e.g. 10-serval.conflist)")]
    NoConfig { dir: PathBuf },
    #[error("CNI plugin {plugin:?} not found in {}; install it or fix CNI_PATH", .dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":"))]
    PluginNotFound { plugin: String, dirs: Vec<PathBuf> },
    #[error("running CNI plugin {plugin} ({command}): {source}")]
    Spawn {
        plugin: String,
        command: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The plugin failed and said why with the spec's error JSON.
    #[error("CNI plugin {plugin} {command} failed with code {}: {}{}", .error.code, .error.msg,
        if .error.details.is_empty() { String::new() } else { format!(" ({})", .error.details) })]
    Plugin {
        plugin: String,
        command: &'static str,
        error: ErrorJson,
    },
    /// The plugin failed without valid error JSON.
    #[error(
        "CNI plugin {plugin} {command} exited with {status} without a CNI error; stdout: {stdout:?}; stderr: {stderr:?}"
    )]
    Crashed {
        plugin: String,
        command: &'static str,
        status: std::process::ExitStatus,
        stdout: String,
        stderr: String,
    },
    #[error(
        "CNI plugin {plugin} {command} printed something that is not a result: {source}; stdout: {stdout:?}"
    )]
    BadOutput {
        plugin: String,
        command: &'static str,
        stdout: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("CNI plugin {plugin} {command} did not finish within {after:?}; it was killed")]
    Timeout {
        plugin: String,
        command: &'static str,
        after: Duration,
    },
    #[error("CNI result cache {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// A network configuration list.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflist {
    pub cni_version: String,
    pub name: String,
    pub disable_check: bool,
    pub disable_gc: bool,
    /// The plugin configurations, each a JSON object with at least `type`.
    pub plugins: Vec<Map<String, Value>>,
}

impl Conflist {
    /// Parses a conflist's JSON text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Conflist> {
        let v: Value = serde_json::from_str(text).map_err(|source| RuntimeError::Parse {
            path: origin.to_path_buf(),
            source,
        })?;
        let invalid = |reason| RuntimeError::Invalid {
            path: origin.to_path_buf(),
            reason,
        };
        let obj = v
            .as_object()
            .ok_or_else(|| invalid("the top level must be a JSON object"))?;
        let text_field = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
        let flag = |k: &str| match obj.get(k) {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s == "true",
            _ => false,
        };
        let cni_version =
            text_field("cniVersion").ok_or_else(|| invalid("cniVersion (string) is required"))?;
        let name = text_field("name").ok_or_else(|| invalid("name (string) is required"))?;
        let plugins = obj
            .get("plugins")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("plugins (a list) is required"))?;
        if plugins.is_empty() {
            return Err(invalid("plugins must not be empty"));
        }
        let mut out = Vec::with_capacity(plugins.len());
        for p in plugins {
            let p = p
                .as_object()
                .ok_or_else(|| invalid("each plugin must be a JSON object"))?;
            if !p.get("type").is_some_and(Value::is_string) {
                return Err(invalid("each plugin needs a type (string)"));
            }
            out.push(p.clone());
        }
        Ok(Conflist {
            cni_version,
            name,
            disable_check: flag("disableCheck"),
            disable_gc: flag("disableGC"),
            plugins: out,
        })
    }

    /// Reads one conflist file.
    pub fn load(path: &Path) -> Result<Conflist> {
        let text = std::fs::read_to_string(path).map_err(|source| RuntimeError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Conflist::parse(&text, path)
    }

    /// The first `*.conflist` in `dir` by file name, as kubelet picks its network.
    pub fn load_dir(dir: &Path) -> Result<Conflist> {
        let entries = std::fs::read_dir(dir).map_err(|source| RuntimeError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "conflist"))
            .collect();
        files.sort();
        let first = files.first().ok_or_else(|| RuntimeError::NoConfig {
            dir: dir.to_path_buf(),
        })?;
        Conflist::load(first)
    }

    fn version(&self) -> Option<Version> {
        Version::parse(&self.cni_version)
    }
}

/// One attachment: the container and where its interface goes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeConf {
    pub container_id: String,
    /// Path of the network namespace (`/run/netns/NAME`).
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS` pairs, e.g. `K8S_POD_NAMESPACE`, `K8S_POD_NAME`.
    pub args: Vec<(String, String)>,
    /// Capability arguments (`portMappings`, `bandwidth`, ...), passed in `runtimeConfig` to
    /// the plugins that declare the capability.
    pub capability_args: Map<String, Value>,
}

impl RuntimeConf {
    /// An attachment of a Kubernetes-style pod: `CNI_ARGS` carries its namespace and name.
    pub fn for_pod(
        container_id: &str,
        netns: &str,
        ifname: &str,
        namespace: &str,
        pod: &str,
    ) -> RuntimeConf {
        RuntimeConf {
            container_id: container_id.to_string(),
            netns: netns.to_string(),
            ifname: ifname.to_string(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), namespace.to_string()),
                ("K8S_POD_NAME".into(), pod.to_string()),
            ],
            capability_args: Map::new(),
        }
    }
}

/// Runs plugins found in `bin_dirs` (`CNI_PATH`).
#[derive(Debug, Clone)]
pub struct Runtime {
    pub bin_dirs: Vec<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    /// Run plugins inside this network namespace (a path such as `/run/netns/NODE`) instead
    /// of the caller's: the namespace the plugins see as "the host".
    pub netns: Option<PathBuf>,
    /// Extra environment for every plugin (besides the inherited one and the CNI_ variables).
    pub env: BTreeMap<String, String>,
    /// How long one plugin run may take before it is killed ([`DEFAULT_PLUGIN_TIMEOUT`]).
    pub timeout: Duration,
}

/// How long one plugin run may take by default.
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_secs(120);

impl Runtime {
    pub fn new(bin_dirs: Vec<PathBuf>) -> Runtime {
        Runtime {
            bin_dirs,
            cache_dir: None,
            netns: None,
            env: BTreeMap::new(),
            timeout: DEFAULT_PLUGIN_TIMEOUT,
        }
    }

    /// Kills a plugin that runs longer than `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Runtime {
        self.timeout = timeout;
        self
    }

    /// Keep ADD results in `dir` for later CHECK and DEL.
    pub fn with_cache_dir(mut self, dir: impl Into<PathBuf>) -> Runtime {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Runs the plugins in the network namespace at `path` (e.g. a lab node's
    /// `/run/netns/sv-L-node1`) rather than the caller's.
    pub fn in_netns(mut self, path: impl Into<PathBuf>) -> Runtime {
        self.netns = Some(path.into());
        self
    }

    /// Sets an extra environment variable for every plugin.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Runtime {
        self.env.insert(key.into(), value.into());
        self
    }

    /// ADD: every plugin in order; returns the final result. On failure the whole list is
    /// DELeted again (best effort) and the first error is returned.
    pub async fn add(&self, list: &Conflist, rt: &RuntimeConf) -> Result<Value> {
        let mut prev: Option<Value> = None;
        for plugin in &list.plugins {
            let conf = self.plugin_conf(list, plugin, rt, prev.as_ref(), None);
            match self.exec(plugin_type(plugin), "ADD", &conf, Some(rt)).await {
                Ok(out) => {
                    let result: Value =
                        serde_json::from_slice(&out).map_err(|source| RuntimeError::BadOutput {
                            plugin: plugin_type(plugin).to_string(),
                            command: "ADD",
                            stdout: String::from_utf8_lossy(&out).into_owned(),
                            source,
                        })?;
                    prev = Some(result);
                }
                Err(err) => {
                    tracing::warn!(container = %rt.container_id, error = %err, "CNI ADD failed; cleaning up with DEL");
                    if let Err(del_err) = self.del_inner(list, rt, prev.as_ref()).await {
                        tracing::warn!(container = %rt.container_id, error = %del_err, "DEL after a failed ADD failed too");
                    }
                    return Err(err);
                }
            }
        }
        let result = prev.unwrap_or(Value::Null);
        if let Some(path) = self.cache_path(list, rt) {
            write_cache(&path, &result)?;
        }
        Ok(result)
    }

    /// DEL: every plugin in reverse order with the last ADD's result (`prev`, or the cached
    /// one) as `prevResult`.
    pub async fn del(&self, list: &Conflist, rt: &RuntimeConf, prev: Option<&Value>) -> Result<()> {
        let cached = match prev {
            Some(_) => None,
            None => self.cached_result(list, rt)?,
        };
        self.del_inner(list, rt, prev.or(cached.as_ref())).await?;
        if let Some(path) = self.cache_path(list, rt) {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(RuntimeError::Cache { path, source }),
            }
        }
        Ok(())
    }

    async fn del_inner(
        &self,
        list: &Conflist,
        rt: &RuntimeConf,
        prev: Option<&Value>,
    ) -> Result<()> {
        for plugin in list.plugins.iter().rev() {
            let conf = self.plugin_conf(list, plugin, rt, prev, None);
            self.exec(plugin_type(plugin), "DEL", &conf, Some(rt))
                .await?;
        }
        Ok(())
    }

    /// CHECK: every plugin in order with the last ADD's result. Does nothing when the list
    /// disables it or its version predates CHECK (0.4.0).
    pub async fn check(
        &self,
        list: &Conflist,
        rt: &RuntimeConf,
        prev: Option<&Value>,
    ) -> Result<()> {
        if list.disable_check || list.version().is_none_or(|v| v < Version::V0_4_0) {
            return Ok(());
        }
        let cached = match prev {
            Some(_) => None,
            None => self.cached_result(list, rt)?,
        };
        let prev = prev.or(cached.as_ref());
        for plugin in &list.plugins {
            let conf = self.plugin_conf(list, plugin, rt, prev, None);
            self.exec(plugin_type(plugin), "CHECK", &conf, Some(rt))
                .await?;
        }
        Ok(())
    }

    /// STATUS (spec 1.1): whether every plugin is ready for ADDs. Does nothing for lists
    /// older than 1.1.0.
    pub async fn status(&self, list: &Conflist) -> Result<()> {
        if list.version().is_none_or(|v| v < Version::V1_1_0) {
            return Ok(());
        }
        for plugin in &list.plugins {
            let conf = self.plugin_conf(list, plugin, &RuntimeConf::default(), None, None);
            self.exec(plugin_type(plugin), "STATUS", &conf, None)
                .await?;
        }
        Ok(())
    }

    /// GC (spec 1.1): every plugin releases what belongs to attachments not in `valid`.
    /// Does nothing for lists older than 1.1.0 or with `disableGC`.
    pub async fn gc(&self, list: &Conflist, valid: &[Attachment]) -> Result<()> {
        if list.disable_gc || list.version().is_none_or(|v| v < Version::V1_1_0) {
            return Ok(());
        }
        let valid = serde_json::to_value(valid).expect("attachments serialise");
        for plugin in &list.plugins {
            let conf = self.plugin_conf(list, plugin, &RuntimeConf::default(), None, Some(&valid));
            self.exec(plugin_type(plugin), "GC", &conf, None).await?;
        }
        Ok(())
    }

    /// VERSION of one plugin binary, asked with `cni_version` as the runtime's version.
    pub async fn version(&self, plugin: &str, cni_version: &str) -> Result<VersionInfo> {
        let conf = serde_json::json!({ "cniVersion": cni_version });
        let out = self.exec(plugin, "VERSION", &conf, None).await?;
        serde_json::from_slice(&out).map_err(|source| RuntimeError::BadOutput {
            plugin: plugin.to_string(),
            command: "VERSION",
            stdout: String::from_utf8_lossy(&out).into_owned(),
            source,
        })
    }

    /// The configuration one plugin sees for one command.
    fn plugin_conf(
        &self,
        list: &Conflist,
        plugin: &Map<String, Value>,
        rt: &RuntimeConf,
        prev: Option<&Value>,
        valid_attachments: Option<&Value>,
    ) -> Value {
        let mut conf = plugin.clone();
        conf.insert("cniVersion".into(), list.cni_version.clone().into());
        conf.insert("name".into(), list.name.clone().into());
        if let Some(prev) = prev.filter(|p| !p.is_null()) {
            conf.insert("prevResult".into(), prev.clone());
        }
        if let Some(valid) = valid_attachments {
            conf.insert(VALID_ATTACHMENTS_KEY.into(), valid.clone());
        }
        let mut runtime_config = Map::new();
        if let Some(caps) = plugin.get("capabilities").and_then(Value::as_object) {
            for (cap, on) in caps {
                if on.as_bool() == Some(true)
                    && let Some(arg) = rt.capability_args.get(cap)
                {
                    runtime_config.insert(cap.clone(), arg.clone());
                }
            }
        }
        if !runtime_config.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(runtime_config));
        }
        Value::Object(conf)
    }

    fn find_plugin(&self, plugin: &str) -> Result<PathBuf> {
        if !plugin.contains('/') {
            for dir in &self.bin_dirs {
                let p = dir.join(plugin);
                if p.is_file() {
                    return Ok(p);
                }
            }
        }
        Err(RuntimeError::PluginNotFound {
            plugin: plugin.to_string(),
            dirs: self.bin_dirs.clone(),
        })
    }

    /// Runs one plugin and returns its stdout on success.
    async fn exec(
        &self,
        plugin: &str,
        command: &'static str,
        conf: &Value,
        rt: Option<&RuntimeConf>,
    ) -> Result<Vec<u8>> {
        let bin = self.find_plugin(plugin)?;
        let path = std::env::join_paths(&self.bin_dirs).unwrap_or_default();
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.env("CNI_COMMAND", command)
            .env("CNI_PATH", path)
            .envs(&self.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for var in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS"] {
            cmd.env_remove(var);
        }
        if let Some(rt) = rt {
            let args = rt
                .args
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(";");
            cmd.env("CNI_CONTAINERID", &rt.container_id)
                .env("CNI_IFNAME", &rt.ifname)
                .env("CNI_ARGS", args);
            if !rt.netns.is_empty() {
                cmd.env("CNI_NETNS", &rt.netns);
            }
        }
        let spawn_err = |source| RuntimeError::Spawn {
            plugin: plugin.to_string(),
            command,
            source,
        };
        // Kept open until the child has been spawned: the child enters it before exec.
        let netns_file = match &self.netns {
            Some(path) => Some(std::fs::File::open(path).map_err(spawn_err)?),
            None => None,
        };
        if let Some(file) = &netns_file {
            let fd = file.as_raw_fd();
            // SAFETY: the closure runs in the forked child before exec and only makes the
            // setns(2) system call, which is async-signal-safe; `fd` stays open in the parent
            // (and so in the child) until after `spawn` returns.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = cmd.spawn().map_err(spawn_err)?;
        drop(netns_file);
        let input = serde_json::to_vec(conf).expect("JSON values serialise");
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(&input).await.map_err(spawn_err)?;
            drop(stdin);
        }
        // On timeout the child is dropped, which kills it (`kill_on_drop`).
        let out = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| RuntimeError::Timeout {
                plugin: plugin.to_string(),
                command,
                after: self.timeout,
            })?
            .map_err(spawn_err)?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !stderr.trim().is_empty() {
            tracing::debug!(plugin, command, stderr = %stderr.trim(), "CNI plugin stderr");
        }
        if out.status.success() {
            tracing::debug!(plugin, command, "CNI plugin succeeded");
            return Ok(out.stdout);
        }
        match serde_json::from_slice::<ErrorJson>(&out.stdout) {
            Ok(error) => Err(RuntimeError::Plugin {
                plugin: plugin.to_string(),
                command,
                error,
            }),
            Err(_) => Err(RuntimeError::Crashed {
                plugin: plugin.to_string(),
                command,
                status: out.status,
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr,
            }),
        }
    }

    fn cache_path(&self, list: &Conflist, rt: &RuntimeConf) -> Option<PathBuf> {
        self.cache_dir
            .as_ref()
            .map(|d| d.join(format!("{}-{}-{}", list.name, rt.container_id, rt.ifname)))
    }

    fn cached_result(&self, list: &Conflist, rt: &RuntimeConf) -> Result<Option<Value>> {
        let Some(path) = self.cache_path(list, rt) else {
            return Ok(None);
        };
        match std::fs::read(&path) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(RuntimeError::Cache { path, source }),
        }
    }
}

fn plugin_type(plugin: &Map<String, Value>) -> &str {
    plugin
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn write_cache(path: &Path, result: &Value) -> Result<()> {
    let cache_err = |source| RuntimeError::Cache {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(cache_err)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec(result).expect("JSON values serialise"),
    )
    .map_err(cache_err)?;
    std::fs::rename(&tmp, path).map_err(cache_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"{"cniVersion":"1.0.0","name":"k8s","plugins":[
        {"type":"serval","datastore":"sqlite:///x"},
        {"type":"portmap","capabilities":{"portMappings":true},"snat":true},
        {"type":"tuning","sysctl":{"net.core.somaxconn":"500"}}]}"#;

    #[test]
    fn conflists_parse_and_refuse_bad_shapes() {
        let l = Conflist::parse(LIST, Path::new("t")).unwrap();
        assert_eq!(l.plugins.len(), 3);
        assert!(!l.disable_check);
        for bad in [
            r#"[]"#,
            r#"{"name":"a","plugins":[{"type":"x"}]}"#,
            r#"{"cniVersion":"1.0.0","name":"a","plugins":[]}"#,
            r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"notype":1}]}"#,
            "nope",
        ] {
            assert!(Conflist::parse(bad, Path::new("t")).is_err(), "{bad}");
        }
    }

    #[test]
    fn plugin_conf_injects_name_version_prev_result_and_capabilities() {
        let l = Conflist::parse(LIST, Path::new("t")).unwrap();
        let mut rt = RuntimeConf::for_pod("c1", "/run/netns/x", "eth0", "default", "web");
        rt.capability_args.insert(
            "portMappings".into(),
            serde_json::json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
        );
        rt.capability_args
            .insert("bandwidth".into(), serde_json::json!({}));
        let r = Runtime::new(vec![]);
        let prev = serde_json::json!({"cniVersion":"1.0.0","ips":[]});
        let first = r.plugin_conf(&l, &l.plugins[0], &rt, None, None);
        assert_eq!(first["name"], "k8s");
        assert_eq!(first["cniVersion"], "1.0.0");
        assert!(first.get("prevResult").is_none());
        assert!(first.get("runtimeConfig").is_none());
        let second = r.plugin_conf(&l, &l.plugins[1], &rt, Some(&prev), None);
        assert_eq!(second["prevResult"], prev);
        assert_eq!(second["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
        assert!(second["runtimeConfig"].get("bandwidth").is_none());
    }
}
