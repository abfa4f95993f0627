//! The agent process's heap: allocator settings made once at start ([`tune_allocator`]) and
//! the heap's own figures for the logs ([`heap_stats`]).
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
/// allocator's defaults stay). Call once, early in the agent process. Settings in the
/// environment (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`) win: glibc's own tunables for
/// operators who want other values.
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    {
        let set = |param: libc::c_int, env: &str, value: i32| {
            if std::env::var_os(env).is_some() {
                return;
            }
            // SAFETY: mallopt only changes allocator parameters; any value is accepted or
            // rejected (return 0) without touching live allocations.
            let ok = unsafe { libc::mallopt(param, value) };
            if ok == 0 {
                tracing::debug!(env, value, "the allocator refused a setting");
            }
        };
        set(libc::M_ARENA_MAX, "MALLOC_ARENA_MAX", ARENA_MAX);
        set(
            libc::M_MMAP_THRESHOLD,
            "MALLOC_MMAP_THRESHOLD_",
            MMAP_THRESHOLD,
        );
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
