//! Small shared pieces for decoding from a peeked slice and for
//! length-prefixed UTF-8 strings.
//!
//! Decoders parse from a [`Reader`] over the buffered bytes without consuming
//! them; [`decode_with`] advances the real buffer only once a whole message
//! has parsed. That is what makes `Ok(None)` leave the buffer untouched.

use bytes::{Buf, BufMut, BytesMut};

use crate::WireError;

/// Why parsing stopped: not enough bytes yet, or bytes that can never parse.
pub(crate) enum Stop {
    /// More bytes are needed.
    Incomplete,
    /// The bytes are not a valid message.
    Invalid(WireError),
}

impl From<WireError> for Stop {
    fn from(e: WireError) -> Self {
        Stop::Invalid(e)
    }
}

/// The result of one parsing step.
pub(crate) type Parse<T> = Result<T, Stop>;

/// A cursor over buffered bytes that reports [`Stop::Incomplete`] instead of
/// panicking when it runs out.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// The bytes not yet read, without consuming them.
    pub(crate) fn peek_rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// Consumes exactly `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Parse<&'a [u8]> {
        let rest = self.peek_rest();
        if rest.len() < n {
            return Err(Stop::Incomplete);
        }
        self.pos += n;
        Ok(&rest[..n])
    }

    fn array<const N: usize>(&mut self) -> Parse<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Parse<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Parse<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Parse<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Reads a `u16` length then that many bytes of UTF-8, rejecting a length
    /// over `max` before waiting for the bytes.
    pub(crate) fn str_u16(&mut self, what: &'static str, max: usize) -> Parse<String> {
        let len = usize::from(self.u16()?);
        check_len(what, len, max)?;
        Ok(utf8(what, self.take(len)?)?)
    }
}

/// Runs `parse` over the bytes in `src`; on success consumes exactly what it
/// read. `Incomplete` becomes `Ok(None)` with `src` untouched.
pub(crate) fn decode_with<T>(
    src: &mut BytesMut,
    parse: impl FnOnce(&mut Reader<'_>) -> Parse<T>,
) -> Result<Option<T>, WireError> {
    let mut reader = Reader::new(src);
    match parse(&mut reader) {
        Ok(value) => {
            let used = reader.pos;
            src.advance(used);
            Ok(Some(value))
        }
        Err(Stop::Incomplete) => Ok(None),
        Err(Stop::Invalid(e)) => Err(e),
    }
}

/// Fails with [`WireError::TooLong`] when `len > max`.
pub(crate) fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), WireError> {
    if len > max {
        return Err(WireError::TooLong { what, len, max });
    }
    Ok(())
}

/// Copies `bytes` into a `String`, or fails with [`WireError::InvalidUtf8`].
pub(crate) fn utf8(what: &'static str, bytes: &[u8]) -> Result<String, WireError> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| WireError::InvalidUtf8(what))
}

/// The longest prefix of `s` that is at most `max` bytes and ends on a
/// character boundary.
pub(crate) fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Writes `s` as a `u16` length then its bytes, truncated (on a character
/// boundary) to `max` bytes so the peer never sees an over-long field.
/// `max` must fit in a `u16`.
pub(crate) fn put_str_u16(dst: &mut BytesMut, s: &str, max: usize) {
    debug_assert!(max <= usize::from(u16::MAX));
    let s = truncate_utf8(s, max);
    dst.put_u16(s.len() as u16);
    dst.put_slice(s.as_bytes());
}

#[cfg(test)]
pub(crate) mod testing {
    //! Checks every message type's tests share.

    use std::fmt::Debug;

    use bytes::{BufMut, BytesMut};

    use crate::WireError;

    pub(crate) type Encode<T> = fn(&T, &mut BytesMut);
    pub(crate) type Decode<T> = fn(&mut BytesMut) -> Result<Option<T>, WireError>;

    /// Encodes `value` and checks that it decodes back exactly, that every
    /// strict prefix is incomplete and left untouched, and that two copies
    /// followed by a stray byte decode in order and leave the stray byte.
    pub(crate) fn assert_round_trip<T: Debug + PartialEq>(
        value: &T,
        encode: Encode<T>,
        decode: Decode<T>,
    ) {
        let mut buf = BytesMut::new();
        encode(value, &mut buf);
        let bytes = buf.clone();

        let decoded = decode(&mut buf).expect("decodes").expect("complete");
        assert_eq!(&decoded, value);
        assert!(buf.is_empty(), "left {buf:?} after {value:?}");

        assert_prefixes_incomplete(&bytes, decode);

        let mut two = BytesMut::new();
        encode(value, &mut two);
        encode(value, &mut two);
        two.put_u8(0xEE);
        for _ in 0..2 {
            let decoded = decode(&mut two).expect("decodes").expect("complete");
            assert_eq!(&decoded, value);
        }
        assert_eq!(&two[..], &[0xEE]);
    }

    /// Every strict prefix of `bytes` decodes as incomplete and is left as is.
    pub(crate) fn assert_prefixes_incomplete<T: Debug + PartialEq>(
        bytes: &[u8],
        decode: Decode<T>,
    ) {
        for n in 0..bytes.len() {
            let mut prefix = BytesMut::from(&bytes[..n]);
            assert_eq!(decode(&mut prefix), Ok(None), "prefix of {n} bytes");
            assert_eq!(&prefix[..], &bytes[..n], "prefix of {n} bytes changed");
        }
    }

    /// Decodes `bytes`, expecting an error.
    pub(crate) fn decode_err<T: Debug>(bytes: &[u8], decode: Decode<T>) -> WireError {
        decode(&mut BytesMut::from(bytes)).expect_err("should be rejected")
    }
}
