//! Daemons in a network namespace: spawn (stdout/stderr appended to a log file), liveness,
//! adoption of a daemon left running by an earlier agent, and stopping.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serval_sys::NetNs;

/// Why a daemon could not be spawned.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("opening log file {path}: {source}")]
    Log {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("entering the network namespace to start {program}: {source}")]
    Netns {
        program: String,
        #[source]
        source: Box<serval_sys::Error>,
    },
    #[error("starting {program}: {source} (is it installed?)")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
}

/// A running daemon: our child, or one adopted from its pid file.
#[derive(Debug)]
pub(crate) struct Daemon {
    child: Option<Child>,
    pid: u32,
}

impl Daemon {
    /// Spawns `cmd` inside `netns` (or the caller's namespace) in its own process group, with
    /// stdin closed and stdout/stderr appended to `log`.
    pub(crate) fn spawn(
        netns: Option<&NetNs>,
        mut cmd: Command,
        log: &Path,
    ) -> Result<Daemon, SpawnError> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| SpawnError::Log {
                path: log.display().to_string(),
                source,
            })?;
        let err = out.try_clone().map_err(|source| SpawnError::Log {
            path: log.display().to_string(),
            source,
        })?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        // A child forked from a thread inside the namespace starts in it.
        let child = match netns {
            Some(ns) => ns.run(move || cmd.spawn()).map_err(|e| SpawnError::Netns {
                program: program.clone(),
                source: Box::new(e),
            })?,
            None => cmd.spawn(),
        }
        .map_err(|source| SpawnError::Spawn {
            program: program.clone(),
            source,
        })?;
        let pid = child.id();
        Ok(Daemon {
            child: Some(child),
            pid,
        })
    }

    /// A daemon from a pid file, if that process is alive and its command line contains
    /// `marker` (so a recycled pid is not mistaken for it).
    pub(crate) fn adopt(pid_file: &Path, marker: &str) -> Option<Daemon> {
        let pid: u32 = fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let d = Daemon { child: None, pid };
        (cmdline.contains(marker) && d.alive_pid()).then_some(d)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    fn alive_pid(&self) -> bool {
        // A zombie still answers kill(0); look at its state too.
        match fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X"),
            Err(_) => false,
        }
    }

    /// Whether it still runs (reaps our child when it exited).
    pub(crate) fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => self.alive_pid(),
        }
    }

    /// Sends a signal (errors ignored: it may have exited).
    pub(crate) fn signal(&self, sig: Signal) {
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }

    /// SIGTERM, up to `grace` for it to exit, then SIGKILL; reaps our child.
    pub(crate) fn stop(&mut self, grace: Duration) {
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while self.alive() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        if self.alive() {
            self.signal(Signal::SIGKILL);
            if let Some(child) = &mut self.child {
                let _ = child.wait();
            } else {
                let deadline = Instant::now() + Duration::from_secs(2);
                while self.alive_pid() && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

/// The last `max` bytes of a log file, for error messages.
pub(crate) fn log_tail(path: &Path, max: usize) -> String {
    let text = fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(max);
    String::from_utf8_lossy(&text[start..]).trim().to_owned()
}
