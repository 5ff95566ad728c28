//! A real OpenID Connect provider for end-to-end tests: npm `oidc-provider`
//! configured by `tests/peers/oidc/server.js` (read that file for the clients,
//! accounts and token format it offers).
//!
//! The provider binds port 0 itself and reports its issuer URL on stdout, so
//! there is no port race. Its stderr is inherited, so its warnings and errors
//! show up beside the test output.
//!
//! Access tokens are RS256 JWTs (`typ: at+jwt`) with the claims
//! `iss`, `aud`, `sub`, `client_id`, `groups`, `jti`, `iat`, `exp` (plus
//! `scope` when one was granted); keys at `<issuer>/jwks`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::process::{require_program, startup_timeout, Process};

/// The audience the provider uses when none is given (matches `server.js`).
pub const DEFAULT_AUDIENCE: &str = "https://relay.gangway.test";

/// Secret of every confidential client (`gangway-ci`, `ci-dev`,
/// `ci-readonly`, `ci-nogroups`).
pub const CI_CLIENT_SECRET: &str = "ci-secret";

/// client_credentials client whose tokens carry `groups: ["developers"]`.
pub const CI_DEV: &str = "ci-dev";
/// client_credentials client whose tokens carry `groups: ["readers"]`.
pub const CI_READONLY: &str = "ci-readonly";
/// client_credentials client whose tokens carry `groups: []`.
pub const CI_NOGROUPS: &str = "ci-nogroups";
/// The public native client of the agent (authorization code + PKCE,
/// refresh tokens, device flow; redirect `http://127.0.0.1:<any>/callback`).
pub const AGENT_CLIENT_ID: &str = "gangway";

/// How long the provider may take to print its `LISTENING` line on an idle
/// machine (stretched by [`startup_timeout`]).
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long one request to the provider may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The directory of the node project (`tests/peers/oidc`).
pub fn project_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("peers")
        .join("oidc")
}

/// A running `oidc-provider`; stopped when dropped.
pub struct OidcProvider {
    _child: Process,
    issuer: String,
    audience: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    token_type: String,
}

/// One poll of the token endpoint with a device code.
#[derive(Debug, Clone, Deserialize)]
pub struct DevicePoll {
    /// Milliseconds since the provider started.
    pub ms: u64,
    /// `authorization_pending`, `slow_down`, `access_denied`,
    /// `expired_token`, … or `tokens`.
    pub answer: String,
}

impl OidcProvider {
    /// Starts `node tests/peers/oidc/server.js` with the given audience and
    /// access-token lifetime, and waits (20 s, more on a busy machine) for it to listen.
    ///
    /// Blocks the calling thread while it waits (about a second).
    pub fn start(audience: &str, access_token_ttl_secs: u64) -> Result<Self> {
        Self::start_with(audience, access_token_ttl_secs, None, &[])
    }

    /// Like [`OidcProvider::start`], with more of `server.js`'s settings
    /// (e.g. `DEVICE_CODE_TTL`, `DEVICE_INTERVAL`, `DEVICE_SLOW_DOWN_FIRST`,
    /// `DPOP_NONCE`).
    pub fn start_with_settings(
        audience: &str,
        access_token_ttl_secs: u64,
        settings: &[(&str, &str)],
    ) -> Result<Self> {
        Self::start_with(audience, access_token_ttl_secs, None, settings)
    }

    /// Like [`OidcProvider::start`], but serving https with the PEM
    /// certificate and key `tls` (the issuer is then `https://127.0.0.1:<port>`,
    /// as with real providers). Its own requests
    /// ([`OidcProvider::client_credentials_token`] …) trust that certificate.
    pub fn start_tls(
        audience: &str,
        access_token_ttl_secs: u64,
        tls: (&Path, &Path),
    ) -> Result<Self> {
        Self::start_with(audience, access_token_ttl_secs, Some(tls), &[])
    }

    /// [`OidcProvider::start_tls`] with more of `server.js`'s settings
    /// (e.g. `ISSUER_HOST`: its own requests then reach that name at
    /// 127.0.0.1).
    pub fn start_tls_with_settings(
        audience: &str,
        access_token_ttl_secs: u64,
        tls: (&Path, &Path),
        settings: &[(&str, &str)],
    ) -> Result<Self> {
        Self::start_with(audience, access_token_ttl_secs, Some(tls), settings)
    }

    fn start_with(
        audience: &str,
        access_token_ttl_secs: u64,
        tls: Option<(&Path, &Path)>,
        settings: &[(&str, &str)],
    ) -> Result<Self> {
        let node = require_program("node")?;
        let dir = project_dir();
        let server = dir.join("server.js");
        if !server.is_file() {
            bail!("{} is missing", server.display());
        }
        if !dir.join("node_modules").join("oidc-provider").is_dir() {
            bail!(
                "npm package oidc-provider is not installed in {}: run `npm ci` there \
                 (or the README test command)",
                dir.display()
            );
        }

        let mut cmd = Command::new(node);
        cmd.arg(&server)
            .current_dir(&dir)
            .env("AUDIENCE", audience)
            .env("ACCESS_TOKEN_TTL", access_token_ttl_secs.to_string())
            .env_remove("PORT")
            .env_remove("TLS_CERT")
            .env_remove("TLS_KEY")
            .env_remove("ISSUER_HOST")
            .env_remove("DEVICE_CODE_TTL")
            .env_remove("DEVICE_INTERVAL")
            .env_remove("DEVICE_SLOW_DOWN_FIRST")
            .env_remove("DPOP_NONCE")
            .envs(settings.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some((cert, key)) = tls {
            cmd.env("TLS_CERT", cert).env("TLS_KEY", key);
        }
        let mut child = Process::spawn("oidc-provider", &mut cmd)?;
        let issuer = child
            .blocking_wait_line("its LISTENING line", startup_timeout(START_TIMEOUT), |l| {
                l.starts_with("LISTENING ")
            })?
            .trim_start_matches("LISTENING ")
            .trim()
            .to_string();

        let mut http = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT);
        if let Some((cert, _)) = tls {
            http =
                http.add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(cert)?)?);
        }
        // An issuer named for a host only a proxy knows is still this
        // process on 127.0.0.1 for the peer's own requests.
        if let Ok(u) = reqwest::Url::parse(&issuer) {
            if let (Some(host), Some(port)) = (u.host_str(), u.port()) {
                if host.parse::<std::net::IpAddr>().is_err() {
                    http = http.resolve(host, std::net::SocketAddr::from(([127, 0, 0, 1], port)));
                }
            }
        }
        let http = http.build().context("building the HTTP client")?;
        Ok(Self {
            _child: child,
            issuer,
            audience: audience.to_string(),
            http,
        })
    }

    /// The issuer URL, `http://127.0.0.1:<port>` (`https://` with TLS; no
    /// trailing slash).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The audience (`aud`) of every access token it issues.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// `<issuer>/jwks`, where its signing keys are published.
    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.issuer)
    }

    /// Its JWKS document, fetched from [`OidcProvider::jwks_uri`] (for a
    /// relay given the keys as a file).
    pub async fn jwks(&self) -> Result<String> {
        let url = self.jwks_uri();
        Ok(self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?
            .error_for_status()?
            .text()
            .await?)
    }

    /// `<issuer>/token`.
    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer)
    }

    /// Every device-code poll of the token endpoint so far, in order
    /// (recorded when the provider was started with `DEVICE_INTERVAL`).
    pub async fn device_polls(&self) -> Result<Vec<DevicePoll>> {
        let url = format!("{}/admin/device-polls", self.issuer);
        let polls = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?
            .error_for_status()?
            .json()
            .await?;
        Ok(polls)
    }

    /// Runs the refresh_token grant for the agent's client with `refresh`,
    /// as the agent would: the HTTP status and the JSON answer.
    pub async fn refresh_grant(&self, refresh: &str) -> Result<(u16, serde_json::Value)> {
        let url = self.token_endpoint();
        let response = self
            .http
            .post(&url)
            .form(&[
                ("grant_type", "refresh_token"),
                ("client_id", AGENT_CLIENT_ID),
                ("refresh_token", refresh),
            ])
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = response.status().as_u16();
        Ok((status, response.json().await?))
    }

    /// Runs the client_credentials grant as the confidential client
    /// `client_id` (secret [`CI_CLIENT_SECRET`]) and returns the raw JWT
    /// access token. `sub` is the client id; `groups` depends on the client
    /// ([`CI_DEV`], [`CI_READONLY`], [`CI_NOGROUPS`]).
    pub async fn client_credentials_token(&self, client_id: &str) -> Result<String> {
        let url = self.token_endpoint();
        let response = self
            .http
            .post(&url)
            .basic_auth(client_id, Some(CI_CLIENT_SECRET))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .with_context(|| format!("reading the response of POST {url}"))?;
        if !status.is_success() {
            bail!("client_credentials for {client_id} failed: {status}: {body}");
        }
        let token: TokenResponse = serde_json::from_str(&body)
            .with_context(|| format!("token response is not what was expected: {body}"))?;
        if !token.token_type.eq_ignore_ascii_case("bearer") {
            bail!("unexpected token_type {:?}", token.token_type);
        }
        Ok(token.access_token)
    }
}
