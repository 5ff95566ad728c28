//! The control channel: one dedicated yamux stream carrying keep-alives,
//! in-band token refresh, notices from the relay and a parting goodbye.
//!
//! # Layout
//!
//! Each message is one frame. All integers are big-endian.
//!
//! ```text
//! +------+-------------+--------------------------------+
//! | type | payload len | payload                        |
//! | u8   | u32         | payload len <= 64 KiB          |
//! +------+-------------+--------------------------------+
//!
//! type  message          payload                           direction
//! 1     Ping             nonce u64                         either
//! 2     Pong             nonce u64 (echoing the Ping)      either
//! 3     RefreshToken     token (UTF-8, whole payload)      agent -> relay
//! 4     TokenAccepted    expires_at u64 (unix seconds)     relay -> agent
//! 5     TokenRejected    reason (UTF-8, whole payload)     relay -> agent
//! 6     Notice           level u8 (0 info, 1 warning,      relay -> agent
//!                        2 error), then text (UTF-8)
//! 7     CatalogChanged   empty                             relay -> agent
//! 8     Goodbye          refusal code u8, then reason      relay -> agent
//!                        (UTF-8)
//! 9     RefreshTokenDpop proof len u16 (<= 4 KiB), the     agent -> relay
//!                        DPoP proof (UTF-8), then the
//!                        token (UTF-8, the rest)
//! ```
//!
//! `RefreshTokenDpop` is sent instead of `RefreshToken` for a token bound
//! to the agent's key (RFC 9449): the proof is over the new token (its
//! `ath`), made for the tunnel endpoint (`htm` GET, `htu` its URL).
//!
//! An unknown type or an over-long length is rejected as soon as it is read,
//! before the payload arrives. A fixed-size payload of the wrong size is
//! [`WireError::Malformed`]. Encoding truncates over-long text (on a
//! character boundary) so the payload fits [`MAX_CONTROL_FRAME`].

use bytes::{BufMut, BytesMut};

use crate::codec::{check_len, decode_with, truncate_utf8, utf8};
use crate::{RefusalCode, Token, WireError};

/// Largest control frame payload, in bytes.
pub const MAX_CONTROL_FRAME: usize = 64 * 1024;

const PING: u8 = 1;
const PONG: u8 = 2;
const REFRESH_TOKEN: u8 = 3;
const TOKEN_ACCEPTED: u8 = 4;
const TOKEN_REJECTED: u8 = 5;
const NOTICE: u8 = 6;
const CATALOG_CHANGED: u8 = 7;
const GOODBYE: u8 = 8;
const REFRESH_TOKEN_DPOP: u8 = 9;

/// Longest DPoP proof a [`Control::RefreshTokenDpop`] carries, in bytes.
pub const MAX_DPOP_PROOF: usize = 4096;

/// How serious a [`Control::Notice`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeLevel {
    /// For information, e.g. "maintenance at 18:00 UTC".
    Info,
    /// Something the user should know, e.g. "token expires in 5 minutes".
    Warning,
    /// Something has failed.
    Error,
}

impl NoticeLevel {
    fn as_u8(self) -> u8 {
        match self {
            NoticeLevel::Info => 0,
            NoticeLevel::Warning => 1,
            NoticeLevel::Error => 2,
        }
    }

    fn from_u8(v: u8) -> Result<Self, WireError> {
        match v {
            0 => Ok(NoticeLevel::Info),
            1 => Ok(NoticeLevel::Warning),
            2 => Ok(NoticeLevel::Error),
            _ => Err(WireError::Malformed("unknown notice level")),
        }
    }
}

/// One message on the control channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Keep-alive; the peer answers with a `Pong` carrying the same nonce.
    Ping(u64),
    /// Answer to a `Ping`.
    Pong(u64),
    /// Agent to relay: a new access token for this session, sent before the
    /// old one expires.
    RefreshToken(Token),
    /// Agent to relay: a new access token bound to the agent's key, with a
    /// fresh DPoP proof over it.
    RefreshTokenDpop {
        /// The new access token.
        token: Token,
        /// The DPoP proof (a compact JWS), at most [`MAX_DPOP_PROOF`] bytes.
        proof: String,
    },
    /// Relay to agent: the new token is valid until `expires_at`.
    TokenAccepted {
        /// When the token expires, in seconds since the Unix epoch.
        expires_at: u64,
    },
    /// Relay to agent: the new token was not accepted; the session goes on
    /// until the old one expires.
    TokenRejected {
        /// Why, for the user and the logs.
        reason: String,
    },
    /// Relay to agent: a message to show the user.
    Notice {
        /// How serious it is.
        level: NoticeLevel,
        /// The text to show.
        text: String,
    },
    /// Relay to agent: the services this user may reach have changed; fetch
    /// the catalog again.
    CatalogChanged,
    /// Relay to agent: the relay is closing the session, and why.
    Goodbye {
        /// The kind of reason, e.g. `ShuttingDown` or `Unauthenticated`.
        code: RefusalCode,
        /// Detail for the user.
        reason: String,
    },
}

impl Control {
    /// Appends this message's frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        let max_text = MAX_CONTROL_FRAME;
        match self {
            Control::Ping(nonce) => put_u64_frame(dst, PING, *nonce),
            Control::Pong(nonce) => put_u64_frame(dst, PONG, *nonce),
            Control::RefreshToken(token) => {
                put_frame(dst, REFRESH_TOKEN, &[], token.expose(), max_text)
            }
            Control::RefreshTokenDpop { token, proof } => {
                let proof = truncate_utf8(proof, MAX_DPOP_PROOF);
                let mut head = Vec::with_capacity(2 + proof.len());
                head.extend_from_slice(&(proof.len() as u16).to_be_bytes());
                head.extend_from_slice(proof.as_bytes());
                let max = max_text - head.len();
                put_frame(dst, REFRESH_TOKEN_DPOP, &head, token.expose(), max)
            }
            Control::TokenAccepted { expires_at } => {
                put_u64_frame(dst, TOKEN_ACCEPTED, *expires_at)
            }
            Control::TokenRejected { reason } => {
                put_frame(dst, TOKEN_REJECTED, &[], reason, max_text)
            }
            Control::Notice { level, text } => {
                put_frame(dst, NOTICE, &[level.as_u8()], text, max_text - 1)
            }
            Control::CatalogChanged => put_frame(dst, CATALOG_CHANGED, &[], "", 0),
            Control::Goodbye { code, reason } => {
                put_frame(dst, GOODBYE, &[code.as_u8()], reason, max_text - 1)
            }
        }
    }

    /// Decodes one frame from the front of `src`; see the crate docs for the
    /// meaning of `Ok(None)`.
    pub fn decode(src: &mut BytesMut) -> Result<Option<Self>, WireError> {
        decode_with(src, |r| {
            let ty = r.u8()?;
            if !(PING..=REFRESH_TOKEN_DPOP).contains(&ty) {
                return Err(WireError::UnknownType(ty).into());
            }
            let len = r.u32()? as usize;
            check_len("control frame", len, MAX_CONTROL_FRAME)?;
            let payload = r.take(len)?;
            Ok(parse_payload(ty, payload)?)
        })
    }
}

/// Writes a frame whose payload is `head` then `text`, truncated to
/// `max_text` bytes.
fn put_frame(dst: &mut BytesMut, ty: u8, head: &[u8], text: &str, max_text: usize) {
    let text = truncate_utf8(text, max_text);
    let len = head.len() + text.len();
    debug_assert!(len <= MAX_CONTROL_FRAME);
    dst.reserve(5 + len);
    dst.put_u8(ty);
    dst.put_u32(len as u32);
    dst.put_slice(head);
    dst.put_slice(text.as_bytes());
}

fn put_u64_frame(dst: &mut BytesMut, ty: u8, value: u64) {
    dst.put_u8(ty);
    dst.put_u32(8);
    dst.put_u64(value);
}

/// Turns a complete payload of a known type into a message.
fn parse_payload(ty: u8, payload: &[u8]) -> Result<Control, WireError> {
    let u64_payload = |what| {
        <[u8; 8]>::try_from(payload)
            .map(u64::from_be_bytes)
            .map_err(|_| WireError::Malformed(what))
    };
    let split_head = |what| payload.split_first().ok_or(WireError::Malformed(what));
    Ok(match ty {
        PING => Control::Ping(u64_payload("ping payload is not 8 bytes")?),
        PONG => Control::Pong(u64_payload("pong payload is not 8 bytes")?),
        REFRESH_TOKEN => Control::RefreshToken(Token::new(utf8("token", payload)?)),
        TOKEN_ACCEPTED => Control::TokenAccepted {
            expires_at: u64_payload("token-accepted payload is not 8 bytes")?,
        },
        TOKEN_REJECTED => Control::TokenRejected {
            reason: utf8("token rejection reason", payload)?,
        },
        NOTICE => {
            let (&level, text) = split_head("notice has no level")?;
            Control::Notice {
                level: NoticeLevel::from_u8(level)?,
                text: utf8("notice text", text)?,
            }
        }
        CATALOG_CHANGED if payload.is_empty() => Control::CatalogChanged,
        CATALOG_CHANGED => return Err(WireError::Malformed("catalog-changed has a payload")),
        GOODBYE => {
            let (&code, reason) = split_head("goodbye has no code")?;
            Control::Goodbye {
                code: RefusalCode::from_u8(code),
                reason: utf8("goodbye reason", reason)?,
            }
        }
        REFRESH_TOKEN_DPOP => {
            let (len, rest) = payload
                .split_first_chunk::<2>()
                .ok_or(WireError::Malformed("dpop refresh has no proof length"))?;
            let len = u16::from_be_bytes(*len) as usize;
            check_len("dpop proof", len, MAX_DPOP_PROOF)?;
            if rest.len() < len {
                return Err(WireError::Malformed("dpop proof is cut short"));
            }
            let (proof, token) = rest.split_at(len);
            Control::RefreshTokenDpop {
                proof: utf8("dpop proof", proof)?,
                token: Token::new(utf8("token", token)?),
            }
        }
        other => return Err(WireError::UnknownType(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::testing::{assert_round_trip, decode_err};

    fn all_variants() -> Vec<Control> {
        vec![
            Control::Ping(0),
            Control::Ping(u64::MAX),
            Control::Pong(0x0102_0304_0506_0708),
            Control::RefreshToken(Token::new("eyJhbGciOiJSUzI1NiJ9.e30.sig")),
            Control::RefreshToken(Token::new("")),
            Control::RefreshTokenDpop {
                token: Token::new("eyJhbGciOiJSUzI1NiJ9.e30.sig"),
                proof: "eyJ0eXAiOiJkcG9wK2p3dCJ9.e30.sig".into(),
            },
            Control::RefreshTokenDpop {
                token: Token::new(""),
                proof: String::new(),
            },
            Control::TokenAccepted {
                expires_at: 1_767_225_600,
            },
            Control::TokenRejected {
                reason: "audience mismatch".into(),
            },
            Control::TokenRejected {
                reason: String::new(),
            },
            Control::Notice {
                level: NoticeLevel::Info,
                text: "maintenance at 18:00 UTC".into(),
            },
            Control::Notice {
                level: NoticeLevel::Warning,
                text: "token expires in 5 minutes ⏳".into(),
            },
            Control::Notice {
                level: NoticeLevel::Error,
                text: String::new(),
            },
            Control::CatalogChanged,
            Control::Goodbye {
                code: RefusalCode::ShuttingDown,
                reason: "relay restarting".into(),
            },
            Control::Goodbye {
                code: RefusalCode::Unauthenticated,
                reason: "token expired".into(),
            },
            Control::Goodbye {
                code: RefusalCode::Other(0),
                reason: "x".into(),
            },
        ]
    }

    #[test]
    fn every_variant_round_trips() {
        for msg in all_variants() {
            assert_round_trip(&msg, Control::encode, Control::decode);
        }
    }

    #[test]
    fn largest_payload_round_trips() {
        let msg = Control::Goodbye {
            code: RefusalCode::Forbidden,
            reason: "r".repeat(MAX_CONTROL_FRAME - 1),
        };
        assert_round_trip(&msg, Control::encode, Control::decode);
    }

    #[test]
    fn all_variants_back_to_back_decode_in_order() {
        let msgs = all_variants();
        let mut buf = BytesMut::new();
        for m in &msgs {
            m.encode(&mut buf);
        }
        for m in &msgs {
            assert_eq!(Control::decode(&mut buf).as_ref(), Ok(&Some(m.clone())));
        }
        assert_eq!(Control::decode(&mut buf), Ok(None));
        assert!(buf.is_empty());
    }

    #[test]
    fn layout_is_as_documented() {
        let mut buf = BytesMut::new();
        Control::Ping(5).encode(&mut buf);
        Control::Notice {
            level: NoticeLevel::Warning,
            text: "hi".into(),
        }
        .encode(&mut buf);
        Control::CatalogChanged.encode(&mut buf);
        assert_eq!(
            &buf[..],
            b"\x01\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00\x00\x05\
              \x06\x00\x00\x00\x03\x01hi\
              \x07\x00\x00\x00\x00"
        );
    }

    #[test]
    fn encode_truncates_text_to_fit_the_frame() {
        let msg = Control::TokenRejected {
            reason: "é".repeat(MAX_CONTROL_FRAME),
        };
        let mut buf = BytesMut::new();
        msg.encode(&mut buf);
        match Control::decode(&mut buf) {
            Ok(Some(Control::TokenRejected { reason })) => {
                assert_eq!(reason, "é".repeat(MAX_CONTROL_FRAME / 2));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn unknown_type_is_rejected_at_once() {
        assert_eq!(decode_err(&[0], Control::decode), WireError::UnknownType(0));
        assert_eq!(
            decode_err(&[10], Control::decode),
            WireError::UnknownType(10)
        );
        assert_eq!(
            decode_err(&[0xff, 0, 0], Control::decode),
            WireError::UnknownType(0xff)
        );
    }

    #[test]
    fn over_long_frame_is_rejected_before_waiting() {
        assert_eq!(
            decode_err(&[PING, 0xff, 0xff, 0xff, 0xff], Control::decode),
            WireError::TooLong {
                what: "control frame",
                len: 0xffff_ffff,
                max: MAX_CONTROL_FRAME
            }
        );
        let just_over = (MAX_CONTROL_FRAME as u32 + 1).to_be_bytes();
        let mut bytes = vec![GOODBYE];
        bytes.extend_from_slice(&just_over);
        assert!(matches!(
            decode_err(&bytes, Control::decode),
            WireError::TooLong { .. }
        ));
    }

    #[test]
    fn malformed_payloads_are_rejected() {
        let frame = |ty: u8, payload: &[u8]| {
            let mut v = vec![ty];
            v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            v.extend_from_slice(payload);
            v
        };
        assert_eq!(
            decode_err(&frame(PING, &[1, 2, 3]), Control::decode),
            WireError::Malformed("ping payload is not 8 bytes")
        );
        assert_eq!(
            decode_err(&frame(PONG, &[0; 9]), Control::decode),
            WireError::Malformed("pong payload is not 8 bytes")
        );
        assert_eq!(
            decode_err(&frame(TOKEN_ACCEPTED, &[]), Control::decode),
            WireError::Malformed("token-accepted payload is not 8 bytes")
        );
        assert_eq!(
            decode_err(&frame(NOTICE, &[]), Control::decode),
            WireError::Malformed("notice has no level")
        );
        assert_eq!(
            decode_err(&frame(NOTICE, &[3, b'x']), Control::decode),
            WireError::Malformed("unknown notice level")
        );
        assert_eq!(
            decode_err(&frame(GOODBYE, &[]), Control::decode),
            WireError::Malformed("goodbye has no code")
        );
        assert_eq!(
            decode_err(&frame(CATALOG_CHANGED, &[0]), Control::decode),
            WireError::Malformed("catalog-changed has a payload")
        );
    }

    #[test]
    fn invalid_utf8_is_rejected() {
        let frame = |ty: u8, payload: &[u8]| {
            let mut v = vec![ty];
            v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            v.extend_from_slice(payload);
            v
        };
        assert_eq!(
            decode_err(&frame(REFRESH_TOKEN, &[0xff]), Control::decode),
            WireError::InvalidUtf8("token")
        );
        assert_eq!(
            decode_err(&frame(TOKEN_REJECTED, &[0xc3]), Control::decode),
            WireError::InvalidUtf8("token rejection reason")
        );
        assert_eq!(
            decode_err(&frame(NOTICE, &[0, 0xc3, 0x28]), Control::decode),
            WireError::InvalidUtf8("notice text")
        );
        assert_eq!(
            decode_err(&frame(GOODBYE, &[2, 0x80]), Control::decode),
            WireError::InvalidUtf8("goodbye reason")
        );
    }

    #[test]
    fn refresh_token_debug_is_redacted() {
        let msg = Control::RefreshToken(Token::new("super-secret-jwt"));
        assert!(!format!("{msg:?}").contains("super-secret"));
        let msg = Control::RefreshTokenDpop {
            token: Token::new("super-secret-jwt"),
            proof: "p".into(),
        };
        assert!(!format!("{msg:?}").contains("super-secret"));
    }

    #[test]
    fn dpop_refresh_is_bounded_and_checked() {
        let frame = |payload: &[u8]| {
            let mut v = vec![REFRESH_TOKEN_DPOP];
            v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            v.extend_from_slice(payload);
            v
        };
        assert_eq!(
            decode_err(&frame(&[0]), Control::decode),
            WireError::Malformed("dpop refresh has no proof length")
        );
        assert_eq!(
            decode_err(&frame(&[0, 5, b'a']), Control::decode),
            WireError::Malformed("dpop proof is cut short")
        );
        let over = (MAX_DPOP_PROOF as u16 + 1).to_be_bytes();
        assert!(matches!(
            decode_err(&frame(&over), Control::decode),
            WireError::TooLong { .. }
        ));
        assert_eq!(
            decode_err(&frame(&[0, 1, 0xff]), Control::decode),
            WireError::InvalidUtf8("dpop proof")
        );
        // The largest proof with a long token still fits one frame.
        let msg = Control::RefreshTokenDpop {
            token: Token::new("t".repeat(MAX_CONTROL_FRAME - 2 - MAX_DPOP_PROOF)),
            proof: "p".repeat(MAX_DPOP_PROOF),
        };
        assert_round_trip(&msg, Control::encode, Control::decode);
    }
}
