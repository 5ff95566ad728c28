//! Tokens the relay must refuse, each with a 401 that says why, an audit
//! line, and no byte to any backend. Tokens come from a real OIDC provider
//! (oidc-provider); the bad ones are real tokens used wrongly or tampered,
//! and an expired one is minted with the test's own key (so nothing waits
//! for a clock to run out).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use base64::Engine;
use gangway_tests::gangway::{
    bin_path, write_relay_config, AgentProcess, CountingBackend, IdentitySpec, RelayProcess,
    ServiceSpec, TestCert,
};
use gangway_tests::peers::oidc::{OidcProvider, CI_DEV, DEFAULT_AUDIENCE};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

struct Setup {
    cert: TestCert,
    backend: CountingBackend,
    dirs: Vec<tempfile::TempDir>,
}

impl Setup {
    fn new() -> Result<Self> {
        Ok(Self {
            cert: TestCert::new()?,
            backend: CountingBackend::start()?,
            dirs: Vec::new(),
        })
    }

    fn relay(&mut self, identity: IdentitySpec<'_>) -> Result<RelayProcess> {
        let dir = tempfile::tempdir()?;
        let config = write_relay_config(
            dir.path(),
            "127.0.0.1:0".parse()?,
            &self.cert,
            &identity,
            &[
                ServiceSpec {
                    name: "bitbucket",
                    kind: "http",
                    backends: vec![self.backend.addr.to_string()],
                    allow_groups: None,
                },
                // One connection per stream: the barrier at the end.
                ServiceSpec {
                    name: "bitbucket-ssh",
                    kind: "tcp",
                    backends: vec![self.backend.addr.to_string()],
                    allow_groups: None,
                },
            ],
        )?;
        let relay = RelayProcess::start(&config)?;
        self.dirs.push(dir);
        Ok(relay)
    }

    fn http(&self) -> Result<reqwest::Client> {
        let pem = std::fs::read(&self.cert.cert)?;
        Ok(reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
            .build()?)
    }
}

/// A tunnel upgrade request with `token`; returns status, WWW-Authenticate, body.
async fn upgrade(
    http: &reqwest::Client,
    relay: &RelayProcess,
    token: Option<&str>,
) -> Result<(u16, String, String)> {
    let mut req = http
        .get(format!("{}/v1/tunnel", relay.url()))
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let www = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    Ok((status, www, resp.text().await?))
}

fn assert_refused(
    relay: &RelayProcess,
    (status, www, body): (u16, String, String),
    reason: &str,
    code: &str,
) {
    assert_eq!(status, 401, "{reason}: body {body:?}");
    assert!(body.contains(reason), "want {reason:?} in {body:?}");
    assert!(www.starts_with("Bearer error=\"invalid_token\""), "{www}");
    let audit = relay.audit();
    assert!(
        audit
            .iter()
            .any(|e| e["event"] == "auth_failed" && e["code"] == code),
        "no auth_failed/{code} audit line in {audit:?}"
    );
    // Tokens never reach the audit log.
    let raw = std::fs::read_to_string(relay.audit_path()).unwrap_or_default();
    assert!(!raw.contains("eyJ"), "a JWT leaked into the audit log");
}

fn tamper_signature(token: &str) -> String {
    let (head, sig) = token.rsplit_once('.').unwrap();
    let mut bytes = B64.decode(sig).unwrap();
    bytes[10] ^= 0x55;
    format!("{head}.{}", B64.encode(bytes))
}

fn with_header(token: &str, header: serde_json::Value, signature: &str) -> String {
    let payload = token.split('.').nth(1).unwrap();
    format!("{}.{payload}.{signature}", B64.encode(header.to_string()))
}

/// A signing key of the test's own (Ed25519), and the JWKS that publishes it.
struct OwnKey {
    key: jsonwebtoken::EncodingKey,
    jwks: serde_json::Value,
}

const OWN_ISSUER: &str = "https://own-key.gangway.test";
const OWN_KID: &str = "test-key";

impl OwnKey {
    fn generate() -> Result<Self> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        Ok(Self {
            key: jsonwebtoken::EncodingKey::from_ed_der(&pair.serialize_der()),
            jwks: serde_json::json!({"keys": [{
                "kty": "OKP",
                "crv": "Ed25519",
                "alg": "EdDSA",
                "use": "sig",
                "kid": OWN_KID,
                "x": B64.encode(pair.public_key_raw()),
            }]}),
        })
    }

    /// An access token shaped like the provider's (`typ: at+jwt`, the
    /// relay's audience, CI_DEV's claims) that expires `exp_in_secs` from
    /// now (negative: expired that long ago).
    fn token(&self, exp_in_secs: i64) -> Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.typ = Some("at+jwt".into());
        header.kid = Some(OWN_KID.into());
        let claims = serde_json::json!({
            "iss": OWN_ISSUER,
            "aud": DEFAULT_AUDIENCE,
            "sub": CI_DEV,
            "client_id": CI_DEV,
            "groups": ["developers"],
            "jti": format!("own-{now}-{exp_in_secs}"),
            "iat": now - 600,
            "exp": now + exp_in_secs,
        });
        Ok(jsonwebtoken::encode(&header, &claims, &self.key)?)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tokens_get_401_with_reason_and_audit_and_reach_nothing() -> Result<()> {
    let idp = OidcProvider::start(DEFAULT_AUDIENCE, 60)?;
    let mut s = Setup::new()?;
    let http = s.http()?;
    let good = idp.client_credentials_token(CI_DEV).await?;

    let main = s.relay(IdentitySpec {
        issuer: idp.issuer(),
        audience: DEFAULT_AUDIENCE,
        leeway_secs: 0,
        jwks_file: None,
    })?;
    // Sanity: the good token is accepted (101 Switching Protocols).
    assert_eq!(upgrade(&http, &main, Some(&good)).await?.0, 101);

    assert_refused(
        &main,
        upgrade(&http, &main, None).await?,
        "no bearer token",
        "missing",
    );
    assert_refused(
        &main,
        upgrade(&http, &main, Some(&tamper_signature(&good))).await?,
        "bad signature",
        "bad_signature",
    );
    assert_refused(
        &main,
        upgrade(&http, &main, Some("not-a-jwt")).await?,
        "malformed token",
        "malformed",
    );
    // alg "none": unsigned token with real claims.
    let none = with_header(
        &good,
        serde_json::json!({"alg": "none", "typ": "at+jwt"}),
        "",
    );
    assert_refused(
        &main,
        upgrade(&http, &main, Some(&none)).await?,
        "malformed token",
        "malformed",
    );
    // Algorithm confusion: HS256 "signed" with the provider's public key.
    let kid = jsonwebtoken::decode_header(&good)?.kid.unwrap();
    let hs = with_header(
        &good,
        serde_json::json!({"alg": "HS256", "typ": "at+jwt", "kid": kid}),
        "c2lnbmF0dXJl",
    );
    assert_refused(
        &main,
        upgrade(&http, &main, Some(&hs)).await?,
        "algorithm HS256 is not accepted",
        "algorithm",
    );

    // Wrong audience: a relay that expects another audience.
    let other_aud = s.relay(IdentitySpec {
        issuer: idp.issuer(),
        audience: "https://some-other-relay.example",
        leeway_secs: 0,
        jwks_file: None,
    })?;
    assert_refused(
        &other_aud,
        upgrade(&http, &other_aud, Some(&good)).await?,
        "wrong audience",
        "wrong_audience",
    );

    // Wrong issuer: the provider's real keys, but the relay trusts another issuer.
    let jwks_dir = tempfile::tempdir()?;
    let jwks_path = jwks_dir.path().join("jwks.json");
    std::fs::write(
        &jwks_path,
        reqwest::get(idp.jwks_uri()).await?.text().await?,
    )?;
    let other_iss = s.relay(IdentitySpec {
        issuer: "https://not-the-issuer.example",
        audience: DEFAULT_AUDIENCE,
        leeway_secs: 0,
        jwks_file: Some(&jwks_path),
    })?;
    assert_refused(
        &other_iss,
        upgrade(&http, &other_iss, Some(&good)).await?,
        "wrong issuer",
        "wrong_issuer",
    );

    // Expired: a token that ran out a minute ago (leeway 0), signed by a
    // key the relay trusts. The same key's unexpired token is accepted, so
    // expiry alone is the reason.
    let own = OwnKey::generate()?;
    let own_jwks = jwks_dir.path().join("own-jwks.json");
    std::fs::write(&own_jwks, own.jwks.to_string())?;
    let own_relay = s.relay(IdentitySpec {
        issuer: OWN_ISSUER,
        audience: DEFAULT_AUDIENCE,
        leeway_secs: 0,
        jwks_file: Some(&own_jwks),
    })?;
    assert_eq!(
        upgrade(&http, &own_relay, Some(&own.token(300)?)).await?.0,
        101
    );
    assert_refused(
        &own_relay,
        upgrade(&http, &own_relay, Some(&own.token(-60)?)).await?,
        "token expired",
        "expired",
    );

    // The catalog is guarded the same way.
    let resp = http
        .get(format!("{}/v1/catalog", main.url()))
        .send()
        .await?;
    assert_eq!(resp.status(), 401);
    // Discovery and health are open.
    let disc: serde_json::Value = http
        .get(format!("{}/.well-known/gangway", main.url()))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(disc["issuer"], idp.issuer());
    assert_eq!(disc["audience"], DEFAULT_AUDIENCE);
    assert_eq!(disc["client_id"], "gangway");

    assert_eq!(
        s.backend.connections(),
        0,
        "a refused caller reached the backend"
    );
    // A barrier: a stream the relay allows reaches the backend, and it is
    // the backend's only connection (nothing refused arrived late).
    let token_dir = tempfile::tempdir()?;
    let token = token_dir.path().join("token");
    std::fs::write(&token, &good)?;
    let agent = AgentProcess::start(&main.url(), &s.cert.cert, &token, &["bitbucket-ssh"], &[])?;
    let _allowed = tokio::net::TcpStream::connect(agent.addr("bitbucket-ssh")).await?;
    let reached = s
        .backend
        .wait_for_connections(1, Duration::from_secs(20))
        .await?;
    assert_eq!(reached, 1, "a refused caller reached the backend");
    Ok(())
}

/// The agent with a token the relay refuses: a clear message, non-zero exit.
#[tokio::test(flavor = "multi_thread")]
async fn agent_with_refused_token_exits_with_reason() -> Result<()> {
    let idp = OidcProvider::start(DEFAULT_AUDIENCE, 60)?;
    let mut s = Setup::new()?;
    let relay = s.relay(IdentitySpec {
        issuer: idp.issuer(),
        audience: DEFAULT_AUDIENCE,
        leeway_secs: 0,
        jwks_file: None,
    })?;
    let dir = tempfile::tempdir()?;
    let token = dir.path().join("t");
    std::fs::write(
        &token,
        tamper_signature(&idp.client_credentials_token(CI_DEV).await?),
    )?;
    let out = tokio::process::Command::new(bin_path("gangway")?)
        .args(["up", "--relay", &relay.url(), "--ca-file"])
        .arg(&s.cert.cert)
        .arg("--token-file")
        .arg(&token)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out).await??;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the relay refused the access token: invalid token: bad signature"),
        "{err}"
    );
    Ok(())
}

/// A broken relay config: the relay exits non-zero naming file, key, reason.
#[test]
fn malformed_relay_config_names_file_key_and_reason() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cases: &[(&str, &str)] = &[
        (
            "listen = \"127.0.0.1:0\"\n[tls]\ninsecure_plaintext = true\n[identity]\nissuer = \"https://idp.example\"\naudience = \"a\"\nclient_id = \"c\"\n[[service]]\nname = \"bitbucket\"\nkind = \"http\"\nlocal_port = 7990\nbackends = []\n",
            "service[0].backends: must list at least one backend",
        ),
        (
            "listen = \"127.0.0.1:0\"\n[identity]\nissuer = \"https://idp.example\"\naudience = \"a\"\nclient_id = \"c\"\n",
            "tls: missing",
        ),
        (
            "listen = \"127.0.0.1:0\"\n[tls]\ninsecure_plaintext = true\n[identity]\nissuer = \"https://idp.example\"\naudience = \"a\"\nclient_id = \"c\"\nalgorithms = [\"HS256\"]\n",
            "identity.algorithms[0]: HS256 is a shared-secret algorithm",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("relay{i}.toml"));
        std::fs::write(&path, text)?;
        let out = std::process::Command::new(bin_path("gangway-relay")?)
            .arg("--config")
            .arg(&path)
            .output()?;
        assert!(!out.status.success(), "case {i} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{}: {want}", path.display())),
            "case {i}: {err}"
        );
    }
    // A missing file is named too.
    let missing = dir.path().join("nope.toml");
    let out = std::process::Command::new(bin_path("gangway-relay")?)
        .arg("--config")
        .arg(&missing)
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains(&format!("{}: (file): cannot read", missing.display())));
    Ok(())
}
