//! `vsad` against Debian's real nginx on loopback and a bare git repository
//! on disk as the remote: pushes served within seconds (poll and signed
//! webhook), bad commits refused, drift repaired or reported, restarts
//! that change nothing, and a clean SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};
use vsa_tests::host::Host;
use vsa_tests::{Upstream, free_port, http_get, http_get_until, http_request, require};

/// Entry point for the daemon child processes; does nothing in a normal run.
#[test]
#[ignore = "entered only as a child process by the other tests"]
fn child_vsad() {
    let Ok(config) = std::env::var("VSA_CHILD_VSAD_CONFIG") else {
        return;
    };
    let code = vsad::main_with(["vsad".into(), "--config".into(), config]);
    std::process::exit(code);
}

/// Entry point for `Host::vsactl_child` (not used here, but the harness
/// expects every test binary to have it).
#[test]
#[ignore = "entered only as a child process by the other tests"]
fn child_vsactl() {
    vsa_tests::host::child_main();
}

/// A running vsad (this test binary re-entered through `child_vsad`).
struct Vsad {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Vsad {
    fn start(h: &Host, port: u16) -> Vsad {
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = h.root.join(format!("vsad-{n}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_vsad",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("VSA_CHILD_VSAD_CONFIG", &h.config_file)
            .env("VSA_ROOT", &h.root)
            .env("VSA_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut d = Vsad {
            child: Some(child),
            port,
            log,
        };
        // Ready: the API answers and the first reconcile is done.
        d.wait("the first reconcile", Duration::from_secs(20), |d| {
            d.status().is_some_and(|s| !s["last_reconcile"].is_null())
        });
        d
    }

    fn get_json(&self, path: &str) -> Option<serde_json::Value> {
        std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        let r = http_get(self.port, "localhost", path, &[]);
        (r.status == 200).then(|| serde_json::from_str(&r.body).unwrap())
    }

    fn status(&self) -> Option<serde_json::Value> {
        self.get_json("/api/status")
    }

    fn plan(&self) -> serde_json::Value {
        self.get_json("/api/plan").expect("a plan")
    }

    /// Polls `done` every 50 ms; panics with the daemon's log after `limit`.
    fn wait(&mut self, what: &str, limit: Duration, done: impl Fn(&Vsad) -> bool) -> Duration {
        let start = Instant::now();
        loop {
            if done(self) {
                return start.elapsed();
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("vsad exited ({status}) waiting for {what}:\n{}", self.log());
            }
            assert!(
                start.elapsed() < limit,
                "no {what} within {limit:?}; vsad's log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM; returns how it ended and how long it took.
    fn terminate(&mut self) -> (ExitStatus, Duration) {
        let mut child = self.child.take().unwrap();
        let start = Instant::now();
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("vsad ignored SIGTERM for 20 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Vsad {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A bare repository on disk (the remote) and a work tree pushing to it.
struct Remote {
    bare: PathBuf,
    work: PathBuf,
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=tester",
            "-c",
            "user.email=tester@vsa.test",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Remote {
    fn new(root: &Path) -> Remote {
        let bare = root.join("remote.git");
        let work = root.join("work");
        std::fs::create_dir_all(&bare).unwrap();
        git(&bare, &["init", "-q", "--bare"]);
        std::fs::create_dir_all(work.join("sites")).unwrap();
        git(&work, &["init", "-q"]);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        std::fs::write(
            work.join("fleet.yaml"),
            "apiVersion: vsa/v1\nkind: Fleet\nhosts:\n  - id: test-01\n",
        )
        .unwrap();
        Remote { bare, work }
    }

    fn site(&self, domain: &str, up: &Upstream) {
        self.site_text(
            domain,
            &format!(
                "apiVersion: vsa/v1\nkind: Site\nhost: test-01\ndomain: {domain}\ntls: none\nupstream: {{ url: \"http://127.0.0.1:{}\" }}\n",
                up.port
            ),
        );
    }

    fn site_text(&self, domain: &str, text: &str) {
        std::fs::write(self.work.join("sites").join(format!("{domain}.yaml")), text).unwrap();
    }

    /// Commits everything and pushes; returns the commit.
    fn push(&self, message: &str) -> String {
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", message]);
        git(&self.work, &["push", "-q", "origin", "HEAD:main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    fn url(&self) -> String {
        format!("file://{}", self.bare.display())
    }
}

fn nginx() -> Option<PathBuf> {
    require("nginx", "to run vsad against a real nginx")
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
    let Some(bin) = nginx() else { return };
    let up = Upstream::start("app");
    let mut h = Host::new(bin);
    h.start();
    let remote = Remote::new(&h.root);
    remote.site("a.vsa.test", &up);
    let first = remote.push("site a");
    let port = free_port();
    h.configure(&format!(
        "repo:\n  path: clone\n  url: {}\n  branch: main\n  poll: 1s\ndashboard:\n  listen: 127.0.0.1:{port}\n",
        remote.url()
    ));
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
    let metrics = http_get(port, "localhost", "/metrics", &[]).body;
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
    d.wait("c served", Duration::from_secs(10), |_| {
        served(&h, "c.vsa.test")
    });
    d.wait("the fixed commit in force", Duration::from_secs(5), |d| {
        d.status().unwrap()["commit"] == fixed.as_str()
    });
    let st = d.status().unwrap();
    assert!(st["last_error"].is_null(), "{st}");
    assert!(st["refused"].is_null(), "{st}");

    let (status, took) = d.terminate();
    assert!(status.success(), "{status}: {}", d.log());
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn a_signed_webhook_fetches_at_once_and_an_unsigned_one_changes_nothing() {
    let Some(bin) = nginx() else { return };
    let up = Upstream::start("app");
    let mut h = Host::new(bin);
    h.start();
    let remote = Remote::new(&h.root);
    remote.site("a.vsa.test", &up);
    remote.push("site a");
    let secret = "s3cret-for-tests";
    std::fs::write(h.root.join("webhook.secret"), format!("{secret}\n")).unwrap();
    let port = free_port();
    h.configure(&format!(
        "repo:\n  path: clone\n  url: {}\n  poll: 1h\n  webhook_secret_file: webhook.secret\ndashboard:\n  listen: 127.0.0.1:{port}\n",
        remote.url()
    ));
    let mut d = Vsad::start(&h, port);
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
            port,
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
    let port = free_port();
    h.configure(&format!(
        "repo:\n  path: repo\ndashboard:\n  listen: 127.0.0.1:{port}\n"
    ));
    let mut d = Vsad::start(&h, port);
    assert!(served_soon(&h, "a.vsa.test"));

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
    let port = free_port();
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
    let Some(bin) = nginx() else { return };
    let up = Upstream::start("app");
    let mut h = Host::new(bin);
    h.start();
    let remote = Remote::new(&h.root);
    remote.site("a.vsa.test", &up);
    remote.push("site a");
    let port = free_port();
    h.configure(&format!(
        "repo:\n  path: clone\n  url: {}\n  poll: 1s\ndashboard:\n  listen: 127.0.0.1:{port}\n",
        remote.url()
    ));
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
        let last = if name.starts_with("00-") { ';' } else { '}' };
        assert!(text.ends_with(&format!("{last}\n")), "{name} is cut short");
    }
    h.nginx.test().expect("nginx -t passes after the stop");

    // The next start finishes the job.
    let mut d = Vsad::start(&h, port);
    d.wait("all 400 served", Duration::from_secs(20), |_| {
        served(&h, "bulk399.vsa.test")
    });
    assert_eq!(d.status().unwrap()["in_sync"], true);
}
