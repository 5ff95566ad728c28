//! Relay configuration: one TOML file, read raw, then validated section by
//! section.
//!
//! - this file: [`RelayConfig`], [`RelayConfig::load`] and
//!   [`RelayConfig::parse`], [`ConfigError`], and the small top-level keys
//!   (`listen`, `workers`, `[audit]`);
//! - `raw.rs`: the file as written (serde, `deny_unknown_fields`, a doc
//!   comment per key);
//! - [`tls`], [`identity`], [`services`], [`http`] (a service's http-only
//!   keys), [`assertion`], [`limits`], [`balancer`] (`[proxy_protocol]`,
//!   `[drain]`): each section's validated type with its
//!   raw → validated conversion beside it;
//! - [`dpop`]: `public_url`, `identity.require_dpop`,
//!   `identity.dpop_iat_window_secs` and each service's `require_dpop`;
//! - [`admin`] (`[admin]`), [`shared`] (`[redis]`, `[[rate_limit]]`) and
//!   [`syslog`] (`[audit.syslog]`): the same, with their raw sections
//!   beside them too.
//!
//! Every error names the file, the key and the reason, e.g.
//! `relay.toml: service[1].backends: must list at least one backend`; the
//! fixtures in `relay/tests/fixtures/invalid` each name the error they expect.

pub mod admin;
pub mod assertion;
pub mod balancer;
pub mod dpop;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod identity;
pub mod limits;
mod raw;
pub mod services;
pub mod shared;
pub mod syslog;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use admin::AdminConfig;
pub use assertion::AssertionConfig;
pub use balancer::{DrainConfig, ProxyProtocolConfig};
pub use dpop::DpopConfig;
pub use http::{Balance, GitService, HealthConfig, HttpSettings, RouteConfig, RuleConfig};
pub use identity::IdentityConfig;
pub use limits::LimitsConfig;
pub use services::{ServiceConfig, ServiceKind};
pub use shared::{Counted, RateLimitRule, RedisConfig, SharedConfig};
pub use syslog::SyslogConfig;
pub use tls::TlsMode;

use raw::RawConfig;

/// A configuration error that names the file, key and reason.
#[derive(Debug, thiserror::Error)]
#[error("{}: {key}: {reason}", file.display())]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: String,
    pub reason: String,
}

/// The file being validated: named in every error, and the directory that
/// relative paths in it resolve against.
struct Source<'a> {
    file: &'a Path,
}

impl Source<'_> {
    fn err(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            key: key.into(),
            reason: reason.into(),
        }
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.file.parent().unwrap_or(Path::new(".")).join(p)
        }
    }
}

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
    /// Timeouts and caps (`[limits]`).
    pub limits: LimitsConfig,
    /// Balancers trusted to send a PROXY protocol v2 header.
    pub proxy_protocol: ProxyProtocolConfig,
    /// Graceful drain (`[drain]`).
    pub drain: DrainConfig,
    /// Audit lines also sent to syslog (`[audit.syslog]`).
    pub audit_syslog: Option<SyslogConfig>,
    /// The admin listener (`[admin]`); none when absent.
    pub admin: Option<AdminConfig>,
    /// Redis and the rate limits held in it (`[redis]`, `[[rate_limit]]`).
    pub shared: SharedConfig,
    /// DPoP: the public URL proofs name, and where bound tokens are required.
    pub dpop: DpopConfig,
}

impl RelayConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            key: "(file)".into(),
            reason: format!("cannot read: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Validates `text` as if read from `path` (relative paths resolve
    /// against its directory).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let src = Source { file: path };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let key = e
                .span()
                .map(|s| {
                    let line = text[..s.start].matches('\n').count() + 1;
                    format!("line {line}")
                })
                .unwrap_or_else(|| "(syntax)".into());
            src.err(key, e.message())
        })?;
        let listen = listen(&raw.listen, &src)?;
        let services = services::from_raw(raw.services, &src)?;
        let dpop = DpopConfig::from_raw(raw.public_url.as_deref(), &raw.identity, &services, &src)?;
        Ok(RelayConfig {
            listen,
            workers: workers(raw.workers, &src)?,
            tls: TlsMode::from_raw(raw.tls, &src)?,
            identity: IdentityConfig::from_raw(raw.identity, &src)?,
            assertion: AssertionConfig::from_raw(raw.assertion, &src)?,
            audit_path: raw.audit.path.as_deref().map(|p| src.resolve(p)),
            audit_syslog: raw
                .audit
                .syslog
                .map(|s| SyslogConfig::from_raw(s, &src))
                .transpose()?,
            limits: LimitsConfig::from_raw(raw.limits, &src)?,
            proxy_protocol: ProxyProtocolConfig::from_raw(raw.proxy_protocol, &src)?,
            drain: DrainConfig::from_raw(raw.drain, &src)?,
            admin: raw
                .admin
                .map(|a| AdminConfig::from_raw(a, listen, &src))
                .transpose()?,
            shared: SharedConfig::from_raw(raw.redis, raw.rate_limits, &services, &src)?,
            services,
            dpop,
        })
    }

    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }
}

fn listen(raw: &str, src: &Source<'_>) -> Result<SocketAddr, ConfigError> {
    raw.parse().map_err(|_| {
        src.err(
            "listen",
            format!("{raw:?} is not an address like 0.0.0.0:8443"),
        )
    })
}

/// Absent: one per CPU.
fn workers(raw: Option<i64>, src: &Source<'_>) -> Result<usize, ConfigError> {
    match raw {
        None => Ok(crate::workers::default_count()),
        Some(n) if (1..=1024).contains(&n) => Ok(n as usize),
        Some(n) => Err(src.err(
            "workers",
            format!("{n} is not a number of threads from 1 to 1024"),
        )),
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

    /// The fuzz corpus of the `config` target (`fuzz/corpus/config`), as
    /// regression tests: no input there may panic.
    #[test]
    fn fuzz_corpus_replays_without_panic() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/config");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let bytes = std::fs::read(e.unwrap().path()).unwrap();
            if let Ok(text) = std::str::from_utf8(&bytes) {
                fuzzing::run(text);
            }
            n += 1;
        }
        assert!(n > 0, "empty corpus in {}", dir.display());
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
