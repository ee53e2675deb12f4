//! Property tests of the loader: whatever text it is handed (random strings,
//! random bytes, YAML-ish soup built from manifest fragments), it returns
//! problems instead of panicking, every problem points inside the input, and
//! a model only exists when no error was found. For sites that do validate,
//! nothing that could inject an nginx directive reaches the model.

use proptest::prelude::*;
use proptest::test_runner::Config;
use vsa_core::model::{Csp, Upstream};
use vsa_core::validate::Loaded;
use vsa_core::{SourceFile, load};

const FLEET: &str = "apiVersion: vsa/v1\nkind: Fleet\nhosts:\n  - id: vps-01\n  - id: vps-02\n";

/// `cases` by default; `PROPTEST_CASES` overrides it for a longer hunt.
fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        // Keep the source tree clean: no proptest-regressions files.
        failure_persistence: None,
        ..Config::default()
    }
}

fn files(fleet: &str, path: &str, text: &str) -> Vec<SourceFile> {
    vec![
        SourceFile {
            path: "fleet.yaml".into(),
            text: fleet.into(),
        },
        SourceFile {
            path: path.into(),
            text: text.into(),
        },
    ]
}

/// Line breaks as YAML counts them (a lone `\r` is one too), plus slack
/// for a problem at the end of the file.
fn max_line(text: &str) -> u32 {
    let breaks = text.matches('\n').count() + text.matches('\r').count();
    u32::try_from(breaks).unwrap_or(u32::MAX).saturating_add(2)
}

/// What must hold for any input.
fn assert_sane(inputs: &[SourceFile], loaded: &Loaded) {
    for p in &loaded.problems {
        assert!(p.line >= 1 && p.col >= 1, "position below 1:1: {p}");
        assert!(!p.message.is_empty(), "empty message: {p:?}");
        if let Some(f) = inputs.iter().find(|f| f.path == p.file) {
            assert!(
                p.line <= max_line(&f.text),
                "line past the end of {} ({} breaks): {p}",
                f.path,
                max_line(&f.text) - 2
            );
        }
    }
    let has_error = loaded.problems.iter().any(|p| p.is_error());
    assert_eq!(loaded.model.is_some(), !has_error, "{:#?}", loaded.problems);
}

/// Characters that could end a token, a quoted string or a directive in an
/// nginx config.
fn injects(s: &str) -> bool {
    s.chars()
        .any(|c| matches!(c, ';' | '{' | '}' | '"' | '$' | '\\' | '#' | '`') || c.is_control())
}

/// Strings a valid model hands to the vhost renderer.
fn assert_model_is_clean(loaded: &Loaded) {
    let Some(model) = &loaded.model else { return };
    for site in &model.sites {
        for name in site.names() {
            assert!(
                !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || b == b'.'
                        || b == b'-'),
                "server name {name:?} reached the model"
            );
        }
        match &site.upstream {
            Upstream::Container { name, .. } => {
                assert!(
                    !injects(name) && !name.contains(' ') && !name.contains('\''),
                    "{name:?}"
                );
            }
            Upstream::Url(u) => {
                assert!(
                    !injects(&u.url) && !u.url.contains(' ') && !u.url.contains('\''),
                    "{u:?}"
                );
            }
        }
        if let Some(auth) = &site.auth {
            assert!(
                !injects(&auth.realm) && !auth.realm.contains('\''),
                "{:?}",
                auth.realm
            );
            for u in &auth.users {
                assert!(
                    !injects(&u.name) && !u.name.contains([' ', ':', '\'']),
                    "{:?}",
                    u.name
                );
            }
        }
        if let Some(mb) = &site.max_body {
            assert!(mb.bytes().all(|b| b.is_ascii_alphanumeric()), "{mb:?}");
        }
        if let Csp::Custom(csp) = &site.csp {
            // `;` and `'` are CSP syntax, harmless inside nginx's double quotes.
            assert!(!injects(&csp.replace(';', "")), "{csp:?}");
        }
    }
}

fn check(path: &str, text: &str) -> Loaded {
    let inputs = files(FLEET, path, text);
    let loaded = load(&inputs);
    assert_sane(&inputs, &loaded);
    assert_model_is_clean(&loaded);
    loaded
}

/// Pieces of manifests, YAML syntax and hostile characters.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "apiVersion: vsa/v1\n",
            "apiVersion: vsa/v2\n",
            "kind: Site\n",
            "kind: Stack\n",
            "kind: Fleet\n",
            "kind: \"Site\"\n",
            "---\n",
            "--- ",
            "...\n",
            "domain: ",
            "domain: a.example.com\n",
            "host: vps-01\n",
            "host: ",
            "aliases: ",
            "aliases:\n  - ",
            "upstream:\n",
            "upstream: { url: \"http://127.0.0.1:3000\" }\n",
            "  url: ",
            "  container: ",
            "  port: ",
            "tls: ",
            "auth:\n  users:\n    - name: ",
            "      bcrypt: \"$2b$04$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW\"\n",
            "rate_limit: { rps: ",
            "max_body: ",
            "csp: ",
            "name: ",
            "services:\n",
            "  web:\n",
            "    image: ",
            "    ports: [",
            "    depends_on: [",
            "hosts:\n  - id: ",
            "bogus: 1\n",
        ]).prop_map(str::to_owned),
        4 => prop::sample::select(vec![
            "&a ", "*a", "&b [", "*b", "<<: *a\n", "{", "}", "[", "]", ", ", ": ", ":", "- ",
            "? ", "\"", "'", "\\", "|\n", ">-\n", "!!str ", "!!map ", "!tag ", "#", " #x",
            "%YAML 1.2\n", "%TAG ! tag:x,2000:\n", "\n", "\r\n", "\r", "  ", "    ", "\t",
            "\u{feff}", "\u{0}", "\u{85}", "\u{2028}", "~", "null", "true", "yes", "0x1F",
            "1e9", ".inf", "-", "@", "`", ";", "$", "a.com; return 200", "\"a\\nb\"",
        ]).prop_map(str::to_owned),
        3 => "[a-z0-9.:/_-]{1,16}",
        1 => "[ -~]{0,12}",
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => " {0,9}".prop_map(|s| format!("\n{s}")),
    ]
}

fn soup() -> impl Strategy<Value = String> {
    prop::collection::vec(fragment(), 0..80).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn arbitrary_strings_never_panic(text in any::<String>()) {
        check("sites/x.yaml", &text);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        let text = String::from_utf8_lossy(&bytes);
        check("sites/x.yaml", &text);
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn yaml_soup_never_panics(text in soup()) {
        let first = check("sites/x.yaml", &text);
        // The same input gives the same answer.
        let again = load(&files(FLEET, "sites/x.yaml", &text));
        prop_assert_eq!(&first.problems, &again.problems);
    }

    #[test]
    fn yaml_soup_as_the_fleet_never_panics(text in soup(), site in soup()) {
        let inputs = files(&text, "sites/x.yaml", &site);
        let loaded = load(&inputs);
        assert_sane(&inputs, &loaded);
        assert_model_is_clean(&loaded);
    }

    #[test]
    fn yaml_soup_after_a_valid_document_never_panics(text in soup()) {
        let valid = "apiVersion: vsa/v1\nkind: Site\ndomain: a.example.com\nhost: vps-01\nupstream: { url: \"http://127.0.0.1:3000\" }\n---\n";
        check("sites/x.yaml", &format!("{valid}{text}"));
    }
}

/// Valid manifests, to be mutated a little: most of the loader's paths
/// (unknown-field retries, validation, cross-document rules) are only reached
/// by input that is nearly right.
const BASES: &[&str] = &[
    "apiVersion: vsa/v1\nkind: Site\ndomain: a.example.com\nhost: vps-01\naliases: [www.a.example.com]\nupstream:\n  container: shop-web\n  port: 8080\ntls: acme\nauth:\n  realm: Staff\n  users:\n    - name: admin\n      bcrypt: \"$2b$04$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW\"\nrate_limit: { rps: 10, burst: 20 }\nmax_body: 50m\nwebsockets: true\ncsp: \"default-src 'self'\"\n",
    "apiVersion: vsa/v1\nkind: Site\ndomain: b.example.com\nhost: vps-02\nupstream: { url: \"http://127.0.0.1:3000\" }\n---\napiVersion: vsa/v1\nkind: Site\ndomain: c.example.com\nhost: vps-01\nupstream:\n  url: https://backend:8443/app\n",
    "apiVersion: vsa/v1\nkind: Stack\nname: shop\nhost: vps-01\nservices:\n  web:\n    image: ghcr.io/acme/shop:1.4.2\n    environment: { PORT: \"8080\" }\n    env_file: /srv/shop/.env\n    volumes: [\"/srv/shop/data:/data\"]\n    ports: [\"127.0.0.1:9000:9000\"]\n    command: [\"serve\"]\n    healthcheck: { test: [\"CMD\", \"true\"], interval: 30s }\n    restart: unless-stopped\n    depends_on: [db]\n  db:\n    image: postgres:16\n",
    "apiVersion: vsa/v1\nkind: Fleet\nacme:\n  email: ops@example.com\nhosts:\n  - id: vps-01\n    address: 203.0.113.10\n  - id: vps-02\ndefaults:\n  rate_limit: { rps: 20, burst: 40 }\n  max_body: 10m\n",
];

/// One edit of a manifest's lines.
#[derive(Clone, Debug)]
enum Edit {
    Delete(usize),
    Duplicate(usize),
    Insert(usize, String),
    /// Replaces what follows the first `: ` of a line.
    Value(usize, String),
    Indent(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (0..40usize).prop_map(Edit::Delete),
        (0..40usize).prop_map(Edit::Duplicate),
        (0..40usize, fragment()).prop_map(|(i, f)| Edit::Insert(i, f)),
        (0..40usize, fragment()).prop_map(|(i, f)| Edit::Value(i, f)),
        (0..40usize, 0..6usize).prop_map(|(i, n)| Edit::Indent(i, n)),
    ]
}

fn mutated() -> impl Strategy<Value = String> {
    (
        prop::sample::select(BASES),
        prop::collection::vec(edit(), 1..5),
    )
        .prop_map(|(base, edits)| {
            let mut lines: Vec<String> = base.lines().map(str::to_owned).collect();
            for e in edits {
                let n = lines.len().max(1);
                match e {
                    Edit::Delete(i) if !lines.is_empty() => {
                        lines.remove(i % n);
                    }
                    Edit::Duplicate(i) if !lines.is_empty() => {
                        let l = lines[i % n].clone();
                        lines.insert(i % n, l);
                    }
                    Edit::Insert(i, f) => lines.insert(i % (lines.len() + 1), f),
                    Edit::Value(i, f) if !lines.is_empty() => {
                        let l = &mut lines[i % n];
                        if let Some(at) = l.find(": ") {
                            l.truncate(at + 2);
                            l.push_str(&f);
                        }
                    }
                    Edit::Indent(i, k) if !lines.is_empty() => {
                        lines[i % n].insert_str(0, &" ".repeat(k));
                    }
                    _ => {}
                }
            }
            let mut text = lines.join("\n");
            text.push('\n');
            text
        })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn mutated_manifests_never_panic(a in mutated(), b in mutated()) {
        let inputs = vec![
            SourceFile { path: "fleet.yaml".into(), text: FLEET.into() },
            SourceFile { path: "sites/a.yaml".into(), text: a },
            SourceFile { path: "stacks/b.yaml".into(), text: b },
        ];
        let loaded = load(&inputs);
        assert_sane(&inputs, &loaded);
        assert_model_is_clean(&loaded);
    }
}

/// A string with the characters an attacker would try, JSON-quoted (a JSON
/// string is a YAML double-quoted scalar).
fn hostile() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        3 => "[a-z0-9.-]{1,8}",
        1 => prop::sample::select(vec![
            ";", "{", "}", "\"", "'", "$", "#", "\\", " ", "\t", "\n", "\r", "`", "*", "_", "A",
            ":", "/", "@", "?", "&", "%", "\u{0}", "\u{1b}", "ü", "http://", "127.0.0.1", ".com",
        ]).prop_map(str::to_owned),
    ];
    prop::collection::vec(piece, 1..6)
        .prop_map(|v| serde_json::to_string(&v.concat()).unwrap_or_default())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn nothing_that_could_inject_reaches_the_model(
        domain in hostile(),
        alias in hostile(),
        url in hostile(),
        container in hostile(),
        realm in hostile(),
        user in hostile(),
        max_body in hostile(),
        csp in hostile(),
        which in 0..2usize,
    ) {
        let upstream = if which == 0 {
            format!("upstream:\n  url: {url}\n")
        } else {
            format!("upstream:\n  container: {container}\n  port: 8080\n")
        };
        let text = format!(
            "apiVersion: vsa/v1\nkind: Site\ndomain: {domain}\nhost: vps-01\naliases: [{alias}]\n{upstream}\
             auth:\n  realm: {realm}\n  users:\n    - name: {user}\n      \
             bcrypt: \"$2b$04$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW\"\n\
             max_body: {max_body}\ncsp: {csp}\n"
        );
        check("sites/x.yaml", &text);
        // One field at a time, the rest valid, so that valid models happen often.
        let fields = [
            format!("domain: {domain}\nhost: vps-01\nupstream: {{ url: \"http://a.com\" }}\n"),
            format!("domain: b.example.com\nhost: vps-01\naliases: [{alias}]\nupstream: {{ url: \"http://a.com\" }}\n"),
            format!("domain: b.example.com\nhost: vps-01\nupstream:\n  url: {url}\n"),
            format!("domain: b.example.com\nhost: vps-01\nupstream:\n  container: {container}\n  port: 80\n"),
            format!("domain: b.example.com\nhost: vps-01\nupstream: {{ url: \"http://a.com\" }}\nauth:\n  realm: {realm}\n  users:\n    - name: {user}\n      bcrypt: \"$2b$04$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW\"\n"),
            format!("domain: b.example.com\nhost: vps-01\nupstream: {{ url: \"http://a.com\" }}\nmax_body: {max_body}\ncsp: {csp}\n"),
        ];
        for body in &fields {
            check("sites/x.yaml", &format!("apiVersion: vsa/v1\nkind: Site\n{body}"));
        }
    }
}
