//! `vsactl diff --base REF --head REF`: what a change to the desired state
//! does to each host, without looking at any host.
//!
//! The base commit is rendered into the files a converged host would hold
//! (certificates assumed issued, access logs present), and the head commit
//! is planned against that, host by host. The result is the same `Plan` as
//! everywhere else, so the review shows what `apply` will do.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Serialize;
use vsa_core::config::Config;
use vsa_core::plan::{Observed, ObservedFile};
use vsa_core::render::RenderSettings;
use vsa_core::{Model, Plan, Problem, Renderer};

use crate::pipeline::PipelineError;

#[derive(Debug, Serialize)]
pub struct Review {
    pub base: String,
    pub head: String,
    pub hosts: Vec<Plan>,
    /// Problems of the base commit: a broken base is reviewed as empty.
    #[serde(skip)]
    pub base_problems: Vec<Problem>,
    #[serde(skip)]
    pub head_warnings: Vec<Problem>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error(transparent)]
    Git(#[from] vsa_live::git::GitError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

fn load_at(repo: &Path, rev: &str) -> Result<(String, Option<Model>, Vec<Problem>), ReviewError> {
    let (sha, files, mut problems) = vsa_live::git::files_at(repo, rev)?;
    let loaded = vsa_core::validate::load_parallel(&files, crate::pipeline::threads());
    problems.extend(loaded.problems);
    let model = loaded
        .model
        .filter(|_| !problems.iter().any(Problem::is_error));
    Ok((sha, model, problems))
}

/// The files a host converged to `model` would hold.
fn converged(model: &Model, host: &str, renderer: &Renderer, certs: &BTreeSet<String>) -> Observed {
    let mut obs = Observed {
        certs: certs.clone(),
        ..Observed::default()
    };
    let plan = vsa_core::plan(
        model,
        host,
        &Observed {
            certs: certs.clone(),
            ..Observed::default()
        },
        renderer,
        None,
    );
    if let Ok(plan) = plan {
        for c in plan.changes {
            let (Some(file), Some(content)) = (c.file.clone(), c.content().map(str::to_owned))
            else {
                if c.kind == vsa_core::plan::ResourceKind::AccessLog {
                    obs.access_logs.insert(c.name);
                }
                continue;
            };
            let f = ObservedFile {
                content,
                managed: true,
            };
            match c.kind {
                vsa_core::plan::ResourceKind::Vhost => {
                    obs.vhosts.insert(file, f);
                }
                vsa_core::plan::ResourceKind::Htpasswd => {
                    obs.htpasswd.insert(file, f);
                }
                _ => {}
            }
        }
    }
    // Every TLS site holds a certificate for the names it had.
    for site in model.sites_for(host) {
        if site.tls == vsa_core::model::Tls::Acme {
            let names = std::iter::once(site.domain.clone())
                .chain(site.aliases.iter().cloned())
                .collect();
            obs.cert_info.insert(
                site.domain.clone(),
                vsa_core::certs::CertInfo::steady(&site.domain, names),
            );
            obs.vsa_certs.insert(site.domain.clone());
        }
    }
    obs
}

pub fn review(config: &Config, repo: &Path, base: &str, head: &str) -> Result<Review, ReviewError> {
    let (base_sha, base_model, base_problems) = load_at(repo, base)?;
    let (head_sha, head_model, head_problems) = load_at(repo, head)?;
    let Some(head_model) = head_model else {
        return Err(PipelineError::Invalid(head_problems).into());
    };
    let base_model = base_model.unwrap_or_default();
    let renderer = Renderer::new(RenderSettings::from(config));
    // Steady state: every TLS site has its certificate.
    let certs: BTreeSet<String> = base_model
        .sites
        .iter()
        .chain(&head_model.sites)
        .map(|s| s.domain.clone())
        .collect();
    let hosts: BTreeSet<&str> = base_model
        .fleet
        .hosts
        .iter()
        .chain(&head_model.fleet.hosts)
        .map(|h| h.id.as_str())
        .collect();
    let mut plans = Vec::new();
    for host in hosts {
        let observed = converged(&base_model, host, &renderer, &certs);
        let plan = vsa_core::plan(
            &head_model,
            host,
            &observed,
            &renderer,
            Some(head_sha.clone()),
        )
        .map_err(PipelineError::from)?;
        if !plan.changes.is_empty() || !plan.conflicts.is_empty() {
            plans.push(plan);
        }
    }
    Ok(Review {
        base: base_sha,
        head: head_sha,
        hosts: plans,
        base_problems,
        head_warnings: head_problems,
    })
}
