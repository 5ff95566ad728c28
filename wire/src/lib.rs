//! The Gangway tunnel protocol, as pure encode/decode over [`bytes`].
//!
//! Agent and relay share one WebSocket, used as a byte stream. On it:
//!
//! 1. **Handshake** ([`handshake`]): the agent writes a [`Hello`], the relay
//!    answers with a [`HelloReply`]. Only then does the yamux session start.
//! 2. **Data streams** ([`open`]): on each new yamux stream the agent first
//!    writes an [`OpenStream`] header naming the service; the relay answers
//!    with an [`OpenResult`] — accepted, or a typed [`Refusal`]
//!    ([`refusal`]) — and then the stream carries raw TCP bytes.
//! 3. **Control channel** ([`control`]): one dedicated stream carrying
//!    [`Control`] frames: keep-alives, in-band token refresh, notices and a
//!    parting [`Control::Goodbye`].
//!
//! Nothing here does I/O. Every message type has the same two functions:
//!
//! - `encode(&self, dst: &mut BytesMut)` appends the message's bytes;
//! - `decode(src: &mut BytesMut) -> Result<Option<Self>, WireError>` returns
//!   `Ok(None)` when `src` holds only a prefix of a message (and leaves `src`
//!   untouched, so the caller reads more and tries again), `Ok(Some(msg))`
//!   after consuming exactly that message's bytes (anything after it stays in
//!   `src`), or `Err` when the bytes cannot be a valid message. Lengths over
//!   their limit and bad magic are rejected as soon as they are seen, so a
//!   garbage length never makes a reader wait for gigabytes.
//!
//! Secrets travel as [`Token`], whose `Debug` is redacted.
//!
//! With the `serde` feature, [`api`] holds the relay's HTTP API documents
//! (discovery and catalog), so agent and relay share one definition.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "serde")]
pub mod api;
mod codec;
pub mod control;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod handshake;
pub mod open;
pub mod refusal;
pub mod token;

pub use control::{Control, NoticeLevel, MAX_CONTROL_FRAME, MAX_DPOP_PROOF};
pub use error::WireError;
pub use handshake::{Hello, HelloReply, MAGIC, PROTOCOL_VERSION};
pub use open::{validate_service_name, OpenResult, OpenStream, MAX_SERVICE_NAME};
pub use refusal::{Refusal, RefusalCode};
pub use token::Token;

#[cfg(test)]
mod fuzzish {
    //! Deterministic "fuzz-ish" test: thousands of pseudo-random byte strings
    //! through every decoder, checking the decode contract never breaks.

    use super::*;
    use bytes::{BufMut, BytesMut};

    /// xorshift64*: tiny, deterministic, no dependencies.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Decodes `buf` until it runs dry or errors, checking on each step that
    /// `Ok(None)` leaves the buffer alone and `Ok(Some)` consumes something.
    fn drain<T>(mut buf: BytesMut, decode: fn(&mut BytesMut) -> Result<Option<T>, WireError>) {
        loop {
            let before = buf.clone();
            match decode(&mut buf) {
                Ok(Some(_)) => assert!(buf.len() < before.len(), "decoded without consuming"),
                Ok(None) => {
                    assert_eq!(buf, before, "incomplete decode changed the buffer");
                    return;
                }
                Err(_) => return,
            }
        }
    }

    /// Random bytes, often starting with something plausible so decoders get
    /// past their first check.
    fn input(rng: &mut Rng) -> BytesMut {
        let mut buf = BytesMut::new();
        match rng.below(4) {
            0 => {}
            1 => buf.put_slice(MAGIC),
            2 => {
                buf.put_u8(rng.below(10) as u8);
                buf.put_u32(rng.below(24) as u32);
            }
            _ => buf.put_u8(rng.below(80) as u8),
        }
        let len = rng.below(48);
        for _ in 0..len {
            // Bias towards small values and ASCII so structure is hit often.
            let b = match rng.below(3) {
                0 => rng.below(4) as u8,
                1 => b"abcz09._-/A"[rng.below(11) as usize],
                _ => rng.next() as u8,
            };
            buf.put_u8(b);
        }
        buf
    }

    #[test]
    fn random_bytes_never_panic_any_decoder() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..4000 {
            let buf = input(&mut rng);
            drain(buf.clone(), Hello::decode);
            drain(buf.clone(), HelloReply::decode);
            drain(buf.clone(), OpenStream::decode);
            drain(buf.clone(), OpenResult::decode);
            drain(buf, Control::decode);
        }
    }
}
