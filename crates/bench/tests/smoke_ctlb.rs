//! CI smoke test of the `serval-bpf-ctlb` column: a tiny `serval bench --quick` run of the
//! service-latency section with `serval-bpf` and `serval-bpf-ctlb` through the real `serval`
//! binary. The column must be measured (samples, a summary and a programming point), not
//! reported as "not available", and the report's table must carry it. Never a timing
//! threshold. Root only.

use std::path::{Path, PathBuf};
use std::process::Command;

use serval_bench::results::Results;

/// `serval` and `serval-cni` next to this test's target dir (built if needed; a failed build,
/// e.g. another crate mid-edit, falls back to the existing binaries).
fn serval_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "-p", "serval", "-p", "serval-cni"]);
    if dir.ends_with("release") {
        cmd.arg("--release");
    }
    if !cmd.status().is_ok_and(|s| s.success()) {
        eprintln!(
            "warning: `cargo build -p serval -p serval-cni` failed; using the existing binaries"
        );
    }
    let serval = dir.join("serval");
    assert!(serval.is_file() && dir.join("serval-cni").is_file());
    serval
}

#[test]
fn quick_bench_measures_the_ctlb_column() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: `serval bench` needs root (labs, network namespaces, cgroups)");
        return;
    }
    let serval = serval_binary();
    let out = tempfile::tempdir().expect("temp dir");
    let run = Command::new(&serval)
        .args([
            "bench",
            "--quick",
            "--only",
            "latency",
            "--dataplanes",
            "serval-bpf,serval-bpf-ctlb",
            "--sizes",
            "1,100",
            "--samples",
            "50",
        ])
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("running serval bench");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "serval bench failed:\n{stderr}");
    assert!(stderr.contains("serval-bpf-ctlb N=100"), "{stderr}");

    let json = std::fs::read_to_string(out.path().join("results.json")).expect("results.json");
    let r: Results = serde_json::from_str(&json).expect("results.json parses");
    assert!(
        r.unavailable
            .iter()
            .all(|u| u.dataplane != "serval-bpf-ctlb"),
        "the ctlb column was not measured: {:?}",
        r.unavailable
    );
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    for dp in ["serval-bpf", "serval-bpf-ctlb"] {
        for n in [1, 100] {
            let p = r.latency_at(dp, n).unwrap_or_else(|| panic!("{dp} at {n}"));
            assert_eq!(p.samples_us.len() + p.failures, 50, "{dp} at {n}");
            let s = p.summary.expect("summary");
            assert!(s.p50 <= s.p90 && s.p90 <= s.p99 && s.p99 <= s.max);
        }
    }
    let md = std::fs::read_to_string(out.path().join("report.md")).expect("report.md");
    assert!(md.contains("serval-bpf-ctlb"), "{md}");
    assert!(
        !md.contains("**serval-bpf-ctlb**: not available"),
        "report says the column is not available:\n{md}"
    );
}
