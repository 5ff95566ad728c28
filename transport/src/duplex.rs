//! The one copy loop: bytes both ways between two streams, with half-close.
//!
//! When one side finishes sending (EOF), the other side's write half is shut
//! down, and copying continues the other way until it ends too, so a client
//! that half-closes after its request still gets the whole response.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest buffer per direction: large enough for bulk transfers.
pub const BUF_SIZE: usize = 64 * 1024;

/// Buffer a direction starts with. Most connections (a held-open git
/// session, a page's keep-alive connection) move little, and 100 of them
/// with two 64 KiB buffers each would cost 12.5 MiB; a direction whose reads
/// fill its buffer doubles it, up to [`BUF_SIZE`].
pub const FIRST_BUF_SIZE: usize = 4 * 1024;

/// Bytes moved by [`splice`], per direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    pub a_to_b: u64,
    pub b_to_a: u64,
}

/// Copies `a` ⇄ `b` until both directions have ended.
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> io::Result<Transferred>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Direction::Copying(Pipe::new());
    let mut b_to_a = Direction::Copying(Pipe::new());
    poll_fn(|cx| {
        let ab = a_to_b.poll(cx, &mut *a, &mut *b)?;
        let ba = b_to_a.poll(cx, &mut *b, &mut *a)?;
        let (Poll::Ready(a_to_b), Poll::Ready(b_to_a)) = (ab, ba) else {
            return Poll::Pending;
        };
        Poll::Ready(Ok(Transferred { a_to_b, b_to_a }))
    })
    .await
}

/// One direction: copy until EOF, then shut the writer down.
enum Direction {
    Copying(Pipe),
    ShuttingDown(u64),
    Done(u64),
}

impl Direction {
    fn poll<R, W>(&mut self, cx: &mut Context<'_>, r: &mut R, w: &mut W) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            match self {
                Direction::Copying(pipe) => {
                    let n = ready!(pipe.poll_copy(cx, &mut *r, &mut *w))?;
                    *self = Direction::ShuttingDown(n);
                }
                Direction::ShuttingDown(n) => {
                    ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                    *self = Direction::Done(*n);
                }
                Direction::Done(n) => return Poll::Ready(Ok(*n)),
            }
        }
    }
}

/// A buffer between a reader and a writer.
struct Pipe {
    buf: Box<[u8]>,
    /// `buf[start..end]` is read and not yet written.
    start: usize,
    end: usize,
    eof: bool,
    /// Written since the last flush.
    unflushed: bool,
    total: u64,
}

impl Pipe {
    fn new() -> Self {
        Self {
            buf: vec![0; FIRST_BUF_SIZE].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            unflushed: false,
            total: 0,
        }
    }

    /// Copies until the reader's EOF, everything written and flushed.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            if self.start == self.end && !self.eof {
                // Yield to the scheduler now and then, even when both sides
                // are always ready (as tokio's own copy does).
                let coop = ready!(tokio::task::coop::poll_proceed(cx));
                let mut rb = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut *r).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        coop.made_progress();
                        let n = rb.filled().len();
                        self.start = 0;
                        self.end = n;
                        if n == 0 {
                            self.eof = true;
                        } else if n == self.buf.len() && n < BUF_SIZE {
                            self.grow();
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // Nothing more to read for now: push out what was
                        // written, so it doesn't wait in a writer's buffer.
                        if self.unflushed {
                            ready!(Pin::new(&mut *w).poll_flush(cx))?;
                            self.unflushed = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.start < self.end {
                let n = ready!(Pin::new(&mut *w).poll_write(cx, &self.buf[self.start..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "write zero bytes into the other side",
                    )));
                }
                self.start += n;
                self.total += n as u64;
                self.unflushed = true;
            }
            if self.eof {
                ready!(Pin::new(&mut *w).poll_flush(cx))?;
                self.unflushed = false;
                return Poll::Ready(Ok(self.total));
            }
        }
    }

    /// Doubles the buffer, keeping the bytes just read (`buf[..end]`).
    fn grow(&mut self) {
        let size = (self.buf.len() * 2).min(BUF_SIZE);
        let mut bigger = vec![0; size].into_boxed_slice();
        bigger[..self.end].copy_from_slice(&self.buf[..self.end]);
        self.buf = bigger;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn half_close_lets_the_response_finish() {
        let (mut client, mut proxy_a) = tokio::io::duplex(1024);
        let (mut proxy_b, mut server) = tokio::io::duplex(1024);
        let proxy = tokio::spawn(async move { splice(&mut proxy_a, &mut proxy_b).await });

        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap(); // half-close: request done

        let big = vec![7u8; 200_000];
        let expected = big.clone();
        let server = tokio::spawn(async move {
            let mut req = Vec::new();
            server.read_to_end(&mut req).await.unwrap(); // sees EOF after the request
            assert_eq!(req, b"request");
            server.write_all(&big).await.unwrap();
            server.shutdown().await.unwrap();
        });

        let mut resp = Vec::new();
        client.read_to_end(&mut resp).await.unwrap();
        assert_eq!(resp, expected);
        server.await.unwrap();
        let t = proxy.await.unwrap().unwrap();
        assert_eq!(
            t,
            Transferred {
                a_to_b: 7,
                b_to_a: 200_000
            }
        );
    }

    #[tokio::test]
    async fn bulk_both_ways_at_once_arrives_intact() {
        let (client, mut proxy_a) = tokio::io::duplex(8 * 1024);
        let (mut proxy_b, server) = tokio::io::duplex(100 * 1024);
        let proxy = tokio::spawn(async move { splice(&mut proxy_a, &mut proxy_b).await });

        let up: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..2_000_000u32).map(|i| (i % 241) as u8).collect();
        let (up2, down2) = (up.clone(), down.clone());
        let server = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(server);
            let send = async move {
                w.write_all(&down2).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let mut got = Vec::new();
            let recv = r.read_to_end(&mut got);
            let (_, n) = tokio::join!(send, recv);
            n.unwrap();
            got
        });
        let (mut r, mut w) = tokio::io::split(client);
        let send = async move {
            w.write_all(&up2).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        let (_, n) = tokio::join!(send, r.read_to_end(&mut got));
        n.unwrap();
        assert_eq!(got, down);
        assert_eq!(server.await.unwrap(), up);
        let t = proxy.await.unwrap().unwrap();
        assert_eq!((t.a_to_b, t.b_to_a), (3_000_000, 2_000_000));
    }

    /// Both sides always ready must not starve the other tasks of a
    /// single-threaded runtime.
    #[test]
    fn an_endless_stream_lets_other_tasks_run() {
        /// Always has bytes, always takes them, never consults tokio's budget
        /// (tokio's own `repeat` and `sink` do).
        struct Endless;
        impl AsyncRead for Endless {
            fn poll_read(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                let n = buf.remaining();
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
        }
        impl AsyncWrite for Endless {
            fn poll_write(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                Poll::Ready(Ok(buf.len()))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        // On its own thread: a starving splice would spin there forever.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                let proxy = tokio::spawn(async move { splice(&mut Endless, &mut Endless).await });
                let other = tokio::spawn(async { 42 }).await.unwrap();
                let _ = tx.send(other);
                proxy.abort();
            });
        });
        let other = rx.recv_timeout(std::time::Duration::from_secs(10));
        assert_eq!(other, Ok(42), "the splice starved the other task");
    }

    #[tokio::test]
    async fn a_write_error_ends_the_splice_with_it() {
        struct Broken;
        impl AsyncRead for Broken {
            fn poll_read(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                Poll::Pending
            }
        }
        impl AsyncWrite for Broken {
            fn poll_write(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &[u8],
            ) -> Poll<io::Result<usize>> {
                Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        let (mut client, mut proxy_a) = tokio::io::duplex(1024);
        client.write_all(b"hello").await.unwrap();
        let err = splice(&mut proxy_a, &mut Broken).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }
}
