//! Reading a desired-state repository from disk into memory.
//!
//! `vsactl` reads the working copy as it is, uncommitted files included.

use std::io;
use std::path::{Path, PathBuf};

use vsa_core::span::Pos;
use vsa_core::{Problem, SourceFile};

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("{path}: not a desired-state repository: {source}")]
    NotFound { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
}

/// The manifest files of a repository: `fleet.yaml`, `sites/**.yaml` and
/// `stacks/**.yaml` (`.yml` too), paths relative to the repository root,
/// sorted. Files over the size limit are read only as far as needed to
/// refuse them.
pub fn read_repo(root: &Path) -> Result<(Vec<SourceFile>, Vec<Problem>), RepoError> {
    std::fs::metadata(root).map_err(|source| RepoError::NotFound {
        path: root.to_owned(),
        source,
    })?;
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for name in ["fleet.yaml", "fleet.yml"] {
        let p = root.join(name);
        if p.is_file() {
            read_one(root, &p, &mut files, &mut problems)?;
        }
    }
    for dir in ["sites", "stacks"] {
        let mut found = Vec::new();
        walk(&root.join(dir), &mut found, 0)?;
        found.sort();
        for p in found {
            read_one(root, &p, &mut files, &mut problems)?;
        }
    }
    Ok((files, problems))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) -> Result<(), RepoError> {
    if depth > 8 {
        return Ok(());
    }
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(RepoError::Read {
                path: dir.to_owned(),
                source,
            });
        }
    };
    for entry in rd {
        let entry = entry.map_err(|source| RepoError::Read {
            path: dir.to_owned(),
            source,
        })?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let ft = entry.file_type().map_err(|source| RepoError::Read {
            path: path.clone(),
            source,
        })?;
        if ft.is_dir() {
            walk(&path, out, depth + 1)?;
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            out.push(path);
        }
    }
    Ok(())
}

fn read_one(
    root: &Path,
    path: &Path,
    files: &mut Vec<SourceFile>,
    problems: &mut Vec<Problem>,
) -> Result<(), RepoError> {
    use std::io::Read;
    let rel = path
        .strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned();
    // A link may point within the repository (it is read as its target),
    // never outside it, and a link to nothing is that file's problem only.
    // What is not a regular file (a FIFO would block) is refused unread.
    let refuse = |problems: &mut Vec<Problem>, why: String| {
        problems.push(Problem::error(&rel, Pos::new(1, 1), why));
        Ok(())
    };
    let real = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) => {
            return refuse(
                problems,
                format!("cannot be read: {e} (a symbolic link that points nowhere?)"),
            );
        }
    };
    let root_real = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_owned());
    if !real.starts_with(&root_real) {
        return refuse(
            problems,
            "is a symbolic link to a file outside the repository: refused (the repository must hold everything it describes)".into(),
        );
    }
    match std::fs::metadata(&real) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return refuse(problems, "is not a regular file: refused unread".into()),
        Err(e) => return refuse(problems, format!("cannot be read: {e}")),
    }
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(&real)
        .map_err(|source| RepoError::Read {
            path: path.to_owned(),
            source,
        })?;
    // Read one byte past the limit: enough for the loader to refuse it.
    let mut bytes = Vec::new();
    f.take(vsa_core::load::MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| RepoError::Read {
            path: path.to_owned(),
            source,
        })?;
    match String::from_utf8(bytes) {
        Ok(text) => files.push(SourceFile { path: rel, text }),
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let before = &e.as_bytes()[..valid];
            let line = before.iter().filter(|b| **b == b'\n').count() + 1;
            let col = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
            problems.push(Problem::error(
                &rel,
                Pos::new(line as u32, col as u32),
                "the file is not valid UTF-8",
            ));
        }
    }
    Ok(())
}
