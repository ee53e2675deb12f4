//! `vsad`, the GitOps daemon (DESIGN §6): on each host it keeps the live
//! proxy layer equal to the desired-state repository without anyone
//! running a command, and shows what it sees over HTTP (DESIGN §7).
//!
//! [`daemon`] is the reconcile loop, on a thread of its own; `vsa_web`
//! the read-only API and the signed webhook, on the main thread's runtime,
//! reading the snapshots the loop publishes, so that neither ever waits
//! for the other (ADR 0010); [`sd`] the systemd notification protocol.
//! Watchers (notify) turn file events into [`Trigger`]s for the loop.

pub mod daemon;
mod git_timeouts;
pub mod memory;
pub mod sd;

/// The HTTP side (the `vsa-web` crate), under its old name.
pub use vsa_web as http;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use notify::Watcher as _;
use tokio::sync::mpsc::UnboundedSender;
use vsa_core::config::Config;

/// Why the loop should look again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Fetch the remote (poll tick or webhook).
    Fetch,
    /// The working copy changed (no remote configured).
    Repo,
    /// Something changed in the vhost or htpasswd directory.
    Drift,
    /// Re-observe everything.
    Resync,
}

/// vsad — keep this host equal to the desired-state repository.
///
/// Reads the same configuration as vsactl (docs/configuration.md). With
/// `repo.url` (`file://`; `https://` with `repo.token_file`; `ssh://` with
/// `repo.ssh_key_file` and `repo.known_hosts_file`) it clones the
/// repository into `repo.path` and fetches every `repo.poll` (and on a
/// signed `POST /hooks/git`); without it, it watches the working copy at
/// `repo.path`. A commit that fails validation is never applied:
/// the last good one stays in force. In `mode: apply` drift is repaired
/// within seconds; in `mode: report` it is only shown and audited.
///
/// Serves /healthz, /api/status, /api/plan, /api/certs and /metrics on
/// `dashboard.listen`. Stops cleanly on SIGTERM or SIGINT. `VSA_LOG` sets
/// the log filter (e.g. `debug`); logs are JSON lines off a terminal.
#[derive(Debug, Parser)]
#[command(name = "vsad", version, about, long_about)]
pub struct Cli {
    /// Configuration file [default: $VSA_CONFIG, else $VSA_ROOT/etc/vsa/vsa.yaml]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check the configuration, that the secret and key files it names can
    /// be read, and the desired state (a working copy at repo.path); print
    /// a summary and exit: 0 valid, 2 invalid
    #[arg(long)]
    pub check: bool,
}

/// The process's entry: parses `args`, runs until SIGTERM/SIGINT, and
/// returns the exit code.
pub fn main_with(args: impl IntoIterator<Item = String>) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    init_logging();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return 1;
        }
    };
    let code = rt.block_on(async {
        match run(&cli).await {
            Ok(code) => code,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "vsad stops");
                eprintln!("vsad: {e:#}");
                1
            }
        }
    });
    // Blocking work (a slow fetch) must not hold the exit up.
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    code
}

fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("VSA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if std::io::stderr().is_terminal() {
        builder.try_init()
    } else {
        builder.json().flatten_event(true).try_init()
    };
}

/// Runs the daemon (or `--check`); the exit code.
async fn run(cli: &Cli) -> Result<i32> {
    let env_config = std::env::var_os("VSA_CONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let root = std::env::var_os("VSA_ROOT")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let loaded = match vsa_live::config_file::load(
        cli.config.as_deref(),
        env_config.as_deref(),
        root.as_deref(),
    ) {
        Ok(l) => l,
        Err(e) if cli.check => {
            eprintln!("vsad: {e}");
            return Ok(2);
        }
        Err(e) => return Err(e.into()),
    };
    let config = Arc::new(loaded.config);
    let Some(host) = config.host.clone() else {
        bail!(
            "no host to converge: set `host:` in the configuration ({})",
            loaded.origin
        );
    };
    if cli.check {
        return check(&config, &host);
    }
    tracing::info!(config = %loaded.origin, host = %host, mode = ?config.mode, "vsad starting");

    let secret = read_secret(
        config.repo.webhook_secret_file.as_deref(),
        "repo.webhook_secret_file",
    )?;
    let token = read_secret(
        config.dashboard.token_file.as_deref(),
        "dashboard.token_file",
    )?
    .map(|t| String::from_utf8_lossy(&t).into_owned());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (snapshot_tx, snapshot) = tokio::sync::watch::channel(Arc::new(
        vsa_engine::snapshot::HostSnapshot::new(host.clone(), config.mode),
    ));
    let push = tx.clone();
    let web = Arc::new(vsa_web::WebState {
        snapshot,
        on_push: Box::new(move || {
            let _ = push.send(Trigger::Fetch);
        }),
        webhook_secret: secret,
        token,
        bad_hooks: vsa_web::Burst::default(),
    });

    let listener = std::net::TcpListener::bind(&config.dashboard.listen).with_context(|| {
        format!(
            "cannot listen on dashboard.listen {}",
            config.dashboard.listen
        )
    })?;
    serve(config, host, listener, web, tx, rx, snapshot_tx).await
}

/// Runs the daemon on `listener` (bound by the caller: a test binds
/// `127.0.0.1:0`) until SIGTERM or SIGINT: the reconcile loop on a thread
/// of its own, the HTTP side, the watchers and the watchdog here.
pub async fn serve(
    config: Arc<Config>,
    host: String,
    listener: std::net::TcpListener,
    web: Arc<vsa_web::WebState>,
    tx: UnboundedSender<Trigger>,
    rx: tokio::sync::mpsc::UnboundedReceiver<Trigger>,
    snapshot: tokio::sync::watch::Sender<Arc<vsa_engine::snapshot::HostSnapshot>>,
) -> Result<i32> {
    listener
        .set_nonblocking(true)
        .context("cannot set up the dashboard.listen socket")?;
    let listener = tokio::net::TcpListener::from_std(listener)
        .context("cannot set up the dashboard.listen socket")?;
    let listen = listener
        .local_addr()
        .map_or_else(|_| config.dashboard.listen.clone(), |a| a.to_string());
    tracing::info!(listen = %listen, "serving the API");
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(vsa_web::serve(listener, vsa_web::router(web), async {
        let _ = http_stopped.await;
    }));

    // Watchers live as long as this function.
    let _watchers = watch(&config, tx.clone())?;
    let docker_events = tokio::spawn(watch_docker(config.clone(), tx.clone()));
    let watchdog = sd::watchdog_interval().map(|every| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                sd::notify("WATCHDOG=1");
            }
        })
    });

    git_timeouts::set(std::time::Duration::from_millis(config.repo.timeout_ms));
    // The reconcile loop on its own thread and runtime: whatever it does
    // (parse, render, write, fsync, git, SQLite), the API answers.
    let (stop_loop, loop_stopped) = tokio::sync::oneshot::channel::<()>();
    let (loop_done, loop_ended) = tokio::sync::oneshot::channel::<Result<()>>();
    let engine = {
        let config = config.clone();
        std::thread::Builder::new()
            .name("vsad-reconcile".into())
            .spawn(move || {
                let result = reconcile_thread(config, host, snapshot, rx, loop_stopped);
                let _ = loop_done.send(result);
            })
            .context("cannot start the reconcile thread")?
    };
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    tokio::pin!(loop_ended);
    let result = tokio::select! {
        () = &mut shutdown => {
            let _ = stop_loop.send(());
            // The loop finishes the step in flight (bounded by its grace).
            (&mut loop_ended).await.unwrap_or(Ok(()))
        }
        ended = &mut loop_ended => ended.unwrap_or(Ok(())),
    };
    sd::notify("STOPPING=1");
    if let Some(w) = watchdog {
        w.abort();
    }
    docker_events.abort();
    let _ = stop_http.send(());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), server).await;
    drop(engine);
    result.map(|()| 0)
}

/// The reconcile loop's thread: its own single-threaded runtime.
fn reconcile_thread(
    config: Arc<Config>,
    host: String,
    snapshot: tokio::sync::watch::Sender<Arc<vsa_engine::snapshot::HostSnapshot>>,
    rx: tokio::sync::mpsc::UnboundedReceiver<Trigger>,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the reconcile loop's runtime")?;
    let result = rt.block_on(async {
        let daemon = daemon::Daemon::new(config, host, snapshot).await?;
        daemon
            .run(
                rx,
                async {
                    let _ = stop.await;
                },
                || {
                    sd::notify("READY=1");
                    tracing::info!("ready");
                },
            )
            .await;
        anyhow::Ok(())
    });
    // Blocking work (a slow fetch) must not hold the exit up.
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}

fn read_secret(path: Option<&Path>, what: &str) -> Result<Option<Vec<u8>>> {
    let Some(path) = path else { return Ok(None) };
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))?;
    let trimmed = String::from_utf8_lossy(&bytes).trim().as_bytes().to_vec();
    if trimmed.is_empty() {
        bail!("{what} {} is empty", path.display());
    }
    Ok(Some(trimmed))
}

/// `vsad --check`: the configuration parses, the files it names can be
/// read, the desired state loads. Every problem is reported, then 2.
fn check(config: &Config, host: &str) -> Result<i32> {
    let mut failed = false;
    // The files the daemon reads at start or at each fetch, read as it
    // reads them (secrets must not be empty): a typo would otherwise show
    // only in the first fetch's error.
    let secrets = [
        ("repo.webhook_secret_file", &config.repo.webhook_secret_file),
        ("repo.token_file", &config.repo.token_file),
        ("dashboard.token_file", &config.dashboard.token_file),
    ];
    for (what, path) in secrets {
        if let Err(e) = read_secret(path.as_deref(), what) {
            eprintln!("vsad: {e:#}");
            failed = true;
        }
    }
    let files = [
        ("repo.ssh_key_file", &config.repo.ssh_key_file),
        ("repo.known_hosts_file", &config.repo.known_hosts_file),
    ];
    for (what, path) in files {
        if let Some(path) = path
            && let Err(e) = std::fs::read(path)
        {
            eprintln!("vsad: cannot read {what} {}: {e}", path.display());
            failed = true;
        }
    }
    let ssh = config.repo.url.as_deref().is_some_and(|url| {
        url.starts_with("ssh://")
            || url.starts_with("git+ssh://")
            || url.starts_with("ssh+git://")
            // scp-like `user@host:path`
            || (!url.contains("://") && url.split_once(':').is_some_and(|(host, _)| host.contains('@')))
    });
    if ssh && config.repo.known_hosts_file.is_none() {
        eprintln!(
            "vsad: warning: repo.url is an SSH remote and repo.known_hosts_file is unset: only ~/.ssh/known_hosts of the user vsad runs as can vouch for the server (the shipped systemd unit hides /root)"
        );
    }
    // A fresh install: vsad makes the clone at its first start, and checks
    // the desired state then, before it applies anything.
    if let Some(url) = &config.repo.url
        && !config.repo.path.join(".git").exists()
    {
        if failed {
            return Ok(2);
        }
        println!(
            "ok: host {host}: the configuration holds; {} is not cloned yet: vsad clones {} there at start and validates the desired state before applying it",
            config.repo.path.display(),
            vsa_live::git::redacted(url)
        );
        return Ok(0);
    }
    let (model, warnings) = match vsa_engine::pipeline::load_repo(&config.repo.path) {
        Ok(x) => x,
        Err(vsa_engine::pipeline::PipelineError::Invalid(problems)) => {
            for p in &problems {
                eprintln!("{p}");
            }
            eprintln!(
                "vsad: the desired state in {} is invalid",
                config.repo.path.display()
            );
            return Ok(2);
        }
        Err(e) => return Err(e.into()),
    };
    for w in &warnings {
        eprintln!("{w}");
    }
    if let Err(e) = vsa_engine::pipeline::check_host(&model, host) {
        eprintln!("vsad: {e}");
        return Ok(2);
    }
    if failed {
        return Ok(2);
    }
    let mode = match config.mode {
        vsa_core::config::Mode::Apply => "apply",
        vsa_core::config::Mode::Report => "report",
    };
    println!(
        "ok: host {host}: {} site(s), {} stack(s), mode {mode}",
        model.sites_for(host).count(),
        model.stacks_for(host).count(),
    );
    Ok(0)
}

/// File watchers: the vhost and htpasswd dirs (drift), and the working
/// copy when there is no remote.
fn watch(config: &Config, tx: UnboundedSender<Trigger>) -> Result<Vec<notify::RecommendedWatcher>> {
    let mut watchers = Vec::new();
    let drift = tx.clone();
    let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev
            && !ev.kind.is_access()
            && !ev.paths.iter().all(|p| is_temp(p))
        {
            let _ = drift.send(Trigger::Drift);
        }
    })
    .context("cannot start the file watcher")?;
    for dir in [&config.paths.vhosts, &config.paths.htpasswd] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        w.watch(dir, notify::RecursiveMode::NonRecursive)
            .with_context(|| format!("cannot watch {}", dir.display()))?;
    }
    watchers.push(w);
    if config.repo.url.is_none() {
        let repo = config.repo.path.clone();
        let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if let Ok(ev) = ev
                && !ev.kind.is_access()
                && ev
                    .paths
                    .iter()
                    .any(|p| !p.components().any(|c| c.as_os_str() == ".git"))
            {
                let _ = tx.send(Trigger::Repo);
            }
        })
        .context("cannot start the file watcher")?;
        if repo.exists() {
            w.watch(&repo, notify::RecursiveMode::Recursive)
                .with_context(|| format!("cannot watch {}", repo.display()))?;
        } else {
            tracing::warn!(path = %repo.display(), "repo.path does not exist; nothing to watch");
        }
        watchers.push(w);
    }
    Ok(watchers)
}

/// Docker events of managed containers (one stopped, died, removed by
/// hand) are drift too. Reconnects with backoff while the engine is away;
/// without stacks there is nothing to watch.
async fn watch_docker(config: Arc<Config>, tx: UnboundedSender<Trigger>) {
    let endpoint = config.docker.endpoint_url().to_owned();
    let mut wait = std::time::Duration::from_secs(1);
    loop {
        match vsa_live::docker::connect(&endpoint).await {
            Ok(docker) => {
                wait = std::time::Duration::from_secs(1);
                let result = vsa_live::docker::watch_managed(&docker, |action, name| {
                    // Exec probes (healthchecks) are not drift.
                    if !action.starts_with("exec_") && !action.starts_with("health_status") {
                        tracing::debug!(action, container = name, "docker event");
                        let _ = tx.send(Trigger::Drift);
                    }
                })
                .await;
                if let Err(e) = result {
                    tracing::debug!(error = %e, "docker events ended");
                }
            }
            Err(e) => tracing::debug!(error = %e, "no Docker engine to watch"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(std::time::Duration::from_secs(60));
    }
}

/// vsa's own temp files (`.name.vsa-tmp...`), written before each rename.
fn is_temp(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}
