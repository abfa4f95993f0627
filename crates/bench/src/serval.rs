//! The Serval columns: the same measurements through Serval itself — Services and
//! NetworkPolicies applied to a lab with `serval apply`, programmed by the lab's agents.
//!
//! Each column first checks that its dataplane really does the job in this lab (a Service
//! answers at its cluster IP; a deny-all policy blocks the client). When it does not, the
//! column is reported as "not available" with that reason, never estimated.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::kubeproxy;
use crate::lab::Lab;
use crate::net;
use crate::progress::{Progress, human_us};
use crate::results::{LatencyPoint, MemoryPoint, PolicyPoint, ProgrammingPoint};
use crate::stats::Summary;

/// How long a freshly applied Service (or policy) may take to take effect in the
/// availability check. Generous: the agent may still be working through an earlier change
/// (e.g. removing 10,000 services), and the check ends as soon as the effect is seen.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// The cluster IP of the availability probe (outside the range the measured services use).
const PROBE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 200);

/// YAML for Services `default/<name>` with cluster IP, port 80 → the echo port of the pod
/// labelled `bench-role: backend`.
pub fn services_yaml(items: &[(String, Ipv4Addr)]) -> String {
    let mut y = String::with_capacity(items.len() * 260);
    for (name, ip) in items {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  \
             clusterIP: {ip}\n  selector:\n    bench-role: backend\n  ports:\n    - name: p80\n      \
             protocol: TCP\n      port: 80\n      targetPort: {}\n",
            net::ECHO_PORT
        );
    }
    y
}

/// YAML for `n` NetworkPolicies selecting the backend pod, each allowing ingress on the echo
/// port from pods labelled `bench-peer: p<i>`, except the last, which allows the client.
/// `offset` numbers them (for "one more" at N).
pub fn policies_yaml(n: usize, offset: usize, last_allows_client: bool) -> String {
    let mut y = String::with_capacity(n * 400);
    for i in offset..offset + n {
        let from = if last_allows_client && i + 1 == offset + n {
            "app: bench-client".to_string()
        } else {
            format!("bench-peer: p{i}")
        };
        let _ = write!(
            y,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: bench-pol-{i}\n  \
             namespace: default\nspec:\n  podSelector:\n    matchLabels:\n      bench-role: backend\n  \
             policyTypes:\n    - Ingress\n  ingress:\n    - from:\n        - podSelector:\n            \
             matchLabels:\n              {from}\n      ports:\n        - protocol: TCP\n          port: {}\n",
            net::ECHO_PORT
        );
    }
    y
}

/// YAML for the NetworkPolicy of the Serval throughput columns: both server pods (label
/// `app: bench-server`) selected, all ingress from the client allowed.
pub fn throughput_policy_yaml() -> String {
    "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: bench-throughput\n  \
     namespace: default\nspec:\n  podSelector:\n    matchLabels:\n      app: bench-server\n  \
     policyTypes:\n    - Ingress\n  ingress:\n    - from:\n        - podSelector:\n            \
     matchLabels:\n              app: bench-client\n"
        .to_string()
}

/// The agent's own word first: when it reports its dataplane unavailable or failing, that is
/// the reason (no probe needed, and the reason is the real one).
fn agent_says(lab: &Lab) -> std::result::Result<(), String> {
    match lab.agent_dataplane("node1").and_then(|a| a.not_working()) {
        Some(reason) => Err(reason),
        None => Ok(()),
    }
}

/// Whether this lab's agents program Services: applies one and waits for it to answer.
/// `Err` is the reason the column is not available.
pub fn check_services(lab: &Lab) -> std::result::Result<(), String> {
    agent_says(lab)?;
    // The probe needs the backend to listen: start an echo server unless the caller runs one.
    let _echo = match net::EchoServer::start(
        &lab.server.netns,
        &lab.server.netns_name,
        SocketAddrV4::new(lab.server.ip, net::ECHO_PORT),
    ) {
        Ok(echo) => Some(echo),
        Err(crate::error::BenchError::Socket { source, .. })
            if source.kind() == std::io::ErrorKind::AddrInUse =>
        {
            None
        }
        Err(e) => return Err(format!("starting the probe's echo server: {e}")),
    };
    let yaml = services_yaml(&[("bench-probe".into(), PROBE_IP)]);
    lab.apply("probe-service", &yaml)
        .map_err(|e| format!("applying a probe Service failed: {e}"))?;
    let target = SocketAddrV4::new(PROBE_IP, 80);
    let answered = net::wait_answer(
        &lab.client.netns,
        &lab.client.netns_name,
        target,
        Instant::now() + PROBE_TIMEOUT,
    );
    let _ = lab.delete("probe-service");
    match answered {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "a Service applied to a `--dataplane {}` lab did not answer at its cluster IP within {} s ({e}): \
             the agent does not program Services with this dataplane yet",
            lab.dataplane,
            PROBE_TIMEOUT.as_secs()
        )),
    }
}

/// Whether this lab's agents enforce NetworkPolicy: a policy allowing nobody must block the
/// client within [`PROBE_TIMEOUT`]. `Err` is the reason the column is not available.
pub fn check_policy(lab: &Lab) -> std::result::Result<(), String> {
    agent_says(lab)?;
    let backend = SocketAddrV4::new(lab.server.ip, net::ECHO_PORT);
    let yaml = policies_yaml(1, 0, false);
    lab.apply("probe-policy", &yaml)
        .map_err(|e| format!("applying a probe NetworkPolicy failed: {e}"))?;
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let mut blocked = false;
    while Instant::now() < deadline {
        match net::answers(
            &lab.client.netns,
            &lab.client.netns_name,
            backend,
            Duration::from_millis(200),
        ) {
            Ok(false) => {
                blocked = true;
                break;
            }
            Ok(true) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("probing the server pod: {e}")),
        }
    }
    let _ = lab.delete("probe-policy");
    if blocked {
        Ok(())
    } else {
        Err(format!(
            "a NetworkPolicy allowing nobody into the server pod was not enforced within {} s in a \
             `--dataplane {}` lab: the agent does not enforce policy with this dataplane yet",
            PROBE_TIMEOUT.as_secs(),
            lab.dataplane
        ))
    }
}

/// Waits until `target` no longer answers the client (its service was removed from the
/// dataplane, or a policy blocks it), up to [`crate::baseline::ANSWER_TIMEOUT`].
fn wait_gone(lab: &Lab, target: SocketAddrV4) -> Result<()> {
    let start = Instant::now();
    loop {
        let up = net::answers(
            &lab.client.netns,
            &lab.client.netns_name,
            target,
            Duration::from_millis(200),
        )?;
        if !up {
            return Ok(());
        }
        if start.elapsed() > crate::baseline::ANSWER_TIMEOUT {
            return Err(crate::error::BenchError::StillAnswering {
                target: target.to_string(),
                waited_ms: start.elapsed().as_millis() as u64,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Services through Serval at one N: apply N, wait for the last, latency, one more, the
/// agent's memory (when `memory`), delete.
#[expect(
    clippy::too_many_arguments,
    reason = "one measurement's knobs, all needed"
)]
pub fn measure_services(
    lab: &Lab,
    column: &str,
    n: usize,
    samples: usize,
    warmup: usize,
    add_one: bool,
    memory: bool,
    direct: Option<&crate::paired::Endpoint>,
    progress: &Progress,
) -> Result<(Option<LatencyPoint>, ProgrammingPoint, Option<MemoryPoint>)> {
    let items: Vec<(String, Ipv4Addr)> = (0..n)
        .map(|i| (format!("svc-{i}"), kubeproxy::service_ip(i)))
        .collect();
    let yaml = services_yaml(&items);
    let last = SocketAddrV4::new(kubeproxy::service_ip(n - 1), 80);
    progress.line(&format!("{column} N={n}: applying {n} Services"));
    let applied = lab.apply_timed("services", &yaml)?;
    let start = applied.started;
    let load_took = applied.exited - start;
    // The datastore write ends when `serval apply` reports its committed outcome (its exit
    // if it printed nothing).
    let written = applied.reported.unwrap_or(applied.exited);
    let write_took = written - start;
    let answered = net::wait_answer(
        &lab.client.netns,
        &lab.client.netns_name,
        last,
        start + crate::baseline::ANSWER_TIMEOUT,
    );
    let answered = match answered {
        Ok(a) => a,
        Err(e) => {
            let _ = lab.delete("services");
            return Err(e);
        }
    };
    let answer_took = answered - start;
    let dataplane_took = answered.saturating_duration_since(written);
    progress.line(&format!(
        "{column} N={n}: applied in {} (written in {}), last service answered after {} ({} after the write)",
        human_us(load_took.as_secs_f64() * 1e6),
        human_us(write_took.as_secs_f64() * 1e6),
        human_us(answer_took.as_secs_f64() * 1e6),
        human_us(dataplane_took.as_secs_f64() * 1e6)
    ));
    let latency = if samples > 0 {
        let at = crate::paired::Endpoint::new(&lab.client, last)?;
        Some(crate::paired::measure_point(
            column, n, &at, direct, samples, warmup, progress,
        )?)
    } else {
        None
    };
    let (mut add_load, mut add_answer, mut add_write, mut add_dataplane) = (None, None, None, None);
    if add_one {
        // "When N exist": once the agents are done with the N (see `Lab::wait_agents_idle`).
        let waited = lab.wait_agents_idle();
        progress.line(&format!(
            "{column} N={n}: agents idle after {}",
            human_us(waited.as_secs_f64() * 1e6)
        ));
        let extra = services_yaml(&[(format!("svc-{n}"), kubeproxy::service_ip(n))]);
        let applied = lab.apply_timed("services-extra", &extra)?;
        let start = applied.started;
        let written = applied.reported.unwrap_or(applied.exited);
        add_load = Some((applied.exited - start).as_secs_f64() * 1e3);
        add_write = Some((written - start).as_secs_f64() * 1e3);
        let answered = net::wait_answer(
            &lab.client.netns,
            &lab.client.netns_name,
            SocketAddrV4::new(kubeproxy::service_ip(n), 80),
            start + crate::baseline::ANSWER_TIMEOUT,
        )?;
        add_answer = Some((answered - start).as_secs_f64() * 1e3);
        let dataplane = answered.saturating_duration_since(written);
        add_dataplane = Some(dataplane.as_secs_f64() * 1e3);
        progress.line(&format!(
            "{column} N={n}: one more service answered after {} ({} after the write)",
            human_us((answered - start).as_secs_f64() * 1e6),
            human_us(dataplane.as_secs_f64() * 1e6)
        ));
    }
    // The agent's memory while the services are programmed.
    let memory = memory.then(|| {
        crate::throughput::agent_memory(
            &format!("{column} lab ({})", lab.name),
            &format!("{} Services programmed", if add_one { n + 1 } else { n }),
            lab.agent_pid("node1"),
            &lab.no_bpf_maps_reason(),
        )
    });
    let start = Instant::now();
    if add_one {
        lab.delete("services-extra")?;
    }
    lab.delete("services")?;
    // Until the last service is gone from the dataplane: the next measurement starts from a
    // settled agent, not one still removing these.
    wait_gone(lab, last)?;
    let cleanup_ms = start.elapsed().as_secs_f64() * 1e3;
    Ok((
        latency,
        ProgrammingPoint {
            dataplane: column.to_string(),
            n,
            load_ms: load_took.as_secs_f64() * 1e3,
            answer_ms: answer_took.as_secs_f64() * 1e3,
            add_one_load_ms: add_load,
            add_one_answer_ms: add_answer,
            cleanup_ms: Some(cleanup_ms),
            input_bytes: yaml.len(),
            datastore_write_ms: Some(write_took.as_secs_f64() * 1e3),
            dataplane_ms: Some(dataplane_took.as_secs_f64() * 1e3),
            add_one_datastore_write_ms: add_write,
            add_one_dataplane_ms: add_dataplane,
        },
        memory,
    ))
}

/// Policy scale at one N: the N−1 policies that do not allow the client, until it is blocked;
/// the one allowing it, until it answers again (the time for one more policy at N); the
/// allowed client's latency; then everything removed, until the client answers with no policy.
pub fn measure_policies(
    lab: &Lab,
    column: &str,
    n: usize,
    samples: usize,
    warmup: usize,
    progress: &Progress,
) -> Result<PolicyPoint> {
    let backend = SocketAddrV4::new(lab.server.ip, net::ECHO_PORT);
    let mut base_ms = None;
    if n > 1 {
        progress.line(&format!(
            "{column} policies N={n}: applying {} that do not allow the client",
            n - 1
        ));
        let start = Instant::now();
        lab.apply("policies-base", &policies_yaml(n - 1, 0, false))?;
        if let Err(e) = wait_gone(lab, backend) {
            let _ = lab.delete("policies-base");
            return Err(e);
        }
        base_ms = Some(start.elapsed().as_secs_f64() * 1e3);
        // One more "at N−1": once the agents are done with those (`Lab::wait_agents_idle`).
        let waited = lab.wait_agents_idle();
        progress.line(&format!(
            "{column} policies N={n}: agents idle after {}",
            human_us(waited.as_secs_f64() * 1e6)
        ));
    }
    let start = Instant::now();
    lab.apply("policies-last", &policies_yaml(1, n - 1, true))?;
    let apply_ms = start.elapsed().as_secs_f64() * 1e3;
    let ready = net::wait_answer(
        &lab.client.netns,
        &lab.client.netns_name,
        backend,
        start + crate::baseline::ANSWER_TIMEOUT,
    );
    let answered = match ready {
        Ok(at) => at,
        Err(e) => {
            let _ = lab.delete("policies-last");
            if n > 1 {
                let _ = lab.delete("policies-base");
            }
            return Err(e);
        }
    };
    let (apply_one_ms, one_more_in_force) = if n > 1 {
        ((answered - start).as_secs_f64() * 1e3, true)
    } else {
        (apply_ms, false)
    };
    progress.line(&format!(
        "{column} policies N={n}: the allowing policy in force after {}",
        human_us(apply_one_ms * 1e3)
    ));
    let report = |done: usize| progress.line(&format!("{column} policies N={n}: {done}/{samples}"));
    let run = net::latency(
        &lab.client.netns,
        &lab.client.netns_name,
        backend,
        samples,
        warmup,
        &report,
    )?;
    let summary = Summary::of(&run.samples_us);
    if let Some(s) = &summary {
        progress.line(&format!(
            "{column} policies N={n}: latency p50 {} p99 {}",
            human_us(s.p50),
            human_us(s.p99)
        ));
    }
    // Removal in two steps, each until seen, so the next N starts from a settled agent: the
    // allowing policy (the client is blocked again), then the rest (it answers again).
    lab.delete("policies-last")?;
    if n > 1 {
        wait_gone(lab, backend)?;
        lab.delete("policies-base")?;
        net::wait_answer(
            &lab.client.netns,
            &lab.client.netns_name,
            backend,
            Instant::now() + crate::baseline::ANSWER_TIMEOUT,
        )?;
    }
    Ok(PolicyPoint {
        dataplane: column.to_string(),
        n,
        summary,
        apply_one_ms: Some(apply_one_ms),
        one_more_in_force,
        base_ms,
        failures: run.failures,
        last_error: run.last_error,
        samples_us: run.samples_us,
    })
}

/// The agent's memory with `n` Services and `policies` NetworkPolicies programmed at once
/// (issue 7's memory target: 50,000 services + 10,000 policies). Every step is observed from
/// the client before the next: the Services until the last answers, the policies that do not
/// allow the client until it is blocked, the one allowing it until it answers again. Then
/// node1's agent RSS and BPF map memory, and everything is removed (until the last service
/// stops answering).
/// How long the agent is left idle after everything is in force before its memory is read.
pub const MEMORY_SETTLE: Duration = Duration::from_secs(1);

pub fn measure_combined_memory(
    lab: &Lab,
    column: &str,
    n: usize,
    policies: usize,
    progress: &Progress,
) -> Result<MemoryPoint> {
    let items: Vec<(String, Ipv4Addr)> = (0..n)
        .map(|i| (format!("svc-{i}"), kubeproxy::service_ip(i)))
        .collect();
    let last = SocketAddrV4::new(kubeproxy::service_ip(n - 1), 80);
    let cleanup = |stems: &[&str]| {
        for stem in stems {
            let _ = lab.delete(stem);
        }
    };
    progress.line(&format!(
        "{column} memory: applying {n} Services and {policies} NetworkPolicies"
    ));
    let start = Instant::now();
    lab.apply("memory-services", &services_yaml(&items))?;
    let deadline = || Instant::now() + crate::baseline::ANSWER_TIMEOUT;
    if let Err(e) = net::wait_answer(&lab.client.netns, &lab.client.netns_name, last, deadline()) {
        cleanup(&["memory-services"]);
        return Err(e);
    }
    let mut stems = vec!["memory-services"];
    if policies > 1 {
        lab.apply(
            "memory-policies-base",
            &policies_yaml(policies - 1, 0, false),
        )?;
        stems.push("memory-policies-base");
        if let Err(e) = wait_gone(lab, last) {
            cleanup(&stems);
            return Err(e);
        }
    }
    if policies > 0 {
        lab.apply(
            "memory-policies-last",
            &policies_yaml(1, policies - 1, true),
        )?;
        stems.push("memory-policies-last");
        if let Err(e) =
            net::wait_answer(&lab.client.netns, &lab.client.netns_name, last, deadline())
        {
            cleanup(&stems);
            return Err(e);
        }
    }
    progress.line(&format!(
        "{column} memory: {n} Services and {policies} policies in force after {}",
        human_us(start.elapsed().as_secs_f64() * 1e6)
    ));
    // The resident figure of an idle agent: it returns freed memory to the kernel once no
    // change has come for a moment (crates/agent/src/calc.rs TRIM_QUIET, 250 ms).
    std::thread::sleep(MEMORY_SETTLE);
    let point = crate::throughput::agent_memory(
        &format!("{column} lab ({})", lab.name),
        &format!("{n} Services + {policies} NetworkPolicies programmed"),
        lab.agent_pid("node1"),
        &lab.no_bpf_maps_reason(),
    );
    for stem in stems.iter().rev() {
        lab.delete(stem)?;
    }
    wait_gone(lab, last)?;
    Ok(point)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_policy_selects_both_servers() {
        let y = throughput_policy_yaml();
        assert!(y.contains("podSelector:\n    matchLabels:\n      app: bench-server\n"));
        assert!(y.ends_with("matchLabels:\n              app: bench-client\n"));
        assert!(!y.contains("ports:"));
    }

    #[test]
    fn services_yaml_shape() {
        let y = services_yaml(&[
            ("a".into(), Ipv4Addr::new(10, 96, 1, 0)),
            ("b".into(), Ipv4Addr::new(10, 96, 1, 1)),
        ]);
        assert_eq!(y.matches("kind: Service\n").count(), 2);
        assert!(y.contains("clusterIP: 10.96.1.1\n"));
        assert!(y.contains("targetPort: 7777\n"));
    }

    #[test]
    fn policies_yaml_last_allows_the_client() {
        let y = policies_yaml(3, 0, true);
        assert_eq!(y.matches("kind: NetworkPolicy\n").count(), 3);
        assert!(y.contains("bench-peer: p0\n"));
        assert!(y.contains("bench-peer: p1\n"));
        assert!(!y.contains("bench-peer: p2\n"));
        assert!(y.ends_with(&format!(
            "app: bench-client\n      ports:\n        - protocol: TCP\n          port: {}\n",
            net::ECHO_PORT
        )));
        let none = policies_yaml(1, 5, false);
        assert!(none.contains("name: bench-pol-5\n"));
        assert!(!none.contains("bench-client"));
    }
}
