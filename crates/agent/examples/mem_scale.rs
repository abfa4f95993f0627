//! Heap bytes held by the agent's in-memory structures at N Services (+ P policies), the
//! shapes `serval bench` applies: the decoded resources, the calculation's `Model`, the desired
//! state, the service tracker. A counting global allocator measures what each one holds.
//!
//! Run: `cargo run --release -p serval-agent --example mem_scale [SERVICES [POLICIES]]`
//! (default 50000 10000).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

use serval_agent::dataplane::bpf::{HostView, desired_contents, service_digests};
use serval_calc::compile;

use serval_calc::services::ServiceTracker;
use serval_calc::state::{desired_state_with_services, node_addrs};
use serval_calc::{Model, desired_state};
use serval_model::workloadendpoint::WorkloadEndpoint;
use serval_model::{Resource, parse_documents};

/// The system allocator, counting the bytes currently allocated.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator with the same arguments; the
// counter is only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(new_size, Ordering::Relaxed);
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn held() -> usize {
    HELD.load(Ordering::Relaxed)
}

fn mib(b: usize) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: default, labels: {bench-role: backend, app: bench-server}}
spec: {nodeName: node1, containers: [{name: c, ports: [{containerPort: 8080}]}]}
status: {phase: Running, podIPs: [{ip: 10.244.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default, labels: {app: bench-client}}
spec: {nodeName: node1, containers: [{name: c}]}
status: {phase: Running, podIPs: [{ip: 10.244.0.3}]}
"#;

/// A Service as the agent decodes it from the store (uid, timestamp and resourceVersion set
/// by admission).
fn service(i: usize) -> Resource {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 1, 0)) + i as u32);
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i}\n  namespace: default\n  \
         uid: 5f2c1c9e-0000-4000-8000-{i:012}\n  creationTimestamp: \"2026-11-21T18:00:00Z\"\n  \
         resourceVersion: \"{}\"\nspec:\n  clusterIP: {ip}\n  clusterIPs: [{ip}]\n  \
         ipFamilies: [IPv4]\n  ipFamilyPolicy: SingleStack\n  selector:\n    bench-role: backend\n  \
         ports:\n    - name: p80\n      protocol: TCP\n      port: 80\n      targetPort: 7777\n",
        i + 100
    );
    parse_documents("svc", &yaml).expect("service").remove(0)
}

fn policy(i: usize) -> Resource {
    let yaml = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: bench-pol-{i}\n  \
         namespace: default\nspec:\n  podSelector:\n    matchLabels:\n      bench-role: backend\n  \
         policyTypes:\n    - Ingress\n  ingress:\n    - from:\n        - podSelector:\n            \
         matchLabels:\n              bench-peer: p{i}\n      ports:\n        - protocol: TCP\n          port: 7777\n"
    );
    parse_documents("pol", &yaml).expect("policy").remove(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50_000);
    let p: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let mut base = parse_documents("pods", PODS).expect("pods");
    let weps: Vec<Resource> = base
        .iter()
        .filter_map(|r| match r {
            Resource::Pod(pod) => {
                let ip = if pod.metadata.name == "server" {
                    "10.244.0.2/32"
                } else {
                    "10.244.0.3/32"
                };
                let mut w = WorkloadEndpoint::for_pod(
                    pod,
                    "node1",
                    "cid",
                    &format!("sv{}", pod.metadata.name),
                    vec![ip.parse().expect("cidr")],
                );
                w.spec.ready = true;
                Some(Resource::WorkloadEndpoint(w))
            }
            _ => None,
        })
        .collect();
    base.extend(weps);

    let start = held();
    let services: Vec<Resource> = (0..n).map(service).collect();
    let after_services = held();
    let policies: Vec<Resource> = (0..p).map(policy).collect();
    let after_policies = held();
    println!(
        "decoded: {n} Services {} ({} B each), {p} policies {} ({} B each)",
        mib(after_services - start),
        (after_services - start) / n.max(1),
        mib(after_policies - after_services),
        (after_policies - after_services) / p.max(1),
    );

    // As the agent's pipeline keeps them: without what the datastore adds (calc.rs `slim`).
    let slim = |mut r: Resource| {
        let m = r.meta_mut();
        m.resource_version = None;
        m.uid = None;
        m.creation_timestamp = None;
        r
    };
    let before = held();
    let model = Model::from_resources(base.into_iter().chain(services).chain(policies).map(slim));
    println!(
        "model (holds the resources; {} before, as decoded): {}",
        mib(before - start),
        mib(held() - start)
    );

    let before = held();
    let mut tracker = ServiceTracker::default();
    let state = desired_state_with_services(&model, Some("node1"), |m, node| {
        let (t, s) = ServiceTracker::build(m, node, &node_addrs(m, node));
        tracker = t;
        s
    });
    let with_tracker = held() - before;
    let before = held();
    let services_only = state.services.clone();
    let services_bytes = held() - before;
    drop(services_only);
    let before = held();
    let tracker_copy = tracker.clone();
    let tracker_bytes = held() - before;
    drop(tracker_copy);
    println!(
        "desired state + tracker: {} (services part {}, {} B per frontend; tracker {}; \
         endpoints/policy/ip sets {})",
        mib(with_tracker),
        mib(services_bytes),
        services_bytes / state.services.frontends.len().max(1),
        mib(tracker_bytes),
        mib(with_tracker - services_bytes - tracker_bytes),
    );
    let before = held();
    let full = desired_state(&model, Some("node1"));
    println!(
        "a second desired state (for the check below; the eBPF driver keeps its non-service part and the service digests below): {}",
        mib(held() - before)
    );
    assert_eq!(full, state);
    drop(full);

    // What the eBPF driver keeps besides its copy of the state: the compiled policy and the
    // mirror of the map contents.
    let host = HostView {
        ifindex: [("svserver".to_string(), 7), ("svclient".to_string(), 8)]
            .into_iter()
            .collect(),
        addrs: vec![IpAddr::V4(Ipv4Addr::new(172, 31, 0, 11))],
    };
    let before = held();
    let compiled = compile::compile(&state);
    let compiled_bytes = held() - before;
    let before = held();
    let contents = desired_contents(&state, &compiled, &host, &HashMap::new());
    println!(
        "eBPF driver: compiled policy {}, map contents mirror {} ({} policy entries, {} frontends, {} backends)",
        mib(compiled_bytes),
        mib(held() - before),
        contents.policy.len(),
        contents.frontends.len(),
        contents.backends.len()
    );
    let before = held();
    let digests = service_digests(&state, &contents);
    println!(
        "eBPF driver: service digests (instead of a copy of the frontends, {} above) {}",
        mib(services_bytes),
        mib(held() - before)
    );
    drop(digests);
    println!("total held: {}", mib(held()));
}
