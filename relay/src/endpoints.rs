//! The relay's HTTP surface: discovery, catalog, health, and the tunnel
//! upgrade. Everything else is 404.
//!
//! Health for balancers: `/healthz` answers 200 while the process serves;
//! `/readyz` answers 503 while the relay drains or has no signing keys of
//! its provider loaded (it cannot admit anyone then), else 200.
//!
//! Responses are built without a fallible builder, and any client text in
//! them (a token's reason for refusal) goes through [`crate::text`]: no
//! input can make a response fail to build.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::admission::Unauthenticated;
use crate::audit::Event;
use crate::auth::{now_unix, AuthError, Identity};
use crate::{policy, text, tunnel, Live, Relay};
use gangway_wire::api::{Catalog, Discovery, Service};

type Body = Full<Bytes>;

/// One client connection, as its requests see it.
pub struct Conn {
    /// The client's address, `ip:port`.
    pub peer: String,
    /// Its place among its address's unauthenticated connections, given
    /// back at its first authenticated request.
    unauthenticated: Mutex<Option<Unauthenticated>>,
}

impl Conn {
    pub fn new(peer: String, unauthenticated: Unauthenticated) -> Self {
        Self {
            peer,
            unauthenticated: Mutex::new(Some(unauthenticated)),
        }
    }

    /// The connection has authenticated: it no longer counts against its
    /// address's unauthenticated cap.
    fn authenticated(&self) {
        let slot = self
            .unauthenticated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(slot);
    }
}

/// Routes one request, with the relay's current state.
pub async fn handle(
    live: Arc<Live>,
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let relay = live.current();
    let peer = conn.peer.clone();
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => readyz(&relay).await,
        (&Method::GET, "/.well-known/gangway") => discovery(&relay),
        (&Method::GET, "/.well-known/jwks.json") => json(&relay.signer.jwks()),
        (&Method::GET, "/v1/catalog") => {
            match authenticate(&relay, &req, &peer, "/v1/catalog").await {
                Ok(id) => {
                    conn.authenticated();
                    catalog(&relay, &id)
                }
                Err(resp) => resp,
            }
        }
        (&Method::GET, "/v1/tunnel") => tunnel_upgrade(live, relay, &conn, req).await,
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(resp)
}

/// A response with `status`, `content_type` and `body`: nothing in it can
/// fail to build.
fn response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    response(
        status,
        "text/plain; charset=utf-8",
        Bytes::from(body.to_string()),
    )
}

fn json(value: &impl Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = response(StatusCode::OK, "application/json", Bytes::from(body));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// How long `/readyz` waits for a first JWKS fetch before answering 503.
const READY_KEYS_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// `/readyz`: 503 while draining or without the provider's keys.
async fn readyz(relay: &Relay) -> Response<Body> {
    if relay.draining() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    match tokio::time::timeout(READY_KEYS_WAIT, relay.verifier.ensure_keys()).await {
        Ok(true) => text(StatusCode::OK, "ready\n"),
        _ => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no signing keys of the identity provider loaded\n",
        ),
    }
}

fn discovery(relay: &Relay) -> Response<Body> {
    let id = &relay.config.identity;
    json(&Discovery {
        issuer: id.issuer.clone(),
        client_id: id.client_id.clone(),
        audience: id.audience.clone(),
        scopes: id.scopes.clone(),
        protocol_version: gangway_wire::PROTOCOL_VERSION,
        relay_version: Some(env!("CARGO_PKG_VERSION").into()),
        dpop_signing_alg_values_supported: vec![gangway_dpop::ALG.to_string()],
    })
}

fn catalog(relay: &Relay, id: &Identity) -> Response<Body> {
    let services = relay
        .config
        .services
        .iter()
        .filter(|s| policy::may_use(s, &id.groups))
        .map(|s| Service {
            name: s.name.clone(),
            kind: s.kind,
            display_name: s.display_name.clone(),
            local_port: s.local_port,
        })
        .collect();
    json(&Catalog {
        subject: id.subject.clone(),
        groups: id.groups.clone(),
        services,
    })
}

/// Authenticates a request; on failure returns the 401 (or 503) to send,
/// after writing the audit line.
async fn authenticate(
    relay: &Relay,
    req: &Request<Incoming>,
    peer: &str,
    what: &str,
) -> Result<Identity, Response<Body>> {
    let result = async {
        let headers = req.headers();
        let presented = crate::dpop::presented(headers)?;
        let mut identity = relay.verifier.verify(presented.token).await?;
        let cfg = &relay.config.dpop;
        let htu = crate::dpop::htu_for(cfg, headers, req.uri().path());
        let htm = req.method().as_str();
        crate::dpop::bind(
            cfg,
            &relay.replays,
            &presented,
            &mut identity,
            htm,
            htu,
            now_unix(),
        )
        .await?;
        Ok(identity)
    }
    .await;
    result.map_err(|e: AuthError| {
        relay
            .metrics
            .auth_failures
            .with_label_values(&[e.code()])
            .inc();
        relay.audit.record(&Event {
            event: "auth_failed",
            peer: Some(peer.to_string()),
            service: Some(what),
            code: Some(e.code()),
            reason: Some(e.to_string()),
            ..Default::default()
        });
        tracing::info!(%peer, reason = %e, "refused request to {what}");
        unauthorized(&e)
    })
}

/// 401 with `WWW-Authenticate` naming the reason (RFC 6750 `Bearer`, or
/// RFC 9449 `DPoP` with the algorithms accepted when the refusal is about
/// DPoP), or 503 when the fault is ours. The reason can quote the token:
/// cleaned for both.
fn unauthorized(e: &AuthError) -> Response<Body> {
    let reason = text::clean(&e.to_string()).into_owned();
    if e.is_server_side() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("cannot check tokens now: {reason}\n"),
        );
    }
    let mut resp = text(
        StatusCode::UNAUTHORIZED,
        &format!("invalid token: {reason}\n"),
    );
    let description = text::quotable(&e.to_string());
    let challenge = match e.dpop_error() {
        Some(code) => format!(
            "DPoP error=\"{code}\", error_description=\"{description}\", algs=\"{}\"",
            gangway_dpop::ALG
        ),
        None => format!("Bearer error=\"invalid_token\", error_description=\"{description}\""),
    };
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_str(&challenge)
            .unwrap_or(HeaderValue::from_static("Bearer error=\"invalid_token\"")),
    );
    resp
}

/// `GET /v1/tunnel`: authenticate, then upgrade to a WebSocket and hand the
/// connection to [`tunnel::serve`].
async fn tunnel_upgrade(
    live: Arc<Live>,
    relay: Arc<Relay>,
    conn: &Conn,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let peer = conn.peer.clone();
    if relay.draining() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "relay is draining; connect to another relay\n",
        );
    }
    let identity = match authenticate(&relay, &req, &peer, "/v1/tunnel").await {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    conn.authenticated();
    let headers = req.headers();
    let is_upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|_| is_upgrade && version_ok)
    else {
        return text(
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade (version 13)\n",
        );
    };
    if let Some(lock) = relay.locks.lock_of(&identity.subject).await {
        relay.metrics.refused("subject_locked");
        relay.audit.record(&Event {
            event: "session_refused",
            subject: Some(&identity.subject),
            peer: Some(peer.clone()),
            code: Some("subject_locked"),
            reason: Some(format!("locked by {}: {}", lock.by, lock.reason)),
            ..Default::default()
        });
        return text(
            StatusCode::FORBIDDEN,
            &format!(
                "{} is locked out of this relay by an administrator; ask them to unlock it\n",
                text::clean(&identity.subject)
            ),
        );
    }
    let Some(slot) = relay.admission.session(&identity.subject) else {
        relay.metrics.refused("too_many_sessions");
        let max = relay.config.limits.max_sessions_per_subject;
        relay.audit.record(&Event {
            event: "session_refused",
            subject: Some(&identity.subject),
            peer: Some(peer.clone()),
            code: Some("too_many_sessions"),
            reason: Some(format!("already {max} sessions open")),
            ..Default::default()
        });
        return text(
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "{} has {max} tunnel sessions open on this relay already (max_sessions_per_subject); close one\n",
                identity.subject
            ),
        );
    };
    let fleet_slot = match crate::ratelimit::sessions::admit(&relay, &identity.subject).await {
        Ok(s) => s,
        Err(max) => {
            relay.metrics.refused("too_many_sessions");
            relay.audit.record(&Event {
                event: "session_refused",
                subject: Some(&identity.subject),
                peer: Some(peer.clone()),
                code: Some("too_many_sessions"),
                reason: Some(format!("already {max} sessions open across relays")),
                ..Default::default()
            });
            return text(
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "{} has {max} tunnel sessions open across the relays already (redis.max_sessions_per_subject); close one\n",
                    text::clean(&identity.subject)
                ),
            );
        }
    };
    let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) else {
        return text(StatusCode::BAD_REQUEST, "bad Sec-WebSocket-Key\n");
    };
    // What the DPoP proofs of the session's token refreshes must name.
    let htu = crate::dpop::htu_for(&relay.config.dpop, req.headers(), req.uri().path());
    let on_upgrade = hyper::upgrade::on(&mut req);
    // Tracked, so that a drain waits for the session.
    relay.sessions_served().spawn(async move {
        // Held for as long as the session lives.
        let _slot = (slot, fleet_slot);
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(gangway_transport::ws::config()),
                )
                .await;
                tunnel::serve(live, ws, identity, peer, htu).await;
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    resp
}
