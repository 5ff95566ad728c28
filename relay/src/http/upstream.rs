//! Connections from the proxy to backend nodes: the one kept per client
//! connection for keep-alive ([`Reuse`]), new ones when that cannot serve,
//! and the byte splice once both sides of an upgrade have switched.

use std::time::Duration;

use hyper::client::conn::http1::SendRequest;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::Mutex;

use super::body::ProxyBody;
use crate::backends::{self, InFlight};

/// The upstream connection kept for one downstream connection (keep-alive),
/// with the address of the node it goes to.
pub type Reuse = Mutex<Option<(String, SendRequest<ProxyBody>)>>;

/// A ready upstream connection: the one kept from the previous request on
/// this stream if it goes to the same node, else a new one.
pub async fn connection(
    reuse: &Reuse,
    addr: &str,
    timeout: Duration,
    upgrade: bool,
) -> std::io::Result<SendRequest<ProxyBody>> {
    // Take the kept connection out; the lock is not held while waiting.
    let kept = reuse.lock().await.take();
    if let Some((kept_addr, mut sender)) = kept {
        if kept_addr == addr && !upgrade && sender.ready().await.is_ok() {
            return Ok(sender);
        }
    }
    let tcp = backends::connect(addr, timeout).await?;
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(tcp))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}

/// Keeps `sender` (to `addr`) for the next request on this stream.
pub async fn keep(reuse: &Reuse, addr: &str, sender: SendRequest<ProxyBody>) {
    *reuse.lock().await = Some((addr.to_string(), sender));
}

/// Copies bytes both ways once both sides have switched protocols.
pub async fn splice_upgraded(down: OnUpgrade, up: OnUpgrade, _guard: InFlight) {
    let (down, up) = match tokio::try_join!(down, up) {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut down = TokioIo::new(down);
    let mut up = TokioIo::new(up);
    let _ = gangway_transport::duplex::splice(&mut down, &mut up).await;
}
