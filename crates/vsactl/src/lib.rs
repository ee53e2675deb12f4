//! `vsactl`: the vsa engine on the command line.
//!
//! A library so that tests and benchmarks drive exactly what the binary
//! runs; `main.rs` only parses arguments and exits with [`run`]'s code.

pub mod certs;
pub mod cli;
pub mod context;
pub mod converge;
pub mod output;
pub use vsa_engine::pipeline;
pub mod review;

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use anstream::{eprintln, print, println};
use anstyle::{AnsiColor, Style};
use anyhow::{Context as _, Result, bail};
use vsa_core::Problem;

use crate::cli::{Cli, Command, Format};
use crate::context::{Context, Env};
use crate::pipeline::PipelineError;

const ERR: Style = AnsiColor::Red.on_default().bold();
const WARN: Style = AnsiColor::Yellow.on_default().bold();

/// Runs one command and returns the exit status of the vsa contract.
pub fn run(cli: Cli, env: &Env) -> ExitCode {
    let result = match &cli.command {
        Command::Validate { format } => validate(&cli, env, *format),
        Command::Diff { format, base, head } => {
            diff(&cli, env, *format, base.as_deref(), head.as_deref())
        }
        Command::Apply {
            dry_run,
            yes,
            format,
            lock_timeout,
        } => converge::apply(&cli.global, env, *format, *dry_run, *yes, *lock_timeout),
        Command::Status { format } => converge::status(&cli.global, env, *format),
        Command::Certs { format } => certs::certs(&cli.global, env, *format),
        Command::Audit {
            since,
            verify,
            format,
        } => converge::audit(&cli.global, env, *since, *verify, *format),
        Command::Render { site, tls } => render(&cli, env, site, *tls),
        Command::Schema => schema(),
        Command::HashPassword { cost } => hash_password(*cost),
        Command::Stack(crate::cli::StackCommand::New {
            name,
            on,
            image,
            port,
        }) => stack_new(&cli, env, name, on.as_deref(), image, *port),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{ERR}error:{ERR:#} {e:#}");
            // Every command's "error" status: 2 for diff, 1 for the others.
            ExitCode::from(match cli.command {
                Command::Diff { .. } => 2,
                _ => 1,
            })
        }
    }
}

pub(crate) fn print_problems(problems: &[Problem]) {
    for p in problems {
        let (style, word) = if p.is_error() {
            (ERR, "error")
        } else {
            (WARN, "warning")
        };
        eprintln!(
            "{}:{}:{}: {style}{word}:{style:#} {}",
            p.file, p.line, p.col, p.message
        );
    }
}

fn validate(cli: &Cli, env: &Env, format: Format) -> Result<ExitCode> {
    let ctx = Context::load(&cli.global, env)?;
    let (files, mut problems) = ctx.read_repo()?;
    let loaded = vsa_core::validate::load_parallel(&files, crate::pipeline::threads());
    problems.extend(loaded.problems);
    vsa_core::problem::sort(&mut problems);
    let errors = problems.iter().filter(|p| p.is_error()).count();
    let valid = errors == 0;
    match format {
        Format::Json => {
            let v = serde_json::json!({ "valid": valid, "problems": problems });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Format::Text | Format::Markdown => {
            for p in &problems {
                let (style, word) = if p.is_error() {
                    (ERR, "")
                } else {
                    (WARN, "warning: ")
                };
                println!(
                    "{}:{}:{}: {style}{word}{style:#}{}",
                    p.file, p.line, p.col, p.message
                );
            }
            match &loaded.model {
                Some(m) if valid => eprintln!(
                    "{}: valid ({} files, {} hosts, {} sites, {} stacks{})",
                    ctx.repo.display(),
                    files.len(),
                    m.fleet.hosts.len(),
                    m.sites.len(),
                    m.stacks.len(),
                    match problems.len() {
                        0 => String::new(),
                        n => format!(", {n} warning(s)"),
                    }
                ),
                _ => eprintln!(
                    "{}: invalid: {errors} error(s) in {} files",
                    ctx.repo.display(),
                    files.len()
                ),
            }
        }
    }
    Ok(if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn diff(
    cli: &Cli,
    env: &Env,
    format: Format,
    base: Option<&str>,
    head: Option<&str>,
) -> Result<ExitCode> {
    let ctx = Context::load(&cli.global, env)?;
    if let Some(base) = base {
        return review(&ctx, format, base, head.unwrap_or("HEAD"));
    }
    let host = ctx.host()?.to_owned();
    let hp = match pipeline::plan_host(&ctx.config, &ctx.repo, &host) {
        Ok(hp) => hp,
        Err(PipelineError::Invalid(problems)) => {
            print_problems(&problems);
            bail!(
                "the desired state in {} is invalid; nothing was planned",
                ctx.repo.display()
            );
        }
        Err(e) => return Err(e.into()),
    };
    print_problems(&hp.warnings);
    let plan = &hp.plan;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(plan)?),
        Format::Markdown => print!("{}", output::plan_markdown(plan)),
        Format::Text => print!("{}", output::plan_text(plan)),
    }
    Ok(if plan.in_sync() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn review(ctx: &Context, format: Format, base: &str, head: &str) -> Result<ExitCode> {
    let r = match review::review(&ctx.config, &ctx.repo, base, head) {
        Ok(r) => r,
        Err(review::ReviewError::Pipeline(PipelineError::Invalid(problems))) => {
            print_problems(&problems);
            bail!("the desired state at {head} is invalid");
        }
        Err(e) => return Err(e.into()),
    };
    if r.base_problems.iter().any(Problem::is_error) {
        eprintln!(
            "{WARN}warning:{WARN:#} the desired state at {base} is invalid; comparing against an empty fleet"
        );
    }
    print_problems(&r.head_warnings);
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&r)?),
        Format::Markdown => {
            println!(
                "## vsa plan: `{}` → `{}`\n",
                &r.base[..r.base.len().min(12)],
                &r.head[..r.head.len().min(12)]
            );
            if r.hosts.is_empty() {
                println!("No host changes.");
            }
            for p in &r.hosts {
                print!("{}", output::plan_markdown(p));
            }
        }
        Format::Text => {
            if r.hosts.is_empty() {
                println!("No host changes between {base} and {head}.");
            }
            for p in &r.hosts {
                print!("{}", output::plan_text(p));
            }
        }
    }
    Ok(if r.hosts.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn render(cli: &Cli, env: &Env, site: &str, tls: bool) -> Result<ExitCode> {
    let ctx = Context::load(&cli.global, env)?;
    let (model, warnings) = match pipeline::load_repo(&ctx.repo) {
        Ok(v) => v,
        Err(PipelineError::Invalid(problems)) => {
            print_problems(&problems);
            bail!("the desired state in {} is invalid", ctx.repo.display());
        }
        Err(e) => return Err(e.into()),
    };
    print_problems(&warnings);
    let Some(s) = model.site(site) else {
        let mut known: Vec<&str> = model.sites.iter().map(|s| s.domain.as_str()).collect();
        known.truncate(20);
        bail!(
            "no site `{site}` in {} (sites: {})",
            ctx.repo.display(),
            known.join(", ")
        );
    };
    let renderer = vsa_core::Renderer::new(vsa_core::render::RenderSettings::from(&ctx.config));
    let present = tls
        || (ctx
            .config
            .paths
            .letsencrypt
            .join("live")
            .join(site)
            .join("fullchain.pem")
            .is_file()
            && ctx
                .config
                .paths
                .letsencrypt
                .join("live")
                .join(site)
                .join("privkey.pem")
                .is_file());
    print!("{}", renderer.vhost(s, present)?);
    Ok(ExitCode::SUCCESS)
}

fn schema() -> Result<ExitCode> {
    println!(
        "{}",
        serde_json::to_string_pretty(&vsa_core::schema::manifest_schema())?
    );
    Ok(ExitCode::SUCCESS)
}

/// `vsactl stack new`: writes a one-service stack manifest, refusing to
/// overwrite anything.
fn stack_new(
    cli: &Cli,
    env: &Env,
    name: &str,
    on: Option<&str>,
    image: &str,
    port: u16,
) -> Result<ExitCode> {
    let ctx = Context::load(&cli.global, env)?;
    let invalid = |msg: String| {
        eprintln!("{ERR}error:{ERR:#} {msg}");
        Ok(ExitCode::from(2))
    };
    if let Err(e) = vsa_core::names::identifier(name) {
        return invalid(format!("stack name `{name}`: {e}"));
    }
    if let Err(e) = vsa_core::names::image_ref(image) {
        return invalid(format!("--image `{image}`: {e}"));
    }
    let host = match on
        .map(str::to_owned)
        .or_else(|| ctx.host().ok().map(str::to_owned))
    {
        Some(h) => h,
        None => {
            return invalid("no host: pass --on HOST or set `host:` in the configuration".into());
        }
    };
    let dir = ctx.repo.join("stacks");
    let path = dir.join(format!("{name}.yaml"));
    if path.exists() {
        return invalid(format!(
            "{} already exists; nothing written",
            path.display()
        ));
    }
    let text = format!(
        "# The stack `{name}`: containers are named {name}-<service>, on the shared\n         # network (docker.network). Fields as in the Compose specification.\n         apiVersion: vsa/v1\n         kind: Stack\n         name: {name}\n         host: {host}\n         services:\n         \x20 app:\n         \x20   image: {image}\n         \x20   environment: {{}}\n         \x20   # env_file: /srv/{name}/env/.env     # secrets: read on the host, never in git\n         \x20   # volumes: [\"{name}_data:/data\"]\n         \x20   # restart: unless-stopped           # the default\n         \n         # A site in front of it (sites/<domain>.yaml):\n         #   upstream: {{ container: {name}-app, port: {port} }}\n"
    );
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("{}", path.display());
    Ok(ExitCode::SUCCESS)
}

fn hash_password(cost: u32) -> Result<ExitCode> {
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        let first = rpassword::prompt_password("Password: ").context("cannot read the password")?;
        let second = rpassword::prompt_password("Again: ").context("cannot read the password")?;
        if first != second {
            bail!("the passwords differ");
        }
        first
    } else {
        let mut s = String::new();
        stdin
            .lock()
            .take(4096)
            .read_to_string(&mut s)
            .context("cannot read the password from stdin")?;
        s.lines().next().unwrap_or("").to_owned()
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    if password.len() > 72 {
        bail!("bcrypt only uses the first 72 bytes of a password; use a shorter one");
    }
    let hash = bcrypt::hash(&password, cost).context("cannot hash the password")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{hash}")?;
    Ok(ExitCode::SUCCESS)
}
