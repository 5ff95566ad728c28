//! The http-only keys of a `[[service]]`: balancing, affinity, public URLs
//! for rewriting, health checks, routes and rules. Each is refused on a
//! service of kind "tcp".
//!
//! Routes and rules are only validated here; what they allow is decided in
//! [`crate::policy`].

use std::time::Duration;

use url::Url;

use super::raw::{RawHealth, RawRoute, RawRule, RawService};
use super::services::{check_backends, ServiceKind};
use super::{ConfigError, Source};
use crate::policy::{canonical_path, canonical_text};

/// How an http service is balanced, checked, routed and rewritten.
#[derive(Debug, Clone, Default)]
pub struct HttpSettings {
    pub balance: Balance,
    /// The affinity cookie of the service's own nodes,
    /// `<affinity_cookie>_<service>`; each route has its own.
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
    /// The route's own affinity cookie, `<affinity_cookie>_<service>_<route>`
    /// with `Path=<prefix>`: a request under the route never overwrites the
    /// cookie that keeps the service's pages on their node.
    pub affinity_cookie: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RuleConfig {
    pub path_contains: Option<String>,
    pub path_prefix: Option<String>,
    pub methods: Option<Vec<String>>,
    pub git: Option<GitService>,
    pub allow_groups: Vec<String>,
    pub reason: String,
}

/// A git smart-HTTP service a rule can name (`git = "..."`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitService {
    /// `git push`.
    ReceivePack,
    /// `git fetch`, `git clone`, `git pull`.
    UploadPack,
}

impl HttpSettings {
    /// Validates the http-only keys of service `i`; they are refused on tcp
    /// services.
    pub(super) fn from_raw(
        i: usize,
        kind: ServiceKind,
        s: &RawService,
        src: &Source<'_>,
    ) -> Result<Self, ConfigError> {
        let at = |k: &str| format!("service[{i}].{k}");
        if kind == ServiceKind::Tcp {
            refuse_on_tcp(s, src, at)?;
            return Ok(HttpSettings::default());
        }
        let balance = balance(s.balance.as_deref(), src, &at("balance"))?;
        if let Some(c) = &s.affinity_cookie {
            check_cookie_name(c, src, &at("affinity_cookie"))?;
        }
        let cookie_base = s
            .affinity_cookie
            .as_ref()
            .map(|c| format!("{c}_{}", cookie_part(&s.name)));
        Ok(HttpSettings {
            balance,
            affinity_cookie: cookie_base.clone(),
            public_urls: public_urls(&s.public_urls, src, &at("public_urls"))?,
            strip_secure_cookies: s.strip_secure_cookies.unwrap_or(true),
            health: s
                .health
                .as_ref()
                .map(|h| HealthConfig::from_raw(h, src, &at("health")))
                .transpose()?,
            routes: routes(&s.routes, cookie_base.as_deref(), src, &at("route"))?,
            rules: rules(&s.rules, src, &at("rule"))?,
        })
    }
}

/// The first http-only key set on a tcp service is an error.
fn refuse_on_tcp(
    s: &RawService,
    src: &Source<'_>,
    at: impl Fn(&str) -> String,
) -> Result<(), ConfigError> {
    let set = [
        ("balance", s.balance.is_some()),
        ("affinity_cookie", s.affinity_cookie.is_some()),
        ("public_urls", !s.public_urls.is_empty()),
        ("strip_secure_cookies", s.strip_secure_cookies.is_some()),
        ("health", s.health.is_some()),
        ("route", !s.routes.is_empty()),
        ("rule", !s.rules.is_empty()),
    ];
    match set.iter().find(|(_, on)| *on) {
        Some((k, _)) => Err(src.err(at(k), "only applies to services of kind \"http\"")),
        None => Ok(()),
    }
}

fn balance(raw: Option<&str>, src: &Source<'_>, key: &str) -> Result<Balance, ConfigError> {
    match raw {
        None | Some("round_robin") => Ok(Balance::RoundRobin),
        Some("least_conn") => Ok(Balance::LeastConn),
        Some(other) => Err(src.err(
            key,
            format!("{other:?} is not \"round_robin\" or \"least_conn\""),
        )),
    }
}

fn check_cookie_name(c: &str, src: &Source<'_>, key: &str) -> Result<(), ConfigError> {
    let valid = !c.is_empty()
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        return Err(src.err(key, format!("{c:?} is not a valid cookie name")));
    }
    Ok(())
}

fn public_urls(raw: &[String], src: &Source<'_>, key: &str) -> Result<Vec<Url>, ConfigError> {
    raw.iter()
        .enumerate()
        .map(|(j, u)| {
            Url::parse(u)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
                .ok_or_else(|| {
                    src.err(
                        format!("{key}[{j}]"),
                        format!("{u:?} is not an http(s) URL"),
                    )
                })
        })
        .collect()
}

impl HealthConfig {
    /// Validates `health` (at `key`): an absolute path, non-zero times and
    /// thresholds.
    fn from_raw(h: &RawHealth, src: &Source<'_>, key: &str) -> Result<Self, ConfigError> {
        if !h.path.starts_with('/') {
            return Err(src.err(format!("{key}.path"), "must start with '/'"));
        }
        if h.interval_secs == 0 || h.timeout_secs == 0 {
            return Err(src.err(key, "interval_secs and timeout_secs must be at least 1"));
        }
        if h.healthy_threshold == 0 || h.unhealthy_threshold == 0 {
            return Err(src.err(key, "thresholds must be at least 1"));
        }
        Ok(HealthConfig {
            path: h.path.clone(),
            interval: Duration::from_secs(h.interval_secs),
            timeout: Duration::from_secs(h.timeout_secs),
            healthy_threshold: h.healthy_threshold,
            unhealthy_threshold: h.unhealthy_threshold,
        })
    }
}

/// A name made cookie-safe: `[A-Za-z0-9_-]` kept, anything else `-`.
fn cookie_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The routes (at `key`), longest prefix first so the first match is the
/// most specific. With affinity (`cookie_base`), each gets its own cookie.
fn routes(
    raw: &[RawRoute],
    cookie_base: Option<&str>,
    src: &Source<'_>,
    key: &str,
) -> Result<Vec<RouteConfig>, ConfigError> {
    let mut routes: Vec<RouteConfig> = Vec::new();
    for (j, r) in raw.iter().enumerate() {
        let key = format!("{key}[{j}]");
        if !r.prefix.starts_with('/') || r.prefix == "/" {
            return Err(src.err(
                format!("{key}.prefix"),
                format!("{:?} must start with '/' and not be \"/\" (the service's own backends serve \"/\")", r.prefix),
            ));
        }
        let prefix = r.prefix.trim_end_matches('/').to_string();
        check_canonical_path(&prefix, src, &format!("{key}.prefix"))?;
        check_backends(src, &format!("{key}.backends"), &r.backends)?;
        let affinity_cookie = cookie_base.map(|b| format!("{b}_{}", cookie_part(&prefix[1..])));
        if let Some(other) = routes
            .iter()
            .find(|o| affinity_cookie.is_some() && o.affinity_cookie == affinity_cookie)
        {
            return Err(src.err(
                format!("{key}.prefix"),
                format!(
                    "gives the same affinity cookie name as prefix {:?}; rename one",
                    other.prefix
                ),
            ));
        }
        routes.push(RouteConfig {
            prefix,
            backends: r.backends.clone(),
            allow_groups: r.allow_groups.clone(),
            affinity_cookie,
        });
    }
    routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    Ok(routes)
}

/// A path (a route or rule prefix) must be written as a canonical target
/// is, or it could never match one.
fn check_canonical_path(p: &str, src: &Source<'_>, key: &str) -> Result<(), ConfigError> {
    match canonical_path(p) {
        Ok(c) if c == p => Ok(()),
        Ok(c) => Err(src.err(
            key,
            format!("{p:?} never matches: requests are judged as {c:?}"),
        )),
        Err(e) => Err(src.err(key, format!("{p:?} never matches: the relay refuses {e}"))),
    }
}

/// The rules (at `key`), each needing at least one condition.
fn rules(raw: &[RawRule], src: &Source<'_>, key: &str) -> Result<Vec<RuleConfig>, ConfigError> {
    raw.iter()
        .enumerate()
        .map(|(j, r)| {
            let key = format!("{key}[{j}]");
            if r.path_contains.is_none()
                && r.path_prefix.is_none()
                && r.methods.is_none()
                && r.git.is_none()
            {
                return Err(src.err(
                    key,
                    "needs at least one of path_contains, path_prefix, methods, git",
                ));
            }
            if let Some(p) = &r.path_prefix {
                check_canonical_path(p, src, &format!("{key}.path_prefix"))?;
            }
            if let Some(c) = &r.path_contains {
                match canonical_text(c) {
                    Some(t) if t == *c => {}
                    Some(t) => {
                        return Err(src.err(
                            format!("{key}.path_contains"),
                            format!("{c:?} never matches: requests are judged as {t:?}"),
                        ))
                    }
                    None => {
                        return Err(src.err(
                            format!("{key}.path_contains"),
                            format!("{c:?} has a '%' not followed by two hex digits"),
                        ))
                    }
                }
            }
            if let Some(m) = r
                .methods
                .iter()
                .flatten()
                .find(|m| http::Method::from_bytes(m.as_bytes()).is_err())
            {
                return Err(src.err(
                    format!("{key}.methods"),
                    format!("{m:?} is not an HTTP method"),
                ));
            }
            let git = match r.git.as_deref() {
                None => None,
                Some("receive-pack") => Some(GitService::ReceivePack),
                Some("upload-pack") => Some(GitService::UploadPack),
                Some(other) => {
                    return Err(src.err(
                        format!("{key}.git"),
                        format!("{other:?} is not \"receive-pack\" or \"upload-pack\""),
                    ))
                }
            };
            Ok(RuleConfig {
                path_contains: r.path_contains.clone(),
                path_prefix: r.path_prefix.clone(),
                methods: r.methods.clone(),
                git,
                allow_groups: r.allow_groups.clone(),
                reason: r
                    .reason
                    .clone()
                    .unwrap_or_else(|| "this request is not allowed for your groups".into()),
            })
        })
        .collect()
}
