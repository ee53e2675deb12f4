//! `vsactl` as users run it: the real binary, a repository and a host in a
//! temporary directory, exit codes and output as the contract says.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

struct Sandbox {
    _dir: tempfile::TempDir,
    root: PathBuf,
    repo: PathBuf,
    config: PathBuf,
}

const FLEET: &str = "apiVersion: vsa/v1\nkind: Fleet\nhosts:\n  - id: vps-01\n  - id: vps-02\n";
const HASH: &str = "$2b$04$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW";

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let repo = root.join("repo");
        std::fs::create_dir_all(repo.join("sites")).unwrap();
        std::fs::write(repo.join("fleet.yaml"), FLEET).unwrap();
        let config = root.join("vsa.yaml");
        std::fs::write(
            &config,
            "host: vps-01\nrepo: { path: repo }\nnginx: { ipv6: false }\n",
        )
        .unwrap();
        let sb = Sandbox {
            _dir: dir,
            root,
            repo,
            config,
        };
        sb.site(
            "shop.example.com",
            "upstream: { container: shop-web, port: 8080 }\naliases: [www.shop.example.com]\n",
        );
        sb.site(
            "admin.example.com",
            &format!(
                "upstream: {{ url: \"http://127.0.0.1:3000\" }}\nauth:\n  users:\n    - name: admin\n      bcrypt: \"{HASH}\"\n"
            ),
        );
        sb.site(
            "other.example.com",
            "host: vps-02\nupstream: { url: \"http://127.0.0.1:3001\" }\n",
        );
        sb
    }

    fn site(&self, domain: &str, body: &str) {
        let host = if body.contains("host:") {
            ""
        } else {
            "host: vps-01\n"
        };
        std::fs::write(
            self.repo.join("sites").join(format!("{domain}.yaml")),
            format!("apiVersion: vsa/v1\nkind: Site\ndomain: {domain}\n{host}{body}"),
        )
        .unwrap();
    }

    fn vsactl(&self, args: &[&str]) -> Output {
        self.vsactl_stdin(args, None)
    }

    fn vsactl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_vsactl"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("VSA_ROOT", &self.root)
            .env_remove("VSA_CONFIG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            pipe.write_all(s.as_bytes()).unwrap();
        }
        drop(pipe);
        child.wait_with_output().unwrap()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn git(&self, args: &[&str]) {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(&self.repo)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn plan_json(sb: &Sandbox) -> (i32, serde_json::Value) {
    let o = sb.vsactl(&["diff", "--format", "json"]);
    assert!(code(&o) != 2, "{}", stderr(&o));
    (code(&o), serde_json::from_slice(&o.stdout).unwrap())
}

fn changes(plan: &serde_json::Value) -> Vec<(String, String, String)> {
    plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["kind"].as_str().unwrap().to_owned(),
                c["name"].as_str().unwrap().to_owned(),
                c["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Puts each certificate, vhost and htpasswd in place by hand, from
/// `vsactl render` and the manifests, as an operator following the plan
/// would.
fn put_files_in_place(sb: &Sandbox) {
    let vhosts = sb.path("etc/nginx/conf.d");
    let htpasswd = sb.path("etc/nginx/htpasswd");
    let logs = sb.path("var/log/nginx/domains");
    for d in [&vhosts, &htpasswd, &logs] {
        std::fs::create_dir_all(d).unwrap();
    }
    for names in [
        &["shop.example.com", "www.shop.example.com"][..],
        &["admin.example.com"],
    ] {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names.clone())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let live = sb.path(&format!("etc/letsencrypt/live/{}", names[0]));
        std::fs::create_dir_all(&live).unwrap();
        std::fs::write(live.join("fullchain.pem"), cert.pem()).unwrap();
        std::fs::write(live.join("privkey.pem"), key.serialize_pem()).unwrap();
    }
    for domain in ["shop.example.com", "admin.example.com"] {
        let o = sb.vsactl(&["render", domain]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        std::fs::write(vhosts.join(format!("{domain}.conf")), &o.stdout).unwrap();
        std::fs::write(logs.join(format!("{domain}.access.json")), "").unwrap();
    }
    std::fs::write(
        htpasswd.join("admin.example.com.htpasswd"),
        format!("# managed-by: vsa\nadmin:{HASH}\n"),
    )
    .unwrap();
    // The http-context file, as the plan's create diff shows it.
    let (_, plan) = plan_json(sb);
    let http = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "00-vsa-http")
        .expect("http-context file planned");
    let content: String = http["diff"]
        .as_str()
        .unwrap()
        .lines()
        .filter(|l| l.starts_with('+') && !l.starts_with("+++"))
        .map(|l| format!("{}\n", &l[1..]))
        .collect();
    std::fs::write(vhosts.join("00-vsa-http.conf"), content).unwrap();
}

#[test]
fn diff_follows_the_host_from_empty_to_in_sync_to_drifted() {
    let sb = Sandbox::new();

    // An empty host: create for each vhost, htpasswd and access log.
    let (code0, plan) = plan_json(&sb);
    assert_eq!(code0, 1);
    assert_eq!(plan["host"], "vps-01");
    assert_eq!(
        plan["commit"],
        serde_json::Value::Null,
        "not a git checkout"
    );
    let mut got = changes(&plan);
    got.sort();
    let expect: Vec<(String, String, String)> = [
        ("access_log", "admin.example.com"),
        ("access_log", "shop.example.com"),
        ("cert", "admin.example.com"),
        ("cert", "shop.example.com"),
        ("htpasswd", "admin.example.com"),
        ("vhost", "00-vsa-http"),
        ("vhost", "admin.example.com"),
        ("vhost", "shop.example.com"),
    ]
    .iter()
    .map(|(k, n)| (k.to_string(), n.to_string(), "create".to_string()))
    .collect();
    assert_eq!(got, expect);
    assert_eq!(
        plan["summary"],
        serde_json::json!({"create": 8, "update": 0, "delete": 0})
    );
    // htpasswd diffs name users, never hashes.
    let htdiff = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "htpasswd")
        .unwrap()["diff"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(htdiff.contains("+admin"), "{htdiff}");
    assert!(!htdiff.contains("$2b$"), "{htdiff}");

    // Files put in place exactly as rendered: in sync, exit 0.
    put_files_in_place(&sb);
    let o = sb.vsactl(&["diff"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("In sync"));

    // An unmanaged file is reported and never planned for deletion.
    std::fs::write(
        sb.path("etc/nginx/conf.d/default.conf"),
        "server { listen 80; }\n",
    )
    .unwrap();
    let (c, plan) = plan_json(&sb);
    assert_eq!(c, 0);
    assert!(plan["changes"].as_array().unwrap().is_empty());
    assert_eq!(
        plan["unmanaged"],
        serde_json::json!([{"kind": "vhost", "file": "default.conf"}])
    );

    // A hand edit is an update with a diff.
    let shop = sb.path("etc/nginx/conf.d/shop.example.com.conf");
    let edited = std::fs::read_to_string(&shop)
        .unwrap()
        .replace("proxy_http_version 1.1;", "proxy_http_version 1.0;");
    std::fs::write(&shop, edited).unwrap();
    let o = sb.vsactl(&["diff"]);
    assert_eq!(code(&o), 1);
    let text = stdout(&o);
    assert!(text.contains("~ update vhost"), "{text}");
    let (_, plan) = plan_json(&sb);
    assert_eq!(
        changes(&plan),
        vec![("vhost".into(), "shop.example.com".into(), "update".into())]
    );
    let d = plan["changes"][0]["diff"].as_str().unwrap();
    assert!(d.starts_with("--- live\n+++ desired\n"), "{d}");
    assert!(d.contains("-        proxy_http_version 1.0;"), "{d}");
    assert!(d.contains("+        proxy_http_version 1.1;"), "{d}");

    // Removing a site plans the deletion of its managed files only.
    std::fs::write(
        &shop,
        std::fs::read_to_string(&shop)
            .unwrap()
            .replace("proxy_http_version 1.0;", "proxy_http_version 1.1;"),
    )
    .unwrap();
    std::fs::remove_file(sb.repo.join("sites/admin.example.com.yaml")).unwrap();
    let (c, plan) = plan_json(&sb);
    assert_eq!(c, 1);
    let mut got = changes(&plan);
    got.sort();
    assert_eq!(
        got,
        vec![
            (
                "htpasswd".into(),
                "admin.example.com".into(),
                "delete".into()
            ),
            ("vhost".into(), "admin.example.com".into(), "delete".into()),
        ]
    );
    assert!(sb.path("etc/nginx/conf.d/default.conf").exists());

    // diff touched nothing.
    assert!(sb.path("etc/nginx/conf.d/admin.example.com.conf").exists());
}

#[test]
fn an_unmanaged_file_in_the_way_blocks_and_is_not_overwritten() {
    let sb = Sandbox::new();
    let vhosts = sb.path("etc/nginx/conf.d");
    std::fs::create_dir_all(&vhosts).unwrap();
    std::fs::write(vhosts.join("shop.example.com.conf"), "# hand-made\n").unwrap();
    let (c, plan) = plan_json(&sb);
    assert_eq!(c, 1);
    assert_eq!(plan["conflicts"][0]["file"], "shop.example.com.conf");
    assert!(
        !changes(&plan)
            .iter()
            .any(|(k, n, _)| k == "vhost" && n == "shop.example.com")
    );
}

#[test]
fn diff_of_an_invalid_repository_is_an_error_naming_file_and_line() {
    let sb = Sandbox::new();
    sb.site("bad.example.com", "upstream: { url: \"http://x;y\" }\n");
    let o = sb.vsactl(&["diff"]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("sites/bad.example.com.yaml:5:"),
        "{}",
        stderr(&o)
    );
    let o = sb.vsactl(&["validate"]);
    assert_eq!(code(&o), 1);
    assert!(
        stdout(&o).contains("sites/bad.example.com.yaml:5:"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn validate_reports_every_problem_and_exits_by_the_contract() {
    let sb = Sandbox::new();
    let o = sb.vsactl(&["validate"]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    sb.site(
        "Bad.example.com",
        "upstream: { container: x, port: 99999 }\nbogus: 1\n",
    );
    std::fs::write(sb.repo.join("sites/two.yaml"), "apiVersion: vsa/v1\nkind: Site\ndomain: a.example.com\nhost: nowhere\nupstream: { url: \"http://127.0.0.1\" }\n").unwrap();
    let o = sb.vsactl(&["validate", "--format", "json"]);
    assert_eq!(code(&o), 1);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["valid"], false);
    let located: Vec<String> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("{}:{}:{}", p["file"].as_str().unwrap(), p["line"], p["col"]))
        .collect();
    // Every problem of the broken document, not only the first.
    for at in [
        "sites/Bad.example.com.yaml:3:9",
        "sites/Bad.example.com.yaml:5:33",
        "sites/Bad.example.com.yaml:6:1",
    ] {
        assert!(located.contains(&at.to_string()), "{at} not in {located:?}");
    }
    assert!(
        located.contains(&"sites/two.yaml:4:7".to_string()),
        "{located:?}"
    );
}

#[test]
fn render_prints_the_vhost_and_names_unknown_sites() {
    let sb = Sandbox::new();
    let o = sb.vsactl(&["render", "shop.example.com"]);
    assert_eq!(code(&o), 0);
    let v = stdout(&o);
    assert!(v.starts_with("# managed-by: vsa\n"));
    assert!(v.contains("server_name shop.example.com www.shop.example.com;"));
    assert!(!v.contains("ssl_certificate"), "no certificate on disk yet");
    let o = sb.vsactl(&["render", "shop.example.com", "--tls"]);
    assert!(stdout(&o).contains("ssl_certificate "));
    let o = sb.vsactl(&["render", "nope.example.com"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("no site `nope.example.com`"));
}

#[test]
fn hash_password_reads_stdin_and_the_hash_validates() {
    let sb = Sandbox::new();
    let o = sb.vsactl_stdin(&["hash-password", "--cost", "4"], Some("hunter2\n"));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let hash = stdout(&o).trim().to_owned();
    assert!(hash.starts_with("$2b$04$"), "{hash}");
    assert!(!stdout(&o).contains("hunter2"));
    // The hash is accepted by validation and matches the password.
    sb.site(
        "new.example.com",
        &format!(
            "upstream: {{ url: \"http://127.0.0.1:1\" }}\nauth:\n  users:\n    - name: u\n      bcrypt: \"{hash}\"\n"
        ),
    );
    assert_eq!(code(&sb.vsactl(&["validate"])), 0);
    let o = sb.vsactl_stdin(&["hash-password"], Some(""));
    assert_eq!(code(&o), 1);
}

#[test]
fn schema_is_json_schema_covering_every_kind() {
    let sb = Sandbox::new();
    let o = sb.vsactl(&["schema"]);
    assert_eq!(code(&o), 0);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["$schema"], "https://json-schema.org/draft/2020-12/schema");
    let text = stdout(&o);
    for field in [
        "domain",
        "upstream",
        "services",
        "hosts",
        "rate_limit",
        "bcrypt",
        "healthcheck",
    ] {
        assert!(
            text.contains(&format!("\"{field}\"")),
            "schema lacks {field}"
        );
    }
}

#[test]
fn missing_host_and_missing_config_are_clear_errors() {
    let sb = Sandbox::new();
    std::fs::write(&sb.config, "repo: { path: repo }\n").unwrap();
    let o = sb.vsactl(&["diff"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("--host"), "{}", stderr(&o));
    let o = sb.vsactl(&["diff", "--host", "vps-09"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("not in the fleet"), "{}", stderr(&o));
    std::fs::write(
        &sb.config,
        "host: vps-01\nrepo: { path: repo }\nnginx: { tset: 1 }\n",
    )
    .unwrap();
    let o = sb.vsactl(&["diff"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("vsa.yaml:3:"), "{}", stderr(&o));
    let o = Command::new(env!("CARGO_BIN_EXE_vsactl"))
        .args(["--config", "/nonexistent/vsa.yaml", "diff"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/vsa.yaml"));
}

#[test]
fn diff_base_head_renders_a_pull_request_per_host() {
    let sb = Sandbox::new();
    sb.git(&["init", "-q"]);
    sb.git(&["add", "-A"]);
    sb.git(&["commit", "-qm", "base"]);
    // The change: a new site on vps-02, a changed upstream on vps-01.
    sb.site(
        "new.example.com",
        "host: vps-02\nupstream: { url: \"http://127.0.0.1:4000\" }\n",
    );
    sb.site(
        "shop.example.com",
        "upstream: { container: shop-web, port: 9090 }\naliases: [www.shop.example.com]\n",
    );
    sb.git(&["add", "-A"]);
    sb.git(&["commit", "-qm", "head"]);

    let o = sb.vsactl(&[
        "diff", "--base", "HEAD~1", "--head", "HEAD", "--format", "json",
    ]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["base"].as_str().unwrap().len(), 40);
    let hosts = v["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 2);
    assert_eq!(hosts[0]["host"], "vps-01");
    assert_eq!(
        changes(&hosts[0]),
        vec![("vhost".into(), "shop.example.com".into(), "update".into())]
    );
    assert!(
        hosts[0]["changes"][0]["diff"]
            .as_str()
            .unwrap()
            .contains("+        set $vsa_upstream http://shop-web:9090;")
    );
    assert_eq!(hosts[1]["host"], "vps-02");
    assert!(changes(&hosts[1]).contains(&(
        "vhost".into(),
        "new.example.com".into(),
        "create".into()
    )));

    let o = sb.vsactl(&["diff", "--base", "HEAD~1", "--format", "markdown"]);
    assert_eq!(code(&o), 1);
    let md = stdout(&o);
    assert!(md.contains("### Host `vps-01`"), "{md}");
    assert!(md.contains("```diff"), "{md}");

    let o = sb.vsactl(&["diff", "--base", "HEAD", "--head", "HEAD"]);
    assert_eq!(code(&o), 0);
    let o = sb.vsactl(&["diff", "--base", "no-such-ref"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("no-such-ref"));

    // In a git checkout, the live plan names the commit.
    let (_, plan) = plan_json(&sb);
    assert_eq!(plan["commit"].as_str().unwrap().len(), 40);
}

#[test]
fn help_teaches() {
    let o = Command::new(env!("CARGO_BIN_EXE_vsactl"))
        .arg("--help")
        .output()
        .unwrap();
    let h = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "validate",
        "diff",
        "render",
        "hash-password",
        "schema",
        "VSA_ROOT",
        "--config",
    ] {
        assert!(h.contains(needle), "--help lacks {needle}");
    }
    let o = Command::new(env!("CARGO_BIN_EXE_vsactl"))
        .args(["diff", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("Exit status"));
}

#[test]
fn configuration_comes_from_flag_then_env_then_root_default() {
    let sb = Sandbox::new();
    let run = |args: &[&str], envs: &[(&str, &std::path::Path)]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vsactl"));
        c.args(args).env_remove("VSA_CONFIG").env_remove("VSA_ROOT");
        for (k, v) in envs {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    // $VSA_CONFIG when there is no --config.
    let o = run(
        &["diff", "--format", "json"],
        &[("VSA_CONFIG", &sb.config), ("VSA_ROOT", &sb.root)],
    );
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["host"],
        "vps-01"
    );
    // $VSA_ROOT/etc/vsa/vsa.yaml when neither is given.
    std::fs::create_dir_all(sb.path("etc/vsa")).unwrap();
    std::fs::write(
        sb.path("etc/vsa/vsa.yaml"),
        "host: vps-02\nrepo: { path: ../../repo }\n",
    )
    .unwrap();
    let o = run(&["diff", "--format", "json"], &[("VSA_ROOT", &sb.root)]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(plan["host"], "vps-02");
    assert!(changes(&plan).contains(&(
        "vhost".into(),
        "other.example.com".into(),
        "create".into()
    )));
    // --host and --repo override the file.
    let o = run(
        &["diff", "--format", "json", "--host", "vps-01"],
        &[("VSA_ROOT", &sb.root)],
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["host"],
        "vps-01"
    );
    // A missing $VSA_CONFIG file is an error, not silently the defaults.
    let o = run(&["diff"], &[("VSA_CONFIG", &sb.path("nope.yaml"))]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("nope.yaml"));
}

#[test]
fn certs_lists_status_days_issuer_and_sites_without_one() {
    let sb = Sandbox::new();
    sb.site(
        "tls.example.com",
        "upstream: { url: \"http://127.0.0.1:3002\" }\ntls: acme\naliases: [www.tls.example.com]\n",
    );
    // A certificate for shop (tls: acme by default) that misses its alias,
    // with 20 days left; none for tls.example.com.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["shop.example.com".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "shop.example.com");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    params.not_after = rcgen::date_time_ymd(1970, 1, 1)
        + std::time::Duration::from_secs((now + 20 * 86_400 + 3600) as u64);
    params.not_before = rcgen::date_time_ymd(2026, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    let live = sb.root.join("etc/letsencrypt/live/shop.example.com");
    std::fs::create_dir_all(&live).unwrap();
    std::fs::write(live.join("fullchain.pem"), cert.pem()).unwrap();
    std::fs::write(live.join("privkey.pem"), key.serialize_pem()).unwrap();

    let out = sb.vsactl(&["certs", "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &v["certs"][0];
    assert_eq!(c["domain"], "shop.example.com");
    assert_eq!(c["status"], "warning");
    assert_eq!(c["days_left"], 20);
    assert_eq!(c["key_matches"], true);
    assert_eq!(
        c["sites"][0]["covered"], false,
        "www.shop.example.com is missing"
    );
    assert!(
        v["missing"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d == "tls.example.com")
    );

    let out = sb.vsactl(&["certs"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("DOMAIN") && text.contains("ISSUER"), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("shop.example.com"))
        .unwrap();
    assert!(row.contains("warning") && row.contains(" 20 "), "{row}");
    assert!(row.contains("does not cover all names"), "{row}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("tls.example.com") && l.contains("missing"))
    );
}

#[test]
fn stack_new_scaffolds_a_valid_stack_and_never_overwrites() {
    let sb = Sandbox::new();
    let o = sb.vsactl(&[
        "stack", "new", "blog", "--image", "ghost:5", "--port", "2368",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let path = sb.repo.join("stacks/blog.yaml");
    assert_eq!(stdout(&o).trim(), path.display().to_string());
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("host: vps-01") && text.contains("image: ghost:5"),
        "{text}"
    );
    assert!(text.contains("container: blog-app, port: 2368"), "{text}");
    let o = sb.vsactl(&["validate"]);
    assert_eq!(code(&o), 0, "the scaffold validates: {}", stderr(&o));

    let o = sb.vsactl(&["stack", "new", "blog"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    let o = sb.vsactl(&["stack", "new", "Bad_Name"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(!sb.repo.join("stacks/Bad_Name.yaml").exists());
}

#[test]
fn the_bundled_reusable_stacks_validate() {
    let sb = Sandbox::new();
    let bundled = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../stacks");
    let mut n = 0;
    for entry in std::fs::read_dir(&bundled).unwrap() {
        let dir = entry.unwrap().path();
        let manifest = dir.join("stack.yaml");
        if !manifest.is_file() {
            continue;
        }
        assert!(
            dir.join("README.md").is_file(),
            "{} has a README",
            dir.display()
        );
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::create_dir_all(sb.repo.join("stacks")).unwrap();
        std::fs::copy(&manifest, sb.repo.join(format!("stacks/{name}.yaml"))).unwrap();
        n += 1;
    }
    assert!(n >= 3, "reverse-proxy, dashboard, observability");
    let o = sb.vsactl(&["validate"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
}
