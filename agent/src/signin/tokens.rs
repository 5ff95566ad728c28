//! Token values: redacted newtypes, what a token response gives, the record
//! kept in the keychain, and an *unverified* look into a JWT for display and
//! scheduling only.

use base64::Engine;
use gangway_wire::Token;
use oauth2::TokenResponse;
use serde::Deserialize;

/// A secret other than an access token (a refresh token): `Debug` is
/// redacted and it cannot be serialized, so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself. Call this only where it is sent or stored.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// What a successful token request gives.
#[derive(Debug, Clone)]
pub struct TokenSet {
    pub access: Token,
    /// Absent when the provider did not rotate it (keep the old one) or
    /// did not issue one.
    pub refresh: Option<Secret>,
    /// When the agent received it (local clock, Unix seconds).
    pub obtained_at: u64,
    /// `obtained_at + expires_in`, when the provider said.
    pub expires_at: Option<u64>,
}

impl TokenSet {
    pub(crate) fn from_response(r: &oauth2::basic::BasicTokenResponse, now: u64) -> Self {
        let expires_at = r
            .expires_in()
            .map(|d| now + d.as_secs())
            .or_else(|| UnverifiedClaims::peek(r.access_token().secret()).and_then(|c| c.exp));
        TokenSet {
            access: Token::new(r.access_token().secret().clone()),
            refresh: r.refresh_token().map(|t| Secret::new(t.secret().clone())),
            obtained_at: now,
            expires_at,
        }
    }
}

/// The access token as kept in the keychain (JSON). Private to this
/// module's users in `signin`, written only to the keychain.
#[derive(Clone, serde::Serialize, Deserialize)]
pub(crate) struct AccessRecord {
    pub token: String,
    pub obtained_at: u64,
    pub expires_at: Option<u64>,
    /// The issuer that minted it (so a changed relay configuration is noticed).
    pub issuer: String,
}

impl std::fmt::Debug for AccessRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessRecord")
            .field("token", &"<redacted>")
            .field("obtained_at", &self.obtained_at)
            .field("expires_at", &self.expires_at)
            .field("issuer", &self.issuer)
            .finish()
    }
}

impl AccessRecord {
    pub fn from_set(set: &TokenSet, issuer: &str) -> Self {
        AccessRecord {
            token: set.access.expose().to_string(),
            obtained_at: set.obtained_at,
            expires_at: set.expires_at,
            issuer: issuer.to_string(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain struct")
    }

    pub fn from_json(s: &str) -> Option<Self> {
        serde_json::from_str(s).ok()
    }

    /// Seconds of validity to keep in reserve: a token closer than this to
    /// its expiry is not handed out. A fifth of its lifetime, at most 30 s.
    pub fn reserve(&self) -> u64 {
        match self.expires_at {
            Some(exp) => (exp.saturating_sub(self.obtained_at) / 5).min(30),
            None => 0,
        }
    }

    /// Whether it can still be used at `now`. Unknown lifetime: yes (the
    /// relay will say otherwise).
    pub fn usable_at(&self, now: u64) -> bool {
        match self.expires_at {
            Some(exp) => exp > now + self.reserve(),
            None => true,
        }
    }
}

/// Claims read from a JWT access token **without verifying it**: only for
/// showing who is signed in and when the token expires, and for scheduling
/// a refresh. Never for a decision that needs trust — the relay verifies.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UnverifiedClaims {
    pub sub: Option<String>,
    pub iss: Option<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub aud: Vec<String>,
    pub exp: Option<u64>,
    pub iat: Option<u64>,
    pub preferred_username: Option<String>,
    pub groups: Option<Vec<String>>,
    /// The key the token is bound to (RFC 7800 / RFC 9449), if any.
    pub cnf: Option<Confirmation>,
}

/// A token's `cnf` claim: the thumbprint of its DPoP key (`jkt`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Confirmation {
    pub jkt: Option<String>,
}

/// The access token of an [`AccessRecord`]'s keychain form.
pub fn stored_access_token(json: &str) -> Option<String> {
    AccessRecord::from_json(json).map(|r| r.token)
}

impl UnverifiedClaims {
    /// Decodes the payload of a compact JWS, if `token` is one.
    pub fn peek(token: &str) -> Option<Self> {
        let mut parts = token.split('.');
        let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => vec![],
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: serde_json::Value) -> String {
        let e = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.{}",
            e(br#"{"alg":"RS256","typ":"at+jwt"}"#),
            e(claims.to_string().as_bytes()),
            e(b"not-a-real-signature")
        )
    }

    #[test]
    fn peeks_claims_without_verifying() {
        let t = jwt(serde_json::json!({
            "sub": "alice", "iss": "https://idp", "aud": "https://relay",
            "exp": 2000, "iat": 1000, "groups": ["developers"]
        }));
        let c = UnverifiedClaims::peek(&t).unwrap();
        assert_eq!(c.sub.as_deref(), Some("alice"));
        assert_eq!(c.aud, ["https://relay"]);
        assert_eq!((c.iat, c.exp), (Some(1000), Some(2000)));
        let t = jwt(serde_json::json!({"aud": ["a", "b"]}));
        assert_eq!(UnverifiedClaims::peek(&t).unwrap().aud, ["a", "b"]);
        assert!(UnverifiedClaims::peek("opaque-token").is_none());
        assert!(UnverifiedClaims::peek("a.b.c.d").is_none());
    }

    #[test]
    fn secrets_and_records_are_redacted() {
        let set = TokenSet {
            access: Token::new("eyJaccess-secret"),
            refresh: Some(Secret::new("refresh-secret")),
            obtained_at: 1,
            expires_at: Some(61),
        };
        let rec = AccessRecord::from_set(&set, "https://idp");
        let shown = format!("{set:?} {set:#?} {rec:?}");
        assert!(!shown.contains("secret"), "{shown}");
        // The record round-trips through its keychain form.
        let back = AccessRecord::from_json(&rec.to_json()).unwrap();
        assert_eq!(back.token, "eyJaccess-secret");
        assert_eq!(back.expires_at, Some(61));
    }

    #[test]
    fn a_token_is_not_handed_out_in_its_last_fifth() {
        let rec = AccessRecord {
            token: String::new(),
            obtained_at: 1000,
            expires_at: Some(1015),
            issuer: String::new(),
        };
        assert_eq!(rec.reserve(), 3);
        assert!(rec.usable_at(1011));
        assert!(!rec.usable_at(1012));
        let long = AccessRecord {
            expires_at: Some(1000 + 3600),
            ..rec.clone()
        };
        assert_eq!(long.reserve(), 30);
        let unknown = AccessRecord {
            expires_at: None,
            ..rec
        };
        assert!(unknown.usable_at(u64::MAX / 2));
    }
}
