//! The agent process's glibc heap: allocator settings made once at start ([`tune_allocator`])
//! and the heap's own figures ([`heap_stats`]). In the `serval` binary Rust's allocations go
//! to mimalloc (its global allocator, configured in crates/cli/src/main.rs); glibc's heap
//! then serves the C code (sqlite) only, and these settings keep it small. Other binaries
//! that embed the agent with the system allocator get them for everything.
//!
//! The agent holds large, long-lived maps (the calculation's model, the desired state, the
//! eBPF driver's mirrors) built from bursts of short-lived ones (decoded watch events, the
//! temporary maps of a calculation). With glibc's default of up to 8 malloc arenas per core,
//! each thread that allocates in such a burst (the two runtime workers, the dataplane driver
//! thread, blocking-pool threads) grows an arena of its own, and the free space left in each
//! after the burst stays resident: measured at 50,000 Services + 10,000 NetworkPolicies, 287
//! MiB of arenas held 210 MiB in use. One arena shares that free space between threads
//! (contention is moot at two runtime workers), and a fixed mmap threshold keeps large
//! temporary buffers (hash tables of a full calculation, the map mirrors being rebuilt) out
//! of the arenas: they are mapped and unmapped whole instead of raising the arena's top.

/// Malloc arenas the agent process uses.
pub const ARENA_MAX: i32 = 1;

/// Allocations at least this large are mapped on their own (and unmapped when freed). A
/// fixed value also turns off glibc's dynamic threshold, which otherwise rises to the size
/// of the largest mapped block freed so far and lets later large buffers fragment the heap.
pub const MMAP_THRESHOLD: i32 = 256 * 1024;

/// Applies [`ARENA_MAX`] and [`MMAP_THRESHOLD`] to this process (glibc only; elsewhere the
/// allocator's defaults stay). Settings in the environment (`MALLOC_ARENA_MAX`,
/// `MALLOC_MMAP_THRESHOLD_`) win: glibc's own tunables for operators who want other values.
///
/// A `serval agent` process gets this before `main` ([`TUNE_AT_START`]): glibc fixes its
/// arena limit when a thread first needs an arena of its own, so a limit set after the CLI's
/// runtime threads have allocated only stops further arenas. [`crate::run`] calls it again
/// (a no-op then) for other binaries that start the agent.
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    {
        let set = |param: libc::c_int, env: &str, value: i32| {
            if std::env::var_os(env).is_some() {
                return;
            }
            // SAFETY: mallopt only changes allocator parameters; any value is accepted or
            // rejected (return 0) without touching live allocations.
            unsafe { libc::mallopt(param, value) };
        };
        set(libc::M_ARENA_MAX, "MALLOC_ARENA_MAX", ARENA_MAX);
        set(
            libc::M_MMAP_THRESHOLD,
            "MALLOC_MMAP_THRESHOLD_",
            MMAP_THRESHOLD,
        );
    }
}

/// Runs [`tune_allocator`] at process start (an ELF constructor; glibc passes it `argc` and
/// `argv`) when the process is `serval agent` (its first argument is `agent`, as the lab and
/// the docs start it); every other process that links this crate keeps glibc's defaults.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[used]
#[unsafe(link_section = ".init_array")]
pub static TUNE_AT_START: extern "C" fn(
    libc::c_int,
    *const *const libc::c_char,
    *const *const libc::c_char,
) = tune_at_start;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
extern "C" fn tune_at_start(
    argc: libc::c_int,
    argv: *const *const libc::c_char,
    _envp: *const *const libc::c_char,
) {
    if argc < 2 || argv.is_null() {
        return;
    }
    // SAFETY: glibc calls .init_array functions with the process's argc and argv: argv holds
    // argc valid NUL-terminated strings, so argv[1] exists when argc >= 2.
    let first = unsafe { std::ffi::CStr::from_ptr(*argv.add(1)) };
    if first.to_bytes() == b"agent" {
        tune_allocator();
    }
}

/// The heap as the allocator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes in live allocations (arenas and mapped blocks).
    pub in_use: usize,
    /// Bytes the arenas hold free (resident unless trimmed).
    pub free: usize,
    /// Bytes in blocks mapped on their own.
    pub mapped: usize,
}

/// The current heap figures (glibc's `mallinfo2`); `None` with another allocator.
pub fn heap_stats() -> Option<HeapStats> {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallinfo2 only reads the allocator's counters.
        let m = unsafe { libc::mallinfo2() };
        Some(HeapStats {
            in_use: m.uordblks + m.hblkhd,
            free: m.fordblks,
            mapped: m.hblkhd,
        })
    }
    #[cfg(not(target_env = "gnu"))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_stats_count_a_live_allocation() {
        let Some(before) = heap_stats() else { return };
        let block = vec![1u8; 64 * 1024 * 1024];
        let during = heap_stats().expect("glibc");
        // Other tests of this process allocate meanwhile: half the block is margin enough.
        assert!(
            during.in_use >= before.in_use + block.len() / 2,
            "{before:?} -> {during:?}"
        );
        let block_len = block.len();
        drop(block);
        let after = heap_stats().expect("glibc");
        assert!(
            after.in_use + block_len / 2 <= during.in_use,
            "{during:?} -> {after:?}"
        );
    }
}
