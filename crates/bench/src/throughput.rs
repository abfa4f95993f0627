//! Throughput (iperf3, one stream) and request rate (1-byte request/response on one
//! connection), pod to pod on one node and across nodes, and the agent's memory.

use std::process::Stdio;
use std::time::Duration;

use crate::baseline::command_in;
use crate::error::{BenchError, Result};
use crate::lab::{Pod, run_command};
use crate::results::{MemoryPoint, ThroughputPoint};

/// The port iperf3 listens on in the server pods.
pub const IPERF_PORT: u16 = 5201;

/// One iperf3 run (`-t seconds`, one stream) from `client` to `server`.
pub fn iperf3(
    column: &str,
    path: &str,
    client: &Pod,
    server: &Pod,
    seconds: u64,
) -> Result<ThroughputPoint> {
    let ip = server.ip.to_string();
    let port = IPERF_PORT.to_string();
    let mut srv = command_in(&server.netns, "iperf3")
        .args(["-s", "-1", "-B", &ip, "-p", &port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| BenchError::Spawn {
            command: "iperf3 -s".into(),
            source,
        })?;
    // The server needs a moment to listen; a refused client does not use up its one session.
    let mut result = Err(BenchError::NoAnswer {
        target: format!("iperf3 server {ip}:{port}"),
        waited_ms: 0,
        last_error: "no attempt made".into(),
    });
    // `iperf3 -c -J` may exit 0 with an "error" in its JSON (e.g. "Connection refused"
    // before the server listens): only a parsed result ends the retries.
    for _ in 0..50 {
        result = run_command(command_in(&client.netns, "iperf3").args([
            "-c",
            &ip,
            "-p",
            &port,
            "-t",
            &seconds.max(1).to_string(),
            "-J",
        ]))
        .and_then(|json| parse_iperf3(column, path, &json));
        if result.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = srv.kill();
    let _ = srv.wait();
    result
}

/// The receiver's rate and the sender's retransmits from `iperf3 -J` output.
pub fn parse_iperf3(column: &str, path: &str, json: &str) -> Result<ThroughputPoint> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|source| BenchError::Json {
        path: "iperf3 -J output".into(),
        source,
    })?;
    let received = &v["end"]["sum_received"];
    let bps = received["bits_per_second"]
        .as_f64()
        .ok_or_else(|| BenchError::CommandFailed {
            command: "iperf3 -c".into(),
            status: "no end.sum_received.bits_per_second".into(),
            stderr: v["error"].as_str().unwrap_or_default().to_string(),
        })?;
    Ok(ThroughputPoint {
        dataplane: column.to_string(),
        path: path.to_string(),
        seconds: received["seconds"].as_f64().unwrap_or(0.0),
        bits_per_second: bps,
        retransmits: v["end"]["sum_sent"]["retransmits"].as_u64(),
        rounds: Vec::new(),
    })
}

/// Resident memory of a process (`VmRSS` in /proc/PID/status, KiB).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_kib_field(&status, "VmRSS:")
}

fn parse_kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The BPF maps a process holds open: (count, sum of their `memlock` bytes), from
/// /proc/PID/fd and /proc/PID/fdinfo.
pub fn bpf_map_memory(pid: u32) -> (usize, u64) {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return (0, 0);
    };
    let mut count = 0;
    let mut bytes = 0;
    for fd in fds.flatten() {
        let is_map = std::fs::read_link(fd.path())
            .is_ok_and(|t| t.to_string_lossy() == "anon_inode:bpf-map");
        if !is_map {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        count += 1;
        bytes += memlock(&info).unwrap_or(0);
    }
    (count, bytes)
}

fn memlock(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))?
        .trim()
        .parse()
        .ok()
}

/// The memory of a lab's node1 agent. `no_maps` says why there may be no BPF maps (the
/// lab's dataplane), shown when the agent holds none.
pub fn agent_memory(column: &str, state: &str, pid: Option<u32>, no_maps: &str) -> MemoryPoint {
    let Some(pid) = pid else {
        return MemoryPoint {
            dataplane: column.to_string(),
            state: state.to_string(),
            agent_rss_kib: None,
            bpf_map_bytes: None,
            bpf_maps: 0,
            note: Some("no agent pid file for node1".into()),
        };
    };
    let (maps, bytes) = bpf_map_memory(pid);
    MemoryPoint {
        dataplane: column.to_string(),
        state: state.to_string(),
        agent_rss_kib: rss_kib(pid),
        bpf_map_bytes: (maps > 0).then_some(bytes),
        bpf_maps: maps,
        note: (maps == 0).then(|| {
            format!("BPF map memory not available: the agent holds no BPF maps ({no_maps})")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf3_json() {
        let json = r#"{"start":{},"end":{"sum_sent":{"seconds":1.0,"bits_per_second":2.5e10,"retransmits":3},
            "sum_received":{"seconds":1.0002,"bits_per_second":2.4e10}}}"#;
        let p = parse_iperf3("direct", "same-node", json).expect("parsed");
        assert_eq!(p.bits_per_second, 2.4e10);
        assert_eq!(p.retransmits, Some(3));
        let err = parse_iperf3("direct", "same-node", r#"{"error":"unable to connect"}"#)
            .expect_err("no result");
        assert!(err.to_string().contains("unable to connect"));
    }

    #[test]
    fn proc_fields() {
        assert_eq!(
            parse_kib_field("Name:\tserval\nVmRSS:\t   12345 kB\n", "VmRSS:"),
            Some(12345)
        );
        assert_eq!(
            memlock("pos:\t0\nflags:\t02000002\nmap_type:\t1\nmemlock:\t73728\n"),
            Some(73728)
        );
        assert_eq!(memlock("pos:\t0\n"), None);
    }

    #[test]
    fn own_memory_is_readable() {
        let me = std::process::id();
        assert!(rss_kib(me).is_some_and(|k| k > 0));
        let m = agent_memory("x", "test", Some(me), "a test process");
        assert_eq!(m.bpf_maps, 0);
        assert!(m.note.is_some());
    }
}
