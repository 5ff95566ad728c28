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
        Ok(HttpSettings {
            balance,
            affinity_cookie: s.affinity_cookie.clone(),
            public_urls: public_urls(&s.public_urls, src, &at("public_urls"))?,
            strip_secure_cookies: s.strip_secure_cookies.unwrap_or(true),
            health: s
                .health
                .as_ref()
                .map(|h| HealthConfig::from_raw(h, src, &at("health")))
                .transpose()?,
            routes: routes(&s.routes, src, &at("route"))?,
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

/// The routes (at `key`), longest prefix first so the first match is the
/// most specific.
fn routes(raw: &[RawRoute], src: &Source<'_>, key: &str) -> Result<Vec<RouteConfig>, ConfigError> {
    let mut routes = Vec::new();
    for (j, r) in raw.iter().enumerate() {
        let key = format!("{key}[{j}]");
        if !r.prefix.starts_with('/') || r.prefix == "/" {
            return Err(src.err(
                format!("{key}.prefix"),
                format!("{:?} must start with '/' and not be \"/\" (the service's own backends serve \"/\")", r.prefix),
            ));
        }
        check_backends(src, &format!("{key}.backends"), &r.backends)?;
        routes.push(RouteConfig {
            prefix: r.prefix.trim_end_matches('/').to_string(),
            backends: r.backends.clone(),
            allow_groups: r.allow_groups.clone(),
        });
    }
    routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    Ok(routes)
}

/// The rules (at `key`), each needing at least one condition.
fn rules(raw: &[RawRule], src: &Source<'_>, key: &str) -> Result<Vec<RuleConfig>, ConfigError> {
    raw.iter()
        .enumerate()
        .map(|(j, r)| {
            if r.path_contains.is_none() && r.path_prefix.is_none() && r.methods.is_none() {
                return Err(src.err(
                    format!("{key}[{j}]"),
                    "needs at least one of path_contains, path_prefix, methods",
                ));
            }
            Ok(RuleConfig {
                path_contains: r.path_contains.clone(),
                path_prefix: r.path_prefix.clone(),
                methods: r.methods.clone(),
                allow_groups: r.allow_groups.clone(),
                reason: r
                    .reason
                    .clone()
                    .unwrap_or_else(|| "this request is not allowed for your groups".into()),
            })
        })
        .collect()
}
