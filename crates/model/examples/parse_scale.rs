//! Times `parse_documents` of a big YAML file (default /tmp/svc50k.yaml) on one thread:
//! `cargo run --release -p serval-model --example parse_scale [FILE] [ROUNDS]`.

fn main() {
    let mut args = std::env::args().skip(1);
    let file = args
        .next()
        .unwrap_or_else(|| "/tmp/svc50k.yaml".to_string());
    let rounds: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(5);
    let text = std::fs::read_to_string(&file).expect("readable file");
    for _ in 0..rounds {
        let started = std::time::Instant::now();
        let resources = serval_model::parse_documents(&file, &text).expect("valid documents");
        let took = started.elapsed();
        println!(
            "{} resources in {:.1} ms",
            resources.len(),
            took.as_secs_f64() * 1e3
        );
        std::mem::forget(resources);
    }
}
