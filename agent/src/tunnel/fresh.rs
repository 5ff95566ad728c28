//! Keeping a live session's access token fresh: when to renew (at
//! [`REFRESH_AT`] of its lifetime, with jitter), renewing through the token
//! source, sending the new token in-band, and what to do when the provider
//! or the relay refuses. Fed a clock and closures, so it is tested with
//! paused time and no relay.

use std::future::Future;
use std::time::Duration;

use gangway_wire::Token;
use rand::{Rng, SeedableRng};

use super::{sign_in_reason, Backoff, REFRESH_AT, REFRESH_JITTER, SIGN_IN_POLL};
use crate::token::TimedToken;
use crate::AgentError;

/// Wall-clock time in Unix seconds (token lifetimes are wall-clock).
pub(super) fn wall_clock() -> f64 {
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
pub(super) enum Freshness {
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
pub(super) async fn keep_fresh<R, RF, S, SF>(
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
pub(super) struct RefusedRefresh(pub String);

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
