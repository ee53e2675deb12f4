//! One apply at a time per host: an exclusive lock on a file in
//! `paths.state`, shared by `vsactl apply` and the daemon.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const LOCK_FILE: &str = "apply.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot open the lock {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another apply is running on this host ({holder}, holding {path}); gave up after {secs} s — try again when it is done"
    )]
    Busy {
        path: PathBuf,
        holder: String,
        secs: u64,
    },
}

/// Held while this process applies; released on drop (or when the process
/// dies: the kernel drops the lock with the file descriptor).
#[derive(Debug)]
pub struct HostLock {
    _file: File,
    pub path: PathBuf,
}

impl HostLock {
    /// Takes the lock, waiting up to `timeout` for another holder to finish.
    pub fn acquire(state_dir: &Path, timeout: Duration) -> Result<HostLock, LockError> {
        let path = state_dir.join(LOCK_FILE);
        let open = |source| LockError::Open {
            path: path.clone(),
            source,
        };
        // In the private state dir, and never through a planted link.
        let mut file = vsa_live::safe_fs::SafeDir::private(state_dir)
            .and_then(|d| d.open_rw(LOCK_FILE, 0o600, false))
            .map_err(open)?;
        let deadline = Instant::now() + timeout;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    let holder = match holder.trim() {
                        "" => "unknown process".to_owned(),
                        h => h.to_owned(),
                    };
                    return Err(LockError::Busy {
                        path,
                        holder,
                        secs: timeout.as_secs(),
                    });
                }
                Err(TryLockError::Error(e)) => return Err(open(e)),
            }
        }
        // Say who holds it, for the message another process will print.
        let _ = file.set_len(0);
        let _ = file.seek(SeekFrom::Start(0));
        let _ = write!(file, "pid {}", std::process::id());
        Ok(HostLock { _file: file, path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_waits_then_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let first = HostLock::acquire(dir.path(), Duration::ZERO).unwrap();
        let err = HostLock::acquire(dir.path(), Duration::from_millis(200)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("another apply is running"), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        HostLock::acquire(dir.path(), Duration::ZERO).unwrap();
    }
}
