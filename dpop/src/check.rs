//! Checking one proof (RFC 9449 §4.3), in order: its size, the three
//! base64url parts, the header (`typ` `dpop+jwt`, `alg` ES256 and nothing
//! else, no `crit`, a public P-256 `jwk`), the signature by that key, then
//! the claims: `jti`, `htm`, `htu` (query and fragment ignored, URLs
//! compared after normalisation), `iat` within the window, and `ath` when
//! a token goes with the proof. What stays for the caller: that `jti` was
//! not seen before, and that the thumbprint is the token's `cnf.jkt`.

use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
use serde::Deserialize;
use url::Url;

use crate::jwk::PublicJwk;
use crate::{ath, unb64, ALG, MAX_PROOF_LEN, TYP};

/// Longest `jti` accepted (ours are 22 characters).
const MAX_JTI: usize = 256;

/// Why a proof was refused. The `Display` text is safe to show the caller
/// (it never quotes the proof).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("DPoP proof is longer than {MAX_PROOF_LEN} bytes")]
    TooLong,
    #[error("DPoP proof is malformed: {0}")]
    Malformed(&'static str),
    #[error("DPoP proof typ is not dpop+jwt")]
    Typ,
    #[error("DPoP proof algorithm is not ES256")]
    Algorithm,
    #[error("DPoP proof key is unusable: {0}")]
    Key(&'static str),
    #[error("DPoP proof signature does not verify with its key")]
    Signature,
    #[error("DPoP proof htm is not {0}")]
    Htm(String),
    #[error("DPoP proof htu is not this endpoint's URL")]
    Htu,
    #[error("DPoP proof ath is not the hash of the access token sent with it")]
    Ath,
    #[error("DPoP proof iat is {0} s from the relay's clock (at most {1} s allowed)")]
    Iat(i64, u64),
}

impl ProofError {
    /// Short machine-friendly code for audit lines and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            ProofError::TooLong => "dpop_too_long",
            ProofError::Malformed(_) => "dpop_malformed",
            ProofError::Typ => "dpop_typ",
            ProofError::Algorithm => "dpop_algorithm",
            ProofError::Key(_) => "dpop_key",
            ProofError::Signature => "dpop_signature",
            ProofError::Htm(_) => "dpop_htm",
            ProofError::Htu => "dpop_htu",
            ProofError::Ath => "dpop_ath",
            ProofError::Iat(..) => "dpop_iat",
        }
    }
}

/// The URL a proof must name.
#[derive(Debug, Clone)]
pub enum Htu {
    /// Exactly this URL (the relay's configured public URL and the path),
    /// compared after normalisation, query and fragment ignored.
    Exact(Url),
    /// Any http or https URL with this authority (`host[:port]`, as a Host
    /// header gives it) and path: for a relay without a public URL.
    HostAndPath { authority: String, path: String },
}

impl Htu {
    fn matches(&self, htu: &str) -> bool {
        let Ok(mut got) = Url::parse(htu) else {
            return false;
        };
        got.set_query(None);
        got.set_fragment(None);
        match self {
            Htu::Exact(want) => {
                let mut want = want.clone();
                want.set_query(None);
                want.set_fragment(None);
                got == want
            }
            Htu::HostAndPath { authority, path } => {
                let scheme_ok = matches!(got.scheme(), "http" | "https");
                let host = got.host_str().unwrap_or_default();
                let got_authority = match got.port() {
                    Some(p) => format!("{host}:{p}"),
                    None => host.to_string(),
                };
                scheme_ok
                    && got.username().is_empty()
                    && got.password().is_none()
                    && got_authority.eq_ignore_ascii_case(authority)
                    && got.path() == path
            }
        }
    }
}

/// What the proof must say.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    /// The request's method, e.g. "GET".
    pub htm: &'a str,
    pub htu: Htu,
    /// The access token presented with the proof, if any: `ath` must be its hash.
    pub access_token: Option<&'a str>,
    /// The checker's clock, Unix seconds.
    pub now: u64,
    /// How far `iat` may be from `now`, either way, in seconds.
    pub window: u64,
}

/// A proof that passed every check here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// RFC 7638 thumbprint of the key that signed it.
    pub thumbprint: String,
    /// Its unique id: the caller refuses one seen before.
    pub jti: String,
    /// Its `iat`, Unix seconds.
    pub iat: u64,
}

#[derive(Deserialize)]
struct Header {
    typ: Option<String>,
    alg: Option<String>,
    jwk: Option<serde_json::Value>,
    crit: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Claims {
    jti: Option<String>,
    htm: Option<String>,
    htu: Option<String>,
    iat: Option<serde_json::Number>,
    ath: Option<String>,
}

/// Checks `proof` against `expected`; see the module docs for the order.
pub fn check(proof: &str, expected: &Expected<'_>) -> Result<Verified, ProofError> {
    if proof.len() > MAX_PROOF_LEN {
        return Err(ProofError::TooLong);
    }
    let mut parts = proof.split('.');
    let (Some(h64), Some(c64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ProofError::Malformed("not three dot-separated parts"));
    };
    let header_bytes = unb64(h64).ok_or(ProofError::Malformed("header is not base64url"))?;
    let claims_bytes = unb64(c64).ok_or(ProofError::Malformed("claims are not base64url"))?;
    let sig = unb64(s64).ok_or(ProofError::Malformed("signature is not base64url"))?;
    let header: Header = serde_json::from_slice(&header_bytes)
        .map_err(|_| ProofError::Malformed("header is not a JSON object"))?;
    if !header
        .typ
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case(TYP))
    {
        return Err(ProofError::Typ);
    }
    if header.alg.as_deref() != Some(ALG) {
        return Err(ProofError::Algorithm);
    }
    if header.crit.is_some() {
        return Err(ProofError::Malformed("header has crit"));
    }
    let jwk = header
        .jwk
        .as_ref()
        .ok_or(ProofError::Key("no jwk in the header"))?;
    let jwk = PublicJwk::from_value(jwk).map_err(ProofError::Key)?;
    let point = jwk.point().ok_or(ProofError::Key("bad coordinates"))?;
    let signed = &proof[..h64.len() + 1 + c64.len()];
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
        .verify(signed.as_bytes(), &sig)
        .map_err(|_| ProofError::Signature)?;

    let claims: Claims = serde_json::from_slice(&claims_bytes)
        .map_err(|_| ProofError::Malformed("claims are not a JSON object"))?;
    let jti = claims
        .jti
        .filter(|j| !j.is_empty() && j.len() <= MAX_JTI)
        .ok_or(ProofError::Malformed("jti missing, empty or too long"))?;
    let htm = claims.htm.ok_or(ProofError::Malformed("htm missing"))?;
    if htm != expected.htm {
        return Err(ProofError::Htm(expected.htm.to_string()));
    }
    let htu = claims.htu.ok_or(ProofError::Malformed("htu missing"))?;
    if !expected.htu.matches(&htu) {
        return Err(ProofError::Htu);
    }
    let iat = claims
        .iat
        .and_then(|n| n.as_f64())
        .filter(|f| f.is_finite() && *f >= 0.0 && *f < 1e15)
        .ok_or(ProofError::Malformed("iat missing or not a time"))? as u64;
    let skew = iat as i64 - expected.now as i64;
    if skew.unsigned_abs() > expected.window {
        return Err(ProofError::Iat(skew, expected.window));
    }
    if let Some(token) = expected.access_token {
        if claims.ath.as_deref() != Some(ath(token).as_str()) {
            return Err(ProofError::Ath);
        }
    }
    Ok(Verified {
        thumbprint: jwk.thumbprint(),
        jti,
        iat,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProofKey;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;
    const URL: &str = "https://relay.example.com/v1/tunnel";

    fn expected(token: Option<&str>) -> Expected<'_> {
        Expected {
            htm: "GET",
            htu: Htu::Exact(Url::parse(URL).unwrap()),
            access_token: token,
            now: NOW,
            window: 30,
        }
    }

    fn key() -> ProofKey {
        ProofKey::generate().unwrap()
    }

    /// The fuzz corpus of the `dpop` target (`fuzz/corpus/dpop`), as
    /// regression tests: no input there may panic; its `good` seed (made
    /// with node's crypto, not this crate) passes.
    #[test]
    fn fuzz_corpus_replays_without_panic() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/dpop");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            crate::fuzzing::run(&bytes);
            if path.file_name().is_some_and(|f| f == "good") {
                let e = Expected {
                    htm: "GET",
                    htu: Htu::Exact(Url::parse(URL).unwrap()),
                    access_token: Some("token"),
                    now: NOW,
                    window: 30,
                };
                check(std::str::from_utf8(&bytes).unwrap(), &e).unwrap();
            }
            n += 1;
        }
        assert!(n > 0, "empty corpus in {}", dir.display());
    }

    #[test]
    fn a_good_proof_passes_and_names_its_key() {
        let k = key();
        let p = k.proof("GET", URL, Some("tok"), None, NOW).unwrap();
        let v = check(&p, &expected(Some("tok"))).unwrap();
        assert_eq!(v.thumbprint, k.thumbprint());
        assert_eq!(v.iat, NOW);
        assert!(!v.jti.is_empty());
        // Two proofs, two ids.
        let q = k.proof("GET", URL, Some("tok"), None, NOW).unwrap();
        assert_ne!(check(&q, &expected(Some("tok"))).unwrap().jti, v.jti);
        // The URL as a different but equal spelling, with a query: fine.
        let p = k
            .proof(
                "GET",
                "HTTPS://Relay.Example.com:443/v1/tunnel?x=1#f",
                Some("tok"),
                None,
                NOW,
            )
            .unwrap();
        assert!(check(&p, &expected(Some("tok"))).is_ok());
    }

    #[test]
    fn wrong_method_url_token_or_time_is_refused() {
        let k = key();
        let err = |p: String, e: &Expected<'_>| check(&p, e).unwrap_err().code();
        let want = expected(Some("tok"));
        let proof = |htm, htu, tok, iat| k.proof(htm, htu, tok, None, iat).unwrap();
        assert_eq!(err(proof("POST", URL, Some("tok"), NOW), &want), "dpop_htm");
        assert_eq!(err(proof("get", URL, Some("tok"), NOW), &want), "dpop_htm");
        for htu in [
            "https://relay.example.com/v1/catalog",
            "https://evil.example.com/v1/tunnel",
            "http://relay.example.com/v1/tunnel",
            "https://relay.example.com:8443/v1/tunnel",
            "not a url",
        ] {
            assert_eq!(
                err(proof("GET", htu, Some("tok"), NOW), &want),
                "dpop_htu",
                "{htu}"
            );
        }
        assert_eq!(
            err(proof("GET", URL, Some("other"), NOW), &want),
            "dpop_ath"
        );
        assert_eq!(err(proof("GET", URL, None, NOW), &want), "dpop_ath");
        assert_eq!(
            err(proof("GET", URL, Some("tok"), NOW - 31), &want),
            "dpop_iat"
        );
        assert_eq!(
            err(proof("GET", URL, Some("tok"), NOW + 31), &want),
            "dpop_iat"
        );
        assert!(check(&proof("GET", URL, Some("tok"), NOW - 30), &want).is_ok());
        // Without a token, ath is not looked at.
        assert!(check(&proof("GET", URL, None, NOW), &expected(None)).is_ok());
    }

    #[test]
    fn host_and_path_rule_ignores_scheme_only() {
        let k = key();
        let want = Expected {
            htu: Htu::HostAndPath {
                authority: "127.0.0.1:8443".into(),
                path: "/v1/tunnel".into(),
            },
            ..expected(None)
        };
        for (htu, ok) in [
            ("http://127.0.0.1:8443/v1/tunnel", true),
            ("https://127.0.0.1:8443/v1/tunnel?q", true),
            ("https://127.0.0.1:8444/v1/tunnel", false),
            ("https://127.0.0.1:8443/v1/catalog", false),
            ("wss://127.0.0.1:8443/v1/tunnel", false),
            ("https://user@127.0.0.1:8443/v1/tunnel", false),
        ] {
            let p = k.proof("GET", htu, None, None, NOW).unwrap();
            assert_eq!(check(&p, &want).is_ok(), ok, "{htu}");
        }
    }

    /// Hostile proofs: oversized, bad base64, alg none / HS256, a private
    /// key in the header, a signature by another key, duplicate claims.
    #[test]
    fn hostile_proofs_are_refused() {
        let k = key();
        let want = expected(None);
        let code = |p: &str| check(p, &want).unwrap_err().code();
        let good_claims = json!({"jti":"j","htm":"GET","htu":URL,"iat":NOW});
        let header = json!({"typ":"dpop+jwt","alg":"ES256","jwk":k.jwk()});
        let e = |v: &serde_json::Value| crate::b64(v.to_string().as_bytes());

        assert_eq!(code(&"a".repeat(MAX_PROOF_LEN + 1)), "dpop_too_long");
        assert_eq!(code(""), "dpop_malformed");
        assert_eq!(code("a.b"), "dpop_malformed");
        assert_eq!(code("a.b.c.d"), "dpop_malformed");
        assert_eq!(code("%%%.e30.AAAA"), "dpop_malformed");
        assert_eq!(code(&format!("{}.e30.AA==", e(&header))), "dpop_malformed");
        assert_eq!(
            code(&format!("{}.e30.AAAA", crate::b64(b"[1,2"))),
            "dpop_malformed"
        );

        // alg none, unsigned; HS256 "signed" with the public key as secret.
        let none = json!({"typ":"dpop+jwt","alg":"none","jwk":k.jwk()});
        assert_eq!(
            code(&format!("{}.{}.", e(&none), e(&good_claims))),
            "dpop_algorithm"
        );
        let hs = json!({"typ":"dpop+jwt","alg":"HS256","jwk":k.jwk()});
        assert_eq!(code(&k.sign(&hs, &good_claims).unwrap()), "dpop_algorithm");
        // Wrong typ: an access token's.
        let at = json!({"typ":"at+jwt","alg":"ES256","jwk":k.jwk()});
        assert_eq!(code(&k.sign(&at, &good_claims).unwrap()), "dpop_typ");
        let no_typ = json!({"alg":"ES256","jwk":k.jwk()});
        assert_eq!(code(&k.sign(&no_typ, &good_claims).unwrap()), "dpop_typ");
        // A private key in the JWK, or none at all, or crit.
        let mut private = json!(k.jwk());
        private["d"] = "c2VjcmV0".into();
        let h = json!({"typ":"dpop+jwt","alg":"ES256","jwk":private});
        assert_eq!(code(&k.sign(&h, &good_claims).unwrap()), "dpop_key");
        let h = json!({"typ":"dpop+jwt","alg":"ES256"});
        assert_eq!(code(&k.sign(&h, &good_claims).unwrap()), "dpop_key");
        let h = json!({"typ":"dpop+jwt","alg":"ES256","jwk":k.jwk(),"crit":["x"]});
        assert_eq!(code(&k.sign(&h, &good_claims).unwrap()), "dpop_malformed");
        // The header names one key, another signed: mismatched key.
        let other = key();
        assert_eq!(
            code(&other.sign(&header, &good_claims).unwrap()),
            "dpop_signature"
        );
        // A point not on the curve.
        let mut off = json!(k.jwk());
        off["y"] = k.jwk().x.clone().into();
        let h = json!({"typ":"dpop+jwt","alg":"ES256","jwk":off});
        assert_eq!(code(&k.sign(&h, &good_claims).unwrap()), "dpop_signature");
        // Tampered claims after signing.
        let p = k.sign(&header, &good_claims).unwrap();
        let mut parts: Vec<&str> = p.split('.').collect();
        let forged = e(&json!({"jti":"j","htm":"GET","htu":URL,"iat":NOW + 1}));
        parts[1] = &forged;
        assert_eq!(code(&parts.join(".")), "dpop_signature");
        // Claims missing or of the wrong type, or given twice.
        for bad in [
            json!({"htm":"GET","htu":URL,"iat":NOW}),
            json!({"jti":"","htm":"GET","htu":URL,"iat":NOW}),
            json!({"jti":"j".repeat(MAX_JTI + 1),"htm":"GET","htu":URL,"iat":NOW}),
            json!({"jti":"j","htu":URL,"iat":NOW}),
            json!({"jti":"j","htm":"GET","iat":NOW}),
            json!({"jti":"j","htm":"GET","htu":URL}),
            json!({"jti":"j","htm":"GET","htu":URL,"iat":"now"}),
            json!({"jti":"j","htm":"GET","htu":URL,"iat":-5}),
            json!({"jti":7,"htm":"GET","htu":URL,"iat":NOW}),
        ] {
            assert_eq!(
                code(&k.sign(&header, &bad).unwrap()),
                "dpop_malformed",
                "{bad}"
            );
        }
        let twice = format!(r#"{{"jti":"a","jti":"b","htm":"GET","htu":"{URL}","iat":{NOW}}}"#);
        let input = format!("{}.{}", e(&header), crate::b64(twice.as_bytes()));
        let p = k.sign(&header, &json!({})).unwrap();
        let sig = p.rsplit('.').next().unwrap();
        // (signature over other bytes: refused before the claims are read)
        assert_eq!(code(&format!("{input}.{sig}")), "dpop_signature");
    }
}
