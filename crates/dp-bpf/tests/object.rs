//! The loader refuses objects it cannot trust, with errors that say what to do: a stale
//! object (built from another version of the map header) fails before any syscall, and a
//! program the kernel verifier rejects reports the verifier's log. Both objects are real:
//! compiled here with clang from modified copies of bpf/.

use std::{fs, path::Path, process::Command};

use serval_dp_bpf::{Dataplane, LoadError, LoadOptions, ObjectError, object};

const BPF_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/bpf");

/// Compiles bpf/serval_tc.c after applying `(file, from, to)` edits, like build.rs does.
fn compile_modified(edits: &[(&str, &str, &str)]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    // every source and header of bpf/ (the objects include each other's headers)
    let files: Vec<String> = fs::read_dir(BPF_DIR)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".c") || f.ends_with(".h"))
        .collect();
    for (f, _, _) in edits {
        assert!(files.iter().any(|x| x == f), "no bpf/{f}");
    }
    for file in &files {
        let file = file.as_str();
        let mut text = fs::read_to_string(Path::new(BPF_DIR).join(file)).unwrap();
        for (f, from, to) in edits {
            if *f == file {
                assert!(text.contains(from), "{file} no longer contains {from:?}");
                text = text.replacen(from, to, 1);
            }
        }
        fs::write(dir.path().join(file), text).unwrap();
    }
    let out = dir.path().join("modified.o");
    let status = Command::new(std::env::var("CLANG").unwrap_or_else(|_| "clang".into()))
        .args([
            "-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror",
        ])
        .arg("-D__TARGET_ARCH_x86")
        .args(["-idirafter", "/usr/include/x86_64-linux-gnu"])
        .arg("-c")
        .arg(dir.path().join("serval_tc.c"))
        .arg("-o")
        .arg(&out)
        .status()
        .expect("run clang");
    assert!(status.success(), "clang failed on the modified sources");
    fs::read(out).unwrap()
}

#[test]
fn stale_object_from_another_header_is_rejected_before_loading() {
    // conntrack values grew by 8 bytes in this "other version" of the header
    let stale = compile_modified(&[(
        "serval_maps.h",
        "\t__u32 pad3;\n};\n_Static_assert(sizeof(struct sv_ct_val) == 72",
        "\t__u32 pad3;\n\t__u64 extra;\n};\n_Static_assert(sizeof(struct sv_ct_val) == 80",
    )]);
    let err = object::validate("stale.o", &stale).unwrap_err();
    match &err {
        ObjectError::AbiMismatch {
            map,
            what,
            found,
            expected,
            ..
        } => {
            assert_eq!(*map, "sv_ct");
            assert_eq!(*what, "value size");
            assert_eq!((*found, *expected), (80, 72));
        }
        other => panic!("expected an ABI mismatch, got {other:?}"),
    }
    assert!(err.to_string().contains("stale"), "{err}");
    // the loader fails the same way, without touching the kernel (no root needed)
    let err = Dataplane::load_object("stale.o", &stale, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(err, LoadError::Object(ObjectError::AbiMismatch { .. })),
        "{err:?}"
    );
    // empty objects too
    let err = Dataplane::load_object("empty.o", &[], &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(err, LoadError::Object(ObjectError::Empty { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("rebuild"), "{err}");
}

#[test]
fn verifier_rejection_carries_the_verifier_log() {
    if !serval_sys::testing::require_root("verifier_rejection_carries_the_verifier_log") {
        return;
    }
    // drop the Ethernet header bounds check of the parser (serval_parse.h, included by
    // serval_tc.c): reading h_proto is then out of bounds
    let unsafe_obj = compile_modified(&[(
        "serval_parse.h",
        "\tif ((void *)(eth + 1) > data_end)\n\t\treturn SV_PARSE_MALFORMED;\n",
        "",
    )]);
    object::validate("unsafe.o", &unsafe_obj).expect("structurally fine: same maps and programs");
    let err = Dataplane::load_object("unsafe.o", &unsafe_obj, &LoadOptions::default())
        .expect_err("the verifier must reject an unchecked packet access");
    let LoadError::Verifier {
        program,
        verifier_log,
        ..
    } = &err
    else {
        panic!("expected a verifier rejection, got {err:?}");
    };
    assert!(object::PROGRAMS.contains(program));
    assert!(
        verifier_log.contains("invalid access to packet"),
        "verifier log: {verifier_log}"
    );
    let shown = err.to_string();
    assert!(shown.contains("verifier log") && shown.contains("invalid access to packet"));
}
