//! The daemon's Prometheus metrics, written in the text exposition format
//! by hand: a handful of series do not need a registry crate. The action
//! counts come from the typed events ([`crate::events`]).

use std::collections::BTreeMap;
use std::fmt::Write;

/// Upper bounds (seconds) of the reconcile duration histogram.
const BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Clone, Debug, Default)]
pub struct Metrics {
    reconcile_buckets: [u64; BUCKETS.len()],
    reconcile_count: u64,
    reconcile_sum: f64,
    /// Changes in the current plan.
    pub out_of_sync: usize,
    /// Apply errors by kind (`site`, `nginx`, `commit`, `fetch`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Unix time of the last reconcile that left the host in sync.
    pub last_success: Option<f64>,
    /// Unix time of the last fetch that worked (a remote followed only):
    /// a host in sync with a commit it can no longer update shows here.
    pub last_fetch: Option<f64>,
    pub commit: Option<String>,
    /// Certificate expiry (unix time) by domain.
    pub cert_expiry: BTreeMap<String, i64>,
    pub reloads: u64,
    pub drift_seen: u64,
}

impl Metrics {
    pub fn observe_reconcile(&mut self, secs: f64) {
        self.reconcile_count += 1;
        self.reconcile_sum += secs;
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.reconcile_buckets[i] += 1;
            }
        }
    }

    pub fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_owned()).or_default() += 1;
    }

    pub fn render(&self, host: &str) -> String {
        let mut o = String::new();
        let h = escape(host);
        let _ = writeln!(
            o,
            "# HELP vsa_reconcile_duration_seconds Time one reconcile took (observe, plan, apply).\n\
             # TYPE vsa_reconcile_duration_seconds histogram"
        );
        for (i, le) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                o,
                "vsa_reconcile_duration_seconds_bucket{{le=\"{le}\"}} {}",
                self.reconcile_buckets[i]
            );
        }
        let _ = writeln!(
            o,
            "vsa_reconcile_duration_seconds_bucket{{le=\"+Inf\"}} {c}\n\
             vsa_reconcile_duration_seconds_sum {}\n\
             vsa_reconcile_duration_seconds_count {c}",
            self.reconcile_sum,
            c = self.reconcile_count
        );
        let _ = writeln!(
            o,
            "# HELP vsa_resources_out_of_sync Changes in the current plan (0: in sync).\n\
             # TYPE vsa_resources_out_of_sync gauge\n\
             vsa_resources_out_of_sync{{host=\"{h}\"}} {}",
            self.out_of_sync
        );
        let _ = writeln!(
            o,
            "# HELP vsa_apply_errors_total Failures by kind: site, nginx, commit (refused), fetch, reconcile.\n\
             # TYPE vsa_apply_errors_total counter"
        );
        for kind in ["site", "nginx", "commit", "fetch", "reconcile"] {
            let n = self.errors.get(kind).copied().unwrap_or(0);
            let _ = writeln!(o, "vsa_apply_errors_total{{kind=\"{kind}\"}} {n}");
        }
        for (kind, n) in &self.errors {
            if !["site", "nginx", "commit", "fetch", "reconcile"].contains(&kind.as_str()) {
                let _ = writeln!(o, "vsa_apply_errors_total{{kind=\"{}\"}} {n}", escape(kind));
            }
        }
        let _ = writeln!(
            o,
            "# HELP vsa_nginx_reloads_total Reloads the daemon made.\n\
             # TYPE vsa_nginx_reloads_total counter\n\
             vsa_nginx_reloads_total {}",
            self.reloads
        );
        let _ = writeln!(
            o,
            "# HELP vsa_drift_seen_total Reconciles that found the host differing from the repository.\n\
             # TYPE vsa_drift_seen_total counter\n\
             vsa_drift_seen_total {}",
            self.drift_seen
        );
        let _ = writeln!(
            o,
            "# HELP vsa_last_successful_sync_timestamp_seconds When the host was last seen in sync.\n\
             # TYPE vsa_last_successful_sync_timestamp_seconds gauge"
        );
        if let Some(t) = self.last_success {
            let _ = writeln!(o, "vsa_last_successful_sync_timestamp_seconds {t:.3}");
        }
        let _ = writeln!(
            o,
            "# HELP vsa_last_successful_fetch_timestamp_seconds When the remote was last fetched (repo.url only).\n\
             # TYPE vsa_last_successful_fetch_timestamp_seconds gauge"
        );
        if let Some(t) = self.last_fetch {
            let _ = writeln!(o, "vsa_last_successful_fetch_timestamp_seconds {t:.3}");
        }
        let _ = writeln!(
            o,
            "# HELP vsa_commit_info The desired-state commit in force.\n\
             # TYPE vsa_commit_info gauge"
        );
        if let Some(c) = &self.commit {
            let _ = writeln!(
                o,
                "vsa_commit_info{{host=\"{h}\",commit=\"{}\"}} 1",
                escape(c)
            );
        }
        let _ = writeln!(
            o,
            "# HELP vsa_cert_expiry_timestamp_seconds When each domain's certificate expires.\n\
             # TYPE vsa_cert_expiry_timestamp_seconds gauge"
        );
        for (domain, t) in &self.cert_expiry {
            let _ = writeln!(
                o,
                "vsa_cert_expiry_timestamp_seconds{{domain=\"{}\"}} {t}",
                escape(domain)
            );
        }
        let _ = writeln!(
            o,
            "# HELP vsa_actions_total Actions taken (the audit log's), by action and outcome.\n\
             # TYPE vsa_actions_total counter"
        );
        for (kind, outcome, n) in crate::events::action_counts() {
            let _ = writeln!(
                o,
                "vsa_actions_total{{action=\"{kind}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        o
    }
}

/// A label value as the exposition format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_labels_escaped() {
        let mut m = Metrics::default();
        m.observe_reconcile(0.03);
        m.observe_reconcile(3.0);
        m.commit = Some("ab\"c".into());
        let text = m.render("vps-01");
        assert!(text.contains("vsa_reconcile_duration_seconds_bucket{le=\"0.025\"} 0\n"));
        assert!(text.contains("vsa_reconcile_duration_seconds_bucket{le=\"0.05\"} 1\n"));
        assert!(text.contains("vsa_reconcile_duration_seconds_bucket{le=\"5\"} 2\n"));
        assert!(text.contains("vsa_reconcile_duration_seconds_count 2\n"));
        assert!(text.contains("vsa_commit_info{host=\"vps-01\",commit=\"ab\\\"c\"} 1\n"));
    }
}
