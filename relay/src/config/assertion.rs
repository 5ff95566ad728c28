//! `[assertion]`: the signed identity assertion the relay sends http
//! backends (`X-Gangway-Assertion`).

use std::path::PathBuf;
use std::time::Duration;

use super::raw::RawAssertion;
use super::{ConfigError, Source};

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

impl AssertionConfig {
    /// Validates `[assertion]`, filling in the defaults; the lifetime must
    /// be at least a second.
    pub(super) fn from_raw(raw: RawAssertion, src: &Source<'_>) -> Result<Self, ConfigError> {
        let defaults = AssertionConfig::default();
        let assertion = AssertionConfig {
            key_file: raw.key_file.as_deref().map(|p| src.resolve(p)),
            issuer: raw.issuer.unwrap_or(defaults.issuer),
            ttl: raw
                .ttl_secs
                .map(Duration::from_secs)
                .unwrap_or(defaults.ttl),
        };
        if assertion.ttl.is_zero() {
            return Err(src.err("assertion.ttl_secs", "must be at least 1"));
        }
        Ok(assertion)
    }
}
