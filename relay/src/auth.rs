//! Access-token validation against the identity provider's JWKS.
//!
//! Checks, in order: the header's algorithm is one we accept (never `none`
//! or a shared-secret one), the key named by `kid` is known (JWKS refetched
//! on an unknown `kid`, at most once per `jwks_min_refetch`), the signature,
//! then `iss`, `aud`, `exp` and `nbf` with a small leeway.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::config::IdentityConfig;

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub groups: Vec<String>,
    /// `exp` of the token, unix seconds.
    pub expires_at: u64,
}

/// Why a token was refused. The `Display` text is safe to show the caller.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("algorithm {0} is not accepted")]
    Algorithm(String),
    #[error("token signed by unknown key {0:?}")]
    UnknownKey(String),
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
    #[error("missing claim {0}")]
    MissingClaim(String),
    #[error("identity provider keys unavailable: {0}")]
    KeysUnavailable(String),
}

impl AuthError {
    /// Short machine-friendly code for audit lines.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed(_) => "malformed",
            AuthError::Algorithm(_) => "algorithm",
            AuthError::UnknownKey(_) => "unknown_key",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::KeysUnavailable(_) => "keys_unavailable",
        }
    }

    /// True when the fault is ours (keys unreachable), not the caller's.
    pub fn is_server_side(&self) -> bool {
        matches!(self, AuthError::KeysUnavailable(_))
    }
}

/// Where signing keys come from.
pub enum KeySource {
    /// The issuer's discovery document names the JWKS URL.
    Discovery(reqwest::Client),
    /// A fixed key set (a `jwks_file`, or the demo's ephemeral key).
    Static(JwkSet),
}

struct KeyCache {
    keys: HashMap<String, Jwk>,
    /// Keys without a `kid`, tried when the token has none.
    anonymous: Vec<Jwk>,
    last_fetch: Option<Instant>,
}

/// Validates access tokens for one issuer and audience.
pub struct Verifier {
    cfg: IdentityConfig,
    source: KeySource,
    cache: Mutex<KeyCache>,
}

impl Verifier {
    pub fn new(cfg: IdentityConfig, source: KeySource) -> Self {
        let mut cache = KeyCache {
            keys: HashMap::new(),
            anonymous: Vec::new(),
            last_fetch: None,
        };
        if let KeySource::Static(set) = &source {
            cache.load(set.clone());
        }
        Self {
            cfg,
            source,
            cache: Mutex::new(cache),
        }
    }

    pub fn config(&self) -> &IdentityConfig {
        &self.cfg
    }

    /// Verifies `token` and returns who it names.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        if !self.cfg.algorithms.contains(&header.alg) {
            return Err(AuthError::Algorithm(format!("{:?}", header.alg)));
        }
        let jwk = self.key_for(header.kid.as_deref()).await?;
        if let Some(key_alg) = jwk.common.key_algorithm {
            if format!("{key_alg:?}") != format!("{:?}", header.alg) {
                return Err(AuthError::Algorithm(format!(
                    "{:?} (key is for {key_alg:?})",
                    header.alg
                )));
            }
        }
        let key = DecodingKey::from_jwk(&jwk)
            .map_err(|e| AuthError::KeysUnavailable(format!("unusable key: {e}")))?;

        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&self.cfg.issuer]);
        v.set_audience(&[&self.cfg.audience]);
        v.leeway = self.cfg.leeway.as_secs();
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data =
            jsonwebtoken::decode::<HashMap<String, Value>>(token, &key, &v).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::InvalidSignature => AuthError::BadSignature,
                    K::ExpiredSignature => AuthError::Expired,
                    K::ImmatureSignature => AuthError::NotYetValid,
                    K::InvalidIssuer => AuthError::WrongIssuer,
                    K::InvalidAudience => AuthError::WrongAudience,
                    K::InvalidAlgorithm => AuthError::Algorithm(format!("{:?}", header.alg)),
                    K::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
                    _ => AuthError::Malformed(e.to_string()),
                }
            })?;
        let claims = data.claims;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| AuthError::MissingClaim("sub".into()))?
            .to_string();
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or_else(|| AuthError::MissingClaim("exp".into()))?;
        let groups = match claims.get(&self.cfg.groups_claim) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|g| g.as_str().map(str::to_string))
                .collect(),
            Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
            _ => Vec::new(),
        };
        Ok(Identity {
            subject,
            groups,
            expires_at,
        })
    }

    async fn key_for(&self, kid: Option<&str>) -> Result<Jwk, AuthError> {
        let unknown = || AuthError::UnknownKey(kid.unwrap_or("").into());
        {
            let mut cache = self.cache.lock().await;
            if let Some(k) = cache.find(kid) {
                return Ok(k);
            }
            let may_fetch = matches!(self.source, KeySource::Discovery(_))
                && cache
                    .last_fetch
                    .is_none_or(|t| t.elapsed() >= self.cfg.jwks_min_refetch);
            if !may_fetch {
                return Err(unknown());
            }
            // Claimed before the fetch, so concurrent misses don't all fetch.
            cache.last_fetch = Some(Instant::now());
        }
        let KeySource::Discovery(http) = &self.source else {
            return Err(unknown());
        };
        // The lock is not held during the fetch: tokens with known keys
        // keep being verified meanwhile.
        let set = fetch_jwks(http, &self.cfg.issuer).await?;
        tracing::info!(keys = set.keys.len(), issuer = %self.cfg.issuer, "fetched JWKS");
        let mut cache = self.cache.lock().await;
        cache.load(set);
        cache.find(kid).ok_or_else(unknown)
    }
}

impl KeyCache {
    fn load(&mut self, set: JwkSet) {
        self.keys.clear();
        self.anonymous.clear();
        for k in set.keys {
            match k.common.key_id.clone() {
                Some(kid) => {
                    self.keys.insert(kid, k);
                }
                None => self.anonymous.push(k),
            }
        }
    }

    fn find(&self, kid: Option<&str>) -> Option<Jwk> {
        match kid {
            Some(kid) => self.keys.get(kid).cloned(),
            None if self.anonymous.len() + self.keys.len() == 1 => self
                .anonymous
                .first()
                .or_else(|| self.keys.values().next())
                .cloned(),
            None => None,
        }
    }
}

async fn fetch_jwks(http: &reqwest::Client, issuer: &str) -> Result<JwkSet, AuthError> {
    let unavailable = |e: String| AuthError::KeysUnavailable(e);
    let discovery = format!("{issuer}/.well-known/openid-configuration");
    let doc: Value = http
        .get(&discovery)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| unavailable(format!("{discovery}: {e}")))?
        .json()
        .await
        .map_err(|e| unavailable(format!("{discovery}: {e}")))?;
    let jwks_uri = doc
        .get("jwks_uri")
        .and_then(Value::as_str)
        .ok_or_else(|| unavailable(format!("{discovery}: no jwks_uri")))?;
    http.get(jwks_uri)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| unavailable(format!("{jwks_uri}: {e}")))?
        .json::<JwkSet>()
        .await
        .map_err(|e| unavailable(format!("{jwks_uri}: {e}")))
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Extracts the token from an `Authorization: Bearer …` header value.
pub fn bearer(header: Option<&http::HeaderValue>) -> Result<&str, AuthError> {
    let v = header.ok_or(AuthError::Missing)?;
    let s = v
        .to_str()
        .map_err(|_| AuthError::Malformed("authorization header is not text".into()))?;
    let (scheme, token) = s.split_once(' ').ok_or_else(|| {
        AuthError::Malformed("authorization header is not 'Bearer <token>'".into())
    })?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::Malformed(
            "authorization header is not 'Bearer <token>'".into(),
        ));
    }
    Ok(token.trim())
}
