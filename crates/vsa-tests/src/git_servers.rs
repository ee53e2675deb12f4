//! Git servers on loopback for the daemon's HTTPS and SSH remotes, the
//! real things (DESIGN §8):
//!
//! - HTTPS: Debian's nginx with TLS (a test CA and a `127.0.0.1`
//!   certificate made with rcgen), HTTP basic auth (user `x-access-token`,
//!   the token as password, a bcrypt htpasswd) and `git http-backend`
//!   behind `fcgiwrap` on a unix socket.
//! - SSH: Debian's `sshd` with its own config, host key, authorized key
//!   and pid file, logging in as the user running the tests.
//!
//! Both serve the bare repositories already on disk (e.g.
//! [`crate::daemon::Remote`]), so a test pushes with `git` to the directory
//! and the daemon fetches through the server. A missing part skips the
//! test (`None`) with a loud message, and fails it under `CI=true`.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Nginx, free_port, is_root, require, require_from, stop};

/// Waits until `port` on loopback accepts connections; panics with
/// `logs()` when `child` exits or 10 s pass.
fn wait_for_port(what: &str, port: u16, child: &mut Child, logs: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited with {status}: {}", logs());
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port}: {}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `git http-backend` behind nginx with TLS and basic auth.
pub struct HttpsGitServer {
    // Fields drop in order: nginx stops while its prefix still exists,
    // the temp dir goes last.
    nginx: Nginx,
    /// Held for its drop: fcgiwrap stops with the server.
    _fcgiwrap: Stopped,
    /// The TLS port on 127.0.0.1.
    pub port: u16,
    /// PEM of the CA that signed the server's certificate: what a client
    /// must trust (for vsad: `SSL_CERT_FILE`).
    pub ca_file: PathBuf,
    project_root: PathBuf,
    dir: tempfile::TempDir,
}

impl HttpsGitServer {
    /// Serves the repositories under `project_root` to user
    /// `x-access-token` with password `token`. `None` (test skipped) when
    /// nginx or fcgiwrap is missing, except under `CI=true`.
    pub fn start(project_root: &Path, token: &str) -> Option<HttpsGitServer> {
        let nginx_bin = require("nginx", "to serve git over HTTPS")?;
        let fcgiwrap_bin = require("fcgiwrap", "to run `git http-backend` behind nginx")?;
        let exec_path = Command::new("git").arg("--exec-path").output().unwrap();
        assert!(exec_path.status.success(), "git --exec-path failed");
        let backend = PathBuf::from(String::from_utf8_lossy(&exec_path.stdout).trim())
            .join("git-http-backend");
        assert!(
            backend.is_file(),
            "{} is missing (it comes with git)",
            backend.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();

        // The CA and the server's certificate.
        crate::loopback_tls(d, "vsa test: git server CA");
        // nginx checks basic auth with crypt(3): bcrypt, cheap cost.
        std::fs::write(
            d.join("htpasswd"),
            format!("x-access-token:{}\n", bcrypt::hash(token, 4).unwrap()),
        )
        .unwrap();

        let socket = d.join("fcgiwrap.sock");
        // Stopped when dropped: also when a panic below ends the setup.
        let mut fcgiwrap = Stopped(
            Command::new(fcgiwrap_bin)
                .arg("-s")
                .arg(format!("unix:{}", socket.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(d.join("fcgiwrap.log")).unwrap())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if let Some(status) = fcgiwrap.0.try_wait().unwrap() {
                panic!(
                    "fcgiwrap exited with {status}: {}",
                    std::fs::read_to_string(d.join("fcgiwrap.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "fcgiwrap made no socket");
            std::thread::sleep(Duration::from_millis(20));
        }

        let port = free_port();
        let vhosts = d.join("conf.d");
        std::fs::create_dir_all(&vhosts).unwrap();
        std::fs::write(
            vhosts.join("git.conf"),
            format!(
                r#"server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {d}/cert.pem;
    ssl_certificate_key {d}/key.pem;
    access_log {d}/git-access.log;
    auth_basic "git";
    auth_basic_user_file {d}/htpasswd;
    client_max_body_size 0;
    # A repository that "moved" to another host name of this server (the
    # redirect is answered before auth).
    location ~ ^/moved/(.*)$ {{
        return 301 https://localhost:{port}/$1$is_args$args;
    }}
    location / {{
        fastcgi_pass unix:{socket};
        fastcgi_param SCRIPT_FILENAME {backend};
        fastcgi_param GIT_PROJECT_ROOT {root};
        fastcgi_param GIT_HTTP_EXPORT_ALL "";
        fastcgi_param PATH_INFO $uri;
        fastcgi_param QUERY_STRING $query_string;
        fastcgi_param REQUEST_METHOD $request_method;
        fastcgi_param CONTENT_TYPE $content_type;
        fastcgi_param CONTENT_LENGTH $content_length;
        fastcgi_param REMOTE_USER $remote_user;
        fastcgi_param REMOTE_ADDR $remote_addr;
        fastcgi_param SERVER_PROTOCOL $server_protocol;
        fastcgi_param GATEWAY_INTERFACE CGI/1.1;
        fastcgi_param HTTP_GIT_PROTOCOL $http_git_protocol;
    }}
}}
"#,
                d = d.display(),
                socket = socket.display(),
                backend = backend.display(),
                root = project_root.display(),
            ),
        )
        .unwrap();
        // The plain port only answers 404 (`Nginx`'s default server).
        let plain_port = free_port();
        let mut nginx = Nginx::configure(nginx_bin, &d.join("nginx"), &vhosts, plain_port);
        if let Err(e) = nginx.test() {
            panic!("the git server's nginx config is wrong: {e}");
        }
        nginx.start(plain_port);
        let server = HttpsGitServer {
            nginx,
            _fcgiwrap: fcgiwrap,
            port,
            ca_file: d.join("ca.pem"),
            project_root: project_root.to_owned(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {port}: {}",
                server.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }

    /// The HTTPS URL of the bare repository `bare` (under the project root).
    pub fn url(&self, bare: &Path) -> String {
        let rel = bare
            .strip_prefix(&self.project_root)
            .expect("the repository is under the server's project root");
        format!("https://127.0.0.1:{}/{}", self.port, rel.display())
    }

    /// A URL of `bare` on this server that redirects to the same
    /// repository under another host name (`localhost`).
    pub fn moved_url(&self, bare: &Path) -> String {
        self.url(bare).replacen(
            &format!(":{}/", self.port),
            &format!(":{}/moved/", self.port),
            1,
        )
    }

    /// nginx's access log of the git server (`$remote_user` included).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("git-access.log")).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        format!(
            "nginx: {}\naccess: {}\nfcgiwrap: {}",
            self.nginx.error_log(),
            self.access_log(),
            std::fs::read_to_string(self.dir.path().join("fcgiwrap.log")).unwrap_or_default()
        )
    }
}

/// A child process stopped when this is dropped.
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        stop(&mut self.0);
    }
}

/// Debian's sshd on a loopback port, serving git to one key.
pub struct SshGitServer {
    child: Option<Child>,
    pub port: u16,
    /// Who logs in: the user running the tests.
    pub user: String,
    /// The client's private key (no passphrase): vsad's `repo.ssh_key_file`.
    pub client_key: PathBuf,
    /// The server's host key as a `known_hosts` line:
    /// `[127.0.0.1]:PORT ssh-ed25519 AAAA...`.
    pub known_hosts_line: String,
    dir: tempfile::TempDir,
}

impl SshGitServer {
    /// `None` (test skipped) when sshd or ssh-keygen is missing, except
    /// under `CI=true`.
    pub fn start() -> Option<SshGitServer> {
        let sshd = require_from("sshd", "openssh-server", "to serve git over SSH")?;
        require_from("ssh-keygen", "openssh-client", "to make SSH keys")?;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let host_key = d.join("host_key");
        let client_key = d.join("client_key");
        keygen(&host_key);
        keygen(&client_key);
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        let user = current_user();
        if is_root() {
            // sshd's privilege separation directory (Debian's service makes
            // it at boot; we run sshd ourselves).
            std::fs::create_dir_all("/run/sshd").unwrap();
        }
        let port = free_port();
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "ListenAddress 127.0.0.1:{port}\n\
                 HostKey {d}/host_key\n\
                 PidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\n\
                 AllowUsers {user}\n\
                 PermitRootLogin prohibit-password\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 PrintMotd no\n\
                 X11Forwarding no\n\
                 AllowTcpForwarding no\n\
                 LogLevel VERBOSE\n",
                d = d.display(),
            ),
        )
        .unwrap();
        let child = Command::new(sshd)
            .arg("-f")
            .arg(d.join("sshd_config"))
            .args(["-D", "-e"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("sshd.log")).unwrap())
            .spawn()
            .unwrap();
        let public = std::fs::read_to_string(d.join("host_key.pub")).unwrap();
        let mut server = SshGitServer {
            child: Some(child),
            port,
            user,
            client_key,
            known_hosts_line: format!("[127.0.0.1]:{port} {}", key_of(&public)),
            dir,
        };
        let log_path = server.dir.path().join("sshd.log");
        let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();
        wait_for_port("sshd", port, server.child.as_mut().unwrap(), logs);
        Some(server)
    }

    /// The `ssh://` URL of the bare repository at `bare` (absolute path).
    pub fn url(&self, bare: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            bare.display()
        )
    }

    /// A `known_hosts` line naming this server with another, fresh key:
    /// what a man in the middle, or a reinstalled server, looks like.
    pub fn other_known_hosts_line(&self) -> String {
        let other = self.dir.path().join("other_host_key");
        if !other.exists() {
            keygen(&other);
        }
        let public = std::fs::read_to_string(other.with_extension("pub")).unwrap();
        format!("[127.0.0.1]:{} {}", self.port, key_of(&public))
    }

    /// The server's host key fingerprint as `ssh-keygen -l` shows it
    /// (`SHA256:...`).
    pub fn fingerprint(&self) -> String {
        let out = Command::new("ssh-keygen")
            .args(["-l", "-E", "sha256", "-f"])
            .arg(self.dir.path().join("host_key.pub"))
            .output()
            .unwrap();
        assert!(out.status.success(), "ssh-keygen -l failed");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .expect("a fingerprint")
            .to_owned()
    }

    /// A new key pair the server does not authorize; returns its private
    /// key.
    pub fn unauthorized_key(&self) -> PathBuf {
        let key = self.dir.path().join("unauthorized_key");
        if !key.exists() {
            keygen(&key);
        }
        key
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for SshGitServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop(&mut c);
        }
    }
}

/// A new ed25519 key pair without passphrase at `path` (and `path.pub`).
fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "vsa-test", "-f"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `type base64` of a `.pub` line (the comment dropped).
fn key_of(public: &str) -> String {
    public
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    assert!(out.status.success(), "id -un failed");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
