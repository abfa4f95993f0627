//! CI smoke test of `serval bench`: a tiny run (two sizes, 50 samples, direct and kube-proxy
//! iptables) through the real `serval` binary, checking that a report, a JSON file with every
//! sample and a PNG plot are produced and well-formed. Never a timing threshold. Root only.

use std::path::{Path, PathBuf};
use std::process::Command;

use serval_bench::results::Results;

/// `target/debug` (or `release`): this test binary lives in its `deps/`.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// `serval` and `serval-cni` are other packages' binaries: build them (a no-op when up to
/// date). If the build fails (another crate mid-edit), existing binaries are used.
fn serval_binary() -> PathBuf {
    let dir = bin_dir();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "-p", "serval", "-p", "serval-cni"]);
    if dir.ends_with("release") {
        cmd.arg("--release");
    }
    let built = cmd.status().is_ok_and(|s| s.success());
    let serval = dir.join("serval");
    assert!(
        serval.is_file() && dir.join("serval-cni").is_file(),
        "serval and serval-cni are not in {} and `cargo build -p serval -p serval-cni` failed",
        dir.display()
    );
    if !built {
        eprintln!(
            "warning: `cargo build -p serval -p serval-cni` failed; using the existing binaries"
        );
    }
    serval
}

#[test]
fn quick_bench_writes_report_json_and_png() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: `serval bench` needs root (labs, network namespaces, iptables)");
        return;
    }
    let serval = serval_binary();
    let out = tempfile::tempdir().expect("temp dir");
    let run = Command::new(&serval)
        .args([
            "bench",
            "--quick",
            "--only",
            "latency,programming",
            "--dataplanes",
            "direct,kube-proxy-iptables",
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
    // Progress was shown while it ran.
    assert!(stderr.contains("kube-proxy-iptables N=100"), "{stderr}");

    // JSON: every raw sample, per column and size.
    let json = std::fs::read_to_string(out.path().join("results.json")).expect("results.json");
    let r: Results = serde_json::from_str(&json).expect("results.json parses");
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    for dp in ["direct", "kube-proxy-iptables"] {
        for n in [1, 100] {
            let p = r.latency_at(dp, n).unwrap_or_else(|| panic!("{dp} at {n}"));
            assert_eq!(p.samples_us.len() + p.failures, 50);
            let s = p.summary.expect("summary");
            assert!(s.p50 <= s.p90 && s.p90 <= s.p99 && s.p99 <= s.max);
            assert!(p.samples_us.iter().all(|v| *v > 0.0));
            // Every column but direct carries its interleaved direct samples.
            match (dp, &p.paired) {
                ("direct", None) => {}
                ("direct", Some(_)) => panic!("direct is measured alone"),
                (_, None) => panic!("{dp} at {n} has no paired direct samples"),
                (_, Some(d)) => {
                    assert_eq!(d.samples_us.len() + d.failures, 50, "{dp} at {n}");
                    assert_eq!(d.block_len, 5);
                    assert_eq!(d.blocks.len(), 10);
                    assert_eq!(
                        d.blocks.iter().map(|b| b.column_samples).sum::<usize>(),
                        p.samples_us.len()
                    );
                    assert!(d.ratio_p50.is_some());
                    // The direct lab is not the column's lab: a different address space
                    // is not required, but the target is the direct lab's server.
                    assert!(d.target.ends_with(":7777"), "{}", d.target);
                }
            }
        }
    }
    let prog = r
        .programming_at("kube-proxy-iptables", 100)
        .expect("programming at 100");
    assert!(prog.answer_ms >= prog.load_ms);
    assert!(prog.add_one_answer_ms.is_some());
    assert!(!r.machine.kernel.is_empty());

    // Report: the tables, with ratios to direct.
    let md = std::fs::read_to_string(out.path().join("report.md")).expect("report.md");
    assert!(md.starts_with("# serval bench"));
    assert!(
        md.contains("| Services | direct | kube-proxy-iptables |"),
        "{md}"
    );
    assert!(
        md.lines()
            .any(|l| l.starts_with("| 100 | ") && l.contains('×')),
        "{md}"
    );
    assert!(md.contains("![latency vs N](latency.png)"));
    assert!(md.contains("**p50, paired**"), "{md}");

    // PNGs: signature and the IHDR size.
    for name in ["latency.png", "programming.png"] {
        let png = std::fs::read(out.path().join(name)).expect(name);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{name}");
        assert_eq!(&png[12..16], b"IHDR", "{name}");
        let width = u32::from_be_bytes([png[16], png[17], png[18], png[19]]);
        let height = u32::from_be_bytes([png[20], png[21], png[22], png[23]]);
        assert_eq!((width, height), (1000, 640), "{name}");
    }

    // The run removed its labs (named in the progress lines): the direct baseline's and the
    // kube-proxy columns'.
    let labs: Vec<String> = stderr
        .lines()
        .filter_map(|l| {
            let rest = l.split("lab ").nth(1)?;
            let name = rest.split_whitespace().next()?;
            (name.starts_with("bench-") && rest.contains("is up")).then(|| name.to_string())
        })
        .collect();
    assert_eq!(labs.len(), 2, "{stderr}");
    for lab in labs {
        lab_removed(&lab);
    }
}

fn lab_removed(lab: &str) {
    assert!(
        !Path::new("/var/lib/serval/labs").join(lab).exists(),
        "lab {lab} was not removed"
    );
    let netns = std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("sv-{lab}-"))
                })
                .count()
        })
        .unwrap_or(0);
    assert_eq!(netns, 0, "namespaces of lab {lab} remain");
}
