//! The relay's HTTP surface: discovery, catalog, health, and the tunnel
//! upgrade. Everything else is 404.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::audit::Event;
use crate::auth::{bearer, AuthError, Identity};
use crate::{policy, tunnel, Relay};
use gangway_wire::api::{Catalog, Discovery, Service};

type Body = Full<Bytes>;

/// Routes one request.
pub async fn handle(
    relay: Arc<Relay>,
    peer: String,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/.well-known/gangway") => discovery(&relay),
        (&Method::GET, "/.well-known/jwks.json") => json(&relay.signer.jwks()),
        (&Method::GET, "/v1/catalog") => {
            match authenticate(&relay, &req, &peer, "/v1/catalog").await {
                Ok(id) => catalog(&relay, &id),
                Err(resp) => resp,
            }
        }
        (&Method::GET, "/v1/tunnel") => tunnel_upgrade(relay, peer, req).await,
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(resp)
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static response")
}

fn json(value: &impl Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(body)))
        .expect("static response")
}

fn discovery(relay: &Relay) -> Response<Body> {
    let id = &relay.config.identity;
    json(&Discovery {
        issuer: id.issuer.clone(),
        client_id: id.client_id.clone(),
        audience: id.audience.clone(),
        scopes: id.scopes.clone(),
        protocol_version: gangway_wire::PROTOCOL_VERSION,
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
    let result = match bearer(req.headers().get(header::AUTHORIZATION)) {
        Ok(token) => relay.verifier.verify(token).await,
        Err(e) => Err(e),
    };
    result.map_err(|e| {
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

fn unauthorized(e: &AuthError) -> Response<Body> {
    if e.is_server_side() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("cannot check tokens now: {e}\n"),
        );
    }
    let description = e.to_string().replace('"', "'");
    Response::builder()
        .status(StatusCode::UNAUTHORIZED)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(
            header::WWW_AUTHENTICATE,
            format!("Bearer error=\"invalid_token\", error_description=\"{description}\""),
        )
        .body(Full::new(Bytes::from(format!("invalid token: {e}\n"))))
        .expect("static response")
}

/// `GET /v1/tunnel`: authenticate, then upgrade to a WebSocket and hand the
/// connection to [`tunnel::serve`].
async fn tunnel_upgrade(
    relay: Arc<Relay>,
    peer: String,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let identity = match authenticate(&relay, &req, &peer, "/v1/tunnel").await {
        Ok(id) => id,
        Err(resp) => return resp,
    };
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
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(gangway_transport::ws::config()),
                )
                .await;
                tunnel::serve(relay, ws, identity, peer).await;
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Full::new(Bytes::new()))
        .expect("static response")
}
