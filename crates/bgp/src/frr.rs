//! The lab's "home router": FRR (zebra + bgpd, Debian `frr`) or BIRD in a network namespace,
//! peered with the nodes, installing what they announce into its kernel table (FRR: proto
//! `bgp` 186; BIRD: proto `bird` 12) so hosts behind it reach pod addresses directly.
//!
//! FRR runs as the `frr` user (its daemons insist on the `frrvty` group), with its own
//! configuration files, pid files, zebra socket and vty socket directory under one directory
//! (`zebra.conf`, `bgpd.conf`, `run/`, `zebra.log`, `bgpd.log`), so several routers can run
//! side by side. `vtysh --vty_socket DIR/run` talks to it.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use nix::unistd::{Group, User, chown};
use serval_sys::NetNs;

use crate::bird::{Bird, BirdError, BirdPaths};
use crate::config::{RouterSpec, render_router};
use crate::process::{Daemon, SpawnError, log_tail};

/// Debian's FRR daemons.
pub const FRR_DIR: &str = "/usr/lib/frr";
/// The user FRR's daemons run as.
pub const FRR_USER: &str = "frr";

/// Errors starting or talking to the FRR router.
#[derive(Debug, thiserror::Error)]
pub enum FrrError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the {FRR_USER:?} user or group does not exist; install Debian's frr package")]
    NoUser,
    #[error("changing owner of {path} to {FRR_USER}: {source}")]
    Chown {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{op} in the router's network namespace: {source}")]
    Netns {
        op: &'static str,
        #[source]
        source: Box<serval_sys::Error>,
    },
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("FRR {daemon} exited during start-up; {log} ends with: {tail}")]
    Exited {
        daemon: &'static str,
        log: PathBuf,
        tail: String,
    },
    #[error("FRR {daemon} did not create {socket} within 10 s; see {log}")]
    NoSocket {
        daemon: &'static str,
        socket: PathBuf,
        log: PathBuf,
    },
    #[error("vtysh -c {command:?}: {message}")]
    Vtysh { command: String, message: String },
    #[error(transparent)]
    Bird(#[from] BirdError),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FrrError {
    let path = path.to_owned();
    move |source| FrrError::Io { op, path, source }
}

/// Renders FRR's `bgpd.conf` for `spec`: one session per neighbour (address family by the
/// neighbour's address), eBGP without policy requirements, accepting everything and
/// announcing nothing; ECMP across nodes.
pub fn render_bgpd(spec: &RouterSpec) -> String {
    let tm = &spec.timers;
    let mut t = String::new();
    t.push_str("! FRR bgpd configuration rendered by Serval.\nfrr defaults traditional\nhostname serval-router\nlog stdout informational\n!\n");
    let _ = writeln!(
        t,
        "router bgp {}\n bgp router-id {}\n no bgp ebgp-requires-policy\n no bgp default ipv4-unicast\n bgp bestpath as-path multipath-relax\n timers bgp {} {}",
        spec.asn, spec.router_id, tm.keepalive_time, tm.hold_time
    );
    for n in &spec.neighbors {
        let _ = writeln!(
            t,
            " neighbor {a} remote-as {as_}\n neighbor {a} description {d}\n neighbor {a} timers connect {c}",
            a = n.addr,
            as_ = n.asn,
            d = n.name.replace(char::is_whitespace, "-"),
            c = tm.connect_retry_time,
        );
    }
    for (fam, v4) in [("ipv4", true), ("ipv6", false)] {
        let ns: Vec<_> = spec
            .neighbors
            .iter()
            .filter(|n| n.addr.is_ipv4() == v4)
            .collect();
        if ns.is_empty() {
            continue;
        }
        let _ = writeln!(t, " !\n address-family {fam} unicast\n  maximum-paths 16");
        for n in ns {
            let _ = writeln!(t, "  neighbor {} activate", n.addr);
        }
        t.push_str(" exit-address-family\n");
    }
    t.push_str("exit\n!\n");
    t
}

/// A running FRR router (zebra + bgpd). Stopped on drop.
#[derive(Debug)]
pub struct FrrRouter {
    dir: PathBuf,
    zebra: Option<Daemon>,
    bgpd: Option<Daemon>,
}

impl FrrRouter {
    /// Writes the configuration under `dir` and starts zebra then bgpd in `netns` (None: the
    /// caller's namespace). Turns on IPv4 and IPv6 forwarding in that namespace.
    pub fn start(
        dir: &Path,
        netns: Option<&NetNs>,
        spec: &RouterSpec,
    ) -> Result<FrrRouter, FrrError> {
        let user = User::from_name(FRR_USER)
            .ok()
            .flatten()
            .ok_or(FrrError::NoUser)?;
        let group = Group::from_name(FRR_USER)
            .ok()
            .flatten()
            .ok_or(FrrError::NoUser)?;
        let run = dir.join("run");
        fs::create_dir_all(&run).map_err(io_err("creating", &run))?;
        for d in [dir, run.as_path()] {
            // The daemons drop to the frr user: they must reach their files.
            fs::set_permissions(d, fs::Permissions::from_mode(0o755))
                .map_err(io_err("setting permissions of", d))?;
        }
        chown(&run, Some(user.uid), Some(group.gid)).map_err(|source| FrrError::Chown {
            path: run.clone(),
            source,
        })?;
        for f in fs::read_dir(&run)
            .map_err(io_err("listing", &run))?
            .flatten()
        {
            let _ = fs::remove_file(f.path());
        }
        let zebra_conf = dir.join("zebra.conf");
        let bgpd_conf = dir.join("bgpd.conf");
        fs::write(&zebra_conf, "hostname serval-router\n!\n")
            .map_err(io_err("writing", &zebra_conf))?;
        fs::write(&bgpd_conf, render_bgpd(spec)).map_err(io_err("writing", &bgpd_conf))?;
        for f in [&zebra_conf, &bgpd_conf] {
            fs::set_permissions(f, fs::Permissions::from_mode(0o644))
                .map_err(io_err("setting permissions of", f))?;
        }
        if let Some(ns) = netns {
            for key in ["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"] {
                ns.sysctl_write(key, "1").map_err(|e| FrrError::Netns {
                    op: "enabling forwarding",
                    source: Box::new(e),
                })?;
            }
        }
        let zsock = run.join("zserv.api");
        let mut router = FrrRouter {
            dir: dir.to_owned(),
            zebra: None,
            bgpd: None,
        };
        let daemon = |name: &'static str, conf: &Path| -> Result<Daemon, FrrError> {
            let mut cmd = Command::new(Path::new(FRR_DIR).join(name));
            cmd.args(["-u", FRR_USER, "-g", FRR_USER, "-P", "0", "--log", "stdout"])
                .arg("-f")
                .arg(conf)
                .arg("-i")
                .arg(run.join(format!("{name}.pid")))
                .arg("-z")
                .arg(&zsock)
                .arg("--vty_socket")
                .arg(&run);
            let log = dir.join(format!("{name}.log"));
            let mut d = Daemon::spawn(netns, cmd, &log)?;
            let vty = run.join(format!("{name}.vty"));
            let deadline = Instant::now() + Duration::from_secs(10);
            while !vty.exists() {
                if !d.alive() {
                    return Err(FrrError::Exited {
                        daemon: name,
                        tail: log_tail(&log, 2000),
                        log,
                    });
                }
                if Instant::now() > deadline {
                    d.stop(Duration::from_secs(1));
                    return Err(FrrError::NoSocket {
                        daemon: name,
                        socket: vty,
                        log,
                    });
                }
                thread::sleep(Duration::from_millis(20));
            }
            Ok(d)
        };
        router.zebra = Some(daemon("zebra", &zebra_conf)?);
        router.bgpd = Some(daemon("bgpd", &bgpd_conf)?);
        tracing::info!(dir = %dir.display(), neighbors = spec.neighbors.len(), "FRR router started");
        Ok(router)
    }

    /// The vty socket directory (`vtysh --vty_socket`).
    pub fn vty_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// Runs one vtysh command, e.g. `show bgp summary`.
    pub fn vtysh(&self, command: &str) -> Result<String, FrrError> {
        let out = Command::new("vtysh")
            .arg("--vty_socket")
            .arg(self.vty_dir())
            .arg("-c")
            .arg(command)
            .output()
            .map_err(io_err("running vtysh for", &self.vty_dir()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(FrrError::Vtysh {
                command: command.to_owned(),
                message: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            })
        }
    }

    /// Whether both daemons run.
    pub fn is_running(&mut self) -> bool {
        self.zebra.as_mut().is_some_and(Daemon::alive)
            && self.bgpd.as_mut().is_some_and(Daemon::alive)
    }

    /// Leaves the daemons running when this handle is dropped (`serval lab up` exits; `lab
    /// down` calls [`FrrRouter::stop_in`]).
    pub fn detach(mut self) {
        self.zebra = None;
        self.bgpd = None;
    }

    /// Stops the FRR daemons started with files under `dir`, found by their pid files.
    /// Returns how many were running.
    pub fn stop_in(dir: &Path) -> usize {
        let run = dir.join("run");
        let mut n = 0;
        for name in ["bgpd", "zebra"] {
            let marker = run.display().to_string();
            if let Some(mut d) = Daemon::adopt(&run.join(format!("{name}.pid")), &marker) {
                d.stop(Duration::from_secs(5));
                n += 1;
            }
        }
        n
    }

    /// Stops bgpd then zebra (zebra removes its kernel routes).
    pub fn stop(&mut self) {
        for d in [self.bgpd.take(), self.zebra.take()].into_iter().flatten() {
            let mut d = d;
            d.stop(Duration::from_secs(5));
        }
    }
}

impl Drop for FrrRouter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Which implementation plays the external router (`serval lab up --router frr|bird`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RouterKind {
    #[default]
    Frr,
    Bird,
}

/// A running external router of either kind. Stopped on drop.
#[derive(Debug)]
pub enum ExternalRouter {
    Frr(FrrRouter),
    Bird(Box<Bird>),
}

impl ExternalRouter {
    /// Starts `kind` in `netns` with its files under `dir`.
    pub fn start(
        kind: RouterKind,
        dir: &Path,
        netns: Option<&NetNs>,
        spec: &RouterSpec,
    ) -> Result<ExternalRouter, FrrError> {
        match kind {
            RouterKind::Frr => FrrRouter::start(dir, netns, spec).map(ExternalRouter::Frr),
            RouterKind::Bird => {
                if let Some(ns) = netns {
                    for key in ["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"] {
                        ns.sysctl_write(key, "1").map_err(|e| FrrError::Netns {
                            op: "enabling forwarding",
                            source: Box::new(e),
                        })?;
                    }
                }
                let ns = match netns {
                    Some(ns) => Some(ns.try_clone().map_err(|e| FrrError::Netns {
                        op: "opening",
                        source: Box::new(e),
                    })?),
                    None => None,
                };
                let mut bird = Bird::new(BirdPaths::in_dir(dir), ns);
                bird.start(&render_router(spec))?;
                Ok(ExternalRouter::Bird(Box::new(bird)))
            }
        }
    }

    /// The kernel route protocol its learned routes carry.
    pub fn route_protocol(&self) -> u8 {
        match self {
            ExternalRouter::Frr(_) => crate::config::RTPROT_BGP,
            ExternalRouter::Bird(_) => crate::config::RTPROT_BIRD,
        }
    }

    /// Leaves the router running when this handle is dropped.
    pub fn detach(self) {
        match self {
            ExternalRouter::Frr(f) => f.detach(),
            ExternalRouter::Bird(b) => b.detach(),
        }
    }

    /// Stops a router of either kind started with files under `dir` (by pid files).
    pub fn stop_in(dir: &Path) -> bool {
        let frr = FrrRouter::stop_in(dir) > 0;
        let bird = Bird::stop_in(&BirdPaths::in_dir(dir));
        frr || bird
    }

    pub fn stop(&mut self) {
        match self {
            ExternalRouter::Frr(f) => f.stop(),
            ExternalRouter::Bird(b) => {
                let _ = b.stop();
            }
        }
    }
}
