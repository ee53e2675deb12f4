//! Reading the desired state from git: the commit a working copy is at, and
//! the manifests as they are at any commit (for reviewing a change).

use std::path::Path;

use vsa_core::span::Pos;
use vsa_core::{Problem, SourceFile};

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("{path} is not inside a git repository: {source}")]
    NotARepo { path: String, source: git2::Error },
    #[error("cannot resolve `{rev}`: {}", .source.message())]
    Rev { rev: String, source: git2::Error },
    #[error("cannot read the tree of {rev}: {}", .source.message())]
    Tree { rev: String, source: git2::Error },
}

/// The HEAD commit of the repository containing `path`, or `None` when it
/// is not a git checkout (or has no commit yet).
pub fn head_commit(path: &Path) -> Option<String> {
    let repo = git2::Repository::discover(path).ok()?;
    let head = repo.head().ok()?;
    let commit = head.peel_to_commit().ok()?;
    Some(commit.id().to_string())
}

/// The manifest files at commit `rev`, as `read_repo` would find them in a
/// checkout of it, and the commit's full id.
///
/// `path` may be a subdirectory of the git repository: the desired state is
/// then read from the same subdirectory at `rev`.
pub fn files_at(
    path: &Path,
    rev: &str,
) -> Result<(String, Vec<SourceFile>, Vec<Problem>), GitError> {
    let repo = git2::Repository::discover(path).map_err(|source| GitError::NotARepo {
        path: path.display().to_string(),
        source,
    })?;
    let commit = repo
        .revparse_single(rev)
        .and_then(|o| o.peel_to_commit())
        .map_err(|source| GitError::Rev {
            rev: rev.to_owned(),
            source,
        })?;
    let tree_err = |source| GitError::Tree {
        rev: rev.to_owned(),
        source,
    };
    let mut tree = commit.tree().map_err(tree_err)?;
    // The desired state's place inside the git work tree.
    if let Some(workdir) = repo.workdir() {
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        let wd = std::path::absolute(workdir).unwrap_or_else(|_| workdir.to_owned());
        if let Ok(sub) = abs.strip_prefix(&wd)
            && !sub.as_os_str().is_empty()
        {
            let entry = tree.get_path(sub).map_err(tree_err)?;
            tree = entry
                .to_object(&repo)
                .and_then(|o| o.peel_to_tree())
                .map_err(tree_err)?;
        }
    }
    let mut files = Vec::new();
    let mut problems = Vec::new();
    let mut walk_err = None;
    tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
        let name = entry.name().unwrap_or("");
        let full = format!("{dir}{name}");
        let wanted = full == "fleet.yaml"
            || full == "fleet.yml"
            || ((full.starts_with("sites/") || full.starts_with("stacks/"))
                && (name.ends_with(".yaml") || name.ends_with(".yml"))
                && !name.starts_with('.'));
        if entry.kind() == Some(git2::ObjectType::Blob) && wanted {
            match repo.find_blob(entry.id()) {
                Ok(blob) => {
                    let bytes = blob.content();
                    if bytes.len() > vsa_core::load::MAX_FILE_BYTES {
                        // Let the loader refuse it with its usual message.
                        files.push(SourceFile {
                            path: full,
                            text: " ".repeat(vsa_core::load::MAX_FILE_BYTES + 1),
                        });
                    } else {
                        match std::str::from_utf8(bytes) {
                            Ok(t) => files.push(SourceFile {
                                path: full,
                                text: t.to_owned(),
                            }),
                            Err(_) => problems.push(Problem::error(
                                &full,
                                Pos::new(1, 1),
                                "the file is not valid UTF-8",
                            )),
                        }
                    }
                }
                Err(e) => {
                    walk_err = Some(e);
                    return git2::TreeWalkResult::Abort;
                }
            }
        }
        git2::TreeWalkResult::Ok
    })
    .map_err(tree_err)?;
    if let Some(e) = walk_err {
        return Err(tree_err(e));
    }
    files.sort_by(|a, b| {
        let rank = |p: &str| if p.starts_with("fleet.") { 0 } else { 1 };
        (rank(&a.path), &a.path).cmp(&(rank(&b.path), &b.path))
    });
    Ok((commit.id().to_string(), files, problems))
}
