//! The relay's TOML file as written: serde structs with
//! `deny_unknown_fields` (a misspelt key is an error, not a silent default),
//! the defaults, and a doc comment per key. Nothing here is validated; each
//! section's conversion to its validated type sits beside that type
//! (`identity.rs`, `tls.rs`, `services.rs`, `http.rs`, `assertion.rs`).

use std::path::PathBuf;

use serde::Deserialize;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    /// Address to listen on, e.g. "0.0.0.0:8443".
    pub(super) listen: String,
    /// The relay's URL as agents reach it (through any balancer), e.g.
    /// "https://gangway.example.com": DPoP proofs must name it (`htu`).
    /// Required with `require_dpop`.
    #[serde(default)]
    pub(super) public_url: Option<String>,
    /// Worker threads serving connections; default one per CPU.
    #[serde(default)]
    pub(super) workers: Option<i64>,
    /// TLS certificate and key; required unless plaintext is allowed.
    #[serde(default)]
    pub(super) tls: Option<RawTls>,
    /// The identity provider whose tokens the relay accepts.
    pub(super) identity: RawIdentity,
    /// Where audit lines go.
    #[serde(default)]
    pub(super) audit: RawAudit,
    /// The signed identity assertion sent to http backends.
    #[serde(default)]
    pub(super) assertion: RawAssertion,
    /// The services reachable through the relay.
    #[serde(default, rename = "service")]
    pub(super) services: Vec<RawService>,
    /// Timeouts and caps that keep one client from holding the relay down.
    #[serde(default)]
    pub(super) limits: RawLimits,
    /// The admin listener: metrics and the admin API (`admin.rs`).
    #[serde(default)]
    pub(super) admin: Option<super::admin::RawAdmin>,
    /// Redis, shared by every relay: rate limits and locks (`shared.rs`).
    #[serde(default)]
    pub(super) redis: Option<super::shared::RawRedis>,
    /// Rate limits per identity (`shared.rs`).
    #[serde(default, rename = "rate_limit")]
    pub(super) rate_limits: Vec<super::shared::RawRateLimit>,
    /// Balancers that send a PROXY protocol v2 header (`balancer.rs`).
    #[serde(default)]
    pub(super) proxy_protocol: super::balancer::RawProxyProtocol,
    /// Graceful drain on SIGTERM (`balancer.rs`).
    #[serde(default)]
    pub(super) drain: super::balancer::RawDrain,
}

/// `[limits]`: timeouts and caps, each with a default sized for a company
/// relay (README, "Limits", says why each default is what it is).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLimits {
    /// Seconds a new connection has to finish its TLS handshake.
    pub(super) tls_handshake_timeout_secs: u64,
    /// Seconds a client has to send a complete request head, counted from
    /// when the connection starts waiting for it (hyper's header timer).
    pub(super) request_header_timeout_secs: u64,
    /// Seconds a non-tunnel HTTP connection may stay open with no request
    /// in flight; at most `request_header_timeout_secs`.
    pub(super) http_idle_timeout_secs: u64,
    /// Connections open at once, all clients together; more are closed at
    /// accept.
    pub(super) max_connections: u64,
    /// Connections from one client address that have not yet made an
    /// authenticated request; more from that address are closed at accept.
    pub(super) max_unauthenticated_per_address: u64,
    /// Seconds of silence before the kernel probes a connection (TCP
    /// keepalive), so tunnels to vanished laptops are found and closed.
    pub(super) tcp_keepalive_secs: u64,
    /// Streams one session may have open at once; more are refused with
    /// "rate limited".
    pub(super) max_streams_per_session: u64,
    /// Tunnel sessions one subject may have open at once on this relay.
    pub(super) max_sessions_per_subject: u64,
    /// KiB the receive window of one stream may grow to (yamux auto-tunes
    /// it from 256 KiB); bounds what a session can make the relay buffer.
    pub(super) stream_receive_window_kib: u64,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            tls_handshake_timeout_secs: 10,
            request_header_timeout_secs: 10,
            http_idle_timeout_secs: 10,
            max_connections: 10_000,
            max_unauthenticated_per_address: 64,
            tcp_keepalive_secs: 60,
            max_streams_per_session: 100,
            max_sessions_per_subject: 8,
            stream_receive_window_kib: 16 * 1024,
        }
    }
}

/// `[assertion]`: the identity assertion signed for http backends.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAssertion {
    /// Ed25519 private key (PKCS#8 PEM) signing `X-Gangway-Assertion`; give
    /// every relay the same key. Absent: an ephemeral key per process.
    pub(super) key_file: Option<PathBuf>,
    /// `iss` of assertions; default "gangway-relay".
    pub(super) issuer: Option<String>,
    /// Lifetime of an assertion in seconds.
    pub(super) ttl_secs: Option<u64>,
}

/// `[tls]`: the relay's certificate, or plain HTTP behind a balancer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    /// PEM certificate chain (path relative to the config file).
    pub(super) cert: Option<PathBuf>,
    /// PEM private key (path relative to the config file).
    pub(super) key: Option<PathBuf>,
    /// Serve plain HTTP: only behind a TLS-terminating balancer.
    #[serde(default)]
    pub(super) insecure_plaintext: bool,
}

/// `[identity]`: the OIDC provider whose access tokens the relay accepts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentity {
    /// OIDC issuer URL; its discovery document names the JWKS.
    pub(super) issuer: String,
    /// Expected `aud` of access tokens.
    pub(super) audience: String,
    /// Public client id the agent signs in with.
    pub(super) client_id: String,
    /// Scopes the agent asks for.
    #[serde(default = "default_scopes")]
    pub(super) scopes: Vec<String>,
    /// Claim holding the user's groups.
    #[serde(default = "default_groups_claim")]
    pub(super) groups_claim: String,
    /// Accepted signature algorithms.
    #[serde(default = "default_algorithms")]
    pub(super) algorithms: Vec<String>,
    /// Clock skew allowed on `exp`/`nbf`, seconds.
    #[serde(default = "default_leeway")]
    pub(super) leeway_secs: u64,
    /// Minimum seconds between JWKS refetches on an unknown `kid`.
    #[serde(default = "default_jwks_refetch")]
    pub(super) jwks_min_refetch_secs: u64,
    /// Static JWKS file instead of discovery (air-gapped setups).
    pub(super) jwks_file: Option<PathBuf>,
    /// Refuse every token that is not DPoP-bound to the agent's key
    /// (RFC 9449), on every service.
    #[serde(default)]
    pub(super) require_dpop: bool,
    /// Seconds a DPoP proof's `iat` may be from the relay's clock, either
    /// way (clock skew plus the proof's age).
    #[serde(default = "default_dpop_window")]
    pub(super) dpop_iat_window_secs: u64,
}

/// `[audit]`: where audit lines go.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    /// File to append JSON audit lines to; stdout when absent.
    pub(super) path: Option<PathBuf>,
    /// Also send each line to a syslog server (`syslog.rs`).
    pub(super) syslog: Option<super::syslog::RawSyslog>,
}

/// `[[service]]`: one service reachable through the relay.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    /// Name used on the wire and in the catalog: [a-z0-9._-], 1..=64.
    pub(super) name: String,
    /// Name shown to users.
    pub(super) display_name: Option<String>,
    /// "http" or "tcp".
    pub(super) kind: String,
    /// Suggested local port on the developer's machine.
    pub(super) local_port: u16,
    /// Backend addresses, "host:port".
    pub(super) backends: Vec<String>,
    /// Groups allowed to use the service; absent means every signed-in user.
    pub(super) allow_groups: Option<Vec<String>>,
    /// Seconds to wait for a backend connection.
    #[serde(default = "default_connect_timeout")]
    pub(super) connect_timeout_secs: u64,
    /// http: "round_robin" (default) or "least_conn".
    pub(super) balance: Option<String>,
    /// http: base name of the relay's session-affinity cookies (e.g.
    /// "GANGWAY_ROUTE"); absent means no affinity. The service's own nodes
    /// use `<base>_<service>`, each route `<base>_<service>_<route>`, so
    /// neither services (browsers share cookies across ports on 127.0.0.1)
    /// nor routes overwrite each other's.
    pub(super) affinity_cookie: Option<String>,
    /// http: the service's public URLs; `Location`, `Content-Location` and
    /// cookie domains naming them are rewritten to the local address.
    #[serde(default)]
    pub(super) public_urls: Vec<String>,
    /// http: drop `Secure` from cookies (the local address is plain http).
    pub(super) strip_secure_cookies: Option<bool>,
    /// http: active health checks of the backends.
    pub(super) health: Option<RawHealth>,
    /// http: path-prefix routes with their own backends (e.g. /synchrony).
    #[serde(default, rename = "route")]
    pub(super) routes: Vec<RawRoute>,
    /// http: request rules, e.g. only some groups may push.
    #[serde(default, rename = "rule")]
    pub(super) rules: Vec<RawRule>,
    /// Refuse tokens that are not DPoP-bound to the agent's key for this
    /// service (the relay-wide switch is `identity.require_dpop`).
    #[serde(default)]
    pub(super) require_dpop: bool,
}

/// `[service.health]`: active health checks of an http service's backends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    /// Path to GET on each backend; 2xx/3xx is healthy.
    pub(super) path: String,
    /// Seconds between checks of each backend.
    #[serde(default = "default_health_interval")]
    pub(super) interval_secs: u64,
    /// Seconds one check may take before it counts as a failure.
    #[serde(default = "default_health_timeout")]
    pub(super) timeout_secs: u64,
    /// Consecutive successes to mark a backend up.
    #[serde(default = "default_threshold")]
    pub(super) healthy_threshold: u32,
    /// Consecutive failures to mark a backend down.
    #[serde(default = "default_threshold")]
    pub(super) unhealthy_threshold: u32,
}

/// `[[service.route]]`: a path prefix served by its own backends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    /// Path prefix, e.g. "/synchrony".
    pub(super) prefix: String,
    /// Backend addresses serving this route, "host:port".
    pub(super) backends: Vec<String>,
    /// Groups allowed on this route (on top of the service's).
    pub(super) allow_groups: Option<Vec<String>>,
}

/// `[[service.rule]]`: which groups may make the requests it matches. A
/// rule matches when every condition it sets holds, on the canonical
/// target (see `policy::target`); every matching rule is applied, and a
/// caller outside any of their groups is refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    /// Matches when the canonical path + query contains this text.
    pub(super) path_contains: Option<String>,
    /// Matches when the canonical path starts with this prefix.
    pub(super) path_prefix: Option<String>,
    /// Matches only these methods (default: all); "GET" also matches HEAD.
    pub(super) methods: Option<Vec<String>>,
    /// Matches requests for this git smart-HTTP service: "receive-pack"
    /// (push) or "upload-pack" (fetch, clone), named by the path
    /// (`.../git-receive-pack`) or the `service=` query parameter.
    pub(super) git: Option<String>,
    /// Groups allowed to make matching requests.
    pub(super) allow_groups: Vec<String>,
    /// Shown to refused callers.
    pub(super) reason: Option<String>,
}

fn default_health_interval() -> u64 {
    5
}
fn default_health_timeout() -> u64 {
    2
}
fn default_threshold() -> u32 {
    2
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "offline_access".into()]
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_algorithms() -> Vec<String> {
    vec![
        "RS256".into(),
        "PS256".into(),
        "ES256".into(),
        "EdDSA".into(),
    ]
}
fn default_leeway() -> u64 {
    30
}
fn default_dpop_window() -> u64 {
    30
}
fn default_jwks_refetch() -> u64 {
    30
}
fn default_connect_timeout() -> u64 {
    10
}
