//! Resolving the configuration, repository and host a command works on:
//! file, then environment, then flags.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use vsa_core::config::Config;

use crate::cli::Global;

/// The environment vsactl reads, passed in so tests can set it.
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub vsa_config: Option<PathBuf>,
    pub vsa_root: Option<PathBuf>,
    /// Who runs the command, for the audit trail's `cli:<user>`.
    pub user: Option<String>,
    /// Test hook (`VSA_TEST_ABORT_AFTER_WRITES`): abort `apply` after this
    /// many file writes, to prove a kill leaves every file whole.
    pub abort_after_writes: Option<usize>,
}

impl Env {
    pub fn from_process() -> Env {
        Env {
            vsa_config: std::env::var_os("VSA_CONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            vsa_root: std::env::var_os("VSA_ROOT")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            user: Some(vsa_live::files::acting_user()),
            abort_after_writes: std::env::var("VSA_TEST_ABORT_AFTER_WRITES")
                .ok()
                .and_then(|v| v.parse().ok()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Context {
    pub config: Config,
    /// Where the configuration came from, for messages.
    pub config_origin: String,
    pub repo: PathBuf,
    host: Option<String>,
}

impl Context {
    pub fn load(global: &Global, env: &Env) -> Result<Context> {
        let vsa_live::config_file::LoadedConfig {
            config,
            origin: config_origin,
        } = vsa_live::config_file::load(
            global.config.as_deref(),
            env.vsa_config.as_deref(),
            env.vsa_root.as_deref(),
        )?;
        let repo = match &global.repo {
            Some(r) => vsa_live::config_file::absolute(r),
            None => config.repo.path.clone(),
        };
        let host = global.host.clone().or_else(|| config.host.clone());
        Ok(Context {
            config,
            config_origin,
            repo,
            host,
        })
    }

    /// The host to plan for, or a clear error naming both ways to set it.
    pub fn host(&self) -> Result<&str> {
        match &self.host {
            Some(h) => Ok(h),
            None => bail!(
                "no host to plan for: pass --host ID, or set `host:` in the configuration ({})",
                self.config_origin
            ),
        }
    }

    pub fn read_repo(&self) -> Result<(Vec<vsa_core::SourceFile>, Vec<vsa_core::Problem>)> {
        vsa_live::read_repo(&self.repo).with_context(|| "cannot read the desired state".to_string())
    }
}
