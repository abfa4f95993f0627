//! Helpers for privileged tests of the BPF programs, this crate's and other crates' (the
//! agent's): a throwaway cgroup v2 hierarchy, a pin scope removed on drop, a UDP echo
//! backend, and client processes placed in a cgroup. Behind the `testing` feature, never in
//! a release build.
//!
//! The client side of the connect-time load balancer tests is the test binary itself,
//! re-executed with only one test (the "helper", which calls [`client_helper`]) and an
//! environment variable saying what to do; [`run_client`] moves the child into a cgroup
//! before it runs (a process is in one cgroup, and the test process must stay where it is)
//! and reads back what the helper printed.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use serval_sys::testing::unique_name;

use crate::{PinScope, cgroup, cleanup};

/// A cgroup v2 directory `<cgroup2 mount>/PREFIX-XXXX` with child directories; all removed on
/// drop (after the processes in them exited).
#[derive(Debug)]
pub struct TestCgroups {
    root: PathBuf,
    children: Vec<PathBuf>,
}

impl TestCgroups {
    /// Creates the directory and one child per name; None when there is no writable cgroup v2
    /// hierarchy (the caller skips its test and says why).
    pub fn new(prefix: &str, children: &[&str]) -> Option<TestCgroups> {
        let root = cgroup::cgroup2_mount()?.join(unique_name(prefix, 24));
        std::fs::create_dir(&root).ok()?;
        let mut cg = TestCgroups {
            root,
            children: Vec::new(),
        };
        for name in children {
            let child = cg.root.join(name);
            std::fs::create_dir(&child).ok()?;
            cg.children.push(child);
        }
        Some(cg)
    }

    /// The directory holding the children.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The child directory `name`.
    pub fn child(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

impl Drop for TestCgroups {
    fn drop(&mut self) {
        for child in &self.children {
            let _ = std::fs::remove_dir(child);
        }
        let _ = std::fs::remove_dir(&self.root);
    }
}

/// Removes a pin scope's pins and attachments (tc links, cgroup links) when dropped, so a
/// failed test leaves none behind.
#[derive(Debug)]
pub struct ScopeGuard(pub PinScope);

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        if let Err(err) = cleanup(&self.0, None) {
            eprintln!("ScopeGuard: cleanup of {}: {err}", self.0.scope());
        }
    }
}

/// A UDP server answering every datagram `MSG` with `PREFIX:MSG`, in a thread of its own;
/// stopped on drop.
#[derive(Debug)]
pub struct UdpEcho(Arc<AtomicBool>);

impl UdpEcho {
    /// Serves on `sock` (bound already, in whatever network namespace it belongs to).
    pub fn spawn(sock: UdpSocket, prefix: &str) -> io::Result<UdpEcho> {
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let prefix = prefix.to_owned();
        thread::spawn(move || {
            let mut buf = [0u8; 256];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let reply = format!("{prefix}:{}", String::from_utf8_lossy(&buf[..n]));
                    let _ = sock.send_to(reply.as_bytes(), from);
                }
            }
        });
        Ok(UdpEcho(stop))
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A TCP server writing `TEXT\n` to every connection (then closing it), in a thread of its
/// own; stopped on drop.
#[derive(Debug)]
pub struct TcpAnswer(Arc<AtomicBool>);

impl TcpAnswer {
    /// Serves on `listener` (bound already).
    pub fn spawn(listener: TcpListener, text: &str) -> io::Result<TcpAnswer> {
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let line = format!("{text}\n");
        thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.write_all(line.as_bytes());
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(TcpAnswer(stop))
    }
}

impl Drop for TcpAnswer {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What the client helper saw: its local port, the peer address its socket reported
/// (`getpeername` for TCP, `recvfrom` for UDP) and the reply's text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientReport {
    pub local_port: u16,
    pub peer: String,
    pub reply: String,
}

/// The line prefix of the helper's result.
const RESULT: &str = "CTLB-RESULT ";

/// The client side, for a test of its own (the helper) that calls this first thing: does
/// nothing unless environment variable `env` is `MODE ADDR` (MODE `tcp`: connect, read the
/// reply; `udp`: an unconnected socket sends `ping` and receives one reply), with `timeout`
/// for the connection and the UDP reply. Prints `CTLB-RESULT local=PORT peer=ADDR
/// reply=TEXT` or `CTLB-RESULT error=KIND`.
pub fn client_helper(env: &str, timeout: Duration) {
    let Ok(spec) = std::env::var(env) else {
        return;
    };
    let (mode, addr) = spec.split_once(' ').expect("MODE ADDR");
    let to: SocketAddr = addr.parse().expect("ADDR");
    let result = match mode {
        "tcp" => (|| -> io::Result<String> {
            let mut c = TcpStream::connect_timeout(&to, timeout)?;
            c.set_read_timeout(Some(Duration::from_secs(2)))?;
            let (local, peer) = (c.local_addr()?, c.peer_addr()?);
            let mut s = String::new();
            c.read_to_string(&mut s)?;
            Ok(format!(
                "local={} peer={peer} reply={}",
                local.port(),
                s.trim()
            ))
        })(),
        "udp" => (|| -> io::Result<String> {
            let s = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
            s.set_read_timeout(Some(timeout))?;
            s.send_to(b"ping", to)?;
            let mut buf = [0u8; 256];
            let (n, from) = s.recv_from(&mut buf)?;
            Ok(format!(
                "local={} peer={from} reply={}",
                s.local_addr()?.port(),
                String::from_utf8_lossy(&buf[..n]).trim()
            ))
        })(),
        other => panic!("unknown mode {other}"),
    };
    match result {
        Ok(line) => println!("{RESULT}{line}"),
        Err(e) => println!("{RESULT}error={:?}", e.kind()),
    }
}

/// Runs the client helper (test `helper` of this test binary, with `env` set to `MODE TO`)
/// in `cgroup`, and in network namespace `netns` through `ip netns exec` when given. Ok(Ok):
/// what it saw; Ok(Err(kind)): the client's socket call failed with that io::ErrorKind;
/// Err: the helper could not run or printed no result.
pub fn run_client(
    helper: &str,
    env: &str,
    netns: Option<&str>,
    cgroup: &Path,
    mode: &str,
    to: SocketAddr,
) -> io::Result<Result<ClientReport, String>> {
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(cgroup.join("cgroup.procs"))?;
    let fd = procs.as_raw_fd();
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(std::env::current_exe()?);
            c
        }
        None => Command::new(std::env::current_exe()?),
    };
    cmd.args(["--exact", helper, "--nocapture", "--test-threads=1"])
        .env(env, format!("{mode} {to}"));
    // SAFETY: runs in the forked child before exec; write(2) is async-signal-safe and `fd`
    // stays open in the parent until `output()` returns. "0" moves the writing process (and
    // so everything it executes) into the cgroup.
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output()?;
    drop(procs);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| Some(&l[l.find(RESULT)? + RESULT.len()..]))
        .ok_or_else(|| {
            io::Error::other(format!(
                "no result from the client helper: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        })?;
    let field = |k: &str| {
        line.split(' ')
            .find_map(|f| f.strip_prefix(&format!("{k}=")))
            .map(str::to_owned)
    };
    if let Some(kind) = field("error") {
        return Ok(Err(kind));
    }
    let bad = |what: &str| io::Error::other(format!("client helper result without {what}: {line}"));
    Ok(Ok(ClientReport {
        local_port: field("local")
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| bad("local"))?,
        peer: field("peer").ok_or_else(|| bad("peer"))?,
        reply: line.split_once("reply=").map(|x| x.1).unwrap_or("").into(),
    }))
}
