//! Local listeners: one per service on 127.0.0.1; each accepted connection
//! becomes one stream in the tunnel.
//!
//! A connection that cannot be carried is closed with a reason: logged, and
//! for `http` services also answered with a small HTTP error page, so git or
//! the browser shows why instead of hanging.

use std::net::SocketAddr;
use std::time::Duration;

use gangway_wire::RefusalCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::relay_api::{Service, ServiceKind};
use crate::tunnel::Tunnel;
use crate::AgentError;

/// How long a new connection waits for the tunnel to come (back) up.
pub const DEFAULT_CONNECT_WAIT: Duration = Duration::from_secs(20);

/// A bound listener for one service.
pub struct ServiceListener {
    pub service: Service,
    pub listener: TcpListener,
}

/// A port that could not be bound, with the reason in plain words.
#[derive(Debug, thiserror::Error)]
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
            let _ = tcp.set_nodelay(true);
            let service = self.service.clone();
            let tunnel = tunnel.clone();
            tokio::spawn(async move {
                if let Err(e) = carry(tcp, &service, &tunnel, connect_wait).await {
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
) -> Result<(), AgentError> {
    let opened = async {
        let session = tunnel.session(connect_wait).await?;
        match session.open(&service.name).await {
            // The session died under us (e.g. the relay restarted and we
            // have not noticed yet): wait for the next one, once.
            Err(AgentError::Unreachable(e)) => {
                match tokio::time::timeout(Duration::from_secs(1), session.closed()).await {
                    Ok(_) => {
                        tunnel
                            .session(connect_wait)
                            .await?
                            .open(&service.name)
                            .await
                    }
                    Err(_) => Err(AgentError::Unreachable(e)),
                }
            }
            other => other,
        }
    }
    .await;
    let mut opened = match opened {
        Ok(o) => o,
        Err(e) => {
            if service.kind == ServiceKind::Http {
                http_error(&mut tcp, &e).await;
            }
            return Err(e);
        }
    };
    if !opened.early.is_empty() {
        tcp.write_all(&opened.early)
            .await
            .map_err(|e| AgentError::Unreachable(e.to_string()))?;
    }
    gangway_transport::duplex::splice(&mut tcp, &mut opened.stream)
        .await
        .map_err(|e| AgentError::Unreachable(format!("stream broke: {e}")))?;
    Ok(())
}

/// Answers an HTTP client with a short error page naming the reason.
async fn http_error(tcp: &mut TcpStream, e: &AgentError) {
    let (status, text) = match e {
        AgentError::Refused(r) => match r.code {
            RefusalCode::Forbidden => ("403 Forbidden", r.to_string()),
            RefusalCode::Unauthenticated => ("403 Forbidden", format!("sign-in needed: {r}")),
            RefusalCode::UnknownService => ("404 Not Found", r.to_string()),
            RefusalCode::RateLimited => ("429 Too Many Requests", r.to_string()),
            _ => ("503 Service Unavailable", r.to_string()),
        },
        AgentError::Unauthorized(m) => ("403 Forbidden", m.clone()),
        other => ("502 Bad Gateway", other.to_string()),
    };
    // Read (part of) the request first, so closing doesn't reset the
    // connection before the client has read our answer.
    let mut buf = [0u8; 16 * 1024];
    let _ = tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut buf)).await;
    let body = format!("Gangway: {text}\n");
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\nX-Gangway-Error: {}\r\n\r\n{body}",
        body.len(),
        text.replace(['\r', '\n'], " ")
    );
    let _ = tcp.write_all(resp.as_bytes()).await;
    let _ = tcp.shutdown().await;
}
