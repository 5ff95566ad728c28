//! The handshake: the first bytes on the WebSocket byte stream, before the
//! yamux session starts.
//!
//! The agent writes a [`Hello`]; the relay reads it and answers with a
//! [`HelloReply`]: `Welcome` (the mux starts) or `Unsupported` (the relay
//! closes). A `Hello` of any version decodes, so the relay can always answer
//! `Unsupported` with the version it does speak; only bad magic is an error.
//!
//! # Layout
//!
//! All integers are big-endian.
//!
//! ```text
//! Hello
//! +--------+---------+-----------+---------------------+
//! | "GWAY" | version | agent len | agent (UTF-8)       |
//! | 4      | u8      | u16       | agent len <= 256    |
//! +--------+---------+-----------+---------------------+
//!
//! HelloReply
//! +--------+--------+---------+----------+--------------------+
//! | "GWAY" | status | version | text len | text (UTF-8)       |
//! | 4      | u8     | u8      | u16      | text len <= 1024   |
//! +--------+--------+---------+----------+--------------------+
//! status 0 = Welcome:     version = the session's version, text = session id
//! status 1 = Unsupported: version = the version the relay supports,
//!                         text = message for the user
//! ```
//!
//! `agent` is free text such as `gangway/0.1.0 (linux)`. Encoding truncates
//! over-long text (on a character boundary) to its limit.

use bytes::{BufMut, BytesMut};

use crate::codec::{decode_with, put_str_u16, Parse, Reader};
use crate::WireError;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u8 = 1;

/// The four bytes every handshake message starts with.
pub const MAGIC: &[u8; 4] = b"GWAY";

/// Longest agent description, in bytes.
const MAX_AGENT: usize = 256;

/// Longest session id or unsupported-version message, in bytes.
const MAX_REPLY_TEXT: usize = 1024;

const STATUS_WELCOME: u8 = 0;
const STATUS_UNSUPPORTED: u8 = 1;

/// The agent's opening message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The protocol version the agent speaks.
    pub version: u8,
    /// Free-text description of the agent, e.g. `gangway/0.1.0 (linux)`.
    pub agent: String,
}

/// The relay's answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloReply {
    /// The relay accepts; the yamux session starts right after this message.
    Welcome {
        /// The protocol version of the session.
        version: u8,
        /// The relay's id for this session, for logs and support requests.
        session: String,
    },
    /// The relay does not speak the agent's version and will close.
    Unsupported {
        /// The version the relay does speak.
        supported: u8,
        /// Message for the user, e.g. "please upgrade gangway".
        message: String,
    },
}

/// Consumes [`MAGIC`], failing as soon as the bytes present differ from it.
fn magic(r: &mut Reader<'_>) -> Parse<()> {
    let rest = r.peek_rest();
    let n = rest.len().min(MAGIC.len());
    if rest[..n] != MAGIC[..n] {
        return Err(WireError::BadMagic.into());
    }
    r.take(MAGIC.len())?;
    Ok(())
}

impl Hello {
    /// Appends this message's bytes to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.put_slice(MAGIC);
        dst.put_u8(self.version);
        put_str_u16(dst, &self.agent, MAX_AGENT);
    }

    /// Decodes one message from the front of `src`; see the crate docs for
    /// the meaning of `Ok(None)`.
    pub fn decode(src: &mut BytesMut) -> Result<Option<Self>, WireError> {
        decode_with(src, |r| {
            magic(r)?;
            let version = r.u8()?;
            let agent = r.str_u16("agent name", MAX_AGENT)?;
            Ok(Hello { version, agent })
        })
    }
}

impl HelloReply {
    /// Appends this message's bytes to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.put_slice(MAGIC);
        let (status, version, text) = match self {
            HelloReply::Welcome { version, session } => (STATUS_WELCOME, *version, session),
            HelloReply::Unsupported { supported, message } => {
                (STATUS_UNSUPPORTED, *supported, message)
            }
        };
        dst.put_u8(status);
        dst.put_u8(version);
        put_str_u16(dst, text, MAX_REPLY_TEXT);
    }

    /// Decodes one message from the front of `src`; see the crate docs for
    /// the meaning of `Ok(None)`.
    pub fn decode(src: &mut BytesMut) -> Result<Option<Self>, WireError> {
        decode_with(src, |r| {
            magic(r)?;
            let status = r.u8()?;
            if status != STATUS_WELCOME && status != STATUS_UNSUPPORTED {
                return Err(WireError::UnknownStatus(status).into());
            }
            let version = r.u8()?;
            if status == STATUS_WELCOME {
                let session = r.str_u16("session id", MAX_REPLY_TEXT)?;
                Ok(HelloReply::Welcome { version, session })
            } else {
                let message = r.str_u16("unsupported-version message", MAX_REPLY_TEXT)?;
                Ok(HelloReply::Unsupported {
                    supported: version,
                    message,
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::testing::{assert_prefixes_incomplete, assert_round_trip, decode_err};

    fn hello(agent: &str) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            agent: agent.into(),
        }
    }

    #[test]
    fn hello_round_trips() {
        for h in [
            hello("gangway/0.1.0 (linux)"),
            hello(""),
            hello("agent ünïcode ✓"),
            hello(&"x".repeat(MAX_AGENT)),
            Hello {
                version: 0,
                agent: "old".into(),
            },
            Hello {
                version: 255,
                agent: "future".into(),
            },
        ] {
            assert_round_trip(&h, Hello::encode, Hello::decode);
        }
    }

    #[test]
    fn hello_layout_is_as_documented() {
        let mut buf = BytesMut::new();
        hello("ab").encode(&mut buf);
        assert_eq!(&buf[..], b"GWAY\x01\x00\x02ab");
    }

    #[test]
    fn hello_reply_round_trips() {
        for reply in [
            HelloReply::Welcome {
                version: PROTOCOL_VERSION,
                session: "s-7f3a".into(),
            },
            HelloReply::Welcome {
                version: 1,
                session: String::new(),
            },
            HelloReply::Unsupported {
                supported: 1,
                message: "please upgrade gangway to 0.2 or later".into(),
            },
            HelloReply::Unsupported {
                supported: 3,
                message: "é".repeat(MAX_REPLY_TEXT / 2),
            },
        ] {
            assert_round_trip(&reply, HelloReply::encode, HelloReply::decode);
        }
    }

    #[test]
    fn hello_of_another_version_still_decodes() {
        let mut buf = BytesMut::from(&b"GWAY\x09\x00\x01z"[..]);
        assert_eq!(
            Hello::decode(&mut buf),
            Ok(Some(Hello {
                version: 9,
                agent: "z".into()
            }))
        );
    }

    #[test]
    fn hello_then_more_bytes_leaves_the_rest() {
        let mut buf = BytesMut::new();
        hello("a").encode(&mut buf);
        buf.put_slice(b"yamux bytes");
        assert_eq!(Hello::decode(&mut buf), Ok(Some(hello("a"))));
        assert_eq!(&buf[..], b"yamux bytes");
    }

    #[test]
    fn two_replies_decode_in_order() {
        let a = HelloReply::Welcome {
            version: 1,
            session: "one".into(),
        };
        let b = HelloReply::Unsupported {
            supported: 1,
            message: "two".into(),
        };
        let mut buf = BytesMut::new();
        a.encode(&mut buf);
        b.encode(&mut buf);
        assert_eq!(HelloReply::decode(&mut buf), Ok(Some(a)));
        assert_eq!(HelloReply::decode(&mut buf), Ok(Some(b)));
        assert_eq!(HelloReply::decode(&mut buf), Ok(None));
    }

    #[test]
    fn bad_magic_is_rejected_early() {
        assert_eq!(
            decode_err(b"GET / HTTP/1.1\r\n", Hello::decode),
            WireError::BadMagic
        );
        assert_eq!(decode_err(b"X", Hello::decode), WireError::BadMagic);
        assert_eq!(decode_err(b"GWAX", Hello::decode), WireError::BadMagic);
        assert_eq!(
            decode_err(b"gway\x01", HelloReply::decode),
            WireError::BadMagic
        );
        assert_eq!(
            decode_err(b"GW\x00", HelloReply::decode),
            WireError::BadMagic
        );
    }

    #[test]
    fn magic_prefixes_are_incomplete() {
        assert_prefixes_incomplete(b"GWAY", Hello::decode);
        assert_prefixes_incomplete(b"GWAY", HelloReply::decode);
    }

    #[test]
    fn over_long_text_is_rejected_before_waiting() {
        // Announces 257 bytes of agent, but none follow: still an error.
        assert_eq!(
            decode_err(b"GWAY\x01\x01\x01", Hello::decode),
            WireError::TooLong {
                what: "agent name",
                len: 257,
                max: MAX_AGENT
            }
        );
        assert_eq!(
            decode_err(b"GWAY\x00\x01\xff\xff", HelloReply::decode),
            WireError::TooLong {
                what: "session id",
                len: 0xffff,
                max: MAX_REPLY_TEXT
            }
        );
    }

    #[test]
    fn invalid_utf8_is_rejected() {
        assert_eq!(
            decode_err(b"GWAY\x01\x00\x02\xc3\x28", Hello::decode),
            WireError::InvalidUtf8("agent name")
        );
        assert_eq!(
            decode_err(b"GWAY\x01\x01\x00\x01\xff", HelloReply::decode),
            WireError::InvalidUtf8("unsupported-version message")
        );
    }

    #[test]
    fn unknown_status_is_rejected() {
        assert_eq!(
            decode_err(b"GWAY\x02", HelloReply::decode),
            WireError::UnknownStatus(2)
        );
    }

    #[test]
    fn encode_truncates_over_long_text_on_a_char_boundary() {
        // 200 two-byte characters = 400 bytes; 256 fits 128 of them.
        let long = hello(&"é".repeat(200));
        let mut buf = BytesMut::new();
        long.encode(&mut buf);
        let got = Hello::decode(&mut buf).unwrap().unwrap();
        assert_eq!(got.agent, "é".repeat(128));

        // An odd limit must not split a character.
        let odd = format!("a{}", "é".repeat(200));
        let mut buf = BytesMut::new();
        hello(&odd).encode(&mut buf);
        let got = Hello::decode(&mut buf).unwrap().unwrap();
        assert_eq!(got.agent.len(), 255);
        assert!(buf.is_empty());
    }
}
