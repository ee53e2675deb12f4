//! `vsactl apply --dry-run` and `vsactl apply` are driven by the same
//! steps: on a plan with every kind of change (networks, containers
//! created, recreated, started and deleted, vhosts and htpasswd files
//! written and deleted, access logs, certificates issued, renewed and
//! deleted), what the dry run lists is, step for step, what the apply then
//! does and audits. Real nginx, Docker engine and Pebble.

use std::path::PathBuf;

use vsa_tests::docker::{BUSYBOX, Cleanup, docker, require_docker, unique};
use vsa_tests::host::{Host, child_json};
use vsa_tests::pebble::Pebble;
use vsa_tests::{Upstream, require};

vsa_tests::child_entry_points!();

fn nginx() -> Option<PathBuf> {
    require("nginx", "to test and reload what the steps write")
}

/// The (action, target) of each step the dry run lists.
fn dry_run(h: &Host) -> Vec<(String, String)> {
    let out = h.vsactl_child(&["apply", "--dry-run", "--format", "json"], &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan = child_json(&out.stdout);
    plan["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps: {plan}"))
        .iter()
        .map(|s| {
            (
                s["action"].as_str().unwrap().to_owned(),
                s["target"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Applies, and returns the (action, target) of what it audited, but the
/// account registration (once per CA, not a step of any plan).
fn apply(h: &Host) -> Vec<(String, String)> {
    let before = h.audit_lines().len();
    let out = h.vsactl_child(&["apply", "--yes"], &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    h.audit_lines()[before..]
        .iter()
        .filter(|e| e["action"] != "acme.account")
        .map(|e| {
            assert_eq!(e["outcome"], "ok", "{e}");
            (
                e["action"].as_str().unwrap().to_owned(),
                e["target"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn kinds(steps: &[(String, String)]) -> std::collections::BTreeSet<&str> {
    steps.iter().map(|(a, _)| a.as_str()).collect()
}

fn stack(name: &str, net: &str, greeting: &str, extra: bool) -> String {
    let serve = "[\"sh\", \"-c\", \"trap 'exit 0' TERM; sleep 600 & wait\"]";
    let extra = if extra {
        format!("  extra:\n    image: {BUSYBOX}\n    command: {serve}\n")
    } else {
        String::new()
    };
    format!(
        "apiVersion: vsa/v1\nkind: Stack\nname: {name}\nhost: test-01\nservices:\n\
         \x20 web:\n    image: {BUSYBOX}\n    command: {serve}\n    environment: {{ GREETING: {greeting} }}\n    depends_on: [worker]\n    networks: [{net}-extra]\n\
         \x20 worker:\n    image: {BUSYBOX}\n    command: {serve}\n{extra}"
    )
}

#[test]
fn a_dry_run_lists_exactly_the_steps_the_apply_takes() {
    let Some(bin) = nginx() else { return };
    if !require_docker() {
        return;
    }
    let up = Upstream::start("app");
    let mut h = Host::new(bin);
    let Some(pebble) = Pebble::start(h.http_port) else {
        return;
    };
    h.start();
    let mut cleanup = Cleanup::default();
    let net = unique("steps");
    let name = unique("st");
    cleanup.network(&net);
    cleanup.network(&format!("{net}-extra"));
    for svc in ["web", "worker", "extra"] {
        cleanup.container(&format!("{name}-{svc}"));
    }
    let configure = |renew_before_days: u32| {
        h.configure(&format!(
            "repo: {{ path: repo }}\nacme:\n  directory: {}\n  ca_bundle: {}\n  renew_before_days: {renew_before_days}\ndocker:\n  network: {net}\n",
            pebble.directory,
            pebble.ca_bundle.display()
        ))
    };
    configure(30);
    let tls = |domain: &str, tls: &str| {
        h.site(
            domain,
            &format!("upstream: {{ url: \"http://127.0.0.1:{}\" }}\n", up.port),
        );
        let path = h.repo.join("sites").join(format!("{domain}.yaml"));
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(path, text.replace("tls: none", &format!("tls: {tls}"))).unwrap();
    };

    // Round 1, creates: networks, containers (in dependency order), the
    // http-context file, vhosts, an htpasswd file, access logs, two
    // certificates (after the reload that serves their challenges).
    std::fs::create_dir_all(h.repo.join("stacks")).unwrap();
    std::fs::write(
        h.repo.join("stacks").join(format!("{name}.yaml")),
        stack(&name, &net, "one", true),
    )
    .unwrap();
    h.url_site("plain.vsa.test", &up);
    h.auth_site("auth.vsa.test", &up, "alice", "one");
    h.auth_site("gone.vsa.test", &up, "bob", "two");
    tls("keep.vsa.test", "acme");
    tls("drop.vsa.test", "acme");
    let listed = dry_run(&h);
    let done = apply(&h);
    assert_eq!(
        done[..listed.len()],
        listed[..],
        "the first pass is the dry run\ndry run: {listed:#?}\napply: {done:#?}"
    );
    for k in [
        "network.create",
        "container.create",
        "vhost.write",
        "htpasswd.write",
        "access_log.create",
        "nginx.reload",
        "cert.issue",
    ] {
        assert!(kinds(&listed).contains(k), "{k} in {listed:#?}");
    }
    let at = |steps: &[(String, String)], action: &str, target: &str| {
        steps
            .iter()
            .position(|(a, t)| a == action && t == target)
            .unwrap_or_else(|| panic!("{action} {target} in {steps:#?}"))
    };
    // depends_on: the worker before the web server.
    assert!(
        at(&listed, "container.create", &format!("{name}-worker"))
            < at(&listed, "container.create", &format!("{name}-web"))
    );

    // Round 2, updates and deletes: a password and a vhost changed, a site
    // gone (vhost and htpasswd deleted), a container recreated (new
    // environment), one started (stopped by hand), one deleted, a
    // certificate renewed (inside the now wider renewal window, before the
    // reload that loads it), one deleted (its site no longer TLS).
    configure(100_000);
    h.auth_site("auth.vsa.test", &up, "alice", "three");
    h.site(
        "plain.vsa.test",
        &format!(
            "upstream: {{ url: \"http://127.0.0.1:{}\" }}\nmax_body: 5m\n",
            up.port
        ),
    );
    std::fs::remove_file(h.repo.join("sites/gone.vsa.test.yaml")).unwrap();
    tls("drop.vsa.test", "none");
    std::fs::write(
        h.repo.join("stacks").join(format!("{name}.yaml")),
        stack(&name, &net, "two", false),
    )
    .unwrap();
    docker(&["stop", "-t", "1", &format!("{name}-worker")]);
    let listed = dry_run(&h);
    let done = apply(&h);
    assert_eq!(
        done[..listed.len()],
        listed[..],
        "the first pass is the dry run\ndry run: {listed:#?}\napply: {done:#?}"
    );
    for k in [
        "container.recreate",
        "container.start",
        "container.delete",
        "vhost.write",
        "vhost.delete",
        "htpasswd.write",
        "htpasswd.delete",
        "nginx.reload",
        "cert.renew",
        "cert.delete",
    ] {
        assert!(kinds(&listed).contains(k), "{k} in {listed:#?}");
    }
    // The renewal goes first (the pass's reload loads it); the delete of a
    // certificate its vhost still names waits for the reload.
    assert!(at(&listed, "cert.renew", "keep.vsa.test") < at(&listed, "nginx.reload", "nginx"));
    assert!(at(&listed, "nginx.reload", "nginx") < at(&listed, "cert.delete", "drop.vsa.test"));
    assert!(
        at(&listed, "container.start", &format!("{name}-worker"))
            < at(&listed, "container.recreate", &format!("{name}-web"))
    );
    drop(cleanup);
}
