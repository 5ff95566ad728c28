//! Backend choice and connection for `tcp`-forwarded streams.
//!
//! Round robin over the service's backends; a backend that refuses is
//! skipped for this stream and the next one is tried.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;

use crate::config::ServiceConfig;

/// Round-robin cursor for one service.
#[derive(Debug, Default)]
pub struct Pool {
    next: AtomicUsize,
}

/// Why no backend could be reached.
#[derive(Debug, thiserror::Error)]
#[error("no backend of {service} answered (last: {last_backend}: {last_error})")]
pub struct ConnectError {
    pub service: String,
    pub last_backend: String,
    pub last_error: String,
}

impl Pool {
    /// Connects to the next backend in turn, trying each at most once.
    pub async fn connect(&self, svc: &ServiceConfig) -> Result<(TcpStream, String), ConnectError> {
        let n = svc.backends.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = (String::new(), String::new());
        for i in 0..n {
            let backend = &svc.backends[(start + i) % n];
            match tokio::time::timeout(svc.connect_timeout, TcpStream::connect(backend.as_str()))
                .await
            {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok((stream, backend.clone()));
                }
                Ok(Err(e)) => last = (backend.clone(), e.to_string()),
                Err(_) => last = (backend.clone(), "connect timed out".into()),
            }
            tracing::warn!(service = %svc.name, backend = %last.0, error = %last.1, "backend unreachable");
        }
        Err(ConnectError {
            service: svc.name.clone(),
            last_backend: last.0,
            last_error: last.1,
        })
    }
}
