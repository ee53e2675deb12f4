//! Certificates as vsa sees them: what was read off a certificate on disk,
//! and how close it is to expiring (DESIGN §7: valid, warning ≤ 30 days,
//! critical ≤ 14 days, expired).

use serde::{Deserialize, Serialize};

/// Days left at or under which a certificate is a warning.
pub const WARNING_DAYS: i64 = 30;
/// Days left at or under which a certificate is critical.
pub const CRITICAL_DAYS: i64 = 14;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertStatus {
    Valid,
    Warning,
    Critical,
    Expired,
}

impl CertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CertStatus::Valid => "valid",
            CertStatus::Warning => "warning",
            CertStatus::Critical => "critical",
            CertStatus::Expired => "expired",
        }
    }
}

/// Whole days from `now` to `not_after` (negative once expired), both in
/// seconds since the Unix epoch. A certificate with 10.5 days left has 10.
pub fn days_left(not_after: i64, now: i64) -> i64 {
    (not_after - now).div_euclid(86_400)
}

/// The status of a certificate that expires at `not_after`, seen at `now`.
pub fn classify(not_after: i64, now: i64) -> CertStatus {
    if not_after <= now {
        return CertStatus::Expired;
    }
    match days_left(not_after, now) {
        d if d <= CRITICAL_DAYS => CertStatus::Critical,
        d if d <= WARNING_DAYS => CertStatus::Warning,
        _ => CertStatus::Valid,
    }
}

/// What vsa read off `live/<domain>/fullchain.pem` (the leaf) and
/// `privkey.pem`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertInfo {
    /// The directory name under `live/`.
    pub domain: String,
    pub subject: String,
    /// DNS names of the subjectAltName extension.
    pub sans: Vec<String>,
    pub issuer: String,
    /// Hex, as `openssl x509 -serial` prints it.
    pub serial: String,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    pub days_left: i64,
    pub status: CertStatus,
    /// Whether `privkey.pem` holds the certificate's key; `None` when the
    /// key could not be read.
    pub key_matches: Option<bool>,
    /// Why the files could not be read or parsed (then the fields above
    /// are empty, and the status is `expired`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl CertInfo {
    /// The certificate a converged host holds for `domain` and `names`,
    /// fresh at time 0: for planning without a host (pull-request review).
    pub fn steady(domain: &str, names: Vec<String>) -> CertInfo {
        CertInfo {
            domain: domain.to_owned(),
            subject: format!("CN={domain}"),
            sans: names,
            issuer: String::new(),
            serial: String::new(),
            not_before: 0,
            not_after: 90 * 86_400,
            days_left: 90,
            status: CertStatus::Valid,
            key_matches: Some(true),
            error: None,
        }
    }

    /// Whether the certificate names `name` (exactly, or by a `*.` wildcard
    /// one label deep).
    pub fn covers(&self, name: &str) -> bool {
        self.sans.iter().any(|san| {
            san.eq_ignore_ascii_case(name)
                || san.strip_prefix("*.").is_some_and(|base| {
                    name.split_once('.')
                        .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(base))
                })
        })
    }

    /// Usable for serving: parsed, not expired, key matches.
    pub fn usable(&self) -> bool {
        self.error.is_none() && self.status != CertStatus::Expired && self.key_matches == Some(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    #[test]
    fn classification_at_the_edges() {
        let now = 1_800_000_000;
        for (left, want) in [
            (60 * DAY, CertStatus::Valid),
            (31 * DAY, CertStatus::Valid),
            (30 * DAY + 5, CertStatus::Warning),
            (20 * DAY, CertStatus::Warning),
            (15 * DAY, CertStatus::Warning),
            (14 * DAY + 5, CertStatus::Critical),
            (10 * DAY, CertStatus::Critical),
            (1, CertStatus::Critical),
            (0, CertStatus::Expired),
            (-DAY, CertStatus::Expired),
        ] {
            assert_eq!(classify(now + left, now), want, "{left} s left");
        }
        assert_eq!(days_left(now - 1, now), -1);
        assert_eq!(days_left(now + DAY + DAY / 2, now), 1);
    }

    #[test]
    fn wildcards_cover_one_label() {
        let c = CertInfo {
            domain: "example.com".into(),
            subject: String::new(),
            sans: vec!["example.com".into(), "*.example.com".into()],
            issuer: String::new(),
            serial: String::new(),
            not_before: 0,
            not_after: 0,
            days_left: 0,
            status: CertStatus::Valid,
            key_matches: Some(true),
            error: None,
        };
        assert!(c.covers("example.com"));
        assert!(c.covers("WWW.example.com"));
        assert!(!c.covers("a.b.example.com"));
        assert!(!c.covers("example.org"));
    }
}
