//! What a host looks like, computed once by the engine and read by every
//! view of it: `vsactl status`, vsad's JSON API and pages, and (later) the
//! hub, which holds one [`HostSnapshot`] per host.
//!
//! The reconcile loop publishes a new snapshot after each step; readers
//! take an `Arc` of the current one and never wait for the loop.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use vsa_core::Model;
use vsa_core::config::Mode;
use vsa_core::model::{Site, Upstream};
use vsa_core::plan::{Change, Plan};
use vsa_store::ResourceStatus;

use crate::metrics::Metrics;

/// A commit validation refused, and its problems.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Refused {
    pub commit: String,
    pub errors: Vec<String>,
}

/// One host as of its last reconcile.
#[derive(Clone, Debug)]
pub struct HostSnapshot {
    pub host: String,
    pub mode: Mode,
    /// The desired-state commit in force.
    pub commit: Option<String>,
    /// `None` until a reconcile of the commit in force tells.
    pub in_sync: Option<bool>,
    /// Whatever is wrong now: a refused commit, a fetch, a resource.
    pub last_error: Option<String>,
    pub last_reconcile: Option<String>,
    pub refused: Option<Refused>,
    pub plan: Option<Arc<Plan>>,
    /// The certificates on disk, as of the last reconcile.
    pub certs: Arc<Vec<vsa_core::certs::CertInfo>>,
    pub sites: Arc<Vec<SiteStatus>>,
    pub metrics: Metrics,
}

impl HostSnapshot {
    pub fn new(host: impl Into<String>, mode: Mode) -> HostSnapshot {
        HostSnapshot {
            host: host.into(),
            mode,
            commit: None,
            in_sync: None,
            last_error: None,
            last_reconcile: None,
            refused: None,
            plan: None,
            certs: Arc::new(Vec::new()),
            sites: Arc::new(Vec::new()),
            metrics: Metrics::default(),
        }
    }

    /// `GET /api/status` (DESIGN §7, contract).
    pub fn status(&self) -> Status<'_> {
        Status {
            host: &self.host,
            mode: self.mode,
            commit: self.commit.as_deref(),
            in_sync: self.in_sync,
            last_error: self.last_error.as_deref(),
            last_reconcile: self.last_reconcile.as_deref(),
            refused: self.refused.as_ref(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Status<'a> {
    pub host: &'a str,
    pub mode: Mode,
    pub commit: Option<&'a str>,
    pub in_sync: Option<bool>,
    pub last_error: Option<&'a str>,
    pub last_reconcile: Option<&'a str>,
    /// Extension: the newest commit when validation refused it.
    pub refused: Option<&'a Refused>,
}

/// A site's state, in DESIGN §7's vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SiteState {
    InSync,
    /// A managed file was changed on the host.
    Drifted,
    /// The repository asks for a change not yet applied.
    Pending,
    /// The last apply of it failed.
    Failed,
    /// Something in the way (a conflict) keeps vsa from applying it.
    Blocked,
}

impl SiteState {
    pub fn as_str(self) -> &'static str {
        match self {
            SiteState::InSync => "in_sync",
            SiteState::Drifted => "drifted",
            SiteState::Pending => "pending",
            SiteState::Failed => "failed",
            SiteState::Blocked => "blocked",
        }
    }
}

/// One site of the host.
#[derive(Clone, Debug, Serialize)]
pub struct SiteStatus {
    pub domain: String,
    pub status: SiteState,
    /// Why it is not in sync (empty when it is).
    pub detail: String,
    /// `container:port` or the URL.
    pub upstream: String,
    pub tls: vsa_core::model::Tls,
    pub auth: bool,
    /// The plan's changes of this site.
    pub changes: Vec<Change>,
}

/// What the engine recorded of past applies, for telling a drift from a
/// change not yet applied and a failure from a pending change.
#[derive(Clone, Debug, Default)]
pub struct Recorded {
    /// The site statuses the last applies left, by domain.
    pub sites: BTreeMap<String, ResourceStatus>,
    pub last_applied_commit: Option<String>,
}

/// The state of every site of `host`, from the current plan and what
/// applies recorded.
pub fn site_statuses(
    model: &Model,
    host: &str,
    plan: &Plan,
    recorded: &Recorded,
) -> Vec<SiteStatus> {
    model
        .sites_for(host)
        .map(|site| site_status(site, plan, recorded))
        .collect()
}

fn site_status(site: &Site, plan: &Plan, recorded: &Recorded) -> SiteStatus {
    let changes: Vec<Change> = plan
        .changes
        .iter()
        .filter(|c| c.name == site.domain)
        .cloned()
        .collect();
    let conflict = plan.conflicts.iter().find(|c| c.name == site.domain);
    let rec = recorded.sites.get(&site.domain);
    // Files in place that nginx never loaded: failed with nginx's reason.
    let not_loaded = rec.filter(|r| {
        plan.reload.is_some()
            && r.status == "failed"
            && r.detail.starts_with(crate::apply::NOT_LOADED)
    });
    let (status, detail) = if let Some(r) = not_loaded.filter(|_| conflict.is_none()) {
        (SiteState::Failed, r.detail.clone())
    } else if changes.is_empty() && conflict.is_none() {
        (SiteState::InSync, String::new())
    } else if let Some(c) = conflict {
        (SiteState::Blocked, c.message.clone())
    } else if let Some(r) = rec.filter(|r| r.status == "failed") {
        (SiteState::Failed, r.detail.clone())
    } else {
        let what: Vec<String> = changes
            .iter()
            .map(|c| format!("{} {}", c.kind.as_str(), c.action.as_str()))
            .collect();
        let new = changes
            .iter()
            .any(|c| c.action == vsa_core::plan::Action::Create)
            && rec.is_none();
        let repo_moved = plan.commit.is_some() && plan.commit != recorded.last_applied_commit;
        if new || repo_moved || rec.is_none() {
            (SiteState::Pending, what.join(", "))
        } else {
            (SiteState::Drifted, what.join(", "))
        }
    };
    SiteStatus {
        domain: site.domain.clone(),
        status,
        detail,
        upstream: match &site.upstream {
            Upstream::Container { name, port } => format!("{name}:{port}"),
            Upstream::Url(u) => u.url.clone(),
        },
        tls: site.tls,
        auth: site.auth.is_some(),
        changes,
    }
}
