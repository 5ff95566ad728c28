//! Reading and writing `gangway-wire` messages on a byte stream.
//!
//! The wire crate decodes from a buffer and says "incomplete"; this module
//! owns the buffer and the reads that fill it.

use bytes::BytesMut;
use gangway_wire::WireError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A failure reading a framed message.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed in the middle of a message")]
    Truncated,
    #[error("protocol error: {0}")]
    Wire(#[from] WireError),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// A byte stream plus the bytes read from it but not yet decoded.
#[derive(Debug)]
pub struct FramedIo<S> {
    io: S,
    buf: BytesMut,
}

impl<S> FramedIo<S> {
    pub fn new(io: S) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(4 * 1024),
        }
    }

    /// The stream, and any bytes that arrived after the last decoded message
    /// (the caller must deliver them before reading the stream further).
    pub fn into_parts(self) -> (S, BytesMut) {
        (self.io, self.buf)
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }
}

impl<S: AsyncRead + Unpin> FramedIo<S> {
    /// Reads one message. `Ok(None)` means a clean EOF before any byte of it.
    pub async fn read<T>(
        &mut self,
        decode: fn(&mut BytesMut) -> Result<Option<T>, WireError>,
    ) -> Result<Option<T>, FrameError> {
        loop {
            if let Some(msg) = decode(&mut self.buf)? {
                return Ok(Some(msg));
            }
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(4 * 1024);
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> FramedIo<S> {
    /// Encodes one message with `encode` and writes it out (flushed).
    pub async fn write(&mut self, encode: impl FnOnce(&mut BytesMut)) -> std::io::Result<()> {
        let mut out = BytesMut::with_capacity(128);
        encode(&mut out);
        self.io.write_all(&out).await?;
        self.io.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gangway_wire::{OpenResult, OpenStream};

    #[tokio::test]
    async fn message_then_leftover_bytes() {
        let mut bytes = BytesMut::new();
        OpenStream::new("git").unwrap().encode(&mut bytes);
        bytes.extend_from_slice(b"SSH-2.0-banner");
        // All bytes arrive in one read: what follows the header stays buffered.
        let mut framed = FramedIo::new(&bytes[..]);
        let open = framed.read(OpenStream::decode).await.unwrap().unwrap();
        assert_eq!(open.service, "git");
        let (_, rest) = framed.into_parts();
        assert_eq!(&rest[..], b"SSH-2.0-banner");
    }

    #[tokio::test]
    async fn eof_mid_message_is_truncated() {
        let mut bytes = BytesMut::new();
        OpenResult::Accepted.encode(&mut bytes);
        OpenStream::new("bitbucket").unwrap().encode(&mut bytes);
        bytes.truncate(bytes.len() - 3);
        let mut framed = FramedIo::new(tokio_test_reader(bytes.to_vec()));
        assert!(matches!(
            framed.read(OpenResult::decode).await,
            Ok(Some(OpenResult::Accepted))
        ));
        assert!(matches!(
            framed.read(OpenStream::decode).await,
            Err(FrameError::Truncated)
        ));
    }

    /// A reader that hands out its bytes one at a time, to exercise
    /// the "incomplete" path on every byte boundary.
    fn tokio_test_reader(data: Vec<u8>) -> impl AsyncRead + Unpin {
        struct OneByte(std::collections::VecDeque<u8>);
        impl AsyncRead for OneByte {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                _cx: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                if let Some(b) = self.0.pop_front() {
                    buf.put_slice(&[b]);
                }
                std::task::Poll::Ready(Ok(()))
            }
        }
        OneByte(data.into())
    }
}
