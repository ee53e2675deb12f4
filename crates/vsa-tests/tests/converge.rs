//! Property: whatever the repository says and whatever the host held
//! before, after `vsactl apply` the plan is empty — on real files, behind a
//! real nginx that accepted every reload. A second apply then changes
//! nothing at all.
//!
//! Each case is a sequence of desired states (sites added, changed and
//! removed between steps), with hand edits of managed files in between.
//! Few cases, because each step runs nginx for real.

use std::process::ExitCode;

use proptest::prelude::*;
use vsa_tests::host::{Host, load_config};
use vsa_tests::{Upstream, http_get_until, require};

const NAMES: [&str; 6] = [
    "a.vsa.test",
    "b.vsa.test",
    "shop.vsa.test",
    "n8n.vsa.test",
    "dify.vsa.test",
    "z.vsa.test",
];

#[derive(Debug, Clone)]
struct SiteSpec {
    name: usize,
    alias: bool,
    container: bool,
    websockets: bool,
    max_body: Option<&'static str>,
    rate_limit: Option<(u32, u32)>,
    users: usize,
    csp: bool,
}

#[derive(Debug, Clone)]
enum Tamper {
    None,
    /// Rewrite a managed file (the n-th, wrapping) by hand.
    Edit(usize),
    /// Delete a managed file by hand.
    Delete(usize),
}

fn site_spec() -> impl Strategy<Value = SiteSpec> {
    (
        0..NAMES.len(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(prop::sample::select(vec!["1m", "50m", "512k"])),
        prop::option::of((1u32..100, 1u32..200)),
        0usize..3,
        any::<bool>(),
    )
        .prop_map(
            |(name, alias, container, websockets, max_body, rate_limit, users, csp)| SiteSpec {
                name,
                alias,
                container,
                websockets,
                max_body,
                rate_limit,
                users,
                csp,
            },
        )
}

fn tamper() -> impl Strategy<Value = Tamper> {
    prop_oneof![
        Just(Tamper::None),
        (0usize..8).prop_map(Tamper::Edit),
        (0usize..8).prop_map(Tamper::Delete),
    ]
}

fn yaml(spec: &SiteSpec, up: &Upstream, hashes: &[String]) -> String {
    let name = NAMES[spec.name];
    let mut y =
        format!("apiVersion: vsa/v1\nkind: Site\nhost: test-01\ndomain: {name}\ntls: none\n");
    if spec.alias {
        y += &format!("aliases: [www.{name}]\n");
    }
    if spec.container {
        y += &format!("upstream: {{ container: app-{}, port: 8080 }}\n", spec.name);
    } else {
        y += &format!("upstream: {{ url: \"http://127.0.0.1:{}\" }}\n", up.port);
    }
    if spec.websockets {
        y += "websockets: true\n";
    }
    if let Some(m) = spec.max_body {
        y += &format!("max_body: {m}\n");
    }
    if let Some((rps, burst)) = spec.rate_limit {
        y += &format!("rate_limit: {{ rps: {rps}, burst: {burst} }}\n");
    }
    if spec.csp {
        y += "csp: \"default-src 'self'\"\n";
    }
    if spec.users > 0 {
        y += "auth:\n  users:\n";
        for (i, hash) in hashes.iter().take(spec.users).enumerate() {
            y += &format!("    - name: user{i}\n      bcrypt: \"{hash}\"\n");
        }
    }
    y
}

/// Writes the repository for one desired state (one document per site, the
/// last spec of a name wins) and returns the URL-upstream sites without auth.
fn write_state(h: &Host, specs: &[SiteSpec], up: &Upstream, hashes: &[String]) -> Vec<String> {
    let sites = h.repo.join("sites");
    std::fs::remove_dir_all(&sites).unwrap();
    std::fs::create_dir_all(&sites).unwrap();
    let mut open = Vec::new();
    let mut by_name = std::collections::BTreeMap::new();
    for s in specs {
        by_name.insert(s.name, s);
    }
    for s in by_name.values() {
        let name = NAMES[s.name];
        std::fs::write(sites.join(format!("{name}.yaml")), yaml(s, up, hashes)).unwrap();
        if !s.container && s.users == 0 {
            open.push(name.to_owned());
        }
    }
    open
}

fn apply_tamper(h: &Host, t: &Tamper) {
    let managed: Vec<_> = ["etc/nginx/conf.d", "etc/nginx/htpasswd"]
        .iter()
        .filter_map(|d| std::fs::read_dir(h.path(d)).ok())
        .flatten()
        .map(|e| e.unwrap().path())
        .filter(|p| std::fs::read_to_string(p).is_ok_and(|t| t.starts_with("# managed-by: vsa")))
        .collect();
    if managed.is_empty() {
        return;
    }
    match *t {
        Tamper::None => {}
        Tamper::Edit(i) => {
            let p = &managed[i % managed.len()];
            let text = std::fs::read_to_string(p).unwrap();
            std::fs::write(p, format!("{text}# edited by hand\n")).unwrap();
        }
        Tamper::Delete(i) => std::fs::remove_file(&managed[i % managed.len()]).unwrap(),
    }
}

#[test]
fn apply_always_leaves_an_empty_plan() {
    let Some(bin) = require("nginx", "to apply against a real nginx") else {
        return;
    };
    let up = Upstream::start("app");
    let hashes: Vec<String> = (0..2)
        .map(|i| bcrypt::hash(format!("pw-{i}"), 4).unwrap())
        .collect();
    let config = ProptestConfig {
        cases: 12,
        // Shrinking reruns nginx for every candidate; a failing case is
        // readable as it is (a handful of sites).
        max_shrink_iters: 16,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let steps = prop::collection::vec((prop::collection::vec(site_spec(), 0..6), tamper()), 1..4);
    proptest!(config, |(steps in steps)| {
        let mut h = Host::new(bin.clone());
        h.start();
        for (specs, t) in &steps {
            let open = write_state(&h, specs, &up, &hashes);
            apply_tamper(&h, t);
            prop_assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);
            let hp = vsactl::pipeline::plan_host(&load_config(&h), &h.repo, "test-01").unwrap();
            prop_assert!(
                hp.plan.changes.is_empty(),
                "plan after apply: {:?}",
                hp.plan.changes.iter().map(|c| format!("{:?} {:?} {} ({})", c.action, c.kind, c.name, c.reason)).collect::<Vec<_>>()
            );
            h.nginx.test().map_err(TestCaseError::fail)?;
            for name in &open {
                let r = http_get_until(h.http_port, name, "/p", &[], |r| r.status == 200);
                prop_assert_eq!(
                    r.status,
                    200,
                    "{} not served: {:?}\nnginx error log:\n{}",
                    name,
                    r,
                    h.nginx.error_log()
                );
            }
        }
        // A second apply of the last state writes, reloads and audits nothing.
        let before = h.files();
        let events = h.audit_lines().len();
        prop_assert_eq!(h.vsactl(&["apply", "--yes"]), ExitCode::SUCCESS);
        prop_assert_eq!(h.files(), before);
        prop_assert_eq!(h.audit_lines().len(), events);
    });
}
