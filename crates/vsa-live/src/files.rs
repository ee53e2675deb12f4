//! Observing the directories vsa writes to: vhosts, htpasswd files,
//! certificates (presence only) and access logs.

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
/// on a fresh host nothing exists yet.
pub fn observe(paths: &Paths) -> Result<Observed> {
    Ok(Observed {
        vhosts: read_dir_files(&paths.vhosts, ".conf")?,
        htpasswd: read_dir_files(&paths.htpasswd, ".htpasswd")?,
        certs: certs_present(&paths.letsencrypt)?,
        access_logs: names_with_suffix(&paths.access_logs, ".access.json")?,
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
