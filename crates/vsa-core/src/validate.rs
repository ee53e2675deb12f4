//! The rules of DESIGN §3, turning parsed documents into a [`Model`].
//!
//! Every rule runs on every document and reports every problem it finds;
//! nothing stops at the first. A model is only produced when there is no
//! error at all (warnings are fine): a half-valid repository is never applied.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::load::{Documents, SourceFile, parse_files_parallel};
use crate::manifest::{KeyValues, Located, SiteSpec, StackSpec};
use crate::model::{
    Auth, AuthUser, Csp, Fleet, Healthcheck, Host, Model, RateLimit, Service, Site, Stack, Tls,
    Upstream,
};
use crate::names;
use crate::problem::{self, Problem};
use crate::span::{Pos, Sp};

/// What loading a repository gave: the model when it is valid, and every
/// problem (errors and warnings) either way.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub model: Option<Model>,
    pub problems: Vec<Problem>,
}

impl Loaded {
    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(|p| p.is_error())
    }
}

/// Parses and validates a whole repository.
pub fn load(files: &[SourceFile]) -> Loaded {
    load_parallel(files, 1)
}

/// [`load`], parsing on up to `threads` threads.
pub fn load_parallel(files: &[SourceFile], threads: usize) -> Loaded {
    let (docs, mut problems) = parse_files_parallel(files, threads);
    let (model, more) = validate(&docs);
    problems.extend(more);
    problem::sort(&mut problems);
    let model = if problems.iter().any(Problem::is_error) {
        None
    } else {
        Some(model)
    };
    Loaded { model, problems }
}

struct Ctx {
    problems: Vec<Problem>,
    errors: usize,
}

impl Ctx {
    fn err(&mut self, file: &str, pos: Pos, msg: impl Into<String>) {
        self.errors += 1;
        self.problems.push(Problem::error(file, pos, msg));
    }
    fn warn(&mut self, file: &str, pos: Pos, msg: impl Into<String>) {
        self.problems.push(Problem::warning(file, pos, msg));
    }
    /// Runs a syntax rule on a positioned string, reporting `field` on failure.
    fn check(
        &mut self,
        file: &str,
        v: &Sp<String>,
        field: &str,
        rule: fn(&str) -> names::Verdict,
    ) -> bool {
        match rule(&v.value) {
            Ok(()) => true,
            Err(why) => {
                self.err(
                    file,
                    v.pos,
                    format!("{field} `{}` {why}", v.value.escape_debug()),
                );
                false
            }
        }
    }
}

/// Validates parsed documents. The model holds whatever could be built; it
/// is only meaningful when no error was reported.
pub fn validate(docs: &Documents) -> (Model, Vec<Problem>) {
    let mut cx = Ctx {
        problems: Vec::new(),
        errors: 0,
    };
    let fleet = validate_fleet(docs, &mut cx);
    let known_hosts: Option<BTreeSet<&str>> = docs
        .fleets
        .first()
        .map(|_| fleet.hosts.iter().map(|h| h.id.as_str()).collect());
    let defaults = docs
        .fleets
        .first()
        .and_then(|f| f.spec.defaults.clone())
        .unwrap_or_default();

    let mut stacks = Vec::new();
    for doc in &docs.stacks {
        if let Some(stack) = validate_stack(doc, known_hosts.as_ref(), &mut cx) {
            stacks.push(stack);
        }
    }
    check_stacks_across(docs, &mut cx);

    let mut sites = Vec::new();
    for doc in &docs.sites {
        if let Some(site) = validate_site(doc, known_hosts.as_ref(), &defaults, &mut cx) {
            sites.push(site);
        }
    }
    check_domain_claims(&docs.sites, &mut cx);
    check_upstream_containers(&docs.sites, &stacks, &mut cx);

    sites.sort_by(|a, b| a.domain.cmp(&b.domain));
    stacks.sort_by(|a, b| (&a.host, &a.name).cmp(&(&b.host, &b.name)));
    (
        Model {
            fleet,
            sites,
            stacks,
        },
        cx.problems,
    )
}

fn validate_fleet(docs: &Documents, cx: &mut Ctx) -> Fleet {
    let Some(first) = docs.fleets.first() else {
        cx.err(
            "fleet.yaml",
            Pos::new(1, 1),
            "no Fleet document found; the repository needs a fleet.yaml listing its hosts",
        );
        return Fleet::default();
    };
    for extra in &docs.fleets[1..] {
        cx.err(
            &extra.file,
            extra.pos,
            format!(
                "a second Fleet document; the fleet is already defined at {}:{}",
                first.file, first.pos
            ),
        );
    }
    let f = &first.spec;
    let file = &first.file;
    let mut hosts = Vec::new();
    let mut seen: HashMap<&str, Pos> = HashMap::new();
    if f.hosts.is_empty() {
        cx.err(file, first.pos, "the fleet lists no hosts");
    }
    for h in &f.hosts {
        if !cx.check(file, &h.id, "host id", names::identifier) {
            continue;
        }
        if let Some(prev) = seen.insert(&h.id.value, h.id.pos) {
            cx.err(
                file,
                h.id.pos,
                format!(
                    "host `{}` is listed twice (first at line {})",
                    h.id.value, prev.line
                ),
            );
            continue;
        }
        if let Some(a) = &h.address {
            let ok =
                a.value.parse::<std::net::IpAddr>().is_ok() || names::dns_name(&a.value).is_ok();
            if !ok {
                cx.err(
                    file,
                    a.pos,
                    format!(
                        "address `{}` is neither an IP address nor a DNS name",
                        a.value.escape_debug()
                    ),
                );
            }
        }
        hosts.push(Host {
            id: h.id.value.clone(),
            address: h.address.as_ref().map(|a| a.value.clone()),
        });
    }
    let mut acme_email = None;
    if let Some(acme) = &f.acme {
        let e = &acme.email;
        let ok = e
            .value
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && names::dns_name(d).is_ok())
            && !e
                .value
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, ';' | '"' | '\''));
        if ok {
            acme_email = Some(e.value.clone());
        } else {
            cx.err(
                file,
                e.pos,
                format!(
                    "acme.email `{}` is not an email address",
                    e.value.escape_debug()
                ),
            );
        }
    }
    if let Some(d) = &f.defaults {
        if let Some(rl) = &d.rate_limit {
            rate_limit(file, rl, cx);
        }
        if let Some(mb) = &d.max_body {
            cx.check(file, mb, "defaults.max_body", names::size);
        }
    }
    Fleet { acme_email, hosts }
}

fn check_host(file: &str, host: &Sp<String>, known: Option<&BTreeSet<&str>>, cx: &mut Ctx) -> bool {
    if !cx.check(file, host, "host", names::identifier) {
        return false;
    }
    if let Some(known) = known
        && !known.contains(host.value.as_str())
    {
        let list: Vec<&str> = known.iter().copied().collect();
        cx.err(
            file,
            host.pos,
            format!(
                "host `{}` is not in the fleet (fleet.yaml lists: {})",
                host.value,
                list.join(", ")
            ),
        );
        return false;
    }
    true
}

fn rate_limit(file: &str, rl: &Sp<crate::manifest::RateLimit>, cx: &mut Ctx) -> Option<RateLimit> {
    let r = rl.value;
    let mut ok = true;
    if !(1..=100_000).contains(&r.rps) {
        cx.err(
            file,
            rl.pos,
            format!("rate_limit.rps {} is outside 1-100000", r.rps),
        );
        ok = false;
    }
    let burst = r.burst.unwrap_or(r.rps.saturating_mul(2));
    if !(0..=1_000_000).contains(&burst) {
        cx.err(
            file,
            rl.pos,
            format!("rate_limit.burst {burst} is outside 0-1000000"),
        );
        ok = false;
    }
    ok.then_some(RateLimit {
        rps: r.rps as u32,
        burst: burst as u32,
    })
}

fn validate_site(
    doc: &Located<SiteSpec>,
    known: Option<&BTreeSet<&str>>,
    defaults: &crate::manifest::Defaults,
    cx: &mut Ctx,
) -> Option<Site> {
    let file = doc.file.as_str();
    let s = &doc.spec;
    let before = cx.errors;

    if cx.check(file, &s.domain, "domain", names::dns_name)
        && crate::render::Renderer::vhost_file(&s.domain).as_str()
            < crate::render::HTTP_CONTEXT_FILE
    {
        // nginx loads conf.d/*.conf in byte order; the log format must come first.
        cx.err(
            file,
            s.domain.pos,
            format!(
                "domain `{}` would sort before vsa's {} in the vhost directory, which nginx must load first",
                s.domain.value,
                crate::render::HTTP_CONTEXT_FILE
            ),
        );
    }
    check_host(file, &s.host, known, cx);
    for a in &s.aliases {
        cx.check(file, a, "alias", names::dns_name);
    }
    if s.aliases.iter().any(|a| a.value == s.domain.value) {
        cx.warn(
            file,
            s.domain.pos,
            "the domain is also listed among its own aliases",
        );
    }

    let upstream = site_upstream(file, &s.upstream, cx);
    let tls = site_tls(doc, cx);
    let auth = s.auth.as_ref().map(|a| site_auth(file, a, cx));

    let rate = match s.rate_limit.as_ref().or(defaults.rate_limit.as_ref()) {
        Some(rl) if s.rate_limit.is_some() => rate_limit(file, rl, cx),
        Some(rl) => rate_limit(
            "fleet.yaml",
            rl,
            &mut Ctx {
                problems: Vec::new(),
                errors: 0,
            },
        ),
        None => None,
    };
    let max_body = match &s.max_body {
        Some(mb) => {
            cx.check(file, mb, "max_body", names::size);
            Some(mb.value.clone())
        }
        None => defaults.max_body.as_ref().map(|m| m.value.clone()),
    };
    let csp = match &s.csp {
        None => Csp::Default,
        Some(c) if c.value == "off" => Csp::Off,
        Some(c) => {
            cx.check(file, c, "csp", names::csp);
            Csp::Custom(c.value.clone())
        }
    };

    let after = cx.errors;
    if after > before {
        return None;
    }
    Some(Site {
        file: file.to_owned(),
        domain: s.domain.value.clone(),
        host: s.host.value.clone(),
        aliases: s.aliases.iter().map(|a| a.value.clone()).collect(),
        upstream: upstream?,
        tls,
        auth,
        rate_limit: rate,
        max_body,
        websockets: s.websockets.as_ref().is_some_and(|w| w.value),
        csp,
    })
}

/// `upstream`: a container and port, or a URL.
fn site_upstream(
    file: &str,
    up: &Sp<crate::manifest::UpstreamSpec>,
    cx: &mut Ctx,
) -> Option<Upstream> {
    match (&up.container, &up.port, &up.url) {
        (Some(c), Some(p), None) => {
            let name_ok = cx.check(file, c, "upstream.container", names::container_name);
            let port_ok = match names::port(p.value) {
                Ok(()) => true,
                Err(e) => {
                    cx.err(file, p.pos, format!("upstream.port {e}"));
                    false
                }
            };
            (name_ok && port_ok).then(|| Upstream::Container {
                name: c.value.clone(),
                port: p.value as u16,
            })
        }
        (None, None, Some(u)) => match names::upstream_url(&u.value) {
            Ok(parsed) => Some(Upstream::Url((u.value.clone(), parsed).into())),
            Err(e) => {
                cx.err(
                    file,
                    u.pos,
                    format!("upstream.url `{}` {e}", u.value.escape_debug()),
                );
                None
            }
        },
        (Some(_), None, None) => {
            cx.err(file, up.pos, "upstream.container needs upstream.port");
            None
        }
        (None, Some(_), None) => {
            cx.err(
                file,
                up.pos,
                "upstream.port needs upstream.container (or use upstream.url)",
            );
            None
        }
        (None, None, None) => {
            cx.err(
                file,
                up.pos,
                "upstream needs either container + port, or url",
            );
            None
        }
        _ => {
            cx.err(
                file,
                up.pos,
                "upstream takes either container + port, or url, not both",
            );
            None
        }
    }
}

/// `tls` (default `acme`), and the CA's limit on the names of one certificate.
fn site_tls(doc: &Located<SiteSpec>, cx: &mut Ctx) -> Tls {
    let file = doc.file.as_str();
    let s = &doc.spec;
    let tls = match s.tls.as_ref().map(|t| t.value.as_str()) {
        None | Some("acme") => Tls::Acme,
        Some("none") => Tls::None,
        Some(other) => {
            let pos = s.tls.as_ref().map_or(doc.pos, |t| t.pos);
            cx.err(
                file,
                pos,
                format!("tls `{}` is not one of: acme, none", other.escape_debug()),
            );
            Tls::Acme
        }
    };
    // Let's Encrypt puts at most 100 names on one certificate.
    if tls == Tls::Acme && 1 + s.aliases.len() > MAX_ACME_NAMES {
        cx.err(
            file,
            s.aliases.get(MAX_ACME_NAMES - 1).map_or(s.domain.pos, |a| a.pos),
            format!(
                "a `tls: acme` site may have at most {MAX_ACME_NAMES} names (domain and aliases), the CA's limit; this one has {}: split it into several sites",
                1 + s.aliases.len()
            ),
        );
    }
    tls
}

/// `auth`: a realm and users with bcrypt hashes (never echoed).
fn site_auth(file: &str, a: &Sp<crate::manifest::AuthSpec>, cx: &mut Ctx) -> Auth {
    let realm = match &a.realm {
        Some(r) => {
            cx.check(file, r, "auth.realm", names::realm);
            r.value.clone()
        }
        None => "Restricted".to_owned(),
    };
    if a.users.is_empty() {
        cx.err(
            file,
            a.pos,
            "auth has no users; remove `auth` or add a user",
        );
    }
    let mut seen: HashMap<&str, u32> = HashMap::new();
    let mut users = Vec::new();
    for u in &a.users {
        cx.check(file, &u.name, "auth user name", names::user_name);
        if let Err(e) = names::bcrypt_hash(&u.bcrypt.value) {
            // Never echo the value: it may be a plaintext password pasted by mistake.
            cx.err(
                file,
                u.bcrypt.pos,
                format!(
                    "auth user `{}`: bcrypt value {e}",
                    u.name.value.escape_debug()
                ),
            );
        }
        if let Some(line) = seen.insert(&u.name.value, u.name.pos.line) {
            cx.err(
                file,
                u.name.pos,
                format!(
                    "auth user `{}` is listed twice (first at line {line})",
                    u.name.value
                ),
            );
        }
        users.push(AuthUser {
            name: u.name.value.clone(),
            bcrypt: u.bcrypt.value.clone(),
        });
    }
    Auth { realm, users }
}

/// A name (domain or alias) may be claimed by one site only, fleet-wide:
/// DNS can only point it at one place.
fn check_domain_claims(sites: &[Located<SiteSpec>], cx: &mut Ctx) {
    let mut claims: HashMap<&str, (&str, Pos)> = HashMap::new();
    for doc in sites {
        let names = std::iter::once(&doc.spec.domain).chain(doc.spec.aliases.iter());
        let mut own = BTreeSet::new();
        for n in names {
            if !own.insert(n.value.as_str()) {
                continue; // a site repeating its own name is a warning, above
            }
            match claims.get(n.value.as_str()) {
                Some((file, pos)) => cx.err(
                    &doc.file,
                    n.pos,
                    format!(
                        "`{}` is already claimed by the site at {file}:{pos}",
                        n.value
                    ),
                ),
                None => {
                    claims.insert(&n.value, (&doc.file, n.pos));
                }
            }
        }
    }
}

/// A site pointing at a container that no stack on its host defines is only
/// a warning: the container may be run by hand (unmanaged).
fn check_upstream_containers(sites: &[Located<SiteSpec>], stacks: &[Stack], cx: &mut Ctx) {
    let defined: BTreeSet<(&str, &str)> = stacks
        .iter()
        .flat_map(|st| {
            st.services
                .values()
                .map(move |svc| (st.host.as_str(), svc.container.as_str()))
        })
        .collect();
    for doc in sites {
        if let Some(c) = &doc.spec.upstream.container
            && !defined.contains(&(doc.spec.host.value.as_str(), c.value.as_str()))
        {
            cx.warn(
                &doc.file,
                c.pos,
                format!(
                    "no stack on host `{}` defines container `{}`; it must be run some other way",
                    doc.spec.host.value, c.value
                ),
            );
        }
    }
}

fn validate_stack(
    doc: &Located<StackSpec>,
    known: Option<&BTreeSet<&str>>,
    cx: &mut Ctx,
) -> Option<Stack> {
    let file = doc.file.as_str();
    let s = &doc.spec;
    let before = cx.errors;
    cx.check(file, &s.name, "stack name", names::identifier);
    check_host(file, &s.host, known, cx);
    if s.services.is_empty() {
        cx.err(file, s.name.pos, "the stack has no services");
    }
    let mut services = BTreeMap::new();
    for (svc_name, svc) in &s.services {
        let pos = svc.pos;
        if let Err(e) = names::identifier(svc_name) {
            cx.err(
                file,
                pos,
                format!("service name `{}` {e}", svc_name.escape_debug()),
            );
        }
        let container = format!("{}-{}", s.name.value, svc_name);
        if let Err(e) = names::container_name(&container) {
            cx.err(
                file,
                pos,
                format!("container name `{}` {e}", container.escape_debug()),
            );
        }
        cx.check(file, &svc.image, "image", names::image_ref);
        for v in &svc.volumes {
            check_volume(file, v, cx);
        }
        for p in &svc.ports {
            if let Err(e) = parse_port_mapping(&p.value) {
                cx.err(
                    file,
                    p.pos,
                    format!("ports entry `{}` {e}", p.value.escape_debug()),
                );
            }
        }
        let restart = match &svc.restart {
            None => "unless-stopped".to_owned(),
            Some(r) => {
                let ok = matches!(
                    r.value.as_str(),
                    "no" | "always" | "unless-stopped" | "on-failure"
                ) || r
                    .value
                    .strip_prefix("on-failure:")
                    .is_some_and(|n| n.parse::<u32>().is_ok());
                if !ok {
                    cx.err(
                        file,
                        r.pos,
                        format!(
                            "restart `{}` is not one of: no, always, on-failure[:N], unless-stopped",
                            r.value.escape_debug()
                        ),
                    );
                }
                r.value.clone()
            }
        };
        for d in &svc.depends_on {
            if !s.services.contains_key(&d.value) {
                cx.err(
                    file,
                    d.pos,
                    format!(
                        "depends_on `{}` is not a service of stack `{}`",
                        d.value, s.name.value
                    ),
                );
            } else if &d.value == svc_name {
                cx.err(file, d.pos, "a service cannot depend on itself");
            }
        }
        for n in &svc.networks {
            if cx.check(file, n, "network", names::container_name)
                && matches!(n.value.as_str(), "host" | "none")
            {
                cx.err(
                    file,
                    n.pos,
                    format!(
                        "network `{}` would take the container off the shared network (and `host` into the host's own); vsa runs containers on docker.network and the networks named here",
                        n.value
                    ),
                );
            }
        }
        let env_file = svc
            .env_file
            .as_ref()
            .map(|e| e.to_vec())
            .unwrap_or_default();
        for e in &env_file {
            if !e.starts_with('/') {
                cx.err(
                    file,
                    pos,
                    format!(
                        "env_file `{}` must be an absolute path on the host",
                        e.escape_debug()
                    ),
                );
            }
        }
        let healthcheck = svc.healthcheck.as_ref().map(|h| {
            let mut dur = |v: &Option<String>, what: &str| {
                v.as_ref().and_then(|d| match names::parse_duration(d) {
                    Ok(ms) => Some(ms),
                    Err(e) => {
                        cx.err(file, pos, format!("healthcheck.{what}: {e}"));
                        None
                    }
                })
            };
            Healthcheck {
                test: h.test.to_vec(),
                interval_ms: dur(&h.interval, "interval"),
                timeout_ms: dur(&h.timeout, "timeout"),
                start_period_ms: dur(&h.start_period, "start_period"),
                retries: h.retries.map(|r| r.clamp(0, 1000) as u32),
            }
        });
        if let Some(KeyValues::List(l)) = &svc.environment
            && let Some(bad) = l
                .iter()
                .find(|kv| kv.split('=').next().is_none_or(str::is_empty))
        {
            cx.err(
                file,
                pos,
                format!("environment entry `{}` has no name", bad.escape_debug()),
            );
        }
        let keys: Vec<String> = match &svc.environment {
            Some(KeyValues::Map(m)) => m.keys().cloned().collect(),
            Some(KeyValues::List(l)) => l
                .iter()
                .filter_map(|kv| kv.split('=').next().filter(|k| !k.is_empty()))
                .map(str::to_owned)
                .collect(),
            None => Vec::new(),
        };
        for k in keys.iter().filter(|k| names::env_name(k).is_err()) {
            cx.err(
                file,
                pos,
                format!(
                    "environment name `{}` is not a variable name ([A-Za-z_][A-Za-z0-9_]*)",
                    k.escape_debug()
                ),
            );
        }
        services.insert(
            svc_name.clone(),
            Service {
                container,
                image: svc.image.value.clone(),
                command: svc.command.as_ref().map(|c| c.to_vec()),
                environment: svc
                    .environment
                    .as_ref()
                    .map(KeyValues::to_map)
                    .unwrap_or_default(),
                env_file,
                volumes: svc.volumes.iter().map(|v| v.value.clone()).collect(),
                ports: svc.ports.iter().map(|v| v.value.clone()).collect(),
                healthcheck,
                restart,
                labels: svc
                    .labels
                    .as_ref()
                    .map(KeyValues::to_map)
                    .unwrap_or_default(),
                depends_on: svc.depends_on.iter().map(|v| v.value.clone()).collect(),
                networks: svc.networks.iter().map(|v| v.value.clone()).collect(),
            },
        );
    }
    if let Some(cycle) = dependency_cycle(&services) {
        cx.err(
            file,
            s.name.pos,
            format!("depends_on forms a cycle: {}", cycle.join(" -> ")),
        );
    }
    let after = cx.errors;
    (after == before).then(|| Stack {
        file: file.to_owned(),
        name: s.name.value.clone(),
        host: s.host.value.clone(),
        services,
    })
}

fn dependency_cycle(services: &BTreeMap<String, Service>) -> Option<Vec<String>> {
    fn visit<'a>(
        n: &'a str,
        services: &'a BTreeMap<String, Service>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| *s == n) {
            let mut cycle: Vec<String> = stack[i..].iter().map(|s| s.to_string()).collect();
            cycle.push(n.to_owned());
            return Some(cycle);
        }
        if !done.insert(n) {
            return None;
        }
        stack.push(n);
        if let Some(svc) = services.get(n) {
            for d in &svc.depends_on {
                if d != n
                    && let Some(c) = visit(d, services, stack, done)
                {
                    return Some(c);
                }
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    for n in services.keys() {
        let mut stack = Vec::new();
        done.remove(n.as_str());
        if let Some(c) = visit(n, services, &mut stack, &mut done) {
            return Some(c);
        }
    }
    None
}

/// Let's Encrypt's limit of names on one certificate.
pub const MAX_ACME_NAMES: usize = 100;

fn check_volume(file: &str, v: &Sp<String>, cx: &mut Ctx) {
    let parts: Vec<&str> = v.value.split(':').collect();
    let ok = match parts.as_slice() {
        [dst] => dst.starts_with('/'),
        [src, dst] | [src, dst, _] => {
            !src.is_empty()
                && dst.starts_with('/')
                && parts.get(2).is_none_or(|m| {
                    m.split(',').all(|o| {
                        matches!(
                            o,
                            "ro" | "rw" | "z" | "Z" | "nocopy" | "cached" | "delegated"
                        )
                    })
                })
        }
        _ => false,
    };
    let climbs = parts
        .iter()
        .take(2)
        .any(|p| p.split('/').any(|c| c == ".."));
    if climbs {
        cx.err(
            file,
            v.pos,
            format!(
                "volume `{}` has a `..` component: give the path as it is",
                v.value.escape_debug()
            ),
        );
        return;
    }
    if !ok || v.value.chars().any(|c| c.is_control()) {
        cx.err(
            file,
            v.pos,
            format!(
                "volume `{}` is not `source:/target[:ro|rw]` (or an anonymous `/target`)",
                v.value.escape_debug()
            ),
        );
    }
}

/// A published port: `[ip:][host:]container[/proto]`, returning
/// `(ip, host port, container port, proto)`.
pub fn parse_port_mapping(s: &str) -> Result<(String, Option<u16>, u16, String), String> {
    let (rest, proto) = match s.rsplit_once('/') {
        Some((r, p)) if p == "tcp" || p == "udp" => (r, p.to_owned()),
        Some((_, p)) => return Err(format!("has protocol `{p}`, expected tcp or udp")),
        None => (s, "tcp".to_owned()),
    };
    let num = |p: &str| -> Result<u16, String> {
        let n: i64 = p
            .parse()
            .map_err(|_| format!("`{p}` is not a port number"))?;
        names::port(n)?;
        Ok(n as u16)
    };
    // An IPv6 host address is written in brackets.
    let (ip, rest) = if let Some(r) = rest.strip_prefix('[') {
        let (ip, after) = r.split_once("]:").ok_or("has an unclosed `[`")?;
        (ip.to_owned(), after)
    } else {
        (String::new(), rest)
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (ip, host, container) = match (ip.is_empty(), parts.as_slice()) {
        (true, [c]) => (String::new(), None, num(c)?),
        (true, [h, c]) => (String::new(), Some(num(h)?), num(c)?),
        (true, [ip, h, c]) => {
            ip.parse::<std::net::IpAddr>()
                .map_err(|_| format!("`{ip}` is not an IP address"))?;
            (ip.to_string(), Some(num(h)?), num(c)?)
        }
        (false, [h, c]) => (ip, Some(num(h)?), num(c)?),
        _ => return Err("is not `[ip:][host:]container[/proto]`".into()),
    };
    Ok((ip, host, container, proto))
}

/// Across stacks: container names and published host ports are unique per
/// host, and so are stack names.
fn check_stacks_across(docs: &Documents, cx: &mut Ctx) {
    let mut containers: HashMap<(String, String), (String, Pos)> = HashMap::new();
    let mut stack_names: HashMap<(String, String), (String, Pos)> = HashMap::new();
    let mut ports: HashMap<(String, String, u16, String), (String, Pos)> = HashMap::new();
    for doc in &docs.stacks {
        let s = &doc.spec;
        let host = s.host.value.clone();
        if let Some((f, p)) = stack_names.get(&(host.clone(), s.name.value.clone())) {
            cx.err(
                &doc.file,
                s.name.pos,
                format!(
                    "stack `{}` is already defined for host `{host}` at {f}:{p}",
                    s.name.value
                ),
            );
        } else {
            stack_names.insert(
                (host.clone(), s.name.value.clone()),
                (doc.file.clone(), s.name.pos),
            );
        }
        for (svc_name, svc) in &s.services {
            let container = format!("{}-{}", s.name.value, svc_name);
            match containers.get(&(host.clone(), container.clone())) {
                Some((f, p)) => cx.err(
                    &doc.file,
                    svc.pos,
                    format!(
                        "container name `{container}` is already used on host `{host}` by {f}:{p}"
                    ),
                ),
                None => {
                    containers.insert((host.clone(), container), (doc.file.clone(), svc.pos));
                }
            }
            for p in &svc.ports {
                if let Ok((ip, Some(hp), _, proto)) = parse_port_mapping(&p.value) {
                    let wildcard = ip.is_empty() || ip == "0.0.0.0" || ip == "::";
                    let clash = ports.iter().find(|((h, i, port, pr), _)| {
                        *h == host
                            && *port == hp
                            && *pr == proto
                            && (wildcard || i.is_empty() || *i == ip || i == "0.0.0.0" || i == "::")
                    });
                    if let Some((_, (f, pos))) = clash {
                        cx.err(
                            &doc.file,
                            p.pos,
                            format!("host port {hp}/{proto} is already published on host `{host}` by {f}:{pos}"),
                        );
                    } else {
                        ports.insert((host.clone(), ip, hp, proto), (doc.file.clone(), p.pos));
                    }
                }
            }
        }
    }
}
