//! The OIDC peer on its own: the client_credentials tokens it issues carry
//! what the relay will check (issuer, audience, subject, groups, RS256,
//! `at+jwt`). If this fails, the end-to-end tests cannot pass.

use anyhow::{bail, ensure, Context, Result};
use gangway_tests::peers::oidc::{OidcProvider, CI_DEV, CI_READONLY};
use serde_json::{json, Value};

const AUDIENCE: &str = "https://relay.gangway.test";
const TTL_SECS: u64 = 30;

/// Decodes unpadded base64url (RFC 4648 §5), as used in JWTs.
fn base64url_decode(input: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in input.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => bail!("invalid base64url byte {c:#04x}"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

/// Splits a JWS compact serialization into (header, payload) JSON, without
/// verifying anything: this test only inspects what the peer issues.
fn jwt_parts(token: &str) -> Result<(Value, Value)> {
    let parts: Vec<&str> = token.split('.').collect();
    ensure!(parts.len() == 3, "not a JWS compact token: {token}");
    let decode = |part: &str| -> Result<Value> {
        serde_json::from_slice(&base64url_decode(part)?).context("JWT part is not JSON")
    };
    Ok((decode(parts[0])?, decode(parts[1])?))
}

#[test]
fn base64url_decoder_matches_rfc4648_vectors() {
    for (encoded, plain) in [
        ("", ""),
        ("Zg", "f"),
        ("Zm8", "fo"),
        ("Zm9v", "foo"),
        ("Zm9vYg", "foob"),
        ("Zm9vYmE", "fooba"),
        ("Zm9vYmFy", "foobar"),
        ("-_8", "\u{fb}\u{ff}"),
    ] {
        let decoded = base64url_decode(encoded).unwrap();
        if encoded == "-_8" {
            assert_eq!(decoded, [0xfb, 0xff]);
        } else {
            assert_eq!(decoded, plain.as_bytes(), "{encoded}");
        }
    }
}

#[tokio::test]
async fn client_credentials_tokens_carry_issuer_audience_subject_and_groups() -> Result<()> {
    let idp = OidcProvider::start(AUDIENCE, TTL_SECS)?;
    assert!(
        idp.issuer().starts_with("http://127.0.0.1:"),
        "{}",
        idp.issuer()
    );

    let (header, claims) = jwt_parts(&idp.client_credentials_token(CI_DEV).await?)?;
    assert_eq!(header["alg"], "RS256", "header {header}");
    assert_eq!(header["typ"], "at+jwt", "header {header}");
    assert!(header["kid"].is_string(), "header {header}");
    assert_eq!(claims["iss"], idp.issuer(), "claims {claims}");
    assert_eq!(claims["aud"], AUDIENCE, "claims {claims}");
    assert_eq!(claims["sub"], CI_DEV, "claims {claims}");
    assert_eq!(claims["client_id"], CI_DEV, "claims {claims}");
    assert_eq!(claims["groups"], json!(["developers"]), "claims {claims}");
    let (iat, exp) = (claims["iat"].as_u64(), claims["exp"].as_u64());
    assert_eq!(
        exp.zip(iat).map(|(e, i)| e - i),
        Some(TTL_SECS),
        "claims {claims}"
    );

    let (_, claims) = jwt_parts(&idp.client_credentials_token(CI_READONLY).await?)?;
    assert_eq!(claims["sub"], CI_READONLY, "claims {claims}");
    assert_eq!(claims["groups"], json!(["readers"]), "claims {claims}");

    // The key that signed the token is published at the JWKS endpoint.
    let jwks: Value = reqwest::get(idp.jwks_uri()).await?.json().await?;
    assert!(
        jwks["keys"].as_array().is_some_and(|keys| keys
            .iter()
            .any(|k| k["kid"] == header["kid"] && k["kty"] == "RSA")),
        "jwks {jwks}"
    );

    // A wrong client is refused, not silently given a token.
    let err = idp.client_credentials_token("nobody").await.unwrap_err();
    assert!(format!("{err:#}").contains("invalid_client"), "{err:#}");
    Ok(())
}
