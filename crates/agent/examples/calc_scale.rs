//! Times the pure part of the eBPF programming path at scale: `desired_state`, `services`,
//! `compile` and the BPF driver's `desired_contents`, for a model with N Services (the shape
//! `serval bench` applies: one namespace, every Service selecting the same backend pods),
//! from nothing and for "one more" at N.
//!
//! Run: `cargo run --release -p serval-agent --example calc_scale [N ...]` (default
//! 10000 50000).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use serval_agent::dataplane::bpf::{HostView, desired_contents};
use serval_calc::compile;
use serval_calc::services::services;
use serval_calc::state::node_addrs;
use serval_calc::{Model, desired_state};

use serval_model::workloadendpoint::WorkloadEndpoint;
use serval_model::{Resource, parse_documents};

const PODS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: default}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: p}
spec: {cidr: 10.244.0.0/16, natOutgoing: true}
---
apiVersion: v1
kind: Pod
metadata: {name: backend, namespace: default, labels: {bench-role: backend}}
spec: {nodeName: node1, containers: [{name: c, ports: [{containerPort: 8080}]}]}
status: {phase: Running, podIPs: [{ip: 10.244.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default, labels: {app: bench-client}}
spec: {nodeName: node1, containers: [{name: c}]}
status: {phase: Running, podIPs: [{ip: 10.244.0.3}]}
"#;

fn service_ip(i: usize) -> Ipv4Addr {
    let i = u32::try_from(i).expect("service index fits in u32") + 1;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 97, 0, 0)) + i)
}

fn service(i: usize) -> Resource {
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: default}}\nspec:\n  \
         clusterIP: {}\n  selector: {{bench-role: backend}}\n  ports: [{{name: p80, protocol: TCP, port: 80, targetPort: 8080}}]\n",
        service_ip(i)
    );
    parse_documents("svc", &yaml)
        .expect("service yaml parses")
        .remove(0)
}

fn base() -> Vec<Resource> {
    let mut rs = parse_documents("pods", PODS).expect("pods yaml parses");
    let weps: Vec<Resource> = rs
        .iter()
        .filter_map(|r| match r {
            Resource::Pod(p) => {
                let ip = if p.metadata.name == "backend" {
                    "10.244.0.2/32"
                } else {
                    "10.244.0.3/32"
                };
                let mut w = WorkloadEndpoint::for_pod(
                    p,
                    "node1",
                    "cid",
                    &format!("sv{}", p.metadata.name),
                    vec![ip.parse().expect("cidr")],
                );
                w.spec.ready = true;
                Some(Resource::WorkloadEndpoint(w))
            }
            _ => None,
        })
        .collect();
    rs.extend(weps);
    rs
}

fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed())
}

fn ms(d: Duration) -> String {
    format!("{:>9.1} ms", d.as_secs_f64() * 1000.0)
}

fn run(n: usize) {
    let services_res: Vec<Resource> = (0..n).map(service).collect();
    let (mut model, t_model) =
        time(|| Model::from_resources(base().into_iter().chain(services_res)));
    let node = Some("node1");
    let host = HostView {
        ifindex: [("svbackend".to_string(), 7), ("svclient".to_string(), 8)]
            .into_iter()
            .collect(),
        addrs: vec![IpAddr::V4(Ipv4Addr::new(172, 31, 0, 11))],
    };
    let addrs = node_addrs(&model, node);
    let (svc, t_services) = time(|| services(&model, node, &addrs));
    let (state, t_desired) = time(|| desired_state(&model, node));
    assert_eq!(svc, state.services);
    let (compiled, t_compile) = time(|| compile::compile(&state));
    let (compiled_inc, t_compile_inc) = time(|| compile::compile_incremental(&state, &compiled));
    let (contents, t_contents) =
        time(|| desired_contents(&state, &compiled_inc, &host, &HashMap::new()));
    let prev: HashMap<_, _> = contents
        .frontends
        .iter()
        .map(|(k, v)| (*k, v.svc_id))
        .collect();
    let (_, t_eq) = time(|| state == state.clone());

    println!(
        "N = {n} services ({} frontends)",
        state.services.frontends.len()
    );
    println!("  Model::from_resources      {}", ms(t_model));
    println!("  services()                 {}", ms(t_services));
    println!("  desired_state()            {}", ms(t_desired));
    println!("  compile()                  {}", ms(t_compile));
    println!("  compile_incremental()      {}", ms(t_compile_inc));
    println!("  desired_contents()         {}", ms(t_contents));
    println!("  clone + compare state      {}", ms(t_eq));

    // One more at N: the agent's per-batch path minus the kernel writes.
    let (_, t_apply) = time(|| model.apply(service(n)));
    let ((state2, compiled2, contents2), t_one) = time(|| {
        let s = desired_state(&model, node);
        let c = compile::compile_incremental(&s, &compiled_inc);
        let m = desired_contents(&s, &c, &host, &prev);
        (s, c, m)
    });
    assert_eq!(
        state2.services.frontends.len(),
        state.services.frontends.len() + 1
    );
    drop((compiled2, contents2));
    let (delta, t_diff) = time(|| serval_calc::diff(&state, &state2));
    let (_, t_describe) = time(|| serval_agent::calc::describe(&state, &state2, &delta));
    println!("  one more: Model::apply     {}", ms(t_apply));
    println!(
        "  one more: desired_state + compile_incremental + desired_contents {}",
        ms(t_one)
    );
    println!("  one more: diff (log line)  {}", ms(t_diff));
    println!("  one more: describe         {}", ms(t_describe));
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("sizes are numbers"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10_000, 50_000]
    } else {
        sizes
    };
    for n in sizes {
        run(n);
    }
}
