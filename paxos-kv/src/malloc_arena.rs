//! One glibc malloc arena for the whole node.
//!
//! Why: glibc gives each thread that allocates under contention an arena
//! of its own (up to 8 per core), and a block freed by any thread goes back
//! to the arena it came from, where only the threads attached to that arena
//! can reuse it. The KV table's blocks are allocated by more than one
//! thread: a node that recovers (or installs a received checkpoint)
//! restores millions of values on a startup or blocking thread, and the
//! event loop then replaces them as clients overwrite keys. Every value so
//! replaced left a hole in the restoring thread's arena that the loop could
//! never fill, so the loop's arena grew by the whole table: a node
//! restarted at 3M keys × 100 B and then overwritten reached 2.37–2.42× the
//! raw data in RSS, against 1.84–1.96× for a node that was never restarted;
//! with one arena, 1.88–1.96× (docs/BENCHMARKS.md). The node's threads
//! allocate little concurrently (one event loop, the RESP workers, the log
//! writer, a checkpoint), and glibc's per-thread cache serves most small
//! allocations without the arena's lock; the CPU cost measured in
//! interleaved pairs is in docs/BENCHMARKS.md.
//!
//! [`use_one_arena`] must run before the node starts any thread: an arena
//! limit applies to arenas created after it.

/// Limits glibc malloc to its main arena (`mallopt(M_ARENA_MAX, 1)`), so a
/// block freed by any thread can be reused by every thread. Does nothing
/// off glibc, or when `MALLOC_ARENA_MAX` is set in the environment (the
/// operator's choice wins). Call before starting any thread.
pub fn use_one_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
            return;
        }
        // SAFETY: mallopt has no memory-safety preconditions; called before
        // other threads exist, it races with no allocation.
        let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
        if ok != 1 {
            eprintln!("paxos-kv: mallopt(M_ARENA_MAX, 1) failed; memory freed by one thread may not be reused by others");
        }
    }
}
