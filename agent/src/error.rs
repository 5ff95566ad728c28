//! The agent's typed errors: where a failure came from and whether a retry
//! can help, so the CLI and tray can tell "sign-in needed" from "network down".

use gangway_wire::Refusal;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The relay refused the token (HTTP 401). Retrying with the same token won't help.
    #[error("the relay refused the access token: {0}")]
    Unauthorized(String),
    /// No token is available from the configured source.
    #[error("no access token: {0}")]
    NoToken(String),
    /// The relay could not be reached or the connection broke: what was
    /// tried, and the underlying failure when there is one.
    #[error("relay unreachable: {what}{}", colon(.source))]
    Unreachable {
        what: String,
        #[source]
        source: Option<BoxError>,
    },
    /// The relay answered, but not as a Gangway relay of a compatible version.
    #[error("relay protocol error: {0}")]
    Protocol(String),
    /// The relay refused to open a stream, with its reason.
    #[error("{0}")]
    Refused(Refusal),
    /// Local configuration is wrong (a config file: it names the file, key
    /// and reason).
    #[error("{0}")]
    Config(String),
    /// The organisation's policy decides this; the user cannot change it.
    #[error("{what} is set by your organisation (policy key {key}{})", origin.as_deref().map(|o| format!(" in {o}")).unwrap_or_default())]
    Locked {
        /// What was asked: "environment \"prod\"", "adding environments".
        what: String,
        key: &'static str,
        /// The policy file or registry key that set it.
        origin: Option<String>,
    },
    /// An environment was asked for by a name nobody knows.
    #[error("no environment named {name:?} (known: {})", known.join(", "))]
    UnknownEnvironment { name: String, known: Vec<String> },
    /// There is no environment at all yet.
    #[error(
        "no environment configured: add one with `gangway env add NAME URL` (or pass --relay URL)"
    )]
    NoEnvironment,
    /// A browser sign-in already waits for the user at `url` (the browser
    /// was shown it again).
    #[error("a sign-in is already waiting for the browser: {url}")]
    SignInInProgress { url: String },
    /// The agent runs on a fixed token, so there is no sign-in to manage.
    #[error(
        "this agent uses a fixed token (GANGWAY_TOKEN, --token-file or \
         --client-credentials); there is nothing to sign in to or out of"
    )]
    FixedToken,
    /// The identity provider signed the user in, but the relay refuses the
    /// token it issued (wrong audience, group or issuer at the relay).
    #[error(
        "signed in as {subject} at the identity provider, but the relay refuses the token: {reason}"
    )]
    SignedInButRefused { subject: String, reason: String },
    /// TLS setup (e.g. the CA file) failed.
    #[error("TLS: {what}{}", colon(.source))]
    Tls {
        what: String,
        #[source]
        source: Option<BoxError>,
    },
    /// Signing in, refreshing, or the keychain failed; the inner error says
    /// whether a new sign-in is needed or a retry may help.
    #[error(transparent)]
    SignIn(#[from] crate::signin::SignInError),
}

/// An underlying failure kept as the source of an [`AgentError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// ": <source and its causes>", or nothing: a variant's message carries its
/// source's words too, so `to_string()` alone is a whole sentence, while
/// `source()` still hands programs the typed cause.
fn colon(source: &Option<BoxError>) -> String {
    source
        .as_ref()
        .map(|e| format!(": {}", error_chain(e.as_ref())))
        .unwrap_or_default()
}

impl AgentError {
    /// The relay could not be reached: `what` says what was tried.
    pub fn unreachable(what: impl Into<String>) -> Self {
        AgentError::Unreachable {
            what: what.into(),
            source: None,
        }
    }

    /// The relay could not be reached because of `source`.
    pub fn unreachable_by(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        AgentError::Unreachable {
            what: what.into(),
            source: Some(source.into()),
        }
    }

    /// TLS setup failed because of `source` (if any).
    pub fn tls(what: impl Into<String>, source: Option<BoxError>) -> Self {
        AgentError::Tls {
            what: what.into(),
            source,
        }
    }

    /// Whether trying again later may succeed without the user doing anything.
    pub fn retryable(&self) -> bool {
        match self {
            AgentError::Unreachable { .. } => true,
            AgentError::Refused(r) => r.code.retryable(),
            AgentError::SignIn(e) => e.retryable(),
            _ => false,
        }
    }
}

impl AgentError {
    /// Whether only a new sign-in can fix this; the reason to show (without
    /// a "sign-in needed:" prefix).
    pub fn sign_in_reason(&self) -> Option<String> {
        match self {
            AgentError::Unauthorized(_) | AgentError::NoToken(_) => Some(self.to_string()),
            AgentError::SignIn(crate::signin::SignInError::SignInNeeded(m)) => Some(m.clone()),
            _ => None,
        }
    }
}

/// An error and its sources on one line (a source already quoted by its
/// parent's message is not repeated). A TLS or network failure people meet
/// ends the line in plain words with what to do ([`crate::plain`]), instead
/// of the library's own words.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    if let Some(p) = crate::plain::explain(e) {
        return p.to_string();
    }
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        if let Some(p) = crate::plain::explain(s) {
            let p = p.to_string();
            if !msg.contains(&p) {
                msg = format!("{msg}: {p}");
            }
            return msg;
        }
        let s_msg = s.to_string();
        if !msg.contains(&s_msg) {
            msg = format!("{msg}: {s_msg}");
        }
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn the_cause_is_kept_typed_and_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let e = AgentError::unreachable_by("https://relay.example", io);
        // In plain words, with what to do (crate::plain).
        assert_eq!(
            e.to_string(),
            "relay unreachable: https://relay.example: nothing answers at that address \
             (connection refused) — check the relay URL and that the relay runs; ask IT if it is down"
        );
        let cause = e.source().expect("a source");
        let io = cause
            .downcast_ref::<std::io::Error>()
            .expect("the io error");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
        // The chain does not repeat what the message already says.
        assert_eq!(error_chain(&e), e.to_string());
        assert!(e.retryable());
        assert_eq!(
            AgentError::unreachable("session closed").to_string(),
            "relay unreachable: session closed"
        );
    }
}
