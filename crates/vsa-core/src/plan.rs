//! `plan(desired, observed) -> Plan`: the one path every change goes through.
//!
//! `vsactl diff`, `apply --dry-run`, `apply`, the daemon and the dashboard
//! all compute, render or execute this same [`Plan`]. It is a pure function:
//! the observed state is gathered by the adapters beforehand, and nothing
//! here reads a file or a clock.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::model::{Model, Site};
use crate::render::{HTTP_CONTEXT_FILE, HTTP_CONTEXT_NAME, RenderError, Renderer};

/// A file as found on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedFile {
    pub content: String,
    /// The file starts with the `# managed-by: vsa` line.
    pub managed: bool,
}

/// What the adapters saw on the host. File maps are keyed by file name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// `*.conf` files in the vhost directory.
    pub vhosts: BTreeMap<String, ObservedFile>,
    /// `*.htpasswd` files in the htpasswd directory.
    pub htpasswd: BTreeMap<String, ObservedFile>,
    /// Domains whose `fullchain.pem` and `privkey.pem` are both on disk.
    pub certs: BTreeSet<String>,
    /// Domains whose access log file exists.
    pub access_logs: BTreeSet<String>,
    /// Certificates read off `live/`, by directory name.
    pub cert_info: BTreeMap<String, crate::certs::CertInfo>,
    /// Domains whose certificate vsa issued (from the state store): only
    /// those are ever planned for deletion.
    pub vsa_certs: BTreeSet<String>,
    /// When the host was observed, in seconds since the Unix epoch.
    pub now: i64,
    /// The Docker engine; `None` when it is not reachable (containers are
    /// then reported by nobody and planned for nothing).
    pub docker: Option<crate::docker::ObservedDocker>,
    /// Why the Docker engine could not be observed.
    pub docker_error: Option<String>,
    /// The env files the stacks name: path → digest of the content, or why
    /// it cannot be read.
    pub env_files: BTreeMap<String, Result<String, String>>,
    /// What vsa's probe in nginx answered: the generation of the
    /// configuration nginx serves, or why it did not answer. `None` when
    /// nobody asked (no stamped http-context file on disk, or no host).
    pub nginx_served: Option<Result<String, String>>,
    /// This vsa's instance id (`vsa.instance`); `None` before it has one.
    pub instance: Option<String>,
}

/// The kinds of resources of DESIGN §5 (contract).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    Network,
    Container,
    Htpasswd,
    Vhost,
    Cert,
    AccessLog,
}

impl ResourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Network => "network",
            ResourceKind::Container => "container",
            ResourceKind::Htpasswd => "htpasswd",
            ResourceKind::Vhost => "vhost",
            ResourceKind::Cert => "cert",
            ResourceKind::AccessLog => "access_log",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }
}

/// What a failure, a backoff or a status is about: the unit the engine
/// applies whole. A site's vhost, htpasswd file and access log are one
/// site; its certificate is its own (a CA that does not answer must not
/// hold the site's files back); nginx's reload is nginx's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitKind {
    Site,
    Cert,
    Network,
    Container,
    Nginx,
}

impl UnitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UnitKind::Site => "site",
            UnitKind::Cert => "cert",
            UnitKind::Network => "network",
            UnitKind::Container => "container",
            UnitKind::Nginx => "nginx",
        }
    }
}

/// A resource by kind and name: a network called `nginx` is not nginx.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourceId {
    pub kind: UnitKind,
    pub name: String,
}

impl ResourceId {
    pub fn new(kind: UnitKind, name: impl Into<String>) -> ResourceId {
        ResourceId {
            kind,
            name: name.into(),
        }
    }

    pub fn site(name: impl Into<String>) -> ResourceId {
        ResourceId::new(UnitKind::Site, name)
    }

    pub fn cert(name: impl Into<String>) -> ResourceId {
        ResourceId::new(UnitKind::Cert, name)
    }

    pub fn container(name: impl Into<String>) -> ResourceId {
        ResourceId::new(UnitKind::Container, name)
    }

    pub fn network(name: impl Into<String>) -> ResourceId {
        ResourceId::new(UnitKind::Network, name)
    }

    /// nginx itself: its test and reload.
    pub fn nginx() -> ResourceId {
        ResourceId::new(UnitKind::Nginx, "nginx")
    }

    /// The site a site-scoped id is about (a site's own files or its
    /// certificate).
    pub fn site_name(&self) -> Option<&str> {
        matches!(self.kind, UnitKind::Site | UnitKind::Cert).then_some(self.name.as_str())
    }
}

impl std::fmt::Display for ResourceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            UnitKind::Nginx => f.write_str("nginx"),
            kind => write!(f, "{} {}", kind.as_str(), self.name),
        }
    }
}

/// How a container is replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replace {
    /// Nothing is in the way: create it.
    Nothing,
    /// This instance's container with another spec: recreate it.
    Ours,
    /// vsa made it for this host before containers carried
    /// `vsa.instance`: adopt it (recreate it as this instance's).
    Legacy,
}

/// What executing a change does. Never serialized: the JSON contract is
/// the rest of [`Change`], and this may hold hashes and specs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Op {
    /// A change read back from JSON: there is nothing to execute.
    #[default]
    None,
    /// Write this content to the change's file (atomically).
    WriteFile {
        content: String,
    },
    /// Remove the change's file, if it is still vsa's.
    RemoveFile,
    /// Create the change's file empty, if it is missing (an access log).
    CreateFile,
    CreateNetwork,
    /// Pull the image if missing; create (or replace) and start.
    RunContainer {
        spec: Box<crate::docker::ContainerSpec>,
        replace: Replace,
        /// A site points at it: a replaced one has a new address, which
        /// nginx looks up again on a reload.
        fronted: bool,
    },
    /// Start the stopped container (its spec is current).
    StartContainer {
        spec: Box<crate::docker::ContainerSpec>,
    },
    /// Remove the container (never its volumes).
    RemoveContainer,
    /// Order a certificate for these names (the site's domain first).
    IssueCert {
        names: Vec<String>,
    },
    /// Remove the certificate vsa issued.
    DeleteCert,
}

/// One change the host needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub kind: ResourceKind,
    pub name: String,
    pub action: Action,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    /// The file the change writes or removes, relative to its directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// What executing it does; never serialized.
    #[serde(skip)]
    pub op: Op,
}

impl Change {
    /// The unit this change belongs to.
    pub fn resource(&self) -> ResourceId {
        match self.kind {
            ResourceKind::Vhost | ResourceKind::Htpasswd | ResourceKind::AccessLog => {
                ResourceId::site(&self.name)
            }
            ResourceKind::Cert => ResourceId::cert(&self.name),
            ResourceKind::Container => ResourceId::container(&self.name),
            ResourceKind::Network => ResourceId::network(&self.name),
        }
    }

    /// The content a file change writes.
    pub fn content(&self) -> Option<&str> {
        match &self.op {
            Op::WriteFile { content } => Some(content),
            _ => None,
        }
    }

    /// The container spec a container change runs or starts.
    pub fn spec(&self) -> Option<&crate::docker::ContainerSpec> {
        match &self.op {
            Op::RunContainer { spec, .. } | Op::StartContainer { spec } => Some(spec),
            _ => None,
        }
    }

    /// Whether it changes nginx's configuration (a vhost or htpasswd file).
    pub fn touches_config(&self) -> bool {
        matches!(self.kind, ResourceKind::Vhost | ResourceKind::Htpasswd)
    }

    /// The audit action executing it records.
    pub fn event_kind(&self) -> crate::event::EventKind {
        use crate::event::EventKind as E;
        match (self.kind, &self.op) {
            (ResourceKind::AccessLog, _) => E::AccessLogCreate,
            (ResourceKind::Vhost, Op::RemoveFile) => E::VhostDelete,
            (ResourceKind::Vhost, _) => E::VhostWrite,
            (ResourceKind::Htpasswd, Op::RemoveFile) => E::HtpasswdDelete,
            (ResourceKind::Htpasswd, _) => E::HtpasswdWrite,
            (ResourceKind::Network, _) => E::NetworkCreate,
            (ResourceKind::Container, Op::StartContainer { .. }) => E::ContainerStart,
            (ResourceKind::Container, Op::RemoveContainer) => E::ContainerDelete,
            (
                ResourceKind::Container,
                Op::RunContainer {
                    replace: Replace::Legacy,
                    ..
                },
            ) => E::ContainerAdopt,
            (
                ResourceKind::Container,
                Op::RunContainer {
                    replace: Replace::Ours,
                    ..
                },
            ) => E::ContainerRecreate,
            (ResourceKind::Container, _) => match self.action {
                Action::Update => E::ContainerRecreate,
                Action::Delete => E::ContainerDelete,
                Action::Create => E::ContainerCreate,
            },
            (ResourceKind::Cert, _) => match self.action {
                Action::Create => E::CertIssue,
                Action::Update => E::CertRenew,
                Action::Delete => E::CertDelete,
            },
        }
    }
}

/// A file vsa found but does not own; reported, never changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unmanaged {
    pub kind: ResourceKind,
    pub file: String,
}

/// A change vsa would make but must not: the file in the way is not ours.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    pub kind: ResourceKind,
    pub name: String,
    pub file: String,
    pub message: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub create: usize,
    pub update: usize,
    pub delete: usize,
}

/// The plan of DESIGN §5 (contract), plus `unmanaged` and `conflicts`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub host: String,
    pub commit: Option<String>,
    pub changes: Vec<Change>,
    pub summary: Summary,
    #[serde(default)]
    pub unmanaged: Vec<Unmanaged>,
    #[serde(default)]
    pub conflicts: Vec<Conflict>,
    /// Why nginx must be reloaded although no file changes: it does not
    /// serve the configuration on disk (a reload that did not take effect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<String>,
}

impl Plan {
    /// Nothing to change, nothing in the way, and nginx serves what is on disk.
    pub fn in_sync(&self) -> bool {
        self.changes.is_empty() && self.conflicts.is_empty() && self.reload.is_none()
    }

    /// A digest of the whole plan but its commit: equal digests, equal
    /// plans (what `vsactl apply` checks before executing the plan the
    /// user confirmed).
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.host.hash(&mut h);
        self.reload.hash(&mut h);
        for c in &self.changes {
            (
                c.kind,
                &c.name,
                c.action,
                &c.reason,
                &c.diff,
                &c.file,
                c.content(),
            )
                .hash(&mut h);
            c.spec().map(|s| s.hash()).hash(&mut h);
        }
        for c in &self.conflicts {
            (c.kind, &c.name, &c.file, &c.message).hash(&mut h);
        }
        for u in &self.unmanaged {
            (u.kind, &u.file).hash(&mut h);
        }
        h.finish()
    }

    /// A digest of what the plan asks of one resource (its changes, with
    /// their content): when it moves, the resource's desired or observed
    /// state changed, and a failure of it is worth trying again at once.
    pub fn fingerprint_of(&self, id: &ResourceId) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        if id.kind == UnitKind::Nginx {
            self.reload.hash(&mut h);
        }
        for c in self.changes.iter().filter(|c| c.resource() == *id) {
            (c.kind, c.action, &c.reason, &c.diff, c.content()).hash(&mut h);
            if let Some(spec) = c.spec() {
                spec.hash().hash(&mut h);
            }
        }
        h.finish()
    }

    fn finish(mut self) -> Plan {
        self.changes.sort_by_key(|c| (phase(c), c.name.clone()));
        self.summary = Summary::default();
        for c in &self.changes {
            match c.action {
                Action::Create => self.summary.create += 1,
                Action::Update => self.summary.update += 1,
                Action::Delete => self.summary.delete += 1,
            }
        }
        self
    }
}

/// Order of execution: what a vhost refers to exists before the vhost, and
/// a vhost is gone before what it referred to.
fn phase(c: &Change) -> u8 {
    match (c.kind, c.action) {
        (ResourceKind::Network, Action::Create | Action::Update) => 0,
        (ResourceKind::Container, Action::Create | Action::Update) => 1,
        (ResourceKind::AccessLog, _) => 2,
        (ResourceKind::Htpasswd, Action::Create | Action::Update) => 3,
        (ResourceKind::Cert, Action::Create | Action::Update) => 4,
        (ResourceKind::Vhost, Action::Create | Action::Update) if c.name == HTTP_CONTEXT_NAME => 5,
        (ResourceKind::Vhost, Action::Create | Action::Update) => 6,
        (ResourceKind::Vhost, Action::Delete) if c.name != HTTP_CONTEXT_NAME => 7,
        (ResourceKind::Vhost, Action::Delete) => 8,
        (ResourceKind::Htpasswd, Action::Delete) => 9,
        (ResourceKind::Cert, Action::Delete) => 10,
        (ResourceKind::Container, Action::Delete) => 11,
        (ResourceKind::Network, Action::Delete) => 12,
    }
}

/// Computes the plan for one host.
pub fn plan(
    model: &Model,
    host: &str,
    observed: &Observed,
    renderer: &Renderer,
    commit: Option<String>,
) -> Result<Plan, RenderError> {
    let sites: Vec<&Site> = model.sites_for(host).collect();
    let mut p = Plan {
        host: host.to_owned(),
        commit,
        changes: Vec::new(),
        summary: Summary::default(),
        unmanaged: Vec::new(),
        conflicts: Vec::new(),
        reload: None,
    };

    // The http-context file, then one vhost per site. Once vsa manages
    // nginx on a host, the file stays when the last site goes: its probe
    // confirms that nginx stopped serving it.
    let on_disk = observed.vhosts.get(HTTP_CONTEXT_FILE).filter(|f| f.managed);
    let generation = on_disk.and_then(|f| crate::render::generation_of(&f.content));
    // A file no reload of vsa's ever stamped (put in place by hand) has
    // nothing to compare with what nginx serves.
    let stamped = generation.filter(|g| *g != crate::render::NO_GENERATION);
    let mut desired_vhosts: BTreeMap<String, (String, String)> = BTreeMap::new();
    if !sites.is_empty() || on_disk.is_some() {
        desired_vhosts.insert(
            HTTP_CONTEXT_FILE.to_owned(),
            (
                HTTP_CONTEXT_NAME.to_owned(),
                renderer.http_context(
                    sites.iter().copied(),
                    generation.unwrap_or(crate::render::NO_GENERATION),
                )?,
            ),
        );
    }
    // Converged means served: files on disk that nginx did not load are
    // not converged, whatever their content.
    if let (Some(generation), Some(served)) = (stamped, &observed.nginx_served) {
        p.reload = match served {
            Ok(g) if g == generation => None,
            Ok(g) => Some(format!(
                "nginx serves configuration {g}, not the one on disk ({generation}): its last reload did not take effect"
            )),
            Err(e) => Some(format!("nginx does not answer vsa's probe: {e}")),
        };
    }
    let rendered = render_all(renderer, &sites, observed);
    for (site, content) in sites.iter().zip(rendered) {
        desired_vhosts.insert(
            Renderer::vhost_file(&site.domain),
            (site.domain.clone(), content?),
        );
    }
    file_changes(
        &mut p,
        ResourceKind::Vhost,
        &desired_vhosts,
        &observed.vhosts,
        ".conf",
        text_diff,
    );
    // Say why a TLS vhost changes when it is only the certificate's coming
    // or going: that is expected, not drift.
    for c in p
        .changes
        .iter_mut()
        .filter(|c| c.kind == ResourceKind::Vhost && c.action == Action::Update)
    {
        let Some(site) = sites.iter().find(|s| s.domain == c.name) else {
            continue;
        };
        let has_cert = observed.certs.contains(&site.domain);
        let live = c.file.as_ref().and_then(|f| observed.vhosts.get(f));
        if site.tls == crate::model::Tls::Acme
            && live.is_some_and(|l| {
                renderer
                    .vhost(site, !has_cert)
                    .is_ok_and(|other| other == l.content)
            })
        {
            c.reason = if has_cert {
                "certificate available".into()
            } else {
                "certificate missing".into()
            };
        }
    }

    let mut desired_htpasswd = BTreeMap::new();
    for site in &sites {
        if let Some(content) = renderer.htpasswd(site) {
            desired_htpasswd.insert(
                Renderer::htpasswd_file(&site.domain),
                (site.domain.clone(), content),
            );
        }
    }
    file_changes(
        &mut p,
        ResourceKind::Htpasswd,
        &desired_htpasswd,
        &observed.htpasswd,
        ".htpasswd",
        htpasswd_diff,
    );

    cert_changes(
        &mut p,
        &sites,
        observed,
        renderer.settings().renew_before_days,
    );
    docker_changes(
        &mut p,
        model,
        host,
        &sites,
        observed,
        &renderer.settings().docker_network,
    );

    for site in &sites {
        if !observed.access_logs.contains(&site.domain) {
            p.changes.push(Change {
                kind: ResourceKind::AccessLog,
                name: site.domain.clone(),
                action: Action::Create,
                reason: "missing".into(),
                diff: None,
                file: Some(Renderer::access_log_file(&site.domain)),
                op: Op::CreateFile,
            });
        }
    }
    fail_closed(&mut p);
    Ok(p.finish())
}

/// A site whose htpasswd file is blocked (someone else's file is in the
/// way) must not go live with its vhost: nginx would check passwords
/// against that file. Its vhost and certificate wait; its previous vhost,
/// if any, stays as it is.
fn fail_closed(p: &mut Plan) {
    let blocked: BTreeSet<String> = p
        .conflicts
        .iter()
        .filter(|c| c.kind == ResourceKind::Htpasswd)
        .map(|c| c.name.clone())
        .collect();
    if blocked.is_empty() {
        return;
    }
    p.changes.retain(|c| {
        !(blocked.contains(&c.name)
            && matches!(c.kind, ResourceKind::Vhost | ResourceKind::Cert)
            && c.action != Action::Delete)
    });
    for name in blocked {
        p.conflicts.push(Conflict {
            kind: ResourceKind::Vhost,
            file: Renderer::vhost_file(&name),
            message: format!(
                "not written: the site's htpasswd file is blocked, and nginx would check its passwords against someone else's file; its previous vhost (if any) stays until {} is vsa's",
                Renderer::htpasswd_file(&name)
            ),
            name,
        });
    }
}

/// `tls: acme` sites without a usable certificate for all their names, or
/// inside the renewal window; certificates vsa issued for sites no longer
/// here. Certificates issued by someone else (certbot) are adopted as they
/// are while they are valid and cover the site.
fn cert_changes(p: &mut Plan, sites: &[&Site], observed: &Observed, renew_before_days: u32) {
    let change = |name: &str, action, reason: String, op| Change {
        kind: ResourceKind::Cert,
        name: name.to_owned(),
        action,
        reason,
        diff: None,
        file: Some(format!("live/{name}")),
        op,
    };
    for site in sites.iter().filter(|s| s.tls == crate::model::Tls::Acme) {
        let issue = || Op::IssueCert {
            names: std::iter::once(&site.domain)
                .chain(&site.aliases)
                .cloned()
                .collect(),
        };
        let Some(c) = observed.cert_info.get(&site.domain) else {
            p.changes.push(change(
                &site.domain,
                Action::Create,
                "missing".into(),
                issue(),
            ));
            continue;
        };
        let uncovered: Vec<&str> = std::iter::once(&site.domain)
            .chain(&site.aliases)
            .filter(|n| !c.covers(n))
            .map(String::as_str)
            .collect();
        let reason = if let Some(e) = &c.error {
            Some(format!("unreadable: {e}"))
        } else if c.key_matches != Some(true) {
            Some("privkey.pem does not match the certificate".into())
        } else if c.status == crate::certs::CertStatus::Expired {
            Some("expired".into())
        } else if !uncovered.is_empty() {
            Some(format!("does not cover {}", uncovered.join(", ")))
        } else if renew_due(c, observed.now, renew_before_days) {
            Some(format!("renew: {} day(s) left", c.days_left))
        } else {
            None
        };
        if let Some(reason) = reason {
            p.changes
                .push(change(&site.domain, Action::Update, reason, issue()));
        }
    }
    for domain in &observed.vsa_certs {
        let wanted = sites
            .iter()
            .any(|s| s.domain == *domain && s.tls == crate::model::Tls::Acme);
        if !wanted && observed.cert_info.contains_key(domain) {
            p.changes.push(change(
                domain,
                Action::Delete,
                "not desired".into(),
                Op::DeleteCert,
            ));
        }
    }
}

/// Networks and containers of the host's stacks (when the engine is
/// reachable): create what is missing, recreate what differs from its spec
/// hash (with a field-level diff), start what stopped, delete the managed
/// containers of this host no longer desired. Unmanaged containers are
/// never touched; a stack with an unreadable env file is blocked whole.
fn docker_changes(
    p: &mut Plan,
    model: &Model,
    host: &str,
    sites: &[&Site],
    observed: &Observed,
    network: &str,
) {
    use crate::docker::ContainerSpec;
    let Some(docker) = &observed.docker else {
        // Stacks without an engine: reported, not managed.
        for stack in model.stacks_for(host) {
            p.conflicts.push(Conflict {
                kind: ResourceKind::Container,
                name: stack.name.clone(),
                file: stack.file.clone(),
                message: format!(
                    "stack `{}` is not managed: the Docker engine cannot be reached ({})",
                    stack.name,
                    observed.docker_error.as_deref().unwrap_or("not configured")
                ),
            });
        }
        return;
    };
    let change = |kind, name: &str, action, reason: String, diff, op| Change {
        kind,
        name: name.to_owned(),
        action,
        reason,
        diff,
        file: None,
        op,
    };
    let owner = Ownership {
        host,
        instance: observed.instance.as_deref(),
    };
    let ours = |c: &crate::docker::ObservedContainer| owner.ours(c);
    let legacy = |c: &crate::docker::ObservedContainer| owner.legacy(c);
    let mut wanted_networks: BTreeSet<String> = BTreeSet::new();
    let mut desired: BTreeSet<String> = BTreeSet::new();
    for stack in model.stacks_for(host) {
        desired.extend(stack.services.values().map(|svc| svc.container.clone()));
        let Some(digests) = env_digests(p, stack, observed) else {
            continue;
        };
        for (service_name, svc) in &stack.services {
            let spec = ContainerSpec::new(stack, service_name, svc, network, &digests);
            wanted_networks.extend(spec.networks.iter().cloned());
            let users: Vec<&str> = sites
                .iter()
                .filter(|s| {
                    matches!(&s.upstream, crate::model::Upstream::Container { name, .. } if *name == spec.name)
                })
                .map(|s| s.domain.as_str())
                .collect();
            let shared = if users.len() > 1 {
                format!(" (shared by sites {})", users.join(", "))
            } else {
                String::new()
            };
            let json = spec.to_json();
            let run = |replace| Op::RunContainer {
                spec: Box::new(spec.clone()),
                replace,
                fronted: !users.is_empty(),
            };
            match docker.containers.get(&spec.name) {
                None => p.changes.push(change(
                    ResourceKind::Container,
                    &spec.name,
                    Action::Create,
                    format!("missing{shared}"),
                    Some(text_diff("", &json)),
                    run(Replace::Nothing),
                )),
                Some(c) if !c.managed => p.conflicts.push(Conflict {
                    kind: ResourceKind::Container,
                    name: spec.name.clone(),
                    file: spec.name.clone(),
                    message: format!(
                        "a container named {} exists but is not managed by vsa (no label {}=true); remove or rename it to let vsa create its own",
                        spec.name,
                        crate::docker::LABEL_MANAGED
                    ),
                }),
                Some(c) if legacy(c) => p.changes.push(change(
                    ResourceKind::Container,
                    &spec.name,
                    Action::Update,
                    format!(
                        "made by vsa before containers carried {}: adopt (recreate as this instance's){shared}",
                        crate::docker::LABEL_INSTANCE
                    ),
                    Some(text_diff(c.spec.as_deref().unwrap_or(""), &json)),
                    run(Replace::Legacy),
                )),
                Some(c) if !ours(c) => p.conflicts.push(Conflict {
                    kind: ResourceKind::Container,
                    name: spec.name.clone(),
                    file: spec.name.clone(),
                    message: format!(
                        "a container named {} belongs to another vsa ({}={}, {}={}); it is never touched: give one of the stacks another name",
                        spec.name,
                        crate::docker::LABEL_HOST,
                        c.host.as_deref().unwrap_or("-"),
                        crate::docker::LABEL_INSTANCE,
                        c.instance.as_deref().unwrap_or("-"),
                    ),
                }),
                Some(c) if c.spec_hash.as_deref() != Some(spec.hash().as_str()) => {
                    p.changes.push(change(
                        ResourceKind::Container,
                        &spec.name,
                        Action::Update,
                        format!("spec changed: recreate{shared}"),
                        Some(text_diff(c.spec.as_deref().unwrap_or(""), &json)),
                        run(Replace::Ours),
                    ))
                }
                Some(c) if !c.running => p.changes.push(change(
                    ResourceKind::Container,
                    &spec.name,
                    Action::Update,
                    format!("stopped: start{shared}"),
                    None,
                    Op::StartContainer {
                        spec: Box::new(spec.clone()),
                    },
                )),
                Some(_) => {}
            }
        }
    }
    for net in &wanted_networks {
        if !docker.networks.contains(net) {
            p.changes.push(change(
                ResourceKind::Network,
                net,
                Action::Create,
                "missing".into(),
                None,
                Op::CreateNetwork,
            ));
        }
    }
    undesired_containers(p, docker, &desired, network, &owner);
}

/// Ownership is per instance (DESIGN §2): only containers carrying this
/// instance's id are ours to recreate or delete; those vsa made for this
/// host before the label existed are adopted once, on purpose.
struct Ownership<'a> {
    host: &'a str,
    instance: Option<&'a str>,
}

impl Ownership<'_> {
    fn ours(&self, c: &crate::docker::ObservedContainer) -> bool {
        c.managed
            && c.host.as_deref() == Some(self.host)
            && self.instance.is_some()
            && c.instance.as_deref() == self.instance
    }

    fn legacy(&self, c: &crate::docker::ObservedContainer) -> bool {
        c.managed && c.host.as_deref() == Some(self.host) && c.instance.is_none()
    }
}

/// The digests of a stack's env files; `None` (the stack is left as it
/// is) when one cannot be read, with a conflict saying why.
fn env_digests(
    p: &mut Plan,
    stack: &crate::model::Stack,
    observed: &Observed,
) -> Option<BTreeMap<String, String>> {
    let mut blocked = false;
    let mut digests = BTreeMap::new();
    for svc in stack.services.values() {
        for path in &svc.env_file {
            match observed.env_files.get(path) {
                Some(Ok(d)) => {
                    digests.insert(path.clone(), d.clone());
                }
                Some(Err(e)) => {
                    blocked = true;
                    p.conflicts.push(Conflict {
                        kind: ResourceKind::Container,
                        name: svc.container.clone(),
                        file: path.clone(),
                        message: format!(
                            "env_file {path} of stack `{}` cannot be read: {e}; the stack is left as it is",
                            stack.name
                        ),
                    });
                }
                None => blocked = true,
            }
        }
    }
    (!blocked).then_some(digests)
}

/// This instance's containers on its network that no stack wants: deleted
/// (volumes kept); a legacy one is a conflict (another vsa may want it).
fn undesired_containers(
    p: &mut Plan,
    docker: &crate::docker::ObservedDocker,
    desired: &BTreeSet<String>,
    network: &str,
    owner: &Ownership<'_>,
) {
    let change = |name: &str, diff| Change {
        kind: ResourceKind::Container,
        name: name.to_owned(),
        action: Action::Delete,
        reason: "not desired (its volumes are kept)".into(),
        diff,
        file: None,
        op: Op::RemoveContainer,
    };
    for c in docker.containers.values() {
        // Only this instance's containers on its network: another agent's
        // (or another test's) are not ours to remove.
        if desired.contains(&c.name) || !c.networks.iter().any(|n| n == network) {
            continue;
        }
        if owner.legacy(c) {
            p.conflicts.push(Conflict {
                kind: ResourceKind::Container,
                name: c.name.clone(),
                file: c.name.clone(),
                message: format!(
                    "{} was made by vsa for this host before containers carried {}, and no stack here wants it: vsa cannot tell whether another vsa does, so it is left alone; remove it by hand if it is this one's",
                    c.name,
                    crate::docker::LABEL_INSTANCE
                ),
            });
            continue;
        }
        if owner.ours(c) {
            p.changes
                .push(change(&c.name, c.spec.as_deref().map(|s| text_diff(s, ""))));
        }
    }
}

/// Inside the renewal window: `renew_before_days` or less left, or a third
/// of the lifetime or less (whichever comes first).
pub fn renew_due(c: &crate::certs::CertInfo, now: i64, renew_before_days: u32) -> bool {
    let left = c.not_after - now;
    let lifetime = (c.not_after - c.not_before).max(0);
    left <= i64::from(renew_before_days) * 86_400 || left * 3 <= lifetime
}

/// Renders every site's vhost, on the renderer's threads when there are many.
fn render_all(
    renderer: &Renderer,
    sites: &[&Site],
    observed: &Observed,
) -> Vec<Result<String, RenderError>> {
    let one = |s: &&Site| renderer.vhost(s, observed.certs.contains(&s.domain));
    let threads = renderer.threads();
    if threads <= 1 || sites.len() < 64 {
        return sites.iter().map(one).collect();
    }
    let per = sites.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = sites
            .chunks(per)
            .map(|part| scope.spawn(move || part.iter().map(one).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// Compares desired files (file name -> (resource name, content)) with the
/// files found, for one directory.
fn file_changes(
    p: &mut Plan,
    kind: ResourceKind,
    desired: &BTreeMap<String, (String, String)>,
    observed: &BTreeMap<String, ObservedFile>,
    suffix: &str,
    diff: fn(&str, &str) -> String,
) {
    for (file, (name, content)) in desired {
        match observed.get(file) {
            None => p.changes.push(Change {
                kind,
                name: name.clone(),
                action: Action::Create,
                reason: "missing".into(),
                diff: Some(diff("", content)),
                file: Some(file.clone()),
                op: Op::WriteFile {
                    content: content.clone(),
                },
            }),
            Some(live) if !live.managed => p.conflicts.push(Conflict {
                kind,
                name: name.clone(),
                file: file.clone(),
                message: format!(
                    "{file} exists but is not managed by vsa; move it away, or make its first line `{}` to let vsa take it over",
                    crate::render::MANAGED_HEADER
                ),
            }),
            Some(live) if live.content != *content => p.changes.push(Change {
                kind,
                name: name.clone(),
                action: Action::Update,
                reason: "differs".into(),
                diff: Some(diff(&live.content, content)),
                file: Some(file.clone()),
                op: Op::WriteFile {
                    content: content.clone(),
                },
            }),
            Some(_) => {}
        }
    }
    for (file, live) in observed {
        if desired.contains_key(file) {
            continue;
        }
        if !live.managed {
            p.unmanaged.push(Unmanaged {
                kind,
                file: file.clone(),
            });
            continue;
        }
        let name = if file == HTTP_CONTEXT_FILE {
            HTTP_CONTEXT_NAME.to_owned()
        } else {
            file.strip_suffix(suffix).unwrap_or(file).to_owned()
        };
        p.changes.push(Change {
            kind,
            name,
            action: Action::Delete,
            reason: "not desired".into(),
            diff: Some(diff(&live.content, "")),
            file: Some(file.clone()),
            op: Op::RemoveFile,
        });
    }
}

/// A unified diff, `--- live` / `+++ desired`.
pub fn text_diff(live: &str, desired: &str) -> String {
    similar::TextDiff::from_lines(live, desired)
        .unified_diff()
        .context_radius(3)
        .header("live", "desired")
        .to_string()
}

/// A diff of htpasswd files that names users, never hashes: a changed
/// password shows as the user's line changing.
pub fn htpasswd_diff(live: &str, desired: &str) -> String {
    let users = |s: &str| -> BTreeMap<String, String> {
        s.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| match l.split_once(':') {
                Some((u, h)) => (u.to_owned(), h.to_owned()),
                // A hand-edited line without `:` may be a bare hash: never
                // shown, only counted.
                None => ("(a line that is not user:hash)".to_owned(), l.to_owned()),
            })
            .collect()
    };
    let (old, new) = (users(live), users(desired));
    let show =
        |m: &BTreeMap<String, String>, other: &BTreeMap<String, String>, mark: &str| -> String {
            m.iter()
                .map(|(u, h)| match other.get(u) {
                    Some(h2) if h2 != h => format!("{u} ({mark} password)\n"),
                    _ => format!("{u}\n"),
                })
                .collect()
        };
    text_diff(&show(&old, &new, "old"), &show(&new, &old, "new"))
}
