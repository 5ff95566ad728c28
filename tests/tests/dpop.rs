//! Tokens bound to the laptop (DPoP, RFC 9449; issue 19), with real peers:
//! the test OIDC provider with DPoP nonces required, Redis shared by two
//! relays, GNOME Keyring holding the agent's key and tokens, Chromium
//! approving a device sign-in, and the real `gangway` and `gangway-relay`.
//!
//! Relay A requires DPoP (`identity.require_dpop`, `public_url` its own
//! URL); relay B stands behind the same public URL (as two relays behind
//! one balancer would), shares A's Redis and requires DPoP for one service
//! only. The claims:
//!
//! - sign-in and refresh give tokens bound to the key kept in the keychain
//!   (`cnf.jkt` is its RFC 7638 thumbprint), and `gangway status` says so;
//! - the tunnel works with them, across an in-band refresh;
//! - the access token copied off the laptop opens nothing: as Bearer, with
//!   the DPoP scheme but no proof, with a proof by another key, with a
//!   replayed proof, with a proof for another URL or method or token, or
//!   a stale one — each a 401 with `WWW-Authenticate: DPoP …` and an audit
//!   line naming why; an unbound token is refused where DPoP is required;
//! - a proof used at one relay is refused at the other.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use base64::Engine;
use gangway_dpop::ProofKey;
use gangway_tests::gangway::{
    bin_path, start_device_login, write_relay_config, IdentitySpec, RelayProcess, ServiceSpec,
    TestCert,
};
use gangway_tests::peers::browser::Browser;
use gangway_tests::peers::desktop::EchoServer;
use gangway_tests::peers::keychain::SecretService;
use gangway_tests::peers::oidc::{OidcProvider, CI_DEV, DEFAULT_AUDIENCE};
use gangway_tests::peers::process::{assert_success, startup_timeout, Finished, Process};
use gangway_tests::peers::redis::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Access token lifetime: short, so that `gangway up` refreshes in-band
/// (at 75-85 % of it) within the test.
const TTL_SECS: u64 = 20;

struct World {
    keychain: SecretService,
    idp: OidcProvider,
    cert: TestCert,
    _redis: RedisServer,
    _echo: EchoServer,
    dir: tempfile::TempDir,
    a: RelayProcess,
    b: RelayProcess,
}

impl World {
    async fn start() -> Result<Self> {
        let keychain = SecretService::start()?;
        let cert = TestCert::new()?;
        let dir = tempfile::tempdir()?;
        let idp =
            OidcProvider::start_with_settings(DEFAULT_AUDIENCE, TTL_SECS, &[("DPOP_NONCE", "1")])?;
        let redis = RedisServer::start()?;
        let echo = EchoServer::start()?;
        let services = |names: &[&'static str]| -> Vec<ServiceSpec<'static>> {
            names
                .iter()
                .map(|n| ServiceSpec {
                    name: n,
                    kind: "tcp",
                    backends: vec![echo.addr.to_string()],
                    allow_groups: None,
                })
                .collect()
        };
        let identity = IdentitySpec {
            issuer: idp.issuer(),
            audience: DEFAULT_AUDIENCE,
            leeway_secs: 0,
            jwks_file: None,
        };
        let mut relays = Vec::new();
        for name in ["a", "b"] {
            let rdir = dir.path().join(name);
            std::fs::create_dir_all(&rdir)?;
            let config = write_relay_config(
                &rdir,
                "127.0.0.1:0".parse()?,
                &cert,
                &identity,
                &services(&["echo", "open"]),
            )?;
            let mut text = std::fs::read_to_string(&config)?;
            text += &format!("\n[redis]\nurl = {:?}\ntimeout_ms = 1000\n", redis.url());
            std::fs::write(&config, text)?;
            relays.push((RelayProcess::start(&config)?, config));
        }
        let (b, b_config) = relays.pop().context("relay b")?;
        let (a, a_config) = relays.pop().context("relay a")?;
        // Now that A's port is known: A requires DPoP everywhere and is its
        // own public URL; B is behind the same public URL and requires DPoP
        // for `echo` only. Applied by a reload (SIGHUP).
        let public = format!("public_url = {:?}\n", a.url());
        let text = std::fs::read_to_string(&a_config)?;
        let text =
            public.clone() + &text.replacen("[identity]\n", "[identity]\nrequire_dpop = true\n", 1);
        std::fs::write(&a_config, text)?;
        let text = std::fs::read_to_string(&b_config)?;
        let echo_block = "name = \"echo\"\nkind = \"tcp\"\n";
        ensure!(
            text.contains(echo_block),
            "unexpected relay config:\n{text}"
        );
        let text =
            public + &text.replacen(echo_block, &format!("{echo_block}require_dpop = true\n"), 1);
        std::fs::write(&b_config, text)?;
        for relay in [&a, &b] {
            let st = Command::new("kill")
                .arg("-HUP")
                .arg(relay.pid().to_string())
                .status()?;
            ensure!(st.success(), "kill -HUP failed");
        }
        let mut world = World {
            keychain,
            idp,
            cert,
            _redis: redis,
            _echo: echo,
            dir,
            a,
            b,
        };
        for relay in [&mut world.a, &mut world.b] {
            relay
                .process
                .wait_line(
                    "the reload",
                    startup_timeout(Duration::from_secs(10)),
                    |l| l.contains("reloaded the config"),
                )
                .await?;
        }
        Ok(world)
    }

    /// `gangway SUB --relay A --ca-file CERT ARGS…` with the test keychain.
    fn gangway(&self, sub: &str, args: &[&str]) -> Result<Command> {
        let mut cmd = Command::new(bin_path("gangway")?);
        cmd.arg(sub)
            .args(["--relay", &self.a.url(), "--ca-file"])
            .arg(&self.cert.cert)
            .args(args)
            .envs(self.keychain.env())
            .env("TMPDIR", self.tmpdir())
            .env("RUST_LOG", "info")
            .env_remove("GANGWAY_TOKEN")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY");
        Ok(cmd)
    }

    fn tmpdir(&self) -> PathBuf {
        let dir = self.dir.path().join("tmp");
        std::fs::create_dir_all(&dir).expect("TMPDIR");
        dir
    }

    async fn run(&self, sub: &str, args: &[&str]) -> Result<Finished> {
        Process::spawn_captured(&format!("gangway {sub}"), self.gangway(sub, args)?)?
            .finish(Duration::from_secs(60))
            .await
    }

    fn namespace(&self) -> Result<String> {
        Ok(gangway_agent::keychain::namespace_for(&url::Url::parse(
            &self.a.url(),
        )?))
    }

    /// The device's key and access token, read from the keychain with
    /// `secret-tool` (not through Gangway): what malware reading the
    /// keychain would get.
    fn stored(&self) -> Result<(Option<ProofKey>, Option<String>)> {
        let ns = self.namespace()?;
        let key = match self.keychain.gangway_value(&ns, "dpop-key")? {
            Some(k) => Some(ProofKey::from_pkcs8_b64(&k)?),
            None => None,
        };
        let access = match self.keychain.gangway_value(&ns, "access")? {
            Some(record) => {
                let v: serde_json::Value = serde_json::from_str(&record)?;
                Some(v["token"].as_str().context("no token")?.to_string())
            }
            None => None,
        };
        Ok((key, access))
    }

    fn http(&self) -> Result<reqwest::Client> {
        let pem = std::fs::read(&self.cert.cert)?;
        Ok(reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
            .timeout(Duration::from_secs(10))
            .build()?)
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The `cnf.jkt` of a JWT, read without verifying.
fn jkt(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v["cnf"]["jkt"].as_str().map(str::to_string)
}

/// `GET url` with `authorization` and the `DPoP` header `proof`: the
/// status, `WWW-Authenticate` and body.
async fn get(
    http: &reqwest::Client,
    url: &str,
    authorization: &str,
    proof: Option<&str>,
    upgrade: bool,
) -> Result<(u16, String, String)> {
    let mut req = http.get(url).header("authorization", authorization);
    if let Some(p) = proof {
        req = req.header("dpop", p);
    }
    if upgrade {
        req = req
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let www = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok((status, www, resp.text().await?))
}

/// A 401 whose challenge is DPoP's with `error`, and an `auth_failed`
/// audit line with `code` on `relay`.
fn assert_refused(
    relay: &RelayProcess,
    what: &str,
    (status, www, body): (u16, String, String),
    error: &str,
    code: &str,
) {
    assert_eq!(status, 401, "{what}: {body}");
    assert!(
        www.starts_with(&format!("DPoP error=\"{error}\"")) && www.contains("algs=\"ES256\""),
        "{what}: {www}"
    );
    let audit = relay.audit();
    assert!(
        audit
            .iter()
            .any(|e| e["event"] == "auth_failed" && e["code"] == code),
        "{what}: no auth_failed/{code} audit line in {audit:?}"
    );
    let raw = std::fs::read_to_string(relay.audit_path()).unwrap_or_default();
    assert!(
        !raw.contains("eyJ"),
        "a JWT or proof leaked into the audit log"
    );
}

async fn echo_round_trip(addr: SocketAddr, msg: &[u8]) -> Result<()> {
    let mut c = tokio::net::TcpStream::connect(addr).await?;
    c.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(20), c.read_exact(&mut back))
        .await
        .context("echo timed out")??;
    ensure!(back == msg, "echo gave back other bytes");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bound_tokens_open_the_tunnel_and_a_copy_without_the_key_opens_nothing() -> Result<()> {
    let w = World::start().await?;
    let browser = Browser::start().await?;

    // Sign-in (device flow; every poll carries a proof with the
    // provider's nonce): the tokens are bound to the key in the keychain.
    let (login, url) = start_device_login(w.gangway("login", &["--device"])?).await?;
    let page = browser.sign_in(&url, "alice", "alice-pw").await?;
    assert_eq!(page.selector, "#success", "{page:?}");
    let done = login.finish(Duration::from_secs(60)).await?;
    assert_success("login --device", &done);
    let (key, first) = w.stored()?;
    let key = key.context("no DPoP key in the keychain")?;
    let first = first.context("no access token in the keychain")?;
    assert_eq!(
        jkt(&first).as_deref(),
        Some(key.thumbprint()),
        "sign-in token not bound"
    );
    let status = w.run("status", &[]).await?;
    assert!(
        status
            .stdout
            .contains("Token binding: tokens bound to this device's key (DPoP)"),
        "{}",
        status.stdout
    );

    // The tunnel works with them, through relay A (which requires DPoP),
    // and across an in-band refresh that carries a proof over the new token.
    let mut up = Process::spawn_captured(
        "gangway up",
        w.gangway(
            "up",
            &[
                "--listen",
                "echo=127.0.0.1:0",
                "--listen",
                "open=127.0.0.1:0",
            ],
        )?,
    )?;
    let line = up
        .wait_line(
            "the echo listener",
            startup_timeout(Duration::from_secs(30)),
            |l| {
                let mut words = l.split_whitespace();
                words.next() == Some("listening") && words.next() == Some("echo")
            },
        )
        .await?;
    let addr: SocketAddr = line
        .split_whitespace()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no address in {line:?}"))?;
    echo_round_trip(addr, b"through a DPoP-bound session").await?;
    w.a.wait_audit(
        "an in-band refresh",
        Duration::from_secs(3 * TTL_SECS),
        |e| e["event"] == "token_refreshed",
    )
    .await?;
    echo_round_trip(addr, b"after the refresh").await?;
    let (_, refreshed) = w.stored()?;
    let refreshed = refreshed.context("no access token after the refresh")?;
    assert_ne!(refreshed, first, "the stored token was not refreshed");
    assert_eq!(
        jkt(&refreshed).as_deref(),
        Some(key.thumbprint()),
        "refreshed token not bound"
    );
    // The session was admitted as bound (and no refusal was audited).
    assert!(w
        .a
        .audit()
        .iter()
        .all(|e| e["event"] != "auth_failed" && e["event"] != "token_refresh_refused"));

    // The copied token opens nothing without the key.
    let http = w.http()?;
    let token = refreshed;
    let a_catalog = format!("{}/v1/catalog", w.a.url());
    let a_tunnel = format!("{}/v1/tunnel", w.a.url());
    let b_catalog = format!("{}/v1/catalog", w.b.url());
    let dpop = format!("DPoP {token}");
    let proof = |k: &ProofKey, htm: &str, htu: &str, tok: &str, iat: u64| {
        k.proof(htm, htu, Some(tok), None, iat).expect("proof")
    };
    let r = get(&http, &a_tunnel, &format!("Bearer {token}"), None, true).await?;
    assert_refused(
        &w.a,
        "as Bearer at the tunnel",
        r,
        "invalid_token",
        "bound_token_as_bearer",
    );
    let r = get(&http, &a_catalog, &format!("Bearer {token}"), None, false).await?;
    assert_refused(
        &w.a,
        "as Bearer",
        r,
        "invalid_token",
        "bound_token_as_bearer",
    );
    let r = get(&http, &a_catalog, &dpop, None, false).await?;
    assert_refused(
        &w.a,
        "without a proof",
        r,
        "invalid_dpop_proof",
        "dpop_missing",
    );
    let thief = ProofKey::generate()?;
    let p = proof(&thief, "GET", &a_catalog, &token, now());
    let r = get(&http, &a_catalog, &dpop, Some(&p), false).await?;
    assert_refused(
        &w.a,
        "another key",
        r,
        "invalid_dpop_proof",
        "dpop_key_mismatch",
    );
    // With the device's key (as the agent): accepted once, refused again.
    let p = proof(&key, "GET", &a_catalog, &token, now());
    let (status, _, body) = get(&http, &a_catalog, &dpop, Some(&p), false).await?;
    assert_eq!(status, 200, "a good proof: {body}");
    let r = get(&http, &a_catalog, &dpop, Some(&p), false).await?;
    assert_refused(
        &w.a,
        "a replayed proof",
        r,
        "invalid_dpop_proof",
        "dpop_replayed",
    );
    let p = proof(&key, "GET", &a_tunnel, &token, now());
    let r = get(&http, &a_catalog, &dpop, Some(&p), false).await?;
    assert_refused(&w.a, "another URL", r, "invalid_dpop_proof", "dpop_htu");
    let p = proof(&key, "POST", &a_catalog, &token, now());
    let r = get(&http, &a_catalog, &dpop, Some(&p), false).await?;
    assert_refused(&w.a, "another method", r, "invalid_dpop_proof", "dpop_htm");
    let p = proof(&key, "GET", &a_catalog, &first, now());
    let r = get(&http, &a_catalog, &dpop, Some(&p), false).await?;
    assert_refused(&w.a, "another token", r, "invalid_dpop_proof", "dpop_ath");
    let p = proof(&key, "GET", &a_catalog, &token, now() - 300);
    let r = get(&http, &a_catalog, &dpop, Some(&p), false).await?;
    assert_refused(&w.a, "a stale proof", r, "invalid_dpop_proof", "dpop_iat");
    // An unbound token where DPoP is required.
    let unbound = w.idp.client_credentials_token(CI_DEV).await?;
    let r = get(&http, &a_catalog, &format!("Bearer {unbound}"), None, false).await?;
    assert_refused(
        &w.a,
        "an unbound token",
        r,
        "invalid_token",
        "dpop_required",
    );

    // A proof used at A is refused at B (same public URL, same Redis);
    // a fresh one is taken there.
    let p = proof(&key, "GET", &a_catalog, &token, now());
    let (status, _, body) = get(&http, &a_catalog, &dpop, Some(&p), false).await?;
    assert_eq!(status, 200, "{body}");
    let r = get(&http, &b_catalog, &dpop, Some(&p), false).await?;
    assert_refused(
        &w.b,
        "a proof used at relay A",
        r,
        "invalid_dpop_proof",
        "dpop_replayed",
    );
    let p = proof(&key, "GET", &a_catalog, &token, now());
    let (status, _, body) = get(&http, &b_catalog, &dpop, Some(&p), false).await?;
    assert_eq!(status, 200, "a fresh proof at B: {body}");

    // B requires DPoP for `echo` only: an unbound session reaches `open`
    // and is refused `echo` with the reason; a bound one reaches `echo`.
    use gangway_agent::session::Session;
    use gangway_agent::AgentError;
    use gangway_wire::{RefusalCode, Token};
    let egress =
        gangway_agent::net::Egress::direct(gangway_agent::tls::client_config(Some(&w.cert.cert))?);
    let b_url = url::Url::parse(&w.b.url())?;
    let plain = Session::connect(&b_url, &egress, &Token::new(unbound)).await?;
    plain.open("open").await?;
    match plain.open("echo").await {
        Err(AgentError::Refused(r)) => {
            assert_eq!(r.code, RefusalCode::Unauthenticated);
            assert!(r.message.contains("bound to this device's key"), "{r}");
        }
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("an unbound token reached a require_dpop service"),
    }
    drop(plain);
    // (At A, whose public URL the agent's proofs name.)
    let stream = Session::connect_with(
        &url::Url::parse(&w.a.url())?,
        &egress,
        &Token::new(token),
        Some(Arc::new(key)),
    )
    .await?
    .open("echo")
    .await;
    ensure!(stream.is_ok(), "a bound session could not open echo at A");
    drop(up);
    Ok(())
}
