//! What every relay behind one balancer shares through Redis: `[redis]`
//! (where, and how many relays to split a limit across when it is out of
//! reach) and `[[rate_limit]]` (GCRA limits per identity). The raw sections
//! sit beside their validated types.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, ServiceConfig, ServiceKind, Source};

/// `[redis]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedis {
    /// `redis://host:port/db`, without a password (see `password_file`).
    pub(super) url: String,
    /// File holding the Redis password (one line), if Redis wants one.
    pub(super) password_file: Option<PathBuf>,
    /// Relays sharing the limits: while Redis is out of reach, each relay
    /// allows limit ÷ this on its own.
    #[serde(default = "one")]
    pub(super) expected_relays: u32,
    /// Prefix of every key and channel the relay uses in Redis.
    #[serde(default = "default_prefix")]
    pub(super) key_prefix: String,
    /// Milliseconds one Redis command may take before the relay falls back.
    #[serde(default = "default_timeout_ms")]
    pub(super) timeout_ms: u64,
    /// Tunnel sessions one subject may have open at once across every
    /// relay (on top of `[limits] max_sessions_per_subject` per relay).
    pub(super) max_sessions_per_subject: Option<u64>,
}

/// `[[rate_limit]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    /// Name of the limit, in metrics, audit lines and Redis keys:
    /// [a-z0-9_-], 1 to 32 characters.
    pub(super) name: String,
    /// "streams" (new streams) or "requests" (http requests).
    pub(super) on: String,
    /// The service it applies to; absent: every service (of that kind).
    pub(super) service: Option<String>,
    /// requests: only requests whose canonical path starts with this.
    pub(super) path_prefix: Option<String>,
    /// Events allowed per subject in `per_secs`.
    pub(super) limit: u64,
    /// The window `limit` is counted over, seconds.
    pub(super) per_secs: u64,
    /// Events a subject may spend at once; default `limit`.
    pub(super) burst: Option<u64>,
}

fn one() -> u32 {
    1
}
fn default_prefix() -> String {
    "gangway".into()
}
fn default_timeout_ms() -> u64 {
    250
}

/// The validated `[redis]` section.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: String,
    pub password_file: Option<PathBuf>,
    pub expected_relays: u32,
    pub key_prefix: String,
    pub timeout: Duration,
    /// Sessions per subject across relays, if capped.
    pub max_sessions_per_subject: Option<usize>,
}

/// What a rate limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// New streams of a subject (any service kind).
    Streams,
    /// HTTP requests of a subject (http services).
    Requests,
}

/// One validated `[[rate_limit]]`: GCRA, `limit` per `per`, bursts of up
/// to `burst`, per subject.
#[derive(Debug, Clone)]
pub struct RateLimitRule {
    pub name: String,
    pub on: Counted,
    pub service: Option<String>,
    pub path_prefix: Option<String>,
    pub limit: u64,
    pub per: Duration,
    pub burst: u64,
}

impl RateLimitRule {
    /// Whether the rule counts `on` events of `service` at `path`.
    pub fn applies(&self, on: Counted, service: &str, path: Option<&str>) -> bool {
        self.on == on
            && self.service.as_deref().is_none_or(|s| s == service)
            && match (&self.path_prefix, path) {
                (None, _) => true,
                (Some(p), Some(path)) => path.starts_with(p.as_str()),
                (Some(_), None) => false,
            }
    }
}

/// `[redis]` and `[[rate_limit]]` together.
#[derive(Debug, Clone, Default)]
pub struct SharedConfig {
    pub redis: Option<RedisConfig>,
    pub rate_limits: Vec<RateLimitRule>,
}

impl SharedConfig {
    pub(super) fn from_raw(
        redis: Option<RawRedis>,
        limits: Vec<RawRateLimit>,
        services: &[ServiceConfig],
        src: &Source<'_>,
    ) -> Result<Self, ConfigError> {
        let redis = redis.map(|r| redis_from_raw(r, src)).transpose()?;
        let mut rules: Vec<RateLimitRule> = Vec::new();
        for (i, raw) in limits.into_iter().enumerate() {
            let rule = rule_from_raw(raw, i, services, src)?;
            if rules.iter().any(|r| r.name == rule.name) {
                return Err(src.err(
                    format!("rate_limit[{i}].name"),
                    format!("{:?} is used by another rate_limit", rule.name),
                ));
            }
            rules.push(rule);
        }
        Ok(SharedConfig {
            redis,
            rate_limits: rules,
        })
    }
}

fn redis_from_raw(raw: RawRedis, src: &Source<'_>) -> Result<RedisConfig, ConfigError> {
    let url = url::Url::parse(&raw.url).map_err(|e| src.err("redis.url", e.to_string()))?;
    if url.scheme() != "redis" || url.host_str().is_none() {
        return Err(src.err(
            "redis.url",
            format!("{:?} is not a redis://host:port URL", raw.url),
        ));
    }
    if url.password().is_some() {
        return Err(src.err(
            "redis.url",
            "holds a password: put it in redis.password_file instead, so it stays out of the config",
        ));
    }
    if !(1..=1000).contains(&raw.expected_relays) {
        return Err(src.err(
            "redis.expected_relays",
            format!("{} is not a number from 1 to 1000", raw.expected_relays),
        ));
    }
    let prefix_ok = (1..=64).contains(&raw.key_prefix.len())
        && raw
            .key_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if !prefix_ok {
        return Err(src.err("redis.key_prefix", "must be 1 to 64 of [A-Za-z0-9_.-]"));
    }
    if !(10..=10_000).contains(&raw.timeout_ms) {
        return Err(src.err(
            "redis.timeout_ms",
            format!(
                "{} is not a number of milliseconds from 10 to 10000",
                raw.timeout_ms
            ),
        ));
    }
    if let Some(n) = raw.max_sessions_per_subject {
        if !(1..=1024).contains(&n) {
            return Err(src.err(
                "redis.max_sessions_per_subject",
                format!("{n} is not a number from 1 to 1024"),
            ));
        }
    }
    Ok(RedisConfig {
        max_sessions_per_subject: raw.max_sessions_per_subject.map(|n| n as usize),
        url: raw.url,
        password_file: raw.password_file.as_deref().map(|p| src.resolve(p)),
        expected_relays: raw.expected_relays,
        key_prefix: raw.key_prefix,
        timeout: Duration::from_millis(raw.timeout_ms),
    })
}

fn rule_from_raw(
    raw: RawRateLimit,
    i: usize,
    services: &[ServiceConfig],
    src: &Source<'_>,
) -> Result<RateLimitRule, ConfigError> {
    let key = |k: &str| format!("rate_limit[{i}].{k}");
    let name_ok = (1..=32).contains(&raw.name.len())
        && raw
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b));
    if !name_ok {
        return Err(src.err(key("name"), "must be 1 to 32 of [a-z0-9_-]"));
    }
    let on = match raw.on.as_str() {
        "streams" => Counted::Streams,
        "requests" => Counted::Requests,
        other => {
            return Err(src.err(
                key("on"),
                format!("{other:?} is not \"streams\" or \"requests\""),
            ))
        }
    };
    if let Some(name) = &raw.service {
        let Some(svc) = services.iter().find(|s| &s.name == name) else {
            return Err(src.err(key("service"), format!("no service named {name:?}")));
        };
        if on == Counted::Requests && svc.kind != ServiceKind::Http {
            return Err(src.err(
                key("on"),
                format!("\"requests\" needs an http service; {name} is tcp"),
            ));
        }
    }
    if raw.path_prefix.is_some() && on != Counted::Requests {
        return Err(src.err(key("path_prefix"), "only for on = \"requests\""));
    }
    if let Some(p) = &raw.path_prefix {
        if !p.starts_with('/') {
            return Err(src.err(key("path_prefix"), "must start with /"));
        }
    }
    if !(1..=1_000_000).contains(&raw.limit) {
        return Err(src.err(
            key("limit"),
            format!("{} is not a number from 1 to 1000000", raw.limit),
        ));
    }
    if !(1..=86_400).contains(&raw.per_secs) {
        return Err(src.err(
            key("per_secs"),
            format!(
                "{} is not a number of seconds from 1 to 86400",
                raw.per_secs
            ),
        ));
    }
    let burst = raw.burst.unwrap_or(raw.limit);
    if !(1..=1_000_000).contains(&burst) {
        return Err(src.err(
            key("burst"),
            format!("{burst} is not a number from 1 to 1000000"),
        ));
    }
    Ok(RateLimitRule {
        name: raw.name,
        on,
        service: raw.service,
        path_prefix: raw.path_prefix,
        limit: raw.limit,
        per: Duration::from_secs(raw.per_secs),
        burst,
    })
}
