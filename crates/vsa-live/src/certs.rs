//! Certificates on disk in certbot's layout (`live/<domain>/fullchain.pem`
//! and `privkey.pem`), read with x509-parser: names, issuer, serial,
//! validity, and whether the private key belongs to the certificate.

use std::path::Path;

use vsa_core::certs::{CertInfo, CertStatus, classify, days_left};
use x509_parser::prelude::*;

/// Every certificate under `letsencrypt/live/`, seen at `now` (seconds
/// since the Unix epoch), sorted by domain. A directory whose files cannot
/// be read or parsed is reported with `error` set, never skipped.
pub fn observe(letsencrypt: &Path, now: i64) -> std::io::Result<Vec<CertInfo>> {
    let live = letsencrypt.join("live");
    let rd = match std::fs::read_dir(&live) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // certbot keeps a README next to the domain directories.
        if name.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        out.push(read(&entry.path(), &name, now));
    }
    out.sort_by(|a, b| a.domain.cmp(&b.domain));
    Ok(out)
}

/// A serial number as hex, as openssl and the CAs print it: without the
/// leading zero byte DER adds to keep a number with its high bit set
/// positive.
fn serial_hex(raw: &[u8]) -> String {
    let mut bytes = raw;
    while bytes.len() > 1 && bytes[0] == 0 {
        bytes = &bytes[1..];
    }
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// The certificate of one `live/<domain>` directory.
pub fn read(dir: &Path, domain: &str, now: i64) -> CertInfo {
    let chain = std::fs::read(dir.join("fullchain.pem"));
    let key = std::fs::read_to_string(dir.join("privkey.pem"));
    match chain {
        Ok(chain) => match parse(&chain, key.ok().as_deref(), domain, now) {
            Ok(info) => info,
            Err(e) => broken(domain, format!("fullchain.pem: {e}")),
        },
        Err(e) => broken(domain, format!("fullchain.pem: {e}")),
    }
}

fn broken(domain: &str, error: String) -> CertInfo {
    CertInfo {
        domain: domain.to_owned(),
        subject: String::new(),
        sans: Vec::new(),
        issuer: String::new(),
        serial: String::new(),
        not_before: 0,
        not_after: 0,
        days_left: 0,
        status: CertStatus::Expired,
        key_matches: None,
        error: Some(error),
    }
}

/// Parses the first (leaf) certificate of a PEM chain.
pub fn parse(
    chain: &[u8],
    key_pem: Option<&str>,
    domain: &str,
    now: i64,
) -> Result<CertInfo, String> {
    let (_, pem) = parse_x509_pem(chain).map_err(|e| format!("not PEM: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let sans = match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    let spki = cert.public_key().raw;
    let key_matches = key_pem.map(|pem| key_spki(pem).is_some_and(|k| k == spki));
    Ok(CertInfo {
        domain: domain.to_owned(),
        subject: cert.subject().to_string(),
        sans,
        issuer: cert.issuer().to_string(),
        serial: serial_hex(cert.raw_serial()),
        not_before,
        not_after,
        days_left: days_left(not_after, now),
        status: classify(not_after, now),
        key_matches,
        error: None,
    })
}

/// The SubjectPublicKeyInfo (DER) of a PEM private key in PKCS#8 form
/// (`BEGIN PRIVATE KEY`, what certbot and vsa write); `None` for other forms.
fn key_spki(pem: &str) -> Option<Vec<u8>> {
    use rcgen::PublicKeyData;
    let key = rcgen::KeyPair::from_pem(pem).ok()?;
    Some(key.subject_public_key_info())
}

#[cfg(test)]
mod tests {
    #[test]
    fn serials_print_as_openssl_prints_them() {
        assert_eq!(super::serial_hex(&[0x00, 0xC5, 0x45]), "C545");
        assert_eq!(super::serial_hex(&[0x01, 0x00]), "0100");
        assert_eq!(super::serial_hex(&[0x00]), "00");
    }
}
