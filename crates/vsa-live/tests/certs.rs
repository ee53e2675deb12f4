//! Certificates generated with rcgen, laid out as certbot does (`live/`
//! symlinks into `archive/`), read back and classified.

use std::path::Path;

use rcgen::{CertificateParams, KeyPair};
use time::{Duration, OffsetDateTime};
use vsa_core::certs::CertStatus;

/// Writes a certificate for `names` valid until `days` from now (issued 30
/// days before that, at least), with `key` (or its own key).
fn certbot_cert(
    root: &Path,
    domain: &str,
    names: &[&str],
    days: i64,
    key: Option<&KeyPair>,
) -> KeyPair {
    let own = KeyPair::generate().unwrap();
    let signing = key.unwrap_or(&own);
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let now = OffsetDateTime::now_utc();
    params.not_after = now + Duration::days(days) + Duration::hours(1);
    params.not_before = params.not_after - Duration::days(90);
    let cert = params.self_signed(signing).unwrap();
    let archive = root.join("archive").join(domain);
    let live = root.join("live").join(domain);
    std::fs::create_dir_all(&archive).unwrap();
    std::fs::create_dir_all(&live).unwrap();
    std::fs::write(archive.join("fullchain1.pem"), cert.pem()).unwrap();
    // The key on disk is the certificate's own, unless the test wants a
    // mismatch (then `own`, which did not sign).
    let key_on_disk = if key.is_some() { &own } else { signing };
    std::fs::write(archive.join("privkey1.pem"), key_on_disk.serialize_pem()).unwrap();
    for (link, target) in [
        ("fullchain.pem", "fullchain1.pem"),
        ("privkey.pem", "privkey1.pem"),
    ] {
        std::os::unix::fs::symlink(
            Path::new("../../archive").join(domain).join(target),
            live.join(link),
        )
        .unwrap();
    }
    own
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

#[test]
fn classifies_by_days_left_and_reads_names() {
    let dir = tempfile::tempdir().unwrap();
    for (domain, days) in [
        ("d60.example", 60),
        ("d20.example", 20),
        ("d10.example", 10),
        ("dm1.example", -1),
    ] {
        certbot_cert(
            dir.path(),
            domain,
            &[domain, &format!("www.{domain}")],
            days,
            None,
        );
    }
    std::fs::write(dir.path().join("live/README"), "certbot's note\n").unwrap();
    let certs = vsa_live::certs::observe(dir.path(), now()).unwrap();
    let got: Vec<(&str, i64, CertStatus)> = certs
        .iter()
        .map(|c| (c.domain.as_str(), c.days_left, c.status))
        .collect();
    assert_eq!(
        got,
        vec![
            ("d10.example", 10, CertStatus::Critical),
            ("d20.example", 20, CertStatus::Warning),
            ("d60.example", 60, CertStatus::Valid),
            ("dm1.example", -1, CertStatus::Expired),
        ]
    );
    let c = &certs[2];
    assert_eq!(c.sans, ["d60.example", "www.d60.example"]);
    assert!(c.covers("www.d60.example") && !c.covers("x.d60.example"));
    assert_eq!(c.key_matches, Some(true));
    assert!(c.error.is_none());
    assert!(!c.serial.is_empty() && c.serial.chars().all(|ch| ch.is_ascii_hexdigit()));
    assert!(c.not_after - c.not_before >= 89 * 86_400);
    assert!(c.usable() && !certs[3].usable());
}

#[test]
fn a_key_that_is_not_the_certificates_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let other = KeyPair::generate().unwrap();
    certbot_cert(
        dir.path(),
        "mismatch.example",
        &["mismatch.example"],
        60,
        Some(&other),
    );
    let certs = vsa_live::certs::observe(dir.path(), now()).unwrap();
    assert_eq!(certs[0].key_matches, Some(false));
    assert_eq!(certs[0].status, CertStatus::Valid);
    assert!(!certs[0].usable());
}

#[test]
fn unreadable_files_are_reported_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live/broken.example");
    std::fs::create_dir_all(&live).unwrap();
    std::fs::write(live.join("fullchain.pem"), "not a certificate\n").unwrap();
    std::fs::create_dir_all(dir.path().join("live/empty.example")).unwrap();
    let certs = vsa_live::certs::observe(dir.path(), now()).unwrap();
    assert_eq!(certs.len(), 2);
    assert!(
        certs[0].error.as_deref().unwrap().contains("fullchain.pem"),
        "{:?}",
        certs[0]
    );
    assert!(
        certs[1].error.as_deref().unwrap().contains("fullchain.pem"),
        "{:?}",
        certs[1]
    );
    assert!(
        certs
            .iter()
            .all(|c| c.status == CertStatus::Expired && !c.usable())
    );
    // No letsencrypt dir at all: nothing, not an error.
    assert!(
        vsa_live::certs::observe(&dir.path().join("nope"), now())
            .unwrap()
            .is_empty()
    );
}
