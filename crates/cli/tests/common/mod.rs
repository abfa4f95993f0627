//! Helpers shared by the `serval lab` end-to-end tests (tests/lab.rs, tests/lab_bgp.rs).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;

pub const SERVAL: &str = env!("CARGO_BIN_EXE_serval");
pub const LABS: &str = "/var/lib/serval/labs";

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Skips the calling test (with the reason) unless we are root. `what` names the tests in the
/// message ("lab tests" by default).
macro_rules! require_root {
    () => {
        $crate::common::require_root!("lab tests")
    };
    ($what:literal) => {
        if !$crate::common::is_root() {
            eprintln!(concat!(
                "skipped: ",
                $what,
                " need root (network namespaces, veths, bridges)"
            ));
            return;
        }
    };
}
pub(crate) use require_root;

/// `serval-cni` must sit next to `serval` and be current: `cargo test -p serval` alone does
/// not build other packages' binaries, so build it (a no-op when it is up to date). If that
/// fails (another crate mid-edit) an existing binary is used, with a warning.
pub fn ensure_cni() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let dir = Path::new(SERVAL).parent().expect("binary dir");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "-p", "serval-cni"]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let built = cmd.status().is_ok_and(|st| st.success());
        let present = dir.join("serval-cni").is_file();
        assert!(
            present,
            "serval-cni is not next to {SERVAL} and `cargo build -p serval-cni` failed"
        );
        if !built {
            eprintln!("warning: `cargo build -p serval-cni` failed; using the existing binary");
        }
    });
}

pub fn serval(args: &[&str]) -> Output {
    Command::new(SERVAL)
        .args(args)
        .output()
        .expect("running serval")
}

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A unique lab name: a tag (≤ 7 chars) and this process's id.
pub fn unique(tag: &str) -> String {
    assert!(tag.len() <= 7);
    format!("{tag}{:04x}", std::process::id() & 0xffff)
}

/// A lab that is removed (`serval lab down`) on drop. Each test file adds its own `up` and
/// helpers in an `impl Lab` block.
pub struct Lab {
    pub name: String,
}

impl Lab {
    /// `serval lab up --name NAME --timeout-secs 60 FIXED.. ARGS..` for a fresh unique name
    /// from `tag` (≤ 7 characters); panics (naming `args`) if it fails.
    pub fn up_with(tag: &str, fixed: &[&str], args: &[&str]) -> Lab {
        ensure_cni();
        let name = unique(tag);
        // A leftover from an earlier, killed run of this test with the same pid.
        let _ = serval(&["lab", "down", "--name", &name]);
        let lab = Lab { name };
        let mut all = vec!["lab", "up", "--name", &lab.name, "--timeout-secs", "60"];
        all.extend_from_slice(fixed);
        all.extend_from_slice(args);
        let o = serval(&all);
        assert!(o.status.success(), "lab up {args:?} failed: {}", text(&o));
        lab
    }

    pub fn dir(&self) -> PathBuf {
        Path::new(LABS).join(&self.name)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let o = serval(&["lab", "down", "--name", &self.name]);
        if !o.status.success() {
            eprintln!("lab down {} failed: {}", self.name, text(&o));
        }
    }
}
