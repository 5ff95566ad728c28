//! Build machines and service accounts: the OAuth 2.0 client credentials
//! grant (RFC 6749 §4.4). No user, no browser and no keychain: the client
//! id and secret come from the environment or a file, the access token is
//! kept in memory only and fetched again before it expires.

use std::path::Path;
use std::sync::Arc;

use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{ClientId, ClientSecret as OAuthSecret, Scope, TokenUrl};
use url::Url;

use super::provider::{describe, request_error, IdentityProvider, OFFLINE_ACCESS};
use super::tokens::{Secret, TokenSet};
use super::{now_unix, SignInError};
use crate::net::Egress;
use crate::token::TimedToken;

/// The variable holding the service account's client id.
pub const CLIENT_ID_VAR: &str = "GANGWAY_CLIENT_ID";
/// The variable holding its secret (or use a file: [`ClientCredentials::from_env`]).
pub const CLIENT_SECRET_VAR: &str = "GANGWAY_CLIENT_SECRET";

/// Longest secret file read.
const MAX_SECRET_FILE: u64 = 16 * 1024;

/// A confidential client's id and secret. `Debug` shows the id only.
#[derive(Clone)]
pub struct ClientCredentials {
    pub client_id: String,
    secret: Secret,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("client_id", &self.client_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl ClientCredentials {
    pub fn new(client_id: impl Into<String>, secret: Secret) -> Self {
        ClientCredentials {
            client_id: client_id.into(),
            secret,
        }
    }

    /// The id from `client_id` (a flag) or `GANGWAY_CLIENT_ID`; the secret
    /// from `secret_file` or `GANGWAY_CLIENT_SECRET`. Never from a command
    /// line argument: other local users can read those.
    pub fn from_env(
        client_id: Option<&str>,
        secret_file: Option<&Path>,
    ) -> Result<Self, SignInError> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let client_id = match client_id {
            Some(id) => id.trim().to_string(),
            None => env(CLIENT_ID_VAR)
                .map(|v| v.trim().to_string())
                .ok_or_else(|| {
                    SignInError::Local(format!(
                        "no client id for the client credentials sign-in: set {CLIENT_ID_VAR} or pass --client-id"
                    ))
                })?,
        };
        if client_id.is_empty() || client_id.chars().any(|c| c.is_control()) {
            return Err(SignInError::Local(
                "the client id is empty or has control characters".into(),
            ));
        }
        let secret = match secret_file {
            Some(path) => read_secret_file(path)?,
            None => env(CLIENT_SECRET_VAR).ok_or_else(|| {
                SignInError::Local(format!(
                    "no client secret for {client_id}: set {CLIENT_SECRET_VAR} or pass --client-secret-file FILE"
                ))
            })?,
        };
        let secret = secret.trim().to_string();
        if secret.is_empty() {
            return Err(SignInError::Local(format!(
                "the client secret for {client_id} is empty"
            )));
        }
        Ok(ClientCredentials::new(client_id, Secret::new(secret)))
    }
}

fn read_secret_file(path: &Path) -> Result<String, SignInError> {
    use std::io::Read;
    let bad =
        |why: String| SignInError::Local(format!("client secret file {}: {why}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata().map_err(|e| bad(e.to_string()))?;
        if meta.mode() & 0o007 != 0 {
            tracing::warn!(
                file = %path.display(),
                "the client secret file can be read by every user of this machine; chmod o-rwx it"
            );
        }
    }
    let mut text = String::new();
    file.take(MAX_SECRET_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| bad(e.to_string()))?;
    if text.len() as u64 > MAX_SECRET_FILE {
        return Err(bad(format!("longer than {MAX_SECRET_FILE} bytes")));
    }
    Ok(text)
}

impl IdentityProvider {
    /// One client credentials grant: an access token for the relay's
    /// audience (sent as the `resource` indicator, RFC 8707) with the
    /// relay's scopes (no `offline_access`: there is nothing to refresh).
    pub async fn client_credentials(
        &self,
        creds: &ClientCredentials,
    ) -> Result<TokenSet, SignInError> {
        let client = BasicClient::new(ClientId::new(creds.client_id.clone()))
            .set_client_secret(OAuthSecret::new(creds.secret.expose().to_string()))
            .set_token_uri(TokenUrl::from_url(self.token_endpoint.clone()));
        let scopes = self
            .scopes
            .iter()
            .filter(|s| s.as_str() != OFFLINE_ACCESS && s.as_str() != "openid")
            .map(|s| Scope::new(s.clone()));
        let response = client
            .exchange_client_credentials()
            .add_scopes(scopes)
            .add_extra_param("resource", self.audience.clone())
            .request_async(self.http())
            .await;
        match response {
            Ok(r) => Ok(TokenSet::from_response(&r, now_unix())),
            Err(oauth2::RequestTokenError::ServerResponse(r)) => {
                let what = describe(r.error().as_ref(), r.error_description());
                Err(match r.error() {
                    BasicErrorResponseType::InvalidClient
                    | BasicErrorResponseType::UnauthorizedClient => {
                        SignInError::SignInNeeded(format!(
                            "the identity provider refused the client id {} or its secret ({what})",
                            creds.client_id
                        ))
                    }
                    _ => self.refused(format!("client credentials grant refused: {what}")),
                })
            }
            Err(e) => Err(self.unreachable(request_error(&e))),
        }
    }
}

/// A service account's tokens for one relay: fetched with the client
/// credentials grant when none is held or the held one nears its expiry.
/// Share it (`Arc`); one request to the provider runs at a time.
pub struct ServiceAccount {
    relay: Url,
    egress: Egress,
    creds: ClientCredentials,
    provider: tokio::sync::OnceCell<Arc<IdentityProvider>>,
    held: tokio::sync::Mutex<Option<TokenSet>>,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("relay", &self.relay.as_str())
            .field("client_id", &self.creds.client_id)
            .finish()
    }
}

impl ServiceAccount {
    pub fn new(relay: Url, egress: Egress, creds: ClientCredentials) -> Self {
        ServiceAccount {
            relay,
            egress,
            creds,
            provider: tokio::sync::OnceCell::new(),
            held: tokio::sync::Mutex::new(None),
        }
    }

    pub fn relay(&self) -> &Url {
        &self.relay
    }

    pub fn client_id(&self) -> &str {
        &self.creds.client_id
    }

    /// The held token while usable (a fifth of its life in reserve), else
    /// a new one.
    pub async fn current(&self) -> Result<TimedToken, SignInError> {
        let mut held = self.held.lock().await;
        if let Some(set) = held.as_ref() {
            if usable(set, now_unix()) {
                return Ok(timed(set));
            }
        }
        self.fetch_locked(&mut held).await
    }

    /// A token expiring later than `than`: the held one if it does (another
    /// caller renewed first), else a new one.
    pub async fn renew(&self, than: Option<u64>) -> Result<TimedToken, SignInError> {
        let mut held = self.held.lock().await;
        if let (Some(set), Some(old)) = (held.as_ref(), than) {
            if set.expires_at.is_some_and(|e| e > old) && usable(set, now_unix()) {
                return Ok(timed(set));
            }
        }
        self.fetch_locked(&mut held).await
    }

    /// The relay refused `token`: drop it so the next call fetches anew.
    pub async fn reject(&self, token: &gangway_wire::Token) {
        let mut held = self.held.lock().await;
        if held
            .as_ref()
            .is_some_and(|s| s.access.expose() == token.expose())
        {
            *held = None;
        }
    }

    async fn fetch_locked(&self, held: &mut Option<TokenSet>) -> Result<TimedToken, SignInError> {
        let idp = self
            .provider
            .get_or_try_init(|| async {
                IdentityProvider::discover(&self.relay, self.egress.clone())
                    .await
                    .map(Arc::new)
            })
            .await?;
        let set = idp.client_credentials(&self.creds).await?;
        let out = timed(&set);
        *held = Some(set);
        Ok(out)
    }
}

fn timed(set: &TokenSet) -> TimedToken {
    TimedToken {
        token: set.access.clone(),
        issued_at: Some(set.obtained_at),
        expires_at: set.expires_at,
    }
}

/// Usable at `now` with a fifth of its lifetime (at most 30 s) in reserve.
fn usable(set: &TokenSet, now: u64) -> bool {
    match set.expires_at {
        Some(exp) => {
            let reserve = (exp.saturating_sub(set.obtained_at) / 5).min(30);
            exp > now + reserve
        }
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(obtained: u64, expires: Option<u64>) -> TokenSet {
        TokenSet {
            access: gangway_wire::Token::new("t"),
            refresh: None,
            obtained_at: obtained,
            expires_at: expires,
        }
    }

    #[test]
    fn a_token_near_its_expiry_is_not_handed_out() {
        // 60 s token: 12 s reserve.
        assert!(usable(&set(1000, Some(1060)), 1047));
        assert!(!usable(&set(1000, Some(1060)), 1048));
        // Long tokens: 30 s reserve at most.
        assert!(usable(&set(0, Some(3600)), 3569));
        assert!(!usable(&set(0, Some(3600)), 3570));
        assert!(usable(&set(0, None), u64::MAX / 2));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let c = ClientCredentials::new("ci-dev", Secret::new("s3cr3t-value"));
        let shown = format!("{c:?}");
        assert!(shown.contains("ci-dev"), "{shown}");
        assert!(!shown.contains("s3cr3t-value"), "{shown}");
    }

    #[test]
    fn secret_file_is_read_trimmed_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok");
        std::fs::write(&ok, "  the-secret\n").unwrap();
        let c = ClientCredentials::from_env(Some("svc"), Some(&ok)).unwrap();
        assert_eq!(c.secret.expose(), "the-secret");

        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let e = ClientCredentials::from_env(Some("svc"), Some(&empty)).unwrap_err();
        assert!(e.to_string().contains("is empty"), "{e}");

        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; MAX_SECRET_FILE as usize + 1]).unwrap();
        let e = ClientCredentials::from_env(Some("svc"), Some(&big)).unwrap_err();
        assert!(e.to_string().contains("longer than"), "{e}");

        let e = ClientCredentials::from_env(Some("svc"), Some(&dir.path().join("missing")))
            .unwrap_err();
        assert!(e.to_string().contains("client secret file"), "{e}");
        let e = ClientCredentials::from_env(Some("a\nb"), Some(&ok)).unwrap_err();
        assert!(e.to_string().contains("control characters"), "{e}");
    }
}
