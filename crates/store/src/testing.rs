//! Test helpers (feature `testing`): throwaway datastores that clean up after themselves, for
//! this crate's tests and other crates' tests alike.
//!
//! - [`SqliteFile`]: a sqlite store file in its own temporary directory.
//! - [`EtcdServer`]: a real `etcd` process (Debian `etcd-server`, `/usr/bin/etcd`, or the binary
//!   named by `SERVAL_ETCD_BIN`) on free loopback ports with a temporary data directory.
//!
//! Every name carries a unique prefix (`serval-test-<pid>-<n>`) so tests run in parallel, and
//! everything is removed on drop, also when the test panics.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::{Datastore, StoreError};

/// How long [`EtcdServer::start`] and [`EtcdServer::restart`] wait for etcd to report healthy.
const HEALTHY_WITHIN: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum TestingError {
    #[error("cannot create a temporary directory for {what}: {source}")]
    TempDir {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find free loopback ports for etcd: {source}")]
    Ports {
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot start {binary} (install the Debian package etcd-server, or set SERVAL_ETCD_BIN): {source}"
    )]
    Spawn {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd {name} exited early ({status}); log tail:\n{log}")]
    Exited {
        name: String,
        status: std::process::ExitStatus,
        log: String,
    },
    #[error("etcd {name} on 127.0.0.1:{port} was not healthy within {waited:?}; log tail:\n{log}")]
    Unhealthy {
        name: String,
        port: u16,
        waited: Duration,
        log: String,
    },
    #[error("cannot stop etcd {name}: {source}")]
    Stop {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A unique name for a test resource: `serval-test-<pid>-<n>-<what>`.
pub fn unique_name(what: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "serval-test-{}-{}-{what}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A sqlite store file in a fresh temporary directory, removed on drop.
#[derive(Debug)]
pub struct SqliteFile {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl SqliteFile {
    pub fn new() -> Result<Self, TestingError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", unique_name("sqlite")))
            .tempdir()
            .map_err(|source| TestingError::TempDir {
                what: "a sqlite store",
                source,
            })?;
        let path = dir.path().join("store.db");
        Ok(SqliteFile { dir, path })
    }

    /// Like [`SqliteFile::new`], with the file already written in the first sqlite layout (rowid
    /// tables and 4 KiB pages), as a version before the `WITHOUT ROWID` layout created it:
    /// stores opened on it keep that layout.
    pub fn with_rowid_layout() -> Result<Self, TestingError> {
        let file = Self::new()?;
        crate::sqlite::create_rowid_layout(&file.path).map_err(|source| StoreError::Sqlite {
            path: file.path.display().to_string(),
            source,
        })?;
        Ok(file)
    }

    /// The database file (it does not exist until the store is opened).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory holding the file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `sqlite:///…/store.db`
    pub fn url(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }

    /// Open a new store on the file (each call is a separate store, as another process would be).
    pub async fn open(&self) -> Result<Arc<dyn Datastore>, TestingError> {
        Ok(crate::open(&self.url()).await?)
    }

    /// Like [`SqliteFile::open`], but the store's watches poll the file every
    /// [`crate::sqlite::POLL_INTERVAL`] instead of being woken (the fallback without inotify).
    pub async fn open_polling(&self) -> Result<Arc<dyn Datastore>, TestingError> {
        let options = crate::sqlite::SqliteOptions {
            wakeups: false,
            ..Default::default()
        };
        Ok(Arc::new(
            crate::SqliteStore::open_with(&self.path, options).await?,
        ))
    }

    /// Like [`SqliteFile::open`], but the store's watches re-check the file only once an hour
    /// unless woken: other connections' and processes' writes reach them through the
    /// cross-process wake-up alone (a test that sees them does not depend on a timer).
    pub async fn open_woken_only(&self) -> Result<Arc<dyn Datastore>, TestingError> {
        let options = crate::sqlite::SqliteOptions {
            safety_poll: Duration::from_secs(3600),
            wakeups: true,
        };
        Ok(Arc::new(
            crate::SqliteStore::open_with(&self.path, options).await?,
        ))
    }
}

/// A real etcd server on free loopback ports with a temporary data directory. Killed, and its
/// directory removed, on drop.
#[derive(Debug)]
pub struct EtcdServer {
    name: String,
    binary: String,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl EtcdServer {
    /// Start a single-member cluster and wait until it is healthy.
    pub async fn start() -> Result<Self, TestingError> {
        let binary = std::env::var("SERVAL_ETCD_BIN").unwrap_or_else(|_| "etcd".to_string());
        let mut last_err = None;
        // A port picked as free can be taken by someone else before etcd binds it; try again
        // with new ports.
        for _ in 0..3 {
            let name = unique_name("etcd");
            let dir = tempfile::Builder::new()
                .prefix(&format!("{name}-"))
                .tempdir()
                .map_err(|source| TestingError::TempDir {
                    what: "etcd",
                    source,
                })?;
            let (client_port, peer_port) = free_ports()?;
            let mut server = EtcdServer {
                name,
                binary: binary.clone(),
                dir,
                client_port,
                peer_port,
                child: None,
            };
            match server.launch().await {
                Ok(()) => return Ok(server),
                Err(e @ TestingError::Spawn { .. }) => return Err(e),
                Err(e) => {
                    tracing::warn!(name = server.name, error = %e, "etcd did not start; retrying on new ports");
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| TestingError::Ports {
            source: std::io::Error::other("no attempt made"),
        }))
    }

    /// `etcd://127.0.0.1:PORT`, for [`crate::open`].
    pub fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.client_port)
    }

    /// `http://127.0.0.1:PORT`, the client endpoint as etcd itself names it.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The member name (also the unique prefix of its directory).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Open a store on this server.
    pub async fn open(&self) -> Result<Arc<dyn Datastore>, TestingError> {
        Ok(crate::open(&self.url()).await?)
    }

    /// Kill the server (SIGKILL: committed data is on disk, as after a crash). The data
    /// directory and ports are kept for [`EtcdServer::restart`].
    pub async fn stop(&mut self) -> Result<(), TestingError> {
        if let Some(mut child) = self.child.take() {
            let name = self.name.clone();
            tokio::task::spawn_blocking(move || {
                child.kill()?;
                child.wait().map(drop)
            })
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
            .map_err(|source| TestingError::Stop { name, source })?;
        }
        Ok(())
    }

    /// Stop (if running) and start again on the same data directory and ports.
    pub async fn restart(&mut self) -> Result<(), TestingError> {
        self.stop().await?;
        self.launch().await
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let start = log.len().saturating_sub(3000);
        let start = (start..log.len())
            .find(|i| log.is_char_boundary(*i))
            .unwrap_or(log.len());
        log[start..].to_string()
    }

    async fn launch(&mut self) -> Result<(), TestingError> {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|source| TestingError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        let child = Command::new(&self.binary)
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .arg("--initial-cluster")
            .arg(format!("{}={peer}", self.name))
            .args(["--initial-cluster-token", &self.name])
            .args(["--initial-cluster-state", "new"])
            .args(crate::etcd::SERVER_FLAGS)
            .args([
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|source| TestingError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(TestingError::Exited {
                    name: self.name.clone(),
                    status,
                    log: self.log_tail(),
                });
            }
            let port = self.client_port;
            let healthy = tokio::task::spawn_blocking(move || healthy(port))
                .await
                .unwrap_or(false);
            if healthy {
                tracing::debug!(name = self.name, port, "etcd is healthy");
                return Ok(());
            }
            if start.elapsed() > HEALTHY_WITHIN {
                let log = self.log_tail();
                self.kill_now();
                return Err(TestingError::Unhealthy {
                    name: self.name.clone(),
                    port,
                    waited: HEALTHY_WITHIN,
                    log,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill_now(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill_now();
        // `dir` (data and log) is removed when the TempDir field drops, after this.
    }
}

/// Two distinct free loopback ports (client, peer).
fn free_ports() -> Result<(u16, u16), TestingError> {
    let bind = || {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| Ok((l.local_addr()?.port(), l)))
            .map_err(|source| TestingError::Ports { source })
    };
    // Both listeners are held at once so the two ports differ.
    let (a, _la) = bind()?;
    let (b, _lb) = bind()?;
    Ok((a, b))
}

/// `GET /health` on the client port answers `{"health":"true"}` once etcd serves requests.
fn healthy(port: u16) -> bool {
    let probe = || -> std::io::Result<bool> {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body.contains("\"health\":\"true\""))
    };
    probe().unwrap_or(false)
}
