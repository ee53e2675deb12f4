//! `vsad` against Debian's real nginx on loopback and a bare git repository
//! on disk as the remote: pushes served within seconds (poll and signed
//! webhook), bad commits refused, drift repaired or reported, restarts
//! that change nothing, and a clean SIGTERM.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};
use vsa_tests::daemon::{Remote, Vsad};
use vsa_tests::host::Host;
use vsa_tests::{Upstream, http_get, http_get_until, http_request, require};

vsa_tests::child_entry_points!();

fn nginx() -> Option<PathBuf> {
    require("nginx", "to run vsad against a real nginx")
}

/// A host (nginx started) following a bare repository that already holds
/// site `a.vsa.test`; `repo_extra` goes under `repo:` (poll, webhook...).
/// Returns the host, the upstream, the remote, vsad's API port and the
/// first commit.
fn following_host(repo_extra: &str) -> Option<(Host, Upstream, Remote, u16, String)> {
    let (h, up, remote, first) = vsa_tests::daemon::host_with_a_site()?;
    let port = 0;
    h.configure(&format!(
        "repo:\n  path: clone\n  url: {}\n{repo_extra}dashboard:\n  listen: 127.0.0.1:{port}\n",
        remote.url()
    ));
    Some((h, up, remote, port, first))
}

fn served(h: &Host, domain: &str) -> bool {
    http_get(h.http_port, domain, "/", &[]).status == 200
}

/// Served, allowing for nginx's worker swap after a reload.
fn served_soon(h: &Host, domain: &str) -> bool {
    http_get_until(h.http_port, domain, "/", &[], |r| r.status == 200).status == 200
}

#[test]
fn a_push_is_served_within_seconds_and_a_bad_commit_is_refused() {
    let Some((h, up, remote, port, first)) = following_host("  branch: main\n  poll: 1s\n") else {
        return;
    };
    let mut d = Vsad::start(&h, port);
    assert_eq!(d.status().unwrap()["commit"], first.as_str());
    assert!(served_soon(&h, "a.vsa.test"));
    assert_eq!(d.status().unwrap()["in_sync"], true);

    // A new site, pushed: served within a few seconds of the push.
    remote.site("b.vsa.test", &up);
    let second = remote.push("site b");
    let took = d.wait("b served", Duration::from_secs(10), |_| {
        served(&h, "b.vsa.test")
    });
    eprintln!("push to served (1 s poll): {took:?}");
    assert_eq!(d.status().unwrap()["commit"], second.as_str());

    // A commit that fails validation is refused; the good one stays.
    remote.site_text(
        "c.vsa.test",
        "apiVersion: vsa/v1\nkind: Site\nhost: test-01\ndomain: \"c.vsa.test; evil\"\nupstream: { url: \"http://127.0.0.1:9\" }\n",
    );
    let bad = remote.push("a bad site");
    d.wait("the refusal", Duration::from_secs(10), |d| {
        d.status().unwrap()["refused"]["commit"] == bad.as_str()
    });
    let st = d.status().unwrap();
    assert_eq!(
        st["commit"],
        second.as_str(),
        "the good commit stays in force"
    );
    let err = st["last_error"].as_str().unwrap();
    assert!(
        err.contains(&bad) && err.contains("sites/c.vsa.test.yaml"),
        "{err}"
    );
    assert!(served_soon(&h, "a.vsa.test") && served_soon(&h, "b.vsa.test"));
    assert!(!h.path("etc/nginx/conf.d/c.vsa.test.conf").exists());
    assert!(
        h.audit_lines()
            .iter()
            .any(|e| e["action"] == "commit.refuse" && e["commit"] == bad.as_str())
    );
    // /metrics counts it.
    let metrics = http_get(d.port, "localhost", "/metrics", &[]).body;
    assert!(
        metrics.contains("vsa_apply_errors_total{kind=\"commit\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "vsa_commit_info{{host=\"test-01\",commit=\"{second}\"}} 1"
    )));

    // The next good commit is applied, and the error clears.
    std::fs::remove_file(remote.work.join("sites/c.vsa.test.yaml")).unwrap();
    remote.site("c.vsa.test", &up);
    let fixed = remote.push("site c, fixed");
    d.wait_served_at(&h, "c.vsa.test", &fixed, Duration::from_secs(10));
    let st = d.status().unwrap();
    assert!(st["last_error"].is_null(), "{st}");
    assert!(st["refused"].is_null(), "{st}");

    let (status, took) = d.terminate();
    assert!(status.success(), "{status}: {}", d.log());
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn a_signed_webhook_fetches_at_once_and_an_unsigned_one_changes_nothing() {
    let Some((h, up, remote, port, _)) =
        following_host("  poll: 1h\n  webhook_secret_file: webhook.secret\n")
    else {
        return;
    };
    let secret = "s3cret-for-tests";
    std::fs::write(h.root.join("webhook.secret"), format!("{secret}\n")).unwrap();
    let mut d = Vsad::start(&h, port);
    let api = d.port;
    assert!(served_soon(&h, "a.vsa.test"));

    remote.site("b.vsa.test", &up);
    let pushed = remote.push("site b");
    let body = format!("{{\"ref\":\"refs/heads/main\",\"after\":\"{pushed}\"}}");
    let sign = |key: &str| {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(body.as_bytes());
        let bytes = mac.finalize().into_bytes();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256={hex}")
    };
    let post = |headers: &[(&str, &str)]| {
        http_request(
            api,
            "POST",
            "localhost",
            "/hooks/git",
            headers,
            body.as_bytes(),
        )
        .status
    };
    assert_eq!(post(&[]), 401, "unsigned");
    assert_eq!(
        post(&[("X-Hub-Signature-256", &sign("wrong secret"))]),
        401,
        "wrongly signed"
    );
    assert_eq!(
        post(&[("X-Hub-Signature-256", "sha256=zz")]),
        401,
        "garbage"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !served(&h, "b.vsa.test"),
        "a refused webhook must not fetch"
    );
    assert_ne!(d.status().unwrap()["commit"], pushed.as_str());

    let sent = Instant::now();
    assert_eq!(post(&[("X-Hub-Signature-256", &sign(secret))]), 202);
    d.wait("b served after the webhook", Duration::from_secs(5), |_| {
        served(&h, "b.vsa.test")
    });
    eprintln!("webhook to served (1 h poll): {:?}", sent.elapsed());
    assert_eq!(d.status().unwrap()["commit"], pushed.as_str());
}

#[test]
fn drift_is_repaired_in_apply_mode_and_the_working_copy_is_followed() {
    let Some(bin) = nginx() else { return };
    let up = Upstream::start("app");
    let mut h = Host::new(bin);
    h.start();
    h.url_site("a.vsa.test", &up);
    // A certificate on disk shows in /api/certs and as an expiry metric.
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["a.vsa.test".to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let live = h.path("etc/letsencrypt/live/a.vsa.test");
    std::fs::create_dir_all(&live).unwrap();
    std::fs::write(live.join("fullchain.pem"), cert.pem()).unwrap();
    std::fs::write(live.join("privkey.pem"), key.serialize_pem()).unwrap();
    let port = 0;
    h.configure(&format!(
        "repo:\n  path: repo\ndashboard:\n  listen: 127.0.0.1:{port}\n"
    ));
    let mut d = Vsad::start(&h, port);
    assert!(served_soon(&h, "a.vsa.test"));
    let certs = d.get_json("/api/certs").unwrap();
    assert_eq!(certs[0]["domain"], "a.vsa.test");
    assert_eq!(certs[0]["key_matches"], true);
    let metrics = http_get(d.port, "localhost", "/metrics", &[]).body;
    assert!(
        metrics.contains(&format!(
            "vsa_cert_expiry_timestamp_seconds{{domain=\"a.vsa.test\"}} {}",
            certs[0]["not_after"]
        )),
        "{metrics}"
    );

    // A hand edit of a managed vhost: put back within seconds.
    let vhost = h.path("etc/nginx/conf.d/a.vsa.test.conf");
    let good = std::fs::read_to_string(&vhost).unwrap();
    std::fs::write(
        &vhost,
        good.replace("proxy_http_version 1.1;", "proxy_http_version 1.0;"),
    )
    .unwrap();
    let took = d.wait("the vhost repaired", Duration::from_secs(5), |_| {
        std::fs::read_to_string(&vhost).unwrap() == good
    });
    eprintln!("hand edit to repaired: {took:?}");
    // A deleted htpasswd-less vhost comes back too.
    std::fs::remove_file(&vhost).unwrap();
    d.wait("the vhost recreated", Duration::from_secs(5), |_| {
        vhost.exists()
    });

    // No remote: the working copy is watched.
    h.url_site("b.vsa.test", &up);
    d.wait("b served", Duration::from_secs(5), |_| {
        served(&h, "b.vsa.test")
    });
    std::fs::remove_file(h.repo.join("sites/a.vsa.test.yaml")).unwrap();
    d.wait("a gone", Duration::from_secs(5), |_| !vhost.exists());
    h.nginx.test().unwrap();
}

#[test]
fn drift_is_only_reported_in_report_mode() {
    let Some(bin) = nginx() else { return };
    let up = Upstream::start("app");
    let mut h = Host::new(bin);
    h.start();
    h.url_site("a.vsa.test", &up);
    assert_eq!(
        h.vsactl(&["apply", "--yes"]),
        std::process::ExitCode::SUCCESS
    );
    let port = 0;
    h.configure(&format!(
        "repo:\n  path: repo\nmode: report\ndashboard:\n  listen: 127.0.0.1:{port}\n"
    ));
    let mut d = Vsad::start(&h, port);
    assert_eq!(d.status().unwrap()["in_sync"], true);
    assert_eq!(d.status().unwrap()["mode"], "report");

    let vhost = h.path("etc/nginx/conf.d/a.vsa.test.conf");
    let edited = std::fs::read_to_string(&vhost)
        .unwrap()
        .replace("proxy_http_version 1.1;", "proxy_http_version 1.0;");
    std::fs::write(&vhost, &edited).unwrap();
    d.wait("the drift shown", Duration::from_secs(5), |d| {
        d.status().unwrap()["in_sync"] == false
    });
    let plan = d.plan();
    let change = &plan["changes"][0];
    assert_eq!(change["name"], "a.vsa.test");
    assert_eq!(change["action"], "update");
    assert!(
        change["diff"]
            .as_str()
            .unwrap()
            .contains("-        proxy_http_version 1.0;"),
        "{plan}"
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        std::fs::read_to_string(&vhost).unwrap(),
        edited,
        "left as is"
    );
    let seen: Vec<_> = h
        .audit_lines()
        .into_iter()
        .filter(|e| e["action"] == "drift.seen")
        .collect();
    assert_eq!(seen.len(), 1, "audited once: {seen:?}");
    assert_eq!(seen[0]["actor"], "vsad");
}

#[test]
fn a_restart_changes_nothing_and_sigterm_mid_reconcile_leaves_whole_files() {
    let Some((h, up, remote, port, _)) = following_host("  poll: 1s\n") else {
        return;
    };
    let mut d = Vsad::start(&h, port);
    let (status, took) = d.terminate();
    assert!(
        status.success() && took < Duration::from_secs(5),
        "{status} {took:?}"
    );

    // Restart with nothing changed: nothing written, nothing reloaded.
    let files = h.files();
    let events = h.audit_lines().len();
    let reloads = h.reloads();
    let mut d = Vsad::start(&h, port);
    assert_eq!(d.status().unwrap()["in_sync"], true);
    assert_eq!(h.files(), files, "inode, mtime and content unchanged");
    assert_eq!(h.audit_lines().len(), events);
    assert_eq!(h.reloads(), reloads);

    // SIGTERM while a big change is being applied.
    for i in 0..400 {
        remote.site(&format!("bulk{i}.vsa.test"), &up);
    }
    remote.push("400 sites");
    d.wait("the apply under way", Duration::from_secs(15), |_| {
        std::fs::read_dir(h.path("etc/nginx/conf.d"))
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().starts_with("bulk"))
    });
    let (status, took) = d.terminate();
    assert!(status.success(), "{status}: {}", d.log());
    assert!(took < Duration::from_secs(5), "{took:?}");
    for e in std::fs::read_dir(h.path("etc/nginx/conf.d")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(e.path()).unwrap();
        if name.starts_with('.') {
            continue; // a temp file never renamed: invisible to nginx
        }
        assert!(text.starts_with("# managed-by: vsa"), "{name}");
        // Every file vsa writes ends with a closing brace (the
        // http-context file with its probe server).
        assert!(text.ends_with("}\n"), "{name} is cut short");
    }
    h.nginx.test().expect("nginx -t passes after the stop");

    // The next start finishes the job.
    let mut d = Vsad::start(&h, port);
    d.wait("all 400 served", Duration::from_secs(20), |_| {
        served(&h, "bulk399.vsa.test")
    });
    assert_eq!(d.status().unwrap()["in_sync"], true);
}

#[test]
fn systemd_hears_ready_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let Some(bin) = nginx() else { return };
    let mut h = Host::new(bin);
    h.start();
    let port = 0;
    h.configure(&format!(
        "repo:\n  path: repo\ndashboard:\n  listen: 127.0.0.1:{port}\n"
    ));
    let socket_path = h.root.join("notify.sock");
    let sock = UnixDatagram::bind(&socket_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut d = Vsad::start_with_env(
        &h,
        port,
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut heard = Vec::new();
    let mut buf = [0u8; 256];
    while !(heard.iter().any(|m: &String| m == "READY=1")
        && heard.iter().filter(|m| *m == "WATCHDOG=1").count() >= 2)
    {
        let n = sock.recv(&mut buf).expect("a notification within 10 s");
        heard.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let (status, _) = d.terminate();
    assert!(status.success());
    let mut last = String::new();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    while let Ok(n) = sock.recv(&mut buf) {
        last = String::from_utf8_lossy(&buf[..n]).into_owned();
    }
    assert_eq!(last, "STOPPING=1", "{heard:?}");
}

#[test]
fn the_systemd_unit_verifies() {
    let Some(analyze) = require("systemd-analyze", "to check the systemd unit") else {
        return;
    };
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/systemd/vsad.service"),
    )
    .unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="));
    // The binary is not installed here: verify everything else.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("vsad.service");
    std::fs::write(
        &copy,
        unit.replace(
            "ExecStart=/usr/local/bin/vsad",
            &format!("ExecStart={}", std::env::current_exe().unwrap().display()),
        ),
    )
    .unwrap();
    let out = std::process::Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

#[test]
fn a_stopped_managed_container_is_started_again_within_seconds() {
    use vsa_tests::docker::{BUSYBOX, Cleanup, docker, require_docker, unique};
    let Some(bin) = nginx() else { return };
    if !require_docker() {
        return;
    }
    let mut cleanup = Cleanup::default();
    let mut h = Host::new(bin);
    h.start();
    let net = unique("net");
    cleanup.network(&net);
    let stack = unique("job");
    let worker = format!("{stack}-worker");
    cleanup.container(&worker);
    std::fs::create_dir_all(h.repo.join("stacks")).unwrap();
    std::fs::write(
        h.repo.join("stacks/job.yaml"),
        format!(
            "apiVersion: vsa/v1\nkind: Stack\nname: {stack}\nhost: test-01\nservices:\n  worker:\n    image: {BUSYBOX}\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; sleep 3600 & wait\"]\n"
        ),
    )
    .unwrap();
    let port = 0;
    h.configure(&format!(
        "repo:\n  path: repo\ndocker:\n  network: {net}\ndashboard:\n  listen: 127.0.0.1:{port}\n"
    ));
    let mut d = Vsad::start(&h, port);
    let running = || {
        vsa_tests::docker::docker_output(&["inspect", "--format", "{{.State.Running}}", &worker])
            .stdout
            .starts_with(b"true")
    };
    d.wait("the container running", Duration::from_secs(20), |_| {
        running()
    });

    // Stopped by hand: a Docker event, not the next poll, brings it back.
    docker(&["stop", "-t", "1", &worker]);
    let took = d.wait(
        "the container started again",
        Duration::from_secs(10),
        |_| running(),
    );
    eprintln!("docker stop to running again: {took:?}");
    // Audited right after the engine started it.
    d.wait("the audit event", Duration::from_secs(5), |_| {
        h.audit_lines()
            .iter()
            .any(|e| e["action"] == "container.start" && e["actor"] == "vsad")
    });
    let (status, _) = d.terminate();
    assert!(status.success());
}

#[test]
fn vsad_check_validates_without_starting() {
    let (_dir, root, repo) = vsa_tests::test_repo();
    let config = root.join("vsa.yaml");
    std::fs::write(&config, "host: test-01\nrepo: { path: repo }\n").unwrap();
    std::fs::write(
        repo.join("sites/a.vsa.test.yaml"),
        "apiVersion: vsa/v1\nkind: Site\nhost: test-01\ndomain: a.vsa.test\nupstream: { url: \"http://127.0.0.1:1\" }\n",
    )
    .unwrap();
    let check = || {
        vsad::main_with([
            "vsad".into(),
            "--config".into(),
            config.display().to_string(),
            "--check".into(),
        ])
    };
    assert_eq!(check(), 0);
    // Nothing started, nothing written outside the repository.
    assert!(!root.join("var").exists() && !root.join("etc").exists());
    std::fs::write(
        repo.join("sites/b.vsa.test.yaml"),
        "apiVersion: vsa/v1\nkind: Site\nhost: test-01\ndomain: \"b;evil\"\nupstream: { url: \"http://127.0.0.1:1\" }\n",
    )
    .unwrap();
    assert_eq!(check(), 2);
    std::fs::write(
        &config,
        "host: test-01\nrepo: { path: repo }\nnginx: { tset: 1 }\n",
    )
    .unwrap();
    assert_eq!(check(), 2);
    // A secret file the daemon would read, missing: refused before start.
    std::fs::remove_file(repo.join("sites/b.vsa.test.yaml")).unwrap();
    std::fs::write(
        &config,
        "host: test-01\nrepo: { path: repo, url: 'https://git.example.com/s.git', token_file: nope.token }\n",
    )
    .unwrap();
    assert_eq!(check(), 2);
    // Read as the daemon reads it: an empty token is refused too.
    std::fs::write(root.join("nope.token"), "\n").unwrap();
    assert_eq!(check(), 2);
    std::fs::write(root.join("nope.token"), "t0ken\n").unwrap();
    assert_eq!(check(), 0);
    // A fresh install with a remote: no clone yet is no error (vsad makes
    // it at start); the files the config names are still checked.
    std::fs::write(
        &config,
        "host: test-01\nrepo: { path: clone, url: 'https://git.example.com/s.git', token_file: nope.token }\n",
    )
    .unwrap();
    assert_eq!(check(), 0);
    assert!(!root.join("clone").exists(), "--check makes nothing");
    std::fs::remove_file(root.join("nope.token")).unwrap();
    assert_eq!(check(), 2);
}

#[test]
fn idle_and_slow_connections_cannot_starve_the_daemon() {
    use std::io::{Read, Write};
    let Some(bin) = nginx() else { return };
    let up = Upstream::start("app");
    let mut h = Host::new(bin);
    h.start();
    h.url_site("a.vsa.test", &up);
    let port = 0;
    h.configure(&format!(
        "repo:\n  path: repo\ndashboard:\n  listen: 127.0.0.1:{port}\n"
    ));
    let mut d = Vsad::start(&h, port);

    // 300 connections: half idle, half sending a request's headers slowly.
    let mut held = Vec::new();
    for i in 0..300 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", d.port)).unwrap();
        if i % 2 == 0 {
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
        }
        held.push(s);
    }
    // Drift is still repaired while they are held: the reconciles have
    // their file descriptors.
    let vhost = h.path("etc/nginx/conf.d/a.vsa.test.conf");
    let good = std::fs::read_to_string(&vhost).unwrap();
    std::fs::write(
        &vhost,
        good.replace("proxy_http_version 1.1;", "proxy_http_version 1.0;"),
    )
    .unwrap();
    d.wait("the vhost repaired", Duration::from_secs(10), |_| {
        std::fs::read_to_string(&vhost).unwrap() == good
    });
    // Every one of them is closed by vsad: those over the cap at once, the
    // others when their headers do not come in time.
    let deadline = Instant::now() + vsad::http::HEADER_TIMEOUT + Duration::from_secs(5);
    for s in &mut held {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        s.set_read_timeout(Some(left)).unwrap();
        let mut buf = [0u8; 512];
        let closed = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => continue, // a 408 or similar, then the close
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        assert!(closed, "a connection outlived the header timeout");
    }
    drop(held);
    // And the daemon answers as before.
    assert_eq!(http_get(d.port, "localhost", "/healthz", &[]).status, 200);
    let (status, _) = d.terminate();
    assert!(status.success(), "{}", d.log());
}

#[test]
fn the_systemd_unit_bounds_files_memory_and_tasks() {
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/systemd/vsad.service"),
    )
    .unwrap();
    for key in ["LimitNOFILE=", "MemoryMax=", "TasksMax="] {
        assert!(unit.lines().any(|l| l.starts_with(key)), "{key} missing");
    }
}

#[test]
fn a_reload_that_does_not_take_is_the_daemons_last_error_until_it_does() {
    let Some(bin) = nginx() else { return };
    let up = Upstream::start("app");
    let mut h = Host::new(bin);
    h.start();
    h.url_site("a.vsa.test", &up);
    let port = 0;
    h.configure(&format!(
        "repo:\n  path: repo\ndashboard:\n  listen: 127.0.0.1:{port}\n"
    ));
    // The sites listen on a port another process holds: `nginx -t` passes,
    // the reload does not take.
    let busy = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let site_port = busy.local_addr().unwrap().port();
    let text = std::fs::read_to_string(&h.config_file).unwrap();
    std::fs::write(
        &h.config_file,
        text.replace(
            &format!("http_port: {}", h.http_port),
            &format!("http_port: {site_port}"),
        ),
    )
    .unwrap();
    let mut d = Vsad::start(&h, port);
    d.wait("the reload error shown", Duration::from_secs(10), |d| {
        d.status().is_some_and(|s| {
            s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("Address already in use"))
        })
    });
    let st = d.status().unwrap();
    assert_eq!(st["in_sync"], false, "{st}");
    assert!(
        h.audit_lines()
            .iter()
            .any(|e| e["action"] == "nginx.reload" && e["outcome"] == "error"),
    );
    // Once the port is free, a retry reloads; in sync means served.
    drop(busy);
    d.wait("in sync", Duration::from_secs(30), |d| {
        d.status()
            .is_some_and(|s| s["in_sync"] == true && s["last_error"].is_null())
    });
    assert_eq!(http_get(site_port, "a.vsa.test", "/", &[]).status, 200);
    let (status, _) = d.terminate();
    assert!(status.success(), "{}", d.log());
}

/// The error policy, end to end: a site nginx rejects is a permanent
/// failure. Left failing for over a minute (the old exponential backoff
/// would then hold it for another), it is not retried while nothing about
/// it changes, however often the daemon reconciles, and is audited once per
/// change; the commit that fixes it is served at once.
#[test]
fn a_rejected_site_waits_for_a_change_and_its_fix_is_served_at_once() {
    let Some(bin) = nginx() else { return };
    let up = Upstream::start("app");
    let mut h = Host::new(bin);
    h.start();
    h.url_site("a.vsa.test", &up);
    h.site(
        "bad.vsa.test",
        "upstream: { url: \"http://nope.invalid:8080\" }\n",
    );
    let port = 0;
    h.configure(&format!(
        "repo:\n  path: repo\ndashboard:\n  listen: 127.0.0.1:{port}\n"
    ));
    let isolations = |h: &Host| {
        h.audit_lines()
            .iter()
            .filter(|e| e["action"] == "site.isolate" && e["target"] == "bad.vsa.test")
            .count()
    };
    let mut d = Vsad::start(&h, port);
    assert_eq!(isolations(&h), 1, "{}", d.log());
    let status = d.status().unwrap();
    assert!(
        status["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("bad.vsa.test") && e.contains("host not found")),
        "{status}"
    );
    assert_eq!(http_get(h.http_port, "a.vsa.test", "/", &[]).status, 200);

    // Over a minute of failure, with the daemon reconciling all along:
    // every few seconds a hand edit of a's vhost, which it repairs.
    let vhost = h.path("etc/nginx/conf.d/a.vsa.test.conf");
    let good = std::fs::read_to_string(&vhost).unwrap();
    let failing_since = Instant::now();
    let mut repairs = 0;
    while failing_since.elapsed() < Duration::from_secs(65) {
        std::fs::write(&vhost, format!("{good}# edited by hand\n")).unwrap();
        d.wait("the vhost repaired", Duration::from_secs(10), |_| {
            std::fs::read_to_string(&vhost).unwrap() == good
        });
        repairs += 1;
        std::thread::sleep(Duration::from_secs(4));
    }
    assert!(repairs >= 10, "{repairs} repairs");
    assert_eq!(isolations(&h), 1, "retried without a change:\n{}", d.log());

    // A change that is still broken: tried (and audited) once more.
    h.site(
        "bad.vsa.test",
        "upstream: { url: \"http://still-nope.invalid:8080\" }\n",
    );
    d.wait("the change tried", Duration::from_secs(10), |_| {
        isolations(&h) == 2
    });
    std::fs::write(&vhost, format!("{good}# edited by hand\n")).unwrap();
    d.wait("the vhost repaired", Duration::from_secs(10), |_| {
        std::fs::read_to_string(&vhost).unwrap() == good
    });
    assert_eq!(isolations(&h), 2);

    // The fix: served at once, not after the broken version's backoff.
    let fixed = Instant::now();
    h.url_site("bad.vsa.test", &up);
    d.wait("bad.vsa.test in sync", Duration::from_secs(10), |d| {
        d.status().is_some_and(|s| s["in_sync"] == true)
    });
    eprintln!(
        "fix to in sync after minutes of failure: {:?}",
        fixed.elapsed()
    );
    assert_eq!(http_get(h.http_port, "bad.vsa.test", "/", &[]).status, 200);
    assert!(d.status().unwrap()["last_error"].is_null());
    assert_eq!(isolations(&h), 2);
}
