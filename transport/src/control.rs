//! The control channel: the first stream the agent opens on a session.
//!
//! It carries [`Control`] messages both ways: keep-alive pings, in-band token
//! refresh, notices, and the relay's goodbye.

use gangway_wire::Control;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};

use crate::framed::{FrameError, FramedIo};

/// Receiving half of the control channel.
pub struct ControlReader<S> {
    inner: FramedIo<ReadHalf<S>>,
}

/// Sending half of the control channel.
pub struct ControlWriter<S> {
    inner: FramedIo<WriteHalf<S>>,
}

/// Splits a stream into the two halves of a control channel.
pub fn channel<S: AsyncRead + AsyncWrite>(stream: S) -> (ControlReader<S>, ControlWriter<S>) {
    let (r, w) = tokio::io::split(stream);
    (
        ControlReader {
            inner: FramedIo::new(r),
        },
        ControlWriter {
            inner: FramedIo::new(w),
        },
    )
}

impl<S: AsyncRead + AsyncWrite> ControlReader<S> {
    /// Next message; `Ok(None)` when the peer closed the channel.
    pub async fn recv(&mut self) -> Result<Option<Control>, FrameError> {
        self.inner.read(Control::decode).await
    }
}

impl<S: AsyncRead + AsyncWrite> ControlWriter<S> {
    pub async fn send(&mut self, msg: &Control) -> std::io::Result<()> {
        self.inner.write(|buf| msg.encode(buf)).await
    }
}
