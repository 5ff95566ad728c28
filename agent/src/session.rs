//! One connection to the relay: TLS, WebSocket upgrade with the access
//! token (bearer, or DPoP-bound with a proof by this device's key:
//! [`crate::dpop`]), versioned handshake, then the yamux session and its
//! control channel.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use gangway_transport::control::{ControlReader, ControlWriter};
use gangway_transport::handshake::{self, HandshakeError};
use gangway_transport::mux::{self, Mode};
use gangway_transport::{Opener, Stream, WsByteStream};
use gangway_wire::{
    Control, Hello, HelloReply, OpenStream, Refusal, RefusalCode, Token, PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use url::Url;

use crate::net::Egress;
use crate::pipelined::{OnAnswer, PipelinedStream};
use crate::AgentError;

/// Anything the WebSocket can run over (TLS, or plain TCP for loopback tests).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const PING_EVERY: Duration = Duration::from_secs(15);
const PONG_DEADLINE: Duration = Duration::from_secs(30);
/// How long the relay may take to answer an in-band token refresh (it may
/// have to fetch its provider's keys first).
const REFRESH_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Session::ping`] waits for its pong.
const PING_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The relay's answer to an in-band refresh: accepted (new expiry), or
/// refused with its reason.
type RefreshAnswer = oneshot::Sender<Result<u64, String>>;

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The relay said goodbye, with its reason.
    Goodbye { code: RefusalCode, reason: String },
    /// The connection broke or keep-alives went unanswered.
    Lost(String),
}

/// A live session. Cheap to clone; dropping every clone closes it.
#[derive(Clone)]
pub struct Session {
    opener: Opener,
    control: mpsc::Sender<(Control, Option<RefreshAnswer>)>,
    /// Pings asked for by [`Session::ping`]: answered at their pong.
    pings: mpsc::Sender<oneshot::Sender<()>>,
    ended: watch::Receiver<Option<Ended>>,
    /// This device's DPoP key, and the tunnel URL its proofs name.
    dpop: Option<(Arc<gangway_dpop::ProofKey>, Url)>,
    pub id: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", &self.id).finish()
    }
}

impl Session {
    /// Connects to `relay` (an `https://` URL; `http://` only for loopback
    /// tests) as `egress` says (TLS trust, proxy) and completes the
    /// handshake.
    pub async fn connect(
        relay: &Url,
        egress: &Egress,
        token: &Token,
    ) -> Result<Session, AgentError> {
        Self::connect_with(relay, egress, token, None).await
    }

    /// Like [`Session::connect`]; a token bound to `key` goes with DPoP
    /// proofs (the upgrade's, and each in-band refresh's).
    pub async fn connect_with(
        relay: &Url,
        egress: &Egress,
        token: &Token,
        key: Option<Arc<gangway_dpop::ProofKey>>,
    ) -> Result<Session, AgentError> {
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            Self::connect_inner(relay, egress, token, key),
        )
        .await
        .map_err(|_| AgentError::unreachable(format!("{relay}: timed out connecting")))?
    }

    async fn connect_inner(
        relay: &Url,
        egress: &Egress,
        token: &Token,
        key: Option<Arc<gangway_dpop::ProofKey>>,
    ) -> Result<Session, AgentError> {
        let host = relay
            .host_str()
            .ok_or_else(|| AgentError::Config(format!("relay URL {relay} has no host")))?
            .to_string();
        let port = relay.port_or_known_default().unwrap_or(443);
        let mut ws_url = relay
            .join("/v1/tunnel")
            .map_err(|e| AgentError::Config(format!("relay URL {relay}: {e}")))?;
        let secure = match relay.scheme() {
            "https" => true,
            "http" => false,
            s => {
                return Err(AgentError::Config(format!(
                    "relay URL scheme {s:?}: use https"
                )))
            }
        };
        // What DPoP proofs name: the tunnel endpoint's http(s) URL.
        let htu = ws_url.clone();
        let _ = ws_url.set_scheme(if secure { "wss" } else { "ws" });

        // TCP, or a CONNECT tunnel through the proxy; TLS to the relay runs
        // inside it either way (SNI and certificate check are the relay's).
        let conn = egress
            .connect(relay, host.trim_matches(['[', ']']), port)
            .await?;
        let io: Box<dyn Io> = if secure {
            let name =
                rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                    .map_err(|e| AgentError::Config(format!("relay host {host}: {e}")))?;
            let mut tls = tokio_rustls::TlsConnector::from(egress.tls().clone())
                .connect(
                    name,
                    tokio::io::BufReader::with_capacity(gangway_transport::socket::READ_BUF, conn),
                )
                .await
                .map_err(|e| {
                    AgentError::unreachable_by(
                        format!("{relay}: TLS"),
                        egress.explain_tls(relay, e),
                    )
                })?;
            tls.get_mut()
                .1
                .set_buffer_limit(Some(gangway_transport::socket::TLS_BUFFER_LIMIT));
            Box::new(tls)
        } else {
            Box::new(conn)
        };

        let mut req = ws_url
            .as_str()
            .into_client_request()
            .map_err(|e| AgentError::Config(e.to_string()))?;
        let (value, proof) = crate::dpop::authorization(token, key.as_deref(), "GET", &htu)?;
        req.headers_mut().insert(http::header::AUTHORIZATION, value);
        if let Some(proof) = proof {
            req.headers_mut().insert("dpop", proof);
        }
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(
            req,
            io,
            Some(gangway_transport::ws::config()),
        )
        .await
        .map_err(|e| match e {
            tungstenite::Error::Http(resp) => {
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).trim().to_string())
                    .unwrap_or_default();
                if resp.status() == http::StatusCode::UNAUTHORIZED {
                    AgentError::Unauthorized(body)
                } else {
                    AgentError::unreachable(format!("{relay}: HTTP {}: {body}", resp.status()))
                }
            }
            other => AgentError::unreachable_by(relay.to_string(), other),
        })?;

        // Versioned handshake, then the control stream (transport's
        // `handshake` holds the rules both ends follow).
        let hello = Hello {
            version: PROTOCOL_VERSION,
            agent: concat!("gangway/", env!("CARGO_PKG_VERSION")).into(),
        };
        let id = match handshake::send_hello(&mut ws, &hello)
            .await
            .map_err(handshake_error)?
        {
            HelloReply::Welcome { session, .. } => session,
            HelloReply::Unsupported { message, .. } => return Err(AgentError::Protocol(message)),
        };

        let (opener, _inbound, driver) =
            mux::start(WsByteStream::new(ws), Mode::Client, mux::config());
        let (ended_tx, ended_rx) = watch::channel(None);
        {
            let driver_task = tokio::spawn(driver);
            let ended_tx = ended_tx.clone();
            tokio::spawn(async move {
                let r = driver_task.await;
                let why = match r {
                    Ok(Ok(())) => "relay closed the connection".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                ended_tx.send_if_modified(|v| {
                    if v.is_none() {
                        *v = Some(Ended::Lost(why));
                        true
                    } else {
                        false
                    }
                });
            });
        }
        let (reader, writer) = handshake::open_control(&opener, CONNECT_TIMEOUT)
            .await
            .map_err(handshake_error)?;
        let (control_tx, control_rx) = mpsc::channel(16);
        let (pings_tx, pings_rx) = mpsc::channel(4);
        tokio::spawn(control_loop(reader, writer, control_rx, pings_rx, ended_tx));
        Ok(Session {
            opener,
            control: control_tx,
            pings: pings_tx,
            ended: ended_rx,
            dpop: key.map(|k| (k, htu)),
            id,
        })
    }

    /// Opens a stream to `service` and waits for the relay's answer:
    /// accepted, or refused with its reason. The listeners use
    /// [`Session::open_pipelined`], which does not wait.
    pub async fn open(&self, service: &str) -> Result<PipelinedStream<Stream>, AgentError> {
        let mut stream = self.open_pipelined(service, None).await?;
        // Nothing else will push the header out: the caller sends no byte
        // before the answer.
        stream
            .flush()
            .await
            .map_err(|e| AgentError::unreachable_by("opening a stream", e))?;
        tokio::time::timeout(Duration::from_secs(30), stream.answer())
            .await
            .map_err(|_| AgentError::unreachable("relay did not answer the stream open"))?
            .map_err(|e| match stream.refusal() {
                Some(r) => AgentError::Refused(r.clone()),
                None => AgentError::unreachable_by("opening a stream", e),
            })?;
        Ok(stream)
    }

    /// Opens a stream to `service` and sends the header without waiting for
    /// the relay's answer; the answer is read before any byte comes back
    /// (see [`PipelinedStream`]). Fails only when the session cannot take a
    /// new stream.
    pub async fn open_pipelined(
        &self,
        service: &str,
        on_answer: Option<OnAnswer>,
    ) -> Result<PipelinedStream<Stream>, AgentError> {
        let header = OpenStream::new(service).map_err(|e| AgentError::Config(e.to_string()))?;
        let mut stream = self
            .opener
            .open()
            .await
            .map_err(|e| AgentError::unreachable_by("opening a stream", e))?;
        let mut buf = BytesMut::new();
        header.encode(&mut buf);
        stream
            .write_all(&buf)
            .await
            .map_err(|e| AgentError::unreachable_by("opening a stream", e))?;
        // The stream keeps the session's mux alive: after a goodbye (the
        // relay draining) new streams go to the next session while this
        // one's run to their end.
        Ok(PipelinedStream::new(stream, on_answer).holding(self.opener.clone()))
    }

    /// Sends a fresh access token in-band (open streams are not disturbed)
    /// and waits for the relay's answer: a refusal is
    /// [`AgentError::Unauthorized`] with the relay's reason, for the caller
    /// to act on (retry, then reconnect with the new token) — the session
    /// would otherwise end when the old token expires.
    pub async fn refresh_token(&self, token: Token) -> Result<(), AgentError> {
        let (answer, answered) = oneshot::channel();
        // A bound token goes with a fresh proof over it.
        let msg = match &self.dpop {
            Some((key, htu)) if crate::dpop::is_bound(&token) => Control::RefreshTokenDpop {
                proof: crate::dpop::proof_for(key, "GET", htu, Some(&token))?,
                token,
            },
            _ => Control::RefreshToken(token),
        };
        self.control
            .send((msg, Some(answer)))
            .await
            .map_err(|_| AgentError::unreachable("session closed"))?;
        match tokio::time::timeout(REFRESH_ANSWER_TIMEOUT, answered).await {
            Ok(Ok(Ok(_expires_at))) => Ok(()),
            Ok(Ok(Err(reason))) => Err(AgentError::Unauthorized(reason)),
            Ok(Err(_)) => Err(AgentError::unreachable(
                "session closed before the relay answered the token refresh",
            )),
            Err(_) => Err(AgentError::unreachable(
                "relay did not answer the token refresh",
            )),
        }
    }

    /// One keep-alive round trip on the control channel, now: the time from
    /// sending a `Ping` to its `Pong` (`gangway doctor` reports it).
    pub async fn ping(&self) -> Result<Duration, AgentError> {
        let (answer, answered) = oneshot::channel();
        let started = tokio::time::Instant::now();
        self.pings
            .send(answer)
            .await
            .map_err(|_| AgentError::unreachable("session closed"))?;
        match tokio::time::timeout(PING_ANSWER_TIMEOUT, answered).await {
            Ok(Ok(())) => Ok(started.elapsed()),
            Ok(Err(_)) => Err(AgentError::unreachable(
                "session closed before the relay answered the ping",
            )),
            Err(_) => Err(AgentError::unreachable(format!(
                "the relay did not answer a ping within {} s",
                PING_ANSWER_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Resolves when the session has ended, with the reason.
    pub async fn closed(&self) -> Ended {
        let mut rx = self.ended.clone();
        let r = rx.wait_for(Option::is_some).await.map(|v| v.clone());
        match r {
            Ok(v) => v.expect("checked"),
            Err(_) => Ended::Lost("session dropped".into()),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.ended.borrow().is_some() || self.opener.is_closed()
    }
}

/// Sends pings, forwards outgoing control messages, and records the relay's
/// goodbye or a missed keep-alive.
async fn control_loop(
    mut reader: ControlReader<Stream>,
    mut writer: ControlWriter<Stream>,
    mut outgoing: mpsc::Receiver<(Control, Option<RefreshAnswer>)>,
    mut pings: mpsc::Receiver<oneshot::Sender<()>>,
    ended: watch::Sender<Option<Ended>>,
) {
    // Pings asked for by `Session::ping`, by nonce; a few at most (the
    // channel holds 4), dropped with the loop.
    let mut asked = std::collections::HashMap::<u64, oneshot::Sender<()>>::new();
    // Refreshes sent and not yet answered; the relay answers in order.
    let mut awaiting = std::collections::VecDeque::<RefreshAnswer>::new();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_pong = tokio::time::Instant::now();
    let mut nonce = 0u64;
    let end = |why: Ended| {
        ended.send_if_modified(|v| {
            if v.is_none() {
                *v = Some(why);
                true
            } else {
                false
            }
        });
    };
    loop {
        tokio::select! {
            msg = reader.recv() => match msg {
                Ok(Some(Control::Pong(n))) => {
                    last_pong = tokio::time::Instant::now();
                    if let Some(a) = asked.remove(&n) { let _ = a.send(()); }
                }
                Ok(Some(Control::Ping(n))) => {
                    if writer.send(&Control::Pong(n)).await.is_err() { break; }
                }
                Ok(Some(Control::Goodbye { code, reason })) => {
                    tracing::warn!(%reason, "relay closed the session");
                    end(Ended::Goodbye { code, reason });
                    break;
                }
                Ok(Some(Control::TokenAccepted { expires_at })) => {
                    tracing::debug!(expires_at, "relay accepted the refreshed token");
                    if let Some(a) = awaiting.pop_front() { let _ = a.send(Ok(expires_at)); }
                }
                Ok(Some(Control::TokenRejected { reason })) => {
                    tracing::warn!(%reason, "relay rejected the refreshed token");
                    if let Some(a) = awaiting.pop_front() { let _ = a.send(Err(reason)); }
                }
                Ok(Some(Control::Notice { level, text })) => {
                    tracing::info!(?level, %text, "notice from relay");
                }
                Ok(Some(other)) => tracing::debug!(?other, "ignoring control message"),
                Ok(None) => { end(Ended::Lost("relay closed the control channel".into())); break; }
                Err(e) => { end(Ended::Lost(format!("control channel: {e}"))); break; }
            },
            out = outgoing.recv() => match out {
                Some((msg, answer)) => {
                    if writer.send(&msg).await.is_err() { break; }
                    awaiting.extend(answer);
                }
                None => break,
            },
            Some(answer) = pings.recv() => {
                nonce += 1;
                // Unanswered asks whose caller gave up go first.
                asked.retain(|_, a| !a.is_closed());
                asked.insert(nonce, answer);
                if writer.send(&Control::Ping(nonce)).await.is_err() { break; }
            }
            _ = ping.tick() => {
                if last_pong.elapsed() > PONG_DEADLINE {
                    end(Ended::Lost("relay stopped answering keep-alives".into()));
                    break;
                }
                nonce += 1;
                if writer.send(&Control::Ping(nonce)).await.is_err() { break; }
            }
        }
    }
}

/// A failed opening as the user sees it: the connection broke (retry), or
/// the relay is not speaking our protocol.
fn handshake_error(e: HandshakeError) -> AgentError {
    if e.is_connection() {
        AgentError::unreachable_by("opening the session", e)
    } else {
        AgentError::Protocol(e.to_string())
    }
}

/// Convenience for refusals built locally (e.g. "relay unreachable").
pub fn local_refusal(code: RefusalCode, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}
