//! Keeping the idle daemon small (glibc's malloc; a no-op elsewhere).
//!
//! glibc gives each thread that allocates its own arena (up to eight per
//! core) and keeps what a reconcile freed for the next one. The daemon
//! spends nearly all its life idle between short bursts (parse 1,000
//! manifests, render, observe, plan), so it caps the arenas and hands the
//! freed pages back to the kernel after each burst (ADR 0008).
#![allow(unsafe_code)]

/// How many malloc arenas the daemon's threads share, unless
/// `MALLOC_ARENA_MAX` says otherwise. The reconcile is one task; the
/// render and blocking threads barely contend.
const ARENAS: i32 = 2;

/// Caps glibc's malloc arenas. Call before the runtime starts threads.
pub fn limit_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc tunable; it is called at start-up,
    // before the process has other threads, and takes no pointers.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
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
