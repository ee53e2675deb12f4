//! `vsactl certs`: the certificates on this host (DESIGN §5: domain,
//! expiry, days left, status, issuer), and the `tls: acme` sites that have
//! none yet.

use std::process::ExitCode;

use anstream::println;
use anstyle::{AnsiColor, Style};
use anyhow::Result;
use serde::Serialize;
use vsa_core::certs::{CertInfo, CertStatus};
use vsa_core::model::Tls;

use crate::cli::{Format, Global};
use crate::context::{Context, Env};

#[derive(Serialize)]
struct Row<'a> {
    #[serde(flatten)]
    cert: &'a CertInfo,
    /// The sites of this host the certificate is for (by directory name),
    /// and whether it covers each one's domain and aliases.
    sites: Vec<SiteUse>,
}

#[derive(Serialize)]
struct SiteUse {
    domain: String,
    covered: bool,
}

#[derive(Serialize)]
struct Report<'a> {
    host: Option<&'a str>,
    certs: Vec<Row<'a>>,
    /// `tls: acme` sites of this host with no certificate on disk.
    missing: Vec<String>,
    /// Domains whose last ACME order failed, and when vsa asks again.
    acme_failures: Vec<AcmeFailure>,
}

#[derive(Serialize)]
struct AcmeFailure {
    domain: String,
    failures: u32,
    last_error: String,
    next_attempt: String,
}

/// The ACME failures recorded in the state store (none without a store),
/// read-only like `diff` and `status`: `certs` changes nothing, not even
/// the database's schema.
fn acme_failures(state: &std::path::Path, host: &str) -> Result<Vec<AcmeFailure>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let Some(store) = vsa_store::Store::open_read_only(state).await? else {
            return Ok(Vec::new());
        };
        let list = store.acme_backoffs(host).await?;
        store.close().await;
        Ok(list
            .into_iter()
            .map(|b| AcmeFailure {
                domain: b.domain,
                failures: b.failures,
                last_error: b.last_error,
                next_attempt: vsa_store::time::format_millis(b.next_attempt_ms),
            })
            .collect())
    })
}

pub fn certs(global: &Global, env: &Env, format: Format) -> Result<ExitCode> {
    let ctx = Context::load(global, env)?;
    let now = vsa_store::time::now_millis() / 1000;
    let certs = vsa_live::certs::observe(&ctx.config.paths.letsencrypt, now)?;
    // The desired state says which sites want a certificate; without a
    // valid one, the certificates are still shown.
    let host = ctx.host().ok();
    let sites: Vec<(String, Vec<String>)> = match (host, vsa_engine::pipeline::load_repo(&ctx.repo))
    {
        (Some(h), Ok((model, _))) => model
            .sites_for(h)
            .filter(|s| s.tls == Tls::Acme)
            .map(|s| (s.domain.clone(), s.aliases.clone()))
            .collect(),
        (_, Err(e)) => {
            eprintln!("warning: {e}; showing the certificates without the sites that use them");
            Vec::new()
        }
        (None, _) => Vec::new(),
    };
    let rows: Vec<Row> = certs
        .iter()
        .map(|c| Row {
            cert: c,
            sites: sites
                .iter()
                .filter(|(d, _)| *d == c.domain)
                .map(|(d, aliases)| SiteUse {
                    domain: d.clone(),
                    covered: c.covers(d) && aliases.iter().all(|a| c.covers(a)),
                })
                .collect(),
        })
        .collect();
    let missing: Vec<String> = sites
        .iter()
        .filter(|(d, _)| !certs.iter().any(|c| &c.domain == d))
        .map(|(d, _)| d.clone())
        .collect();

    let failures = match host {
        Some(h) => acme_failures(&ctx.config.paths.state, h)?,
        None => Vec::new(),
    };
    if format == Format::Json {
        let report = Report {
            host,
            certs: rows,
            missing,
            acme_failures: failures,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let failure_of = |d: &str| {
        failures.iter().find(|f| f.domain == d).map(|f| {
            format!(
                "last ACME error ({} failure(s)): {}; next attempt {}",
                f.failures, f.last_error, f.next_attempt
            )
        })
    };
    if rows.is_empty() && missing.is_empty() {
        println!(
            "No certificates under {}.",
            ctx.config.paths.letsencrypt.join("live").display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<32} {:<9} {:>5}  {:<10}  {:<24}  NOTE",
        "DOMAIN", "STATUS", "DAYS", "EXPIRES", "ISSUER"
    );
    for r in &rows {
        let c = r.cert;
        let style = match c.status {
            CertStatus::Valid => AnsiColor::Green.on_default(),
            CertStatus::Warning => AnsiColor::Yellow.on_default(),
            CertStatus::Critical | CertStatus::Expired => AnsiColor::Red.on_default().bold(),
        };
        let mut notes = Vec::new();
        if let Some(e) = &c.error {
            notes.push(e.clone());
        }
        match c.key_matches {
            Some(false) => notes.push("privkey.pem is not this certificate's key".into()),
            None if c.error.is_none() => {
                notes.push("privkey.pem unreadable (PKCS#8 expected)".into())
            }
            _ => {}
        }
        for s in r.sites.iter().filter(|s| !s.covered) {
            notes.push(format!("does not cover all names of site {}", s.domain));
        }
        notes.extend(failure_of(&c.domain));
        let expires = if c.error.is_some() {
            "-".to_owned()
        } else {
            vsa_store::time::format_millis(c.not_after * 1000)[..10].to_owned()
        };
        println!(
            "{:<32} {style}{:<9}{style:#} {:>5}  {:<10}  {:<24}  {}",
            c.domain,
            c.status.as_str(),
            if c.error.is_some() {
                "-".to_owned()
            } else {
                c.days_left.to_string()
            },
            expires,
            short_issuer(&c.issuer),
            notes.join("; ")
        );
    }
    let dim = Style::new().dimmed();
    for d in &missing {
        println!(
            "{:<32} {dim}{:<9}{dim:#} {:>5}  {:<10}  {:<24}  {}",
            d,
            "missing",
            "-",
            "-",
            "-",
            failure_of(d).unwrap_or_else(|| "tls: acme, not issued yet".into())
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The issuer's CN (or O) rather than the whole distinguished name.
fn short_issuer(dn: &str) -> String {
    let pick = |key: &str| {
        dn.split(", ")
            .find_map(|part| part.strip_prefix(key))
            .map(str::to_owned)
    };
    let s = pick("CN=")
        .or_else(|| pick("O="))
        .unwrap_or_else(|| dn.to_owned());
    s.chars().take(24).collect()
}
