//! The tamper-evident audit trail (DESIGN §5, contract).
//!
//! One JSON object per line in `paths.audit_log`, each carrying the SHA-256
//! of itself without `hash` and the previous event's hash, so an edited,
//! removed or reordered line breaks the chain that [`verify`] checks. This
//! module is the one place that writes a line; the same events then go to
//! the state database ([`crate::Store::insert_events`]).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Error,
    Skipped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Skipped => "skipped",
        }
    }
}

/// One audit event; fields in the contract's order, which is also the
/// order they are hashed in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    pub ts: String,
    pub actor: String,
    pub host: String,
    pub action: String,
    pub target: String,
    pub outcome: Outcome,
    pub commit: Option<String>,
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Serialize)]
struct Unhashed<'a> {
    ts: &'a str,
    actor: &'a str,
    host: &'a str,
    action: &'a str,
    target: &'a str,
    outcome: Outcome,
    commit: &'a Option<String>,
    detail: &'a str,
    prev_hash: &'a str,
}

impl AuditEvent {
    /// SHA-256 (hex) of the event's compact JSON without `hash`.
    pub fn compute_hash(&self) -> String {
        let u = Unhashed {
            ts: &self.ts,
            actor: &self.actor,
            host: &self.host,
            action: &self.action,
            target: &self.target,
            outcome: self.outcome,
            commit: &self.commit,
            detail: &self.detail,
            prev_hash: &self.prev_hash,
        };
        let json = serde_json::to_vec(&u).unwrap_or_default();
        hex(&Sha256::digest(&json))
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// What an action says about itself; the log adds time, actor, host,
/// commit and the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    pub action: String,
    pub target: String,
    pub outcome: Outcome,
    pub detail: String,
}

impl NewEvent {
    pub fn new(
        action: impl Into<String>,
        target: impl Into<String>,
        outcome: Outcome,
        detail: impl Into<String>,
    ) -> Self {
        NewEvent {
            action: action.into(),
            target: target.into(),
            outcome,
            detail: detail.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("audit log {path}:{line}: not an audit event: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

type Result<T, E = AuditError> = std::result::Result<T, E>;

/// The append side of the audit trail.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
    head: String,
    actor: String,
    host: String,
    pending: Vec<AuditEvent>,
    clock: fn() -> i64,
}

impl AuditLog {
    /// Opens (creating) the log and finds the chain's head. A last line cut
    /// short by a crash was never a whole event: it is dropped so the chain
    /// continues from the last complete one.
    pub fn open(path: &Path, actor: &str, host: &str) -> Result<AuditLog> {
        let io = |source| AuditError::Io {
            path: path.to_owned(),
            source,
        };
        let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
        else {
            return Err(io(std::io::Error::other("not a file path")));
        };
        // Never through a link planted under the log's name.
        let mut file = vsa_fs::SafeDir::create(dir, 0o750)
            .and_then(|d| d.open_rw(name, 0o640, true))
            .map_err(io)?;
        let (head, cut_at) = last_complete_line(&mut file).map_err(io)?;
        if let Some(len) = cut_at {
            file.set_len(len).map_err(io)?;
        }
        let head = match head {
            None => GENESIS.to_owned(),
            Some(line) => {
                let ev: AuditEvent =
                    serde_json::from_str(&line).map_err(|e| AuditError::Parse {
                        path: path.to_owned(),
                        line: 0,
                        message: format!("last line: {e}"),
                    })?;
                ev.hash
            }
        };
        Ok(AuditLog {
            path: path.to_owned(),
            file,
            head,
            actor: actor.to_owned(),
            host: host.to_owned(),
            pending: Vec::new(),
            clock: crate::time::now_millis,
        })
    }

    /// Uses another clock (tests).
    pub fn with_clock(mut self, clock: fn() -> i64) -> Self {
        self.clock = clock;
        self
    }

    pub fn head(&self) -> &str {
        &self.head
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event to the log. It is on disk (not yet fsynced) when
    /// this returns; [`AuditLog::sync`] makes it durable.
    pub fn record(&mut self, commit: Option<&str>, ev: NewEvent) -> Result<AuditEvent> {
        let mut event = AuditEvent {
            ts: crate::time::format_millis((self.clock)()),
            actor: self.actor.clone(),
            host: self.host.clone(),
            action: ev.action,
            target: ev.target,
            outcome: ev.outcome,
            commit: commit.map(str::to_owned),
            detail: ev.detail,
            prev_hash: self.head.clone(),
            hash: String::new(),
        };
        event.hash = event.compute_hash();
        let mut line = serde_json::to_string(&event).unwrap_or_default();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|source| AuditError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.head = event.hash.clone();
        self.pending.push(event.clone());
        Ok(event)
    }

    /// Flushes the log to disk and hands back the events recorded since the
    /// last sync, for the database.
    pub fn sync(&mut self) -> Result<Vec<AuditEvent>> {
        self.file.sync_data().map_err(|source| AuditError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(std::mem::take(&mut self.pending))
    }
}

/// The last newline-terminated line of the file, and the length to cut the
/// file to when it ends in a partial line.
fn last_complete_line(file: &mut File) -> io::Result<(Option<String>, Option<u64>)> {
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok((None, None));
    }
    let mut window = 64 * 1024u64;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::with_capacity((len - start) as usize);
        Read::by_ref(file).take(len - start).read_to_end(&mut buf)?;
        let cut = if buf.last() == Some(&b'\n') {
            None
        } else {
            // Drop the partial tail.
            let keep = buf.iter().rposition(|b| *b == b'\n').map(|i| i + 1);
            match keep {
                Some(k) => {
                    buf.truncate(k);
                    Some(start + k as u64)
                }
                None if start == 0 => return Ok((None, Some(0))),
                None => {
                    window *= 2;
                    continue;
                }
            }
        };
        let body = &buf[..buf.len().saturating_sub(1)];
        match body.iter().rposition(|b| *b == b'\n') {
            Some(i) => {
                return Ok((
                    Some(String::from_utf8_lossy(&body[i + 1..]).into_owned()),
                    cut,
                ));
            }
            None if start == 0 => {
                return Ok((Some(String::from_utf8_lossy(body).into_owned()), cut));
            }
            None => window *= 2,
        }
    }
}

/// Reads every event of a log (for `vsactl audit` and the database sync).
pub fn read_all(path: &Path) -> Result<Vec<AuditEvent>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(AuditError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| AuditError::Io {
            path: path.to_owned(),
            source,
        })?;
        if line.is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|e| AuditError::Parse {
            path: path.to_owned(),
            line: i + 1,
            message: e.to_string(),
        })?);
    }
    Ok(out)
}

/// Where and why the chain is broken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainBreak {
    pub line: usize,
    pub reason: String,
}

/// Checks the whole chain: every line parses, its hash is its content's,
/// and its `prev_hash` is the line before's hash (64 zeros for the first).
/// Returns the number of events, or the first break.
pub fn verify(path: &Path) -> Result<std::result::Result<usize, ChainBreak>> {
    Ok(chain(path)?.map(|hashes| hashes.len()))
}

/// Compares a log's chain (its hashes, oldest first) with the state
/// database's copy of it, which the log's editor cannot rewrite along with
/// it. A log that lost lines at its end, or was rewritten (even with a
/// chain recomputed from scratch), no longer matches. Returns how many of
/// the log's newest events the database does not hold yet (a crash
/// between the two writes), or where they part.
pub fn compare_with_mirror(
    log: &[String],
    mirror: &[String],
) -> std::result::Result<usize, ChainBreak> {
    if let Some(i) = log.iter().zip(mirror).position(|(a, b)| a != b) {
        return Err(ChainBreak {
            line: i + 1,
            reason: "this is not the event the state database recorded at this line: the log was rewritten from here on".into(),
        });
    }
    if mirror.len() > log.len() {
        return Err(ChainBreak {
            line: log.len() + 1,
            reason: format!(
                "the log ends after {} event(s), but the state database recorded {}: the last {} line(s) were removed",
                log.len(),
                mirror.len(),
                mirror.len() - log.len()
            ),
        });
    }
    Ok(log.len() - mirror.len())
}

/// The hashes of a log's events, oldest first, when its chain is whole
/// (see [`verify`]); a missing log has none.
pub fn chain(path: &Path) -> Result<std::result::Result<Vec<String>, ChainBreak>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Ok(Vec::new())),
        Err(source) => {
            return Err(AuditError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut prev = GENESIS.to_owned();
    let mut hashes = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line_no = i + 1;
        let line = line.map_err(|source| AuditError::Io {
            path: path.to_owned(),
            source,
        })?;
        let ev: AuditEvent = match serde_json::from_str(&line) {
            Ok(ev) => ev,
            Err(e) => {
                return Ok(Err(ChainBreak {
                    line: line_no,
                    reason: format!("not an audit event ({e})"),
                }));
            }
        };
        if ev.prev_hash != prev {
            return Ok(Err(ChainBreak {
                line: line_no,
                reason: "prev_hash does not match the line before: a line was removed, inserted or reordered".into(),
            }));
        }
        if ev.compute_hash() != ev.hash {
            return Ok(Err(ChainBreak {
                line: line_no,
                reason: "hash does not match the event's content: the line was edited".into(),
            }));
        }
        prev = ev.hash.clone();
        hashes.push(ev.hash);
    }
    Ok(Ok(hashes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> i64 {
        1_795_885_200_123
    }

    fn log_with(n: usize) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log/audit.jsonl");
        let mut log = AuditLog::open(&path, "cli:alice", "vps-01")
            .unwrap()
            .with_clock(clock);
        for i in 0..n {
            log.record(
                Some("3f2c"),
                NewEvent::new(
                    "vhost.write",
                    format!("s{i}.example.com"),
                    Outcome::Ok,
                    "created",
                ),
            )
            .unwrap();
        }
        log.sync().unwrap();
        (dir, path)
    }

    #[test]
    fn the_contract_shape_and_a_chain_that_verifies() {
        let (_d, path) = log_with(3);
        let text = std::fs::read_to_string(&path).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["ts"], "2026-11-28T17:00:00.123Z");
        assert_eq!(first["actor"], "cli:alice");
        assert_eq!(first["outcome"], "ok");
        assert_eq!(first["prev_hash"], GENESIS);
        let keys: Vec<&str> = text
            .lines()
            .next()
            .unwrap()
            .split("\":")
            .map(|k| k.rsplit('"').next().unwrap())
            .collect();
        assert_eq!(
            &keys[..10],
            &[
                "ts",
                "actor",
                "host",
                "action",
                "target",
                "outcome",
                "commit",
                "detail",
                "prev_hash",
                "hash"
            ]
        );
        assert_eq!(verify(&path).unwrap(), Ok(3));
        // Reopening continues the chain.
        let mut log = AuditLog::open(&path, "vsad", "vps-01").unwrap();
        log.record(
            None,
            NewEvent::new("nginx.reload", "nginx", Outcome::Ok, ""),
        )
        .unwrap();
        log.sync().unwrap();
        assert_eq!(verify(&path).unwrap(), Ok(4));
    }

    #[test]
    fn an_edited_removed_or_reordered_line_breaks_the_chain() {
        let (_d, path) = log_with(4);
        let original = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = original.lines().collect();

        std::fs::write(
            &path,
            original.replace("s2.example.com", "evil.example.com"),
        )
        .unwrap();
        assert_eq!(verify(&path).unwrap().unwrap_err().line, 3);

        let removed = [lines[0], lines[1], lines[3]].join("\n") + "\n";
        std::fs::write(&path, removed).unwrap();
        assert_eq!(verify(&path).unwrap().unwrap_err().line, 3);

        let reordered = [lines[0], lines[2], lines[1], lines[3]].join("\n") + "\n";
        std::fs::write(&path, reordered).unwrap();
        assert_eq!(verify(&path).unwrap().unwrap_err().line, 2);

        let truncated_front = [lines[1], lines[2], lines[3]].join("\n") + "\n";
        std::fs::write(&path, truncated_front).unwrap();
        assert_eq!(verify(&path).unwrap().unwrap_err().line, 1);
    }

    #[test]
    fn a_line_cut_by_a_crash_is_dropped_and_the_chain_continues() {
        let (_d, path) = log_with(2);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"ts\":\"2026-11-28T17:").unwrap();
        drop(f);
        let mut log = AuditLog::open(&path, "vsad", "vps-01").unwrap();
        log.record(
            None,
            NewEvent::new("nginx.reload", "nginx", Outcome::Ok, ""),
        )
        .unwrap();
        log.sync().unwrap();
        assert_eq!(verify(&path).unwrap(), Ok(3));
    }
}
