//! `vsad` following HTTPS (token) and SSH (key) remotes through real
//! servers on loopback: Debian's nginx with TLS, basic auth and
//! `git http-backend` (fcgiwrap), and Debian's sshd. Pushes go to the bare
//! repository on disk; the daemon fetches them through the server and the
//! host's own nginx serves the result. Wrong credentials and unknown or
//! changed host keys apply nothing, say why, and never print a secret.

use std::path::Path;
use std::time::Duration;

use vsa_tests::daemon::{Remote, Vsad, host_with_a_site};
use vsa_tests::git_servers::{HttpsGitServer, SshGitServer};
use vsa_tests::host::Host;
use vsa_tests::{Upstream, http_get, http_get_until, require};

vsa_tests::child_entry_points!();

const TOKEN: &str = "tok-5f3a9c1e-right-4b7d";
const WRONG_TOKEN: &str = "tok-77d2b0aa-wrong-9e01";

/// vsad follows `url` (polling every second) into `clone/`; `repo_extra`
/// goes under `repo:`.
fn follow(h: &Host, api_port: u16, url: &str, repo_extra: &str) {
    h.configure(&format!(
        "repo:\n  path: clone\n  url: {url}\n  poll: 1s\n{repo_extra}dashboard:\n  listen: 127.0.0.1:{api_port}\n"
    ));
}

fn served(h: &Host, domain: &str) -> bool {
    http_get(h.http_port, domain, "/", &[]).status == 200
}

/// The body `domain` is served with, allowing for nginx's worker swap.
fn body_soon(h: &Host, domain: &str) -> String {
    let r = http_get_until(h.http_port, domain, "/", &[], |r| r.status == 200);
    assert_eq!(r.status, 200, "{domain} is not served: {}", r.body);
    r.body
}

/// `vsa_apply_errors_total{kind="fetch"}` from vsad's /metrics.
fn fetch_errors(d: &Vsad) -> u64 {
    let metrics = http_get(d.port, "localhost", "/metrics", &[]).body;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("vsa_apply_errors_total{kind=\"fetch\"} "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until a fetch failed with `needle` in the logged error and in
/// `/api/status`'s `last_error`; returns that log line.
fn fetch_failure(d: &mut Vsad, needle: &str) -> String {
    d.wait(
        &format!("a fetch error naming `{needle}`"),
        Duration::from_secs(20),
        |d| {
            fetch_errors(d) >= 1
                && d.log().contains(needle)
                && d.status().is_some_and(|s| {
                    s["last_error"]
                        .as_str()
                        .is_some_and(|e| e.contains("cannot") && e.contains(needle))
                })
        },
    );
    let line = d
        .log()
        .lines()
        .find(|l| l.contains("fetch failed") && l.contains(needle))
        .unwrap_or_else(|| panic!("no `fetch failed` line names `{needle}`:\n{}", d.log()))
        .to_owned();
    eprintln!("vsad: {line}");
    line
}

/// Nothing of the desired state reached the host: no commit in force, no
/// reconcile, no vhost, no reload, the site unknown to nginx.
fn assert_nothing_applied(h: &Host, d: &Vsad) {
    let st = d.status().unwrap();
    assert!(st["commit"].is_null(), "{st}");
    assert!(st["last_reconcile"].is_null(), "{st}");
    assert!(!h.path("etc/nginx/conf.d/a.vsa.test.conf").exists());
    assert!(!h.path("clone/sites").exists(), "a clone was checked out");
    assert_eq!(h.reloads(), 0);
    assert_eq!(http_get(h.http_port, "a.vsa.test", "/", &[]).status, 404);
}

/// `secret` is in nothing vsad wrote or answers: its log, status, plan,
/// metrics and audit trail.
fn assert_never_shown(h: &Host, d: &Vsad, secret: &str) {
    let outputs = [
        ("the log", d.log()),
        (
            "/api/status",
            d.status().map(|s| s.to_string()).unwrap_or_default(),
        ),
        (
            "/api/plan",
            d.get_json("/api/plan")
                .map(|s| s.to_string())
                .unwrap_or_default(),
        ),
        (
            "/metrics",
            http_get(d.port, "localhost", "/metrics", &[]).body,
        ),
        (
            "the audit log",
            std::fs::read_to_string(h.path("var/log/vsa/audit.jsonl")).unwrap_or_default(),
        ),
    ];
    for (what, text) in outputs {
        assert!(!text.contains(secret), "{what} shows a secret:\n{text}");
    }
}

/// An empty home for vsad, so the machine's `~/.ssh/known_hosts` never
/// decides a test.
fn empty_home(h: &Host) -> String {
    let home = h.path("home");
    std::fs::create_dir_all(&home).unwrap();
    home.display().to_string()
}

/// vsad for `h` with its API on `port`, an empty `HOME` (the machine's
/// `~/.ssh` never decides a test) and, with `ca`, trusting that CA.
/// `started`: wait for the first reconcile; else only for the API (a
/// first fetch that fails leaves nothing to reconcile).
fn vsad(h: &Host, port: u16, ca: Option<&str>, started: bool) -> Vsad {
    let home = empty_home(h);
    let mut env = vec![("HOME", home.as_str())];
    env.extend(ca.map(|ca| ("SSL_CERT_FILE", ca)));
    if started {
        Vsad::start_with_env(h, port, &env)
    } else {
        Vsad::spawn_with(h, port, &env, None)
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// A host with site `a.vsa.test` in a bare repository served over HTTPS
/// (token `TOKEN`), and vsad's config following it with `token` in
/// `git.token`.
struct HttpsCase {
    h: Host,
    up: Upstream,
    remote: Remote,
    first: String,
    server: HttpsGitServer,
    token_file: std::path::PathBuf,
    url: String,
    port: u16,
}

fn https_case(token: &str) -> Option<HttpsCase> {
    let (h, up, remote, first) = host_with_a_site()?;
    let server = HttpsGitServer::start(&h.root, TOKEN)?;
    let token_file = h.path("git.token");
    write(&token_file, &format!("{token}\n"));
    let port = 0;
    let url = server.url(&remote.bare);
    follow(&h, port, &url, "  token_file: git.token\n");
    Some(HttpsCase {
        h,
        up,
        remote,
        first,
        server,
        token_file,
        url,
        port,
    })
}

impl HttpsCase {
    /// `SSL_CERT_FILE` for vsad: the test CA.
    fn trust(&self) -> String {
        self.server.ca_file.display().to_string()
    }
}

#[test]
fn https_with_the_right_token_clones_and_follows_pushes() {
    let Some(case) = https_case(TOKEN) else {
        return;
    };
    let trust = case.trust();
    let HttpsCase {
        h,
        up,
        remote,
        first,
        server,
        port,
        ..
    } = case;
    let mut d = vsad(&h, port, Some(&trust), true);

    assert_eq!(d.status().unwrap()["commit"], first.as_str(), "{}", d.log());
    assert!(body_soon(&h, "a.vsa.test").starts_with("upstream=app "));
    // It went through the server, authenticated.
    let access = server.access_log();
    assert!(
        access.contains("x-access-token") && access.contains("git-upload-pack"),
        "{}",
        server.logs()
    );

    // A second commit is fetched and applied.
    remote.site("b.vsa.test", &up);
    let second = remote.push("site b");
    d.wait_served_at(&h, "b.vsa.test", &second, Duration::from_secs(15));
    assert_eq!(d.status().unwrap()["in_sync"], true);
    assert_eq!(fetch_errors(&d), 0, "{}", d.log());
    let metrics = http_get(d.port, "localhost", "/metrics", &[]).body;
    assert!(
        metrics.contains("\nvsa_last_successful_fetch_timestamp_seconds 1"),
        "{metrics}"
    );
    assert_never_shown(&h, &d, TOKEN);

    let (status, _) = d.terminate();
    assert!(status.success(), "{status}: {}", d.log());
}

#[test]
fn https_with_a_wrong_token_applies_nothing_names_the_refusal_and_recovers() {
    let Some(case) = https_case(WRONG_TOKEN) else {
        return;
    };
    let trust = case.trust();
    let HttpsCase {
        h,
        first,
        server,
        token_file,
        url,
        port,
        ..
    } = case;
    let mut d = vsad(&h, port, Some(&trust), false);

    let line = fetch_failure(&mut d, "refused the token in repo.token_file");
    assert!(
        line.contains(&url) && line.contains(&token_file.display().to_string()),
        "the error names the URL and the token file: {line}"
    );
    // The server saw the attempts, and refused them.
    assert!(server.access_log().contains(" 401 "), "{}", server.logs());
    // Polled every second, refused every time: warned about once.
    d.wait("three failed polls", Duration::from_secs(15), |d| {
        fetch_errors(d) >= 3
    });
    let warnings = d
        .log()
        .matches("fetch failed; the commit in force stays")
        .count();
    assert_eq!(warnings, 1, "{}", d.log());
    assert_nothing_applied(&h, &d);
    assert_never_shown(&h, &d, WRONG_TOKEN);
    assert_never_shown(&h, &d, TOKEN);

    // The right token, rotated in place, is read at the next poll.
    write(&token_file, &format!("{TOKEN}\n"));
    d.wait(
        "a served after the token fix",
        Duration::from_secs(15),
        |_| served(&h, "a.vsa.test"),
    );
    d.wait("the commit in force", Duration::from_secs(5), |d| {
        d.status().unwrap()["commit"] == first.as_str()
    });
    // The fetch error is gone from the status with the fetch that worked.
    let st = d.status().unwrap();
    assert!(st["last_error"].is_null(), "{st}");
    assert_never_shown(&h, &d, WRONG_TOKEN);
    assert_never_shown(&h, &d, TOKEN);
}

#[test]
fn https_credentials_in_the_url_work_and_are_written_nowhere() {
    let Some(case) = https_case(TOKEN) else {
        return;
    };
    let trust = case.trust();
    let HttpsCase {
        h,
        remote,
        server,
        port,
        first,
        ..
    } = case;
    // The token in repo.url itself (no repo.token_file).
    let url = server.url(&remote.bare).replacen(
        "https://",
        &format!("https://x-access-token:{TOKEN}@"),
        1,
    );
    follow(&h, port, &url, "");
    let d = vsad(&h, port, Some(&trust), true);
    assert_eq!(d.status().unwrap()["commit"], first.as_str(), "{}", d.log());
    assert!(body_soon(&h, "a.vsa.test").starts_with("upstream=app "));
    // Not in any file of the clone (config, reflogs, FETCH_HEAD, refs:
    // readable by all), nor anywhere shown.
    let mut dirs = vec![h.path("clone/.git")];
    let mut files = 0;
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                files += 1;
                let bytes = std::fs::read(&p).unwrap();
                assert!(
                    !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
                    "{} holds the token",
                    p.display()
                );
            }
        }
    }
    assert!(files > 10, "the clone was walked ({files} files)");
    assert_never_shown(&h, &d, TOKEN);
}

#[test]
fn https_token_is_not_sent_where_a_redirect_points() {
    let Some(case) = https_case(TOKEN) else {
        return;
    };
    let trust = case.trust();
    let HttpsCase {
        h,
        remote,
        server,
        port,
        ..
    } = case;
    // repo.url redirects to another host name: another origin.
    let url = server.moved_url(&remote.bare);
    follow(&h, port, &url, "  token_file: git.token\n");
    let mut d = vsad(&h, port, Some(&trust), false);

    let line = fetch_failure(&mut d, "is sent only to repo.url's own host over https");
    assert!(
        line.contains("https://localhost:"),
        "names who asked: {line}"
    );
    let access = server.access_log();
    assert!(
        access.contains(" 301 "),
        "the redirect was followed: {access}"
    );
    assert!(
        !access.contains("x-access-token"),
        "the token went to the redirect's target: {access}"
    );
    assert_nothing_applied(&h, &d);
    assert_never_shown(&h, &d, TOKEN);
}

#[test]
fn https_with_an_untrusted_certificate_applies_nothing() {
    let Some(case) = https_case(TOKEN) else {
        return;
    };
    let HttpsCase {
        h, server, port, ..
    } = case;
    // The system's CA store only: the test CA is not in it.
    let mut d = vsad(&h, port, None, false);

    let line = fetch_failure(&mut d, "certificate");
    assert!(line.contains("SSL_CERT_FILE"), "a hint at the fix: {line}");
    assert_nothing_applied(&h, &d);
    assert!(
        !server.access_log().contains("git-upload-pack"),
        "nothing was asked of an untrusted server: {}",
        server.logs()
    );
    assert_never_shown(&h, &d, TOKEN);
}

#[test]
fn ssh_with_the_right_key_and_a_known_host_key_clones_and_follows_pushes() {
    let Some((h, up, remote, first)) = host_with_a_site() else {
        return;
    };
    let Some(server) = SshGitServer::start() else {
        return;
    };
    write(
        &h.path("known_hosts"),
        &format!("# the git server\n{}\n", server.known_hosts_line),
    );
    let port = 0;
    follow(
        &h,
        port,
        &server.url(&remote.bare),
        &format!(
            "  ssh_key_file: {}\n  known_hosts_file: known_hosts\n",
            server.client_key.display()
        ),
    );
    let mut d = vsad(&h, port, None, true);

    assert_eq!(
        d.status().unwrap()["commit"],
        first.as_str(),
        "{}\nsshd: {}",
        d.log(),
        server.log()
    );
    assert!(body_soon(&h, "a.vsa.test").starts_with("upstream=app "));
    assert!(
        server.log().contains("Accepted publickey"),
        "{}",
        server.log()
    );

    remote.site("b.vsa.test", &up);
    let second = remote.push("site b");
    d.wait_served_at(&h, "b.vsa.test", &second, Duration::from_secs(15));
    assert_eq!(fetch_errors(&d), 0, "{}", d.log());

    let (status, _) = d.terminate();
    assert!(status.success(), "{status}: {}", d.log());
}

#[test]
fn ssh_with_an_unknown_or_changed_host_key_is_refused_before_logging_in() {
    let Some((h, _up, remote, first)) = host_with_a_site() else {
        return;
    };
    let Some(server) = SshGitServer::start() else {
        return;
    };
    let port = 0;
    let url = server.url(&remote.bare);
    let key = format!("  ssh_key_file: {}\n", server.client_key.display());
    let name = format!("[127.0.0.1]:{}", server.port);
    let known_hosts = h.path("known_hosts");
    let known_hosts_shown = known_hosts.display().to_string();

    // No repo.known_hosts_file and an empty ~/.ssh: unknown, refused.
    follow(&h, port, &url, &key);
    let mut d = vsad(&h, port, None, false);
    let line = fetch_failure(&mut d, "unknown or does not match ~/.ssh/known_hosts");
    // The fingerprint is the one `ssh-keygen -l` shows for the server.
    assert!(
        line.contains(&format!(
            "the host key of {name} (ssh-ed25519 {})",
            server.fingerprint()
        )),
        "{line}"
    );
    assert!(line.contains("repo.known_hosts_file"), "{line}");
    assert_nothing_applied(&h, &d);
    d.terminate();

    // A known_hosts_file with another key for the server: a changed key.
    write(
        &known_hosts,
        &format!("{}\n", server.other_known_hosts_line()),
    );
    follow(
        &h,
        port,
        &url,
        &format!("{key}  known_hosts_file: known_hosts\n"),
    );
    let mut d = vsad(&h, port, None, false);
    let line = fetch_failure(&mut d, "does not match the ssh-ed25519 key for it");
    assert!(
        line.contains(&name) && line.contains(&format!("{known_hosts_shown} (line 1)")),
        "{line}"
    );
    assert_nothing_applied(&h, &d);
    d.terminate();

    // A known_hosts_file that knows other hosts only: unknown, refused.
    let real_key = server
        .known_hosts_line
        .split_once(' ')
        .map(|(_, k)| k)
        .unwrap();
    write(
        &known_hosts,
        &format!("[127.0.0.1]:1 {real_key}\ngit.example.com {real_key}\n"),
    );
    let mut d = vsad(&h, port, None, false);
    let line = fetch_failure(&mut d, "is not in repo.known_hosts_file");
    assert!(
        line.contains(&name) && line.contains(&known_hosts_shown),
        "{line}"
    );
    assert!(
        line.contains(&format!("-p {} 127.0.0.1", server.port)),
        "{line}"
    );
    assert_nothing_applied(&h, &d);
    d.terminate();

    // The key was never offered to a server that was not verified (sshd
    // logs every public key offered, accepted or not).
    assert!(!server.log().contains("publickey"), "{}", server.log());

    // The right host key, and the same setup works.
    write(&known_hosts, &format!("{}\n", server.known_hosts_line));
    let d = vsad(&h, port, None, true);
    assert_eq!(d.status().unwrap()["commit"], first.as_str(), "{}", d.log());
    assert!(body_soon(&h, "a.vsa.test").starts_with("upstream=app "));
}

#[test]
fn ssh_with_a_key_the_server_does_not_authorize_applies_nothing() {
    let Some((h, _up, remote, _)) = host_with_a_site() else {
        return;
    };
    let Some(server) = SshGitServer::start() else {
        return;
    };
    write(
        &h.path("known_hosts"),
        &format!("{}\n", server.known_hosts_line),
    );
    let key = server.unauthorized_key();
    let port = 0;
    let url = server.url(&remote.bare);
    follow(
        &h,
        port,
        &url,
        &format!(
            "  ssh_key_file: {}\n  known_hosts_file: known_hosts\n",
            key.display()
        ),
    );
    let mut d = vsad(&h, port, None, false);

    let line = fetch_failure(&mut d, "refused the key in repo.ssh_key_file");
    assert!(
        line.contains(&url) && line.contains(&key.display().to_string()),
        "{line}"
    );
    assert!(
        !server.log().contains("Accepted publickey"),
        "{}",
        server.log()
    );
    assert_nothing_applied(&h, &d);
    // The private key itself is never shown.
    let private = std::fs::read_to_string(&key).unwrap();
    let secret_line = private.lines().nth(1).unwrap();
    assert_never_shown(&h, &d, secret_line);
}

/// A remote on a loopback port that accepts connections and then never
/// says a word, or (`trickle`) starts to answer and adds a byte every
/// 300 ms, never finishing: each read gets data in time, the fetch never
/// ends. Connections are held until the test ends.
fn unhelpful_server(
    trickle: Option<&'static [u8]>,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut stream in listener.incoming().flatten() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match trickle {
                Some(start) => {
                    std::thread::spawn(move || {
                        use std::io::Write;
                        let mut next = start;
                        while stream.write_all(next).is_ok() {
                            next = b"x";
                            std::thread::sleep(Duration::from_millis(300));
                        }
                    });
                }
                None => held.push(stream),
            }
        }
    });
    (port, accepted)
}

#[test]
fn a_remote_that_goes_quiet_times_out_and_the_daemon_stays_responsive() {
    let Some(bin) = require("nginx", "to run vsad against a real nginx") else {
        return;
    };
    let mut h = Host::new(bin);
    h.start();
    let (silent, _) = unhelpful_server(None);
    // A TLS record header announcing a 16 KiB handshake record.
    let (trickling, trickled) = unhelpful_server(Some(&[0x16, 0x03, 0x03, 0x40, 0x00]));
    for (url, needle) in [
        // libgit2's timeouts (repo.timeout) end a fetch from a remote that
        // stops answering, over HTTPS and over SSH.
        (
            format!("https://127.0.0.1:{silent}/state.git"),
            "did not answer within repo.timeout",
        ),
        (
            format!("ssh://git@127.0.0.1:{silent}/state.git"),
            "did not answer within repo.timeout",
        ),
        // A remote that answers too slowly to ever finish (libssh2 bounds
        // a whole SSH handshake; nothing bounds a TLS one): vsad stops
        // waiting after 4 × repo.timeout and starts no second fetch while
        // that one runs.
        (
            format!("https://127.0.0.1:{trickling}/state.git"),
            "no result within 4 s",
        ),
    ] {
        let port = 0;
        follow(&h, port, &url, "  timeout: 1s\n");
        let mut d = vsad(&h, port, None, false);
        fetch_failure(&mut d, needle);
        // The loop goes on: it keeps answering and keeps polling.
        let seen = fetch_errors(&d);
        d.wait("another failed poll", Duration::from_secs(15), |d| {
            fetch_errors(d) > seen
        });
        assert_eq!(http_get(d.port, "localhost", "/healthz", &[]).status, 200);
        assert_nothing_applied(&h, &d);
        if url.contains(&format!(":{trickling}/")) {
            // The stuck fetch is the only one: no second was started.
            assert_eq!(trickled.load(std::sync::atomic::Ordering::SeqCst), 1);
        }
        // SIGTERM is not held up by a fetch that never ends.
        let (status, took) = d.terminate();
        assert!(status.success(), "{status}: {}", d.log());
        assert!(took < Duration::from_secs(5), "took {took:?}");
        std::fs::remove_dir_all(h.path("clone")).ok();
    }
}

#[test]
fn a_lock_file_left_by_a_killed_fetch_is_cleared_at_start() {
    let Some((h, up, remote, _)) = host_with_a_site() else {
        return;
    };
    let port = 0;
    follow(&h, port, &remote.url(), "");
    let mut d = vsad(&h, port, None, true);
    d.terminate();
    // As if vsad had been killed while the fetch updated its ref: libgit2
    // would refuse every later fetch ("file exists").
    let lock = h.path("clone/.git/refs/remotes/origin/main.lock");
    write(&lock, "");
    remote.site("b.vsa.test", &up);
    let second = remote.push("site b");
    let mut d = vsad(&h, port, None, true);
    d.wait_served_at(&h, "b.vsa.test", &second, Duration::from_secs(15));
    assert!(!lock.exists());
    assert!(d.log().contains("removed a lock file"), "{}", d.log());
}
