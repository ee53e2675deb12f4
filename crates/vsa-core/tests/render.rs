//! Snapshots of rendered vhosts, htpasswd files and plans, one `check` per
//! area; plus the property that planning against what a plan wrote is empty.

use std::path::Path;

use proptest::prelude::*;
use vsa_core::config::{Config, ConfigSource};
use vsa_core::plan::{Observed, ObservedFile, ResourceKind};
use vsa_core::render::RenderSettings;
use vsa_core::{Model, Renderer, SourceFile};

const FLEET: &str =
    "apiVersion: vsa/v1\nkind: Fleet\nhosts:\n  - id: vps-01\ndefaults:\n  max_body: 10m\n";
const HASH_A: &str = "$2b$04$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW";
const HASH_B: &str = "$2b$04$abcdefghijklmnopqrstuuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

fn config() -> Config {
    Config::parse(&ConfigSource {
        file: "vsa.yaml",
        text: Some("host: vps-01\nnginx: { ipv6: true }\n"),
        base_dir: Path::new("/"),
        root: Path::new("/"),
    })
    .unwrap()
}

fn renderer() -> Renderer {
    Renderer::new(RenderSettings::from(&config()))
}

fn model(sites: &[&str]) -> Model {
    let mut files = vec![SourceFile {
        path: "fleet.yaml".into(),
        text: FLEET.into(),
    }];
    for (i, s) in sites.iter().enumerate() {
        files.push(SourceFile {
            path: format!("sites/{i}.yaml"),
            text: format!("apiVersion: vsa/v1\nkind: Site\nhost: vps-01\n{s}"),
        });
    }
    let loaded = vsa_core::load(&files);
    let errors: Vec<_> = loaded.errors().collect();
    assert!(errors.is_empty(), "{errors:#?}");
    loaded.model.unwrap()
}

/// Renders the one site of `yaml`, with and without its certificate.
fn check_vhost(name: &str, yaml: &str, cert: bool) {
    let m = model(&[yaml]);
    let out = renderer().vhost(&m.sites[0], cert).unwrap();
    insta::assert_snapshot!(name, out);
}

#[test]
fn vhost_container_upstream_http_only_until_the_certificate_exists() {
    let y = "domain: shop.example.com\naliases: [www.shop.example.com]\nupstream: { container: shop-web, port: 8080 }\n";
    check_vhost("container_no_cert", y, false);
    check_vhost("container_with_cert", y, true);
}

#[test]
fn vhost_url_upstream_with_auth_websockets_rate_limit() {
    check_vhost(
        "url_auth_ws_rate",
        &format!(
            "domain: n8n.example.com\nupstream: {{ url: \"http://127.0.0.1:5678\" }}\nwebsockets: true\nrate_limit: {{ rps: 10, burst: 20 }}\nmax_body: 50m\nauth:\n  realm: n8n admin\n  users:\n    - name: admin\n      bcrypt: \"{HASH_A}\"\n"
        ),
        true,
    );
}

#[test]
fn vhost_tls_none_custom_csp() {
    check_vhost(
        "tls_none_csp",
        "domain: status.example.org\nupstream: { url: \"http://10.0.0.5:9100/status\" }\ntls: none\ncsp: \"default-src 'self'\"\n",
        true,
    );
    check_vhost(
        "tls_none_csp_off",
        "domain: status.example.org\nupstream: { url: \"http://10.0.0.5:9100\" }\ntls: none\ncsp: \"off\"\n",
        false,
    );
}

#[test]
fn htpasswd_and_http_context() {
    let m = model(&[
        &format!(
            "domain: a.example.com\nupstream: {{ url: \"http://127.0.0.1:1\" }}\nrate_limit: {{ rps: 5 }}\nauth:\n  users:\n    - name: alice\n      bcrypt: \"{HASH_A}\"\n    - name: bob\n      bcrypt: \"{HASH_B}\"\n"
        ),
        "domain: b.example.com\nupstream: { url: \"http://127.0.0.1:2\" }\nrate_limit: { rps: 50, burst: 5 }\n",
        "domain: c.example.com\nupstream: { url: \"http://127.0.0.1:3\" }\nrate_limit: { rps: 5, burst: 1 }\n",
    ]);
    let r = renderer();
    insta::assert_snapshot!("htpasswd", r.htpasswd(&m.sites[0]).unwrap());
    assert!(r.htpasswd(&m.sites[1]).is_none());
    let http = r.http_context(&m.sites, "0123456789abcdef").unwrap();
    insta::assert_snapshot!("http_context", http);
    // The probe's generation is read back and restamped, nothing else moves.
    use vsa_core::render::{generation_of, with_generation};
    assert_eq!(generation_of(&http), Some("0123456789abcdef"));
    let stamped = with_generation(&http, "fedcba9876543210").unwrap();
    assert_eq!(generation_of(&stamped), Some("fedcba9876543210"));
    assert_eq!(
        stamped.replace("fedcba9876543210", "0123456789abcdef"),
        http
    );
    assert_eq!(with_generation(&http, "not-hex"), None);
    assert_eq!(generation_of("# managed-by: vsa\n"), None);
    // Anything but a generation renders as the unstamped one.
    let odd = r.http_context(&m.sites, "\"; evil").unwrap();
    assert_eq!(generation_of(&odd), Some(vsa_core::render::NO_GENERATION));
}

fn observed_from(plan: &vsa_core::Plan, certs: &[&str]) -> Observed {
    let mut o = Observed::default();
    for c in certs {
        add_cert(&mut o, c, &[]);
    }
    apply_to(&mut o, plan, None);
    o
}

/// A valid certificate for `domain` and `aliases` on disk (observed at 0).
fn add_cert(o: &mut Observed, domain: &str, aliases: &[String]) {
    o.certs.insert(domain.to_owned());
    let names = std::iter::once(domain.to_owned())
        .chain(aliases.iter().cloned())
        .collect();
    o.cert_info.insert(
        domain.to_owned(),
        vsa_core::certs::CertInfo::steady(domain, names),
    );
}

/// What a correct `apply` pass does to the observed state, in memory
/// (certificates issued for the site's names when `model` is given).
fn apply_to(o: &mut Observed, plan: &vsa_core::Plan, model: Option<&Model>) {
    for c in &plan.changes {
        let file = c.file.clone().unwrap();
        let map = match c.kind {
            ResourceKind::Vhost => &mut o.vhosts,
            ResourceKind::Htpasswd => &mut o.htpasswd,
            ResourceKind::AccessLog => {
                o.access_logs.insert(c.name.clone());
                continue;
            }
            ResourceKind::Cert if c.action == vsa_core::plan::Action::Delete => {
                o.certs.remove(&c.name);
                o.cert_info.remove(&c.name);
                o.vsa_certs.remove(&c.name);
                continue;
            }
            ResourceKind::Cert => {
                let aliases = model
                    .and_then(|m| m.sites.iter().find(|s| s.domain == c.name))
                    .map(|s| s.aliases.clone())
                    .unwrap_or_default();
                add_cert(o, &c.name, &aliases);
                o.vsa_certs.insert(c.name.clone());
                continue;
            }
            k => panic!("{k:?}"),
        };
        match c.content() {
            Some(content) => {
                map.insert(
                    file,
                    ObservedFile {
                        content: content.to_owned(),
                        managed: true,
                    },
                );
            }
            None => {
                map.remove(&file);
            }
        }
    }
}

/// Plans `sites` against `observed` and snapshots the plan JSON.
fn check_plan(name: &str, sites: &[&str], observed: &Observed) {
    let m = model(sites);
    let p = vsa_core::plan(&m, "vps-01", observed, &renderer(), Some("3f2c".into())).unwrap();
    insta::assert_snapshot!(name, serde_json::to_string_pretty(&p).unwrap());
}

#[test]
fn plan_snapshots() {
    let shop = "domain: shop.example.com\nupstream: { container: shop-web, port: 8080 }\n";
    let admin = format!(
        "domain: admin.example.com\nupstream: {{ url: \"http://127.0.0.1:3000\" }}\nauth:\n  users:\n    - name: admin\n      bcrypt: \"{HASH_A}\"\n"
    );
    check_plan("plan_empty_host", &[shop, &admin], &Observed::default());

    // Converged, then: a hand edit, a password change, an unmanaged file,
    // a certificate that appeared, one that went, and a removed site.
    let m = model(&[shop, &admin]);
    let first = vsa_core::plan(&m, "vps-01", &Observed::default(), &renderer(), None).unwrap();
    let mut o = observed_from(&first, &[]);
    let v = o.vhosts.get_mut("admin.example.com.conf").unwrap();
    v.content = v
        .content
        .replace("proxy_http_version 1.1;", "proxy_http_version 1.0;");
    o.vhosts.insert(
        "default.conf".into(),
        ObservedFile {
            content: "server {}\n".into(),
            managed: false,
        },
    );
    o.vhosts.insert(
        "gone.example.com.conf".into(),
        ObservedFile {
            content: "# managed-by: vsa\nserver {}\n".into(),
            managed: true,
        },
    );
    // The first pass issued both certificates; admin's is gone again, a
    // certificate vsa issued for a removed site is still there, and one
    // certbot issued (not vsa) is left alone.
    o.certs.remove("admin.example.com");
    o.cert_info.remove("admin.example.com");
    add_cert(&mut o, "gone.example.com", &[]);
    o.vsa_certs.insert("gone.example.com".into());
    add_cert(&mut o, "certbot.example.com", &[]);
    let admin2 = admin.replace(HASH_A, HASH_B);
    check_plan("plan_drift", &[shop, &admin2], &o);
}

#[test]
fn the_same_input_renders_the_same_bytes() {
    let y = "domain: a.example.com\nupstream: { url: \"http://127.0.0.1:1\" }\n";
    let m = model(&[y]);
    let r = renderer();
    assert_eq!(
        r.vhost(&m.sites[0], true).unwrap(),
        r.vhost(&m.sites[0], true).unwrap()
    );
}

fn arb_site() -> impl Strategy<Value = String> {
    let label = "[a-z][a-z0-9]{0,8}";
    (
        label,
        proptest::collection::vec(label, 0..3),
        prop_oneof![
            (1u16..65535).prop_map(|p| format!("upstream: {{ container: app-x, port: {p} }}\n")),
            (1u16..65535).prop_map(|p| format!("upstream: {{ url: \"http://127.0.0.1:{p}/\" }}\n")),
        ],
        any::<bool>(),
        proptest::option::of((1i64..1000, 0i64..2000)),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(name, aliases, upstream, tls, rate, ws, auth)| {
            let mut s = format!("domain: {name}.example.com\n{upstream}");
            if !aliases.is_empty() {
                let a: Vec<String> = aliases
                    .iter()
                    .map(|a| format!("{a}.alias.{name}.example.com"))
                    .collect();
                s.push_str(&format!("aliases: [{}]\n", a.join(", ")));
            }
            if !tls {
                s.push_str("tls: none\n");
            }
            if let Some((rps, burst)) = rate {
                s.push_str(&format!("rate_limit: {{ rps: {rps}, burst: {burst} }}\n"));
            }
            if ws {
                s.push_str("websockets: true\n");
            }
            if auth {
                s.push_str(&format!(
                    "auth:\n  users:\n    - name: u\n      bcrypt: \"{HASH_A}\"\n"
                ));
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Applying a plan and planning again gives an empty plan, whatever the
    /// sites and whichever certificates exist.
    #[test]
    fn plan_after_apply_is_empty(
        sites in proptest::collection::btree_map("[a-z]{1,6}", arb_site(), 0..8),
        cert_mask in any::<u16>(),
    ) {
        let texts: Vec<String> = sites
            .into_values()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        // Distinct domains only (the generator may repeat a name).
        let mut seen = std::collections::BTreeSet::new();
        let texts: Vec<&str> = texts
            .iter()
            .filter(|t| seen.insert(t.lines().next().unwrap().to_owned()))
            .map(String::as_str)
            .collect();
        let m = model(&texts);
        let certs: Vec<String> = m
            .sites
            .iter()
            .enumerate()
            .filter(|(i, _)| cert_mask & (1 << (i % 16)) != 0)
            .map(|(_, s)| s.domain.clone())
            .collect();
        let mut o = Observed::default();
        for d in &certs {
            let aliases = m.sites.iter().find(|s| &s.domain == d).unwrap().aliases.clone();
            add_cert(&mut o, d, &aliases);
        }
        let r = renderer();
        // Two passes at most: files and certificates, then the HTTPS vhosts
        // the new certificates allow.
        for _ in 0..2 {
            let p = vsa_core::plan(&m, "vps-01", &o, &r, None).unwrap();
            apply_to(&mut o, &p, Some(&m));
        }
        let last = vsa_core::plan(&m, "vps-01", &o, &r, None).unwrap();
        prop_assert!(last.in_sync(), "{:#?}", last.changes);
    }
}

/// A host with one stack (`shop`: `web` and `db`) and two sites in front of
/// `shop-web`.
fn stack_model(env_order: &str) -> Model {
    let files = vec![
        SourceFile {
            path: "fleet.yaml".into(),
            text: FLEET.into(),
        },
        SourceFile {
            path: "stacks/shop.yaml".into(),
            text: format!(
                "apiVersion: vsa/v1\nkind: Stack\nname: shop\nhost: vps-01\nservices:\n  web:\n    image: shop:1\n    environment: {env_order}\n    depends_on: [db]\n  db:\n    image: postgres:16\n"
            ),
        },
        SourceFile {
            path: "sites/a.yaml".into(),
            text: "apiVersion: vsa/v1\nkind: Site\nhost: vps-01\ndomain: a.example.com\nupstream: { container: shop-web, port: 8080 }\n".into(),
        },
        SourceFile {
            path: "sites/b.yaml".into(),
            text: "apiVersion: vsa/v1\nkind: Site\nhost: vps-01\ndomain: b.example.com\nupstream: { container: shop-web, port: 8080 }\n".into(),
        },
    ];
    let loaded = vsa_core::load(&files);
    assert!(loaded.errors().next().is_none());
    loaded.model.unwrap()
}

#[test]
fn containers_are_planned_by_spec_hash_and_a_shared_one_says_so() {
    use vsa_core::docker::{ContainerSpec, ObservedContainer, ObservedDocker};
    use vsa_core::plan::Action;
    let r = renderer();
    let m = stack_model("{ A: \"1\", B: \"2\" }");
    let mut o = Observed {
        docker: Some(ObservedDocker::default()),
        ..Observed::default()
    };
    let p = vsa_core::plan(&m, "vps-01", &o, &r, None).unwrap();
    let containers: Vec<_> = p
        .changes
        .iter()
        .filter(|c| c.kind == ResourceKind::Container)
        .collect();
    assert_eq!(containers.len(), 2);
    let web = containers.iter().find(|c| c.name == "shop-web").unwrap();
    assert_eq!(web.action, Action::Create);
    assert!(
        web.reason
            .contains("shared by sites a.example.com, b.example.com"),
        "{}",
        web.reason
    );
    assert!(
        p.changes
            .iter()
            .any(|c| c.kind == ResourceKind::Network && c.name == "flowbiz_ext")
    );

    // Running as specified: nothing to do, whatever order the env was
    // written in.
    let stack = &m.stacks[0];
    let network = "flowbiz_ext";
    let observed_for = |model: &Model| -> ObservedDocker {
        let st = &model.stacks[0];
        let mut d = ObservedDocker::default();
        d.networks.insert(network.into());
        for (name, svc) in &st.services {
            let spec = ContainerSpec::new(st, name, svc, network, &Default::default());
            d.containers.insert(
                spec.name.clone(),
                ObservedContainer {
                    name: spec.name.clone(),
                    managed: true,
                    host: Some("vps-01".into()),
                    instance: Some("a".repeat(32)),
                    running: true,
                    spec_hash: Some(spec.hash()),
                    // As the adapter reads it back from the compact label.
                    spec: Some(vsa_core::docker::canonical_json(
                        &serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap(),
                    )),
                    networks: vec![network.into()],
                    image: spec.image.clone(),
                },
            );
        }
        d
    };
    o.docker = Some(observed_for(&m));
    o.instance = Some("a".repeat(32));
    let reordered = stack_model("{ B: \"2\", A: \"1\" }");
    assert_eq!(
        ContainerSpec::new(
            stack,
            "web",
            &stack.services["web"],
            network,
            &Default::default()
        )
        .hash(),
        ContainerSpec::new(
            &reordered.stacks[0],
            "web",
            &reordered.stacks[0].services["web"],
            network,
            &Default::default()
        )
        .hash()
    );
    let p = vsa_core::plan(&reordered, "vps-01", &o, &r, None).unwrap();
    assert!(
        !p.changes.iter().any(|c| c.kind == ResourceKind::Container),
        "{:#?}",
        p.changes
    );

    // One value changed: exactly that container, with a field-level diff.
    let changed = stack_model("{ A: \"1\", B: \"3\" }");
    let p = vsa_core::plan(&changed, "vps-01", &o, &r, None).unwrap();
    let c: Vec<_> = p
        .changes
        .iter()
        .filter(|c| c.kind == ResourceKind::Container)
        .collect();
    assert_eq!(c.len(), 1, "{c:#?}");
    assert_eq!(
        (c[0].name.as_str(), c[0].action),
        ("shop-web", Action::Update)
    );
    let diff = c[0].diff.as_deref().unwrap();
    assert!(
        diff.contains("-    \"B\": \"2\"") && diff.contains("+    \"B\": \"3\""),
        "{diff}"
    );
    // Only what changed moves: both sides are printed in one order.
    let moved: Vec<&str> = diff
        .lines()
        .filter(|l| {
            (l.starts_with('+') || l.starts_with('-'))
                && !l.starts_with("+++")
                && !l.starts_with("---")
        })
        .collect();
    assert_eq!(moved.len(), 2, "{diff}");

    // An unmanaged container in the way is a conflict, never a change.
    let mut d = observed_for(&m);
    d.containers.get_mut("shop-db").unwrap().managed = false;
    o.docker = Some(d);
    let p = vsa_core::plan(&m, "vps-01", &o, &r, None).unwrap();
    assert!(p.conflicts.iter().any(|c| c.name == "shop-db"));
    assert!(!p.changes.iter().any(|c| c.name == "shop-db"));

    // Another instance's container (same host id, same name): a conflict,
    // never recreated; one it no longer wants is never deleted by us.
    let mut d = observed_for(&m);
    d.containers.get_mut("shop-db").unwrap().instance = Some("b".repeat(32));
    let mut theirs = d.containers["shop-db"].clone();
    theirs.name = "other-web".into();
    d.containers.insert("other-web".into(), theirs);
    o.docker = Some(d);
    let p = vsa_core::plan(&changed, "vps-01", &o, &r, None).unwrap();
    let conflict = p.conflicts.iter().find(|c| c.name == "shop-db").unwrap();
    assert!(
        conflict.message.contains("belongs to another vsa"),
        "{conflict:?}"
    );
    assert!(
        !p.changes
            .iter()
            .any(|c| c.name == "shop-db" || c.name == "other-web")
    );

    // One made before instance labels: adopted (recreated) once; one of
    // those no stack wants is left alone and said so.
    let mut d = observed_for(&m);
    d.containers.get_mut("shop-db").unwrap().instance = None;
    let mut old = d.containers["shop-db"].clone();
    old.name = "gone-web".into();
    d.containers.insert("gone-web".into(), old);
    o.docker = Some(d);
    let p = vsa_core::plan(&m, "vps-01", &o, &r, None).unwrap();
    let adopt = p.changes.iter().find(|c| c.name == "shop-db").unwrap();
    assert_eq!(adopt.action, Action::Update);
    assert!(adopt.reason.contains("adopt"), "{}", adopt.reason);
    assert!(!p.changes.iter().any(|c| c.name == "gone-web"));
    assert!(p.conflicts.iter().any(|c| c.name == "gone-web"));
}
