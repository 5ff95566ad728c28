//! [`Relay`]: the shared state of a running relay, built from a validated
//! config and handed (in an `Arc`) to every connection: config, token
//! verifier, audit log, assertion signer, admission caps, the runtime side
//! of each service (backend pools), the TLS acceptor, and the shutdown
//! signals sessions watch.
//!
//! A reload ([`crate::reload`]) builds a new `Relay` from the new config
//! with [`Relay::reloaded`]; what must outlive one config is shared between
//! the two (`Arc`): the admission counters, the lifetime (shutdown, drain
//! deadline, session ids, the sessions being served), the metrics, the
//! open sessions' registry, the subject locks, the DPoP proofs seen and the
//! Redis connection,
//! and the verifier, audit log and signer when their sections did not
//! change. Anything added here that must survive a reload belongs in that
//! list.
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
use crate::backends::Pool;
use crate::config::{RelayConfig, ServiceKind, TlsMode};
use crate::locks::Locks;
use crate::metrics::Metrics;
use crate::ratelimit::Limiter;
use crate::sessions::Sessions;
use crate::shared::Shared;
use crate::{assertion, audit, forward, http, tls, RelayError};

/// Shared state of a running relay.
pub struct Relay {
    pub config: RelayConfig,
    pub verifier: Arc<Verifier>,
    pub audit: Arc<audit::Audit>,
    pub signer: Arc<assertion::Signer>,
    /// Connection, per-address and per-subject caps (`[limits]`).
    pub admission: Arc<Admission>,
    /// Prometheus metrics, served on the admin listener.
    pub metrics: Arc<Metrics>,
    /// Rate limits per identity (`[[rate_limit]]`), shared through Redis.
    pub limiter: Arc<Limiter>,
    /// Sessions open here, for the admin API and subject locks.
    pub open_sessions: Sessions,
    /// Subject locks, shared through Redis.
    pub locks: Arc<Locks>,
    /// DPoP proofs already used, shared through Redis.
    pub replays: Arc<crate::dpop::Replays>,
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
        let metrics = Arc::new(Metrics::new());
        let shared = match &config.shared.redis {
            Some(r) => Some(Arc::new(Shared::new(r, metrics.clone())?)),
            None => None,
        };
        Ok(Self {
            limiter: Arc::new(Limiter::new(
                config.shared.rate_limits.clone(),
                shared.clone(),
                metrics.clone(),
            )),
            replays: Arc::new(crate::dpop::Replays::new(shared.clone())),
            locks: Arc::new(Locks::new(shared)),
            open_sessions: Sessions::default(),
            metrics,
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
        if !same(&config.shared.redis, &old.shared.redis) {
            kept.push("redis cannot change on reload: still the running connection (restart to change it)".into());
            config.shared.redis = old.shared.redis.clone();
        }
        if !same(&config.admin, &old.admin) {
            kept.push("admin cannot change on reload: still the running admin listener (restart to change it)".into());
            config.admin = old.admin.clone();
        }
        let verifier =
            if same(&config.identity, &old.identity) && config.identity.jwks_file.is_none() {
                self.verifier.clone()
            } else {
                Arc::new(Verifier::new(config.identity.clone(), key_source(&config)?))
            };
        let audit =
            if config.audit_path == old.audit_path && config.audit_syslog == old.audit_syslog {
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
        let limiter = Arc::new(Limiter::new(
            config.shared.rate_limits.clone(),
            self.locks.shared().cloned(),
            self.metrics.clone(),
        ));
        Ok((
            Self {
                config,
                verifier,
                audit,
                signer,
                admission: self.admission.clone(),
                limiter,
                metrics: self.metrics.clone(),
                open_sessions: self.open_sessions.clone(),
                locks: self.locks.clone(),
                replays: self.replays.clone(),
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
    audit::Audit::open(config.audit_path.as_deref(), config.audit_syslog.as_ref()).map_err(|e| {
        RelayError::Audit {
            path: config
                .audit_path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            source: e,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
listen = "127.0.0.1:0"
[tls]
insecure_plaintext = true
[identity]
issuer = "https://idp.example"
audience = "gangway"
client_id = "gangway"
jwks_file = "jwks.json"
[redis]
url = "redis://127.0.0.1:1/"
[[rate_limit]]
name = "api"
on = "streams"
limit = 5
per_secs = 60
"#;

    fn parse(dir: &std::path::Path, text: &str) -> RelayConfig {
        RelayConfig::parse(&dir.join("relay.toml"), text).unwrap()
    }

    /// Metrics, the open sessions, locks and the Redis connection outlive
    /// a config; rate limits follow the new one; `[redis]` needs a restart.
    #[tokio::test]
    async fn a_reload_keeps_what_relays_share_and_says_redis_needs_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("jwks.json"), r#"{"keys":[]}"#).unwrap();
        let old = Relay::from_config(parse(dir.path(), BASE)).unwrap();
        old.metrics.sessions.inc();
        let _s = old.open_sessions.register(crate::sessions::SessionInfo {
            id: "1".into(),
            subject: "alice".into(),
            peer: "127.0.0.1:1".into(),
            agent: "t".into(),
            started_unix: 1,
        });
        let text = BASE
            .replace("redis://127.0.0.1:1/", "redis://127.0.0.1:2/")
            .replace("limit = 5", "limit = 7");
        let (new, kept) = old.reloaded(parse(dir.path(), &text)).unwrap();
        assert!(Arc::ptr_eq(&old.metrics, &new.metrics));
        assert!(Arc::ptr_eq(&old.locks, &new.locks));
        assert_eq!(new.metrics.sessions.get(), 1);
        assert_eq!(new.open_sessions.list().len(), 1);
        assert_eq!(new.config.shared.rate_limits[0].limit, 7);
        assert_eq!(
            new.config.shared.redis.as_ref().unwrap().url,
            "redis://127.0.0.1:1/"
        );
        assert!(
            kept.iter().any(|k| k.starts_with("redis cannot change")),
            "{kept:?}"
        );
    }
}
