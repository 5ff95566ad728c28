//! The Gangway relay: the central server agents tunnel to.
//!
//! ```text
//! accept ─▶ TLS ─▶ HTTP ─┬─ /.well-known/gangway, /healthz       (open)
//!                         ├─ /v1/catalog                         (token)
//!                         └─ /v1/tunnel ─▶ WebSocket ─▶ session   (token)
//!                                               each stream: authorize ─▶ backend ─▶ copy ─▶ audit
//! ```
//!
//! [`run`] serves a pre-bound listener until `shutdown` resolves; the relay
//! keeps no state another relay needs, so many can run behind a balancer.
//! Accepted connections are handed to [`workers`], one single-threaded
//! runtime per CPU, where each stays until it closes.
#![forbid(unsafe_code)]

pub mod assertion;
pub mod audit;
pub mod auth;
pub mod backends;
pub mod config;
pub mod forward;
pub mod http;
pub mod policy;
pub mod server;
pub mod tls;
pub mod tunnel;
pub mod workers;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gangway_transport::socket;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use auth::{AuthError, Identity, KeySource, Verifier};
pub use config::{ConfigError, RelayConfig, TlsMode};

/// Failures that stop the relay from starting.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("audit log {path}: {source}")]
    Audit {
        path: String,
        source: std::io::Error,
    },
    #[error("jwks_file {path}: {reason}")]
    Jwks { path: String, reason: String },
    #[error(transparent)]
    AssertionKey(#[from] assertion::KeyError),
    #[error("listener: {0}")]
    Listener(std::io::Error),
    #[error("cannot start worker threads: {0}")]
    Workers(std::io::Error),
}

/// Shared state of a running relay.
pub struct Relay {
    pub config: RelayConfig,
    pub verifier: Verifier,
    pub audit: audit::Audit,
    pub signer: assertion::Signer,
    pools: HashMap<String, forward::Pool>,
    http_services: HashMap<String, Arc<http::HttpService>>,
    shutdown: CancellationToken,
    sessions: AtomicU64,
}

impl Relay {
    /// Builds the relay from a validated config, with keys from `source`.
    pub fn new(config: RelayConfig, source: KeySource) -> Result<Self, RelayError> {
        let audit =
            audit::Audit::open(config.audit_path.as_deref()).map_err(|e| RelayError::Audit {
                path: config
                    .audit_path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                source: e,
            })?;
        let pools = config
            .services
            .iter()
            .map(|s| (s.name.clone(), forward::Pool::new(s)))
            .collect();
        let http_services = config
            .services
            .iter()
            .filter(|s| s.kind == config::ServiceKind::Http)
            .map(|s| (s.name.clone(), Arc::new(http::HttpService::new(s))))
            .collect();
        Ok(Self {
            verifier: Verifier::new(config.identity.clone(), source),
            signer: assertion::Signer::from_config(&config.assertion)?,
            config,
            audit,
            pools,
            http_services,
            shutdown: CancellationToken::new(),
            sessions: AtomicU64::new(0),
        })
    }

    /// Builds the relay with the key source its config names: a static
    /// `jwks_file`, or discovery from the issuer.
    pub fn from_config(config: RelayConfig) -> Result<Self, RelayError> {
        let source = match &config.identity.jwks_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| RelayError::Jwks {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                KeySource::Static(serde_json::from_str(&text).map_err(|e| RelayError::Jwks {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?)
            }
            None => KeySource::Discovery(
                reqwest::Client::builder()
                    .user_agent(concat!("gangway-relay/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| RelayError::Jwks {
                        path: "(discovery)".into(),
                        reason: e.to_string(),
                    })?,
            ),
        };
        Self::new(config, source)
    }

    fn next_session_id(&self) -> String {
        let n = self.sessions.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}-{n}", std::process::id())
    }

    fn pool(&self, service: &str) -> &forward::Pool {
        &self.pools[service]
    }

    fn http_service(&self, service: &str) -> Option<Arc<http::HttpService>> {
        self.http_services.get(service).cloned()
    }
}

/// Serves `listener` until `shutdown` resolves, then tells every session
/// goodbye and waits briefly for them to go.
pub async fn run(
    listener: TcpListener,
    relay: Arc<Relay>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RelayError> {
    let acceptor = match &relay.config.tls {
        TlsMode::Files { cert, key } => Some(tokio_rustls::TlsAcceptor::from(tls::server_config(
            cert, key,
        )?)),
        TlsMode::Plaintext => None,
    };
    for svc in relay.http_services.values() {
        svc.spawn_health_checks(&relay.shutdown);
    }
    let workers = workers::Workers::start(relay.config.workers).map_err(RelayError::Workers)?;
    tracing::info!(workers = workers.len(), "worker threads started");
    let conns = tokio_util::task::TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
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
        let relay = relay.clone();
        let acceptor = acceptor.clone();
        workers.spawn(conns.track_future(async move {
            let tcp = match tokio::net::TcpStream::from_std(tcp) {
                Ok(tcp) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot register the connection");
                    return;
                }
            };
            let peer = peer.to_string();
            let svc = {
                let relay = relay.clone();
                let peer = peer.clone();
                service_fn(move |req| server::handle(relay.clone(), peer.clone(), req))
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
        }));
    }
    tracing::info!("shutting down: telling sessions goodbye");
    relay.shutdown.cancel();
    conns.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), conns.wait()).await;
    // Stops the worker threads, cancelling what is left on them (joining
    // them blocks, so off this runtime's thread).
    let _ = tokio::task::spawn_blocking(move || drop(workers)).await;
    Ok(())
}
