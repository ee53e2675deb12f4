//! A pass's site files: write each site whole or not at all, `nginx -t`,
//! and take back what nginx rejects (named by nginx, else by bisection).

use std::path::Path;

use vsa_core::Observed;
use vsa_core::event::EventKind;
use vsa_core::plan::{Action, Change, Op, ResourceId, ResourceKind};
use vsa_live::files::{self, FileMode};
use vsa_live::nginx::{NginxError, error_location, first_error};
use vsa_store::Outcome;

use super::{ApplyError, Ctx, Executed, FailureClass, Run, file_target};
use crate::events::Event;

/// How the status of a site nginx did not load begins.
pub const NOT_LOADED: &str = "nginx did not load it: ";

/// A site's file changes.
type Group<'a> = (ResourceId, Vec<&'a Change>);

pub(super) struct Writer<'a> {
    config: &'a vsa_core::config::Config,
    gid: Option<u32>,
    writes: usize,
    abort_after: Option<usize>,
    /// The generation of this pass: every http-context content written
    /// carries it, so that what is on disk differs from what nginx serves
    /// until this pass's reload takes.
    generation: String,
    /// Files that could not be put back as they were: audited by the
    /// caller, which holds the audit log.
    rollback_errors: Vec<(String, String)>,
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
        let detail = match (c.kind, &c.op) {
            (ResourceKind::AccessLog, Op::CreateFile) => {
                files::ensure_file(&dir, file, self.mode(c.kind).mode)?;
                "created".to_owned()
            }
            (ResourceKind::Vhost | ResourceKind::Htpasswd, Op::WriteFile { content }) => {
                let content = self.stamped(file, content);
                files::write_atomic(&dir, file, content.as_bytes(), self.mode(c.kind))?;
                if c.kind == ResourceKind::Htpasswd {
                    format!("{}; users: {}", verb(c.action), users(&content))
                } else {
                    verb(c.action).to_owned()
                }
            }
            (ResourceKind::Vhost | ResourceKind::Htpasswd, Op::RemoveFile) => {
                if !files::remove_managed(&dir, file)? {
                    return Err(std::io::Error::other(format!(
                        "{file} is no longer managed by vsa (its header changed); left in place"
                    )));
                }
                "deleted".to_owned()
            }
            (kind, op) => {
                return Err(std::io::Error::other(format!(
                    "a {} change cannot {op:?} (a plan read back from JSON carries no operations)",
                    kind.as_str()
                )));
            }
        };
        self.count();
        Ok(detail)
    }

    /// Puts back what was there before `c`. A failure is kept for the
    /// audit: the file may now be neither the old nor the new one.
    fn back(&mut self, c: &Change, before: &Observed) {
        let file = c.file.as_deref().unwrap_or(&c.name);
        let dir = self.dir(c.kind).to_owned();
        let previous = match c.kind {
            ResourceKind::Vhost => before.vhosts.get(file),
            ResourceKind::Htpasswd => before.htpasswd.get(file),
            _ => return, // an empty log file harms nothing
        };
        let result = match previous {
            Some(p) => {
                let content = self.stamped(file, &p.content);
                files::write_atomic(&dir, file, content.as_bytes(), self.mode(c.kind))
            }
            None => files::remove_managed(&dir, file).map(|_| ()),
        };
        match result {
            Ok(()) => self.count(),
            Err(e) => self.rollback_errors.push((
                c.name.clone(),
                format!("cannot put {file} back as it was: {e}"),
            )),
        }
    }

    /// Takes a group's config files back, last change first.
    fn back_group(&mut self, group: &Group<'_>, before: &Observed) {
        for c in group.1.iter().rev().filter(|c| c.touches_config()) {
            self.back(c, before);
        }
    }

    fn forward_group(&mut self, group: &Group<'_>) {
        for c in group.1.iter().filter(|c| c.touches_config()) {
            if let Err(e) = self.forward(c) {
                self.rollback_errors
                    .push((c.name.clone(), format!("cannot re-apply {}: {e}", c.name)));
            }
        }
    }
}

impl Ctx<'_> {
    /// Audits every file the writer could not put back.
    fn audit_rollbacks(&mut self, w: &mut Writer<'_>) -> Result<(), ApplyError> {
        for (target, detail) in std::mem::take(&mut w.rollback_errors) {
            self.emit(Event::error(EventKind::SiteRollback, target, detail))?;
        }
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

/// Writes each site's files (whole or not at all), tests nginx, and takes
/// back what it rejects. Returns how many sites' config changes stay on
/// disk for the reload.
pub(super) async fn site_files(
    cx: &mut Ctx<'_>,
    run: &mut Run,
    groups: &[Group<'_>],
    before: &Observed,
) -> Result<usize, ApplyError> {
    let gid = vsa_live::files::group_id(&cx.config.nginx.group);
    let mut w = Writer {
        config: cx.config,
        gid,
        writes: run.report.writes,
        abort_after: cx.options.abort_after_writes,
        generation: vsa_live::nginx::new_generation(),
        rollback_errors: Vec::new(),
    };
    // Before nginx's config changes on disk, the http-context file takes
    // this pass's generation: from here until the reload takes, what is on
    // disk is not what nginx serves, even if vsa is killed on the way.
    if groups
        .iter()
        .any(|(_, cs)| cs.iter().any(|c| c.touches_config()))
        && let Err(e) = vsa_live::nginx::stamp_generation(&cx.config.paths.vhosts, &w.generation)
    {
        let line = format!("cannot stamp the http-context file: {e}");
        cx.emit(Event::error(EventKind::NginxReload, "nginx", &line))?;
        run.failed.transient(ResourceId::nginx(), line);
        return Ok(0);
    }
    // Groups whose config changes are on disk now.
    let mut applied: Vec<usize> = Vec::new();
    for (gi, (id, changes)) in groups.iter().enumerate() {
        let name = &id.name;
        if changes
            .iter()
            .any(|c| c.kind == ResourceKind::Htpasswd && c.action != Action::Delete)
            && gid.is_none()
        {
            let error = format!(
                "nginx.group `{}` does not exist on this host, so the htpasswd file cannot be made readable by nginx",
                cx.config.nginx.group
            );
            cx.emit(Event::error(EventKind::SiteApply, name, &error))?;
            // Only a change on the host (the group made) helps.
            run.failed.permanent(id.clone(), error);
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
            cx.emit(Event::new(c.event_kind(), name, outcome, &detail))?;
            run.report.executed.push(Executed {
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
                w.back(c, before);
            }
            cx.audit_rollbacks(&mut w)?;
            run.failed.transient(id.clone(), error);
            continue;
        }
        if changes.iter().any(|c| c.touches_config()) {
            applied.push(gi);
        }
    }

    if !applied.is_empty()
        && let Err(e) = cx.nginx.test().await
    {
        let result = isolate(cx, &mut w, groups, &mut applied, before, run, e).await;
        cx.audit_rollbacks(&mut w)?;
        result?;
    }
    run.report.writes = w.writes;
    Ok(applied.len())
}

fn err_line(e: &NginxError) -> String {
    super::nginx::err_line(e)
}

/// Finds and takes back the groups nginx rejects, until `nginx -t` passes.
async fn isolate(
    cx: &mut Ctx<'_>,
    w: &mut Writer<'_>,
    groups: &[Group<'_>],
    applied: &mut Vec<usize>,
    before: &Observed,
    run: &mut Run,
    first: NginxError,
) -> Result<(), ApplyError> {
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
        let group = &groups[culprit];
        w.back_group(group, before);
        cx.emit(Event::error(
            EventKind::SiteIsolate,
            &group.0.name,
            format!("nginx -t rejected it; previous files restored: {line}"),
        ))?;
        // The same files get the same verdict: only a change of them (or
        // of the host around them) is worth another test.
        run.failed
            .insert(group.0.clone(), FailureClass::Permanent, line);
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
    groups: &[Group<'_>],
    applied: &mut Vec<usize>,
    before: &Observed,
    why: &str,
) -> Result<(), ApplyError> {
    for &gi in applied.iter() {
        w.back_group(&groups[gi], before);
    }
    // Nothing of the pass stays, its generation neither: what is on disk is
    // what nginx serves.
    if let Some(g) = before
        .vhosts
        .get(vsa_core::render::HTTP_CONTEXT_FILE)
        .and_then(|f| vsa_core::render::generation_of(&f.content))
        && let Err(e) = vsa_live::nginx::stamp_generation(&cx.config.paths.vhosts, g)
    {
        w.rollback_errors.push((
            vsa_core::render::HTTP_CONTEXT_NAME.to_owned(),
            format!("cannot put the http-context file's generation back: {e}"),
        ));
    }
    cx.emit(Event::error(
        EventKind::NginxTest,
        "nginx",
        format!(
            "{} site(s) taken back, nothing reloaded: {why}",
            applied.len()
        ),
    ))?;
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
    groups: &[Group<'_>],
    applied: &mut Vec<usize>,
    before: &Observed,
) -> Option<usize> {
    for &gi in applied.iter() {
        w.back_group(&groups[gi], before);
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
            w.forward_group(&groups[gi]);
        }
        if cx.nginx.test().await.is_ok() {
            candidates.drain(..half.len()); // good: keep them, look in the rest
        } else {
            for &gi in &half {
                w.back_group(&groups[gi], before);
            }
            candidates = half;
        }
    }
    let culprit = candidates.first().copied()?;
    // Put every other group forward again; the caller re-tests.
    for &gi in applied.iter() {
        if gi != culprit {
            w.forward_group(&groups[gi]);
        }
    }
    w.back_group(&groups[culprit], before);
    applied.retain(|&gi| gi != culprit);
    Some(culprit)
}
