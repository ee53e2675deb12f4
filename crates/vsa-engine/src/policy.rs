//! The error policy of the reconcile loop, as kube-runtime shapes it: a
//! failure is classified, and the class decides when the resource is tried
//! again.
//!
//! - **Transient** (the Docker engine or the CA not answering, a reload
//!   that did not take): exponential backoff, from `base` doubling to
//!   `cap`.
//! - **Permanent** (nginx rejects this vhost, no such image): not tried
//!   again until what the plan asks of that resource changes, or the host
//!   around it does (a file vsa does not own in the vhost directory).
//!
//! Either way, a new desired state for a resource clears its failure at
//! once: a pushed fix never waits out the broken version's backoff. Time
//! is `tokio::time`'s, so tests pause and advance it.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::time::Duration;

use tokio::time::Instant;
use vsa_core::Observed;
use vsa_core::plan::{Plan, ResourceId};

use crate::apply::{Failure, FailureClass};

/// One resource's standing failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Standing {
    pub error: String,
    pub class: FailureClass,
    /// Failures in a row.
    pub failures: u32,
    /// Transient: when it may be tried again.
    pub until: Instant,
    /// What the plan asked of it when it failed, and of the host.
    fingerprint: u64,
    host: u64,
}

#[derive(Debug)]
pub struct ErrorPolicy {
    base: Duration,
    cap: Duration,
    standing: BTreeMap<ResourceId, Standing>,
}

impl ErrorPolicy {
    pub fn new(base: Duration, cap: Duration) -> ErrorPolicy {
        ErrorPolicy {
            base,
            cap,
            standing: BTreeMap::new(),
        }
    }

    /// The wait after `failures` transient failures in a row.
    pub fn backoff(&self, failures: u32) -> Duration {
        self.base
            .saturating_mul(1 << failures.saturating_sub(1).min(16))
            .min(self.cap)
    }

    /// The resources of `plan` not to touch now. A failure whose resource
    /// the plan now asks something else of, or whose host changed, is
    /// forgotten: that resource is tried at once.
    pub fn hold(&mut self, plan: &Plan, host: u64, now: Instant) -> BTreeSet<ResourceId> {
        self.standing
            .retain(|id, s| s.fingerprint == plan.fingerprint_of(id) && s.host == host);
        self.standing
            .iter()
            .filter(|(_, s)| s.class == FailureClass::Permanent || s.until > now)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Records an apply: each failure against `after` (the plan as the
    /// apply left the host), and what was tried (`tried`: not held) and
    /// did not fail is healthy again.
    pub fn record(
        &mut self,
        tried: impl Fn(&ResourceId) -> bool,
        failures: &[Failure],
        after: &Plan,
        host: u64,
        now: Instant,
    ) {
        let failed: BTreeSet<&ResourceId> = failures.iter().map(|f| &f.id).collect();
        self.standing
            .retain(|id, _| failed.contains(id) || !tried(id));
        for f in failures {
            let failures = self.standing.get(&f.id).map_or(0, |s| s.failures) + 1;
            let until = now + self.backoff(failures);
            self.standing.insert(
                f.id.clone(),
                Standing {
                    error: f.error.clone(),
                    class: f.class,
                    failures,
                    until,
                    fingerprint: after.fingerprint_of(&f.id),
                    host,
                },
            );
        }
    }

    /// When the next transient backoff runs out, if any.
    pub fn next_retry(&self) -> Option<Instant> {
        self.standing
            .values()
            .filter(|s| s.class == FailureClass::Transient)
            .map(|s| s.until)
            .min()
    }

    pub fn standing(&self) -> impl Iterator<Item = (&ResourceId, &Standing)> {
        self.standing.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.standing.is_empty()
    }

    pub fn clear(&mut self) {
        self.standing.clear();
    }
}

/// A digest of what vsa observes of the host but does not own: files in
/// the vhost and htpasswd directories without vsa's header. A permanent
/// failure may come from them (a hand-made vhost nginx rejects together
/// with vsa's), so their change is worth another try.
pub fn host_fingerprint(observed: &Observed) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (name, f) in observed.vhosts.iter().chain(&observed.htpasswd) {
        if !f.managed {
            (name, &f.content).hash(&mut h);
        }
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vsa_core::plan::{Action, Change, Op, ResourceKind, Summary};

    fn plan(changes: Vec<Change>) -> Plan {
        Plan {
            host: "vps-01".into(),
            commit: None,
            changes,
            summary: Summary::default(),
            unmanaged: Vec::new(),
            conflicts: Vec::new(),
            reload: None,
        }
    }

    fn vhost(name: &str, content: &str) -> Change {
        Change {
            kind: ResourceKind::Vhost,
            name: name.into(),
            action: Action::Create,
            reason: "missing".into(),
            diff: Some(format!("+{content}")),
            file: Some(format!("{name}.conf")),
            op: Op::WriteFile {
                content: content.into(),
            },
        }
    }

    fn failure(name: &str, class: FailureClass) -> Failure {
        Failure {
            id: ResourceId::site(name),
            error: "rejected".into(),
            class,
        }
    }

    const BASE: Duration = Duration::from_secs(2);
    const CAP: Duration = Duration::from_secs(600);

    #[tokio::test(start_paused = true)]
    async fn transient_failures_back_off_exponentially_up_to_the_cap() {
        let mut p = ErrorPolicy::new(BASE, CAP);
        let broken = plan(vec![vhost("a", "x")]);
        let id = ResourceId::site("a");
        let mut waits = Vec::new();
        for _ in 0..12 {
            assert!(p.hold(&broken, 0, Instant::now()).is_empty(), "due again");
            p.record(
                |_| true,
                &[failure("a", FailureClass::Transient)],
                &broken,
                0,
                Instant::now(),
            );
            let wait = p.next_retry().unwrap() - Instant::now();
            waits.push(wait.as_secs());
            // Held until the backoff runs out, not a moment longer.
            tokio::time::advance(wait - Duration::from_millis(1)).await;
            assert!(p.hold(&broken, 0, Instant::now()).contains(&id));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(waits, [2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600, 600]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_desired_state_clears_the_backoff_at_once() {
        let mut p = ErrorPolicy::new(BASE, CAP);
        let broken = plan(vec![vhost("a", "broken"), vhost("b", "fine")]);
        for _ in 0..8 {
            tokio::time::advance(
                p.next_retry()
                    .map_or(Duration::ZERO, |t| t - Instant::now()),
            )
            .await;
            p.hold(&broken, 0, Instant::now());
            p.record(
                |_| true,
                &[failure("a", FailureClass::Transient)],
                &broken,
                0,
                Instant::now(),
            );
        }
        // Minutes of failure: the next try is minutes away...
        assert!(p.next_retry().unwrap() - Instant::now() >= Duration::from_secs(256));
        assert!(
            p.hold(&broken, 0, Instant::now())
                .contains(&ResourceId::site("a"))
        );
        // ...until the commit that fixes it: tried now.
        let fixed = plan(vec![vhost("a", "fixed"), vhost("b", "fine")]);
        assert!(p.hold(&fixed, 0, Instant::now()).is_empty());
        assert!(p.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failures_wait_for_a_change_not_for_time() {
        let mut p = ErrorPolicy::new(BASE, CAP);
        let broken = plan(vec![vhost("a", "broken")]);
        p.record(
            |_| true,
            &[failure("a", FailureClass::Permanent)],
            &broken,
            7,
            Instant::now(),
        );
        assert_eq!(p.next_retry(), None, "no timer for a permanent failure");
        tokio::time::advance(Duration::from_secs(86_400)).await;
        assert!(
            p.hold(&broken, 7, Instant::now())
                .contains(&ResourceId::site("a"))
        );
        // The host around it changed (a hand-made file): worth a try.
        assert!(p.hold(&broken, 8, Instant::now()).is_empty());
        // So is a change of the resource itself.
        p.record(
            |_| true,
            &[failure("a", FailureClass::Permanent)],
            &broken,
            8,
            Instant::now(),
        );
        let fixed = plan(vec![vhost("a", "fixed")]);
        assert!(p.hold(&fixed, 8, Instant::now()).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn success_clears_only_what_was_tried() {
        let mut p = ErrorPolicy::new(BASE, CAP);
        let both = plan(vec![vhost("a", "x"), vhost("b", "y")]);
        p.record(
            |_| true,
            &[
                failure("a", FailureClass::Permanent),
                failure("b", FailureClass::Transient),
            ],
            &both,
            0,
            Instant::now(),
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        let hold = p.hold(&both, 0, Instant::now());
        assert_eq!(hold, BTreeSet::from([ResourceId::site("a")]));
        // b was tried (not held) and worked; a was held, so it stands.
        p.record(|id| !hold.contains(id), &[], &both, 0, Instant::now());
        let left: Vec<&ResourceId> = p.standing().map(|(id, _)| id).collect();
        assert_eq!(left, [&ResourceId::site("a")]);
    }

    #[test]
    fn ids_keep_kinds_apart() {
        // A network called nginx is not nginx.
        assert_ne!(ResourceId::network("nginx"), ResourceId::nginx());
        let mut p = ErrorPolicy::new(BASE, CAP);
        let empty = plan(Vec::new());
        p.record(
            |_| true,
            &[Failure {
                id: ResourceId::network("nginx"),
                error: "x".into(),
                class: FailureClass::Permanent,
            }],
            &empty,
            0,
            Instant::now(),
        );
        assert!(
            !p.hold(&empty, 0, Instant::now())
                .contains(&ResourceId::nginx())
        );
    }
}
