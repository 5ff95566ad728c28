//! The relay's plain-HTTP API: discovery and the catalog (with a DPoP
//! proof when the token is bound to this device's key).

use std::time::Duration;

use gangway_wire::Token;
use url::Url;

use crate::net::Egress;
use crate::AgentError;

pub use gangway_wire::api::{Catalog, Discovery, Service, ServiceKind};

/// A client for one relay.
#[derive(Clone)]
pub struct RelayApi {
    base: Url,
    http: reqwest::Client,
    egress: Egress,
}

impl RelayApi {
    /// A client for the relay at `base`, connecting as `egress` says.
    pub fn new(base: Url, egress: Egress) -> Result<Self, AgentError> {
        let http = egress
            .http_client()
            .timeout(Duration::from_secs(15))
            .user_agent(concat!("gangway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AgentError::tls("HTTP client", Some(e.into())))?;
        Ok(Self { base, http, egress })
    }

    pub async fn discovery(&self) -> Result<Discovery, AgentError> {
        let (url, resp) = self.get("/.well-known/gangway", None).await?;
        if !resp.status().is_success() {
            return Err(AgentError::Protocol(format!(
                "{url}: HTTP {}",
                resp.status()
            )));
        }
        json(&url, resp).await
    }

    pub async fn catalog(&self, token: &Token) -> Result<Catalog, AgentError> {
        self.catalog_with(token, None).await
    }

    /// The catalog, with a DPoP proof by `key` when `token` is bound to it
    /// ([`crate::dpop::authorization`]).
    pub async fn catalog_with(
        &self,
        token: &Token,
        key: Option<&gangway_dpop::ProofKey>,
    ) -> Result<Catalog, AgentError> {
        let (url, resp) = self.get("/v1/catalog", Some((token, key))).await?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            let body = resp.text().await.unwrap_or_default();
            return Err(AgentError::Unauthorized(body.trim().to_string()));
        }
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(AgentError::unreachable(format!(
                "{url}: HTTP {status}: {}",
                body.trim()
            )));
        }
        json(&url, resp).await
    }

    /// `GET path` (with the token, as bearer or DPoP-bound with a proof by
    /// the key, if any): the URL and the answer.
    async fn get(
        &self,
        path: &str,
        token: Option<(&Token, Option<&gangway_dpop::ProofKey>)>,
    ) -> Result<(Url, reqwest::Response), AgentError> {
        let url = self.url(path)?;
        let mut req = self.http.get(url.clone());
        if let Some((t, key)) = token {
            let (auth, proof) = crate::dpop::authorization(t, key, "GET", &url)?;
            req = req.header(http::header::AUTHORIZATION, auth);
            if let Some(p) = proof {
                req = req.header("dpop", p);
            }
        }
        let resp = req
            .send()
            .await
            // reqwest's Display hides the cause; the message walks the chain
            // (and names the proxy when it caused the failure).
            .map_err(|e| {
                AgentError::unreachable_by(url.to_string(), self.egress.explain(&url, e))
            })?;
        Ok((url, resp))
    }

    fn url(&self, path: &str) -> Result<Url, AgentError> {
        self.base
            .join(path)
            .map_err(|e| AgentError::Config(format!("relay URL {}: {e}", self.base)))
    }
}

/// The answer's JSON body as `T`.
async fn json<T: serde::de::DeserializeOwned>(
    url: &Url,
    resp: reqwest::Response,
) -> Result<T, AgentError> {
    resp.json()
        .await
        .map_err(|e| AgentError::Protocol(format!("{url}: {e}")))
}
