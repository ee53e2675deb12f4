//! libgit2's network timeouts: process-wide settings, made once before
//! the first fetch.
//!
//! Without them libgit2 waits for ever on a remote that accepted the
//! connection and then went quiet. With them, connecting and each read or
//! write of an HTTPS fetch give up after `repo.timeout`, and libgit2 hands
//! the same bound to libssh2 for each SSH operation. A remote that keeps
//! sending a byte now and then is bounded only by the daemon's own cap on
//! the whole fetch (`Daemon::refresh_remote`).
#![allow(unsafe_code)]

use std::time::Duration;

/// Sets libgit2's connect and read/write timeouts. Call before any thread
/// uses libgit2.
pub fn set(timeout: Duration) {
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: these options store an int in libgit2's globals (after
    // git2 initialised the library); they take no pointers, and nothing
    // else uses libgit2 yet: the daemon sets them before its first fetch.
    let set = unsafe {
        git2::opts::set_server_connect_timeout_in_milliseconds(ms)
            .and_then(|()| git2::opts::set_server_timeout_in_milliseconds(ms))
    };
    if let Err(e) = set {
        tracing::warn!(error = %e.message(), "cannot set libgit2's network timeouts");
    }
}
