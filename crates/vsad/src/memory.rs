//! Keeping the idle daemon small (glibc's malloc; a no-op elsewhere).
//!
//! glibc gives each thread that allocates its own arena (up to eight per
//! core) and keeps what a reconcile freed for the next one. The daemon
//! spends nearly all its life idle between short bursts (parse 1,000
//! manifests, render, observe, plan), so it caps the arenas and hands the
//! freed pages back to the kernel after each burst (ADR 0008).
#![allow(unsafe_code)]

/// Caps glibc's malloc arenas at two, unless the operator chose
/// (`MALLOC_ARENA_MAX`, or `glibc.malloc.arena_max` in `GLIBC_TUNABLES`).
/// The reconcile is one task; the render and blocking threads barely
/// contend. Call first thing in `main`, before any thread exists.
pub fn limit_arenas() {
    let chosen = std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.arena_max"));
    if chosen {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc tunable and takes no pointers; it
    // is MT-Unsafe, and `main` calls this before the process has another
    // thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns the free pages of every arena to the kernel.
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let started = std::time::Instant::now();
        // SAFETY: malloc_trim takes no pointers and is thread-safe (it
        // locks each arena in turn).
        unsafe {
            libc::malloc_trim(0);
        }
        tracing::trace!(
            took_us = started.elapsed().as_micros() as u64,
            "malloc_trim"
        );
    }
}
