//! One request through the proxy, as named phases in the order they run
//! (the shape of pingora's `ProxyHttp`):
//!
//! 0. the canonical target ([`Target::new`]): what the rules judge, the
//!    audit line names and the backend gets; a target a backend could read
//!    otherwise is refused with 400;
//! 1. [`authorize`]: policy's verdict on the caller and the request target,
//!    giving the route that serves it;
//! 2. [`prepare`]: the upstream request: spoofed identity and hop-by-hop
//!    headers out, forwarded and identity headers in, the canonical target
//!    in origin form;
//! 3. [`send_with_retry`]: pick a node (affinity cookie, else balancing,
//!    skipping nodes that are down), connect and send; another node is tried
//!    when connecting fails, or when sending fails and the request can be
//!    replayed;
//! 4. [`respond`]: the answer's `Location` and cookies pointed back at the
//!    local address, the route's affinity cookie set, an upgrade spliced
//!    through;
//! 5. [`audit`]: one line per request, refused or not.
//!
//! A phase that refuses returns [`Refused`], which becomes the error page.

use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper::upgrade::OnUpgrade;

use super::body::{empty, page, ProxyBody, Tracked};
use super::upstream::{self, Reuse};
use super::{rewrite, HttpService, StreamCtx};
use crate::audit::Event;
use crate::auth::{now_unix, Identity};
use crate::backends::{Backend, InFlight, Pool, PASSIVE_EJECT};
use crate::config::{Counted, ServiceConfig};
use crate::policy::{self, RequestDenial, ServiceDenial, Target};

/// A replayable request goes to at most this many nodes.
const MAX_TRIES: usize = 4;

/// Serves one request: the phases, then the audit line.
pub(super) async fn handle(
    ctx: &StreamCtx,
    reuse: &Reuse,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let identity = ctx.identity.borrow().clone();
    let method = req.method().clone();
    let target = match Target::new(&method, req.uri()) {
        Ok(t) => t,
        Err(e) => {
            // Named as sent: there is no canonical form to name.
            let raw = req.uri().to_string();
            let (resp, outcome) = Refused {
                status: StatusCode::BAD_REQUEST,
                text: format!("refused request target: {e}"),
                backend: None,
                retry_after: None,
            }
            .into_response();
            audit(ctx, &identity, &method, &raw, &resp, outcome, started);
            return resp;
        }
    };
    let (resp, outcome) = match proxy(ctx, reuse, req, &identity, &target).await {
        Ok((resp, backend)) => (
            resp,
            Outcome {
                backend: Some(backend),
                note: None,
            },
        ),
        Err(refused) => refused.into_response(),
    };
    audit(
        ctx,
        &identity,
        &method,
        &target.path,
        &resp,
        outcome,
        started,
    );
    resp
}

/// Phases 1 to 4; on success, the answer and the node that gave it.
async fn proxy(
    ctx: &StreamCtx,
    reuse: &Reuse,
    req: Request<Incoming>,
    identity: &Identity,
    target: &Target,
) -> Result<(Response<ProxyBody>, String), Refused> {
    let route = authorize(ctx, identity, target)?;
    rate_limit(ctx, identity, target).await?;
    let mut up = prepare(ctx, identity, req, target, route);
    let sent = send_with_retry(&ctx.svc, reuse, ctx.svc.pool(route), &mut up).await?;
    let (resp, backend) = respond(&ctx.svc, up, sent, &ctx.ended);
    // The answer's bytes count as they reach the agent.
    let down = ctx
        .relay
        .metrics
        .bytes
        .with_label_values(&[&ctx.svc.cfg.name, "down"]);
    let resp = resp.map(|b| crate::metrics::CountedBody::new(b, down).boxed());
    Ok((resp, backend))
}

/// Why a request got an error page instead of the backend's answer.
struct Refused {
    status: StatusCode,
    text: String,
    /// The node that failed, when one was reached.
    backend: Option<String>,
    /// Seconds for `Retry-After` (a rate limit's refusal).
    retry_after: Option<u64>,
}

impl Refused {
    fn into_response(self) -> (Response<ProxyBody>, Outcome) {
        let mut resp = page(self.status, &self.text);
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        (
            resp,
            Outcome {
                backend: self.backend,
                note: Some(self.text),
            },
        )
    }
}

/// What happened to one request, for the audit line.
struct Outcome {
    backend: Option<String>,
    note: Option<String>,
}

/// Phase 1: policy's verdict, worded for the browser. On success, the
/// route that serves the request (see [`policy::route`]).
fn authorize(
    ctx: &StreamCtx,
    identity: &Identity,
    target: &Target,
) -> Result<Option<usize>, Refused> {
    let svc = &ctx.svc.cfg;
    let leeway = ctx.relay.config.identity.leeway;
    policy::authorize_request(svc, identity, target, leeway, now_unix()).map_err(|denial| {
        let (who, name) = (&identity.subject, &svc.display_name);
        let (status, text) = match denial {
            RequestDenial::Service(ServiceDenial::Expired) => (
                StatusCode::UNAUTHORIZED,
                "your access token expired; sign in again".to_string(),
            ),
            RequestDenial::Service(ServiceDenial::NotBound) => (
                StatusCode::UNAUTHORIZED,
                format!("{name} takes only tokens bound to this device's key (DPoP); sign in again with an up-to-date agent"),
            ),
            RequestDenial::Service(ServiceDenial::NotInGroups) => {
                (StatusCode::FORBIDDEN, format!("{who} may not use {name}"))
            }
            RequestDenial::Route { prefix } => (
                StatusCode::FORBIDDEN,
                format!("{who} may not use {prefix}/… on {name}"),
            ),
            RequestDenial::Rule { reason } => (StatusCode::FORBIDDEN, format!("{who}: {reason}")),
        };
        Refused {
            status,
            text,
            backend: None,
            retry_after: None,
        }
    })
}

/// Phase 1b: the rate limits on requests (`[[rate_limit]]` with
/// `on = "requests"`): 429 with `Retry-After` when one refuses.
async fn rate_limit(ctx: &StreamCtx, identity: &Identity, target: &Target) -> Result<(), Refused> {
    let svc = &ctx.svc.cfg;
    let limiter = &ctx.relay.limiter;
    let checked = limiter
        .check(
            Counted::Requests,
            &svc.name,
            Some(&target.path),
            &identity.subject,
        )
        .await;
    checked.map_err(|limited| Refused {
        status: StatusCode::TOO_MANY_REQUESTS,
        text: format!(
            "too many requests to {} ({}, limit {} for each user); wait {} s and retry",
            svc.display_name,
            limited.rate,
            limited.limit,
            limited.retry_after_secs()
        ),
        backend: None,
        retry_after: Some(limited.retry_after_secs()),
    })
}

/// A request ready to go upstream, to one node or (when replayable) more.
struct Upstream {
    head: http::request::Parts,
    /// Taken by the first attempt.
    body: Option<ProxyBody>,
    /// Safe to send again to another node: a bodiless GET, HEAD or OPTIONS.
    replayable: bool,
    /// The client asked for a protocol upgrade (e.g. a WebSocket).
    upgrade: bool,
    /// The client's side of that upgrade, once the backend agrees.
    client_upgrade: Option<OnUpgrade>,
    /// The route's affinity cookie: its name and `Path`.
    affinity_cookie: Option<(String, String)>,
    /// The node id in the caller's affinity cookie of the route.
    affinity: Option<String>,
    /// The Host the client used (the agent's local address).
    local_host: Option<String>,
}

impl Upstream {
    /// The request for one attempt: a copy while another attempt may
    /// follow, else the prepared request itself.
    fn attempt(&mut self) -> Request<ProxyBody> {
        let body = match self.body.take() {
            Some(b) => b,
            None if self.replayable => empty(),
            None => unreachable!("a consumed body is never retried"),
        };
        // Only a request that may be retried keeps a copy of its head.
        let head = if self.replayable {
            self.head.clone()
        } else {
            std::mem::replace(&mut self.head, Request::new(()).into_parts().0)
        };
        Request::from_parts(head, body)
    }
}

/// Phase 2: what goes upstream, to a node of `route`.
fn prepare(
    ctx: &StreamCtx,
    identity: &Identity,
    mut req: Request<Incoming>,
    target: &Target,
    route: Option<usize>,
) -> Upstream {
    let svc = &ctx.svc.cfg;
    let upgrade = is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let affinity_cookie = ctx.svc.affinity_cookie(route);
    let affinity = affinity_cookie
        .as_ref()
        .and_then(|(n, _)| rewrite::cookie(req.headers(), n));
    let local_host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    let assertion = ctx
        .relay
        .signer
        .sign(&identity.subject, &identity.groups, &svc.name);
    rewrite::upstream_request(
        req.headers_mut(),
        &rewrite::Forwarded {
            client_ip: &ctx.client_ip,
            host: local_host.as_deref(),
            user: &identity.subject,
            groups: &identity.groups,
            assertion: &assertion,
            affinity_cookies: &ctx.svc.affinity_cookies,
        },
        upgrade,
    );
    let (mut head, body) = req.into_parts();
    head.uri = target.uri.clone();
    let replayable = matches!(head.method, Method::GET | Method::HEAD | Method::OPTIONS)
        && body.size_hint().exact() == Some(0);
    Upstream {
        head,
        body: Some({
            let up = ctx
                .relay
                .metrics
                .bytes
                .with_label_values(&[&svc.name, "up"]);
            crate::metrics::CountedBody::new(body, up).boxed()
        }),
        replayable,
        upgrade,
        client_upgrade,
        affinity_cookie,
        affinity,
        local_host,
    }
}

/// A backend's answer and the node that gave it.
struct Sent {
    resp: Response<Incoming>,
    backend: Arc<Backend>,
    /// The caller's affinity cookie chose the node.
    sticky: bool,
    /// Counts the request on the node until its body is done.
    guard: InFlight,
}

/// Phase 3: pick a node and send, trying other nodes on failure.
async fn send_with_retry(
    svc: &HttpService,
    reuse: &Reuse,
    pool: &Pool,
    up: &mut Upstream,
) -> Result<Sent, Refused> {
    let cfg = &svc.cfg;
    let name = &cfg.display_name;
    let mut tried: Vec<String> = Vec::new();
    let mut last_error = None;
    loop {
        let Some(pick) = pool.pick(up.affinity.as_deref(), &tried) else {
            return Err(no_healthy_backend(name, last_error));
        };
        let backend = pick.backend;
        tried.push(backend.addr.clone());
        up.head
            .headers
            .insert(header::HOST, upstream_host(cfg, &backend.addr));
        let connecting =
            upstream::connection(reuse, &backend.addr, cfg.connect_timeout, up.upgrade);
        let mut sender = match connecting.await {
            Ok(s) => s,
            Err(e) => {
                // Nothing was sent: any request may go to another node.
                backend.eject(PASSIVE_EJECT);
                last_error = Some(format!("{}: {e}", backend.addr));
                continue;
            }
        };
        let guard = Pool::start_request(&backend);
        match sender.send_request(up.attempt()).await {
            Ok(resp) => {
                if !up.upgrade {
                    upstream::keep(reuse, &backend.addr, sender).await;
                }
                return Ok(Sent {
                    resp,
                    backend,
                    sticky: pick.sticky,
                    guard,
                });
            }
            Err(e) => {
                let text = format!("{name} did not answer ({}: {e})", backend.addr);
                if up.replayable && tried.len() < MAX_TRIES {
                    tracing::warn!("{text}; retrying on another node");
                    last_error = Some(text);
                    continue;
                }
                return Err(Refused {
                    status: StatusCode::BAD_GATEWAY,
                    text,
                    backend: Some(backend.addr.clone()),
                    retry_after: None,
                });
            }
        }
    }
}

fn no_healthy_backend(name: &str, last_error: Option<String>) -> Refused {
    let text = match last_error {
        Some(e) => format!("no healthy backend for {name} (last error: {e})"),
        None => format!("no healthy backend for {name}"),
    };
    Refused {
        status: StatusCode::SERVICE_UNAVAILABLE,
        text,
        backend: None,
        retry_after: None,
    }
}

/// The Host a node is sent: the service's first public URL's host, else the
/// node's own address.
fn upstream_host(cfg: &ServiceConfig, addr: &str) -> HeaderValue {
    let host = cfg
        .http
        .public_urls
        .first()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| addr.to_string());
    HeaderValue::from_str(&host).unwrap_or(HeaderValue::from_static("localhost"))
}

/// Phase 4: the answer as the client gets it; with the node's address.
fn respond(
    svc: &HttpService,
    up: Upstream,
    sent: Sent,
    ended: &tokio_util::sync::CancellationToken,
) -> (Response<ProxyBody>, String) {
    let Sent {
        mut resp,
        backend,
        sticky,
        guard,
    } = sent;
    let mut out = if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client) = up.client_upgrade {
            let server = hyper::upgrade::on(&mut resp);
            let ended = ended.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = upstream::splice_upgraded(client, server, guard) => {}
                    _ = ended.cancelled() => {}
                }
            });
        }
        let (p, _) = resp.into_parts();
        Response::from_parts(p, empty())
    } else {
        let (mut p, b) = resp.into_parts();
        rewrite_response(&mut p.headers, svc, &backend.addr, up.local_host.as_deref());
        Response::from_parts(p, Tracked::new(b.boxed(), guard).boxed())
    };
    if let (Some((name, path)), false) = (&up.affinity_cookie, sticky) {
        let cookie = rewrite::affinity_set_cookie(name, &backend.id, path);
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            out.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    (out, backend.addr.clone())
}

/// Phase 5: the audit line.
fn audit(
    ctx: &StreamCtx,
    identity: &Identity,
    method: &Method,
    path: &str,
    resp: &Response<ProxyBody>,
    outcome: Outcome,
    started: Instant,
) {
    let metrics = &ctx.relay.metrics;
    let service = ctx.svc.cfg.name.as_str();
    let status = resp.status();
    metrics
        .http_requests
        .with_label_values(&[service, status.as_str()])
        .inc();
    metrics
        .http_request_seconds
        .with_label_values(&[service])
        .observe(started.elapsed().as_secs_f64());
    if outcome.backend.is_none() {
        metrics.refused(match status {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::UNAUTHORIZED => "unauthenticated",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::TOO_MANY_REQUESTS => "rate_limited",
            StatusCode::SERVICE_UNAVAILABLE => "no_healthy_backend",
            _ => "other",
        });
    }
    ctx.relay.audit.record(&Event {
        event: if outcome.backend.is_some() {
            "http_request"
        } else {
            "http_refused"
        },
        subject: Some(&identity.subject),
        session: Some(&ctx.session),
        service: Some(&ctx.svc.cfg.name),
        backend: outcome.backend.as_deref(),
        method: Some(method.as_str()),
        path: Some(path),
        status: Some(resp.status().as_u16()),
        reason: outcome.note,
        duration_ms: Some(started.elapsed().as_millis() as u64),
        ..Default::default()
    });
}

/// A WebSocket upgrade (`Connection: upgrade`, `Upgrade: websocket`): the
/// only upgrade passed on. Any other (`h2c` above all, which would carry
/// requests past the relay's rules) has its headers dropped as hop-by-hop.
fn is_upgrade(headers: &http::HeaderMap) -> bool {
    let upgrades: Vec<_> = headers.get_all(header::UPGRADE).iter().collect();
    matches!(upgrades[..], [u] if u.to_str().is_ok_and(|u| u.trim().eq_ignore_ascii_case("websocket")))
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

fn rewrite_response(
    headers: &mut http::HeaderMap,
    svc: &HttpService,
    backend: &str,
    local_host: Option<&str>,
) {
    rewrite::strip_hop_by_hop(headers, false);
    if let Some(local) = local_host {
        for h in [header::LOCATION, header::CONTENT_LOCATION] {
            let new = headers.get(&h).and_then(|v| v.to_str().ok()).and_then(|v| {
                rewrite::rewrite_location(v, &svc.cfg.http.public_urls, backend, local)
            });
            if let Some(v) = new.and_then(|v| HeaderValue::from_str(&v).ok()) {
                headers.insert(h, v);
            }
        }
    }
    let cookies: Vec<String> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| {
            rewrite::rewrite_set_cookie(v, &svc.public_hosts, svc.cfg.http.strip_secure_cookies)
        })
        .collect();
    if !cookies.is_empty() {
        headers.remove(header::SET_COOKIE);
        for c in cookies {
            if let Ok(v) = HeaderValue::from_str(&c) {
                headers.append(header::SET_COOKIE, v);
            }
        }
    }
}
