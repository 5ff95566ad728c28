//! The access token as it travels in-band, kept out of logs by its type.

use std::fmt;

/// An access token (a JWT) on its way to the relay.
///
/// `Debug` prints `Token(<redacted>)`; there is no `Display` and no
/// `Serialize`, so the secret reaches a log or a file only through an
/// explicit call to [`Token::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a secret token string.
    pub fn new(s: impl Into<String>) -> Self {
        Token(s.into())
    }

    /// The secret itself. Call this only where the token is sent or checked.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let token = Token::new("eyJhbGciOiJSUzI1NiJ9.secret-part");
        let shown = format!("{token:?} {:?} {:#?}", Some(&token), vec![token.clone()]);
        assert!(!shown.contains("secret"), "{shown}");
        assert!(!shown.contains("eyJ"), "{shown}");
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
    }

    #[test]
    fn expose_gives_the_secret_back() {
        assert_eq!(Token::new(String::from("abc")).expose(), "abc");
        assert_eq!(Token::new("abc"), Token::new("abc"));
        assert_ne!(Token::new("abc"), Token::new("abd"));
    }
}
