//! Containers and networks as vsa plans them: the normalized spec of a
//! stack's service, its hash (what the `vsa.spec-hash` label carries), and
//! what was observed of the Docker engine.
//!
//! The spec is normalized so that nothing but a real change moves the hash:
//! maps are sorted, defaults are filled in, and `env_file` contributes the
//! digest of each file's content (never a value).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::{Healthcheck, Service, Stack};

pub const LABEL_MANAGED: &str = "vsa.managed";
pub const LABEL_HOST: &str = "vsa.host";
/// The id of the vsa instance that made the container (DESIGN §2).
pub const LABEL_INSTANCE: &str = "vsa.instance";
pub const LABEL_STACK: &str = "vsa.stack";
pub const LABEL_SERVICE: &str = "vsa.service";
pub const LABEL_HASH: &str = "vsa.spec-hash";
/// The normalized spec as JSON, for field-level diffs of the next change.
pub const LABEL_SPEC: &str = "vsa.spec";
pub const COMPOSE_PROJECT: &str = "com.docker.compose.project";
pub const COMPOSE_SERVICE: &str = "com.docker.compose.service";

/// One container as vsa wants it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub name: String,
    pub stack: String,
    pub service: String,
    pub image: String,
    pub command: Option<Vec<String>>,
    pub environment: BTreeMap<String, String>,
    /// Path → SHA-256 of the file's content at plan time.
    pub env_files: BTreeMap<String, String>,
    pub volumes: Vec<String>,
    pub ports: Vec<String>,
    pub healthcheck: Option<HealthcheckSpec>,
    pub restart: String,
    /// The manifest's own labels (vsa's and Compose's are added on top).
    pub labels: BTreeMap<String, String>,
    /// `docker.network` first, then the extra networks, sorted.
    pub networks: Vec<String>,
    /// Containers of the same stack to start first (not part of the hash).
    #[serde(skip)]
    pub depends_on: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthcheckSpec {
    pub test: Vec<String>,
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub retries: Option<u32>,
    pub start_period_ms: Option<u64>,
}

impl From<&Healthcheck> for HealthcheckSpec {
    fn from(h: &Healthcheck) -> Self {
        HealthcheckSpec {
            test: h.test.clone(),
            interval_ms: h.interval_ms,
            timeout_ms: h.timeout_ms,
            retries: h.retries,
            start_period_ms: h.start_period_ms,
        }
    }
}

impl ContainerSpec {
    /// The spec of `service` of `stack` on `network`, with the digests of
    /// its env files (`env_digests[path]`).
    pub fn new(
        stack: &Stack,
        service_name: &str,
        service: &Service,
        network: &str,
        env_digests: &BTreeMap<String, String>,
    ) -> ContainerSpec {
        let mut networks: Vec<String> = service
            .networks
            .iter()
            .filter(|n| n.as_str() != network)
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        networks.insert(0, network.to_owned());
        let mut ports = service.ports.clone();
        ports.sort();
        ContainerSpec {
            name: service.container.clone(),
            stack: stack.name.clone(),
            service: service_name.to_owned(),
            image: service.image.clone(),
            command: service.command.clone(),
            environment: service.environment.clone(),
            env_files: service
                .env_file
                .iter()
                .map(|p| (p.clone(), env_digests.get(p).cloned().unwrap_or_default()))
                .collect(),
            volumes: service.volumes.clone(),
            ports,
            healthcheck: service.healthcheck.as_ref().map(HealthcheckSpec::from),
            restart: service.restart.clone(),
            labels: service.labels.clone(),
            networks,
            depends_on: service
                .depends_on
                .iter()
                .filter_map(|d| stack.services.get(d).map(|s| s.container.clone()))
                .collect(),
        }
    }

    /// Pretty JSON in canonical (key-sorted) order, the order the observed
    /// `vsa.spec` label is printed in too: a diff of the two shows only
    /// what changed.
    pub fn to_json(&self) -> String {
        canonical_json(&serde_json::to_value(self).unwrap_or_default())
    }

    /// SHA-256 of the canonical (compact, sorted) JSON, hex.
    pub fn hash(&self) -> String {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        Sha256::digest(&canonical)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Every label the container carries: the manifest's, then vsa's and
    /// Compose's (which win).
    pub fn all_labels(&self, host: &str, instance: &str) -> BTreeMap<String, String> {
        let mut l = self.labels.clone();
        for (k, v) in [
            (LABEL_MANAGED, "true".to_owned()),
            (LABEL_HOST, host.to_owned()),
            (LABEL_INSTANCE, instance.to_owned()),
            (LABEL_STACK, self.stack.clone()),
            (LABEL_SERVICE, self.service.clone()),
            (LABEL_HASH, self.hash()),
            (LABEL_SPEC, serde_json::to_string(self).unwrap_or_default()),
            (COMPOSE_PROJECT, self.stack.clone()),
            (COMPOSE_SERVICE, self.service.clone()),
        ] {
            l.insert(k.to_owned(), v);
        }
        l
    }
}

/// What the Docker engine holds (only what vsa looks at).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedDocker {
    pub networks: BTreeSet<String>,
    /// By container name.
    pub containers: BTreeMap<String, ObservedContainer>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedContainer {
    pub name: String,
    /// Carries `vsa.managed=true`.
    pub managed: bool,
    /// The `vsa.host` label.
    pub host: Option<String>,
    /// The `vsa.instance` label.
    pub instance: Option<String>,
    pub running: bool,
    pub spec_hash: Option<String>,
    /// The `vsa.spec` label, pretty-printed for diffs.
    pub spec: Option<String>,
    pub networks: Vec<String>,
    pub image: String,
}

/// `value` as pretty JSON with every object's keys sorted, whatever order
/// it was built or parsed in.
pub fn canonical_json(value: &serde_json::Value) -> String {
    fn sorted(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                serde_json::Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), sorted(&m[k])))
                        .collect(),
                )
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_string_pretty(&sorted(value)).unwrap_or_default()
}

/// A digest of an env file's bytes, as the spec records it: HMAC-SHA-256
/// under this instance's key (`paths.state`), so that the `vsa.spec`
/// label and the plans, which anyone with Docker access or the dashboard
/// reads, never allow an offline guess of a secret's value.
pub fn env_digest(key: &[u8], content: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac =
        hmac::Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(content);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("hmac-sha256:{hex}")
}
