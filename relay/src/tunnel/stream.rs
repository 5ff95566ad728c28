//! One data stream of a session, through the relay's phases in order:
//! read the open header → authorize (service known, token still valid,
//! group allowed: [`crate::policy`]) → for an http service, the proxy
//! ([`crate::http`]); for a tcp one, pick and connect a backend
//! ([`crate::forward`]) → answer → copy → audit. Also the typed refusal of
//! a stream over the session's cap.

use std::sync::Arc;
use std::time::Instant;

use gangway_transport::framed::FramedIo;
use gangway_transport::{duplex, Stream};
use gangway_wire::{OpenResult, OpenStream, Refusal, RefusalCode};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::HANDSHAKE_TIMEOUT;
use crate::audit::Event;
use crate::auth::{now_unix, Identity};
use crate::config::{Counted, ServiceConfig};
use crate::metrics::StreamGauge;
use crate::policy::{self, ServiceDenial};
use crate::Relay;

/// Who opened a data stream, to which service: what its audit lines name.
struct Caller<'a> {
    relay: &'a Arc<Relay>,
    identity: &'a Identity,
    session: &'a str,
    peer: &'a str,
    service: &'a str,
}

impl Caller<'_> {
    /// Answers the open header with `refusal`, auditing `reason` (which may
    /// say more than the agent is told).
    async fn refuse(&self, framed: &mut FramedIo<Stream>, refusal: Refusal, reason: &str) {
        self.relay.metrics.refused(code_name(refusal.code));
        self.relay.audit.record(&Event {
            event: "stream_refused",
            subject: Some(&self.identity.subject),
            session: Some(self.session),
            peer: Some(self.peer.to_string()),
            service: Some(self.service),
            code: Some(code_name(refusal.code)),
            reason: Some(reason.to_string()),
            ..Default::default()
        });
        let _ = framed
            .write(|b| OpenResult::Refused(refusal).encode(b))
            .await;
    }

    fn audit_open(&self, backend: Option<&str>) {
        self.relay.audit.record(&Event {
            event: "stream_open",
            subject: Some(&self.identity.subject),
            session: Some(self.session),
            peer: Some(self.peer.to_string()),
            service: Some(self.service),
            backend,
            ..Default::default()
        });
    }
}

/// A stream over `max_streams_per_session`: read its header (to audit the
/// service it wanted), refuse it as rate limited.
pub(super) async fn refuse_over_cap(
    relay: Arc<Relay>,
    stream: Stream,
    identity: Identity,
    session: String,
    peer: String,
    max: usize,
) {
    let mut framed = FramedIo::new(stream);
    let Some(open) = read_open(&mut framed, &session).await else {
        return;
    };
    let caller = Caller {
        relay: &relay,
        identity: &identity,
        session: &session,
        peer: &peer,
        service: &open.service,
    };
    let refusal = Refusal {
        code: RefusalCode::RateLimited,
        message: format!(
            "this session has {max} streams open already (the relay's max_streams_per_session); close some connections and retry"
        ),
    };
    caller
        .refuse(&mut framed, refusal, &format!("over {max} streams"))
        .await;
}

/// The stream's open header, within [`HANDSHAKE_TIMEOUT`]; `None` when
/// none comes (a bad one is logged).
async fn read_open(framed: &mut FramedIo<Stream>, session: &str) -> Option<OpenStream> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, framed.read(OpenStream::decode)).await {
        Ok(Ok(Some(open))) => Some(open),
        Ok(Err(e)) => {
            tracing::debug!(%session, error = %e, "bad open header");
            None
        }
        _ => None,
    }
}

/// One data stream through the phases: open header → authorize → the
/// service's kind takes it from there.
pub(super) async fn serve_stream(
    relay: Arc<Relay>,
    stream: Stream,
    identity_rx: watch::Receiver<Identity>,
    session: String,
    peer: String,
    ended: CancellationToken,
) {
    let identity = identity_rx.borrow().clone();
    let mut framed = FramedIo::new(stream);
    let Some(open) = read_open(&mut framed, &session).await else {
        return;
    };
    let opened = Instant::now();
    let caller = Caller {
        relay: &relay,
        identity: &identity,
        session: &session,
        peer: &peer,
        service: &open.service,
    };
    let svc = match authorize(&relay, &open.service, &identity) {
        Ok(svc) => svc,
        Err(refusal) => {
            let reason = refusal.message.clone();
            caller.refuse(&mut framed, refusal, &reason).await;
            return;
        }
    };
    if let Err(limited) = relay
        .limiter
        .check(Counted::Streams, &svc.name, None, &identity.subject)
        .await
    {
        let refusal = Refusal {
            code: RefusalCode::RateLimited,
            message: format!(
                "too many new connections to {} ({} for each user); wait {} s and retry",
                svc.display_name,
                limited.rate,
                limited.retry_after_secs()
            ),
        };
        let reason = format!("rate limit {} ({})", limited.limit, limited.rate);
        caller.refuse(&mut framed, refusal, &reason).await;
        return;
    }
    match relay.http_service(&svc.name) {
        Some(http_svc) => {
            // http: accept now; each request picks its backend (and errors
            // become HTTP error pages naming the service).
            if framed
                .write(|b| OpenResult::Accepted.encode(b))
                .await
                .is_err()
            {
                return;
            }
            caller.audit_open(None);
            observe_open(&relay, &svc.name, opened);
            let _open = StreamGauge::start(&relay.metrics, &svc.name);
            let (stream, early) = framed.into_parts();
            let client_ip = peer
                .rsplit_once(':')
                .map(|(ip, _)| ip.trim_matches(['[', ']']).to_string())
                .unwrap_or_else(|| peer.clone());
            let ctx = crate::http::StreamCtx {
                relay: relay.clone(),
                svc: http_svc,
                identity: identity_rx,
                session: session.clone(),
                client_ip,
                ended,
            };
            let io = gangway_transport::rewind::Rewind::new(early.freeze(), stream);
            crate::http::serve(ctx, io).await;
        }
        None => forward_tcp(&caller, svc, framed, opened).await,
    }
}

/// Records the stream-open latency: open header read to answer written.
fn observe_open(relay: &Relay, service: &str, opened: Instant) {
    relay
        .metrics
        .stream_open_seconds
        .with_label_values(&[service])
        .observe(opened.elapsed().as_secs_f64());
}

/// A tcp service's stream: connect a backend (refusing when none answers),
/// accept, copy both ways, audit.
async fn forward_tcp(
    caller: &Caller<'_>,
    svc: &ServiceConfig,
    mut framed: FramedIo<Stream>,
    opened: Instant,
) {
    let relay = caller.relay;
    let Some(pool) = relay.tcp_service(&svc.name) else {
        // Every service that is not http is tcp and has a pool.
        tracing::error!(service = %svc.name, "no backend pool for tcp service");
        return;
    };
    let (mut backend, backend_addr) = match pool.connect(svc).await {
        Ok(ok) => ok,
        Err(e) => {
            let refusal = Refusal {
                code: RefusalCode::BackendUnreachable,
                message: format!("{} is not reachable from the relay", svc.display_name),
            };
            caller.refuse(&mut framed, refusal, &e.to_string()).await;
            return;
        }
    };
    if framed
        .write(|b| OpenResult::Accepted.encode(b))
        .await
        .is_err()
    {
        return;
    }
    let (mut stream, early) = framed.into_parts();
    if !early.is_empty() && backend.write_all(&early).await.is_err() {
        return;
    }
    let started = Instant::now();
    caller.audit_open(Some(&backend_addr));
    observe_open(relay, &svc.name, opened);
    let open = StreamGauge::start(&relay.metrics, &svc.name);
    let result = duplex::splice(&mut stream, &mut backend).await;
    drop(open);
    let (up, down, reason) = match result {
        Ok(t) => (t.a_to_b + early.len() as u64, t.b_to_a, None),
        Err(e) => (0, 0, Some(e.to_string())),
    };
    let bytes = &relay.metrics.bytes;
    bytes.with_label_values(&[&svc.name, "up"]).inc_by(up);
    bytes.with_label_values(&[&svc.name, "down"]).inc_by(down);
    relay.audit.record(&Event {
        event: "stream_close",
        subject: Some(&caller.identity.subject),
        session: Some(caller.session),
        service: Some(caller.service),
        backend: Some(&backend_addr),
        bytes_up: Some(up),
        bytes_down: Some(down),
        duration_ms: Some(started.elapsed().as_millis() as u64),
        reason,
        ..Default::default()
    });
}

/// The policy phase: may this identity open this service now?
fn authorize<'r>(
    relay: &'r Relay,
    service: &str,
    identity: &Identity,
) -> Result<&'r ServiceConfig, Refusal> {
    if relay.shutdown().is_cancelled() {
        return Err(Refusal {
            code: RefusalCode::ShuttingDown,
            message: "relay is shutting down".into(),
        });
    }
    let Some(svc) = relay.config.service(service) else {
        return Err(Refusal {
            code: RefusalCode::UnknownService,
            message: format!("the relay has no service named {service:?}"),
        });
    };
    let leeway = relay.config.identity.leeway;
    match policy::authorize_service(svc, identity, leeway, now_unix()) {
        Ok(()) => Ok(svc),
        Err(ServiceDenial::Expired) => Err(Refusal {
            code: RefusalCode::Unauthenticated,
            message: "access token expired; sign in again".into(),
        }),
        Err(ServiceDenial::NotBound) => Err(Refusal {
            code: RefusalCode::Unauthenticated,
            message: format!(
                "{} takes only tokens bound to this device's key (DPoP); sign in again with an up-to-date agent",
                svc.display_name
            ),
        }),
        Err(ServiceDenial::NotInGroups) => Err(Refusal {
            code: RefusalCode::Forbidden,
            message: format!(
                "{} may not use {} (needs one of the groups: {})",
                identity.subject,
                svc.display_name,
                svc.allow_groups.as_deref().unwrap_or_default().join(", ")
            ),
        }),
    }
}

fn code_name(code: RefusalCode) -> &'static str {
    match code {
        RefusalCode::UnknownService => "unknown_service",
        RefusalCode::Forbidden => "forbidden",
        RefusalCode::RateLimited => "rate_limited",
        RefusalCode::NoHealthyBackend => "no_healthy_backend",
        RefusalCode::ShuttingDown => "shutting_down",
        RefusalCode::BackendUnreachable => "backend_unreachable",
        RefusalCode::Unauthenticated => "unauthenticated",
        RefusalCode::Other(_) => "other",
    }
}
