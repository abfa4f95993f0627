//! The two ends of every measurement: an echo server on a thread inside the server pod's
//! namespace, and clients on threads inside the client pod's namespace.
//!
//! One exchange is: a new TCP connection, 1 byte sent, the 1-byte reply read, and a close with
//! `SO_LINGER` 0 (an RST instead of FIN/TIME_WAIT, so thousands of connections in a row never
//! run out of ports). Its latency is taken from just before `connect` to the reply's arrival.

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serval_sys::NetNs;
use socket2::{Domain, Protocol, Socket, Type};

use crate::error::{BenchError, Result};

/// The port the echo server listens on in the server pods (the pod's own server has 8080).
pub const ECHO_PORT: u16 = 7777;

/// An echo server running on a thread inside a pod's namespace; stopped on drop.
#[derive(Debug)]
pub struct EchoServer {
    pub addr: SocketAddrV4,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<serval_sys::Result<()>>>,
}

impl EchoServer {
    /// Binds `addr` inside `ns` and serves connections one after another: every byte read
    /// is written back, until the peer closes or resets.
    pub fn start(ns: &NetNs, netns_name: &str, addr: SocketAddrV4) -> Result<EchoServer> {
        let listener = ns
            .run(move || -> std::io::Result<TcpListener> {
                let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
                socket.set_reuse_address(true)?;
                socket.bind(&SocketAddr::V4(addr).into())?;
                socket.listen(1024)?;
                socket.set_nonblocking(true)?;
                Ok(socket.into())
            })
            .map_err(|source| BenchError::Netns {
                what: "starting the echo server",
                netns: netns_name.to_string(),
                source,
            })?
            .map_err(|source| BenchError::Socket {
                op: "listening on",
                addr: addr.to_string(),
                source,
            })?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        // The listening socket already belongs to the pod's namespace; the thread serving it
        // may live anywhere, but stays in the pod for clarity.
        let thread = ns
            .spawn(move || serve(listener, &stop2))
            .map_err(|source| BenchError::Netns {
                what: "starting the echo server thread",
                netns: netns_name.to_string(),
                source,
            })?;
        Ok(EchoServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: TcpListener, stop: &AtomicBool) {
    let fd = listener.as_raw_fd();
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid pollfd for the duration of the call and `fd` is the open
        // listening socket owned by `listener`, alive for the whole loop.
        let ready = unsafe { libc::poll(&mut pfd, 1, 100) };
        if ready <= 0 {
            continue;
        }
        while let Ok((stream, _)) = listener.accept() {
            echo_connection(stream, stop);
        }
    }
}

fn echo_connection(mut stream: TcpStream, stop: &AtomicBool) {
    if stream.set_nonblocking(false).is_err()
        || stream.set_nodelay(true).is_err()
        || stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .is_err()
    {
        return;
    }
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                // An idle connection (a probe that gave up): keep it unless we are stopping.
                if stop.load(Ordering::Relaxed) {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// One exchange from the calling thread's namespace: connect, send 1 byte, read 1 byte,
/// close with an RST. Returns the time from connect to the reply.
pub fn exchange(target: SocketAddrV4, timeout: Duration) -> std::io::Result<Duration> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_linger(Some(Duration::ZERO))?;
    socket.set_tcp_nodelay(true)?;
    socket.set_read_timeout(Some(timeout))?;
    socket.set_write_timeout(Some(timeout))?;
    let start = Instant::now();
    socket.connect_timeout(&SocketAddr::V4(target).into(), timeout)?;
    let mut stream: TcpStream = socket.into();
    stream.write_all(b"x")?;
    let mut reply = [0u8; 1];
    stream.read_exact(&mut reply)?;
    let took = start.elapsed();
    // Dropping the stream closes it; with linger 0 that sends an RST.
    drop(stream);
    Ok(took)
}

/// The outcome of a latency run.
#[derive(Debug, Clone)]
pub struct LatencyRun {
    /// Microseconds, one per successful exchange, in the order taken.
    pub samples_us: Vec<f64>,
    pub failures: usize,
    pub last_error: Option<String>,
    /// Stopped at [`max_failures`] failed exchanges, before `samples` were taken.
    pub stopped_early: bool,
}

/// Failed exchanges after which a latency run stops (each failure costs up to the 1 s
/// timeout; a dataplane that drops connections would otherwise hold the run for minutes).
pub fn max_failures(samples: usize) -> usize {
    (samples / 20).max(20)
}

/// `samples` exchanges with `target` from inside `ns` (after `warmup` unrecorded ones).
/// `progress` is called with the number done so far, now and then.
pub fn latency(
    ns: &NetNs,
    netns_name: &str,
    target: SocketAddrV4,
    samples: usize,
    warmup: usize,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<LatencyRun> {
    let timeout = Duration::from_secs(1);
    ns.run(|| {
        for _ in 0..warmup {
            let _ = exchange(target, timeout);
        }
        let mut run = LatencyRun {
            samples_us: Vec::with_capacity(samples),
            failures: 0,
            last_error: None,
            stopped_early: false,
        };
        let mut last_report = Instant::now();
        for i in 0..samples {
            match exchange(target, timeout) {
                Ok(d) => run.samples_us.push(d.as_secs_f64() * 1e6),
                Err(e) => {
                    run.failures += 1;
                    run.last_error = Some(e.to_string());
                    if run.failures >= max_failures(samples) {
                        run.stopped_early = true;
                        break;
                    }
                }
            }
            if last_report.elapsed() > Duration::from_secs(2) {
                progress(i + 1);
                last_report = Instant::now();
            }
        }
        run
    })
    .map_err(|source| BenchError::Netns {
        what: "running the latency client",
        netns: netns_name.to_string(),
        source,
    })
}

/// The interval between fresh connection attempts of [`wait_answer`] after `elapsed` of
/// waiting: the resolution of every "until it answers" time. A SYN sent before the target is
/// programmed is lost (the kernel would resend it only after 1 s), so the first attempt that
/// can succeed is the first one sent after the change is in force; attempts start this often,
/// independently of whether the earlier ones are still pending.
pub fn attempt_interval(elapsed: Duration) -> Duration {
    if elapsed < Duration::from_secs(2) {
        Duration::from_micros(500)
    } else if elapsed < Duration::from_secs(10) {
        Duration::from_millis(5)
    } else {
        Duration::from_millis(50)
    }
}

/// How long one [`wait_answer`] attempt stays open waiting for its SYN-ACK before it is
/// abandoned (closed: a socket still in SYN_SENT sends nothing on close). Longer than an
/// exchange with a programmed service takes here, even under load; a lost SYN never comes
/// back within it.
pub const ATTEMPT_LIFETIME: Duration = Duration::from_millis(50);

/// How many source ports [`wait_answer`] cycles through, just below the client's ephemeral
/// range.
pub const PROBE_PORTS: u16 = 12_000;

/// The next probe source port, as an offset into the probe range (shared by every wait of
/// the run, so successive waits do not reuse each other's ports either).
static NEXT_PROBE_PORT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The probe source ports: the [`PROBE_PORTS`] ports just below the calling thread's
/// namespace's ephemeral range (`ip_local_port_range`), or `None` when there is no room.
///
/// Why: an attempt sent before the target is programmed leaves a conntrack entry on the
/// node (SYN_SENT, not NATed, kept 120 s). A later connection that happens to get the same
/// ephemeral source port matches that entry, is not NATed, and is lost — a measurement
/// after a long wait (thousands of attempts) would lose a share of its connections for two
/// minutes. With their own ports, attempts never share a tuple with the latency exchanges.
fn probe_port_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let low: u16 = text.split_whitespace().next()?.parse().ok()?;
    let start = low.checked_sub(PROBE_PORTS)?;
    (start >= 1024).then_some((start, low))
}

/// The `i`-th source port of `range`, cycling.
fn probe_port((start, end): (u16, u16), i: u32) -> u16 {
    start + (i % u32::from(end - start)) as u16
}

/// The next source port of `range` to try.
fn next_probe_port(range: (u16, u16)) -> u16 {
    probe_port(range, NEXT_PROBE_PORT.fetch_add(1, Ordering::Relaxed))
}

/// One pending attempt of [`wait_answer`].
struct Attempt {
    socket: Socket,
    started: Instant,
}

/// Starts a non-blocking connect to `target` (from the calling thread's namespace), from a
/// source port of `ports` when given (a port still in use is skipped).
fn start_attempt(target: SocketAddrV4, ports: Option<(u16, u16)>) -> std::io::Result<Attempt> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_linger(Some(Duration::ZERO))?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    if let Some(range) = ports {
        let mut tries = 0;
        loop {
            let port = next_probe_port(range);
            let local = SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, port);
            match socket.bind(&SocketAddr::V4(local).into()) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 16 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }
    let started = Instant::now();
    match socket.connect(&SocketAddr::V4(target).into()) {
        Ok(()) => Ok(Attempt { socket, started }),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(Attempt { socket, started }),
        Err(e) => Err(e),
    }
}

/// Completes the exchange on a connected attempt: 1 byte sent, the 1-byte reply read.
fn finish_exchange(socket: Socket) -> std::io::Result<()> {
    socket.set_nonblocking(false)?;
    let timeout = Duration::from_secs(1);
    socket.set_read_timeout(Some(timeout))?;
    socket.set_write_timeout(Some(timeout))?;
    let mut stream: TcpStream = socket.into();
    stream.write_all(b"x")?;
    let mut reply = [0u8; 1];
    stream.read_exact(&mut reply)?;
    Ok(())
}

/// Waits for readiness of `fds` (POLLOUT) for at most `timeout` (sub-millisecond).
fn poll_out(fds: &mut [libc::pollfd], timeout: Duration) -> std::io::Result<usize> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `fds` is a valid, exclusively borrowed slice of pollfd for the duration of the
    // call and its length is passed with it; `ts` lives on the stack; no signal mask is given.
    let n = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(n as usize)
}

/// Tries exchanges with `target` from inside `ns` until one succeeds or `deadline` passes;
/// returns when it succeeded (the reply's arrival).
///
/// A fresh non-blocking connection attempt starts every [`attempt_interval`] (0.5 ms for the
/// first 2 s), while earlier ones stay pending for [`ATTEMPT_LIFETIME`]; the first attempt
/// whose connection completes is finished with the 1-byte exchange, the others are closed.
/// So a time is late by at most one interval plus the exchange itself. Attempts use source
/// ports of their own ([`probe_port_range`]).
pub fn wait_answer(
    ns: &NetNs,
    netns_name: &str,
    target: SocketAddrV4,
    deadline: Instant,
) -> Result<Instant> {
    let started = Instant::now();
    ns.run(|| {
        let ports = probe_port_range();
        let mut last_error = String::from("no attempt completed");
        let mut pending: std::collections::VecDeque<Attempt> = std::collections::VecDeque::new();
        let mut next_start = started;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(BenchError::NoAnswer {
                    target: target.to_string(),
                    waited_ms: started.elapsed().as_millis() as u64,
                    last_error,
                });
            }
            while pending
                .front()
                .is_some_and(|a| now.duration_since(a.started) >= ATTEMPT_LIFETIME)
            {
                pending.pop_front();
                last_error = format!("no answer within {ATTEMPT_LIFETIME:?}");
            }
            if now >= next_start {
                match start_attempt(target, ports) {
                    Ok(a) => pending.push_back(a),
                    Err(e) => last_error = e.to_string(),
                }
                next_start = now + attempt_interval(now.duration_since(started));
            }
            let mut fds: Vec<libc::pollfd> = pending
                .iter()
                .map(|a| libc::pollfd {
                    fd: a.socket.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                })
                .collect();
            let wait = next_start
                .saturating_duration_since(Instant::now())
                .min(deadline.saturating_duration_since(Instant::now()));
            if fds.is_empty() {
                std::thread::sleep(wait);
                continue;
            }
            let ready = poll_out(&mut fds, wait).map_err(|source| BenchError::Socket {
                op: "polling connection attempts to",
                addr: target.to_string(),
                source,
            })?;
            if ready == 0 {
                continue;
            }
            // Oldest first: the earliest attempt that completed wins.
            let mut winner = None;
            let mut keep = std::collections::VecDeque::with_capacity(pending.len());
            for (attempt, pfd) in pending.drain(..).zip(&fds) {
                if pfd.revents == 0 {
                    keep.push_back(attempt);
                    continue;
                }
                match attempt.socket.take_error() {
                    Ok(None) if winner.is_none() => winner = Some(attempt),
                    // Connected too, but a winner exists: closed (an RST) below.
                    Ok(None) => {}
                    Ok(Some(e)) | Err(e) => last_error = e.to_string(),
                }
            }
            pending = keep;
            if let Some(attempt) = winner {
                // The others must not hold the echo server (it serves one connection at a
                // time) while the winner's exchange runs.
                pending.clear();
                match finish_exchange(attempt.socket) {
                    Ok(()) => return Ok(Instant::now()),
                    Err(e) => last_error = e.to_string(),
                }
            }
        }
    })
    .map_err(|source| BenchError::Netns {
        what: "waiting for an answer",
        netns: netns_name.to_string(),
        source,
    })?
}

/// Whether `target` answers an exchange within `timeout` (one attempt).
pub fn answers(
    ns: &NetNs,
    netns_name: &str,
    target: SocketAddrV4,
    timeout: Duration,
) -> Result<bool> {
    ns.run(|| exchange(target, timeout).is_ok())
        .map_err(|source| BenchError::Netns {
            what: "probing",
            netns: netns_name.to_string(),
            source,
        })
}

/// 1-byte requests and replies on one connection for `duration`: the number completed.
pub fn request_rate(
    ns: &NetNs,
    netns_name: &str,
    target: SocketAddrV4,
    duration: Duration,
) -> Result<(u64, Duration)> {
    ns.run(|| -> Result<(u64, Duration)> {
        let sock_err = |op: &'static str| {
            move |source| BenchError::Socket {
                op,
                addr: target.to_string(),
                source,
            }
        };
        let mut stream =
            TcpStream::connect_timeout(&SocketAddr::V4(target), Duration::from_secs(2))
                .map_err(sock_err("connecting to"))?;
        stream
            .set_nodelay(true)
            .map_err(sock_err("setting TCP_NODELAY on"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(sock_err("setting a timeout on"))?;
        let start = Instant::now();
        let mut count = 0u64;
        let mut reply = [0u8; 1];
        while start.elapsed() < duration {
            stream.write_all(b"x").map_err(sock_err("sending to"))?;
            stream
                .read_exact(&mut reply)
                .map_err(sock_err("reading from"))?;
            count += 1;
        }
        Ok((count, start.elapsed()))
    })
    .map_err(|source| BenchError::Netns {
        what: "running the request-rate client",
        netns: netns_name.to_string(),
        source,
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The echo server and one exchange, in this process's own namespace on loopback.
    #[test]
    fn echo_exchange_on_loopback() {
        let ns = NetNs::current().expect("current netns");
        // Port 0 would be simpler, but the server reports the address it was given.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let addr = SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, port);
        let server = EchoServer::start(&ns, "self", addr).expect("server");
        let took = exchange(server.addr, Duration::from_secs(2)).expect("exchange");
        assert!(took > Duration::ZERO);
        let run = latency(&ns, "self", server.addr, 20, 2, &|_| {}).expect("latency");
        assert_eq!(run.samples_us.len(), 20);
        assert_eq!(run.failures, 0);
        let (count, _) =
            request_rate(&ns, "self", server.addr, Duration::from_millis(50)).expect("rate");
        assert!(count > 0);
        drop(server);
        // Stopped: nothing answers any more.
        assert!(exchange(addr, Duration::from_millis(200)).is_err());
    }

    /// The prober keeps starting fresh attempts while nothing listens (each refused), returns
    /// once the server is up, never before, and gives up at its deadline with the last error.
    #[test]
    fn wait_answer_retries_until_the_server_is_up() {
        let ns = NetNs::current().expect("current netns");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        let addr = match listener.local_addr().expect("addr") {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!("bound to 127.0.0.1"),
        };
        drop(listener);
        let err = wait_answer(
            &ns,
            "self",
            addr,
            Instant::now() + Duration::from_millis(30),
        )
        .expect_err("nothing listens");
        assert!(
            matches!(&err, BenchError::NoAnswer { last_error, .. } if last_error.contains("refused")),
            "{err}"
        );
        let server = std::thread::scope(|s| {
            let waiter = s
                .spawn(|| wait_answer(&ns, "self", addr, Instant::now() + Duration::from_secs(20)));
            std::thread::sleep(Duration::from_millis(100));
            let before_bind = Instant::now();
            let server = EchoServer::start(&ns, "self", addr).expect("server");
            let answered = waiter.join().expect("waiter").expect("answered");
            // Nothing can answer before the server was bound.
            assert!(answered >= before_bind);
            server
        });
        drop(server);
    }

    /// Probe ports lie below the ephemeral range and cycle through the whole probe range.
    #[test]
    fn probe_ports_stay_out_of_the_ephemeral_range() {
        let range = (40_000, 40_003);
        let ports: Vec<u16> = (0..6).map(|i| probe_port(range, i)).collect();
        assert_eq!(ports, vec![40_000, 40_001, 40_002, 40_000, 40_001, 40_002]);
        assert!((40_000..40_003).contains(&next_probe_port(range)));
        if let Some((start, end)) = probe_port_range() {
            let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
                .expect("ip_local_port_range");
            let low: u16 = text
                .split_whitespace()
                .next()
                .expect("low")
                .parse()
                .expect("u16");
            assert_eq!(end, low);
            assert_eq!(end - start, PROBE_PORTS);
        }
    }

    #[test]
    fn attempt_intervals() {
        assert_eq!(attempt_interval(Duration::ZERO), Duration::from_micros(500));
        assert_eq!(
            attempt_interval(Duration::from_millis(1999)),
            Duration::from_micros(500)
        );
        assert_eq!(
            attempt_interval(Duration::from_secs(5)),
            Duration::from_millis(5)
        );
        assert_eq!(
            attempt_interval(Duration::from_secs(60)),
            Duration::from_millis(50)
        );
    }
}
