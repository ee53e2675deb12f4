//! Networks and containers: the Docker engine through vsa-live (bollard
//! stays behind it).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use vsa_core::docker::ContainerSpec;
use vsa_core::event::EventKind;
use vsa_core::plan::{Change, Op, Replace};
use vsa_store::Outcome;

use super::{ApplyError, Ctx, Executed, FailureClass, Run};
use crate::events::Event;

/// How long a container with a healthcheck may take to become healthy.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a container step failed, and whether trying again may help.
struct StepError {
    error: String,
    class: FailureClass,
}

impl StepError {
    fn transient(error: impl Into<String>) -> StepError {
        StepError {
            error: error.into(),
            class: FailureClass::Transient,
        }
    }

    fn permanent(error: impl Into<String>) -> StepError {
        StepError {
            error: error.into(),
            class: FailureClass::Permanent,
        }
    }
}

impl From<vsa_live::docker::DockerError> for StepError {
    fn from(e: vsa_live::docker::DockerError) -> StepError {
        let class = if e.is_permanent() {
            FailureClass::Permanent
        } else {
            FailureClass::Transient
        };
        StepError {
            error: e.to_string(),
            class,
        }
    }
}

fn record(
    cx: &mut Ctx<'_>,
    run: &mut Run,
    c: &Change,
    kind: EventKind,
    outcome: Outcome,
    detail: String,
) -> Result<(), ApplyError> {
    run.report.executed.push(Executed {
        kind: c.kind,
        name: c.name.clone(),
        action: c.action,
        outcome,
        detail: detail.clone(),
    });
    cx.emit(Event::new(kind, &c.name, outcome, detail))
}

/// Executes network and container changes in the order the steps give
/// (dependencies first). A failure fails that container (and what depends
/// on it), never the rest. Returns whether a container some site points at
/// was replaced.
pub(super) async fn docker_step(
    cx: &mut Ctx<'_>,
    run: &mut Run,
    changes: &[&Change],
) -> Result<bool, ApplyError> {
    let endpoint = cx.config.docker.endpoint_url().to_owned();
    let docker = match vsa_live::docker::connect(&endpoint).await {
        Ok(d) => d,
        Err(e) => {
            for c in changes {
                record(cx, run, c, c.event_kind(), Outcome::Error, e.to_string())?;
                run.failed.transient(c.resource(), e.to_string());
            }
            return Ok(false);
        }
    };
    let mut replaced_fronted = false;
    for c in changes {
        let id = c.resource();
        let deps = vsa_core::steps::depends_on(c);
        if let Some(d) = deps.iter().find(|d| {
            run.failed
                .contains(&vsa_core::plan::ResourceId::container(*d))
        }) {
            let detail = format!("not started: it depends on {d}, which failed");
            record(cx, run, c, c.event_kind(), Outcome::Skipped, detail.clone())?;
            // It follows its dependency: tried again with it.
            run.failed.transient(id, detail);
            continue;
        }
        let result = execute(cx, run, &docker, c).await;
        match result {
            Ok((kind, detail)) => {
                if matches!(
                    c.op,
                    Op::RunContainer {
                        replace: Replace::Ours | Replace::Legacy,
                        fronted: true,
                        ..
                    }
                ) {
                    replaced_fronted = true;
                }
                record(
                    cx,
                    run,
                    c,
                    kind,
                    Outcome::Ok,
                    format!("{detail} ({})", c.reason),
                )?;
            }
            Err(e) => {
                record(cx, run, c, c.event_kind(), Outcome::Error, e.error.clone())?;
                run.failed.insert(id, e.class, e.error);
            }
        }
    }
    Ok(replaced_fronted)
}

/// One network or container change; the action it came to.
async fn execute(
    cx: &Ctx<'_>,
    run: &Run,
    docker: &vsa_live::docker::Docker,
    c: &Change,
) -> Result<(EventKind, String), StepError> {
    let instance = run.instance.as_str();
    let (kind, detail, spec) = match &c.op {
        Op::CreateNetwork => {
            vsa_live::docker::create_network(docker, &c.name).await?;
            (EventKind::NetworkCreate, "created".to_owned(), None)
        }
        Op::RemoveContainer => {
            // Exactly the container checked to be ours, by its id.
            match vsa_live::docker::owner(docker, &c.name, cx.host, instance)
                .await
                .map_err(StepError::transient)?
            {
                vsa_live::docker::Owner::Ours { id } => {
                    vsa_live::docker::remove(docker, &id).await?;
                    (
                        EventKind::ContainerDelete,
                        "removed (volumes kept)".to_owned(),
                        None,
                    )
                }
                vsa_live::docker::Owner::Legacy { .. } => {
                    return Err(StepError::permanent(format!(
                        "{} has no {} label: not deleted",
                        c.name,
                        vsa_core::docker::LABEL_INSTANCE
                    )));
                }
            }
        }
        Op::StartContainer { spec } => {
            vsa_live::docker::start(docker, &spec.name).await?;
            (EventKind::ContainerStart, "started".to_owned(), Some(spec))
        }
        Op::RunContainer { spec, replace, .. } => {
            let (kind, detail) = run_container(
                docker,
                spec,
                cx.host,
                instance,
                *replace,
                cx.options.progress,
            )
            .await?;
            (kind, detail, Some(spec))
        }
        op => {
            return Err(StepError::permanent(format!(
                "a {} change cannot {op:?} (a plan read back from JSON carries no operations)",
                c.kind.as_str()
            )));
        }
    };
    match spec {
        Some(spec) if spec.healthcheck.is_some() => {
            vsa_live::docker::wait_healthy(docker, &spec.name, HEALTH_TIMEOUT)
                .await
                .map_err(StepError::transient)?;
            Ok((kind, format!("{detail}; healthy")))
        }
        _ => Ok((kind, detail)),
    }
}

/// Creates (or replaces) and starts one container: the image first (an
/// error naming it when it cannot be had), the env files' values under
/// the manifest's environment.
async fn run_container(
    docker: &vsa_live::docker::Docker,
    spec: &ContainerSpec,
    host: &str,
    instance: &str,
    replace: Replace,
    progress: bool,
) -> Result<(EventKind, String), StepError> {
    vsa_live::docker::ensure_image(docker, &spec.image, progress)
        .await
        .map_err(|e| {
            if e.missing {
                StepError::permanent(e.to_string())
            } else {
                StepError::transient(e.to_string())
            }
        })?;
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for path in spec.env_files.keys() {
        let values = vsa_live::docker::env_file_values(Path::new(path))
            .map_err(|e| StepError::transient(format!("env_file {path}: {e}")))?;
        env.extend(values);
    }
    env.extend(spec.environment.clone());
    let env: Vec<String> = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    let (kind, adopted) = if replace == Replace::Nothing {
        (EventKind::ContainerCreate, String::new())
    } else {
        // Replace exactly the container checked to be ours (by its id); a
        // legacy one of this host is adopted, once, and said so.
        let owner = vsa_live::docker::owner(docker, &spec.name, host, instance)
            .await
            .map_err(StepError::transient)?;
        let (kind, id, adopted) = match owner {
            vsa_live::docker::Owner::Ours { id } => {
                (EventKind::ContainerRecreate, id, String::new())
            }
            vsa_live::docker::Owner::Legacy { id } => (
                EventKind::ContainerAdopt,
                id,
                format!(
                    "; adopted by instance {instance} (made before {} labels)",
                    vsa_core::docker::LABEL_INSTANCE
                ),
            ),
        };
        vsa_live::docker::remove(docker, &id).await?;
        (kind, adopted)
    };
    vsa_live::docker::create_and_start(docker, spec, host, instance, env).await?;
    Ok((kind, format!("{} running{adopted}", spec.image)))
}
