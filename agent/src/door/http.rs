//! The door's HTTP gate: every request to an `http` service's listener is
//! checked here before it may enter the tunnel.
//!
//! ```text
//! local TCP ─ hyper server ─▶ check ─▶ strip our credential ─▶ hyper client ─▶ one tunnel stream
//!                               │        (per local connection, opened at the first allowed
//!                               │         request, kept alive and reused)
//!                               └─▶ 421 / 401 / 403 / the one-time URL, answered here
//! ```
//!
//! The checks, in order ([`Gate::check`], pure):
//! 1. **Host** is `127.0.0.1`, `localhost` or `[::1]` with this listener's
//!    port, and the request target is origin-form; else `421` (DNS
//!    rebinding: a web page whose name now points at 127.0.0.1).
//! 2. **Origin**, when present, is this listener's own
//!    (`http://127.0.0.1:PORT`, `localhost`, `[::1]`); else `403`.
//! 3. `/.gangway/open?t=TOKEN[&next=/path]`: the one-time URL. A valid,
//!    unused token sets the door cookie and answers `303` to `next`
//!    (a relative path only: no open redirect).
//! 4. A **local credential**: HTTP Basic whose password is the git secret,
//!    or the door cookie. Without one: `401` with `WWW-Authenticate: Basic
//!    realm="Gangway"` for git and other programs (git then asks its
//!    credential helper, `gangway git credential`); a browser (it sends
//!    `Sec-Fetch-Mode`, or `Accept: text/html`) gets no Basic challenge,
//!    and a page navigation gets a short page saying how to open the
//!    service through Gangway.
//! 5. Upgrades and unsafe methods (not GET/HEAD/OPTIONS) let in by the
//!    cookie must carry a local `Origin` (cross-site requests carry the
//!    attacker's, or none on old browsers).
//!
//! Our Authorization header and our cookie are removed before the request
//! goes on. hyper parses the local side and writes the request anew on the
//! tunnel side, so the relay only ever sees framing hyper produced: a
//! request with both `Content-Length` and `Transfer-Encoding` is read as
//! chunked with the length dropped and the connection closed after the
//! answer (RFC 9112 §6.1), conflicting lengths or a non-chunked
//! `Transfer-Encoding` are `400`, so nothing can ride inside a body past
//! these checks. Bodies stream both ways (no buffering); WebSocket
//! upgrades go through hyper's upgrade on both sides, then one splice.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use gangway_transport::Stream;
use gangway_wire::Refusal;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::secrets::COOKIE;
use super::Door;
use crate::listener::{self, ActiveGuard, Counted, ServiceStats};
use crate::pipelined::PipelinedStream;
use crate::relay_api::Service;
use crate::tunnel::Tunnel;
use crate::AgentError;

/// The reserved path prefix: never forwarded.
pub const RESERVED_PREFIX: &str = "/.gangway/";

/// The one-time URL's path.
pub const OPEN_PATH: &str = "/.gangway/open";

/// How long a local client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a stopped connection may take to finish its request.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The body of every answer: the relay's, streamed, or one of ours.
pub type Body = Either<Incoming, Full<Bytes>>;

/// The one-time URL for the listener on `port`.
pub fn open_url(port: u16, token: &str) -> String {
    format!("http://127.0.0.1:{port}{OPEN_PATH}?t={token}")
}

/// One listener's gate; shared by its connections.
pub struct Gate {
    service: Service,
    port: u16,
    tunnel: Tunnel,
    connect_wait: Duration,
    stats: Arc<ServiceStats>,
    door: Arc<Door>,
    streams: TaskTracker,
    stop: CancellationToken,
}

/// What the checks decided for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Let through; strip our Authorization header (`basic`) and our
    /// cookie (`cookie`) first.
    Forward { basic: bool, cookie: bool },
    /// The one-time URL.
    Open,
    /// Another path under [`RESERVED_PREFIX`].
    NotFound,
    /// Not for us (`Host`, or an absolute request target): 421.
    Misdirected,
    /// A foreign `Origin`, or an unsafe request let in by the cookie
    /// without one: 403.
    Origin { missing: bool },
    /// No local credential (`wrong`: one was sent, but not ours): 401.
    Credential { wrong: bool },
}

impl Gate {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        service: Service,
        port: u16,
        tunnel: Tunnel,
        connect_wait: Duration,
        stats: Arc<ServiceStats>,
        door: Arc<Door>,
        streams: TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        Gate {
            service,
            port,
            tunnel,
            connect_wait,
            stats,
            door,
            streams,
            stop,
        }
    }

    /// Serves one local connection until it closes or the environment
    /// stops.
    pub(crate) async fn serve(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        let stats = self.stats.clone();
        let _active = ActiveGuard::new(&stats);
        let conn = Arc::new(Conn {
            gate: self.clone(),
            upstream: Mutex::new(None),
        });
        let io = TokioIo::new(Counted {
            inner: tcp,
            stats: self.stats.clone(),
        });
        let service = hyper::service::service_fn(move |req| {
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(conn.handle(req).await) }
        });
        let served = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(io, service)
            .with_upgrades();
        tokio::pin!(served);
        let r = tokio::select! {
            r = served.as_mut() => r,
            _ = self.stop.cancelled() => {
                served.as_mut().graceful_shutdown();
                tokio::time::timeout(STOP_GRACE, served.as_mut())
                    .await
                    .unwrap_or(Ok(()))
            }
        };
        if let Err(e) = r {
            tracing::debug!(service = %self.service.name, %peer, "local HTTP connection ended: {e}");
        }
    }

    /// The checks of the module docs, on a request's method, target and
    /// headers.
    pub fn check(&self, method: &Method, uri: &http::Uri, headers: &HeaderMap) -> Verdict {
        check(
            self.port,
            method,
            uri,
            headers,
            |p| self.door.secrets().git_accepts(p),
            |c| self.door.secrets().browser_accepts(c),
        )
    }
}

/// [`Gate::check`] with the secret checks passed in (tests).
pub fn check(
    port: u16,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    git_ok: impl Fn(&[u8]) -> bool,
    cookie_ok: impl Fn(&[u8]) -> bool,
) -> Verdict {
    // 1. Host, once, local; the target in origin-form.
    let mut hosts = headers.get_all(header::HOST).iter();
    let host_ok = match (hosts.next(), hosts.next()) {
        (Some(h), None) => local_authority(h.as_bytes(), port),
        _ => false,
    };
    if !host_ok || uri.authority().is_some() || uri.scheme().is_some() || method == Method::CONNECT
    {
        return Verdict::Misdirected;
    }
    // 2. Origin: if any, ours.
    let mut origins = headers.get_all(header::ORIGIN).iter();
    let origin = match (origins.next(), origins.next()) {
        (None, _) => None,
        (Some(o), None) if local_origin(o.as_bytes(), port) => Some(o),
        _ => return Verdict::Origin { missing: false },
    };
    // 3. The door's own paths.
    let path = uri.path();
    if path.starts_with(RESERVED_PREFIX) {
        return if path == OPEN_PATH && (method == Method::GET || method == Method::HEAD) {
            Verdict::Open
        } else {
            Verdict::NotFound
        };
    }
    // 4. A local credential.
    let auth = headers.get(header::AUTHORIZATION);
    let basic = auth.is_some_and(|a| basic_password(a.as_bytes()).is_some_and(|p| git_ok(&p)));
    let mut cookie_sent = false;
    let mut cookie = false;
    for c in headers.get_all(header::COOKIE) {
        for v in cookie_values(c.as_bytes()) {
            cookie_sent = true;
            cookie |= cookie_ok(v);
        }
    }
    if !basic && !cookie {
        return Verdict::Credential {
            wrong: cookie_sent || auth.is_some_and(|a| basic_password(a.as_bytes()).is_some()),
        };
    }
    // 5. Cookie-borne unsafe requests and upgrades need our Origin.
    if !basic && origin.is_none() && (!is_safe(method) || is_upgrade(headers)) {
        return Verdict::Origin { missing: true };
    }
    Verdict::Forward {
        basic,
        cookie: cookie_sent,
    }
}

fn is_safe(m: &Method) -> bool {
    m == Method::GET || m == Method::HEAD || m == Method::OPTIONS
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
}

/// `host[:port]` names this listener: `127.0.0.1`, `localhost` (any case)
/// or `[::1]`, with `port` (or none when `port` is 80).
pub fn local_authority(v: &[u8], port: u16) -> bool {
    let (host, p) = match v.iter().rposition(|&b| b == b':') {
        // "[::1]" alone has colons inside the brackets.
        Some(i) if !v[i..].contains(&b']') => (&v[..i], Some(&v[i + 1..])),
        _ => (v, None),
    };
    let host_ok =
        host == b"127.0.0.1" || host == b"[::1]" || host.eq_ignore_ascii_case(b"localhost");
    let port_ok = match p {
        None => port == 80,
        Some(p) => {
            !p.is_empty()
                && p.len() <= 5
                && p.iter().all(u8::is_ascii_digit)
                && std::str::from_utf8(p)
                    .ok()
                    .and_then(|s| s.parse::<u16>().ok())
                    == Some(port)
        }
    };
    host_ok && port_ok
}

/// `Origin` is `http://` and this listener's authority, nothing more.
pub fn local_origin(v: &[u8], port: u16) -> bool {
    v.len() > 7 && v[..7].eq_ignore_ascii_case(b"http://") && local_authority(&v[7..], port)
}

/// The password of HTTP Basic credentials (any user name), decoded on the
/// stack.
fn basic_password(v: &[u8]) -> Option<PasswordBuf> {
    const SCHEME: &[u8] = b"basic ";
    if v.len() <= SCHEME.len() || !v[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let b64 = v[SCHEME.len()..].trim_ascii();
    let mut buf = PasswordBuf::default();
    // Longer than any credential of ours decodes to: not ours.
    if b64.len() > buf.bytes.len() / 3 * 4 {
        return None;
    }
    let n = STANDARD.decode_slice(b64, &mut buf.bytes).ok()?;
    let colon = buf.bytes[..n].iter().position(|&b| b == b':')?;
    buf.start = colon + 1;
    buf.end = n;
    Some(buf)
}

/// A decoded Basic password, without an allocation.
struct PasswordBuf {
    bytes: [u8; 192],
    start: usize,
    end: usize,
}

impl Default for PasswordBuf {
    fn default() -> Self {
        PasswordBuf {
            bytes: [0; 192],
            start: 0,
            end: 0,
        }
    }
}

impl std::ops::Deref for PasswordBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }
}

/// The values of every `gangway_door` pair in one `Cookie` header.
fn cookie_values(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b';').filter_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        (&pair[..eq] == COOKIE.as_bytes()).then(|| &pair[eq + 1..])
    })
}

/// One `Cookie` header without our pairs (`None`: nothing else was in it).
pub fn without_our_cookie(v: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(v.len());
    for pair in v.split(|&b| b == b';') {
        let t = pair.trim_ascii();
        let ours = t
            .iter()
            .position(|&b| b == b'=')
            .is_some_and(|eq| &t[..eq] == COOKIE.as_bytes());
        if ours || t.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(t);
    }
    (!out.is_empty()).then_some(out)
}

/// Removes our credential from `headers`.
fn strip(headers: &mut HeaderMap, basic: bool, cookie: bool) {
    if basic {
        headers.remove(header::AUTHORIZATION);
    }
    if cookie {
        let kept: Vec<HeaderValue> = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|c| without_our_cookie(c.as_bytes()))
            .filter_map(|c| HeaderValue::from_bytes(&c).ok())
            .collect();
        headers.remove(header::COOKIE);
        for c in kept {
            headers.append(header::COOKIE, c);
        }
    }
    // hyper answers `Expect: 100-continue` on this side when the body is
    // read; the relay need not see it.
    headers.remove(header::EXPECT);
}

/// `next` of the one-time URL: a path on this listener, nothing else.
pub fn safe_next(next: &str) -> Option<&str> {
    let b = next.as_bytes();
    let ok = b.first() == Some(&b'/')
        && !matches!(b.get(1), Some(b'/') | Some(b'\\'))
        && b.iter().all(|&c| c.is_ascii_graphic() && c != b'\\');
    ok.then_some(next)
}

/// Whether the request comes from a browser (which must never see a Basic
/// challenge), and whether it is a page navigation.
fn browser(headers: &HeaderMap) -> (bool, bool) {
    let mode = headers.get("sec-fetch-mode").map(HeaderValue::as_bytes);
    let html = headers
        .get(header::ACCEPT)
        .is_some_and(|a| a.as_bytes().windows(9).any(|w| w == b"text/html"));
    let browser = mode.is_some() || html;
    let navigate = mode.map_or(html, |m| m == b"navigate");
    (browser, navigate)
}

/// One local connection: its tunnel stream (once a request was let
/// through) as a hyper client.
struct Conn {
    gate: Arc<Gate>,
    /// The kept tunnel stream's client, and where its refusal would land.
    upstream: Mutex<Option<(SendRequest<Incoming>, RefusalSlot)>>,
}

/// Where a refusal read by the hyper client's connection task is left for
/// the request that waits on it.
type RefusalSlot = Arc<Mutex<Option<Refusal>>>;

impl Conn {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let gate = &self.gate;
        let verdict = gate.check(req.method(), req.uri(), req.headers());
        match verdict {
            Verdict::Forward { basic, cookie } => {
                let mut req = req;
                strip(req.headers_mut(), basic, cookie);
                self.forward(req).await
            }
            Verdict::Open => self.open(&req),
            Verdict::NotFound => plain(StatusCode::NOT_FOUND, "no such page"),
            Verdict::Misdirected => {
                let host = req
                    .headers()
                    .get(header::HOST)
                    .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
                    .unwrap_or_else(|| "(none)".into());
                gate.door.refuse(
                    &gate.service.name,
                    &format!("a request for Host {host:?}"),
                    "the Host is not this listener (DNS rebinding?)",
                );
                plain(
                    StatusCode::MISDIRECTED_REQUEST,
                    "this address only answers as 127.0.0.1, localhost or [::1] with its own port",
                )
            }
            Verdict::Origin { missing } => {
                let origin = req
                    .headers()
                    .get(header::ORIGIN)
                    .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned());
                let (caller, reason) = match (&origin, missing) {
                    (_, true) => (
                        "a browser request without Origin".to_string(),
                        "an unsafe request or upgrade needs a local Origin",
                    ),
                    (Some(o), false) => (format!("a web page at {o}"), "the Origin is not local"),
                    (None, false) => ("a web page".to_string(), "more than one Origin"),
                };
                gate.door.refuse(&gate.service.name, &caller, reason);
                plain(StatusCode::FORBIDDEN, reason)
            }
            Verdict::Credential { wrong } => {
                if wrong {
                    gate.door.refuse(
                        &gate.service.name,
                        "a local client",
                        "its Gangway credential is wrong or too old",
                    );
                } else {
                    // Git always asks once without credentials first: the
                    // challenge below is the normal start, not an attack.
                    tracing::debug!(service = %gate.service.name, "no local credential: challenged");
                }
                self.challenge(req.headers())
            }
        }
    }

    /// 401: a Basic challenge for programs, a page for browsers.
    fn challenge(&self, headers: &HeaderMap) -> Response<Body> {
        let (browser, navigate) = browser(headers);
        let name = &self.gate.service.display_name;
        let svc = &self.gate.service.name;
        let mut r = if navigate {
            let body = format!(
                "<!doctype html><html><head><meta charset=\"utf-8\"><title>Open {name} through Gangway</title></head>\
                 <body><h1>Open {name} through Gangway</h1>\
                 <p>This address is Gangway's local door to {name}. It only lets in your own browser, \
                 opened through Gangway.</p>\
                 <p>Choose <b>Open {name}</b> in the Gangway tray menu, or run \
                 <code>gangway open {svc}</code> in a terminal.</p></body></html>\n",
                name = html_escape(name),
                svc = html_escape(svc),
            );
            let mut r = Response::new(Either::Right(Full::new(Bytes::from(body))));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        } else {
            plain_body(format!(
                "Gangway: {name} needs the local Gangway credential (run `gangway git setup` for git, \
                 `gangway open {svc}` for a browser)\n"
            ))
        };
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        if !browser {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"Gangway\""),
            );
        }
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }

    /// The one-time URL: sets the door cookie once.
    fn open(&self, req: &Request<Incoming>) -> Response<Body> {
        let gate = &self.gate;
        let mut token = None;
        let mut next = None;
        for (k, v) in url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
            match &*k {
                "t" if token.is_none() => token = Some(v),
                "next" if next.is_none() => next = Some(v),
                _ => {}
            }
        }
        let redeemed = token
            .as_deref()
            .is_some_and(|t| gate.door.secrets().redeem(t.as_bytes(), gate.port));
        if !redeemed {
            gate.door.refuse(
                &gate.service.name,
                "a browser",
                "a used, expired or unknown one-time link",
            );
            let mut r = self.challenge(req.headers());
            *r.status_mut() = StatusCode::FORBIDDEN;
            r.headers_mut().remove(header::WWW_AUTHENTICATE);
            return r;
        }
        let location = match next.as_deref() {
            None => "/",
            Some(n) => match safe_next(n) {
                Some(n) => n,
                None => {
                    return plain(
                        StatusCode::BAD_REQUEST,
                        "next must be a path on this address",
                    )
                }
            },
        };
        let cookie = format!(
            "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
            gate.door.secrets().browser_secret()
        );
        let mut r = Response::new(Either::Right(Full::new(Bytes::new())));
        *r.status_mut() = StatusCode::SEE_OTHER;
        let h = r.headers_mut();
        if let (Ok(c), Ok(l)) = (
            HeaderValue::try_from(cookie),
            HeaderValue::try_from(location),
        ) {
            h.insert(header::SET_COOKIE, c);
            h.insert(header::LOCATION, l);
        }
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
        r
    }

    /// Sends an allowed request over this connection's tunnel stream.
    async fn forward(&self, mut req: Request<Incoming>) -> Response<Body> {
        let gate = &self.gate;
        let upgrade = is_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
        let (mut sender, slot) = match self.sender().await {
            Ok(s) => s,
            Err(e) => return self.failed(&e),
        };
        match sender.send_request(req).await {
            Ok(mut resp) => {
                if let Some(local) = upgrade {
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                        let remote = hyper::upgrade::on(&mut resp);
                        let stop = gate.stop.clone();
                        gate.streams.spawn(async move {
                            let (Ok(local), Ok(remote)) = tokio::join!(local, remote) else {
                                return;
                            };
                            let (mut a, mut b) = (TokioIo::new(local), TokioIo::new(remote));
                            tokio::select! {
                                _ = gangway_transport::duplex::splice(&mut a, &mut b) => {}
                                _ = stop.cancelled() => {}
                            }
                        });
                    }
                } else {
                    *self.lock() = Some((sender, slot));
                }
                resp.map(Either::Left)
            }
            Err(e) => {
                let refusal = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                let e = match refusal {
                    Some(r) => AgentError::Refused(r),
                    None => AgentError::unreachable_by("the request to the relay failed", e),
                };
                self.failed(&e)
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(SendRequest<Incoming>, RefusalSlot)>> {
        self.upstream
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The tunnel stream's client, ready for a request: the kept one, or a
    /// new stream when there is none or the relay closed it.
    async fn sender(&self) -> Result<(SendRequest<Incoming>, RefusalSlot), AgentError> {
        let kept = self.lock().take();
        if let Some((mut s, slot)) = kept {
            if s.ready().await.is_ok() {
                return Ok((s, slot));
            }
        }
        let gate = &self.gate;
        let stream = listener::open_stream(
            &gate.service,
            &gate.tunnel,
            gate.connect_wait,
            &gate.stats,
            &gate.stop,
        )
        .await?;
        let slot = RefusalSlot::default();
        let io = TokioIo::new(Watched {
            inner: stream,
            slot: slot.clone(),
        });
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| AgentError::unreachable_by("starting HTTP on the stream", e))?;
        let service = gate.service.name.clone();
        gate.streams.spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%service, "tunnel stream ended: {e}");
            }
        });
        Ok((sender, slot))
    }

    /// An error page for a request that could not be carried, with the
    /// reason in `X-Gangway-Error`; the problem is recorded.
    fn failed(&self, e: &AgentError) -> Response<Body> {
        let gate = &self.gate;
        if let Some(text) = listener::plain_problem(&gate.service.display_name, e) {
            gate.stats.problem(text);
        }
        tracing::warn!(service = %gate.service.name, "connection not carried: {e}");
        let (status, text) = listener::error_status(e);
        let code = status
            .split(' ')
            .next()
            .and_then(|c| c.parse::<u16>().ok())
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_GATEWAY);
        let mut r = plain_body(format!("Gangway: {text}\n"));
        *r.status_mut() = code;
        let h = r.headers_mut();
        if let Ok(v) = HeaderValue::try_from(text.replace(['\r', '\n'], " ")) {
            h.insert("x-gangway-error", v);
        }
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        r
    }
}

fn plain_body(text: String) -> Response<Body> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(text))));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = plain_body(format!("Gangway: {text}\n"));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The tunnel stream, leaving the relay's refusal (read by the client's
/// connection task) where the waiting request finds it.
struct Watched {
    inner: PipelinedStream<Stream>,
    slot: RefusalSlot,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Err(_)) = &r {
            if let Some(refusal) = self.inner.refusal().cloned() {
                *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(refusal);
            }
        }
        r
    }
}

gangway_transport::forward_async_write!([] Watched, inner);

#[cfg(test)]
mod tests {
    use super::*;

    const PORT: u16 = 8090;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn basic(pw: &str) -> String {
        format!("Basic {}", STANDARD.encode(format!("gangway:{pw}")))
    }

    fn verdict(method: &str, uri: &str, pairs: &[(&str, &str)]) -> Verdict {
        check(
            PORT,
            &Method::from_bytes(method.as_bytes()).unwrap(),
            &uri.parse().unwrap(),
            &headers(pairs),
            |p| p == b"git-secret",
            |c| c == b"cookie-secret",
        )
    }

    #[test]
    fn hosts_are_the_listener_itself() {
        for ok in [
            "127.0.0.1:8090",
            "localhost:8090",
            "LocalHost:8090",
            "[::1]:8090",
        ] {
            assert!(local_authority(ok.as_bytes(), PORT), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "127.0.0.1:8091",
            "127.0.0.1:",
            "127.0.0.1:+8090",
            "127.0.0.1:808990",
            "rebind.evil.example:8090",
            "localhost.:8090",
            "127.0.0.2:8090",
            "[::1]",
            "[::2]:8090",
            "::1:8090",
            "127.0.0.1:8090@evil",
            "",
        ] {
            assert!(!local_authority(bad.as_bytes(), PORT), "{bad}");
        }
        // Port 80 may be left out.
        assert!(local_authority(b"localhost", 80));
        assert!(local_authority(b"[::1]", 80));
    }

    #[test]
    fn origins_are_http_and_local() {
        assert!(local_origin(b"http://127.0.0.1:8090", PORT));
        assert!(local_origin(b"HTTP://[::1]:8090", PORT));
        for bad in [
            "http://evil.example",
            "http://127.0.0.1:8091",
            "https://127.0.0.1:8090",
            "http://127.0.0.1:8090/",
            "null",
            "http://",
        ] {
            assert!(!local_origin(bad.as_bytes(), PORT), "{bad}");
        }
    }

    #[test]
    fn decisions() {
        let host = ("host", "127.0.0.1:8090");
        let git = basic("git-secret");
        let cookie = ("cookie", "JSESSIONID=a.node1; gangway_door=cookie-secret");
        let local = ("origin", "http://localhost:8090");
        let fwd = |basic, cookie| Verdict::Forward { basic, cookie };
        // Rebinding, absolute targets, CONNECT, no or two Hosts.
        assert_eq!(
            verdict(
                "GET",
                "/",
                &[
                    ("host", "rebind.evil.example:8090"),
                    ("authorization", &git)
                ]
            ),
            Verdict::Misdirected
        );
        assert_eq!(
            verdict("GET", "http://evil.example/", &[host]),
            Verdict::Misdirected
        );
        assert_eq!(verdict("GET", "/", &[]), Verdict::Misdirected);
        assert_eq!(verdict("GET", "/", &[host, host]), Verdict::Misdirected);
        // The git credential alone is enough for git (no Origin).
        assert_eq!(
            verdict(
                "POST",
                "/scm/r.git/git-receive-pack",
                &[host, ("authorization", &git)]
            ),
            fwd(true, false)
        );
        // A foreign Origin is refused whatever the credential.
        assert_eq!(
            verdict(
                "GET",
                "/",
                &[
                    host,
                    ("authorization", &git),
                    ("origin", "http://evil.example")
                ]
            ),
            Verdict::Origin { missing: false }
        );
        assert_eq!(
            verdict("POST", "/", &[host, cookie, ("origin", "null")]),
            Verdict::Origin { missing: false }
        );
        // The cookie: GET without Origin, POST and upgrades only with ours.
        assert_eq!(verdict("GET", "/wiki", &[host, cookie]), fwd(false, true));
        assert_eq!(
            verdict("POST", "/wiki", &[host, cookie]),
            Verdict::Origin { missing: true }
        );
        assert_eq!(
            verdict(
                "GET",
                "/synchrony/v1",
                &[host, cookie, ("upgrade", "websocket")]
            ),
            Verdict::Origin { missing: true }
        );
        assert_eq!(
            verdict(
                "GET",
                "/synchrony/v1",
                &[host, cookie, local, ("upgrade", "websocket")]
            ),
            fwd(false, true)
        );
        assert_eq!(
            verdict("POST", "/wiki", &[host, cookie, local]),
            fwd(false, true)
        );
        // Nothing, or the wrong thing.
        assert_eq!(
            verdict("GET", "/", &[host]),
            Verdict::Credential { wrong: false }
        );
        assert_eq!(
            verdict("GET", "/", &[host, ("authorization", &basic("guess"))]),
            Verdict::Credential { wrong: true }
        );
        assert_eq!(
            verdict("GET", "/", &[host, ("cookie", "gangway_door=guess")]),
            Verdict::Credential { wrong: true }
        );
        assert_eq!(
            verdict("GET", "/", &[host, ("authorization", "Bearer abc")]),
            Verdict::Credential { wrong: false }
        );
        // The door's own paths need no credential, but the Host check.
        assert_eq!(verdict("GET", "/.gangway/open?t=x", &[host]), Verdict::Open);
        assert_eq!(
            verdict("POST", "/.gangway/open?t=x", &[host]),
            Verdict::NotFound
        );
        assert_eq!(
            verdict("GET", "/.gangway/other", &[host]),
            Verdict::NotFound
        );
        assert_eq!(
            verdict(
                "GET",
                "/.gangway/open?t=x",
                &[("host", "evil.example:8090")]
            ),
            Verdict::Misdirected
        );
    }

    #[test]
    fn basic_passwords_decode_without_allocating() {
        assert_eq!(&*basic_password(basic("pw").as_bytes()).unwrap(), b"pw");
        assert_eq!(&*basic_password(b"basic Z2FuZ3dheTphOmI=").unwrap(), b"a:b");
        assert!(basic_password(b"Bearer x").is_none());
        assert!(basic_password(b"Basic !!!").is_none());
        assert!(basic_password(b"Basic bm9jb2xvbg==").is_none()); // "nocolon"
        let long = format!("Basic {}", STANDARD.encode(vec![b'a'; 1000]));
        assert!(basic_password(long.as_bytes()).is_none());
    }

    #[test]
    fn only_our_cookie_is_stripped() {
        assert_eq!(
            without_our_cookie(b"JSESSIONID=a.node1; gangway_door=s; theme=dark").unwrap(),
            b"JSESSIONID=a.node1; theme=dark"
        );
        assert_eq!(without_our_cookie(b"gangway_door=s"), None);
        assert_eq!(
            without_our_cookie(b"gangway_door_x=1;gangway_door=s").unwrap(),
            b"gangway_door_x=1"
        );
        let mut h = headers(&[
            ("cookie", "a=1; gangway_door=s"),
            ("cookie", "gangway_door=t"),
            ("authorization", "Basic x"),
            ("expect", "100-continue"),
        ]);
        strip(&mut h, true, true);
        assert_eq!(
            h.get_all(header::COOKIE).iter().collect::<Vec<_>>(),
            vec![HeaderValue::from_static("a=1")]
        );
        assert!(h.get(header::AUTHORIZATION).is_none());
        assert!(h.get(header::EXPECT).is_none());
        // Someone else's Authorization (not ours) stays.
        let mut h = headers(&[
            ("authorization", "Bearer pat"),
            ("cookie", "gangway_door=s"),
        ]);
        strip(&mut h, false, true);
        assert_eq!(h[header::AUTHORIZATION], "Bearer pat");
        assert!(h.get(header::COOKIE).is_none());
    }

    #[test]
    fn next_is_a_local_path_only() {
        assert_eq!(
            safe_next("/display/SPACE/Page?x=1"),
            Some("/display/SPACE/Page?x=1")
        );
        for bad in [
            "//evil.example/",
            "/\\evil.example",
            "http://evil.example/",
            "evil",
            "",
            "/a b",
            "/\r\nSet-Cookie:x",
        ] {
            assert_eq!(safe_next(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn browsers_never_get_a_basic_challenge() {
        assert_eq!(browser(&headers(&[("accept", "*/*")])), (false, false));
        assert_eq!(
            browser(&headers(&[
                ("sec-fetch-mode", "navigate"),
                ("accept", "text/html")
            ])),
            (true, true)
        );
        assert_eq!(
            browser(&headers(&[("sec-fetch-mode", "cors")])),
            (true, false)
        );
        assert_eq!(
            browser(&headers(&[("accept", "text/html,application/xhtml+xml")])),
            (true, true)
        );
    }
}
