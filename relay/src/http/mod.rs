//! Services of kind `http`: the relay speaks HTTP/1.1 on each stream and
//! proxies every request, as HAProxy or `mod_proxy_balancer` would in front
//! of a Data Center cluster, with identity on top.
//!
//! - this file: an http service's runtime side ([`HttpService`]: a backend
//!   pool per route) and the HTTP/1.1 server on one tunnel stream
//!   ([`serve`]);
//! - `proxy.rs`: one request through the named phases (authorize, prepare
//!   the upstream request, send with retry, rewrite the response, audit);
//! - `upstream.rs`: connections to the nodes, kept alive per stream;
//! - [`rewrite`]: the header work at both edges, as pure functions;
//! - `body.rs`: the bodies answered with, and the relay's error page.
//!
//! The allow/deny decisions are [`crate::policy`]'s, the nodes
//! [`crate::backends`]'.

mod body;
mod proxy;
pub mod rewrite;
mod upstream;

use std::convert::Infallible;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, Mutex};
use tokio_util::sync::CancellationToken;

use self::upstream::Reuse;
use crate::auth::Identity;
use crate::backends::{health, Pool};
use crate::config::ServiceConfig;
use crate::Relay;

/// The runtime side of one http service: its routes' pools.
pub struct HttpService {
    pub cfg: ServiceConfig,
    /// One pool per extra route, in the order of `cfg.http.routes`.
    routes: Vec<Pool>,
    /// The service's own backends, serving "/".
    own: Pool,
    public_hosts: Vec<String>,
    /// Every affinity cookie of the service (its own and its routes'):
    /// the relay's, never sent upstream.
    affinity_cookies: Vec<String>,
}

impl HttpService {
    pub fn new(cfg: &ServiceConfig) -> Self {
        let balance = cfg.http.balance;
        Self {
            routes: cfg
                .http
                .routes
                .iter()
                .map(|r| Pool::new(&r.backends, balance))
                .collect(),
            own: Pool::new(&cfg.backends, balance),
            public_hosts: cfg
                .http
                .public_urls
                .iter()
                .filter_map(|u| u.host_str().map(str::to_string))
                .collect(),
            affinity_cookies: cfg
                .http
                .affinity_cookie
                .iter()
                .chain(cfg.http.routes.iter().flat_map(|r| &r.affinity_cookie))
                .cloned()
                .collect(),
            cfg: cfg.clone(),
        }
    }

    /// The affinity cookie of a route as [`crate::policy::route`] names it:
    /// its name and the `Path` it is set with.
    fn affinity_cookie(&self, route: Option<usize>) -> Option<(String, String)> {
        match route {
            None => Some((self.cfg.http.affinity_cookie.clone()?, "/".into())),
            Some(i) => {
                let r = &self.cfg.http.routes[i];
                Some((r.affinity_cookie.clone()?, r.prefix.clone()))
            }
        }
    }

    /// Starts the active health checks, if configured, until `stop`.
    pub fn spawn_health_checks(&self, stop: &CancellationToken) {
        let Some(h) = &self.cfg.http.health else {
            return;
        };
        for pool in self.routes.iter().chain([&self.own]) {
            for b in &pool.backends {
                tokio::spawn(health::check_loop(b.clone(), h.clone(), stop.clone()));
            }
        }
    }

    /// Every pool with its route's prefix (none: the service's own).
    pub fn pools(&self) -> impl Iterator<Item = (Option<&str>, &Pool)> {
        std::iter::once((None, &self.own)).chain(
            self.cfg
                .http
                .routes
                .iter()
                .zip(&self.routes)
                .map(|(r, p)| (Some(r.prefix.as_str()), p)),
        )
    }

    /// The pool of a route as [`crate::policy::route`] names it.
    fn pool(&self, route: Option<usize>) -> &Pool {
        route.map_or(&self.own, |i| &self.routes[i])
    }
}

/// Who is on the other end of a stream.
pub struct StreamCtx {
    pub relay: Arc<Relay>,
    pub svc: Arc<HttpService>,
    pub identity: watch::Receiver<Identity>,
    pub session: String,
    pub client_ip: String,
    /// Cancelled when the session ends: an upgraded WebSocket's copy stops.
    pub ended: tokio_util::sync::CancellationToken,
}

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
        async move { Ok::<_, Infallible>(proxy::handle(&ctx, &reuse, req).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades()
        .await
    {
        tracing::debug!(error = %e, "http stream ended with an error");
    }
}
