//! From a plan to the ordered steps of one apply pass: the one function
//! both `vsactl apply --dry-run` (which shows them) and the engine (which
//! executes them) go through.
//!
//! A pass runs, in order:
//! 1. certificate renewals of sites whose files do not change (the pass's
//!    one reload loads them);
//! 2. networks, then containers in dependency order, deletes last (what a
//!    vhost points at exists before the vhost);
//! 3. each site's files, whole or not at all;
//! 4. `nginx -t` and one reload, when a config file changed or a reload is
//!    owed;
//! 5. new certificates, and those of sites whose files changed: after the
//!    reload, when nginx serves their HTTP-01 challenge location.

use std::collections::BTreeSet;

use crate::event::EventKind;
use crate::plan::{Action, Change, Op, Plan, ResourceId, ResourceKind};

/// The steps of one pass, in execution order.
#[derive(Clone, Debug, Default)]
pub struct Steps<'a> {
    pub early_certs: Vec<&'a Change>,
    pub docker: Vec<&'a Change>,
    /// Each site's file changes (vhost, htpasswd, access log), in plan order.
    pub files: Vec<(ResourceId, Vec<&'a Change>)>,
    /// Test and reload nginx after the files.
    pub reload: bool,
    pub late_certs: Vec<&'a Change>,
}

/// One step as a dry run lists it and the audit log records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// A change of the plan, recorded as its [`Change::event_kind`].
    Change(&'a Change),
    /// `nginx -t`, then the reload, confirmed by vsa's probe.
    TestAndReload,
}

impl Step<'_> {
    /// The audit action of the step.
    pub fn event_kind(&self) -> EventKind {
        match self {
            Step::Change(c) => c.event_kind(),
            Step::TestAndReload => EventKind::NginxReload,
        }
    }

    /// What the audit event names: the site, container, network or
    /// certificate; `nginx` for the reload.
    pub fn target(&self) -> &str {
        match self {
            Step::Change(c) => &c.name,
            Step::TestAndReload => "nginx",
        }
    }
}

impl<'a> Steps<'a> {
    /// Every step in execution order.
    pub fn flat(&self) -> Vec<Step<'a>> {
        let mut out: Vec<Step<'a>> = Vec::new();
        out.extend(self.early_certs.iter().map(|c| Step::Change(c)));
        out.extend(self.docker.iter().map(|c| Step::Change(c)));
        for (_, changes) in &self.files {
            out.extend(changes.iter().map(|c| Step::Change(c)));
        }
        if self.reload {
            out.push(Step::TestAndReload);
        }
        out.extend(self.late_certs.iter().map(|c| Step::Change(c)));
        out
    }

    pub fn is_empty(&self) -> bool {
        self.early_certs.is_empty()
            && self.docker.is_empty()
            && self.files.is_empty()
            && !self.reload
            && self.late_certs.is_empty()
    }
}

/// The steps of one pass over `plan`.
pub fn steps(plan: &Plan) -> Steps<'_> {
    let mut s = Steps::default();
    // Site groups: a site's changes go together, in plan order.
    let mut files: Vec<(ResourceId, Vec<&Change>)> = Vec::new();
    for c in plan
        .changes
        .iter()
        .filter(|c| c.touches_config() || c.kind == ResourceKind::AccessLog)
    {
        let id = c.resource();
        match files.iter_mut().find(|(g, _)| *g == id) {
            Some((_, v)) => v.push(c),
            None => files.push((id, vec![c])),
        }
    }
    for c in plan.changes.iter().filter(|c| c.kind == ResourceKind::Cert) {
        let files_change = files.iter().any(|(id, _)| id.name == c.name);
        if c.action == Action::Update && !files_change {
            s.early_certs.push(c);
        } else {
            s.late_certs.push(c);
        }
    }
    s.docker = docker_order(
        plan.changes
            .iter()
            .filter(|c| matches!(c.kind, ResourceKind::Network | ResourceKind::Container))
            .collect(),
    );
    // A renewed certificate, a replaced container a site points at (a new
    // address) and a reload owed need a reload as much as a changed file.
    let replaced_fronted = s.docker.iter().any(|c| {
        matches!(
            c.op,
            Op::RunContainer {
                replace: crate::plan::Replace::Ours | crate::plan::Replace::Legacy,
                fronted: true,
                ..
            }
        )
    });
    s.reload = files
        .iter()
        .any(|(_, cs)| cs.iter().any(|c| c.touches_config()))
        || plan.reload.is_some()
        || !s.early_certs.is_empty()
        || replaced_fronted;
    s.files = files;
    s
}

/// The containers a container change waits for.
pub fn depends_on(c: &Change) -> &[String] {
    match &c.op {
        Op::RunContainer { spec, .. } | Op::StartContainer { spec } => &spec.depends_on,
        _ => &[],
    }
}

/// Networks first, then containers once what they depend on (within the
/// plan) is done, deletes last.
fn docker_order(mut pending: Vec<&Change>) -> Vec<&Change> {
    pending.sort_by_key(|c| match (c.kind, c.action) {
        (ResourceKind::Network, _) => 0,
        (_, Action::Delete) => 2,
        _ => 1,
    });
    let in_plan: BTreeSet<&str> = pending.iter().map(|c| c.name.as_str()).collect();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut out = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        // The first whose dependencies are done (a cycle, which validation
        // refuses, would take the first).
        let idx = pending
            .iter()
            .position(|c| {
                depends_on(c)
                    .iter()
                    .all(|d| done.contains(d.as_str()) || !in_plan.contains(d.as_str()))
            })
            .unwrap_or(0);
        let c = pending.remove(idx);
        done.insert(c.name.as_str());
        out.push(c);
    }
    out
}
