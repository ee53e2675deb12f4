//! Executing plans: write, test, isolate what nginx rejects, reload once.
//!
//! A pass executes the whole plan, runs `nginx -t`, and reloads once. When
//! the test fails, the sites responsible are found (nginx names the file;
//! otherwise bisection), their previous files are put back, and the rest
//! is reloaded: nginx is never reloaded with, nor left with, a config that
//! fails `nginx -t`. Passes repeat (re-observe, re-plan) until the plan is
//! empty or stops shrinking.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use vsa_core::config::{Config, Paths};
use vsa_core::plan::{Action, Change, Observed, ResourceKind};
use vsa_core::{Model, Plan, Renderer};
use vsa_live::acme::AcmeClient;
use vsa_live::files::{self, FileMode};
use vsa_live::nginx::{NginxControl, NginxError, error_location, first_error};
use vsa_live::safe_fs::SafeDir;
use vsa_store::{AuditLog, NewEvent, Outcome, ResourceStatus, Store};

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
}

#[derive(Clone, Debug)]
pub struct ApplyOptions {
    /// Re-observe and re-plan at most this many times.
    pub max_passes: usize,
    /// Test hook: abort the process after this many file writes, to prove
    /// that a kill at any point leaves every file whole.
    pub abort_after_writes: Option<usize>,
    /// Resources (by name) not to touch this time: the daemon's backoff
    /// after a failure. Their changes stay in the remaining plan.
    pub hold: BTreeSet<String>,
    /// Show image pulls as they go (stderr is a terminal).
    pub progress: bool,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            max_passes: 4,
            abort_after_writes: None,
            hold: BTreeSet::new(),
            progress: false,
        }
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

/// A site (or the http-context file) that could not be applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub name: String,
    pub error: String,
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

/// Converges the host to the model. Per-site failures are in the report;
/// an `Err` means the apply could not go on at all.
pub async fn apply(cx: &mut Ctx<'_>) -> Result<ApplyReport, ApplyError> {
    let mut report = ApplyReport::default();
    // Containers this apply creates carry the id; observation reads it.
    let instance =
        vsa_live::instance::ensure(&cx.config.paths.state).map_err(ApplyError::Instance)?;
    for dir in [&cx.config.paths.vhosts, &cx.config.paths.htpasswd] {
        // Leftovers of a killed apply; harmless (observation skips them) but untidy.
        let _ = files::clean_temp_files(dir);
    }
    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    let mut last_len = usize::MAX;
    let mut last_fingerprint: Option<Vec<(ResourceKind, String, Action)>> = None;
    let mut touched: BTreeSet<String> = BTreeSet::new();
    // The plan of the host as it stands, while no pass has changed it since.
    let mut current: Option<Plan> = None;
    let mut acme: Option<AcmeClient> = None;
    let result = async {
        for _ in 0..cx.options.max_passes {
            let observed = crate::pipeline::observe(cx.config, cx.model, cx.host, cx.store).await?;
            let full =
                vsa_core::plan(cx.model, cx.host, &observed, cx.renderer, cx.commit.clone())?;
            // nginx does not serve what is on disk (a reload that did not
            // take effect): reload again, once per apply.
            if full.reload.is_some()
                && !failed.contains_key("nginx")
                && !cx.options.hold.contains("nginx")
            {
                report.reload_owed = true;
            }
            let mut plan = full.clone();
            // A certificate is ordered at most once per apply, even when
            // the new one is still inside the renewal window.
            plan.changes.retain(|c| {
                let cert_done = c.kind == ResourceKind::Cert && report.certs_done.contains(&c.name);
                !(failed.contains_key(&c.name) || cx.options.hold.contains(&c.name) || cert_done)
            });
            // Stop when done, or when a pass made no progress. A certificate
            // turns into a vhost update (HTTP → HTTPS), so progress is a
            // different plan, not only a shorter one.
            let fingerprint = plan_fingerprint(&plan);
            if plan.changes.is_empty()
                || plan.changes.len() > last_len
                || last_fingerprint.as_ref() == Some(&fingerprint)
            {
                current = Some(full);
                break;
            }
            last_len = plan.changes.len();
            last_fingerprint = Some(fingerprint);
            report.passes += 1;
            touched.extend(plan.changes.iter().map(|c| c.name.clone()));
            run_pass(
                cx,
                &plan,
                &observed,
                &instance,
                &mut failed,
                &mut report,
                &mut acme,
            )
            .await?;
        }
        if report.reload_owed {
            // A renewal after the pass's reload, and no pass since, or a
            // reload owed from before: the plan must be looked at again.
            owed_reload(cx, &mut failed, &mut report).await?;
            current = None;
        }
        Ok::<(), ApplyError>(())
    }
    .await;
    let synced = cx.audit.sync()?;
    if let Some(store) = cx.store {
        store.insert_events(&synced).await?;
    }
    result?;

    report.failures = failed
        .iter()
        .map(|(name, error)| Failure {
            name: name.clone(),
            error: error.clone(),
        })
        .collect();
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
    Ok(report)
}

async fn record_status(
    cx: &Ctx<'_>,
    store: &Store,
    touched: &BTreeSet<String>,
    failed: &BTreeMap<String, String>,
    reloaded: bool,
) -> Result<(), ApplyError> {
    let now = vsa_store::time::format(std::time::SystemTime::now());
    // A site whose files are in place but which nginx never loaded is not
    // converged: it failed with nginx's reason, until a reload takes.
    let nginx_failure = failed.get("nginx").map(|e| format!("{NOT_LOADED}{e}"));
    let mut touched = touched.clone();
    if nginx_failure.is_none() && reloaded {
        for s in store.resource_statuses(cx.host).await? {
            if s.kind == "site" && s.status == "failed" && s.detail.starts_with(NOT_LOADED) {
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
        if !present.contains(name.as_str()) && !failed.contains_key(name) {
            store.clear_resource_status(cx.host, "site", name).await?;
            continue;
        }
        let (status, detail) = match failed.get(name).or(nginx_failure.as_ref()) {
            Some(e) => ("failed", e.clone()),
            None => ("ok", String::new()),
        };
        store
            .set_resource_status(
                cx.host,
                &ResourceStatus {
                    kind: "site".into(),
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

/// How the status of a site nginx did not load begins.
pub const NOT_LOADED: &str = "nginx did not load it: ";

/// Changes grouped by resource name (a site's vhost, htpasswd and log go
/// together), in plan order.
fn groups(plan: &Plan) -> Vec<(String, Vec<&Change>)> {
    let mut order: Vec<String> = Vec::new();
    let mut by: BTreeMap<String, Vec<&Change>> = BTreeMap::new();
    for c in &plan.changes {
        if !by.contains_key(&c.name) {
            order.push(c.name.clone());
        }
        by.entry(c.name.clone()).or_default().push(c);
    }
    order
        .into_iter()
        .map(|n| {
            let v = by.remove(&n).unwrap_or_default();
            (n, v)
        })
        .collect()
}

fn touches_config(c: &Change) -> bool {
    matches!(c.kind, ResourceKind::Vhost | ResourceKind::Htpasswd)
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

struct Writer<'a> {
    config: &'a Config,
    gid: Option<u32>,
    writes: usize,
    abort_after: Option<usize>,
    /// The generation of this pass: every http-context content written
    /// carries it, so that what is on disk differs from what nginx serves
    /// until this pass's reload takes.
    generation: String,
}

impl Writer<'_> {
    fn dir(&self, kind: ResourceKind) -> &Path {
        file_target(&self.config.paths, kind).map_or(&self.config.paths.state, |(dir, _)| dir)
    }

    fn mode(&self, kind: ResourceKind) -> FileMode {
        let mode = file_target(&self.config.paths, kind).map_or(0o644, |(_, mode)| mode);
        let gid = if kind == ResourceKind::Htpasswd {
            self.gid
        } else {
            None
        };
        FileMode { mode, gid }
    }

    fn count(&mut self) {
        self.writes += 1;
        if self.abort_after == Some(self.writes) {
            // The failpoint of ApplyOptions::abort_after_writes.
            std::process::abort();
        }
    }

    /// `content` of `file` as this pass writes it: the http-context file
    /// with the pass's generation.
    fn stamped(&self, file: &str, content: &str) -> String {
        if file == vsa_core::render::HTTP_CONTEXT_FILE {
            vsa_core::render::with_generation(content, &self.generation)
                .unwrap_or_else(|| content.to_owned())
        } else {
            content.to_owned()
        }
    }

    /// Puts the desired state of one change in place.
    fn forward(&mut self, c: &Change) -> std::io::Result<String> {
        let file = c.file.as_deref().unwrap_or(&c.name);
        let dir = self.dir(c.kind).to_owned();
        let detail = match (c.kind, c.action) {
            (ResourceKind::AccessLog, _) => {
                files::ensure_file(&dir, file, self.mode(c.kind).mode)?;
                "created".to_owned()
            }
            (ResourceKind::Vhost | ResourceKind::Htpasswd, Action::Create | Action::Update) => {
                let content = self.stamped(file, c.content.as_deref().unwrap_or(""));
                files::write_atomic(&dir, file, content.as_bytes(), self.mode(c.kind))?;
                if c.kind == ResourceKind::Htpasswd {
                    format!("{}; users: {}", verb(c.action), users(&content))
                } else {
                    verb(c.action).to_owned()
                }
            }
            (ResourceKind::Vhost | ResourceKind::Htpasswd, Action::Delete) => {
                if !files::remove_managed(&dir, file)? {
                    return Err(std::io::Error::other(format!(
                        "{file} is no longer managed by vsa (its header changed); left in place"
                    )));
                }
                "deleted".to_owned()
            }
            (kind, _) => {
                return Err(std::io::Error::other(format!(
                    "{} changes are not supported yet",
                    kind.as_str()
                )));
            }
        };
        self.count();
        Ok(detail)
    }

    /// Puts back what was there before `c`.
    fn back(&mut self, c: &Change, before: &Observed) -> std::io::Result<()> {
        let file = c.file.as_deref().unwrap_or(&c.name);
        let dir = self.dir(c.kind).to_owned();
        let previous = match c.kind {
            ResourceKind::Vhost => before.vhosts.get(file),
            ResourceKind::Htpasswd => before.htpasswd.get(file),
            _ => return Ok(()), // an empty log file harms nothing
        };
        match previous {
            Some(p) => {
                let content = self.stamped(file, &p.content);
                files::write_atomic(&dir, file, content.as_bytes(), self.mode(c.kind))?
            }
            None => {
                files::remove_managed(&dir, file)?;
            }
        }
        self.count();
        Ok(())
    }
}

fn verb(a: Action) -> &'static str {
    match a {
        Action::Create => "created",
        Action::Update => "updated",
        Action::Delete => "deleted",
    }
}

/// The user names of an htpasswd file, never the hashes.
fn users(content: &str) -> String {
    let names: Vec<&str> = content
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':').map(|(user, _)| user))
        .collect();
    names.join(", ")
}

fn action_name(c: &Change) -> String {
    let verb = match (c.kind, c.action) {
        (ResourceKind::AccessLog, _) => "create",
        (_, Action::Delete) => "delete",
        _ => "write",
    };
    format!("{}.{verb}", c.kind.as_str())
}

async fn run_pass(
    cx: &mut Ctx<'_>,
    plan: &Plan,
    before: &Observed,
    instance: &str,
    failed: &mut BTreeMap<String, String>,
    report: &mut ApplyReport,
    acme: &mut Option<AcmeClient>,
) -> Result<(), ApplyError> {
    let gid = vsa_live::files::group_id(&cx.config.nginx.group);
    let mut w = Writer {
        config: cx.config,
        gid,
        writes: report.writes,
        abort_after: cx.options.abort_after_writes,
        generation: vsa_live::nginx::new_generation(),
    };
    let commit = cx.commit.clone();
    let all_groups = groups(plan);
    // Certificates are not files of the pass: a renewal of a site whose
    // files do not change goes first (the pass's one reload loads it); a
    // new certificate, or one for a site whose vhost changes, goes after
    // the reload, when nginx serves the site's HTTP-01 challenge location.
    let (mut early, mut late) = (Vec::new(), Vec::new());
    for (name, changes) in &all_groups {
        let has_files = changes
            .iter()
            .any(|c| touches_config(c) || c.kind == ResourceKind::AccessLog);
        for c in changes.iter().filter(|c| c.kind == ResourceKind::Cert) {
            if c.action == Action::Update && !has_files {
                early.push((name.clone(), *c));
            } else {
                late.push((name.clone(), *c));
            }
        }
    }
    for (name, c) in &early {
        if cert_step(cx, name, c, failed, report, acme).await? {
            report.reload_owed = true;
        }
    }
    // Networks and containers come before the vhosts that point at them.
    let docker_changes: Vec<&Change> = plan
        .changes
        .iter()
        .filter(|c| matches!(c.kind, ResourceKind::Network | ResourceKind::Container))
        .collect();
    if !docker_changes.is_empty()
        && docker_step(cx, &docker_changes, instance, failed, report).await?
    {
        // A recreated container a site points at has a new address: the
        // reload makes nginx look the name up again.
        report.reload_owed = true;
    }
    let groups: Vec<(String, Vec<&Change>)> = all_groups
        .iter()
        .map(|(n, cs)| {
            (
                n.clone(),
                cs.iter()
                    .copied()
                    .filter(|c| touches_config(c) || c.kind == ResourceKind::AccessLog)
                    .collect(),
            )
        })
        .filter(|(_, cs): &(String, Vec<&Change>)| !cs.is_empty())
        .collect();
    // Before nginx's config changes on disk, the http-context file takes
    // this pass's generation: from here until the reload takes, what is on
    // disk is not what nginx serves, even if vsa is killed on the way.
    if groups
        .iter()
        .any(|(_, cs)| cs.iter().any(|c| touches_config(c)))
        && let Err(e) = vsa_live::nginx::stamp_generation(&cx.config.paths.vhosts, &w.generation)
    {
        let line = format!("cannot stamp the http-context file: {e}");
        cx.audit.record(
            commit.as_deref(),
            NewEvent::new("nginx.reload", "nginx", Outcome::Error, &line),
        )?;
        failed.insert("nginx".into(), line);
        return Ok(());
    }
    // Groups whose config changes are on disk now.
    let mut applied: Vec<usize> = Vec::new();
    for (gi, (name, changes)) in groups.iter().enumerate() {
        if changes
            .iter()
            .any(|c| c.kind == ResourceKind::Htpasswd && c.action != Action::Delete)
            && gid.is_none()
        {
            let error = format!(
                "nginx.group `{}` does not exist on this host, so the htpasswd file cannot be made readable by nginx",
                cx.config.nginx.group
            );
            cx.audit.record(
                commit.as_deref(),
                NewEvent::new("site.apply", name, Outcome::Error, &error),
            )?;
            failed.insert(name.clone(), error);
            continue;
        }
        let mut done: Vec<&Change> = Vec::new();
        let mut error = None;
        for c in changes {
            let (outcome, detail) = match w.forward(c) {
                Ok(detail) => (Outcome::Ok, detail),
                Err(e) => (
                    Outcome::Error,
                    format!(
                        "{} {}: {e}",
                        c.kind.as_str(),
                        c.file.as_deref().unwrap_or(name)
                    ),
                ),
            };
            cx.audit.record(
                commit.as_deref(),
                NewEvent::new(action_name(c), name, outcome, &detail),
            )?;
            report.executed.push(Executed {
                kind: c.kind,
                name: name.clone(),
                action: c.action,
                outcome,
                detail: detail.clone(),
            });
            if outcome != Outcome::Ok {
                error = Some(detail);
                break;
            }
            done.push(c);
        }
        if let Some(error) = error {
            // A site is applied whole or not at all.
            for c in done.iter().rev() {
                let _ = w.back(c, before);
            }
            failed.insert(name.clone(), error);
            continue;
        }
        if changes.iter().any(|c| touches_config(c)) {
            applied.push(gi);
        }
    }

    if !applied.is_empty()
        && let Err(e) = cx.nginx.test().await
    {
        isolate(cx, &mut w, &groups, &mut applied, before, failed, e).await?;
    }
    report.writes = w.writes;
    if !applied.is_empty() {
        let why = format!("{} site(s) changed", applied.len());
        reload(cx, failed, report, why, false).await?;
    } else if report.reload_owed {
        owed_reload(cx, failed, report).await?;
    }
    for (name, c) in &late {
        if failed.contains_key(name) || failed.contains_key("nginx") {
            continue;
        }
        if cert_step(cx, name, c, failed, report, acme).await? && c.action == Action::Update {
            report.reload_owed = true;
        }
    }
    Ok(())
}

/// How long a container with a healthcheck may take to become healthy.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

/// Executes network and container changes, dependencies first. A failure
/// fails that container (and what depends on it), never the rest. Returns
/// whether a container some site points at was recreated.
async fn docker_step(
    cx: &mut Ctx<'_>,
    changes: &[&Change],
    instance: &str,
    failed: &mut BTreeMap<String, String>,
    report: &mut ApplyReport,
) -> Result<bool, ApplyError> {
    use vsa_core::docker::ContainerSpec;
    let commit = cx.commit.clone();
    let endpoint = cx.config.docker.endpoint_url().to_owned();
    let mut record =
        |cx: &mut Ctx<'_>, c: &Change, action: &str, outcome: Outcome, detail: String| {
            report.executed.push(Executed {
                kind: c.kind,
                name: c.name.clone(),
                action: c.action,
                outcome,
                detail: detail.clone(),
            });
            cx.audit.record(
                commit.as_deref(),
                NewEvent::new(action, &c.name, outcome, &detail),
            )
        };
    let docker = match vsa_live::docker::connect(&endpoint).await {
        Ok(d) => d,
        Err(e) => {
            for c in changes {
                record(
                    cx,
                    c,
                    &format!("{}.apply", c.kind.as_str()),
                    Outcome::Error,
                    e.to_string(),
                )?;
                failed.insert(c.name.clone(), e.to_string());
            }
            return Ok(false);
        }
    };
    // Containers a site points at.
    let fronted: BTreeSet<String> = cx
        .model
        .sites_for(cx.host)
        .filter_map(|s| match &s.upstream {
            vsa_core::model::Upstream::Container { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    // What each container must wait for (same stack, `depends_on`).
    let deps = |name: &str| -> Vec<String> {
        cx.model
            .stacks_for(cx.host)
            .flat_map(|st| st.services.values().map(move |svc| (st, svc)))
            .find(|(_, svc)| svc.container == name)
            .map(|(st, svc)| {
                svc.depends_on
                    .iter()
                    .filter_map(|d| st.services.get(d).map(|s| s.container.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut recreated_fronted = false;
    // Networks first, then containers in dependency order, deletes last.
    let mut pending: Vec<&Change> = changes.to_vec();
    pending.sort_by_key(|c| match (c.kind, c.action) {
        (ResourceKind::Network, _) => 0,
        (_, Action::Delete) => 2,
        _ => 1,
    });
    let mut done: BTreeSet<String> = BTreeSet::new();
    let in_plan: BTreeSet<String> = pending.iter().map(|c| c.name.clone()).collect();
    while !pending.is_empty() {
        // The first change whose dependencies are done (or not in the plan).
        let idx = pending
            .iter()
            .position(|c| {
                deps(&c.name)
                    .iter()
                    .all(|d| done.contains(d) || !in_plan.contains(d))
            })
            .unwrap_or(0);
        let c = pending.remove(idx);
        done.insert(c.name.clone());
        if let Some(d) = deps(&c.name).iter().find(|d| failed.contains_key(*d)) {
            let detail = format!("not started: it depends on {d}, which failed");
            record(cx, c, "container.create", Outcome::Skipped, detail.clone())?;
            failed.insert(c.name.clone(), detail);
            continue;
        }
        let result: Result<(&str, String), String> = match (c.kind, c.action) {
            (ResourceKind::Network, _) => vsa_live::docker::create_network(&docker, &c.name)
                .await
                .map(|()| ("network.create", "created".to_owned()))
                .map_err(|e| e.to_string()),
            (ResourceKind::Container, Action::Delete) => {
                // Exactly the container checked to be ours, by its id.
                match vsa_live::docker::owner(&docker, &c.name, cx.host, instance).await {
                    Ok(vsa_live::docker::Owner::Ours { id }) => {
                        vsa_live::docker::remove(&docker, &id)
                            .await
                            .map(|()| ("container.delete", "removed (volumes kept)".to_owned()))
                            .map_err(|e| e.to_string())
                    }
                    Ok(vsa_live::docker::Owner::Legacy { .. }) => Err(format!(
                        "{} has no {} label: not deleted",
                        c.name,
                        vsa_core::docker::LABEL_INSTANCE
                    )),
                    Err(e) => Err(e),
                }
            }
            (ResourceKind::Container, action) => {
                let spec: Option<ContainerSpec> = c
                    .content
                    .as_deref()
                    .and_then(|j| serde_json::from_str(j).ok());
                match spec {
                    None => Err("no container spec in the plan".to_owned()),
                    Some(spec) => {
                        let start_only =
                            action == Action::Update && c.reason.starts_with("stopped");
                        let r = if start_only {
                            vsa_live::docker::start(&docker, &spec.name)
                                .await
                                .map(|()| ("container.start", "started".to_owned()))
                                .map_err(|e| e.to_string())
                        } else {
                            run_container(
                                &docker,
                                &spec,
                                cx.host,
                                instance,
                                action,
                                cx.options.progress,
                            )
                            .await
                        };
                        match r {
                            Ok(ok) if spec.healthcheck.is_some() => {
                                vsa_live::docker::wait_healthy(&docker, &spec.name, HEALTH_TIMEOUT)
                                    .await
                                    .map(|()| (ok.0, format!("{}; healthy", ok.1)))
                            }
                            other => other,
                        }
                    }
                }
            }
            _ => Err(format!("{} changes are not supported", c.kind.as_str())),
        };
        match result {
            Ok((action, detail)) => {
                if matches!(action, "container.recreate" | "container.adopt")
                    && fronted.contains(&c.name)
                {
                    recreated_fronted = true;
                }
                record(
                    cx,
                    c,
                    action,
                    Outcome::Ok,
                    format!("{detail} ({})", c.reason),
                )?;
            }
            Err(e) => {
                let action = match (c.kind, c.action) {
                    (ResourceKind::Network, _) => "network.create",
                    (_, Action::Create) => "container.create",
                    (_, Action::Update) => "container.recreate",
                    (_, Action::Delete) => "container.delete",
                };
                record(cx, c, action, Outcome::Error, e.clone())?;
                failed.insert(c.name.clone(), e);
            }
        }
    }
    Ok(recreated_fronted)
}

/// Creates (or recreates) and starts one container: the image first (an
/// error naming it when it cannot be had), the env files' values under
/// the manifest's environment.
async fn run_container(
    docker: &bollard::Docker,
    spec: &vsa_core::docker::ContainerSpec,
    host: &str,
    instance: &str,
    action: Action,
    progress: bool,
) -> Result<(&'static str, String), String> {
    vsa_live::docker::ensure_image(docker, &spec.image, progress)
        .await
        .map_err(|e| e.to_string())?;
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for path in spec.env_files.keys() {
        let values = vsa_live::docker::env_file_values(Path::new(path))
            .map_err(|e| format!("env_file {path}: {e}"))?;
        env.extend(values);
    }
    env.extend(spec.environment.clone());
    let env: Vec<String> = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    let (verb, adopted) = if action == Action::Create {
        ("container.create", String::new())
    } else {
        // Recreate exactly the container checked to be ours (by its id); a
        // legacy one of this host is adopted, once, and said so.
        let (verb, id, adopted) =
            match vsa_live::docker::owner(docker, &spec.name, host, instance).await? {
                vsa_live::docker::Owner::Ours { id } => ("container.recreate", id, String::new()),
                vsa_live::docker::Owner::Legacy { id } => (
                    "container.adopt",
                    id,
                    format!(
                        "; adopted by instance {instance} (made before {} labels)",
                        vsa_core::docker::LABEL_INSTANCE
                    ),
                ),
            };
        vsa_live::docker::remove(docker, &id)
            .await
            .map_err(|e| e.to_string())?;
        (verb, adopted)
    };
    vsa_live::docker::create_and_start(docker, spec, host, instance, env)
        .await
        .map_err(|e| e.to_string())?;
    Ok((verb, format!("{} running{adopted}", spec.image)))
}

/// Tests and reloads nginx for what changed outside its config since the
/// last reload (a renewed certificate, a recreated container).
async fn owed_reload(
    cx: &mut Ctx<'_>,
    failed: &mut BTreeMap<String, String>,
    report: &mut ApplyReport,
) -> Result<(), ApplyError> {
    let why = "certificate renewed, container recreated or configuration not yet served".to_owned();
    // A generation of its own, so that the probe tells this reload's
    // configuration from the one before.
    if let Err(e) = vsa_live::nginx::stamp_generation(
        &cx.config.paths.vhosts,
        &vsa_live::nginx::new_generation(),
    ) {
        let line = format!("cannot stamp the http-context file: {e}");
        let commit = cx.commit.clone();
        cx.audit.record(
            commit.as_deref(),
            NewEvent::new("nginx.reload", "nginx", Outcome::Error, &line),
        )?;
        failed.insert("nginx".into(), format!("reload failed: {line}"));
        return Ok(());
    }
    reload(cx, failed, report, why, true).await
}

/// Reloads nginx (after `nginx -t` when `test_first`; a pass has tested
/// already) and audits it. A failure is `nginx`'s, not the apply's.
async fn reload(
    cx: &mut Ctx<'_>,
    failed: &mut BTreeMap<String, String>,
    report: &mut ApplyReport,
    why: String,
    test_first: bool,
) -> Result<(), ApplyError> {
    report.reload_owed = false;
    let commit = cx.commit.clone();
    let tested = if test_first {
        cx.nginx.test().await
    } else {
        Ok(())
    };
    // Converged means served: the reload counts once nginx is seen
    // serving the configuration on disk, by the generation it carries.
    let vhosts = &cx.config.paths.vhosts;
    let generation = vsa_live::nginx::generation_on_disk(vhosts);
    let result = match tested {
        Ok(()) => cx.nginx.reload_and_confirm(generation.as_deref()).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {
            report.reloads += 1;
            let detail = match generation {
                Some(g) => format!("{why}; nginx serves configuration {g}"),
                None => why,
            };
            cx.audit.record(
                commit.as_deref(),
                NewEvent::new("nginx.reload", "nginx", Outcome::Ok, detail),
            )?;
        }
        Err(e) => {
            let line = err_line(&e);
            cx.audit.record(
                commit.as_deref(),
                NewEvent::new("nginx.reload", "nginx", Outcome::Error, &line),
            )?;
            failed.insert("nginx".into(), format!("reload failed: {line}"));
        }
    }
    Ok(())
}

/// How long one certificate order may take.
const ACME_TIMEOUT: Duration = Duration::from_secs(90);

/// Issues, renews or deletes one site's certificate. Returns whether files
/// changed. Failures are the site's (recorded, backed off), never the
/// whole apply's.
async fn cert_step(
    cx: &mut Ctx<'_>,
    name: &str,
    c: &Change,
    failed: &mut BTreeMap<String, String>,
    report: &mut ApplyReport,
    acme: &mut Option<AcmeClient>,
) -> Result<bool, ApplyError> {
    let commit = cx.commit.clone();
    let live = cx.config.paths.letsencrypt.join("live").join(name);
    let action = match c.action {
        Action::Create => "cert.issue",
        Action::Update => "cert.renew",
        Action::Delete => "cert.delete",
    };
    report.certs_done.insert(name.to_owned());
    let mut outcome_of = |cx: &mut Ctx<'_>, outcome: Outcome, detail: String| {
        report.executed.push(Executed {
            kind: ResourceKind::Cert,
            name: name.to_owned(),
            action: c.action,
            outcome,
            detail: detail.clone(),
        });
        cx.audit.record(
            commit.as_deref(),
            NewEvent::new(action, name, outcome, &detail),
        )
    };

    if c.action == Action::Delete {
        let result = (|| {
            let Some(live_dir) = SafeDir::open(&cx.config.paths.letsencrypt.join("live"))? else {
                return Ok(());
            };
            let Some(dir) = live_dir.sub_existing(name)? else {
                return Ok(());
            };
            for f in ["fullchain.pem", "privkey.pem"] {
                dir.remove(f)?;
            }
            live_dir.remove_empty_dir(name)?; // only when nothing else is in it
            Ok::<(), std::io::Error>(())
        })();
        return match result {
            Ok(()) => {
                if let Some(store) = cx.store {
                    store.forget_cert(cx.host, name).await?;
                    store.clear_acme_backoff(cx.host, name).await?;
                }
                outcome_of(cx, Outcome::Ok, "deleted".into())?;
                Ok(true)
            }
            Err(e) => {
                let detail = format!("cannot remove {}: {e}", live.display());
                outcome_of(cx, Outcome::Error, detail.clone())?;
                failed.insert(name.to_owned(), detail);
                Ok(false)
            }
        };
    }

    // Polite to the CA: a domain that failed waits its turn, across runs.
    let now_ms = vsa_store::time::now_millis();
    let previous = match cx.store {
        Some(store) => store.acme_backoff(cx.host, name).await?,
        None => None,
    };
    if let Some(b) = previous.as_ref().filter(|b| b.next_attempt_ms > now_ms) {
        let detail = format!(
            "not asking the CA before {} ({} failure(s)); last error: {}",
            vsa_store::time::format_millis(b.next_attempt_ms),
            b.failures,
            b.last_error
        );
        outcome_of(cx, Outcome::Skipped, detail.clone())?;
        failed.insert(name.to_owned(), detail);
        return Ok(false);
    }
    let names: Vec<String> = match cx.model.sites_for(cx.host).find(|s| s.domain == name) {
        Some(site) => std::iter::once(site.domain.clone())
            .chain(site.aliases.iter().cloned())
            .collect(),
        None => vec![name.to_owned()],
    };
    let issued = async {
        if acme.is_none() {
            *acme = Some(
                AcmeClient::connect(
                    &cx.config.acme.directory,
                    cx.config.acme.ca_bundle.as_deref(),
                    &cx.config.paths.state,
                    cx.model.fleet.acme_email.as_deref(),
                )
                .await?,
            );
        }
        let client = acme.as_ref().expect("connected above");
        client
            .issue(&names, &cx.config.paths.webroot, ACME_TIMEOUT)
            .await
    }
    .await;
    // A new account, its contact and the terms agreed to: audited once.
    if let Some(registered) = acme.as_mut().and_then(|a| a.registered.take()) {
        cx.audit.record(
            commit.as_deref(),
            NewEvent::new(
                "acme.account",
                &cx.config.acme.directory,
                Outcome::Ok,
                registered,
            ),
        )?;
    }
    let written = issued.map_err(|e| e.to_string()).and_then(|i| {
        let info = vsa_live::certs::parse(
            i.chain_pem.as_bytes(),
            Some(&i.key_pem),
            name,
            now_ms / 1000,
        )
        .map_err(|e| format!("the CA sent a certificate vsa cannot read: {e}"))?;
        // The key first: a crash between the two leaves a mismatch, which
        // the next plan sees and repairs, never a certificate without key.
        SafeDir::create(&cx.config.paths.letsencrypt, 0o755)
            .and_then(|d| d.sub("live", Some(0o755)))
            .and_then(|d| d.sub(name, Some(0o755)))
            .and_then(|d| {
                d.write_atomic("privkey.pem", i.key_pem.as_bytes(), FileMode::private())?;
                d.write_atomic("fullchain.pem", i.chain_pem.as_bytes(), FileMode::public())
            })
            .map_err(|e| format!("cannot write {}: {e}", live.display()))?;
        Ok(info)
    });
    match written {
        Ok(info) => {
            report.issued += 1;
            if let Some(store) = cx.store {
                store
                    .record_cert(cx.host, name, &info.serial, info.not_after)
                    .await?;
                store.clear_acme_backoff(cx.host, name).await?;
            }
            let detail = format!(
                "serial {}, for {}, expires {} ({})",
                info.serial,
                names.join(" "),
                vsa_store::time::format_millis(info.not_after * 1000),
                c.reason
            );
            outcome_of(cx, Outcome::Ok, detail)?;
            Ok(true)
        }
        Err(reason) => {
            let backoff =
                vsa_store::AcmeBackoff::after_failure(name, previous.as_ref(), &reason, now_ms);
            if let Some(store) = cx.store {
                store.set_acme_backoff(cx.host, &backoff).await?;
            }
            let detail = format!(
                "{reason}; next attempt not before {}",
                vsa_store::time::format_millis(backoff.next_attempt_ms)
            );
            outcome_of(cx, Outcome::Error, detail.clone())?;
            failed.insert(name.to_owned(), format!("certificate: {reason}"));
            Ok(false)
        }
    }
}

fn plan_fingerprint(plan: &Plan) -> Vec<(ResourceKind, String, Action)> {
    plan.changes
        .iter()
        .map(|c| (c.kind, c.name.clone(), c.action))
        .collect()
}

fn err_line(e: &NginxError) -> String {
    match e {
        NginxError::Failed { first_error, .. } => first_error.clone(),
        other => other.to_string(),
    }
}

/// Finds and takes back the groups nginx rejects, until `nginx -t` passes.
async fn isolate(
    cx: &mut Ctx<'_>,
    w: &mut Writer<'_>,
    groups: &[(String, Vec<&Change>)],
    applied: &mut Vec<usize>,
    before: &Observed,
    failed: &mut BTreeMap<String, String>,
    first: NginxError,
) -> Result<(), ApplyError> {
    let commit = cx.commit.clone();
    let mut error = first;
    loop {
        let line = match &error {
            NginxError::Failed { output, .. } => first_error(output),
            other => {
                // No verdict on the config at all: nothing unverified stays.
                let line = other.to_string();
                take_back_all(cx, w, groups, applied, before, &line)?;
                return Err(ApplyError::NginxUnavailable(line));
            }
        };
        // nginx names the file it rejects; is it one of ours?
        let named = error_location(&line).and_then(|(path, _)| {
            let file = path.file_name()?.to_str()?.to_owned();
            applied.iter().position(|&gi| {
                groups[gi]
                    .1
                    .iter()
                    .any(|c| c.file.as_deref() == Some(file.as_str()))
            })
        });
        let culprit = match named {
            Some(pos) => applied.remove(pos),
            None => match bisect(cx, w, groups, applied, before).await {
                Some(gi) => gi,
                None => {
                    take_back_all(cx, w, groups, applied, before, &line)?;
                    return Err(ApplyError::BrokenWithoutUs(line));
                }
            },
        };
        let (name, changes) = &groups[culprit];
        for c in changes.iter().rev() {
            if touches_config(c) {
                let _ = w.back(c, before);
            }
        }
        cx.audit.record(
            commit.as_deref(),
            NewEvent::new(
                "site.isolate",
                name,
                Outcome::Error,
                format!("nginx -t rejected it; previous files restored: {line}"),
            ),
        )?;
        failed.insert(name.clone(), line);
        match cx.nginx.test().await {
            Ok(()) => return Ok(()),
            Err(e) if applied.is_empty() => {
                return Err(ApplyError::BrokenWithoutUs(err_line(&e)));
            }
            Err(e) => error = e,
        }
    }
}

/// Takes every applied group's config files back (idempotent: a group
/// already taken back is written back to the same content) and audits it.
fn take_back_all(
    cx: &mut Ctx<'_>,
    w: &mut Writer<'_>,
    groups: &[(String, Vec<&Change>)],
    applied: &mut Vec<usize>,
    before: &Observed,
    why: &str,
) -> Result<(), ApplyError> {
    for &gi in applied.iter() {
        for c in groups[gi].1.iter().rev().filter(|c| touches_config(c)) {
            let _ = w.back(c, before);
        }
    }
    // Nothing of the pass stays, its generation neither: what is on disk is
    // what nginx serves.
    if let Some(g) = before
        .vhosts
        .get(vsa_core::render::HTTP_CONTEXT_FILE)
        .and_then(|f| vsa_core::render::generation_of(&f.content))
    {
        let _ = vsa_live::nginx::stamp_generation(&cx.config.paths.vhosts, g);
    }
    let commit = cx.commit.clone();
    cx.audit.record(
        commit.as_deref(),
        NewEvent::new(
            "nginx.test",
            "nginx",
            Outcome::Error,
            format!(
                "{} site(s) taken back, nothing reloaded: {why}",
                applied.len()
            ),
        ),
    )?;
    applied.clear();
    Ok(())
}

/// When nginx's error names no file of ours: takes every applied group back
/// and re-applies halves to find one that makes `nginx -t` fail. Returns
/// it (removed from `applied`, the others re-applied), or `None` when the
/// config fails even without any of our changes (then all are left taken
/// back).
async fn bisect(
    cx: &mut Ctx<'_>,
    w: &mut Writer<'_>,
    groups: &[(String, Vec<&Change>)],
    applied: &mut Vec<usize>,
    before: &Observed,
) -> Option<usize> {
    let back = |w: &mut Writer<'_>, gi: usize| {
        for c in groups[gi].1.iter().rev().filter(|c| touches_config(c)) {
            let _ = w.back(c, before);
        }
    };
    let forward = |w: &mut Writer<'_>, gi: usize| {
        for c in groups[gi].1.iter().filter(|c| touches_config(c)) {
            let _ = w.forward(c);
        }
    };
    for &gi in applied.iter() {
        back(w, gi);
    }
    if cx.nginx.test().await.is_err() {
        // Broken without us: the caller leaves everything taken back.
        return None;
    }
    // Invariant: the accepted groups pass; `candidates` holds a culprit.
    let mut candidates: Vec<usize> = applied.clone();
    while candidates.len() > 1 {
        let half: Vec<usize> = candidates[..candidates.len() / 2].to_vec();
        for &gi in &half {
            forward(w, gi);
        }
        if cx.nginx.test().await.is_ok() {
            candidates.drain(..half.len()); // good: keep them, look in the rest
        } else {
            for &gi in &half {
                back(w, gi);
            }
            candidates = half;
        }
    }
    let culprit = candidates.first().copied()?;
    // Put every other group forward again; the caller re-tests.
    for &gi in applied.iter() {
        if gi != culprit {
            forward(w, gi);
        }
    }
    back(w, culprit);
    applied.retain(|&gi| gi != culprit);
    Some(culprit)
}
