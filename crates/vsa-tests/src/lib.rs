//! Harness for vsa's end-to-end tests against real services.
//!
//! Tests use the real thing (DESIGN §8): Debian's nginx run with its own
//! prefix on loopback ports, plain TCP upstreams, a tiny DNS responder for
//! container names. A test that needs a part the machine lacks skips with a
//! loud message, except under `CI=true`, where it fails.

pub mod daemon;
pub mod docker;
pub mod git_servers;
pub mod host;
pub mod pebble;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Finds a program needed by a test. Without it the test is skipped
/// (returns `None`) locally, and fails under `CI=true`.
pub fn require(program: &str, why: &str) -> Option<PathBuf> {
    require_from(program, program, why)
}

/// [`require`] for a program that Debian ships in `package`.
pub fn require_from(program: &str, package: &str, why: &str) -> Option<PathBuf> {
    let candidates = [
        PathBuf::from(program),
        PathBuf::from("/usr/sbin").join(program),
        PathBuf::from("/usr/bin").join(program),
        PathBuf::from("/usr/local/sbin").join(program),
        PathBuf::from("/usr/local/bin").join(program),
    ];
    if let Some(p) = candidates.iter().find(|p| p.is_absolute() && p.is_file()) {
        return Some(p.clone());
    }
    if let Ok(path) = std::env::var("PATH") {
        for dir in path.split(':') {
            let p = Path::new(dir).join(program);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let msg = format!(
        "`{program}` is not installed; it is needed {why} (Debian: apt-get install {package})"
    );
    skip(&msg);
    None
}

/// Skips a test for want of a part: a panic under `CI=true`, else a banner
/// on the real stderr (libtest captures `eprintln!` of a passing test, and
/// a skip must not pass unseen).
pub fn skip(msg: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}");
    }
    let rule = "=====================================================================";
    let _ = writeln!(std::io::stderr(), "\n{rule}\nSKIPPED: {msg}\n{rule}\n");
}

/// A free TCP port on loopback, for a server a test starts (nginx, pebble,
/// a git server) that binds it itself.
///
/// Not a `:0` bind released again: the kernel hands that port to the next
/// `:0` bind or outgoing connection of any test running beside this one,
/// and two tests then race for it. These ports come from below the
/// kernel's ephemeral range (`net.ipv4.ip_local_port_range`, 32768–60999
/// by default), which the kernel never picks on its own, each one handed
/// out once per process (the tests of one binary run as threads of one
/// process; binaries run one after another), and checked free.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000; // up to 31,999
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Another process (a bench beside a test run) starts elsewhere.
    let offset = (std::process::id() * 7919) % SPAN;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < SPAN, "no free port left below the ephemeral range");
        let port = (LOW + (offset + n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// An nginx master process with its own prefix directory, on loopback.
pub struct Nginx {
    pub bin: PathBuf,
    pub prefix: PathBuf,
    pub conf: PathBuf,
    child: Option<Child>,
}

impl Nginx {
    /// Writes `nginx.conf` under `prefix`, including `vhosts/*.conf`, with
    /// a default server answering 404 on `port` (so nginx listens before any
    /// vhost exists, and unknown names get a 404).
    pub fn configure(bin: PathBuf, prefix: &Path, vhosts: &Path, port: u16) -> Nginx {
        for d in ["tmp", "logs"] {
            std::fs::create_dir_all(prefix.join(d)).unwrap();
        }
        let p = prefix.display();
        let conf = prefix.join("nginx.conf");
        let user = if is_root() { "user root root;\n" } else { "" };
        std::fs::write(
            &conf,
            format!(
                "{user}daemon off;\nmaster_process on;\nworker_processes 1;\npid {p}/nginx.pid;\n\
                 error_log {p}/logs/error.log info;\n\
                 events {{ worker_connections 128; }}\n\
                 http {{\n\
                 \x20   default_type application/octet-stream;\n\
                 \x20   access_log {p}/logs/access.log;\n\
                 \x20   client_body_temp_path {p}/tmp/body;\n\
                 \x20   proxy_temp_path {p}/tmp/proxy;\n\
                 \x20   fastcgi_temp_path {p}/tmp/fastcgi;\n\
                 \x20   uwsgi_temp_path {p}/tmp/uwsgi;\n\
                 \x20   scgi_temp_path {p}/tmp/scgi;\n\
                 \x20   server {{ listen {port} default_server; return 404; }}\n\
                 \x20   include {}/*.conf;\n\
                 }}\n",
                vhosts.display()
            ),
        )
        .unwrap();
        Nginx {
            bin,
            prefix: prefix.to_owned(),
            conf,
            child: None,
        }
    }

    fn args(&self) -> Vec<String> {
        vec![
            "-p".into(),
            self.prefix.display().to_string(),
            "-c".into(),
            self.conf.display().to_string(),
        ]
    }

    /// The argv that runs `nginx -t` on this instance (for vsa's config).
    pub fn test_argv(&self) -> Vec<String> {
        let mut v = vec![self.bin.display().to_string()];
        v.extend(self.args());
        v.push("-t".into());
        v
    }

    /// The argv that reloads this instance.
    pub fn reload_argv(&self) -> Vec<String> {
        let mut v = vec![self.bin.display().to_string()];
        v.extend(self.args());
        v.extend(["-s".into(), "reload".into()]);
        v
    }

    /// Runs `nginx -t`; `Err` carries nginx's own output.
    pub fn test(&self) -> Result<(), String> {
        let out = Command::new(&self.bin)
            .args(self.args())
            .arg("-t")
            .output()
            .unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Starts the master process and waits until `port` accepts connections
    /// and the pid file names the master (nginx listens before it writes
    /// it; systemd waits for the pid file the same way).
    pub fn start(&mut self, port: u16) {
        let child = Command::new(&self.bin)
            .args(self.args())
            .stdin(Stdio::null())
            // Workers inherit these; a test harness pipe held open by a
            // stray worker would hang whoever reads it.
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid_written = || {
            std::fs::read_to_string(self.prefix.join("nginx.pid"))
                .is_ok_and(|p| p.trim().parse::<u32>().is_ok())
        };
        while TcpStream::connect(("127.0.0.1", port)).is_err() || !pid_written() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("nginx exited with {status}: {}", self.error_log());
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {port}: {}",
                self.error_log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.error_log_path()).unwrap_or_default()
    }

    pub fn error_log_path(&self) -> PathBuf {
        self.prefix.join("logs/error.log")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new(&self.bin)
                .args(self.args())
                .args(["-s", "stop"])
                .output();
            // Without its pid file `-s stop` cannot find the master: signal
            // it directly, so it takes its workers down with it.
            stop(&mut c);
        }
    }
}

/// Stops a child process: SIGTERM, then SIGKILL after 5 s; reaped.
pub(crate) fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub(crate) fn is_root() -> bool {
    // Without libc: root's home and the effective uid of /proc/self.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// An HTTP upstream that answers every request with `200` and a body naming
/// itself, the path and the Host header it received.
pub struct Upstream {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl Upstream {
    pub fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let name = name.to_owned();
        thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let name = name.clone();
                        thread::spawn(move || serve_one(stream, &name));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Upstream { port, stop }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve_one(stream: TcpStream, name: &str) {
    stream.set_nonblocking(false).ok();
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut host = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("host:") {
            host = v.trim().to_owned();
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_owned();
    let body = format!("upstream={name} path={path} host={host}\n");
    let mut s = stream;
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// A response as the tests look at it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A plain HTTP/1.1 GET to `127.0.0.1:port` with the given Host header.
/// `http_get` until `done` holds or 5 s pass (a reload is a signal: nginx
/// swaps its workers shortly after `nginx -s reload` returns).
pub fn http_get_until(
    port: u16,
    host: &str,
    path: &str,
    extra_headers: &[(&str, &str)],
    done: impl Fn(&Response) -> bool,
) -> Response {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // A short read timeout: a request that an old worker accepted just
        // before a reload may hang there (e.g. resolving a container name
        // the new config no longer has); the next try reaches a new worker.
        let r = request(
            port,
            "GET",
            host,
            path,
            extra_headers,
            b"",
            Duration::from_secs(2),
        );
        if done(&r) || Instant::now() >= deadline {
            return r;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

pub fn http_get(port: u16, host: &str, path: &str, extra_headers: &[(&str, &str)]) -> Response {
    http_request(port, "GET", host, path, extra_headers, b"")
}

/// One HTTP/1.1 request to `127.0.0.1:port` (`Connection: close`). A
/// connection that fails or is reset (an old nginx worker going away
/// during a reload) is status 0 with the error as body, so that
/// `http_get_until` tries again.
pub fn http_request(
    port: u16,
    method: &str,
    host: &str,
    path: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    request(
        port,
        method,
        host,
        path,
        extra_headers,
        body,
        Duration::from_secs(10),
    )
}

fn request(
    port: u16,
    method: &str,
    host: &str,
    path: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Response {
    let exchange = || -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(timeout))?;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
        for (k, v) in extra_headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method != "GET" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())?;
        s.write_all(body)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        Ok(raw)
    };
    let raw = match exchange() {
        Ok(raw) => raw,
        Err(e) => {
            return Response {
                status: 0,
                headers: Vec::new(),
                body: e.to_string(),
            };
        }
    };
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Response {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// `Authorization: Basic ...` for a user and password.
pub fn basic_auth(user: &str, password: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{password}");
    let bytes = input.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    format!("Basic {out}")
}

/// A DNS responder on UDP loopback that answers every A query with
/// 127.0.0.1: nginx's `resolver` then finds "containers" on loopback.
pub struct Dns {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Dns {
    pub fn start() -> Dns {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop2.load(Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = dns_reply(&buf[..n]) {
                    let _ = sock.send_to(&reply, peer);
                }
            }
        });
        Dns { addr, stop }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn dns_reply(q: &[u8]) -> Option<Vec<u8>> {
    if q.len() < 12 {
        return None;
    }
    // Find the end of the question name, then QTYPE and QCLASS.
    let mut i = 12;
    while i < q.len() && q[i] != 0 {
        i += 1 + q[i] as usize;
    }
    let qend = i + 5;
    if qend > q.len() {
        return None;
    }
    let qtype = u16::from_be_bytes([q[i + 1], q[i + 2]]);
    let mut r = Vec::with_capacity(qend + 16);
    r.extend_from_slice(&q[..2]); // id
    r.extend_from_slice(&[0x81, 0x80]); // response, recursion available
    r.extend_from_slice(&[0, 1]); // one question
    r.extend_from_slice(&[0, u8::from(qtype == 1)]); // answers
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(&q[12..qend]);
    if qtype == 1 {
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 127, 0, 0, 1]);
    }
    Some(r)
}

/// A temporary host root holding `repo/` with a one-host fleet (`test-01`)
/// and an empty `repo/sites/`. Returns the dir guard, the root and the repo.
pub fn test_repo() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let repo = root.join("repo");
    std::fs::create_dir_all(repo.join("sites")).unwrap();
    std::fs::write(
        repo.join("fleet.yaml"),
        "apiVersion: vsa/v1\nkind: Fleet\nhosts:\n  - id: test-01\n",
    )
    .unwrap();
    (dir, root, repo)
}

/// A test CA and a certificate it signed for `127.0.0.1` and `localhost`,
/// written to `dir` as `ca.pem`, `cert.pem` and `key.pem`: TLS for a
/// server the tests run on loopback.
pub fn loopback_tls(dir: &Path, ca_name: &str) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

/// The entry points the harnesses re-enter a test binary through: `Vsad`
/// and `Host::vsactl_child` start the running test binary with `--exact
/// child_vsad` or `--exact child_vsactl`. Each test file that starts
/// either calls this once, at its top level; in a normal run both are
/// ignored tests.
#[macro_export]
macro_rules! child_entry_points {
    () => {
        /// Entry point for the daemon child processes; does nothing in a
        /// normal run.
        #[test]
        #[ignore = "entered only as a child process by the other tests"]
        fn child_vsad() {
            $crate::daemon::child_main();
        }

        /// Entry point for the `vsactl` child processes; does nothing in a
        /// normal run.
        #[test]
        #[ignore = "entered only as a child process by the other tests"]
        fn child_vsactl() {
            $crate::host::child_main();
        }
    };
}
