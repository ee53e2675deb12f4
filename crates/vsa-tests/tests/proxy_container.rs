//! The production topology of the proxy: nginx in a container on the
//! shared Docker network, the vhost/htpasswd/log dirs bind-mounted, and
//! `nginx -t` and reload run through the Engine API (`docker exec`).

use std::path::Path;
use std::process::ExitCode;

use vsa_tests::docker::{BUSYBOX, ProxiedHost, docker, require_docker, unique};
use vsa_tests::host::{audit_lines_in, vsactl_child_in, vsactl_in};
use vsa_tests::{basic_auth, http_get};

fn site(repo: &Path, domain: &str, body: &str) {
    std::fs::write(
        repo.join("sites").join(format!("{domain}.yaml")),
        format!(
            "apiVersion: vsa/v1\nkind: Site\nhost: test-01\ndomain: {domain}\ntls: none\n{body}"
        ),
    )
    .unwrap();
}

fn reloads(root: &Path) -> usize {
    audit_lines_in(root)
        .iter()
        .filter(|e| e["action"] == "nginx.reload")
        .count()
}

vsa_tests::child_entry_points!();

#[test]
fn nginx_in_a_container_is_tested_and_reloaded_through_docker_exec() {
    if !require_docker() {
        return;
    }
    let mut h = ProxiedHost::new();
    let app = unique("app");
    let (root, repo, config, port) = (h.root.clone(), h.repo.clone(), h.config.clone(), h.port);
    let proxy = h.proxy.clone();
    let net = h.net.clone();
    let dirs = ["conf.d", "htpasswd", "logs"].map(|d| h.dir(d));

    // The app: busybox httpd on the shared network, reached only by name.
    h.cleanup.run(
        &app,
        &[
            "--network",
            &net,
            BUSYBOX,
            "sh",
            "-c",
            "mkdir /www && echo hello-from-app > /www/index.html && exec busybox httpd -f -p 8080 -h /www",
        ],
    );

    let hash = bcrypt::hash("pw-123", 4).unwrap();
    site(
        &repo,
        "app.vsa.test",
        &format!(
            "upstream: {{ container: {app}, port: 8080 }}\nauth:\n  users:\n    - name: bob\n      bcrypt: \"{hash}\"\n"
        ),
    );
    // nginx in the container cannot resolve this name: `nginx -t` fails there.
    site(
        &repo,
        "bad.vsa.test",
        "upstream: { url: \"http://nope.invalid:8080\" }\n",
    );

    // The bad site fails alone (found from nginx's error through docker exec).
    assert_eq!(
        vsactl_in(&root, &config, &["apply", "--yes"]),
        ExitCode::from(1)
    );
    assert!(!dirs[0].join("bad.vsa.test.conf").exists());
    let isolate = audit_lines_in(&root)
        .into_iter()
        .find(|e| e["action"] == "site.isolate")
        .expect("an isolation event");
    assert_eq!(isolate["target"], "bad.vsa.test");
    // nginx's words, as `nginx -t` on the host would say them (not in its
    // log format, with a timestamp and worker ids).
    assert!(
        isolate
            .to_string()
            .contains("nginx: [emerg] host not found in upstream"),
        "{isolate}"
    );
    docker(&["exec", &proxy, "nginx", "-t"]);

    // The good one is served by the app container, through the proxy's
    // published port, behind basic auth (the htpasswd path as nginx sees
    // it), right after the apply returned: the reload was confirmed through
    // the probe at the container's address.
    let r = http_get(port, "app.vsa.test", "/", &[]);
    assert_eq!(r.status, 401, "{r:?}");
    let auth = basic_auth("bob", "pw-123");
    let r = http_get(port, "app.vsa.test", "/", &[("Authorization", &auth)]);
    assert_eq!((r.status, r.body.as_str()), (200, "hello-from-app\n"));
    let reload = audit_lines_in(&root)
        .into_iter()
        .rfind(|e| e["action"] == "nginx.reload")
        .unwrap();
    assert!(
        reload["detail"]
            .as_str()
            .unwrap()
            .contains("nginx serves configuration"),
        "{reload}"
    );
    assert!(
        dirs[2].join("app.vsa.test.access.json").exists(),
        "nginx in the container writes the per-domain log into the mounted dir"
    );

    // With the bad site fixed, one more pass; then nothing at all.
    std::fs::remove_file(repo.join("sites/bad.vsa.test.yaml")).unwrap();
    let before = reloads(&root);
    assert_eq!(
        vsactl_in(&root, &config, &["apply", "--yes"]),
        ExitCode::SUCCESS
    );
    let events = audit_lines_in(&root).len();
    assert_eq!(
        vsactl_in(&root, &config, &["apply", "--yes"]),
        ExitCode::SUCCESS
    );
    assert_eq!(audit_lines_in(&root).len(), events, "a no-op apply");
    assert!(reloads(&root) <= before + 1);
}

#[test]
fn a_missing_proxy_container_is_a_clear_error_and_changes_nothing_served() {
    if !require_docker() {
        return;
    }
    let (_dir, root, repo) = vsa_tests::test_repo();
    let missing = unique("no-such-proxy");
    let config = root.join("vsa.yaml");
    std::fs::write(
        &config,
        format!(
            "host: test-01\nrepo: {{ path: repo }}\nnginx:\n  container: {missing}\n  ipv6: false\n"
        ),
    )
    .unwrap();
    site(
        &repo,
        "a.vsa.test",
        "upstream: { url: \"http://127.0.0.1:9\" }\n",
    );
    let out = vsactl_child_in(&root, &config, &["apply", "--yes"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&missing), "names the container: {stderr}");
    // Nothing was left in place that nginx never accepted.
    assert!(!root.join("etc/nginx/conf.d/a.vsa.test.conf").exists());
}
