//! The kernel baselines: kube-proxy's iptables and nftables rules for N services, loaded into
//! the client's node (`iptables-restore` / `nft -f`), timed until the last service answers,
//! measured, then one service added, then everything removed again.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serval_sys::NetNs;

use crate::error::{BenchError, Result};
use crate::kubeproxy::{self, ServicePort};
use crate::lab::{Lab, run_command};
use crate::net;
use crate::progress::{Progress, human_us};
use crate::results::{LatencyPoint, ProgrammingPoint};

/// kube-proxy's `--cluster-cidr` in the bench: the lab's IPv4 pod pool.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// How long the last service may take to answer after programming.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(180);

/// Which iptables binaries load the kube-proxy iptables baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IptablesBackend {
    /// `iptables-legacy-restore` (x_tables): the classic rule walk. Loads 50,000 services in
    /// seconds.
    Legacy,
    /// `iptables-nft-restore` (nf_tables through the xtables compatibility layer). Its
    /// restore time grows quadratically with the number of chains on this iptables version.
    Nft,
}

impl IptablesBackend {
    pub fn name(self) -> &'static str {
        match self {
            IptablesBackend::Legacy => "legacy",
            IptablesBackend::Nft => "nft",
        }
    }

    fn restore(self) -> &'static str {
        match self {
            IptablesBackend::Legacy => "iptables-legacy-restore",
            IptablesBackend::Nft => "iptables-nft-restore",
        }
    }

    fn save(self) -> &'static str {
        match self {
            IptablesBackend::Legacy => "iptables-legacy-save",
            IptablesBackend::Nft => "iptables-nft-save",
        }
    }
}

/// Which kube-proxy mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Iptables(IptablesBackend),
    Nftables,
}

impl Mode {
    pub fn column(self) -> &'static str {
        match self {
            Mode::Iptables(_) => "kube-proxy-iptables",
            Mode::Nftables => "kube-proxy-nftables",
        }
    }
}

/// A command that runs inside `ns` (the child `setns()`s before exec).
pub fn command_in(ns: &NetNs, program: &str) -> Command {
    let fd = ns.as_raw_fd();
    let mut cmd = Command::new(program);
    // SAFETY: runs in the forked child before exec; setns(2) is async-signal-safe and `fd`
    // stays open in the parent, which holds `ns` until the command has been spawned.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Loads a rules file into `ns` and returns how long the command took.
fn load(mode: Mode, ns: &NetNs, file: &Path) -> Result<Duration> {
    let mut cmd = match mode {
        Mode::Iptables(backend) => {
            let mut c = command_in(ns, backend.restore());
            c.args(["-w", "--noflush"]).arg(file);
            c
        }
        Mode::Nftables => {
            let mut c = command_in(ns, "nft");
            c.arg("-f").arg(file);
            c
        }
    };
    let start = Instant::now();
    run_command(&mut cmd)?;
    Ok(start.elapsed())
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|source| BenchError::Io {
        op: "writing",
        path: path.to_path_buf(),
        source,
    })
}

/// Removes the baseline's rules on drop unless [`Cleanup::run`] already did.
struct Cleanup<'a> {
    mode: Mode,
    ns: &'a NetNs,
    file: std::path::PathBuf,
    done: bool,
}

impl Cleanup<'_> {
    fn run(&mut self) -> Result<Duration> {
        self.done = true;
        load(self.mode, self.ns, &self.file)
    }
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if !self.done {
            // Best effort: part of the rules may never have been loaded.
            let _ = load(self.mode, self.ns, &self.file);
        }
    }
}

/// What one baseline measurement at one N produced.
pub struct Measured {
    pub latency: Option<LatencyPoint>,
    pub programming: ProgrammingPoint,
}

/// Whether the node still holds any kube-proxy rule (after cleanup there must be none).
pub fn leftovers(mode: Mode, ns: &NetNs) -> Result<bool> {
    match mode {
        Mode::Iptables(backend) => {
            let text = run_command(&mut command_in(ns, backend.save()))?;
            Ok(text.contains("KUBE-"))
        }
        Mode::Nftables => {
            let text = run_command(command_in(ns, "nft").args(["list", "tables"]))?;
            Ok(text.lines().any(|l| l.trim() == "table ip kube-proxy"))
        }
    }
}

/// Programs N services, waits for the last, measures latency to it (when `samples > 0`;
/// interleaved with `direct` when given), adds one (when `add_one`), and removes everything.
#[expect(
    clippy::too_many_arguments,
    reason = "one measurement's knobs, all needed"
)]
pub fn measure(
    lab: &Lab,
    mode: Mode,
    n: usize,
    samples: usize,
    warmup: usize,
    add_one: bool,
    direct: Option<&crate::paired::Endpoint>,
    work_dir: &Path,
    progress: &Progress,
) -> Result<Measured> {
    let column = mode.column();
    let backend = std::net::SocketAddrV4::new(lab.server.ip, net::ECHO_PORT);
    let mut services = kubeproxy::bench_services(n, backend);
    let extra = kubeproxy::bench_service(n, backend);
    let target = |s: &ServicePort| std::net::SocketAddrV4::new(s.cluster_ip, s.port);
    let last = target(&services[n - 1]);
    let ext = match mode {
        Mode::Iptables(_) => "rules",
        Mode::Nftables => "nft",
    };
    let full_path = work_dir.join(format!("{column}-{n}-full.{ext}"));
    let add_path = work_dir.join(format!("{column}-{n}-add.{ext}"));
    let cleanup_path = work_dir.join(format!("{column}-{n}-cleanup.{ext}"));

    let full = match mode {
        Mode::Iptables(_) => kubeproxy::iptables::render_full(&services, CLUSTER_CIDR),
        Mode::Nftables => kubeproxy::nftables::render_full(&services, CLUSTER_CIDR),
    };
    write(&full_path, &full)?;
    let mut all = services.clone();
    all.push(extra.clone());
    let add = match mode {
        Mode::Iptables(_) => kubeproxy::iptables::render_add(&all, &extra, CLUSTER_CIDR),
        Mode::Nftables => kubeproxy::nftables::render_add(&extra, CLUSTER_CIDR),
    };
    write(&add_path, &add)?;
    let cleanup_text = match mode {
        Mode::Iptables(_) => kubeproxy::iptables::render_cleanup(&all),
        Mode::Nftables => kubeproxy::nftables::render_cleanup(),
    };
    write(&cleanup_path, &cleanup_text)?;
    let mut cleanup = Cleanup {
        mode,
        ns: &lab.node1,
        file: cleanup_path,
        done: false,
    };

    progress.line(&format!(
        "{column} N={n}: loading {} of rules into {}",
        human_bytes(full.len()),
        lab.node1_name
    ));
    let start = Instant::now();
    let load_took = load(mode, &lab.node1, &full_path)?;
    let answered = net::wait_answer(
        &lab.client.netns,
        &lab.client.netns_name,
        last,
        start + ANSWER_TIMEOUT,
    )?;
    let answer_took = answered - start;
    progress.line(&format!(
        "{column} N={n}: loaded in {}, last service {last} answered after {}",
        human_us(load_took.as_secs_f64() * 1e6),
        human_us(answer_took.as_secs_f64() * 1e6)
    ));

    let latency = if samples > 0 {
        let at = crate::paired::Endpoint::new(&lab.client, last)?;
        Some(crate::paired::measure_point(
            column, n, &at, direct, samples, warmup, progress,
        )?)
    } else {
        None
    };

    let (mut add_load, mut add_answer) = (None, None);
    if add_one {
        let start = Instant::now();
        let took = load(mode, &lab.node1, &add_path)?;
        let answered = net::wait_answer(
            &lab.client.netns,
            &lab.client.netns_name,
            target(&extra),
            start + ANSWER_TIMEOUT,
        )?;
        add_load = Some(took.as_secs_f64() * 1e3);
        add_answer = Some((answered - start).as_secs_f64() * 1e3);
        progress.line(&format!(
            "{column} N={n}: one more service answered after {}",
            human_us((answered - start).as_secs_f64() * 1e6)
        ));
        services.push(extra);
    }

    let cleanup_took = cleanup.run()?;
    if leftovers(mode, &lab.node1)? {
        return Err(BenchError::CommandFailed {
            command: format!("cleanup of {column} in {}", lab.node1_name),
            status: "rules left behind".into(),
            stderr: "kube-proxy rules remain after the cleanup file was loaded".into(),
        });
    }
    Ok(Measured {
        latency,
        programming: ProgrammingPoint {
            dataplane: column.to_string(),
            n,
            load_ms: load_took.as_secs_f64() * 1e3,
            answer_ms: answer_took.as_secs_f64() * 1e3,
            add_one_load_ms: add_load,
            add_one_answer_ms: add_answer,
            cleanup_ms: Some(cleanup_took.as_secs_f64() * 1e3),
            input_bytes: full.len(),
            datastore_write_ms: None,
            dataplane_ms: None,
            add_one_datastore_write_ms: None,
            add_one_dataplane_ms: None,
        },
    })
}

pub fn human_bytes(b: usize) -> String {
    if b < 10 * 1024 {
        format!("{b} B")
    } else if b < 10 * 1024 * 1024 {
        format!("{} KiB", b / 1024)
    } else {
        format!("{} MiB", b / (1024 * 1024))
    }
}
