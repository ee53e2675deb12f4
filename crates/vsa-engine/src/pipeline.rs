//! From a repository on disk and a host to a [`Plan`]: read, validate,
//! observe, plan. `vsactl`, the daemon and the benchmarks use the same steps.

use std::path::Path;

use vsa_core::config::Config;
use vsa_core::render::RenderSettings;
use vsa_core::{Loaded, Model, Observed, Plan, Problem, Renderer, SourceFile};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Repo(#[from] vsa_live::repo::RepoError),
    #[error("the desired state is invalid ({} error(s))", .0.iter().filter(|p| p.is_error()).count())]
    Invalid(Vec<Problem>),
    #[error("host `{host}` is not in the fleet (fleet.yaml lists: {known})")]
    UnknownHost { host: String, known: String },
    #[error(transparent)]
    Observe(#[from] vsa_live::files::ObserveError),
    #[error(transparent)]
    Render(#[from] vsa_core::render::RenderError),
    #[error(transparent)]
    Store(#[from] vsa_store::StoreError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// How long observing the Docker engine may take.
const DOCKER_OBSERVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Everything on the host the plan compares with: the files, the
/// certificates (with which ones vsa issued, when a store is open), the
/// Docker engine and the env files of this host's stacks.
pub async fn observe(
    config: &Config,
    model: &Model,
    host: &str,
    store: Option<&vsa_store::Store>,
) -> Result<Observed, PipelineError> {
    let mut observed = vsa_live::observe(&config.paths)?;
    observed.instance = vsa_live::instance::read(&config.paths.state);
    if let Some(store) = store {
        observed.vsa_certs = store.issued_certs(host).await?;
    }
    let env_paths: Vec<&String> = model
        .stacks_for(host)
        .flat_map(|s| s.services.values())
        .flat_map(|svc| svc.env_file.iter())
        .collect();
    let key = vsa_live::instance::env_key(&config.paths.state);
    observed.env_files = vsa_live::docker::env_file_digests(env_paths, &key);
    let endpoint = config.docker.endpoint_url();
    // A wedged engine must not stall a diff or an apply of the files.
    let engine = async {
        let docker = vsa_live::docker::connect(endpoint)
            .await
            .map_err(|e| e.to_string())?;
        vsa_live::docker::observe(&docker)
            .await
            .map_err(|e| e.to_string())
    };
    // Converged means served: ask nginx which configuration it serves,
    // once vsa stamped one on disk.
    let stamped = observed
        .vhosts
        .get(vsa_core::render::HTTP_CONTEXT_FILE)
        .is_some_and(|f| {
            f.managed
                && vsa_core::render::generation_of(&f.content)
                    .is_some_and(|g| g != vsa_core::render::NO_GENERATION)
        });
    if stamped {
        let nginx = vsa_live::nginx::NginxControl::from_config(config);
        observed.nginx_served = Some(nginx.served_generation().await);
    }
    match tokio::time::timeout(DOCKER_OBSERVE_TIMEOUT, engine).await {
        Ok(Ok(d)) => observed.docker = Some(d),
        Ok(Err(e)) => observed.docker_error = Some(e),
        Err(_) => {
            observed.docker_error = Some(format!(
                "the Docker engine at {endpoint} did not answer within {} s",
                DOCKER_OBSERVE_TIMEOUT.as_secs()
            ));
        }
    }
    Ok(observed)
}

/// [`observe`] from synchronous code (its own single-threaded runtime).
/// When an apply ever made the state store, it is read (read-only) for the
/// certificates vsa issued, so `vsactl diff` plans their deletes exactly
/// as an apply (or vsad's `/api/plan`) would. A store that cannot be read
/// is said on stderr and left out: the plan then keeps every certificate.
pub fn observe_blocking(
    config: &Config,
    model: &Model,
    host: &str,
) -> Result<Observed, PipelineError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(PipelineError::Runtime)?
        .block_on(async {
            let mut observed = observe(config, model, host, None).await?;
            let warn = |e: &dyn std::fmt::Display| {
                eprintln!(
                    "warning: {e}; planning without the record of the certificates vsa issued"
                );
            };
            match vsa_store::Store::open_read_only(&config.paths.state).await {
                Ok(Some(store)) => {
                    match store.issued_certs(host).await {
                        Ok(certs) => observed.vsa_certs = certs,
                        Err(e) => warn(&e),
                    }
                    store.close().await;
                }
                Ok(None) => {}
                Err(e) => warn(&e),
            }
            Ok(observed)
        })
}

/// How many threads parsing may use: the cores there are, at most 4.
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// Reads and validates the repository at `repo`.
pub fn load_repo(repo: &Path) -> Result<(Model, Vec<Problem>), PipelineError> {
    let (files, read_problems) = vsa_live::read_repo(repo)?;
    load_files(&files, read_problems)
}

/// Validates manifest files (from a work tree or a commit), after the
/// problems met reading them.
pub fn load_files(
    files: &[SourceFile],
    mut problems: Vec<Problem>,
) -> Result<(Model, Vec<Problem>), PipelineError> {
    let Loaded {
        model,
        problems: more,
    } = vsa_core::validate::load_parallel(files, threads());
    problems.extend(more);
    vsa_core::problem::sort(&mut problems);
    match model {
        Some(m) if !problems.iter().any(Problem::is_error) => Ok((m, problems)),
        _ => Err(PipelineError::Invalid(problems)),
    }
}

/// Everything `diff` needs: the plan and the warnings met on the way.
#[derive(Debug)]
pub struct HostPlan {
    pub plan: Plan,
    pub warnings: Vec<Problem>,
}

pub fn check_host(model: &Model, host: &str) -> Result<(), PipelineError> {
    if model.has_host(host) {
        Ok(())
    } else {
        Err(PipelineError::UnknownHost {
            host: host.to_owned(),
            known: model
                .fleet
                .hosts
                .iter()
                .map(|h| h.id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

/// The live plan for `host`: desired state from `repo`, observed state from
/// the paths in `config`.
pub fn plan_host(config: &Config, repo: &Path, host: &str) -> Result<HostPlan, PipelineError> {
    let (model, warnings) = load_repo(repo)?;
    check_host(&model, host)?;
    let observed = observe_blocking(config, &model, host)?;
    let plan = plan_with(
        config,
        &model,
        host,
        &observed,
        vsa_live::git::head_commit(repo),
    )?;
    Ok(HostPlan { plan, warnings })
}

pub fn plan_with(
    config: &Config,
    model: &Model,
    host: &str,
    observed: &Observed,
    commit: Option<String>,
) -> Result<Plan, PipelineError> {
    let renderer = Renderer::new(RenderSettings::from(config)).with_threads(threads());
    Ok(vsa_core::plan(model, host, observed, &renderer, commit)?)
}
