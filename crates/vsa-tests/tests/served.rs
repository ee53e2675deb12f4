//! Converged means served: when `vsactl apply` exits 0, the very next
//! request gets the new behaviour; a reload nginx did not take is an error
//! with nginx's reason, and stays owed until nginx serves what is on disk.
//! Against Debian's real nginx; no request here is retried.

use std::path::PathBuf;
use std::process::ExitCode;

use vsa_tests::host::{Host, child_json};
use vsa_tests::{Upstream, basic_auth, http_get, require};

fn nginx() -> Option<PathBuf> {
    require("nginx", "to apply against a real nginx")
}

vsa_tests::child_entry_points!();

#[test]
fn a_request_right_after_apply_gets_the_new_behaviour() {
    let Some(bin) = nginx() else { return };
    let one = Upstream::start("one");
    let two = Upstream::start("two");
    let mut h = Host::new(bin);
    h.start();

    // Create: from nginx's 404 for an unknown name to the site.
    h.url_site("new.vsa.test", &one);
    assert_eq!(http_get(h.http_port, "new.vsa.test", "/", &[]).status, 404);
    assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);
    let r = http_get(h.http_port, "new.vsa.test", "/", &[]);
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "upstream=one path=/ host=new.vsa.test\n")
    );

    // Update: another upstream.
    h.url_site("new.vsa.test", &two);
    assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);
    let r = http_get(h.http_port, "new.vsa.test", "/", &[]);
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "upstream=two path=/ host=new.vsa.test\n")
    );

    // Auth added: the very next anonymous request is refused.
    h.auth_site("new.vsa.test", &two, "eve", "pw-9");
    assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);
    assert_eq!(http_get(h.http_port, "new.vsa.test", "/", &[]).status, 401);
    let auth = basic_auth("eve", "pw-9");
    assert_eq!(
        http_get(
            h.http_port,
            "new.vsa.test",
            "/",
            &[("Authorization", &auth)]
        )
        .status,
        200
    );

    // Delete: back to nginx's 404.
    std::fs::remove_file(h.repo.join("sites/new.vsa.test.yaml")).unwrap();
    assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);
    assert_eq!(http_get(h.http_port, "new.vsa.test", "/", &[]).status, 404);

    // Each reload was confirmed by the generation nginx served.
    let reloads: Vec<serde_json::Value> = h
        .audit_lines()
        .into_iter()
        .filter(|e| e["action"] == "nginx.reload")
        .collect();
    assert_eq!(reloads.len(), 4);
    for r in &reloads {
        assert_eq!(r["outcome"], "ok");
        assert!(
            r["detail"]
                .as_str()
                .unwrap()
                .contains("nginx serves configuration"),
            "{r}"
        );
    }
}

#[test]
fn a_reload_nginx_did_not_take_fails_with_its_reason_and_stays_owed() {
    let Some(bin) = nginx() else { return };
    let up = Upstream::start("app");
    let mut h = Host::new(bin);
    h.url_site("a.vsa.test", &up);
    h.start();
    assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);

    // Move the sites to a port another process holds: `nginx -t` passes
    // (it binds nothing), the reload does not take.
    let busy = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let text = std::fs::read_to_string(&h.config_file).unwrap();
    std::fs::write(
        &h.config_file,
        text.replace(
            &format!("http_port: {}", h.http_port),
            &format!("http_port: {port}"),
        ),
    )
    .unwrap();
    let out = h.vsactl_child(&["apply", "--yes"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did not take effect"), "{err}");
    assert!(
        err.contains("Address already in use"),
        "nginx's reason: {err}"
    );
    let event = h
        .audit_lines()
        .into_iter()
        .rfind(|e| e["action"] == "nginx.reload")
        .unwrap();
    assert_eq!(event["outcome"], "error");
    assert!(
        event["detail"]
            .as_str()
            .unwrap()
            .contains("Address already in use")
    );

    // Not converged: the files are on disk, but nginx never loaded them.
    let out = h.vsactl_child(&["diff", "--format", "json"], &[]);
    assert_eq!(out.status.code(), Some(1), "diff says changes are pending");
    let plan = child_json(&out.stdout);
    assert!(plan["changes"].as_array().unwrap().is_empty(), "{plan}");
    assert!(
        plan["reload"]
            .as_str()
            .unwrap()
            .contains("did not take effect"),
        "{plan}"
    );
    let out = h.vsactl_child(&["status", "--format", "json"], &[]);
    let status = child_json(&out.stdout);
    assert_eq!(status["in_sync"], false, "{status}");
    assert_eq!(status["sites"][0]["status"], "failed", "{status}");

    // The next apply reloads again (and fails again while the port is held).
    let out = h.vsactl_child(&["apply", "--yes"], &[]);
    assert_eq!(out.status.code(), Some(1));

    // Once the port is free, the owed reload takes, and a request right
    // after is served on the new port.
    drop(busy);
    assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);
    assert_eq!(http_get(port, "a.vsa.test", "/", &[]).status, 200);
    let out = h.vsactl_child(&["status", "--format", "json"], &[]);
    let status = child_json(&out.stdout);
    let diff = h.vsactl_child(&["diff", "--format", "json"], &[]);
    assert_eq!(
        status["in_sync"],
        true,
        "{status}\n{}\n{}",
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(status["sites"][0]["status"], "in sync", "{status}");
    // And then nothing more.
    let events = h.audit_lines().len();
    assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);
    assert_eq!(h.audit_lines().len(), events);
}
