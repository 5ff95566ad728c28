//! Signing in to an environment's identity provider, and keeping the
//! resulting tokens fresh.
//!
//! ```text
//! relay URL ─GET /.well-known/gangway─▶ issuer, client id, audience, scopes
//!   issuer ─GET /.well-known/openid-configuration─▶ endpoints      (provider.rs)
//!   browser: authorization code + PKCE, loopback redirect           (loopback.rs, browser.rs)
//!   headless: device authorization grant                            (device.rs)
//!   tokens ─▶ OS keychain; refreshed ahead of expiry                (credentials.rs)
//!   the whole sign-in / sign-out of one environment                 (flow.rs)
//!   build machines: client credentials, token in memory            (service_account.rs)
//! ```
//!
//! The OAuth protocol itself is the `oauth2` crate's; this module chooses
//! the parameters (S256, `state`, `offline_access`, `prompt=consent`), runs
//! the loopback listener, and turns the provider's answers into
//! [`SignInError`]s that say whether a new sign-in is needed.

mod browser;
mod credentials;
mod device;
mod flow;
mod loopback;
mod provider;
mod service_account;
mod tokens;

pub use browser::{browser_commands, open_browser};
pub use credentials::{forget, remember, status, Credentials, SignInStatus};
pub use device::{device_code, DevicePrompt};
pub use flow::{sign_in, sign_out, Method, Revocation, SignedIn, SignedOut};
pub use loopback::authorization_code;
pub use provider::{IdentityProvider, OpenIdConfiguration};
pub use service_account::{ClientCredentials, ServiceAccount, CLIENT_ID_VAR, CLIENT_SECRET_VAR};
pub use tokens::{stored_access_token, Confirmation, Secret, TokenSet, UnverifiedClaims};

use crate::keychain::KeychainError;

/// Why signing in (or refreshing) did not work.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SignInError {
    /// The relay's discovery document could not be read.
    #[error("cannot read the relay's sign-in settings: {detail}")]
    Relay { detail: String, retryable: bool },
    /// The identity provider could not be reached (or answered with a
    /// server error). Trying again later may work.
    #[error("identity provider {issuer} is unreachable: {detail}")]
    ProviderUnreachable { issuer: String, detail: String },
    /// The identity provider answered, but not with what the agent needs
    /// (bad configuration, unsupported flow, unexpected error).
    #[error("identity provider {issuer}: {detail}")]
    Provider { issuer: String, detail: String },
    /// The user (or the provider's policy) denied the sign-in.
    #[error("sign-in was denied at the identity provider: {0}")]
    Denied(String),
    /// The stored sign-in is gone for good (refresh token revoked or
    /// expired, or never signed in): the user has to sign in again.
    #[error("sign-in needed: {0}")]
    SignInNeeded(String),
    /// The redirect carried a `state` other than the one this login sent.
    #[error(
        "the sign-in response did not match this login (state mismatch); \
         nothing was stored, run `gangway login` again"
    )]
    StateMismatch,
    /// Nobody finished the browser sign-in in time.
    #[error(
        "no sign-in completed in the browser within {0} s (was the page closed?); \
         run `gangway login` again, or `gangway login --device` on a machine without a browser"
    )]
    TimedOut(u64),
    /// The device code expired before anyone approved it.
    #[error("the code expired before it was approved; run `gangway login --device` again")]
    DeviceCodeExpired,
    /// The OS keychain could not be used.
    #[error(transparent)]
    Keychain(#[from] KeychainError),
    /// Something on this machine failed (e.g. the loopback port).
    #[error("{0}")]
    Local(String),
}

impl SignInError {
    /// Whether trying again later may succeed without the user doing anything.
    pub fn retryable(&self) -> bool {
        match self {
            SignInError::Relay { retryable, .. } => *retryable,
            SignInError::ProviderUnreachable { .. } => true,
            _ => false,
        }
    }

    /// Whether only a new interactive sign-in can fix this.
    pub fn needs_sign_in(&self) -> bool {
        matches!(self, SignInError::SignInNeeded(_))
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
