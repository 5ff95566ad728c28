//! The yamux session: many streams over one byte stream.
//!
//! A yamux [`Connection`](yamux::Connection) makes progress only while it is
//! polled, and opening a stream needs `&mut` access to it. So one task (the
//! driver returned by [`start`]) owns the connection; an [`Opener`] asks it
//! for outbound streams over a channel, and inbound streams arrive on a
//! receiver. Dropping every [`Opener`] and the receiver closes the session.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

pub use yamux::Mode;

pub use crate::stream::Stream;

/// Why the session or a stream could not be used.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error("tunnel session closed")]
    Closed,
    #[error("tunnel session failed: {0}")]
    Connection(#[from] yamux::ConnectionError),
    #[error("tunnel session failed: {0}")]
    Io(io::Error),
}

type OpenReply = oneshot::Sender<Result<yamux::Stream, yamux::ConnectionError>>;

/// Opens outbound streams on a running session. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Opener {
    tx: mpsc::Sender<OpenReply>,
}

impl Opener {
    /// Opens a new stream. Costs one yamux frame, no handshake.
    pub async fn open(&self) -> Result<Stream, MuxError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(reply).await.map_err(|_| MuxError::Closed)?;
        let stream = rx.await.map_err(|_| MuxError::Closed)??;
        Ok(Stream::new(stream))
    }

    /// True once the driver has stopped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Yamux settings for Gangway: windows large enough for bulk transfers on
/// fast links, and a stream limit that bounds per-session memory.
pub fn config() -> yamux::Config {
    let mut cfg = yamux::Config::default();
    cfg.set_max_num_streams(1024);
    cfg.set_max_connection_receive_window(Some(1024 * 1024 * 1024));
    cfg.set_split_send_size(64 * 1024);
    cfg
}

/// Settings that bound what one session can make this side hold: at most
/// `max_streams` streams, and a connection-wide receive window that gives
/// every stream yamux's initial 256 KiB and lets one grow to
/// `stream_window` (yamux auto-tunes a stream's window from 256 KiB up to
/// what the connection window leaves). The relay uses this with its
/// `[limits]`; the agent keeps [`config`].
pub fn bounded_config(max_streams: usize, stream_window: usize) -> yamux::Config {
    const BASE: usize = yamux::DEFAULT_CREDIT as usize;
    let max_streams = max_streams.max(1);
    let mut cfg = yamux::Config::default();
    // Streams first: yamux checks window >= 256 KiB × streams on each set.
    cfg.set_max_num_streams(max_streams);
    cfg.set_max_connection_receive_window(Some(
        max_streams * BASE + stream_window.saturating_sub(BASE),
    ));
    cfg.set_split_send_size(64 * 1024);
    cfg
}

/// Starts a session over `io` with `cfg` ([`config`], or the relay's
/// [`bounded_config`]). Returns the opener, the inbound streams and the
/// driver future, which the caller spawns; it ends when the session does.
pub fn start<T>(
    io: T,
    mode: Mode,
    cfg: yamux::Config,
) -> (
    Opener,
    mpsc::UnboundedReceiver<Stream>,
    impl std::future::Future<Output = Result<(), MuxError>>,
)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (open_tx, mut open_rx) = mpsc::channel::<OpenReply>(64);
    let (in_tx, in_rx) = mpsc::unbounded_channel();
    let corked = Corked::new(io);
    let socket = corked.clone();
    let mut conn = yamux::Connection::new(corked, cfg, mode);
    let driver = async move {
        let mut pending: Option<OpenReply> = None;
        let mut openers_gone = false;
        let result = poll_fn(|cx| {
            // Serve open requests, one at a time, until yamux says "wait".
            loop {
                if pending.is_none() && !openers_gone {
                    match open_rx.poll_recv(cx) {
                        Poll::Ready(Some(reply)) => pending = Some(reply),
                        Poll::Ready(None) => openers_gone = true,
                        Poll::Pending => {}
                    }
                }
                let Some(reply) = pending.take() else { break };
                match conn.poll_new_outbound(cx) {
                    Poll::Ready(r) => {
                        let _ = reply.send(r);
                    }
                    Poll::Pending => {
                        pending = Some(reply);
                        break;
                    }
                }
            }
            if openers_gone && in_tx.is_closed() {
                return conn.poll_close(cx).map_err(MuxError::from);
            }
            // Drive the connection; hand over inbound streams.
            loop {
                match conn.poll_next_inbound(cx) {
                    Poll::Ready(Some(Ok(stream))) => {
                        // A receiver that is gone drops the stream, which resets it.
                        let _ = in_tx.send(Stream::new(stream));
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(MuxError::from(e))),
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => {
                        // Nothing more to do for now: send what this round
                        // wrote, in one flush.
                        return match socket.poll_flush_written(cx) {
                            Poll::Ready(Err(e)) => Poll::Ready(Err(MuxError::Io(e))),
                            _ => Poll::Pending,
                        };
                    }
                }
            }
        })
        .await;
        result
    };
    (Opener { tx: open_tx }, in_rx, driver)
}

/// The session's transport, as yamux sees it: flushes are deferred.
///
/// yamux flushes its transport after every frame it writes; over TLS that is
/// one record and one `writev` per frame. Here a flush from yamux only notes
/// that bytes are waiting, and the driver flushes once when yamux has nothing
/// left to do in this round — so frames that several streams queued at the
/// same moment leave in one write. Shared between yamux and the driver (one
/// task; the lock is never contended).
struct Corked<T> {
    inner: Arc<Mutex<CorkedInner<T>>>,
}

struct CorkedInner<T> {
    io: T,
    /// Bytes written since the last real flush.
    written: bool,
}

impl<T> Clone for Corked<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Corked<T> {
    fn new(io: T) -> Self {
        Self {
            inner: Arc::new(Mutex::new(CorkedInner { io, written: false })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, CorkedInner<T>> {
        // A panic while holding the lock ends the session's task anyway.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The real flush, if anything was written since the last one.
    fn poll_flush_written(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = self.lock();
        if !inner.written {
            return Poll::Ready(Ok(()));
        }
        let r = Pin::new(&mut inner.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = r {
            inner.written = false;
        }
        r
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Corked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.lock().io).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Corked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut inner = self.lock();
        let r = Pin::new(&mut inner.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(_)) = r {
            inner.written = true;
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Deferred to the driver (`poll_flush_written`).
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.lock().io).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::compat::TokioAsyncReadCompatExt;

    #[tokio::test]
    async fn many_streams_over_one_connection() {
        let (a, b) = tokio::io::duplex(256 * 1024);
        let (client, _client_in, client_driver) = start(a.compat(), Mode::Client, config());
        let (_server, mut server_in, server_driver) = start(b.compat(), Mode::Server, config());
        tokio::spawn(client_driver);
        tokio::spawn(server_driver);

        // Echo server: every inbound stream echoes until EOF.
        tokio::spawn(async move {
            while let Some(mut s) = server_in.recv().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    s.read_to_end(&mut buf).await.unwrap();
                    s.write_all(&buf).await.unwrap();
                    s.shutdown().await.unwrap();
                });
            }
        });

        let mut tasks = Vec::new();
        for i in 0..20u8 {
            let opener = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut s = opener.open().await.unwrap();
                let msg = vec![i; 100_000];
                s.write_all(&msg).await.unwrap();
                s.shutdown().await.unwrap();
                let mut back = Vec::new();
                s.read_to_end(&mut back).await.unwrap();
                assert_eq!(back, msg);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }

    #[tokio::test]
    async fn open_fails_once_peer_is_gone() {
        let (a, b) = tokio::io::duplex(1024);
        let (client, _in, driver) = start(a.compat(), Mode::Client, config());
        let driver = tokio::spawn(driver);
        drop(b);
        // The driver notices EOF and stops; opening then fails instead of hanging.
        let _ = driver.await;
        assert!(client.open().await.is_err());
    }

    /// Counts the flushes that reach the transport.
    struct CountFlushes<T> {
        io: T,
        flushes: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl<T: AsyncRead + Unpin> AsyncRead for CountFlushes<T> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl<T: AsyncWrite + Unpin> AsyncWrite for CountFlushes<T> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.io).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Pin::new(&mut self.io).poll_flush(cx)
        }
        fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_close(cx)
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn frames_queued_together_leave_in_one_flush() {
        let (a, b) = tokio::io::duplex(1024 * 1024);
        let flushes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = CountFlushes {
            io: a.compat(),
            flushes: flushes.clone(),
        };
        let (client, _client_in, client_driver) = start(counted, Mode::Client, config());
        let (_server, mut server_in, server_driver) = start(b.compat(), Mode::Server, config());
        tokio::spawn(client_driver);
        tokio::spawn(server_driver);

        // 20 streams, opened and written in the same round.
        let mut streams = Vec::new();
        for _ in 0..20 {
            streams.push(client.open().await.unwrap());
        }
        let writes = streams.iter_mut().map(|s| s.write_all(b"x"));
        futures::future::join_all(writes).await;
        for _ in 0..20 {
            let mut s = server_in.recv().await.unwrap();
            let mut one = [0u8; 1];
            s.read_exact(&mut one).await.unwrap();
            assert_eq!(&one, b"x");
        }
        // Twenty frames (each opening a stream and carrying a byte); one
        // flush per frame would be 20.
        let n = flushes.load(std::sync::atomic::Ordering::Relaxed);
        assert!(n <= 3, "{n} flushes for 20 frames queued together");
    }
}
