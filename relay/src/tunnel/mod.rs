//! One agent's session: handshake, control channel, and its data streams.
//!
//! A session runs in phases: the versioned `handshake` → the mux and
//! its control stream (`start_control`) → data streams until something
//! ends the session (`accept_streams`) → goodbye and the audit line.
//!
//! A session that ends ends everything in it, whatever the agent does:
//! every stream task is tracked and aborted, the goodbye is sent with a
//! deadline (an agent that stopped reading its control stream cannot hold
//! the session open), and the mux driver is aborted if it does not finish
//! closing in time. Its streams are capped (`max_streams_per_session`; the
//! excess is refused as "rate limited") and so is what it can make the
//! relay buffer (`stream_receive_window_kib`, see
//! [`gangway_transport::mux::bounded_config`]).
//!
//! Each data stream goes through the relay's phases in order
//! (`stream::serve_stream`): read the open header → authorize (service known,
//! token still valid, group allowed: [`crate::policy`]) → for an http
//! service, the proxy ([`crate::http`]); for a tcp one, pick and connect a
//! backend ([`crate::forward`]) → answer → copy → audit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gangway_transport::control::{self, ControlReader};
use gangway_transport::mux::{self, Mode};
use gangway_transport::{handshake, Stream, WsByteStream};
use gangway_wire::{Control, Hello, HelloReply, RefusalCode, Token, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::audit::Event;
use crate::auth::{now_unix, AuthError, Identity};
use crate::dpop::{Presented, Scheme};
use crate::policy;
use crate::{text, Live, Relay};
use gangway_dpop::Htu;

mod stream;

use stream::{refuse_over_cap, serve_stream};

/// How long an agent has to send its hello, control stream, or open header.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the goodbye may take to reach the agent, and the mux to close
/// after it, before the session is cut regardless.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Refusals being written at once (beyond this, excess streams are reset
/// without an answer); within the mux's slack above the stream cap.
const MAX_REFUSING: usize = crate::config::limits::STREAM_SLACK / 2;

/// Serves one upgraded WebSocket until the agent leaves, the relay shuts
/// down, or the session's token expires without renewal. Each new stream
/// is served by the state `live` holds when it opens (a reload applies to
/// the streams opened after it).
///
/// `htu` is what DPoP proofs of in-band token refreshes must name: the
/// upgrade's (see [`crate::dpop`]).
pub async fn serve<S>(
    live: Arc<Live>,
    mut ws: WebSocketStream<S>,
    identity: Identity,
    peer: String,
    htu: Result<Htu, AuthError>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let relay = live.current();
    let session = relay.next_session_id();
    let started = Instant::now();
    let Some(mut hello) = handshake(&mut ws, &session).await else {
        return;
    };
    // Free text from the agent, bound for a log line and an audit line.
    hello.agent = text::clean(&hello.agent).into_owned();
    relay.audit.record(&Event {
        event: "session_open",
        subject: Some(&identity.subject),
        session: Some(&session),
        peer: Some(peer.clone()),
        reason: Some(format!("agent {}", hello.agent)),
        ..Default::default()
    });
    tracing::info!(%session, subject = %identity.subject, agent = %hello.agent, "session open");
    // Listed for the admin API; `registered.end` fires if the subject is locked.
    let registered = relay.open_sessions.register(crate::sessions::SessionInfo {
        id: session.clone(),
        subject: identity.subject.clone(),
        peer: peer.clone(),
        agent: hello.agent.clone(),
        started_unix: now_unix(),
    });
    let _open = SessionGauge::start(&relay);

    let limits = &relay.config.limits;
    let (opener, mut inbound, driver) = mux::start(
        WsByteStream::new(ws),
        Mode::Server,
        mux::bounded_config(limits.mux_streams(), limits.stream_receive_window),
    );
    let mut driver = tokio::spawn(driver);
    let control = match handshake::accept_control(&mut inbound, HANDSHAKE_TIMEOUT).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%session, "no control stream ({e}); closing");
            driver.abort();
            return;
        }
    };
    let (identity_tx, identity_rx) = watch::channel(identity.clone());
    let control = start_control(&live, control, identity_tx, &session, htu);
    let mut streams = Streams::new(limits.max_streams_per_session);
    let serving = accept_streams(
        &live,
        &mut inbound,
        &mut streams,
        &identity_rx,
        &control.tx,
        &session,
        &peer,
    );
    let end = tokio::select! {
        end = serving => end,
        // An admin locked the subject (on this relay or another).
        _ = registered.end.cancelled() => End {
            reason: "subject locked",
            goodbye: Some((
                RefusalCode::Forbidden,
                "an administrator locked your access to this relay; ask them to unlock it".to_string(),
            )),
        },
    };

    control.say_goodbye(end.goodbye).await;
    streams.end();
    drop(inbound);
    drop(opener);
    if tokio::time::timeout(CLOSE_TIMEOUT, &mut driver)
        .await
        .is_err()
    {
        tracing::debug!(%session, "mux did not close in time; cutting the connection");
        driver.abort();
    }
    relay.audit.record(&Event {
        event: "session_close",
        subject: Some(&identity.subject),
        session: Some(&session),
        peer: Some(peer),
        reason: Some(end.reason.to_string()),
        duration_ms: Some(started.elapsed().as_millis() as u64),
        ..Default::default()
    });
    tracing::info!(%session, reason = end.reason, "session closed");
}

/// Counts a session in `gangway_relay_sessions` while it lives.
struct SessionGauge(Arc<Relay>);

impl SessionGauge {
    fn start(relay: &Arc<Relay>) -> Self {
        relay.metrics.sessions.inc();
        relay.metrics.sessions_opened.inc();
        SessionGauge(relay.clone())
    }
}

impl Drop for SessionGauge {
    fn drop(&mut self) {
        self.0.metrics.sessions.dec();
    }
}

/// Phase 1: versioned handshake ([`handshake`]). `None` when the agent
/// sent no valid hello, speaks another protocol version (it is told
/// which), or could not be welcomed.
async fn handshake<S>(ws: &mut WebSocketStream<S>, session: &str) -> Option<Hello>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let hello = match handshake::read_hello(ws, HANDSHAKE_TIMEOUT).await {
        Ok(h) => h,
        Err(e) => {
            tracing::debug!(%session, "no valid hello ({e}); closing");
            let _ = ws.close(None).await;
            return None;
        }
    };
    let reply = if hello.version == PROTOCOL_VERSION {
        HelloReply::Welcome {
            version: PROTOCOL_VERSION,
            session: session.to_string(),
        }
    } else {
        HelloReply::Unsupported {
            supported: PROTOCOL_VERSION,
            message: format!(
                "relay speaks protocol {PROTOCOL_VERSION}, agent {} speaks {}; update the agent",
                hello.agent, hello.version
            ),
        }
    };
    let welcome = matches!(reply, HelloReply::Welcome { .. });
    let sent = handshake::send_reply(ws, &reply).await.is_ok();
    if !welcome {
        let _ = ws.close(None).await;
    }
    (welcome && sent).then_some(hello)
}

/// The control stream's two tasks: one writing what `tx` is sent, one
/// reading (pings, token refreshes).
struct ControlChannel {
    tx: mpsc::Sender<Control>,
    writer: JoinHandle<()>,
    reader: JoinHandle<()>,
}

impl ControlChannel {
    /// Sends `goodbye` (if any) and stops both tasks. Bounded in time: if
    /// the agent has stopped reading, the writer is stuck behind a full
    /// stream window and the goodbye is dropped rather than awaited.
    async fn say_goodbye(self, goodbye: Option<(RefusalCode, String)>) {
        let ControlChannel {
            tx,
            mut writer,
            reader,
        } = self;
        // The reader holds a sender too; once it is gone, dropping ours
        // lets the writer finish when it has written what is queued.
        reader.abort();
        let _ = reader.await;
        if let Some((code, reason)) = goodbye {
            let _ = tx.try_send(Control::Goodbye { code, reason });
        }
        drop(tx);
        if tokio::time::timeout(GOODBYE_TIMEOUT, &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
    }
}

/// The session's data streams: every task tracked, so that the session's
/// end ends them; at most `max` served at once.
struct Streams {
    serving: JoinSet<()>,
    refusing: JoinSet<()>,
    max: usize,
    /// Cancelled when the session ends: what a stream task started apart
    /// from itself (an upgraded WebSocket's copy) stops with it.
    ended: CancellationToken,
}

impl Streams {
    fn new(max: usize) -> Self {
        Self {
            serving: JoinSet::new(),
            refusing: JoinSet::new(),
            max,
            ended: CancellationToken::new(),
        }
    }

    /// Forgets finished tasks.
    fn reap(&mut self) {
        while self.serving.try_join_next().is_some() {}
        while self.refusing.try_join_next().is_some() {}
    }

    /// True when another stream may be served now.
    fn has_room(&mut self) -> bool {
        self.reap();
        self.serving.len() < self.max
    }

    /// Ends every stream of the session now.
    fn end(mut self) {
        self.ended.cancel();
        self.serving.abort_all();
        self.refusing.abort_all();
        // Dropping the sets aborts anything left, too.
        self.reap();
    }
}

/// Phase 2: serves the control stream (the first one the agent opened).
fn start_control(
    live: &Arc<Live>,
    stream: Stream,
    identity: watch::Sender<Identity>,
    session: &str,
    htu: Result<Htu, AuthError>,
) -> ControlChannel {
    let (ctl_reader, mut ctl_writer) = control::channel(stream);
    let (tx, mut rx) = mpsc::channel::<Control>(16);
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if ctl_writer.send(&msg).await.is_err() {
                break;
            }
        }
    });
    let reader = tokio::spawn(control_loop(
        live.clone(),
        ctl_reader,
        tx.clone(),
        identity,
        session.to_string(),
        htu,
    ));
    ControlChannel { tx, writer, reader }
}

/// Why a session ended, and what the agent is told, if anything.
struct End {
    reason: &'static str,
    goodbye: Option<(RefusalCode, String)>,
}

/// Phase 3: serves data streams until the agent leaves, the relay shuts
/// down, the token expires without renewal, or the control channel closes.
/// On shutdown, the session drains ([`drain_streams`]).
async fn accept_streams(
    live: &Arc<Live>,
    inbound: &mut mpsc::UnboundedReceiver<Stream>,
    streams: &mut Streams,
    identity_rx: &watch::Receiver<Identity>,
    ctl_tx: &mpsc::Sender<Control>,
    session: &str,
    peer: &str,
) -> End {
    let shutdown = live.current().shutdown().clone();
    loop {
        let grace = live.current().config.identity.leeway;
        let expires_at = identity_rx.borrow().expires_at;
        let until_expiry = Duration::from_secs(expires_at.saturating_sub(now_unix())) + grace;
        tokio::select! {
            s = inbound.recv() => match s {
                // The state current when the stream arrives.
                Some(stream) if streams.has_room() => {
                    streams.serving.spawn(serve_stream(
                        live.current(),
                        stream,
                        identity_rx.clone(),
                        session.to_string(),
                        peer.to_string(),
                        streams.ended.clone(),
                    ));
                }
                Some(stream) if streams.refusing.len() < MAX_REFUSING => {
                    let identity = identity_rx.borrow().clone();
                    streams.refusing.spawn(refuse_over_cap(
                        live.current(),
                        stream,
                        identity,
                        session.to_string(),
                        peer.to_string(),
                        streams.max,
                    ));
                }
                // Dropped: yamux resets it.
                Some(_) => tracing::debug!(%session, "stream flood; resetting"),
                None => return End { reason: "agent closed", goodbye: None },
            },
            // Keeps the sets small between new streams.
            Some(_) = streams.serving.join_next(), if !streams.serving.is_empty() => {}
            _ = shutdown.cancelled() => {
                let relay = live.current();
                return drain_streams(&relay, inbound, streams, identity_rx, ctl_tx, session, peer).await;
            }
            _ = tokio::time::sleep(until_expiry) => {
                if policy::token_expired(identity_rx.borrow().expires_at, grace, now_unix()) {
                    return End {
                        reason: "token expired",
                        goodbye: Some((
                            RefusalCode::Unauthenticated,
                            "access token expired without renewal; sign in again".to_string(),
                        )),
                    };
                }
            }
            _ = ctl_tx.closed() => return End { reason: "control channel closed", goodbye: None },
        }
    }
}

/// The relay is draining: says goodbye at once (the agent opens a new
/// session, through the balancer to another relay, for its new streams),
/// refuses new streams here as "shutting down", and lets the open ones run
/// until they end or the drain deadline cuts them. The agent closing its
/// control channel (it does, on goodbye) does not end the session here.
async fn drain_streams(
    relay: &Arc<Relay>,
    inbound: &mut mpsc::UnboundedReceiver<Stream>,
    streams: &mut Streams,
    identity_rx: &watch::Receiver<Identity>,
    ctl_tx: &mpsc::Sender<Control>,
    session: &str,
    peer: &str,
) -> End {
    let _ = ctl_tx.try_send(Control::Goodbye {
        code: RefusalCode::ShuttingDown,
        reason: "relay is draining; reconnect to another relay".to_string(),
    });
    let open = streams.serving.len();
    tracing::info!(%session, open, "draining: goodbye sent; open streams may finish");
    let drained = End {
        reason: "relay drained",
        goodbye: None,
    };
    loop {
        streams.reap();
        if streams.serving.is_empty() {
            return drained;
        }
        tokio::select! {
            s = inbound.recv() => match s {
                // Refused as shutting down by the policy phase.
                Some(stream) if streams.refusing.len() < MAX_REFUSING => {
                    streams.refusing.spawn(serve_stream(
                        relay.clone(),
                        stream,
                        identity_rx.clone(),
                        session.to_string(),
                        peer.to_string(),
                        streams.ended.clone(),
                    ));
                }
                Some(_) => tracing::debug!(%session, "stream flood while draining; resetting"),
                None => return End { reason: "agent closed while draining", goodbye: None },
            },
            Some(_) = streams.serving.join_next() => {}
            _ = relay.cut().cancelled() => {
                return End { reason: "drain deadline reached", goodbye: None };
            }
        }
    }
}

/// Answers pings and takes refreshed tokens for the same subject.
async fn control_loop(
    live: Arc<Live>,
    mut reader: ControlReader<Stream>,
    tx: mpsc::Sender<Control>,
    identity: watch::Sender<Identity>,
    session: String,
    htu: Result<Htu, AuthError>,
) {
    loop {
        let msg = match reader.recv().await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(%session, error = %e, "control channel error");
                break;
            }
        };
        let reply = match msg {
            Control::Ping(n) => Control::Pong(n),
            Control::RefreshToken(token) => {
                refresh(&live.current(), &identity, &session, &token, None, &htu).await
            }
            Control::RefreshTokenDpop { token, proof } => {
                refresh(
                    &live.current(),
                    &identity,
                    &session,
                    &token,
                    Some(&proof),
                    &htu,
                )
                .await
            }
            Control::Pong(_) => continue,
            other => {
                tracing::debug!(%session, ?other, "ignoring control message");
                continue;
            }
        };
        if tx.send(reply).await.is_err() {
            break;
        }
    }
}

/// Takes a refreshed token if it is valid, presented as the DPoP rules
/// say (with `proof` for a bound token, over the new token; see
/// [`crate::dpop`]), bound to the session's key if the session was, and
/// names the same subject.
async fn refresh(
    relay: &Relay,
    identity: &watch::Sender<Identity>,
    session: &str,
    token: &Token,
    proof: Option<&str>,
    htu: &Result<Htu, AuthError>,
) -> Control {
    let current = identity.borrow().subject.clone();
    if let Some(lock) = relay.locks.lock_of(&current).await {
        relay.audit.record(&Event {
            event: "token_refresh_refused",
            subject: Some(&current),
            session: Some(session),
            code: Some("subject_locked"),
            reason: Some(format!("locked by {}: {}", lock.by, lock.reason)),
            ..Default::default()
        });
        relay.metrics.refused("subject_locked");
        return Control::TokenRejected {
            reason: "an administrator locked your access to this relay".into(),
        };
    }
    let presented = Presented {
        scheme: if proof.is_some() {
            Scheme::Dpop
        } else {
            Scheme::Bearer
        },
        token: token.expose(),
        proof,
    };
    let checked = async {
        let mut new = relay.verifier.verify(token.expose()).await?;
        let cfg = &relay.config.dpop;
        crate::dpop::bind(
            cfg,
            &relay.replays,
            &presented,
            &mut new,
            "GET",
            htu.clone(),
            now_unix(),
        )
        .await?;
        let old = identity.borrow().clone();
        if old.dpop_bound && new.jkt != old.jkt {
            return Err(AuthError::DpopKeyChanged);
        }
        Ok(new)
    };
    match checked.await {
        Ok(new) if new.subject == current => {
            let expires_at = new.expires_at;
            relay.audit.record(&Event {
                event: "token_refreshed",
                subject: Some(&current),
                session: Some(session),
                reason: Some(format!("expires_at {expires_at}")),
                ..Default::default()
            });
            identity.send_replace(new);
            Control::TokenAccepted { expires_at }
        }
        Ok(new) => {
            relay.audit.record(&Event {
                event: "token_refresh_refused",
                subject: Some(&current),
                session: Some(session),
                code: Some("subject_changed"),
                reason: Some(format!("new token is for {}", new.subject)),
                ..Default::default()
            });
            Control::TokenRejected {
                reason: "new token names a different user".into(),
            }
        }
        Err(e) => {
            relay.audit.record(&Event {
                event: "token_refresh_refused",
                subject: Some(&current),
                session: Some(session),
                code: Some(e.code()),
                reason: Some(e.to_string()),
                ..Default::default()
            });
            Control::TokenRejected {
                reason: e.to_string(),
            }
        }
    }
}
