//! The Gangway relay: the central server agents tunnel to.
//!
//! ```text
//! accept ─▶ [PROXY v2] ─▶ TLS ─▶ HTTP ─┬─ /.well-known/gangway, /healthz, /readyz (open)
//!                         ├─ /v1/catalog                         (token)
//!                         └─ /v1/tunnel ─▶ WebSocket ─▶ session   (token)
//!                                               each stream: authorize ─▶ backend ─▶ copy ─▶ audit
//! ```
//!
//! The rooms, each named for what it owns:
//!
//! | module | owns |
//! | --- | --- |
//! | [`config`] | the TOML file, raw → validated by section |
//! | [`state`] | [`Relay`], the shared state of a running relay |
//! | [`server`] | [`run`], the accept loop, TLS and graceful drain, connection timeouts |
//! | [`proxy_protocol`] | the PROXY v2 header of trusted balancers |
//! | [`reload`] | [`Live`], the current state swapped on reload; `check-config` |
//! | [`admission`] | caps: connections, unauthenticated ones per address, sessions per subject |
//! | [`workers`] | the worker threads connections live on |
//! | [`endpoints`] | the relay's own HTTP surface: discovery, catalog, health, tunnel upgrade |
//! | [`auth`] | access-token validation against the provider's JWKS |
//! | [`policy`] | every allow/deny decision: tokens, services, routes, rules |
//! | [`tunnel`] | one agent's session, its control channel and its streams |
//! | [`forward`] | tcp services: backend choice and connect |
//! | [`http`] | http services: the reverse proxy, as named phases |
//! | [`backends`] | backend pools, balancing, affinity, health checks |
//! | [`assertion`], [`audit`], [`tls`] | the signed identity assertion, audit lines, TLS setup |
//! | [`text`] | client text made safe for headers and logs |
//! | [`admin`], [`metrics`] | the admin listener: Prometheus metrics, the admin API and its CLI |
//! | [`ratelimit`], [`shared`], [`locks`], [`sessions`] | rate limits per identity and subject locks, held across relays in Redis; the sessions open here |
//!
//! [`run`] serves a pre-bound listener until `shutdown` resolves; the relay
//! keeps no state another relay needs, so many can run behind a balancer.
//! Accepted connections are handed to [`workers`], one single-threaded
//! runtime per CPU, where each stays until it closes.
#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod assertion;
pub mod audit;
pub mod auth;
pub mod backends;
pub mod config;
pub mod dpop;
pub mod endpoints;
pub mod forward;
pub mod http;
pub mod locks;
pub mod metrics;
pub mod policy;
pub mod proxy_protocol;
pub mod ratelimit;
pub mod reload;
pub mod server;
pub mod sessions;
pub mod shared;
pub mod state;
pub mod text;
pub mod tls;
pub mod tunnel;
pub mod workers;

pub use auth::{AuthError, Identity, KeySource, Verifier};
pub use config::{ConfigError, RelayConfig, TlsMode};
pub use reload::Live;
pub use server::{run, serve};
pub use state::Relay;

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
    #[error(transparent)]
    Shared(#[from] shared::SharedError),
    #[error("admin listener {addr}: {source}")]
    Admin {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}
