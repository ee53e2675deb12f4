//! The reconcile loop: follow the desired state, keep the host equal to it.
//!
//! Everything that can change the answer arrives as a [`Trigger`]: a poll
//! tick or a signed webhook (fetch), an edit of the working copy, an event
//! in the vhost or htpasswd directory (drift), the periodic safety-net
//! re-observe, a backoff running out. Triggers that arrive together are
//! coalesced into one reconcile. Applies go through the same engine and
//! host lock as `vsactl apply`.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument as _;
use vsa_core::config::{Config, Mode};
use vsa_core::event::EventKind;
use vsa_core::plan::{ResourceId, UnitKind};
use vsa_core::{Model, Plan, Problem};
use vsa_engine::apply::{ApplyError, ApplyOptions};
use vsa_engine::events::Event;
use vsa_engine::pipeline::{self, PipelineError};
use vsa_engine::policy::{ErrorPolicy, host_fingerprint};
use vsa_engine::snapshot::{HostSnapshot, Recorded, Refused};
use vsa_engine::{Engine, HostLock};
use vsa_live::git::Remote;

use crate::Trigger;

/// Triggers closer together than this make one reconcile.
const COALESCE: Duration = Duration::from_millis(150);
/// First wait after a resource fails; doubles per failure, up to the cap.
const BACKOFF_BASE: Duration = Duration::from_secs(2);
const BACKOFF_CAP: Duration = Duration::from_secs(600);
/// How long a reconcile waits for another apply (e.g. `vsactl apply`).
const LOCK_WAIT: Duration = Duration::from_secs(60);
/// A whole fetch may take this many times `repo.timeout` before the loop
/// stops waiting for it. libgit2's own timeouts bound each connect and
/// read; this bounds a remote that trickles data and never finishes.
const FETCH_CAP: u32 = 4;
/// The same fetch error is logged as a warning at most this often.
const REPEAT_WARNING: Duration = Duration::from_secs(600);
/// After SIGTERM, a reconcile in flight gets this long to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// The desired state in force.
struct Desired {
    model: Arc<Model>,
    /// The commit it was read from (`None`: a working copy outside git).
    commit: Option<String>,
    /// Of the manifest files, to tell a changed working copy from an
    /// unchanged one.
    fingerprint: u64,
}

/// A whole reconcile that failed (not one resource): tried again after
/// a backoff.
#[derive(Debug)]
struct Backoff {
    failures: u32,
    until: Instant,
}

/// Why a whole reconcile failed; each resource's own failures are the
/// error policy's, not this.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("cannot take the host lock: {0:#}")]
    Lock(anyhow::Error),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Audit(#[from] vsa_store::audit::AuditError),
    #[error(transparent)]
    Store(#[from] vsa_store::StoreError),
    #[error("the planner stopped: {0}")]
    Panicked(String),
}

/// What one reconcile came to.
#[derive(Debug)]
pub struct Outcome {
    /// The plan of the host as the reconcile left it.
    pub plan: Plan,
    /// Whether an apply ran.
    pub applied: bool,
}

pub struct Daemon {
    config: Arc<Config>,
    host: String,
    /// Where the loop publishes what it sees, for the HTTP side.
    snapshot: watch::Sender<Arc<HostSnapshot>>,
    /// The store, the audit log, the renderer, nginx control: opened once.
    engine: Engine,
    remote: Option<Remote>,
    desired: Option<Desired>,
    /// The newest commit validation refused (not tried again).
    refused: Option<String>,
    /// Each resource's standing failure and when to try it again.
    policy: ErrorPolicy,
    /// The whole reconcile failed (lock, observe, store): retry then.
    retry_all: Option<Backoff>,
    /// Why the whole reconcile failed, while it does.
    reconcile_error: Option<String>,
    /// The drift last audited in report mode, so it is audited once.
    reported_drift: Option<u64>,
    /// Why the last fetch failed (cleared by the next one that works).
    fetch_error: Option<String>,
    /// When a failing fetch was last logged as a warning.
    fetch_warned: Option<Instant>,
    /// A fetch still running after the loop stopped waiting for it; no
    /// other starts until it ends (they would fight over the clone).
    stuck_fetch: Option<tokio::task::JoinHandle<Result<String, vsa_live::git::SyncError>>>,
}

impl Daemon {
    pub async fn new(
        config: Arc<Config>,
        host: String,
        snapshot: watch::Sender<Arc<HostSnapshot>>,
    ) -> Result<Daemon> {
        let engine = Engine::open(config.clone(), host.clone(), "vsad")
            .await
            .context("cannot start the engine")?;
        let remote = config.repo.url.as_ref().map(|url| Remote {
            url: url.clone(),
            branch: config.repo.branch.clone(),
            token_file: config.repo.token_file.clone(),
            ssh_key_file: config.repo.ssh_key_file.clone(),
            known_hosts_file: config.repo.known_hosts_file.clone(),
        });
        if remote.is_some() {
            for lock in vsa_live::git::remove_stale_locks(&config.repo.path) {
                tracing::warn!(file = %lock.display(), "removed a lock file a stopped fetch left behind");
            }
        }
        Ok(Daemon {
            config,
            host,
            snapshot,
            engine,
            remote,
            desired: None,
            refused: None,
            policy: ErrorPolicy::new(BACKOFF_BASE, BACKOFF_CAP),
            retry_all: None,
            reconcile_error: None,
            reported_drift: None,
            fetch_error: None,
            fetch_warned: None,
            stuck_fetch: None,
        })
    }

    /// Changes the published snapshot: readers holding the previous one
    /// keep it, new readers see this one.
    fn publish(&self, f: impl FnOnce(&mut HostSnapshot)) {
        self.snapshot.send_modify(|s| f(Arc::make_mut(s)));
    }

    fn repo_path(&self) -> PathBuf {
        self.config.repo.path.clone()
    }

    /// Loads the commit in force from the last run, so a restart converges
    /// (and serves the API) before the first fetch, even with the remote
    /// down.
    pub async fn resume(&mut self) {
        let Some(_) = &self.remote else { return };
        let Ok(Some(commit)) = self
            .engine
            .store
            .get_state(&self.host, "commit_in_force")
            .await
        else {
            return;
        };
        let path = self.repo_path();
        let host = self.host.clone();
        let c = commit.clone();
        let loaded = tokio::task::spawn_blocking(move || load_commit(&path, &c, &host)).await;
        match loaded {
            Ok(Ok(d)) => {
                tracing::info!(commit = %commit, "resuming with the commit in force");
                self.set_desired(d);
            }
            Ok(Err(e)) => {
                tracing::warn!(commit = %commit, errors = ?e, "the commit in force no longer loads");
            }
            Err(e) => tracing::error!(error = %e, "loading the commit in force panicked"),
        }
    }

    /// Fetches (or re-reads the working copy) and adopts a new desired
    /// state when it is valid. Returns whether the desired state changed.
    pub async fn refresh(&mut self) -> bool {
        match self.remote.clone() {
            Some(remote) => self.refresh_remote(remote).await,
            None => self.refresh_working_copy().await,
        }
    }

    async fn refresh_remote(&mut self, remote: Remote) -> bool {
        let path = self.repo_path();
        if let Some(stuck) = &self.stuck_fetch {
            if !stuck.is_finished() {
                // Still a poll that brought nothing: counted, and the
                // error in the status stays.
                // (The warning came when it got stuck.)
                self.publish(|s| s.metrics.error("fetch"));
                tracing::debug!("the previous fetch is still running; not starting another");
                return false;
            }
            self.stuck_fetch = None;
        }
        let mut fetching = {
            let path = path.clone();
            let remote = remote.clone();
            tokio::task::spawn_blocking(move || vsa_live::git::fetch(&path, &remote))
        };
        let cap = Duration::from_millis(self.config.repo.timeout_ms) * FETCH_CAP;
        let fetched = match tokio::time::timeout(cap, &mut fetching).await {
            Ok(fetched) => fetched,
            Err(_) => {
                let e = format!(
                    "cannot fetch {} from {}: no result within {} s ({FETCH_CAP} × repo.timeout); the fetch is left to end on its own",
                    remote.branch,
                    vsa_live::git::redacted(&remote.url),
                    cap.as_secs()
                );
                self.stuck_fetch = Some(fetching);
                self.fetch_failed(e);
                return false;
            }
        };
        let tip = match fetched {
            Ok(Ok(tip)) => tip,
            Ok(Err(e)) => {
                self.fetch_failed(e.to_string());
                return false;
            }
            Err(e) => {
                self.fetch_failed(format!("fetch panicked: {e}"));
                return false;
            }
        };
        self.publish(|s| s.metrics.last_fetch = Some(unix_now()));
        self.fetch_warned = None;
        if self.fetch_error.take().is_some() {
            tracing::info!("fetching works again");
            self.update_last_error();
        }
        let current = self.desired.as_ref().and_then(|d| d.commit.as_deref());
        if current == Some(tip.as_str()) || self.refused.as_deref() == Some(tip.as_str()) {
            return false;
        }
        let host = self.host.clone();
        let loaded = {
            let path = path.clone();
            let tip = tip.clone();
            tokio::task::spawn_blocking(move || load_commit(&path, &tip, &host)).await
        };
        match loaded {
            Ok(Ok(d)) => {
                let checkout = {
                    let tip = tip.clone();
                    tokio::task::spawn_blocking(move || vsa_live::git::checkout(&path, &tip)).await
                };
                if let Ok(Err(e)) = checkout {
                    tracing::warn!(error = %e, "cannot check out the new commit; applying it from git anyway");
                }
                tracing::info!(commit = %tip, "new commit adopted");
                self.set_desired(d);
                if let Err(e) = self
                    .engine
                    .store
                    .set_state(&self.host, "commit_in_force", &tip)
                    .await
                {
                    tracing::error!(error = %e, "cannot record the commit in force");
                }
                true
            }
            Ok(Err(problems)) => {
                self.refuse(&tip, problems).await;
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "loading the new commit panicked");
                false
            }
        }
    }

    /// A poll that brought nothing: counted, shown in the status, and
    /// logged as a warning when the reason changes (else once every
    /// [`REPEAT_WARNING`]; a 1 s poll against a dead remote must not
    /// write a line a second).
    fn fetch_failed(&mut self, e: String) {
        self.publish(|s| s.metrics.error("fetch"));
        let repeated = self.fetch_error.as_deref() == Some(e.as_str());
        let recently = self
            .fetch_warned
            .is_some_and(|at| at.elapsed() < REPEAT_WARNING);
        if repeated && recently {
            tracing::debug!(error = %e, "fetch failed again");
        } else {
            tracing::warn!(error = %e, "fetch failed; the commit in force stays");
            self.fetch_warned = Some(Instant::now());
        }
        self.fetch_error = Some(e);
        self.update_last_error();
    }

    async fn refresh_working_copy(&mut self) -> bool {
        let path = self.repo_path();
        let host = self.host.clone();
        let loaded = tokio::task::spawn_blocking(move || load_working_copy(&path, &host)).await;
        match loaded {
            Ok(Ok(d)) => {
                if self
                    .desired
                    .as_ref()
                    .is_some_and(|cur| cur.fingerprint == d.fingerprint)
                {
                    return false;
                }
                tracing::info!(commit = ?d.commit, "desired state (re)loaded from the working copy");
                self.set_desired(d);
                true
            }
            Ok(Err((label, problems))) => {
                if self.refused.as_deref() != Some(label.as_str()) {
                    self.refuse(&label, problems).await;
                }
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "loading the working copy panicked");
                false
            }
        }
    }

    /// Puts `d` in force; a refusal before it no longer stands.
    fn set_desired(&mut self, d: Desired) {
        self.refused = None;
        self.publish(|v| {
            if v.commit != d.commit {
                // Nobody knows yet whether the host is in sync with it:
                // the next reconcile tells.
                v.in_sync = None;
            }
            v.commit = d.commit.clone();
            v.metrics.commit = d.commit.clone();
            v.refused = None;
        });
        self.desired = Some(d);
        self.reported_drift = None;
        self.update_last_error();
    }

    async fn refuse(&mut self, label: &str, problems: Vec<String>) {
        let first = problems.first().cloned().unwrap_or_default();
        tracing::warn!(commit = %label, errors = problems.len(), first = %first,
            "desired state refused; the last good one stays in force");
        self.refused = Some(label.to_owned());
        // Audited before it is shown: whoever sees the refusal in the API
        // finds it in the audit trail too.
        let commit = (label.len() == 40).then(|| label.to_owned());
        self.audit(
            commit.as_deref(),
            vec![Event::error(
                EventKind::CommitRefuse,
                label,
                format!("{} error(s), first: {first}", problems.len()),
            )],
        )
        .await;
        self.publish(|v| {
            v.metrics.error("commit");
            v.refused = Some(Refused {
                commit: label.to_owned(),
                errors: problems,
            });
        });
        self.update_last_error();
    }

    /// `/api/status`'s `last_error`: whatever is wrong now, the refused
    /// commit first, then a fetch that fails, then the reconcile and the
    /// resources whose failure stands.
    fn update_last_error(&self) {
        let refused = self.snapshot.borrow().refused.clone();
        let standing = self
            .policy
            .standing()
            .map(|(id, s)| format!("{}: {}", id.name, s.error));
        let errors: Vec<String> = refused
            .map(|r| {
                format!(
                    "commit {} refused ({} error(s)): {}",
                    r.commit,
                    r.errors.len(),
                    r.errors.first().map(String::as_str).unwrap_or("")
                )
            })
            .into_iter()
            .chain(self.fetch_error.clone())
            .chain(self.reconcile_error.clone())
            .chain(standing)
            .collect();
        self.publish(|v| v.last_error = (!errors.is_empty()).then(|| errors.join("; ")));
    }

    /// Records events under the host lock, so the audit chain stays one
    /// chain with `vsactl apply`'s.
    async fn audit(&self, commit: Option<&str>, events: Vec<Event>) {
        let result = async {
            let _lock = lock(&self.config).await?;
            self.engine.emit(commit, events).await?;
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }

    /// When the next backoff runs out, if any.
    pub fn next_retry(&self) -> Option<Instant> {
        self.policy
            .next_retry()
            .into_iter()
            .chain(self.retry_all.as_ref().map(|b| b.until))
            .min()
    }

    /// Observes, plans and (in apply mode) applies, in one tracing span
    /// that names the commit and what triggered it.
    pub async fn reconcile(&mut self, trigger: &str) {
        let Some(desired) = &self.desired else {
            return;
        };
        let model = desired.model.clone();
        let commit = desired.commit.clone();
        let span = tracing::info_span!(
            "reconcile",
            commit = commit.as_deref().unwrap_or("-"),
            trigger
        );
        let started = std::time::Instant::now();
        let result = self
            .reconcile_with(model.clone(), commit)
            .instrument(span.clone())
            .await;
        let secs = started.elapsed().as_secs_f64();
        let now = vsa_store::time::format(SystemTime::now());
        match result {
            Ok(outcome) => {
                self.retry_all = None;
                self.reconcile_error = None;
                let plan = outcome.plan;
                let in_sync = plan.in_sync() && self.policy.is_empty();
                let sites = self.site_statuses(&model, &plan).await;
                self.publish(|v| {
                    v.metrics.observe_reconcile(secs);
                    v.metrics.out_of_sync = plan.changes.len();
                    if in_sync {
                        v.metrics.last_success = Some(unix_now());
                    }
                    v.in_sync = Some(plan.in_sync());
                    v.last_reconcile = Some(now);
                    v.sites = Arc::new(sites);
                    v.plan = Some(Arc::new(plan));
                });
            }
            Err(e) => {
                let _enter = span.enter();
                tracing::error!(error = format!("{e:#}"), "reconcile failed");
                let failures = self.retry_all.as_ref().map_or(0, |b| b.failures) + 1;
                self.retry_all = Some(Backoff {
                    failures,
                    until: Instant::now() + self.policy.backoff(failures),
                });
                self.reconcile_error = Some(format!("{e:#}"));
                self.publish(|v| {
                    v.metrics.observe_reconcile(secs);
                    v.metrics.error("reconcile");
                    v.last_reconcile = Some(now);
                });
            }
        }
        self.update_last_error();
    }

    /// Each site's state, with what applies recorded in the store.
    async fn site_statuses(
        &self,
        model: &Model,
        plan: &Plan,
    ) -> Vec<vsa_engine::snapshot::SiteStatus> {
        let mut recorded = Recorded::default();
        match self.engine.store.resource_statuses(&self.host).await {
            Ok(rows) => {
                recorded.sites = rows
                    .into_iter()
                    .filter(|r| r.kind == UnitKind::Site.as_str())
                    .map(|r| (r.name.clone(), r))
                    .collect();
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the recorded site statuses"),
        }
        recorded.last_applied_commit = self
            .engine
            .store
            .get_state(&self.host, "last_applied_commit")
            .await
            .ok()
            .flatten();
        vsa_engine::snapshot::site_statuses(model, &self.host, plan, &recorded)
    }

    async fn reconcile_with(
        &mut self,
        model: Arc<Model>,
        commit: Option<String>,
    ) -> Result<Outcome, ReconcileError> {
        let renderer = self.engine.renderer.clone();
        let host = self.host.clone();
        let observed = self.engine.observe(&model).await?;
        self.show_certs(observed.cert_info.values().cloned().collect());
        let host_fp = host_fingerprint(&observed);
        let plan = {
            let (model, commit) = (model.clone(), commit.clone());
            tokio::task::spawn_blocking(move || {
                vsa_core::plan(&model, &host, &observed, &renderer, commit)
            })
            .await
            .map_err(|e| ReconcileError::Panicked(e.to_string()))?
            .map_err(PipelineError::from)?
        };
        // Nothing to do only when nginx also serves what is on disk: a
        // reload that did not take is still owed.
        if plan.changes.is_empty() && plan.reload.is_none() {
            self.reported_drift = None;
            self.policy.clear();
            return Ok(Outcome {
                plan,
                applied: false,
            });
        }
        if self.config.mode == Mode::Report {
            self.report_drift(&plan, commit.as_deref()).await;
            return Ok(Outcome {
                plan,
                applied: false,
            });
        }

        // Apply mode: everything the error policy does not hold back.
        let hold = self.policy.hold(&plan, host_fp, Instant::now());
        let nginx = ResourceId::nginx();
        // A reload owed (nginx does not serve what is on disk) is work too,
        // unless nginx itself is held back.
        if plan.changes.iter().all(|c| hold.contains(&c.resource()))
            && (plan.reload.is_none() || hold.contains(&nginx))
        {
            return Ok(Outcome {
                plan,
                applied: false,
            });
        }
        let _lock = lock(&self.config).await.map_err(ReconcileError::Lock)?;
        let options = ApplyOptions {
            hold: hold.clone(),
            ..ApplyOptions::default()
        };
        let report = self.engine.apply(&model, commit, options).await?;
        let after = report.remaining.clone().unwrap_or(plan);
        self.publish(|v| {
            v.metrics.reloads += report.reloads as u64;
            for f in &report.failures {
                v.metrics.error(if f.id.kind == UnitKind::Nginx {
                    "nginx"
                } else {
                    "site"
                });
            }
        });
        for f in &report.failures {
            tracing::warn!(resource = %f.id, error = %f.error, class = ?f.class, "apply failed");
        }
        // Failures against the plan as the apply left the host: the next
        // reconcile finds the same plan for them unless something changed.
        // (An apply never touches files vsa does not own, so the host's
        // fingerprint from before stands.)
        self.policy.record(
            |id| !hold.contains(id),
            &report.failures,
            &after,
            host_fp,
            Instant::now(),
        );
        if report.executed.is_empty() {
            tracing::debug!("nothing applied");
        } else {
            tracing::info!(
                writes = report.writes,
                reloads = report.reloads,
                failed = report.failures.len(),
                "applied"
            );
        }
        Ok(Outcome {
            plan: after,
            applied: true,
        })
    }

    /// Report mode: drift is shown and audited once, never repaired.
    async fn report_drift(&mut self, plan: &Plan, commit: Option<&str>) {
        let fp = plan_fingerprint(plan);
        if self.reported_drift == Some(fp) {
            return;
        }
        self.reported_drift = Some(fp);
        self.publish(|v| v.metrics.drift_seen += 1);
        let names: BTreeSet<&str> = plan.changes.iter().map(|c| c.name.as_str()).collect();
        tracing::warn!(
            changes = plan.changes.len(),
            "drift seen (report mode: left as is)"
        );
        let reload = plan.reload.iter().map(|why| {
            Event::skipped(EventKind::DriftSeen, "nginx", format!("reload owed: {why}"))
        });
        let events = names
            .iter()
            .map(|n| {
                let what: Vec<String> = plan
                    .changes
                    .iter()
                    .filter(|c| c.name == *n)
                    .map(|c| format!("{} {} ({})", c.action.as_str(), c.kind.as_str(), c.reason))
                    .collect();
                Event::skipped(EventKind::DriftSeen, *n, what.join("; "))
            })
            .chain(reload)
            .collect();
        self.audit(commit, events).await;
    }

    /// The certificates on disk (as observed for the plan), for
    /// `/api/certs` and the expiry metric.
    fn show_certs(&self, certs: Vec<vsa_core::certs::CertInfo>) {
        self.publish(|v| {
            v.metrics.cert_expiry = certs
                .iter()
                .filter(|c| c.error.is_none())
                .map(|c| (c.domain.clone(), c.not_after))
                .collect();
            v.certs = Arc::new(certs);
        });
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(
        mut self,
        mut triggers: UnboundedReceiver<Trigger>,
        shutdown: impl std::future::Future<Output = ()>,
        on_ready: impl FnOnce(),
    ) {
        tokio::pin!(shutdown);
        let poll = Duration::from_millis(self.config.repo.poll_ms.max(100));
        // The safety net: re-observe everything now and then, whatever
        // the watchers said.
        let resync = poll.max(Duration::from_secs(60));
        let mut poll_tick = tokio::time::interval_at(tokio::time::Instant::now() + poll, poll);
        poll_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resync_tick =
            tokio::time::interval_at(tokio::time::Instant::now() + resync, resync);
        resync_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        // First: what was in force, then whatever is new. Ready (the API
        // serves, the commit in force is loaded) before the first fetch,
        // which may wait on the remote, and the first converge, which may
        // order certificates: systemd's start timeout bounds neither.
        self.resume().await;
        on_ready();
        let first = async {
            self.refresh().await;
            self.reconcile("start").await;
        };
        tokio::select! {
            _ = first => {}
            _ = &mut shutdown => return,
        }
        crate::memory::give_back();

        let following = self.remote.is_some();
        loop {
            let retry = self
                .next_retry()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let mut wants = Wants::default();
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                t = triggers.recv() => match t {
                    Some(t) => wants.add(t),
                    None => break,
                },
                _ = poll_tick.tick(), if following => wants.fetch = true,
                _ = resync_tick.tick() => wants.reconcile = true,
                _ = tokio::time::sleep_until(retry) => wants.retry = true,
            }
            // Coalesce what arrives together.
            let settle = tokio::time::sleep(COALESCE);
            tokio::pin!(settle);
            loop {
                tokio::select! {
                    _ = &mut settle => break,
                    t = triggers.recv() => match t {
                        Some(t) => wants.add(t),
                        None => break,
                    },
                }
            }
            let work = async {
                let changed = if wants.fetch || wants.repo {
                    self.refresh().await
                } else {
                    false
                };
                if changed || wants.reconcile || wants.drift || wants.retry {
                    self.reconcile(wants.trigger(changed)).await;
                }
            };
            tokio::pin!(work);
            tokio::select! {
                _ = &mut work => crate::memory::give_back(),
                _ = &mut shutdown => {
                    // Let the reconcile in flight finish its step: every
                    // write is atomic, so cutting it later leaves no half
                    // file either, only less done.
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, &mut work).await;
                    break;
                }
            }
        }
        tracing::info!("stopping");
    }

    pub async fn close(self) {
        self.engine.close().await;
    }
}

#[derive(Default)]
struct Wants {
    fetch: bool,
    repo: bool,
    drift: bool,
    reconcile: bool,
    retry: bool,
}

impl Wants {
    /// What the reconcile is for, for its span.
    fn trigger(&self, changed: bool) -> &'static str {
        if changed {
            "new desired state"
        } else if self.drift {
            "drift"
        } else if self.retry {
            "retry"
        } else {
            "resync"
        }
    }

    fn add(&mut self, t: Trigger) {
        match t {
            Trigger::Fetch => self.fetch = true,
            Trigger::Repo => self.repo = true,
            Trigger::Drift => self.drift = true,
            Trigger::Resync => self.reconcile = true,
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

async fn lock(config: &Config) -> Result<HostLock> {
    let state = config.paths.state.clone();
    Ok(tokio::task::spawn_blocking(move || HostLock::acquire(&state, LOCK_WAIT)).await??)
}

fn plan_fingerprint(plan: &Plan) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for c in &plan.changes {
        (c.kind.as_str(), &c.name, c.action.as_str(), &c.diff).hash(&mut h);
    }
    h.finish()
}

fn problems_text(problems: &[Problem]) -> Vec<String> {
    problems
        .iter()
        .filter(|p| p.is_error())
        .map(ToString::to_string)
        .collect()
}

fn invalid(e: PipelineError) -> Vec<String> {
    match e {
        PipelineError::Invalid(problems) => problems_text(&problems),
        other => vec![other.to_string()],
    }
}

/// The desired state at `commit` of the clone at `path`, validated.
fn load_commit(path: &std::path::Path, commit: &str, host: &str) -> Result<Desired, Vec<String>> {
    let (id, files, read_problems) =
        vsa_live::git::files_at(path, commit).map_err(|e| vec![e.to_string()])?;
    let fingerprint = fingerprint_files(&files);
    let (model, _warnings) = pipeline::load_files(&files, read_problems).map_err(invalid)?;
    pipeline::check_host(&model, host).map_err(|e| vec![e.to_string()])?;
    Ok(Desired {
        model: Arc::new(model),
        commit: Some(id),
        fingerprint,
    })
}

/// The working copy at `path` as it is, validated; on error the label to
/// show (its HEAD commit, else "working copy") and the problems.
fn load_working_copy(path: &std::path::Path, host: &str) -> Result<Desired, (String, Vec<String>)> {
    let commit = vsa_live::git::head_commit(path);
    let (files, read_problems) = vsa_live::read_repo(path).map_err(|e| {
        (
            commit.clone().unwrap_or_else(|| "working copy".into()),
            vec![e.to_string()],
        )
    })?;
    let fingerprint = fingerprint_files(&files);
    let label = || match &commit {
        Some(c) => format!("{c} (working copy)"),
        None => format!("working copy {fingerprint:016x}"),
    };
    let (model, _warnings) =
        pipeline::load_files(&files, read_problems).map_err(|e| (label(), invalid(e)))?;
    pipeline::check_host(&model, host).map_err(|e| (label(), vec![e.to_string()]))?;
    Ok(Desired {
        model: Arc::new(model),
        commit,
        fingerprint,
    })
}

fn fingerprint_files(files: &[vsa_core::SourceFile]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in files {
        (&f.path, &f.text).hash(&mut h);
    }
    h.finish()
}
