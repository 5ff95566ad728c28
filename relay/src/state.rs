//! [`Relay`]: the shared state of a running relay, built from a validated
//! config and handed (in an `Arc`) to every connection: config, token
//! verifier, audit log, assertion signer, admission caps, the runtime side
//! of each service (backend pools), the TLS acceptor, and the shutdown
//! signals sessions watch.
//!
//! A reload ([`crate::reload`]) builds a new `Relay` from the new config
//! with [`Relay::reloaded`]; what must outlive one config is shared between
//! the two (`Arc`): the admission counters, the lifetime (shutdown, drain
//! deadline, session ids, the sessions being served), and the verifier,
//! audit log and signer when their sections did not change. Anything added
//! here that must survive a reload belongs in that list.
//!
//! The accept loop that serves it is [`crate::server`]'s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Admission;
use crate::auth::{KeySource, Verifier};
use crate::config::{RelayConfig, ServiceKind, TlsMode};
use crate::{assertion, audit, forward, http, tls, RelayError};

/// Shared state of a running relay.
pub struct Relay {
    pub config: RelayConfig,
    pub verifier: Arc<Verifier>,
    pub audit: Arc<audit::Audit>,
    pub signer: Arc<assertion::Signer>,
    /// Connection, per-address and per-subject caps (`[limits]`).
    pub admission: Arc<Admission>,
    tcp_services: HashMap<String, forward::Pool>,
    http_services: HashMap<String, Arc<http::HttpService>>,
    /// `None` when serving plain HTTP.
    tls: Option<TlsAcceptor>,
    pub(crate) lifetime: Arc<Lifetime>,
    /// Cancelled when a reload replaces this state: its health checks stop.
    pub(crate) retired: CancellationToken,
}

/// What lives as long as the process, whatever config it runs.
pub(crate) struct Lifetime {
    /// Cancelled when the relay starts draining: sessions say goodbye.
    shutdown: CancellationToken,
    /// Cancelled at the drain deadline: everything left is closed.
    cut: CancellationToken,
    /// The tunnel sessions being served, waited for while draining.
    sessions_served: TaskTracker,
    sessions: AtomicU64,
}

impl Relay {
    /// Builds the relay from a validated config, with keys from `source`.
    pub fn new(config: RelayConfig, source: KeySource) -> Result<Self, RelayError> {
        let audit = open_audit(&config)?;
        let lifetime = Arc::new(Lifetime {
            shutdown: CancellationToken::new(),
            cut: CancellationToken::new(),
            sessions_served: TaskTracker::new(),
            sessions: AtomicU64::new(0),
        });
        let parts = Parts::build(&config, &lifetime)?;
        Ok(Self {
            verifier: Arc::new(Verifier::new(config.identity.clone(), source)),
            signer: Arc::new(assertion::Signer::from_config(&config.assertion)?),
            admission: Arc::new(Admission::new(&config.limits)),
            audit: Arc::new(audit),
            config,
            tcp_services: parts.tcp_services,
            http_services: parts.http_services,
            tls: parts.tls,
            retired: parts.retired,
            lifetime,
        })
    }

    /// The state for `config`, replacing this one on reload: new services,
    /// backends, rules, limits and TLS certificate; the same admission
    /// counters and lifetime; the same verifier (and its cached keys),
    /// audit log and signer unless their sections changed.
    ///
    /// `listen` and `workers` cannot change without a restart, nor can the
    /// admission caps of `[limits]` (`max_connections`,
    /// `max_unauthenticated_per_address`, `max_sessions_per_subject`): the
    /// running values are kept, and each kept change is returned as a
    /// warning to log.
    pub fn reloaded(&self, mut config: RelayConfig) -> Result<(Self, Vec<String>), RelayError> {
        let old = &self.config;
        let mut kept = Vec::new();
        if config.listen != old.listen {
            kept.push(format!(
                "listen cannot change on reload: still {} (restart to move)",
                old.listen
            ));
            config.listen = old.listen;
        }
        if config.workers != old.workers {
            kept.push(format!(
                "workers cannot change on reload: still {}",
                old.workers
            ));
            config.workers = old.workers;
        }
        let (new_l, old_l) = (&mut config.limits, &old.limits);
        for (key, new, was) in [
            (
                "max_connections",
                &mut new_l.max_connections,
                old_l.max_connections,
            ),
            (
                "max_unauthenticated_per_address",
                &mut new_l.max_unauthenticated_per_address,
                old_l.max_unauthenticated_per_address,
            ),
            (
                "max_sessions_per_subject",
                &mut new_l.max_sessions_per_subject,
                old_l.max_sessions_per_subject,
            ),
        ] {
            if *new != was {
                kept.push(format!("limits.{key} cannot change on reload: still {was}"));
                *new = was;
            }
        }
        let verifier =
            if same(&config.identity, &old.identity) && config.identity.jwks_file.is_none() {
                self.verifier.clone()
            } else {
                Arc::new(Verifier::new(config.identity.clone(), key_source(&config)?))
            };
        let audit = if config.audit_path == old.audit_path {
            self.audit.clone()
        } else {
            Arc::new(open_audit(&config)?)
        };
        let signer = if same(&config.assertion, &old.assertion) {
            self.signer.clone()
        } else {
            Arc::new(assertion::Signer::from_config(&config.assertion)?)
        };
        let parts = Parts::build(&config, &self.lifetime)?;
        Ok((
            Self {
                config,
                verifier,
                audit,
                signer,
                admission: self.admission.clone(),
                tcp_services: parts.tcp_services,
                http_services: parts.http_services,
                tls: parts.tls,
                retired: parts.retired,
                lifetime: self.lifetime.clone(),
            },
            kept,
        ))
    }

    /// Builds the relay with the key source its config names: a static
    /// `jwks_file`, or discovery from the issuer.
    pub fn from_config(config: RelayConfig) -> Result<Self, RelayError> {
        let source = key_source(&config)?;
        Self::new(config, source)
    }

    pub(crate) fn next_session_id(&self) -> String {
        let n = self.lifetime.sessions.fetch_add(1, Ordering::Relaxed);
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

    /// Starts every http service's active health checks, until this state
    /// is replaced by a reload or the relay shuts down.
    pub(crate) fn spawn_health_checks(&self) {
        for svc in self.http_services.values() {
            svc.spawn_health_checks(&self.retired);
        }
    }

    /// This state was replaced by a reload: its health checks stop (streams
    /// still using its backends fall back on passive ejection).
    pub(crate) fn retire(&self) {
        self.retired.cancel();
    }

    /// The TLS acceptor of this config's certificate; `None` for plain HTTP.
    pub(crate) fn tls(&self) -> Option<&TlsAcceptor> {
        self.tls.as_ref()
    }

    /// Cancelled when the relay starts draining (SIGTERM): sessions say
    /// goodbye, new streams are refused, `/readyz` answers 503.
    pub(crate) fn shutdown(&self) -> &CancellationToken {
        &self.lifetime.shutdown
    }

    /// True while draining.
    pub fn draining(&self) -> bool {
        self.lifetime.shutdown.is_cancelled()
    }

    /// Cancelled at the drain deadline: sessions end, streams or not.
    pub(crate) fn cut(&self) -> &CancellationToken {
        &self.lifetime.cut
    }

    /// The tunnel sessions being served (spawned on it), so that a drain
    /// can wait for them.
    pub(crate) fn sessions_served(&self) -> &TaskTracker {
        &self.lifetime.sessions_served
    }
}

/// The config-derived parts built anew for each config.
struct Parts {
    tcp_services: HashMap<String, forward::Pool>,
    http_services: HashMap<String, Arc<http::HttpService>>,
    tls: Option<TlsAcceptor>,
    pub(crate) retired: CancellationToken,
}

impl Parts {
    fn build(config: &RelayConfig, lifetime: &Lifetime) -> Result<Self, RelayError> {
        let of_kind = |kind| config.services.iter().filter(move |s| s.kind == kind);
        let tls = match &config.tls {
            TlsMode::Files { cert, key } => Some(TlsAcceptor::from(tls::server_config(cert, key)?)),
            TlsMode::Plaintext => None,
        };
        Ok(Self {
            tcp_services: of_kind(ServiceKind::Tcp)
                .map(|s| (s.name.clone(), forward::Pool::new(s)))
                .collect(),
            http_services: of_kind(ServiceKind::Http)
                .map(|s| (s.name.clone(), Arc::new(http::HttpService::new(s))))
                .collect(),
            tls,
            retired: lifetime.shutdown.child_token(),
        })
    }
}

/// Two config sections alike, field by field (their `Debug` forms: the
/// sections hold no secrets, only paths and names).
fn same(a: &impl std::fmt::Debug, b: &impl std::fmt::Debug) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

fn open_audit(config: &RelayConfig) -> Result<audit::Audit, RelayError> {
    audit::Audit::open(config.audit_path.as_deref()).map_err(|e| RelayError::Audit {
        path: config
            .audit_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        source: e,
    })
}

/// The key source `config` names: a static `jwks_file`, or discovery.
fn key_source(config: &RelayConfig) -> Result<KeySource, RelayError> {
    Ok(match &config.identity.jwks_file {
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
    })
}
