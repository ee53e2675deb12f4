//! vsa's persistent state: the audit trail (JSONL + SQLite) and the state
//! store (last applied commit, per-resource outcomes), one SQLite database
//! in `paths.state` with migrations.
//!
//! Tables carry the host id so a hub can later hold the whole fleet in the
//! same shape (DESIGN §6b).

pub mod audit;
pub mod time;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use audit::{AuditEvent, AuditLog, NewEvent, Outcome};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state database {path}: {source}")]
    Db { path: PathBuf, source: sqlx::Error },
    #[error("state database {path}: migration failed: {source}")]
    Migrate {
        path: PathBuf,
        source: sqlx::migrate::MigrateError,
    },
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

pub const DB_FILE: &str = "vsa.db";

/// The outcome of the last apply of one resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceStatus {
    pub kind: String,
    pub name: String,
    pub status: String,
    pub detail: String,
    pub commit: Option<String>,
    pub updated_at: String,
}

/// An ACME failure of one domain and when to try it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeBackoff {
    pub domain: String,
    pub failures: u32,
    /// Milliseconds since the Unix epoch.
    pub next_attempt_ms: i64,
    pub last_error: String,
}

impl AcmeBackoff {
    /// First retry after 5 minutes, doubling per failure, at most a day
    /// apart: polite to the CA (and inside Let's Encrypt's failed-validation
    /// limits).
    pub fn after_failure(
        domain: &str,
        previous: Option<&AcmeBackoff>,
        error: &str,
        now_ms: i64,
    ) -> AcmeBackoff {
        let failures = previous.map_or(0, |b| b.failures) + 1;
        let wait_ms = (5 * 60 * 1000i64)
            .saturating_mul(1i64 << (failures - 1).min(20))
            .min(24 * 3600 * 1000);
        AcmeBackoff {
            domain: domain.to_owned(),
            failures,
            next_attempt_ms: now_ms + wait_ms,
            last_error: error.to_owned(),
        }
    }
}

/// A row of `SELECT domain, failures, next_attempt, last_error FROM acme_backoff`.
fn backoff_row(r: &sqlx::sqlite::SqliteRow) -> AcmeBackoff {
    AcmeBackoff {
        domain: r.get(0),
        failures: r.get::<i64, _>(1) as u32,
        next_attempt_ms: r.get(2),
        last_error: r.get(3),
    }
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    path: PathBuf,
}

impl Store {
    /// Opens (creating and migrating) the database in `state_dir`.
    pub async fn open(state_dir: &Path) -> Result<Store> {
        // Everything in the state dir is trusted (the database, the lock,
        // the ACME key): it must be this user's alone.
        vsa_fs::SafeDir::private(state_dir).map_err(|source| StoreError::Dir {
            path: state_dir.to_owned(),
            source,
        })?;
        let path = state_dir.join(DB_FILE);
        let db = |source| StoreError::Db {
            path: path.clone(),
            source,
        };
        let opts = SqliteConnectOptions::from_str("sqlite://")
            .map_err(db)?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        // Connections (each with its page cache and worker thread) close
        // when idle: a daemon between reconciles holds none.
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(0)
            .idle_timeout(Some(Duration::from_secs(30)))
            .connect_with(opts)
            .await
            .map_err(db)?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                path: path.clone(),
                source,
            })?;
        Ok(Store { pool, path })
    }

    /// Opens an existing database read-only, for commands that must
    /// change nothing (`vsactl diff`, `status`): nothing is created or
    /// migrated. `Ok(None)` when no apply ever made it.
    pub async fn open_read_only(state_dir: &Path) -> Result<Option<Store>> {
        let path = state_dir.join(DB_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let db = |source| StoreError::Db {
            path: path.clone(),
            source,
        };
        let opts = SqliteConnectOptions::from_str("sqlite://")
            .map_err(db)?
            .filename(&path)
            .read_only(true)
            .create_if_missing(false)
            .busy_timeout(Duration::from_secs(2));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .connect_with(opts)
            .await
            .map_err(db)?;
        Ok(Some(Store { pool, path }))
    }

    fn db(&self) -> impl Fn(sqlx::Error) -> StoreError + '_ {
        move |source| StoreError::Db {
            path: self.path.clone(),
            source,
        }
    }

    /// Inserts events (already in the JSONL log) in one transaction;
    /// events already present (same hash) are skipped.
    pub async fn insert_events(&self, events: &[AuditEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(self.db())?;
        for e in events {
            sqlx::query(
                "INSERT OR IGNORE INTO audit_events \
                 (ts, actor, host, action, target, outcome, commit_sha, detail, prev_hash, hash) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&e.ts)
            .bind(&e.actor)
            .bind(&e.host)
            .bind(&e.action)
            .bind(&e.target)
            .bind(e.outcome.as_str())
            .bind(&e.commit)
            .bind(&e.detail)
            .bind(&e.prev_hash)
            .bind(&e.hash)
            .execute(&mut *tx)
            .await
            .map_err(self.db())?;
        }
        tx.commit().await.map_err(self.db())?;
        Ok(())
    }

    /// The hash of the newest event in the database.
    pub async fn last_event_hash(&self) -> Result<Option<String>> {
        let row = sqlx::query("SELECT hash FROM audit_events ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(self.db())?;
        Ok(row.map(|r| r.get::<String, _>(0)))
    }

    /// The hashes of the recorded events, oldest first.
    pub async fn event_hashes(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT hash FROM audit_events ORDER BY seq")
            .fetch_all(&self.pool)
            .await
            .map_err(self.db())?;
        Ok(rows.into_iter().map(|r| r.get::<String, _>(0)).collect())
    }

    /// Brings the database up to the JSONL log after a crash between the
    /// two writes: inserts the log's events the database lacks. A log
    /// that no longer holds the database's newest event was cut or
    /// rewritten: nothing of it is taken in, so that `audit --verify`
    /// keeps finding where the two part.
    pub async fn catch_up(&self, log: &AuditLog) -> Result<usize> {
        let last = self.last_event_hash().await?;
        if last.as_deref() == Some(log.head()) || (last.is_none() && log.head() == audit::GENESIS) {
            return Ok(0);
        }
        let all = audit::read_all(log.path())?;
        let from = match &last {
            Some(h) => match all.iter().position(|e| &e.hash == h) {
                Some(i) => i + 1,
                None => return Ok(0),
            },
            None => 0,
        };
        let missing = &all[from..];
        self.insert_events(missing).await?;
        Ok(missing.len())
    }

    pub async fn event_count(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) FROM audit_events")
            .fetch_one(&self.pool)
            .await
            .map_err(self.db())?;
        Ok(row.get(0))
    }

    pub async fn set_state(&self, host: &str, key: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO host_state (host, key, value) VALUES (?, ?, ?) \
             ON CONFLICT (host, key) DO UPDATE SET value = excluded.value",
        )
        .bind(host)
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(())
    }

    pub async fn get_state(&self, host: &str, key: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT value FROM host_state WHERE host = ? AND key = ?")
            .bind(host)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.db())?;
        Ok(row.map(|r| r.get(0)))
    }

    pub async fn set_resource_status(&self, host: &str, s: &ResourceStatus) -> Result<()> {
        sqlx::query(
            "INSERT INTO resource_status (host, kind, name, status, detail, commit_sha, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (host, kind, name) DO UPDATE SET status = excluded.status, \
             detail = excluded.detail, commit_sha = excluded.commit_sha, updated_at = excluded.updated_at",
        )
        .bind(host)
        .bind(&s.kind)
        .bind(&s.name)
        .bind(&s.status)
        .bind(&s.detail)
        .bind(&s.commit)
        .bind(&s.updated_at)
        .execute(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(())
    }

    pub async fn clear_resource_status(&self, host: &str, kind: &str, name: &str) -> Result<()> {
        sqlx::query("DELETE FROM resource_status WHERE host = ? AND kind = ? AND name = ?")
            .bind(host)
            .bind(kind)
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(self.db())?;
        Ok(())
    }

    pub async fn resource_statuses(&self, host: &str) -> Result<Vec<ResourceStatus>> {
        let rows = sqlx::query(
            "SELECT kind, name, status, detail, commit_sha, updated_at FROM resource_status \
             WHERE host = ? ORDER BY kind, name",
        )
        .bind(host)
        .fetch_all(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(rows
            .into_iter()
            .map(|r| ResourceStatus {
                kind: r.get(0),
                name: r.get(1),
                status: r.get(2),
                detail: r.get(3),
                commit: r.get(4),
                updated_at: r.get(5),
            })
            .collect())
    }

    /// Records a certificate vsa issued (replacing an earlier one).
    pub async fn record_cert(
        &self,
        host: &str,
        domain: &str,
        serial: &str,
        not_after: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO certs_issued (host, domain, serial, not_after, issued_at) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (host, domain) DO UPDATE SET serial = excluded.serial, \
             not_after = excluded.not_after, issued_at = excluded.issued_at",
        )
        .bind(host)
        .bind(domain)
        .bind(serial)
        .bind(not_after)
        .bind(crate::time::format(std::time::SystemTime::now()))
        .execute(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(())
    }

    pub async fn forget_cert(&self, host: &str, domain: &str) -> Result<()> {
        sqlx::query("DELETE FROM certs_issued WHERE host = ? AND domain = ?")
            .bind(host)
            .bind(domain)
            .execute(&self.pool)
            .await
            .map_err(self.db())?;
        Ok(())
    }

    /// The domains whose certificate vsa issued on `host`.
    pub async fn issued_certs(&self, host: &str) -> Result<std::collections::BTreeSet<String>> {
        let rows = sqlx::query("SELECT domain FROM certs_issued WHERE host = ?")
            .bind(host)
            .fetch_all(&self.pool)
            .await
            .map_err(self.db())?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// The ACME backoff of a domain, if it failed since its last success.
    pub async fn acme_backoff(&self, host: &str, domain: &str) -> Result<Option<AcmeBackoff>> {
        let row = sqlx::query(
            "SELECT domain, failures, next_attempt, last_error FROM acme_backoff WHERE host = ? AND domain = ?",
        )
        .bind(host)
        .bind(domain)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(row.as_ref().map(backoff_row))
    }

    /// Every domain of `host` in ACME backoff.
    pub async fn acme_backoffs(&self, host: &str) -> Result<Vec<AcmeBackoff>> {
        let rows = sqlx::query(
            "SELECT domain, failures, next_attempt, last_error FROM acme_backoff WHERE host = ? ORDER BY domain",
        )
        .bind(host)
        .fetch_all(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(rows.iter().map(backoff_row).collect())
    }

    pub async fn set_acme_backoff(&self, host: &str, b: &AcmeBackoff) -> Result<()> {
        sqlx::query(
            "INSERT INTO acme_backoff (host, domain, failures, next_attempt, last_error, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (host, domain) DO UPDATE SET \
             failures = excluded.failures, next_attempt = excluded.next_attempt, \
             last_error = excluded.last_error, updated_at = excluded.updated_at",
        )
        .bind(host)
        .bind(&b.domain)
        .bind(i64::from(b.failures))
        .bind(b.next_attempt_ms)
        .bind(&b.last_error)
        .bind(crate::time::format(std::time::SystemTime::now()))
        .execute(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(())
    }

    pub async fn clear_acme_backoff(&self, host: &str, domain: &str) -> Result<()> {
        sqlx::query("DELETE FROM acme_backoff WHERE host = ? AND domain = ?")
            .bind(host)
            .bind(domain)
            .execute(&self.pool)
            .await
            .map_err(self.db())?;
        Ok(())
    }

    pub async fn close(self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_state_and_catch_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).await.unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path, "cli:t", "vps-01").unwrap();
        for i in 0..3 {
            log.record(
                None,
                NewEvent::new("vhost.write", format!("s{i}"), Outcome::Ok, "created"),
            )
            .unwrap();
        }
        let evs = log.sync().unwrap();
        store.insert_events(&evs[..1]).await.unwrap();
        // A crash between the log and the database: catch up.
        assert_eq!(store.catch_up(&log).await.unwrap(), 2);
        assert_eq!(store.event_count().await.unwrap(), 3);
        assert_eq!(store.catch_up(&log).await.unwrap(), 0);
        store.insert_events(&evs).await.unwrap();
        assert_eq!(
            store.event_count().await.unwrap(),
            3,
            "inserting twice adds nothing"
        );

        store
            .set_state("vps-01", "last_applied_commit", "abc")
            .await
            .unwrap();
        store
            .set_state("vps-01", "last_applied_commit", "def")
            .await
            .unwrap();
        assert_eq!(
            store
                .get_state("vps-01", "last_applied_commit")
                .await
                .unwrap()
                .as_deref(),
            Some("def")
        );
        let st = ResourceStatus {
            kind: "vhost".into(),
            name: "a.example.com".into(),
            status: "failed".into(),
            detail: "nginx -t: host not found".into(),
            commit: None,
            updated_at: "2026-11-28T17:00:00.000Z".into(),
        };
        store.set_resource_status("vps-01", &st).await.unwrap();
        assert_eq!(store.resource_statuses("vps-01").await.unwrap(), vec![st]);
        store
            .clear_resource_status("vps-01", "vhost", "a.example.com")
            .await
            .unwrap();
        assert!(store.resource_statuses("vps-01").await.unwrap().is_empty());
        store.close().await;
        // Reopening runs no migration twice.
        Store::open(&dir.path().join("state")).await.unwrap();
    }
}
