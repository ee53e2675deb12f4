//! Issuing certificates over ACME HTTP-01 (instant-acme): the account key
//! is kept in `paths.state` and reused; challenge files go to the webroot
//! that every site's HTTP vhost serves; errors carry the CA's own reason.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, ChallengeType, HttpClient,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::safe_fs::{Entry, FileMode, SafeDir};

/// Where the account is kept, under `paths.state`.
pub const ACCOUNT_FILE: &str = "acme-account.json";

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("acme.ca_bundle {path}: {message}")]
    CaBundle { path: String, message: String },
    #[error("cannot reach the ACME directory {directory}: {message}")]
    Directory { directory: String, message: String },
    #[error("cannot keep the ACME account in {path}: {source}")]
    AccountFile {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write the challenge file in {path}: {source}")]
    Webroot {
        path: String,
        source: std::io::Error,
    },
    /// The CA refused or a step failed; `reason` is the CA's problem detail
    /// and type when it gave one.
    #[error("{reason}")]
    Order { reason: String },
}

/// A certificate just issued.
#[derive(Debug)]
pub struct Issued {
    /// Leaf first, then the intermediates.
    pub chain_pem: String,
    pub key_pem: String,
}

pub struct AcmeClient {
    account: Account,
    pub directory: String,
    /// When `connect` registered a new account: with which contact and
    /// whose terms (for the audit trail).
    pub registered: Option<String>,
}

impl std::fmt::Debug for AcmeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeClient")
            .field("directory", &self.directory)
            .finish()
    }
}

/// The message of an error and all its sources ("client error (Connect):
/// invalid peer certificate: UnknownIssuer").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

fn reason(e: &instant_acme::Error) -> String {
    match e {
        instant_acme::Error::Api(p) => problem_text(p),
        other => chain(other),
    }
}

fn problem_text(p: &instant_acme::Problem) -> String {
    let detail = p.detail.clone().unwrap_or_else(|| "no detail".into());
    match &p.r#type {
        Some(t) => format!("{detail} ({t})"),
        None => detail,
    }
}

/// The directory's `meta.termsOfService` link (RFC 8555 §7.1.1).
async fn terms_of_service(client: &dyn HttpClient, directory: &str) -> Option<String> {
    let request = http::Request::get(directory)
        .body(BodyWrapper::from(Vec::new()))
        .ok()?;
    let mut response = client.request(request).await.ok()?;
    let body = response.body.into_bytes().await.ok()?;
    let directory: serde_json::Value = serde_json::from_slice(&body).ok()?;
    directory["meta"]["termsOfService"]
        .as_str()
        .filter(|t| t.len() < 2048 && !t.chars().any(char::is_control))
        .map(str::to_owned)
}

/// An HTTP client trusting the system's roots, as instant-acme's own.
fn system_client() -> Option<Box<dyn HttpClient>> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .try_with_platform_verifier()
        .ok()?
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let client: HyperClient<_, BodyWrapper<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build(connector);
    Some(Box::new(client))
}

/// An HTTP client trusting exactly the certificates of a PEM bundle.
fn client_with_bundle(path: &Path) -> Result<Box<dyn HttpClient>, AcmeError> {
    let err = |message: String| AcmeError::CaBundle {
        path: path.display().to_string(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))? {
        roots
            .add(cert.map_err(|e| err(e.to_string()))?)
            .map_err(|e| err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(err("holds no certificate".into()));
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| err(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let client: HyperClient<_, BodyWrapper<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build(connector);
    Ok(Box::new(client))
}

impl AcmeClient {
    /// Loads the account kept in `state_dir` for `directory`, or registers
    /// one and keeps it (mode 0600). With `ca_bundle`, the ACME server is
    /// trusted through those roots (a private or test CA) instead of the
    /// system's.
    pub async fn connect(
        directory: &str,
        ca_bundle: Option<&Path>,
        state_dir: &Path,
        email: Option<&str>,
    ) -> Result<AcmeClient, AcmeError> {
        let builder = || -> Result<instant_acme::AccountBuilder, AcmeError> {
            match ca_bundle {
                Some(p) => Ok(Account::builder_with_http(client_with_bundle(p)?)),
                None => Account::builder().map_err(|e| AcmeError::Directory {
                    directory: directory.to_owned(),
                    message: chain(&e),
                }),
            }
        };
        let dir_err = |e: instant_acme::Error| AcmeError::Directory {
            directory: directory.to_owned(),
            message: reason(&e),
        };
        let file: PathBuf = state_dir.join(ACCOUNT_FILE);
        let account_err = |source| AcmeError::AccountFile {
            path: file.display().to_string(),
            source,
        };
        let state = SafeDir::private(state_dir).map_err(account_err)?;
        if let Entry::File(bytes) = state.read(ACCOUNT_FILE, 1 << 20).map_err(account_err)?
            && let Ok(text) = String::from_utf8(bytes)
        {
            let same_directory = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .is_some_and(|v| v["directory"] == directory);
            if same_directory && let Ok(creds) = serde_json::from_str::<AccountCredentials>(&text) {
                let account = builder()?.from_credentials(creds).await.map_err(dir_err)?;
                return Ok(AcmeClient {
                    account,
                    directory: directory.to_owned(),
                    registered: None,
                });
            }
        }
        // The terms a new account agrees to: the directory's own link to
        // them, for the audit trail (None when the CA publishes none).
        let terms = match ca_bundle {
            Some(p) => terms_of_service(&*client_with_bundle(p)?, directory).await,
            None => match system_client() {
                Some(c) => terms_of_service(&*c, directory).await,
                None => None,
            },
        };
        // The CA may write to the fleet's contact (acme.email in
        // fleet.yaml) about expiring certificates and policy changes.
        let contact = email.map(|e| format!("mailto:{e}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, creds) = builder()?
            .create(
                &NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                directory.to_owned(),
                None,
            )
            .await
            .map_err(dir_err)?;
        let registered = Some(format!(
            "registered an account at {directory} with contact {}, agreeing to the CA's terms of service: {}",
            email.unwrap_or("none (acme.email is not set in fleet.yaml)"),
            terms
                .as_deref()
                .unwrap_or("those the directory links to (meta.termsOfService)")
        ));
        let json = serde_json::to_vec_pretty(&creds).unwrap_or_default();
        state
            .write_atomic(ACCOUNT_FILE, &json, FileMode::private())
            .map_err(account_err)?;
        Ok(AcmeClient {
            account,
            directory: directory.to_owned(),
            registered,
        })
    }

    /// Orders a certificate for `names` (the first is the site's domain),
    /// answers HTTP-01 through files in `webroot`, and returns the chain and
    /// a fresh P-256 key. Gives up after `timeout`.
    pub async fn issue(
        &self,
        names: &[String],
        webroot: &Path,
        timeout: Duration,
    ) -> Result<Issued, AcmeError> {
        // The webroot is served by nginx (in a container, maybe): its
        // subdirectories are reached without following links.
        let challenge_dir = SafeDir::create(webroot, 0o755)
            .and_then(|w| w.sub(".well-known", Some(0o755)))
            .and_then(|w| w.sub("acme-challenge", Some(0o755)))
            .map_err(|source| AcmeError::Webroot {
                path: webroot
                    .join(".well-known/acme-challenge")
                    .display()
                    .to_string(),
                source,
            })?;
        let mut tokens: Vec<String> = Vec::new();
        let result = self
            .order(names, &challenge_dir, &mut tokens, timeout)
            .await;
        for t in tokens {
            let _ = challenge_dir.remove(&t);
        }
        result
    }

    async fn order(
        &self,
        names: &[String],
        challenge_dir: &SafeDir,
        tokens: &mut Vec<String>,
        timeout: Duration,
    ) -> Result<Issued, AcmeError> {
        let failed = |e: instant_acme::Error| AcmeError::Order { reason: reason(&e) };
        let identifiers: Vec<Identifier> = names.iter().cloned().map(Identifier::Dns).collect();
        let mut order = self
            .account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(failed)?;
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(failed)?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(AcmeError::Order {
                        reason: format!("authorization for {} is {other:?}", authz.identifier()),
                    });
                }
            }
            let mut challenge =
                authz
                    .challenge(ChallengeType::Http01)
                    .ok_or_else(|| AcmeError::Order {
                        reason: "the CA offers no http-01 challenge".into(),
                    })?;
            let key_auth = challenge.key_authorization();
            let webroot_err = |source| AcmeError::Webroot {
                path: challenge_dir.path().display().to_string(),
                source,
            };
            // A token is base64url; anything else never becomes a file name.
            if challenge.token.is_empty()
                || !challenge
                    .token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(AcmeError::Order {
                    reason: format!("the CA sent the challenge token {:?}", challenge.token),
                });
            }
            challenge_dir
                .write_atomic(
                    &challenge.token,
                    key_auth.as_str().as_bytes(),
                    FileMode::public(),
                )
                .map_err(webroot_err)?;
            tokens.push(challenge.token.clone());
            challenge.set_ready().await.map_err(failed)?;
        }
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(200))
            .backoff(1.5)
            .timeout(timeout);
        match order.poll_ready(&retry).await {
            Ok(OrderStatus::Ready) => {}
            Ok(status) => {
                return Err(AcmeError::Order {
                    reason: format!("the order ended {status:?}"),
                });
            }
            Err(e) => return Err(failed(e)),
        }
        let key_pem = order.finalize().await.map_err(failed)?;
        let chain_pem = order.poll_certificate(&retry).await.map_err(failed)?;
        Ok(Issued { chain_pem, key_pem })
    }
}
