//! One wiring of the engine for `vsactl` and `vsad` alike: the state
//! store, the audit log, the renderer and nginx control, opened once from
//! the configuration. (Docker is reached through vsa-live, at the endpoint
//! of the config, per observation and per apply: an engine restarted under
//! a long-running vsad is found again.)

use std::sync::Arc;

use vsa_core::config::Config;
use vsa_core::render::RenderSettings;
use vsa_core::{Model, Observed, Plan, Renderer};
use vsa_live::nginx::NginxControl;
use vsa_store::{AuditLog, Store};

use crate::apply::{ApplyError, ApplyOptions, ApplyReport, Ctx};
use crate::events::Event;
use crate::pipeline::PipelineError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot open the state store: {0}")]
    Store(#[from] vsa_store::StoreError),
    #[error("cannot open the audit log: {0}")]
    Audit(#[from] vsa_store::audit::AuditError),
}

pub struct Engine {
    pub config: Arc<Config>,
    pub host: String,
    /// Who acts, for the audit trail: `vsad` or `cli:<user>`.
    pub actor: String,
    pub renderer: Arc<Renderer>,
    pub nginx: NginxControl,
    pub store: Store,
}

impl Engine {
    /// Opens the store (creating it) and brings it up to date with the
    /// audit log.
    pub async fn open(
        config: Arc<Config>,
        host: impl Into<String>,
        actor: impl Into<String>,
    ) -> Result<Engine, EngineError> {
        let host = host.into();
        let actor = actor.into();
        let store = Store::open(&config.paths.state).await?;
        if let Ok(audit) = AuditLog::open(&config.paths.audit_log, &actor, &host) {
            store.catch_up(&audit).await?;
        }
        let renderer = Arc::new(
            Renderer::new(RenderSettings::from(&*config)).with_threads(crate::pipeline::threads()),
        );
        let nginx = NginxControl::from_config(&config);
        Ok(Engine {
            config,
            host,
            actor,
            renderer,
            nginx,
            store,
        })
    }

    /// What is on the host now, for `model`.
    pub async fn observe(&self, model: &Model) -> Result<Observed, PipelineError> {
        crate::pipeline::observe(&self.config, model, &self.host, Some(&self.store)).await
    }

    /// The plan for `model` against `observed`.
    pub fn plan(
        &self,
        model: &Model,
        observed: &Observed,
        commit: Option<String>,
    ) -> Result<Plan, PipelineError> {
        Ok(vsa_core::plan(
            model,
            &self.host,
            observed,
            &self.renderer,
            commit,
        )?)
    }

    /// Converges the host to `model` (the caller holds the host lock).
    pub async fn apply(
        &self,
        model: &Model,
        commit: Option<String>,
        options: ApplyOptions,
    ) -> Result<ApplyReport, ApplyError> {
        let mut audit = AuditLog::open(&self.config.paths.audit_log, &self.actor, &self.host)?;
        let mut cx = Ctx {
            config: &self.config,
            model,
            host: &self.host,
            commit,
            renderer: &self.renderer,
            nginx: &self.nginx,
            audit: &mut audit,
            store: Some(&self.store),
            options,
        };
        crate::apply::apply(&mut cx).await
    }

    /// Emits events outside an apply (a refused commit, drift seen), into
    /// the audit log and the store (the caller holds the host lock, so the
    /// chain stays one with every apply's).
    pub async fn emit(&self, commit: Option<&str>, events: Vec<Event>) -> Result<(), ApplyError> {
        let mut log = AuditLog::open(&self.config.paths.audit_log, &self.actor, &self.host)?;
        for e in events {
            e.emit(&mut log, commit)?;
        }
        let synced = log.sync()?;
        self.store.insert_events(&synced).await?;
        Ok(())
    }

    pub async fn close(self) {
        self.store.close().await;
    }
}
