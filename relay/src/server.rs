//! The accept loop, apart from the state it serves (mini-redis's
//! `server::run` with its per-connection `Handler`): accept on a pre-bound
//! listener, admit or close the connection ([`crate::admission`]), hand it
//! to a worker thread, where a `Handler` reads the PROXY v2 header of a
//! trusted balancer ([`crate::proxy_protocol`]), does TLS and serves
//! HTTP/1.1 ([`crate::endpoints`]); on shutdown, stop accepting, tell
//! sessions goodbye and drain until `[drain] deadline_secs`.
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
use tokio_util::task::TaskTracker;

use crate::admission::{ConnectionPermit, Unauthenticated};
use crate::config::LimitsConfig;
use crate::endpoints::Conn;
use crate::proxy_protocol::{self, Proxied};
use crate::workers::Workers;
use crate::{endpoints, Live, Relay, RelayError};

/// How long connections have to close once the drain deadline has cut
/// their sessions, before the worker threads are stopped regardless.
const CUT_GRACE: Duration = Duration::from_secs(5);

/// Serves `listener` with one fixed `relay` (no reload) until `shutdown`
/// resolves, then drains (see [`serve`]).
pub async fn run(
    listener: TcpListener,
    relay: Arc<Relay>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RelayError> {
    serve(listener, Live::new(relay), shutdown).await
}

/// Serves `listener` with the state `live` holds at each new connection
/// (so a reload applies to new connections) until `shutdown` resolves;
/// then drains: stops accepting, tells every session goodbye (agents
/// reconnect elsewhere while their open streams finish here), waits up to
/// `[drain] deadline_secs` for sessions and connections to end, then
/// closes what is left.
pub async fn serve(
    listener: TcpListener,
    live: Arc<Live>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RelayError> {
    let relay = live.current();
    relay.spawn_health_checks();
    {
        // Loads the provider's keys now rather than at the first token, so
        // /readyz turns 200 without waiting for a user.
        let relay = relay.clone();
        tokio::spawn(async move { relay.verifier.ensure_keys().await });
    }
    let workers = Workers::start(relay.config.workers).map_err(RelayError::Workers)?;
    tracing::info!(workers = workers.len(), "worker threads started");
    let conns = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = accept(&listener) => accepted,
            _ = &mut shutdown => break,
        };
        let relay = live.current();
        let proxied = relay.config.proxy_protocol.trusts(peer.ip());
        let Some(permit) = admit(&relay, peer) else {
            continue;
        };
        // A trusted balancer's connection counts against its client's
        // address once the header names it, on the worker.
        let unauthenticated = if proxied {
            None
        } else {
            match unauthenticated(&relay, peer) {
                Some(slot) => Some(slot),
                None => continue,
            }
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
            live: live.clone(),
            relay,
            peer,
            unauthenticated,
            _permit: permit,
        };
        workers.spawn(conns.track_future(handler.run(tcp)));
    }
    drop(listener);
    drain(&live.current(), conns, workers).await;
    Ok(())
}

/// A place for a new connection from `peer`, or `None` (the connection is
/// then dropped, i.e. closed) when `max_connections` are open.
fn admit(relay: &Relay, peer: SocketAddr) -> Option<ConnectionPermit> {
    let permit = relay.admission.connection();
    if permit.is_none() {
        refuse(relay, peer, "at max_connections");
    }
    permit
}

/// A place among `peer`'s address's unauthenticated connections, or
/// `None` when it holds `max_unauthenticated_per_address` already.
fn unauthenticated(relay: &Relay, peer: SocketAddr) -> Option<Unauthenticated> {
    let slot = relay.admission.unauthenticated(peer.ip());
    if slot.is_none() {
        refuse(
            relay,
            peer,
            "too many unauthenticated connections from this address",
        );
    }
    slot
}

/// Logs a refused connection, ever more rarely (a flood cannot flood the
/// log too).
fn refuse(relay: &Relay, peer: SocketAddr, why: &str) {
    let (n, log) = relay.admission.note_refusal();
    if log {
        tracing::warn!(%peer, refused_so_far = n, "{why}; closing the connection");
    }
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

/// The listener is closed: tells sessions goodbye, waits up to the drain
/// deadline for sessions and connections to end, cuts what is left, then
/// stops the worker threads.
async fn drain(relay: &Relay, conns: TaskTracker, workers: Workers) {
    let deadline = relay.config.drain.deadline;
    tracing::info!(
        deadline_secs = deadline.as_secs(),
        "draining: no new connections; telling sessions goodbye; open streams may finish"
    );
    relay.shutdown().cancel();
    conns.close();
    let sessions = relay.sessions_served();
    sessions.close();
    let all_done = async {
        conns.wait().await;
        sessions.wait().await;
    };
    if tokio::time::timeout(deadline, all_done).await.is_ok() {
        tracing::info!("drained: every session and connection ended");
    } else {
        tracing::info!(
            sessions = sessions.len(),
            "drain deadline reached; closing what is left"
        );
        relay.cut().cancel();
        let all_done = async {
            conns.wait().await;
            sessions.wait().await;
        };
        let _ = tokio::time::timeout(CUT_GRACE, all_done).await;
    }
    // Stops the worker threads, cancelling what is left on them (joining
    // them blocks, so off this runtime's thread).
    let _ = tokio::task::spawn_blocking(move || drop(workers)).await;
}

/// One accepted connection, served on a worker thread until it closes.
struct Handler {
    live: Arc<Live>,
    /// The state current when it was accepted: its TLS certificate,
    /// timeouts and PROXY protocol trust.
    relay: Arc<Relay>,
    /// The socket's peer.
    peer: SocketAddr,
    /// Its address's unauthenticated place, taken at accept for a direct
    /// connection; `None` for a trusted balancer's, taken once the PROXY
    /// header names the client.
    unauthenticated: Option<Unauthenticated>,
    /// Its place among the relay's `max_connections`, until it closes.
    _permit: ConnectionPermit,
}

impl Handler {
    /// The PROXY header (from a trusted balancer), then TLS (unless
    /// plaintext) within `tls_handshake_timeout`, then HTTP/1.1 with
    /// upgrades.
    async fn run(mut self, tcp: std::net::TcpStream) {
        let mut tcp = match TcpStream::from_std(tcp) {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::debug!(error = %e, "cannot register the connection");
                return;
            }
        };
        let Some(conn) = self.identify(&mut tcp).await else {
            return;
        };
        let limits = self.relay.config.limits.clone();
        let peer = conn.peer.clone();
        let Some(acceptor) = self.relay.tls().cloned() else {
            return self.serve_http(tcp, conn, &limits).await;
        };
        let handshake = acceptor.accept(socket::buffered(tcp));
        match tokio::time::timeout(limits.tls_handshake_timeout, handshake).await {
            Ok(Ok(mut tls)) => {
                tls.get_mut()
                    .1
                    .set_buffer_limit(Some(socket::TLS_BUFFER_LIMIT));
                self.serve_http(tls, conn, &limits).await
            }
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        }
    }

    /// Who the connection is from: the socket's peer, or for a trusted
    /// balancer the client its PROXY v2 header names (`None`: refused, and
    /// logged).
    async fn identify(&mut self, tcp: &mut TcpStream) -> Option<Arc<Conn>> {
        let mut peer = self.peer;
        let unauthenticated = match self.unauthenticated.take() {
            Some(slot) => slot,
            None => {
                let pp = &self.relay.config.proxy_protocol;
                match proxy_protocol::read_header(tcp, pp.header_timeout).await {
                    Ok(Proxied::Client(client)) => peer = client,
                    Ok(Proxied::Local) => {}
                    Err(e) => {
                        refuse(
                            &self.relay,
                            self.peer,
                            &format!("trusted PROXY protocol source sent no valid header ({e})"),
                        );
                        return None;
                    }
                }
                unauthenticated(&self.relay, peer)?
            }
        };
        Some(Arc::new(Conn::new(peer.to_string(), unauthenticated)))
    }

    /// HTTP/1.1 until the client goes, a request head takes too long, the
    /// connection idles past `http_idle_timeout`, or it is upgraded (the
    /// tunnel then owns the socket). Each request is served by the state
    /// current when it arrives.
    async fn serve_http<I>(self, io: I, conn: Arc<Conn>, limits: &LimitsConfig)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let live = self.live;
        let cut = self.relay.cut().clone();
        let (in_flight, idle) = watch::channel(0usize);
        let in_flight = Arc::new(in_flight);
        let svc = {
            let conn = conn.clone();
            service_fn(move |req| {
                let busy = Busy::start(&in_flight);
                let response = endpoints::handle(live.clone(), conn.clone(), req);
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
            // The drain deadline: the request in flight may finish, then
            // the connection closes (while draining before that, an idle
            // connection lasts until `http_idle_timeout`, and answers
            // `/readyz` with 503 meanwhile).
            _ = cut.cancelled() => {
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
