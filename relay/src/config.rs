//! Relay configuration: one TOML file, read raw, then validated.
//!
//! Every error names the file, the key and the reason, e.g.
//! `relay.toml: service[1].backends: must list at least one backend`.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

/// A configuration error that names the file, key and reason.
#[derive(Debug, thiserror::Error)]
#[error("{}: {key}: {reason}", file.display())]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: String,
    pub reason: String,
}

fn err(file: &Path, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        file: file.to_path_buf(),
        key: key.into(),
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------- raw form

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Address to listen on, e.g. "0.0.0.0:8443".
    listen: String,
    /// Worker threads serving connections; default one per CPU.
    #[serde(default)]
    workers: Option<i64>,
    /// TLS certificate and key; required unless plaintext is allowed.
    #[serde(default)]
    tls: Option<RawTls>,
    /// The identity provider whose tokens the relay accepts.
    identity: RawIdentity,
    /// Where audit lines go.
    #[serde(default)]
    audit: RawAudit,
    /// The signed identity assertion sent to http backends.
    #[serde(default)]
    assertion: RawAssertion,
    /// The services reachable through the relay.
    #[serde(default, rename = "service")]
    services: Vec<RawService>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAssertion {
    /// Ed25519 private key (PKCS#8 PEM) signing `X-Gangway-Assertion`; give
    /// every relay the same key. Absent: an ephemeral key per process.
    key_file: Option<PathBuf>,
    /// `iss` of assertions; default "gangway-relay".
    issuer: Option<String>,
    /// Lifetime of an assertion in seconds.
    ttl_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    /// PEM certificate chain (path relative to the config file).
    cert: Option<PathBuf>,
    /// PEM private key (path relative to the config file).
    key: Option<PathBuf>,
    /// Serve plain HTTP: only behind a TLS-terminating balancer.
    #[serde(default)]
    insecure_plaintext: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    /// OIDC issuer URL; its discovery document names the JWKS.
    issuer: String,
    /// Expected `aud` of access tokens.
    audience: String,
    /// Public client id the agent signs in with.
    client_id: String,
    /// Scopes the agent asks for.
    #[serde(default = "default_scopes")]
    scopes: Vec<String>,
    /// Claim holding the user's groups.
    #[serde(default = "default_groups_claim")]
    groups_claim: String,
    /// Accepted signature algorithms.
    #[serde(default = "default_algorithms")]
    algorithms: Vec<String>,
    /// Clock skew allowed on `exp`/`nbf`, seconds.
    #[serde(default = "default_leeway")]
    leeway_secs: u64,
    /// Minimum seconds between JWKS refetches on an unknown `kid`.
    #[serde(default = "default_jwks_refetch")]
    jwks_min_refetch_secs: u64,
    /// Static JWKS file instead of discovery (air-gapped setups).
    jwks_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    /// File to append JSON audit lines to; stdout when absent.
    path: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    /// Name used on the wire and in the catalog: [a-z0-9._-], 1..=64.
    name: String,
    /// Name shown to users.
    display_name: Option<String>,
    /// "http" or "tcp".
    kind: String,
    /// Suggested local port on the developer's machine.
    local_port: u16,
    /// Backend addresses, "host:port".
    backends: Vec<String>,
    /// Groups allowed to use the service; absent means every signed-in user.
    allow_groups: Option<Vec<String>>,
    /// Seconds to wait for a backend connection.
    #[serde(default = "default_connect_timeout")]
    connect_timeout_secs: u64,
    /// http: "round_robin" (default) or "least_conn".
    balance: Option<String>,
    /// http: name of the relay's session-affinity cookie (e.g. "GANGWAY_ROUTE");
    /// absent means no affinity.
    affinity_cookie: Option<String>,
    /// http: the service's public URLs; `Location`, `Content-Location` and
    /// cookie domains naming them are rewritten to the local address.
    #[serde(default)]
    public_urls: Vec<String>,
    /// http: drop `Secure` from cookies (the local address is plain http).
    strip_secure_cookies: Option<bool>,
    /// http: active health checks of the backends.
    health: Option<RawHealth>,
    /// http: path-prefix routes with their own backends (e.g. /synchrony).
    #[serde(default, rename = "route")]
    routes: Vec<RawRoute>,
    /// http: request rules, e.g. only some groups may push.
    #[serde(default, rename = "rule")]
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    /// Path to GET on each backend; 2xx/3xx is healthy.
    path: String,
    #[serde(default = "default_health_interval")]
    interval_secs: u64,
    #[serde(default = "default_health_timeout")]
    timeout_secs: u64,
    /// Consecutive successes to mark a backend up.
    #[serde(default = "default_threshold")]
    healthy_threshold: u32,
    /// Consecutive failures to mark a backend down.
    #[serde(default = "default_threshold")]
    unhealthy_threshold: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    /// Path prefix, e.g. "/synchrony".
    prefix: String,
    backends: Vec<String>,
    /// Groups allowed on this route (on top of the service's).
    allow_groups: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    /// Matches when the path + query contains this text.
    path_contains: Option<String>,
    /// Matches when the path starts with this prefix.
    path_prefix: Option<String>,
    /// Matches only these methods (default: all).
    methods: Option<Vec<String>>,
    /// Groups allowed to make matching requests.
    allow_groups: Vec<String>,
    /// Shown to refused callers.
    reason: Option<String>,
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
fn default_jwks_refetch() -> u64 {
    30
}
fn default_connect_timeout() -> u64 {
    10
}

// ---------------------------------------------------------- validated form

/// A validated relay configuration.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub listen: SocketAddr,
    /// Worker threads (each a single-threaded runtime) serving connections.
    pub workers: usize,
    pub tls: TlsMode,
    pub identity: IdentityConfig,
    pub audit_path: Option<PathBuf>,
    pub assertion: AssertionConfig,
    pub services: Vec<ServiceConfig>,
}

#[derive(Debug, Clone)]
pub enum TlsMode {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    /// Plain HTTP, allowed by config for use behind a TLS-terminating balancer.
    Plaintext,
}

#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub issuer: String,
    pub audience: String,
    pub client_id: String,
    pub scopes: Vec<String>,
    pub groups_claim: String,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub leeway: Duration,
    pub jwks_min_refetch: Duration,
    pub jwks_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    Http,
    Tcp,
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceKind::Http => "http",
            ServiceKind::Tcp => "tcp",
        })
    }
}

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub name: String,
    pub display_name: String,
    pub kind: ServiceKind,
    pub local_port: u16,
    pub backends: Vec<String>,
    pub allow_groups: Option<Vec<String>>,
    pub connect_timeout: Duration,
    /// Settings of http services (defaults for tcp ones).
    pub http: HttpSettings,
}

/// How an http service is balanced, checked, routed and rewritten.
#[derive(Debug, Clone, Default)]
pub struct HttpSettings {
    pub balance: Balance,
    pub affinity_cookie: Option<String>,
    pub public_urls: Vec<Url>,
    pub strip_secure_cookies: bool,
    pub health: Option<HealthConfig>,
    /// Extra routes, longest prefix first; "/" (the service's backends) is implied.
    pub routes: Vec<RouteConfig>,
    pub rules: Vec<RuleConfig>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConn,
}

#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub prefix: String,
    pub backends: Vec<String>,
    pub allow_groups: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct RuleConfig {
    pub path_contains: Option<String>,
    pub path_prefix: Option<String>,
    pub methods: Option<Vec<String>>,
    pub allow_groups: Vec<String>,
    pub reason: String,
}

/// Settings of the signed identity assertion.
#[derive(Debug, Clone)]
pub struct AssertionConfig {
    pub key_file: Option<PathBuf>,
    pub issuer: String,
    pub ttl: Duration,
}

impl Default for AssertionConfig {
    fn default() -> Self {
        Self {
            key_file: None,
            issuer: "gangway-relay".into(),
            ttl: Duration::from_secs(60),
        }
    }
}

fn check_backends(file: &Path, key: &str, backends: &[String]) -> Result<(), ConfigError> {
    if backends.is_empty() {
        return Err(err(file, key, "must list at least one backend"));
    }
    for (j, b) in backends.iter().enumerate() {
        let ok = b
            .rsplit_once(':')
            .map(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0))
            .unwrap_or(false);
        if !ok {
            return Err(err(
                file,
                format!("{key}[{j}]"),
                format!("{b:?} is not host:port"),
            ));
        }
    }
    Ok(())
}

/// Validates the http-only keys of service `i`; they are refused on tcp services.
fn http_settings(
    file: &Path,
    i: usize,
    kind: ServiceKind,
    s: &RawService,
) -> Result<HttpSettings, ConfigError> {
    let at = |k: &str| format!("service[{i}].{k}");
    if kind == ServiceKind::Tcp {
        let set = [
            ("balance", s.balance.is_some()),
            ("affinity_cookie", s.affinity_cookie.is_some()),
            ("public_urls", !s.public_urls.is_empty()),
            ("strip_secure_cookies", s.strip_secure_cookies.is_some()),
            ("health", s.health.is_some()),
            ("route", !s.routes.is_empty()),
            ("rule", !s.rules.is_empty()),
        ];
        if let Some((k, _)) = set.iter().find(|(_, on)| *on) {
            return Err(err(
                file,
                at(k),
                "only applies to services of kind \"http\"",
            ));
        }
        return Ok(HttpSettings::default());
    }
    let balance = match s.balance.as_deref() {
        None | Some("round_robin") => Balance::RoundRobin,
        Some("least_conn") => Balance::LeastConn,
        Some(other) => {
            return Err(err(
                file,
                at("balance"),
                format!("{other:?} is not \"round_robin\" or \"least_conn\""),
            ))
        }
    };
    if let Some(c) = &s.affinity_cookie {
        if c.is_empty()
            || !c
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(err(
                file,
                at("affinity_cookie"),
                format!("{c:?} is not a valid cookie name"),
            ));
        }
    }
    let mut public_urls = Vec::new();
    for (j, u) in s.public_urls.iter().enumerate() {
        let url = Url::parse(u)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| {
                err(
                    file,
                    format!("service[{i}].public_urls[{j}]"),
                    format!("{u:?} is not an http(s) URL"),
                )
            })?;
        public_urls.push(url);
    }
    let health = match &s.health {
        None => None,
        Some(h) => {
            if !h.path.starts_with('/') {
                return Err(err(file, at("health.path"), "must start with '/'"));
            }
            if h.interval_secs == 0 || h.timeout_secs == 0 {
                return Err(err(
                    file,
                    at("health"),
                    "interval_secs and timeout_secs must be at least 1",
                ));
            }
            if h.healthy_threshold == 0 || h.unhealthy_threshold == 0 {
                return Err(err(file, at("health"), "thresholds must be at least 1"));
            }
            Some(HealthConfig {
                path: h.path.clone(),
                interval: Duration::from_secs(h.interval_secs),
                timeout: Duration::from_secs(h.timeout_secs),
                healthy_threshold: h.healthy_threshold,
                unhealthy_threshold: h.unhealthy_threshold,
            })
        }
    };
    let mut routes = Vec::new();
    for (j, r) in s.routes.iter().enumerate() {
        let key = format!("service[{i}].route[{j}]");
        if !r.prefix.starts_with('/') || r.prefix == "/" {
            return Err(err(file, format!("{key}.prefix"), format!("{:?} must start with '/' and not be \"/\" (the service's own backends serve \"/\")", r.prefix)));
        }
        check_backends(file, &format!("{key}.backends"), &r.backends)?;
        routes.push(RouteConfig {
            prefix: r.prefix.trim_end_matches('/').to_string(),
            backends: r.backends.clone(),
            allow_groups: r.allow_groups.clone(),
        });
    }
    routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    let mut rules = Vec::new();
    for (j, r) in s.rules.iter().enumerate() {
        if r.path_contains.is_none() && r.path_prefix.is_none() && r.methods.is_none() {
            return Err(err(
                file,
                format!("service[{i}].rule[{j}]"),
                "needs at least one of path_contains, path_prefix, methods",
            ));
        }
        rules.push(RuleConfig {
            path_contains: r.path_contains.clone(),
            path_prefix: r.path_prefix.clone(),
            methods: r.methods.clone(),
            allow_groups: r.allow_groups.clone(),
            reason: r
                .reason
                .clone()
                .unwrap_or_else(|| "this request is not allowed for your groups".into()),
        });
    }
    Ok(HttpSettings {
        balance,
        affinity_cookie: s.affinity_cookie.clone(),
        public_urls,
        strip_secure_cookies: s.strip_secure_cookies.unwrap_or(true),
        health,
        routes,
        rules,
    })
}

impl RelayConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(path, "(file)", format!("cannot read: {e}")))?;
        Self::parse(path, &text)
    }

    /// Validates `text` as if read from `path` (relative paths resolve
    /// against its directory).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let key = e
                .span()
                .map(|s| {
                    let line = text[..s.start].matches('\n').count() + 1;
                    format!("line {line}")
                })
                .unwrap_or_else(|| "(syntax)".into());
            err(path, key, e.message().to_string())
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };

        let listen: SocketAddr = raw.listen.parse().map_err(|_| {
            err(
                path,
                "listen",
                format!("{:?} is not an address like 0.0.0.0:8443", raw.listen),
            )
        })?;

        let workers = match raw.workers {
            None => crate::workers::default_count(),
            Some(n) if (1..=1024).contains(&n) => n as usize,
            Some(n) => {
                return Err(err(
                    path,
                    "workers",
                    format!("{n} is not a number of threads from 1 to 1024"),
                ))
            }
        };

        let tls = match raw.tls {
            Some(RawTls {
                insecure_plaintext: true,
                cert: None,
                key: None,
            }) => TlsMode::Plaintext,
            Some(RawTls {
                insecure_plaintext: true,
                ..
            }) => {
                return Err(err(
                    path,
                    "tls.insecure_plaintext",
                    "cannot be combined with tls.cert/tls.key",
                ))
            }
            Some(RawTls {
                cert: Some(cert),
                key: Some(key),
                ..
            }) => TlsMode::Files {
                cert: resolve(&cert),
                key: resolve(&key),
            },
            Some(RawTls { cert: None, .. }) => {
                return Err(err(path, "tls.cert", "missing (PEM certificate chain)"))
            }
            Some(RawTls { key: None, .. }) => {
                return Err(err(path, "tls.key", "missing (PEM private key)"))
            }
            None => {
                return Err(err(
                    path,
                    "tls",
                    "missing: set tls.cert and tls.key (or tls.insecure_plaintext = true behind a TLS-terminating balancer)",
                ))
            }
        };

        let id = raw.identity;
        let issuer = id.issuer.trim_end_matches('/').to_string();
        match url::Url::parse(&issuer) {
            Ok(u) if u.scheme() == "https" || u.scheme() == "http" => {}
            _ => {
                return Err(err(
                    path,
                    "identity.issuer",
                    format!("{issuer:?} is not an http(s) URL"),
                ))
            }
        }
        if id.audience.is_empty() {
            return Err(err(path, "identity.audience", "must not be empty"));
        }
        if id.client_id.is_empty() {
            return Err(err(path, "identity.client_id", "must not be empty"));
        }
        let mut algorithms = Vec::new();
        for (i, a) in id.algorithms.iter().enumerate() {
            let key = format!("identity.algorithms[{i}]");
            let alg: jsonwebtoken::Algorithm = a
                .parse()
                .map_err(|_| err(path, &key, format!("unknown algorithm {a:?}")))?;
            if matches!(
                alg,
                jsonwebtoken::Algorithm::HS256
                    | jsonwebtoken::Algorithm::HS384
                    | jsonwebtoken::Algorithm::HS512
            ) {
                return Err(err(
                    path,
                    &key,
                    format!(
                        "{a} is a shared-secret algorithm; only public-key algorithms are accepted"
                    ),
                ));
            }
            algorithms.push(alg);
        }
        if algorithms.is_empty() {
            return Err(err(
                path,
                "identity.algorithms",
                "must list at least one algorithm",
            ));
        }
        let identity = IdentityConfig {
            issuer,
            audience: id.audience,
            client_id: id.client_id,
            scopes: id.scopes,
            groups_claim: id.groups_claim,
            algorithms,
            leeway: Duration::from_secs(id.leeway_secs),
            jwks_min_refetch: Duration::from_secs(id.jwks_min_refetch_secs),
            jwks_file: id.jwks_file.as_deref().map(resolve),
        };

        let mut services = Vec::new();
        let mut names = HashSet::new();
        for (i, s) in raw.services.into_iter().enumerate() {
            let at = |k: &str| format!("service[{i}].{k}");
            if gangway_wire::OpenStream::new(&s.name).is_err() {
                return Err(err(
                    path,
                    at("name"),
                    format!(
                        "{:?} must be 1-64 characters of a-z, 0-9, '.', '_', '-'",
                        s.name
                    ),
                ));
            }
            if !names.insert(s.name.clone()) {
                return Err(err(path, at("name"), format!("{:?} is used twice", s.name)));
            }
            let kind = match s.kind.as_str() {
                "http" => ServiceKind::Http,
                "tcp" => ServiceKind::Tcp,
                other => {
                    return Err(err(
                        path,
                        at("kind"),
                        format!("{other:?} is not \"http\" or \"tcp\""),
                    ))
                }
            };
            check_backends(path, &at("backends"), &s.backends)?;
            if s.connect_timeout_secs == 0 {
                return Err(err(path, at("connect_timeout_secs"), "must be at least 1"));
            }
            let http = http_settings(path, i, kind, &s)?;
            services.push(ServiceConfig {
                display_name: s.display_name.unwrap_or_else(|| s.name.clone()),
                name: s.name,
                kind,
                local_port: s.local_port,
                backends: s.backends,
                allow_groups: s.allow_groups,
                connect_timeout: Duration::from_secs(s.connect_timeout_secs),
                http,
            });
        }

        let defaults = AssertionConfig::default();
        let assertion = AssertionConfig {
            key_file: raw.assertion.key_file.as_deref().map(resolve),
            issuer: raw.assertion.issuer.unwrap_or(defaults.issuer),
            ttl: raw
                .assertion
                .ttl_secs
                .map(Duration::from_secs)
                .unwrap_or(defaults.ttl),
        };
        if assertion.ttl.is_zero() {
            return Err(err(path, "assertion.ttl_secs", "must be at least 1"));
        }
        Ok(RelayConfig {
            listen,
            workers,
            tls,
            identity,
            audit_path: raw.audit.path.as_deref().map(resolve),
            assertion,
            services,
        })
    }

    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures(dir: &str) -> Vec<PathBuf> {
        let d = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(dir);
        let mut v: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn valid_fixtures_load() {
        let files = fixtures("valid");
        assert!(!files.is_empty());
        for f in files {
            RelayConfig::load(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        }
    }

    /// Each invalid fixture's first line is `# expect: <key>: <reason fragment>`.
    #[test]
    fn invalid_fixtures_name_key_and_reason() {
        let files = fixtures("invalid");
        assert!(files.len() >= 5);
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            let expect = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# expect: "))
                .unwrap_or_else(|| panic!("{} lacks '# expect:'", f.display()))
                .to_string();
            let e = RelayConfig::load(&f).expect_err(&f.display().to_string());
            let msg = e.to_string();
            assert!(msg.starts_with(&f.display().to_string()), "{msg}");
            assert!(
                msg.contains(&expect),
                "{}: got {msg:?}, want {expect:?}",
                f.display()
            );
        }
    }
}
