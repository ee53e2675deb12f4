//! The audit vocabulary (DESIGN §5): every kind of action vsa records.
//!
//! One variant per action; its name in the audit log is [`EventKind::as_str`].
//! The engine emits them (audit line, log line and metric together); the
//! plan's steps name them, so that a dry run and an apply say the same.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EventKind {
    VhostWrite,
    VhostDelete,
    HtpasswdWrite,
    HtpasswdDelete,
    AccessLogCreate,
    /// A site's files could not be put in place (a write failed, or the
    /// host lacks what they need).
    SiteApply,
    /// nginx -t rejected a site: its previous files are back.
    SiteIsolate,
    /// A file could not be put back as it was after a failure.
    SiteRollback,
    NginxTest,
    NginxReload,
    NetworkCreate,
    ContainerCreate,
    ContainerRecreate,
    ContainerAdopt,
    ContainerStart,
    ContainerDelete,
    CertIssue,
    CertRenew,
    CertDelete,
    AcmeAccount,
    CommitRefuse,
    DriftSeen,
}

impl EventKind {
    pub const ALL: [EventKind; 22] = [
        EventKind::VhostWrite,
        EventKind::VhostDelete,
        EventKind::HtpasswdWrite,
        EventKind::HtpasswdDelete,
        EventKind::AccessLogCreate,
        EventKind::SiteApply,
        EventKind::SiteIsolate,
        EventKind::SiteRollback,
        EventKind::NginxTest,
        EventKind::NginxReload,
        EventKind::NetworkCreate,
        EventKind::ContainerCreate,
        EventKind::ContainerRecreate,
        EventKind::ContainerAdopt,
        EventKind::ContainerStart,
        EventKind::ContainerDelete,
        EventKind::CertIssue,
        EventKind::CertRenew,
        EventKind::CertDelete,
        EventKind::AcmeAccount,
        EventKind::CommitRefuse,
        EventKind::DriftSeen,
    ];

    /// The action as the audit log names it (contract).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::VhostWrite => "vhost.write",
            EventKind::VhostDelete => "vhost.delete",
            EventKind::HtpasswdWrite => "htpasswd.write",
            EventKind::HtpasswdDelete => "htpasswd.delete",
            EventKind::AccessLogCreate => "access_log.create",
            EventKind::SiteApply => "site.apply",
            EventKind::SiteIsolate => "site.isolate",
            EventKind::SiteRollback => "site.rollback",
            EventKind::NginxTest => "nginx.test",
            EventKind::NginxReload => "nginx.reload",
            EventKind::NetworkCreate => "network.create",
            EventKind::ContainerCreate => "container.create",
            EventKind::ContainerRecreate => "container.recreate",
            EventKind::ContainerAdopt => "container.adopt",
            EventKind::ContainerStart => "container.start",
            EventKind::ContainerDelete => "container.delete",
            EventKind::CertIssue => "cert.issue",
            EventKind::CertRenew => "cert.renew",
            EventKind::CertDelete => "cert.delete",
            EventKind::AcmeAccount => "acme.account",
            EventKind::CommitRefuse => "commit.refuse",
            EventKind::DriftSeen => "drift.seen",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_parse_back() {
        let names: std::collections::BTreeSet<&str> =
            EventKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), EventKind::ALL.len());
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
    }
}
