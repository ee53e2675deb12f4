//! Typed events: every action vsa takes is one [`Event`], and emitting it
//! writes the audit line, a tracing line and the action metric together
//! (the shape of Vector's internal events). Nothing in the engine records
//! an action any other way.

use std::collections::BTreeMap;
use std::sync::Mutex;

use vsa_core::event::EventKind;
use vsa_store::audit::{AuditError, AuditLog};
use vsa_store::{NewEvent, Outcome};

/// One action and how it went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub target: String,
    pub outcome: Outcome,
    pub detail: String,
}

impl Event {
    pub fn new(
        kind: EventKind,
        target: impl Into<String>,
        outcome: Outcome,
        detail: impl Into<String>,
    ) -> Event {
        Event {
            kind,
            target: target.into(),
            outcome,
            detail: detail.into(),
        }
    }

    pub fn ok(kind: EventKind, target: impl Into<String>, detail: impl Into<String>) -> Event {
        Event::new(kind, target, Outcome::Ok, detail)
    }

    pub fn error(kind: EventKind, target: impl Into<String>, detail: impl Into<String>) -> Event {
        Event::new(kind, target, Outcome::Error, detail)
    }

    pub fn skipped(kind: EventKind, target: impl Into<String>, detail: impl Into<String>) -> Event {
        Event::new(kind, target, Outcome::Skipped, detail)
    }

    /// Writes the audit line (under `commit`), logs it and counts it. The
    /// audit line comes first: an action that cannot be audited is not
    /// logged as done.
    pub fn emit(self, audit: &mut AuditLog, commit: Option<&str>) -> Result<(), AuditError> {
        let Event {
            kind,
            target,
            outcome,
            detail,
        } = self;
        audit.record(
            commit,
            NewEvent::new(kind.as_str(), target.as_str(), outcome, detail.as_str()),
        )?;
        match outcome {
            Outcome::Error => {
                tracing::warn!(action = kind.as_str(), target = %target, outcome = outcome.as_str(), detail = %detail, commit = ?commit, "action failed")
            }
            _ => {
                tracing::debug!(action = kind.as_str(), target = %target, outcome = outcome.as_str(), detail = %detail, commit = ?commit, "action")
            }
        }
        count(kind, outcome);
        Ok(())
    }
}

static ACTIONS: Mutex<BTreeMap<(EventKind, &'static str), u64>> = Mutex::new(BTreeMap::new());

fn count(kind: EventKind, outcome: Outcome) {
    let mut m = ACTIONS.lock().unwrap_or_else(|e| e.into_inner());
    *m.entry((kind, outcome.as_str())).or_default() += 1;
}

/// Actions emitted by this process so far, by kind and outcome
/// (`vsa_actions_total`).
pub fn action_counts() -> Vec<(EventKind, &'static str, u64)> {
    let m = ACTIONS.lock().unwrap_or_else(|e| e.into_inner());
    m.iter().map(|(&(k, o), &n)| (k, o, n)).collect()
}
