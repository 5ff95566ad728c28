//! One sign-in or sign-out, start to finish, for one environment: the same
//! steps whether `gangway login` runs them or the running agent does (the
//! tray's "Sign in…", a `gangway login` handed to the agent).
//!
//! ```text
//! sign_in:  keychain usable? ─▶ discover provider ─▶ browser or device flow
//!           ─▶ tokens to the keychain ─▶ ask the relay for the catalog (is the token accepted?)
//! sign_out: revoke the refresh token at the provider (best effort) ─▶ delete the keychain entries
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use super::{
    authorization_code, device_code, forget, remember, DevicePrompt, IdentityProvider,
    UnverifiedClaims,
};
use crate::keychain::{namespace_for, Keychain};
use crate::net::Egress;
use crate::relay_api::RelayApi;
use crate::AgentError;

/// How the user proves who they are.
pub enum Method<'a> {
    /// Authorization code + PKCE in a browser. `show` gets the page to open
    /// (it prints it and opens the browser); the redirect must arrive
    /// within `timeout`.
    Browser {
        timeout: Duration,
        show: Box<dyn FnOnce(&Url) + Send + 'a>,
    },
    /// The device authorization grant: `show` tells the user where to enter
    /// which code.
    Device {
        show: Box<dyn FnOnce(&DevicePrompt) + Send + 'a>,
    },
}

/// The result of a sign-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedIn {
    pub environment: String,
    pub relay: String,
    /// Who the relay says signed in (else the token's unverified `sub`).
    pub subject: String,
    /// How many services the relay offers; `None` when the relay could not
    /// be asked (the sign-in is stored all the same).
    pub services: Option<usize>,
    /// Things the user should know (no refresh token, an audience the relay
    /// does not expect, the relay could not confirm the token).
    pub warnings: Vec<String>,
}

/// What happened to the refresh token at sign-out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", content = "reason", rename_all = "snake_case")]
pub enum Revocation {
    /// Revoked at the identity provider.
    Revoked,
    /// The provider offers no revocation: deleted here only.
    NotOffered,
    /// Revocation failed (the reason); deleted here all the same.
    Failed(String),
    /// There was no refresh token.
    NothingToRevoke,
}

/// The result of a sign-out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedOut {
    pub environment: String,
    pub relay: String,
    pub was_signed_in: bool,
    pub revocation: Revocation,
}

/// Signs in to the environment `environment` at `relay` and stores the
/// tokens in `keychain`. Fails before anyone types a password when the
/// keychain cannot be used, and after the sign-in when the relay refuses
/// the new token (it is stored all the same: the relay may be mid-rollout).
pub async fn sign_in(
    environment: &str,
    relay: &Url,
    egress: Egress,
    keychain: &Keychain,
    method: Method<'_>,
) -> Result<SignedIn, AgentError> {
    keychain
        .run(|k| k.probe())
        .await
        .map_err(|e| AgentError::SignIn(e.into()))?;
    let mut idp = IdentityProvider::discover(relay, egress.clone()).await?;
    // Both ends take DPoP: the tokens are bound to this device's key.
    let mut key = None;
    if idp.offers_dpop {
        match crate::dpop::load_or_create(keychain).await {
            Ok(k) => {
                idp = idp.with_proof_key(k.clone());
                key = Some(k);
            }
            Err(e) => tracing::warn!("no DPoP key ({e}); the tokens will be bearer tokens"),
        }
    }
    let set = match method {
        Method::Browser { timeout, show } => authorization_code(&idp, timeout, show).await?,
        Method::Device { show } => device_code(&idp, show).await?,
    };
    let mut warnings = Vec::new();
    if set.refresh.is_none() {
        warnings.push(
            "the identity provider issued no refresh token; \
             you will have to sign in again when the access token expires"
                .to_string(),
        );
    }
    remember(keychain, &set, &idp.issuer).await?;
    let claims = UnverifiedClaims::peek(set.access.expose()).unwrap_or_default();
    if !claims.aud.is_empty() && !claims.aud.iter().any(|a| a == &idp.audience) {
        warnings.push(format!(
            "the access token is for {:?}, but the relay expects audience {:?}",
            claims.aud, idp.audience
        ));
    }
    let mut done = SignedIn {
        environment: environment.to_string(),
        relay: namespace_for(relay),
        subject: claims.sub.unwrap_or_else(|| "(unknown user)".into()),
        services: None,
        warnings,
    };
    match RelayApi::new(relay.clone(), egress)?
        .catalog_with(&set.access, key.as_deref())
        .await
    {
        Ok(c) => {
            done.subject = c.subject;
            done.services = Some(c.services.len());
        }
        Err(AgentError::Unauthorized(why)) => {
            return Err(AgentError::SignedInButRefused {
                subject: done.subject,
                reason: why,
            })
        }
        Err(e) => done.warnings.push(format!(
            "could not check the token with the relay: {}",
            crate::error::error_chain(&e)
        )),
    }
    tracing::info!(environment, subject = %done.subject, "signed in");
    Ok(done)
}

/// Signs out of the environment at `relay`: revokes the refresh token at
/// the provider when it offers revocation (best effort: a provider that
/// cannot be reached does not keep the tokens here), then deletes every
/// keychain entry of this environment.
pub async fn sign_out(
    environment: &str,
    relay: &Url,
    egress: Egress,
    keychain: &Keychain,
) -> Result<SignedOut, AgentError> {
    let idp = IdentityProvider::discover(relay, egress).await;
    let done = forget(keychain, idp.as_ref().map_err(Clone::clone)).await?;
    Ok(SignedOut {
        environment: environment.to_string(),
        relay: namespace_for(relay),
        was_signed_in: done.was_signed_in,
        revocation: match done.revoked {
            Some(Ok(true)) => Revocation::Revoked,
            Some(Ok(false)) => Revocation::NotOffered,
            Some(Err(e)) => Revocation::Failed(crate::error::error_chain(&e)),
            None => Revocation::NothingToRevoke,
        },
    })
}
