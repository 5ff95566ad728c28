//! `gangway up`: the tunnel plus one listener per service in the catalog.
//!
//! [`start`] brings one environment up; [`Running::stopped`] waits until,
//! after its stop token was cancelled, every listener has let go of its
//! port and every stream has ended (so the next environment can bind the
//! same ports).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use url::Url;

use crate::listener::{self, BindError, ServiceStats};
use crate::relay_api::{Catalog, RelayApi, Service};
use crate::token::TokenSource;
use crate::tunnel::{Backoff, Tunnel};
use crate::AgentError;

/// Everything `up` needs, passed in (tests pass their own).
pub struct UpOptions {
    pub relay: Url,
    pub tls: Arc<rustls::ClientConfig>,
    pub tokens: TokenSource,
    /// Local port per service (overrides the catalog's suggestion).
    pub ports: BTreeMap<String, u16>,
    /// Full local address per service (overrides everything; port 0 allowed).
    pub listen: BTreeMap<String, SocketAddr>,
    pub connect_wait: Duration,
    pub backoff: Backoff,
}

/// A running agent.
pub struct Running {
    pub tunnel: Tunnel,
    pub catalog: Catalog,
    /// Services being served and where.
    pub listening: Vec<(Service, SocketAddr)>,
    /// Services whose port could not be bound.
    pub failed: Vec<BindError>,
    /// Counters per service, in the order of `listening`.
    pub stats: Vec<Arc<ServiceStats>>,
    listeners: Vec<JoinHandle<()>>,
    streams: TaskTracker,
}

impl Running {
    /// Waits (at most `limit`) for the listeners to close and the streams
    /// to end; call after cancelling the stop token given to [`start`].
    /// `false` if something was still running at the deadline.
    pub async fn stopped(self, limit: std::time::Duration) -> bool {
        self.streams.close();
        let wait = async {
            for l in self.listeners {
                let _ = l.await;
            }
            self.streams.wait().await;
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

/// Fetches the catalog (retrying while the relay is unreachable), starts
/// the tunnel and binds the listeners. Everything stops with `stop`.
pub async fn start(opts: UpOptions, stop: CancellationToken) -> Result<Running, AgentError> {
    let api = RelayApi::new(opts.relay.clone(), opts.tls.clone())?;
    let mut attempt = 0;
    let catalog = loop {
        let token = opts.tokens.current().await?;
        match api.catalog(&token).await {
            Ok(c) => break c,
            Err(e) if e.retryable() => {
                let delay = opts.backoff.delay(attempt, &mut rand::thread_rng());
                tracing::warn!("cannot fetch the catalog: {e}; retrying in {delay:?}");
                attempt += 1;
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return Err(AgentError::Unreachable(e.to_string())),
                }
            }
            Err(e) => return Err(e),
        }
    };
    let tunnel = Tunnel::start(
        opts.relay.clone(),
        opts.tls.clone(),
        opts.tokens.clone(),
        opts.backoff,
        stop.clone(),
    );
    let mut listening = Vec::new();
    let mut failed = Vec::new();
    let mut stats = Vec::new();
    let mut listeners = Vec::new();
    let streams = TaskTracker::new();
    for svc in &catalog.services {
        let addr = opts.listen.get(&svc.name).copied().unwrap_or_else(|| {
            let port = opts.ports.get(&svc.name).copied().unwrap_or(svc.local_port);
            SocketAddr::from((Ipv4Addr::LOCALHOST, port))
        });
        match listener::bind(svc.clone(), addr).await {
            Ok(l) => {
                let bound = l.local_addr();
                listening.push((svc.clone(), bound));
                let counters = Arc::new(ServiceStats::default());
                stats.push(counters.clone());
                listeners.push(tokio::spawn(l.serve_with(
                    tunnel.clone(),
                    opts.connect_wait,
                    counters,
                    streams.clone(),
                    stop.clone(),
                )));
            }
            Err(e) => {
                tracing::error!("{e}");
                failed.push(e);
            }
        }
    }
    Ok(Running {
        tunnel,
        catalog,
        listening,
        failed,
        stats,
        listeners,
        streams,
    })
}
