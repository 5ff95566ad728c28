//! Where the agent's access token comes from.
//!
//! - Interactive use: the OS keychain, filled by `gangway login` and kept
//!   fresh by refreshing through the identity provider ([`Credentials`]).
//! - Build machines: a service account's client credentials, the token
//!   kept in memory and fetched anew before it expires ([`ServiceAccount`]);
//!   or `GANGWAY_TOKEN`, or a token file re-read on every connect and
//!   refresh, so an outside process can rotate it.

use std::path::PathBuf;
use std::sync::Arc;

use gangway_wire::Token;

use crate::signin::{Credentials, ServiceAccount, UnverifiedClaims};
use crate::AgentError;

/// A source of access tokens.
#[derive(Clone)]
pub enum TokenSource {
    /// A fixed token (from `GANGWAY_TOKEN`, or the demo).
    Static(Token),
    /// A file holding the token; re-read each time.
    File(PathBuf),
    /// The signed-in user's tokens in the OS keychain, refreshed as needed.
    SignedIn(Arc<Credentials>),
    /// A service account's client credentials grant; token in memory only.
    Service(Arc<ServiceAccount>),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::Static(_) => f.write_str("TokenSource::Static(<redacted>)"),
            TokenSource::File(p) => write!(f, "TokenSource::File({})", p.display()),
            TokenSource::SignedIn(c) => write!(f, "TokenSource::SignedIn({})", c.relay()),
            TokenSource::Service(a) => write!(f, "TokenSource::Service({})", a.client_id()),
        }
    }
}

/// An access token and what is known of its lifetime (Unix seconds). The
/// times come from the token response, or from the token's own claims read
/// without verification: good for scheduling a refresh, never for trust.
#[derive(Debug, Clone)]
pub struct TimedToken {
    pub token: Token,
    pub issued_at: Option<u64>,
    pub expires_at: Option<u64>,
}

impl TimedToken {
    /// Times read from the token itself, if it is a JWT.
    pub fn peek(token: Token) -> Self {
        let claims = UnverifiedClaims::peek(token.expose()).unwrap_or_default();
        TimedToken {
            token,
            issued_at: claims.iat,
            expires_at: claims.exp,
        }
    }
}

impl TokenSource {
    /// The current token.
    pub async fn current(&self) -> Result<Token, AgentError> {
        Ok(self.current_timed().await?.token)
    }

    /// The current token with its lifetime.
    pub async fn current_timed(&self) -> Result<TimedToken, AgentError> {
        match self {
            TokenSource::Static(t) => Ok(TimedToken::peek(t.clone())),
            TokenSource::File(path) => read_file(path).await.map(TimedToken::peek),
            TokenSource::SignedIn(c) => Ok(c.current().await?),
            TokenSource::Service(a) => Ok(a.current().await?),
        }
    }

    /// Whether [`TokenSource::renew`] can ever give a new token.
    pub fn renewable(&self) -> bool {
        !matches!(self, TokenSource::Static(_))
    }

    /// A token to replace one that expires at `than`: refreshed through
    /// the provider, or re-read from the file. It may be no newer (a file
    /// nobody replaced yet); the caller compares expiries.
    pub async fn renew(&self, than: Option<u64>) -> Result<TimedToken, AgentError> {
        match self {
            TokenSource::SignedIn(c) => Ok(c.renew(than).await?),
            TokenSource::Service(a) => Ok(a.renew(than).await?),
            other => other.current_timed().await,
        }
    }

    /// This device's DPoP key for `token`, when the token comes from a
    /// sign-in (bound tokens need it; token files and `GANGWAY_TOKEN` are
    /// bearer tokens).
    pub async fn proof_key_for(&self, token: &Token) -> Option<Arc<gangway_dpop::ProofKey>> {
        match self {
            TokenSource::SignedIn(c) => c.proof_key(Some(token), false).await,
            _ => None,
        }
    }

    /// The relay refused `token` (HTTP 401): don't offer it again.
    pub async fn rejected(&self, token: &Token) {
        match self {
            TokenSource::SignedIn(c) => c.reject(token).await,
            TokenSource::Service(a) => a.reject(token).await,
            _ => {}
        }
    }
}

async fn read_file(path: &std::path::Path) -> Result<Token, AgentError> {
    let text = tokio::fs::read_to_string(path).await.map_err(|e| {
        AgentError::NoToken(format!("cannot read token file {}: {e}", path.display()))
    })?;
    let t = text.trim();
    if t.is_empty() {
        return Err(AgentError::NoToken(format!(
            "token file {} is empty",
            path.display()
        )));
    }
    Ok(Token::new(t))
}
