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
    /// Validates `[identity]`: an https issuer (http only on a loopback
    /// address), a non-empty audience and client id, public-key algorithms
    /// only, and a bounded leeway and JWKS refetch interval.
    pub(super) fn from_raw(id: RawIdentity, src: &Source<'_>) -> Result<Self, ConfigError> {
        let issuer = id.issuer.trim_end_matches('/').to_string();
        match url::Url::parse(&issuer) {
            Ok(u) if u.scheme() == "https" => {}
            Ok(u) if u.scheme() == "http" && is_loopback(&u) => {}
            Ok(u) if u.scheme() == "http" => {
                return Err(src.err(
                    "identity.issuer",
                    format!("{issuer:?} is plain http: keys fetched from it could be forged on the way; use https (http only on a loopback address)"),
                ))
            }
            _ => {
                return Err(src.err(
                    "identity.issuer",
                    format!("{issuer:?} is not an http(s) URL"),
                ))
            }
        }
        if id.leeway_secs > MAX_LEEWAY_SECS {
            return Err(src.err(
                "identity.leeway_secs",
                format!(
                    "{} is more than {MAX_LEEWAY_SECS} seconds: an expired token would stay good that long",
                    id.leeway_secs
                ),
            ));
        }
        if !(1..=MAX_REFETCH_SECS).contains(&id.jwks_min_refetch_secs) {
            return Err(src.err(
                "identity.jwks_min_refetch_secs",
                format!(
                    "{} is not a number of seconds from 1 to {MAX_REFETCH_SECS}: 0 lets every unknown key fetch the JWKS, a long one delays key rotation",
                    id.jwks_min_refetch_secs
                ),
            ));
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

/// The most clock skew `leeway_secs` may allow: five minutes (Kerberos' and
/// most providers' own figure).
const MAX_LEEWAY_SECS: u64 = 300;

/// The longest `jwks_min_refetch_secs`: an hour, so a rotated key is
/// picked up within one.
const MAX_REFETCH_SECS: u64 = 3600;

/// True when `u` names a loopback host: 127.0.0.0/8, ::1 or localhost.
fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
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
