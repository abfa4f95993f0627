//! Times the eBPF driver's apply against real (pinned) maps for N Services: the first apply
//! from nothing, one more Service at N, a no-op apply and a resync. Privileged (root, bpffs);
//! everything lives under a unique pin scope and is cleaned up at the end, also on panic.
//!
//! Run: `cargo run --release -p serval-agent --example bpf_apply_scale [N ...]`.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serval_agent::dataplane::Dataplane;
use serval_agent::dataplane::bpf::{BpfDriver, BpfSettings};
use serval_calc::{Model, desired_state};
use serval_model::{Resource, parse_documents};

const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: default}
---
apiVersion: v1
kind: Pod
metadata: {name: backend, namespace: default, labels: {bench-role: backend}}
spec: {nodeName: node1, containers: [{name: c, ports: [{containerPort: 8080}]}]}
status: {phase: Running, podIPs: [{ip: 10.244.0.2}]}
"#;

fn service(i: usize) -> Resource {
    let i = u32::try_from(i).expect("service index fits in u32") + 1;
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 97, 0, 0)) + i);
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: default}}\nspec:\n  \
         clusterIP: {ip}\n  selector: {{bench-role: backend}}\n  ports: [{{name: p80, protocol: TCP, port: 80, targetPort: 8080}}]\n"
    );
    parse_documents("svc", &yaml)
        .expect("service yaml parses")
        .remove(0)
}

/// Cleans the driver's pins when dropped (also on panic).
struct Cleanup(BpfDriver);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Err(e) = self.0.cleanup() {
            eprintln!("cleanup failed: {e}");
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:>9.1} ms", d.as_secs_f64() * 1000.0)
}

fn run(n: usize) {
    let mut model = Model::from_resources(
        parse_documents("base", BASE)
            .expect("base yaml parses")
            .into_iter()
            .chain((0..n).map(service)),
    );
    let mut settings = BpfSettings::from_felix(&model.felix(Some("node1")));
    settings.sizes.nat_frontend = settings.sizes.nat_frontend.max(2 * n as u32 + 16);
    settings.sizes.nat_backend = settings.sizes.nat_backend.max(2 * n as u32 + 16);
    let scope = format!("calcscale{}", std::process::id());
    let mut d = Cleanup(BpfDriver::with_scope(&scope, settings).expect("driver opens"));
    let state = desired_state(&model, Some("node1"));
    let t = Instant::now();
    d.0.apply(&state).expect("first apply");
    let first = t.elapsed();
    let t = Instant::now();
    d.0.apply(&state).expect("no-op apply");
    let noop = t.elapsed();
    model.apply(service(n));
    let state2 = desired_state(&model, Some("node1"));
    let t = Instant::now();
    d.0.apply(&state2).expect("one more apply");
    let one = t.elapsed();
    let t = Instant::now();
    d.0.resync().expect("resync");
    let resync = t.elapsed();
    println!("N = {n} (eBPF driver, real maps)");
    println!("  first apply                {}", ms(first));
    println!("  no-op apply                {}", ms(noop));
    println!("  one more apply             {}", ms(one));
    println!("  resync (reads maps back)   {}", ms(resync));
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("sizes are numbers"))
        .collect();
    for n in if sizes.is_empty() {
        vec![10_000, 50_000]
    } else {
        sizes
    } {
        run(n);
    }
}
