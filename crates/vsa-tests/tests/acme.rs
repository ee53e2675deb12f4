//! Certificates from Pebble (Let's Encrypt's test CA) over ACME HTTP-01,
//! with Debian's real nginx serving the challenges and then the sites over
//! HTTPS on loopback.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use vsa_tests::host::Host;
use vsa_tests::pebble::Pebble;
use vsa_tests::{Upstream, http_get_until, require};

vsa_tests::child_entry_points!();

fn nginx() -> Option<PathBuf> {
    require("nginx", "to serve the ACME challenges and the sites")
}

/// A host whose nginx also listens for HTTPS, and a Pebble validating on
/// its HTTP port.
fn host_with_pebble(extra_acme: &str) -> Option<(Host, Pebble, u16)> {
    let bin = nginx()?;
    let h = Host::new(bin);
    let pebble = Pebble::start(h.http_port)?;
    let https_port = h.https_port;
    h.configure(&format!(
        "repo: {{ path: repo }}\nacme:\n  directory: {}\n  ca_bundle: {}\n{extra_acme}",
        pebble.directory,
        pebble.ca_bundle.display()
    ));
    Some((h, pebble, https_port))
}

fn tls_site(h: &Host, domain: &str, aliases: &[&str], up: &Upstream) {
    let aliases = if aliases.is_empty() {
        String::new()
    } else {
        format!("aliases: [{}]\n", aliases.join(", "))
    };
    std::fs::write(
        h.repo.join("sites").join(format!("{domain}.yaml")),
        format!(
            "apiVersion: vsa/v1\nkind: Site\nhost: test-01\ndomain: {domain}\ntls: acme\n{aliases}upstream: {{ url: \"http://127.0.0.1:{}\" }}\n",
            up.port
        ),
    )
    .unwrap();
}

/// `curl` over HTTPS to nginx, trusting only `root`, with SNI `name`.
/// Returns (status line code, body) or curl's error.
fn https_get(port: u16, name: &str, path: &str, root: &Path) -> Result<(u16, String), String> {
    let out = Command::new("curl")
        .args(["-s", "-S", "--max-time", "10", "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(root)
        .arg("--resolve")
        .arg(format!("{name}:{port}:127.0.0.1"))
        .arg(format!("https://{name}:{port}{path}"))
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    Ok((code.trim().parse().unwrap(), body.to_owned()))
}

fn https_until_ok(port: u16, name: &str, root: &Path) -> (u16, String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match https_get(port, name, "/hello", root) {
            Ok(r) if r.0 == 200 => return r,
            other if std::time::Instant::now() > deadline => panic!("{name}: {other:?}"),
            _ => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
}

fn cert_of(h: &Host, domain: &str) -> vsa_core::certs::CertInfo {
    vsa_live::certs::read(
        &h.path(&format!("etc/letsencrypt/live/{domain}")),
        domain,
        0,
    )
}

#[test]
fn acme_sites_get_certificates_a_failing_one_fails_alone_and_renewal_reloads() {
    let Some((mut h, pebble, https_port)) = host_with_pebble("") else {
        return;
    };
    let up = Upstream::start("app");
    tls_site(&h, "a.vsa.test", &["www.a.vsa.test"], &up);
    tls_site(&h, "b.vsa.test", &[], &up);
    tls_site(&h, "fail.vsa.test", &[], &up);
    pebble.servfail("fail.vsa.test");
    h.start();

    // From an empty host: HTTP vhost → certificate → HTTPS vhost, one apply.
    let out = h.vsactl_child(&["apply", "--yes"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}\n{}", pebble.logs());
    assert!(stderr.contains("failed: fail.vsa.test"), "{stderr}");
    // The CA's own reason: its validation could not resolve the name.
    assert!(
        stderr.contains("could not resolve") && stderr.contains("urn:ietf:params:acme:error:"),
        "{stderr}"
    );

    let root = &pebble.issuing_root;
    for (domain, names) in [
        ("a.vsa.test", vec!["a.vsa.test", "www.a.vsa.test"]),
        ("b.vsa.test", vec!["b.vsa.test"]),
    ] {
        let c = cert_of(&h, domain);
        assert!(c.error.is_none(), "{c:?}");
        assert!(c.issuer.contains("Pebble"), "{}", c.issuer);
        assert!(names.iter().all(|n| c.covers(n)), "{:?}", c.sans);
        assert_eq!(c.key_matches, Some(true));
        let key = std::fs::metadata(h.path(&format!("etc/letsencrypt/live/{domain}/privkey.pem")))
            .unwrap();
        assert_eq!(key.mode() & 0o777, 0o600);
        // Served over HTTPS with that certificate, verified against
        // Pebble's root; HTTP redirects there.
        let (code, body) = https_until_ok(https_port, domain, root);
        assert_eq!(code, 200);
        assert_eq!(body, format!("upstream=app path=/hello host={domain}\n"));
        let r = http_get_until(h.http_port, domain, "/x?y=1", &[], |r| r.status == 301);
        assert_eq!(r.status, 301);
        assert_eq!(
            r.header("location"),
            Some(format!("https://{domain}:{https_port}/x?y=1").as_str())
        );
    }
    assert!(https_get(https_port, "www.a.vsa.test", "/", root).is_ok());
    // The challenge files are gone; the failing site has HTTP only.
    let challenges = h.path("var/www/acme/.well-known/acme-challenge");
    assert_eq!(std::fs::read_dir(&challenges).map_or(0, |d| d.count()), 0);
    assert!(!h.path("etc/letsencrypt/live/fail.vsa.test").exists());
    h.nginx.test().unwrap();
    let audit = h.audit_lines();
    let issued: Vec<_> = audit
        .iter()
        .filter(|e| e["action"] == "cert.issue" && e["outcome"] == "ok")
        .map(|e| e["target"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(issued, ["a.vsa.test", "b.vsa.test"]);
    let failure = audit
        .iter()
        .find(|e| e["action"] == "cert.issue" && e["outcome"] == "error")
        .unwrap();
    assert_eq!(failure["target"], "fail.vsa.test");

    // status and certs say why.
    let out = h.vsactl_child(&["status", "--format", "json"], &[]);
    let st = vsa_tests::host::child_json(&out.stdout);
    let fail = st["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["domain"] == "fail.vsa.test")
        .unwrap()
        .clone();
    assert_eq!(fail["status"], "failed", "{st}");
    assert!(
        fail["detail"].as_str().unwrap().contains("certificate"),
        "{fail}"
    );
    let out = h.vsactl_child(&["certs", "--format", "json"], &[]);
    let certs = vsa_tests::host::child_json(&out.stdout);
    let acme_fail = &certs["acme_failures"][0];
    assert_eq!(acme_fail["domain"], "fail.vsa.test", "{certs}");
    assert!(
        acme_fail["last_error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("could not resolve")
    );

    // Immediately again: nothing issued, the failing domain is backing off
    // and the CA is not asked.
    let serials: Vec<String> = ["a.vsa.test", "b.vsa.test"]
        .iter()
        .map(|d| cert_of(&h, d).serial)
        .collect();
    let reloads = h.reloads();
    let pebble_log = pebble.request_log_len();
    let out = h.vsactl_child(&["apply", "--yes"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not asking the CA before"), "{stderr}");
    assert_eq!(pebble.request_log_len(), pebble_log, "the CA was contacted");
    assert_eq!(h.reloads(), reloads);
    assert_eq!(
        ["a.vsa.test", "b.vsa.test"]
            .map(|d| cert_of(&h, d).serial)
            .to_vec(),
        serials
    );

    // renew_before_days above the lifetime: renewed (new serials), reloaded.
    h.configure(
        &format!(
            "repo: {{ path: repo }}\nacme:\n  directory: {}\n  ca_bundle: {}\n  renew_before_days: 4000\n",
            pebble.directory,
            pebble.ca_bundle.display()
        ),
    );
    std::fs::remove_file(h.repo.join("sites/fail.vsa.test.yaml")).unwrap();
    let account = std::fs::read(h.path("var/lib/vsa/acme-account.json")).unwrap();
    assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);
    assert_eq!(
        std::fs::read(h.path("var/lib/vsa/acme-account.json")).unwrap(),
        account,
        "the account is reused"
    );
    for (d, old) in ["a.vsa.test", "b.vsa.test"].iter().zip(&serials) {
        assert_ne!(&cert_of(&h, d).serial, old, "{d} renewed");
    }
    assert_eq!(h.reloads(), reloads + 1, "one reload for the renewals");
    let renewed = cert_of(&h, "a.vsa.test").serial;
    assert_eq!(
        served_serial(https_port, "a.vsa.test", root, &renewed),
        renewed
    );
    assert!(
        h.audit_lines()
            .iter()
            .any(|e| e["action"] == "cert.renew" && e["target"] == "b.vsa.test")
    );

    // A site removed: its vhost goes, then the certificate vsa issued;
    // `vsactl diff` shows both, as the apply will do them.
    std::fs::remove_file(h.repo.join("sites/b.vsa.test.yaml")).unwrap();
    let diff = h.vsactl_child(&["diff", "--format", "json"], &[]);
    let plan = vsa_tests::host::child_json(&diff.stdout);
    let planned: Vec<(&str, &str, &str)> = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["action"].as_str().unwrap(),
                c["kind"].as_str().unwrap(),
                c["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        planned.contains(&("delete", "cert", "b.vsa.test"))
            && planned.contains(&("delete", "vhost", "b.vsa.test")),
        "{plan}"
    );
    assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);
    assert!(!h.path("etc/letsencrypt/live/b.vsa.test").exists());
    assert!(!h.path("etc/nginx/conf.d/b.vsa.test.conf").exists());
    assert!(
        h.path("etc/letsencrypt/live/a.vsa.test/fullchain.pem")
            .exists()
    );
    assert!(
        h.audit_lines()
            .iter()
            .any(|e| e["action"] == "cert.delete" && e["target"] == "b.vsa.test")
    );
    h.nginx.test().unwrap();
    assert_eq!(h.vsactl(&["audit", "--verify"]), ExitCode::SUCCESS);
    let _ = &mut h;
}

/// The serial of the certificate nginx serves for `name`, as openssl sees
/// it, once it is `expected` (old workers serve the old one for a moment
/// after a reload) or 5 s passed.
fn served_serial(port: u16, name: &str, root: &Path, expected: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl s_client -connect 127.0.0.1:{port} -servername {name} -CAfile {} </dev/null 2>/dev/null | openssl x509 -noout -serial",
                root.display()
            ))
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&out.stdout)
            .trim()
            .trim_start_matches("serial=")
            .to_uppercase();
        if s == expected || std::time::Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_valid_certbot_certificate_is_adopted_without_an_order() {
    let Some((mut h, pebble, https_port)) = host_with_pebble("") else {
        return;
    };
    let up = Upstream::start("app");
    tls_site(&h, "old.vsa.test", &[], &up);
    // What certbot left: live/ symlinks into archive/, a valid certificate.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["old.vsa.test".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "old.vsa.test");
    let cert = params.self_signed(&key).unwrap();
    let archive = h.path("etc/letsencrypt/archive/old.vsa.test");
    let live = h.path("etc/letsencrypt/live/old.vsa.test");
    std::fs::create_dir_all(&archive).unwrap();
    std::fs::create_dir_all(&live).unwrap();
    std::fs::write(archive.join("fullchain1.pem"), cert.pem()).unwrap();
    std::fs::write(archive.join("privkey1.pem"), key.serialize_pem()).unwrap();
    std::os::unix::fs::symlink(
        "../../archive/old.vsa.test/fullchain1.pem",
        live.join("fullchain.pem"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "../../archive/old.vsa.test/privkey1.pem",
        live.join("privkey.pem"),
    )
    .unwrap();
    let before = cert_of(&h, "old.vsa.test").serial;
    h.start();

    let requests = pebble.request_log_len();
    assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);
    assert_eq!(
        pebble.request_log_len(),
        requests,
        "no order for a valid certificate"
    );
    assert_eq!(cert_of(&h, "old.vsa.test").serial, before);
    assert!(!h.audit_lines().iter().any(|e| e["action"] == "cert.issue"));
    // Served with it (trusting that self-signed certificate itself).
    let pem = h.path("old.pem");
    std::fs::write(&pem, cert.pem()).unwrap();
    assert_eq!(https_until_ok(https_port, "old.vsa.test", &pem).0, 200);
    // Removing the site never deletes a certificate vsa did not issue.
    std::fs::remove_file(h.repo.join("sites/old.vsa.test.yaml")).unwrap();
    assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);
    assert!(live.join("fullchain.pem").exists());
    let _ = &mut h;
}

#[test]
fn a_site_with_auth_asks_no_password_over_plain_http_until_its_certificate_exists() {
    let Some((mut h, pebble, https_port)) = host_with_pebble("") else {
        return;
    };
    let up = Upstream::start("app");
    let hash = bcrypt::hash("pw-5", 4).unwrap();
    for domain in ["locked.vsa.test", "late.vsa.test"] {
        std::fs::write(
            h.repo.join("sites").join(format!("{domain}.yaml")),
            format!(
                "apiVersion: vsa/v1\nkind: Site\nhost: test-01\ndomain: {domain}\ntls: acme\nupstream: {{ url: \"http://127.0.0.1:{}\" }}\nauth:\n  users:\n    - name: bob\n      bcrypt: \"{hash}\"\n",
                up.port
            ),
        )
        .unwrap();
    }
    std::fs::write(
        h.repo.join("fleet.yaml"),
        "apiVersion: vsa/v1\nkind: Fleet\nacme:\n  email: ops@vsa.test\nhosts:\n  - id: test-01\n",
    )
    .unwrap();
    // DNS for `late` is not pointed yet: its order fails.
    pebble.servfail("late.vsa.test");
    h.start();
    let out = h.vsactl_child(&["apply", "--yes"], &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Without a certificate: no password prompt and no proxying on port
    // 80, only the challenge location and a plain 503.
    let auth = vsa_tests::basic_auth("bob", "pw-5");
    for headers in [vec![], vec![("Authorization", auth.as_str())]] {
        let r = vsa_tests::http_get(h.http_port, "late.vsa.test", "/", &headers);
        assert_eq!(r.status, 503, "{r:?}");
        assert_eq!(r.body, "certificate pending\n");
        assert!(r.header("www-authenticate").is_none(), "{r:?}");
    }
    let r = vsa_tests::http_get(
        h.http_port,
        "late.vsa.test",
        "/.well-known/acme-challenge/none",
        &[],
    );
    assert_eq!(r.status, 404, "the challenge location is served: {r:?}");

    // With one: port 80 only redirects, and the password goes over TLS.
    let r = vsa_tests::http_get(
        h.http_port,
        "locked.vsa.test",
        "/x",
        &[("Authorization", &auth)],
    );
    assert_eq!(r.status, 301, "{r:?}");
    assert!(r.header("www-authenticate").is_none());
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-u",
            "bob:pw-5",
        ])
        .arg("--cacert")
        .arg(&pebble.issuing_root)
        .arg("--resolve")
        .arg(format!("locked.vsa.test:{https_port}:127.0.0.1"))
        .arg(format!("https://locked.vsa.test:{https_port}/"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");

    // The account was registered with the fleet's contact, and audited.
    let account = h
        .audit_lines()
        .into_iter()
        .find(|e| e["action"] == "acme.account")
        .expect("an acme.account event");
    let detail = account["detail"].as_str().unwrap();
    assert!(
        detail.contains("ops@vsa.test") && detail.contains("terms of service"),
        "{account}"
    );
    // The very terms: the link Pebble's directory publishes.
    assert!(
        !detail.contains("those the directory links to"),
        "{account}"
    );
}
