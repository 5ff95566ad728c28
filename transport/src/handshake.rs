//! How a session opens, once for both ends:
//!
//! ```text
//! agent                                   relay
//!   ── Hello (one binary WebSocket message) ──▶
//!   ◀── HelloReply: Welcome | Unsupported ──
//!   ═══ yamux from here on ═══
//!   opens the control stream and speaks first: Ping(0) ──▶   (the first stream is the control stream)
//!   ◀── Pong(0)
//!   data streams …
//! ```
//!
//! The agent must write on the control stream before any data stream can
//! exist: yamux announces a stream with its first frame, and the relay takes
//! the first stream it sees as the control channel. Both rules live here so
//! the two ends cannot drift apart.

use std::time::Duration;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use gangway_wire::{Control, Hello, HelloReply, WireError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::control::{self, ControlReader, ControlWriter};
use crate::mux::{MuxError, Opener, Stream};

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The WebSocket failed.
    #[error(transparent)]
    WebSocket(#[from] tungstenite::Error),
    /// The peer closed the connection before the handshake finished.
    #[error("the peer closed the connection during the handshake")]
    Closed,
    /// The peer's handshake message is not valid.
    #[error("bad handshake message: {0}")]
    Wire(#[from] WireError),
    /// The handshake message ended early.
    #[error("truncated handshake message")]
    Truncated,
    /// The peer sent something other than a handshake message.
    #[error("unexpected handshake message: {0}")]
    Unexpected(String),
    /// The mux could not open or accept the control stream.
    #[error(transparent)]
    Mux(#[from] MuxError),
    /// The control stream failed.
    #[error("control stream: {0}")]
    Control(std::io::Error),
    /// The relay closed the session at once, with its reason.
    #[error("relay closed the session: {0}")]
    Goodbye(String),
    /// The peer did not answer in time.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

impl HandshakeError {
    /// Whether the connection (rather than the peer's protocol) failed: a
    /// retry later may work.
    pub fn is_connection(&self) -> bool {
        matches!(
            self,
            HandshakeError::WebSocket(_)
                | HandshakeError::Closed
                | HandshakeError::Mux(_)
                | HandshakeError::Control(_)
                | HandshakeError::Goodbye(_)
        )
    }
}

/// The agent's side: sends `hello` and returns the relay's reply.
pub async fn send_hello<S>(
    ws: &mut WebSocketStream<S>,
    hello: &Hello,
) -> Result<HelloReply, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = BytesMut::new();
    hello.encode(&mut out);
    ws.send(Message::Binary(out.freeze())).await?;
    let mut buf = read_binary(ws).await?;
    HelloReply::decode(&mut buf)?.ok_or(HandshakeError::Truncated)
}

/// The relay's side: the agent's hello, within `limit`.
pub async fn read_hello<S>(
    ws: &mut WebSocketStream<S>,
    limit: Duration,
) -> Result<Hello, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = tokio::time::timeout(limit, read_binary(ws))
        .await
        .map_err(|_| HandshakeError::TimedOut(limit))??;
    Hello::decode(&mut buf)?.ok_or(HandshakeError::Truncated)
}

/// The relay's side: answers the hello.
pub async fn send_reply<S>(
    ws: &mut WebSocketStream<S>,
    reply: &HelloReply,
) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = BytesMut::new();
    reply.encode(&mut out);
    ws.send(Message::Binary(out.freeze())).await?;
    Ok(())
}

/// The next binary message (pings and pongs are skipped).
async fn read_binary<S>(ws: &mut WebSocketStream<S>) -> Result<BytesMut, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => return Ok(BytesMut::from(&b[..])),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => return Err(HandshakeError::Unexpected(describe(&other))),
            Some(Err(e)) => return Err(e.into()),
            None => return Err(HandshakeError::Closed),
        }
    }
}

fn describe(m: &Message) -> String {
    match m {
        Message::Text(_) => "a text message".into(),
        Message::Close(_) => "a close frame".into(),
        other => format!("{} bytes of another kind", other.len()),
    }
}

/// The agent's side, once the mux runs: opens the control stream and
/// speaks on it first; the relay's `Pong` (within `limit`) proves the
/// session is up.
pub async fn open_control(
    opener: &Opener,
    limit: Duration,
) -> Result<(ControlReader<Stream>, ControlWriter<Stream>), HandshakeError> {
    let (mut reader, mut writer) = control::channel(opener.open().await?);
    writer
        .send(&Control::Ping(0))
        .await
        .map_err(HandshakeError::Control)?;
    match tokio::time::timeout(limit, reader.recv()).await {
        Ok(Ok(Some(Control::Pong(0)))) => Ok((reader, writer)),
        Ok(Ok(Some(Control::Goodbye { reason, .. }))) => Err(HandshakeError::Goodbye(reason)),
        Ok(Ok(Some(other))) => Err(HandshakeError::Unexpected(format!("{other:?}"))),
        Ok(Ok(None)) => Err(HandshakeError::Closed),
        Ok(Err(e)) => Err(HandshakeError::Unexpected(e.to_string())),
        Err(_) => Err(HandshakeError::TimedOut(limit)),
    }
}

/// The relay's side, once the mux runs: the first stream the agent opens,
/// within `limit`, is the control stream.
pub async fn accept_control(
    inbound: &mut mpsc::UnboundedReceiver<Stream>,
    limit: Duration,
) -> Result<Stream, HandshakeError> {
    match tokio::time::timeout(limit, inbound.recv()).await {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(HandshakeError::Closed),
        Err(_) => Err(HandshakeError::TimedOut(limit)),
    }
}
