//! Running a CNI network configuration list exactly as a container runtime does (CNI spec
//! 1.0.0, "Execution of network configuration lists"): each plugin in order for ADD, with the
//! previous plugin's result as `prevResult`; in reverse order for DEL, with the cached ADD
//! result as `prevResult`.
//!
//! Workaround note: the brief names serval-cni's runtime library for this; it did not exist
//! when this was written, so the agent carries this small executor. Swap it for the CNI
//! crate's when that lands (same inputs: conflist path, CNI_PATH, container id, netns, ifname,
//! args).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("no CNI network configuration list (*.conflist) in {dir}; the lab writes one per node")]
    NoConfList { dir: PathBuf },
    #[error("reading CNI configuration {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI configuration {path} is not a valid conflist: {reason}")]
    BadConfList { path: PathBuf, reason: String },
    #[error("CNI plugin {plugin:?} not found in {cni_path}; link it into the node's cni/bin")]
    PluginMissing { plugin: String, cni_path: PathBuf },
    #[error("running CNI plugin {plugin} ({command}): {source}")]
    Exec {
        plugin: String,
        command: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI plugin {plugin} {command} failed (exit {status}): code {code} {msg} {details}")]
    PluginFailed {
        plugin: String,
        command: &'static str,
        status: i32,
        code: i64,
        msg: String,
        details: String,
    },
    #[error("CNI plugin {plugin} {command} printed a result that is not JSON: {output:?}")]
    BadResult {
        plugin: String,
        command: &'static str,
        output: String,
    },
}

/// One parsed configuration list.
#[derive(Debug, Clone)]
pub struct ConfList {
    pub path: PathBuf,
    pub name: String,
    pub cni_version: String,
    /// Each plugin's configuration object, in order.
    pub plugins: Vec<Map<String, Value>>,
}

impl ConfList {
    /// The first `*.conflist` in `dir` by file name, as runtimes choose.
    pub fn load_dir(dir: &Path) -> Result<ConfList, CniError> {
        let entries = std::fs::read_dir(dir).map_err(|source| CniError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut lists: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "conflist"))
            .collect();
        lists.sort();
        let path = lists
            .into_iter()
            .next()
            .ok_or_else(|| CniError::NoConfList {
                dir: dir.to_path_buf(),
            })?;
        Self::load(&path)
    }

    pub fn load(path: &Path) -> Result<ConfList, CniError> {
        let text = std::fs::read(path).map_err(|source| CniError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &[u8]) -> Result<ConfList, CniError> {
        let bad = |reason: &str| CniError::BadConfList {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let v: Value = serde_json::from_slice(text).map_err(|e| bad(&e.to_string()))?;
        let name = v
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no \"name\""))?;
        let version = v
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("1.0.0");
        let plugins = v
            .get("plugins")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no \"plugins\" list"))?
            .iter()
            .map(|p| {
                p.as_object()
                    .cloned()
                    .ok_or_else(|| bad("a plugin entry is not an object"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if plugins.is_empty() {
            return Err(bad("\"plugins\" is empty"));
        }
        for p in &plugins {
            if p.get("type").and_then(Value::as_str).is_none() {
                return Err(bad("a plugin has no \"type\""));
            }
        }
        Ok(ConfList {
            path: path.to_path_buf(),
            name: name.to_string(),
            cni_version: version.to_string(),
            plugins,
        })
    }
}

/// The runtime parameters of one attachment.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub container_id: String,
    /// `/run/netns/NAME`.
    pub netns: PathBuf,
    pub ifname: String,
    /// `K8S_POD_NAMESPACE=…;K8S_POD_NAME=…`.
    pub args: String,
    /// Directory of plugin binaries (`CNI_PATH`).
    pub cni_path: PathBuf,
}

fn plugin_config(list: &ConfList, plugin: &Map<String, Value>, prev: Option<&Value>) -> Value {
    let mut conf = plugin.clone();
    conf.insert("name".into(), Value::String(list.name.clone()));
    conf.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    match prev {
        Some(p) => {
            conf.insert("prevResult".into(), p.clone());
        }
        None => {
            conf.remove("prevResult");
        }
    }
    Value::Object(conf)
}

async fn exec_plugin(
    list: &ConfList,
    plugin: &Map<String, Value>,
    command: &'static str,
    att: &Attachment,
    prev: Option<&Value>,
) -> Result<Option<Value>, CniError> {
    let ty = plugin
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let exe = att.cni_path.join(&ty);
    if !exe.exists() {
        return Err(CniError::PluginMissing {
            plugin: ty,
            cni_path: att.cni_path.clone(),
        });
    }
    let stdin = serde_json::to_vec(&plugin_config(list, plugin, prev)).unwrap_or_default();
    let mut child = tokio::process::Command::new(&exe)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &att.container_id)
        .env("CNI_NETNS", &att.netns)
        .env("CNI_IFNAME", &att.ifname)
        .env("CNI_ARGS", &att.args)
        .env("CNI_PATH", &att.cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| CniError::Exec {
            plugin: ty.clone(),
            command,
            source,
        })?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(&stdin)
            .await
            .map_err(|source| CniError::Exec {
                plugin: ty.clone(),
                command,
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|source| CniError::Exec {
            plugin: ty.clone(),
            command,
            source,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let err: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(CniError::PluginFailed {
            plugin: ty,
            command,
            status: out.status.code().unwrap_or(-1),
            code: err.get("code").and_then(Value::as_i64).unwrap_or(-1),
            msg: err
                .get("msg")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| stderr.trim().to_string()),
            details: err
                .get("details")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        });
    }
    if stdout.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(&stdout)
        .map(Some)
        .map_err(|_| CniError::BadResult {
            plugin: ty,
            command,
            output: stdout,
        })
}

/// ADD: every plugin in order; returns the last plugin's result.
pub async fn add(list: &ConfList, att: &Attachment) -> Result<Value, CniError> {
    let mut prev: Option<Value> = None;
    for plugin in &list.plugins {
        if let Some(result) = exec_plugin(list, plugin, "ADD", att, prev.as_ref()).await? {
            prev = Some(result);
        }
    }
    Ok(prev.unwrap_or(Value::Null))
}

/// DEL: every plugin in reverse order, each with `prev` (the cached ADD result) when known.
/// Stops at the first failure (the runtime retries the whole DEL later).
pub async fn del(list: &ConfList, att: &Attachment, prev: Option<&Value>) -> Result<(), CniError> {
    let prev = prev.filter(|p| !p.is_null());
    for plugin in list.plugins.iter().rev() {
        exec_plugin(list, plugin, "DEL", att, prev).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_parses_and_plugin_config_carries_name_version_and_prev() {
        let text = br#"{"cniVersion":"1.0.0","name":"serval","plugins":[
            {"type":"serval","mtu":0},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;
        let list = ConfList::parse(Path::new("x.conflist"), text).unwrap();
        assert_eq!(list.plugins.len(), 2);
        let prev = serde_json::json!({"cniVersion":"1.0.0","ips":[]});
        let conf = plugin_config(&list, &list.plugins[1], Some(&prev));
        assert_eq!(conf["name"], "serval");
        assert_eq!(conf["cniVersion"], "1.0.0");
        assert_eq!(conf["type"], "portmap");
        assert_eq!(conf["prevResult"], prev);
        let first = plugin_config(&list, &list.plugins[0], None);
        assert!(first.get("prevResult").is_none());
        for bad in [
            &b"{}"[..],
            br#"{"name":"x","plugins":[]}"#,
            br#"{"name":"x","plugins":[{}]}"#,
            b"nope",
        ] {
            assert!(matches!(
                ConfList::parse(Path::new("b"), bad),
                Err(CniError::BadConfList { .. })
            ));
        }
    }

    #[test]
    fn load_dir_picks_the_first_conflist() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            ConfList::load_dir(dir.path()),
            Err(CniError::NoConfList { .. })
        ));
        std::fs::write(
            dir.path().join("20-b.conflist"),
            br#"{"name":"b","plugins":[{"type":"x"}]}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("10-a.conflist"),
            br#"{"name":"a","plugins":[{"type":"x"}]}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("00-c.conf"), b"{}").unwrap();
        assert_eq!(ConfList::load_dir(dir.path()).unwrap().name, "a");
    }
}
