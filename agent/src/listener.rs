//! Local listeners: one per service on 127.0.0.1; each accepted connection
//! becomes one stream in the tunnel.
//!
//! A connection that cannot be carried is closed with a reason: logged, and
//! for `http` services also answered with a small HTTP error page, so git or
//! the browser shows why instead of hanging.
//!
//! Each listener keeps [`ServiceStats`] (active streams, bytes, how long the
//! relay took to accept the last stream, the last problem in plain words)
//! for `gangway status` and the tray's status window. When its environment
//! is stopped (sign-out, environment switch), open streams are ended
//! cleanly: the local side gets a FIN, not a reset.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use gangway_transport::Stream;
use gangway_wire::RefusalCode;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::door::Door;
use crate::pipelined::{OnAnswer, PipelinedStream};
use crate::relay_api::{Service, ServiceKind};
use crate::tunnel::Tunnel;
use crate::AgentError;

/// How long a new connection waits for the tunnel to come (back) up.
pub const DEFAULT_CONNECT_WAIT: Duration = Duration::from_secs(20);

/// How long a stopped stream waits for the local client to close its side
/// after our FIN, before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// A bound listener for one service.
pub struct ServiceListener {
    pub service: Service,
    pub listener: TcpListener,
}

/// Live counters of one service's listener. Shared (`Arc`) between the
/// listener's tasks and whoever shows the agent's status.
#[derive(Debug, Default)]
pub struct ServiceStats {
    active: AtomicU64,
    total: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    /// Microseconds the relay took to accept the last stream; 0: none yet.
    last_open_micros: AtomicU64,
    last_problem: Mutex<Option<StreamProblem>>,
}

/// A connection that could not be carried, in plain words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamProblem {
    /// Unix seconds.
    pub at: u64,
    pub text: String,
}

/// A copy of [`ServiceStats`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Streams open now.
    pub active_streams: u64,
    /// Streams carried since the listener started.
    pub total_streams: u64,
    /// Bytes from local clients towards the relay.
    pub bytes_up: u64,
    /// Bytes from the relay to local clients.
    pub bytes_down: u64,
    /// Round trip of the last stream open (agent → relay → backend
    /// connect → accept), in milliseconds.
    pub open_rtt_ms: Option<f64>,
    pub last_problem: Option<StreamProblem>,
}

impl ServiceStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let micros = self.last_open_micros.load(Ordering::Relaxed);
        StatsSnapshot {
            active_streams: self.active.load(Ordering::Relaxed),
            total_streams: self.total.load(Ordering::Relaxed),
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.bytes_down.load(Ordering::Relaxed),
            open_rtt_ms: (micros > 0).then(|| micros as f64 / 1000.0),
            last_problem: self.last_problem.lock().expect("stats lock").clone(),
        }
    }

    pub(crate) fn problem(&self, text: String) {
        *self.last_problem.lock().expect("stats lock") = Some(StreamProblem {
            at: crate::signin::now_unix(),
            text,
        });
    }
}

/// Counts a stream as active while it lives.
pub(crate) struct ActiveGuard<'a>(&'a ServiceStats);

impl<'a> ActiveGuard<'a> {
    pub(crate) fn new(stats: &'a ServiceStats) -> Self {
        stats.active.fetch_add(1, Ordering::Relaxed);
        stats.total.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(stats)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The local socket, counting bytes each way into [`ServiceStats`].
pub(crate) struct Counted<T> {
    pub(crate) inner: T,
    pub(crate) stats: Arc<ServiceStats>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.stats.bytes_up.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.stats
                .bytes_down
                .fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A refusal or failure as the status window says it: "your account may
/// not use Confluence", not an error code. `None` for failures the
/// tunnel's own state already reports (relay unreachable).
pub fn plain_problem(display_name: &str, e: &AgentError) -> Option<String> {
    match e {
        AgentError::Refused(r) => {
            Some(match r.code {
                RefusalCode::Forbidden => format!("your account may not use {display_name}"),
                RefusalCode::Unauthenticated => {
                    format!("{display_name}: the relay wants a new sign-in")
                }
                RefusalCode::UnknownService => {
                    format!("the relay no longer offers {display_name}")
                }
                RefusalCode::RateLimited => format!(
                    "{display_name}: the relay is limiting how fast you connect; wait a moment and try again ({})",
                    r.message
                ),
                _ => format!(
                    "{display_name} is not answering behind the relay ({})",
                    r.message
                ),
            })
        }
        AgentError::Unreachable { .. } | AgentError::Unauthorized(_) | AgentError::SignIn(_) => {
            None
        }
        other => Some(format!("{display_name}: {other}")),
    }
}

/// A port that could not be bound, with the reason in plain words.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot listen for {service} on {addr}: {reason}")]
pub struct BindError {
    pub service: String,
    pub addr: SocketAddr,
    pub reason: String,
}

/// Binds `addr` for `service`.
pub async fn bind(service: Service, addr: SocketAddr) -> Result<ServiceListener, BindError> {
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(ServiceListener { service, listener }),
        Err(e) => Err(BindError {
            reason: if e.kind() == std::io::ErrorKind::AddrInUse {
                format!("port {} is used by another program", addr.port())
            } else {
                e.to_string()
            },
            service: service.display_name.clone(),
            addr,
        }),
    }
}

impl ServiceListener {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener")
    }

    /// Accepts until `stop`; every connection is carried in its own task.
    pub async fn serve(self, tunnel: Tunnel, connect_wait: Duration, stop: CancellationToken) {
        self.serve_with(
            tunnel,
            connect_wait,
            Arc::default(),
            Arc::default(),
            TaskTracker::new(),
            stop,
        )
        .await
    }

    /// [`ServiceListener::serve`], counting into `stats` and spawning each
    /// connection on `streams` (so a caller can wait for them to end). On
    /// `stop` the listener closes and open streams end cleanly.
    pub async fn serve_with(
        self,
        tunnel: Tunnel,
        connect_wait: Duration,
        stats: Arc<ServiceStats>,
        door: Arc<Door>,
        streams: TaskTracker,
        stop: CancellationToken,
    ) {
        // `http` services go through the door's HTTP gate: every request
        // is checked before it enters the tunnel (door/http.rs).
        let gate = (self.service.kind == ServiceKind::Http).then(|| {
            Arc::new(crate::door::http::Gate::new(
                self.service.clone(),
                self.local_addr().port(),
                tunnel.clone(),
                connect_wait,
                stats.clone(),
                door.clone(),
                streams.clone(),
                stop.clone(),
            ))
        });
        loop {
            let (tcp, peer) = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(service = %self.service.name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.cancelled() => return,
            };
            // The local door, before anything else: a caller owned by
            // another local user is closed here (for an http service too:
            // there is nothing to answer it), with a log line naming its uid.
            let admitted = tcp
                .local_addr()
                .map(|local| door.admit(&self.service.name, local, peer))
                .unwrap_or_else(|e| {
                    door.refuse(
                        &self.service.name,
                        &format!("a caller at {peer}"),
                        &e.to_string(),
                    );
                    false
                });
            if !admitted {
                continue;
            }
            let _ = tcp.set_nodelay(true);
            if let Some(gate) = &gate {
                let gate = gate.clone();
                streams.spawn(async move { gate.serve(tcp, peer).await });
                continue;
            }
            let service = self.service.clone();
            let tunnel = tunnel.clone();
            let stats = stats.clone();
            let stop = stop.clone();
            streams.spawn(async move {
                if let Err(e) = carry(tcp, &service, &tunnel, connect_wait, &stats, &stop).await {
                    if let Some(text) = plain_problem(&service.display_name, &e) {
                        stats.problem(text);
                    }
                    tracing::warn!(service = %service.name, %peer, "connection not carried: {e}");
                }
            });
        }
    }
}

async fn carry(
    mut tcp: TcpStream,
    service: &Service,
    tunnel: &Tunnel,
    connect_wait: Duration,
    stats: &Arc<ServiceStats>,
    stop: &CancellationToken,
) -> Result<(), AgentError> {
    let _active = ActiveGuard::new(stats);
    let opened = open_stream(service, tunnel, connect_wait, stats, stop).await;
    let mut stream = match opened {
        Ok(s) => s,
        Err(e) => {
            if service.kind == ServiceKind::Http {
                http_error(&mut tcp, &e, true).await;
            }
            return Err(e);
        }
    };
    let mut counted = Counted {
        inner: &mut tcp,
        stats: stats.clone(),
    };
    tokio::select! {
        // Stopping the environment also ends its session, which breaks the
        // stream: when both are ready, the stop (a clean close) wins.
        biased;
        _ = stop.cancelled() => {
            drop(stream);
            close_cleanly(&mut tcp).await;
        }
        r = gangway_transport::duplex::splice(&mut counted, &mut stream) => {
            if r.is_err() && stop.is_cancelled() {
                drop(stream);
                close_cleanly(&mut tcp).await;
                return Ok(());
            }
            if let Some(refusal) = stream.refusal().cloned() {
                let e = AgentError::Refused(refusal);
                if service.kind == ServiceKind::Http {
                    // The request went out with the header already.
                    http_error(&mut tcp, &e, false).await;
                }
                return Err(e);
            }
            r.map_err(|e| AgentError::unreachable_by("stream broke", e))?;
        }
    }
    Ok(())
}

/// Opens a stream to `service` (pipelined: the header goes out with the
/// first bytes written to it), waiting up to `connect_wait` for the tunnel;
/// if the session died under us, once more on the next one.
pub(crate) async fn open_stream(
    service: &Service,
    tunnel: &Tunnel,
    connect_wait: Duration,
    stats: &Arc<ServiceStats>,
    stop: &CancellationToken,
) -> Result<PipelinedStream<Stream>, AgentError> {
    let on_answer = || -> Option<OnAnswer> {
        let stats = stats.clone();
        Some(Box::new(move |took: Duration| {
            let micros = took.as_micros().clamp(1, u64::MAX as u128) as u64;
            stats.last_open_micros.store(micros, Ordering::Relaxed);
        }))
    };
    let session = tokio::select! {
        s = tunnel.session(connect_wait) => s?,
        _ = stop.cancelled() => {
            return Err(AgentError::unreachable("the environment was stopped"))
        }
    };
    match session.open_pipelined(&service.name, on_answer()).await {
        // The session died under us (e.g. the relay restarted and we
        // have not noticed yet): wait for the next one, once.
        Err(e @ AgentError::Unreachable { .. }) => {
            match tokio::time::timeout(Duration::from_secs(1), session.closed()).await {
                Ok(_) => {
                    tunnel
                        .session(connect_wait)
                        .await?
                        .open_pipelined(&service.name, on_answer())
                        .await
                }
                Err(_) => Err(e),
            }
        }
        other => other,
    }
}

/// Ends a local connection whose environment stopped: a FIN first, then
/// whatever the client still sends is read (briefly) so that closing does
/// not turn into a reset.
async fn close_cleanly(tcp: &mut TcpStream) {
    let _ = tcp.shutdown().await;
    let drain = async {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = tcp.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, drain).await;
}

/// The HTTP status line and plain reason for a stream that could not be
/// carried.
pub(crate) fn error_status(e: &AgentError) -> (&'static str, String) {
    match e {
        AgentError::Refused(r) => match r.code {
            RefusalCode::Forbidden => ("403 Forbidden", r.to_string()),
            RefusalCode::Unauthenticated => ("403 Forbidden", format!("sign-in needed: {r}")),
            RefusalCode::UnknownService => ("404 Not Found", r.to_string()),
            RefusalCode::RateLimited => ("429 Too Many Requests", r.to_string()),
            _ => ("503 Service Unavailable", r.to_string()),
        },
        AgentError::Unauthorized(m) => ("403 Forbidden", m.clone()),
        other => ("502 Bad Gateway", other.to_string()),
    }
}

/// Answers an HTTP client with a short error page naming the reason.
async fn http_error(tcp: &mut TcpStream, e: &AgentError, read_request: bool) {
    let (status, text) = error_status(e);
    // Read (part of) the request first, so closing doesn't reset the
    // connection before the client has read our answer.
    // When the request already went out with a pipelined open, only take
    // what may still be arriving.
    let wait = Duration::from_millis(if read_request { 500 } else { 20 });
    let mut buf = [0u8; 16 * 1024];
    let _ = tokio::time::timeout(wait, tcp.read(&mut buf)).await;
    let body = format!("Gangway: {text}\n");
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\nX-Gangway-Error: {}\r\n\r\n{body}",
        body.len(),
        text.replace(['\r', '\n'], " ")
    );
    let _ = tcp.write_all(resp.as_bytes()).await;
    let _ = tcp.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use gangway_wire::Refusal;

    fn refused(code: RefusalCode, message: &str) -> AgentError {
        AgentError::Refused(Refusal {
            code,
            message: message.into(),
        })
    }

    #[test]
    fn problems_are_said_plainly() {
        assert_eq!(
            plain_problem(
                "Confluence",
                &refused(RefusalCode::Forbidden, "bob may not use confluence")
            )
            .as_deref(),
            Some("your account may not use Confluence")
        );
        let limited =
            plain_problem("Bitbucket", &refused(RefusalCode::RateLimited, "wait 3 s")).unwrap();
        assert!(limited.contains("wait a moment and try again"), "{limited}");
        assert!(limited.contains("wait 3 s"), "the relay's words: {limited}");
        // The tunnel's own state reports these.
        assert_eq!(
            plain_problem("Bitbucket", &AgentError::unreachable("down")),
            None
        );
    }

    #[tokio::test]
    async fn a_busy_port_is_named() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let svc = Service {
            name: "bitbucket".into(),
            kind: ServiceKind::Http,
            display_name: "Bitbucket".into(),
            local_port: addr.port(),
        };
        let e = bind(svc, addr).await.err().unwrap();
        assert_eq!(
            e.reason,
            format!("port {} is used by another program", addr.port())
        );
    }
}
