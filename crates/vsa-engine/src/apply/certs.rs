//! Certificates: issue, renew and delete over ACME (HTTP-01 through the
//! webroot nginx serves), politely backed off per domain across runs.

use std::time::Duration;

use vsa_core::event::EventKind;
use vsa_core::plan::{Change, Op};
use vsa_live::acme::AcmeClient;
use vsa_live::files::FileMode;
use vsa_live::safe_fs::SafeDir;
use vsa_store::Outcome;

use super::{ApplyError, Ctx, Executed, Run};
use crate::events::Event;

/// How long one certificate order may take.
const ACME_TIMEOUT: Duration = Duration::from_secs(90);

fn record(
    cx: &mut Ctx<'_>,
    run: &mut Run,
    c: &Change,
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
    cx.emit(Event::new(c.event_kind(), &c.name, outcome, detail))
}

/// Issues, renews or deletes one site's certificate. Returns whether files
/// changed. Failures are the certificate's (recorded, backed off), never
/// the whole apply's.
pub(super) async fn cert_step(
    cx: &mut Ctx<'_>,
    run: &mut Run,
    c: &Change,
) -> Result<bool, ApplyError> {
    let name = c.name.as_str();
    run.report.certs_done.insert(name.to_owned());
    match &c.op {
        Op::DeleteCert => delete(cx, run, c).await,
        Op::IssueCert { names } => issue(cx, run, c, names).await,
        op => {
            let detail = format!(
                "a cert change cannot {op:?} (a plan read back from JSON carries no operations)"
            );
            record(cx, run, c, Outcome::Error, detail.clone())?;
            run.failed.permanent(c.resource(), detail);
            Ok(false)
        }
    }
}

async fn delete(cx: &mut Ctx<'_>, run: &mut Run, c: &Change) -> Result<bool, ApplyError> {
    let name = c.name.as_str();
    let live = cx.config.paths.letsencrypt.join("live").join(name);
    let result = (|| {
        let Some(live_dir) = SafeDir::open(&cx.config.paths.letsencrypt.join("live"))? else {
            return Ok(());
        };
        let Some(dir) = live_dir.sub_existing(name)? else {
            return Ok(());
        };
        for f in ["fullchain.pem", "privkey.pem"] {
            dir.remove(f)?;
        }
        live_dir.remove_empty_dir(name)?; // only when nothing else is in it
        Ok::<(), std::io::Error>(())
    })();
    match result {
        Ok(()) => {
            if let Some(store) = cx.store {
                store.forget_cert(cx.host, name).await?;
                store.clear_acme_backoff(cx.host, name).await?;
            }
            record(cx, run, c, Outcome::Ok, "deleted".into())?;
            Ok(true)
        }
        Err(e) => {
            let detail = format!("cannot remove {}: {e}", live.display());
            record(cx, run, c, Outcome::Error, detail.clone())?;
            run.failed.transient(c.resource(), detail);
            Ok(false)
        }
    }
}

async fn issue(
    cx: &mut Ctx<'_>,
    run: &mut Run,
    c: &Change,
    names: &[String],
) -> Result<bool, ApplyError> {
    let name = c.name.as_str();
    let live = cx.config.paths.letsencrypt.join("live").join(name);
    // Polite to the CA: a domain that failed waits its turn, across runs.
    let now_ms = vsa_store::time::now_millis();
    let previous = match cx.store {
        Some(store) => store.acme_backoff(cx.host, name).await?,
        None => None,
    };
    if let Some(b) = previous.as_ref().filter(|b| b.next_attempt_ms > now_ms) {
        let detail = format!(
            "not asking the CA before {} ({} failure(s)); last error: {}",
            vsa_store::time::format_millis(b.next_attempt_ms),
            b.failures,
            b.last_error
        );
        record(cx, run, c, Outcome::Skipped, detail.clone())?;
        run.failed.transient(c.resource(), detail);
        return Ok(false);
    }
    let issued = async {
        if run.acme.is_none() {
            run.acme = Some(
                AcmeClient::connect(
                    &cx.config.acme.directory,
                    cx.config.acme.ca_bundle.as_deref(),
                    &cx.config.paths.state,
                    cx.model.fleet.acme_email.as_deref(),
                )
                .await?,
            );
        }
        let client = run.acme.as_ref().expect("connected above");
        client
            .issue(names, &cx.config.paths.webroot, ACME_TIMEOUT)
            .await
    }
    .await;
    // A new account, its contact and the terms agreed to: audited once.
    if let Some(registered) = run.acme.as_mut().and_then(|a| a.registered.take()) {
        let directory = cx.config.acme.directory.clone();
        cx.emit(Event::ok(EventKind::AcmeAccount, directory, registered))?;
    }
    let written = issued.map_err(|e| e.to_string()).and_then(|i| {
        let info = vsa_live::certs::parse(
            i.chain_pem.as_bytes(),
            Some(&i.key_pem),
            name,
            now_ms / 1000,
        )
        .map_err(|e| format!("the CA sent a certificate vsa cannot read: {e}"))?;
        // The key first: a crash between the two leaves a mismatch, which
        // the next plan sees and repairs, never a certificate without key.
        SafeDir::create(&cx.config.paths.letsencrypt, 0o755)
            .and_then(|d| d.sub("live", Some(0o755)))
            .and_then(|d| d.sub(name, Some(0o755)))
            .and_then(|d| {
                d.write_atomic("privkey.pem", i.key_pem.as_bytes(), FileMode::private())?;
                d.write_atomic("fullchain.pem", i.chain_pem.as_bytes(), FileMode::public())
            })
            .map_err(|e| format!("cannot write {}: {e}", live.display()))?;
        Ok(info)
    });
    match written {
        Ok(info) => {
            run.report.issued += 1;
            if let Some(store) = cx.store {
                store
                    .record_cert(cx.host, name, &info.serial, info.not_after)
                    .await?;
                store.clear_acme_backoff(cx.host, name).await?;
            }
            let detail = format!(
                "serial {}, for {}, expires {} ({})",
                info.serial,
                names.join(" "),
                vsa_store::time::format_millis(info.not_after * 1000),
                c.reason
            );
            record(cx, run, c, Outcome::Ok, detail)?;
            Ok(true)
        }
        Err(reason) => {
            let backoff =
                vsa_store::AcmeBackoff::after_failure(name, previous.as_ref(), &reason, now_ms);
            if let Some(store) = cx.store {
                store.set_acme_backoff(cx.host, &backoff).await?;
            }
            let detail = format!(
                "{reason}; next attempt not before {}",
                vsa_store::time::format_millis(backoff.next_attempt_ms)
            );
            record(cx, run, c, Outcome::Error, detail)?;
            // The CA decides when to ask again (its own backoff above).
            run.failed
                .transient(c.resource(), format!("certificate: {reason}"));
            Ok(false)
        }
    }
}
