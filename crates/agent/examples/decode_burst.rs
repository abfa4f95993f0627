//! Times decoding a burst of N stored Services (the JSON the datastore holds, as the syncer
//! receives them from the watch) one by one and split over T scoped threads, as the syncer
//! does for a large batch. Run it with and without `MALLOC_ARENA_MAX=1` to see the effect
//! of one shared malloc arena on the parallel decode.
//!
//! Run: `cargo run --release -p serval-agent --example decode_burst [N [T]]` (default
//! 50000 2).

use std::net::Ipv4Addr;
use std::time::Instant;

use serval_model::parse_documents;
use serval_store::KeyValue;

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().expect("numbers"));
    let n = args.next().unwrap_or(50_000);
    let threads = args.next().unwrap_or(2).max(1);
    let kvs: Vec<KeyValue> = (0..n)
        .map(|i| {
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 1)) + i as u32);
            let yaml = format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: default}}\nspec:\n  \
                 clusterIP: {ip}\n  selector: {{bench-role: backend}}\n  ports: [{{name: p80, protocol: TCP, port: 80, targetPort: 8080}}]\n"
            );
            let r = parse_documents("svc", &yaml).expect("yaml").remove(0);
            KeyValue {
                key: r.key().store_key(),
                value: r.to_json(),
                create_revision: i as i64 + 1,
                mod_revision: i as i64 + 1,
            }
        })
        .collect();
    for round in 0..3 {
        let t = Instant::now();
        let one: usize = kvs
            .iter()
            .map(|kv| usize::from(serval_api::decode(kv).is_ok()))
            .sum();
        let seq = t.elapsed();
        let t = Instant::now();
        let chunk = n.div_ceil(threads);
        let par: usize = std::thread::scope(|s| {
            let handles: Vec<_> = kvs
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || {
                        part.iter()
                            .map(|kv| usize::from(serval_api::decode(kv).is_ok()))
                            .sum::<usize>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("decode thread"))
                .sum()
        });
        let par_t = t.elapsed();
        assert_eq!((one, par), (n, n));
        println!(
            "round {round}: N = {n}: one by one {:>7.1} ms, {threads} threads {:>7.1} ms",
            seq.as_secs_f64() * 1e3,
            par_t.as_secs_f64() * 1e3
        );
    }
}
