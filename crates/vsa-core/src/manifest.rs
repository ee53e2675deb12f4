//! The manifest model of DESIGN §3: `Fleet`, `Site` and `Stack` documents.
//!
//! These types are exactly what a user writes. Unknown fields are refused by
//! serde (`deny_unknown_fields`), and the fields that validation rules look at
//! keep their position ([`Sp`]) so that every later problem names its line.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::span::{Pos, Sp};

pub const API_VERSION: &str = "vsa/v1";

/// `fleet.yaml`: the hosts of the fleet and fleet-wide defaults.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Fleet")]
pub struct FleetSpec {
    #[serde(rename = "apiVersion")]
    pub api_version: Sp<String>,
    pub kind: Sp<String>,
    /// ACME account settings shared by every host.
    #[serde(default)]
    pub acme: Option<FleetAcme>,
    /// Every host of the fleet; sites and stacks name one of these ids.
    pub hosts: Vec<FleetHost>,
    /// Defaults applied to every site that does not set its own value.
    #[serde(default)]
    pub defaults: Option<Defaults>,
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetAcme {
    /// Contact address for the ACME account (expiry notices from the CA).
    pub email: Sp<String>,
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetHost {
    /// The host's id, as used by `host:` in sites and stacks and by the agent config.
    pub id: Sp<String>,
    /// Informational: the host's public address.
    #[serde(default)]
    pub address: Option<Sp<String>>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Rate limit for sites without their own `rate_limit`.
    #[serde(default)]
    pub rate_limit: Option<Sp<RateLimit>>,
    /// `client_max_body_size` for sites without their own `max_body`.
    #[serde(default)]
    pub max_body: Option<Sp<String>>,
}

/// `sites/<domain>.yaml`: one site served by the reverse proxy of one host.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Site")]
pub struct SiteSpec {
    #[serde(rename = "apiVersion")]
    pub api_version: Sp<String>,
    pub kind: Sp<String>,
    /// The primary server_name: a valid DNS name, lower case.
    pub domain: Sp<String>,
    /// The host that serves the site; must be listed in fleet.yaml.
    pub host: Sp<String>,
    /// More names served by the same vhost (and covered by its certificate).
    #[serde(default)]
    pub aliases: Vec<Sp<String>>,
    /// Where requests go: exactly one of `container` + `port`, or `url`.
    pub upstream: Sp<UpstreamSpec>,
    /// `acme` (default): a Let's Encrypt certificate and HTTPS; `none`: HTTP only.
    #[serde(default)]
    pub tls: Option<Sp<String>>,
    /// Optional HTTP basic auth.
    #[serde(default)]
    pub auth: Option<Sp<AuthSpec>>,
    /// Optional request rate limit per client address.
    #[serde(default)]
    pub rate_limit: Option<Sp<RateLimit>>,
    /// Optional `client_max_body_size`, e.g. `50m`.
    #[serde(default)]
    pub max_body: Option<Sp<String>>,
    /// Adds the Upgrade/Connection headers websockets need.
    #[serde(default)]
    pub websockets: Option<Sp<bool>>,
    /// Overrides the default Content-Security-Policy header; `off` sends none.
    #[serde(default)]
    pub csp: Option<Sp<String>>,
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// A container on the shared docker network (usually `<stack>-<service>`).
    #[serde(default)]
    pub container: Option<Sp<String>>,
    /// The container's port.
    #[serde(default)]
    pub port: Option<Sp<i64>>,
    /// Or a URL, e.g. `http://127.0.0.1:3000`.
    #[serde(default)]
    pub url: Option<Sp<String>>,
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthSpec {
    /// The realm the browser shows in its login prompt.
    #[serde(default)]
    pub realm: Option<Sp<String>>,
    pub users: Vec<Sp<AuthUser>>,
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthUser {
    pub name: Sp<String>,
    /// A bcrypt hash (`vsactl hash-password`); plaintext passwords never go in git.
    pub bcrypt: Sp<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Requests per second per client address.
    pub rps: i64,
    /// Requests above the rate that are still accepted in a burst.
    #[serde(default)]
    pub burst: Option<i64>,
}

/// `stacks/<name>.yaml`: containers on one host, a subset of the Compose spec.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Stack")]
pub struct StackSpec {
    #[serde(rename = "apiVersion")]
    pub api_version: Sp<String>,
    pub kind: Sp<String>,
    /// Containers are named `<name>-<service>`.
    pub name: Sp<String>,
    pub host: Sp<String>,
    pub services: BTreeMap<String, Sp<ServiceSpec>>,
}

/// One service of a stack; field names as in the Compose specification.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub image: Sp<String>,
    #[serde(default)]
    pub command: Option<StringOrList>,
    #[serde(default)]
    pub environment: Option<KeyValues>,
    /// Files on the host read at apply time; their values never reach git or the plan.
    #[serde(default)]
    pub env_file: Option<StringOrList>,
    #[serde(default)]
    pub volumes: Vec<Sp<String>>,
    /// `[ip:]host:container[/proto]`; sites reach containers over the network without these.
    #[serde(default)]
    pub ports: Vec<Sp<String>>,
    #[serde(default)]
    pub healthcheck: Option<Healthcheck>,
    /// `no`, `always`, `on-failure[:N]` or `unless-stopped` (the default).
    #[serde(default)]
    pub restart: Option<Sp<String>>,
    #[serde(default)]
    pub labels: Option<KeyValues>,
    #[serde(default)]
    pub depends_on: Vec<Sp<String>>,
    /// Extra networks besides the shared one.
    #[serde(default)]
    pub networks: Vec<Sp<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            StringOrList::One(s) => vec![s.clone()],
            StringOrList::Many(v) => v.clone(),
        }
    }
}

/// `{KEY: value}` or `["KEY=value"]`, as Compose accepts both.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum KeyValues {
    Map(BTreeMap<String, ScalarValue>),
    List(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ScalarValue {
    Bool(bool),
    Int(i64),
    Str(String),
}

impl ScalarValue {
    pub fn as_string(&self) -> String {
        match self {
            ScalarValue::Bool(b) => b.to_string(),
            ScalarValue::Int(i) => i.to_string(),
            ScalarValue::Str(s) => s.clone(),
        }
    }
}

impl KeyValues {
    /// Normalized `KEY -> value` pairs, sorted by key.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        match self {
            KeyValues::Map(m) => m.iter().map(|(k, v)| (k.clone(), v.as_string())).collect(),
            KeyValues::List(l) => l
                .iter()
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => (kv.clone(), String::new()),
                })
                .collect(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Healthcheck {
    pub test: StringOrList,
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub retries: Option<i64>,
    #[serde(default)]
    pub start_period: Option<String>,
}

/// The kinds of documents a desired-state repository holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Fleet,
    Site,
    Stack,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "Fleet" => Some(Kind::Fleet),
            "Site" => Some(Kind::Site),
            "Stack" => Some(Kind::Stack),
            _ => None,
        }
    }
}

/// Only `apiVersion` and `kind`, to pick the type of a document.
#[derive(Debug, Deserialize)]
pub(crate) struct Header {
    #[serde(rename = "apiVersion", default)]
    pub api_version: Option<Sp<String>>,
    #[serde(default)]
    pub kind: Option<Sp<String>>,
}

/// A parsed document together with the file it came from.
#[derive(Clone, Debug)]
pub struct Located<T> {
    pub file: String,
    pub pos: Pos,
    pub spec: T,
}
