//! Times the agent's side of a burst of N new Services on the eBPF dataplane, stage by stage,
//! the way the agent runs it: decoding the stored JSON of the watch events (split over two
//! threads, as the syncer does), the cache passing them on to its follower, the calculation
//! (the model, the service tracker) and the eBPF driver's services-only write to real
//! (pinned) maps, in batches of B. Privileged (root, bpffs); the maps live under a unique pin
//! scope and are removed at the end, also on panic. The process allocator is mimalloc, as in
//! the `serval` binary.
//!
//! Run: `cargo run --release -p serval-agent --example burst_pipeline [N [B [ROUNDS]]]`
//! (default 50000 12500 3); `perf record` it to profile the agent's burst without a lab.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serval_agent::cache::{Cache, FOLLOWER_ONLY_KINDS, ResourceChange};
use serval_agent::dataplane::Dataplane;
use serval_agent::dataplane::bpf::{BpfDriver, BpfSettings};
use serval_api::decode_event;
use serval_calc::model::NsName;
use serval_calc::services::ServiceTracker;
use serval_calc::state::node_addrs;
use serval_calc::{Model, desired_state};
use serval_model::{Kind, Resource, parse_documents};
use serval_store::{EventKind, KeyValue, WatchEvent};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// The JSON the datastore holds for bench Service `i` after admission.
fn stored(i: usize, round: usize) -> Vec<u8> {
    let ip = Ipv4Addr::from(
        u32::from(Ipv4Addr::new(10, 96, 0, 0))
            + u32::try_from(i + round * 60_000).expect("index fits"),
    );
    format!(
        r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"creationTimestamp":"2026-11-22T03:18:23Z","name":"bench-svc-{i}-{round}","namespace":"default","uid":"eae0c380-984e-1a7c-f754-6ce1afb3{i:04x}"}},"spec":{{"clusterIP":"{ip}","clusterIPs":["{ip}"],"internalTrafficPolicy":"Cluster","ipFamilies":["IPv4"],"ipFamilyPolicy":"SingleStack","ports":[{{"name":"p80","port":80,"protocol":"TCP","targetPort":8080}}],"selector":{{"bench-role":"backend"}},"sessionAffinity":"None","type":"ClusterIP"}}}}"#
    )
    .into_bytes()
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
    format!("{:>6.1}", d.as_secs_f64() * 1000.0)
}

/// The process's CPU time so far (user + system, every thread).
fn cpu() -> Duration {
    // SAFETY: getrusage only writes the `rusage` it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Wall-clock and CPU time of one stage, summed over the batches.
#[derive(Default)]
struct Took {
    wall: Duration,
    cpu: Duration,
}

impl Took {
    fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let (t, c) = (Instant::now(), cpu());
        let out = f();
        self.wall += t.elapsed();
        self.cpu += cpu() - c;
        out
    }
}

impl std::fmt::Display for Took {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ms ({} cpu)", ms(self.wall), ms(self.cpu))
    }
}

fn slim(r: &mut Resource) {
    let meta = r.meta_mut();
    meta.resource_version = None;
    meta.uid = None;
    meta.creation_timestamp = None;
}

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().expect("numbers"));
    let n = args.next().unwrap_or(50_000);
    let batch = args.next().unwrap_or(12_500).max(1);
    let rounds = args.next().unwrap_or(3).max(1);

    println!(
        "sizes: Resource {} B, decoded watch event {} B",
        size_of::<Resource>(),
        size_of::<Result<(serval_api::ResourceEvent, i64), serval_api::ApiError>>()
    );
    let base = parse_documents("base", BASE).expect("base yaml parses");
    let mut model = Model::from_resources(base.clone());
    let mut settings = BpfSettings::from_felix(&model.felix(Some("node1")));
    settings.sizes.nat_frontend = settings
        .sizes
        .nat_frontend
        .max(u32::try_from(rounds * n * 2 + 16).expect("fits"));
    settings.sizes.nat_backend = settings.sizes.nat_frontend;
    let scope = format!("burstpipe{}", std::process::id());
    let mut driver = Cleanup(BpfDriver::with_scope(&scope, settings).expect("driver opens"));
    let cache = Cache::with_follower_only(FOLLOWER_ONLY_KINDS);
    let mut follower = cache.follow_resources();
    cache.replace_resources(base, 1);
    while follower.try_recv().is_ok() {}
    let mut state = Arc::new(desired_state(&model, Some("node1")));
    let (mut tracker, _) = ServiceTracker::build(&model, Some("node1"), &[]);
    driver.0.apply(&state).expect("first apply");
    let mut rev = 10;

    for round in 0..rounds {
        let events: Vec<WatchEvent> = (0..n)
            .map(|i| {
                rev += 1;
                WatchEvent {
                    kind: EventKind::Put,
                    kv: KeyValue {
                        key: format!("/serval/resources/services/default/bench-svc-{i}-{round}"),
                        value: stored(i, round),
                        create_revision: rev,
                        mod_revision: rev,
                    },
                    prev: None,
                    revision: rev,
                }
            })
            .collect();
        let (mut decode, mut cached, mut calc, mut write, mut total) =
            <(Took, Took, Took, Took, Took)>::default();
        let (t0, c0) = (Instant::now(), cpu());
        for part in events.chunks(batch) {
            let half = part.len().div_ceil(2);
            let decoded = decode.time(|| {
                std::thread::scope(|s| {
                    let (a, b) = part.split_at(half);
                    let h = s.spawn(move || b.iter().map(decode_event).collect::<Vec<_>>());
                    let mut out: Vec<_> = a.iter().map(decode_event).collect();
                    out.extend(h.join().expect("decode thread"));
                    out
                })
            });
            cached.time(|| {
                for d in decoded {
                    let (ev, rev) = d.expect("decodes");
                    cache.apply_resource(ev, rev);
                }
            });
            let hint = calc.time(|| {
                let mut names: BTreeSet<NsName> = BTreeSet::new();
                while let Ok(c) = follower.try_recv() {
                    let ResourceChange::Applied(mut r) = c else {
                        panic!("only applies")
                    };
                    slim(&mut r);
                    assert_eq!(r.kind(), Kind::Service);
                    let name = (r.meta().namespace_str().to_string(), r.meta().name.clone());
                    if model.apply(*r).is_some() {
                        names.insert(name);
                    }
                }
                let addrs = node_addrs(&model, Some("node1"));
                let delta = tracker.update(
                    &mut Arc::make_mut(&mut state).services,
                    &model,
                    Some("node1"),
                    &addrs,
                    &names,
                );
                delta
                    .changed
                    .iter()
                    .chain(delta.removed.iter())
                    .cloned()
                    .collect::<Vec<_>>()
            });
            write.time(|| {
                driver
                    .0
                    .apply_services_changed(&state, hint)
                    .expect("services write")
            });
        }
        total.wall = t0.elapsed();
        total.cpu = cpu() - c0;
        println!(
            "round {round}: {n} services in batches of {batch}: decode {decode}, cache {cached}, calc {calc}, write {write}; total {total}"
        );
    }
}
