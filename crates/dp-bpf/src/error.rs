//! Errors, one enum per concern: the embedded object, loading (maps, pins, verifier),
//! attaching, map access, and test runs. Each names the object and the fix.

use std::{io, path::PathBuf};

use thiserror::Error;

/// The BPF object handed to the loader is not one this build can use.
#[derive(Debug, Error)]
pub enum ObjectError {
    #[error("BPF object {name} is empty; rebuild serval-dp-bpf (build.rs compiles bpf/*.c)")]
    Empty { name: String },
    #[error(
        "BPF object {name} is not an eBPF ELF file ({reason}); rebuild serval-dp-bpf with clang -target bpf"
    )]
    NotBpfElf { name: String, reason: &'static str },
    #[error("BPF object {name} could not be parsed; rebuild serval-dp-bpf")]
    Parse {
        name: String,
        #[source]
        source: aya_obj::ParseError,
    },
    #[error(
        "BPF object {name} has no program {program}: the object is stale or from another build; rebuild serval-dp-bpf"
    )]
    MissingProgram { name: String, program: &'static str },
    #[error(
        "BPF object {name} has no map {map}: the object is stale or from another build; rebuild serval-dp-bpf"
    )]
    MissingMap { name: String, map: &'static str },
    #[error(
        "BPF object {name}: map {map} has {what} {found} bytes but this build's ABI (src/abi.rs) expects {expected}: \
         the object is stale; rebuild serval-dp-bpf so bpf/serval_maps.h and the Rust mirror agree"
    )]
    AbiMismatch {
        name: String,
        map: &'static str,
        what: &'static str,
        found: u32,
        expected: u32,
    },
}

/// Loading the programs and creating or reopening their maps failed.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error(transparent)]
    Object(#[from] ObjectError),
    #[error("invalid pin scope {scope:?}: {reason}")]
    InvalidScope { scope: String, reason: &'static str },
    #[error(
        "{path} is not a bpffs mount and mounting bpffs there failed; mount it with `mount -t bpf bpf {path}`"
    )]
    MountBpffs {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("inspecting the pinned map {path} (remove it if it is not Serval's)")]
    PinnedMapInfo {
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(
        "creating the maps of {object} failed (map sizes: {sizes}); lower the bpfMapSize* settings if the kernel is out of memory"
    )]
    Maps {
        object: String,
        sizes: String,
        #[source]
        source: aya::EbpfError,
    },
    #[error("program {program} not found in the loaded object")]
    ProgramMissing { program: &'static str },
    #[error("program {program} is not a tc (sched_cls) program")]
    ProgramType {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(
        "the kernel verifier rejected program {program}: {source}\nverifier log:\n{verifier_log}"
    )]
    Verifier {
        program: &'static str,
        verifier_log: String,
        #[source]
        source: io::Error,
    },
    #[error("loading program {program} failed")]
    Program {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
}

/// Attaching or detaching a program failed.
#[derive(Debug, Error)]
pub enum AttachError {
    #[error("entering network namespace {netns} to attach to {ifname}")]
    Netns {
        netns: String,
        ifname: String,
        #[source]
        source: serval_sys::Error,
    },
    #[error("attaching {program} to {ifname} ({hook}) in {netns} with {mode}")]
    Attach {
        program: &'static str,
        ifname: String,
        hook: &'static str,
        netns: String,
        mode: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("adding a clsact qdisc to {ifname} in {netns}")]
    Clsact {
        ifname: String,
        netns: String,
        #[source]
        source: aya::programs::tc::TcError,
    },
    #[error("pinning the link of {program} on {ifname} at {path}")]
    Pin {
        program: &'static str,
        ifname: String,
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("opening the pinned link {path}")]
    OpenPin {
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("replacing the program of the pinned link {path} (BPF_LINK_UPDATE)")]
    Update {
        path: PathBuf,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("querying the tcx programs of {ifname} in {netns}")]
    Query {
        ifname: String,
        netns: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("detaching the tc filters of {ifname} in {netns}")]
    DetachClsact {
        ifname: String,
        netns: String,
        #[source]
        source: aya::programs::tc::TcError,
    },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no loaded program for hook {hook}")]
    Program {
        hook: &'static str,
        #[source]
        source: LoadError,
    },
}

/// Reading or writing a map failed.
#[derive(Debug, Error)]
pub enum MapsError {
    #[error("map {map} is not in the loaded object")]
    Missing { map: &'static str },
    #[error("{op} map {map}")]
    Map {
        op: &'static str,
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Running a program with BPF_PROG_TEST_RUN failed.
#[derive(Debug, Error)]
pub enum TestRunError {
    #[error("no loaded program {program} to run")]
    Program {
        program: &'static str,
        #[source]
        source: LoadError,
    },
    #[error("BPF_PROG_TEST_RUN of {program} with a {len}-byte packet")]
    Run {
        program: &'static str,
        len: usize,
        #[source]
        source: aya::programs::ProgramError,
    },
}
