//! Throwaway credentials for a bench run: a self-signed TLS certificate for
//! 127.0.0.1, and an Ed25519 signing key whose public half the relay reads
//! from `identity.jwks_file`, with a token it signed (as `gangway demo` does).

use std::path::{Path, PathBuf};

use base64::Engine;

pub const ISSUER: &str = "https://bench.gangway.invalid";
pub const AUDIENCE: &str = "gangway-bench";

/// Files written by [`write`].
pub struct Credentials {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub jwks: PathBuf,
    pub token: PathBuf,
    /// The certificate and key in memory, for in-process TLS (muxbench).
    pub cert_pem: String,
    pub key_pem: String,
    /// Mints tokens for other subjects (the sessions bench).
    pub signer: Signer,
}

/// A self-signed certificate for 127.0.0.1 / localhost: (cert PEM, key PEM).
pub fn self_signed() -> anyhow::Result<(String, String)> {
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    Ok((ck.cert.pem(), ck.key_pair.serialize_pem()))
}

/// Signs tokens for any subject with the key whose public half is in
/// `jwks.json` (so one run can open sessions as many users).
pub struct Signer {
    key: jsonwebtoken::EncodingKey,
}

impl Signer {
    /// A token for `subject` in the `developers` group, valid 12 hours.
    pub fn token(&self, subject: &str) -> anyhow::Result<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some("bench".into());
        Ok(jsonwebtoken::encode(
            &header,
            &serde_json::json!({
                "iss": ISSUER, "aud": AUDIENCE, "sub": subject,
                "groups": ["developers"], "iat": now, "exp": now + 12 * 3600,
            }),
            &self.key,
        )?)
    }
}

/// Writes `relay.crt`, `relay.key`, `jwks.json` and `token` (for
/// `bench-user`) into `dir`; the signer mints more.
pub fn write(dir: &Path) -> anyhow::Result<Credentials> {
    let (cert_pem, key_pem) = self_signed()?;
    let signing = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
    let jwks = serde_json::json!({
        "keys": [{
            "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": "bench",
            "x": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signing.public_key_raw()),
        }]
    });
    let signer = Signer {
        key: jsonwebtoken::EncodingKey::from_ed_der(&signing.serialize_der()),
    };
    let token = signer.token("bench-user")?;
    let creds = Credentials {
        cert: dir.join("relay.crt"),
        key: dir.join("relay.key"),
        jwks: dir.join("jwks.json"),
        token: dir.join("token"),
        cert_pem,
        key_pem,
        signer,
    };
    std::fs::write(&creds.cert, &creds.cert_pem)?;
    std::fs::write(&creds.key, &creds.key_pem)?;
    std::fs::write(&creds.jwks, serde_json::to_vec_pretty(&jwks)?)?;
    std::fs::write(&creds.token, token)?;
    Ok(creds)
}

impl Credentials {
    /// The start of a bench relay's config: loopback listener, these TLS
    /// files and token keys, the audit log at `audit`. Sections follow.
    pub fn relay_config_head(&self, audit: &std::path::Path) -> String {
        format!(
            r#"listen = "127.0.0.1:0"

[tls]
cert = "{cert}"
key = "{key}"

[identity]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
client_id = "gangway-bench"
algorithms = ["EdDSA"]
jwks_file = "{jwks}"

[audit]
path = "{audit}"
"#,
            cert = self.cert.display(),
            key = self.key.display(),
            jwks = self.jwks.display(),
            audit = audit.display(),
        )
    }
}
