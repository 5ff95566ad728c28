//! A stream opened without waiting for the relay's answer.
//!
//! The open header and the client's first bytes travel together; the
//! relay's [`OpenResult`] is read before any byte goes back to the client.
//! A new connection so costs no agent↔relay round trip before its data.
//! A refusal surfaces as a read error, and [`PipelinedStream::refusal`]
//! then says why.

use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use gangway_wire::{OpenResult, Refusal};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Called once with the time from open to the relay's answer.
pub type OnAnswer = Box<dyn FnOnce(Duration) + Send>;

enum Answer {
    /// Bytes received so far, not yet a whole `OpenResult`.
    Waiting(BytesMut),
    /// Accepted; bytes after the answer still to hand out.
    Passing(BytesMut),
    Refused(Refusal),
}

/// See the module docs.
pub struct PipelinedStream<S> {
    inner: S,
    answer: Answer,
    opened: Instant,
    on_answer: Option<OnAnswer>,
    /// Keeps the stream's session (its mux) alive while the stream is:
    /// a session the relay said goodbye to is dropped by the tunnel at
    /// once, but its open streams run on until they end.
    _session: Option<gangway_transport::Opener>,
}

impl<S> PipelinedStream<S> {
    /// `inner` has had its open header written already.
    pub fn new(inner: S, on_answer: Option<OnAnswer>) -> Self {
        Self {
            inner,
            answer: Answer::Waiting(BytesMut::new()),
            opened: Instant::now(),
            on_answer,
            _session: None,
        }
    }

    /// Holds `session` for as long as the stream lives (see the field).
    pub fn holding(mut self, session: gangway_transport::Opener) -> Self {
        self._session = Some(session);
        self
    }

    /// The relay's refusal, once one was read.
    pub fn refusal(&self) -> Option<&Refusal> {
        match &self.answer {
            Answer::Refused(r) => Some(r),
            _ => None,
        }
    }

    /// Waits for the relay's answer without taking any data byte: `Ok` once
    /// accepted, an error once refused (see [`Self::refusal`]) or closed.
    pub async fn answer(&mut self) -> std::io::Result<()>
    where
        S: AsyncRead + Unpin,
    {
        // Only the answer is read here: polling the stream with an empty
        // buffer afterwards could park on data already buffered.
        std::future::poll_fn(|cx| self.poll_answer(cx)).await?;
        match &self.answer {
            Answer::Refused(r) => Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                r.to_string(),
            )),
            _ => Ok(()),
        }
    }

    fn answered(&mut self) {
        if let Some(f) = self.on_answer.take() {
            f(self.opened.elapsed());
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PipelinedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            let this = &mut *self;
            match &mut this.answer {
                Answer::Refused(r) => {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        r.to_string(),
                    )))
                }
                Answer::Passing(rest) if !rest.is_empty() => {
                    let n = rest.len().min(buf.remaining());
                    buf.put_slice(&rest[..n]);
                    rest.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Answer::Passing(_) => return Pin::new(&mut this.inner).poll_read(cx, buf),
                Answer::Waiting(_) => ready!(this.poll_answer(cx))?,
            }
        }
    }
}

impl<S: AsyncRead + Unpin> PipelinedStream<S> {
    /// Reads until the relay's answer is decoded (accepted or refused);
    /// bytes after it are kept for the reader.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        loop {
            let Answer::Waiting(pending) = &mut self.answer else {
                return Poll::Ready(Ok(()));
            };
            let decoded = OpenResult::decode(pending)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
            match decoded {
                Some(OpenResult::Accepted) => {
                    let rest = std::mem::take(pending);
                    self.answer = Answer::Passing(rest);
                    self.answered();
                }
                Some(OpenResult::Refused(r)) => {
                    self.answer = Answer::Refused(r);
                    self.answered();
                }
                None => {
                    let mut chunk = [0u8; 1024];
                    let mut rb = ReadBuf::new(&mut chunk);
                    ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
                    if rb.filled().is_empty() {
                        return Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "relay closed the stream before answering",
                        )));
                    }
                    pending.extend_from_slice(rb.filled());
                }
            }
        }
    }
}

gangway_transport::forward_async_write!([S: AsyncWrite + Unpin] PipelinedStream<S>, inner);

#[cfg(test)]
mod tests {
    use super::*;
    use gangway_wire::RefusalCode;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn accepted_then_data_split_across_reads() {
        let mut wire = BytesMut::new();
        OpenResult::Accepted.encode(&mut wire);
        wire.extend_from_slice(b"SSH-2.0-OpenSSH\r\n");
        let seen = Arc::new(AtomicBool::new(false));
        let s = seen.clone();
        let mock = tokio_test::io::Builder::new()
            .read(&wire[..1])
            .read(&wire[1..5])
            .read(&wire[5..])
            .build();
        let mut p = PipelinedStream::new(
            mock,
            Some(Box::new(move |_| s.store(true, Ordering::SeqCst))),
        );
        let mut out = Vec::new();
        p.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"SSH-2.0-OpenSSH\r\n");
        assert!(seen.load(Ordering::SeqCst));
        assert!(p.refusal().is_none());
    }

    /// The answer in one frame, the server's first bytes in a later one
    /// (an SSH banner): `answer()` returns on the first and leaves the
    /// bytes for the reader.
    #[tokio::test]
    async fn answer_returns_before_the_first_data_frame() {
        let mut wire = BytesMut::new();
        OpenResult::Accepted.encode(&mut wire);
        let mock = tokio_test::io::Builder::new()
            .read(&wire)
            .read(b"SSH-2.0-OpenSSH\r\n")
            .build();
        let mut p = PipelinedStream::new(mock, None);
        p.answer().await.unwrap();
        let mut out = Vec::new();
        p.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"SSH-2.0-OpenSSH\r\n");
    }

    #[tokio::test]
    async fn refusal_is_an_error_with_the_reason() {
        let mut wire = BytesMut::new();
        OpenResult::Refused(Refusal {
            code: RefusalCode::Forbidden,
            message: "bob may not use bitbucket".into(),
        })
        .encode(&mut wire);
        let mock = tokio_test::io::Builder::new().read(&wire).build();
        let mut p = PipelinedStream::new(mock, None);
        let mut out = Vec::new();
        let err = p.read_to_end(&mut out).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("bob may not use bitbucket"));
        assert_eq!(p.refusal().unwrap().code, RefusalCode::Forbidden);
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn answer_waits_without_taking_data() {
        let mut wire = BytesMut::new();
        OpenResult::Accepted.encode(&mut wire);
        wire.extend_from_slice(b"hello");
        let mock = tokio_test::io::Builder::new()
            .read(&wire[..2])
            .read(&wire[2..])
            .build();
        let mut p = PipelinedStream::new(mock, None);
        p.answer().await.unwrap();
        let mut out = Vec::new();
        p.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"hello");
    }

    #[tokio::test]
    async fn eof_before_answer_is_an_error() {
        let mock = tokio_test::io::Builder::new().build();
        let mut p = PipelinedStream::new(mock, None);
        let mut out = Vec::new();
        assert!(p.read_to_end(&mut out).await.is_err());
    }
}
