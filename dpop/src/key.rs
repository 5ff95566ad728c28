//! The agent's proof key: a P-256 key pair made on this device, stored (by
//! the agent) as PKCS#8 in the OS keychain, and the proofs it signs.

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::json;

use crate::jwk::PublicJwk;
use crate::{ath, b64, unb64, ALG, TYP};

/// Why a key could not be made, read or used.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The stored key is not a P-256 PKCS#8 key (written by someone else,
    /// or damaged); a new sign-in makes a new one.
    #[error("the stored DPoP key is not a P-256 PKCS#8 key ({0})")]
    Unreadable(String),
    /// The system's random number generator or signer failed.
    #[error("cannot {0} with the DPoP key")]
    Crypto(&'static str),
}

/// A P-256 key pair that signs DPoP proofs. `Debug` shows the public
/// thumbprint only; the private half leaves only through
/// [`ProofKey::to_pkcs8`], for the keychain.
pub struct ProofKey {
    pair: EcdsaKeyPair,
    pkcs8: Vec<u8>,
    jwk: PublicJwk,
    thumbprint: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for ProofKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProofKey")
            .field("thumbprint", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

impl ProofKey {
    /// A new key pair from the system's random number generator.
    pub fn generate() -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| KeyError::Crypto("generate a key"))?;
        Self::from_pkcs8(doc.as_ref())
    }

    /// The key stored as PKCS#8 DER.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| KeyError::Unreadable(e.to_string()))?;
        let point = pair.public_key().as_ref();
        if point.len() != 65 || point[0] != 4 {
            return Err(KeyError::Unreadable(
                "public key is not an uncompressed point".into(),
            ));
        }
        let jwk = PublicJwk::from_coordinates(&point[1..33], &point[33..65]);
        Ok(ProofKey {
            thumbprint: jwk.thumbprint(),
            jwk,
            pair,
            pkcs8: der.to_vec(),
            rng,
        })
    }

    /// The key as the keychain keeps it: base64url of the PKCS#8 DER.
    pub fn to_pkcs8_b64(&self) -> String {
        b64(&self.pkcs8)
    }

    /// The key from [`ProofKey::to_pkcs8_b64`]'s form.
    pub fn from_pkcs8_b64(s: &str) -> Result<Self, KeyError> {
        let der = unb64(s.trim()).ok_or_else(|| KeyError::Unreadable("not base64url".into()))?;
        Self::from_pkcs8(&der)
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> &PublicJwk {
        &self.jwk
    }

    /// RFC 7638 thumbprint of the public key: what a token bound to it
    /// carries as `cnf.jkt`.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// A fresh proof for one request: `htm` (e.g. "POST"), `htu` (the URL,
    /// without query or fragment), `access_token` when one goes with the
    /// request (its hash becomes `ath`), the provider's `nonce` if it asked
    /// for one, and `iat` = `now` (Unix seconds). Each call has a new
    /// random `jti`.
    pub fn proof(
        &self,
        htm: &str,
        htu: &str,
        access_token: Option<&str>,
        nonce: Option<&str>,
        now: u64,
    ) -> Result<String, KeyError> {
        let mut id = [0u8; 16];
        self.rng
            .fill(&mut id)
            .map_err(|_| KeyError::Crypto("make a proof id"))?;
        let header = json!({ "typ": TYP, "alg": ALG, "jwk": self.jwk });
        let mut claims = json!({
            "jti": b64(&id),
            "htm": htm,
            "htu": htu,
            "iat": now,
        });
        if let Some(t) = access_token {
            claims["ath"] = ath(t).into();
        }
        if let Some(n) = nonce {
            claims["nonce"] = n.into();
        }
        self.sign(&header, &claims)
    }

    /// Signs any header and claims (tests build hostile proofs with it).
    #[doc(hidden)]
    pub fn sign(
        &self,
        header: &serde_json::Value,
        claims: &serde_json::Value,
    ) -> Result<String, KeyError> {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self
            .pair
            .sign(&self.rng, input.as_bytes())
            .map_err(|_| KeyError::Crypto("sign a proof"))?;
        Ok(format!("{input}.{}", b64(sig.as_ref())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_survives_its_stored_form_and_debug_shows_no_secret() {
        let k = ProofKey::generate().unwrap();
        let stored = k.to_pkcs8_b64();
        let back = ProofKey::from_pkcs8_b64(&stored).unwrap();
        assert_eq!(back.thumbprint(), k.thumbprint());
        assert_eq!(back.jwk(), k.jwk());
        let shown = format!("{k:?} {k:#?}");
        assert!(!shown.contains(&stored[20..40]), "{shown}");
        assert!(shown.contains(k.thumbprint()), "{shown}");
        // Another key, another thumbprint.
        assert_ne!(ProofKey::generate().unwrap().thumbprint(), k.thumbprint());
    }

    #[test]
    fn damaged_stored_keys_are_refused() {
        assert!(matches!(
            ProofKey::from_pkcs8_b64("not base64!"),
            Err(KeyError::Unreadable(_))
        ));
        assert!(matches!(
            ProofKey::from_pkcs8_b64("AAAA"),
            Err(KeyError::Unreadable(_))
        ));
    }
}
