//! [`Relay`]: the shared state of a running relay, built once from a
//! validated config and handed (in an `Arc`) to every connection: config,
//! token verifier, audit log, assertion signer, admission caps, the runtime side of each
//! service (backend pools), and the shutdown signal sessions watch.
//!
//! The accept loop that serves it is [`crate::server`]'s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::auth::{KeySource, Verifier};
use crate::backends::Pool;
use crate::config::{RelayConfig, ServiceKind};
use crate::locks::Locks;
use crate::metrics::Metrics;
use crate::ratelimit::Limiter;
use crate::sessions::Sessions;
use crate::shared::Shared;
use crate::{assertion, audit, forward, http, RelayError};

/// Shared state of a running relay.
pub struct Relay {
    pub config: RelayConfig,
    pub verifier: Verifier,
    pub audit: audit::Audit,
    pub signer: assertion::Signer,
    /// Connection, per-address and per-subject caps (`[limits]`).
    pub admission: Admission,
    /// Prometheus metrics, served on the admin listener.
    pub metrics: Arc<Metrics>,
    /// Rate limits per identity (`[[rate_limit]]`), shared through Redis.
    pub limiter: Limiter,
    /// Sessions open here, for the admin API and subject locks.
    pub open_sessions: Sessions,
    /// Subject locks, shared through Redis.
    pub locks: Locks,
    tcp_services: HashMap<String, forward::Pool>,
    http_services: HashMap<String, Arc<http::HttpService>>,
    shutdown: CancellationToken,
    sessions: AtomicU64,
}

impl Relay {
    /// Builds the relay from a validated config, with keys from `source`.
    pub fn new(config: RelayConfig, source: KeySource) -> Result<Self, RelayError> {
        let audit = audit::Audit::open(config.audit_path.as_deref(), config.audit_syslog.as_ref())
            .map_err(|e| RelayError::Audit {
                path: config
                    .audit_path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                source: e,
            })?;
        let of_kind = |kind| config.services.iter().filter(move |s| s.kind == kind);
        let tcp_services = of_kind(ServiceKind::Tcp)
            .map(|s| (s.name.clone(), forward::Pool::new(s)))
            .collect();
        let http_services = of_kind(ServiceKind::Http)
            .map(|s| (s.name.clone(), Arc::new(http::HttpService::new(s))))
            .collect();
        let metrics = Arc::new(Metrics::new());
        let shared = match &config.shared.redis {
            Some(r) => Some(Arc::new(Shared::new(r, metrics.clone())?)),
            None => None,
        };
        Ok(Self {
            limiter: Limiter::new(
                config.shared.rate_limits.clone(),
                shared.clone(),
                metrics.clone(),
            ),
            locks: Locks::new(shared),
            open_sessions: Sessions::default(),
            metrics,
            verifier: Verifier::new(config.identity.clone(), source),
            signer: assertion::Signer::from_config(&config.assertion)?,
            admission: Admission::new(&config.limits),
            config,
            audit,
            tcp_services,
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

    pub(crate) fn next_session_id(&self) -> String {
        let n = self.sessions.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}-{n}", std::process::id())
    }

    /// The backends of tcp service `service`, if it is one.
    pub(crate) fn tcp_service(&self, service: &str) -> Option<&forward::Pool> {
        self.tcp_services.get(service)
    }

    /// The runtime side of http service `service`, if it is one.
    pub(crate) fn http_service(&self, service: &str) -> Option<Arc<http::HttpService>> {
        self.http_services.get(service).cloned()
    }

    /// Starts every http service's active health checks, until shutdown.
    pub(crate) fn spawn_health_checks(&self) {
        for svc in self.http_services.values() {
            svc.spawn_health_checks(&self.shutdown);
        }
    }

    /// Every backend pool: service, route prefix (none for the service's
    /// own nodes) and pool, in config order.
    pub fn pools(&self) -> Vec<(&str, Option<&str>, &Pool)> {
        let mut v = Vec::new();
        for svc in &self.config.services {
            if let Some(p) = self.tcp_services.get(&svc.name) {
                v.push((svc.name.as_str(), None, p.nodes()));
            }
            if let Some(h) = self.http_services.get(&svc.name) {
                v.extend(h.pools().map(|(prefix, p)| (svc.name.as_str(), prefix, p)));
            }
        }
        v
    }

    /// Cancelled when the relay starts shutting down: sessions say goodbye.
    pub(crate) fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }
}
