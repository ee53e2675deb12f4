//! A real Docker engine for the tests (Debian's `docker.io`; `.ci/run`
//! starts `dockerd` when it is not running). Test fixtures are set up with
//! the `docker` command; the code under test speaks the Engine API.
//!
//! Nothing can be pulled: the images come from `deploy/dev/images.sh`
//! (`docker import` of local rootfs trees), built on first use.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// `vsa-test/busybox:local`: Debian's static busybox.
pub const BUSYBOX: &str = "vsa-test/busybox:local";
/// `vsa-test/nginx:local`: Debian's nginx, laid out like the official image.
pub const NGINX: &str = "vsa-test/nginx:local";

/// Whether a Docker engine answers. Without one the test is skipped
/// (`false`) locally, and fails under `CI=true`. Builds the test images
/// once per process.
pub fn require_docker() -> bool {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        let info = Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output();
        match info {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                return Err(format!(
                    "the Docker engine does not answer ({}); start dockerd",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
            }
            Err(e) => {
                return Err(format!(
                    "`docker` cannot run ({e}); apt-get install docker.io"
                ));
            }
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/dev/images.sh");
        let out = Command::new("bash").arg(&script).output().unwrap();
        if !out.status.success() {
            return Err(format!(
                "{} failed: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    });
    match ready {
        Ok(()) => true,
        Err(why) => {
            crate::skip(&format!("{why} (needed for the Docker tests)"));
            false
        }
    }
}

/// Runs `docker ARGS`, panicking with its stderr when it fails.
pub fn docker(args: &[&str]) -> String {
    let out = docker_output(args);
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Runs `docker ARGS` and returns whatever happened.
pub fn docker_output(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run docker")
}

/// A name no other test (or earlier run) uses: `vsat-<pid>-<n>-<what>`.
pub fn unique(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "vsat-{}-{}-{what}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Docker objects a test made, removed (containers first) when dropped.
#[derive(Default)]
pub struct Cleanup {
    containers: Vec<String>,
    networks: Vec<String>,
    volumes: Vec<String>,
}

impl Cleanup {
    /// Removes this container (by name) when the test ends, whoever made it.
    pub fn container(&mut self, name: &str) {
        self.containers.push(name.to_owned());
    }

    pub fn network(&mut self, name: &str) {
        self.networks.push(name.to_owned());
    }

    /// Removes this named volume (after the containers) when the test ends.
    pub fn volume(&mut self, name: &str) {
        self.volumes.push(name.to_owned());
    }

    /// `docker network create NAME`, removed at the end.
    pub fn create_network(&mut self, name: &str) {
        docker(&["network", "create", name]);
        self.network(name);
    }

    /// `docker run -d --name NAME ARGS`, removed at the end.
    pub fn run(&mut self, name: &str, args: &[&str]) -> String {
        self.container(name);
        let mut argv = vec!["run", "-d", "--name", name];
        argv.extend_from_slice(args);
        docker(&argv)
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = docker_output(&["rm", "-f", "-v", c]);
        }
        for n in &self.networks {
            let _ = docker_output(&["network", "rm", n]);
        }
        for v in &self.volumes {
            let _ = docker_output(&["volume", "rm", v]);
        }
    }
}

/// A host whose proxy is the production topology: Debian's nginx in a
/// container (`proxy`) on its own network (`net`), publishing port 80 on
/// `127.0.0.1:port`, with vsa's vhost, htpasswd and log dirs (under
/// `root/host/`) mounted where the official image looks; vsa's config
/// (`config`) runs `nginx -t` and reload in it.
pub struct ProxiedHost {
    pub cleanup: Cleanup,
    pub root: PathBuf,
    pub repo: PathBuf,
    pub config: PathBuf,
    pub net: String,
    pub proxy: String,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl ProxiedHost {
    pub fn new() -> ProxiedHost {
        let mut cleanup = Cleanup::default();
        let (dir, root, repo) = crate::test_repo();
        let net = unique("net");
        let proxy = unique("proxy");
        let port = crate::free_port();
        cleanup.create_network(&net);
        let dirs = ["conf.d", "htpasswd", "logs"].map(|d| root.join("host").join(d));
        for d in &dirs {
            std::fs::create_dir_all(d).unwrap();
        }
        let mount = |host: &Path, inside: &str| format!("{}:{inside}", host.display());
        cleanup.run(
            &proxy,
            &[
                "--network",
                &net,
                "-p",
                &format!("127.0.0.1:{port}:80"),
                "-v",
                &mount(&dirs[0], "/etc/nginx/conf.d"),
                "-v",
                &mount(&dirs[1], "/etc/nginx/htpasswd"),
                "-v",
                &mount(&dirs[2], "/var/log/nginx/domains"),
                NGINX,
            ],
        );
        let config = root.join("vsa.yaml");
        std::fs::write(
            &config,
            format!(
                "host: test-01\nrepo: {{ path: repo }}\n\
                 paths:\n  vhosts: host/conf.d\n  htpasswd: host/htpasswd\n  access_logs: host/logs\n\
                 nginx:\n  container: {proxy}\n  group: www-data\n  ipv6: false\n\
                 \x20 paths:\n    htpasswd: /etc/nginx/htpasswd\n    access_logs: /var/log/nginx/domains\n\
                 docker:\n  network: {net}\n"
            ),
        )
        .unwrap();
        ProxiedHost {
            cleanup,
            root,
            repo,
            config,
            net,
            proxy,
            port,
            _dir: dir,
        }
    }

    /// A host directory as mounted into the proxy: `conf.d`, `htpasswd`, `logs`.
    pub fn dir(&self, which: &str) -> PathBuf {
        self.root.join("host").join(which)
    }

    /// Writes a file of the desired-state repository.
    pub fn write(&self, rel: &str, text: &str) {
        let p = self.repo.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

impl Default for ProxiedHost {
    fn default() -> Self {
        ProxiedHost::new()
    }
}
