//! The tunnel supervisor: keeps one session to the relay up, reconnecting
//! with exponential backoff and jitter, and publishes its state.
//!
//! Listeners stay bound while it reconnects; they wait (bounded) for the
//! state to become [`TunnelState::Connected`].
//!
//! While a session is up, the supervisor keeps its access token fresh:
//! at about 80 % of the token's lifetime (with jitter) it gets a new one
//! from the [`TokenSource`] and sends it to the relay in-band over the
//! control channel, so open streams are never cut. When the identity
//! provider refuses for good (revoked or expired sign-in), the state
//! becomes [`TunnelState::SignInNeeded`] with the reason, and listeners
//! answer new connections with it.

use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use url::Url;

mod fresh;

pub use fresh::refresh_delay;
use fresh::{keep_fresh, wall_clock, Freshness};

use crate::net::Egress;
use crate::session::{Ended, Session};
use crate::token::{TimedToken, TokenSource};
use crate::AgentError;

/// Share of a token's lifetime after which it is renewed.
pub const REFRESH_AT: f64 = 0.8;
/// Jitter around [`REFRESH_AT`], as a share of the lifetime (±).
pub const REFRESH_JITTER: f64 = 0.05;
/// How often to look for a new sign-in once one is needed.
pub(crate) const SIGN_IN_POLL: Duration = Duration::from_secs(10);

/// What the tunnel is doing now.
#[derive(Debug, Clone)]
pub enum TunnelState {
    /// Trying to connect; `last_error` says why the previous try failed.
    Connecting {
        attempt: u32,
        last_error: Option<String>,
    },
    Connected(Session),
    /// The relay refuses our token; a new sign-in (or token) is needed.
    /// Retries continue slowly in case a token file is replaced.
    SignInNeeded(String),
    Stopped,
}

/// Backoff for reconnects: exponential from `base` to `max`, with jitter.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(250),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// Delay before attempt `n` (0-based): `min(max, base·2ⁿ)`, scaled by a
    /// random factor in [0.5, 1.0] so many agents don't reconnect in step.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX));
        let capped = exp.min(self.max);
        capped.mul_f64(rng.gen_range(0.5..=1.0))
    }
}

/// Handle on a running tunnel.
#[derive(Clone)]
pub struct Tunnel {
    state: watch::Receiver<TunnelState>,
}

impl Tunnel {
    /// Starts the supervisor task. It runs until `stop` is cancelled.
    pub fn start(
        relay: Url,
        egress: Egress,
        tokens: TokenSource,
        backoff: Backoff,
        stop: CancellationToken,
    ) -> Tunnel {
        let (tx, rx) = watch::channel(TunnelState::Connecting {
            attempt: 0,
            last_error: None,
        });
        tokio::spawn(supervise(relay, egress, tokens, backoff, stop, tx));
        Tunnel { state: rx }
    }

    pub fn state(&self) -> TunnelState {
        self.state.borrow().clone()
    }

    pub fn watch(&self) -> watch::Receiver<TunnelState> {
        self.state.clone()
    }

    /// Waits up to `limit` for a connected session. Fails at once when
    /// sign-in is needed or the tunnel stopped.
    pub async fn session(&self, limit: Duration) -> Result<Session, AgentError> {
        let mut rx = self.state.clone();
        let wait = async {
            rx.wait_for(|s| match s {
                TunnelState::Connected(s) => !s.is_closed(),
                TunnelState::SignInNeeded(_) | TunnelState::Stopped => true,
                TunnelState::Connecting { .. } => false,
            })
            .await
            .map(|s| s.clone())
        };
        match tokio::time::timeout(limit, wait).await {
            Ok(Ok(state)) => match &state {
                TunnelState::Connected(s) => Ok(s.clone()),
                TunnelState::SignInNeeded(why) => {
                    Err(AgentError::Unauthorized(format!("sign-in needed: {why}")))
                }
                _ => Err(AgentError::unreachable("the agent is stopping")),
            },
            Ok(Err(_)) => Err(AgentError::unreachable("the agent is stopping")),
            Err(_) => {
                let why = match &*self.state.borrow() {
                    TunnelState::Connecting {
                        last_error: Some(e),
                        ..
                    } => e.clone(),
                    _ => "still connecting".into(),
                };
                Err(AgentError::unreachable(format!(
                    "relay not reachable after waiting {}s: {why}",
                    limit.as_secs()
                )))
            }
        }
    }
}

async fn supervise(
    relay: Url,
    egress: Egress,
    tokens: TokenSource,
    backoff: Backoff,
    stop: CancellationToken,
    state: watch::Sender<TunnelState>,
) {
    let mut attempt = 0u32;
    let mut retried_after_401 = false;
    loop {
        let result = tokio::select! {
            r = connect_once(&relay, &egress, &tokens) => r,
            _ = stop.cancelled() => break,
        };
        match result {
            Ok((session, held)) => {
                tracing::info!(relay = %relay, session = %session.id, "tunnel connected");
                attempt = 0;
                retried_after_401 = false;
                state.send_replace(TunnelState::Connected(session.clone()));
                let fresh = keep_fresh(
                    held,
                    |than| tokens.renew(than),
                    |token| session.refresh_token(token),
                    |signal| match signal {
                        Freshness::Renewed => {
                            state.send_if_modified(|s| {
                                if matches!(s, TunnelState::SignInNeeded(_)) {
                                    *s = TunnelState::Connected(session.clone());
                                    true
                                } else {
                                    false
                                }
                            });
                        }
                        Freshness::SignInNeeded(why) => {
                            state.send_replace(TunnelState::SignInNeeded(why));
                        }
                    },
                    || tokens.renewable(),
                    wall_clock,
                );
                let ended = tokio::select! {
                    e = session.closed() => e,
                    refused = fresh => Ended::Lost(format!(
                        "the relay refused the refreshed access token twice ({}); reconnecting with it",
                        refused.0
                    )),
                    _ = stop.cancelled() => break,
                };
                let why = match &ended {
                    Ended::Goodbye { reason, .. } => format!("relay closed the session: {reason}"),
                    Ended::Lost(why) => format!("connection lost: {why}"),
                };
                tracing::warn!(relay = %relay, "{why}; reconnecting");
                // A needed sign-in stays the state: new connections are
                // answered with its reason, not kept waiting.
                if !matches!(*state.borrow(), TunnelState::SignInNeeded(_)) {
                    state.send_replace(TunnelState::Connecting {
                        attempt: 0,
                        last_error: Some(why),
                    });
                }
            }
            // A signed-in user's token refused by the relay: refresh once
            // before asking for a new sign-in.
            Err(AgentError::Unauthorized(why))
                if !retried_after_401
                    && matches!(tokens, TokenSource::SignedIn(_) | TokenSource::Service(_)) =>
            {
                tracing::warn!(relay = %relay, "relay refused the access token ({why}); refreshing it");
                retried_after_401 = true;
                state.send_replace(TunnelState::Connecting {
                    attempt,
                    last_error: Some(format!("the relay refused the access token: {why}")),
                });
            }
            Err(AgentError::Unauthorized(why)) | Err(AgentError::NoToken(why)) => {
                tracing::warn!(relay = %relay, "sign-in needed: {why}");
                state.send_replace(TunnelState::SignInNeeded(why));
                attempt = attempt.max(6);
            }
            Err(AgentError::SignIn(e)) if e.needs_sign_in() => {
                let why = sign_in_reason(&e);
                tracing::warn!(relay = %relay, "sign-in needed: {why}");
                state.send_replace(TunnelState::SignInNeeded(why));
                attempt = attempt.max(6);
            }
            Err(e) => {
                tracing::warn!(relay = %relay, attempt, "cannot connect: {e}");
                state.send_replace(TunnelState::Connecting {
                    attempt,
                    last_error: Some(e.to_string()),
                });
            }
        }
        let mut delay = backoff.delay(attempt, &mut rand::thread_rng());
        // Waiting for a sign-in in the keychain costs nothing to check:
        // a `gangway login` elsewhere is picked up within SIGN_IN_POLL.
        if matches!(tokens, TokenSource::SignedIn(_))
            && matches!(*state.borrow(), TunnelState::SignInNeeded(_))
        {
            delay = delay.min(SIGN_IN_POLL);
        }
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => break,
        }
    }
    state.send_replace(TunnelState::Stopped);
}

async fn connect_once(
    relay: &Url,
    egress: &Egress,
    tokens: &TokenSource,
) -> Result<(Session, TimedToken), AgentError> {
    let held = tokens.current_timed().await?;
    let key = tokens.proof_key_for(&held.token).await;
    match Session::connect_with(relay, egress, &held.token, key).await {
        Ok(s) => Ok((s, held)),
        Err(e @ AgentError::Unauthorized(_)) => {
            tokens.rejected(&held.token).await;
            Err(e)
        }
        Err(e) => Err(e),
    }
}

pub(crate) fn sign_in_reason(e: &crate::signin::SignInError) -> String {
    match e {
        crate::signin::SignInError::SignInNeeded(why) => why.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let b = Backoff::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for attempt in 0..40 {
            let d = b.delay(attempt, &mut rng);
            let ceiling = (b.base * 2u32.saturating_pow(attempt.min(20))).min(b.max);
            assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
            assert!(
                d >= ceiling / 2,
                "attempt {attempt}: {d:?} < half of {ceiling:?}"
            );
        }
        assert!(b.delay(30, &mut rng) <= Duration::from_secs(30));
        // Jitter: two draws for the same attempt are not always equal.
        let draws: std::collections::HashSet<_> = (0..20).map(|_| b.delay(5, &mut rng)).collect();
        assert!(draws.len() > 1);
    }
}
