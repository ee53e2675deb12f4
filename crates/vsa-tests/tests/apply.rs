//! `vsactl apply` against Debian's real nginx on loopback: convergence,
//! no-op applies, drift repair, failure isolation, removal, crash safety,
//! the audit chain and the host lock.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use vsa_tests::host::{Host, child_json, load_config, unstamped};
use vsa_tests::{Upstream, basic_auth, http_get_until, require};

fn nginx() -> Option<PathBuf> {
    require("nginx", "to apply against a real nginx")
}

vsa_tests::child_entry_points!();

#[test]
fn apply_converges_serves_and_a_second_apply_changes_nothing() {
    let Some(bin) = nginx() else { return };
    let up = Upstream::start("app");
    let mut h = Host::new(bin);
    h.url_site("open.vsa.test", &up);
    h.auth_site("locked.vsa.test", &up, "bob", "pw-123");
    h.start();

    assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);
    let r = http_get_until(h.http_port, "open.vsa.test", "/x", &[], |r| r.status == 200);
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "upstream=app path=/x host=open.vsa.test\n")
    );
    assert_eq!(
        http_get_until(h.http_port, "locked.vsa.test", "/", &[], |r| r.status
            == 401)
        .status,
        401
    );
    let auth = basic_auth("bob", "pw-123");
    assert_eq!(
        http_get_until(
            h.http_port,
            "locked.vsa.test",
            "/",
            &[("Authorization", &auth)],
            |r| r.status == 200
        )
        .status,
        200
    );
    let ht = std::fs::metadata(h.path("etc/nginx/htpasswd/locked.vsa.test.htpasswd")).unwrap();
    assert_eq!(ht.mode() & 0o777, 0o640);
    assert_eq!(h.reloads(), 1, "one reload for the whole pass");

    // The second apply writes nothing, reloads nothing, audits nothing.
    let before = h.files();
    let events = h.audit_lines().len();
    assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);
    assert_eq!(h.files(), before, "inode, mtime and content unchanged");
    assert_eq!(h.reloads(), 1);
    assert_eq!(h.audit_lines().len(), events);

    // Every event is the contract's, from this user and the chain verifies.
    let ev = &h.audit_lines()[0];
    assert_eq!(ev["actor"], "cli:tester");
    assert_eq!(ev["host"], "test-01");
    assert!(
        h.audit_lines()
            .iter()
            .all(|e| !e.to_string().contains("$2b$")),
        "no hashes in the audit"
    );
    assert_eq!(h.vsactl(&["audit", "--verify"]), ExitCode::SUCCESS);
}

#[test]
fn a_hand_edit_is_repaired_and_an_unmanaged_file_is_left_alone() {
    let Some(bin) = nginx() else { return };
    let up = Upstream::start("app");
    let mut h = Host::new(bin);
    h.url_site("edit.vsa.test", &up);
    h.start();
    assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);

    let vhost = h.path("etc/nginx/conf.d/edit.vsa.test.conf");
    let good = std::fs::read_to_string(&vhost).unwrap();
    std::fs::write(
        &vhost,
        good.replace("proxy_http_version 1.1;", "proxy_http_version 1.0;"),
    )
    .unwrap();
    let unmanaged = h.path("etc/nginx/conf.d/zz-hand-made.conf");
    std::fs::write(&unmanaged, "# someone's own file\n").unwrap();
    let unmanaged_meta = std::fs::metadata(&unmanaged).unwrap();

    let hp = vsactl::pipeline::plan_host(&load_config(&h), &h.repo, "test-01").unwrap();
    assert_eq!(hp.plan.changes.len(), 1);
    assert_eq!(hp.plan.changes[0].action, vsa_core::plan::Action::Update);
    assert!(
        hp.plan.changes[0]
            .diff
            .as_ref()
            .unwrap()
            .contains("-        proxy_http_version 1.0;")
    );

    assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);
    assert_eq!(std::fs::read_to_string(&vhost).unwrap(), good);
    let after = std::fs::metadata(&unmanaged).unwrap();
    assert_eq!(
        (after.ino(), after.mtime_nsec()),
        (unmanaged_meta.ino(), unmanaged_meta.mtime_nsec())
    );

    // Even when its site is removed, an unmanaged file is never deleted.
    std::fs::remove_file(h.repo.join("sites/edit.vsa.test.yaml")).unwrap();
    std::fs::write(
        h.path("etc/nginx/conf.d/edit2.vsa.test.conf"),
        "# not ours\n",
    )
    .unwrap();
    assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);
    assert!(unmanaged.exists());
    assert!(h.path("etc/nginx/conf.d/edit2.vsa.test.conf").exists());
    assert!(!vhost.exists());
}

#[test]
fn a_site_nginx_rejects_fails_alone_and_nginx_stays_valid() {
    let Some(bin) = nginx() else { return };
    let up = Upstream::start("app");
    let mut h = Host::new(bin);
    h.url_site("good1.vsa.test", &up);
    h.url_site("good2.vsa.test", &up);
    h.site(
        "bad.vsa.test",
        "upstream: { url: \"http://nope.invalid:8080\" }\n",
    );
    h.url_site("zz-good3.vsa.test", &up);
    h.start();

    let out = h.vsactl_child(&["apply", "--yes"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("failed: bad.vsa.test"), "{stderr}");
    assert!(stderr.contains("host not found in upstream"), "{stderr}");
    for good in ["good1.vsa.test", "good2.vsa.test", "zz-good3.vsa.test"] {
        assert_eq!(
            http_get_until(h.http_port, good, "/", &[], |r| r.status == 200).status,
            200,
            "{good}"
        );
    }
    assert!(!h.path("etc/nginx/conf.d/bad.vsa.test.conf").exists());
    h.nginx.test().expect("nginx -t passes on disk");

    // The failure is recorded: status says so, the audit names it.
    let isolate = h
        .audit_lines()
        .into_iter()
        .find(|e| e["action"] == "site.isolate")
        .unwrap();
    assert_eq!(isolate["target"], "bad.vsa.test");
    assert_eq!(isolate["outcome"], "error");
    let out = h.vsactl_child(&["status", "--format", "json"], &[]);
    let st = child_json(&out.stdout);
    let bad = st["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["domain"] == "bad.vsa.test")
        .unwrap();
    assert_eq!(bad["status"], "failed");
    assert!(bad["detail"].as_str().unwrap().contains("host not found"));

    // Fixed in the repo, the next apply converges it.
    h.url_site("bad.vsa.test", &up);
    assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);
    assert_eq!(
        http_get_until(h.http_port, "bad.vsa.test", "/", &[], |r| r.status == 200).status,
        200
    );
}

#[test]
fn a_config_broken_by_someone_else_gets_none_of_our_changes() {
    let Some(bin) = nginx() else { return };
    let up = Upstream::start("app");
    let mut h = Host::new(bin);
    h.url_site("old.vsa.test", &up);
    h.start();
    assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);
    let before = h.files();

    // A hand-made file breaks nginx -t; vsa's changes cannot be verified.
    std::fs::write(h.path("etc/nginx/conf.d/zz-hand.conf"), "not a directive\n").unwrap();
    h.url_site("new.vsa.test", &up);
    std::fs::remove_file(h.repo.join("sites/old.vsa.test.yaml")).unwrap();
    let out = h.vsactl_child(&["apply", "--yes"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("fails even with all of vsa's changes taken back"),
        "{stderr}"
    );
    assert!(
        stderr.contains("zz-hand.conf"),
        "names nginx's error: {stderr}"
    );
    // Every config file of ours is as it was (the removed site's included),
    // and nothing was reloaded: nginx still serves the old site.
    let mut after = h.files();
    after.remove("etc/nginx/conf.d/zz-hand.conf");
    let contents = |m: &BTreeMap<String, (u64, i64, i64, String)>| {
        m.iter()
            .map(|(k, v)| (k.clone(), v.3.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(contents(&after), contents(&before));
    assert_eq!(h.reloads(), 1);
    assert_eq!(
        http_get_until(h.http_port, "old.vsa.test", "/", &[], |r| r.status == 200).status,
        200
    );
    let taken_back = h
        .audit_lines()
        .into_iter()
        .find(|e| e["action"] == "nginx.test")
        .expect("an nginx.test event");
    assert_eq!(taken_back["outcome"], "error");

    // Once the hand-made file is fixed, the next apply converges.
    std::fs::remove_file(h.path("etc/nginx/conf.d/zz-hand.conf")).unwrap();
    assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);
    assert_eq!(
        http_get_until(h.http_port, "new.vsa.test", "/", &[], |r| r.status == 200).status,
        200
    );
}

#[test]
fn removing_a_site_removes_its_files_and_nginx_stops_serving_it() {
    let Some(bin) = nginx() else { return };
    let keep = Upstream::start("keep");
    let gone = Upstream::start("gone");
    let mut h = Host::new(bin);
    h.url_site("keep.vsa.test", &keep);
    h.auth_site("gone.vsa.test", &gone, "u", "x");
    h.start();
    assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);
    let auth = basic_auth("u", "x");
    assert!(
        http_get_until(
            h.http_port,
            "gone.vsa.test",
            "/",
            &[("Authorization", &auth)],
            |r| r.body.contains("upstream=gone")
        )
        .body
        .contains("upstream=gone")
    );

    std::fs::remove_file(h.repo.join("sites/gone.vsa.test.yaml")).unwrap();
    assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);
    assert!(!h.path("etc/nginx/conf.d/gone.vsa.test.conf").exists());
    assert!(!h.path("etc/nginx/htpasswd/gone.vsa.test.htpasswd").exists());
    let r = http_get_until(
        h.http_port,
        "gone.vsa.test",
        "/",
        &[("Authorization", &auth)],
        |r| !r.body.contains("upstream=gone"),
    );
    assert!(!r.body.contains("upstream=gone"), "{r:?}");
    assert_eq!(
        http_get_until(h.http_port, "keep.vsa.test", "/", &[], |r| r.status == 200).status,
        200
    );
}

#[test]
fn a_kill_at_any_write_leaves_whole_files_and_the_next_apply_converges() {
    let Some(bin) = nginx() else { return };
    let up = Upstream::start("app");
    let mut h = Host::new(bin);
    let v1 = |h: &Host| {
        for s in ["a.vsa.test", "b.vsa.test", "c.vsa.test"] {
            h.url_site(s, &up);
        }
        let _ = std::fs::remove_file(h.repo.join("sites/d.vsa.test.yaml"));
    };
    let v2 = |h: &Host| {
        h.site(
            "a.vsa.test",
            &format!(
                "upstream: {{ url: \"http://127.0.0.1:{}\" }}\nmax_body: 5m\n",
                up.port
            ),
        );
        std::fs::remove_file(h.repo.join("sites/b.vsa.test.yaml")).unwrap();
        h.url_site("d.vsa.test", &up);
    };
    h.start();
    v1(&h);
    assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);
    let old = h.files();
    v2(&h);
    assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);
    let new = h.files();

    let mut aborted = 0;
    for k in 1..50 {
        v1(&h);
        assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);
        v2(&h);
        let out = h.vsactl_child(
            &["apply", "--yes"],
            &[("VSA_TEST_ABORT_AFTER_WRITES", &k.to_string())],
        );
        if out.status.success() {
            break; // fewer than k writes: the apply finished
        }
        assert_eq!(
            out.status.code(),
            None,
            "killed by the abort, not an error exit"
        );
        aborted += 1;
        for (file, (_, _, _, content)) in h.files() {
            // The generation stamped on the http-context file at each
            // reload is not part of what a pass writes.
            let content = unstamped(&content);
            let is_old = old.get(&file).is_some_and(|o| unstamped(&o.3) == content);
            let is_new = new.get(&file).is_some_and(|n| unstamped(&n.3) == content);
            assert!(
                is_old || is_new,
                "after {k} writes, {file} is neither old nor new:\n{content}"
            );
        }
        assert_eq!(
            h.vsactl(&["apply", "--yes"]),
            ExitCode::SUCCESS,
            "converges after a kill at write {k}"
        );
        let files: BTreeMap<_, _> = h
            .files()
            .into_iter()
            .map(|(f, v)| (f, unstamped(&v.3)))
            .collect();
        let expect: BTreeMap<_, _> = new
            .iter()
            .map(|(f, v)| (f.clone(), unstamped(&v.3)))
            .collect();
        assert_eq!(files, expect);
        h.nginx.test().unwrap();
    }
    assert!(
        aborted >= 3,
        "the scenario has at least 3 writes ({aborted})"
    );
    assert_eq!(h.vsactl(&["audit", "--verify"]), ExitCode::SUCCESS);
}

#[test]
fn the_audit_chain_detects_an_edited_line() {
    let Some(bin) = nginx() else { return };
    let up = Upstream::start("app");
    let mut h = Host::new(bin);
    h.url_site("a.vsa.test", &up);
    h.url_site("b.vsa.test", &up);
    h.start();
    assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);
    assert_eq!(h.vsactl(&["audit", "--verify"]), ExitCode::SUCCESS);
    let log = h.path("var/log/vsa/audit.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, text.replacen("a.vsa.test", "x.vsa.test", 1)).unwrap();
    let out = h.vsactl_child(&["audit", "--verify"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("broken"));
}

#[test]
fn one_apply_at_a_time_and_no_apply_without_consent() {
    let Some(bin) = nginx() else { return };
    let up = Upstream::start("app");
    let mut h = Host::new(bin);
    h.url_site("a.vsa.test", &up);
    h.start();

    // No terminal and no --yes: refused, nothing written.
    let out = h.vsactl_child(&["apply"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    assert!(h.files().is_empty());

    // --dry-run shows the steps and writes nothing at all (not even state).
    let out = h.vsactl_child(&["apply", "--dry-run"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Would execute"), "{text}");
    assert!(text.contains("a.vsa.test.conf"), "{text}");
    assert!(h.files().is_empty());
    assert!(!h.path("var/lib/vsa").exists());
    assert!(!h.path("var/log/vsa").exists());

    // While another apply holds the lock, a second one waits, then gives up.
    let lock = vsa_engine::HostLock::acquire(&h.path("var/lib/vsa"), Duration::ZERO).unwrap();
    let out = h.vsactl_child(&["apply", "--yes", "--lock-timeout", "1s"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another apply is running"));
    drop(lock);
    assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);
}

/// `vsactl apply` on a terminal executes exactly the plan the user
/// confirmed: when the host changes between the answer and the first pass
/// (here a hand edit of the vhost while the prompt waits), it says so,
/// shows the plan as it is now, and asks again; nothing was done in
/// between.
#[test]
fn apply_asks_again_when_the_host_changed_after_the_plan_was_shown() {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    use std::sync::{Arc, Mutex};
    let Some(bin) = nginx() else { return };
    let Some(script) = require("script", "to give vsactl a terminal to confirm on") else {
        return;
    };
    let up = Upstream::start("app");
    let mut h = Host::new(bin);
    h.url_site("a.vsa.test", &up);
    h.start();

    // The interactive apply, on a pseudo-terminal (`script`).
    let exe = std::env::current_exe().unwrap();
    let cmd = format!(
        "{} --exact child_vsactl --ignored --nocapture --test-threads 1",
        exe.display()
    );
    let mut child = Command::new(script)
        .args(["-qefc", &cmd, "/dev/null"])
        .env("VSA_CHILD_ARGS", "apply")
        .env("VSA_CHILD_CONFIG", &h.config_file)
        .env("VSA_ROOT", &h.root)
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let reader = {
        let seen = seen.clone();
        let mut out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    // Waits for the n-th prompt, as the user does.
    let prompt = |n: usize| {
        let start = std::time::Instant::now();
        while seen.lock().unwrap().matches("[y/N]").count() < n {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no prompt {n}: {}",
                seen.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut stdin = child.stdin.take().unwrap();
    prompt(1);
    assert!(
        seen.lock().unwrap().contains("create vhost"),
        "{}",
        seen.lock().unwrap()
    );

    // Meanwhile, someone writes the site's vhost by hand (as vsa's).
    let vhost = h.path("etc/nginx/conf.d/a.vsa.test.conf");
    let by_hand = "# managed-by: vsa\n# written by hand\n";
    std::fs::write(&vhost, by_hand).unwrap();
    stdin.write_all(b"y\n").unwrap();
    prompt(2);
    {
        let text = seen.lock().unwrap();
        assert!(
            text.contains("The host changed since you confirmed the plan"),
            "{text}"
        );
        assert!(text.contains("update vhost"), "{text}");
    }
    // Nothing was done on the first answer.
    assert_eq!(std::fs::read_to_string(&vhost).unwrap(), by_hand);
    assert!(h.audit_lines().is_empty());

    stdin.write_all(b"y\n").unwrap();
    let status = child.wait().unwrap();
    reader.join().unwrap();
    assert!(status.success(), "{}", seen.lock().unwrap());
    assert!(seen.lock().unwrap().contains("Converged"));
    assert_eq!(
        http_get_until(h.http_port, "a.vsa.test", "/", &[], |r| r.status == 200).status,
        200
    );
}
