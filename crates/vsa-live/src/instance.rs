//! This vsa's instance id: made once in `paths.state`, carried by every
//! container it creates (`vsa.instance`), so that two vsa on one Docker
//! engine (a test machine, a migration) never take each other's.

use std::io;
use std::path::Path;

use crate::safe_fs::{Entry, FileMode, SafeDir, random_hex};

pub const INSTANCE_FILE: &str = "instance.id";

/// The id, if this host's vsa has one yet (read-only: for `diff`).
pub fn read(state: &Path) -> Option<String> {
    let dir = SafeDir::open(state).ok()??;
    match dir.read(INSTANCE_FILE, 256).ok()? {
        Entry::File(bytes) => parse(&bytes),
        _ => None,
    }
}

/// The id, made (once) when missing, with the env digest key.
pub fn ensure(state: &Path) -> io::Result<String> {
    ensure_env_key(state)?;
    let dir = SafeDir::private(state)?;
    match dir.read(INSTANCE_FILE, 256)? {
        Entry::File(bytes) => parse(&bytes).ok_or_else(|| {
            io::Error::other(format!(
                "{} does not hold an instance id (32 hex digits); vsa will not guess whose containers are its own",
                state.join(INSTANCE_FILE).display()
            ))
        }),
        Entry::Missing => {
            let id = random_hex(16);
            // Made exclusively: two processes starting at once agree on one.
            if dir.create_new(INSTANCE_FILE, 0o600)? {
                dir.write_atomic(INSTANCE_FILE, format!("{id}\n").as_bytes(), FileMode::private())?;
                return Ok(id);
            }
            read(state).ok_or_else(|| io::Error::other("the instance id is being written"))
        }
        Entry::Other(what) => Err(io::Error::other(format!(
            "{} is {what}",
            state.join(INSTANCE_FILE).display()
        ))),
    }
}

pub const ENV_KEY_FILE: &str = "env-digest.key";

/// The key env file digests are made with; an all-zero one before this
/// host's vsa made its own (read-only callers: `diff` on a fresh host,
/// where no container carries a digest yet).
pub fn env_key(state: &Path) -> Vec<u8> {
    SafeDir::open(state)
        .ok()
        .flatten()
        .and_then(|d| match d.read(ENV_KEY_FILE, 256).ok()? {
            Entry::File(bytes) => parse(&bytes),
            _ => None,
        })
        .map_or_else(|| vec![0; 16], String::into_bytes)
}

/// Makes the env digest key once (0600 in the private state dir).
pub fn ensure_env_key(state: &Path) -> io::Result<()> {
    let dir = SafeDir::private(state)?;
    if dir.create_new(ENV_KEY_FILE, 0o600)? {
        let key = random_hex(16);
        dir.write_atomic(
            ENV_KEY_FILE,
            format!("{key}\n").as_bytes(),
            FileMode::private(),
        )?;
    }
    Ok(())
}

fn parse(bytes: &[u8]) -> Option<String> {
    let id = std::str::from_utf8(bytes).ok()?.trim();
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn made_once_and_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        assert_eq!(super::read(&state), None);
        let id = super::ensure(&state).unwrap();
        assert_eq!(id.len(), 32);
        assert_eq!(super::ensure(&state).unwrap(), id);
        assert_eq!(super::read(&state), Some(id));
    }
}
