//! One environment's sign-in, kept in the OS keychain: hands out a usable
//! access token, refreshes it through the provider when needed, stores
//! rotated refresh tokens, and records why a new sign-in is needed when
//! the provider refuses the stored one for good.

use std::sync::Arc;

use url::Url;

use super::provider::IdentityProvider;
use super::tokens::{AccessRecord, Secret, TokenSet, UnverifiedClaims};
use super::{now_unix, SignInError};
use crate::keychain::{Item, Keychain, KeychainError};
use crate::net::Egress;
use crate::token::TimedToken;

/// Signed-in credentials for one relay, backed by the keychain. Share it
/// (`Arc`); one refresh runs at a time.
pub struct Credentials {
    relay: Url,
    egress: Egress,
    keychain: Keychain,
    login_hint: String,
    provider: tokio::sync::OnceCell<Arc<IdentityProvider>>,
    held: tokio::sync::Mutex<Held>,
    /// This device's DPoP key for the environment, once read (or made).
    proof_key: tokio::sync::Mutex<Option<Arc<gangway_dpop::ProofKey>>>,
}

#[derive(Default)]
struct Held {
    access: Option<AccessRecord>,
    /// A token the relay refused: never handed out again.
    rejected: Option<String>,
    /// A rotated refresh token the keychain would not take; kept in memory
    /// so this process can go on.
    unsaved_refresh: Option<Secret>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("relay", &self.relay.as_str())
            .finish()
    }
}

impl TimedToken {
    fn from_record(r: &AccessRecord) -> Self {
        TimedToken {
            token: gangway_wire::Token::new(r.token.clone()),
            issued_at: Some(r.obtained_at),
            expires_at: r.expires_at,
        }
    }
}

impl Credentials {
    /// `login_hint` is the command that signs in to this environment, for
    /// messages (e.g. "gangway login --env prod").
    pub fn new(
        relay: Url,
        egress: Egress,
        keychain: Keychain,
        login_hint: impl Into<String>,
    ) -> Self {
        Credentials {
            relay,
            egress,
            keychain,
            login_hint: login_hint.into(),
            provider: tokio::sync::OnceCell::new(),
            held: tokio::sync::Mutex::new(Held::default()),
            proof_key: tokio::sync::Mutex::new(None),
        }
    }

    /// Uses an already discovered provider (tests, or a CLI that has one).
    pub fn with_provider(self, idp: IdentityProvider) -> Self {
        let _ = self.provider.set(Arc::new(idp));
        self
    }

    pub fn relay(&self) -> &Url {
        &self.relay
    }

    /// An access token usable now: the one held, else the keychain's (maybe
    /// refreshed by another process), else a refreshed one.
    pub async fn current(&self) -> Result<TimedToken, SignInError> {
        let mut held = self.held.lock().await;
        let now = now_unix();
        if let Some(a) = &held.access {
            if a.usable_at(now) && held.rejected.as_deref() != Some(a.token.as_str()) {
                return Ok(TimedToken::from_record(a));
            }
        }
        if let Some(a) = self.stored_access().await? {
            if a.usable_at(now) && held.rejected.as_deref() != Some(a.token.as_str()) {
                held.access = Some(a.clone());
                return Ok(TimedToken::from_record(&a));
            }
        }
        self.refresh_locked(&mut held).await
    }

    /// A token that expires later than `than` (Unix seconds): a fresher one
    /// another process stored, or one refreshed now.
    pub async fn renew(&self, than: Option<u64>) -> Result<TimedToken, SignInError> {
        let mut held = self.held.lock().await;
        if let Some(a) = self.stored_access().await? {
            let later = match (a.expires_at, than) {
                (Some(new), Some(old)) => new > old,
                _ => false,
            };
            if later && a.usable_at(now_unix()) {
                held.access = Some(a.clone());
                return Ok(TimedToken::from_record(&a));
            }
        }
        self.refresh_locked(&mut held).await
    }

    /// The relay refused `token`: don't hand it out again.
    pub async fn reject(&self, token: &gangway_wire::Token) {
        let mut held = self.held.lock().await;
        held.rejected = Some(token.expose().to_string());
        if held.access.as_ref().map(|a| a.token.as_str()) == Some(token.expose()) {
            held.access = None;
        }
    }

    async fn provider(&self) -> Result<Arc<IdentityProvider>, SignInError> {
        self.provider
            .get_or_try_init(|| async {
                IdentityProvider::discover(&self.relay, self.egress.clone())
                    .await
                    .map(Arc::new)
            })
            .await
            .cloned()
    }

    /// This device's DPoP key, read from the keychain (made there first
    /// when `create`); read again when `token` is bound to another key (a
    /// `gangway login` elsewhere made a new one). `None` when there is none
    /// or the keychain fails (then tokens travel as bearer tokens).
    pub async fn proof_key(
        &self,
        token: Option<&gangway_wire::Token>,
        create: bool,
    ) -> Option<Arc<gangway_dpop::ProofKey>> {
        let mut slot = self.proof_key.lock().await;
        let jkt = token
            .and_then(|t| UnverifiedClaims::peek(t.expose()))
            .and_then(|c| c.cnf)
            .and_then(|c| c.jkt);
        let stale = match (&*slot, &jkt) {
            (None, _) => true,
            (Some(k), Some(j)) => k.thumbprint() != j,
            (Some(_), None) => false,
        };
        if stale {
            let found = if create {
                crate::dpop::load_or_create(&self.keychain).await.map(Some)
            } else {
                crate::dpop::load(&self.keychain).await
            };
            match found {
                Ok(Some(k)) => *slot = Some(k),
                Ok(None) => {}
                Err(e) => tracing::warn!(relay = %self.relay, "cannot read the DPoP key: {e}"),
            }
        }
        slot.clone()
    }

    async fn stored_access(&self) -> Result<Option<AccessRecord>, SignInError> {
        let raw = self.keychain.run(|k| k.get(Item::Access)).await?;
        Ok(raw.as_deref().and_then(AccessRecord::from_json))
    }

    fn needed(&self, why: &str) -> SignInError {
        SignInError::SignInNeeded(format!("{why}; run `{}`", self.login_hint))
    }

    async fn refresh_locked(&self, held: &mut Held) -> Result<TimedToken, SignInError> {
        // Twice at most: if the stored refresh token is refused but another
        // process has meanwhile stored a new one, that one gets a try.
        for _ in 0..2 {
            let stored = self.keychain.run(|k| k.get(Item::Refresh)).await?;
            let refresh = match (&held.unsaved_refresh, stored) {
                (Some(r), _) => r.clone(),
                (None, Some(r)) => Secret::new(r),
                (None, None) => {
                    let why = self.keychain.run(|k| k.get(Item::Status)).await?;
                    return Err(self.needed(&why.unwrap_or_else(|| {
                        format!(
                            "not signed in to {}",
                            crate::keychain::namespace_for(&self.relay)
                        )
                    })));
                }
            };
            let mut idp = (*self.provider().await?).clone();
            if idp.offers_dpop {
                if let Some(k) = self.proof_key(None, true).await {
                    idp = idp.with_proof_key(k);
                }
            }
            match idp.refresh(&refresh).await {
                Ok(set) => {
                    tracing::debug!(relay = %self.relay, "access token refreshed");
                    return Ok(self.keep(held, &set, &idp.issuer).await);
                }
                Err(SignInError::SignInNeeded(why)) => {
                    let now_stored = self.keychain.run(|k| k.get(Item::Refresh)).await?;
                    if held.unsaved_refresh.is_none()
                        && now_stored.as_deref().is_some_and(|s| s != refresh.expose())
                    {
                        continue;
                    }
                    // The stored sign-in is dead: drop it, and note why for
                    // `gangway status` and the next process.
                    let note = why.clone();
                    self.keychain
                        .run(move |k| {
                            k.delete(Item::Refresh)?;
                            k.delete(Item::Access)?;
                            k.set(Item::Status, &note)
                        })
                        .await?;
                    held.access = None;
                    held.unsaved_refresh = None;
                    tracing::warn!(relay = %self.relay, "sign-in needed: {why}");
                    return Err(self.needed(&why));
                }
                Err(e) => return Err(e),
            }
        }
        Err(self.needed("the stored sign-in keeps being replaced"))
    }

    /// Stores a refresh result: the rotated refresh token first, then the
    /// access token. A keychain failure is logged, and the tokens are kept
    /// in memory so this process goes on.
    async fn keep(&self, held: &mut Held, set: &TokenSet, issuer: &str) -> TimedToken {
        if let Some(r) = set.refresh.clone() {
            let value = r.expose().to_string();
            match self
                .keychain
                .run(move |k| k.set(Item::Refresh, &value))
                .await
            {
                Ok(()) => held.unsaved_refresh = None,
                Err(e) => {
                    tracing::error!(
                        relay = %self.relay,
                        "cannot store the new refresh token in the OS keychain ({e}); \
                         it is kept in memory only, so you will have to sign in again \
                         after this agent stops"
                    );
                    held.unsaved_refresh = Some(r);
                }
            }
        }
        let record = AccessRecord::from_set(set, issuer);
        let json = record.to_json();
        if let Err(e) = self.keychain.run(move |k| k.set(Item::Access, &json)).await {
            tracing::warn!(relay = %self.relay, "cannot store the access token in the OS keychain: {e}");
        }
        held.access = Some(record.clone());
        held.rejected = None;
        TimedToken::from_record(&record)
    }
}

/// Stores a fresh sign-in: the refresh token first, then the access token,
/// then clears any "sign-in needed" note.
pub async fn remember(
    keychain: &Keychain,
    set: &TokenSet,
    issuer: &str,
) -> Result<(), SignInError> {
    let refresh = set.refresh.as_ref().map(|r| r.expose().to_string());
    let access = AccessRecord::from_set(set, issuer).to_json();
    keychain
        .run(move |k| {
            match &refresh {
                Some(r) => k.set(Item::Refresh, r)?,
                None => {
                    k.delete(Item::Refresh)?;
                }
            }
            k.set(Item::Access, &access)?;
            k.delete(Item::Status)?;
            Ok(())
        })
        .await?;
    Ok(())
}

/// What `forget` did.
#[derive(Debug)]
pub struct Forgotten {
    /// Whether anything was stored for this environment.
    pub was_signed_in: bool,
    /// `Some(Ok(true))` revoked at the provider, `Some(Ok(false))` the
    /// provider offers no revocation, `Some(Err)` revocation failed,
    /// `None` there was no refresh token to revoke.
    pub revoked: Option<Result<bool, SignInError>>,
}

/// Signs out: revokes the refresh token at the provider when it offers
/// revocation (best effort), then deletes every keychain entry of this
/// environment. `provider` is `Err` when it could not be discovered.
pub async fn forget(
    keychain: &Keychain,
    provider: Result<&IdentityProvider, SignInError>,
) -> Result<Forgotten, SignInError> {
    let refresh = keychain.run(|k| k.get(Item::Refresh)).await?;
    let revoked = match (refresh, provider) {
        (None, _) => None,
        (Some(r), Ok(idp)) => Some(idp.revoke(&Secret::new(r)).await),
        (Some(_), Err(e)) => Some(Err(e)),
    };
    let was_signed_in = keychain.run(|k| k.delete_all()).await?;
    Ok(Forgotten {
        was_signed_in,
        revoked,
    })
}

/// What the keychain says about an environment.
#[derive(Debug, Clone)]
pub enum SignInStatus {
    SignedIn {
        /// From the access token, **unverified** (display only).
        subject: Option<String>,
        issuer: String,
        /// When the stored access token expires (Unix seconds).
        expires_at: Option<u64>,
        /// Whether a refresh token is stored (else: sign in again at expiry).
        refreshable: bool,
    },
    /// A refresh failed for good; the reason.
    SignInNeeded(String),
    NotSignedIn,
}

/// Reads the keychain only: no network, nothing trusted.
pub async fn status(keychain: &Keychain) -> Result<SignInStatus, KeychainError> {
    let (refresh, access, note) = keychain
        .run(|k| {
            Ok((
                k.get(Item::Refresh)?.is_some(),
                k.get(Item::Access)?,
                k.get(Item::Status)?,
            ))
        })
        .await?;
    let access = access.as_deref().and_then(AccessRecord::from_json);
    if let Some(note) = note {
        if !refresh {
            return Ok(SignInStatus::SignInNeeded(note));
        }
    }
    match access {
        None if !refresh => Ok(SignInStatus::NotSignedIn),
        None => Ok(SignInStatus::SignedIn {
            subject: None,
            issuer: String::new(),
            expires_at: None,
            refreshable: true,
        }),
        Some(a) => {
            let claims = UnverifiedClaims::peek(&a.token).unwrap_or_default();
            if !refresh && !a.usable_at(now_unix()) {
                return Ok(SignInStatus::SignInNeeded(
                    "the access token expired and no refresh token is stored".into(),
                ));
            }
            Ok(SignInStatus::SignedIn {
                subject: claims.sub,
                issuer: a.issuer,
                expires_at: a.expires_at.or(claims.exp),
                refreshable: refresh,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keychain::MemoryStore;
    use gangway_wire::Token;

    fn keychain() -> (MemoryStore, Keychain) {
        let store = MemoryStore::new();
        let k = Keychain::new(
            Arc::new(store.clone()),
            &Url::parse("https://relay.example").unwrap(),
        );
        (store, k)
    }

    fn set(access: &str, refresh: Option<&str>, ttl: u64) -> TokenSet {
        let now = now_unix();
        TokenSet {
            access: Token::new(access),
            refresh: refresh.map(Secret::new),
            obtained_at: now,
            expires_at: Some(now + ttl),
        }
    }

    fn creds(k: &Keychain) -> Credentials {
        let egress = crate::net::Egress::direct(crate::tls::client_config(None).unwrap());
        Credentials::new(
            Url::parse("https://relay.example").unwrap(),
            egress,
            k.clone(),
            "gangway login --env test",
        )
    }

    #[tokio::test]
    async fn a_stored_usable_token_is_handed_out_without_the_provider() {
        let (_, k) = keychain();
        remember(&k, &set("access-1", Some("refresh-1"), 600), "https://idp")
            .await
            .unwrap();
        let c = creds(&k);
        let t = c.current().await.unwrap();
        assert_eq!(t.token.expose(), "access-1");
        assert!(t.expires_at.unwrap() > now_unix());
        match status(&k).await.unwrap() {
            SignInStatus::SignedIn {
                issuer,
                refreshable,
                ..
            } => {
                assert_eq!(issuer, "https://idp");
                assert!(refreshable);
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn no_refresh_token_means_sign_in_needed_with_the_hint() {
        let (_, k) = keychain();
        let c = creds(&k);
        let e = c.current().await.unwrap_err();
        assert!(e.needs_sign_in());
        let msg = e.to_string();
        assert!(
            msg.contains("not signed in to https://relay.example"),
            "{msg}"
        );
        assert!(msg.contains("gangway login --env test"), "{msg}");
        assert!(matches!(
            status(&k).await.unwrap(),
            SignInStatus::NotSignedIn
        ));

        // A note left by a failed refresh is what status and errors show.
        k.run(|k| k.set(Item::Status, "the identity provider no longer accepts it"))
            .await
            .unwrap();
        let msg = c.current().await.unwrap_err().to_string();
        assert!(msg.contains("no longer accepts it"), "{msg}");
        assert!(matches!(
            status(&k).await.unwrap(),
            SignInStatus::SignInNeeded(_)
        ));
        // A new sign-in clears the note.
        remember(&k, &set("a", Some("r"), 600), "https://idp")
            .await
            .unwrap();
        assert!(matches!(
            status(&k).await.unwrap(),
            SignInStatus::SignedIn { .. }
        ));
    }

    #[tokio::test]
    async fn renew_takes_a_fresher_token_stored_by_another_process() {
        let (_, k) = keychain();
        remember(&k, &set("old", Some("r"), 600), "https://idp")
            .await
            .unwrap();
        let c = creds(&k);
        let held = c.current().await.unwrap();
        remember(&k, &set("newer", Some("r2"), 1200), "https://idp")
            .await
            .unwrap();
        let t = c.renew(held.expires_at).await.unwrap();
        assert_eq!(t.token.expose(), "newer");
    }

    #[tokio::test]
    async fn forget_deletes_everything_and_keeps_other_environments() {
        let (store, k) = keychain();
        let other = Keychain::new(
            Arc::new(store.clone()),
            &Url::parse("https://other.example").unwrap(),
        );
        remember(&k, &set("a", Some("r"), 600), "https://idp")
            .await
            .unwrap();
        remember(&other, &set("b", Some("s"), 600), "https://idp")
            .await
            .unwrap();
        let f = forget(
            &k,
            Err(SignInError::Local("no provider in this test".into())),
        )
        .await
        .unwrap();
        assert!(f.was_signed_in);
        assert!(matches!(f.revoked, Some(Err(_))));
        assert!(matches!(
            status(&k).await.unwrap(),
            SignInStatus::NotSignedIn
        ));
        assert!(matches!(
            status(&other).await.unwrap(),
            SignInStatus::SignedIn { .. }
        ));
        assert!(store
            .names()
            .iter()
            .all(|n| n.starts_with("https://other.example#")));
    }
}
