//! Shared helpers for the privileged integration tests.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    thread,
    time::Duration,
};

use anyhow::{Context, bail};
use serval_sys::NetNs;

/// Binds a TCP listener on `ip` (any port) inside `server`, answers one connection with
/// `pong` after reading `ping`, and returns the bound address. The socket is created on a
/// thread inside the namespace; accepting can happen anywhere since the socket stays there.
pub fn serve_once(
    server: &NetNs,
    ip: IpAddr,
) -> anyhow::Result<(SocketAddr, thread::JoinHandle<anyhow::Result<()>>)> {
    let listener = server
        .run(move || TcpListener::bind(SocketAddr::new(ip, 0)))?
        .with_context(|| format!("binding {ip} in {:?}", server.name()))?;
    let addr = listener.local_addr()?;
    let handle = thread::spawn(move || -> anyhow::Result<()> {
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf)?;
        if &buf != b"ping" {
            bail!("server got {buf:?}");
        }
        conn.write_all(b"pong")?;
        Ok(())
    });
    Ok((addr, handle))
}

/// Connects from inside `client` to `addr`, retrying for a few seconds while links and
/// neighbours come up (readiness, not timing), sends `ping` and expects `pong`.
pub fn ping_pong(client: &NetNs, addr: SocketAddr) -> anyhow::Result<()> {
    client.run(move || -> anyhow::Result<()> {
        let mut last = None;
        for _ in 0..50 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(mut conn) => {
                    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
                    conn.write_all(b"ping")?;
                    let mut buf = [0u8; 4];
                    conn.read_exact(&mut buf)?;
                    if &buf != b"pong" {
                        bail!("client got {buf:?}");
                    }
                    return Ok(());
                }
                Err(err) => {
                    last = Some(err);
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
        Err(last
            .map(anyhow::Error::from)
            .unwrap_or_else(|| anyhow::anyhow!("no attempt")))
        .with_context(|| format!("connecting to {addr}"))
    })?
}

/// A full TCP exchange from `client` to a listener on `ip` in `server`.
pub fn tcp_check(client: &NetNs, server: &NetNs, ip: IpAddr) -> anyhow::Result<()> {
    let (addr, handle) = serve_once(server, ip)?;
    ping_pong(client, addr)?;
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    Ok(())
}

pub fn net(s: &str) -> ipnet::IpNet {
    s.parse().expect("test CIDR")
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

/// True when a TCP connection from `client` to a listener on `ip` in `server` cannot be set
/// up (one attempt, `timeout_ms` to give up; a listener completes handshakes on its own).
pub fn tcp_blocked(
    client: &NetNs,
    server: &NetNs,
    ip: IpAddr,
    timeout_ms: u64,
) -> anyhow::Result<bool> {
    let listener = server
        .run(move || TcpListener::bind(SocketAddr::new(ip, 0)))?
        .with_context(|| format!("binding {ip}"))?;
    let addr = listener.local_addr()?;
    let attempt =
        client.run(move || TcpStream::connect_timeout(&addr, Duration::from_millis(timeout_ms)))?;
    drop(listener);
    Ok(attempt.is_err())
}
