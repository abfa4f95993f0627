//! `serval lab probe` and `serval lab matrix`: a client run inside a source namespace (a
//! thread that entered it) connects to a pod server, which answers with `NS/POD\n`.

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::Serialize;
use serval_sys::NetNs;

use super::layout::Layout;
use super::pods::{self, PodEndpoint};
use super::state::LabState;
use super::{OutputFormat, Usage};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Lab name (default: the global --lab, else "serval").
    #[arg(long, default_value = "", hide_default_value = true)]
    pub name: String,
    /// NS/POD, `outside`, or a node name (node1, …).
    #[arg(long)]
    pub from: String,
    /// NS/POD or an IP address.
    #[arg(long)]
    pub to: String,
    #[arg(long)]
    pub port: u16,
    #[arg(long, value_enum, default_value_t = Proto::Tcp)]
    pub protocol: Proto,
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// With --to NS/POD in a dual-stack lab: which address (default: the pod's first).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["4", "6"]))]
    pub family: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct MatrixArgs {
    /// Lab name (default: the global --lab, else "serval").
    #[arg(long, default_value = "", hide_default_value = true)]
    pub name: String,
    #[arg(long, default_value_t = 80)]
    pub port: u16,
    #[arg(long, value_enum, default_value_t = Proto::Tcp)]
    pub protocol: Proto,
    /// Per-probe timeout.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// Which address of each pod to probe (default: each pod's first).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["4", "6"]))]
    pub family: Option<String>,
    /// Probes run at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// The outcome of one probe.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    pub from: String,
    pub to: String,
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: Proto,
    pub reached: bool,
    /// The server's answer, without the newline (the pod's `NS/POD`).
    pub reply: Option<String>,
    pub elapsed_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Connects from inside `ns` and reads the answer. Never fails: unreachable is a result.
pub fn probe_in(
    ns: &NetNs,
    ip: IpAddr,
    port: u16,
    proto: Proto,
    timeout: Duration,
) -> (Option<String>, Duration, Option<String>) {
    let start = Instant::now();
    let res = ns.run(move || match proto {
        Proto::Tcp => tcp(SocketAddr::new(ip, port), timeout),
        Proto::Udp => udp(SocketAddr::new(ip, port), timeout),
    });
    let elapsed = start.elapsed();
    match res {
        Ok(Ok(reply)) => (Some(reply), elapsed, None),
        Ok(Err(e)) => (None, elapsed, Some(e.to_string())),
        Err(e) => (None, elapsed, Some(e.to_string())),
    }
}

fn tcp(addr: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let deadline = Instant::now() + timeout;
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer in time",
            ));
        }
        s.set_read_timeout(Some(left))?;
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.contains(&b'\n') || buf.len() > 4096 {
            break;
        }
    }
    answer(buf)
}

fn udp(addr: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("valid")
    } else {
        "[::]:0".parse().expect("valid")
    };
    let s = UdpSocket::bind(bind)?;
    s.connect(addr)?;
    let deadline = Instant::now() + timeout;
    // Datagrams may be lost (neighbour resolution): send up to three times within the timeout.
    let slice = timeout / 3;
    let mut buf = [0u8; 512];
    loop {
        s.send(b"probe\n")?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer in time",
            ));
        }
        s.set_read_timeout(Some(left.min(slice).max(Duration::from_millis(1))))?;
        match s.recv(&mut buf) {
            Ok(n) => return answer(buf[..n].to_vec()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        }
    }
}

fn answer(buf: Vec<u8>) -> std::io::Result<String> {
    let text = String::from_utf8_lossy(&buf).trim_end().to_string();
    if text.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed without an answer",
        ));
    }
    Ok(text)
}

/// The netns name of a probe source or exec target: NS/POD, `outside`, or a node name.
pub fn source_netns(layout: &Layout, st: &LabState, what: &str) -> Result<String, Usage> {
    let name = if let Some((ns, pod)) = what.split_once('/') {
        if ns.is_empty() || pod.is_empty() {
            return Err(Usage(format!("{what:?} is not NS/POD")));
        }
        layout.pod_netns(ns, pod)
    } else if what == "outside" {
        match &st.outside {
            Some(o) => o.netns.clone(),
            None => return Err(Usage(format!("lab {:?} has no outside host", st.name))),
        }
    } else if let Some(n) = st.node(what) {
        n.host.netns.clone()
    } else {
        return Err(Usage(format!(
            "{what:?} is not NS/POD, `outside` or a node of lab {:?}",
            st.name
        )));
    };
    if !NetNs::exists(&name) {
        return Err(Usage(format!(
            "{what} has no network namespace ({name}) in lab {:?}; is the pod created? `serval --lab {} get pods -A -o wide`",
            st.name, st.name
        )));
    }
    Ok(name)
}

fn family_arg(f: &Option<String>) -> Option<u8> {
    f.as_deref().and_then(|s| s.parse().ok())
}

pub async fn run_probe(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    let layout = super::load_layout(&args.name)?;
    let st = LabState::load(&layout).map_err(|e| Usage(format!("{e:#}")))?;
    let from_ns = source_netns(&layout, &st, &args.from)?;
    let family = family_arg(&args.family);
    let ip = match args.to.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => {
            let Some((ns, pod)) = args.to.split_once('/') else {
                return Err(Usage(format!(
                    "--to {:?} is neither NS/POD nor an IP address",
                    args.to
                ))
                .into());
            };
            let client = serval_api::Client::open(&st.datastore_url)
                .await
                .context("opening the lab datastore")?;
            let all = pods::list(&client).await?;
            let p = all
                .iter()
                .find(|p| p.namespace == ns && p.name == pod)
                .ok_or_else(|| Usage(format!("pod {} not found in lab {:?}", args.to, st.name)))?;
            p.ip(family).ok_or_else(|| {
                Usage(format!(
                    "pod {} has no {}address yet (its workload endpoint is missing)",
                    args.to,
                    family.map(|f| format!("IPv{f} ")).unwrap_or_default()
                ))
            })?
        }
    };
    let ns = NetNs::open(&from_ns).with_context(|| format!("opening {from_ns}"))?;
    let (reply, elapsed, error) = probe_in(
        &ns,
        ip,
        args.port,
        args.protocol,
        Duration::from_millis(args.timeout_ms),
    );
    let r = ProbeResult {
        from: args.from.clone(),
        to: args.to.clone(),
        ip,
        port: args.port,
        protocol: args.protocol,
        reached: reply.is_some(),
        reply,
        elapsed_ms: elapsed.as_millis() as u64,
        error,
    };
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&r)?),
        OutputFormat::Text => {
            let proto = format!("{:?}", r.protocol).to_lowercase();
            if r.reached {
                println!(
                    "{} -> {} ({}:{}/{proto}): reached, answered {:?} in {} ms",
                    r.from,
                    r.to,
                    r.ip,
                    r.port,
                    r.reply.as_deref().unwrap_or(""),
                    r.elapsed_ms
                );
            } else {
                println!(
                    "{} -> {} ({}:{}/{proto}): not reached ({}) after {} ms",
                    r.from,
                    r.to,
                    r.ip,
                    r.port,
                    r.error.as_deref().unwrap_or("no answer"),
                    r.elapsed_ms
                );
            }
        }
    }
    Ok(if r.reached {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The matrix as data (`-o json`).
#[derive(Debug, Serialize)]
pub struct Matrix {
    pub lab: String,
    pub port: u16,
    pub protocol: Proto,
    /// `NS/POD` of every pod, the order of rows and columns.
    pub pods: Vec<String>,
    /// `reachable[from][to]`.
    pub reachable: Vec<Vec<bool>>,
    pub results: Vec<ProbeResult>,
}

impl Matrix {
    /// The truth table as the Kubernetes NetworkPolicy e2e tests print it: a header row
    /// `-` + the targets, then one row per source, `.` reached and `X` not, tab-separated.
    pub fn table(&self) -> String {
        let mut out = String::from("-");
        for p in &self.pods {
            out.push('\t');
            out.push_str(p);
        }
        out.push('\n');
        for (i, from) in self.pods.iter().enumerate() {
            out.push_str(from);
            for ok in &self.reachable[i] {
                out.push('\t');
                out.push(if *ok { '.' } else { 'X' });
            }
            out.push('\n');
        }
        out
    }
}

pub async fn run_matrix(args: MatrixArgs) -> anyhow::Result<ExitCode> {
    let layout = super::load_layout(&args.name)?;
    let st = LabState::load(&layout).map_err(|e| Usage(format!("{e:#}")))?;
    let client = serval_api::Client::open(&st.datastore_url)
        .await
        .context("opening the lab datastore")?;
    let all = pods::list(&client).await?;
    let family = family_arg(&args.family);
    let timeout = Duration::from_millis(args.timeout_ms);
    let m = tokio::task::spawn_blocking({
        let layout = layout.clone();
        let (port, proto, conc) = (args.port, args.protocol, args.concurrency.max(1));
        move || matrix(&layout, &all, family, port, proto, timeout, conc)
    })
    .await
    .context("the matrix worker panicked")??;
    let m = Matrix {
        lab: st.name.clone(),
        ..m
    };
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&m)?),
        OutputFormat::Text => {
            let n = m.pods.len();
            let reached = m.reachable.iter().flatten().filter(|b| **b).count();
            let proto = format!("{:?}", m.protocol).to_lowercase();
            println!(
                "Reachability matrix of lab {:?}, port {}/{proto} (rows: from, columns: to; . reached, X not):",
                m.lab, m.port
            );
            print!("{}", m.table());
            println!("{reached}/{} reached", n * n);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Probes every pod from every pod with at most `concurrency` probes in flight.
fn matrix(
    layout: &Layout,
    all: &[PodEndpoint],
    family: Option<u8>,
    port: u16,
    proto: Proto,
    timeout: Duration,
    concurrency: usize,
) -> anyhow::Result<Matrix> {
    let n = all.len();
    // Open each pod's namespace once; a pod without one cannot send.
    let netns: Vec<Option<NetNs>> = all
        .iter()
        .map(|p| NetNs::open(&layout.pod_netns(&p.namespace, &p.name)).ok())
        .collect();
    let jobs: Vec<(usize, usize)> = (0..n).flat_map(|i| (0..n).map(move |j| (i, j))).collect();
    let queue = Mutex::new(jobs.into_iter());
    let results: Mutex<Vec<Option<ProbeResult>>> = Mutex::new(vec![None; n * n]);
    let netns = Arc::new(netns);
    std::thread::scope(|scope| {
        for _ in 0..concurrency.min(n * n).max(1) {
            scope.spawn(|| {
                loop {
                    let Some((i, j)) = queue.lock().unwrap_or_else(|e| e.into_inner()).next()
                    else {
                        break;
                    };
                    let (from, to) = (&all[i], &all[j]);
                    let ip = to.ip(family);
                    let (reply, elapsed, error) = match (&netns[i], ip) {
                        (Some(ns), Some(ip)) => probe_in(ns, ip, port, proto, timeout),
                        (None, _) => (
                            None,
                            Duration::ZERO,
                            Some(format!("{} has no network namespace", from.id())),
                        ),
                        (_, None) => (
                            None,
                            Duration::ZERO,
                            Some(format!("{} has no address", to.id())),
                        ),
                    };
                    let r = ProbeResult {
                        from: from.id(),
                        to: to.id(),
                        ip: ip.unwrap_or(IpAddr::from([0, 0, 0, 0])),
                        port,
                        protocol: proto,
                        reached: reply.is_some(),
                        reply,
                        elapsed_ms: elapsed.as_millis() as u64,
                        error,
                    };
                    results.lock().unwrap_or_else(|e| e.into_inner())[i * n + j] = Some(r);
                }
            });
        }
    });
    let results: Vec<ProbeResult> = results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .flatten()
        .collect();
    let reachable = (0..n)
        .map(|i| (0..n).map(|j| results[i * n + j].reached).collect())
        .collect();
    Ok(Matrix {
        lab: String::new(),
        port,
        protocol: proto,
        pods: all.iter().map(PodEndpoint::id).collect(),
        reachable,
        results,
    })
}
