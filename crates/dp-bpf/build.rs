//! Builds the BPF programs and checks the map ABI (the only build path for them):
//!
//! 1. every `bpf/*.c` is compiled by clang (`-O2 -g -target bpf -Wall -Werror`, libbpf
//!    headers from /usr/include/bpf, kernel UAPI headers from /usr/include/linux) twice, to
//!    `OUT_DIR/NAME.o` and, with `-DSERVAL_DEBUG` (bpf_printk of every decision),
//!    `OUT_DIR/NAME.debug.o`; src/object.rs embeds them;
//! 2. `bpf/host/abi_layout.c` is compiled for the host and run; it prints const assertions
//!    (sizes, alignments, field offsets, #define values of `bpf/serval_maps.h`) into
//!    `OUT_DIR/abi_layout.rs`, which src/abi.rs includes, so a Rust mirror that disagrees with
//!    the C header does not compile.
//!
//! `CLANG` overrides the compiler (default `clang` on PATH).

use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let bpf_dir = manifest.join("bpf");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-changed={}", bpf_dir.display());

    let (target_arch, multiarch) = match env::var("CARGO_CFG_TARGET_ARCH")?.as_str() {
        "x86_64" => ("x86", "x86_64-linux-gnu"),
        "aarch64" => ("arm64", "aarch64-linux-gnu"),
        other => bail!("dp-bpf: no BPF target arch mapping for {other}; add one in build.rs"),
    };
    // <asm/types.h> (pulled in by the UAPI headers) lives in the multiarch directory.
    let asm_include = format!("/usr/include/{multiarch}");

    let mut sources = Vec::new();
    let mut headers = Vec::new();
    for entry in fs::read_dir(&bpf_dir).with_context(|| format!("reading {}", bpf_dir.display()))? {
        let path = entry?.path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("c") => sources.push(path),
            Some("h") => headers.push(path),
            _ => {}
        }
    }
    sources.sort();
    headers.sort();
    for path in sources.iter().chain(&headers) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    if sources.is_empty() {
        bail!("dp-bpf: no BPF sources in {}", bpf_dir.display());
    }

    for source in &sources {
        let stem = source
            .file_stem()
            .and_then(|s| s.to_str())
            .context("BPF source name is not UTF-8")?;
        for (suffix, extra) in [("o", None), ("debug.o", Some("-DSERVAL_DEBUG"))] {
            let object = out.join(format!("{stem}.{suffix}"));
            let mut cmd = Command::new(&clang);
            cmd.args([
                "-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror",
            ])
            .arg(format!("-D__TARGET_ARCH_{target_arch}"))
            .arg("-I")
            .arg(&bpf_dir)
            .arg("-idirafter")
            .arg(&asm_include)
            .args(extra)
            .arg("-c")
            .arg(source)
            .arg("-o")
            .arg(&object);
            run(&mut cmd, &format!("compiling {}", source.display()))?;
            let len = fs::metadata(&object)?.len();
            if len == 0 {
                bail!("dp-bpf: clang wrote an empty object {}", object.display());
            }
        }
    }

    let layout_src = bpf_dir.join("host/abi_layout.c");
    println!("cargo:rerun-if-changed={}", layout_src.display());
    let layout_bin = out.join("abi_layout");
    run(
        Command::new(&clang)
            .args(["-Wall", "-Werror", "-O0"])
            .arg("-idirafter")
            .arg(&asm_include)
            .arg(&layout_src)
            .arg("-o")
            .arg(&layout_bin),
        "compiling the host ABI layout program",
    )?;
    let output = Command::new(&layout_bin)
        .output()
        .with_context(|| format!("running {}", layout_bin.display()))?;
    if !output.status.success() {
        bail!("{} failed: {}", layout_bin.display(), output.status);
    }
    fs::write(out.join("abi_layout.rs"), &output.stdout)?;
    Ok(())
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let output = cmd
        .output()
        .with_context(|| format!("{what}: could not run {:?} (is clang installed?)", cmd))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\n{:?}\n{}",
            output.status,
            cmd,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
