//! Test-side network helpers that run inside a lab's namespaces from this process: an echo
//! server that answers with the peer's address (to see NAT: who does the outside host, a node
//! or a backend pod think is talking?), and an ICMP echo ("ping") sender (the lab's probe is
//! TCP/UDP only and the host may have no `ping`).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serval_model::types::Protocol;
use serval_sys::NetNs;
use socket2::{Domain, Socket, Type};

/// What an echo server answers: `peer <address>` (IPv4-mapped addresses shown as IPv4).
pub fn echo_answer(peer: IpAddr) -> String {
    format!("peer {}", peer.to_canonical())
}

/// The peer address in an echo server's answer.
pub fn parse_echo(reply: &str) -> Option<IpAddr> {
    reply.strip_prefix("peer ")?.trim().parse().ok()
}

/// A TCP or UDP server in some network namespace answering each connection or datagram with
/// [`echo_answer`]. Stops (and closes its socket) on drop.
#[derive(Debug)]
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// A dual-stack socket on `[::]:port`, or `0.0.0.0:port` without IPv6.
fn bind_any(ty: Type, port: u16) -> io::Result<Socket> {
    let v6 = (|| {
        let s = Socket::new(Domain::IPV6, ty, None)?;
        s.set_only_v6(false)?;
        s.set_reuse_address(true)?;
        s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
        Ok::<_, io::Error>(s)
    })();
    match v6 {
        Ok(s) => Ok(s),
        Err(_) => {
            let s = Socket::new(Domain::IPV4, ty, None)?;
            s.set_reuse_address(true)?;
            s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
            Ok(s)
        }
    }
}

impl EchoServer {
    /// Binds inside netns `netns` (the socket stays there) and serves on a thread.
    pub fn start(netns: &str, protocol: Protocol, port: u16) -> anyhow::Result<EchoServer> {
        let ns = NetNs::open(netns)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = match protocol {
            Protocol::Tcp => {
                let l: TcpListener = ns.run(|| -> io::Result<TcpListener> {
                    let s = bind_any(Type::STREAM, port)?;
                    s.listen(64)?;
                    s.set_nonblocking(true)?;
                    Ok(s.into())
                })??;
                let stop = stop.clone();
                std::thread::spawn(move || serve_tcp(l, &stop))
            }
            Protocol::Udp => {
                let u: UdpSocket = ns.run(|| -> io::Result<UdpSocket> {
                    let s = bind_any(Type::DGRAM, port)?;
                    s.set_read_timeout(Some(Duration::from_millis(50)))?;
                    Ok(s.into())
                })??;
                let stop = stop.clone();
                std::thread::spawn(move || serve_udp(u, &stop))
            }
            Protocol::Sctp => anyhow::bail!("no SCTP echo server: this kernel has no SCTP sockets"),
        };
        Ok(EchoServer {
            stop,
            thread: Some(thread),
        })
    }
}

fn serve_tcp(l: TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((mut s, peer)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.write_all(format!("{}\n", echo_answer(peer.ip())).as_bytes());
                let _ = s.shutdown(std::net::Shutdown::Write);
                // Drain what the client sent so closing does not reset the connection.
                let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                let mut buf = [0u8; 256];
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn serve_udp(u: UdpSocket, stop: &AtomicBool) {
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((_, peer)) = u.recv_from(&mut buf) {
            let _ = u.send_to(format!("{}\n", echo_answer(peer.ip())).as_bytes(), peer);
        }
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

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends ICMP (or ICMPv6) echo requests from inside netns `netns` to `dst` (three, spread
/// over `timeout`) and tells whether an echo reply came back in time.
pub fn ping(netns: &str, dst: IpAddr, timeout: Duration) -> anyhow::Result<bool> {
    static SEQ: AtomicU16 = AtomicU16::new(1);
    let ns = NetNs::open(netns)?;
    let id = (std::process::id() as u16) ^ SEQ.fetch_add(1, Ordering::Relaxed).rotate_left(8);
    let sock = ns.run(move || -> io::Result<Socket> {
        let s = match dst {
            IpAddr::V4(_) => Socket::new(Domain::IPV4, Type::RAW, Some(socket2::Protocol::ICMPV4))?,
            IpAddr::V6(_) => Socket::new(Domain::IPV6, Type::RAW, Some(socket2::Protocol::ICMPV6))?,
        };
        // A connected raw socket only receives from `dst`.
        s.connect(&SocketAddr::new(dst, 0).into())?;
        Ok(s)
    })??;
    let (req, rep) = if dst.is_ipv4() {
        (8u8, 0u8)
    } else {
        (128, 129)
    };
    let deadline = Instant::now() + timeout;
    let slice = timeout / 3;
    for seq in 1u16.. {
        let mut pkt = vec![req, 0, 0, 0];
        pkt.extend_from_slice(&id.to_be_bytes());
        pkt.extend_from_slice(&seq.to_be_bytes());
        pkt.extend_from_slice(b"serval-conformance");
        if dst.is_ipv4() {
            let c = checksum(&pkt);
            pkt[2..4].copy_from_slice(&c.to_be_bytes());
        } // ICMPv6: the kernel fills in the checksum (it covers a pseudo-header).
        (&sock).write_all(&pkt)?;
        let round = Instant::now() + slice;
        loop {
            let now = Instant::now();
            let until = round.min(deadline);
            if now >= until {
                break;
            }
            sock.set_read_timeout(Some(until - now))?;
            let mut buf = [0u8; 1500];
            let n = match (&sock).read(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(e) => return Err(e.into()),
            };
            // IPv4 raw sockets deliver the IP header too; IPv6 ones do not.
            let icmp = if dst.is_ipv4() {
                let ihl = usize::from(buf[0] & 0x0f) * 4;
                &buf[ihl.min(n)..n]
            } else {
                &buf[..n]
            };
            if icmp.len() >= 8 && icmp[0] == rep && icmp[4..6] == id.to_be_bytes() {
                return Ok(true);
            }
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    Ok(false)
}
