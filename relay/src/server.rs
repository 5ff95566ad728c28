//! The accept loop, apart from the state it serves (mini-redis's
//! `server::run` with its per-connection `Handler`): accept on a pre-bound
//! listener, hand each connection to a worker thread, where a `Handler`
//! does TLS and serves HTTP/1.1 ([`crate::endpoints`]); on shutdown, tell
//! sessions goodbye and drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gangway_transport::socket;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::config::TlsMode;
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
    let workers = Workers::start(relay.config.workers).map_err(RelayError::Workers)?;
    tracing::info!(workers = workers.len(), "worker threads started");
    let conns = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = accept(&listener) => accepted,
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
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
            peer: peer.to_string(),
        };
        workers.spawn(conns.track_future(handler.run(tcp)));
    }
    drain(&relay, conns, workers).await;
    Ok(())
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
    peer: String,
}

impl Handler {
    /// TLS (unless plaintext), then HTTP/1.1 with upgrades.
    async fn run(self, tcp: std::net::TcpStream) {
        let tcp = match TcpStream::from_std(tcp) {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "cannot register the connection");
                return;
            }
        };
        let Handler {
            relay,
            acceptor,
            peer,
        } = self;
        let svc = {
            let peer = peer.clone();
            service_fn(move |req| endpoints::handle(relay.clone(), peer.clone(), req))
        };
        let http = hyper::server::conn::http1::Builder::new();
        let result = match acceptor {
            Some(acceptor) => match acceptor.accept(socket::buffered(tcp)).await {
                Ok(mut tls) => {
                    tls.get_mut()
                        .1
                        .set_buffer_limit(Some(socket::TLS_BUFFER_LIMIT));
                    http.serve_connection(TokioIo::new(tls), svc)
                        .with_upgrades()
                        .await
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            },
            None => {
                http.serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades()
                    .await
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection error");
        }
    }
}
