//! Observing the directories vsa writes to: vhosts, htpasswd files,
//! certificates and access logs.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use vsa_core::config::Paths;
use vsa_core::plan::{Observed, ObservedFile};
use vsa_core::render::MANAGED_HEADER;

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
    })
}

/// True when a file's first line marks it as vsa's.
pub fn is_managed(content: &str) -> bool {
    content
        .lines()
        .next()
        .is_some_and(|l| l.trim_end() == MANAGED_HEADER)
}

fn entries(dir: &Path) -> Result<Vec<(String, std::fs::FileType)>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ObserveError::Read {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|source| ObserveError::Read {
            path: dir.to_owned(),
            source,
        })?;
        let Ok(name) = entry.file_name().into_string() else {
            continue; // not UTF-8: certainly not a file vsa wrote
        };
        let ft = entry.file_type().map_err(|source| ObserveError::Read {
            path: entry.path(),
            source,
        })?;
        out.push((name, ft));
    }
    Ok(out)
}

fn read_dir_files(dir: &Path, suffix: &str) -> Result<BTreeMap<String, ObservedFile>> {
    let mut out = BTreeMap::new();
    for (name, ft) in entries(dir)? {
        // Dot files include vsa's own temporary files during an atomic write.
        if !name.ends_with(suffix) || name.starts_with('.') || ft.is_dir() {
            continue;
        }
        let path = dir.join(&name);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // removed meanwhile
            Err(source) => return Err(ObserveError::Read { path, source }),
        };
        // A symlink or a non-UTF-8 file is never one vsa wrote.
        let content = String::from_utf8_lossy(&bytes).into_owned();
        let managed = ft.is_file() && is_managed(&content);
        out.insert(name, ObservedFile { content, managed });
    }
    Ok(out)
}

fn names_with_suffix(dir: &Path, suffix: &str) -> Result<BTreeSet<String>> {
    Ok(entries(dir)?
        .into_iter()
        .filter_map(|(name, _)| name.strip_suffix(suffix).map(str::to_owned))
        .collect())
}

/// Domains with both `live/<domain>/fullchain.pem` and `privkey.pem`.
fn certs_present(letsencrypt: &Path) -> Result<BTreeSet<String>> {
    let live = letsencrypt.join("live");
    let mut out = BTreeSet::new();
    for (name, _) in entries(&live)? {
        let dir = live.join(&name);
        if dir.join("fullchain.pem").is_file() && dir.join("privkey.pem").is_file() {
            out.insert(name);
        }
    }
    Ok(out)
}

/// Files vsa is writing start with this; observation skips dot files, and
/// the next apply removes any a crash left behind.
pub const TEMP_PREFIX: &str = ".vsa-tmp.";

/// How a managed file is written.
#[derive(Clone, Copy, Debug)]
pub struct FileMode {
    pub mode: u32,
    /// Group to own the file (nginx workers' group for htpasswd files).
    pub gid: Option<u32>,
}

/// Writes `content` to `dir/name` atomically: a temporary file in the same
/// directory, fsync, permissions, rename over the old file, fsync of the
/// directory. A crash at any point leaves the old file or the new one,
/// never a mix.
pub fn write_atomic(dir: &Path, name: &str, content: &[u8], mode: FileMode) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{TEMP_PREFIX}{name}.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(content)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode.mode))?;
        if let Some(gid) = mode.gid {
            std::os::unix::fs::fchown(&f, None, Some(gid))?;
        }
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, dir.join(name))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Removes `dir/name` only if it still carries the managed header: a file
/// someone took over by hand since it was observed is left alone
/// (`Ok(false)`).
pub fn remove_managed(dir: &Path, name: &str) -> io::Result<bool> {
    let path = dir.join(name);
    let content = match std::fs::read(&path) {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    let meta = std::fs::symlink_metadata(&path)?;
    if !meta.is_file() || !is_managed(&String::from_utf8_lossy(&content)) {
        return Ok(false);
    }
    std::fs::remove_file(&path)?;
    sync_dir(dir)?;
    Ok(true)
}

/// Creates an empty file (and its directory) if it does not exist.
pub fn ensure_file(dir: &Path, name: &str, mode: u32) -> io::Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(dir.join(name))
    {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes temporary files a killed writer left in `dir`.
pub fn clean_temp_files(dir: &Path) -> io::Result<usize> {
    let mut n = 0;
    for (name, ft) in entries(dir).map_err(|e| match e {
        ObserveError::Read { source, .. } => source,
    })? {
        if ft.is_file() && name.starts_with(TEMP_PREFIX) {
            std::fs::remove_file(dir.join(&name))?;
            n += 1;
        }
    }
    Ok(n)
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
