//! Controlling nginx: `nginx -t` before every reload, and the reload.
//!
//! The commands are argv from the configuration (DESIGN §4), run on the
//! host, or, when `nginx.container` is set, inside that container through
//! the Docker Engine API (`docker exec`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum NginxError {
    #[error("cannot run `{argv}`: {source}")]
    Spawn {
        argv: String,
        source: std::io::Error,
    },
    #[error("`{argv}` timed out after {secs} s")]
    Timeout { argv: String, secs: u64 },
    #[error("`{argv}` failed: {}", .first_error)]
    Failed {
        argv: String,
        output: String,
        /// nginx's own first `[emerg]`/`[error]` line, or the last output line.
        first_error: String,
    },
    #[error(transparent)]
    Docker(#[from] crate::docker::DockerError),
}

#[derive(Clone, Debug)]
pub struct NginxControl {
    pub test: Vec<String>,
    pub reload: Vec<String>,
    /// Run the commands in this container (`docker exec`).
    pub container: Option<String>,
    /// The Docker endpoint for `container`.
    pub docker_endpoint: String,
    pub timeout: Duration,
}

impl NginxControl {
    pub fn from_config(c: &vsa_core::config::Config) -> Self {
        NginxControl {
            test: c.nginx.test.clone(),
            reload: c.nginx.reload.clone(),
            container: c.nginx.container.clone(),
            docker_endpoint: c.docker.endpoint_url().to_owned(),
            timeout: Duration::from_secs(120),
        }
    }

    /// Runs `nginx -t`.
    pub async fn test(&self) -> Result<(), NginxError> {
        self.run(&self.test).await
    }

    /// Reloads nginx (a signal: it returns before the workers restart).
    pub async fn reload(&self) -> Result<(), NginxError> {
        self.run(&self.reload).await
    }

    async fn run(&self, argv: &[String]) -> Result<(), NginxError> {
        if let Some(container) = &self.container {
            return self.run_in(container, argv).await;
        }
        let shown = argv.join(" ");
        let Some((program, args)) = argv.split_first() else {
            return Err(NginxError::Spawn {
                argv: shown,
                source: std::io::Error::other("empty command"),
            });
        };
        let child = tokio::process::Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output();
        let out = match tokio::time::timeout(self.timeout, child).await {
            Err(_) => {
                return Err(NginxError::Timeout {
                    argv: shown,
                    secs: self.timeout.as_secs(),
                });
            }
            Ok(Err(source)) => {
                return Err(NginxError::Spawn {
                    argv: shown,
                    source,
                });
            }
            Ok(Ok(out)) => out,
        };
        if out.status.success() {
            return Ok(());
        }
        let mut output = String::from_utf8_lossy(&out.stderr).into_owned();
        output.push_str(&String::from_utf8_lossy(&out.stdout));
        Err(NginxError::Failed {
            argv: shown,
            first_error: first_error(&output),
            output,
        })
    }
}

impl NginxControl {
    async fn run_in(&self, container: &str, argv: &[String]) -> Result<(), NginxError> {
        let docker = crate::docker::connect(&self.docker_endpoint).await?;
        let out = crate::docker::exec(&docker, container, argv, self.timeout).await?;
        if out.success() {
            return Ok(());
        }
        let mut output = out.stderr;
        output.push_str(&out.stdout);
        if let Some(code) = out.exit_code.filter(|_| output.trim().is_empty()) {
            output = format!("exited with code {code}");
        }
        Err(NginxError::Failed {
            argv: format!("docker exec {container} {}", argv.join(" ")),
            first_error: first_error(&output),
            output,
        })
    }
}

const LEVELS: [&str; 4] = ["[emerg]", "[alert]", "[crit]", "[error]"];

/// nginx's first `[emerg]`, `[alert]`, `[crit]` or `[error]` line, as
/// `nginx: [emerg] …` whether nginx wrote it so (`nginx -t` on a terminal)
/// or in its log format (`2026/11/29 12:57:56 [emerg] 8#8: …`, as from a
/// container).
pub fn first_error(output: &str) -> String {
    let line = output
        .lines()
        .find(|l| LEVELS.iter().any(|t| l.contains(t)))
        .or_else(|| output.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("(no output)")
        .trim();
    without_log_prefix(line).unwrap_or_else(|| line.to_owned())
}

/// `2026/11/29 12:57:56 [emerg] 8#8: message` → `nginx: [emerg] message`.
fn without_log_prefix(line: &str) -> Option<String> {
    let (level, at) = LEVELS
        .iter()
        .filter_map(|t| line.find(t).map(|i| (*t, i)))
        .min_by_key(|(_, i)| *i)?;
    let stamp = &line[..at];
    let is_stamp = stamp.len() == "2026/11/29 12:57:56 ".len()
        && stamp.starts_with(|c: char| c.is_ascii_digit())
        && stamp
            .chars()
            .all(|c| c.is_ascii_digit() || "/: ".contains(c));
    if !is_stamp {
        return None;
    }
    let rest = line[at + level.len()..].trim_start();
    // The worker's `pid#tid: `.
    let (ids, message) = rest.split_once(": ")?;
    ids.chars()
        .all(|c| c.is_ascii_digit() || c == '#')
        .then(|| format!("nginx: {level} {message}"))
}

/// The file (and line) an nginx error names: `... in /etc/nginx/conf.d/x.conf:27`.
pub fn error_location(line: &str) -> Option<(PathBuf, u32)> {
    let i = line.rfind(" in /")?;
    let rest = &line[i + 4..];
    let (path, line_no) = rest.rsplit_once(':')?;
    Some((Path::new(path).to_owned(), line_no.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_error_and_its_file() {
        let out = "nginx: [emerg] host not found in upstream \"nope.invalid\" in /x/conf.d/bad.example.com.conf:27\n\
                   nginx: configuration file /x/nginx.conf test failed\n";
        let e = first_error(out);
        assert!(e.starts_with("nginx: [emerg] host not found"));
        assert_eq!(
            error_location(&e),
            Some((PathBuf::from("/x/conf.d/bad.example.com.conf"), 27))
        );
        // From a container, in nginx's log format.
        let out = "2026/11/29 12:57:56 [emerg] 8#8: host not found in upstream \"nope.invalid\" in /etc/nginx/conf.d/bad.conf:22\n";
        assert_eq!(
            first_error(out),
            "nginx: [emerg] host not found in upstream \"nope.invalid\" in /etc/nginx/conf.d/bad.conf:22"
        );
        // Anything else is left as it is.
        assert_eq!(
            first_error("something [error] odd\n"),
            "something [error] odd"
        );
    }
}
