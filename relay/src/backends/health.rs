//! Active health checks: GET a path on each backend at an interval; a run
//! of failures marks it down, a run of successes brings it back.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::balancer::Backend;
use crate::config::HealthConfig;

/// Checks `backend` until `stop`.
pub async fn check_loop(backend: Arc<Backend>, cfg: HealthConfig, stop: CancellationToken) {
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let ok = matches!(
            tokio::time::timeout(cfg.timeout, probe(&backend.addr, &cfg.path)).await,
            Ok(Ok(true))
        );
        record(&backend, &cfg, ok);
    }
}

/// Applies one check result with the thresholds.
pub fn record(backend: &Backend, cfg: &HealthConfig, ok: bool) {
    if ok {
        backend.fail_streak.store(0, Ordering::Relaxed);
        let n = backend.ok_streak.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= cfg.healthy_threshold && !backend.available() {
            backend.set_healthy(true);
        }
    } else {
        backend.ok_streak.store(0, Ordering::Relaxed);
        let n = backend.fail_streak.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= cfg.unhealthy_threshold {
            backend.set_healthy(false);
        }
    }
}

/// One HTTP/1.0 GET; true on a 2xx or 3xx status.
async fn probe(addr: &str, path: &str) -> std::io::Result<bool> {
    let mut tcp = TcpStream::connect(addr).await?;
    let host = addr;
    tcp.write_all(
        format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: gangway-relay-health\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let r = tcp.read(&mut buf[n..]).await?;
        if r == 0 {
            break;
        }
        n += r;
    }
    // "HTTP/1.1 200"
    let line = String::from_utf8_lossy(&buf[..n]);
    let code = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok());
    Ok(matches!(code, Some(200..=399)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn thresholds_mark_down_and_up() {
        let cfg = HealthConfig {
            path: "/status".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        };
        let b = Backend::new("127.0.0.1:1");
        record(&b, &cfg, false);
        record(&b, &cfg, false);
        assert!(b.available(), "two failures are below the threshold");
        record(&b, &cfg, false);
        assert!(!b.available());
        record(&b, &cfg, true);
        assert!(!b.available(), "one success is below the threshold");
        record(&b, &cfg, true);
        assert!(b.available());
    }
}
