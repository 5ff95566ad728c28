//! Opening a data stream: the header the agent writes first on each new yamux
//! stream, and the relay's answer.
//!
//! The agent writes an [`OpenStream`] naming the service and waits for an
//! [`OpenResult`] before copying any bytes. `Accepted` means everything after
//! it is the backend's TCP byte stream; `Refused` carries a
//! [`Refusal`] for the user, and the relay closes the stream.
//!
//! # Layout
//!
//! All integers are big-endian.
//!
//! ```text
//! OpenStream
//! +----------+---------------------------+
//! | name len | name                      |
//! | u8 1..64 | [a-z0-9._-], name len     |
//! +----------+---------------------------+
//!
//! OpenResult
//! +------+                                     code 0: Accepted
//! | 0    |
//! +------+
//! +------+-------------+---------------------+ code 1..=255: Refused
//! | code | message len | message (UTF-8)     |
//! | u8   | u16         | message len <= 1024 |
//! +------+-------------+---------------------+
//! ```
//!
//! Refusal codes are listed in [`refusal`](crate::refusal). Since 0 means
//! accepted, a refusal with [`RefusalCode::Other(0)`](RefusalCode::Other) is
//! encoded as code 255. Encoding truncates an over-long message (on a
//! character boundary) to its limit.

use bytes::{BufMut, BytesMut};

use crate::codec::{check_len, decode_with, put_str_u16, utf8};
use crate::{Refusal, RefusalCode, WireError};

/// Longest service name, in bytes.
pub const MAX_SERVICE_NAME: usize = 64;

/// Longest refusal message, in bytes.
const MAX_REFUSAL_MESSAGE: usize = 1024;

/// The code byte for "accepted".
const ACCEPTED: u8 = 0;

/// The code byte a refusal with code `Other(0)` is sent as.
const OTHER_ZERO_ON_WIRE: u8 = u8::MAX;

/// Checks that `name` is a valid service name: 1 to [`MAX_SERVICE_NAME`]
/// characters of `[a-z0-9._-]`.
///
/// Fails with [`WireError::TooLong`] when it is too long and
/// [`WireError::InvalidServiceName`] when it is empty or has another
/// character.
pub fn validate_service_name(name: &str) -> Result<(), WireError> {
    check_len("service name", name.len(), MAX_SERVICE_NAME)?;
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b);
    if name.is_empty() || !name.bytes().all(allowed) {
        return Err(WireError::InvalidServiceName(name.to_owned()));
    }
    Ok(())
}

/// The header opening a data stream: which service to reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenStream {
    /// The service name, e.g. `bitbucket-ssh`. Always valid when built with
    /// [`OpenStream::new`] or decoded.
    pub service: String,
}

impl OpenStream {
    /// A header for `name`, if it is a valid service name (see
    /// [`validate_service_name`]).
    pub fn new(name: impl Into<String>) -> Result<Self, WireError> {
        let service = name.into();
        validate_service_name(&service)?;
        Ok(OpenStream { service })
    }

    /// Appends this header's bytes to `dst`.
    ///
    /// If `service` was set to an invalid name by hand, this writes an empty
    /// name, which every decoder rejects: the stream fails closed rather than
    /// reaching some other service.
    pub fn encode(&self, dst: &mut BytesMut) {
        if validate_service_name(&self.service).is_err() {
            dst.put_u8(0);
            return;
        }
        dst.put_u8(self.service.len() as u8);
        dst.put_slice(self.service.as_bytes());
    }

    /// Decodes one header from the front of `src`; see the crate docs for
    /// the meaning of `Ok(None)`.
    pub fn decode(src: &mut BytesMut) -> Result<Option<Self>, WireError> {
        decode_with(src, |r| {
            let len = usize::from(r.u8()?);
            if len == 0 {
                return Err(WireError::InvalidServiceName(String::new()).into());
            }
            check_len("service name", len, MAX_SERVICE_NAME)?;
            let service = utf8("service name", r.take(len)?)?;
            validate_service_name(&service)?;
            Ok(OpenStream { service })
        })
    }
}

/// The relay's answer to an [`OpenStream`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenResult {
    /// The backend is connected; raw bytes follow.
    Accepted,
    /// The stream is refused and will be closed.
    Refused(Refusal),
}

impl OpenResult {
    /// Appends this message's bytes to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        match self {
            OpenResult::Accepted => dst.put_u8(ACCEPTED),
            OpenResult::Refused(refusal) => {
                let code = match refusal.code.as_u8() {
                    ACCEPTED => OTHER_ZERO_ON_WIRE,
                    code => code,
                };
                dst.put_u8(code);
                put_str_u16(dst, &refusal.message, MAX_REFUSAL_MESSAGE);
            }
        }
    }

    /// Decodes one message from the front of `src`; see the crate docs for
    /// the meaning of `Ok(None)`.
    pub fn decode(src: &mut BytesMut) -> Result<Option<Self>, WireError> {
        decode_with(src, |r| {
            let code = r.u8()?;
            if code == ACCEPTED {
                return Ok(OpenResult::Accepted);
            }
            let message = r.str_u16("refusal message", MAX_REFUSAL_MESSAGE)?;
            Ok(OpenResult::Refused(Refusal {
                code: RefusalCode::from_u8(code),
                message,
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::testing::{assert_round_trip, decode_err};

    fn open(name: &str) -> OpenStream {
        OpenStream::new(name).expect("valid name")
    }

    fn refused(code: RefusalCode, message: &str) -> OpenResult {
        OpenResult::Refused(Refusal {
            code,
            message: message.into(),
        })
    }

    #[test]
    fn open_stream_round_trips() {
        for name in [
            "bitbucket-ssh",
            "confluence",
            "a",
            "0",
            "git.internal_v2-ssh",
            &"z".repeat(MAX_SERVICE_NAME),
        ] {
            assert_round_trip(&open(name), OpenStream::encode, OpenStream::decode);
        }
    }

    #[test]
    fn open_stream_layout_is_as_documented() {
        let mut buf = BytesMut::new();
        open("git").encode(&mut buf);
        assert_eq!(&buf[..], b"\x03git");
    }

    #[test]
    fn new_rejects_bad_names() {
        assert_eq!(
            OpenStream::new(""),
            Err(WireError::InvalidServiceName(String::new()))
        );
        for bad in ["UPPER", "a/b", "a b", "café", "x\n", "a:22"] {
            assert_eq!(
                OpenStream::new(bad),
                Err(WireError::InvalidServiceName(bad.into())),
                "{bad:?}"
            );
        }
        assert_eq!(
            OpenStream::new("a".repeat(65)),
            Err(WireError::TooLong {
                what: "service name",
                len: 65,
                max: MAX_SERVICE_NAME
            })
        );
    }

    #[test]
    fn decode_rejects_bad_names() {
        assert_eq!(
            decode_err(b"\x00", OpenStream::decode),
            WireError::InvalidServiceName(String::new())
        );
        assert_eq!(
            decode_err(b"\x05UPPER", OpenStream::decode),
            WireError::InvalidServiceName("UPPER".into())
        );
        assert_eq!(
            decode_err(b"\x03a/b", OpenStream::decode),
            WireError::InvalidServiceName("a/b".into())
        );
        assert_eq!(
            decode_err(b"\x02\xc3\x28", OpenStream::decode),
            WireError::InvalidUtf8("service name")
        );
        // 65 announced, nothing follows: rejected without waiting.
        assert_eq!(
            decode_err(&[65], OpenStream::decode),
            WireError::TooLong {
                what: "service name",
                len: 65,
                max: MAX_SERVICE_NAME
            }
        );
    }

    #[test]
    fn hand_built_invalid_name_fails_closed() {
        for bad in ["", "UPPER", &"a".repeat(300)] {
            let mut buf = BytesMut::new();
            OpenStream {
                service: bad.to_owned(),
            }
            .encode(&mut buf);
            assert_eq!(&buf[..], &[0]);
            assert!(OpenStream::decode(&mut buf).is_err());
        }
    }

    #[test]
    fn open_stream_then_payload_leaves_the_payload() {
        let mut buf = BytesMut::new();
        open("ssh").encode(&mut buf);
        buf.put_slice(b"SSH-2.0-OpenSSH\r\n");
        assert_eq!(OpenStream::decode(&mut buf), Ok(Some(open("ssh"))));
        assert_eq!(&buf[..], b"SSH-2.0-OpenSSH\r\n");
    }

    #[test]
    fn open_result_round_trips() {
        let mut cases = vec![
            OpenResult::Accepted,
            refused(RefusalCode::UnknownService, "no service \"wiki\""),
            refused(RefusalCode::Forbidden, "group eng-readonly"),
            refused(RefusalCode::RateLimited, ""),
            refused(RefusalCode::NoHealthyBackend, "0 of 3 healthy"),
            refused(RefusalCode::ShuttingDown, "draining"),
            refused(RefusalCode::BackendUnreachable, "connect: refused"),
            refused(RefusalCode::Unauthenticated, "token expired"),
            refused(RefusalCode::Other(200), "from the future"),
            refused(RefusalCode::Other(255), &"m".repeat(MAX_REFUSAL_MESSAGE)),
        ];
        for r in cases.drain(..) {
            assert_round_trip(&r, OpenResult::encode, OpenResult::decode);
        }
    }

    #[test]
    fn open_result_layout_is_as_documented() {
        let mut buf = BytesMut::new();
        OpenResult::Accepted.encode(&mut buf);
        refused(RefusalCode::Forbidden, "no").encode(&mut buf);
        assert_eq!(&buf[..], b"\x00\x02\x00\x02no");
    }

    #[test]
    fn accepted_then_data_leaves_the_data() {
        let mut buf = BytesMut::from(&b"\x00\x02\x00\x02no"[..]);
        assert_eq!(OpenResult::decode(&mut buf), Ok(Some(OpenResult::Accepted)));
        assert_eq!(
            OpenResult::decode(&mut buf),
            Ok(Some(refused(RefusalCode::Forbidden, "no")))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn other_zero_is_never_sent_as_accepted() {
        let mut buf = BytesMut::new();
        refused(RefusalCode::Other(0), "odd").encode(&mut buf);
        assert_eq!(
            OpenResult::decode(&mut buf),
            Ok(Some(refused(RefusalCode::Other(255), "odd")))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn open_result_garbage_is_rejected() {
        assert_eq!(
            decode_err(b"\x02\x04\x01", OpenResult::decode),
            WireError::TooLong {
                what: "refusal message",
                len: 0x0401,
                max: MAX_REFUSAL_MESSAGE
            }
        );
        assert_eq!(
            decode_err(b"\x02\x00\x01\x80", OpenResult::decode),
            WireError::InvalidUtf8("refusal message")
        );
    }
}
