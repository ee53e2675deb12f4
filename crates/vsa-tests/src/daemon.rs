//! A running `vsad` for tests and benches (the calling binary re-entered
//! through its `child_vsad` entry), and a bare git repository on disk as
//! its remote.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::host::Host;
use crate::{Upstream, http_get};

/// The body of a binary's `child_vsad` entry: runs vsad with the config the
/// parent named in `$VSA_CHILD_VSAD_CONFIG` and exits with its code. Does
/// nothing in a normal run.
pub fn child_main() {
    let Ok(config) = std::env::var("VSA_CHILD_VSAD_CONFIG") else {
        return;
    };
    let code = vsad::main_with(["vsad".into(), "--config".into(), config]);
    std::process::exit(code);
}

/// A running vsad (this test binary re-entered through `child_vsad`).
pub struct Vsad {
    child: Option<Child>,
    pub port: u16,
    log: PathBuf,
}

impl Vsad {
    pub fn start(h: &Host, port: u16) -> Vsad {
        Vsad::start_with_env(h, port, &[])
    }

    /// Starts vsad with extra environment variables. With `port` 0 (the
    /// config says `dashboard.listen: 127.0.0.1:0`), the port vsad bound
    /// is read off its log.
    pub fn start_with_env(h: &Host, port: u16, envs: &[(&str, &str)]) -> Vsad {
        Vsad::start_with(h, port, envs, None)
    }

    /// Starts `bin` (a built vsad binary; the benches measure the real
    /// thing), or this binary re-entered through `child_vsad`, and waits
    /// for its first reconcile.
    pub fn start_with(
        h: &Host,
        port: u16,
        envs: &[(&str, &str)],
        bin: Option<&std::path::Path>,
    ) -> Vsad {
        let mut d = Vsad::spawn_with(h, port, envs, bin);
        // Ready: the first reconcile is done.
        d.wait("the first reconcile", Duration::from_secs(20), |d| {
            d.status().is_some_and(|s| !s["last_reconcile"].is_null())
        });
        d
    }

    /// Starts vsad like [`Vsad::start_with`] but returns as soon as its API
    /// answers: without a desired state (a first fetch that fails) there
    /// is no reconcile to wait for.
    pub fn spawn_with(
        h: &Host,
        port: u16,
        envs: &[(&str, &str)],
        bin: Option<&std::path::Path>,
    ) -> Vsad {
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = h.root.join(format!("vsad-{n}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = match bin {
            Some(bin) => {
                let mut c = Command::new(bin);
                c.arg("--config").arg(&h.config_file);
                c
            }
            None => {
                let mut c = Command::new(std::env::current_exe().unwrap());
                c.args([
                    "--exact",
                    "child_vsad",
                    "--ignored",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ]);
                c
            }
        };
        let child = cmd
            .env("VSA_CHILD_VSAD_CONFIG", &h.config_file)
            .env("VSA_ROOT", &h.root)
            .env("VSA_LOG", "info")
            .envs(envs.iter().copied())
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
        if port == 0 {
            // `dashboard.listen: 127.0.0.1:0`: the kernel picks the port,
            // vsad says which (no race for a free port between tests).
            d.wait("the API's address", Duration::from_secs(20), |d| {
                d.bound_port().is_some()
            });
            d.port = d.bound_port().unwrap();
        }
        d.wait("the API", Duration::from_secs(20), |d| d.status().is_some());
        d
    }

    /// The port vsad's log says it serves the API on.
    fn bound_port(&self) -> Option<u16> {
        self.log().lines().find_map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l.trim_start_matches("test child_vsad ... ")).ok()?;
            (v["message"] == "serving the API")
                .then(|| v["listen"].as_str()?.rsplit_once(':')?.1.parse().ok())
                .flatten()
        })
    }

    pub fn get_json(&self, path: &str) -> Option<serde_json::Value> {
        std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        let r = http_get(self.port, "localhost", path, &[]);
        (r.status == 200).then(|| serde_json::from_str(&r.body).unwrap())
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        self.get_json("/api/status")
    }

    pub fn plan(&self) -> serde_json::Value {
        self.get_json("/api/plan").expect("a plan")
    }

    /// Waits, as an operator watching `/api/status` would, until `commit`
    /// is in force and the host in sync; then `domain` must be served at
    /// once (converged means served: no retry).
    pub fn wait_served_at(&mut self, h: &Host, domain: &str, commit: &str, limit: Duration) {
        self.wait(
            &format!("commit {commit} in force and in sync"),
            limit,
            |d| {
                d.status()
                    .is_some_and(|s| s["commit"] == commit && s["in_sync"] == true)
            },
        );
        let r = http_get(h.http_port, domain, "/", &[]);
        assert_eq!(
            r.status,
            200,
            "{domain} not served once in sync: {r:?}\n{}",
            self.log()
        );
    }

    /// Polls `done` every 50 ms; panics with the daemon's log after `limit`.
    pub fn wait(&mut self, what: &str, limit: Duration, done: impl Fn(&Vsad) -> bool) -> Duration {
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGTERM; returns how it ended and how long it took.
    pub fn terminate(&mut self) -> (ExitStatus, Duration) {
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
pub struct Remote {
    pub bare: PathBuf,
    pub work: PathBuf,
}

pub fn git(dir: &Path, args: &[&str]) -> String {
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
    pub fn new(root: &Path) -> Remote {
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

    pub fn site(&self, domain: &str, up: &Upstream) {
        self.site_text(
            domain,
            &format!(
                "apiVersion: vsa/v1\nkind: Site\nhost: test-01\ndomain: {domain}\ntls: none\nupstream: {{ url: \"http://127.0.0.1:{}\" }}\n",
                up.port
            ),
        );
    }

    pub fn site_text(&self, domain: &str, text: &str) {
        std::fs::write(self.work.join("sites").join(format!("{domain}.yaml")), text).unwrap();
    }

    /// Commits everything and pushes; returns the commit.
    pub fn push(&self, message: &str) -> String {
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", message]);
        git(&self.work, &["push", "-q", "origin", "HEAD:main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.bare.display())
    }
}

/// A host (its nginx started) and a bare repository on disk holding site
/// `a.vsa.test`, served by a new upstream `app`: (host, upstream, remote,
/// the first commit). `None` (skipped) without nginx.
pub fn host_with_a_site() -> Option<(Host, Upstream, Remote, String)> {
    let bin = crate::require("nginx", "to run vsad against a real nginx")?;
    let up = Upstream::start("app");
    let mut h = Host::new(bin);
    h.start();
    let remote = Remote::new(&h.root);
    remote.site("a.vsa.test", &up);
    let first = remote.push("site a");
    Some((h, up, remote, first))
}
