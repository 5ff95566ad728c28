//! The relay's plain-HTTP API: discovery and the catalog.

use std::sync::Arc;
use std::time::Duration;

use gangway_wire::Token;
use url::Url;

use crate::AgentError;

pub use gangway_wire::api::{Catalog, Discovery, Service, ServiceKind};

/// A client for one relay.
#[derive(Clone)]
pub struct RelayApi {
    base: Url,
    http: reqwest::Client,
}

impl RelayApi {
    pub fn new(base: Url, tls: Arc<rustls::ClientConfig>) -> Result<Self, AgentError> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .timeout(Duration::from_secs(15))
            .user_agent(concat!("gangway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AgentError::tls("HTTP client", Some(e.into())))?;
        Ok(Self { base, http })
    }

    pub async fn discovery(&self) -> Result<Discovery, AgentError> {
        let url = self.url("/.well-known/gangway")?;
        let resp = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(|e| unreachable(&url, e))?;
        if !resp.status().is_success() {
            return Err(AgentError::Protocol(format!(
                "{url}: HTTP {}",
                resp.status()
            )));
        }
        resp.json()
            .await
            .map_err(|e| AgentError::Protocol(format!("{url}: {e}")))
    }

    pub async fn catalog(&self, token: &Token) -> Result<Catalog, AgentError> {
        let url = self.url("/v1/catalog")?;
        let resp = self
            .http
            .get(url.clone())
            .bearer_auth(token.expose())
            .send()
            .await
            .map_err(|e| unreachable(&url, e))?;
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
        resp.json()
            .await
            .map_err(|e| AgentError::Protocol(format!("{url}: {e}")))
    }

    fn url(&self, path: &str) -> Result<Url, AgentError> {
        self.base
            .join(path)
            .map_err(|e| AgentError::Config(format!("relay URL {}: {e}", self.base)))
    }
}

fn unreachable(url: &Url, e: reqwest::Error) -> AgentError {
    // reqwest's Display hides the cause; the message walks the chain.
    AgentError::unreachable_by(url.to_string(), e)
}
