//! One environment up: the tunnel plus one listener per service of the
//! catalog it is given (the caller fetched it, and decides what to do while
//! the relay cannot be reached or a sign-in is needed).
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

use crate::door::{listen, Door};
use crate::listener::{self, BindError, ServiceStats};
use crate::net::Egress;
use crate::relay_api::{Catalog, Service};
use crate::token::TokenSource;
use crate::tunnel::{Backoff, Tunnel};

/// Everything `up` needs, passed in (tests pass their own).
pub struct UpOptions {
    pub relay: Url,
    /// TLS trust and proxy for the relay.
    pub egress: Egress,
    pub tokens: TokenSource,
    /// Local port per service (overrides the catalog's suggestion).
    pub ports: BTreeMap<String, u16>,
    /// Full local address per service (overrides everything; port 0 allowed).
    pub listen: BTreeMap<String, SocketAddr>,
    /// Whether a non-loopback address may be listened on (see
    /// [`crate::door::listen`]); without it such a service is not served.
    pub allow_network_listen: bool,
    pub connect_wait: Duration,
    pub backoff: Backoff,
    /// The agent's local door, shared by every listener.
    pub door: Arc<Door>,
}

/// One service being served.
#[derive(Clone)]
pub struct Serving {
    pub service: Service,
    /// Where it listens (the bound address: port 0 resolved).
    pub addr: SocketAddr,
    pub stats: Arc<ServiceStats>,
}

/// A running environment.
pub struct Running {
    pub tunnel: Tunnel,
    pub catalog: Catalog,
    /// Services being served and where.
    pub listening: Vec<Serving>,
    /// Services whose port could not be bound.
    pub failed: Vec<BindError>,
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

/// Starts the tunnel and binds a listener per service of `catalog`.
/// Everything stops with `stop`. A port that cannot be bound is reported in
/// [`Running::failed`]; the other services are served all the same.
pub async fn start(opts: UpOptions, catalog: Catalog, stop: CancellationToken) -> Running {
    let tunnel = Tunnel::start(
        opts.relay.clone(),
        opts.egress.clone(),
        opts.tokens.clone(),
        opts.backoff,
        stop.clone(),
    );
    let mut listening = Vec::new();
    let mut failed = Vec::new();
    let mut listeners = Vec::new();
    let streams = TaskTracker::new();
    let mut open_to_network = Vec::new();
    for svc in &catalog.services {
        let addr = opts.listen.get(&svc.name).copied().unwrap_or_else(|| {
            let port = opts.ports.get(&svc.name).copied().unwrap_or(svc.local_port);
            SocketAddr::from((Ipv4Addr::LOCALHOST, port))
        });
        if let Err(e) = listen::check(&svc.name, addr, opts.allow_network_listen) {
            tracing::error!("{e}");
            failed.push(BindError {
                service: svc.display_name.clone(),
                addr,
                reason: format!(
                    "{addr} is not a loopback address, so anyone who can reach it could use {} \
                     as you; add {} to allow that",
                    svc.display_name,
                    listen::ALLOW_FLAG
                ),
            });
            continue;
        }
        match listener::bind(svc.clone(), addr).await {
            Ok(l) => {
                if !listen::is_loopback(addr) {
                    let w = listen::warning(&svc.display_name, &catalog.subject, l.local_addr());
                    tracing::warn!("{w}");
                    open_to_network.push(w);
                }
                let counters = Arc::new(ServiceStats::default());
                listening.push(Serving {
                    service: svc.clone(),
                    addr: l.local_addr(),
                    stats: counters.clone(),
                });
                listeners.push(tokio::spawn(l.serve_with(
                    tunnel.clone(),
                    opts.connect_wait,
                    counters,
                    opts.door.clone(),
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
    opts.door.set_open_to_network(open_to_network);
    Running {
        tunnel,
        catalog,
        listening,
        failed,
        listeners,
        streams,
    }
}
