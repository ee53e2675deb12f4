//! The validation rules of DESIGN §3, one table row per rule, all through
//! one `check(files, expected)` helper that compares every problem's
//! `file:line:col`, severity and message.
//!
//! Row format: `"file:line:col: substring of the message"` for an error,
//! `"file:line:col: warning: substring"` for a warning. Errors must match
//! exactly (no more, no fewer). Warnings are compared exactly when the row
//! lists one, or when the row expects a clean repository; otherwise they are
//! ignored, so that an error row does not depend on incidental warnings.
//! In a message, `…` stands for any text.

use vsa_core::SourceFile;
use vsa_core::load::parse_files;
use vsa_core::problem::{Problem, Severity};
use vsa_core::validate::Loaded;

/// A small valid fleet shared by every row.
const FLEET: (&str, &str) = (
    "fleet.yaml",
    "apiVersion: vsa/v1\nkind: Fleet\nhosts:\n  - id: vps-01\n  - id: vps-02\n",
);

/// A valid bcrypt hash (cost 4).
const HASH: &str = "$2b$04$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW";

/// The three required site fields, on lines 3 (domain, value at col 9),
/// 4 (host, col 7) and 5 (upstream, mapping at col 11, url at col 18).
const SITE: &str =
    "domain: a.example.com\nhost: vps-01\nupstream: { url: \"http://127.0.0.1:3000\" }\n";

/// A Site document; `body` starts on line 3.
fn site(body: &str) -> String {
    format!("apiVersion: vsa/v1\nkind: Site\n{body}")
}

/// A valid site plus `extra`, which starts on line 6.
fn site_plus(extra: &str) -> String {
    site(&format!("{SITE}{extra}"))
}

/// A Stack document: name on line 3 (col 7), host on line 4 (col 7),
/// `services:` on line 5, `services` from line 6.
fn stack(name: &str, host: &str, services: &str) -> String {
    format!("apiVersion: vsa/v1\nkind: Stack\nname: {name}\nhost: {host}\nservices:\n{services}")
}

fn sources(files: &[(&str, &str)]) -> Vec<SourceFile> {
    files
        .iter()
        .map(|(path, text)| SourceFile {
            path: (*path).to_owned(),
            text: (*text).to_owned(),
        })
        .collect()
}

fn load(files: &[(&str, &str)]) -> Loaded {
    vsa_core::load(&sources(files))
}

struct Expected<'a> {
    file: &'a str,
    line: u32,
    col: u32,
    severity: Severity,
    message: &'a str,
}

fn parse_expected(e: &str) -> Expected<'_> {
    let mut parts = e.splitn(4, ':');
    let (Some(file), Some(line), Some(col), Some(rest)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        panic!("bad expectation {e:?}: want `file:line:col: message`");
    };
    let rest = rest.strip_prefix(' ').unwrap_or(rest);
    let (severity, message) = match rest.strip_prefix("warning: ") {
        Some(m) => (Severity::Warning, m),
        None => (Severity::Error, rest),
    };
    Expected {
        file,
        line: line.parse().expect("line"),
        col: col.parse().expect("col"),
        severity,
        message,
    }
}

fn matches(p: &Problem, e: &Expected<'_>) -> bool {
    p.file == e.file
        && p.line == e.line
        && p.col == e.col
        && p.severity == e.severity
        && contains_in_order(&p.message, e.message)
}

/// `…` in an expected message stands for any text.
fn contains_in_order(message: &str, pattern: &str) -> bool {
    let mut rest = message;
    for part in pattern.split('…') {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// Loads `files` and asserts that exactly the `expected` problems are
/// reported (see the module doc for the row format). Also asserts that a
/// model exists exactly when no error is expected.
#[track_caller]
fn check(files: &[(&str, &str)], expected: &[&str]) -> Loaded {
    let loaded = load(files);
    let expected: Vec<Expected<'_>> = expected.iter().map(|e| parse_expected(e)).collect();
    let compare_warnings =
        expected.is_empty() || expected.iter().any(|e| e.severity == Severity::Warning);
    let actual: Vec<&Problem> = loaded
        .problems
        .iter()
        .filter(|p| compare_warnings || p.is_error())
        .collect();

    let mut used = vec![false; actual.len()];
    let mut missing = Vec::new();
    for e in &expected {
        match (0..actual.len()).find(|&i| !used[i] && matches(actual[i], e)) {
            Some(i) => used[i] = true,
            None => missing.push(format!(
                "{}:{}:{}: {}{}",
                e.file,
                e.line,
                e.col,
                if e.severity == Severity::Warning {
                    "warning: "
                } else {
                    ""
                },
                e.message
            )),
        }
    }
    let unexpected: Vec<String> = actual
        .iter()
        .zip(&used)
        .filter(|(_, u)| !**u)
        .map(|(p, _)| p.to_string())
        .collect();
    if !missing.is_empty() || !unexpected.is_empty() {
        let inputs: Vec<String> = files
            .iter()
            .map(|(p, t)| {
                let shown: String = t.chars().take(2000).collect();
                format!("--- {p}\n{shown}")
            })
            .collect();
        let all: Vec<String> = loaded.problems.iter().map(Problem::to_string).collect();
        panic!(
            "problems differ\n  missing:    {missing:#?}\n  unexpected: {unexpected:#?}\n  all:        {all:#?}\ninput:\n{}",
            inputs.join("\n")
        );
    }
    let want_model = !expected.iter().any(|e| e.severity == Severity::Error);
    assert_eq!(
        loaded.model.is_some(),
        want_model,
        "model presence; problems: {:#?}",
        loaded.problems
    );
    loaded
}

// ---------------------------------------------------------------- schema

#[test]
fn a_valid_repository_gives_a_model_and_no_problem() {
    let loaded = check(
        &[
            FLEET,
            ("sites/a.yaml", &site(SITE)),
            (
                "sites/shop.yaml",
                &site(
                    "domain: shop.example.com\nhost: vps-01\naliases: [www.shop.example.com]\n\
                     upstream:\n  container: shop-web\n  port: 8080\ntls: none\n\
                     rate_limit: { rps: 10, burst: 20 }\nmax_body: 50m\nwebsockets: true\n\
                     csp: \"default-src 'self'; img-src *\"\n",
                ),
            ),
            (
                "stacks/shop.yaml",
                &stack(
                    "shop",
                    "vps-01",
                    "  web:\n    image: ghcr.io/acme/shop:1.4.2\n    environment: { PORT: \"8080\" }\n\
                     \x20   env_file: /srv/acme/shop/env/.env\n    volumes: [\"/srv/acme/shop/data:/data\"]\n\
                     \x20   ports: [\"127.0.0.1:9000:9000\"]\n    command: [\"serve\"]\n\
                     \x20   healthcheck: { test: [\"CMD\", \"wget\", \"-qO-\", \"http://localhost:8080/healthz\"], interval: 30s }\n\
                     \x20   restart: unless-stopped\n",
                ),
            ),
        ],
        &[],
    );
    let model = loaded.model.expect("model");
    assert_eq!(model.sites.len(), 2);
    assert_eq!(model.stacks.len(), 1);
    assert_eq!(model.fleet.hosts.len(), 2);
}

#[test]
fn an_invalid_repository_gives_no_model() {
    let loaded = check(
        &[FLEET, ("sites/a.yaml", &site_plus("tls: bogus\n"))],
        &["sites/a.yaml:6:6: tls `bogus` is not one of: acme, none"],
    );
    assert!(loaded.model.is_none());
}

#[test]
fn unknown_fields() {
    let rows: &[(&str, &str, &str)] = &[
        (
            "sites/a.yaml",
            &site_plus("bogus: 1\n"),
            "sites/a.yaml:6:1: unknown field `bogus`, expected one of apiVersion",
        ),
        (
            "sites/a.yaml",
            &site(
                "domain: a.example.com\nhost: vps-01\nupstream:\n  url: http://127.0.0.1:3000\n  bogus: 1\n",
            ),
            "sites/a.yaml:7:3: unknown field `bogus`, expected one of container, port, url",
        ),
        (
            "sites/a.yaml",
            &site_plus(&format!(
                "auth:\n  users:\n    - name: admin\n      pass: hunter2\n      bcrypt: \"{HASH}\"\n"
            )),
            "sites/a.yaml:9:7: unknown field `pass`, expected one of name, bcrypt",
        ),
        (
            "sites/a.yaml",
            &site_plus("rate_limit:\n  rps: 10\n  bogus: 1\n"),
            "sites/a.yaml:8:3: unknown field `bogus`, expected one of rps, burst",
        ),
        (
            "stacks/s.yaml",
            &stack("shop", "vps-01", "  web:\n    image: nginx\n    build: .\n"),
            "stacks/s.yaml:8:5: unknown field `build`, expected one of image",
        ),
        (
            "stacks/s.yaml",
            &stack(
                "shop",
                "vps-01",
                "  web:\n    image: nginx\n    healthcheck: { test: [CMD, ls], bogus: 1 }\n",
            ),
            "stacks/s.yaml:8:37: unknown field `bogus`, expected one of test, interval",
        ),
    ];
    for (path, text, want) in rows {
        check(&[FLEET, (path, text)], &[want]);
    }
    check(
        &[(
            "fleet.yaml",
            "apiVersion: vsa/v1\nkind: Fleet\nhosts:\n  - id: vps-01\n    ip: 203.0.113.10\n",
        )],
        &["fleet.yaml:5:5: unknown field `ip`, expected one of id, address"],
    );
}

#[test]
fn every_unknown_field_of_a_document_is_reported_with_the_other_problems() {
    check(
        &[
            FLEET,
            (
                "sites/a.yaml",
                &site_plus("bogus: 1\nother:\n  deep: 1\ntls: nope\n"),
            ),
        ],
        &[
            "sites/a.yaml:6:1: unknown field `bogus`",
            "sites/a.yaml:7:1: unknown field `other`",
            "sites/a.yaml:9:6: tls `nope` is not one of: acme, none",
        ],
    );
}

#[test]
fn wrong_types() {
    let rows: &[(&str, &str)] = &[
        (
            &site_plus("websockets: maybe\n"),
            "sites/a.yaml:6:13: invalid boolean",
        ),
        (
            &site_plus("websockets: yes\n"),
            "sites/a.yaml:6:13: invalid boolean",
        ),
        (
            &site(
                "domain: a.example.com\nhost: vps-01\nupstream:\n  container: web\n  port: eighty\n",
            ),
            "sites/a.yaml:7:9: invalid i64",
        ),
        (
            &site_plus("aliases: b.example.com\n"),
            "sites/a.yaml:6:10: expected sequence",
        ),
        (
            &site("domain: [a.example.com]\nhost: vps-01\nupstream: { url: \"http://a.com\" }\n"),
            "sites/a.yaml:3:9: expected string scalar",
        ),
        (
            &site("domain: a.example.com\nhost: vps-01\nupstream: http://a.com\n"),
            "sites/a.yaml:5:11: expected mapping",
        ),
    ];
    for (text, want) in rows {
        check(&[FLEET, ("sites/a.yaml", text)], &[want]);
    }
}

#[test]
fn missing_required_fields() {
    // serde reports a missing field at the document's last top-level key.
    let rows: &[(&str, &str)] = &[
        (
            &site("host: vps-01\nupstream: { url: \"http://a.com\" }\n"),
            "sites/a.yaml:4:1: missing field `domain`",
        ),
        (
            &site("domain: a.example.com\nupstream: { url: \"http://a.com\" }\n"),
            "sites/a.yaml:4:1: missing field `host`",
        ),
        (
            &site("domain: a.example.com\nhost: vps-01\n"),
            "sites/a.yaml:4:1: missing field `upstream`",
        ),
    ];
    for (text, want) in rows {
        check(&[FLEET, ("sites/a.yaml", text)], &[want]);
    }
    check(
        &[
            FLEET,
            (
                "stacks/s.yaml",
                &stack("shop", "vps-01", "  web:\n    restart: always\n"),
            ),
        ],
        &["stacks/s.yaml:7:5: missing field `image`"],
    );
}

#[test]
fn document_headers() {
    let rows: &[(&str, &str)] = &[
        (
            "apiVersion: vsa/v2\nkind: Site\ndomain: a.example.com\n",
            "sites/a.yaml:1:13: unsupported apiVersion `vsa/v2`, expected `vsa/v1`",
        ),
        (
            "apiVersion: v1\nkind: Site\n",
            "sites/a.yaml:1:13: unsupported apiVersion `v1`",
        ),
        (
            "kind: Site\ndomain: a.example.com\n",
            "sites/a.yaml:1:7: missing field `apiVersion` (expected `vsa/v1`)",
        ),
        (
            "apiVersion: vsa/v1\nkind: Sight\ndomain: a.example.com\n",
            "sites/a.yaml:2:7: unknown kind `Sight`, expected one of Fleet, Site, Stack",
        ),
        (
            "apiVersion: vsa/v1\nkind: site\n",
            "sites/a.yaml:2:7: unknown kind `site`",
        ),
        (
            "apiVersion: vsa/v1\ndomain: a.example.com\n",
            "sites/a.yaml:1:13: missing field `kind` (one of Fleet, Site, Stack)",
        ),
        (
            "hello\n",
            "sites/a.yaml:1:1: expected mapping start (a manifest document must be a mapping of fields)",
        ),
        (
            "- apiVersion: vsa/v1\n- kind: Site\n",
            "sites/a.yaml:1:1: a manifest document must be a mapping",
        ),
        (
            "42\n",
            "sites/a.yaml:1:1: a manifest document must be a mapping",
        ),
    ];
    for (text, want) in rows {
        check(&[FLEET, ("sites/a.yaml", text)], &[want]);
    }
}

#[test]
fn duplicate_keys() {
    check(
        &[FLEET, ("sites/a.yaml", &site_plus("host: vps-02\n"))],
        &["sites/a.yaml:6:1: duplicate key `host`"],
    );
    check(
        &[
            FLEET,
            (
                "sites/a.yaml",
                "apiVersion: vsa/v1\nkind: Site\nkind: Site\n",
            ),
        ],
        &["sites/a.yaml:3:1: duplicate key `kind`"],
    );
    check(
        &[
            FLEET,
            (
                "sites/a.yaml",
                &site_plus("upstream: { url: \"http://b.com\" }\n"),
            ),
        ],
        &["sites/a.yaml:6:1: duplicate key `upstream`"],
    );
}

#[test]
fn every_document_of_a_file_is_loaded_and_located_in_the_file() {
    // Three documents: the 2nd has an unknown field, the 3rd a bad alias;
    // lines are counted from the top of the file, not of the document.
    let text = format!(
        "{}---\n{}---\n{}",
        site(SITE),
        site_plus("bogus: 1\n").replace("a.example.com", "b.example.com"),
        site_plus("aliases: [\"*.c.example.com\"]\n").replace("a.example.com", "c.example.com"),
    );
    check(
        &[FLEET, ("sites/multi.yaml", &text)],
        &[
            "sites/multi.yaml:12:1: unknown field `bogus`",
            "sites/multi.yaml:19:11: alias `*.c.example.com` is a wildcard",
        ],
    );
    let (docs, _) = parse_files(&sources(&[("sites/multi.yaml", &text)]));
    let domains: Vec<&str> = docs
        .sites
        .iter()
        .map(|s| s.spec.domain.value.as_str())
        .collect();
    // The 2nd is parsed again without its unknown field, so that its other
    // problems are found too; the 1st and 3rd load as they are.
    assert_eq!(domains, ["a.example.com", "b.example.com", "c.example.com"]);

    // The 2nd document is not even YAML; the 1st and 3rd still load.
    let text = format!(
        "{}---\napiVersion: vsa/v1\nkind: Site\ndomain: [\n---\n{}",
        site(SITE),
        site_plus("tls: x\n").replace("a.example.com", "c.example.com"),
    );
    check(
        &[FLEET, ("sites/multi.yaml", &text)],
        &[
            "sites/multi.yaml:9:9: expected string scalar",
            "sites/multi.yaml:16:6: tls `x` is not one of",
        ],
    );
    let (docs, _) = parse_files(&sources(&[("sites/multi.yaml", &text)]));
    let domains: Vec<&str> = docs
        .sites
        .iter()
        .map(|s| s.spec.domain.value.as_str())
        .collect();
    assert_eq!(domains, ["a.example.com", "c.example.com"]);

    // Nested positions in later documents are shifted too.
    let text = format!(
        "# leading comment\n{}---\n{}",
        site(SITE),
        site_plus(
            "auth:\n  realm: \"a;b\"\n  users:\n    - name: \"a b\"\n      bcrypt: nope\n\
             rate_limit: { rps: 0 }\n",
        )
        .replace(
            "upstream: { url: \"http://127.0.0.1:3000\" }",
            "upstream:\n  container: web\n  port: 0",
        )
        .replace("a.example.com", "b.example.com"),
    );
    check(
        &[FLEET, ("sites/multi.yaml", &text)],
        &[
            "sites/multi.yaml:14:9: upstream.port 0 is not a port",
            "sites/multi.yaml:16:10: auth.realm `a;b` contains `;`",
            "sites/multi.yaml:18:13: auth user name `a b` contains a space",
            "sites/multi.yaml:19:15: auth user `a b`: bcrypt value is not a bcrypt hash",
            "sites/multi.yaml:20:13: rate_limit.rps 0 is outside 1-100000",
        ],
    );

    // A document after `...`, with CRLF line ends, after a directive, in flow style.
    check(
        &[
            FLEET,
            (
                "sites/a.yaml",
                &format!(
                    "{}...\n{}",
                    site(SITE),
                    site_plus("tls: x\n").replace("a.", "b.")
                ),
            ),
        ],
        &["sites/a.yaml:12:6: tls `x`"],
    );
    check(
        &[
            FLEET,
            (
                "sites/a.yaml",
                &format!(
                    "{}---\n{}",
                    site(SITE),
                    site_plus("tls: x\n").replace("a.", "b.")
                )
                .replace('\n', "\r\n"),
            ),
        ],
        &["sites/a.yaml:12:6: tls `x`"],
    );
    check(
        &[
            FLEET,
            (
                "sites/a.yaml",
                &format!("%YAML 1.2\n---\n{}", site_plus("tls: x\n")),
            ),
        ],
        &["sites/a.yaml:8:6: tls `x`"],
    );
    check(
        &[
            FLEET,
            (
                "sites/a.yaml",
                &format!(
                    "{}--- {{apiVersion: vsa/v1, kind: Site, domain: B.com, host: vps-01, upstream: {{url: 'http://a.com'}}}}\n",
                    site(SITE)
                ),
            ),
        ],
        &["sites/a.yaml:6:46: domain `B.com` must be lower case"],
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    check(
        &[
            FLEET,
            (
                "sites/a.yaml",
                &site_plus("aliases: [\"üüü.com\", \"b;c\"]\n"),
            ),
        ],
        &[
            "sites/a.yaml:6:11: alias `üüü.com` label `üüü` may only hold a-z",
            "sites/a.yaml:6:22: alias `b;c` contains `;`",
        ],
    );
}

// ---------------------------------------------------------------- DNS names

#[test]
fn dns_names_of_domains_and_aliases() {
    let long = format!("{}.com", "a".repeat(64));
    let rows: &[(&str, &str)] = &[
        ("A.example.com", "must be lower case (`a.example.com`)"),
        ("shop.Example.com", "must be lower case"),
        ("\"*.example.com\"", "is a wildcard"),
        ("localhost", "must have at least two labels"),
        ("a..example.com", "has an empty label"),
        ("\".example.com\"", "has an empty label"),
        ("a.example.com.", "has an empty label"),
        ("\"\"", "is empty"),
        (&long, "has a label longer than 63 characters"),
        (
            "-a.example.com",
            "label `-a` must not start or end with `-`",
        ),
        (
            "a-.example.com",
            "label `a-` must not start or end with `-`",
        ),
        ("a.example.123", "ends in a numeric label"),
        ("203.0.113.10", "ends in a numeric label"),
        (
            "a_b.example.com",
            "label `a_b` may only hold a-z, 0-9 and `-`",
        ),
        (
            "bücher.example.com",
            "label `bücher` may only hold a-z…(use punycode",
        ),
        ("a.exam%ple.com", "label `exam%ple` may only hold a-z"),
    ];
    for (name, why) in rows {
        check(
            &[
                FLEET,
                (
                    "sites/a.yaml",
                    &site(&format!(
                        "domain: {name}\nhost: vps-01\nupstream: {{ url: \"http://a.com\" }}\n"
                    )),
                ),
            ],
            &[&format!(
                "sites/a.yaml:3:9: domain `{}` {why}",
                unquote(name)
            )],
        );
        check(
            &[
                FLEET,
                (
                    "sites/a.yaml",
                    &site_plus(&format!("aliases: [ok.example.com, {name}]\n")),
                ),
            ],
            &[&format!(
                "sites/a.yaml:6:27: alias `{}` {why}",
                unquote(name)
            )],
        );
    }
    // Boundaries that are fine: 63-character labels, a leading digit, punycode.
    for name in [
        format!("{}.com", "a".repeat(63)),
        "0abc.example.com".to_owned(),
        "xn--bcher-kva.example.com".to_owned(),
        "a-b.c-d.example".to_owned(),
    ] {
        check(
            &[
                FLEET,
                (
                    "sites/a.yaml",
                    &site(&format!(
                        "domain: {name}\nhost: vps-01\nupstream: {{ url: \"http://a.com\" }}\n"
                    )),
                ),
            ],
            &[],
        );
    }
}

/// The value a YAML scalar written as `s` holds, for the simple quoting used here.
fn unquote(s: &str) -> &str {
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
}

#[test]
fn a_domain_must_not_sort_before_the_http_context_file() {
    for name in ["0.example.com", "00-a.com"] {
        check(
            &[
                FLEET,
                (
                    "sites/a.yaml",
                    &site(&format!(
                        "domain: {name}\nhost: vps-01\nupstream: {{ url: \"http://a.com\" }}\n"
                    )),
                ),
            ],
            &[&format!(
                "sites/a.yaml:3:9: domain `{name}` would sort before vsa's 00-vsa-http.conf"
            )],
        );
    }
}

#[test]
fn a_site_listing_its_own_domain_as_alias_is_warned() {
    check(
        &[
            FLEET,
            ("sites/a.yaml", &site_plus("aliases: [a.example.com]\n")),
        ],
        &["sites/a.yaml:3:9: warning: the domain is also listed among its own aliases"],
    );
}

// ---------------------------------------------------------------- injection

/// Directive-injection attempts, each refused at the line and column of the
/// value. `$VALUE` in the template is replaced by each YAML scalar.
#[test]
fn injection_attempts_are_refused_in_every_field_that_reaches_nginx() {
    struct Field<'a> {
        template: String,
        at: &'a str,
        rows: &'a [(&'a str, &'a str)],
    }
    let fields = [
        Field {
            template: site("domain: $VALUE\nhost: vps-01\nupstream: { url: \"http://a.com\" }\n"),
            at: "3:9: domain",
            rows: &[
                ("\"a.com; return 200\"", "contains `;`"),
                ("a.com{", "contains `{`"),
                ("a.com}", "contains `}`"),
                ("'x\"y.com'", "contains `\"`"),
                ("\"'a.com'\"", "contains `'`"),
                ("$host.com", "contains `$`"),
                ("\"a.com\\nlisten 81\"", "contains a newline"),
                ("\"a.com\\r\\nlisten 81\"", "contains a carriage return"),
                ("\"a.com #x\"", "contains a space"),
                ("\"evil.com;include /etc/passwd\"", "contains `;`"),
                ("\"a.com\\tb\"", "contains a tab"),
                ("\"a\\\\b.com\"", "contains `\\`"),
                ("\"a.com\\0\"", "contains U+0000"),
            ],
        },
        Field {
            template: site_plus("aliases: [$VALUE]\n"),
            at: "6:11: alias",
            rows: &[
                ("\"a.com; return 200\"", "contains `;`"),
                ("\"a.com{\"", "contains `{`"),
                ("'x\"y.com'", "contains `\"`"),
                ("'$host.com'", "contains `$`"),
                ("\"b.com\\nlisten 81\"", "contains a newline"),
                ("\"a.com #x\"", "contains a space"),
                ("\"evil.com;include /etc/passwd\"", "contains `;`"),
                ("\"a.com\\tb\"", "contains a tab"),
            ],
        },
        Field {
            template: site(
                "domain: a.example.com\nhost: vps-01\nupstream:\n  container: $VALUE\n  port: 80\n",
            ),
            at: "6:14: upstream.container",
            rows: &[
                ("\"web; return 200\"", "contains `;`"),
                ("\"web{\"", "contains `{`"),
                ("'x\"y'", "contains `\"`"),
                ("$host", "contains `$`"),
                ("\"web\\nlisten 81\"", "contains a newline"),
                ("\"web #x\"", "contains a space"),
                ("\"web\\tb\"", "contains a tab"),
                ("\"'web'\"", "contains `'`"),
                ("-web", "must start with a letter or digit"),
            ],
        },
        Field {
            template: site("domain: a.example.com\nhost: vps-01\nupstream:\n  url: $VALUE\n"),
            at: "6:8: upstream.url",
            rows: &[
                ("\"http://a.com; return 200\"", "contains `;`"),
                ("\"http://a.com{\"", "contains `{`"),
                ("'http://a.com/x\"y'", "contains `\"`"),
                ("http://$host", "contains `$`"),
                ("\"http://a.com\\nlisten 81\"", "contains a newline"),
                ("\"http://a.com #x\"", "contains a space"),
                ("\"http://evil.com;include /etc/passwd\"", "contains `;`"),
                ("\"http://a.com\\tb\"", "contains a tab"),
                ("\"http://a.com/'x'\"", "contains `'`"),
            ],
        },
        Field {
            template: site_plus(&format!(
                "auth:\n  realm: $VALUE\n  users:\n    - name: admin\n      bcrypt: \"{HASH}\"\n"
            )),
            at: "7:10: auth.realm",
            rows: &[
                ("\"a; return 200\"", "contains `;`"),
                ("\"a{\"", "contains `{`"),
                ("'Re\"alm'", "contains `\"`"),
                ("$realm", "contains `$`"),
                ("\"a\\nlisten 81\"", "contains a newline"),
                ("\"My Realm #x\"", "contains `#`"),
                ("\"a\\tb\"", "contains a tab"),
                ("\"a\\\\b\"", "contains `\\`"),
                ("\"it's\"", "contains `'`"),
            ],
        },
        Field {
            template: site_plus(&format!(
                "auth:\n  users:\n    - name: $VALUE\n      bcrypt: \"{HASH}\"\n"
            )),
            at: "8:13: auth user name",
            rows: &[
                ("\"a;b\"", "contains `;`"),
                ("\"a{\"", "contains `{`"),
                ("'a\"b'", "contains `\"`"),
                ("$user", "contains `$`"),
                ("\"a\\nb\"", "contains a newline"),
                ("\"a b\"", "contains a space"),
                ("\"a\\tb\"", "contains a tab"),
                ("\"a:b\"", "contains `:`"),
                ("\"\"", "must be 1 to 64 characters"),
            ],
        },
        Field {
            template: site_plus("max_body: $VALUE\n"),
            at: "6:11: max_body",
            rows: &[
                ("\"50m; return 200\"", "is not a size"),
                ("\"50m{\"", "is not a size"),
                ("'5\"0m'", "is not a size"),
                ("$size", "is not a size"),
                ("\"50m\\nlisten 81\"", "is not a size"),
                ("\"50m #x\"", "is not a size"),
                ("\"50m\\t\"", "is not a size"),
                ("50mb", "is not a size"),
                ("m", "is not a size"),
            ],
        },
        Field {
            template: site_plus("csp: $VALUE\n"),
            at: "6:6: csp",
            rows: &[
                ("'default-src \"self\"'", "contains `\"`"),
                ("\"default-src $host\"", "contains `$`"),
                ("\"default-src {\"", "contains `{`"),
                ("\"default-src }\"", "contains `}`"),
                ("\"default-src #x\"", "contains `#`"),
                ("\"default-src \\\\\"", "contains `\\`"),
                (
                    "\"default-src 'self'\\nadd_header X 1\"",
                    "contains a newline",
                ),
                ("\"default-src\\t'self'\"", "contains a tab"),
                ("\"\"", "must be 1 to 2048 characters"),
            ],
        },
    ];
    for field in &fields {
        for (value, why) in field.rows {
            let text = field.template.replace("$VALUE", value);
            check(
                &[FLEET, ("sites/a.yaml", &text)],
                &[&format!("sites/a.yaml:{} `…` {why}", field.at)],
            );
        }
    }
}

#[test]
fn csp_allows_semicolons_and_single_quotes() {
    for csp in [
        "\"default-src 'self'; img-src * data:; frame-ancestors 'none'\"",
        "off",
    ] {
        check(
            &[
                FLEET,
                ("sites/a.yaml", &site_plus(&format!("csp: {csp}\n"))),
            ],
            &[],
        );
    }
}

// ---------------------------------------------------------------- upstream

#[test]
fn upstream_rules() {
    let rows: &[(&str, &str)] = &[
        (
            "upstream:\n  container: web\n",
            "sites/a.yaml:6:3: upstream.container needs upstream.port",
        ),
        (
            "upstream: { container: web }\n",
            "sites/a.yaml:5:11: upstream.container needs upstream.port",
        ),
        (
            "upstream:\n  port: 80\n",
            "sites/a.yaml:6:3: upstream.port needs upstream.container (or use upstream.url)",
        ),
        (
            "upstream:\n  container: web\n  port: 80\n  url: http://a.com\n",
            "sites/a.yaml:6:3: upstream takes either container + port, or url, not both",
        ),
        (
            "upstream:\n  port: 80\n  url: http://a.com\n",
            "sites/a.yaml:6:3: not both",
        ),
        (
            "upstream: {}\n",
            "sites/a.yaml:5:11: upstream needs either container + port, or url",
        ),
        (
            "upstream:\n  container: web\n  port: 0\n",
            "sites/a.yaml:7:9: upstream.port 0 is not a port (1-65535)",
        ),
        (
            "upstream:\n  container: web\n  port: 70000\n",
            "sites/a.yaml:7:9: upstream.port 70000 is not a port (1-65535)",
        ),
        (
            "upstream:\n  container: web\n  port: -1\n",
            "sites/a.yaml:7:9: upstream.port -1 is not a port (1-65535)",
        ),
        (
            "upstream:\n  url: ftp://a.com\n",
            "sites/a.yaml:6:8: upstream.url `ftp://a.com` scheme `ftp` is not supported",
        ),
        (
            "upstream:\n  url: a.com:3000\n",
            "sites/a.yaml:6:8: must start with http:// or https://",
        ),
        (
            "upstream:\n  url: http://user@a.com\n",
            "sites/a.yaml:6:8: must not carry credentials (`user@`)",
        ),
        (
            "upstream:\n  url: http://user:pw@a.com\n",
            "sites/a.yaml:6:8: must not carry credentials",
        ),
        (
            "upstream:\n  url: http://a.com/?x=1\n",
            "sites/a.yaml:6:8: must not carry a query string",
        ),
        (
            "upstream:\n  url: http://a.com/x?y\n",
            "sites/a.yaml:6:8: must not carry a query string",
        ),
        (
            "upstream:\n  url: http://\n",
            "sites/a.yaml:6:8: has no host",
        ),
        (
            "upstream:\n  url: http:///x\n",
            "sites/a.yaml:6:8: has no host",
        ),
        (
            "upstream:\n  url: http://a.com:99999\n",
            "sites/a.yaml:6:8: 99999 is not a port",
        ),
        (
            "upstream:\n  url: http://a.com:0\n",
            "sites/a.yaml:6:8: 0 is not a port",
        ),
        (
            "upstream:\n  url: http://a.com:x\n",
            "sites/a.yaml:6:8: port `x` is not a number",
        ),
        (
            "upstream:\n  url: http://A.com\n",
            "sites/a.yaml:6:8: host `A.com` is not a lower-case host name",
        ),
    ];
    for (upstream, want) in rows {
        check(
            &[
                FLEET,
                (
                    "sites/a.yaml",
                    &site(&format!("domain: a.example.com\nhost: vps-01\n{upstream}")),
                ),
            ],
            &[want],
        );
    }
    for url in [
        "http://127.0.0.1:3000",
        "https://backend.internal:8443/app",
        "http://[::1]:8080",
        "http://n8n:5678",
    ] {
        check(
            &[
                FLEET,
                (
                    "sites/a.yaml",
                    &site(&format!(
                        "domain: a.example.com\nhost: vps-01\nupstream:\n  url: {url}\n"
                    )),
                ),
            ],
            &[],
        );
    }
}

// ---------------------------------------------------------------- claims

#[test]
fn a_name_is_claimed_by_one_site_only() {
    let b = |body: &str| {
        site(&format!(
            "host: vps-02\nupstream: {{ url: \"http://b.com\" }}\n{body}"
        ))
    };
    // Two sites with the same domain (on different hosts: claims are fleet-wide).
    check(
        &[
            FLEET,
            ("sites/a.yaml", &site(SITE)),
            ("sites/b.yaml", &b("domain: a.example.com\n")),
        ],
        &["sites/b.yaml:5:9: `a.example.com` is already claimed by the site at sites/a.yaml:3:9"],
    );
    // A domain equal to another site's alias.
    check(
        &[
            FLEET,
            ("sites/a.yaml", &site_plus("aliases: [www.a.example.com]\n")),
            ("sites/b.yaml", &b("domain: www.a.example.com\n")),
        ],
        &[
            "sites/b.yaml:5:9: `www.a.example.com` is already claimed by the site at sites/a.yaml:6:11",
        ],
    );
    // An alias equal to another site's domain, and an alias claimed twice.
    check(
        &[
            FLEET,
            ("sites/a.yaml", &site_plus("aliases: [www.a.example.com]\n")),
            (
                "sites/b.yaml",
                &b(
                    "domain: b.example.com\naliases:\n  - a.example.com\n  - x.example.com\n  - www.a.example.com\n",
                ),
            ),
        ],
        &[
            "sites/b.yaml:7:5: `a.example.com` is already claimed by the site at sites/a.yaml:3:9",
            "sites/b.yaml:9:5: `www.a.example.com` is already claimed by the site at sites/a.yaml:6:11",
        ],
    );
    // The second claim may be in the same file.
    check(
        &[
            FLEET,
            (
                "sites/a.yaml",
                &format!("{}---\n{}", site(SITE), site(SITE)),
            ),
        ],
        &["sites/a.yaml:9:9: `a.example.com` is already claimed by the site at sites/a.yaml:3:9"],
    );
}

// ---------------------------------------------------------------- fleet

#[test]
fn hosts_and_the_fleet() {
    check(
        &[
            FLEET,
            ("sites/a.yaml", &site(&SITE.replace("vps-01", "vps-09"))),
        ],
        &["sites/a.yaml:4:7: host `vps-09` is not in the fleet (fleet.yaml lists: vps-01, vps-02)"],
    );
    check(
        &[
            FLEET,
            (
                "stacks/s.yaml",
                &stack("shop", "vps-09", "  web:\n    image: nginx\n"),
            ),
        ],
        &["stacks/s.yaml:4:7: host `vps-09` is not in the fleet"],
    );
    check(
        &[
            FLEET,
            ("sites/a.yaml", &site(&SITE.replace("vps-01", "\"vps 01\""))),
        ],
        &["sites/a.yaml:4:7: host `vps 01` contains a space"],
    );
    // No fleet.yaml at all, or one without a Fleet document.
    check(
        &[("sites/a.yaml", &site(SITE))],
        &[
            "fleet.yaml:1:1: no Fleet document found; the repository needs a fleet.yaml listing its hosts",
        ],
    );
    check(
        &[
            ("fleet.yaml", "# nothing yet\n"),
            ("sites/a.yaml", &site(SITE)),
        ],
        &["fleet.yaml:1:1: no Fleet document found"],
    );
    // Two Fleet documents, in two files or in one.
    check(
        &[FLEET, ("more/fleet.yaml", FLEET.1)],
        &[
            "more/fleet.yaml:2:1: a second Fleet document; the fleet is already defined at fleet.yaml:2:1",
        ],
    );
    check(
        &[("fleet.yaml", &format!("{}---\n{}", FLEET.1, FLEET.1))],
        &[
            "fleet.yaml:8:1: a second Fleet document; the fleet is already defined at fleet.yaml:2:1",
        ],
    );
    let fleet = |hosts: &str| format!("apiVersion: vsa/v1\nkind: Fleet\n{hosts}");
    check(
        &[(
            "fleet.yaml",
            &fleet("hosts:\n  - id: vps-01\n  - id: vps-02\n  - id: vps-01\n"),
        )],
        &["fleet.yaml:6:9: host `vps-01` is listed twice (first at line 4)"],
    );
    check(
        &[("fleet.yaml", &fleet("hosts: []\n"))],
        &["fleet.yaml:2:1: the fleet lists no hosts"],
    );
    check(
        &[("fleet.yaml", &fleet("hosts: vps-01\n"))],
        &[
            "fleet.yaml:1:1: no Fleet document found",
            "fleet.yaml:3:8: expected sequence",
        ],
    );
    check(
        &[("fleet.yaml", "apiVersion: vsa/v1\nkind: Fleet\n")],
        &[
            "fleet.yaml:1:1: no Fleet document found",
            "fleet.yaml:2:1: missing field `hosts`",
        ],
    );
    check(
        &[(
            "fleet.yaml",
            &fleet(
                "acme:\n  email: nope\nhosts:\n  - id: vps-01\n    address: \"a b\"\n  - id: VPS-02\n",
            ),
        )],
        &[
            "fleet.yaml:4:10: acme.email `nope` is not an email address",
            "fleet.yaml:7:14: address `a b` is neither an IP address nor a DNS name",
            "fleet.yaml:8:9: host id `VPS-02` must start with a lower-case letter or digit",
        ],
    );
    check(
        &[(
            "fleet.yaml",
            &fleet(
                "hosts:\n  - id: vps-01\ndefaults:\n  rate_limit: { rps: 0 }\n  max_body: huge\n",
            ),
        )],
        &[
            "fleet.yaml:6:15: rate_limit.rps 0 is outside 1-100000",
            "fleet.yaml:7:13: defaults.max_body `huge`",
        ],
    );
}

// ---------------------------------------------------------------- auth

#[test]
fn bcrypt_hashes_are_checked_and_never_echoed() {
    let rows: &[(&str, &str)] = &[
        ("hunter2", "is not a bcrypt hash"),
        ("correct horse battery staple", "is not a bcrypt hash"),
        ("$1$abcdefgh$abcdefghijklmnopqrstuv", "is not a bcrypt hash"),
        (
            "$2x$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
            "is not a bcrypt hash",
        ),
        (
            "$2b$03$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
            "has bcrypt cost 3, outside 4-31",
        ),
        (
            "$2b$32$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
            "has bcrypt cost 32, outside 4-31",
        ),
        (
            "$2b$1x$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
            "is not a bcrypt hash",
        ),
        (
            "$2b$+4$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
            "is not a bcrypt hash",
        ),
        (
            "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMU",
            "is not a bcrypt hash",
        ),
        (
            "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUWX",
            "is not a bcrypt hash",
        ),
        (
            "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWM;W",
            "is not a bcrypt hash",
        ),
    ];
    for (value, why) in rows {
        let loaded = check(
            &[
                FLEET,
                (
                    "sites/a.yaml",
                    &site_plus(&format!(
                        "auth:\n  users:\n    - name: admin\n      bcrypt: \"{value}\"\n"
                    )),
                ),
            ],
            &[&format!(
                "sites/a.yaml:9:15: auth user `admin`: bcrypt value {why}"
            )],
        );
        for p in &loaded.problems {
            assert!(
                !p.message.contains(value) && !p.to_string().contains(value),
                "the secret is echoed: {p}"
            );
        }
    }
    for ok in [
        HASH,
        "$2a$10$abcdefghijklmnopqrstuuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "$2y$31$./abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXY",
    ] {
        check(
            &[
                FLEET,
                (
                    "sites/a.yaml",
                    &site_plus(&format!(
                        "auth:\n  users:\n    - name: admin\n      bcrypt: \"{ok}\"\n"
                    )),
                ),
            ],
            &[],
        );
    }
}

#[test]
fn bcrypt_cost_is_exactly_two_digits() {
    let value = "$2b$012$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW";
    check(
        &[
            FLEET,
            (
                "sites/a.yaml",
                &site_plus(&format!(
                    "auth:\n  users:\n    - name: admin\n      bcrypt: \"{value}\"\n"
                )),
            ),
        ],
        &["sites/a.yaml:9:15: auth user `admin`: bcrypt value is not a bcrypt hash"],
    );
}

#[test]
fn auth_rules() {
    check(
        &[FLEET, ("sites/a.yaml", &site_plus("auth:\n  users: []\n"))],
        &["sites/a.yaml:7:3: auth has no users; remove `auth` or add a user"],
    );
    check(
        &[
            FLEET,
            (
                "sites/a.yaml",
                &site_plus("auth: { realm: Private, users: [] }\n"),
            ),
        ],
        &["sites/a.yaml:6:7: auth has no users"],
    );
    check(
        &[
            FLEET,
            ("sites/a.yaml", &site_plus("auth:\n  realm: Private\n")),
        ],
        &["sites/a.yaml:7:3: missing field `users`"],
    );
    check(
        &[
            FLEET,
            (
                "sites/a.yaml",
                &site_plus(&format!(
                    "auth:\n  users:\n    - name: admin\n      bcrypt: \"{HASH}\"\n    - name: bob\n      bcrypt: \"{HASH}\"\n    - name: admin\n      bcrypt: \"{HASH}\"\n"
                )),
            ),
        ],
        &["sites/a.yaml:12:13: auth user `admin` is listed twice (first at line 8)"],
    );
    check(
        &[
            FLEET,
            (
                "sites/a.yaml",
                &site_plus(&format!(
                    "auth:\n  realm: \"Staff only (v2): a/b, c_d-e.f\"\n  users:\n    - name: ops@example.com\n      bcrypt: \"{HASH}\"\n"
                )),
            ),
        ],
        &[],
    );
}

// ---------------------------------------------------------------- rate limit, tls

#[test]
fn rate_limit_and_tls() {
    let rows: &[(&str, &str)] = &[
        (
            "rate_limit: { rps: 0 }\n",
            "sites/a.yaml:6:13: rate_limit.rps 0 is outside 1-100000",
        ),
        (
            "rate_limit: { rps: -5, burst: 10 }\n",
            "sites/a.yaml:6:13: rate_limit.rps -5 is outside 1-100000",
        ),
        (
            "rate_limit: { rps: 100001, burst: 10 }\n",
            "sites/a.yaml:6:13: rate_limit.rps 100001 is outside 1-100000",
        ),
        (
            "rate_limit:\n  rps: 10\n  burst: 2000000\n",
            "sites/a.yaml:7:3: rate_limit.burst 2000000 is outside 0-1000000",
        ),
        (
            "rate_limit:\n  rps: 10\n  burst: -1\n",
            "sites/a.yaml:7:3: rate_limit.burst -1 is outside 0-1000000",
        ),
        (
            "rate_limit: { burst: 10 }\n",
            "sites/a.yaml:6:15: missing field `rps`",
        ),
        (
            "tls: bogus\n",
            "sites/a.yaml:6:6: tls `bogus` is not one of: acme, none",
        ),
        ("tls: ACME\n", "sites/a.yaml:6:6: tls `ACME` is not one of"),
        ("tls: \"\"\n", "sites/a.yaml:6:6: tls `` is not one of"),
        (
            "max_body: 0\n",
            "sites/a.yaml:6:11: max_body `0` is no limit at all (nginx reads 0 as unlimited)",
        ),
        (
            "max_body: 0m\n",
            "sites/a.yaml:6:11: max_body `0m` is no limit at all",
        ),
        (
            "max_body: 999999999g\n",
            "sites/a.yaml:6:11: max_body `999999999g` is over 10g",
        ),
    ];
    for (extra, want) in rows {
        check(&[FLEET, ("sites/a.yaml", &site_plus(extra))], &[want]);
    }
    for extra in [
        "rate_limit: { rps: 1 }\n",
        "rate_limit: { rps: 100000 }\n",
        "rate_limit: { rps: 10, burst: 0 }\n",
        "tls: acme\n",
        "tls: none\n",
        "max_body: 1\n",
        "max_body: 10g\n",
    ] {
        check(&[FLEET, ("sites/a.yaml", &site_plus(extra))], &[]);
    }
    // At most 100 names (domain and aliases) on a `tls: acme` site, the
    // CA's limit; a `tls: none` site may have more.
    let aliases = |n: usize| -> String {
        let list: Vec<String> = (0..n).map(|i| format!("n{i}.example.com")).collect();
        format!("aliases: [{}]\n", list.join(", "))
    };
    check(&[FLEET, ("sites/a.yaml", &site_plus(&aliases(99)))], &[]);
    check(
        &[FLEET, ("sites/a.yaml", &site_plus(&aliases(100)))],
        &[
            "sites/a.yaml:6:1684: a `tls: acme` site may have at most 100 names (domain and aliases), the CA's limit; this one has 101",
        ],
    );
    check(
        &[
            FLEET,
            (
                "sites/a.yaml",
                &site_plus(&format!("tls: none\n{}", aliases(150))),
            ),
        ],
        &[],
    );
}

// ---------------------------------------------------------------- stacks

#[test]
fn image_references() {
    let rows: &[(&str, &str)] = &[
        ("Nginx", "name component `Nginx` must be lower-case"),
        (
            "ghcr.io/Acme/shop:1",
            "name component `Acme` must be lower-case",
        ),
        ("\"nginx:\"", "tag `` is not valid"),
        ("a:-x", "tag `-x` is not valid"),
        ("\"nginx:bad tag\"", "contains a space"),
        ("\"nginx latest\"", "contains a space"),
        ("\" nginx\"", "contains a space"),
        ("\"nginx\\n\"", "contains a newline"),
        ("\"nginx;rm -rf /\"", "contains `;`"),
        ("\"\"", "is empty"),
        ("a//b", "name component `` must be lower-case"),
        ("_a", "name component `_a`"),
        (
            "x@sha256:12",
            "digest `sha256:12` is not `sha256:` and 64 lower-case hex digits",
        ),
        (
            "x@sha256:ABCDEF0000000000000000000000000000000000000000000000000000000000",
            "digest `sha256:ABCDEF…` is not `sha256:` and 64 lower-case hex digits",
        ),
        (
            "x@md5:0000000000000000000000000000000000000000000000000000000000000000",
            "digest `md5:",
        ),
        (
            "\"localhost:99999/a\"",
            "registry `localhost:99999` is not a host[:port]",
        ),
    ];
    for (image, why) in rows {
        check(
            &[
                FLEET,
                (
                    "stacks/s.yaml",
                    &stack("shop", "vps-01", &format!("  web:\n    image: {image}\n")),
                ),
            ],
            &[&format!(
                "stacks/s.yaml:7:12: image `{}` {why}",
                unquote(image)
            )],
        );
    }
    for image in [
        "nginx",
        "nginx:1.27",
        "ghcr.io/acme/shop:1.4.2",
        "localhost:5000/a/b",
        "registry.example.com:443/team/app_x__y-z:v1.0-rc1",
        "busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000",
    ] {
        check(
            &[
                FLEET,
                (
                    "stacks/s.yaml",
                    &stack(
                        "shop",
                        "vps-01",
                        &format!("  web:\n    image: \"{image}\"\n"),
                    ),
                ),
            ],
            &[],
        );
    }
}

#[test]
fn container_names_and_stack_names_are_unique_per_host() {
    // `a-b` + `c` and `a` + `b-c` both make the container `a-b-c`.
    check(
        &[
            FLEET,
            (
                "stacks/a-b.yaml",
                &stack("a-b", "vps-01", "  c:\n    image: nginx\n"),
            ),
            (
                "stacks/a.yaml",
                &stack("a", "vps-01", "  b-c:\n    image: nginx\n"),
            ),
        ],
        &[
            "stacks/a.yaml:7:5: container name `a-b-c` is already used on host `vps-01` by stacks/a-b.yaml:7:5",
        ],
    );
    check(
        &[
            FLEET,
            (
                "stacks/a-b.yaml",
                &stack("a-b", "vps-01", "  c:\n    image: nginx\n"),
            ),
            (
                "stacks/a.yaml",
                &stack("a", "vps-02", "  b-c:\n    image: nginx\n"),
            ),
        ],
        &[],
    );
    check(
        &[
            FLEET,
            (
                "stacks/a.yaml",
                &stack("shop", "vps-01", "  web:\n    image: nginx\n"),
            ),
            (
                "stacks/b.yaml",
                &stack("shop", "vps-01", "  db:\n    image: nginx\n"),
            ),
        ],
        &[
            "stacks/b.yaml:3:7: stack `shop` is already defined for host `vps-01` at stacks/a.yaml:3:7",
        ],
    );
    check(
        &[
            FLEET,
            (
                "stacks/a.yaml",
                &stack("shop", "vps-01", "  web:\n    image: nginx\n"),
            ),
            (
                "stacks/b.yaml",
                &stack("shop", "vps-02", "  web:\n    image: nginx\n"),
            ),
        ],
        &[],
    );
}

#[test]
fn host_ports_are_unique_per_host() {
    let a = |ports: &str| {
        stack(
            "a",
            "vps-01",
            &format!("  web:\n    image: nginx\n    ports: {ports}\n"),
        )
    };
    check(
        &[
            FLEET,
            ("stacks/a.yaml", &a("[\"8080:80\"]")),
            (
                "stacks/b.yaml",
                &stack(
                    "b",
                    "vps-01",
                    "  web:\n    image: nginx\n    ports:\n      - \"127.0.0.1:8080:80\"\n",
                ),
            ),
        ],
        &[
            "stacks/b.yaml:9:9: host port 8080/tcp is already published on host `vps-01` by stacks/a.yaml:8:13",
        ],
    );
    check(
        &[FLEET, ("stacks/a.yaml", &a("[\"8080:80\", \"8080:81\"]"))],
        &[
            "stacks/a.yaml:8:24: host port 8080/tcp is already published on host `vps-01` by stacks/a.yaml:8:13",
        ],
    );
    // Different addresses, protocols or hosts do not clash.
    check(
        &[
            FLEET,
            (
                "stacks/a.yaml",
                &a("[\"127.0.0.1:8080:80\", \"127.0.0.2:8080:81\", \"8080:80/udp\"]"),
            ),
        ],
        &[],
    );
    check(
        &[
            FLEET,
            ("stacks/a.yaml", &a("[\"8080:80\"]")),
            (
                "stacks/b.yaml",
                &stack(
                    "b",
                    "vps-02",
                    "  web:\n    image: nginx\n    ports: [\"8080:80\"]\n",
                ),
            ),
        ],
        &[],
    );
}

#[test]
fn service_fields() {
    let rows: &[(&str, &str)] = &[
        (
            "    ports: [\"80:80:80:80\"]\n",
            "stacks/s.yaml:8:13: ports entry `80:80:80:80` is not `[ip:][host:]container[/proto]`",
        ),
        (
            "    ports: [\"0:80\"]\n",
            "stacks/s.yaml:8:13: ports entry `0:80` 0 is not a port (1-65535)",
        ),
        (
            "    ports: [\"70000:80\"]\n",
            "stacks/s.yaml:8:13: ports entry `70000:80` 70000 is not a port",
        ),
        (
            "    ports: [\"-1:80\"]\n",
            "stacks/s.yaml:8:13: -1 is not a port",
        ),
        (
            "    ports: [\"8080:80/sctp\"]\n",
            "stacks/s.yaml:8:13: has protocol `sctp`, expected tcp or udp",
        ),
        (
            "    ports: [\"x:80\"]\n",
            "stacks/s.yaml:8:13: `x` is not a port number",
        ),
        (
            "    ports: [\"1.2.3:80:80\"]\n",
            "stacks/s.yaml:8:13: `1.2.3` is not an IP address",
        ),
        (
            "    ports: [\"[::1:80:80\"]\n",
            "stacks/s.yaml:8:13: has an unclosed `[`",
        ),
        (
            "    ports: [\"80:80; x\"]\n",
            "stacks/s.yaml:8:13: is not a port number",
        ),
        (
            "    restart: sometimes\n",
            "stacks/s.yaml:8:14: restart `sometimes` is not one of: no, always, on-failure[:N], unless-stopped",
        ),
        (
            "    restart: \"on-failure:x\"\n",
            "stacks/s.yaml:8:14: restart `on-failure:x` is not one of",
        ),
        (
            "    depends_on: [db]\n",
            "stacks/s.yaml:8:18: depends_on `db` is not a service of stack `shop`",
        ),
        (
            "    depends_on: [web]\n",
            "stacks/s.yaml:8:18: a service cannot depend on itself",
        ),
        (
            "    env_file: env/.env\n",
            "stacks/s.yaml:7:5: env_file `env/.env` must be an absolute path on the host",
        ),
        (
            "    env_file:\n      - /srv/ok.env\n      - ./x.env\n",
            "stacks/s.yaml:7:5: env_file `./x.env` must be an absolute path",
        ),
        (
            "    volumes: [\"data:relative\"]\n",
            "stacks/s.yaml:8:15: volume `data:relative` is not `source:/target[:ro|rw]`",
        ),
        (
            "    volumes: [\"data\"]\n",
            "stacks/s.yaml:8:15: volume `data` is not",
        ),
        (
            "    volumes: [\":/data\"]\n",
            "stacks/s.yaml:8:15: volume `:/data` is not",
        ),
        (
            "    volumes: [\"/srv:/data:rx\"]\n",
            "stacks/s.yaml:8:15: volume `/srv:/data:rx` is not",
        ),
        (
            "    volumes: [\"/srv:/data:ro:x\"]\n",
            "stacks/s.yaml:8:15: volume `/srv:/data:ro:x` is not",
        ),
        (
            "    healthcheck:\n      test: [CMD, ls]\n      interval: 30x\n",
            "stacks/s.yaml:7:5: healthcheck.interval: `30x` is not a duration",
        ),
        (
            "    healthcheck: { test: [CMD, ls], timeout: soon }\n",
            "stacks/s.yaml:7:5: healthcheck.timeout: `soon` is not a duration",
        ),
        (
            "    healthcheck: { test: [CMD, ls], start_period: 1y }\n",
            "stacks/s.yaml:7:5: healthcheck.start_period: `1y` is not a duration",
        ),
        (
            "    networks: [\"a b\"]\n",
            "stacks/s.yaml:8:16: network `a b` contains a space",
        ),
        (
            "    environment: [\"=x\"]\n",
            "stacks/s.yaml:7:5: environment entry `=x` has no name",
        ),
        (
            "    environment: [\"A=B=C\", \"1X=2\"]\n",
            "stacks/s.yaml:7:5: environment name `1X` is not a variable name",
        ),
        (
            "    environment: { \"A=B\": x }\n",
            "stacks/s.yaml:7:5: environment name `A=B` is not a variable name",
        ),
        (
            "    environment: { \"A\\nB\": x }\n",
            "stacks/s.yaml:7:5: environment name `A\\nB` is not a variable name",
        ),
        (
            "    networks: [host]\n",
            "stacks/s.yaml:8:16: network `host` would take the container off the shared network",
        ),
        (
            "    networks: [none]\n",
            "stacks/s.yaml:8:16: network `none` would take the container off",
        ),
        (
            "    volumes: [\"/srv/acme/../../etc:/data\"]\n",
            "stacks/s.yaml:8:15: volume `/srv/acme/../../etc:/data` has a `..` component",
        ),
        (
            "    volumes: [\"/srv:/data/../etc\"]\n",
            "stacks/s.yaml:8:15: volume `/srv:/data/../etc` has a `..` component",
        ),
    ];
    for (field, want) in rows {
        check(
            &[
                FLEET,
                (
                    "stacks/s.yaml",
                    &stack(
                        "shop",
                        "vps-01",
                        &format!("  web:\n    image: nginx\n{field}"),
                    ),
                ),
            ],
            &[want],
        );
    }
    for field in [
        "    ports: [\"80\", \"8080:80\", \"[::1]:8081:80\", \"127.0.0.1:53:53/udp\"]\n",
        "    restart: \"no\"\n",
        "    restart: always\n",
        "    restart: on-failure\n",
        "    restart: \"on-failure:3\"\n",
        "    volumes: [\"/cache\", \"/srv/a:/a\", \"named:/b:ro\", \"/srv/c:/c:ro,z\"]\n",
        "    healthcheck: { test: \"curl -f http://localhost\", interval: 1m30s, timeout: 500ms, start_period: \"60\", retries: 3 }\n",
        "    environment: [\"A=1\", \"B\"]\n    labels: { team: ops }\n",
    ] {
        check(
            &[
                FLEET,
                (
                    "stacks/s.yaml",
                    &stack(
                        "shop",
                        "vps-01",
                        &format!("  web:\n    image: nginx\n{field}"),
                    ),
                ),
            ],
            &[],
        );
    }
}

#[test]
fn stack_structure() {
    check(
        &[
            FLEET,
            (
                "stacks/s.yaml",
                &stack(
                    "shop",
                    "vps-01",
                    "  a:\n    image: nginx\n    depends_on: [b]\n  b:\n    image: nginx\n    depends_on: [c]\n  c:\n    image: nginx\n    depends_on: [a]\n",
                ),
            ),
        ],
        &["stacks/s.yaml:3:7: depends_on forms a cycle: a -> b -> c -> a"],
    );
    check(
        &[
            FLEET,
            (
                "stacks/s.yaml",
                &stack(
                    "shop",
                    "vps-01",
                    "  a:\n    image: nginx\n    depends_on: [b]\n  b:\n    image: nginx\n    depends_on: [a]\n",
                ),
            ),
        ],
        &["stacks/s.yaml:3:7: depends_on forms a cycle: a -> b -> a"],
    );
    check(
        &[
            FLEET,
            (
                "stacks/s.yaml",
                &stack(
                    "shop",
                    "vps-01",
                    "  a:\n    image: nginx\n    depends_on: [b, c]\n  b:\n    image: nginx\n    depends_on: [c]\n  c:\n    image: nginx\n",
                ),
            ),
        ],
        &[],
    );
    check(
        &[FLEET, ("stacks/s.yaml", &stack("shop", "vps-01", "  {}\n"))],
        &["stacks/s.yaml:3:7: the stack has no services"],
    );
    check(
        &[
            FLEET,
            (
                "stacks/s.yaml",
                &stack("Shop", "vps-01", "  web:\n    image: nginx\n"),
            ),
        ],
        &["stacks/s.yaml:3:7: stack name `Shop` must start with a lower-case letter or digit"],
    );
    check(
        &[
            FLEET,
            (
                "stacks/s.yaml",
                &stack("shop", "vps-01", "  Web:\n    image: nginx\n"),
            ),
        ],
        &["stacks/s.yaml:7:5: service name `Web` must start with a lower-case letter or digit"],
    );
}

// ---------------------------------------------------------------- upstream containers

#[test]
fn an_upstream_container_no_stack_defines_is_a_warning() {
    let site_c = |host: &str| {
        site(&format!(
            "domain: a.example.com\nhost: {host}\nupstream:\n  container: shop-web\n  port: 8080\n"
        ))
    };
    let shop = |host: &str| stack("shop", host, "  web:\n    image: nginx\n");
    check(
        &[FLEET, ("sites/a.yaml", &site_c("vps-01"))],
        &["sites/a.yaml:6:14: warning: no stack on host `vps-01` defines container `shop-web`"],
    );
    check(
        &[
            FLEET,
            ("sites/a.yaml", &site_c("vps-01")),
            ("stacks/shop.yaml", &shop("vps-02")),
        ],
        &["sites/a.yaml:6:14: warning: no stack on host `vps-01` defines container `shop-web`"],
    );
    check(
        &[
            FLEET,
            ("sites/a.yaml", &site_c("vps-01")),
            ("stacks/shop.yaml", &shop("vps-01")),
        ],
        &[],
    );
}

// ---------------------------------------------------------------- collecting

#[test]
fn every_problem_is_collected() {
    check(
        &[
            FLEET,
            (
                "sites/a.yaml",
                &site(&SITE.replace("a.example.com", "A.example.com")),
            ),
            (
                "sites/b.yaml",
                &format!(
                    "{}---\n{}",
                    site(&SITE.replace("a.example.com", "b.example.com")),
                    site_plus("tls: bogus\n").replace("a.example.com", "c.example.com")
                ),
            ),
            (
                "stacks/s.yaml",
                &stack("shop", "vps-01", "  web:\n    image: Nginx\n"),
            ),
        ],
        &[
            "sites/a.yaml:3:9: domain `A.example.com` must be lower case",
            "sites/b.yaml:12:6: tls `bogus`",
            "stacks/s.yaml:7:12: image `Nginx`",
        ],
    );
}

// ---------------------------------------------------------------- hostile YAML

#[track_caller]
fn assert_refused(text: &str, why: &str) {
    let loaded = load(&[FLEET, ("sites/evil.yaml", text)]);
    assert!(loaded.model.is_none());
    let errors: Vec<&Problem> = loaded
        .errors()
        .filter(|p| p.file == "sites/evil.yaml")
        .collect();
    assert!(
        errors.iter().any(|p| p.message.contains(why)),
        "want an error containing {why:?}, got {errors:#?}"
    );
}

fn laughs(levels: usize) -> String {
    let mut text = String::from("l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..levels {
        let refs = vec![format!("*l{}", i - 1); 9].join(", ");
        text.push_str(&format!("l{i}: &l{i} [{refs}]\n"));
    }
    text
}

#[test]
fn a_billion_laughs_is_refused() {
    // Without a header the loader reads the whole document to find `kind`.
    assert_refused(&laughs(10), "budget");
    // With a header the document is refused for its fields; their values
    // still parse, so the bomb in them is refused by the budget too.
    assert_refused(
        &format!("apiVersion: vsa/v1\nkind: Site\n{}", laughs(10)),
        "unknown field `l0`",
    );
    assert_refused(
        &format!(
            "apiVersion: vsa/v1\nkind: Stack\nname: s\nhost: vps-01\n{}services:\n  web:\n    image: nginx\n    command: *l9\n",
            laughs(10)
        ),
        "unknown field `l0`",
    );
}

#[test]
fn deep_nesting_is_refused() {
    assert_refused(&"[".repeat(10_000), "recursion limit exceeded");
    assert_refused(
        &format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
        "recursion limit exceeded",
    );
    assert_refused(
        &format!("{}1{}", "{a: ".repeat(10_000), "}".repeat(10_000)),
        "recursion limit exceeded",
    );
    assert_refused(
        &format!(
            "apiVersion: vsa/v1\nkind: Site\ndomain: {}{}\n",
            "[".repeat(10_000),
            "]".repeat(10_000)
        ),
        "expected string scalar",
    );
}

#[test]
fn a_file_over_one_mebibyte_is_refused_unread() {
    let text = format!(
        "apiVersion: vsa/v1\nkind: Site\n# {}\n",
        "x".repeat(2 << 20)
    );
    let len = text.len();
    check(
        &[FLEET, ("sites/evil.yaml", &text)],
        &[&format!(
            "sites/evil.yaml:1:1: file is {len} bytes, more than the 1048576 a manifest may have"
        )],
    );
}

#[test]
fn a_document_with_200k_keys_is_refused() {
    // Three-character keys keep 200,000 of them under the 1 MiB file limit.
    let alphabet: Vec<char> = ('a'..='z').chain('A'..='Z').chain('0'..='9').collect();
    let key = |i: usize| -> String {
        [
            alphabet[i / (62 * 62)],
            alphabet[(i / 62) % 62],
            alphabet[i % 62],
        ]
        .iter()
        .collect()
    };
    let mut flow = String::from("{");
    let mut block = String::from("apiVersion: vsa/v1\nkind: Site\n");
    for i in 0..200_000 {
        flow.push_str(&key(i));
        flow.push(',');
        block.push_str(&key(i));
        block.push_str(":\n");
    }
    flow.push_str("}\n");
    assert!(flow.len() < 1 << 20 && block.len() < 1 << 20);
    assert_refused(&flow, "budget");
    assert_refused(&block, "unknown field `aaa`");
}

// ---------------------------------------------------------------- regressions

#[test]
fn an_unknown_first_key_of_a_list_item_is_the_only_problem() {
    check(
        &[
            FLEET,
            (
                "sites/a.yaml",
                &site_plus(&format!(
                    "auth:\n  users:\n    - pass: hunter2\n      name: admin\n      bcrypt: \"{HASH}\"\n"
                )),
            ),
        ],
        &["sites/a.yaml:8:7: unknown field `pass`, expected one of name, bcrypt"],
    );
}

#[test]
fn an_unknown_key_with_a_compact_sequence_does_not_hide_later_problems() {
    check(
        &[
            FLEET,
            (
                "sites/a.yaml",
                &site_plus("bogus:\n- a\n- b\nmax_body: 1x\n"),
            ),
        ],
        &[
            "sites/a.yaml:6:1: unknown field `bogus`",
            "sites/a.yaml:9:11: max_body `1x`",
        ],
    );
}

#[test]
fn an_anchor_defined_in_an_unknown_field_still_serves_its_aliases() {
    let rows: &[(&str, &str)] = &[
        // A scalar.
        (
            "host: vps-01\nbogus: &d a.example.com\ndomain: *d\nupstream: { url: \"http://127.0.0.1:8080\" }\n",
            "sites/a.yaml:4:1: unknown field `bogus`",
        ),
        // A flow mapping, merged with `<<`.
        (
            "bogus: &m { url: \"http://127.0.0.1:8080\" }\ndomain: a.example.com\nhost: vps-01\nupstream: { <<: *m }\n",
            "sites/a.yaml:3:1: unknown field `bogus`",
        ),
        // A block mapping, used whole.
        (
            "bogus: &m\n  url: http://127.0.0.1:8080\ndomain: a.example.com\nhost: vps-01\nupstream: *m\n",
            "sites/a.yaml:3:1: unknown field `bogus`",
        ),
        // A sequence, and an anchor nested inside the unknown value.
        (
            "bogus: &s [b.example.com, &d a.example.com]\naliases: *s\ndomain: *d\nhost: vps-01\nupstream: { url: \"http://127.0.0.1:8080\" }\n",
            "sites/a.yaml:3:1: unknown field `bogus`",
        ),
    ];
    for (body, want) in rows {
        check(&[FLEET, ("sites/a.yaml", &site(body))], &[want]);
    }
}

#[test]
fn an_anchor_defined_in_an_unknown_key_of_a_list_item_still_serves_its_aliases() {
    check(
        &[
            FLEET,
            (
                "sites/a.yaml",
                &site_plus(&format!(
                    "auth:\n  users:\n    - pass: &p admin\n      name: *p\n      bcrypt: \"{HASH}\"\n    - name: *p\n      bcrypt: \"{HASH}\"\n"
                )),
            ),
        ],
        &[
            "sites/a.yaml:8:7: unknown field `pass`, expected one of name, bcrypt",
            "sites/a.yaml:11:13: auth user `admin` is listed twice (first at line 9)",
        ],
    );
}

#[test]
fn what_an_unknown_field_defines_is_checked_where_it_is_used() {
    // The value reaches `domain` and `aliases`; their problems are real
    // and are reported at the alias, where the field is.
    check(
        &[
            FLEET,
            (
                "sites/a.yaml",
                &site(
                    "bogus: &s [b.example.com, &d bad_name]\naliases: *s\ndomain: *d\nhost: vps-01\nupstream: { url: \"http://127.0.0.1:8080\" }\n",
                ),
            ),
        ],
        &[
            "sites/a.yaml:3:1: unknown field `bogus`",
            "sites/a.yaml:4:10: alias `bad_name` must have at least two labels",
            "sites/a.yaml:5:9: domain `bad_name` must have at least two labels",
        ],
    );
    // An alias inside the unknown value that nothing defines is broken
    // YAML, whatever the field.
    check(
        &[FLEET, ("sites/a.yaml", &site_plus("bogus: [*nowhere]\n"))],
        &[
            "sites/a.yaml:6:1: unknown field `bogus`",
            "sites/a.yaml:6:9: alias references unknown anchor",
        ],
    );
}

#[test]
fn an_unknown_key_in_a_flow_mapping_does_not_hide_later_problems() {
    check(
        &[
            FLEET,
            (
                "sites/a.yaml",
                &site(
                    "domain: a.example.com\nhost: vps-01\nupstream: { url: \"http://127.0.0.1:3000\", bogus: 1, other: 2 }\ntls: nope\n",
                ),
            ),
        ],
        &[
            "sites/a.yaml:5:43: unknown field `bogus`",
            "sites/a.yaml:5:53: unknown field `other`",
            "sites/a.yaml:6:6: tls `nope` is not one of: acme, none",
        ],
    );
}

#[test]
fn an_unknown_key_replayed_by_aliases_is_reported_once() {
    check(
        &[
            FLEET,
            (
                "stacks/s.yaml",
                &stack(
                    "shop",
                    "vps-01",
                    "  web:\n    image: nginx\n    healthcheck: &h\n      test: [CMD, ls]\n      bogus: 1\n  api:\n    image: nginx\n    healthcheck: *h\n",
                ),
            ),
        ],
        &["stacks/s.yaml:10:7: unknown field `bogus`, expected one of test"],
    );
}

#[test]
fn unknown_fields_are_reported_up_to_twenty_per_document() {
    let keys: String = (0..25).map(|i| format!("k{i}: {i}\n")).collect();
    let rows: Vec<String> = (0..20)
        .map(|i| format!("sites/a.yaml:{}:1: unknown field `k{i}`", i + 6))
        .collect();
    let rows: Vec<&str> = rows.iter().map(String::as_str).collect();
    check(&[FLEET, ("sites/a.yaml", &site_plus(&keys))], &rows);
}

#[test]
fn messages_never_carry_raw_control_characters() {
    let b = |domain: &str| {
        site(&format!(
            "domain: {domain}\nhost: vps-01\nupstream: {{ container: \"\\e[31mweb\", port: 80 }}\n"
        ))
    };
    let loaded = load(&[
        FLEET,
        (
            "sites/a.yaml",
            "apiVersion: vsa/v1\nkind: \"Site\\nfake.yaml:1:1: all good\"\n",
        ),
        ("sites/b.yaml", "apiVersion: \"vsa/v1\\e[2J\"\nkind: Site\n"),
        ("sites/c.yaml", &b("\"x\\ny.com\"")),
        ("sites/d.yaml", &b("\"x\\ny.com\"")),
        (
            "stacks/s.yaml",
            &stack(
                "shop",
                "vps-01",
                "  web:\n    image: nginx\n    depends_on: [\"x\\ny\"]\n",
            ),
        ),
    ]);
    let raw: Vec<String> = loaded
        .problems
        .iter()
        .map(Problem::to_string)
        .filter(|m| m.chars().any(char::is_control))
        .collect();
    assert!(raw.is_empty(), "{raw:#?}");
}

#[test]
fn budget_errors_read_cleanly() {
    let loaded = load(&[FLEET, ("sites/evil.yaml", &laughs(6))]);
    for p in loaded.errors() {
        assert!(!p.message.ends_with("(used"), "{p}");
        assert!(!p.message.contains(" at line "), "{p}");
    }
}
