//! Backend nodes, shared by every kind of service: the pool a request or a
//! tcp stream picks its node from ([`balancer`]: round robin or least
//! connections, cookie affinity, passive ejection), the active checks that
//! mark nodes down and up ([`health`]), and the one way the relay opens a
//! connection to a node ([`connect`]).
//!
//! Used alike by the tcp forwarder ([`crate::forward`]) and the http proxy
//! ([`crate::http`]); neither reaches into the other for its nodes.

pub mod balancer;
pub mod health;

use std::time::Duration;

use tokio::net::TcpStream;

pub use balancer::{Backend, InFlight, Pick, Pool, PASSIVE_EJECT};

/// Opens a TCP connection to `addr` within `timeout`, with `TCP_NODELAY` set.
pub async fn connect(addr: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}
