//! What a hostile neighbour on the same host must not win: the nginx
//! container (which may write the vhost and access-log directories) or
//! another local user planting links, FIFOs and files under the names vsa
//! uses. Against Debian's real nginx and the real filesystem.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use vsa_tests::host::Host;
use vsa_tests::{Upstream, basic_auth, http_get, require};

fn nginx() -> Option<PathBuf> {
    require("nginx", "to apply against a real nginx")
}

vsa_tests::child_entry_points!();

/// A file outside every directory vsa writes, which no write may reach.
struct Decoy {
    path: PathBuf,
}

impl Decoy {
    fn new(dir: &Path, name: &str) -> Decoy {
        let path = dir.join(name);
        std::fs::write(&path, "decoy: not vsa's\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Decoy { path }
    }

    fn plant(&self, at: &Path) {
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        symlink(&self.path, at).unwrap();
    }

    fn assert_untouched(&self) {
        let m = std::fs::metadata(&self.path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&self.path).unwrap(),
            "decoy: not vsa's\n",
            "{} was written through a link",
            self.path.display()
        );
        assert_eq!(
            m.mode() & 0o7777,
            0o600,
            "{} was chmod-ed",
            self.path.display()
        );
        assert_eq!(
            (m.uid(), m.gid()),
            (rustix_ids().0, rustix_ids().1),
            "{} was chown-ed",
            self.path.display()
        );
    }
}

fn rustix_ids() -> (u32, u32) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |k: &str| -> u32 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (field("Uid:"), field("Gid:"))
}

#[test]
fn links_planted_under_every_name_a_writer_uses_are_never_followed() {
    let Some(bin) = nginx() else { return };
    let up = Upstream::start("app");
    let mut h = Host::new(bin);
    let outside = h.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    h.url_site("open.vsa.test", &up);
    h.auth_site("locked.vsa.test", &up, "bob", "pw-1");
    h.start();

    // The temporary names writers used to take (`.vsa-tmp.<name>.<pid>`,
    // and vsactl runs in this process here), for every file a pass writes.
    let pid = std::process::id();
    let mut decoys = Vec::new();
    for (dir, name) in [
        ("etc/nginx/conf.d", "open.vsa.test.conf"),
        ("etc/nginx/conf.d", "locked.vsa.test.conf"),
        ("etc/nginx/conf.d", "00-vsa-http.conf"),
        ("etc/nginx/htpasswd", "locked.vsa.test.htpasswd"),
    ] {
        let d = Decoy::new(&outside, &format!("tmp-{name}"));
        d.plant(&h.path(&format!("{dir}/.vsa-tmp.{name}.{pid}")));
        decoys.push(d);
    }
    // The access log is created by vsa if missing: a link there is a name
    // in the way, not a file to open.
    let log = Decoy::new(&outside, "access-log");
    log.plant(&h.path("var/log/nginx/domains/open.vsa.test.access.json"));
    decoys.push(log);

    assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);
    for d in &decoys {
        d.assert_untouched();
    }
    // The sites are served, and the leftover links are gone (not followed).
    assert_eq!(http_get(h.http_port, "open.vsa.test", "/", &[]).status, 200);
    let auth = basic_auth("bob", "pw-1");
    assert_eq!(
        http_get(
            h.http_port,
            "locked.vsa.test",
            "/",
            &[("Authorization", &auth)]
        )
        .status,
        200
    );
    for dir in ["etc/nginx/conf.d", "etc/nginx/htpasswd"] {
        let left: Vec<String> = std::fs::read_dir(h.path(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".vsa-tmp."))
            .collect();
        assert!(left.is_empty(), "{dir}: {left:?}");
    }
    let ht =
        std::fs::symlink_metadata(h.path("etc/nginx/htpasswd/locked.vsa.test.htpasswd")).unwrap();
    assert!(ht.is_file());
    assert_eq!(ht.mode() & 0o777, 0o640);
}

#[test]
fn a_planted_lock_or_audit_log_stops_the_apply_and_is_never_written_through() {
    let Some(bin) = nginx() else { return };
    let up = Upstream::start("app");
    let mut h = Host::new(bin);
    let outside = h.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    h.url_site("open.vsa.test", &up);
    h.start();

    // The lock: opening it must not follow a link (it would be truncated
    // and written with "pid N").
    std::fs::create_dir_all(h.path("var/lib/vsa")).unwrap();
    std::fs::set_permissions(
        h.path("var/lib/vsa"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    let lock = Decoy::new(&outside, "lock");
    lock.plant(&h.path("var/lib/vsa/apply.lock"));
    let out = h.vsactl_child(&["apply", "--yes"], &[]);
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("apply.lock"), "{err}");
    assert!(err.contains("symbolic link"), "{err}");
    lock.assert_untouched();
    assert!(!h.path("etc/nginx/conf.d/open.vsa.test.conf").exists());
    std::fs::remove_file(h.path("var/lib/vsa/apply.lock")).unwrap();

    // The audit log: appended to, never through a link.
    let audit = Decoy::new(&outside, "audit");
    audit.plant(&h.path("var/log/vsa/audit.jsonl"));
    let out = h.vsactl_child(&["apply", "--yes"], &[]);
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("audit.jsonl"), "{err}");
    audit.assert_untouched();
    std::fs::remove_file(h.path("var/log/vsa/audit.jsonl")).unwrap();

    // A state dir others can write is refused: what is in it is trusted.
    std::fs::set_permissions(
        h.path("var/lib/vsa"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    let out = h.vsactl_child(&["apply", "--yes"], &[]);
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("writable by nobody else"), "{err}");
    std::fs::set_permissions(
        h.path("var/lib/vsa"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();

    assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);
    assert_eq!(http_get(h.http_port, "open.vsa.test", "/", &[]).status, 200);
}

#[test]
fn a_fifo_or_a_link_where_a_vhost_goes_is_someone_elses_and_never_read() {
    let Some(bin) = nginx() else { return };
    let up = Upstream::start("app");
    let mut h = Host::new(bin);
    h.url_site("fifo.vsa.test", &up);
    h.url_site("link.vsa.test", &up);
    h.url_site("fine.vsa.test", &up);
    h.start();
    let vhosts = h.path("etc/nginx/conf.d");
    let made = std::process::Command::new("mkfifo")
        .arg(vhosts.join("fifo.vsa.test.conf"))
        .status()
        .unwrap();
    assert!(made.success());
    let secret = Decoy::new(&h.path(""), "secret");
    secret.plant(&vhosts.join("link.vsa.test.conf"));

    // Neither read (a FIFO would hang observation, a link would show the
    // target in a diff), both reported as conflicts; the other site goes on.
    let out = h.vsactl_child(&["diff", "--format", "json"], &[]);
    let plan = vsa_tests::host::child_json(&out.stdout);
    let conflicts: Vec<&str> = plan["conflicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(conflicts.contains(&"fifo.vsa.test"), "{plan}");
    assert!(conflicts.contains(&"link.vsa.test"), "{plan}");
    assert!(!plan.to_string().contains("decoy"), "{plan}");
    assert!(
        std::fs::symlink_metadata(vhosts.join("fifo.vsa.test.conf"))
            .unwrap()
            .file_type()
            .is_fifo(),
        "left alone"
    );
    // nginx itself would block on the FIFO and choke on the link its
    // include follows: whoever planted them broke nginx, not vsa. An apply
    // then fails (nginx -t names a file that is not vsa's, so everything is
    // taken back) and writes through neither.
    std::fs::remove_file(vhosts.join("fifo.vsa.test.conf")).unwrap();
    assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::from(1));
    secret.assert_untouched();
    assert_eq!(http_get(h.http_port, "fine.vsa.test", "/", &[]).status, 404);
    assert!(
        std::fs::symlink_metadata(vhosts.join("link.vsa.test.conf"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn a_site_whose_htpasswd_is_blocked_never_goes_live() {
    let Some(bin) = nginx() else { return };
    let up = Upstream::start("app");
    let mut h = Host::new(bin);
    h.url_site("open.vsa.test", &up);
    h.auth_site("x.vsa.test", &up, "owner", "right");
    h.start();
    // Someone else's htpasswd file where vsa would write the site's.
    let planted = bcrypt::hash("planted", 4).unwrap();
    std::fs::create_dir_all(h.path("etc/nginx/htpasswd")).unwrap();
    std::fs::write(
        h.path("etc/nginx/htpasswd/x.vsa.test.htpasswd"),
        format!("intruder:{planted}\n"),
    )
    .unwrap();

    let out = h.vsactl_child(&["apply", "--yes"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("x.vsa.test"), "{err}");
    assert!(err.contains("htpasswd file is blocked"), "{err}");
    // No vhost: neither the manifest's user nor the planted one gets in.
    assert!(!h.path("etc/nginx/conf.d/x.vsa.test.conf").exists());
    for (user, pw) in [("owner", "right"), ("intruder", "planted")] {
        let auth = basic_auth(user, pw);
        let r = http_get(h.http_port, "x.vsa.test", "/", &[("Authorization", &auth)]);
        assert_eq!(r.status, 404, "{user}: {r:?}");
    }
    // The other site is unaffected, and status says why x failed.
    assert_eq!(http_get(h.http_port, "open.vsa.test", "/", &[]).status, 200);
    let out = h.vsactl_child(&["status", "--format", "json"], &[]);
    let st = vsa_tests::host::child_json(&out.stdout);
    let x = st["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["domain"] == "x.vsa.test")
        .unwrap()
        .clone();
    assert_eq!(x["status"], "failed", "{st}");

    // Once the file is out of the way, the site goes live behind its own users.
    std::fs::remove_file(h.path("etc/nginx/htpasswd/x.vsa.test.htpasswd")).unwrap();
    assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);
    let r = http_get(
        h.http_port,
        "x.vsa.test",
        "/",
        &[("Authorization", &basic_auth("owner", "right"))],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let r = http_get(
        h.http_port,
        "x.vsa.test",
        "/",
        &[("Authorization", &basic_auth("intruder", "planted"))],
    );
    assert_eq!(r.status, 401, "{r:?}");
}

#[test]
fn the_audit_actor_cannot_be_forged_through_the_environment() {
    let Some(bin) = nginx() else { return };
    let up = Upstream::start("app");
    let mut h = Host::new(bin);
    h.url_site("a.vsa.test", &up);
    h.start();
    let forged = "alice\n2026-12-01 00:00:00 cli:root vhost.write x.vsa.test ok";
    let out = h.vsactl_child(
        &["apply", "--yes"],
        &[("USER", forged), ("LOGNAME", forged), ("SUDO_USER", forged)],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = h.audit_lines();
    assert!(!events.is_empty());
    for e in &events {
        let actor = e["actor"].as_str().unwrap();
        let user = actor.strip_prefix("cli:").unwrap();
        assert!(
            !user.is_empty()
                && user
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c)),
            "{actor:?}"
        );
    }
    // `vsactl audit` prints one line per event, none forged.
    let out = h.vsactl_child(&["audit"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    let rows = text.lines().filter(|l| l.contains(" cli:")).count();
    assert_eq!(rows, events.len(), "{text}");
    assert!(!text.contains("\n2026-12-01"), "{text}");
}

#[test]
fn links_fifos_and_directories_in_the_way_are_one_problem_each() {
    let Some(bin) = nginx() else { return };
    let up = Upstream::start("app");
    let mut h = Host::new(bin);
    h.url_site("ok.vsa.test", &up);
    h.url_site("dir.vsa.test", &up);
    h.start();
    let sites = h.repo.join("sites");
    // In the repository: a link to nothing, a link out of it, a FIFO.
    symlink(sites.join("nowhere.yaml"), sites.join("dangling.yaml")).unwrap();
    let outside = Decoy::new(&h.path(""), "outside.yaml");
    symlink(&outside.path, sites.join("out.yaml")).unwrap();
    assert!(
        std::process::Command::new("mkfifo")
            .arg(sites.join("fifo.yaml"))
            .status()
            .unwrap()
            .success()
    );
    let out = h.vsactl_child(&["validate"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("sites/dangling.yaml:1:1: cannot be read"),
        "{text}"
    );
    assert!(
        text.contains("sites/out.yaml:1:1: is a symbolic link to a file outside the repository"),
        "{text}"
    );
    assert!(
        text.contains("sites/fifo.yaml:1:1: is not a regular file"),
        "{text}"
    );
    assert!(!text.contains("decoy"), "{text}");
    for f in ["dangling.yaml", "out.yaml", "fifo.yaml"] {
        std::fs::remove_file(sites.join(f)).unwrap();
    }

    // On the host: a directory where a vhost goes is in the way, a
    // conflict of that site, never a file to create there.
    std::fs::create_dir_all(h.path("etc/nginx/conf.d/dir.vsa.test.conf")).unwrap();
    let out = h.vsactl_child(&["diff", "--format", "json"], &[]);
    let plan = vsa_tests::host::child_json(&out.stdout);
    assert!(
        plan["conflicts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "dir.vsa.test" && c["kind"] == "vhost"),
        "{plan}"
    );
    assert!(
        !plan["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "dir.vsa.test" && c["kind"] == "vhost"),
        "{plan}"
    );
}

#[test]
fn a_cut_emptied_deleted_or_recomputed_audit_log_does_not_verify() {
    let Some(bin) = nginx() else { return };
    let up = Upstream::start("app");
    let mut h = Host::new(bin);
    h.url_site("a.vsa.test", &up);
    h.start();
    assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);
    h.url_site("b.vsa.test", &up);
    assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);
    let log = h.path("var/log/vsa/audit.jsonl");
    let original = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    assert!(lines.len() >= 4, "{original}");
    let verify = |h: &Host| {
        let out = h.vsactl_child(&["audit", "--verify"], &[]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = verify(&h);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("matching the state database's record"),
        "{text}"
    );

    // A log an editor recomputed from scratch: a whole chain, but not the
    // one the state database recorded.
    let forged_path = h.path("forged.jsonl");
    let mut forged = vsa_store::AuditLog::open(&forged_path, "cli:tester", "test-01").unwrap();
    for _ in 0..lines.len() {
        forged
            .record(
                None,
                vsa_store::NewEvent::new(
                    "vhost.write",
                    "a.vsa.test",
                    vsa_store::Outcome::Ok,
                    "created",
                ),
            )
            .unwrap();
    }
    forged.sync().unwrap();
    let recomputed = std::fs::read_to_string(&forged_path).unwrap();
    let cases: [(&str, String, &str); 5] = [
        (
            "the last line deleted",
            lines[..lines.len() - 1]
                .iter()
                .map(|l| format!("{l}\n"))
                .collect(),
            "were removed",
        ),
        (
            "only the first lines kept",
            format!("{}\n{}\n", lines[0], lines[1]),
            "were removed",
        ),
        ("emptied", String::new(), "were removed"),
        ("recomputed", recomputed, "rewritten"),
        ("deleted", "DELETE".into(), "were removed"),
    ];
    for (what, content, why) in cases {
        if content == "DELETE" {
            std::fs::remove_file(&log).unwrap();
        } else {
            std::fs::write(&log, content).unwrap();
        }
        let (code, text) = verify(&h);
        assert_eq!(code, Some(1), "{what}: {text}");
        assert!(
            text.contains("broken") && text.contains(why),
            "{what}: {text}"
        );
    }
    std::fs::write(&log, &original).unwrap();
    assert_eq!(verify(&h).0, Some(0));
}
