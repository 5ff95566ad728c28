//! Text from a client on its way into a header, a log line or an audit
//! line: control characters (CR, LF, ESC, NUL …) replaced, length capped.
//!
//! A client's text reaches us in token headers (`alg`, `kid`, and the JSON
//! errors that quote them), the agent's name in its hello, and the like.
//! Left raw, a newline splits a log line or breaks an HTTP header (which
//! `http` refuses to build), and an escape sequence repaints a terminal.

use std::borrow::Cow;

/// The most characters of client text kept; the rest becomes `…`.
pub const MAX_CLIENT_TEXT: usize = 200;

/// `s` with every control character (and DEL) shown as `\u{..}`, and at
/// most [`MAX_CLIENT_TEXT`] characters of it. Safe for a header value once
/// non-ASCII is also dealt with: see [`header_safe`].
pub fn clean(s: &str) -> Cow<'_, str> {
    if s.chars().count() <= MAX_CLIENT_TEXT && !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len().min(MAX_CLIENT_TEXT * 2));
    for (i, c) in s.chars().enumerate() {
        if i == MAX_CLIENT_TEXT {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `s` as visible ASCII for a header value: [`clean`], then anything
/// outside printable ASCII replaced by `?`.
pub fn header_safe(s: &str) -> String {
    clean(s)
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect()
}

/// [`header_safe`] for inside a quoted-string (`error_description="…"`):
/// `"` and `\` become `'`.
pub fn quotable(s: &str) -> String {
    header_safe(s).replace(['"', '\\'], "'")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_not_kept() {
        assert_eq!(clean("RS256\n"), "RS256\\u{a}");
        assert_eq!(clean("a\r\nX-Injected: 1"), "a\\u{d}\\u{a}X-Injected: 1");
        assert_eq!(clean("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert!(matches!(clean("plain text"), Cow::Borrowed(_)));
    }

    #[test]
    fn long_text_is_cut() {
        let long = "x".repeat(1000);
        let c = clean(&long);
        assert_eq!(c.chars().count(), MAX_CLIENT_TEXT + 1);
        assert!(c.ends_with('…'));
    }

    #[test]
    fn header_safe_text_is_a_valid_header_value() {
        for s in ["RS256\n", "\"quoted\" \\ é \u{0}", &"ü".repeat(500)] {
            let v = header_safe(s);
            assert!(http::HeaderValue::from_str(&v).is_ok(), "{v:?}");
            assert!(!quotable(s).contains(['"', '\\']));
        }
    }
}
