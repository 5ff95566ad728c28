//! Reload without dropping sessions, and `check-config`.
//!
//! [`Live`] holds the relay's current [`Relay`] in an `ArcSwap`: every new
//! connection, request and stream reads the one current when it starts, so
//! after a reload new streams (of old sessions too) and new connections
//! use the new services, backends, rules, limits and TLS certificate,
//! while what is already open keeps the state it started with. The swap is
//! one atomic store; readers never wait for a reload.
//!
//! A reload checks the new file first ([`check`]: the TOML, then the files
//! it names: certificate and key, JWKS file, assertion key) and builds the
//! whole new state before it swaps; any failure leaves the running state
//! untouched and comes back as a [`ConfigError`] naming file, key and
//! reason. Some keys need a restart (see [`Relay::reloaded`]): a reload
//! keeps their running values and says so.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{ConfigError, RelayConfig, TlsMode};
use crate::{assertion, tls, Relay, RelayError};

/// The relay's current state, swapped whole on reload.
pub struct Live {
    current: ArcSwap<Relay>,
}

impl Live {
    pub fn new(relay: Arc<Relay>) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwap::new(relay),
        })
    }

    /// The state new work starts with.
    pub fn current(&self) -> Arc<Relay> {
        self.current.load_full()
    }

    /// Replaces the state with one built from `config` (already validated
    /// as read from `file`), after checking the files it names. On error
    /// nothing changes. Returns the warnings of keys kept at their running
    /// values. Must run inside the relay's runtime (health checks start).
    pub fn reload(&self, file: &Path, config: RelayConfig) -> Result<Vec<String>, ConfigError> {
        check_files(file, &config)?;
        let old = self.current();
        let (next, kept) = old.reloaded(config).map_err(|e| relay_error(file, e))?;
        next.spawn_health_checks();
        self.current.store(Arc::new(next));
        old.retire();
        Ok(kept)
    }
}

/// Everything `gangway-relay check-config FILE` checks, and a reload
/// before it swaps: the file parses and validates, and the files it names
/// can be read and used.
pub fn check(file: &Path) -> Result<RelayConfig, ConfigError> {
    let config = RelayConfig::load(file)?;
    check_files(file, &config)?;
    Ok(config)
}

/// The certificate and key load into a TLS config, the JWKS file parses,
/// the assertion key loads.
fn check_files(file: &Path, config: &RelayConfig) -> Result<(), ConfigError> {
    let err = |key: &str, reason: String| ConfigError {
        file: file.to_path_buf(),
        key: key.into(),
        reason,
    };
    if let TlsMode::Files { cert, key } = &config.tls {
        if let Err(e) = tls::server_config(cert, key) {
            let which = match &e {
                tls::TlsError::File { path, .. } if Path::new(path) == key.as_path() => "tls.key",
                tls::TlsError::File { .. } => "tls.cert",
                tls::TlsError::Rustls(_) => "tls",
            };
            return Err(err(which, e.to_string()));
        }
    }
    if let Some(path) = &config.identity.jwks_file {
        let parsed = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| {
                serde_json::from_str::<jsonwebtoken::jwk::JwkSet>(&t).map_err(|e| e.to_string())
            });
        if let Err(reason) = parsed {
            return Err(err(
                "identity.jwks_file",
                format!("{}: {reason}", path.display()),
            ));
        }
    }
    if let Err(e) = assertion::Signer::from_config(&config.assertion) {
        return Err(err("assertion.key_file", e.to_string()));
    }
    Ok(())
}

/// A failure building the new state, named by the key it came from.
fn relay_error(file: &Path, e: RelayError) -> ConfigError {
    let key = match &e {
        RelayError::Config(c) => return clone_config_error(c),
        RelayError::Tls(_) => "tls",
        RelayError::Audit { .. } => "audit.path",
        RelayError::Jwks { .. } => "identity.jwks_file",
        RelayError::AssertionKey(_) => "assertion.key_file",
        RelayError::Listener(_) => "listen",
        RelayError::Workers(_) => "workers",
    };
    ConfigError {
        file: file.to_path_buf(),
        key: key.into(),
        reason: e.to_string(),
    }
}

fn clone_config_error(c: &ConfigError) -> ConfigError {
    ConfigError {
        file: c.file.clone(),
        key: c.key.clone(),
        reason: c.reason.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
listen = "127.0.0.1:0"
workers = 1
[tls]
insecure_plaintext = true
[identity]
issuer = "https://idp.example"
audience = "gangway"
client_id = "gangway"
jwks_file = "jwks.json"
[[service]]
name = "git"
kind = "tcp"
local_port = 7999
backends = ["127.0.0.1:1"]
"#;

    fn dir_with(config: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("jwks.json"), r#"{"keys":[]}"#).unwrap();
        let file = dir.path().join("relay.toml");
        std::fs::write(&file, config).unwrap();
        (dir, file)
    }

    #[tokio::test]
    async fn a_reload_swaps_services_and_a_bad_one_changes_nothing() {
        let (_dir, file) = dir_with(BASE);
        let live = Live::new(Arc::new(Relay::from_config(check(&file).unwrap()).unwrap()));
        let first = live.current();
        assert!(first.tcp_service("git").is_some());

        let moved = BASE
            .replace("127.0.0.1:1", "127.0.0.1:2")
            .replace("\"git\"", "\"git2\"");
        std::fs::write(&file, &moved).unwrap();
        let kept = live.reload(&file, check(&file).unwrap()).unwrap();
        assert!(kept.is_empty(), "{kept:?}");
        let second = live.current();
        assert!(second.tcp_service("git").is_none());
        assert!(second.tcp_service("git2").is_some());
        assert!(
            first.retired.is_cancelled(),
            "the old state's health checks stop"
        );
        // The counters and lifetime carry over.
        assert!(Arc::ptr_eq(&first.admission, &second.admission));
        assert!(Arc::ptr_eq(&first.lifetime, &second.lifetime));

        // A broken file: refused with file, key and reason; nothing changes.
        std::fs::write(&file, moved.replace("kind = \"tcp\"", "kind = \"udp\"")).unwrap();
        let e = check(&file).unwrap_err().to_string();
        assert!(e.starts_with(&file.display().to_string()), "{e}");
        assert!(e.contains("service[0].kind"), "{e}");
        assert!(Arc::ptr_eq(&live.current(), &second));

        // A file that parses but names a JWKS file that is not there.
        let gone = moved.replace("jwks.json", "missing.json");
        std::fs::write(&file, &gone).unwrap();
        let e = check(&file).unwrap_err();
        assert_eq!(e.key, "identity.jwks_file");
        let cfg = RelayConfig::load(&file).unwrap();
        assert_eq!(
            live.reload(&file, cfg).unwrap_err().key,
            "identity.jwks_file"
        );
        assert!(Arc::ptr_eq(&live.current(), &second));
    }

    #[tokio::test]
    async fn keys_that_need_a_restart_keep_their_running_values() {
        let (_dir, file) = dir_with(BASE);
        let live = Live::new(Arc::new(Relay::from_config(check(&file).unwrap()).unwrap()));
        let changed = BASE
            .replace("127.0.0.1:0", "127.0.0.1:9")
            .replace("workers = 1", "workers = 2\n[limits]\nmax_connections = 5");
        std::fs::write(&file, changed).unwrap();
        let kept = live.reload(&file, check(&file).unwrap()).unwrap();
        assert_eq!(kept.len(), 3, "{kept:?}");
        assert!(kept[0].starts_with("listen cannot change on reload"));
        let now = live.current();
        assert_eq!(now.config.listen.port(), 0);
        assert_eq!(now.config.workers, 1);
        assert_eq!(now.config.limits.max_connections, 10_000);
    }
}
