//! A host under test: a temporary root with a desired-state repository,
//! a vsa config and a real nginx on loopback, driven through vsactl's code.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use clap::Parser;
use vsactl::context::Env;

use crate::{Nginx, Upstream, free_port};

pub struct Host {
    // Fields drop in order: nginx must stop while its prefix (pid file)
    // still exists, so the temp dir goes last.
    pub nginx: Nginx,
    pub root: PathBuf,
    pub repo: PathBuf,
    pub config_file: PathBuf,
    pub http_port: u16,
    /// What rendered HTTPS servers listen on.
    pub https_port: u16,
    /// The `nginx:` part of the config, for [`Host::configure`].
    nginx_yaml: String,
    _dir: tempfile::TempDir,
}

/// The JSON a child vsactl printed, without the test harness's own lines.
pub fn child_json(stdout: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(stdout);
    let start = text.find('{').expect("JSON on stdout");
    let end = text.rfind('}').expect("JSON on stdout");
    serde_json::from_str(&text[start..=end]).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn current_group() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let gid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Gid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|g| g.parse().ok())
        .unwrap();
    std::fs::read_to_string("/etc/group")
        .unwrap()
        .lines()
        .find_map(|l| {
            let parts: Vec<&str> = l.split(':').collect();
            (parts.get(2) == Some(&gid.to_string().as_str())).then(|| parts[0].to_owned())
        })
        .unwrap()
}

impl Host {
    pub fn new(nginx_bin: PathBuf) -> Host {
        let (dir, root, repo) = crate::test_repo();
        let vhosts = root.join("etc/nginx/conf.d");
        std::fs::create_dir_all(&vhosts).unwrap();
        let http_port = free_port();
        let nginx = Nginx::configure(nginx_bin, &root.join("nginx"), &vhosts, http_port);
        let argv = |v: Vec<String>| {
            format!(
                "[{}]",
                v.iter()
                    .map(|a| format!("\"{a}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let https_port = free_port();
        let probe_port = free_port();
        let nginx_yaml = format!(
            "nginx:\n  http_port: {http_port}\n  https_port: {https_port}\n  probe_port: {probe_port}\n  error_log: {}\n  ipv6: false\n  resolver: 127.0.0.1\n  group: {}\n  test: {}\n  reload: {}\n",
            nginx.error_log_path().display(),
            current_group(),
            argv(nginx.test_argv()),
            argv(nginx.reload_argv()),
        );
        let config_file = root.join("vsa.yaml");
        std::fs::write(
            &config_file,
            format!("host: test-01\nrepo: {{ path: repo }}\n{nginx_yaml}"),
        )
        .unwrap();
        Host {
            _dir: dir,
            root,
            repo,
            config_file,
            nginx,
            http_port,
            https_port,
            nginx_yaml,
        }
    }

    /// Rewrites the config: `host: test-01`, then `top` (YAML keys such as
    /// `repo:`, `mode:`, `dashboard:`), then this host's `nginx:` part.
    pub fn configure(&self, top: &str) {
        std::fs::write(
            &self.config_file,
            format!("host: test-01\n{top}{}", self.nginx_yaml),
        )
        .unwrap();
    }

    pub fn site(&self, name: &str, body: &str) {
        std::fs::write(
            self.repo.join("sites").join(format!("{name}.yaml")),
            format!(
                "apiVersion: vsa/v1\nkind: Site\nhost: test-01\ndomain: {name}\ntls: none\n{body}"
            ),
        )
        .unwrap();
    }

    /// A `tls: none` site proxying to `up` behind basic auth: one `user`
    /// with `password` (hashed at the lowest cost, for speed).
    pub fn auth_site(&self, name: &str, up: &Upstream, user: &str, password: &str) {
        let hash = bcrypt::hash(password, 4).unwrap();
        self.site(
            name,
            &format!(
                "upstream: {{ url: \"http://127.0.0.1:{}\" }}\nauth:\n  users:\n    - name: {user}\n      bcrypt: \"{hash}\"\n",
                up.port
            ),
        );
    }

    pub fn url_site(&self, name: &str, up: &Upstream) {
        self.site(
            name,
            &format!("upstream: {{ url: \"http://127.0.0.1:{}\" }}\n", up.port),
        );
    }

    pub fn vsactl(&self, args: &[&str]) -> ExitCode {
        vsactl_in(&self.root, &self.config_file, args)
    }

    /// Runs the real vsactl code in a child process (this test binary,
    /// re-entered through `child_vsactl`), for kills and for stdin. The
    /// test binary must define that entry: `vsa_tests::child_entry_points!()`.
    pub fn vsactl_child(&self, args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
        vsactl_child_in(&self.root, &self.config_file, args, envs)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        audit_lines_in(&self.root)
    }

    pub fn reloads(&self) -> usize {
        self.audit_lines()
            .iter()
            .filter(|e| e["action"] == "nginx.reload")
            .count()
    }

    /// Every file in the vhost and htpasswd dirs: (inode, mtime, content).
    pub fn files(&self) -> BTreeMap<String, (u64, i64, i64, String)> {
        let mut out = BTreeMap::new();
        for dir in ["etc/nginx/conf.d", "etc/nginx/htpasswd"] {
            let Ok(rd) = std::fs::read_dir(self.path(dir)) else {
                continue;
            };
            for e in rd {
                let e = e.unwrap();
                let m = e.metadata().unwrap();
                out.insert(
                    format!("{dir}/{}", e.file_name().to_string_lossy()),
                    (
                        m.ino(),
                        m.mtime(),
                        m.mtime_nsec(),
                        std::fs::read_to_string(e.path()).unwrap(),
                    ),
                );
            }
        }
        out
    }

    pub fn start(&mut self) {
        self.nginx.start(self.http_port);
    }
}

/// A file's content without the generation vsa stamps on the http-context
/// file at every reload, for comparing what a pass wrote.
pub fn unstamped(content: &str) -> String {
    vsa_core::render::with_generation(content, vsa_core::render::NO_GENERATION)
        .unwrap_or_else(|| content.to_owned())
}

pub fn load_config(h: &Host) -> vsa_core::config::Config {
    let text = std::fs::read_to_string(&h.config_file).unwrap();
    vsa_core::config::Config::parse(&vsa_core::config::ConfigSource {
        file: "vsa.yaml",
        text: Some(&text),
        base_dir: &h.root,
        root: &h.root,
    })
    .unwrap()
}

/// Runs vsactl's code in this process as user `tester`, with `root` as
/// `$VSA_ROOT` and `config_file` as `--config`.
pub fn vsactl_in(root: &Path, config_file: &Path, args: &[&str]) -> ExitCode {
    let mut argv = vec!["vsactl", "--config", config_file.to_str().unwrap()];
    argv.extend_from_slice(args);
    let cli = vsactl::cli::Cli::try_parse_from(argv).unwrap();
    let env = Env {
        user: Some("tester".into()),
        vsa_root: Some(root.to_owned()),
        ..Env::default()
    };
    vsactl::run(cli, &env)
}

/// Runs vsactl's code in a child process: this test binary, re-entered
/// through its `child_vsactl` entry (see [`child_main`]), with `root` as
/// `$VSA_ROOT`. For kills, stdin and what it prints.
pub fn vsactl_child_in(
    root: &Path,
    config_file: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
) -> std::process::Output {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--exact",
        "child_vsactl",
        "--ignored",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env("VSA_CHILD_ARGS", args.join("\u{1f}"))
    .env("VSA_CHILD_CONFIG", config_file)
    .env("VSA_ROOT", root)
    .stdin(Stdio::null());
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// The audit events under `root` (default `paths.audit_log`), as JSON.
pub fn audit_lines_in(root: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(root.join("var/log/vsa/audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The body of a test binary's `child_vsactl` entry (see
/// [`Host::vsactl_child`]): runs vsactl with the arguments the parent put in
/// the environment and exits with its code. Does nothing in a normal run.
pub fn child_main() {
    let Ok(args) = std::env::var("VSA_CHILD_ARGS") else {
        return;
    };
    let config = std::env::var("VSA_CHILD_CONFIG").unwrap();
    let mut argv = vec!["vsactl".to_owned(), "--config".to_owned(), config];
    argv.extend(args.split('\u{1f}').map(str::to_owned));
    let cli = vsactl::cli::Cli::try_parse_from(argv).unwrap();
    let code = vsactl::run(cli, &Env::from_process());
    // ExitCode has no accessor: compare against the three the contract knows.
    let n = (0u8..=2).find(|n| ExitCode::from(*n) == code).unwrap_or(3);
    std::process::exit(n as i32);
}
