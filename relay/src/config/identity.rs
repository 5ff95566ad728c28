//! `[identity]`: the OIDC provider whose access tokens the relay accepts,
//! and what the agent is told to sign in with.

use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::Algorithm;

use super::raw::RawIdentity;
use super::{ConfigError, Source};

/// The validated `[identity]` section.
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

impl IdentityConfig {
    /// Validates `[identity]`: an http(s) issuer, a non-empty audience and
    /// client id, and public-key algorithms only.
    pub(super) fn from_raw(id: RawIdentity, src: &Source<'_>) -> Result<Self, ConfigError> {
        let issuer = id.issuer.trim_end_matches('/').to_string();
        match url::Url::parse(&issuer) {
            Ok(u) if u.scheme() == "https" || u.scheme() == "http" => {}
            _ => {
                return Err(src.err(
                    "identity.issuer",
                    format!("{issuer:?} is not an http(s) URL"),
                ))
            }
        }
        if id.audience.is_empty() {
            return Err(src.err("identity.audience", "must not be empty"));
        }
        if id.client_id.is_empty() {
            return Err(src.err("identity.client_id", "must not be empty"));
        }
        Ok(IdentityConfig {
            issuer,
            algorithms: algorithms(&id.algorithms, src)?,
            audience: id.audience,
            client_id: id.client_id,
            scopes: id.scopes,
            groups_claim: id.groups_claim,
            leeway: Duration::from_secs(id.leeway_secs),
            jwks_min_refetch: Duration::from_secs(id.jwks_min_refetch_secs),
            jwks_file: id.jwks_file.as_deref().map(|p| src.resolve(p)),
        })
    }
}

/// At least one algorithm, each known and none a shared-secret (HMAC) one:
/// a relay holding the secret could mint tokens.
fn algorithms(names: &[String], src: &Source<'_>) -> Result<Vec<Algorithm>, ConfigError> {
    let mut algorithms = Vec::new();
    for (i, a) in names.iter().enumerate() {
        let key = format!("identity.algorithms[{i}]");
        let alg: Algorithm = a
            .parse()
            .map_err(|_| src.err(&key, format!("unknown algorithm {a:?}")))?;
        if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            return Err(src.err(
                &key,
                format!(
                    "{a} is a shared-secret algorithm; only public-key algorithms are accepted"
                ),
            ));
        }
        algorithms.push(alg);
    }
    if algorithms.is_empty() {
        return Err(src.err("identity.algorithms", "must list at least one algorithm"));
    }
    Ok(algorithms)
}
