//! The admin API's routes, each a small function; every call but
//! `/metrics` needs an admin ([`super::auth`]), and every change, and every
//! refused caller, leaves an audit line.
//!
//! | call | what |
//! | --- | --- |
//! | `GET /metrics` | Prometheus metrics (no token) |
//! | `GET /v1/admin/sessions` | sessions open on this relay |
//! | `GET /v1/admin/backends` | every backend with its health, drain state and load |
//! | `POST /v1/admin/backends/drain`, `…/enable` | `{"service","backend"}`: stop or resume new work on this relay |
//! | `GET /v1/admin/locks` | locked subjects |
//! | `POST /v1/admin/locks` | `{"subject","reason"}`: end its sessions on every relay, refuse it until unlocked |
//! | `POST /v1/admin/unlock` | `{"subject"}` |

use std::net::SocketAddr;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use super::auth::Admins;
use crate::audit::Event;
use crate::auth::now_unix;
use crate::shared::LockInfo;
use crate::{text, Relay};

type Body = Full<Bytes>;

/// Largest request body the API reads, and how long it may take.
const MAX_BODY: usize = 4096;
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Routes one admin request.
pub async fn handle(
    relay: &Relay,
    admins: &Admins,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    if req.method() == Method::GET && path == "/metrics" {
        return metrics(relay);
    }
    if !path.starts_with("/v1/admin/") {
        return reply(StatusCode::NOT_FOUND, &Problem::new("not found"));
    }
    let bearer = crate::auth::bearer(req.headers().get(header::AUTHORIZATION)).ok();
    let admin = match admins.check(relay, bearer).await {
        Ok(who) => who,
        Err(denied) => {
            relay.audit.record(&Event {
                event: "admin_refused",
                subject: match &denied {
                    super::auth::Denied::NotAdmin { subject } => Some(subject.as_str()),
                    _ => None,
                },
                peer: Some(peer.to_string()),
                path: Some(&path),
                code: Some(denied.code()),
                reason: Some(denied.to_string()),
                ..Default::default()
            });
            let status = match denied {
                super::auth::Denied::NotAdmin { .. } => StatusCode::FORBIDDEN,
                _ => StatusCode::UNAUTHORIZED,
            };
            return reply(status, &Problem::new(&text::clean(&denied.to_string())));
        }
    };
    let method = req.method().clone();
    let call = Call {
        relay,
        admin: &admin,
        peer,
        path: &path,
    };
    match (method, path.as_str()) {
        (Method::GET, "/v1/admin/sessions") => reply(StatusCode::OK, &relay.open_sessions.list()),
        (Method::GET, "/v1/admin/backends") => reply(StatusCode::OK, &backends(relay)),
        (Method::POST, "/v1/admin/backends/drain") => drain(&call, req, true).await,
        (Method::POST, "/v1/admin/backends/enable") => drain(&call, req, false).await,
        (Method::GET, "/v1/admin/locks") => locks(relay).await,
        (Method::POST, "/v1/admin/locks") => lock(&call, req).await,
        (Method::POST, "/v1/admin/unlock") => unlock(&call, req).await,
        _ => reply(StatusCode::NOT_FOUND, &Problem::new("no such admin call")),
    }
}

/// One authenticated admin call, as its audit line names it.
struct Call<'a> {
    relay: &'a Relay,
    admin: &'a str,
    peer: SocketAddr,
    path: &'a str,
}

impl Call<'_> {
    fn audit(
        &self,
        subject: Option<&str>,
        service: Option<&str>,
        backend: Option<&str>,
        reason: String,
    ) {
        self.relay.audit.record(&Event {
            event: "admin_action",
            subject,
            peer: Some(self.peer.to_string()),
            service,
            backend,
            path: Some(self.path),
            reason: Some(format!("by {}: {reason}", self.admin)),
            ..Default::default()
        });
    }
}

#[derive(Serialize)]
struct Problem {
    error: String,
}

impl Problem {
    fn new(e: &str) -> Self {
        Problem { error: e.into() }
    }
}

fn reply(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The request's JSON body, at most [`MAX_BODY`] bytes.
async fn body<T: for<'de> Deserialize<'de>>(req: Request<Incoming>) -> Result<T, Response<Body>> {
    let collect = Limited::new(req.into_body(), MAX_BODY).collect();
    let bytes = tokio::time::timeout(BODY_TIMEOUT, collect)
        .await
        .map_err(|_| reply(StatusCode::REQUEST_TIMEOUT, &Problem::new("body: too slow")))?
        .map_err(|e| {
            reply(
                StatusCode::BAD_REQUEST,
                &Problem::new(&format!("body: {e}")),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| {
        reply(
            StatusCode::BAD_REQUEST,
            &Problem::new(&text::clean(&format!("body: {e}"))),
        )
    })
}

/// Refreshes the backend gauges, then every metric in the text format.
fn metrics(relay: &Relay) -> Response<Body> {
    for (service, _, pool) in relay.pools() {
        for b in &pool.backends {
            relay
                .metrics
                .backend_up
                .with_label_values(&[service, &b.addr])
                .set(i64::from(b.available()));
        }
    }
    let mut resp = Response::new(Full::new(Bytes::from(relay.metrics.encode())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// One backend as `GET /v1/admin/backends` shows it (Apache's
/// balancer-manager, as JSON).
#[derive(Serialize)]
pub struct BackendInfo {
    pub service: String,
    pub route: Option<String>,
    pub backend: String,
    pub id: String,
    pub healthy: bool,
    pub drained: bool,
    pub available: bool,
    pub in_flight: usize,
}

fn backends(relay: &Relay) -> Vec<BackendInfo> {
    let mut out = Vec::new();
    for (service, route, pool) in relay.pools() {
        for b in &pool.backends {
            out.push(BackendInfo {
                service: service.into(),
                route: route.map(str::to_string),
                backend: b.addr.clone(),
                id: b.id.clone(),
                healthy: b.healthy(),
                drained: b.drained(),
                available: b.available(),
                in_flight: b.in_flight(),
            });
        }
    }
    out
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendRef {
    service: String,
    backend: String,
}

async fn drain(call: &Call<'_>, req: Request<Incoming>, drained: bool) -> Response<Body> {
    let target: BackendRef = match body(req).await {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    let (found, changed) = set_drained(call.relay, &target.service, &target.backend, drained);
    if found == 0 {
        return reply(
            StatusCode::NOT_FOUND,
            &Problem::new("no such backend in that service"),
        );
    }
    let shared = match call.relay.locks.shared() {
        Some(s) => {
            s.publish_drain(&target.service, &target.backend, drained)
                .await
        }
        None => false,
    };
    let what = if drained { "drained" } else { "enabled" };
    tracing::warn!(service = %target.service, backend = %target.backend, by = call.admin, shared, "backend {what}");
    call.audit(
        None,
        Some(&target.service),
        Some(&target.backend),
        format!(
            "backend {what}; {}",
            if shared {
                "every relay told"
            } else {
                "this relay only"
            }
        ),
    );
    #[derive(Serialize)]
    struct Done {
        service: String,
        backend: String,
        drained: bool,
        changed: bool,
        shared: bool,
    }
    reply(
        StatusCode::OK,
        &Done {
            service: target.service,
            backend: target.backend,
            drained,
            changed: changed > 0,
            shared,
        },
    )
}

/// Drains or re-enables `backend` in every pool of `service`: how many
/// pools hold it, and in how many that changed something.
fn set_drained(relay: &Relay, service: &str, backend: &str, drained: bool) -> (usize, usize) {
    let (mut found, mut changed) = (0, 0);
    for (s, _, pool) in relay.pools() {
        if s != service {
            continue;
        }
        for b in pool.backends.iter().filter(|b| b.addr == backend) {
            found += 1;
            changed += usize::from(b.set_drained(drained));
        }
    }
    (found, changed)
}

/// A drain notice from another relay (or this one's echo).
pub fn apply_drain(relay: &Relay, n: &crate::shared::Notice) {
    let (Some(service), Some(backend)) = (&n.service, &n.backend) else {
        return;
    };
    let drained = n.op == "drain";
    let (_, changed) = set_drained(relay, service, backend, drained);
    if changed > 0 {
        tracing::warn!(%service, %backend, "backend {} by another relay's admin", if drained { "drained" } else { "enabled" });
    }
}

#[derive(Serialize)]
struct LockEntry {
    subject: String,
    #[serde(flatten)]
    lock: LockInfo,
}

async fn locks(relay: &Relay) -> Response<Body> {
    let v: Vec<LockEntry> = relay
        .locks
        .list()
        .await
        .into_iter()
        .map(|(subject, lock)| LockEntry { subject, lock })
        .collect();
    reply(StatusCode::OK, &v)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LockRequest {
    subject: String,
    #[serde(default)]
    reason: Option<String>,
}

fn valid_subject(s: &str) -> bool {
    (1..=256).contains(&s.len()) && !s.chars().any(char::is_control)
}

async fn lock(call: &Call<'_>, req: Request<Incoming>) -> Response<Body> {
    let r: LockRequest = match body(req).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if !valid_subject(&r.subject) {
        return reply(
            StatusCode::BAD_REQUEST,
            &Problem::new("subject: 1 to 256 characters, no control characters"),
        );
    }
    let reason =
        text::clean(r.reason.as_deref().unwrap_or("locked by an administrator")).into_owned();
    let info = LockInfo {
        by: call.admin.to_string(),
        reason: reason.chars().take(200).collect(),
        at_unix: now_unix(),
    };
    let relay = call.relay;
    let outcome = relay
        .locks
        .lock(&r.subject, info, &relay.open_sessions, &relay.metrics)
        .await;
    tracing::warn!(subject = %r.subject, by = call.admin, ended_here = outcome.ended_here, shared = outcome.shared, "subject locked");
    call.audit(
        Some(&r.subject),
        None,
        None,
        format!(
            "subject locked ({reason}); {} session(s) ended here; {}",
            outcome.ended_here,
            if outcome.shared {
                "every relay told"
            } else {
                "this relay only (Redis out of reach or not configured)"
            }
        ),
    );
    reply(StatusCode::OK, &outcome)
}

async fn unlock(call: &Call<'_>, req: Request<Incoming>) -> Response<Body> {
    let r: LockRequest = match body(req).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if !valid_subject(&r.subject) {
        return reply(
            StatusCode::BAD_REQUEST,
            &Problem::new("subject: 1 to 256 characters, no control characters"),
        );
    }
    let outcome = call.relay.locks.unlock(&r.subject).await;
    tracing::warn!(subject = %r.subject, by = call.admin, shared = outcome.shared, "subject unlocked");
    call.audit(Some(&r.subject), None, None, "subject unlocked".into());
    reply(StatusCode::OK, &outcome)
}
