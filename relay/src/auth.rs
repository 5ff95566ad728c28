//! Access-token validation against the identity provider's JWKS.
//!
//! Checks, in order: the header's algorithm is one we accept (never `none`
//! or a shared-secret one), its `typ` is an access token's (RFC 9068
//! `at+jwt`, or the generic `JWT` many providers use; anything else, such
//! as an ID token's or a logout token's type, is refused), the key named by
//! `kid` is known (JWKS refetched on an unknown `kid`, at most once per
//! `jwks_min_refetch`), the signature, then `iss`, `aud`, `exp` and `nbf`
//! with a small leeway, and that the claims are not an ID token's (`nonce`,
//! `at_hash`, `c_hash`, or Keycloak's `typ: "ID"`).
//!
//! An identity-provider blip is not a sign-out: when the JWKS cannot be
//! fetched (or a fetch is still under way), a token with an unseen key gets
//! [`AuthError::KeysUnavailable`] (503), not [`AuthError::UnknownKey`]
//! (401), until a fetch succeeds. Text taken from the token is cleaned
//! ([`crate::text`]) before it goes into an error.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::config::IdentityConfig;
use crate::text;

/// How long a request with an unseen key waits for a JWKS fetch already
/// under way before it is told to come back (503).
const FETCH_WAIT: Duration = Duration::from_secs(3);

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub groups: Vec<String>,
    /// `exp` of the token, unix seconds.
    pub expires_at: u64,
    /// The token's `cnf.jkt`: the thumbprint of the key it is bound to
    /// (DPoP, RFC 9449), if it is bound.
    pub jkt: Option<String>,
    /// True once a DPoP proof by that key came with the token
    /// ([`crate::dpop`]); what `require_dpop` services ask for.
    pub dpop_bound: bool,
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
    #[error("not an access token: {0}")]
    NotAccessToken(String),
    #[error("identity provider keys unavailable: {0}")]
    KeysUnavailable(String),
    #[error("{0}")]
    Dpop(gangway_dpop::ProofError),
    #[error("DPoP authorization without a DPoP proof header")]
    DpopMissingProof,
    #[error("more than one DPoP header")]
    DpopManyProofs,
    #[error("the token is not bound to a key (no cnf.jkt); send it as Bearer")]
    DpopUnboundToken,
    #[error("the DPoP proof is signed by another key than the one the token is bound to")]
    DpopKeyMismatch,
    #[error("this DPoP proof was used before; each request needs a new one")]
    DpopReplayed,
    #[error("the token is bound to a key (DPoP); send it as 'Authorization: DPoP' with a proof")]
    BoundTokenAsBearer,
    #[error("this relay accepts only tokens bound to the agent's key (DPoP); sign in again with an up-to-date agent")]
    DpopRequired,
    #[error("the new token is bound to another key than this session's")]
    DpopKeyChanged,
    #[error("cannot check DPoP proofs now: {0}")]
    DpopUnavailable(String),
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
            AuthError::NotAccessToken(_) => "not_access_token",
            AuthError::KeysUnavailable(_) => "keys_unavailable",
            AuthError::Dpop(e) => e.code(),
            AuthError::DpopMissingProof => "dpop_missing",
            AuthError::DpopManyProofs => "dpop_many",
            AuthError::DpopUnboundToken => "dpop_unbound_token",
            AuthError::DpopKeyMismatch => "dpop_key_mismatch",
            AuthError::DpopReplayed => "dpop_replayed",
            AuthError::BoundTokenAsBearer => "bound_token_as_bearer",
            AuthError::DpopRequired => "dpop_required",
            AuthError::DpopKeyChanged => "dpop_key_changed",
            AuthError::DpopUnavailable(_) => "dpop_unavailable",
        }
    }

    /// True when the fault is ours (keys unreachable), not the caller's.
    pub fn is_server_side(&self) -> bool {
        matches!(
            self,
            AuthError::KeysUnavailable(_) | AuthError::DpopUnavailable(_)
        )
    }

    /// The RFC 9449 §7.1 error code when the refusal is about DPoP (the
    /// challenge is then `DPoP error=…`), else `None` (`Bearer`).
    pub fn dpop_error(&self) -> Option<&'static str> {
        match self {
            AuthError::Dpop(_)
            | AuthError::DpopMissingProof
            | AuthError::DpopManyProofs
            | AuthError::DpopKeyMismatch
            | AuthError::DpopReplayed => Some("invalid_dpop_proof"),
            AuthError::DpopUnboundToken
            | AuthError::BoundTokenAsBearer
            | AuthError::DpopRequired
            | AuthError::DpopKeyChanged => Some("invalid_token"),
            _ => None,
        }
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
    /// Why the last fetch failed; `None` once one succeeds.
    last_error: Option<String>,
}

/// Validates access tokens for one issuer and audience.
pub struct Verifier {
    cfg: IdentityConfig,
    source: KeySource,
    cache: Mutex<KeyCache>,
    /// Held while a JWKS fetch is under way: other misses wait for it.
    fetching: Mutex<()>,
}

impl Verifier {
    pub fn new(cfg: IdentityConfig, source: KeySource) -> Self {
        let mut cache = KeyCache {
            keys: HashMap::new(),
            anonymous: Vec::new(),
            last_fetch: None,
            last_error: None,
        };
        if let KeySource::Static(set) = &source {
            cache.load(set.clone());
        }
        Self {
            cfg,
            source,
            cache: Mutex::new(cache),
            fetching: Mutex::new(()),
        }
    }

    pub fn config(&self) -> &IdentityConfig {
        &self.cfg
    }

    /// True once some signing keys are loaded.
    pub async fn has_keys(&self) -> bool {
        let cache = self.cache.lock().await;
        !(cache.keys.is_empty() && cache.anonymous.is_empty())
    }

    /// True when keys are loaded; with discovery and none loaded, fetches
    /// them first (at most once per `jwks_min_refetch`, like a miss does):
    /// what `/readyz` asks, and what a starting relay does once.
    pub async fn ensure_keys(&self) -> bool {
        if self.has_keys().await {
            return true;
        }
        if matches!(self.source, KeySource::Discovery(_)) {
            // A miss on no key in particular: the fetch path, rate-bound.
            let _ = self.key_for(Some("")).await;
        }
        self.has_keys().await
    }

    /// Verifies `token` and returns who it names.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Malformed(text::clean(&e.to_string()).into_owned()))?;
        if !self.cfg.algorithms.contains(&header.alg) {
            return Err(AuthError::Algorithm(format!("{:?}", header.alg)));
        }
        check_typ(header.typ.as_deref())?;
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
                    _ => AuthError::Malformed(text::clean(&e.to_string()).into_owned()),
                }
            })?;
        let claims = data.claims;
        check_not_id_token(&claims)?;
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
        // jsonwebtoken still accepts a token at `exp + leeway == now`; the
        // relay's one rule (RFC 7519: not on or after `exp`) is the
        // session's, so a token is never let in only to be cut at once.
        if crate::policy::token_expired(expires_at, self.cfg.leeway, now_unix()) {
            return Err(AuthError::Expired);
        }
        let jkt = match claims.get("cnf").and_then(|c| c.get("jkt")) {
            None => None,
            Some(Value::String(j)) if !j.is_empty() && j.len() <= 128 => Some(j.clone()),
            Some(_) => return Err(AuthError::Malformed("cnf.jkt is not a thumbprint".into())),
        };
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
            jkt,
            dpop_bound: false,
        })
    }

    /// The key `kid` names: from the cache, else from a JWKS fetch (at most
    /// one at a time, and one per `jwks_min_refetch`).
    async fn key_for(&self, kid: Option<&str>) -> Result<Jwk, AuthError> {
        let unknown = || AuthError::UnknownKey(text::clean(kid.unwrap_or("")).into_owned());
        if let Some(k) = self.cache.lock().await.find(kid) {
            return Ok(k);
        }
        let KeySource::Discovery(http) = &self.source else {
            return Err(unknown());
        };
        // A fetch under way may bring the key: wait for it, briefly.
        let Ok(_fetching) = tokio::time::timeout(FETCH_WAIT, self.fetching.lock()).await else {
            return Err(AuthError::KeysUnavailable(
                "still fetching the identity provider's keys; try again".into(),
            ));
        };
        {
            let cache = self.cache.lock().await;
            if let Some(k) = cache.find(kid) {
                return Ok(k);
            }
            let recent = cache
                .last_fetch
                .is_some_and(|t| t.elapsed() < self.cfg.jwks_min_refetch);
            if recent {
                // The provider answered lately: an unseen key is unknown.
                // It failed lately: we cannot tell, and say so.
                return Err(match &cache.last_error {
                    Some(e) => AuthError::KeysUnavailable(e.clone()),
                    None => unknown(),
                });
            }
        }
        // Only misses wait on this fetch; tokens with known keys are
        // verified meanwhile (the cache lock is not held).
        let fetched = fetch_jwks(http, &self.cfg.issuer).await;
        let mut cache = self.cache.lock().await;
        cache.last_fetch = Some(Instant::now());
        match fetched {
            Ok(set) => {
                tracing::info!(keys = set.keys.len(), issuer = %self.cfg.issuer, "fetched JWKS");
                cache.load(set);
                cache.last_error = None;
                cache.find(kid).ok_or_else(unknown)
            }
            Err(e) => {
                tracing::warn!(issuer = %self.cfg.issuer, error = %e, "cannot fetch JWKS");
                cache.last_error = Some(match &e {
                    AuthError::KeysUnavailable(why) => why.clone(),
                    other => other.to_string(),
                });
                Err(e)
            }
        }
    }
}

/// The header's `typ`, when set, must be an access token's: RFC 9068's
/// `at+jwt` (or `application/at+jwt`), or the generic `JWT` that Entra ID,
/// Keycloak and others put on access tokens.
fn check_typ(typ: Option<&str>) -> Result<(), AuthError> {
    let Some(typ) = typ else { return Ok(()) };
    let t = typ.to_ascii_lowercase();
    let t = t.strip_prefix("application/").unwrap_or(&t);
    if matches!(t, "at+jwt" | "jwt") {
        Ok(())
    } else {
        Err(AuthError::NotAccessToken(format!(
            "typ {:?} (want at+jwt)",
            text::clean(typ)
        )))
    }
}

/// Refuses an ID token presented as an access token: it carries `nonce`,
/// `at_hash` or `c_hash`, or says `typ: "ID"` (Keycloak).
fn check_not_id_token(claims: &HashMap<String, Value>) -> Result<(), AuthError> {
    let id_claim = ["nonce", "at_hash", "c_hash"]
        .into_iter()
        .find(|c| claims.contains_key(*c));
    let says_id = claims
        .get("typ")
        .and_then(Value::as_str)
        .is_some_and(|t| t.eq_ignore_ascii_case("id"));
    match (id_claim, says_id) {
        (Some(c), _) => Err(AuthError::NotAccessToken(format!(
            "an ID token (it has {c}); send the access token"
        ))),
        (None, true) => Err(AuthError::NotAccessToken(
            "an ID token (typ \"ID\"); send the access token".into(),
        )),
        (None, false) => Ok(()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_token_types_pass_and_others_are_refused() {
        for ok in [
            None,
            Some("at+jwt"),
            Some("application/at+JWT"),
            Some("JWT"),
        ] {
            assert_eq!(check_typ(ok), Ok(()), "{ok:?}");
        }
        for bad in ["id+jwt", "logout+jwt", "dpop+jwt", "at+jwt\n"] {
            let e = check_typ(Some(bad)).unwrap_err();
            assert_eq!(e.code(), "not_access_token");
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }

    #[test]
    fn id_tokens_are_refused_by_their_claims() {
        let claims = |pairs: &[(&str, &str)]| -> HashMap<String, Value> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                .collect()
        };
        assert!(check_not_id_token(&claims(&[("sub", "alice"), ("scope", "openid")])).is_ok());
        for c in [
            claims(&[("nonce", "n")]),
            claims(&[("at_hash", "h")]),
            claims(&[("typ", "ID")]),
        ] {
            assert_eq!(
                check_not_id_token(&c).unwrap_err().code(),
                "not_access_token"
            );
        }
    }

    fn verifier(issuer: &str) -> Verifier {
        let cfg = IdentityConfig {
            issuer: issuer.into(),
            audience: "relay".into(),
            client_id: "gangway".into(),
            scopes: vec![],
            groups_claim: "groups".into(),
            algorithms: vec![jsonwebtoken::Algorithm::RS256],
            leeway: Duration::from_secs(0),
            jwks_min_refetch: Duration::from_secs(30),
            jwks_file: None,
        };
        Verifier::new(cfg, KeySource::Discovery(reqwest::Client::new()))
    }

    /// A token is refused from its `exp` second on (RFC 7519), by the same
    /// rule that ends a session, so none is let in only to be cut at once;
    /// a live one is let in.
    #[tokio::test]
    async fn a_token_is_refused_on_its_exp_second() {
        use base64::Engine;
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let jwks: JwkSet = serde_json::from_value(serde_json::json!({"keys": [{
            "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": "k",
            "x": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key_raw()),
        }]}))
        .unwrap();
        let mut cfg = verifier("https://idp.test").cfg.clone();
        cfg.algorithms = vec![jsonwebtoken::Algorithm::EdDSA];
        let v = Verifier::new(cfg, KeySource::Static(jwks));
        let key = jsonwebtoken::EncodingKey::from_ed_der(&pair.serialize_der());
        let token = |exp: u64| {
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
            header.kid = Some("k".into());
            let claims = serde_json::json!({
                "iss": "https://idp.test", "aud": "relay", "sub": "ada", "exp": exp,
            });
            jsonwebtoken::encode(&header, &claims, &key).unwrap()
        };
        let now = now_unix();
        let e = v.verify(&token(now)).await.unwrap_err();
        assert_eq!(e.code(), "expired", "{e}");
        let id = v.verify(&token(now + 60)).await.unwrap();
        assert_eq!(id.subject, "ada");
    }

    /// A provider that cannot be reached: an unseen key is a 503 every
    /// time, also within the refetch interval; never a 401.
    #[tokio::test]
    async fn unreachable_provider_means_keys_unavailable_not_unknown_key() {
        // A port nothing listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let v = verifier(&format!("http://127.0.0.1:{port}"));
        for _ in 0..3 {
            let e = v.key_for(Some("k1")).await.unwrap_err();
            assert!(e.is_server_side(), "{e:?}");
        }
    }
}
