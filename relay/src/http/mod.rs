//! Services of kind `http`: the relay speaks HTTP/1.1 on each stream and
//! proxies every request, as HAProxy or `mod_proxy_balancer` would in front
//! of a Data Center cluster, with identity on top.
//!
//! Per request, in order: check the caller (token still valid, groups,
//! route and rules) → pick a backend (affinity cookie, else balancing,
//! skipping nodes that are down) → connect, retrying another node if the
//! connection fails → forward with rewritten headers → rewrite the answer's
//! `Location` and cookies → audit. WebSocket upgrades are passed through
//! both ways once the backend agrees.

pub mod rewrite;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, Mutex};
use tokio_util::sync::CancellationToken;

use crate::backends::{self, health, InFlight, Pool};
use crate::audit::Event;
use crate::auth::{now_unix, Identity};
use crate::config::ServiceConfig;
use crate::Relay;

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The runtime side of one http service: its routes and their pools.
pub struct HttpService {
    pub cfg: ServiceConfig,
    /// Longest prefix first; the last one is "/" with the service's backends.
    routes: Vec<Route>,
    public_hosts: Vec<String>,
}

struct Route {
    prefix: String,
    pool: Arc<Pool>,
    allow_groups: Option<Vec<String>>,
}

impl HttpService {
    pub fn new(cfg: &ServiceConfig) -> Self {
        let balance = cfg.http.balance;
        let mut routes: Vec<Route> = cfg
            .http
            .routes
            .iter()
            .map(|r| Route {
                prefix: r.prefix.clone(),
                pool: Arc::new(Pool::new(&r.backends, balance)),
                allow_groups: r.allow_groups.clone(),
            })
            .collect();
        routes.push(Route {
            prefix: String::new(),
            pool: Arc::new(Pool::new(&cfg.backends, balance)),
            allow_groups: None,
        });
        Self {
            public_hosts: cfg
                .http
                .public_urls
                .iter()
                .filter_map(|u| u.host_str().map(str::to_string))
                .collect(),
            cfg: cfg.clone(),
            routes,
        }
    }

    /// Starts the active health checks, if configured, until `stop`.
    pub fn spawn_health_checks(&self, stop: &CancellationToken) {
        let Some(h) = &self.cfg.http.health else {
            return;
        };
        for route in &self.routes {
            for b in &route.pool.backends {
                tokio::spawn(health::check_loop(b.clone(), h.clone(), stop.clone()));
            }
        }
    }

    fn route(&self, path: &str) -> &Route {
        self.routes
            .iter()
            .find(|r| {
                r.prefix.is_empty()
                    || path == r.prefix
                    || path
                        .strip_prefix(r.prefix.as_str())
                        .is_some_and(|rest| rest.starts_with('/') || rest.starts_with('?'))
            })
            .expect("the default route matches every path")
    }
}

/// Who is on the other end of a stream.
pub struct StreamCtx {
    pub relay: Arc<Relay>,
    pub svc: Arc<HttpService>,
    pub identity: watch::Receiver<Identity>,
    pub session: String,
    pub client_ip: String,
}

/// The upstream connection kept for one downstream connection (keep-alive).
type Reuse = Mutex<Option<(String, SendRequest<ProxyBody>)>>;

/// Serves HTTP/1.1 on one tunnel stream until the client closes it.
pub async fn serve<S>(ctx: StreamCtx, io: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ctx = Arc::new(ctx);
    let reuse: Arc<Reuse> = Arc::new(Mutex::new(None));
    let svc = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        let reuse = reuse.clone();
        async move { Ok::<_, Infallible>(handle(&ctx, &reuse, req).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades()
        .await
    {
        tracing::debug!(error = %e, "http stream ended with an error");
    }
}

/// What happened to one request, for the audit line.
struct Outcome {
    backend: Option<String>,
    note: Option<String>,
}

async fn handle(ctx: &StreamCtx, reuse: &Reuse, req: Request<Incoming>) -> Response<ProxyBody> {
    let started = Instant::now();
    let identity = ctx.identity.borrow().clone();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let (resp, outcome) = proxy(ctx, reuse, req, &identity).await;
    let status = resp.status().as_u16();
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
        path: Some(&path),
        status: Some(status),
        reason: outcome.note,
        duration_ms: Some(started.elapsed().as_millis() as u64),
        ..Default::default()
    });
    resp
}

async fn proxy(
    ctx: &StreamCtx,
    reuse: &Reuse,
    mut req: Request<Incoming>,
    identity: &Identity,
) -> (Response<ProxyBody>, Outcome) {
    let svc = &ctx.svc;
    let name = &svc.cfg.display_name;
    let refuse = |status: StatusCode, text: String| {
        let note = Some(text.clone());
        (
            page(status, &text),
            Outcome {
                backend: None,
                note,
            },
        )
    };

    // Phase: authorize this request.
    if identity.expires_at + ctx.relay.config.identity.leeway.as_secs() <= now_unix() {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "your access token expired; sign in again".into(),
        );
    }
    let groups = &identity.groups;
    let in_any = |allowed: &[String]| groups.iter().any(|g| allowed.contains(g));
    if !svc.cfg.allows(groups) {
        return refuse(
            StatusCode::FORBIDDEN,
            format!("{} may not use {name}", identity.subject),
        );
    }
    let path_q = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let route = svc.route(req.uri().path());
    if let Some(allowed) = &route.allow_groups {
        if !in_any(allowed) {
            return refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "{} may not use {}{} on {name}",
                    identity.subject, route.prefix, "/…"
                ),
            );
        }
    }
    if let Some(rule) = svc
        .cfg
        .http
        .rules
        .iter()
        .find(|r| r.matches(req.method().as_str(), &path_q))
    {
        if !in_any(&rule.allow_groups) {
            return refuse(
                StatusCode::FORBIDDEN,
                format!("{}: {}", identity.subject, rule.reason),
            );
        }
    }

    // Phase: prepare what goes upstream.
    let upgrade = is_upgrade(req.headers());
    let down_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let affinity_name = svc.cfg.http.affinity_cookie.as_deref();
    let affinity = affinity_name.and_then(|n| rewrite::cookie(req.headers(), n));
    let local_host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    let assertion = ctx
        .relay
        .signer
        .sign(&identity.subject, groups, &svc.cfg.name);
    rewrite::upstream_request(
        req.headers_mut(),
        &rewrite::Forwarded {
            client_ip: &ctx.client_ip,
            host: local_host.as_deref(),
            user: &identity.subject,
            groups,
            assertion: &assertion,
            affinity_cookie: affinity_name,
        },
        upgrade,
    );
    let (mut parts, body) = req.into_parts();
    parts.uri = path_q
        .parse()
        .unwrap_or_else(|_| http::Uri::from_static("/"));
    let replayable = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS)
        && body.size_hint().exact() == Some(0);
    let mut body = Some(body.boxed());

    // Phase: pick a backend and send, trying other nodes on failure.
    let mut tried: Vec<String> = Vec::new();
    let mut last_error = None;
    loop {
        let Some(pick) = route.pool.pick(affinity.as_deref(), &tried) else {
            let text = match last_error {
                Some(e) => format!("no healthy backend for {name} (last error: {e})"),
                None => format!("no healthy backend for {name}"),
            };
            let status = StatusCode::SERVICE_UNAVAILABLE;
            return (
                page(status, &text),
                Outcome {
                    backend: None,
                    note: Some(text),
                },
            );
        };
        let backend = pick.backend.clone();
        tried.push(backend.addr.clone());
        let host = svc
            .cfg
            .http
            .public_urls
            .first()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_else(|| backend.addr.clone());
        parts.headers.insert(
            header::HOST,
            HeaderValue::from_str(&host).unwrap_or(HeaderValue::from_static("localhost")),
        );

        let mut sender =
            match upstream(reuse, &backend.addr, svc.cfg.connect_timeout, upgrade).await {
                Ok(s) => s,
                Err(e) => {
                    // Nothing was sent: any request may go to another node.
                    backend.eject(backends::PASSIVE_EJECT);
                    last_error = Some(format!("{}: {e}", backend.addr));
                    continue;
                }
            };
        let this_body = match body.take() {
            Some(b) => b,
            None if replayable => empty(),
            None => unreachable!("a consumed body is never retried"),
        };
        let guard = Pool::start_request(&backend);
        // Only a request that may be retried keeps a copy of its head.
        let head = if replayable {
            parts.clone()
        } else {
            std::mem::replace(&mut parts, Request::new(()).into_parts().0)
        };
        let upstream_req = Request::from_parts(head, this_body);
        match sender.send_request(upstream_req).await {
            Ok(mut resp) => {
                if !upgrade {
                    *reuse.lock().await = Some((backend.addr.clone(), sender));
                }
                let status = resp.status();
                if status == StatusCode::SWITCHING_PROTOCOLS {
                    if let Some(down) = down_upgrade {
                        let up = hyper::upgrade::on(&mut resp);
                        tokio::spawn(splice_upgraded(down, up, guard));
                    }
                    let (p, _) = resp.into_parts();
                    let mut resp = Response::from_parts(p, empty());
                    add_affinity(&mut resp, affinity_name, &backend.id, pick.sticky);
                    return (
                        resp,
                        Outcome {
                            backend: Some(backend.addr.clone()),
                            note: None,
                        },
                    );
                }
                let (mut p, b) = resp.into_parts();
                rewrite_response(&mut p.headers, svc, &backend.addr, local_host.as_deref());
                let mut resp = Response::from_parts(
                    p,
                    Tracked {
                        inner: b.boxed(),
                        _guard: guard,
                    }
                    .boxed(),
                );
                add_affinity(&mut resp, affinity_name, &backend.id, pick.sticky);
                return (
                    resp,
                    Outcome {
                        backend: Some(backend.addr.clone()),
                        note: None,
                    },
                );
            }
            Err(e) => {
                let text = format!("{name} did not answer ({}: {e})", backend.addr);
                if replayable && !tried.is_empty() && tried.len() < 4 {
                    tracing::warn!("{text}; retrying on another node");
                    last_error = Some(text);
                    continue;
                }
                let status = StatusCode::BAD_GATEWAY;
                return (
                    page(status, &text),
                    Outcome {
                        backend: Some(backend.addr.clone()),
                        note: Some(text),
                    },
                );
            }
        }
    }
}

/// A ready upstream connection: the one kept from the previous request on
/// this stream if it goes to the same node, else a new one.
async fn upstream(
    reuse: &Reuse,
    addr: &str,
    timeout: std::time::Duration,
    upgrade: bool,
) -> std::io::Result<SendRequest<ProxyBody>> {
    // Take the kept connection out; the lock is not held while waiting.
    let kept = reuse.lock().await.take();
    if let Some((kept_addr, mut sender)) = kept {
        if kept_addr == addr && !upgrade && sender.ready().await.is_ok() {
            return Ok(sender);
        }
    }
    let tcp = backends::connect(addr, timeout).await?;
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(tcp))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}

/// Copies bytes both ways once both sides have switched protocols.
async fn splice_upgraded(
    down: hyper::upgrade::OnUpgrade,
    up: hyper::upgrade::OnUpgrade,
    _guard: InFlight,
) {
    let (down, up) = match tokio::try_join!(down, up) {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut down = TokioIo::new(down);
    let mut up = TokioIo::new(up);
    let _ = gangway_transport::duplex::splice(&mut down, &mut up).await;
}

fn is_upgrade(headers: &http::HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
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

fn add_affinity<B>(resp: &mut Response<B>, name: Option<&str>, id: &str, sticky: bool) {
    if let (Some(name), false) = (name, sticky) {
        if let Ok(v) = HeaderValue::from_str(&rewrite::affinity_set_cookie(name, id)) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
}

fn empty() -> ProxyBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// A short error page that names the service and the reason.
fn page(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let body = format!("Gangway: {text}\n");
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(
            "x-gangway-error",
            HeaderValue::from_str(&text.replace(['\r', '\n'], " "))
                .unwrap_or(HeaderValue::from_static("error")),
        )
        .body(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("static response")
}

/// A response body that keeps its backend's in-flight count until done.
struct Tracked {
    inner: ProxyBody,
    _guard: InFlight,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
