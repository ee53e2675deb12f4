//! The commit a desired-state working copy is at.

use std::path::Path;

/// The HEAD commit of the repository containing `path`, or `None` when it
/// is not a git checkout (or has no commit yet).
pub fn head_commit(path: &Path) -> Option<String> {
    let repo = git2::Repository::discover(path).ok()?;
    let head = repo.head().ok()?;
    let commit = head.peel_to_commit().ok()?;
    Some(commit.id().to_string())
}
