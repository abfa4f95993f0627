//! The lab's pod runtime: the kubelet + container-runtime role for the Pods bound to this node
//! (`spec.nodeName == node`; host-network pods are skipped). Only with a lab dir.
//!
//! For each such pod `ns/pod`:
//! 1. a record `<lab>/nodes/<node>/pods/<ns>_<pod>.json` is written first (so a crash at any
//!    later step can be cleaned up), then the netns `<prefix>-<ns>-<pod>` is created;
//! 2. the node's conflist (`<lab>/nodes/<node>/cni/net.d/`) runs with CNI_COMMAND=ADD,
//!    CNI_CONTAINERID = [`container_id`] (stable hash of ns/pod/uid), CNI_NETNS=/run/netns/…,
//!    CNI_IFNAME=eth0, CNI_ARGS=K8S_POD_NAMESPACE=…;K8S_POD_NAME=…,
//!    CNI_PATH=`<lab>/nodes/<node>/cni/bin`;
//! 3. the pod server (`serval pod-server --name NS/POD --tcp … --udp … --ready-file …`) starts
//!    inside the pod's netns (setns before exec, in its own session), its pid in
//!    `pods/<ns>_<pod>.pid`, its output in `pods/<ns>_<pod>.log`;
//! 4. once it has bound every port (its ready file appears), the pod's WorkloadEndpoint gets
//!    `spec.ready: true` (compare-and-swap through the client).
//!
//! A pod that is deleted, moves to another node, or is recreated with a new uid is torn down:
//! server stopped, CNI DEL (reverse order, the ADD result as prevResult), netns deleted,
//! files removed. A pod server that dies is restarted. On agent start, every record is
//! checked: netns + WorkloadEndpoint + live server → kept as is (pods keep running across
//! agent restarts); anything partial → torn down and recreated.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serval_api::{ApiError, Client};
use serval_model::k8s::Pod;
use serval_model::k8s::{PodCondition, PodIp, PodPhase, PodStatus};
use serval_model::workloadendpoint::WorkloadEndpoint;
use serval_model::{Kind, Resource, ResourceKey};
use serval_store::StoreError;
use serval_sys::NetNs;

use crate::AgentConfig;
use serval_cni::{Conflist, RuntimeConf};

use crate::cache::Cache;
use crate::daemon::{pods_on, write_atomic};

/// How long a new pod server may take to bind its ports.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopped pod server may take to exit before SIGKILL.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// The runtime checks its pods at least this often (dead servers are restarted).
const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Pod interface name.
pub const POD_IFNAME: &str = "eth0";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("pod {pod}: creating network namespace {netns}: {source}")]
    Netns {
        pod: String,
        netns: String,
        #[source]
        source: serval_sys::Error,
    },
    #[error("pod {pod}: CNI {command}: {source}")]
    Cni {
        pod: String,
        command: &'static str,
        #[source]
        source: Box<serval_cni::RuntimeError>,
    },
    #[error("pod {pod}: starting the pod server {program}: {source}")]
    Spawn {
        pod: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pod {pod}: the pod server did not start within {timeout:?}{exited}; see {log}")]
    ServerNotReady {
        pod: String,
        timeout: Duration,
        exited: String,
        log: PathBuf,
    },
    #[error("pod {pod}: writing {path}: {source}")]
    State {
        pod: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pod {pod}: marking its workload endpoint ready: {source}")]
    Ready {
        pod: String,
        #[source]
        source: Box<ApiError>,
    },
}

/// The stable CNI container id of a pod: 32 hex digits from its namespace, name and uid.
pub fn container_id(namespace: &str, pod: &str, uid: &str) -> String {
    let mut out = String::with_capacity(32);
    for seed in [0xcbf2_9ce4_8422_2325u64, 0x6c62_272e_07bb_0142] {
        let mut h = seed;
        for b in namespace
            .bytes()
            .chain([b'/'])
            .chain(pod.bytes())
            .chain([b'/'])
            .chain(uid.bytes())
        {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        out.push_str(&format!("{h:016x}"));
    }
    out
}

/// What the runtime wants for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodWant {
    namespace: String,
    name: String,
    uid: String,
    tcp: Vec<u16>,
    udp: Vec<u16>,
}

impl PodWant {
    fn from_pod(p: &Pod) -> PodWant {
        use serval_model::types::Protocol;
        let ports = |proto: Protocol| -> Vec<u16> {
            let set: BTreeSet<u16> = p
                .spec
                .containers
                .iter()
                .flat_map(|c| &c.ports)
                .filter(|cp| cp.protocol == proto)
                .map(|cp| cp.container_port.get())
                .collect();
            set.into_iter().collect()
        };
        PodWant {
            namespace: p.metadata.namespace_str().to_string(),
            name: p.metadata.name.clone(),
            uid: p.metadata.uid.clone().unwrap_or_default(),
            tcp: ports(Protocol::Tcp),
            udp: ports(Protocol::Udp),
        }
    }

    fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The runtime's record of one pod, kept in `pods/<ns>_<pod>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub container_id: String,
    /// Netns name (under /run/netns).
    pub netns: String,
    /// The pod server's pid, once started.
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub tcp: Vec<u16>,
    #[serde(default)]
    pub udp: Vec<u16>,
    /// The CNI ADD result (prevResult for DEL); null until ADD succeeded.
    #[serde(default)]
    pub cni_result: Value,
}

impl PodRecord {
    fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.pod)
    }
}

/// The pod runtime of one node.
#[derive(Debug)]
pub struct Runtime {
    node: String,
    node_dir: PathBuf,
    pods_dir: PathBuf,
    netns_prefix: String,
    client: Client,
    server_cmd: Vec<OsString>,
    /// Pods set up, by (namespace, name).
    pods: BTreeMap<(String, String), PodRecord>,
    /// Pod servers this process started (so they can be reaped), by pid.
    children: BTreeMap<u32, Child>,
    /// Retry schedule of pods whose setup failed.
    backoff: BTreeMap<(String, String), (Duration, Instant)>,
    /// The node's cgroup v2 directory (`--cgroup`): pod servers are started in it.
    cgroup: Option<PathBuf>,
}

fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Whether `pid` is a pod server serving `id` (guards against a recycled pid).
fn is_pod_server(pid: u32, id: &str) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => {
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.contains(&&b"pod-server"[..]) && args.contains(&id.as_bytes())
        }
        Err(_) => false,
    }
}

impl Runtime {
    /// A runtime for `config` (which has a lab dir and netns prefix).
    pub fn new(config: &AgentConfig, client: Client) -> Runtime {
        let lab = config.lab_dir.clone().unwrap_or_default();
        let node_dir = lab.join("nodes").join(&config.node);
        let server_cmd = config.pod_server_command.clone().unwrap_or_else(|| {
            let exe = std::env::current_exe()
                .map(PathBuf::into_os_string)
                .unwrap_or_else(|_| "serval".into());
            vec![exe, "pod-server".into()]
        });
        Runtime {
            node: config.node.clone(),
            pods_dir: node_dir.join("pods"),
            node_dir,
            netns_prefix: config.netns_prefix.clone().unwrap_or_else(|| "sv".into()),
            client,
            server_cmd,
            pods: BTreeMap::new(),
            children: BTreeMap::new(),
            backoff: BTreeMap::new(),
            cgroup: config.cgroup.clone(),
        }
    }

    /// The netns name of pod `ns/pod`.
    pub fn netns_name(&self, namespace: &str, pod: &str) -> String {
        format!("{}-{namespace}-{pod}", self.netns_prefix)
    }

    fn file(&self, namespace: &str, pod: &str, ext: &str) -> PathBuf {
        self.pods_dir.join(format!("{namespace}_{pod}.{ext}"))
    }

    fn attachment(&self, rec: &PodRecord) -> RuntimeConf {
        let netns = Path::new(serval_sys::NETNS_RUN_DIR).join(&rec.netns);
        RuntimeConf::for_pod(
            &rec.container_id,
            &netns.to_string_lossy(),
            POD_IFNAME,
            &rec.namespace,
            &rec.pod,
        )
    }

    /// The CNI executor: plugins from `cni/bin`, ADD results cached in `cni/cache`.
    fn cni(&self) -> serval_cni::Runtime {
        let cni = self.node_dir.join("cni");
        serval_cni::Runtime::new(vec![cni.join("bin")]).with_cache_dir(cni.join("cache"))
    }

    fn conflist(&self) -> Result<Conflist, serval_cni::RuntimeError> {
        Conflist::load_dir(&self.node_dir.join("cni").join("net.d"))
    }

    fn save(&self, rec: &PodRecord) -> Result<(), RuntimeError> {
        let path = self.file(&rec.namespace, &rec.pod, "json");
        let body = serde_json::to_vec_pretty(rec).unwrap_or_default();
        write_atomic(&path, &body).map_err(|source| RuntimeError::State {
            pod: rec.id(),
            path,
            source,
        })
    }

    /// Runs the runtime until the cache's sender goes away.
    pub async fn run(mut self, cache: Cache, resync: Duration) {
        let mut changes = cache.subscribe();
        // The first reconcile needs every resource (pods and workload endpoints).
        while !cache.read().resources_synced {
            if changes.changed().await.is_err() {
                return;
            }
        }
        self.adopt(&cache).await;
        loop {
            self.reconcile(&cache).await;
            tokio::select! {
                r = changes.changed() => {
                    if r.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ = tokio::time::sleep(resync.min(MAX_CHECK_INTERVAL)) => {}
            }
            changes.mark_unchanged();
        }
    }

    /// The workload endpoint of `ns/pod` in the cache, if any.
    fn cached_pod(cache: &Cache, namespace: &str, pod: &str) -> Option<Pod> {
        let st = cache.read();
        match st
            .resources
            .get(&ResourceKey::new(Kind::Pod, Some(namespace), pod))
        {
            Some(Resource::Pod(p)) => Some(p.clone()),
            _ => None,
        }
    }

    fn cached_wep(cache: &Cache, namespace: &str, pod: &str) -> Option<WorkloadEndpoint> {
        let st = cache.read();
        st.resources.values().find_map(|r| match r {
            Resource::WorkloadEndpoint(w)
                if w.metadata.namespace_str() == namespace && w.spec.pod == pod =>
            {
                Some(w.clone())
            }
            _ => None,
        })
    }

    /// Takes over the pods a previous agent left: complete ones are kept, partial ones are
    /// torn down (and recreated by the next reconcile if still wanted).
    async fn adopt(&mut self, cache: &Cache) {
        let entries = match std::fs::read_dir(&self.pods_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!(dir = %self.pods_dir.display(), error = %e, "cannot read the pods directory");
                return;
            }
        };
        let mut records = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            match std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<PodRecord>(&b).ok())
            {
                Some(rec) => records.push(rec),
                None => tracing::warn!(file = %path.display(), "ignoring an unreadable pod record"),
            }
        }
        for rec in records {
            let netns_ok = NetNs::exists(&rec.netns);
            let wep_ok = Self::cached_wep(cache, &rec.namespace, &rec.pod)
                .is_some_and(|w| w.spec.container_id == rec.container_id);
            let server_ok = rec
                .pid
                .is_some_and(|p| pid_alive(p) && is_pod_server(p, &rec.id()));
            if netns_ok && wep_ok && server_ok && !rec.cni_result.is_null() {
                tracing::info!(pod = %rec.id(), netns = %rec.netns, pid = ?rec.pid, "pod kept from the previous agent run");
                self.pods
                    .insert((rec.namespace.clone(), rec.pod.clone()), rec);
            } else {
                tracing::info!(
                    pod = %rec.id(),
                    netns_ok,
                    wep_ok,
                    server_ok,
                    "pod left partial by the previous agent run; cleaning up"
                );
                self.teardown(&rec).await;
            }
        }
    }

    async fn reconcile(&mut self, cache: &Cache) {
        self.reap();
        let wanted: BTreeMap<(String, String), PodWant> = {
            let st = cache.read();
            pods_on(&st.resources, &self.node)
                .iter()
                .map(PodWant::from_pod)
                .map(|w| ((w.namespace.clone(), w.name.clone()), w))
                .collect()
        };
        // Gone, moved or recreated: tear down.
        let stale: Vec<PodRecord> = self
            .pods
            .iter()
            .filter(|(k, rec)| wanted.get(*k).is_none_or(|w| w.uid != rec.uid))
            .map(|(_, rec)| rec.clone())
            .collect();
        for rec in stale {
            tracing::info!(pod = %rec.id(), "pod no longer on this node (deleted, moved or recreated); removing it");
            self.teardown(&rec).await;
            self.pods.remove(&(rec.namespace.clone(), rec.pod.clone()));
        }
        self.backoff.retain(|k, _| wanted.contains_key(k));
        for (key, want) in &wanted {
            match self.pods.get(key).cloned() {
                None => {
                    if self
                        .backoff
                        .get(key)
                        .is_some_and(|(_, at)| Instant::now() < *at)
                    {
                        continue;
                    }
                    match self.create(want).await {
                        Ok(rec) => {
                            self.backoff.remove(key);
                            self.pods.insert(key.clone(), rec);
                        }
                        Err(e) => {
                            let delay = self
                                .backoff
                                .get(key)
                                .map_or(Duration::from_secs(1), |(d, _)| {
                                    (*d * 2).min(Duration::from_secs(30))
                                });
                            tracing::warn!(pod = %want.id(), error = %e, retry_in = ?delay, "pod setup failed");
                            self.backoff
                                .insert(key.clone(), (delay, Instant::now() + delay));
                        }
                    }
                }
                Some(mut rec) => {
                    let alive = rec
                        .pid
                        .is_some_and(|p| pid_alive(p) && is_pod_server(p, &rec.id()));
                    if !alive || rec.tcp != want.tcp || rec.udp != want.udp {
                        if alive {
                            tracing::info!(pod = %rec.id(), tcp = ?want.tcp, udp = ?want.udp, "pod ports changed; restarting its server");
                        } else {
                            tracing::warn!(pod = %rec.id(), pid = ?rec.pid, "pod server is not running; restarting it");
                        }
                        self.stop_server(&rec);
                        rec.tcp = want.tcp.clone();
                        rec.udp = want.udp.clone();
                        match self.start_server(&mut rec).await {
                            Ok(()) => {}
                            Err(e) => {
                                tracing::warn!(pod = %rec.id(), error = %e, "cannot restart the pod server")
                            }
                        }
                        self.pods.insert(key.clone(), rec.clone());
                    }
                    // Readiness: the endpoint may have been rewritten (CNI re-ADD) or the
                    // first attempt may have raced the CNI's write.
                    if rec.pid.is_some()
                        && (Self::cached_wep(cache, &rec.namespace, &rec.pod)
                            .is_some_and(|w| !w.spec.ready)
                            || Self::cached_pod(cache, &rec.namespace, &rec.pod)
                                .is_some_and(|p| !p.is_ready()))
                        && let Err(e) = self.mark_ready(&rec).await
                    {
                        tracing::warn!(pod = %rec.id(), error = %e, "cannot mark the pod ready");
                    }
                }
            }
        }
    }

    /// Sets up one pod end to end.
    async fn create(&mut self, want: &PodWant) -> Result<PodRecord, RuntimeError> {
        let id = want.id();
        let netns = self.netns_name(&want.namespace, &want.name);
        if NetNs::exists(&netns) {
            // A leftover this runtime has no record of: start from a clean slate.
            tracing::info!(pod = %id, netns = %netns, "removing a leftover network namespace of this pod");
            let _ = NetNs::delete(&netns);
        }
        let mut rec = PodRecord {
            namespace: want.namespace.clone(),
            pod: want.name.clone(),
            uid: want.uid.clone(),
            container_id: container_id(&want.namespace, &want.name, &want.uid),
            netns: netns.clone(),
            pid: None,
            tcp: want.tcp.clone(),
            udp: want.udp.clone(),
            cni_result: Value::Null,
        };
        self.save(&rec)?;
        let result = self.create_steps(&mut rec).await;
        if result.is_err() {
            self.teardown(&rec).await;
        }
        result.map(|()| rec)
    }

    async fn create_steps(&mut self, rec: &mut PodRecord) -> Result<(), RuntimeError> {
        let id = rec.id();
        NetNs::create(&rec.netns).map_err(|source| RuntimeError::Netns {
            pod: id.clone(),
            netns: rec.netns.clone(),
            source,
        })?;
        let list = self.conflist().map_err(|source| RuntimeError::Cni {
            pod: id.clone(),
            command: "ADD",
            source: Box::new(source),
        })?;
        let att = self.attachment(rec);
        let result = self
            .cni()
            .add(&list, &att)
            .await
            .map_err(|source| RuntimeError::Cni {
                pod: id.clone(),
                command: "ADD",
                source: Box::new(source),
            })?;
        let ips: Vec<String> = result
            .get("ips")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|i| i.get("address").and_then(Value::as_str).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        rec.cni_result = result;
        self.save(rec)?;
        tracing::info!(pod = %id, netns = %rec.netns, container_id = %rec.container_id, ips = ?ips, "pod network added (CNI ADD)");
        self.start_server(rec).await?;
        self.mark_ready(rec).await
    }

    /// Starts the pod server inside the pod's netns and waits until it has bound its ports.
    async fn start_server(&mut self, rec: &mut PodRecord) -> Result<(), RuntimeError> {
        let id = rec.id();
        let ready = self.file(&rec.namespace, &rec.pod, "ready");
        let log_path = self.file(&rec.namespace, &rec.pod, "log");
        let _ = std::fs::remove_file(&ready);
        let state_err = |path: &Path| {
            let (pod, path) = (id.clone(), path.to_path_buf());
            move |source| RuntimeError::State { pod, path, source }
        };
        std::fs::create_dir_all(&self.pods_dir).map_err(state_err(&self.pods_dir))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(state_err(&log_path))?;
        let log2 = log.try_clone().map_err(state_err(&log_path))?;
        let ns = NetNs::open(&rec.netns).map_err(|source| RuntimeError::Netns {
            pod: id.clone(),
            netns: rec.netns.clone(),
            source,
        })?;
        let program = self.server_cmd[0].clone();
        let mut cmd = Command::new(&program);
        cmd.args(&self.server_cmd[1..]).arg("--name").arg(&id);
        let join = |ports: &[u16]| {
            ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        if !rec.tcp.is_empty() {
            cmd.arg("--tcp").arg(join(&rec.tcp));
        }
        if !rec.udp.is_empty() {
            cmd.arg("--udp").arg(join(&rec.udp));
        }
        cmd.arg("--ready-file").arg(&ready);
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        let fd = ns.as_raw_fd();
        // The node's cgroup: the child moves itself there before exec (writing "0"). Without
        // it the pod still starts (outside the node's connect-time load balancing).
        let procs = self.cgroup.as_ref().and_then(|cg| {
            let path = cg.join("cgroup.procs");
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .inspect_err(|e| {
                    tracing::warn!(pod = %id, cgroup = %cg.display(), error = %e, "cannot start the pod server in the node's cgroup; starting it outside")
                })
                .ok()
        });
        let procs_fd = procs.as_ref().map(|f| f.as_raw_fd());
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: the closure runs in the forked child before exec and calls only setns(2),
            // write(2) and setsid(2), all async-signal-safe; `fd` and `procs_fd` stay open
            // (owned by `ns` and `procs`) until `spawn` returns, and the child's copies are
            // closed at exec (O_CLOEXEC).
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // Into the node's cgroup ("0": the writing process).
                    if let Some(pfd) = procs_fd
                        && libc::write(pfd, b"0".as_ptr().cast(), 1) != 1
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    // Its own session: signals to the agent's process group (Ctrl-C) do not
                    // take pods down, and pods outlive an agent restart.
                    libc::setsid();
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().map_err(|source| RuntimeError::Spawn {
            pod: id.clone(),
            program: program.to_string_lossy().into_owned(),
            source,
        })?;
        drop(ns);
        drop(procs);
        let pid = child.id();
        self.children.insert(pid, child);
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        loop {
            if ready.exists() {
                break;
            }
            let exited = self
                .children
                .get_mut(&pid)
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                self.children.remove(&pid);
                return Err(RuntimeError::ServerNotReady {
                    pod: id,
                    timeout: SERVER_START_TIMEOUT,
                    exited: exited
                        .map(|s| format!(" (it exited: {s})"))
                        .unwrap_or_default(),
                    log: log_path,
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        rec.pid = Some(pid);
        self.save(rec)?;
        let pid_path = self.file(&rec.namespace, &rec.pod, "pid");
        write_atomic(&pid_path, format!("{pid}\n").as_bytes()).map_err(state_err(&pid_path))?;
        tracing::info!(pod = %id, pid, tcp = ?rec.tcp, udp = ?rec.udp, netns = %rec.netns, "pod server started");
        Ok(())
    }

    /// Sets `spec.ready` on the pod's workload endpoint (compare-and-swap, retried on races).
    async fn mark_ready(&self, rec: &PodRecord) -> Result<(), RuntimeError> {
        let id = rec.id();
        for _ in 0..5 {
            let (items, _) = self
                .client
                .list(Kind::WorkloadEndpoint, Some(&rec.namespace))
                .await
                .map_err(|source| RuntimeError::Ready {
                    pod: id.clone(),
                    source: Box::new(source),
                })?;
            let Some(Resource::WorkloadEndpoint(mut wep)) = items
                .into_iter()
                .find(|r| matches!(r, Resource::WorkloadEndpoint(w) if w.spec.pod == rec.pod))
            else {
                tracing::warn!(pod = %id, "no workload endpoint for this pod yet (the CNI plugin writes it); readiness waits");
                return Ok(());
            };
            if wep.spec.ready {
                return self.mark_running(rec, &wep.addrs()).await;
            }
            let addrs = wep.addrs();
            let rev = wep
                .metadata
                .resource_version
                .as_deref()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            wep.spec.ready = true;
            let name = wep.metadata.name.clone();
            match self
                .client
                .put(Resource::WorkloadEndpoint(wep), Some(rev))
                .await
            {
                Ok(_) => {
                    tracing::info!(pod = %id, endpoint = %name, "pod ready (workload endpoint marked ready)");
                    return self.mark_running(rec, &addrs).await;
                }
                Err(ApiError::Store(StoreError::Conflict { .. } | StoreError::NotFound { .. })) => {
                    tracing::debug!(pod = %id, "workload endpoint changed under us; retrying");
                }
                Err(source) => {
                    return Err(RuntimeError::Ready {
                        pod: id,
                        source: Box::new(source),
                    });
                }
            }
        }
        Ok(())
    }

    /// Records what a kubelet would in the Pod's status once it serves: phase Running, its
    /// addresses and the Ready condition (compare-and-swap, retried on races). Service
    /// backends are the ready pods (serval-calc reads the Pod's status when there is one).
    async fn mark_running(
        &self,
        rec: &PodRecord,
        addrs: &[std::net::IpAddr],
    ) -> Result<(), RuntimeError> {
        let id = rec.id();
        let key = ResourceKey::new(Kind::Pod, Some(&rec.namespace), &rec.pod);
        let err = |source| RuntimeError::Ready {
            pod: id.clone(),
            source: Box::new(source),
        };
        for _ in 0..5 {
            let Some(Resource::Pod(mut pod)) = self.client.get(&key).await.map_err(err)? else {
                return Ok(());
            };
            if pod.is_ready() && pod.ips() == addrs {
                return Ok(());
            }
            let status = running_status(pod.status.take(), addrs);
            let rev = pod
                .metadata
                .resource_version
                .as_deref()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            pod.status = Some(status);
            match self.client.put(Resource::Pod(pod), Some(rev)).await {
                Ok(_) => {
                    tracing::info!(pod = %id, ips = ?addrs, "pod status: Running, Ready");
                    return Ok(());
                }
                Err(ApiError::Store(StoreError::Conflict { .. })) => {
                    tracing::debug!(pod = %id, "pod changed under us; retrying its status");
                }
                Err(ApiError::Store(StoreError::NotFound { .. })) => return Ok(()),
                Err(source) => return Err(err(source)),
            }
        }
        Ok(())
    }

    /// Stops a pod server (our child, or one adopted from a previous run).
    fn stop_server(&mut self, rec: &PodRecord) {
        let Some(pid) = rec.pid else { return };
        if let Some(mut child) = self.children.remove(&pid) {
            let _ = child.kill();
            let _ = child.wait();
            tracing::info!(pod = %rec.id(), pid, "pod server stopped");
            return;
        }
        if !(pid_alive(pid) && is_pod_server(pid, &rec.id())) {
            return;
        }
        let Ok(raw) = i32::try_from(pid) else { return };
        let target = nix::unistd::Pid::from_raw(raw);
        let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + SERVER_STOP_TIMEOUT;
        while pid_alive(pid) && is_pod_server(pid, &rec.id()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if pid_alive(pid) && is_pod_server(pid, &rec.id()) {
            let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL);
        }
        tracing::info!(pod = %rec.id(), pid, "pod server stopped");
    }

    /// Removes everything of one pod; best effort, each step logged.
    async fn teardown(&mut self, rec: &PodRecord) {
        let id = rec.id();
        self.stop_server(rec);
        if NetNs::exists(&rec.netns) || !rec.cni_result.is_null() {
            let att = self.attachment(rec);
            let prev = (!rec.cni_result.is_null()).then_some(&rec.cni_result);
            match self.conflist() {
                Ok(list) => match self.cni().del(&list, &att, prev).await {
                    Ok(()) => {
                        tracing::info!(pod = %id, container_id = %rec.container_id, "pod network removed (CNI DEL)")
                    }
                    Err(e) => {
                        tracing::warn!(pod = %id, error = %e, "CNI DEL failed; removing the namespace anyway")
                    }
                },
                Err(e) => tracing::warn!(pod = %id, error = %e, "no CNI config to run DEL with"),
            }
        }
        match NetNs::delete(&rec.netns) {
            Ok(()) => {
                tracing::info!(pod = %id, netns = %rec.netns, "pod network namespace deleted")
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                tracing::warn!(pod = %id, netns = %rec.netns, error = %e, "cannot delete the pod's network namespace")
            }
        }
        for ext in ["json", "pid", "ready"] {
            let _ = std::fs::remove_file(self.file(&rec.namespace, &rec.pod, ext));
        }
    }

    /// Collects exited pod servers this process started.
    fn reap(&mut self) {
        self.children.retain(|pid, child| match child.try_wait() {
            Ok(Some(status)) => {
                tracing::warn!(pid, %status, "a pod server exited");
                false
            }
            _ => true,
        });
    }
}

/// `previous` with phase Running, the pod's addresses and `Ready: True` (other conditions
/// kept).
fn running_status(previous: Option<PodStatus>, addrs: &[std::net::IpAddr]) -> PodStatus {
    let mut st = previous.unwrap_or_default();
    st.phase = Some(PodPhase::Running);
    st.pod_ip = addrs.first().copied();
    st.pod_ips = addrs.iter().map(|&ip| PodIp { ip }).collect();
    st.conditions.retain(|c| c.type_ != "Ready");
    st.conditions.push(PodCondition {
        type_: "Ready".into(),
        status: "True".into(),
    });
    st
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_status_sets_phase_addresses_and_ready_keeping_other_conditions() {
        let prev = PodStatus {
            conditions: vec![
                PodCondition {
                    type_: "PodScheduled".into(),
                    status: "True".into(),
                },
                PodCondition {
                    type_: "Ready".into(),
                    status: "False".into(),
                },
            ],
            ..Default::default()
        };
        let addrs: Vec<std::net::IpAddr> =
            vec!["10.244.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        let st = running_status(Some(prev), &addrs);
        assert_eq!(st.phase, Some(PodPhase::Running));
        assert_eq!(st.pod_ip, Some(addrs[0]));
        assert_eq!(st.pod_ips.len(), 2);
        let ready: Vec<_> = st
            .conditions
            .iter()
            .filter(|c| c.type_ == "Ready")
            .collect();
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].status, "True");
        assert!(st.conditions.iter().any(|c| c.type_ == "PodScheduled"));
        let pod = Pod {
            status: Some(st),
            ..Default::default()
        };
        assert!(pod.is_ready());
        assert_eq!(pod.ips(), addrs);
    }

    #[test]
    fn container_ids_are_stable_and_change_with_the_uid() {
        let a = container_id("default", "web", "uid-1");
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(a, container_id("default", "web", "uid-1"));
        assert_ne!(a, container_id("default", "web", "uid-2"));
    }

    #[test]
    fn pod_ports_split_by_protocol_sorted_and_deduplicated() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1"},
            "spec": {"nodeName": "node1", "containers": [
                {"name": "a", "ports": [{"containerPort": 8080}, {"containerPort": 53, "protocol": "UDP"}]},
                {"name": "b", "ports": [{"containerPort": 80}, {"containerPort": 8080}, {"containerPort": 9, "protocol": "SCTP"}]}
            ]}
        }))
        .unwrap();
        let w = PodWant::from_pod(&pod);
        assert_eq!(w.id(), "shop/web");
        assert_eq!(w.tcp, vec![80, 8080]);
        assert_eq!(w.udp, vec![53]);
        assert_eq!(w.uid, "u1");
    }
}
