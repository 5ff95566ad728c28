//! The identity provider as the agent sees it: discovered from the relay
//! URL alone, then from the issuer's OpenID configuration; plus the token
//! requests that need no user (refresh, revocation).

use std::sync::Arc;
use std::time::Duration;

use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{
    AuthUrl, ClientId, DeviceAuthorizationUrl, EndpointMaybeSet, EndpointNotSet, EndpointSet,
    RefreshToken, RevocationUrl, StandardRevocableToken, TokenUrl,
};
use serde::Deserialize;
use url::Url;

use super::tokens::{Secret, TokenSet};
use super::{now_unix, SignInError};
use crate::error::error_chain;
use crate::net::Egress;
use crate::relay_api::{Discovery, RelayApi};

/// How long one request to the provider may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The scope that asks for a refresh token.
pub const OFFLINE_ACCESS: &str = "offline_access";

/// The oauth2 client with the endpoints an OIDC provider always has
/// (authorization, token) and the ones it may have (device, revocation).
pub(crate) type OidcClient = BasicClient<
    EndpointSet,      // authorization
    EndpointMaybeSet, // device authorization
    EndpointNotSet,   // introspection
    EndpointMaybeSet, // revocation
    EndpointSet,      // token
>;

/// The parts of `<issuer>/.well-known/openid-configuration` the agent uses.
#[derive(Debug, Clone, Deserialize)]
pub struct OpenIdConfiguration {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub device_authorization_endpoint: Option<String>,
    pub revocation_endpoint: Option<String>,
    #[serde(default)]
    pub code_challenge_methods_supported: Option<Vec<String>>,
    /// DPoP proof algorithms the provider accepts (RFC 9449 §5.1).
    #[serde(default)]
    pub dpop_signing_alg_values_supported: Option<Vec<String>>,
}

/// An environment's identity provider, ready for token requests.
#[derive(Clone)]
pub struct IdentityProvider {
    pub issuer: String,
    pub client_id: String,
    /// The `aud` the relay expects in access tokens.
    pub audience: String,
    /// Scopes to ask for (the relay's list, plus `offline_access`).
    pub scopes: Vec<String>,
    pub authorization_endpoint: Url,
    pub token_endpoint: Url,
    pub device_authorization_endpoint: Option<Url>,
    pub revocation_endpoint: Option<Url>,
    /// Both the provider and the relay take ES256 DPoP proofs: token
    /// requests carry proofs by this device's key, so tokens are bound.
    pub offers_dpop: bool,
    proof_key: Option<Arc<gangway_dpop::ProofKey>>,
    /// The provider's last `DPoP-Nonce`, for its next token request.
    dpop_nonce: Arc<std::sync::Mutex<Option<String>>>,
    http: reqwest::Client,
}

impl std::fmt::Debug for IdentityProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityProvider")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .finish()
    }
}

impl IdentityProvider {
    /// Reads the relay's `/.well-known/gangway`, then the issuer's OpenID
    /// configuration. `egress` (the relay's trust settings, e.g. a company
    /// CA, and the proxy decision) is used for the provider too.
    pub async fn discover(relay: &Url, egress: Egress) -> Result<Self, SignInError> {
        let api = RelayApi::new(relay.clone(), egress.clone()).map_err(|e| SignInError::Relay {
            detail: e.to_string(),
            retryable: false,
        })?;
        let discovery = api.discovery().await.map_err(|e| SignInError::Relay {
            retryable: e.retryable(),
            detail: e.to_string(),
        })?;
        let http = http_client(&egress)?;
        let config = fetch_configuration(&http, &discovery.issuer).await?;
        Self::from_documents(discovery, config, http)
    }

    /// Builds the provider from the two discovery documents, checking them.
    pub fn from_documents(
        discovery: Discovery,
        config: OpenIdConfiguration,
        http: reqwest::Client,
    ) -> Result<Self, SignInError> {
        let issuer = discovery.issuer.clone();
        let bad = |detail: String| SignInError::Provider {
            issuer: issuer.clone(),
            detail,
        };
        // OpenID Connect Discovery §4.3: the document's issuer must be the
        // one it was fetched for.
        if config.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
            return Err(bad(format!(
                "its OpenID configuration names a different issuer ({})",
                config.issuer
            )));
        }
        if let Some(methods) = &config.code_challenge_methods_supported {
            if !methods.iter().any(|m| m == "S256") {
                return Err(bad("it does not support PKCE with S256".into()));
            }
        }
        let endpoint = |name: &str, value: &str| -> Result<Url, SignInError> {
            let url = Url::parse(value).map_err(|e| bad(format!("{name} {value:?}: {e}")))?;
            let loopback = url.host_str().is_some_and(|h| {
                h == "localhost"
                    || h.trim_matches(['[', ']'])
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            });
            match url.scheme() {
                "https" => Ok(url),
                "http" if loopback => Ok(url),
                _ => Err(bad(format!("{name} {value:?} is not an https URL"))),
            }
        };
        let es256 = |algs: &[String]| algs.iter().any(|a| a == gangway_dpop::ALG);
        let offers_dpop = es256(&discovery.dpop_signing_alg_values_supported)
            && es256(
                config
                    .dpop_signing_alg_values_supported
                    .as_deref()
                    .unwrap_or_default(),
            );
        let mut scopes = discovery.scopes.clone();
        if scopes.is_empty() {
            scopes.push("openid".into());
        }
        if !scopes.iter().any(|s| s == OFFLINE_ACCESS) {
            scopes.push(OFFLINE_ACCESS.into());
        }
        Ok(IdentityProvider {
            authorization_endpoint: endpoint(
                "authorization_endpoint",
                &config.authorization_endpoint,
            )?,
            token_endpoint: endpoint("token_endpoint", &config.token_endpoint)?,
            device_authorization_endpoint: config
                .device_authorization_endpoint
                .as_deref()
                .map(|u| endpoint("device_authorization_endpoint", u))
                .transpose()?,
            revocation_endpoint: config
                .revocation_endpoint
                .as_deref()
                .map(|u| endpoint("revocation_endpoint", u))
                .transpose()?,
            issuer: discovery.issuer,
            client_id: discovery.client_id,
            audience: discovery.audience,
            scopes,
            offers_dpop,
            proof_key: None,
            dpop_nonce: Arc::default(),
            http,
        })
    }

    /// Token requests sign proofs with `key` (when [`Self::offers_dpop`]).
    pub fn with_proof_key(mut self, key: Arc<gangway_dpop::ProofKey>) -> Self {
        self.proof_key = Some(key);
        self
    }

    /// The thumbprint of the key token requests sign with, if they do: the
    /// authorization request names it (`dpop_jkt`, RFC 9449 §10) so that
    /// only this key can redeem the code.
    pub(crate) fn dpop_jkt(&self) -> Option<&str> {
        self.proof_key
            .as_deref()
            .filter(|_| self.offers_dpop)
            .map(|k| k.thumbprint())
    }

    /// The client for token requests: a DPoP proof on each, by this
    /// device's key, when both ends offer DPoP ([`crate::dpop::ProofHttp`]).
    pub(crate) fn token_http(&self) -> crate::dpop::ProofHttp<'_> {
        crate::dpop::ProofHttp {
            http: &self.http,
            key: self.proof_key.as_deref().filter(|_| self.offers_dpop),
            nonce: &self.dpop_nonce,
        }
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The oauth2 client for this provider (cheap to build).
    pub(crate) fn client(&self) -> OidcClient {
        BasicClient::new(ClientId::new(self.client_id.clone()))
            .set_auth_uri(AuthUrl::from_url(self.authorization_endpoint.clone()))
            .set_token_uri(TokenUrl::from_url(self.token_endpoint.clone()))
            .set_device_authorization_url_option(
                self.device_authorization_endpoint
                    .clone()
                    .map(DeviceAuthorizationUrl::from_url),
            )
            .set_revocation_url_option(
                self.revocation_endpoint
                    .clone()
                    .map(RevocationUrl::from_url),
            )
    }

    pub(crate) fn unreachable(&self, detail: String) -> SignInError {
        SignInError::ProviderUnreachable {
            issuer: self.issuer.clone(),
            detail,
        }
    }

    pub(crate) fn refused(&self, detail: String) -> SignInError {
        SignInError::Provider {
            issuer: self.issuer.clone(),
            detail,
        }
    }

    /// Trades `refresh` for new tokens. `invalid_grant` (revoked, expired,
    /// already used) means a new sign-in is needed; network trouble and
    /// server errors are worth retrying.
    pub async fn refresh(&self, refresh: &Secret) -> Result<TokenSet, SignInError> {
        let token = RefreshToken::new(refresh.expose().to_string());
        let client = self.client();
        let response = client
            .exchange_refresh_token(&token)
            .request_async(&self.token_http())
            .await;
        match response {
            Ok(r) => Ok(TokenSet::from_response(&r, now_unix())),
            Err(oauth2::RequestTokenError::ServerResponse(r)) => {
                let what = describe(r.error().as_ref(), r.error_description());
                match r.error() {
                    BasicErrorResponseType::InvalidGrant => {
                        Err(SignInError::SignInNeeded(format!(
                            "the identity provider no longer accepts the stored sign-in ({what})"
                        )))
                    }
                    BasicErrorResponseType::InvalidClient
                    | BasicErrorResponseType::UnauthorizedClient => Err(SignInError::SignInNeeded(
                        format!("the identity provider refused this client ({what})"),
                    )),
                    _ => Err(self.refused(format!("refresh refused: {what}"))),
                }
            }
            Err(e) => Err(self.unreachable(request_error(&e))),
        }
    }

    /// Revokes `refresh` at the provider (RFC 7009). `Ok(false)` when the
    /// provider advertises no revocation endpoint.
    pub async fn revoke(&self, refresh: &Secret) -> Result<bool, SignInError> {
        if self.revocation_endpoint.is_none() {
            return Ok(false);
        }
        let token =
            StandardRevocableToken::RefreshToken(RefreshToken::new(refresh.expose().to_string()));
        let client = self.client();
        let request = client
            .revoke_token(token)
            .map_err(|e| self.refused(e.to_string()))?;
        match request.request_async(&self.http).await {
            Ok(()) => Ok(true),
            Err(oauth2::RequestTokenError::ServerResponse(r)) => Err(self.refused(format!(
                "revocation refused: {}",
                describe(r.error().as_ref(), r.error_description())
            ))),
            Err(e) => Err(self.unreachable(request_error(&e))),
        }
    }
}

/// `error: description`, as a provider's error response reads.
pub(crate) fn describe(error: &str, description: Option<&String>) -> String {
    match description {
        Some(d) if !d.is_empty() => format!("{error}: {d}"),
        _ => error.to_string(),
    }
}

/// One line for a failed request, without the response body (which could
/// hold tokens).
pub(crate) fn request_error<RE, TE>(e: &oauth2::RequestTokenError<RE, TE>) -> String
where
    RE: std::error::Error + 'static,
    TE: oauth2::ErrorResponse + 'static,
{
    match e {
        oauth2::RequestTokenError::Request(inner) => error_chain(inner),
        oauth2::RequestTokenError::Parse(inner, _body) => {
            format!("unexpected answer from the token endpoint: {inner}")
        }
        oauth2::RequestTokenError::Other(s) => s.clone(),
        oauth2::RequestTokenError::ServerResponse(r) => {
            format!("{r:?}")
        }
    }
}

/// The HTTP client for the provider: the relay's TLS trust and proxy, a
/// timeout, and no redirects (the oauth2 crate's advice against SSRF).
fn http_client(egress: &Egress) -> Result<reqwest::Client, SignInError> {
    egress
        .http_client()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("gangway/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| SignInError::Local(format!("HTTP client: {e}")))
}

async fn fetch_configuration(
    http: &reqwest::Client,
    issuer: &str,
) -> Result<OpenIdConfiguration, SignInError> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let unreachable = |detail: String| SignInError::ProviderUnreachable {
        issuer: issuer.to_string(),
        detail,
    };
    let resp = http
        .get(&url)
        .send()
        .await
        .map_err(|e| unreachable(format!("{url}: {}", error_chain(&e))))?;
    let status = resp.status();
    if status.is_server_error() {
        return Err(unreachable(format!("{url}: HTTP {status}")));
    }
    if !status.is_success() {
        return Err(SignInError::Provider {
            issuer: issuer.to_string(),
            detail: format!("{url}: HTTP {status}"),
        });
    }
    resp.json().await.map_err(|e| SignInError::Provider {
        issuer: issuer.to_string(),
        detail: format!("{url}: not an OpenID configuration: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discovery(scopes: &[&str]) -> Discovery {
        Discovery {
            issuer: "https://idp.example.com/realms/corp".into(),
            client_id: "gangway".into(),
            audience: "https://relay.example.com".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            protocol_version: 1,
            relay_version: None,
            dpop_signing_alg_values_supported: vec!["ES256".into()],
        }
    }

    fn config() -> OpenIdConfiguration {
        OpenIdConfiguration {
            issuer: "https://idp.example.com/realms/corp".into(),
            authorization_endpoint: "https://idp.example.com/auth".into(),
            token_endpoint: "https://idp.example.com/token".into(),
            device_authorization_endpoint: Some("https://idp.example.com/device".into()),
            revocation_endpoint: None,
            code_challenge_methods_supported: Some(vec!["plain".into(), "S256".into()]),
            dpop_signing_alg_values_supported: Some(vec!["ES256".into(), "EdDSA".into()]),
        }
    }

    #[test]
    fn builds_from_the_two_documents() {
        let p = IdentityProvider::from_documents(
            discovery(&["openid", "groups"]),
            config(),
            reqwest::Client::new(),
        )
        .unwrap();
        assert_eq!(p.scopes, ["openid", "groups", "offline_access"]);
        assert!(p.device_authorization_endpoint.is_some());
        assert!(p.revocation_endpoint.is_none());
        assert!(p.offers_dpop);
        // DPoP only when both the relay and the provider take ES256.
        let old_relay = Discovery {
            dpop_signing_alg_values_supported: vec![],
            ..discovery(&[])
        };
        let p = IdentityProvider::from_documents(old_relay, config(), reqwest::Client::new());
        assert!(!p.unwrap().offers_dpop);
        let no_es256 = OpenIdConfiguration {
            dpop_signing_alg_values_supported: Some(vec!["EdDSA".into()]),
            ..config()
        };
        let p = IdentityProvider::from_documents(discovery(&[]), no_es256, reqwest::Client::new());
        assert!(!p.unwrap().offers_dpop);
    }

    #[test]
    fn rejects_a_document_for_another_issuer_or_without_s256_or_plain_http() {
        let other = OpenIdConfiguration {
            issuer: "https://evil.example.com".into(),
            ..config()
        };
        let e = IdentityProvider::from_documents(discovery(&[]), other, reqwest::Client::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("different issuer"), "{e}");

        let plain = OpenIdConfiguration {
            code_challenge_methods_supported: Some(vec!["plain".into()]),
            ..config()
        };
        let e = IdentityProvider::from_documents(discovery(&[]), plain, reqwest::Client::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("S256"), "{e}");

        let http = OpenIdConfiguration {
            token_endpoint: "http://idp.example.com/token".into(),
            ..config()
        };
        let e = IdentityProvider::from_documents(discovery(&[]), http, reqwest::Client::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an https URL"), "{e}");
    }
}
