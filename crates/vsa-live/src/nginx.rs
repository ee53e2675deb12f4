//! Controlling nginx: `nginx -t` before every reload, and the reload.
//!
//! The commands are argv from the configuration (DESIGN §4), run on the
//! host, or, when `nginx.container` is set, inside that container through
//! the Docker Engine API (`docker exec`).
//!
//! A reload only signals nginx's master; the new configuration takes
//! effect later, or not at all. So a reload is confirmed: vsa stamps a new
//! generation on the probe server of its http-context file, reloads, and
//! reads the generation back from the probe until nginx serves it, while
//! nginx's error log is watched for the reason it may not.

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
    #[error("the reload did not take effect: {reason}")]
    NotServed { reason: String },
}

#[derive(Clone, Debug)]
pub struct NginxControl {
    pub test: Vec<String>,
    pub reload: Vec<String>,
    /// Run the commands in this container (`docker exec`).
    pub container: Option<String>,
    /// The Docker endpoint for `container`.
    pub docker_endpoint: String,
    /// The network `container` is on (where its probe is reached).
    pub docker_network: String,
    pub timeout: Duration,
    /// The port of vsa's probe server (`nginx.probe_port`).
    pub probe_port: u16,
    /// nginx's error log on the host (not read with `container`).
    pub error_log: PathBuf,
    /// How long a reload may take to be served.
    pub serve_timeout: Duration,
}

/// Where nginx's error log stood before a reload, to read what it added.
#[derive(Debug)]
enum LogMark {
    File { len: u64 },
    Container { since: i64, seen: usize },
    Unreadable,
}

impl NginxControl {
    pub fn from_config(c: &vsa_core::config::Config) -> Self {
        NginxControl {
            test: c.nginx.test.clone(),
            reload: c.nginx.reload.clone(),
            container: c.nginx.container.clone(),
            docker_endpoint: c.docker.endpoint_url().to_owned(),
            docker_network: c.docker.network.clone(),
            timeout: Duration::from_secs(120),
            probe_port: c.nginx.probe_port,
            error_log: c.nginx.error_log.clone(),
            serve_timeout: SERVE_TIMEOUT,
        }
    }

    /// The generation of the configuration nginx serves, read from vsa's
    /// probe server; `Err` says why it could not be read.
    pub async fn served_generation(&self) -> Result<String, String> {
        self.probe().await.map(|(generation, _)| generation)
    }

    /// The generation and the pid of the worker that answered (as nginx
    /// sees it: in a container, a pid of the container's namespace).
    async fn probe(&self) -> Result<(String, Option<u32>), String> {
        let ip = match &self.container {
            None => std::net::IpAddr::from([127, 0, 0, 1]),
            Some(name) => {
                let docker = crate::docker::connect(&self.docker_endpoint)
                    .await
                    .map_err(|e| e.to_string())?;
                crate::docker::container_address(&docker, name, &self.docker_network).await?
            }
        };
        probe(std::net::SocketAddr::new(ip, self.probe_port)).await
    }

    /// The host pid of nginx's master: the parent of the worker that
    /// answered the probe, or, in a container, the container's nginx
    /// master process.
    async fn master_pid(&self, worker: Option<u32>) -> Option<u32> {
        match &self.container {
            None => procs::stat(worker?).map(|s| s.ppid),
            Some(name) => {
                let docker = crate::docker::connect(&self.docker_endpoint).await.ok()?;
                let init = crate::docker::container_pid(&docker, name).await.ok()?;
                if procs::cmdline(init).starts_with("nginx: master") {
                    return Some(init);
                }
                // nginx under an init or a shell in the container.
                procs::children(init)
                    .into_iter()
                    .find(|&p| procs::cmdline(p).starts_with("nginx: master"))
            }
        }
    }

    /// Reloads nginx and waits until it serves the configuration stamped
    /// with `generation` (see [`stamp_generation`]): signals the reload, and
    /// reads the probe until it answers with that generation and no old
    /// worker still accepts (at most `serve_timeout`). A reload nginx did
    /// not take (its error log says why, when it can be read) is
    /// `NotServed`. Without a generation (no http-context file: vsa serves
    /// no site here) the reload is only signalled.
    pub async fn reload_and_confirm(&self, generation: Option<&str>) -> Result<(), NginxError> {
        let mark = self.log_mark().await;
        self.reload().await?;
        let Some(generation) = generation else {
            return Ok(());
        };
        let deadline = tokio::time::Instant::now() + self.serve_timeout;
        let mut last;
        let mut served_since: Option<tokio::time::Instant> = None;
        loop {
            match self.probe().await {
                Ok((g, worker)) if g == generation => {
                    // A new worker serves it; but nginx's master lets the
                    // workers of earlier configurations accept for another
                    // 100 ms before it tells them to stop. Done once none
                    // of them still does.
                    let master = self.master_pid(worker).await;
                    let old = match (master, worker) {
                        (Some(m), Some(w)) => {
                            procs::older_accepting_workers(m, w).unwrap_or_else(|| vec![w])
                        }
                        _ => {
                            // No view of the processes: the new generation
                            // must be all the probe sees for longer than
                            // nginx lets old workers accept.
                            let since = *served_since.get_or_insert_with(tokio::time::Instant::now);
                            if since.elapsed() > OLD_WORKERS_GRACE {
                                Vec::new()
                            } else {
                                vec![0]
                            }
                        }
                    };
                    if old.is_empty() {
                        return Ok(());
                    }
                    last = format!(
                        "nginx serves configuration {g}, but old workers {old:?} still accept connections"
                    );
                }
                Ok((g, _)) => {
                    served_since = None;
                    last = format!("nginx still serves configuration {g}");
                }
                Err(e) => {
                    served_since = None;
                    last = format!("the probe did not answer: {e}");
                }
            }
            let errors = self.log_errors_since(&mark).await;
            if let Some(line) = errors.iter().find(|l| l.contains("[emerg]")) {
                return Err(NginxError::NotServed {
                    reason: first_error(line),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                let reason = match errors.last() {
                    Some(line) => format!(
                        "{last} after {} s; nginx logged: {}",
                        self.serve_timeout.as_secs(),
                        first_error(line)
                    ),
                    None => format!("{last} after {} s", self.serve_timeout.as_secs()),
                };
                return Err(NginxError::NotServed { reason });
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    async fn log_mark(&self) -> LogMark {
        match &self.container {
            None => match std::fs::metadata(&self.error_log) {
                Ok(m) => LogMark::File { len: m.len() },
                Err(_) => LogMark::File { len: 0 },
            },
            Some(name) => {
                let since = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64)
                    - 1;
                let Ok(docker) = crate::docker::connect(&self.docker_endpoint).await else {
                    return LogMark::Unreadable;
                };
                match crate::docker::logs_since(&docker, name, since).await {
                    Ok(lines) => LogMark::Container {
                        since,
                        seen: lines.len(),
                    },
                    Err(_) => LogMark::Unreadable,
                }
            }
        }
    }

    /// The `[emerg]`, `[alert]` and `[crit]` lines nginx logged since `mark`.
    async fn log_errors_since(&self, mark: &LogMark) -> Vec<String> {
        let lines: Vec<String> = match (mark, &self.container) {
            (LogMark::File { len }, _) => read_from(&self.error_log, *len)
                .lines()
                .map(str::to_owned)
                .collect(),
            (LogMark::Container { since, seen }, Some(name)) => {
                let Ok(docker) = crate::docker::connect(&self.docker_endpoint).await else {
                    return Vec::new();
                };
                crate::docker::logs_since(&docker, name, *since)
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .skip(*seen)
                    .collect()
            }
            _ => Vec::new(),
        };
        lines
            .into_iter()
            .filter(|l| {
                ["[emerg]", "[alert]", "[crit]"]
                    .iter()
                    .any(|t| l.contains(t))
            })
            .collect()
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

/// How long nginx may take to serve a reloaded configuration.
pub const SERVE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the probe is asked while a reload takes effect.
const PROBE_INTERVAL: Duration = Duration::from_millis(10);

/// How long nginx's old workers may go on accepting after the new ones
/// started (nginx waits 100 ms before it tells them to stop).
const OLD_WORKERS_GRACE: Duration = Duration::from_millis(300);

/// nginx's processes as /proc shows them (the host's pid namespace).
mod procs {
    pub struct Stat {
        pub ppid: u32,
        pub start_ticks: u64,
    }

    pub fn stat(pid: u32) -> Option<Stat> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid …`: comm may hold anything but ends at the last `)`.
        let rest = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        Some(Stat {
            ppid: fields.get(1)?.parse().ok()?,
            start_ticks: fields.get(19)?.parse().ok()?,
        })
    }

    pub fn cmdline(pid: u32) -> String {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .replace('\0', " ")
                    .trim()
                    .to_owned()
            })
            .unwrap_or_default()
    }

    pub fn children(parent: u32) -> Vec<u32> {
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| stat(pid).is_some_and(|s| s.ppid == parent))
            .collect()
    }

    /// The pid a process has in its own (innermost) pid namespace: what
    /// nginx's `$pid` says inside a container.
    fn inner_pid(pid: u32) -> Option<u32> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = text.lines().find(|l| l.starts_with("NSpid:"))?;
        line.split_whitespace().last()?.parse().ok()
    }

    /// Workers of `master` that are not shutting down and started before
    /// the worker whose own pid is `answering` (by more than the moments a
    /// master takes to start one configuration's workers): those run an
    /// earlier configuration and may still accept connections. `None`
    /// when the answering worker is not (or no longer) among them.
    pub fn older_accepting_workers(master: u32, answering: u32) -> Option<Vec<u32>> {
        // Workers of one configuration start within milliseconds; nginx
        // starts the next configuration's at least 100 ms later.
        let slack = rustix::param::clock_ticks_per_second() / 20;
        let accepting: Vec<(u32, u64)> = children(master)
            .into_iter()
            .filter(|&pid| {
                let cmd = cmdline(pid);
                cmd.starts_with("nginx: worker process") && !cmd.contains("shutting down")
            })
            .filter_map(|pid| Some((pid, stat(pid)?.start_ticks)))
            .collect();
        let (_, started) = accepting
            .iter()
            .find(|(pid, _)| inner_pid(*pid) == Some(answering))?;
        Some(
            accepting
                .iter()
                .filter(|(_, s)| s + slack < *started)
                .map(|(pid, _)| *pid)
                .collect(),
        )
    }
}

/// A fresh generation to stamp.
pub fn new_generation() -> String {
    crate::safe_fs::random_hex(8)
}

/// Puts `generation` on the probe of the http-context file in `vhosts`
/// (never through a planted link), before vsa changes what nginx should
/// load: from then on, until a reload takes, the file on disk and what
/// nginx serves differ, even if vsa is killed on the way. `false` when
/// there is no managed http-context file with a probe.
pub fn stamp_generation(vhosts: &Path, generation: &str) -> std::io::Result<bool> {
    use crate::safe_fs::{Entry, FileMode, SafeDir};
    use vsa_core::render::{HTTP_CONTEXT_FILE, with_generation};
    let Some(dir) = SafeDir::open(vhosts)? else {
        return Ok(false);
    };
    let Entry::File(bytes) = dir.read(HTTP_CONTEXT_FILE, crate::files::MAX_FILE)? else {
        return Ok(false);
    };
    let text = String::from_utf8_lossy(&bytes);
    if !crate::files::is_managed(&text) {
        return Ok(false);
    }
    let Some(stamped) = with_generation(&text, generation) else {
        return Ok(false);
    };
    if stamped != text {
        dir.write_atomic(HTTP_CONTEXT_FILE, stamped.as_bytes(), FileMode::public())?;
    }
    Ok(true)
}

/// The generation the http-context file in `vhosts` carries now.
pub fn generation_on_disk(vhosts: &Path) -> Option<String> {
    use crate::safe_fs::{Entry, SafeDir};
    let dir = SafeDir::open(vhosts).ok()??;
    let Entry::File(bytes) = dir
        .read(vsa_core::render::HTTP_CONTEXT_FILE, crate::files::MAX_FILE)
        .ok()?
    else {
        return None;
    };
    let text = String::from_utf8_lossy(&bytes);
    if !crate::files::is_managed(&text) {
        return None;
    }
    vsa_core::render::generation_of(&text).map(str::to_owned)
}

/// One `GET` of the probe at `addr`: the generation it answers with.
async fn probe(addr: std::net::SocketAddr) -> Result<(String, Option<u32>), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!(
                    "GET {} HTTP/1.0\r\nHost: vsa-probe\r\n\r\n",
                    vsa_core::render::PROBE_PATH
                )
                .as_bytes(),
            )
            .await?;
        let mut buf = Vec::new();
        stream.take(4096).read_to_end(&mut buf).await?;
        Ok::<Vec<u8>, std::io::Error>(buf)
    };
    let buf = match tokio::time::timeout(Duration::from_secs(2), exchange).await {
        Err(_) => return Err(format!("{addr} did not answer within 2 s")),
        Ok(Err(e)) => return Err(format!("{addr}: {e}")),
        Ok(Ok(buf)) => buf,
    };
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or("");
    let mut words = body.split_whitespace();
    let generation = words.next().unwrap_or("");
    let worker = words.next().and_then(|p| p.parse().ok());
    if status.split_whitespace().nth(1) == Some("200")
        && vsa_core::render::is_generation(generation)
    {
        Ok((generation.to_owned(), worker))
    } else {
        Err(format!(
            "{addr} answered `{}`, not a generation (is something else on nginx.probe_port?)",
            status.escape_debug()
        ))
    }
}

/// What `path` holds past `offset` (at most 1 MiB of it), never through a
/// link; empty when it cannot be read.
fn read_from(path: &Path, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path)
    else {
        return String::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    // A rotated (shorter) log: read it from the start.
    let from = if len < offset { 0 } else { offset };
    if f.seek(SeekFrom::Start(from)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(1 << 20).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
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
