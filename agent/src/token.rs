//! Where the agent's access token comes from.
//!
//! For build machines: `GANGWAY_TOKEN` or a token file (re-read on every
//! connect, so an outside process can rotate it). Interactive sign-in with
//! the OS keychain builds on this.

use std::path::PathBuf;

use gangway_wire::Token;

use crate::AgentError;

/// A source of access tokens.
#[derive(Clone)]
pub enum TokenSource {
    /// A fixed token (from `GANGWAY_TOKEN`, or the demo).
    Static(Token),
    /// A file holding the token; re-read each time.
    File(PathBuf),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::Static(_) => f.write_str("TokenSource::Static(<redacted>)"),
            TokenSource::File(p) => write!(f, "TokenSource::File({})", p.display()),
        }
    }
}

impl TokenSource {
    /// The current token.
    pub async fn current(&self) -> Result<Token, AgentError> {
        match self {
            TokenSource::Static(t) => Ok(t.clone()),
            TokenSource::File(path) => {
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
        }
    }
}
