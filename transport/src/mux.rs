//! The yamux session: many streams over one byte stream.
//!
//! A yamux [`Connection`](yamux::Connection) makes progress only while it is
//! polled, and opening a stream needs `&mut` access to it. So one task (the
//! driver returned by [`start`]) owns the connection; an [`Opener`] asks it
//! for outbound streams over a channel, and inbound streams arrive on a
//! receiver. Dropping every [`Opener`] and the receiver closes the session.

use std::future::poll_fn;
use std::task::Poll;

use futures::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

pub use yamux::Mode;

/// One multiplexed stream, with tokio's I/O traits.
pub type Stream = Compat<yamux::Stream>;

/// Why the session or a stream could not be used.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error("tunnel session closed")]
    Closed,
    #[error("tunnel session failed: {0}")]
    Connection(#[from] yamux::ConnectionError),
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
        Ok(stream.compat())
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

/// Starts a session over `io`. Returns the opener, the inbound streams and
/// the driver future, which the caller spawns; it ends when the session does.
pub fn start<T>(
    io: T,
    mode: Mode,
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
    let mut conn = yamux::Connection::new(io, config(), mode);
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
                        let _ = in_tx.send(stream.compat());
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(MuxError::from(e))),
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await;
        result
    };
    (Opener { tx: open_tx }, in_rx, driver)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::compat::TokioAsyncReadCompatExt;

    #[tokio::test]
    async fn many_streams_over_one_connection() {
        let (a, b) = tokio::io::duplex(256 * 1024);
        let (client, _client_in, client_driver) = start(a.compat(), Mode::Client);
        let (_server, mut server_in, server_driver) = start(b.compat(), Mode::Server);
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
        let (client, _in, driver) = start(a.compat(), Mode::Client);
        let driver = tokio::spawn(driver);
        drop(b);
        // The driver notices EOF and stops; opening then fails instead of hanging.
        let _ = driver.await;
        assert!(client.open().await.is_err());
    }
}
