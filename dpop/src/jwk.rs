//! The public key a proof embeds: an EC P-256 JWK, and its RFC 7638
//! thumbprint (what the provider writes into `cnf.jkt`).

use serde::{Deserialize, Serialize};

use crate::{b64, unb64};

/// An EC P-256 public key as a JWK. Parsing refuses anything else: other
/// key types and curves, private members (`d`, or RSA's), coordinates that
/// are not 32 bytes of canonical base64url.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicJwk {
    pub kty: String,
    pub crv: String,
    pub x: String,
    pub y: String,
}

/// Members that only a private key has (EC `d`; RSA's and oct's for good
/// measure): a proof carrying one is refused.
const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "k"];

impl PublicJwk {
    /// The key of `x` and `y` (32 bytes each).
    pub(crate) fn from_coordinates(x: &[u8], y: &[u8]) -> Self {
        PublicJwk {
            kty: "EC".into(),
            crv: "P-256".into(),
            x: b64(x),
            y: b64(y),
        }
    }

    /// Reads a JWK from the proof header's `jwk` member; `Err` says why not.
    pub(crate) fn from_value(v: &serde_json::Value) -> Result<Self, &'static str> {
        let obj = v.as_object().ok_or("jwk is not an object")?;
        if PRIVATE_MEMBERS.iter().any(|m| obj.contains_key(*m)) {
            return Err("jwk holds a private key");
        }
        let field = |name: &str| obj.get(name).and_then(|v| v.as_str());
        if field("kty") != Some("EC") {
            return Err("jwk is not an EC key");
        }
        if field("crv") != Some("P-256") {
            return Err("jwk is not on curve P-256");
        }
        let coordinate = |name: &str| -> Result<String, &'static str> {
            let s = field(name).ok_or("jwk lacks a coordinate")?;
            match unb64(s) {
                Some(b) if b.len() == 32 => Ok(s.to_string()),
                _ => Err("jwk coordinate is not 32 bytes of base64url"),
            }
        };
        Ok(PublicJwk {
            kty: "EC".into(),
            crv: "P-256".into(),
            x: coordinate("x")?,
            y: coordinate("y")?,
        })
    }

    /// The uncompressed SEC1 point, `04 || x || y`.
    pub(crate) fn point(&self) -> Option<Vec<u8>> {
        let (x, y) = (unb64(&self.x)?, unb64(&self.y)?);
        let mut p = Vec::with_capacity(65);
        p.push(4);
        p.extend_from_slice(&x);
        p.extend_from_slice(&y);
        Some(p)
    }

    /// RFC 7638 thumbprint: base64url(SHA-256) of the required members in
    /// lexicographic order with no whitespace.
    pub fn thumbprint(&self) -> String {
        let canonical = format!(
            r#"{{"crv":"{}","kty":"{}","x":"{}","y":"{}"}}"#,
            self.crv, self.kty, self.x, self.y
        );
        b64(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()).as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7638 §3.1 gives an RSA example only; this EC vector is the one
    /// RFC 9449 §6.1 uses (its `jkt`), checked against its key.
    #[test]
    fn thumbprint_matches_rfc_9449() {
        let jwk = PublicJwk {
            kty: "EC".into(),
            crv: "P-256".into(),
            x: "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs".into(),
            y: "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA".into(),
        };
        assert_eq!(
            jwk.thumbprint(),
            "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
        );
    }

    #[test]
    fn hostile_jwks_are_refused() {
        let ok = serde_json::json!({"kty":"EC","crv":"P-256",
            "x":"l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
            "y":"9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA"});
        assert!(PublicJwk::from_value(&ok).is_ok());
        let with = |k: &str, v: serde_json::Value| {
            let mut j = ok.clone();
            j[k] = v;
            PublicJwk::from_value(&j).unwrap_err()
        };
        assert_eq!(with("d", "AAAA".into()), "jwk holds a private key");
        assert_eq!(with("kty", "RSA".into()), "jwk is not an EC key");
        assert_eq!(with("kty", "oct".into()), "jwk is not an EC key");
        assert_eq!(with("crv", "P-384".into()), "jwk is not on curve P-256");
        assert!(with("x", "AAAA".into()).contains("32 bytes"));
        assert!(
            with("y", "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs=".into()).contains("32 bytes")
        );
        assert!(with("x", 7.into()).contains("coordinate"));
        assert!(PublicJwk::from_value(&serde_json::json!("EC")).is_err());
    }
}
