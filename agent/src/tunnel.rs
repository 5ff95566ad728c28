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

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use gangway_wire::Token;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::session::{Ended, Session};
use crate::token::{TimedToken, TokenSource};
use crate::AgentError;

/// Share of a token's lifetime after which it is renewed.
pub const REFRESH_AT: f64 = 0.8;
/// Jitter around [`REFRESH_AT`], as a share of the lifetime (±).
pub const REFRESH_JITTER: f64 = 0.05;
/// How often to look for a new sign-in once one is needed.
const SIGN_IN_POLL: Duration = Duration::from_secs(10);

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
        tls: Arc<rustls::ClientConfig>,
        tokens: TokenSource,
        backoff: Backoff,
        stop: CancellationToken,
    ) -> Tunnel {
        let (tx, rx) = watch::channel(TunnelState::Connecting {
            attempt: 0,
            last_error: None,
        });
        tokio::spawn(supervise(relay, tls, tokens, backoff, stop, tx));
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
    tls: Arc<rustls::ClientConfig>,
    tokens: TokenSource,
    backoff: Backoff,
    stop: CancellationToken,
    state: watch::Sender<TunnelState>,
) {
    let mut attempt = 0u32;
    let mut retried_after_401 = false;
    loop {
        let result = tokio::select! {
            r = connect_once(&relay, &tls, &tokens) => r,
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
                if !retried_after_401 && matches!(tokens, TokenSource::SignedIn(_)) =>
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
    tls: &Arc<rustls::ClientConfig>,
    tokens: &TokenSource,
) -> Result<(Session, TimedToken), AgentError> {
    let held = tokens.current_timed().await?;
    match Session::connect(relay, tls.clone(), &held.token).await {
        Ok(s) => Ok((s, held)),
        Err(e @ AgentError::Unauthorized(_)) => {
            tokens.rejected(&held.token).await;
            Err(e)
        }
        Err(e) => Err(e),
    }
}

fn sign_in_reason(e: &crate::signin::SignInError) -> String {
    match e {
        crate::signin::SignInError::SignInNeeded(why) => why.clone(),
        other => other.to_string(),
    }
}

/// Wall-clock time in Unix seconds (token lifetimes are wall-clock).
fn wall_clock() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// How long from `now` until a token issued at `issued` and expiring at
/// `expires` (Unix seconds) should be renewed: at [`REFRESH_AT`] of its
/// lifetime, moved by `jitter` ∈ [-1, 1] times [`REFRESH_JITTER`] so many
/// agents don't refresh in step. Zero if that time has passed.
pub fn refresh_delay(now: f64, issued: Option<u64>, expires: u64, jitter: f64) -> Duration {
    let expires = expires as f64;
    let issued = issued.map(|i| i as f64).unwrap_or(now).min(expires);
    let lifetime = expires - issued;
    let due = issued + lifetime * (REFRESH_AT + REFRESH_JITTER * jitter.clamp(-1.0, 1.0));
    Duration::from_secs_f64((due - now).max(0.0))
}

/// What [`keep_fresh`] reports to the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Freshness {
    /// A new token was sent to the relay.
    Renewed,
    /// The provider refused for good; the reason.
    SignInNeeded(String),
}

/// Keeps a session's token fresh. Renews `held` ahead of expiry through
/// `renew`, sends each newer token with `send` (in-band; `false` when the
/// session is gone), and reports through `signal`. Transient failures are
/// retried with backoff; a needed sign-in is reported and then looked for
/// every [`SIGN_IN_POLL`] (a `gangway login` elsewhere fills the keychain).
/// A newer token the relay refuses in-band is sent once more after
/// [`REFUSED_RETRY`]; refused again, this returns, and the supervisor
/// reconnects with it (a new connection's 401 is then handled as at
/// start) — before the old token expires, not after. Otherwise it never
/// returns: the supervisor drops it when the session ends.
async fn keep_fresh<R, RF, S, SF>(
    mut held: TimedToken,
    renew: R,
    send: S,
    signal: impl Fn(Freshness),
    renewable: impl Fn() -> bool,
    now: impl Fn() -> f64,
) -> RefusedRefresh
where
    R: Fn(Option<u64>) -> RF,
    RF: Future<Output = Result<TimedToken, AgentError>>,
    S: Fn(Token) -> SF,
    SF: Future<Output = Result<(), AgentError>>,
{
    let mut rng = rand::rngs::StdRng::from_entropy();
    let due = |held: &TimedToken, rng: &mut rand::rngs::StdRng| {
        held.expires_at
            .map(|exp| refresh_delay(now(), held.issued_at, exp, rng.gen_range(-1.0..=1.0)))
    };
    let retry = Backoff {
        base: Duration::from_secs(1),
        max: Duration::from_secs(60),
    };
    let mut failures = 0u32;
    let mut wait = if renewable() {
        due(&held, &mut rng)
    } else {
        None
    };
    loop {
        match wait {
            Some(d) => tokio::time::sleep(d).await,
            // Unknown lifetime or a fixed token: nothing to schedule.
            None => std::future::pending::<()>().await,
        }
        match renew(held.expires_at).await {
            Ok(new) if is_later(new.expires_at, held.expires_at) => {
                let mut sent = send(new.token.clone()).await;
                if let Err(AgentError::Unauthorized(why)) = &sent {
                    tracing::warn!("relay refused the refreshed token ({why}); sending it again");
                    tokio::time::sleep(REFUSED_RETRY).await;
                    sent = send(new.token.clone()).await;
                }
                match sent {
                    Ok(()) => {}
                    Err(AgentError::Unauthorized(why)) => return RefusedRefresh(why),
                    Err(_) => {
                        // The session is closing; the supervisor will notice.
                        wait = None;
                        continue;
                    }
                }
                tracing::info!(
                    expires_in_secs = new.expires_at.map(|e| e.saturating_sub(now() as u64)),
                    "access token refreshed; sent to the relay in-band"
                );
                signal(Freshness::Renewed);
                held = new;
                failures = 0;
                wait = due(&held, &mut rng);
            }
            Ok(_) => {
                // Not newer yet (e.g. a token file nobody replaced): look again.
                failures += 1;
                wait = Some(retry.delay(failures.min(3), &mut rng));
            }
            Err(AgentError::SignIn(e)) if e.needs_sign_in() => {
                signal(Freshness::SignInNeeded(sign_in_reason(&e)));
                wait = Some(SIGN_IN_POLL);
            }
            Err(e) => {
                tracing::warn!("cannot refresh the access token yet: {e}; retrying");
                failures += 1;
                wait = Some(retry.delay(failures, &mut rng));
            }
        }
    }
}

/// How long to wait before sending a refused token once more (the relay
/// may have been fetching its provider's keys).
const REFUSED_RETRY: Duration = Duration::from_secs(2);

/// The relay refused a refreshed token twice, with this reason.
#[derive(Debug, PartialEq, Eq)]
struct RefusedRefresh(String);

fn is_later(new: Option<u64>, old: Option<u64>) -> bool {
    match (new, old) {
        (Some(n), Some(o)) => n > o,
        (Some(_), None) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signin::SignInError;
    use std::sync::{Arc as StdArc, Mutex};

    #[test]
    fn refresh_is_due_at_80_percent_with_bounded_jitter() {
        let d = refresh_delay(1000.0, Some(1000), 1100, 0.0);
        assert_eq!(d, Duration::from_secs(80));
        assert_eq!(
            refresh_delay(1000.0, Some(1000), 1100, 1.0),
            Duration::from_secs(85)
        );
        assert_eq!(
            refresh_delay(1000.0, Some(1000), 1100, -1.0),
            Duration::from_secs(75)
        );
        // Later in the lifetime: less to wait; past the point: now.
        assert_eq!(
            refresh_delay(1050.0, Some(1000), 1100, 0.0),
            Duration::from_secs(30)
        );
        assert_eq!(refresh_delay(1095.0, Some(1000), 1100, 0.0), Duration::ZERO);
        // No issue time: the lifetime counts from now.
        assert_eq!(
            refresh_delay(1000.0, None, 1015, 0.0),
            Duration::from_secs(12)
        );
    }

    /// A fake provider for `keep_fresh`: tokens of `ttl` seconds on a clock
    /// that follows tokio's (paused) time.
    struct Fake {
        start: tokio::time::Instant,
        ttl: u64,
        script: Mutex<Vec<Result<(), SignInError>>>,
        sent: Mutex<Vec<(f64, String)>>,
        signals: Mutex<Vec<(f64, Freshness)>>,
        n: Mutex<u32>,
    }

    impl Fake {
        fn now(&self) -> f64 {
            1_000_000.0 + self.start.elapsed().as_secs_f64()
        }
        fn token(&self) -> TimedToken {
            let now = self.now() as u64;
            let mut n = self.n.lock().unwrap();
            *n += 1;
            TimedToken {
                token: Token::new(format!("t{n}")),
                issued_at: Some(now),
                expires_at: Some(now + self.ttl),
            }
        }
        async fn renew(&self) -> Result<TimedToken, AgentError> {
            let next = {
                let mut s = self.script.lock().unwrap();
                if s.is_empty() {
                    Ok(())
                } else {
                    s.remove(0)
                }
            };
            next.map(|()| self.token()).map_err(AgentError::SignIn)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn keep_fresh_renews_ahead_of_expiry_and_retries_then_reports_sign_in() {
        let fake = StdArc::new(Fake {
            start: tokio::time::Instant::now(),
            ttl: 100,
            script: Mutex::new(vec![
                Ok(()),
                Ok(()),
                Err(SignInError::ProviderUnreachable {
                    issuer: "idp".into(),
                    detail: "down".into(),
                }),
                Ok(()),
                Err(SignInError::SignInNeeded("revoked".into())),
                Err(SignInError::SignInNeeded("revoked".into())),
                Ok(()),
            ]),
            sent: Mutex::new(vec![]),
            signals: Mutex::new(vec![]),
            n: Mutex::new(0),
        });
        let first = fake.token();
        let f = fake.clone();
        let task = keep_fresh(
            first,
            |_| {
                let f = f.clone();
                async move { f.renew().await }
            },
            |t: Token| {
                let f = f.clone();
                async move {
                    f.sent
                        .lock()
                        .unwrap()
                        .push((f.now(), t.expose().to_string()));
                    Ok(())
                }
            },
            |s| fake.signals.lock().unwrap().push((fake.now(), s)),
            || true,
            || fake.now(),
        );
        tokio::select! {
            r = task => panic!("keep_fresh returned {r:?}"),
            _ = tokio::time::sleep(Duration::from_secs(400)) => {}
        }
        let sent = fake.sent.lock().unwrap().clone();
        let t0 = 1_000_000.0;
        // First two renewals at 75..85 % of each 100 s lifetime. `exp` has
        // whole-second resolution, so a token renewed at a fractional second
        // lives up to 1 s less than 100 s: 75 % of 99 s is 74.25 s.
        assert_eq!(sent[0].1, "t2");
        assert!((74.25..=85.0).contains(&(sent[0].0 - t0)), "{sent:?}");
        assert_eq!(sent[1].1, "t3");
        assert!(
            (74.25..=85.0).contains(&(sent[1].0 - sent[0].0)),
            "{sent:?}"
        );
        // The provider was down once: retried within seconds, well before expiry.
        assert_eq!(sent[2].1, "t4");
        assert!(sent[2].0 - sent[1].0 < 85.0 + 2.0, "{sent:?}");
        // Then it refused for good: reported, polled, and a new sign-in resumes.
        let signals = fake.signals.lock().unwrap().clone();
        let needed: Vec<_> = signals
            .iter()
            .filter(|(_, s)| matches!(s, Freshness::SignInNeeded(_)))
            .collect();
        assert_eq!(needed.len(), 2, "{signals:?}");
        assert_eq!(needed[0].1, Freshness::SignInNeeded("revoked".into()));
        let gap = needed[1].0 - needed[0].0;
        assert!(
            (gap - SIGN_IN_POLL.as_secs_f64()).abs() < 0.5,
            "{signals:?}"
        );
        assert_eq!(sent[3].1, "t5");
        assert_eq!(signals.last().unwrap().1, Freshness::Renewed);
    }

    #[tokio::test(start_paused = true)]
    async fn keep_fresh_leaves_fixed_tokens_alone() {
        let sent = StdArc::new(Mutex::new(0));
        let s = sent.clone();
        let task = keep_fresh(
            TimedToken {
                token: Token::new("static"),
                issued_at: Some(0),
                expires_at: Some(10),
            },
            |_| async { Err(AgentError::NoToken("fixed".into())) },
            |_| {
                let s = s.clone();
                async move {
                    *s.lock().unwrap() += 1;
                    Ok(())
                }
            },
            |_| {},
            || false,
            || 5.0,
        );
        tokio::select! {
            r = task => panic!("keep_fresh returned {r:?}"),
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
        assert_eq!(*sent.lock().unwrap(), 0);
    }

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

    /// A refused in-band refresh is sent again; refused twice, keep_fresh
    /// returns (the supervisor reconnects) well before the old token expires.
    #[tokio::test(start_paused = true)]
    async fn refused_refresh_is_retried_then_reconnects_before_expiry() {
        let fake = StdArc::new(Fake {
            start: tokio::time::Instant::now(),
            ttl: 100,
            script: Mutex::new(vec![Ok(()), Ok(()), Ok(())]),
            sent: Mutex::new(vec![]),
            signals: Mutex::new(vec![]),
            n: Mutex::new(0),
        });
        let first = fake.token();
        let old_expiry = first.expires_at.unwrap() as f64;
        let f = fake.clone();
        // The relay refuses the first token sent twice.
        let refusals = StdArc::new(Mutex::new(2u32));
        let r = refusals.clone();
        let refused = keep_fresh(
            first,
            |_| {
                let f = f.clone();
                async move { f.renew().await }
            },
            |t: Token| {
                let (f, r) = (f.clone(), r.clone());
                async move {
                    f.sent
                        .lock()
                        .unwrap()
                        .push((f.now(), t.expose().to_string()));
                    let mut left = r.lock().unwrap();
                    if *left > 0 {
                        *left -= 1;
                        Err(AgentError::Unauthorized("keys_unavailable".into()))
                    } else {
                        Ok(())
                    }
                }
            },
            |s| fake.signals.lock().unwrap().push((fake.now(), s)),
            || true,
            || fake.now(),
        )
        .await;
        assert_eq!(refused, RefusedRefresh("keys_unavailable".into()));
        let sent = fake.sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert_eq!(sent[0].1, sent[1].1, "the same new token, sent again");
        let gap = sent[1].0 - sent[0].0;
        assert!((gap - REFUSED_RETRY.as_secs_f64()).abs() < 0.5, "{sent:?}");
        assert!(fake.now() < old_expiry - 10.0, "gave up too late: {sent:?}");
    }
}
