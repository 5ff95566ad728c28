//! The accept loop, apart from the state it serves (mini-redis's
//! `server::run` with its per-connection `Handler`): accept on a pre-bound
//! listener, admit or close the connection ([`crate::admission`]), hand it
//! to a worker thread, where a `Handler` does TLS and serves HTTP/1.1
//! ([`crate::endpoints`]); on shutdown, tell sessions goodbye and drain.
//!
//! No phase of a connection waits on the client unbounded (`[limits]`):
//! the TLS handshake has `tls_handshake_timeout`, every request head
//! `request_header_timeout` (hyper's timer, which also runs while a
//! keep-alive connection waits for its next request), and a non-tunnel
//! connection with no request in flight is closed after
//! `http_idle_timeout`. Tunnel sockets get TCP keepalive, so a laptop that
//! vanished without a FIN is found.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gangway_transport::socket;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::admission::{ConnectionPermit, Unauthenticated};
use crate::config::{LimitsConfig, TlsMode};
use crate::endpoints::Conn;
use crate::workers::Workers;
use crate::{endpoints, tls, Relay, RelayError};

/// Serves `listener` until `shutdown` resolves, then tells every session
/// goodbye and waits briefly for them to go.
pub async fn run(
    listener: TcpListener,
    relay: Arc<Relay>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RelayError> {
    let acceptor = match &relay.config.tls {
        TlsMode::Files { cert, key } => Some(TlsAcceptor::from(tls::server_config(cert, key)?)),
        TlsMode::Plaintext => None,
    };
    relay.spawn_health_checks();
    crate::admin::start(&relay).await?;
    let workers = Workers::start(relay.config.workers).map_err(RelayError::Workers)?;
    tracing::info!(workers = workers.len(), "worker threads started");
    let conns = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = accept(&listener) => accepted,
            _ = &mut shutdown => break,
        };
        let Some((permit, unauthenticated)) = admit(&relay, peer) else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        keepalive(&tcp, relay.config.limits.tcp_keepalive);
        // Moves to a worker's reactor there.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand the connection to a worker");
                continue;
            }
        };
        let handler = Handler {
            relay: relay.clone(),
            acceptor: acceptor.clone(),
            conn: Arc::new(Conn::new(peer.to_string(), unauthenticated)),
            _permit: permit,
        };
        workers.spawn(conns.track_future(handler.run(tcp)));
    }
    drain(&relay, conns, workers).await;
    Ok(())
}

/// A place for a new connection from `peer`, or `None` (the connection is
/// then dropped, i.e. closed) when `max_connections` are open or `peer`'s
/// address holds `max_unauthenticated_per_address` already.
fn admit(relay: &Relay, peer: SocketAddr) -> Option<(ConnectionPermit, Unauthenticated)> {
    let admission = &relay.admission;
    let refuse = |why: &str| {
        let (n, log) = admission.note_refusal();
        if log {
            tracing::warn!(%peer, refused_so_far = n, "{why}; closing the connection");
        }
    };
    let Some(permit) = admission.connection() else {
        refuse("at max_connections");
        return None;
    };
    let Some(unauthenticated) = admission.unauthenticated(peer.ip()) else {
        refuse("too many unauthenticated connections from this address");
        return None;
    };
    Some((permit, unauthenticated))
}

/// TCP keepalive: probes after `idle` of silence, then every 10 s (at most
/// `idle`), three times, before the kernel gives the connection up.
fn keepalive(tcp: &TcpStream, idle: Duration) {
    let ka = socket2::TcpKeepalive::new().with_time(idle);
    #[cfg(target_os = "linux")]
    let ka = ka
        .with_interval(idle.min(Duration::from_secs(10)))
        .with_retries(3);
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "cannot set TCP keepalive");
    }
}

/// The next connection; a failed accept (e.g. out of file descriptors) is
/// logged and retried after a pause.
async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Tells sessions goodbye, gives connections a few seconds to close, then
/// stops the worker threads.
async fn drain(relay: &Relay, conns: TaskTracker, workers: Workers) {
    tracing::info!("shutting down: telling sessions goodbye");
    relay.shutdown().cancel();
    conns.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), conns.wait()).await;
    // Stops the worker threads, cancelling what is left on them (joining
    // them blocks, so off this runtime's thread).
    let _ = tokio::task::spawn_blocking(move || drop(workers)).await;
}

/// One accepted connection, served on a worker thread until it closes.
struct Handler {
    relay: Arc<Relay>,
    acceptor: Option<TlsAcceptor>,
    conn: Arc<Conn>,
    /// Its place among the relay's `max_connections`, until it closes.
    _permit: ConnectionPermit,
}

impl Handler {
    /// TLS (unless plaintext) within `tls_handshake_timeout`, then HTTP/1.1
    /// with upgrades.
    async fn run(self, tcp: std::net::TcpStream) {
        let tcp = match TcpStream::from_std(tcp) {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::debug!(error = %e, "cannot register the connection");
                return;
            }
        };
        let limits = self.relay.config.limits.clone();
        let peer = self.conn.peer.clone();
        let Some(acceptor) = self.acceptor.clone() else {
            return self.serve_http(tcp, &limits).await;
        };
        let handshake = acceptor.accept(socket::buffered(tcp));
        match tokio::time::timeout(limits.tls_handshake_timeout, handshake).await {
            Ok(Ok(mut tls)) => {
                tls.get_mut()
                    .1
                    .set_buffer_limit(Some(socket::TLS_BUFFER_LIMIT));
                self.serve_http(tls, &limits).await
            }
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        }
    }

    /// HTTP/1.1 until the client goes, a request head takes too long, the
    /// connection idles past `http_idle_timeout`, or it is upgraded (the
    /// tunnel then owns the socket).
    async fn serve_http<I>(self, io: I, limits: &LimitsConfig)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Handler { relay, conn, .. } = self;
        let (in_flight, idle) = watch::channel(0usize);
        let in_flight = Arc::new(in_flight);
        let svc = {
            let conn = conn.clone();
            service_fn(move |req| {
                let busy = Busy::start(&in_flight);
                let response = endpoints::handle(relay.clone(), conn.clone(), req);
                async move {
                    let r = response.await;
                    drop(busy);
                    r
                }
            })
        };
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.request_header_timeout);
        let served = http.serve_connection(TokioIo::new(io), svc).with_upgrades();
        tokio::pin!(served);
        let idle_limit = limits.http_idle_timeout;
        let result = tokio::select! {
            r = &mut served => r,
            _ = idle_for(idle, idle_limit) => {
                tracing::debug!(peer = %conn.peer, "idle connection; closing");
                served.as_mut().graceful_shutdown();
                served.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(peer = %conn.peer, error = %e, "connection error");
        }
    }
}

/// Counts a request in flight on a connection while it lives.
struct Busy(Arc<watch::Sender<usize>>);

impl Busy {
    fn start(in_flight: &Arc<watch::Sender<usize>>) -> Self {
        in_flight.send_modify(|n| *n += 1);
        Busy(in_flight.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Resolves once no request has been in flight for `limit` without a
/// break.
async fn idle_for(mut in_flight: watch::Receiver<usize>, limit: Duration) {
    loop {
        if in_flight.wait_for(|n| *n == 0).await.is_err() {
            return std::future::pending().await;
        }
        tokio::select! {
            _ = tokio::time::sleep(limit) => return,
            changed = in_flight.changed() => {
                if changed.is_err() {
                    return std::future::pending().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_means_no_request_in_flight_for_the_whole_limit() {
        let (tx, rx) = watch::channel(0usize);
        let tx = Arc::new(tx);
        let limit = Duration::from_secs(10);
        let idle = tokio::spawn(idle_for(rx, limit));
        tokio::time::sleep(Duration::from_secs(6)).await;
        let busy = Busy::start(&tx);
        // A request in flight: never idle, however long it takes.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!idle.is_finished());
        drop(busy);
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(
            !idle.is_finished(),
            "the clock restarts when the request ends"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(idle.is_finished());
    }
}
