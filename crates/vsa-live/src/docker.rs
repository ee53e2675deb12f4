//! The Docker Engine, through its API (bollard), never through the `docker`
//! command.
//!
//! The client speaks the newest API version bollard knows and steps down to
//! the engine's own on connect, so an older engine (Debian's docker.io
//! speaks 1.41) works as well as a new one.

use std::time::Duration;

use bollard::Docker;
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
