//! Observing the directories vsa writes to: vhosts, htpasswd files,
//! certificates and access logs.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use vsa_core::config::Paths;
use vsa_core::plan::{Observed, ObservedFile};
use vsa_core::render::MANAGED_HEADER;

use crate::safe_fs::{Entry, SafeDir};
pub use crate::safe_fs::{FileMode, TEMP_PREFIX};
use rustix::fs::FileType;

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
}

type Result<T, E = ObserveError> = std::result::Result<T, E>;

/// Reads what is on the host now. A missing directory is simply empty:
/// on a fresh host nothing exists yet. `vsa_certs` (which certificates vsa
/// issued) is the state store's to fill in, `docker` and `env_files` the
/// Docker adapter's (`observe_docker`).
pub fn observe(paths: &Paths) -> Result<Observed> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let cert_info = crate::certs::observe(&paths.letsencrypt, now)
        .map_err(|source| ObserveError::Read {
            path: paths.letsencrypt.join("live"),
            source,
        })?
        .into_iter()
        .map(|c| (c.domain.clone(), c))
        .collect();
    Ok(Observed {
        vhosts: read_dir_files(&paths.vhosts, ".conf")?,
        htpasswd: read_dir_files(&paths.htpasswd, ".htpasswd")?,
        certs: certs_present(&paths.letsencrypt)?,
        access_logs: names_with_suffix(&paths.access_logs, ".access.json")?,
        cert_info,
        vsa_certs: BTreeSet::new(),
        now,
        docker: None,
        docker_error: None,
        env_files: BTreeMap::new(),
        nginx_served: None,
        instance: None,
    })
}

/// True when a file's first line marks it as vsa's.
pub fn is_managed(content: &str) -> bool {
    content
        .lines()
        .next()
        .is_some_and(|l| l.trim_end() == MANAGED_HEADER)
}

/// The largest file observation reads: a rendered vhost is a few KiB, an
/// htpasswd file of ten thousand users well under this. Anything larger is
/// observed as someone else's file, unread.
pub const MAX_FILE: u64 = 4 << 20;

/// A directory (when it exists) and its entries.
type Listing = (Option<SafeDir>, Vec<(String, FileType)>);

fn entries(dir: &Path) -> Result<Listing> {
    let read_err = |source| ObserveError::Read {
        path: dir.to_owned(),
        source,
    };
    let Some(d) = SafeDir::open(dir).map_err(read_err)? else {
        return Ok((None, Vec::new()));
    };
    let list = d.entries().map_err(read_err)?;
    Ok((Some(d), list))
}

fn read_dir_files(dir: &Path, suffix: &str) -> Result<BTreeMap<String, ObservedFile>> {
    let mut out = BTreeMap::new();
    let (Some(d), list) = entries(dir)? else {
        return Ok(out);
    };
    for (name, ft) in list {
        // Dot files include vsa's own temporary files during an atomic write.
        if !name.ends_with(suffix) || name.starts_with('.') {
            continue;
        }
        // Read without following a link or blocking on a FIFO: what is not
        // a regular file (a directory too) is never vsa's, and its content
        // is nobody's business here. It stays in the map, so that the plan
        // sees a name in the way rather than a free one.
        let entry = if ft == FileType::RegularFile || ft == FileType::Unknown {
            d.read(&name, MAX_FILE)
                .map_err(|source| ObserveError::Read {
                    path: dir.join(&name),
                    source,
                })?
        } else {
            Entry::Other(String::new())
        };
        let observed = match entry {
            Entry::Missing => continue, // removed meanwhile
            Entry::File(bytes) => {
                // A non-UTF-8 file is never one vsa wrote.
                let content = String::from_utf8_lossy(&bytes).into_owned();
                let managed = is_managed(&content);
                ObservedFile { content, managed }
            }
            Entry::Other(_) => ObservedFile {
                content: String::new(),
                managed: false,
            },
        };
        out.insert(name, observed);
    }
    Ok(out)
}

fn names_with_suffix(dir: &Path, suffix: &str) -> Result<BTreeSet<String>> {
    Ok(entries(dir)?
        .1
        .into_iter()
        .filter_map(|(name, _)| name.strip_suffix(suffix).map(str::to_owned))
        .collect())
}

/// Domains with both `live/<domain>/fullchain.pem` and `privkey.pem`.
fn certs_present(letsencrypt: &Path) -> Result<BTreeSet<String>> {
    let live = letsencrypt.join("live");
    let mut out = BTreeSet::new();
    for (name, _) in entries(&live)?.1 {
        let dir = live.join(&name);
        if dir.join("fullchain.pem").is_file() && dir.join("privkey.pem").is_file() {
            out.insert(name);
        }
    }
    Ok(out)
}

/// Writes `content` to `dir/name` atomically (see [`SafeDir::write_atomic`]),
/// creating the operator's directory `dir` when missing.
pub fn write_atomic(dir: &Path, name: &str, content: &[u8], mode: FileMode) -> io::Result<()> {
    SafeDir::create(dir, 0o755)?.write_atomic(name, content, mode)
}

/// Removes `dir/name` only if it is a regular file that still carries the
/// managed header: a file someone took over by hand since it was observed,
/// or a link planted under its name, is left alone (`Ok(false)`).
pub fn remove_managed(dir: &Path, name: &str) -> io::Result<bool> {
    let Some(d) = SafeDir::open(dir)? else {
        return Ok(true);
    };
    match d.read(name, MAX_FILE)? {
        Entry::Missing => Ok(true),
        Entry::File(content) if is_managed(&String::from_utf8_lossy(&content)) => {
            d.remove(name)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Creates an empty file (and its directory) if nothing has its name.
pub fn ensure_file(dir: &Path, name: &str, mode: u32) -> io::Result<bool> {
    SafeDir::create(dir, 0o755)?.create_new(name, mode)
}

/// Removes temporary files a killed writer left in `dir`, and whatever
/// else was planted under a temporary name (never followed).
pub fn clean_temp_files(dir: &Path) -> io::Result<usize> {
    match SafeDir::open(dir)? {
        Some(d) => d.clean_temp_files(),
        None => Ok(0),
    }
}

/// Who runs this process, for the audit trail's `cli:<user>`: the real
/// uid's name from `/etc/passwd` (never `$USER`, which anyone sets to
/// anything, a newline included); as root under sudo, the user sudo names.
/// Only `[A-Za-z0-9._@-]` is kept.
pub fn acting_user() -> String {
    let uid = rustix::process::getuid().as_raw();
    let clean = |s: &str| -> Option<String> {
        let s: String = s
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "._@-".contains(*c))
            .take(64)
            .collect();
        (!s.is_empty()).then_some(s)
    };
    if uid == 0
        && let Some(user) = std::env::var("SUDO_USER").ok().as_deref().and_then(clean)
    {
        return user;
    }
    let name = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let mut parts = l.split(':');
                let name = parts.next()?;
                parts.next()?;
                (parts.next()?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
            })
        });
    name.as_deref()
        .and_then(clean)
        .unwrap_or_else(|| format!("uid{uid}"))
}

/// The gid of a group, from `/etc/group`.
pub fn group_id(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let mut parts = l.split(':');
        (parts.next()? == name).then_some(())?;
        parts.next()?;
        parts.next()?.parse().ok()
    })
}
