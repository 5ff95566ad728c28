//! The cap on one subject's sessions across every relay
//! (`[redis] max_sessions_per_subject`), beside the per-relay one of
//! `[limits]`: each session holds a lease in Redis, renewed while it
//! lives and given back when it ends, so a relay that dies frees its
//! sessions' places once their leases lapse. While Redis is out of reach
//! only the per-relay cap applies.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::shared::Shared;

/// How long a lease holds without renewal; renewed every third of it.
pub const LEASE: Duration = Duration::from_secs(30);

/// A session's place in the fleet-wide cap, given back on drop.
pub struct FleetSlot {
    stop: CancellationToken,
}

impl Drop for FleetSlot {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A place for session `id` of `subject` among at most `max` across
/// relays: `Ok(Some(slot))` taken, `Ok(None)` Redis out of reach (no
/// fleet-wide cap then), `Err(())` at the cap.
pub async fn take(
    shared: &Arc<Shared>,
    subject: &str,
    id: &str,
    max: usize,
) -> Result<Option<FleetSlot>, ()> {
    match shared.take_session(subject, id, max, LEASE).await {
        Some(false) => Err(()),
        None => Ok(None),
        Some(true) => {
            let stop = CancellationToken::new();
            let (shared, subject, id, s) = (
                shared.clone(),
                subject.to_string(),
                id.to_string(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(LEASE / 3);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = tick.tick() => shared.renew_session(&subject, &id, LEASE).await,
                        _ = s.cancelled() => break,
                    }
                }
                shared.release_session(&subject, &id).await;
            });
            Ok(Some(FleetSlot { stop }))
        }
    }
}

/// The fleet-wide cap for a new session of `subject` on `relay`:
/// `Ok(slot)` (none when no cap is configured or Redis is out of reach),
/// `Err(max)` at the cap.
pub async fn admit(relay: &crate::Relay, subject: &str) -> Result<Option<FleetSlot>, usize> {
    let (Some(shared), Some(max)) = (
        relay.locks.shared(),
        relay
            .config
            .shared
            .redis
            .as_ref()
            .and_then(|r| r.max_sessions_per_subject),
    ) else {
        return Ok(None);
    };
    take(shared, subject, &lease_id(), max)
        .await
        .map_err(|()| max)
}

/// A lease id unique across relays: 128 random bits.
fn lease_id() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    // An id is not a secret: should the system's random source fail, a
    // clock-derived one still keeps leases apart in practice.
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        b = t.to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}
