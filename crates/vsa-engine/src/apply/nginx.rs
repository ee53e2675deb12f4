//! nginx's test and reload, confirmed by vsa's probe (converged means
//! served).

use vsa_core::event::EventKind;
use vsa_core::plan::ResourceId;
use vsa_live::nginx::NginxError;

use super::{ApplyError, Ctx, Run};
use crate::events::Event;

pub(super) fn err_line(e: &NginxError) -> String {
    match e {
        NginxError::Failed { first_error, .. } => first_error.clone(),
        other => other.to_string(),
    }
}

/// Tests and reloads nginx for what changed outside its config since the
/// last reload (a renewed certificate, a recreated container).
pub(super) async fn owed_reload(cx: &mut Ctx<'_>, run: &mut Run) -> Result<(), ApplyError> {
    let why = "certificate renewed, container recreated or configuration not yet served".to_owned();
    // A generation of its own, so that the probe tells this reload's
    // configuration from the one before.
    if let Err(e) = vsa_live::nginx::stamp_generation(
        &cx.config.paths.vhosts,
        &vsa_live::nginx::new_generation(),
    ) {
        let line = format!("cannot stamp the http-context file: {e}");
        cx.emit(Event::error(EventKind::NginxReload, "nginx", &line))?;
        run.failed
            .transient(ResourceId::nginx(), format!("reload failed: {line}"));
        return Ok(());
    }
    reload(cx, run, why, true).await
}

/// Reloads nginx (after `nginx -t` when `test_first`; a pass has tested
/// already) and audits it. A failure is nginx's, not the apply's.
pub(super) async fn reload(
    cx: &mut Ctx<'_>,
    run: &mut Run,
    why: String,
    test_first: bool,
) -> Result<(), ApplyError> {
    run.report.reload_owed = false;
    let tested = if test_first {
        cx.nginx.test().await
    } else {
        Ok(())
    };
    // Converged means served: the reload counts once nginx is seen
    // serving the configuration on disk, by the generation it carries.
    let generation = vsa_live::nginx::generation_on_disk(&cx.config.paths.vhosts);
    let result = match tested {
        Ok(()) => cx.nginx.reload_and_confirm(generation.as_deref()).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {
            run.report.reloads += 1;
            let detail = match generation {
                Some(g) => format!("{why}; nginx serves configuration {g}"),
                None => why,
            };
            cx.emit(Event::ok(EventKind::NginxReload, "nginx", detail))?;
        }
        Err(e) => {
            let line = err_line(&e);
            cx.emit(Event::error(EventKind::NginxReload, "nginx", &line))?;
            // A port in use, a certificate nginx cannot load: the host may
            // change under it, so it is tried again after a while.
            run.failed
                .transient(ResourceId::nginx(), format!("reload failed: {line}"));
        }
    }
    Ok(())
}
