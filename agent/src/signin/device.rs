//! The device authorization grant (RFC 8628) for machines without a
//! browser: show a code and a URL, then poll the token endpoint at the
//! provider's interval (slowing down when told to) until someone approves
//! it elsewhere, denies it, or the code expires.

use std::time::Duration;

use oauth2::{DeviceCodeErrorResponseType, Scope, StandardDeviceAuthorizationResponse};

use super::provider::{describe, request_error, IdentityProvider};
use super::tokens::TokenSet;
use super::{now_unix, SignInError};

/// What the user has to do: visit a URL and confirm a code.
#[derive(Debug, Clone)]
pub struct DevicePrompt {
    pub user_code: String,
    pub verification_uri: String,
    /// The URL with the code in it, when the provider offers one.
    pub verification_uri_complete: Option<String>,
    /// How long the code stays valid.
    pub expires_in: Duration,
}

/// Runs the device flow; `show` tells the user what to do.
pub async fn device_code(
    idp: &IdentityProvider,
    show: impl FnOnce(&DevicePrompt),
) -> Result<TokenSet, SignInError> {
    let client = idp.client();
    let mut request = client.exchange_device_code().map_err(|_| {
        idp.refused(
            "it does not offer the device authorization grant (no device_authorization_endpoint)"
                .into(),
        )
    })?;
    for s in &idp.scopes {
        request = request.add_scope(Scope::new(s.clone()));
    }
    let details: StandardDeviceAuthorizationResponse = match request.request_async(idp.http()).await
    {
        Ok(d) => d,
        Err(oauth2::RequestTokenError::ServerResponse(r)) => {
            return Err(idp.refused(format!(
                "device authorization refused: {}",
                describe(r.error().as_ref(), r.error_description())
            )))
        }
        Err(e) => return Err(idp.unreachable(request_error(&e))),
    };
    show(&DevicePrompt {
        user_code: details.user_code().secret().clone(),
        verification_uri: details.verification_uri().to_string(),
        verification_uri_complete: details
            .verification_uri_complete()
            .map(|u| u.secret().clone()),
        expires_in: details.expires_in(),
    });
    // The crate polls at the provider's `interval`, adds 5 s on slow_down,
    // keeps going on authorization_pending, and stops at expires_in.
    let result = client
        .exchange_device_access_token(&details)
        .set_max_backoff_interval(Duration::from_secs(30))
        .request_async(&idp.token_http(), tokio::time::sleep, None)
        .await;
    match result {
        Ok(r) => Ok(TokenSet::from_response(&r, now_unix())),
        Err(oauth2::RequestTokenError::ServerResponse(r)) => {
            let what = describe(r.error().as_ref(), r.error_description());
            Err(match r.error() {
                DeviceCodeErrorResponseType::AccessDenied => SignInError::Denied(what),
                DeviceCodeErrorResponseType::ExpiredToken => SignInError::DeviceCodeExpired,
                _ => idp.refused(format!("device sign-in refused: {what}")),
            })
        }
        Err(e) => Err(idp.unreachable(request_error(&e))),
    }
}
