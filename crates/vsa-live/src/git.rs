//! Reading the desired state from git: the commit a working copy is at, and
//! the manifests as they are at any commit (for reviewing a change).

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};

use vsa_core::span::Pos;
use vsa_core::{Problem, SourceFile};

use crate::known_hosts::{KnownHost, check_known_hosts, known_hosts_name, ssh_key_type, ssh_port};

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

/// A remote the daemon follows (DESIGN §4 `repo.*`).
#[derive(Clone, Debug)]
pub struct Remote {
    /// `file://`, `https://` or `ssh://` (also `user@host:path`).
    pub url: String,
    pub branch: String,
    /// HTTPS: a token, sent as the password (user `x-access-token`).
    pub token_file: Option<std::path::PathBuf>,
    /// SSH: a private key file (no passphrase).
    pub ssh_key_file: Option<std::path::PathBuf>,
    /// SSH: an OpenSSH `known_hosts` file that alone decides which server
    /// host keys are trusted. Without it libgit2 checks `~/.ssh/known_hosts`
    /// (`$HOME`). An unknown or changed key is refused either way.
    pub known_hosts_file: Option<std::path::PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("cannot clone {url} into {path}: {}", .source.message())]
    Clone {
        url: String,
        path: String,
        source: git2::Error,
    },
    #[error("{path} exists and is not a git clone; move it away or point repo.path elsewhere")]
    NotAClone { path: String },
    #[error("cannot fetch {branch} from {url}: {}", .source.message())]
    Fetch {
        url: String,
        branch: String,
        source: git2::Error,
    },
    #[error("{url} has no branch {branch} (repo.branch)")]
    NoBranch { url: String, branch: String },
    #[error("cannot read {what} {path}: {source}")]
    Secret {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("cannot check out {commit} in {path}: {}", .source.message())]
    Checkout {
        commit: String,
        path: String,
        source: git2::Error,
    },
}

/// What the callbacks saw that libgit2's own error messages hide: libgit2
/// replaces a refusing host key check's message with its generic "invalid
/// or unknown remote ssh hostkey", and sshd may hang up on a refused key
/// before the credentials callback hears of it.
#[derive(Debug, Default)]
struct Notes {
    /// The server's SSH host key: `[host]:port (type SHA256:...)`.
    host_key: Option<String>,
    /// Why `repo.known_hosts_file` refused it.
    host_key_refused: Option<String>,
    /// The credential offered last: `the key in repo.ssh_key_file ...`.
    offered: Option<String>,
}

type SharedNotes = std::rc::Rc<std::cell::RefCell<Notes>>;

fn read_config_file(what: &'static str, path: &Path) -> Result<String, SyncError> {
    std::fs::read_to_string(path).map_err(|source| SyncError::Secret {
        what,
        path: path.display().to_string(),
        source,
    })
}

impl Remote {
    fn fetch_options(&self) -> Result<(git2::FetchOptions<'static>, SharedNotes), SyncError> {
        let token = match &self.token_file {
            Some(p) => Some((
                read_config_file("repo.token_file", p)?.trim().to_owned(),
                p.display().to_string(),
            )),
            None => None,
        };
        let known_hosts = match &self.known_hosts_file {
            Some(p) => Some((
                read_config_file("repo.known_hosts_file", p)?,
                p.display().to_string(),
            )),
            None => None,
        };
        if let Some((token, path)) = &token
            && token.is_empty()
        {
            return Err(SyncError::Secret {
                what: "repo.token_file",
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "the file is empty"),
            });
        }
        // The token goes to repo.url's own scheme, host and port only: a
        // redirect elsewhere (libgit2 follows one on the first request)
        // gets nothing.
        let token_origin = url::Url::parse(&self.url).ok().map(|u| u.origin());
        let key = self.ssh_key_file.clone();
        let notes = SharedNotes::default();
        let asked = notes.clone();
        // What was offered already: libgit2 asks again after a refusal,
        // and the same secret again would only be refused again (and
        // count against the server's limits, e.g. sshd's MaxAuthTries).
        let (mut gave_key, mut gave_token) = (false, false);
        let mut callbacks = git2::RemoteCallbacks::new();
        callbacks.credentials(move |url, username, allowed| {
            let refused = |what: &Option<String>| {
                let what = what
                    .as_deref()
                    .unwrap_or("the credentials (repo.token_file / repo.ssh_key_file)");
                git2::Error::new(
                    git2::ErrorCode::Auth,
                    git2::ErrorClass::Callback,
                    format!("the remote refused {what}"),
                )
            };
            if allowed.contains(git2::CredentialType::SSH_KEY)
                && let Some(key) = &key
            {
                if gave_key {
                    return Err(refused(&asked.borrow().offered));
                }
                gave_key = true;
                let user = username.unwrap_or("git");
                asked.borrow_mut().offered = Some(format!(
                    "the key in repo.ssh_key_file {} for user `{user}`",
                    key.display()
                ));
                return git2::Cred::ssh_key(user, None, key, None);
            }
            if allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT)
                && let Some((token, path)) = &token
            {
                let asking = url::Url::parse(url).ok();
                let same_origin = asking.as_ref().map(|u| u.origin()) == token_origin;
                if !same_origin || asking.as_ref().is_none_or(|u| u.scheme() != "https") {
                    return Err(git2::Error::new(
                        git2::ErrorCode::Auth,
                        git2::ErrorClass::Callback,
                        format!(
                            "{} asks for credentials; the token in repo.token_file {path} is sent only to repo.url's own host over https",
                            redacted(url)
                        ),
                    ));
                }
                if gave_token {
                    return Err(refused(&asked.borrow().offered));
                }
                gave_token = true;
                asked.borrow_mut().offered = Some(format!(
                    "the token in repo.token_file {path} (user `x-access-token`)"
                ));
                return git2::Cred::userpass_plaintext("x-access-token", token);
            }
            if allowed.contains(git2::CredentialType::USERNAME) {
                return git2::Cred::username(username.unwrap_or("git"));
            }
            if asked.borrow().offered.is_some() {
                return Err(refused(&asked.borrow().offered));
            }
            Err(git2::Error::from_str(
                "the remote asks for credentials: set repo.token_file (HTTPS) or repo.ssh_key_file (SSH)",
            ))
        });
        let port = ssh_port(&self.url);
        let seen = notes.clone();
        callbacks.certificate_check(move |cert, host| {
            check_host_key(cert, host, port, known_hosts.as_ref(), &seen)
        });
        let mut fo = git2::FetchOptions::new();
        fo.remote_callbacks(callbacks);
        Ok((fo, notes))
    }

    /// libgit2's error, with what the callbacks know about it.
    fn explain(&self, error: git2::Error, notes: &SharedNotes) -> git2::Error {
        let notes = notes.borrow();
        if let Some(refusal) = &notes.host_key_refused {
            return git2::Error::new(git2::ErrorCode::Certificate, git2::ErrorClass::Ssh, refusal);
        }
        if error.code() == git2::ErrorCode::Certificate
            && error.class() == git2::ErrorClass::Ssh
            && let Some(shown) = &notes.host_key
        {
            let home = std::env::var("HOME").unwrap_or_else(|_| "unset".to_owned());
            return git2::Error::new(
                error.code(),
                error.class(),
                format!(
                    "the host key of {shown} is unknown or does not match ~/.ssh/known_hosts ($HOME is {home}); refusing to connect (set repo.known_hosts_file to a file holding the server's key)"
                ),
            );
        }
        // sshd may hang up on a refused key (MaxAuthTries) before libgit2
        // asks for another: libssh2 then reports a failed read.
        if error.class() == git2::ErrorClass::Ssh
            && error.message().contains("authentication")
            && let Some(offered) = &notes.offered
        {
            return git2::Error::new(
                git2::ErrorCode::Auth,
                error.class(),
                format!("the remote refused {offered} ({})", error.message()),
            );
        }
        // libgit2's timeouts (vsad sets them from repo.timeout) surface as
        // the socket's or libssh2's "timed out", or through OpenSSL as
        // EAGAIN.
        let message = error.message().to_ascii_lowercase();
        if message.contains("timed out") || message.contains("resource temporarily unavailable") {
            return git2::Error::new(
                git2::ErrorCode::GenericError,
                error.class(),
                format!(
                    "the remote did not answer within repo.timeout ({})",
                    error.message()
                ),
            );
        }
        // libgit2 reports a TLS certificate it could not verify as a
        // generic error of class SSL.
        if error.class() == git2::ErrorClass::Ssl
            && (error.code() == git2::ErrorCode::Certificate
                || error.message().contains("certificate"))
        {
            // git2's vendored OpenSSL reads the CA store openssl-probe
            // found, or $SSL_CERT_FILE / $SSL_CERT_DIR.
            return git2::Error::new(
                error.code(),
                error.class(),
                format!(
                    "{} (vsad trusts the system's CA store; for a private CA, point SSL_CERT_FILE in its environment at a PEM bundle that holds it)",
                    error.message()
                ),
            );
        }
        error
    }

    fn tracking_ref(&self) -> String {
        format!("refs/remotes/origin/{}", self.branch)
    }
}

/// `certificate_check`: a TLS certificate keeps OpenSSL's verdict; an SSH
/// host key is checked against `known_hosts` (`(text, path)` of
/// `repo.known_hosts_file`), else left to libgit2's `~/.ssh/known_hosts`.
/// What it saw goes into `notes`, for [`Remote::explain`].
fn check_host_key(
    cert: &git2::cert::Cert<'_>,
    host: &str,
    port: u16,
    known_hosts: Option<&(String, String)>,
    notes: &SharedNotes,
) -> Result<git2::CertificateCheckStatus, git2::Error> {
    // TLS: OpenSSL's verdict against the CA store stands.
    let Some(hostkey) = cert.as_hostkey() else {
        return Ok(git2::CertificateCheckStatus::CertificatePassthrough);
    };
    let Some(raw) = hostkey.hostkey() else {
        // Without the raw key there is nothing to check a file of
        // our own against; never fall back to ~/.ssh for it.
        if known_hosts.is_none() {
            return Ok(git2::CertificateCheckStatus::CertificatePassthrough);
        }
        let refusal =
            format!("{host} sent no host key that repo.known_hosts_file could be checked against");
        notes.borrow_mut().host_key_refused = Some(refusal.clone());
        return Err(git2::Error::new(
            git2::ErrorCode::Certificate,
            git2::ErrorClass::Ssh,
            refusal,
        ));
    };
    let name = known_hosts_name(host, port);
    let key_type = ssh_key_type(raw)
        .or_else(|| hostkey.hostkey_type().map(|t| t.name().to_owned()))
        .unwrap_or_else(|| "unknown".to_owned());
    let fingerprint = hostkey
        .hash_sha256()
        .map(|h| format!(" SHA256:{}", STANDARD_NO_PAD.encode(h)))
        .unwrap_or_default();
    let shown = format!("{name} ({key_type}{fingerprint})");
    notes.borrow_mut().host_key = Some(shown.clone());
    // Without a file of our own, libgit2 checks ~/.ssh/known_hosts.
    let Some((text, path)) = known_hosts else {
        return Ok(git2::CertificateCheckStatus::CertificatePassthrough);
    };
    let refusal = match check_known_hosts(text, &name, &key_type, &STANDARD.encode(raw)) {
        KnownHost::Match => return Ok(git2::CertificateCheckStatus::CertificateOk),
        KnownHost::Revoked { line } => format!(
            "the host key of {shown} is marked @revoked in repo.known_hosts_file {path} (line {line}); refusing to connect"
        ),
        KnownHost::Changed { line } => format!(
            "the host key of {shown} does not match the {key_type} key for it in repo.known_hosts_file {path} (line {line}); refusing to connect (if the server's key really changed, replace that line)"
        ),
        KnownHost::Unknown {
            other_types,
            hashed,
        } => {
            let keyscan = if port == 22 {
                format!("ssh-keyscan -t {key_type} {host}")
            } else {
                format!("ssh-keyscan -t {key_type} -p {port} {host}")
            };
            let why = if !other_types.is_empty() {
                format!(
                    " (it has {} keys for this host only; libssh2 picks the key type by its own preference)",
                    other_types.join(", ")
                )
            } else if hashed {
                " (hashed `|1|` entries are not supported: write host names in clear)".to_owned()
            } else {
                String::new()
            };
            format!(
                "the host key of {shown} is not in repo.known_hosts_file {path}{why}; refusing an unknown host (add its key, e.g. from `{keyscan}`, after checking the fingerprint)"
            )
        }
    };
    notes.borrow_mut().host_key_refused = Some(refusal.clone());
    Err(git2::Error::new(
        git2::ErrorCode::Certificate,
        git2::ErrorClass::Ssh,
        refusal,
    ))
}

/// `url` as errors and logs may show it: the user and password of an
/// HTTP(S) URL (`https://user:TOKEN@host/…`, `https://TOKEN@host/…`), or
/// the password of another kind, become `***`. Errors reach
/// `/api/status`, which needs no more than the dashboard token to read.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        // Over HTTP the user name may be the token itself
        // (`https://TOKEN@host/...`): all of it goes.
        Some((_, host)) if scheme.starts_with("http") => format!("{scheme}://***@{host}{path}"),
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

/// Brings the clone at `path` up to date with `remote`: clones it when
/// `path` is absent or empty, else fetches the branch. Returns the commit
/// at the tip of the remote branch. The work tree is left alone (see
/// [`checkout`]).
pub fn fetch(path: &Path, remote: &Remote) -> Result<String, SyncError> {
    let is_empty_dir = |p: &Path| std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_none());
    let repo = if !path.exists() || is_empty_dir(path) {
        // A first clone is `git init` and a fetch: nothing is checked out
        // before the commit validated ([`checkout`]).
        git2::Repository::init(path).map_err(|source| SyncError::Clone {
            url: redacted(&remote.url),
            path: path.display().to_string(),
            source,
        })?
    } else {
        let repo = git2::Repository::open(path).map_err(|_| SyncError::NotAClone {
            path: path.display().to_string(),
        })?;
        // A clone made by an older vsad keeps its URL (perhaps with a
        // password) in .git/config as `origin`: forget it.
        if repo.find_remote("origin").is_ok() {
            let _ = repo.remote_delete("origin");
        }
        repo
    };
    // Until the branch was fetched once, a failure is the clone's.
    let cloned = repo.refname_to_id(&remote.tracking_ref()).is_ok();
    let failed = |source| {
        if cloned {
            SyncError::Fetch {
                url: redacted(&remote.url),
                branch: remote.branch.clone(),
                source,
            }
        } else {
            SyncError::Clone {
                url: redacted(&remote.url),
                path: path.display().to_string(),
                source,
            }
        }
    };
    // An anonymous remote: the URL (which may carry a user or password)
    // is never written into the clone's .git/config, and the configured
    // one is always the one fetched from.
    let mut origin = repo.remote_anonymous(&remote.url).map_err(failed)?;
    let (mut fo, notes) = remote.fetch_options()?;
    fo.download_tags(git2::AutotagOption::None);
    // FETCH_HEAD is not needed, and the reflog names the fetch, not the
    // URL (libgit2 would write an anonymous remote's URL there).
    fo.update_fetchhead(false);
    let refspec = format!("+refs/heads/{}:{}", remote.branch, remote.tracking_ref());
    origin
        .fetch(&[refspec.as_str()], Some(&mut fo), Some("vsad: fetch"))
        .map_err(|source| failed(remote.explain(source, &notes)))?;
    drop(origin);
    let tip = repo
        .refname_to_id(&remote.tracking_ref())
        .map_err(|_| SyncError::NoBranch {
            url: redacted(&remote.url),
            branch: remote.branch.clone(),
        })?;
    Ok(tip.to_string())
}

/// Removes the lock files a killed fetch or checkout may have left in the
/// clone at `path` (`.git/refs/**.lock`, `index.lock`, `HEAD.lock`,
/// `packed-refs.lock`, `config.lock`); each would fail every later fetch
/// with "file exists". Only for start-up: the clone is the daemon's own,
/// and nothing else writes it. Returns what it removed.
pub fn remove_stale_locks(path: &Path) -> Vec<std::path::PathBuf> {
    let git = path.join(".git");
    let mut locks: Vec<std::path::PathBuf> =
        ["index.lock", "HEAD.lock", "packed-refs.lock", "config.lock"]
            .iter()
            .map(|f| git.join(f))
            .filter(|p| p.is_file())
            .collect();
    let mut dirs = vec![git.join("refs")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let p = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "lock") {
                locks.push(p);
            }
        }
    }
    locks.retain(|p| std::fs::remove_file(p).is_ok());
    locks
}

/// Makes the work tree at `path` exactly `commit` (HEAD detached there):
/// the daemon's clone is its own, so local edits to tracked files go.
pub fn checkout(path: &Path, commit: &str) -> Result<(), SyncError> {
    let err = |source| SyncError::Checkout {
        commit: commit.to_owned(),
        path: path.display().to_string(),
        source,
    };
    let repo = git2::Repository::open(path).map_err(err)?;
    let oid = git2::Oid::from_str(commit).map_err(err)?;
    let object = repo.find_object(oid, None).map_err(err)?;
    let mut co = git2::build::CheckoutBuilder::new();
    co.force().remove_untracked(false);
    repo.checkout_tree(&object, Some(&mut co)).map_err(err)?;
    repo.set_head_detached(oid).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn passwords_in_urls_are_never_shown() {
        assert_eq!(
            redacted("https://x-access-token:ghp_s3cret@github.com/ops/state.git"),
            "https://***@github.com/ops/state.git"
        );
        assert_eq!(
            redacted("https://user:p@ss@git.example.com:8443/a.git"),
            "https://***@git.example.com:8443/a.git"
        );
        assert_eq!(
            redacted("https://ghp_s3cret@github.com/ops/state.git"),
            "https://***@github.com/ops/state.git"
        );
        assert_eq!(
            redacted("ssh://git:pw@git.example.com/ops/state.git"),
            "ssh://git:***@git.example.com/ops/state.git"
        );
        for shown in [
            "https://git.example.com/ops/state.git",
            "ssh://git@git.example.com:2222/ops/state.git",
            "git@git.example.com:ops/state.git",
            "file:///srv/git/state.git",
        ] {
            assert_eq!(redacted(shown), shown);
        }
    }
}
