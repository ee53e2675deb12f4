//! Stacks against a real Docker engine, behind the production proxy
//! topology (nginx in a container on the shared network, `nginx -t` and
//! reload through `docker exec`).

use std::path::Path;
use std::process::{Command, ExitCode};

use vsa_tests::docker::{BUSYBOX, ProxiedHost, docker, docker_output, require_docker, unique};
use vsa_tests::host::{audit_lines_in, vsactl_child_in, vsactl_in};
use vsa_tests::http_get_until;

vsa_tests::child_entry_points!();

/// The proxy-in-a-container host, with what these tests do to it.
struct Proxied(ProxiedHost);

impl std::ops::Deref for Proxied {
    type Target = ProxiedHost;
    fn deref(&self) -> &ProxiedHost {
        &self.0
    }
}

impl std::ops::DerefMut for Proxied {
    fn deref_mut(&mut self) -> &mut ProxiedHost {
        &mut self.0
    }
}

impl Proxied {
    fn new() -> Proxied {
        Proxied(ProxiedHost::new())
    }

    fn apply(&self) -> ExitCode {
        vsactl_in(&self.root, &self.config, &["apply", "--yes"])
    }

    fn get(&self, host: &str, want: &str) -> String {
        http_get_until(self.port, host, "/", &[], |r| r.body.contains(want)).body
    }

    fn inspect(&self, container: &str, format: &str) -> String {
        docker(&["inspect", "--format", format, container])
    }
}

/// A busybox web server that answers with `hello $GREETING`, healthchecked.
fn web_stack(name: &str, greeting: &str, env_file: &Path, volume: &str) -> String {
    format!(
        r#"apiVersion: vsa/v1
kind: Stack
name: {name}
host: test-01
services:
  web:
    image: {BUSYBOX}
    command: ["sh", "-c", "trap 'exit 0' TERM; mkdir -p /www && echo \"hello $GREETING\" > /www/index.html && busybox httpd -f -p 8080 -h /www & wait"]
    environment: {{ GREETING: {greeting} }}
    env_file: {env}
    volumes: ["{volume}:/data"]
    healthcheck:
      test: ["CMD", "wget", "-qO-", "http://127.0.0.1:8080/"]
      interval: 1s
    depends_on: [worker]
  worker:
    image: {BUSYBOX}
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
"#,
        env = env_file.display()
    )
}

#[test]
fn a_stack_and_its_site_converge_behind_the_proxy_container() {
    if !require_docker() {
        return;
    }
    let mut h = Proxied::new();
    let stack = unique("shop");
    let web = format!("{stack}-web");
    let volume = unique("data");
    h.cleanup.volume(&volume);
    h.cleanup.container(&web);
    let env_file = h.root.join("web.env");
    std::fs::write(&env_file, "# secrets\nAPI_KEY=s3cret-value-123\n").unwrap();
    h.write(
        "stacks/shop.yaml",
        &web_stack(&stack, "one", &env_file, &volume),
    );
    h.write(
        "sites/app.vsa.test.yaml",
        &format!(
            "apiVersion: vsa/v1\nkind: Site\nhost: test-01\ndomain: app.vsa.test\ntls: none\nupstream: {{ container: {web}, port: 8080 }}\n"
        ),
    );
    let worker = format!("{stack}-worker");
    h.cleanup.container(&worker);
    // Someone's own container on the same network: never touched.
    let theirs = unique("theirs");
    let net = h.net.clone();
    h.cleanup
        .run(&theirs, &["--network", &net, BUSYBOX, "sleep", "600"]);

    // --dry-run creates, starts and removes nothing.
    // (This test's containers only: other tests run beside it.)
    let filter = format!("name={stack}");
    let ps = || {
        docker(&[
            "ps",
            "-a",
            "--filter",
            &filter,
            "--format",
            "{{.Names}} {{.State}}",
        ])
    };
    let before = ps();
    let out = vsactl_child_in(&h.root, &h.config, &["apply", "--dry-run"], &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains(&format!("create and start container {web}")),
        "{shown}"
    );
    assert_eq!(ps(), before);

    assert_eq!(h.apply(), ExitCode::SUCCESS);
    // depends_on: the worker started first.
    let started = |c: &str| h.inspect(c, "{{.State.StartedAt}}");
    assert!(started(&worker) <= started(&web));
    assert_eq!(h.get("app.vsa.test", "hello one"), "hello one\n");
    // Labels: vsa's, and Compose's so the usual tools group it.
    let labels = h.inspect(&web, "{{json .Config.Labels}}");
    let labels: serde_json::Value = serde_json::from_str(&labels).unwrap();
    assert_eq!(labels["vsa.managed"], "true");
    assert_eq!(labels["vsa.stack"], stack.as_str());
    assert_eq!(labels["com.docker.compose.project"], stack.as_str());
    assert_eq!(labels["com.docker.compose.service"], "web");
    assert_eq!(labels["vsa.spec-hash"].as_str().unwrap().len(), 64);
    assert_eq!(
        h.inspect(&web, "{{.HostConfig.RestartPolicy.Name}}"),
        "unless-stopped"
    );
    assert_eq!(h.inspect(&web, "{{.State.Health.Status}}"), "healthy");
    // The env file's value reached the container, and nothing else.
    assert!(
        h.inspect(&web, "{{json .Config.Env}}")
            .contains("API_KEY=s3cret-value-123")
    );
    let plan = vsactl_child_in(&h.root, &h.config, &["diff", "--format", "json"], &[]);
    assert!(!String::from_utf8_lossy(&plan.stdout).contains("s3cret"));
    assert!(
        audit_lines_in(&h.root)
            .iter()
            .all(|e| !e.to_string().contains("s3cret"))
    );

    // A second apply changes nothing: same container, no restart.
    let id = h.inspect(&web, "{{.Id}} {{.State.StartedAt}}");
    let worker_id = h.inspect(&worker, "{{.Id}} {{.State.StartedAt}}");
    let events = audit_lines_in(&h.root).len();
    assert_eq!(h.apply(), ExitCode::SUCCESS);
    assert_eq!(h.inspect(&web, "{{.Id}} {{.State.StartedAt}}"), id);
    assert_eq!(audit_lines_in(&h.root).len(), events);

    // A changed environment: planned with a field-level diff, recreated,
    // and nginx routes to the new container at once.
    h.write(
        "stacks/shop.yaml",
        &web_stack(&stack, "two", &env_file, &volume),
    );
    let out = vsactl_child_in(&h.root, &h.config, &["diff", "--format", "json"], &[]);
    let plan: serde_json::Value = vsa_tests::host::child_json(&out.stdout);
    let change = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "container")
        .unwrap()
        .clone();
    assert_eq!(change["action"], "update", "{plan}");
    let diff = change["diff"].as_str().unwrap();
    assert!(
        diff.contains("-    \"GREETING\": \"one\"") && diff.contains("+    \"GREETING\": \"two\""),
        "{diff}"
    );
    let reloads = || {
        audit_lines_in(&h.root)
            .iter()
            .filter(|e| e["action"] == "nginx.reload")
            .count()
    };
    let before = reloads();
    assert_eq!(h.apply(), ExitCode::SUCCESS);
    assert_ne!(h.inspect(&web, "{{.Id}}"), id.split(' ').next().unwrap());
    // nginx does not keep routing to the old address: recreating a
    // container a site points at reloads it, so the name is resolved anew
    // (no vhost changed, so nothing else would have).
    assert_eq!(reloads(), before + 1);
    assert_eq!(
        h.inspect(&worker, "{{.Id}} {{.State.StartedAt}}"),
        worker_id,
        "exactly the changed container is recreated"
    );
    assert_eq!(h.get("app.vsa.test", "hello two"), "hello two\n");

    // A changed env file is a change too (by digest, never by value).
    std::fs::write(&env_file, "API_KEY=rotated-456\n").unwrap();
    assert_eq!(h.apply(), ExitCode::SUCCESS);
    assert!(
        h.inspect(&web, "{{json .Config.Env}}")
            .contains("API_KEY=rotated-456")
    );

    // Drift: a stopped managed container is started again.
    docker(&["stop", "-t", "1", &web]);
    assert_eq!(h.apply(), ExitCode::SUCCESS);
    assert_eq!(h.inspect(&web, "{{.State.Running}}"), "true");
    assert!(
        audit_lines_in(&h.root)
            .iter()
            .any(|e| e["action"] == "container.start" && e["target"] == web.as_str())
    );

    // Removed from the repository: the container goes, its volume stays,
    // the unmanaged container was never touched.
    std::fs::remove_file(h.repo.join("stacks/shop.yaml")).unwrap();
    std::fs::remove_file(h.repo.join("sites/app.vsa.test.yaml")).unwrap();
    assert_eq!(h.apply(), ExitCode::SUCCESS);
    assert!(!docker_output(&["inspect", &web]).status.success());
    assert!(!docker_output(&["inspect", &worker]).status.success());
    assert!(
        docker_output(&["volume", "inspect", &volume])
            .status
            .success()
    );
    assert_eq!(h.inspect(&theirs, "{{.State.Running}}"), "true");
}

#[test]
fn a_missing_image_fails_its_stack_alone_and_a_missing_env_file_blocks_it() {
    if !require_docker() {
        return;
    }
    let mut h = Proxied::new();
    let good = unique("good");
    let bad = unique("bad");
    let blocked = unique("blocked");
    for s in [&good, &bad, &blocked] {
        h.cleanup.container(&format!("{s}-web"));
        h.cleanup.container(&format!("{s}-worker"));
    }
    let (good_volume, blocked_volume) = (unique("vol"), unique("vol"));
    h.cleanup.volume(&good_volume);
    h.cleanup.volume(&blocked_volume);
    let env_file = h.root.join("web.env");
    std::fs::write(&env_file, "A=1\n").unwrap();
    h.write(
        "stacks/good.yaml",
        &web_stack(&good, "good", &env_file, &good_volume),
    );
    // A registry on loopback that is not there: the image cannot be had.
    h.write(
        "stacks/bad.yaml",
        &format!(
            "apiVersion: vsa/v1\nkind: Stack\nname: {bad}\nhost: test-01\nservices:\n  web:\n    image: localhost:1/vsa-test/missing:1\n"
        ),
    );
    h.write(
        "stacks/blocked.yaml",
        &web_stack(
            &blocked,
            "x",
            Path::new("/nonexistent/vsa/web.env"),
            &blocked_volume,
        ),
    );
    h.write(
        "sites/good.vsa.test.yaml",
        &format!(
            "apiVersion: vsa/v1\nkind: Site\nhost: test-01\ndomain: good.vsa.test\ntls: none\nupstream: {{ container: {good}-web, port: 8080 }}\n"
        ),
    );
    let out = vsactl_child_in(&h.root, &h.config, &["apply", "--yes"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("localhost:1/vsa-test/missing:1"),
        "names the image: {stderr}"
    );
    assert!(
        stderr.contains("/nonexistent/vsa/web.env"),
        "names the env file: {stderr}"
    );
    assert_eq!(h.get("good.vsa.test", "hello good"), "hello good\n");
    assert!(
        !docker_output(&["inspect", &format!("{blocked}-web")])
            .status
            .success()
    );
    assert!(
        !docker_output(&["inspect", &format!("{bad}-web")])
            .status
            .success()
    );
}

/// A stack of one busybox service `web` sleeping (and stopping at once on
/// SIGTERM), named `name`.
fn sleeper(name: &str, seconds: u32) -> String {
    format!(
        "apiVersion: vsa/v1\nkind: Stack\nname: {name}\nhost: test-01\nservices:\n  web:\n    image: {BUSYBOX}\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; sleep {seconds} & wait\"]\n"
    )
}

/// A vsa instance of host `test-01` on the shared network `net`: its own
/// state dir (so its own instance id) and repository.
struct Instance {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    repo: std::path::PathBuf,
    config: std::path::PathBuf,
}

impl Instance {
    fn new(net: &str) -> Instance {
        let (dir, root, repo) = vsa_tests::test_repo();
        std::fs::create_dir_all(repo.join("stacks")).unwrap();
        let config = root.join("vsa.yaml");
        std::fs::write(
            &config,
            format!("host: test-01\nrepo: {{ path: repo }}\ndocker:\n  network: {net}\n"),
        )
        .unwrap();
        Instance {
            _dir: dir,
            root,
            repo,
            config,
        }
    }

    fn stack(&self, name: &str, seconds: u32) {
        std::fs::write(
            self.repo.join(format!("stacks/{name}.yaml")),
            sleeper(name, seconds),
        )
        .unwrap();
    }

    fn apply(&self) -> std::process::Output {
        vsactl_child_in(&self.root, &self.config, &["apply", "--yes"], &[])
    }
}

#[test]
fn two_instances_on_one_engine_never_take_each_others_containers() {
    if !require_docker() {
        return;
    }
    let mut cleanup = vsa_tests::docker::Cleanup::default();
    let net = unique("net");
    cleanup.create_network(&net);
    let (alpha, beta, old) = (unique("alpha"), unique("beta"), unique("old"));
    for s in [&alpha, &beta, &old] {
        cleanup.container(&format!("{s}-web"));
    }
    // A container an earlier vsa made for this host, without vsa.instance.
    let old_web = format!("{old}-web");
    cleanup.run(
        &old_web,
        &[
            "--network",
            &net,
            "--label",
            "vsa.managed=true",
            "--label",
            "vsa.host=test-01",
            BUSYBOX,
            "sh",
            "-c",
            "trap 'exit 0' TERM; sleep 600 & wait",
        ],
    );
    let old_id = docker(&["inspect", "--format", "{{.Id}}", &old_web]);

    // Two vsa with the same host id on one engine.
    let a = Instance::new(&net);
    a.stack(&alpha, 600);
    a.stack(&old, 600);
    let b = Instance::new(&net);
    b.stack(&beta, 600);
    b.stack(&alpha, 700); // the same name, another spec

    let out = a.apply();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let label = |c: &str| {
        docker(&[
            "inspect",
            "--format",
            "{{index .Config.Labels \"vsa.instance\"}}",
            c,
        ])
    };
    let a_id = std::fs::read_to_string(a.root.join("var/lib/vsa/instance.id"))
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(label(&format!("{alpha}-web")), a_id);
    // The old container was adopted once, on purpose, and said so.
    assert_eq!(label(&old_web), a_id);
    assert_ne!(
        docker(&["inspect", "--format", "{{.Id}}", &old_web]),
        old_id
    );
    let adopted: Vec<_> = audit_lines_in(&a.root)
        .into_iter()
        .filter(|e| e["action"] == "container.adopt")
        .collect();
    assert_eq!(adopted.len(), 1, "{adopted:?}");
    assert_eq!(adopted[0]["target"], old_web.as_str());

    // B makes its own, never deletes A's (it wants neither old nor A's
    // alpha), and reports A's alpha-web as a conflict instead of recreating it.
    let alpha_id = docker(&["inspect", "--format", "{{.Id}}", &format!("{alpha}-web")]);
    let out = b.apply();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("belongs to another vsa"), "{err}");
    let b_id = std::fs::read_to_string(b.root.join("var/lib/vsa/instance.id"))
        .unwrap()
        .trim()
        .to_owned();
    assert_ne!(a_id, b_id);
    assert_eq!(label(&format!("{beta}-web")), b_id);
    assert_eq!(
        docker(&["inspect", "--format", "{{.Id}}", &format!("{alpha}-web")]),
        alpha_id
    );
    assert_eq!(label(&old_web), a_id);

    // And A, again, leaves B's beta-web alone: nothing to do at all.
    let events = audit_lines_in(&a.root).len();
    let out = a.apply();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(audit_lines_in(&a.root).len(), events);
    assert_eq!(label(&format!("{beta}-web")), b_id);
}

#[test]
fn env_files_are_read_bounded_and_their_digests_reveal_nothing() {
    if !require_docker() {
        return;
    }
    let mut cleanup = vsa_tests::docker::Cleanup::default();
    let net = unique("net");
    cleanup.create_network(&net);
    let i = Instance::new(&net);
    let fifo = i.root.join("env.fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let big = i.root.join("big.env");
    std::fs::write(&big, vec![b'#'; 2 << 20]).unwrap();
    let link = i.root.join("link.env");
    std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
    let good = i.root.join("good.env");
    std::fs::write(&good, "TOKEN=1234\n").unwrap();
    let stacks: Vec<(String, &std::path::Path, &str)> = vec![
        (
            unique("zero"),
            std::path::Path::new("/dev/zero"),
            "a character device",
        ),
        (unique("fifo"), &fifo, "a FIFO"),
        (unique("big"), &big, "larger than"),
        (unique("link"), &link, "symbolic link"),
    ];
    for (name, path, _) in &stacks {
        std::fs::write(
            i.repo.join(format!("stacks/{name}.yaml")),
            format!(
                "apiVersion: vsa/v1\nkind: Stack\nname: {name}\nhost: test-01\nservices:\n  web:\n    image: {BUSYBOX}\n    env_file: {}\n",
                path.display()
            ),
        )
        .unwrap();
    }
    let ok = unique("ok");
    cleanup.container(&format!("{ok}-web"));
    std::fs::write(
        i.repo.join(format!("stacks/{ok}.yaml")),
        format!(
            "apiVersion: vsa/v1\nkind: Stack\nname: {ok}\nhost: test-01\nservices:\n  web:\n    image: {BUSYBOX}\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; sleep 600 & wait\"]\n    env_file: {}\n",
            good.display()
        ),
    )
    .unwrap();

    // Each bad one blocks its stack with the reason and the path, at once
    // (no hang on the FIFO, no gigabytes from /dev/zero); the good one runs.
    let out = i.apply();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for (name, path, why) in &stacks {
        let line = err
            .lines()
            .find(|l| l.contains(name.as_str()) && l.contains("blocked"))
            .unwrap_or_else(|| panic!("{name} not blocked: {err}"));
        assert!(
            line.contains(&path.display().to_string()) && line.contains(why),
            "{line}"
        );
    }
    // The digest in the label is keyed: not the plain SHA-256 of the secret.
    let spec = docker(&[
        "inspect",
        "--format",
        "{{index .Config.Labels \"vsa.spec\"}}",
        &format!("{ok}-web"),
    ]);
    assert!(spec.contains("hmac-sha256:"), "{spec}");
    let plain = Command::new("sha256sum").arg(&good).output().unwrap();
    let plain = String::from_utf8_lossy(&plain.stdout);
    let plain = plain.split_whitespace().next().unwrap();
    assert!(!spec.contains(plain), "{spec}");
    // And planning again sees it in sync (same key).
    let out = vsactl_child_in(&i.root, &i.config, &["diff", "--format", "json"], &[]);
    let plan = vsa_tests::host::child_json(&out.stdout);
    assert!(
        !plan["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == format!("{ok}-web")),
        "{plan}"
    );
}
