//! Rendering the files vsa owns: one vhost per site, one htpasswd per site
//! with auth, and one http-context file for what nginx only accepts there.
//!
//! Rendering is a pure function of the site, the host's settings and
//! whether the site's certificate is on disk: the HTTPS server is only
//! rendered when it is, so a vhost never points at a missing file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tera::{Context, Tera};

use crate::config::Config;
use crate::model::{Csp, Site, Tls, Upstream};

/// The first line of every file vsa writes; only files starting with it are ours.
pub const MANAGED_HEADER: &str = "# managed-by: vsa";

/// The managed http-context file in the vhost directory. Named so that it
/// sorts before every `<domain>.conf`: nginx includes `*.conf` in byte
/// order, and `log_format` must come before the vhosts that use it.
pub const HTTP_CONTEXT_FILE: &str = "00-vsa-http.conf";

/// Its name in plans (kind `vhost`).
pub const HTTP_CONTEXT_NAME: &str = "00-vsa-http";

/// Where vsa's probe server answers with the generation of the
/// configuration nginx serves ("converged means served").
pub const PROBE_PATH: &str = "/.vsa/generation";

/// The generation of an http-context file no reload has stamped yet.
pub const NO_GENERATION: &str = "0000000000000000";

const PROBE_LINE: &str = "location = /.vsa/generation { return 200 \"";

/// A generation: 16 lower-case hex digits, as vsa stamps them.
pub fn is_generation(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The generation an http-context file's probe server answers with; `None`
/// for a file without one (written by an older vsa, or not vsa's).
pub fn generation_of(http_context: &str) -> Option<&str> {
    let at = http_context.find(PROBE_LINE)? + PROBE_LINE.len();
    let generation = http_context.get(at..at + 16)?;
    is_generation(generation).then_some(generation)
}

/// `http_context` with its probe answering `generation` instead: the
/// stamp vsa puts on the file right before a reload. `None` when the file
/// has no probe.
pub fn with_generation(http_context: &str, generation: &str) -> Option<String> {
    if !is_generation(generation) {
        return None;
    }
    let at = http_context.find(PROBE_LINE)? + PROBE_LINE.len();
    generation_of(http_context)?;
    let mut out = String::with_capacity(http_context.len());
    out.push_str(&http_context[..at]);
    out.push_str(generation);
    out.push_str(&http_context[at + 16..]);
    Some(out)
}

/// The default Content-Security-Policy: forbids framing and plugins, but lets
/// the typical proxied app (Dify, n8n, a CMS) load its own inline scripts.
pub const DEFAULT_CSP: &str = "default-src 'self' http: https: data: blob: 'unsafe-inline' 'unsafe-eval'; object-src 'none'; frame-ancestors 'none'";

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template error: {0}")]
    Template(String),
}

/// What rendering needs to know about the host (DESIGN §4 `nginx.*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderSettings {
    pub http_port: u16,
    pub https_port: u16,
    pub ipv6: bool,
    pub resolver: String,
    /// The directories as nginx sees them.
    pub htpasswd_dir: PathBuf,
    pub letsencrypt_dir: PathBuf,
    pub webroot: PathBuf,
    pub access_logs_dir: PathBuf,
    /// Renew a certificate with this many days left (`acme.renew_before_days`).
    pub renew_before_days: u32,
    /// The shared network of the proxy and the containers (`docker.network`).
    pub docker_network: String,
    /// What vsa's probe server listens on: loopback on the host; in a
    /// container, its port on every address of the container (the host
    /// reaches it at the container's address; nothing publishes it).
    pub probe_listen: String,
}

impl From<&Config> for RenderSettings {
    fn from(c: &Config) -> Self {
        RenderSettings {
            http_port: c.nginx.http_port,
            https_port: c.nginx.https_port,
            ipv6: c.nginx.ipv6,
            resolver: c.nginx.resolver.clone(),
            htpasswd_dir: c.nginx.paths.htpasswd.clone(),
            letsencrypt_dir: c.nginx.paths.letsencrypt.clone(),
            webroot: c.nginx.paths.webroot.clone(),
            access_logs_dir: c.nginx.paths.access_logs.clone(),
            renew_before_days: c.acme.renew_before_days,
            docker_network: c.docker.network.clone(),
            probe_listen: match c.nginx.container {
                Some(_) => c.nginx.probe_port.to_string(),
                None => format!("127.0.0.1:{}", c.nginx.probe_port),
            },
        }
    }
}

pub struct Renderer {
    tera: Tera,
    settings: RenderSettings,
    threads: usize,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer")
            .field("settings", &self.settings)
            .finish()
    }
}

#[derive(Serialize)]
struct VhostCtx<'a> {
    domain: &'a str,
    names: String,
    https: bool,
    /// A `tls: acme` site with auth whose certificate is not there yet.
    pending: bool,
    http_port: u16,
    https_port: u16,
    https_port_suffix: String,
    ipv6: bool,
    resolver: &'a str,
    access_log: String,
    webroot: String,
    cert_dir: String,
    htpasswd_file: String,
    csp: Option<&'a str>,
    max_body: Option<&'a str>,
    auth: Option<AuthCtx<'a>>,
    rate_limit: Option<RateCtx>,
    container: Option<ContainerCtx<'a>>,
    url: Option<&'a str>,
    websockets: bool,
}

#[derive(Serialize)]
struct AuthCtx<'a> {
    realm: &'a str,
}

#[derive(Serialize)]
struct RateCtx {
    zone: String,
    burst: u32,
}

#[derive(Serialize)]
struct ContainerCtx<'a> {
    name: &'a str,
    port: u16,
}

#[derive(Serialize)]
struct HttpCtx<'a> {
    zones: Vec<ZoneCtx>,
    names_hash_max_size: usize,
    probe_listen: &'a str,
    generation: &'a str,
}

#[derive(Serialize)]
struct ZoneCtx {
    name: String,
    rps: u32,
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The shared `limit_req_zone` for one rate; its key includes the server
/// name, so each site still counts its clients separately.
fn zone_name(rps: u32) -> String {
    format!("vsa_rps_{rps}")
}

impl Renderer {
    pub fn new(settings: RenderSettings) -> Self {
        let mut tera = Tera::default();
        tera.autoescape_on(vec![]);
        tera.add_raw_templates(vec![
            ("vhost.conf", include_str!("../templates/vhost.conf")),
            ("http.conf", include_str!("../templates/http.conf")),
        ])
        .unwrap_or_else(|e| unreachable!("built-in templates parse: {e}"));
        Renderer {
            tera,
            settings,
            threads: 1,
        }
    }

    /// Lets planning render on up to `threads` threads (the output is the same).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.clamp(1, 64);
        self
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    pub fn settings(&self) -> &RenderSettings {
        &self.settings
    }

    /// The vhost file's name for a site.
    pub fn vhost_file(domain: &str) -> String {
        format!("{domain}.conf")
    }

    pub fn htpasswd_file(domain: &str) -> String {
        format!("{domain}.htpasswd")
    }

    pub fn access_log_file(domain: &str) -> String {
        format!("{domain}.access.json")
    }

    /// The vhost of a site. `cert_present`: both certificate files are on
    /// disk, so the HTTPS server can be rendered.
    pub fn vhost(&self, site: &Site, cert_present: bool) -> Result<String, RenderError> {
        let s = &self.settings;
        let https = site.tls == Tls::Acme && cert_present;
        // Basic auth over plain HTTP would send passwords in clear.
        let pending = site.tls == Tls::Acme && !cert_present && site.auth.is_some();
        let (container, url) = match &site.upstream {
            Upstream::Container { name, port } => (Some(ContainerCtx { name, port: *port }), None),
            Upstream::Url(u) => (None, Some(u.url.as_str())),
        };
        let ctx = VhostCtx {
            domain: &site.domain,
            names: site.names().collect::<Vec<_>>().join(" "),
            https,
            pending,
            http_port: s.http_port,
            https_port: s.https_port,
            https_port_suffix: if s.https_port == 443 {
                String::new()
            } else {
                format!(":{}", s.https_port)
            },
            ipv6: s.ipv6,
            resolver: &s.resolver,
            access_log: path_str(&s.access_logs_dir.join(Self::access_log_file(&site.domain))),
            webroot: path_str(&s.webroot),
            cert_dir: path_str(&s.letsencrypt_dir.join("live").join(&site.domain)),
            htpasswd_file: path_str(&s.htpasswd_dir.join(Self::htpasswd_file(&site.domain))),
            csp: match &site.csp {
                Csp::Default => Some(DEFAULT_CSP),
                Csp::Off => None,
                Csp::Custom(c) => Some(c.as_str()),
            },
            max_body: site.max_body.as_deref(),
            auth: site.auth.as_ref().map(|a| AuthCtx { realm: &a.realm }),
            rate_limit: site.rate_limit.map(|r| RateCtx {
                zone: zone_name(r.rps),
                burst: r.burst,
            }),
            container,
            url,
            websockets: site.websockets,
        };
        let ctx =
            Context::from_serialize(&ctx).map_err(|e| RenderError::Template(e.to_string()))?;
        let mut out = self
            .tera
            .render("vhost.conf", &ctx)
            .map_err(|e| RenderError::Template(format!("{e:?}")))?;
        // One newline at the end, whichever branch the template took.
        out.truncate(out.trim_end().len());
        out.push('\n');
        Ok(out)
    }

    /// The htpasswd file of a site with auth: user names and their bcrypt
    /// hashes, exactly as the manifest gives them.
    pub fn htpasswd(&self, site: &Site) -> Option<String> {
        let auth = site.auth.as_ref()?;
        let mut out = String::with_capacity(64 + auth.users.len() * 80);
        out.push_str(MANAGED_HEADER);
        out.push('\n');
        for u in &auth.users {
            out.push_str(&u.name);
            out.push(':');
            out.push_str(&u.bcrypt);
            out.push('\n');
        }
        Some(out)
    }

    /// The http-context file for the sites of one host, with vsa's probe
    /// server answering `generation` (see [`generation_of`]).
    pub fn http_context<'a>(
        &self,
        sites: impl IntoIterator<Item = &'a Site>,
        generation: &str,
    ) -> Result<String, RenderError> {
        let mut rates = BTreeSet::new();
        let mut names = 0usize;
        for s in sites {
            if let Some(r) = s.rate_limit {
                rates.insert(r.rps);
            }
            names += 1 + s.aliases.len();
        }
        let ctx = HttpCtx {
            zones: rates
                .into_iter()
                .map(|rps| ZoneCtx {
                    name: zone_name(rps),
                    rps,
                })
                .collect(),
            // Comfortably above the number of names, in steps, so that adding
            // one site does not rewrite this file every time.
            names_hash_max_size: (names * 2).max(1024).next_power_of_two(),
            probe_listen: &self.settings.probe_listen,
            generation: if is_generation(generation) {
                generation
            } else {
                NO_GENERATION
            },
        };
        let ctx =
            Context::from_serialize(&ctx).map_err(|e| RenderError::Template(e.to_string()))?;
        let mut out = self
            .tera
            .render("http.conf", &ctx)
            .map_err(|e| RenderError::Template(format!("{e:?}")))?;
        if !out.ends_with('\n') {
            out.push('\n');
        }
        Ok(out)
    }
}
