//! DPoP on the agent's side (RFC 9449): this device's proof key, kept in
//! the OS keychain beside the tokens, and the proofs it adds to requests.
//!
//! - The key: one P-256 pair per environment ([`load_or_create`]), made on
//!   first sign-in with a provider and relay that both take ES256 proofs,
//!   stored as PKCS#8 under the keychain item `…#dpop-key` (never in a file,
//!   never logged; `gangway logout` deletes it with the tokens).
//! - Token requests to the provider (code exchange, refresh, device-code
//!   polls) go through [`ProofHttp`], which signs a fresh proof for each
//!   request (`htm`/`htu` of that request) and answers a provider's
//!   `use_dpop_nonce` by retrying once with the nonce it sent. The provider
//!   then binds the tokens to the key (`cnf.jkt`, `token_type: DPoP`).
//! - Requests to the relay with a bound token ([`authorization`]): the
//!   tunnel upgrade, catalog calls, and the in-band refresh carry
//!   `Authorization: DPoP <token>` and a proof with `ath` over the token.
//!
//! [`binding`] says whether the stored tokens are bound to this device's
//! key: what `gangway status` (and `gangway doctor`) show.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use gangway_dpop::ProofKey;
use gangway_wire::Token;
use oauth2::{AsyncHttpClient, HttpClientError, HttpRequest, HttpResponse};
use url::Url;

use crate::keychain::{Item, Keychain, KeychainError};
use crate::signin::UnverifiedClaims;
use crate::AgentError;

/// Whether the stored tokens are bound to this device's key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TokenBinding {
    /// The access token names this device's key (`cnf.jkt` = its
    /// thumbprint): a copy of it opens nothing without the key.
    Bound { thumbprint: String },
    /// A bearer token: whoever holds a copy can use it until it expires.
    NotBound,
    /// The token is bound to a key this keychain does not hold (another
    /// device's, or one replaced since): the relay will refuse it.
    OtherKey,
    /// Nothing stored.
    NoToken,
}

impl TokenBinding {
    /// One line for `gangway status` / `gangway doctor`.
    pub fn describe(&self) -> &'static str {
        match self {
            TokenBinding::Bound { .. } => "tokens bound to this device's key (DPoP)",
            TokenBinding::NotBound => {
                "tokens not bound to this device (bearer): the identity provider or the relay does not offer DPoP"
            }
            TokenBinding::OtherKey => {
                "tokens bound to a key this device does not hold (DPoP); sign in again"
            }
            TokenBinding::NoToken => "no tokens stored",
        }
    }

    /// What `token` (with this device's `key`, if any) is.
    pub fn of(token: &str, key: Option<&ProofKey>) -> Self {
        let jkt = UnverifiedClaims::peek(token).and_then(|c| c.cnf.and_then(|c| c.jkt));
        match (jkt, key) {
            (None, _) => TokenBinding::NotBound,
            (Some(j), Some(k)) if j == k.thumbprint() => TokenBinding::Bound { thumbprint: j },
            (Some(_), _) => TokenBinding::OtherKey,
        }
    }
}

/// This environment's key, if one is stored. A damaged entry is logged
/// and treated as none (a new sign-in replaces it).
pub async fn load(keychain: &Keychain) -> Result<Option<Arc<ProofKey>>, KeychainError> {
    let stored = keychain.run(|k| k.get(Item::DpopKey)).await?;
    Ok(stored.and_then(|s| match ProofKey::from_pkcs8_b64(&s) {
        Ok(k) => Some(Arc::new(k)),
        Err(e) => {
            tracing::warn!("ignoring the stored DPoP key: {e}");
            None
        }
    }))
}

/// This environment's key: the stored one, else a new one, stored first.
pub async fn load_or_create(keychain: &Keychain) -> Result<Arc<ProofKey>, KeychainError> {
    if let Some(k) = load(keychain).await? {
        return Ok(k);
    }
    let key = ProofKey::generate().map_err(|e| KeychainError::Failed(e.to_string()))?;
    let stored = key.to_pkcs8_b64();
    keychain.run(move |k| k.set(Item::DpopKey, &stored)).await?;
    tracing::info!(thumbprint = key.thumbprint(), "made this device's DPoP key");
    Ok(Arc::new(key))
}

/// Whether the tokens stored in `keychain` are bound to the key stored
/// beside them. Reads the keychain only (no network, nothing verified):
/// the function `gangway status` and `gangway doctor` call.
pub async fn binding(keychain: &Keychain) -> Result<TokenBinding, KeychainError> {
    let access = keychain.run(|k| k.get(Item::Access)).await?;
    let Some(token) = access
        .as_deref()
        .and_then(crate::signin::stored_access_token)
    else {
        return Ok(TokenBinding::NoToken);
    };
    let key = load(keychain).await?;
    Ok(TokenBinding::of(&token, key.as_deref()))
}

/// Whether `token` is bound to a key (`cnf.jkt`, read without verifying).
pub fn is_bound(token: &Token) -> bool {
    UnverifiedClaims::peek(token.expose())
        .and_then(|c| c.cnf)
        .is_some_and(|c| c.jkt.is_some())
}

/// The `Authorization` value for `token`, and the `DPoP` proof to send
/// with it: `DPoP <token>` and a proof for `htm` `htu` when the token is
/// bound and `key` is at hand, else `Bearer <token>` alone.
pub fn authorization(
    token: &Token,
    key: Option<&ProofKey>,
    htm: &str,
    htu: &Url,
) -> Result<(http::HeaderValue, Option<http::HeaderValue>), AgentError> {
    let invalid = || AgentError::NoToken("token contains invalid characters".into());
    match key.filter(|_| is_bound(token)) {
        Some(key) => {
            let proof = proof_for(key, htm, htu, Some(token))?;
            let auth = http::HeaderValue::from_str(&format!("DPoP {}", token.expose()))
                .map_err(|_| invalid())?;
            let proof = http::HeaderValue::from_str(&proof).map_err(|_| invalid())?;
            Ok((auth, Some(proof)))
        }
        None => {
            let auth = http::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                .map_err(|_| invalid())?;
            Ok((auth, None))
        }
    }
}

/// A proof by `key` for `htm` `htu` (query and fragment dropped), over
/// `token` if one goes with it.
pub fn proof_for(
    key: &ProofKey,
    htm: &str,
    htu: &Url,
    token: Option<&Token>,
) -> Result<String, AgentError> {
    let mut htu = htu.clone();
    htu.set_query(None);
    htu.set_fragment(None);
    key.proof(htm, htu.as_str(), token.map(Token::expose), None, now())
        .map_err(|e| AgentError::Config(e.to_string()))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The provider's HTTP client with a fresh DPoP proof on every request
/// (none when `key` is `None`), remembering the provider's `DPoP-Nonce`.
pub(crate) struct ProofHttp<'a> {
    pub http: &'a reqwest::Client,
    pub key: Option<&'a ProofKey>,
    /// The last nonce the provider handed out, shared by its requests.
    pub nonce: &'a Mutex<Option<String>>,
}

type Answer<'c> = Pin<
    Box<
        dyn Future<Output = Result<HttpResponse, HttpClientError<reqwest::Error>>>
            + Send
            + Sync
            + 'c,
    >,
>;

impl<'c> AsyncHttpClient<'c> for ProofHttp<'_> {
    type Error = HttpClientError<reqwest::Error>;
    type Future = Answer<'c>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let Some(key) = self.key else {
                return self.http.call(request).await;
            };
            let (parts, body) = request.into_parts();
            let mut htu = Url::parse(&parts.uri.to_string())
                .map_err(|e| HttpClientError::Other(format!("token endpoint URL: {e}")))?;
            htu.set_query(None);
            htu.set_fragment(None);
            let mut retried = false;
            loop {
                let nonce = self.nonce.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let proof = key
                    .proof(
                        parts.method.as_str(),
                        htu.as_str(),
                        None,
                        nonce.as_deref(),
                        now(),
                    )
                    .map_err(|e| HttpClientError::Other(e.to_string()))?;
                let mut req = http::Request::builder()
                    .method(parts.method.clone())
                    .uri(parts.uri.clone())
                    .version(parts.version)
                    .body(body.clone())?;
                *req.headers_mut() = parts.headers.clone();
                req.headers_mut().insert(
                    "dpop",
                    http::HeaderValue::from_str(&proof)
                        .map_err(|e| HttpClientError::Other(e.to_string()))?,
                );
                let resp = self.http.call(req).await?;
                let sent = resp
                    .headers()
                    .get("dpop-nonce")
                    .and_then(|v| v.to_str().ok())
                    .filter(|n| !n.is_empty() && n.len() <= 1024)
                    .map(str::to_string);
                let fresh = sent.is_some() && sent != nonce;
                if let Some(n) = sent {
                    *self.nonce.lock().unwrap_or_else(|p| p.into_inner()) = Some(n);
                }
                // RFC 9449 §8: the provider wants its nonce in the proof.
                if !retried && fresh && asks_for_nonce(&resp) {
                    retried = true;
                    continue;
                }
                return Ok(resp);
            }
        })
    }
}

/// A 400/401 answer whose `error` is `use_dpop_nonce`.
fn asks_for_nonce(resp: &HttpResponse) -> bool {
    matches!(resp.status().as_u16(), 400 | 401)
        && serde_json::from_slice::<serde_json::Value>(resp.body())
            .ok()
            .and_then(|v| {
                v.get("error")
                    .and_then(|e| e.as_str())
                    .map(|e| e == "use_dpop_nonce")
            })
            .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn jwt(claims: serde_json::Value) -> Token {
        let e = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        Token::new(format!(
            "{}.{}.{}",
            e(br#"{"alg":"RS256","typ":"at+jwt"}"#),
            e(claims.to_string().as_bytes()),
            e(b"sig")
        ))
    }

    #[test]
    fn a_bound_token_goes_as_dpop_with_a_proof_and_others_as_bearer() {
        let key = ProofKey::generate().unwrap();
        let url = Url::parse("https://relay.example.com/v1/tunnel?x=1").unwrap();
        let bound = jwt(serde_json::json!({"sub":"a","cnf":{"jkt": key.thumbprint()}}));
        let (auth, proof) = authorization(&bound, Some(&key), "GET", &url).unwrap();
        assert!(auth.to_str().unwrap().starts_with("DPoP eyJ"));
        let proof = proof.unwrap();
        let checked = gangway_dpop::check(
            proof.to_str().unwrap(),
            &gangway_dpop::Expected {
                htm: "GET",
                htu: gangway_dpop::Htu::Exact(
                    Url::parse("https://relay.example.com/v1/tunnel").unwrap(),
                ),
                access_token: Some(bound.expose()),
                now: now(),
                window: 5,
            },
        )
        .unwrap();
        assert_eq!(checked.thumbprint, key.thumbprint());
        assert_eq!(
            TokenBinding::of(bound.expose(), Some(&key)),
            TokenBinding::Bound {
                thumbprint: key.thumbprint().into()
            }
        );
        // Without the key, or unbound: Bearer, no proof.
        let (auth, proof) = authorization(&bound, None, "GET", &url).unwrap();
        assert!(auth.to_str().unwrap().starts_with("Bearer "));
        assert!(proof.is_none());
        let plain = jwt(serde_json::json!({"sub":"a"}));
        let (auth, proof) = authorization(&plain, Some(&key), "GET", &url).unwrap();
        assert!(auth.to_str().unwrap().starts_with("Bearer ") && proof.is_none());
        assert_eq!(
            TokenBinding::of(plain.expose(), Some(&key)),
            TokenBinding::NotBound
        );
        let other = ProofKey::generate().unwrap();
        assert_eq!(
            TokenBinding::of(bound.expose(), Some(&other)),
            TokenBinding::OtherKey
        );
    }

    #[tokio::test]
    async fn the_key_is_made_once_and_kept_in_the_keychain() {
        let store = crate::keychain::MemoryStore::new();
        let k = Keychain::new(
            Arc::new(store.clone()),
            &Url::parse("https://relay.example").unwrap(),
        );
        assert!(load(&k).await.unwrap().is_none());
        let made = load_or_create(&k).await.unwrap();
        let again = load_or_create(&k).await.unwrap();
        assert_eq!(made.thumbprint(), again.thumbprint());
        assert_eq!(store.names(), ["https://relay.example#dpop-key"]);
        // Sign-out deletes it with the tokens.
        k.delete_all().unwrap();
        assert!(store.names().is_empty());
    }
}
