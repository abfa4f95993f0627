//! Times decoding stored resources (one JSON value per line, as the datastore holds them) with
//! [`Resource::from_json`] (the fast path) and [`Resource::from_json_reference`] (through a
//! `serde_json::Value` tree), and checks that both give the same resources.
//!
//! Make the input from a datastore `serval apply` wrote, e.g. 50,000 Services:
//! ```text
//! target/release/serval --datastore sqlite:///tmp/h5/db apply -f /tmp/svc50k.yaml
//! python3 -c "import sqlite3; c = sqlite3.connect('/tmp/h5/db'); f = open('/tmp/h5/services.jsonl', 'wb')
//! for (v,) in c.execute(\"select value from kv where cast(key as text) like '/serval/resources/services/%'\"): f.write(bytes(v) + b'\n')"
//! cargo run --release -p serval-model --example decode_stored /tmp/h5/services.jsonl [fast|reference]
//! ```

use std::time::Instant;

use serval_model::Resource;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: decode_stored FILE.jsonl [fast|reference] (one stored resource a line)");
    // Optionally time one path only (for a profiler).
    let only = args.next();
    let text = std::fs::read(&path).expect("read the input file");
    let values: Vec<&[u8]> = text
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let n = values.len();
    let fast: Vec<Resource> = values
        .iter()
        .map(|v| Resource::from_json(v).expect("decodes"))
        .collect();
    let reference: Vec<Resource> = values
        .iter()
        .map(|v| Resource::from_json_reference(v).expect("decodes"))
        .collect();
    assert!(fast == reference, "the two paths disagree");
    drop((fast, reference));
    type Decode = fn(&[u8]) -> Result<Resource, serval_model::resource::DecodeError>;
    let paths: [(&str, Decode); 2] = [
        ("reference (Value)", Resource::from_json_reference),
        ("from_json (fast)", Resource::from_json),
    ];
    for round in 0..3 {
        for (name, decode) in paths {
            if only.as_deref().is_some_and(|o| !name.contains(o)) {
                continue;
            }
            let t = Instant::now();
            let mut ok = 0usize;
            for v in &values {
                ok += usize::from(std::hint::black_box(decode(v)).is_ok());
            }
            let el = t.elapsed();
            assert_eq!(ok, n);
            println!(
                "round {round}: {name:<18} {n} resources in {:>7.1} ms = {:>5.2} µs each",
                el.as_secs_f64() * 1e3,
                el.as_secs_f64() * 1e6 / n as f64
            );
        }
    }
}
