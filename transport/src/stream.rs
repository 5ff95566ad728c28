//! One multiplexed stream with tokio's I/O traits.
//!
//! yamux's stream speaks `futures::io`, whose `poll_read` wants an
//! initialised `&mut [u8]`. tokio-util's `Compat` makes one by zeroing all
//! of the caller's unfilled buffer on every read; hyper hands a fresh,
//! uninitialised 8 KiB or larger buffer each time, so every read of a
//! `kind = "http"` stream paid a memset of its whole capacity for a few
//! hundred bytes of data (15 % of the agent's CPU in the HTTP benchmark).
//! Here a read goes straight into the caller's buffer when that part is
//! already initialised (the copy loops' reused buffers), and otherwise
//! into a per-thread scratch buffer, zeroed once, from which only the bytes
//! read are copied.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures::{AsyncRead as _, AsyncWrite as _};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most one read takes through the scratch buffer: a yamux data frame.
pub(crate) const SCRATCH: usize = 64 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// One multiplexed stream (see the module docs).
#[derive(Debug)]
pub struct Stream {
    inner: yamux::Stream,
}

impl Stream {
    pub(crate) fn new(inner: yamux::Stream) -> Self {
        Stream { inner }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let inner = &mut self.get_mut().inner;
        let want = buf.remaining();
        if want == 0 {
            return Poll::Ready(Ok(()));
        }
        let filled = buf.filled().len();
        let ready_room = buf.initialized().len() - filled;
        if ready_room >= want.min(SCRATCH) {
            // Already initialised: read in place.
            let dst = &mut buf.initialized_mut()[filled..];
            let n = ready!(Pin::new(inner).poll_read(cx, dst))?;
            buf.advance(n);
            return Poll::Ready(Ok(()));
        }
        SCRATCH_BUF.with(|scratch| {
            // A read never re-enters this one on the same thread, but if
            // it did, fall back to initialising the caller's buffer.
            match scratch.try_borrow_mut() {
                Ok(mut s) => {
                    let s = &mut s[..want.min(SCRATCH)];
                    let n = ready!(Pin::new(inner).poll_read(cx, s))?;
                    buf.put_slice(&s[..n]);
                }
                Err(_) => {
                    let dst = buf.initialize_unfilled();
                    let n = ready!(Pin::new(inner).poll_read(cx, dst))?;
                    buf.advance(n);
                }
            }
            Poll::Ready(Ok(()))
        })
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::compat::TokioAsyncReadCompatExt;

    use crate::mux::{config, start, Mode};

    /// 300 KB with no repeating 64 KiB period, so a misplaced chunk shows.
    fn pattern() -> Vec<u8> {
        (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// The session's handles: it lives while they do.
    type Keep = [(
        crate::mux::Opener,
        tokio::sync::mpsc::UnboundedReceiver<super::Stream>,
    ); 2];

    async fn pair() -> (super::Stream, super::Stream, Keep) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (client, _client_in, cd) = start(a.compat(), Mode::Client, config());
        let (server, mut server_in, sd) = start(b.compat(), Mode::Server, config());
        tokio::spawn(cd);
        tokio::spawn(sd);
        let mut out = client.open().await.unwrap();
        // The stream reaches the server with its first bytes.
        out.write_all(b"!").await.unwrap();
        out.flush().await.unwrap();
        let mut inn = server_in.recv().await.unwrap();
        let mut one = [0u8; 1];
        inn.read_exact(&mut one).await.unwrap();
        (out, inn, [(client, _client_in), (server, server_in)])
    }

    /// A stream whose other end sends [`pattern`] and closes: the reading
    /// end, what is sent, the writer (done once all is sent) and the session.
    async fn sending() -> (
        super::Stream,
        Vec<u8>,
        tokio::task::JoinHandle<super::Stream>,
        Keep,
    ) {
        let (mut tx, rx, keep) = pair().await;
        let sent = pattern();
        let to_send = sent.clone();
        let writer = tokio::spawn(async move {
            tx.write_all(&to_send).await.unwrap();
            tx.shutdown().await.unwrap();
            tx
        });
        (rx, sent, writer, keep)
    }

    #[tokio::test]
    async fn uninitialised_buffers_get_exactly_the_bytes_sent() {
        let (mut rx, sent, writer, _keep) = sending().await;
        // Fresh uninitialised spare capacity on every read, as hyper's is,
        // in sizes below, at and above the scratch buffer.
        let mut got = Vec::new();
        for cap in [100usize, 8192, super::SCRATCH, 3 * super::SCRATCH]
            .iter()
            .cycle()
        {
            let mut b = bytes::BytesMut::with_capacity(*cap);
            if rx.read_buf(&mut b).await.unwrap() == 0 {
                break;
            }
            // Through the scratch buffer: never more than it holds.
            assert!(b.len() <= (*cap).min(super::SCRATCH), "{} bytes", b.len());
            got.extend_from_slice(&b);
        }
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "the bytes differ");
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn initialised_buffers_are_read_in_place() {
        let (mut rx, sent, writer, _keep) = sending().await;
        // A reused, zeroed buffer larger than the scratch one: one read may
        // take more than the scratch buffer holds.
        let mut buf = vec![0u8; 4 * super::SCRATCH];
        let mut got = Vec::new();
        loop {
            let n = rx.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got == sent, "the bytes differ");
        drop(writer.await.unwrap());
    }
}
