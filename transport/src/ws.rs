//! A WebSocket carried as an ordered byte stream.
//!
//! Writes are gathered into one binary message until the writer flushes (or
//! [`MAX_WRITE`] bytes are waiting), so a yamux frame's 12-byte header and its
//! body travel as one WebSocket message instead of two. The gathering buffer
//! is reused: tungstenite copies a message into its own output buffer when it
//! is sent, which leaves ours free to take the next one without allocating.
//! Received binary messages are read back as bytes. Text messages are a
//! protocol error; ping/pong are answered by tungstenite itself. A close frame
//! or the end of the connection is EOF.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures::{AsyncRead, AsyncWrite, Sink, Stream};
use tokio::io::{AsyncRead as TokioRead, AsyncWrite as TokioWrite};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

/// Largest WebSocket message we send; writes gathered past this are sent
/// without waiting for a flush. Room for a 64 KiB yamux frame and its header.
pub const MAX_WRITE: usize = 64 * 1024 + 64;

/// The read buffer tungstenite starts each connection with. Its default,
/// 128 KiB, is allocated and zero-filled on the first read, so every idle
/// session held it resident (~116 of an idle relay session's 179 KiB,
/// BENCHMARKS.md). A larger frame still fits: tungstenite reserves room for
/// the frame the header announces.
pub const READ_BUFFER: usize = 8 * 1024;

/// WebSocket limits of a tunnel connection, the same at both ends: a message
/// (and a frame) holds at most 4 MiB, far above [`MAX_WRITE`], so a peer
/// cannot make the other buffer more.
pub fn config() -> tungstenite::protocol::WebSocketConfig {
    let mut c = tungstenite::protocol::WebSocketConfig::default();
    c.max_message_size = Some(4 << 20);
    c.max_frame_size = Some(4 << 20);
    c.read_buffer_size = READ_BUFFER;
    c
}

/// Adapts a [`WebSocketStream`] to `futures::io::{AsyncRead, AsyncWrite}`.
pub struct WsByteStream<S> {
    ws: WebSocketStream<S>,
    /// Received bytes not yet read.
    pending: Bytes,
    eof: bool,
    /// Written bytes not yet handed to the WebSocket.
    out: BytesMut,
}

impl<S> WsByteStream<S> {
    pub fn new(ws: WebSocketStream<S>) -> Self {
        Self {
            ws,
            pending: Bytes::new(),
            eof: false,
            out: BytesMut::new(),
        }
    }
}

impl<S> WsByteStream<S>
where
    S: TokioRead + TokioWrite + Unpin,
{
    /// Hands the gathered bytes to the WebSocket as one binary message.
    fn poll_send_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.out.is_empty() {
            return Poll::Ready(Ok(()));
        }
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(to_io)?;
        let message = self.out.split().freeze();
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(message))
            .map_err(to_io)?;
        Poll::Ready(Ok(()))
    }
}

fn to_io(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "websocket closed")
        }
        other => io::Error::other(other),
    }
}

impl<S> AsyncRead for WsByteStream<S>
where
    S: TokioRead + TokioWrite + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            if !self.pending.is_empty() {
                let n = buf.len().min(self.pending.len());
                buf[..n].copy_from_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(n));
            }
            if self.eof {
                return Poll::Ready(Ok(0));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => self.pending = data,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "unexpected text message on the tunnel",
                    )))
                }
                Some(Ok(Message::Close(_))) | None => self.eof = true,
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }
}

impl<S> AsyncWrite for WsByteStream<S>
where
    S: TokioRead + TokioWrite + Unpin,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.out.len() >= MAX_WRITE {
            ready!(this.poll_send_out(cx))?;
        }
        if this.out.is_empty() {
            // Takes back the whole buffer once tungstenite has copied the
            // last message out of it (no allocation in the steady state).
            this.out.reserve(MAX_WRITE);
        }
        let n = buf.len().min(MAX_WRITE - this.out.len());
        this.out.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_out(cx))?;
        Pin::new(&mut self.ws).poll_flush(cx).map_err(to_io)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_out(cx))?;
        match ready!(Pin::new(&mut self.ws).poll_close(cx)) {
            Ok(()) | Err(tungstenite::Error::ConnectionClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(to_io(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;

    #[tokio::test]
    async fn bytes_cross_both_ways_and_close_is_eof() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let client = WebSocketStream::from_raw_socket(a, Role::Client, None).await;
        let server = WebSocketStream::from_raw_socket(b, Role::Server, None).await;
        let mut client = WsByteStream::new(client);
        let mut server = WsByteStream::new(server);

        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let send = payload.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&send).await.unwrap();
            client.close().await.unwrap();
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got, payload);
    }

    #[tokio::test]
    async fn writes_until_a_flush_travel_as_one_message() {
        use futures::StreamExt;
        let (a, b) = tokio::io::duplex(256 * 1024);
        let client = WebSocketStream::from_raw_socket(a, Role::Client, None).await;
        let mut server = WebSocketStream::from_raw_socket(b, Role::Server, None).await;
        let mut client = WsByteStream::new(client);

        // A yamux frame: header, then body, then flush.
        client.write_all(&[1u8; 12]).await.unwrap();
        client.write_all(&[2u8; 1000]).await.unwrap();
        client.flush().await.unwrap();
        // More than one message's worth, written at once, is split.
        let big = vec![3u8; MAX_WRITE + 10];
        client.write_all(&big).await.unwrap();
        client.flush().await.unwrap();

        let mut lens = Vec::new();
        for _ in 0..3 {
            match server.next().await {
                Some(Ok(Message::Binary(b))) => lens.push(b.len()),
                other => panic!("expected a binary message, got {other:?}"),
            }
        }
        assert_eq!(lens, vec![1012, MAX_WRITE, 10]);
    }
}
