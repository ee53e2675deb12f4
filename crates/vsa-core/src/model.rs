//! The validated desired state: what the renderers and the planner consume.
//!
//! A [`Model`] only exists when validation found no error, so everything in
//! it has already passed the syntax rules of [`crate::names`]: renderers may
//! interpolate these strings into nginx config as they are.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::names::UpstreamUrl;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Model {
    pub fleet: Fleet,
    pub sites: Vec<Site>,
    pub stacks: Vec<Stack>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Fleet {
    pub acme_email: Option<String>,
    pub hosts: Vec<Host>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Host {
    pub id: String,
    pub address: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Site {
    /// The manifest file it came from, relative to the repository.
    pub file: String,
    pub domain: String,
    pub host: String,
    pub aliases: Vec<String>,
    pub upstream: Upstream,
    pub tls: Tls,
    pub auth: Option<Auth>,
    pub rate_limit: Option<RateLimit>,
    pub max_body: Option<String>,
    pub websockets: bool,
    pub csp: Csp,
}

impl Site {
    /// The primary domain followed by the aliases: the vhost's server names
    /// and the names a certificate must cover.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.domain.as_str()).chain(self.aliases.iter().map(String::as_str))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Upstream {
    Container { name: String, port: u16 },
    Url(UrlUpstream),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UrlUpstream {
    pub url: String,
    pub scheme: String,
    pub host: String,
    pub port: Option<u16>,
    pub path: String,
}

impl From<(String, UpstreamUrl)> for UrlUpstream {
    fn from((url, u): (String, UpstreamUrl)) -> Self {
        UrlUpstream {
            url,
            scheme: u.scheme,
            host: u.host,
            port: u.port,
            path: u.path,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tls {
    Acme,
    None,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Auth {
    pub realm: String,
    pub users: Vec<AuthUser>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuthUser {
    pub name: String,
    #[serde(skip)]
    pub bcrypt: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct RateLimit {
    pub rps: u32,
    pub burst: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Csp {
    Default,
    Off,
    Custom(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stack {
    pub file: String,
    pub name: String,
    pub host: String,
    pub services: BTreeMap<String, Service>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Service {
    /// `<stack>-<service>`.
    pub container: String,
    pub image: String,
    pub command: Option<Vec<String>>,
    pub environment: BTreeMap<String, String>,
    pub env_file: Vec<String>,
    pub volumes: Vec<String>,
    pub ports: Vec<String>,
    pub healthcheck: Option<Healthcheck>,
    pub restart: String,
    pub labels: BTreeMap<String, String>,
    pub depends_on: Vec<String>,
    pub networks: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Healthcheck {
    pub test: Vec<String>,
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub retries: Option<u32>,
    pub start_period_ms: Option<u64>,
}

impl Model {
    /// The sites one host serves, in domain order.
    pub fn sites_for<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a Site> + 'a {
        self.sites.iter().filter(move |s| s.host == host)
    }

    pub fn stacks_for<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a Stack> + 'a {
        self.stacks.iter().filter(move |s| s.host == host)
    }

    pub fn has_host(&self, host: &str) -> bool {
        self.fleet.hosts.iter().any(|h| h.id == host)
    }

    pub fn site(&self, domain: &str) -> Option<&Site> {
        self.sites.iter().find(|s| s.domain == domain)
    }
}
