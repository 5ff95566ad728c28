//! When to notify the user: sign-in needed, relay unreachable for more than
//! a minute, back online. A small state machine fed with the agent's phase
//! and the time, so its rules are tested without a desktop.

use std::time::Duration;

use tokio::time::Instant;

use crate::status::{NoticeKind, Phase};

/// How long the relay must stay unreachable before the user is told.
pub const UNREACHABLE_NOTICE_AFTER: Duration = Duration::from_secs(60);

/// Decides which notifications to show.
#[derive(Debug)]
pub struct Notifier {
    after: Duration,
    down_since: Option<Instant>,
    told_down: bool,
    told_sign_in: bool,
}

impl Notifier {
    pub fn new(after: Duration) -> Self {
        Notifier {
            after,
            down_since: None,
            told_down: false,
            told_sign_in: false,
        }
    }

    /// Feeds the current phase at `now` (on every change, and every few
    /// seconds); returns what to announce, if anything.
    pub fn observe(&mut self, now: Instant, phase: &Phase) -> Option<NoticeKind> {
        match phase {
            Phase::SignInNeeded { .. } => {
                self.down_since = None;
                self.told_down = false;
                if self.told_sign_in {
                    None
                } else {
                    self.told_sign_in = true;
                    Some(NoticeKind::SignInNeeded)
                }
            }
            Phase::Connecting { last_error } | Phase::Reconnecting { last_error } => {
                self.told_sign_in = false;
                if last_error.is_none() && !matches!(phase, Phase::Reconnecting { .. }) {
                    return None;
                }
                let since = *self.down_since.get_or_insert(now);
                if !self.told_down && now.duration_since(since) >= self.after {
                    self.told_down = true;
                    return Some(NoticeKind::RelayUnreachable);
                }
                None
            }
            Phase::Connected => {
                self.told_sign_in = false;
                self.down_since = None;
                if std::mem::take(&mut self.told_down) {
                    Some(NoticeKind::BackOnline)
                } else {
                    None
                }
            }
            Phase::SignedOut | Phase::Failed { .. } | Phase::NoEnvironment => {
                self.down_since = None;
                self.told_down = false;
                self.told_sign_in = false;
                None
            }
        }
    }
}

/// Title and body of a notification about `environment`.
/// `since` is the local time the relay became unreachable ("10:42").
pub fn wording(
    kind: NoticeKind,
    environment: &str,
    since: Option<&str>,
    how_to_sign_in: &str,
) -> (String, String) {
    match kind {
        NoticeKind::SignInNeeded => (
            "Gangway: sign-in needed".into(),
            format!("Your sign-in to {environment} has ended. {how_to_sign_in}"),
        ),
        NoticeKind::RelayUnreachable => (
            "Gangway: relay unreachable".into(),
            format!(
                "{environment} has been unreachable since {}. Gangway keeps retrying; new connections wait.",
                since.unwrap_or("a minute ago")
            ),
        ),
        NoticeKind::BackOnline => (
            "Gangway: back online".into(),
            format!("{environment} is connected again."),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down() -> Phase {
        Phase::Reconnecting {
            last_error: Some("connection refused".into()),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_after_a_minute_then_back_online_once() {
        let mut n = Notifier::new(UNREACHABLE_NOTICE_AFTER);
        let t0 = Instant::now();
        assert_eq!(n.observe(t0, &Phase::Connected), None);
        assert_eq!(n.observe(t0, &down()), None);
        assert_eq!(n.observe(t0 + Duration::from_secs(59), &down()), None);
        assert_eq!(
            n.observe(t0 + Duration::from_secs(60), &down()),
            Some(NoticeKind::RelayUnreachable)
        );
        assert_eq!(n.observe(t0 + Duration::from_secs(300), &down()), None);
        assert_eq!(
            n.observe(t0 + Duration::from_secs(301), &Phase::Connected),
            Some(NoticeKind::BackOnline)
        );
        assert_eq!(
            n.observe(t0 + Duration::from_secs(302), &Phase::Connected),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_blip_says_nothing() {
        let mut n = Notifier::new(UNREACHABLE_NOTICE_AFTER);
        let t0 = Instant::now();
        assert_eq!(n.observe(t0, &down()), None);
        assert_eq!(
            n.observe(t0 + Duration::from_secs(20), &Phase::Connected),
            None
        );
        // A new outage counts from its own start.
        assert_eq!(n.observe(t0 + Duration::from_secs(30), &down()), None);
        assert_eq!(n.observe(t0 + Duration::from_secs(80), &down()), None);
        assert_eq!(
            n.observe(t0 + Duration::from_secs(90), &down()),
            Some(NoticeKind::RelayUnreachable)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sign_in_needed_is_said_once_per_episode() {
        let mut n = Notifier::new(UNREACHABLE_NOTICE_AFTER);
        let t0 = Instant::now();
        let need = Phase::SignInNeeded {
            reason: "revoked".into(),
        };
        assert_eq!(n.observe(t0, &need), Some(NoticeKind::SignInNeeded));
        assert_eq!(n.observe(t0, &need), None);
        assert_eq!(n.observe(t0, &Phase::Connected), None);
        assert_eq!(n.observe(t0, &need), Some(NoticeKind::SignInNeeded));
        // The first connect is not "back online".
        let mut fresh = Notifier::new(UNREACHABLE_NOTICE_AFTER);
        assert_eq!(
            fresh.observe(t0, &Phase::Connecting { last_error: None }),
            None
        );
        assert_eq!(fresh.observe(t0, &Phase::Connected), None);
    }

    #[test]
    fn wording_is_plain() {
        let (t, b) = wording(
            NoticeKind::RelayUnreachable,
            "Production",
            Some("10:42"),
            "",
        );
        assert_eq!(t, "Gangway: relay unreachable");
        assert!(b.contains("since 10:42"), "{b}");
    }
}
