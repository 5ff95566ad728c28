//! The admin listener: an address of its own (`[admin] listen`), never the
//! public port, serving plain HTTP/1.1:
//!
//! - `GET /metrics`: Prometheus metrics ([`crate::metrics`]), no token;
//! - `/v1/admin/…`: the admin API ([`api`]), for admins only ([`auth`]);
//! - [`cli`]: `gangway-relay admin …`, a client of that API.
//!
//! Bind it to loopback or a management network: it has no TLS of its own.
//! [`start`] binds it, logs the address (`admin listening on http://…`),
//! and starts following lock notices from Redis when `[redis]` is set.

pub mod api;
pub mod auth;
pub mod cli;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::locks::Locks;
use crate::{Live, RelayError};

/// How long an admin client has to send a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Admin connections served at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 64;

/// Starts the admin listener (if configured) and the lock follower (if
/// Redis is); both run until the relay shuts down. The bound address.
pub async fn start(live: &Arc<Live>) -> Result<Option<SocketAddr>, RelayError> {
    follow_locks(live);
    let relay = live.current();
    let Some(cfg) = relay.config.admin.clone() else {
        return Ok(None);
    };
    let admins = Arc::new(
        auth::Admins::from_config(&cfg).map_err(|source| RelayError::Admin {
            addr: cfg.listen,
            source,
        })?,
    );
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| RelayError::Admin {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| RelayError::Admin {
        addr: cfg.listen,
        source,
    })?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the admin listener is not on loopback: keep it on a management network (it has no TLS)");
    }
    tracing::info!("admin listening on http://{addr}");
    let live = live.clone();
    tokio::spawn(async move {
        let stop = relay.shutdown().clone();
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (tcp, peer) = tokio::select! {
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.cancelled() => return,
            };
            let live = live.clone();
            let admins = admins.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let svc = service_fn(move |req| {
                    // The state of the moment: a reload applies at once.
                    let relay = live.current();
                    let admins = admins.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            api::handle(&relay, &admins, peer, req).await,
                        )
                    }
                });
                let mut http = hyper::server::conn::http1::Builder::new();
                http.timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT);
                if let Err(e) = http.serve_connection(TokioIo::new(tcp), svc).await {
                    tracing::debug!(%peer, error = %e, "admin connection error");
                }
            });
        }
    });
    Ok(Some(addr))
}

/// Follows notices from Redis: a subject locked on any relay has its
/// sessions here ended at once; a backend drained on any relay is drained
/// here too.
fn follow_locks(live: &Arc<Live>) {
    let relay = live.current();
    let Some(shared) = relay.locks.shared().cloned() else {
        return;
    };
    let known = relay.locks.known();
    let stop = relay.shutdown().clone();
    let live = Arc::downgrade(live);
    tokio::spawn(shared.follow_locks(
        move |n| {
            let Some(relay) = live.upgrade().map(|l| l.current()) else {
                return;
            };
            match n.op.as_str() {
                "drain" | "enable" => api::apply_drain(&relay, &n),
                _ => Locks::on_notice(&known, &relay.open_sessions, &relay.metrics, n),
            }
        },
        stop,
    ));
}
