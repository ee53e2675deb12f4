//! The reconcile loop: follow the desired state, keep the host equal to it.
//!
//! Everything that can change the answer arrives as a [`Trigger`]: a poll
//! tick or a signed webhook (fetch), an edit of the working copy, an event
//! in the vhost or htpasswd directory (drift), the periodic safety-net
//! re-observe, a backoff running out. Triggers that arrive together are
//! coalesced into one reconcile. Applies go through the same engine and
//! host lock as `vsactl apply`.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result};
use tokio::sync::mpsc::UnboundedReceiver;
use vsa_core::config::{Config, Mode};
use vsa_core::render::RenderSettings;
use vsa_core::{Model, Plan, Problem, Renderer};
use vsa_engine::HostLock;
use vsa_engine::apply::{ApplyOptions, Ctx};
use vsa_engine::pipeline::{self, PipelineError};
use vsa_live::git::Remote;
use vsa_live::nginx::NginxControl;
use vsa_store::{AuditLog, NewEvent, Outcome, Store};

use crate::Trigger;
use crate::http::{Refused, Shared};

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

#[derive(Debug)]
struct Backoff {
    failures: u32,
    until: Instant,
}

pub struct Daemon {
    config: Arc<Config>,
    host: String,
    shared: Arc<Shared>,
    store: Store,
    remote: Option<Remote>,
    desired: Option<Desired>,
    /// The newest commit validation refused (not tried again).
    refused: Option<String>,
    backoff: BTreeMap<String, Backoff>,
    /// The whole reconcile failed (lock, observe, store): retry then.
    retry_all: Option<Backoff>,
    /// The drift last audited in report mode, so it is audited once.
    reported_drift: Option<u64>,
    /// Why the last fetch failed (cleared by the next one that works).
    fetch_error: Option<String>,
    /// When a failing fetch was last logged as a warning.
    fetch_warned: Option<Instant>,
    /// A fetch still running after the loop stopped waiting for it; no
    /// other starts until it ends (they would fight over the clone).
    stuck_fetch: Option<tokio::task::JoinHandle<Result<String, vsa_live::git::SyncError>>>,
    apply_error: Option<String>,
    renderer: Arc<Renderer>,
    nginx: NginxControl,
}

impl Daemon {
    pub async fn new(config: Arc<Config>, host: String, shared: Arc<Shared>) -> Result<Daemon> {
        let store = Store::open(&config.paths.state)
            .await
            .context("cannot open the state store")?;
        if let Ok(audit) = AuditLog::open(&config.paths.audit_log, "vsad", &host) {
            store.catch_up(&audit).await?;
        }
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
        let renderer = Arc::new(
            Renderer::new(RenderSettings::from(&*config)).with_threads(pipeline::threads()),
        );
        let nginx = NginxControl::from_config(&config);
        Ok(Daemon {
            config,
            host,
            shared,
            store,
            remote,
            desired: None,
            refused: None,
            backoff: BTreeMap::new(),
            retry_all: None,
            reported_drift: None,
            fetch_error: None,
            fetch_warned: None,
            stuck_fetch: None,
            apply_error: None,
            renderer,
            nginx,
        })
    }

    fn repo_path(&self) -> PathBuf {
        self.config.repo.path.clone()
    }

    /// Loads the commit in force from the last run, so a restart converges
    /// (and serves the API) before the first fetch, even with the remote
    /// down.
    pub async fn resume(&mut self) {
        let Some(_) = &self.remote else { return };
        let Ok(Some(commit)) = self.store.get_state(&self.host, "commit_in_force").await else {
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
                self.shared.view().metrics.error("fetch");
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
        self.shared.view().metrics.last_fetch = Some(unix_now());
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
        self.shared.view().metrics.error("fetch");
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
        {
            let mut v = self.shared.view();
            if v.commit != d.commit {
                // Nobody knows yet whether the host is in sync with it:
                // the next reconcile tells.
                v.in_sync = None;
            }
            v.commit = d.commit.clone();
            v.metrics.commit = d.commit.clone();
            v.refused = None;
        }
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
            vec![NewEvent::new(
                "commit.refuse",
                label,
                Outcome::Error,
                format!("{} error(s), first: {first}", problems.len()),
            )],
        )
        .await;
        {
            let mut v = self.shared.view();
            v.metrics.error("commit");
            v.refused = Some(Refused {
                commit: label.to_owned(),
                errors: problems,
            });
        }
        self.update_last_error();
    }

    /// `/api/status`'s `last_error`: whatever is wrong now, the refused
    /// commit first, then a fetch that fails, then the last apply.
    fn update_last_error(&self) {
        let refused = self.shared.view().refused.clone();
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
            .chain(self.apply_error.clone())
            .collect();
        self.shared.view().last_error = (!errors.is_empty()).then(|| errors.join("; "));
    }

    /// Records events under the host lock, so the audit chain stays one
    /// chain with `vsactl apply`'s.
    async fn audit(&self, commit: Option<&str>, events: Vec<NewEvent>) {
        let result = async {
            let _lock = lock(&self.config).await?;
            let mut log = AuditLog::open(&self.config.paths.audit_log, "vsad", &self.host)?;
            for e in events {
                log.record(commit, e)?;
            }
            let synced = log.sync()?;
            self.store.insert_events(&synced).await?;
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }

    /// When the next backoff runs out, if any.
    pub fn next_retry(&self) -> Option<Instant> {
        self.backoff
            .values()
            .map(|b| b.until)
            .chain(self.retry_all.as_ref().map(|b| b.until))
            .min()
    }

    /// Observes, plans and (in apply mode) applies.
    pub async fn reconcile(&mut self) {
        let Some(desired) = &self.desired else {
            return;
        };
        let started = Instant::now();
        let model = desired.model.clone();
        let commit = desired.commit.clone();
        let result = self.reconcile_with(model, commit).await;
        let secs = started.elapsed().as_secs_f64();
        let now = vsa_store::time::format(SystemTime::now());
        match result {
            Ok(plan) => {
                self.retry_all = None;
                let in_sync = plan.in_sync() && self.apply_error.is_none();
                let mut v = self.shared.view();
                v.metrics.observe_reconcile(secs);
                v.metrics.out_of_sync = plan.changes.len();
                if in_sync {
                    v.metrics.last_success = Some(unix_now());
                }
                v.in_sync = Some(plan.in_sync());
                v.last_reconcile = Some(now);
                v.plan = Some(plan);
            }
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "reconcile failed");
                let failures = self.retry_all.as_ref().map_or(0, |b| b.failures) + 1;
                self.retry_all = Some(Backoff {
                    failures,
                    until: Instant::now() + backoff(failures),
                });
                self.apply_error = Some(format!("{e:#}"));
                let mut v = self.shared.view();
                v.metrics.observe_reconcile(secs);
                v.metrics.error("reconcile");
                v.last_reconcile = Some(now);
            }
        }
        self.update_last_error();
    }

    async fn reconcile_with(&mut self, model: Arc<Model>, commit: Option<String>) -> Result<Plan> {
        let config = self.config.clone();
        let renderer = self.renderer.clone();
        let host = self.host.clone();
        let observed = pipeline::observe(&config, &model, &host, Some(&self.store)).await?;
        self.show_certs(observed.cert_info.values().cloned().collect());
        let plan = {
            let (model, commit) = (model.clone(), commit.clone());
            tokio::task::spawn_blocking(move || -> Result<Plan> {
                Ok(vsa_core::plan(&model, &host, &observed, &renderer, commit)?)
            })
            .await??
        };
        // Nothing to do only when nginx also serves what is on disk: a
        // reload that did not take is still owed.
        if plan.changes.is_empty() && plan.reload.is_none() {
            self.reported_drift = None;
            self.apply_error = None;
            return Ok(plan);
        }
        if self.config.mode == Mode::Report {
            let fp = plan_fingerprint(&plan);
            if self.reported_drift != Some(fp) {
                self.reported_drift = Some(fp);
                self.shared.view().metrics.drift_seen += 1;
                let names: BTreeSet<&str> = plan.changes.iter().map(|c| c.name.as_str()).collect();
                tracing::warn!(
                    changes = plan.changes.len(),
                    "drift seen (report mode: left as is)"
                );
                let reload = plan.reload.iter().map(|why| {
                    NewEvent::new(
                        "drift.seen",
                        "nginx",
                        Outcome::Skipped,
                        format!("reload owed: {why}"),
                    )
                });
                let events = names
                    .iter()
                    .map(|n| {
                        let what: Vec<String> = plan
                            .changes
                            .iter()
                            .filter(|c| c.name == *n)
                            .map(|c| {
                                format!("{} {} ({})", c.action.as_str(), c.kind.as_str(), c.reason)
                            })
                            .collect();
                        NewEvent::new("drift.seen", *n, Outcome::Skipped, what.join("; "))
                    })
                    .chain(reload)
                    .collect();
                self.audit(commit.as_deref(), events).await;
            }
            return Ok(plan);
        }

        // Apply mode: everything not backing off.
        let now = Instant::now();
        let hold: BTreeSet<String> = self
            .backoff
            .iter()
            .filter(|(_, b)| b.until > now)
            .map(|(n, _)| n.clone())
            .collect();
        // A reload owed (nginx does not serve what is on disk) is work too,
        // unless nginx itself is backing off.
        if plan.changes.iter().all(|c| hold.contains(&c.name))
            && (plan.reload.is_none() || hold.contains("nginx"))
        {
            return Ok(plan);
        }
        let _lock = lock(&self.config).await?;
        let mut audit = AuditLog::open(&self.config.paths.audit_log, "vsad", &self.host)?;
        let mut cx = Ctx {
            config: &self.config,
            model: &model,
            host: &self.host,
            commit,
            renderer: &self.renderer,
            nginx: &self.nginx,
            audit: &mut audit,
            store: Some(&self.store),
            options: ApplyOptions {
                hold: hold.clone(),
                ..ApplyOptions::default()
            },
        };
        let report = vsa_engine::apply(&mut cx).await?;
        let failed: BTreeMap<&str, &str> = report
            .failures
            .iter()
            .map(|f| (f.name.as_str(), f.error.as_str()))
            .collect();
        {
            let mut v = self.shared.view();
            v.metrics.reloads += report.reloads as u64;
            for name in failed.keys() {
                v.metrics
                    .error(if *name == "nginx" { "nginx" } else { "site" });
            }
        }
        for (name, error) in &failed {
            let failures = self.backoff.get(*name).map_or(0, |b| b.failures) + 1;
            let wait = backoff(failures);
            tracing::warn!(resource = %name, error = %error, retry_in_s = wait.as_secs(), "apply failed");
            self.backoff.insert(
                (*name).to_owned(),
                Backoff {
                    failures,
                    until: Instant::now() + wait,
                },
            );
        }
        // What was tried and did not fail is healthy again.
        self.backoff
            .retain(|name, _| hold.contains(name) || failed.contains_key(name.as_str()));
        self.apply_error = (!failed.is_empty()).then(|| {
            failed
                .iter()
                .map(|(n, e)| format!("{n}: {e}"))
                .collect::<Vec<_>>()
                .join("; ")
        });
        if report.executed.is_empty() {
            tracing::debug!("nothing applied");
        } else {
            tracing::info!(
                writes = report.writes,
                reloads = report.reloads,
                failed = failed.len(),
                "applied"
            );
        }
        Ok(report.remaining.unwrap_or(plan))
    }

    /// The certificates on disk (as observed for the plan), for
    /// `/api/certs` and the expiry metric.
    fn show_certs(&self, certs: Vec<vsa_core::certs::CertInfo>) {
        let mut v = self.shared.view();
        v.metrics.cert_expiry = certs
            .iter()
            .filter(|c| c.error.is_none())
            .map(|c| (c.domain.clone(), c.not_after))
            .collect();
        v.certs = certs;
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
            self.reconcile().await;
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
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
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
                _ = tokio::time::sleep_until(retry) => wants.reconcile = true,
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
                if changed || wants.reconcile || wants.drift {
                    self.reconcile().await;
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
        self.store.close().await;
    }
}

#[derive(Default)]
struct Wants {
    fetch: bool,
    repo: bool,
    drift: bool,
    reconcile: bool,
}

impl Wants {
    fn add(&mut self, t: Trigger) {
        match t {
            Trigger::Fetch => self.fetch = true,
            Trigger::Repo => self.repo = true,
            Trigger::Drift => self.drift = true,
            Trigger::Resync => self.reconcile = true,
        }
    }
}

fn backoff(failures: u32) -> Duration {
    BACKOFF_BASE
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_CAP)
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
