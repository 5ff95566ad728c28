//! The signed identity assertion for http backends.
//!
//! Next to `X-Gangway-User` / `X-Gangway-Groups`, each request upstream
//! carries `X-Gangway-Assertion`: a short-lived EdDSA JWT naming the user,
//! their groups and the service (as `aud`). Backends verify it against the
//! key set the relay publishes at `/.well-known/jwks.json`, so they need not
//! trust the network between relay and backend. Relays behind one balancer
//! should share a key file; without one each relay makes its own key.

use std::path::Path;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::Serialize;

use crate::auth::now_unix;
use crate::config::AssertionConfig;

/// The relay's assertion signer. Its `Debug` shows only the key id.
pub struct Signer {
    /// Recent assertions by (subject, groups, service), reused while more
    /// than half their lifetime is left: signing on every request would
    /// cost more than the rest of the proxying.
    cache: std::sync::Mutex<std::collections::HashMap<String, (String, u64)>>,
    encoding: EncodingKey,
    kid: String,
    public_x: String,
    issuer: String,
    ttl: u64,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("assertion key {path}: {reason}")]
pub struct KeyError {
    pub path: String,
    pub reason: String,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    groups: &'a [String],
    iat: u64,
    exp: u64,
}

impl Signer {
    pub fn from_config(cfg: &AssertionConfig) -> Result<Self, KeyError> {
        let pkcs8 = match &cfg.key_file {
            Some(path) => read_pkcs8(path)?,
            None => {
                tracing::warn!("no assertion.key_file: signing assertions with an ephemeral key (relays behind one balancer should share a key)");
                Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                    .map_err(|_| KeyError {
                        path: "(ephemeral)".into(),
                        reason: "cannot generate a key".into(),
                    })?
                    .as_ref()
                    .to_vec()
            }
        };
        let path = cfg
            .key_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(ephemeral)".into());
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8).map_err(|e| KeyError {
            path: path.clone(),
            reason: format!("not an Ed25519 PKCS#8 key: {e}"),
        })?;
        let public = pair.public_key().as_ref();
        let public_x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public);
        let kid = crate::backends::balancer::affinity_id(&public_x);
        Ok(Self {
            cache: Default::default(),
            encoding: EncodingKey::from_ed_der(&pkcs8),
            kid,
            public_x,
            issuer: cfg.issuer.clone(),
            ttl: cfg.ttl.as_secs(),
        })
    }

    /// An assertion for `subject` on `service`: a cached one while more
    /// than half its lifetime is left, else a freshly signed one.
    pub fn sign(&self, subject: &str, groups: &[String], service: &str) -> String {
        let now = now_unix();
        let key = format!("{subject}\n{}\n{service}", groups.join(","));
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((token, exp)) = cache.get(&key) {
            if *exp > now + self.ttl / 2 {
                return token.clone();
            }
        }
        if cache.len() > 10_000 {
            cache.retain(|_, (_, exp)| *exp > now);
        }
        let token = self.sign_new(subject, groups, service, now);
        cache.insert(key, (token.clone(), now + self.ttl));
        token
    }

    fn sign_new(&self, subject: &str, groups: &[String], service: &str, now: u64) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        let claims = Claims {
            iss: &self.issuer,
            sub: subject,
            aud: service,
            groups,
            iat: now,
            exp: now + self.ttl,
        };
        jsonwebtoken::encode(&header, &claims, &self.encoding).unwrap_or_default()
    }

    /// The public key set, as served at `/.well-known/jwks.json`.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({
            "keys": [{
                "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
                "kid": self.kid, "x": self.public_x,
            }]
        })
    }
}

fn read_pkcs8(path: &Path) -> Result<Vec<u8>, KeyError> {
    let bad = |reason: String| KeyError {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    match rustls_pemfile::private_key(&mut pem.as_slice()) {
        Ok(Some(rustls::pki_types::PrivateKeyDer::Pkcs8(k))) => Ok(k.secret_pkcs8_der().to_vec()),
        Ok(Some(_)) => Err(bad(
            "expected a PKCS#8 (BEGIN PRIVATE KEY) Ed25519 key".into()
        )),
        Ok(None) => Err(bad("no private key in file".into())),
        Err(e) => Err(bad(format!("bad PEM: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assertion_verifies_against_published_jwks() {
        let signer = Signer::from_config(&AssertionConfig::default()).unwrap();
        let token = signer.sign("alice", &["developers".into()], "confluence");
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(signer.jwks()).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
        let mut v = jsonwebtoken::Validation::new(Algorithm::EdDSA);
        v.set_audience(&["confluence"]);
        v.set_issuer(&["gangway-relay"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &v).unwrap();
        assert_eq!(data.claims["sub"], "alice");
        assert_eq!(data.claims["groups"][0], "developers");
        // Another relay's key does not verify it.
        // Within half its lifetime the same assertion is reused.
        assert_eq!(
            signer.sign("alice", &["developers".into()], "confluence"),
            token
        );
        assert_ne!(
            signer.sign("alice", &["developers".into()], "bitbucket"),
            token
        );
        let other = Signer::from_config(&AssertionConfig::default()).unwrap();
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(other.jwks()).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
        assert!(jsonwebtoken::decode::<serde_json::Value>(&token, &key, &v).is_err());
        assert!(!format!("{signer:?}").contains(&signer.public_x));
    }
}
