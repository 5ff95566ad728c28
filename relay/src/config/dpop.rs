//! DPoP settings (RFC 9449): the top-level `public_url` that proofs must
//! name, `identity.require_dpop` (every service), each service's
//! `require_dpop`, and `identity.dpop_iat_window_secs`.

use std::time::Duration;

use url::Url;

use super::raw::RawIdentity;
use super::services::ServiceConfig;
use super::{ConfigError, Source};

/// The validated DPoP settings.
#[derive(Debug, Clone)]
pub struct DpopConfig {
    /// The relay's URL as agents reach it, without a trailing slash; a
    /// proof's `htu` must be this plus the endpoint's path. `None`: the
    /// request's Host header gives the authority (see `crate::dpop`).
    pub public_url: Option<Url>,
    /// Every service refuses tokens not bound to the agent's key.
    pub required: bool,
    /// How far a proof's `iat` may be from the relay's clock, either way.
    pub iat_window: Duration,
}

impl Default for DpopConfig {
    /// No public URL, nothing required, a 30 s window (the file's defaults).
    fn default() -> Self {
        DpopConfig {
            public_url: None,
            required: false,
            iat_window: Duration::from_secs(30),
        }
    }
}

/// The widest `dpop_iat_window_secs`: five minutes, as for `leeway_secs`.
const MAX_WINDOW_SECS: u64 = 300;

impl DpopConfig {
    pub(super) fn from_raw(
        public_url: Option<&str>,
        id: &RawIdentity,
        services: &[ServiceConfig],
        src: &Source<'_>,
    ) -> Result<Self, ConfigError> {
        let public_url = public_url.map(|u| parse_public_url(u, src)).transpose()?;
        if !(1..=MAX_WINDOW_SECS).contains(&id.dpop_iat_window_secs) {
            return Err(src.err(
                "identity.dpop_iat_window_secs",
                format!(
                    "{} is not a number of seconds from 1 to {MAX_WINDOW_SECS}",
                    id.dpop_iat_window_secs
                ),
            ));
        }
        let requiring = if id.require_dpop {
            Some("identity.require_dpop".to_string())
        } else {
            services
                .iter()
                .position(|s| s.require_dpop)
                .map(|i| format!("service[{i}].require_dpop"))
        };
        if let (Some(key), None) = (&requiring, &public_url) {
            return Err(src.err(
                "public_url",
                format!(
                    "must be set when {key} is true: DPoP proofs name the relay's URL as agents \
                     reach it, e.g. public_url = \"https://gangway.example.com\""
                ),
            ));
        }
        Ok(DpopConfig {
            public_url,
            required: id.require_dpop,
            iat_window: Duration::from_secs(id.dpop_iat_window_secs),
        })
    }
}

/// An http(s) URL with a host and nothing after it but an optional "/".
fn parse_public_url(raw: &str, src: &Source<'_>) -> Result<Url, ConfigError> {
    let bad = |why: &str| src.err("public_url", format!("{raw:?} {why}"));
    let url = Url::parse(raw).map_err(|e| bad(&format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(bad("is not an https URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not hold a user name or password"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not have a query or fragment"));
    }
    if url.path() != "/" {
        return Err(bad(
            "must not have a path: agents reach the relay's endpoints at /v1/…",
        ));
    }
    Ok(url)
}
