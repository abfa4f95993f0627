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

/// How long [`wait_answer`] probes with [`FINE_PROBE_TIMEOUT`] attempts before 100 ms ones.
const FINE_PROBING_FOR: Duration = Duration::from_secs(2);
/// The timeout of one early [`wait_answer`] attempt: the resolution of programming times under
/// [`FINE_PROBING_FOR`] (an exchange with a programmed service takes well under it here).
const FINE_PROBE_TIMEOUT: Duration = Duration::from_millis(5);

/// Tries an exchange with `target` from inside `ns` until one succeeds or `deadline`
/// passes; returns when it succeeded.
pub fn wait_answer(
    ns: &NetNs,
    netns_name: &str,
    target: SocketAddrV4,
    deadline: Instant,
) -> Result<Instant> {
    let started = Instant::now();
    ns.run(|| {
        let mut last_error;
        loop {
            // A SYN sent before the target is programmed is lost (the kernel would resend it
            // only after 1 s), so each attempt's timeout is the resolution of the measured
            // time: short attempts for the first seconds, where sub-second programming is
            // told apart, then 100 ms.
            let attempt = if started.elapsed() < FINE_PROBING_FOR {
                FINE_PROBE_TIMEOUT
            } else {
                Duration::from_millis(100)
            };
            match exchange(target, attempt) {
                Ok(_) => return Ok(Instant::now()),
                Err(e) => last_error = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(BenchError::NoAnswer {
                    target: target.to_string(),
                    waited_ms: started.elapsed().as_millis() as u64,
                    last_error,
                });
            }
            std::thread::sleep(Duration::from_millis(1));
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
}
