//! Rendered vhosts against Debian's real nginx: every variant passes
//! `nginx -t`, and requests through them reach their upstreams.

use std::path::{Path, PathBuf};
use std::process::Command;

use vsa_core::config::{Config, ConfigSource};
use vsa_core::plan::{Action, ResourceKind};
use vsa_tests::{Dns, Nginx, Upstream, basic_auth, free_port, http_get, require};

struct Host {
    _dir: tempfile::TempDir,
    root: PathBuf,
    repo: PathBuf,
    config: Config,
}

fn host(http_port: u16, https_port: u16, resolver: &str) -> Host {
    let (dir, root, repo) = vsa_tests::test_repo();
    let text = format!(
        "host: test-01\nnginx:\n  http_port: {http_port}\n  https_port: {https_port}\n  ipv6: false\n  resolver: \"{resolver}\"\n"
    );
    let config = Config::parse(&ConfigSource {
        file: "vsa.yaml",
        text: Some(&text),
        base_dir: &root,
        root: &root,
    })
    .unwrap();
    Host {
        _dir: dir,
        root,
        repo,
        config,
    }
}

fn site(repo: &Path, file: &str, yaml: &str) {
    std::fs::write(
        repo.join("sites").join(file),
        format!("apiVersion: vsa/v1\nkind: Site\nhost: test-01\n{yaml}"),
    )
    .unwrap();
}

/// Puts every planned file in place by hand, exactly as rendered (the
/// certificates are this test's own, made with openssl). Returns how many
/// file changes there were.
fn write_planned_files(h: &Host) -> usize {
    let hp = vsactl::pipeline::plan_host(&h.config, &h.repo, "test-01").expect("plan");
    let paths = &h.config.paths;
    let mut n = 0;
    for c in &hp.plan.changes {
        let dir = match c.kind {
            ResourceKind::Cert => continue,
            ResourceKind::Vhost => &paths.vhosts,
            ResourceKind::Htpasswd => &paths.htpasswd,
            ResourceKind::AccessLog => &paths.access_logs,
            other => panic!("unexpected change kind {other:?}"),
        };
        std::fs::create_dir_all(dir).unwrap();
        let file = dir.join(c.file.as_ref().unwrap());
        match c.action {
            Action::Delete => std::fs::remove_file(file).unwrap(),
            _ => std::fs::write(file, c.content().unwrap_or("")).unwrap(),
        }
        n += 1;
    }
    n
}

fn self_signed(openssl: &Path, dir: &Path, domain: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let out = Command::new(openssl)
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "90", "-subj",
        ])
        .arg(format!("/CN={domain}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{domain}"))
        .arg("-keyout")
        .arg(dir.join("privkey.pem"))
        .arg("-out")
        .arg(dir.join("fullchain.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_variant_passes_nginx_t_and_serves_its_upstream() {
    let Some(nginx_bin) = require("nginx", "to check rendered vhosts with a real nginx") else {
        return;
    };
    let Some(openssl) = require("openssl", "to make a test certificate") else {
        return;
    };
    let one = Upstream::start("one");
    let two = Upstream::start("two");
    let dns = Dns::start();
    let (http_port, https_port) = (free_port(), free_port());
    let h = host(http_port, https_port, &dns.addr.to_string());
    let hash = bcrypt::hash("s3cret pass", 4).unwrap();

    site(
        &h.repo,
        "url.yaml",
        &format!(
            "domain: url.vsa.test\nupstream: {{ url: \"http://127.0.0.1:{}\" }}\n",
            one.port
        ),
    );
    site(
        &h.repo,
        "auth.yaml",
        &format!(
            "domain: auth.vsa.test\nupstream: {{ url: \"http://127.0.0.1:{}\" }}\ntls: none\nauth:\n  realm: Test area\n  users:\n    - name: alice\n      bcrypt: \"{hash}\"\n",
            one.port
        ),
    );
    site(
        &h.repo,
        "container.yaml",
        &format!(
            "domain: container.vsa.test\nupstream: {{ container: app-web, port: {} }}\ntls: none\n",
            two.port
        ),
    );
    site(
        &h.repo,
        "ws.yaml",
        &format!(
            "domain: ws.vsa.test\naliases: [www.ws.vsa.test, alt.vsa.test]\nupstream: {{ url: \"http://127.0.0.1:{}/\" }}\ntls: none\nwebsockets: true\nrate_limit: {{ rps: 5, burst: 10 }}\nmax_body: 20m\ncsp: \"default-src 'none'; img-src 'self'\"\n",
            one.port
        ),
    );
    site(
        &h.repo,
        "plain.yaml",
        &format!(
            "domain: plain.vsa.test\nupstream: {{ url: \"http://localhost:{}\" }}\ntls: none\ncsp: \"off\"\nrate_limit: {{ rps: 7 }}\n",
            two.port
        ),
    );
    site(
        &h.repo,
        "tls.yaml",
        &format!(
            "domain: tls.vsa.test\nupstream: {{ url: \"http://127.0.0.1:{}\" }}\n",
            one.port
        ),
    );
    site(
        &h.repo,
        "tls-pending.yaml",
        &format!(
            "domain: pending.vsa.test\nupstream: {{ url: \"http://127.0.0.1:{}\" }}\n",
            one.port
        ),
    );
    site(
        &h.repo,
        "tls-auth-pending.yaml",
        &format!(
            "domain: locked.vsa.test\nupstream: {{ url: \"http://127.0.0.1:{}\" }}\nauth:\n  users:\n    - name: alice\n      bcrypt: \"{hash}\"\n",
            one.port
        ),
    );
    self_signed(
        &openssl,
        &h.config.paths.letsencrypt.join("live/tls.vsa.test"),
        "tls.vsa.test",
    );

    let written = write_planned_files(&h);
    assert!(written > 0);
    let mut nginx = Nginx::configure(
        nginx_bin,
        &h.root.join("nginx"),
        &h.config.paths.vhosts,
        http_port,
    );
    nginx
        .test()
        .expect("every rendered variant passes nginx -t");
    // gixy-ng, the nginx configuration analyzer, finds nothing of high
    // severity in any variant vsa rendered (server tokens included): only
    // vsa's files, not the test's own nginx.conf around them.
    if let Some(gixy) =
        vsa_tests::require_from("gixy", "gixy-ng (PyPI)", "to analyze the rendered config")
    {
        let conf = h.root.join("gixy.conf");
        std::fs::write(
            &conf,
            format!(
                "events {{}}\nhttp {{\n    include {}/*.conf;\n}}\n",
                h.config.paths.vhosts.display()
            ),
        )
        .unwrap();
        let out = Command::new(&gixy).arg("-lll").arg(&conf).output().unwrap();
        assert!(
            out.status.success(),
            "gixy-ng reports HIGH issues:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // At MEDIUM, only what a manifest chose: an upstream URL with a
        // path (nginx normalizes it). No `try_files` (a stat per request).
        let out = Command::new(&gixy).arg("-ll").arg(&conf).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let problems: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(">> Problem:"))
            .collect();
        assert!(
            problems
                .iter()
                .all(|p| p.contains("[proxy_pass_normalized]")),
            "{text}"
        );
    }

    // Written exactly as rendered, the host is in sync but for the
    // certificates of the `tls: acme` sites that have none (this test
    // issues nothing; the certificate it made is adopted as it is).
    let again = vsactl::pipeline::plan_host(&h.config, &h.repo, "test-01").unwrap();
    assert!(
        again
            .plan
            .changes
            .iter()
            .all(|c| c.kind == ResourceKind::Cert
                && c.action == Action::Create
                && c.name != "tls.vsa.test"),
        "{:#?}",
        again.plan.changes
    );
    assert!(again.plan.conflicts.is_empty());

    nginx.start(http_port);

    let r = http_get(http_port, "url.vsa.test", "/hello", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "upstream=one path=/hello host=url.vsa.test\n");
    assert_eq!(r.header("X-Frame-Options"), Some("DENY"));
    assert_eq!(r.header("X-Content-Type-Options"), Some("nosniff"));
    assert!(
        r.header("Content-Security-Policy")
            .is_some_and(|v| v.contains("frame-ancestors 'none'"))
    );

    // Basic auth: 401 without or with a wrong password, 200 with the right one.
    let r = http_get(http_port, "auth.vsa.test", "/", &[]);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("WWW-Authenticate"),
        Some("Basic realm=\"Test area\"")
    );
    let wrong = basic_auth("alice", "nope");
    assert_eq!(
        http_get(
            http_port,
            "auth.vsa.test",
            "/",
            &[("Authorization", &wrong)]
        )
        .status,
        401
    );
    let right = basic_auth("alice", "s3cret pass");
    let r = http_get(
        http_port,
        "auth.vsa.test",
        "/private",
        &[("Authorization", &right)],
    );
    assert_eq!(r.status, 200, "{r:?}\n{}", nginx.error_log());
    assert_eq!(r.body, "upstream=one path=/private host=auth.vsa.test\n");

    // The ACME challenge is served from the webroot, even behind auth.
    let challenge = h.config.paths.webroot.join(".well-known/acme-challenge");
    std::fs::create_dir_all(&challenge).unwrap();
    std::fs::write(challenge.join("tok123"), "tok123.thumb").unwrap();
    let r = http_get(
        http_port,
        "auth.vsa.test",
        "/.well-known/acme-challenge/tok123",
        &[],
    );
    assert_eq!((r.status, r.body.as_str()), (200, "tok123.thumb"));

    // A container upstream is resolved by name at request time.
    let r = http_get(http_port, "container.vsa.test", "/c", &[]);
    assert_eq!(r.status, 200, "{r:?}\n{}", nginx.error_log());
    assert_eq!(r.body, "upstream=two path=/c host=container.vsa.test\n");

    // Aliases are served by the same vhost; the custom CSP replaces the default.
    let r = http_get(http_port, "alt.vsa.test", "/", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("Content-Security-Policy"),
        Some("default-src 'none'; img-src 'self'")
    );
    let r = http_get(http_port, "plain.vsa.test", "/", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Security-Policy"), None);

    // With its certificate on disk, a TLS site redirects HTTP to HTTPS,
    // but still answers the ACME challenge over HTTP.
    let r = http_get(http_port, "tls.vsa.test", "/x?y=1", &[]);
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("Location"),
        Some(format!("https://tls.vsa.test:{https_port}/x?y=1").as_str())
    );
    let r = http_get(
        http_port,
        "tls.vsa.test",
        "/.well-known/acme-challenge/tok123",
        &[],
    );
    assert_eq!(r.status, 200);
    // Its HTTPS server is Mozilla-intermediate compliant, as sslyze checks
    // it: in everything but the trust of this test's self-signed certificate.
    if let Some(sslyze) =
        vsa_tests::require_from("sslyze", "sslyze (PyPI)", "to check the TLS settings")
    {
        let out = Command::new(sslyze)
            .arg("--mozilla_config=intermediate")
            .arg(format!("tls.vsa.test:{https_port}{{127.0.0.1}}"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let (_, compliance) = text
            .split_once("COMPLIANCE AGAINST")
            .unwrap_or_else(|| panic!("no compliance check in sslyze's output:\n{text}"));
        let failures: Vec<&str> = compliance
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("* "))
            .collect();
        assert!(
            failures
                .iter()
                .all(|l| l.starts_with("* certificate_path_validation")),
            "not intermediate-compliant:\n{compliance}"
        );
    }
    // A site with auth and no certificate yet asks for no password over
    // plain HTTP.
    let r = http_get(http_port, "locked.vsa.test", "/", &[]);
    assert_eq!((r.status, r.body.as_str()), (503, "certificate pending\n"));
    // Without one yet, it is served over HTTP (no ssl_certificate to a missing file).
    let r = http_get(http_port, "pending.vsa.test", "/", &[]);
    assert_eq!(r.status, 200);
    let pending =
        std::fs::read_to_string(h.config.paths.vhosts.join("pending.vsa.test.conf")).unwrap();
    assert!(!pending.contains("ssl_certificate"));

    // Every request went to the site's JSON access log.
    let log = std::fs::read_to_string(h.config.paths.access_logs.join("url.vsa.test.access.json"))
        .unwrap();
    let line: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(line["status"], 200);
    assert_eq!(line["uri"], "/hello");
    assert_eq!(line["host"], "url.vsa.test");
}

#[test]
fn rate_limit_answers_429_beyond_the_burst() {
    let Some(nginx_bin) = require("nginx", "to check rendered vhosts with a real nginx") else {
        return;
    };
    let up = Upstream::start("rl");
    let http_port = free_port();
    let h = host(http_port, free_port(), "127.0.0.1");
    site(
        &h.repo,
        "rl.yaml",
        &format!(
            "domain: rl.vsa.test\nupstream: {{ url: \"http://127.0.0.1:{}\" }}\ntls: none\nrate_limit: {{ rps: 1, burst: 2 }}\n",
            up.port
        ),
    );
    write_planned_files(&h);
    let mut nginx = Nginx::configure(
        nginx_bin,
        &h.root.join("nginx"),
        &h.config.paths.vhosts,
        http_port,
    );
    nginx.test().unwrap();
    nginx.start(http_port);
    let statuses: Vec<u16> = (0..6)
        .map(|_| http_get(http_port, "rl.vsa.test", "/", &[]).status)
        .collect();
    assert_eq!(&statuses[..3], &[200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].contains(&429), "{statuses:?}");
}
