//! The Docker Engine, through its API (bollard), never through the `docker`
//! command.
//!
//! The client speaks the newest API version bollard knows and steps down to
//! the engine's own on connect, so an older engine (Debian's docker.io
//! speaks 1.41) works as well as a new one.

use std::time::Duration;

pub use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use futures_util::StreamExt;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker engine at {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: bollard::errors::Error,
    },
    #[error("docker.endpoint `{0}` is not supported: use unix:///path or tcp://host:port")]
    Endpoint(String),
    #[error("container `{container}`: {source}")]
    Container {
        container: String,
        source: bollard::errors::Error,
    },
    #[error("`{argv}` in container `{container}` timed out after {secs} s")]
    Timeout {
        container: String,
        argv: String,
        secs: u64,
    },
}

impl DockerError {
    /// The engine refused the request itself (a spec it cannot run, an
    /// image that does not exist): asking again without a change gets the
    /// same answer. Anything else (the engine away, a timeout, a name
    /// still in use) may pass.
    pub fn is_permanent(&self) -> bool {
        match self {
            DockerError::Container { source, .. } => refused(source),
            DockerError::Endpoint(_) => true,
            DockerError::Connect { .. } | DockerError::Timeout { .. } => false,
        }
    }
}

/// A 400 (bad request) or 404 (no such image) from the engine.
fn refused(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 400 | 404,
            ..
        }
    )
}

/// Seconds bollard waits for one API call.
const API_TIMEOUT: u64 = 120;

/// Connects to the engine at `endpoint` (`unix:///var/run/docker.sock`,
/// `tcp://host:port`, `http://host:port`) and agrees on an API version.
pub async fn connect(endpoint: &str) -> Result<Docker, DockerError> {
    let err = |source| DockerError::Connect {
        endpoint: endpoint.to_owned(),
        source,
    };
    let docker = if let Some(path) = endpoint.strip_prefix("unix://") {
        Docker::connect_with_unix(path, API_TIMEOUT, bollard::API_DEFAULT_VERSION)
    } else if endpoint.starts_with("tcp://") || endpoint.starts_with("http://") {
        Docker::connect_with_http(endpoint, API_TIMEOUT, bollard::API_DEFAULT_VERSION)
    } else {
        return Err(DockerError::Endpoint(endpoint.to_owned()));
    }
    .map_err(err)?;
    docker.negotiate_version().await.map_err(err)
}

/// What a command run in a container printed, and how it ended.
#[derive(Debug, Default)]
pub struct ExecOutput {
    /// `None` when the engine could not tell (it always can for a command
    /// that ran to its end).
    pub exit_code: Option<i64>,
    pub stdout: String,
    pub stderr: String,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// Runs `argv` in the running container `container` (`docker exec`), waits
/// for it to end (at most `timeout`) and returns its output and exit code.
pub async fn exec(
    docker: &Docker,
    container: &str,
    argv: &[String],
    timeout: Duration,
) -> Result<ExecOutput, DockerError> {
    let err = |source| DockerError::Container {
        container: container.to_owned(),
        source,
    };
    let run = async {
        let created = docker
            .create_exec(
                container,
                CreateExecOptions {
                    cmd: Some(argv.to_vec()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(err)?;
        let mut out = ExecOutput::default();
        let started = docker
            .start_exec(
                &created.id,
                Some(StartExecOptions {
                    detach: false,
                    ..Default::default()
                }),
            )
            .await
            .map_err(err)?;
        if let StartExecResults::Attached { mut output, .. } = started {
            while let Some(chunk) = output.next().await {
                match chunk.map_err(err)? {
                    bollard::container::LogOutput::StdErr { message } => {
                        out.stderr.push_str(&String::from_utf8_lossy(&message));
                    }
                    other => out.stdout.push_str(&other.to_string()),
                }
            }
        }
        out.exit_code = docker
            .inspect_exec(&created.id)
            .await
            .map_err(err)?
            .exit_code;
        Ok(out)
    };
    tokio::time::timeout(timeout, run)
        .await
        .unwrap_or_else(|_| {
            Err(DockerError::Timeout {
                container: container.to_owned(),
                argv: argv.join(" "),
                secs: timeout.as_secs(),
            })
        })
}

/// The networks and containers vsa looks at: every network's name, every
/// container (running or not) with its vsa labels.
pub async fn observe(docker: &Docker) -> Result<vsa_core::docker::ObservedDocker, DockerError> {
    use vsa_core::docker::{
        LABEL_HASH, LABEL_HOST, LABEL_INSTANCE, LABEL_MANAGED, LABEL_SPEC, ObservedContainer,
    };
    let err = |source| DockerError::Container {
        container: "(list)".into(),
        source,
    };
    let networks = docker
        .list_networks(None::<bollard::query_parameters::ListNetworksOptions>)
        .await
        .map_err(err)?
        .into_iter()
        .filter_map(|n| n.name)
        .collect();
    let list = docker
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            ..Default::default()
        }))
        .await
        .map_err(err)?;
    let mut containers = std::collections::BTreeMap::new();
    for c in list {
        let Some(name) = c
            .names
            .as_ref()
            .and_then(|n| n.first())
            .map(|n| n.trim_start_matches('/').to_owned())
        else {
            continue;
        };
        let labels = c.labels.clone().unwrap_or_default();
        let running = matches!(
            c.state,
            Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
        );
        let spec = labels.get(LABEL_SPEC).map(|s| {
            serde_json::from_str::<serde_json::Value>(s)
                .map(|v| vsa_core::docker::canonical_json(&v))
                .unwrap_or_else(|_| s.clone())
        });
        let networks = c
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref())
            .map(|n| n.keys().cloned().collect())
            .unwrap_or_default();
        containers.insert(
            name.clone(),
            ObservedContainer {
                name,
                managed: labels.get(LABEL_MANAGED).map(String::as_str) == Some("true"),
                host: labels.get(LABEL_HOST).cloned(),
                instance: labels.get(LABEL_INSTANCE).cloned(),
                running,
                spec_hash: labels.get(LABEL_HASH).cloned(),
                spec,
                networks,
                image: c.image.clone().unwrap_or_default(),
            },
        );
    }
    Ok(vsa_core::docker::ObservedDocker {
        networks,
        containers,
    })
}

/// Creates a bridge network (labelled as vsa's).
pub async fn create_network(docker: &Docker, name: &str) -> Result<(), DockerError> {
    docker
        .create_network(bollard::models::NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".into()),
            labels: Some(
                [(
                    vsa_core::docker::LABEL_MANAGED.to_owned(),
                    "true".to_owned(),
                )]
                .into(),
            ),
            ..Default::default()
        })
        .await
        .map_err(|source| DockerError::Container {
            container: format!("network {name}"),
            source,
        })?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
#[error("image {image} is not on this host and cannot be pulled: {reason}")]
pub struct ImageError {
    pub image: String,
    pub reason: String,
    /// The registry answered that there is no such image (or tag): only a
    /// change of the manifest helps. Otherwise (no registry reachable) it
    /// may pass.
    pub missing: bool,
}

/// Makes sure `image` is on the host: pulls it when it is not (and a
/// registry answers), showing the pull's progress on stderr when
/// `progress` (a terminal).
pub async fn ensure_image(docker: &Docker, image: &str, progress: bool) -> Result<(), ImageError> {
    if docker.inspect_image(image).await.is_ok() {
        return Ok(());
    }
    let mut pull = docker.create_image(
        Some(bollard::query_parameters::CreateImageOptions {
            from_image: Some(image.to_owned()),
            ..Default::default()
        }),
        None,
        None,
    );
    while let Some(step) = pull.next().await {
        match step {
            Err(e) => {
                return Err(ImageError {
                    image: image.to_owned(),
                    missing: refused(&e),
                    reason: e.to_string(),
                });
            }
            Ok(info) if progress => {
                let done = info
                    .progress_detail
                    .as_ref()
                    .and_then(|d| Some((d.current?, d.total?)))
                    .filter(|(_, total)| *total > 0)
                    .map(|(cur, total)| format!(" {}%", cur * 100 / total))
                    .unwrap_or_default();
                let parts: Vec<&str> = [info.id.as_deref(), info.status.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect();
                if !parts.is_empty() {
                    eprintln!("  pull {image}: {}{done}", parts.join(" "));
                }
            }
            Ok(_) => {}
        }
    }
    docker
        .inspect_image(image)
        .await
        .map(|_| ())
        .map_err(|e| ImageError {
            image: image.to_owned(),
            missing: refused(&e),
            reason: e.to_string(),
        })
}

/// The largest env file vsa reads (a `/dev/zero` or a log file named by
/// mistake must not take the host's memory).
pub const MAX_ENV_FILE: u64 = 1 << 20;

/// `KEY=VALUE` lines of an env file (blank lines and `#` comments skipped).
pub fn env_file_values(path: &std::path::Path) -> std::io::Result<Vec<(String, String)>> {
    let bytes = crate::safe_fs::read_regular(path, MAX_ENV_FILE)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| std::io::Error::other(format!("{} is not UTF-8", path.display())))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            l.split_once('=').map(|(k, v)| {
                let v = v.trim();
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v);
                (k.trim().to_owned(), v.to_owned())
            })
        })
        .collect())
}

/// The digests of the env files `paths` (what the spec hash includes).
pub fn env_file_digests<'a>(
    paths: impl IntoIterator<Item = &'a String>,
    key: &[u8],
) -> std::collections::BTreeMap<String, Result<String, String>> {
    paths
        .into_iter()
        .map(|p| {
            let r = crate::safe_fs::read_regular(std::path::Path::new(p), MAX_ENV_FILE)
                .map(|bytes| vsa_core::docker::env_digest(key, &bytes))
                .map_err(|e| e.to_string());
            (p.clone(), r)
        })
        .collect()
}

fn parse_ports(ports: &[String]) -> bollard::models::PortMap {
    let mut map: bollard::models::PortMap = std::collections::HashMap::new();
    for p in ports {
        let (spec, proto) = p.split_once('/').unwrap_or((p, "tcp"));
        let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
        let (container, host_port, ip) = match parts.as_slice() {
            [c, h, ip] => (*c, *h, Some((*ip).to_owned())),
            [c, h] => (*c, *h, None),
            [c] => (*c, "", None),
            _ => continue,
        };
        map.entry(format!("{container}/{proto}"))
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(bollard::models::PortBinding {
                host_ip: ip,
                host_port: Some(host_port.to_owned()),
            });
    }
    map
}

fn restart_policy(s: &str) -> bollard::models::RestartPolicy {
    use bollard::models::RestartPolicyNameEnum as R;
    let (name, retries) = match s.split_once(':') {
        Some(("on-failure", n)) => (R::ON_FAILURE, n.parse().ok()),
        _ => (
            match s {
                "no" => R::NO,
                "always" => R::ALWAYS,
                "on-failure" => R::ON_FAILURE,
                _ => R::UNLESS_STOPPED,
            },
            None,
        ),
    };
    bollard::models::RestartPolicy {
        name: Some(name),
        maximum_retry_count: retries,
    }
}

/// Creates the container of `spec` (on its first network, then connected to
/// the others) with `env` (the env files' values under the manifest's),
/// and starts it.
pub async fn create_and_start(
    docker: &Docker,
    spec: &vsa_core::docker::ContainerSpec,
    host: &str,
    instance: &str,
    env: Vec<String>,
) -> Result<(), DockerError> {
    let err = |source| DockerError::Container {
        container: spec.name.clone(),
        source,
    };
    let ms_to_ns = |ms: Option<u64>| ms.map(|m| (m as i64).saturating_mul(1_000_000));
    let body = bollard::models::ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: spec.command.clone(),
        env: Some(env),
        labels: Some(spec.all_labels(host, instance).into_iter().collect()),
        healthcheck: spec
            .healthcheck
            .as_ref()
            .map(|h| bollard::models::HealthConfig {
                test: Some(h.test.clone()),
                interval: ms_to_ns(h.interval_ms),
                timeout: ms_to_ns(h.timeout_ms),
                retries: h.retries.map(i64::from),
                start_period: ms_to_ns(h.start_period_ms),
                start_interval: None,
            }),
        host_config: Some(bollard::models::HostConfig {
            binds: Some(spec.volumes.clone()),
            port_bindings: Some(parse_ports(&spec.ports)),
            restart_policy: Some(restart_policy(&spec.restart)),
            network_mode: spec.networks.first().cloned(),
            ..Default::default()
        }),
        ..Default::default()
    };
    docker
        .create_container(
            Some(bollard::query_parameters::CreateContainerOptions {
                name: Some(spec.name.clone()),
                ..Default::default()
            }),
            body,
        )
        .await
        .map_err(err)?;
    for net in spec.networks.iter().skip(1) {
        docker
            .connect_network(
                net,
                bollard::models::NetworkConnectRequest {
                    container: spec.name.clone(),
                    endpoint_config: None,
                },
            )
            .await
            .map_err(err)?;
    }
    start(docker, &spec.name).await
}

pub async fn start(docker: &Docker, name: &str) -> Result<(), DockerError> {
    docker
        .start_container(
            name,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await
        .map_err(|source| DockerError::Container {
            container: name.to_owned(),
            source,
        })
}

/// Whose a container is, looked at right before vsa changes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// This instance's: managed, this host, this instance id.
    Ours { id: String },
    /// Made by vsa for this host before containers carried `vsa.instance`:
    /// this instance adopts it (once, audited) by recreating it.
    Legacy { id: String },
}

/// Checks, right before a recreate or delete, that container `name` is
/// this instance's (or a legacy one of this host), and returns its id, so
/// that the change goes to exactly the container checked. Anything else is
/// an error that names whose it is.
pub async fn owner(
    docker: &Docker,
    name: &str,
    host: &str,
    instance: &str,
) -> Result<Owner, String> {
    use vsa_core::docker::{LABEL_HOST, LABEL_INSTANCE, LABEL_MANAGED};
    let c = docker
        .inspect_container(
            name,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .map_err(|e| format!("cannot inspect {name}: {e}"))?;
    let id = c.id.clone().unwrap_or_else(|| name.to_owned());
    let labels = c.config.and_then(|c| c.labels).unwrap_or_default();
    let label = |k: &str| labels.get(k).map(String::as_str);
    if label(LABEL_MANAGED) != Some("true") {
        return Err(format!("{name} is not managed by vsa; left alone"));
    }
    match (label(LABEL_HOST), label(LABEL_INSTANCE)) {
        (Some(h), Some(i)) if h == host && i == instance => Ok(Owner::Ours { id }),
        (Some(h), None) if h == host => Ok(Owner::Legacy { id }),
        (h, i) => Err(format!(
            "{name} belongs to another vsa (vsa.host={}, vsa.instance={}); left alone",
            h.unwrap_or("-"),
            i.unwrap_or("-")
        )),
    }
}

/// Stops and removes a container; its volumes stay.
pub async fn remove(docker: &Docker, name: &str) -> Result<(), DockerError> {
    let _ = docker
        .stop_container(
            name,
            Some(bollard::query_parameters::StopContainerOptions {
                t: Some(10),
                signal: None,
            }),
        )
        .await;
    docker
        .remove_container(
            name,
            Some(bollard::query_parameters::RemoveContainerOptions {
                v: false,
                force: true,
                link: false,
            }),
        )
        .await
        .map_err(|source| DockerError::Container {
            container: name.to_owned(),
            source,
        })
}

/// Waits until a container with a healthcheck reports healthy (at most
/// `timeout`); a container without one only has to be running.
pub async fn wait_healthy(docker: &Docker, name: &str, timeout: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let state = docker
            .inspect_container(
                name,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .map_err(|e| e.to_string())?
            .state
            .unwrap_or_default();
        let health = state.health.as_ref().and_then(|h| h.status);
        match health {
            None if state.running == Some(true) => return Ok(()),
            Some(bollard::models::HealthStatusEnum::HEALTHY) => return Ok(()),
            Some(
                bollard::models::HealthStatusEnum::NONE | bollard::models::HealthStatusEnum::EMPTY,
            ) if state.running == Some(true) => {
                return Ok(());
            }
            _ => {}
        }
        if state.running == Some(false) && state.restarting != Some(true) {
            return Err(format!(
                "{name} stopped (exit code {})",
                state.exit_code.unwrap_or_default()
            ));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "{name} is not healthy after {} s ({health:?})",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Calls `on_event` for every event of a vsa-managed container (start,
/// stop, die, destroy, ...) until the stream ends or fails; the caller
/// reconnects.
pub async fn watch_managed(
    docker: &Docker,
    mut on_event: impl FnMut(&str, &str),
) -> Result<(), DockerError> {
    let filters = std::collections::HashMap::from([
        ("type".to_owned(), vec!["container".to_owned()]),
        (
            "label".to_owned(),
            vec![format!("{}=true", vsa_core::docker::LABEL_MANAGED)],
        ),
    ]);
    let mut events = docker.events(Some(bollard::query_parameters::EventsOptions {
        filters: Some(filters),
        ..Default::default()
    }));
    while let Some(ev) = events.next().await {
        let ev = ev.map_err(|source| DockerError::Container {
            container: "(events)".into(),
            source,
        })?;
        let action = ev.action.unwrap_or_default();
        let name = ev
            .actor
            .and_then(|a| a.attributes)
            .and_then(|a| a.get("name").cloned())
            .unwrap_or_default();
        on_event(&action, &name);
    }
    Ok(())
}

/// The address of container `name`: on `network` when it is attached
/// there, else on any network it has an address on.
pub async fn container_address(
    docker: &Docker,
    name: &str,
    network: &str,
) -> Result<std::net::IpAddr, String> {
    let inspected = docker
        .inspect_container(
            name,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .map_err(|e| format!("cannot inspect {name}: {e}"))?;
    let networks = inspected
        .network_settings
        .and_then(|n| n.networks)
        .unwrap_or_default();
    let ip = |n: &bollard::models::EndpointSettings| {
        n.ip_address
            .as_deref()
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
    };
    networks
        .get(network)
        .and_then(ip)
        .or_else(|| {
            let mut all: Vec<_> = networks.iter().collect();
            all.sort_by(|a, b| a.0.cmp(b.0));
            all.into_iter().find_map(|(_, n)| ip(n))
        })
        .ok_or_else(|| format!("{name} has no address on any network (is it running?)"))
}

/// The host pid of container `name`'s first process.
pub async fn container_pid(docker: &Docker, name: &str) -> Result<u32, String> {
    let state = docker
        .inspect_container(
            name,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .map_err(|e| format!("cannot inspect {name}: {e}"))?
        .state
        .unwrap_or_default();
    state
        .pid
        .and_then(|p| u32::try_from(p).ok())
        .filter(|&p| p > 0)
        .ok_or_else(|| format!("{name} is not running"))
}

/// What container `name` logged since `since` (seconds since the Unix
/// epoch), stdout and stderr, each line with its RFC 3339 time.
pub async fn logs_since(docker: &Docker, name: &str, since: i64) -> Result<Vec<String>, String> {
    use futures_util::StreamExt;
    let options = bollard::query_parameters::LogsOptionsBuilder::new()
        .stdout(true)
        .stderr(true)
        .timestamps(true)
        .since(i32::try_from(since).unwrap_or(i32::MAX))
        .build();
    let mut stream = docker.logs(name, Some(options));
    let mut lines = Vec::new();
    while let Some(item) = stream.next().await {
        let out = item.map_err(|e| format!("cannot read the logs of {name}: {e}"))?;
        let text = String::from_utf8_lossy(&out.into_bytes()).into_owned();
        lines.extend(text.lines().map(str::to_owned));
        if lines.len() > 10_000 {
            break; // a chatty container; the reason is near the top
        }
    }
    Ok(lines)
}
