//! Why the relay refused a stream or ended a session, in terms a user can act
//! on.
//!
//! A [`RefusalCode`] is one byte on the wire. Codes this version does not know
//! decode as [`RefusalCode::Other`] rather than failing, so a newer relay can
//! add codes without breaking older agents.
//!
//! | byte | code                   | retryable |
//! |------|------------------------|-----------|
//! | 1    | `UnknownService`       | no        |
//! | 2    | `Forbidden`            | no        |
//! | 3    | `RateLimited`          | yes       |
//! | 4    | `NoHealthyBackend`     | yes       |
//! | 5    | `ShuttingDown`         | yes       |
//! | 6    | `BackendUnreachable`   | yes       |
//! | 7    | `Unauthenticated`      | no        |
//! | else | `Other(byte)`          | no        |
//!
//! Byte 0 is never a refusal: in an [`OpenResult`](crate::OpenResult) it
//! means "accepted".

use std::fmt;

/// The reason for a refusal, as one byte on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalCode {
    /// The relay serves no service by that name.
    UnknownService,
    /// The user's groups do not allow this service.
    Forbidden,
    /// Too many streams or sessions for this user right now.
    RateLimited,
    /// Every backend for the service is failing its health checks.
    NoHealthyBackend,
    /// The relay is draining before a restart.
    ShuttingDown,
    /// The relay could not connect to the chosen backend.
    BackendUnreachable,
    /// The token is missing, invalid or expired: sign in again.
    Unauthenticated,
    /// A code this version does not know, kept as sent.
    Other(u8),
}

impl RefusalCode {
    /// The byte that stands for this code on the wire.
    pub fn as_u8(self) -> u8 {
        match self {
            RefusalCode::UnknownService => 1,
            RefusalCode::Forbidden => 2,
            RefusalCode::RateLimited => 3,
            RefusalCode::NoHealthyBackend => 4,
            RefusalCode::ShuttingDown => 5,
            RefusalCode::BackendUnreachable => 6,
            RefusalCode::Unauthenticated => 7,
            RefusalCode::Other(v) => v,
        }
    }

    /// The code a byte stands for; unknown bytes become [`RefusalCode::Other`].
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => RefusalCode::UnknownService,
            2 => RefusalCode::Forbidden,
            3 => RefusalCode::RateLimited,
            4 => RefusalCode::NoHealthyBackend,
            5 => RefusalCode::ShuttingDown,
            6 => RefusalCode::BackendUnreachable,
            7 => RefusalCode::Unauthenticated,
            other => RefusalCode::Other(other),
        }
    }

    /// Short user-facing text, e.g. "forbidden by policy".
    pub fn describe(self) -> &'static str {
        match self {
            RefusalCode::UnknownService => "unknown service",
            RefusalCode::Forbidden => "forbidden by policy",
            RefusalCode::RateLimited => "rate limited",
            RefusalCode::NoHealthyBackend => "no healthy backend",
            RefusalCode::ShuttingDown => "relay is shutting down",
            RefusalCode::BackendUnreachable => "backend unreachable",
            RefusalCode::Unauthenticated => "not signed in or sign-in expired",
            RefusalCode::Other(_) => "refused by relay",
        }
    }

    /// Whether trying the same thing again later, unchanged, may succeed.
    ///
    /// `Unauthenticated` is not retryable as such: the user must sign in (or
    /// the agent refresh its token) first.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            RefusalCode::RateLimited
                | RefusalCode::NoHealthyBackend
                | RefusalCode::ShuttingDown
                | RefusalCode::BackendUnreachable
        )
    }
}

/// A refusal: the code, and the relay's message with any detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What kind of refusal this is.
    pub code: RefusalCode,
    /// Detail from the relay, shown to the user after the code's description.
    pub message: String,
}

impl fmt::Display for Refusal {
    /// `"<describe>: <message>"`, or just the description when the message is
    /// empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            f.write_str(self.code.describe())
        } else {
            write!(f, "{}: {}", self.code.describe(), self.message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: [RefusalCode; 7] = [
        RefusalCode::UnknownService,
        RefusalCode::Forbidden,
        RefusalCode::RateLimited,
        RefusalCode::NoHealthyBackend,
        RefusalCode::ShuttingDown,
        RefusalCode::BackendUnreachable,
        RefusalCode::Unauthenticated,
    ];

    #[test]
    fn every_byte_round_trips() {
        for v in 0..=u8::MAX {
            assert_eq!(RefusalCode::from_u8(v).as_u8(), v);
        }
        for code in KNOWN {
            assert_eq!(RefusalCode::from_u8(code.as_u8()), code);
            assert!(!matches!(code, RefusalCode::Other(_)));
        }
        assert_eq!(RefusalCode::from_u8(0), RefusalCode::Other(0));
        assert_eq!(RefusalCode::from_u8(200), RefusalCode::Other(200));
    }

    #[test]
    fn descriptions_are_distinct_and_nonempty() {
        let mut seen: Vec<&str> = KNOWN.iter().map(|c| c.describe()).collect();
        seen.push(RefusalCode::Other(99).describe());
        assert!(seen.iter().all(|d| !d.is_empty()));
        let count = seen.len();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), count);
        assert_eq!(RefusalCode::Forbidden.describe(), "forbidden by policy");
    }

    #[test]
    fn retryable_only_for_transient_codes() {
        assert!(RefusalCode::RateLimited.retryable());
        assert!(RefusalCode::NoHealthyBackend.retryable());
        assert!(RefusalCode::ShuttingDown.retryable());
        assert!(RefusalCode::BackendUnreachable.retryable());
        assert!(!RefusalCode::UnknownService.retryable());
        assert!(!RefusalCode::Forbidden.retryable());
        assert!(!RefusalCode::Unauthenticated.retryable());
        assert!(!RefusalCode::Other(42).retryable());
    }

    #[test]
    fn display_joins_description_and_message() {
        let r = Refusal {
            code: RefusalCode::Forbidden,
            message: "group eng-readonly may not reach confluence".into(),
        };
        assert_eq!(
            r.to_string(),
            "forbidden by policy: group eng-readonly may not reach confluence"
        );
        let bare = Refusal {
            code: RefusalCode::RateLimited,
            message: String::new(),
        };
        assert_eq!(bare.to_string(), "rate limited");
    }
}
