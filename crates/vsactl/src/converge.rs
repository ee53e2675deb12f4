//! `vsactl apply`, `vsactl status` and `vsactl audit`: the commands that
//! act on the host or read what acting left behind.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anstream::{eprintln, print, println};
use anstyle::{AnsiColor, Style};
use anyhow::{Context as _, Result};
use serde::Serialize;
use vsa_core::Model;
use vsa_core::plan::{Plan, ResourceKind};
use vsa_engine::apply::ApplyOptions;
use vsa_store::Store;

use crate::cli::Format;
use crate::context::{Context, Env};
use crate::pipeline::{self, PipelineError};

const OK: Style = AnsiColor::Green.on_default();
const ERR: Style = AnsiColor::Red.on_default().bold();
const WARN: Style = AnsiColor::Yellow.on_default();
const DIM: Style = Style::new().dimmed();

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Loads and validates, mapping invalid input to exit status 2.
fn load_valid(ctx: &Context) -> Result<std::result::Result<(Model, String), ExitCode>> {
    let host = match ctx.host() {
        Ok(h) => h.to_owned(),
        Err(e) => {
            eprintln!("{ERR}error:{ERR:#} {e}");
            return Ok(Err(ExitCode::from(2)));
        }
    };
    match pipeline::load_repo(&ctx.repo) {
        Ok((model, warnings)) => {
            crate::print_problems(&warnings);
            if let Err(e) = pipeline::check_host(&model, &host) {
                eprintln!("{ERR}error:{ERR:#} {e}");
                return Ok(Err(ExitCode::from(2)));
            }
            Ok(Ok((model, host)))
        }
        Err(PipelineError::Invalid(problems)) => {
            crate::print_problems(&problems);
            eprintln!(
                "{ERR}error:{ERR:#} the desired state in {} is invalid; nothing was applied",
                ctx.repo.display()
            );
            Ok(Err(ExitCode::from(2)))
        }
        Err(e) => Err(e.into()),
    }
}

fn print_plan(plan: &Plan, format: Format) -> Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(plan)?),
        Format::Markdown => print!("{}", crate::output::plan_markdown(plan)),
        Format::Text => print!("{}", crate::output::plan_text(plan)),
    }
    Ok(())
}

/// The steps `apply` would execute for a plan, as `--dry-run` shows them:
/// the engine's own steps ([`vsa_core::steps`]), each with its audit
/// action, its target and what it does on this host.
fn steps(ctx: &Context, plan: &Plan) -> Vec<DryStep> {
    use vsa_core::plan::Op;
    use vsa_core::steps::Step;
    let p = &ctx.config.paths;
    let mut out = Vec::new();
    for step in vsa_core::steps::steps(plan).flat() {
        let action = step.event_kind().as_str();
        let target = step.target().to_owned();
        let c = match step {
            Step::TestAndReload => {
                out.push(DryStep {
                    action,
                    target,
                    does: vec![
                        format!("run    {}", ctx.config.nginx.test.join(" ")),
                        format!("run    {}", ctx.config.nginx.reload.join(" ")),
                        format!(
                            "wait   until nginx serves the new configuration (vsa's probe on port {}, at most {} s)",
                            ctx.config.nginx.probe_port,
                            vsa_live::nginx::SERVE_TIMEOUT.as_secs()
                        ),
                    ],
                });
                continue;
            }
            Step::Change(c) => c,
        };
        let live = p.letsencrypt.join("live").join(&c.name);
        let file = c.file.as_deref().unwrap_or(&c.name);
        let (dir, mode) = vsa_engine::apply::file_target(p, c.kind)
            .map_or((p.state.as_path(), String::new()), |(d, m)| {
                (d, format!("{m:04o}"))
            });
        let path = dir.join(file);
        let does = match &c.op {
            Op::CreateNetwork => format!("create network {}", c.name),
            Op::RunContainer { spec, replace, .. } => {
                let verb = match replace {
                    vsa_core::plan::Replace::Nothing => "create and start",
                    _ => "recreate",
                };
                format!(
                    "pull   {} (if missing); {verb} container {}",
                    spec.image, c.name
                )
            }
            Op::StartContainer { .. } => format!("start  container {}", c.name),
            Op::RemoveContainer => format!("remove container {} (volumes kept)", c.name),
            Op::DeleteCert => format!("delete {}", live.display()),
            Op::IssueCert { names } => format!(
                "order  a certificate for {} from {} (HTTP-01 via {}); write {}/privkey.pem (0600) and fullchain.pem",
                names.join(" "),
                ctx.config.acme.directory,
                p.webroot.display(),
                live.display()
            ),
            Op::CreateFile => format!("create {} (empty, mode {mode})", path.display()),
            Op::RemoveFile => format!("delete {}", path.display()),
            Op::WriteFile { .. } if c.kind == ResourceKind::Htpasswd => format!(
                "write  {} (mode {mode}, group {})",
                path.display(),
                ctx.config.nginx.group
            ),
            Op::WriteFile { .. } => format!("write  {} (mode {mode})", path.display()),
            Op::None => "nothing (no operation)".to_owned(),
        };
        out.push(DryStep {
            action,
            target,
            does: vec![does],
        });
    }
    out
}

/// One step of a dry run.
#[derive(Serialize)]
struct DryStep {
    /// The audit action the apply records for it.
    action: &'static str,
    target: String,
    /// What it does, line by line.
    does: Vec<String>,
}

fn confirm(host: &str, n: usize) -> Result<bool> {
    let mut err = std::io::stderr().lock();
    write!(err, "Apply {n} change(s) to host {host}? [y/N] ")?;
    err.flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

pub fn apply(
    global: &crate::cli::Global,
    env: &Env,
    format: Format,
    dry_run: bool,
    yes: bool,
    lock_timeout: Duration,
) -> Result<ExitCode> {
    let ctx = match Context::load(global, env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{ERR}error:{ERR:#} {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    let (model, host) = match load_valid(&ctx)? {
        Ok(v) => v,
        Err(code) => return Ok(code),
    };
    let commit = vsa_live::git::head_commit(&ctx.repo);

    if dry_run {
        let observed = pipeline::observe_blocking(&ctx.config, &model, &host)?;
        let plan = pipeline::plan_with(&ctx.config, &model, &host, &observed, commit)?;
        let steps = steps(&ctx, &plan);
        if format == Format::Json {
            // The plan (contract) with the steps it would take.
            let mut value = serde_json::to_value(&plan)?;
            value["steps"] = serde_json::to_value(&steps)?;
            println!("{}", serde_json::to_string_pretty(&value)?);
            return Ok(ExitCode::SUCCESS);
        }
        print_plan(&plan, format)?;
        if format == Format::Text && !steps.is_empty() {
            println!("\nWould execute (dry run: nothing was written, reloaded or started):");
            for line in steps.iter().flat_map(|s| &s.does) {
                println!("  {line}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }

    if !yes && !std::io::stdin().is_terminal() {
        // Refuse before taking the lock: a refused apply leaves no trace.
        eprintln!(
            "{ERR}error:{ERR:#} refusing to apply without --yes: stdin is not a terminal to ask for confirmation"
        );
        return Ok(ExitCode::from(2));
    }
    let _lock = vsa_engine::HostLock::acquire(&ctx.config.paths.state, lock_timeout)?;
    let observed = pipeline::observe_blocking(&ctx.config, &model, &host)?;
    let plan = pipeline::plan_with(&ctx.config, &model, &host, &observed, commit.clone())?;
    if plan.changes.is_empty() && plan.reload.is_none() {
        print_plan(&plan, format)?;
        return Ok(if plan.conflicts.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    print_plan(&plan, format)?;
    if !yes && !confirm(&host, plan.changes.len().max(1))? {
        eprintln!("Nothing applied.");
        return Ok(ExitCode::from(2));
    }

    let actor = format!("cli:{}", env.user.as_deref().unwrap_or("unknown"));
    let config = std::sync::Arc::new(ctx.config.clone());
    let rt = runtime()?;
    let report = rt.block_on(async {
        let engine = vsa_engine::Engine::open(config, host.clone(), actor).await?;
        // Exactly the plan the user confirmed (terraform's saved-plan
        // guarantee): if the host changed meanwhile, show it and ask again.
        let mut confirmed = (!yes).then(|| plan.fingerprint());
        let result = loop {
            let options = ApplyOptions {
                abort_after_writes: env.abort_after_writes,
                progress: std::io::stderr().is_terminal(),
                expect: confirmed,
                ..ApplyOptions::default()
            };
            match engine.apply(&model, commit.clone(), options).await {
                Err(vsa_engine::apply::ApplyError::PlanChanged(now)) => {
                    eprintln!(
                        "{WARN}The host changed since you confirmed the plan;{WARN:#} nothing was applied. The plan now:"
                    );
                    print_plan(&now, format)?;
                    if now.changes.is_empty() && now.reload.is_none() {
                        eprintln!("Nothing to apply any more.");
                        let code = if now.conflicts.is_empty() { 0 } else { 1 };
                        break Ok(Err(ExitCode::from(code)));
                    }
                    if !confirm(&host, now.changes.len().max(1))? {
                        eprintln!("Nothing applied.");
                        break Ok(Err(ExitCode::from(2)));
                    }
                    confirmed = Some(now.fingerprint());
                }
                other => break other.map(Ok),
            }
        };
        engine.close().await;
        anyhow::Ok(result?)
    })?;
    let report = match report {
        Ok(report) => report,
        Err(code) => return Ok(code),
    };

    for e in &report.executed {
        let style = if e.outcome == vsa_store::Outcome::Ok {
            OK
        } else {
            ERR
        };
        eprintln!(
            "  {style}{:<7}{style:#} {:<10} {} {DIM}{}{DIM:#}",
            e.outcome.as_str(),
            e.kind.as_str(),
            e.name,
            e.detail
        );
    }
    let remaining = report.remaining.as_ref();
    let conflicts = remaining.map_or(0, |p| p.conflicts.len());
    if report.failures.is_empty() && conflicts == 0 {
        eprintln!(
            "{OK}Converged:{OK:#} {} write(s), {} reload(s) in {} pass(es).",
            report.writes, report.reloads, report.passes
        );
        return Ok(ExitCode::SUCCESS);
    }
    for f in &report.failures {
        eprintln!("{ERR}failed:{ERR:#} {}: {}", f.id.name, f.error);
    }
    if let Some(p) = remaining {
        for c in &p.conflicts {
            eprintln!(
                "{ERR}blocked:{ERR:#} {} {}: {}",
                c.kind.as_str(),
                c.name,
                c.message
            );
        }
    }
    eprintln!(
        "{WARN}Partly applied:{WARN:#} {} failed, {} blocked; everything else converged ({} write(s), {} reload(s)).",
        report.failures.len(),
        conflicts,
        report.writes,
        report.reloads
    );
    Ok(ExitCode::from(1))
}

/// How `vsactl status` has always named the states: a blocked site is a
/// failed one.
fn cli_label(s: vsa_engine::snapshot::SiteState) -> &'static str {
    use vsa_engine::snapshot::SiteState;
    match s {
        SiteState::InSync => "in sync",
        SiteState::Blocked => SiteState::Failed.as_str(),
        other => other.as_str(),
    }
}

#[derive(Serialize)]
struct SiteStatus {
    domain: String,
    status: &'static str,
    /// The state in the API's vocabulary (`/api/sites`): `in_sync`,
    /// `drifted`, `pending`, `failed`, `blocked`.
    state: vsa_engine::snapshot::SiteState,
    detail: String,
    changes: usize,
}

#[derive(Serialize)]
struct StatusReport {
    host: String,
    mode: vsa_core::config::Mode,
    commit: Option<String>,
    last_applied_commit: Option<String>,
    last_apply_at: Option<String>,
    last_apply_outcome: Option<String>,
    in_sync: bool,
    sites: Vec<SiteStatus>,
    unmanaged: Vec<vsa_core::plan::Unmanaged>,
}

pub fn status(global: &crate::cli::Global, env: &Env, format: Format) -> Result<ExitCode> {
    let ctx = Context::load(global, env)?;
    let (model, host) = match load_valid(&ctx)? {
        Ok(v) => v,
        Err(code) => return Ok(code),
    };
    let commit = vsa_live::git::head_commit(&ctx.repo);
    let observed = pipeline::observe_blocking(&ctx.config, &model, &host)?;
    let plan = pipeline::plan_with(&ctx.config, &model, &host, &observed, commit.clone())?;
    // Read the store only if an apply ever made it: status writes nothing.
    let (facts, recorded) = if ctx.config.paths.state.join(vsa_store::DB_FILE).exists() {
        runtime()?.block_on(async {
            let Some(store) = Store::open_read_only(&ctx.config.paths.state).await? else {
                return anyhow::Ok((BTreeMap::new(), BTreeMap::new()));
            };
            let mut facts = BTreeMap::new();
            for k in ["last_applied_commit", "last_apply_at", "last_apply_outcome"] {
                if let Some(v) = store.get_state(&host, k).await? {
                    facts.insert(k, v);
                }
            }
            let recorded: BTreeMap<String, vsa_store::ResourceStatus> = store
                .resource_statuses(&host)
                .await?
                .into_iter()
                .filter(|s| s.kind == "site")
                .map(|s| (s.name.clone(), s))
                .collect();
            store.close().await;
            anyhow::Ok((facts, recorded))
        })?
    } else {
        (BTreeMap::new(), BTreeMap::new())
    };
    let last_commit = facts.get("last_applied_commit").cloned();
    let recorded = vsa_engine::snapshot::Recorded {
        sites: recorded,
        last_applied_commit: last_commit.clone(),
    };
    let sites = vsa_engine::snapshot::site_statuses(&model, &host, &plan, &recorded)
        .into_iter()
        .map(|s| SiteStatus {
            changes: s.changes.len(),
            status: cli_label(s.status),
            state: s.status,
            domain: s.domain,
            detail: s.detail,
        })
        .collect();
    let report = StatusReport {
        host: host.clone(),
        mode: ctx.config.mode,
        commit,
        last_applied_commit: last_commit,
        last_apply_at: facts.get("last_apply_at").cloned(),
        last_apply_outcome: facts.get("last_apply_outcome").cloned(),
        in_sync: plan.in_sync(),
        sites,
        unmanaged: plan.unmanaged.clone(),
    };
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let short = |c: &Option<String>| {
        c.as_deref()
            .map_or("-".to_owned(), |c| c.chars().take(12).collect())
    };
    println!(
        "Host {} (mode {}), desired state at {}",
        report.host,
        match report.mode {
            vsa_core::config::Mode::Apply => "apply",
            vsa_core::config::Mode::Report => "report",
        },
        short(&report.commit)
    );
    println!(
        "Last apply: {} (commit {}, {})",
        report.last_apply_at.as_deref().unwrap_or("never"),
        short(&report.last_applied_commit),
        report.last_apply_outcome.as_deref().unwrap_or("-")
    );
    let width = report
        .sites
        .iter()
        .map(|s| s.domain.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!("\n{:<width$}  {:<8}  DETAIL", "SITE", "STATUS");
    for s in &report.sites {
        let style = match s.status {
            "in sync" => OK,
            "failed" => ERR,
            _ => WARN,
        };
        println!(
            "{:<width$}  {style}{:<8}{style:#}  {}",
            s.domain, s.status, s.detail
        );
    }
    for u in &report.unmanaged {
        println!(
            "{DIM}unmanaged {} file {} (left alone){DIM:#}",
            u.kind.as_str(),
            u.file
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn audit(
    global: &crate::cli::Global,
    env: &Env,
    since: Option<Duration>,
    verify: bool,
    format: Format,
) -> Result<ExitCode> {
    let ctx = Context::load(global, env)?;
    let path = &ctx.config.paths.audit_log;
    if verify {
        // The state database keeps its own copy of the chain: a log cut
        // short, emptied, deleted or rewritten no longer matches it.
        let mirror = match runtime()?.block_on(async {
            let Some(store) = Store::open_read_only(&ctx.config.paths.state).await? else {
                return anyhow::Ok(None);
            };
            let hashes = store.event_hashes().await;
            store.close().await;
            anyhow::Ok(Some(hashes?))
        })? {
            Some(m) => m,
            None if !path.exists() => {
                println!("No audit log at {} yet: nothing to verify.", path.display());
                return Ok(ExitCode::SUCCESS);
            }
            None => Vec::new(),
        };
        let checked = vsa_store::audit::chain(path)?.and_then(|log| {
            vsa_store::audit::compare_with_mirror(&log, &mirror).map(|newer| (log.len(), newer))
        });
        return match checked {
            Ok((n, newer)) => {
                let confirmed = if mirror.is_empty() {
                    " (no state database to compare with yet)".to_owned()
                } else if newer > 0 {
                    format!(
                        ", matching the state database's record but for the newest {newer}, which it does not hold yet"
                    )
                } else {
                    ", matching the state database's record".to_owned()
                };
                println!(
                    "{OK}Audit chain intact:{OK:#} {n} event(s) in {}{confirmed}.",
                    path.display()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(b) => {
                println!(
                    "{ERR}Audit chain broken{ERR:#} at {}:{}: {}",
                    path.display(),
                    b.line,
                    b.reason
                );
                Ok(ExitCode::from(1))
            }
        };
    }
    let events = vsa_store::audit::read_all(path)?;
    let cutoff = since.map(|d| vsa_store::time::now_millis() - d.as_millis() as i64);
    let shown = events.iter().filter(|e| {
        cutoff.is_none_or(|c| vsa_store::time::parse_millis(&e.ts).is_some_and(|t| t >= c))
    });
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for e in shown {
        if format == Format::Json {
            writeln!(out, "{}", serde_json::to_string(e)?)?;
        } else {
            let commit: String = e.commit.as_deref().unwrap_or("-").chars().take(8).collect();
            writeln!(
                out,
                "{}  {:<14} {:<18} {:<28} {:<7} {:<8} {}",
                e.ts,
                e.actor,
                e.action,
                e.target,
                e.outcome.as_str(),
                commit,
                e.detail
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
