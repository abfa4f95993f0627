//! `serval pod-server`: the small server the lab runs inside every pod. It listens on each
//! given TCP and UDP port on every address of the pod (IPv4 and IPv6: one dual-stack socket on
//! `[::]` with `IPV6_V6ONLY` off, or `0.0.0.0` when the namespace has no IPv6) and answers each
//! TCP connection and each UDP datagram with the pod's name, `NS/POD\n` (TCP then closes).
//!
//! Plain std threads: one per listening socket, one short-lived one per TCP connection.

use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

/// What `serval pod-server` serves.
#[derive(Debug, Clone, Default)]
pub struct PodServerConfig {
    /// `NS/POD`: the answer (a newline is appended).
    pub name: String,
    pub tcp_ports: Vec<u16>,
    pub udp_ports: Vec<u16>,
    /// Created (empty) once every socket is bound, so a runtime knows the pod is serving.
    pub ready_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum PodServerError {
    #[error(
        "pod server {name}: binding {protocol} port {port} on [::] and 0.0.0.0: {source}; is the port taken?"
    )]
    Bind {
        name: String,
        protocol: &'static str,
        port: u16,
        #[source]
        source: io::Error,
    },
    #[error("pod server {name}: writing ready file {path}: {source}")]
    ReadyFile {
        name: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pod server {name}: starting a listener thread: {source}")]
    Thread {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// The bound sockets of a pod server, before serving.
#[derive(Debug)]
pub struct PodServer {
    name: String,
    tcp: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
}

/// A socket of `ty` on `[::]:port` accepting IPv4 too, or on `0.0.0.0:port` when IPv6 is
/// unavailable (no IPv6 in the kernel, or `disable_ipv6` set in the namespace).
fn bind_any(ty: Type, protocol: Protocol, port: u16) -> io::Result<Socket> {
    let v6 = (|| {
        let s = Socket::new(Domain::IPV6, ty, Some(protocol))?;
        s.set_only_v6(false)?;
        s.set_reuse_address(true)?;
        s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
        Ok::<_, io::Error>(s)
    })();
    match v6 {
        Ok(s) => Ok(s),
        Err(e) => {
            tracing::debug!(port, error = %e, "no dual-stack socket; falling back to IPv4 only");
            let s = Socket::new(Domain::IPV4, ty, Some(protocol))?;
            s.set_reuse_address(true)?;
            s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
            Ok(s)
        }
    }
}

impl PodServer {
    /// Binds every port (port 0 picks a free one; see [`PodServer::local_addrs`]).
    pub fn bind(config: &PodServerConfig) -> Result<PodServer, PodServerError> {
        let err = |protocol, port| {
            let name = config.name.clone();
            move |source| PodServerError::Bind {
                name,
                protocol,
                port,
                source,
            }
        };
        let mut tcp = Vec::new();
        for &port in &config.tcp_ports {
            let s = bind_any(Type::STREAM, Protocol::TCP, port).map_err(err("TCP", port))?;
            s.listen(128).map_err(err("TCP", port))?;
            tcp.push(TcpListener::from(s));
        }
        let mut udp = Vec::new();
        for &port in &config.udp_ports {
            let s = bind_any(Type::DGRAM, Protocol::UDP, port).map_err(err("UDP", port))?;
            udp.push(UdpSocket::from(s));
        }
        Ok(PodServer {
            name: config.name.clone(),
            tcp,
            udp,
        })
    }

    /// The bound TCP and UDP addresses.
    pub fn local_addrs(&self) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
        (
            self.tcp
                .iter()
                .filter_map(|l| l.local_addr().ok())
                .collect(),
            self.udp
                .iter()
                .filter_map(|s| s.local_addr().ok())
                .collect(),
        )
    }

    /// Serves forever (until the process is killed) on background threads; returns once they
    /// are started.
    pub fn start(self) -> Result<(), PodServerError> {
        let answer: std::sync::Arc<[u8]> = format!("{}\n", self.name).into_bytes().into();
        let thread_err = |source| PodServerError::Thread {
            name: self.name.clone(),
            source,
        };
        for listener in self.tcp {
            let answer = answer.clone();
            thread::Builder::new()
                .name("pod-tcp".into())
                .spawn(move || serve_tcp(listener, answer))
                .map_err(thread_err)?;
        }
        for socket in self.udp {
            let answer = answer.clone();
            thread::Builder::new()
                .name("pod-udp".into())
                .spawn(move || serve_udp(socket, answer))
                .map_err(thread_err)?;
        }
        Ok(())
    }
}

fn serve_tcp(listener: TcpListener, answer: std::sync::Arc<[u8]>) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                let answer = answer.clone();
                // A slow peer must not hold up the next one.
                let spawned = thread::Builder::new()
                    .name("pod-conn".into())
                    .spawn(move || {
                        if let Err(e) = answer_tcp(stream, &answer) {
                            tracing::debug!(%peer, error = %e, "answering TCP connection");
                        }
                    });
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "cannot start a connection thread");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn answer_tcp(mut stream: TcpStream, answer: &[u8]) -> io::Result<()> {
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(answer)?;
    stream.shutdown(std::net::Shutdown::Write)?;
    // Drain whatever the peer sent until it closes: closing with unread data would send a
    // reset, which can make the peer lose the answer.
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut sink = [0u8; 1024];
    while matches!(io::Read::read(&mut stream, &mut sink), Ok(n) if n > 0) {}
    Ok(())
}

fn serve_udp(socket: UdpSocket, answer: std::sync::Arc<[u8]>) {
    let mut buf = [0u8; 2048];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((_, peer)) => {
                if let Err(e) = socket.send_to(&answer, peer) {
                    tracing::debug!(%peer, error = %e, "answering UDP datagram");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "UDP receive failed");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// `serval pod-server`: binds every port, writes the ready file, and serves until killed.
pub fn run(config: PodServerConfig) -> Result<(), PodServerError> {
    let server = PodServer::bind(&config)?;
    let (tcp, udp) = server.local_addrs();
    server.start()?;
    if let Some(path) = &config.ready_file {
        std::fs::write(path, b"").map_err(|source| PodServerError::ReadyFile {
            name: config.name.clone(),
            path: path.clone(),
            source,
        })?;
    }
    tracing::info!(name = %config.name, ?tcp, ?udp, "pod server listening");
    loop {
        thread::park();
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn answer_tcp_from(addr: SocketAddr) -> String {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // A client that talks first still gets the whole answer.
        s.write_all(b"hello\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    fn answer_udp_from(addr: SocketAddr) -> String {
        let local: SocketAddr = if addr.is_ipv4() {
            "127.0.0.1:0"
        } else {
            "[::1]:0"
        }
        .parse()
        .unwrap();
        let s = UdpSocket::bind(local).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.send_to(b"hi", addr).unwrap();
        let mut buf = [0u8; 256];
        let (n, _) = s.recv_from(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn answers_tcp_and_udp_over_ipv4_and_ipv6() {
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("ready");
        let config = PodServerConfig {
            name: "default/web".into(),
            tcp_ports: vec![0],
            udp_ports: vec![0],
            ready_file: Some(ready.clone()),
        };
        let server = PodServer::bind(&config).unwrap();
        let (tcp, udp) = server.local_addrs();
        server.start().unwrap();
        let (tport, uport) = (tcp[0].port(), udp[0].port());
        let v6 = tcp[0].is_ipv6();
        for host in if v6 {
            vec!["127.0.0.1", "::1"]
        } else {
            vec!["127.0.0.1"]
        } {
            let ip: std::net::IpAddr = host.parse().unwrap();
            assert_eq!(
                answer_tcp_from(SocketAddr::new(ip, tport)),
                "default/web\n",
                "TCP {host}"
            );
            assert_eq!(
                answer_tcp_from(SocketAddr::new(ip, tport)),
                "default/web\n",
                "second TCP {host}"
            );
            assert_eq!(
                answer_udp_from(SocketAddr::new(ip, uport)),
                "default/web\n",
                "UDP {host}"
            );
        }
        assert!(!ready.exists(), "only run() writes the ready file");
    }

    #[test]
    fn a_taken_port_is_a_bind_error_naming_the_port() {
        let taken = TcpListener::bind("[::]:0")
            .or_else(|_| TcpListener::bind("0.0.0.0:0"))
            .unwrap();
        let port = taken.local_addr().unwrap().port();
        // Without SO_REUSEPORT a second listener on the same port fails.
        let err = PodServer::bind(&PodServerConfig {
            name: "ns/p".into(),
            tcp_ports: vec![port],
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            matches!(err, PodServerError::Bind { port: p, protocol: "TCP", .. } if p == port),
            "{err}"
        );
        assert!(err.to_string().contains(&port.to_string()));
    }
}
