//! Times `ServiceTracker::update` for N Services arriving in batches of B (the shape
//! `serval bench` applies: one namespace, every Service selecting the same backend pod), to
//! see how the pipeline's batch size affects the calculation's cost per Service.
//!
//! Run: `cargo run --release -p serval-agent --example tracker_batches [N [B ...]]`
//! (default 50000, batches 100 1000 10000 50000).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Instant;

use serval_calc::Model;
use serval_calc::services::ServiceTracker;
use serval_calc::state::node_addrs;
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
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 1)) + i as u32);
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: default}}\nspec:\n  \
         clusterIP: {ip}\n  selector: {{bench-role: backend}}\n  ports: [{{name: p80, protocol: TCP, port: 80, targetPort: 8080}}]\n"
    );
    parse_documents("svc", &yaml).expect("yaml").remove(0)
}

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().expect("numbers"));
    let n = args.next().unwrap_or(50_000);
    let mut batches: Vec<usize> = args.collect();
    if batches.is_empty() {
        batches = vec![100, 1000, 10_000, 50_000];
    }
    let services: Vec<Resource> = (0..n).map(service).collect();
    for b in batches {
        let mut model = Model::from_resources(parse_documents("base", BASE).expect("yaml"));
        let addrs = node_addrs(&model, Some("node1"));
        let (mut tracker, mut state) = ServiceTracker::build(&model, Some("node1"), &addrs);
        let mut calc = std::time::Duration::ZERO;
        for chunk in services.chunks(b) {
            let mut names = BTreeSet::new();
            for r in chunk {
                names.insert((r.meta().namespace_str().to_string(), r.meta().name.clone()));
                model.apply(r.clone());
            }
            let t = Instant::now();
            let delta = tracker.update(&mut state, &model, Some("node1"), &addrs, &names);
            calc += t.elapsed();
            assert_eq!(delta.changed.len(), chunk.len());
        }
        assert_eq!(state.frontends.len(), n);
        println!(
            "N = {n}, batches of {b:>6}: calculation {:>8.1} ms ({:.2} µs per Service)",
            calc.as_secs_f64() * 1e3,
            calc.as_secs_f64() * 1e6 / n as f64
        );
    }
}
