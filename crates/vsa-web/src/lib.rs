//! vsa's HTTP side on `dashboard.listen` (DESIGN §7): `/healthz`,
//! `/api/status`, `/api/plan`, `/api/certs`, `/api/sites`, `/metrics`,
//! and the signed push webhook `POST /hooks/git`. Read-only: the webhook
//! only asks for a fetch.
//!
//! Handlers read a [`HostSnapshot`] the reconcile loop publishes (a
//! `watch` of `Arc`s): they never wait for the loop, and the loop never
//! waits for them. The hub will serve the same types per host.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hmac::{KeyInit, Mac};
use tokio::sync::watch;
pub use vsa_engine::snapshot::{HostSnapshot, Refused};

/// What the handlers serve from.
pub struct WebState {
    /// The host as the reconcile loop last published it.
    pub snapshot: watch::Receiver<Arc<HostSnapshot>>,
    /// Asks the loop to fetch (a verified webhook).
    pub on_push: Box<dyn Fn() + Send + Sync>,
    /// The webhook's HMAC key; `None` disables `POST /hooks/git`.
    pub webhook_secret: Option<Vec<u8>>,
    /// With `dashboard.token_file`: needed for `/api/*`.
    pub token: Option<String>,
    /// Refused webhooks, warned about once per burst.
    pub bad_hooks: Burst,
}

impl WebState {
    /// The current snapshot (an `Arc`: the loop may publish the next one
    /// meanwhile).
    pub fn snapshot(&self) -> Arc<HostSnapshot> {
        self.snapshot.borrow().clone()
    }
}

/// How long a client may take to send a request's headers (slowloris),
/// and to wait between requests on a kept-alive connection.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long one connection may live at all; nothing vsad serves takes long.
pub const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

/// Connections served at once; more are closed at once, so that a flood
/// never takes the file descriptors the reconciles need.
pub const MAX_CONNECTIONS: usize = 64;

/// Serves `router` on `listener` until `shutdown` resolves, with the limits
/// above: a neighbour holding sockets open cannot starve the daemon.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let refused = Arc::new(Burst::default());
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if refused.first_of_burst() {
                tracing::warn!(
                    limit = MAX_CONNECTIONS,
                    "too many connections: closing new ones until some end"
                );
            }
            drop(stream);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
        });
    }
}

/// One warning per burst of the same trouble: the first occurrence after a
/// quiet minute.
#[derive(Debug, Default)]
pub struct Burst {
    last: Mutex<Option<std::time::Instant>>,
}

impl Burst {
    const QUIET: std::time::Duration = std::time::Duration::from_secs(60);

    /// True for the first call after [`Burst::QUIET`] without one.
    pub fn first_of_burst(&self) -> bool {
        let now = std::time::Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let first = last.is_none_or(|t| now.duration_since(t) >= Self::QUIET);
        *last = Some(now);
        first
    }
}

pub fn router(state: Arc<WebState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/status", get(status))
        .route("/api/plan", get(plan))
        .route("/api/certs", get(certs))
        .route("/api/sites", get(sites))
        .route("/metrics", get(metrics))
        .route("/hooks/git", post(hook))
        .with_state(state)
}

fn authorized(s: &WebState, headers: &HeaderMap) -> bool {
    let Some(token) = &s.token else {
        return true;
    };
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    if let Some(bearer) = value.strip_prefix("Bearer ") {
        return constant_time_eq(bearer.trim().as_bytes(), token.as_bytes());
    }
    if let Some(basic) = value.strip_prefix("Basic ")
        && let Some(decoded) = base64_decode(basic.trim())
        && let Some((_, password)) = decoded.split_once(':')
    {
        return constant_time_eq(password.as_bytes(), token.as_bytes());
    }
    false
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"vsa\"")],
        "a dashboard token is required\n",
    )
        .into_response()
}

async fn status(State(s): State<Arc<WebState>>, headers: HeaderMap) -> Response {
    if !authorized(&s, &headers) {
        return unauthorized();
    }
    let snap = s.snapshot();
    axum::Json(snap.status()).into_response()
}

fn no_plan_yet() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "no plan yet: the desired state has not been loaded\n",
    )
        .into_response()
}

async fn plan(State(s): State<Arc<WebState>>, headers: HeaderMap) -> Response {
    if !authorized(&s, &headers) {
        return unauthorized();
    }
    match &s.snapshot().plan {
        Some(p) => axum::Json(&**p).into_response(),
        None => no_plan_yet(),
    }
}

async fn certs(State(s): State<Arc<WebState>>, headers: HeaderMap) -> Response {
    if !authorized(&s, &headers) {
        return unauthorized();
    }
    axum::Json(&*s.snapshot().certs).into_response()
}

/// `GET /api/sites` (DESIGN §7): each site with its state and its changes.
async fn sites(State(s): State<Arc<WebState>>, headers: HeaderMap) -> Response {
    if !authorized(&s, &headers) {
        return unauthorized();
    }
    let snap = s.snapshot();
    if snap.plan.is_none() {
        return no_plan_yet();
    }
    axum::Json(&*snap.sites).into_response()
}

async fn metrics(State(s): State<Arc<WebState>>) -> Response {
    let snap = s.snapshot();
    let text = snap.metrics.render(&snap.host);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `POST /hooks/git`: GitHub/Gitea-style push webhook, signed with
/// `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`.
async fn hook(State(s): State<Arc<WebState>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(secret) = &s.webhook_secret else {
        return (
            StatusCode::NOT_FOUND,
            "the webhook is off: set repo.webhook_secret_file\n",
        )
            .into_response();
    };
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
        .and_then(hex_decode);
    let Some(signature) = signature else {
        if s.bad_hooks.first_of_burst() {
            tracing::warn!(
                "webhook without a valid X-Hub-Signature-256 header refused (more in this burst are refused silently)"
            );
        }
        return (StatusCode::UNAUTHORIZED, "missing or malformed signature\n").into_response();
    };
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    mac.update(&body);
    if mac.verify_slice(&signature).is_err() {
        if s.bad_hooks.first_of_burst() {
            tracing::warn!(
                "webhook with a wrong signature refused (more in this burst are refused silently)"
            );
        }
        return (StatusCode::UNAUTHORIZED, "bad signature\n").into_response();
    }
    (s.on_push)();
    (StatusCode::ACCEPTED, "fetch scheduled\n").into_response()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn base64_decode(s: &str) -> Option<String> {
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(v);
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoders() {
        assert_eq!(hex_decode("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(hex_decode("0g"), None);
        assert_eq!(hex_decode("abc"), None);
        assert_eq!(base64_decode("dTpzZWNyZXQ=").as_deref(), Some("u:secret"));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
