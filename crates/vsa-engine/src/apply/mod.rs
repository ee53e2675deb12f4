//! Executing plans: write, test, isolate what nginx rejects, reload once.
//!
//! A pass executes the steps of the plan ([`vsa_core::steps`]), runs
//! `nginx -t`, and reloads once. When the test fails, the sites
//! responsible are found (nginx names the file; otherwise bisection), their
//! previous files are put back, and the rest is reloaded: nginx is never
//! reloaded with, nor left with, a config that fails `nginx -t`. Passes
//! repeat (re-observe, re-plan) until the plan is empty or stops changing.

mod certs;
mod docker;
mod files;
mod nginx;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use vsa_core::config::{Config, Paths};
use vsa_core::plan::{Action, ResourceId, ResourceKind, UnitKind};
use vsa_core::{Model, Plan, Renderer};
use vsa_live::acme::AcmeClient;
use vsa_live::nginx::NginxControl;
use vsa_store::{AuditLog, Outcome, ResourceStatus, Store};

use crate::events::Event;

pub use files::NOT_LOADED;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Observe(#[from] vsa_live::files::ObserveError),
    #[error(transparent)]
    Render(#[from] vsa_core::render::RenderError),
    #[error("cannot write the audit log, so nothing more is done: {0}")]
    Audit(#[from] vsa_store::audit::AuditError),
    #[error(transparent)]
    Store(#[from] vsa_store::StoreError),
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
    #[error("cannot read or make this vsa's instance id: {0}")]
    Instance(std::io::Error),
    #[error(
        "nginx -t fails even with all of vsa's changes taken back, so they stay taken back and nothing was reloaded: {0}"
    )]
    BrokenWithoutUs(String),
    #[error(
        "cannot run nginx -t, so vsa's changes to the nginx config were taken back and nothing was reloaded: {0}"
    )]
    NginxUnavailable(String),
    /// The host is no longer what the confirmed plan was made from:
    /// nothing was done, and this is the plan as it is now.
    #[error("the host changed since the plan was confirmed; nothing was applied")]
    PlanChanged(Box<Plan>),
}

#[derive(Clone, Debug)]
pub struct ApplyOptions {
    /// Re-observe and re-plan at most this many times.
    pub max_passes: usize,
    /// Test hook: abort the process after this many file writes, to prove
    /// that a kill at any point leaves every file whole.
    pub abort_after_writes: Option<usize>,
    /// Resources not to touch this time: the daemon's error policy. Their
    /// changes stay in the remaining plan.
    pub hold: BTreeSet<ResourceId>,
    /// Show image pulls as they go (stderr is a terminal).
    pub progress: bool,
    /// The [`Plan::fingerprint`] of the plan the user confirmed: the first
    /// pass executes only that plan, and returns
    /// [`ApplyError::PlanChanged`] when the host no longer gives it.
    pub expect: Option<u64>,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            max_passes: 4,
            abort_after_writes: None,
            hold: BTreeSet::new(),
            progress: false,
            expect: None,
        }
    }
}

/// Whether asking again can help without a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureClass {
    /// Something outside vsa may pass (the engine or the CA away, a disk
    /// full, a reload that did not take): back off and try again.
    Transient,
    /// The same input gets the same answer (nginx rejects this vhost, no
    /// such image): wait for a change of the resource or the host.
    Permanent,
}

/// A resource that could not be applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub id: ResourceId,
    pub error: String,
    pub class: FailureClass,
}

/// The failures of one apply, by resource.
#[derive(Debug, Default)]
pub(crate) struct Failures(BTreeMap<ResourceId, Failure>);

impl Failures {
    pub(crate) fn insert(&mut self, id: ResourceId, class: FailureClass, error: impl Into<String>) {
        let error = error.into();
        self.0.insert(id.clone(), Failure { id, error, class });
    }

    pub(crate) fn transient(&mut self, id: ResourceId, error: impl Into<String>) {
        self.insert(id, FailureClass::Transient, error);
    }

    pub(crate) fn permanent(&mut self, id: ResourceId, error: impl Into<String>) {
        self.insert(id, FailureClass::Permanent, error);
    }

    pub(crate) fn contains(&self, id: &ResourceId) -> bool {
        self.0.contains_key(id)
    }

    fn nginx(&self) -> Option<&Failure> {
        self.0.get(&ResourceId::nginx())
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The failure of a site: its files', else its certificate's.
    fn of_site(&self, name: &str) -> Option<&Failure> {
        self.0
            .get(&ResourceId::site(name))
            .or_else(|| self.0.get(&ResourceId::cert(name)))
    }
}

/// What one resource change came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Executed {
    pub kind: ResourceKind,
    pub name: String,
    pub action: Action,
    pub outcome: Outcome,
    pub detail: String,
}

#[derive(Debug, Default)]
pub struct ApplyReport {
    pub executed: Vec<Executed>,
    pub failures: Vec<Failure>,
    pub passes: usize,
    pub writes: usize,
    pub reloads: usize,
    /// The plan after the last pass; empty when the host converged.
    pub remaining: Option<Plan>,
    /// A renewed certificate is on disk that nginx has not loaded yet.
    pub reload_owed: bool,
    /// Certificates issued (or renewed) from the CA in this apply.
    pub issued: usize,
    /// Sites whose certificate step ran in this apply.
    pub certs_done: BTreeSet<String>,
}

impl ApplyReport {
    pub fn converged(&self) -> bool {
        self.failures.is_empty() && self.remaining.as_ref().is_none_or(Plan::in_sync)
    }
}

/// Everything an apply works with.
pub struct Ctx<'a> {
    pub config: &'a Config,
    pub model: &'a Model,
    pub host: &'a str,
    pub commit: Option<String>,
    pub renderer: &'a Renderer,
    pub nginx: &'a NginxControl,
    pub audit: &'a mut AuditLog,
    pub store: Option<&'a Store>,
    pub options: ApplyOptions,
}

impl Ctx<'_> {
    /// Emits one event under this apply's commit.
    pub(crate) fn emit(&mut self, e: Event) -> Result<(), ApplyError> {
        Ok(e.emit(self.audit, self.commit.as_deref())?)
    }
}

/// The state of one apply across its passes.
pub(crate) struct Run {
    pub(crate) failed: Failures,
    pub(crate) report: ApplyReport,
    pub(crate) instance: String,
    pub(crate) acme: Option<AcmeClient>,
}

/// Converges the host to the model. Per-resource failures are in the
/// report; an `Err` means the apply could not go on at all.
pub async fn apply(cx: &mut Ctx<'_>) -> Result<ApplyReport, ApplyError> {
    // Containers this apply creates carry the id; observation reads it.
    let instance =
        vsa_live::instance::ensure(&cx.config.paths.state).map_err(ApplyError::Instance)?;
    for dir in [&cx.config.paths.vhosts, &cx.config.paths.htpasswd] {
        // Leftovers of a killed apply; harmless (observation skips them) but untidy.
        let _ = vsa_live::files::clean_temp_files(dir);
    }
    let mut run = Run {
        failed: Failures::default(),
        report: ApplyReport::default(),
        instance,
        acme: None,
    };
    let mut touched: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<Plan> = None;
    let result = passes(cx, &mut run, &mut touched, &mut current).await;
    let synced = cx.audit.sync()?;
    if let Some(store) = cx.store {
        store.insert_events(&synced).await?;
    }
    result?;

    let Run {
        failed, mut report, ..
    } = run;
    report.remaining = Some(match current {
        Some(plan) => plan,
        // The passes ran out: look once more at what they left.
        None => {
            let observed = crate::pipeline::observe(cx.config, cx.model, cx.host, cx.store).await?;
            vsa_core::plan(cx.model, cx.host, &observed, cx.renderer, cx.commit.clone())?
        }
    });
    if let Some(store) = cx.store
        && (report.passes > 0 || report.reloads > 0)
    {
        record_status(cx, store, &touched, &failed, report.reloads > 0).await?;
    }
    report.failures = failed.0.into_values().collect();
    Ok(report)
}

/// Observe, plan, execute, until the plan is done or stops changing.
async fn passes(
    cx: &mut Ctx<'_>,
    run: &mut Run,
    touched: &mut BTreeSet<String>,
    current: &mut Option<Plan>,
) -> Result<(), ApplyError> {
    let mut last_len = usize::MAX;
    let mut last_fingerprint: Option<Vec<(ResourceKind, String, Action)>> = None;
    let nginx = ResourceId::nginx();
    for pass in 0..cx.options.max_passes {
        let observed = crate::pipeline::observe(cx.config, cx.model, cx.host, cx.store).await?;
        let full = vsa_core::plan(cx.model, cx.host, &observed, cx.renderer, cx.commit.clone())?;
        if pass == 0
            && let Some(expected) = cx.options.expect
            && full.fingerprint() != expected
        {
            return Err(ApplyError::PlanChanged(Box::new(full)));
        }
        // nginx does not serve what is on disk (a reload that did not
        // take effect): reload again, once per apply.
        if full.reload.is_some()
            && !run.failed.contains(&nginx)
            && !cx.options.hold.contains(&nginx)
        {
            run.report.reload_owed = true;
        }
        let mut plan = full.clone();
        // A certificate is ordered at most once per apply, even when the
        // new one is still inside the renewal window.
        plan.changes.retain(|c| {
            let id = c.resource();
            let cert_done = c.kind == ResourceKind::Cert && run.report.certs_done.contains(&c.name);
            !(run.failed.contains(&id) || cx.options.hold.contains(&id) || cert_done)
        });
        // The reload is the pass's own (its files, or the one owed).
        if !run.report.reload_owed {
            plan.reload = None;
        }
        // Stop when done, or when a pass made no progress. A certificate
        // turns into a vhost update (HTTP → HTTPS), so progress is a
        // different plan, not only a shorter one.
        let fingerprint = plan_fingerprint(&plan);
        if plan.changes.is_empty()
            || plan.changes.len() > last_len
            || last_fingerprint.as_ref() == Some(&fingerprint)
        {
            *current = Some(full);
            break;
        }
        last_len = plan.changes.len();
        last_fingerprint = Some(fingerprint);
        run.report.passes += 1;
        touched.extend(
            plan.changes
                .iter()
                .filter_map(|c| c.resource().site_name().map(str::to_owned)),
        );
        run_pass(cx, run, &plan, &observed).await?;
    }
    if run.report.reload_owed {
        // A renewal after the pass's reload, and no pass since, or a
        // reload owed from before: the plan must be looked at again.
        nginx::owed_reload(cx, run).await?;
        *current = None;
    }
    Ok(())
}

/// One pass: the steps of `plan`, in their order.
async fn run_pass(
    cx: &mut Ctx<'_>,
    run: &mut Run,
    plan: &Plan,
    before: &vsa_core::Observed,
) -> Result<(), ApplyError> {
    let steps = vsa_core::steps::steps(plan);
    for c in &steps.early_certs {
        if certs::cert_step(cx, run, c).await? {
            run.report.reload_owed = true;
        }
    }
    // Networks and containers come before the vhosts that point at them.
    if !steps.docker.is_empty() && docker::docker_step(cx, run, &steps.docker).await? {
        // A recreated container a site points at has a new address: the
        // reload makes nginx look the name up again.
        run.report.reload_owed = true;
    }
    let applied = files::site_files(cx, run, &steps.files, before).await?;
    if applied > 0 {
        let why = format!("{applied} site(s) changed");
        nginx::reload(cx, run, why, false).await?;
    } else if run.report.reload_owed {
        nginx::owed_reload(cx, run).await?;
    }
    let nginx = ResourceId::nginx();
    for c in &steps.late_certs {
        if run.failed.contains(&ResourceId::site(&c.name)) || run.failed.contains(&nginx) {
            continue;
        }
        if certs::cert_step(cx, run, c).await? && c.action == Action::Update {
            run.report.reload_owed = true;
        }
    }
    Ok(())
}

async fn record_status(
    cx: &Ctx<'_>,
    store: &Store,
    touched: &BTreeSet<String>,
    failed: &Failures,
    reloaded: bool,
) -> Result<(), ApplyError> {
    let now = vsa_store::time::format(std::time::SystemTime::now());
    // A site whose files are in place but which nginx never loaded is not
    // converged: it failed with nginx's reason, until a reload takes.
    let nginx_failure = failed.nginx().map(|f| format!("{NOT_LOADED}{}", f.error));
    let mut touched = touched.clone();
    if nginx_failure.is_none() && reloaded {
        for s in store.resource_statuses(cx.host).await? {
            if s.kind == UnitKind::Site.as_str()
                && s.status == "failed"
                && s.detail.starts_with(NOT_LOADED)
            {
                touched.insert(s.name);
            }
        }
    }
    let present: BTreeSet<&str> = cx
        .model
        .sites_for(cx.host)
        .map(|s| s.domain.as_str())
        .collect();
    for name in &touched {
        let failure = failed.of_site(name).map(|f| f.error.clone());
        if !present.contains(name.as_str()) && failure.is_none() {
            store
                .clear_resource_status(cx.host, UnitKind::Site.as_str(), name)
                .await?;
            continue;
        }
        let (status, detail) = match failure.or(nginx_failure.clone()) {
            Some(e) => ("failed", e),
            None => ("ok", String::new()),
        };
        store
            .set_resource_status(
                cx.host,
                &ResourceStatus {
                    kind: UnitKind::Site.as_str().into(),
                    name: name.clone(),
                    status: status.into(),
                    detail,
                    commit: cx.commit.clone(),
                    updated_at: now.clone(),
                },
            )
            .await?;
    }
    let outcome = if failed.is_empty() { "ok" } else { "partial" };
    if let Some(c) = &cx.commit {
        store.set_state(cx.host, "last_applied_commit", c).await?;
    }
    store.set_state(cx.host, "last_apply_at", &now).await?;
    store
        .set_state(cx.host, "last_apply_outcome", outcome)
        .await?;
    Ok(())
}

/// The directory a change's file lives in and the mode vsa gives it, for
/// the file kinds apply writes.
pub fn file_target(paths: &Paths, kind: ResourceKind) -> Option<(&Path, u32)> {
    match kind {
        ResourceKind::Vhost => Some((&paths.vhosts, 0o644)),
        ResourceKind::Htpasswd => Some((&paths.htpasswd, 0o640)),
        ResourceKind::AccessLog => Some((&paths.access_logs, 0o640)),
        _ => None,
    }
}

fn plan_fingerprint(plan: &Plan) -> Vec<(ResourceKind, String, Action)> {
    plan.changes
        .iter()
        .map(|c| (c.kind, c.name.clone(), c.action))
        .collect()
}
