//! One BIRD per node: `bird -f -c CONF -s SOCKET -P PIDFILE`, run inside the node's network
//! namespace, reloaded with `birdc configure` when its configuration changes and restarted
//! when it died.
//!
//! Every call blocks (it runs `bird -p`/`birdc` and waits for the control socket, a few
//! seconds at most); from async code use `tokio::task::spawn_blocking` or a dedicated thread.
//!
//! A configuration is only ever put in force after `bird -p` accepted it: a rejected one is
//! reported ([`BirdError::Rejected`]) and the previous one stays. Files, per node, under one
//! directory ([`BirdPaths::in_dir`]): `bird.conf`, `bird.ctl` (control socket), `bird.pid`,
//! `bird.log` (BIRD's stderr).
//!
//! [`Bird::start`] adopts a BIRD left running by an earlier agent (pid file + command line
//! naming the same socket), so an agent restart does not flap the sessions. Dropping a `Bird`
//! stops the BIRD it manages unless [`Bird::detach`] was called.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serval_sys::NetNs;

use crate::process::{Daemon, SpawnError, log_tail};
use crate::status::{self, Session, StatusError};

/// Where Debian's `bird2` installs the daemon.
pub const BIRD_BIN: &str = "/usr/sbin/bird";
/// Where Debian's `bird2` installs the client.
pub const BIRDC_BIN: &str = "/usr/sbin/birdc";

/// How long to wait for BIRD's control socket after starting it.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// BIRD supervisor errors.
#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "BIRD rejects the configuration in {path} (a running BIRD keeps its previous one): \
         {message}"
    )]
    Rejected { path: PathBuf, message: String },
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("BIRD (pid {pid}) exited during start-up; its log {log} ends with: {tail}")]
    Exited {
        pid: u32,
        log: PathBuf,
        tail: String,
    },
    #[error("BIRD's control socket {socket} did not answer within {secs} s; see {log}")]
    NoSocket {
        socket: PathBuf,
        secs: u64,
        log: PathBuf,
    },
    #[error("birdc -s {socket} {command}: {message}")]
    Birdc {
        socket: PathBuf,
        command: String,
        message: String,
    },
    #[error("BIRD is not running; call start() first")]
    NotRunning,
    #[error(transparent)]
    Status(#[from] StatusError),
}

/// A node's BIRD files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BirdPaths {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub pid: PathBuf,
    pub log: PathBuf,
}

impl BirdPaths {
    /// `dir/bird.conf`, `dir/bird.ctl`, `dir/bird.pid`, `dir/bird.log`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> BirdPaths {
        let dir = dir.into();
        BirdPaths {
            config: dir.join("bird.conf"),
            socket: dir.join("bird.ctl"),
            pid: dir.join("bird.pid"),
            log: dir.join("bird.log"),
            dir,
        }
    }
}

/// What [`Bird::reload`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// Same text as in force: nothing done.
    Unchanged,
    /// New text written and `birdc configure` accepted it.
    Reconfigured,
    /// BIRD was not running: it was started with the new text.
    Started,
}

/// Supervises one BIRD.
#[derive(Debug)]
pub struct Bird {
    paths: BirdPaths,
    netns: Option<NetNs>,
    bird_bin: PathBuf,
    birdc_bin: PathBuf,
    daemon: Option<Daemon>,
    /// The configuration text in force (last accepted).
    current: Option<String>,
    restarts: u32,
    detached: bool,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BirdError {
    let path = path.to_owned();
    move |source| BirdError::Io { op, path, source }
}

/// Runs `bird -p -c FILE`: Ok when BIRD accepts the file, the parser's message otherwise.
pub fn check_config(bird_bin: &Path, file: &Path) -> Result<(), BirdError> {
    let out = Command::new(bird_bin)
        .arg("-p")
        .arg("-c")
        .arg(file)
        .output()
        .map_err(io_err("running bird -p on", file))?;
    if out.status.success() {
        Ok(())
    } else {
        let mut message = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if message.is_empty() {
            message = format!("bird -p exited with {}", out.status);
        }
        Err(BirdError::Rejected {
            path: file.to_owned(),
            message,
        })
    }
}

/// Runs `birdc -s SOCKET ARGS...` and returns its output.
pub fn birdc(birdc_bin: &Path, socket: &Path, args: &[&str]) -> Result<String, BirdError> {
    let out = Command::new(birdc_bin)
        .arg("-s")
        .arg(socket)
        .args(args)
        .output()
        .map_err(io_err("running birdc for", socket))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() || text.contains("Unable to connect to server") {
        let mut message = format!(
            "{}{}",
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        if message.is_empty() {
            message = format!("exited with {}", out.status);
        }
        return Err(BirdError::Birdc {
            socket: socket.to_owned(),
            command: args.join(" "),
            message,
        });
    }
    Ok(text)
}

impl Bird {
    /// A supervisor for a BIRD in `netns` (None: the caller's namespace) with its files in
    /// `paths`. Starts nothing.
    pub fn new(paths: BirdPaths, netns: Option<NetNs>) -> Bird {
        Bird {
            paths,
            netns,
            bird_bin: BIRD_BIN.into(),
            birdc_bin: BIRDC_BIN.into(),
            daemon: None,
            current: None,
            restarts: 0,
            detached: false,
        }
    }

    /// Other `bird`/`birdc` binaries.
    pub fn with_binaries(mut self, bird: impl Into<PathBuf>, birdc: impl Into<PathBuf>) -> Bird {
        self.bird_bin = bird.into();
        self.birdc_bin = birdc.into();
        self
    }

    pub fn paths(&self) -> &BirdPaths {
        &self.paths
    }

    /// The running BIRD's pid.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Daemon::pid)
    }

    /// How many times [`Bird::supervise`] restarted BIRD.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// The configuration text in force.
    pub fn current_config(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// Leaves BIRD running when this supervisor is dropped (e.g. an agent shutting down for a
    /// restart: routes and sessions stay).
    pub fn detach(mut self) {
        self.detached = true;
    }

    /// Checks `config` with `bird -p`, writes it, and starts BIRD, or adopts a BIRD already
    /// running with this socket and reconfigures it. Waits until the control socket answers.
    pub fn start(&mut self, config: &str) -> Result<(), BirdError> {
        fs::create_dir_all(&self.paths.dir).map_err(io_err("creating", &self.paths.dir))?;
        self.write_checked(config)?;
        if self.daemon.is_none()
            && let Some(d) =
                Daemon::adopt(&self.paths.pid, &self.paths.socket.display().to_string())
        {
            tracing::info!(pid = d.pid(), socket = %self.paths.socket.display(), "adopting running BIRD");
            self.daemon = Some(d);
            self.configure()?;
            self.current = Some(config.to_owned());
            return Ok(());
        }
        self.spawn()?;
        self.current = Some(config.to_owned());
        Ok(())
    }

    /// Puts `config` in force: nothing when unchanged, `birdc configure` when running, a start
    /// otherwise. A configuration BIRD rejects leaves the previous one in force.
    pub fn reload(&mut self, config: &str) -> Result<ReloadOutcome, BirdError> {
        let running = self.daemon.as_mut().is_some_and(Daemon::alive);
        if running && self.current.as_deref() == Some(config) {
            return Ok(ReloadOutcome::Unchanged);
        }
        if !running {
            self.daemon = None;
            self.start(config)?;
            return Ok(ReloadOutcome::Started);
        }
        self.write_checked(config)?;
        self.configure()?;
        self.current = Some(config.to_owned());
        tracing::info!(config = %self.paths.config.display(), "BIRD reconfigured");
        Ok(ReloadOutcome::Reconfigured)
    }

    /// Restarts BIRD (with the configuration in force) if it died. Returns whether it did.
    /// The agent calls this periodically.
    pub fn supervise(&mut self) -> Result<bool, BirdError> {
        let Some(d) = &mut self.daemon else {
            return Ok(false);
        };
        if d.alive() {
            return Ok(false);
        }
        let pid = d.pid();
        self.daemon = None;
        let Some(config) = self.current.clone() else {
            return Err(BirdError::NotRunning);
        };
        tracing::warn!(pid, log = %self.paths.log.display(), "BIRD died; restarting it");
        self.restarts += 1;
        // The file on disk is the accepted text already; start it again as is.
        self.spawn()?;
        self.current = Some(config);
        Ok(true)
    }

    /// Whether BIRD runs.
    pub fn is_running(&mut self) -> bool {
        self.daemon.as_mut().is_some_and(Daemon::alive)
    }

    /// Stops BIRD (SIGTERM, then SIGKILL after 5 s). BIRD withdraws its kernel routes on a
    /// clean shutdown.
    pub fn stop(&mut self) -> Result<(), BirdError> {
        if let Some(mut d) = self.daemon.take() {
            d.stop(Duration::from_secs(5));
        }
        let _ = fs::remove_file(&self.paths.pid);
        let _ = fs::remove_file(&self.paths.socket);
        Ok(())
    }

    /// Stops a BIRD started earlier with these paths, found by its pid file (e.g. `lab down`,
    /// after the agent that started it is gone). Returns whether one was running.
    pub fn stop_in(paths: &BirdPaths) -> bool {
        let found = Daemon::adopt(&paths.pid, &paths.socket.display().to_string());
        let running = found.is_some();
        if let Some(mut d) = found {
            d.stop(Duration::from_secs(5));
        }
        let _ = fs::remove_file(&paths.pid);
        let _ = fs::remove_file(&paths.socket);
        running
    }

    /// Sends a signal to BIRD (tests: SIGKILL to simulate a crash).
    pub fn signal(&self, sig: Signal) {
        if let Some(d) = &self.daemon {
            d.signal(sig);
        }
    }

    /// `birdc -s SOCKET args...`.
    pub fn birdc(&self, args: &[&str]) -> Result<String, BirdError> {
        birdc(&self.birdc_bin, &self.paths.socket, args)
    }

    /// The BGP sessions (`show protocols all`).
    pub fn sessions(&self) -> Result<Vec<Session>, BirdError> {
        let text = self.birdc(&["show", "protocols", "all"])?;
        Ok(status::parse_protocols(&text)?)
    }

    fn write_checked(&self, config: &str) -> Result<(), BirdError> {
        let tmp = self.paths.config.with_extension("conf.new");
        fs::write(&tmp, config).map_err(io_err("writing", &tmp))?;
        if let Err(e) = check_config(&self.bird_bin, &tmp) {
            let rejected = self.paths.config.with_extension("conf.rejected");
            let _ = fs::rename(&tmp, &rejected);
            tracing::error!(error = %e, "BIRD configuration rejected");
            return Err(match e {
                BirdError::Rejected { message, .. } => BirdError::Rejected {
                    path: rejected,
                    message,
                },
                other => other,
            });
        }
        fs::rename(&tmp, &self.paths.config).map_err(io_err("renaming into", &self.paths.config))
    }

    fn configure(&self) -> Result<(), BirdError> {
        let out = self.birdc(&["configure"])?;
        if out.contains("Reconfigured")
            || out.contains("Reconfiguration in progress")
            || out.contains("queueing")
        {
            Ok(())
        } else {
            Err(BirdError::Birdc {
                socket: self.paths.socket.clone(),
                command: "configure".into(),
                message: out.trim().to_owned(),
            })
        }
    }

    fn spawn(&mut self) -> Result<(), BirdError> {
        let _ = fs::remove_file(&self.paths.socket);
        let mut cmd = Command::new(&self.bird_bin);
        cmd.arg("-f")
            .arg("-c")
            .arg(&self.paths.config)
            .arg("-s")
            .arg(&self.paths.socket)
            .arg("-P")
            .arg(&self.paths.pid);
        let mut d = Daemon::spawn(self.netns.as_ref(), cmd, &self.paths.log)?;
        let pid = d.pid();
        tracing::info!(pid, socket = %self.paths.socket.display(), "BIRD started");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if !d.alive() {
                return Err(BirdError::Exited {
                    pid,
                    log: self.paths.log.clone(),
                    tail: log_tail(&self.paths.log, 2000),
                });
            }
            if self.paths.socket.exists() && self.birdc(&["show", "status"]).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                d.stop(Duration::from_secs(1));
                return Err(BirdError::NoSocket {
                    socket: self.paths.socket.clone(),
                    secs: START_TIMEOUT.as_secs(),
                    log: self.paths.log.clone(),
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.daemon = Some(d);
        Ok(())
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        if !self.detached {
            let _ = self.stop();
        }
    }
}
