//! One redaction function for everything a diagnostic report holds
//! (`gangway bugreport`, the tray's "Copy diagnostics"): tokens, secrets
//! and passwords are replaced by `[redacted]` wherever they appear, in
//! config text, logs, JSON or environment listings.
//!
//! What it takes out:
//! - anything JWT-shaped (`eyJ….….…`);
//! - the credentials after `Bearer`, `DPoP` and `Basic`;
//! - the whole value of `Authorization`, `Proxy-Authorization`, `Cookie`
//!   and `Set-Cookie` (as a header line or a JSON/TOML key);
//! - the value of any key whose name ends in `password`, `passwd`,
//!   `secret`, `token`, `api_key`/`apikey` or `credentials`
//!   (`GANGWAY_TOKEN=…`, `"refresh_token": "…"`, `client_secret = "…"`);
//! - the user-info of URLs (`http://user:pass@proxy:3128`);
//! - the door's cookie (`gangway_door=…`);
//! - long random-looking strings (32+ characters of base64url with upper
//!   and lower case and digits: the door's secrets, opaque tokens);
//! - and any exact secret the caller knows (`Redactor::with_secret`).
//!
//! It errs towards taking out too much: a report is for reading what
//! happened, and a lost value is cheaper than a leaked one.

use std::sync::OnceLock;

use regex::{Captures, Regex};

pub const REDACTED: &str = "[redacted]";

struct Patterns {
    jwt: Regex,
    scheme: Regex,
    header: Regex,
    key: Regex,
    userinfo: Regex,
    random: Regex,
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| Patterns {
        jwt: Regex::new(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*").expect("jwt"),
        scheme: Regex::new(r"(?i)\b(bearer|dpop|basic)(\s+|%20|\+)[A-Za-z0-9._~+/=-]+").expect("scheme"),
        header: Regex::new(
            r#"(?im)\b(proxy-authorization|authorization|set-cookie|cookie)("?\s*[:=]\s*"?)[^"\r\n]*"#,
        )
        .expect("header"),
        key: Regex::new(
            r#"(?i)\b([A-Za-z0-9_.-]*(?:password|passwd|secret|token|api_key|apikey|credentials|gangway_door))("?\s*[:=]\s*"?)([^"\s,;&}]+)"#,
        )
        .expect("key"),
        userinfo: Regex::new(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@\x22']+@").expect("userinfo"),
        random: Regex::new(r"[A-Za-z0-9_-]{32,}").expect("random"),
    })
}

fn looks_random(s: &str) -> bool {
    s.bytes().any(|b| b.is_ascii_uppercase())
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && s.bytes().any(|b| b.is_ascii_digit())
}

/// Redaction with the secrets a caller knows besides the patterns.
#[derive(Default)]
pub struct Redactor {
    known: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} known secrets)", self.known.len())
    }
}

impl Redactor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Also takes out `secret` wherever it appears (ignored when shorter
    /// than 8 characters: too likely to match ordinary text).
    pub fn with_secret(mut self, secret: impl Into<String>) -> Self {
        let s = secret.into();
        if s.len() >= 8 {
            self.known.push(s);
        }
        self
    }

    /// `text` with every secret replaced by [`REDACTED`].
    pub fn apply(&self, text: &str) -> String {
        let mut out = text.to_string();
        for k in &self.known {
            out = out.replace(k.as_str(), REDACTED);
        }
        redact_patterns(&out)
    }
}

/// `text` with every secret the patterns know replaced by [`REDACTED`].
pub fn redact(text: &str) -> String {
    Redactor::new().apply(text)
}

fn redact_patterns(text: &str) -> String {
    let p = patterns();
    let s = p.jwt.replace_all(text, REDACTED);
    let s = p
        .header
        .replace_all(&s, |c: &Captures| format!("{}{}{REDACTED}", &c[1], &c[2]));
    let s = p
        .scheme
        .replace_all(&s, |c: &Captures| format!("{}{}{REDACTED}", &c[1], &c[2]));
    let s = p.key.replace_all(&s, |c: &Captures| {
        if &c[3] == REDACTED {
            c[0].to_string()
        } else {
            format!("{}{}{REDACTED}", &c[1], &c[2])
        }
    });
    let s = p
        .userinfo
        .replace_all(&s, |c: &Captures| format!("{}{REDACTED}@", &c[1]));
    let s = p.random.replace_all(&s, |c: &Captures| {
        if looks_random(&c[0]) {
            REDACTED.to_string()
        } else {
            c[0].to_string()
        }
    });
    s.into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz";
    const DOOR: &str = "q3V9xK_-2bT8mN4pL7rS1wY6zA0cE5fG9hJ2kM3nP4Q";

    fn clean(s: &str, secrets: &[&str]) {
        let r = redact(s);
        for secret in secrets {
            assert!(!r.contains(secret), "{secret:?} left in {r:?}");
        }
    }

    #[test]
    fn tokens_of_every_shape() {
        clean(&format!("token {JWT} here"), &[JWT]);
        assert_eq!(redact(&format!("x {JWT} y")), "x [redacted] y");
        clean("Authorization: Bearer abc.def-ghi", &["abc.def-ghi"]);
        assert_eq!(
            redact("GET / Authorization: Bearer opaque123"),
            "GET / Authorization: [redacted]"
        );
        assert_eq!(
            redact("sent bearer opaque123 now"),
            "sent bearer [redacted] now"
        );
        assert_eq!(redact("DPoP proof9.x.y"), "DPoP [redacted]");
        assert_eq!(redact("Basic dXNlcjpwYXNz"), "Basic [redacted]");
    }

    #[test]
    fn headers_whole_values() {
        assert_eq!(
            redact("Cookie: a=1; gangway_door=xyz"),
            "Cookie: [redacted]"
        );
        assert_eq!(
            redact("proxy-authorization: Basic Zm9vOmJhcg=="),
            "proxy-authorization: [redacted]"
        );
        assert_eq!(
            redact(r#"{"authorization":"Bearer x","ok":1}"#),
            r#"{"authorization":"[redacted]","ok":1}"#
        );
        assert_eq!(
            redact("set-cookie: s=1\nnext"),
            "set-cookie: [redacted]\nnext"
        );
    }

    #[test]
    fn secret_keys() {
        assert_eq!(
            redact("GANGWAY_TOKEN=sekrit-value"),
            "GANGWAY_TOKEN=[redacted]"
        );
        assert_eq!(
            redact(r#""refresh_token": "r1-abc", "expires_at": 5"#),
            r#""refresh_token": "[redacted]", "expires_at": 5"#
        );
        assert_eq!(
            redact(r#"client_secret = "s3""#),
            r#"client_secret = "[redacted]""#
        );
        assert_eq!(redact("password=hunter2&x=1"), "password=[redacted]&x=1");
        // Not secrets: keys that merely start with the word.
        assert_eq!(
            redact("token_expires_at: 1700000000"),
            "token_expires_at: 1700000000"
        );
        assert_eq!(redact("gangway_door=abc"), "gangway_door=[redacted]");
    }

    #[test]
    fn url_userinfo() {
        assert_eq!(
            redact(r#"proxy = "http://bob:pr0xy-pw@proxy.corp:3128""#),
            r#"proxy = "http://[redacted]@proxy.corp:3128""#
        );
        assert_eq!(
            redact("HTTPS_PROXY=https://tok@proxy:1/x"),
            "HTTPS_PROXY=https://[redacted]@proxy:1/x"
        );
        // No user-info: left alone; an e-mail address is not a URL.
        assert_eq!(
            redact("https://relay.example.com/a@b"),
            "https://relay.example.com/a@b"
        );
        assert_eq!(redact("alice@example.com"), "alice@example.com");
    }

    #[test]
    fn random_strings_and_known_secrets() {
        clean(&format!("secret {DOOR}."), &[DOOR]);
        // Long but not random: kept.
        let words = "gangway_tests_world_with_a_long_identifier";
        assert_eq!(redact(words), words);
        let commit = "3427f1f0c2b7d1e0a9f8e7d6c5b4a3f2e1d0c9b8";
        assert_eq!(redact(commit), commit);
        let r = Redactor::new().with_secret("short-but-known");
        assert_eq!(r.apply("x short-but-known y"), "x [redacted] y");
        assert_eq!(Redactor::new().with_secret("tiny").apply("tiny"), "tiny");
    }

    #[test]
    fn redacting_twice_changes_nothing() {
        let once = redact(&format!(
            "Authorization: Bearer {JWT}\nproxy=http://u:p@h:1\nGANGWAY_TOKEN={DOOR}"
        ));
        assert_eq!(redact(&once), once);
        assert!(!once.contains(JWT) && !once.contains(DOOR) && !once.contains("u:p@"));
    }
}
