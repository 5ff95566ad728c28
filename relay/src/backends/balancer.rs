//! Backend pools: health state, round robin or least connections, and
//! cookie affinity.
//!
//! A backend's affinity id is derived from its address alone, so every
//! relay behind a balancer gives the same node the same id: relays stay
//! stateless and a user's affinity cookie works on any of them.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Balance;

/// How long a backend that refused a connection is skipped when no active
/// health check is configured to bring it back.
pub const PASSIVE_EJECT: Duration = Duration::from_secs(10);

/// One backend node.
#[derive(Debug)]
pub struct Backend {
    pub addr: String,
    /// Stable id used in the affinity cookie.
    pub id: String,
    /// Active health verdict (true until a check says otherwise).
    healthy: AtomicBool,
    /// Drained by an admin: no new work until re-enabled.
    drained: AtomicBool,
    /// Passive ejection: skip until this instant.
    ejected_until: Mutex<Option<Instant>>,
    /// Requests in flight (for least connections).
    in_flight: AtomicUsize,
    /// Consecutive active-check results, for thresholds.
    pub(crate) ok_streak: AtomicU32,
    pub(crate) fail_streak: AtomicU32,
}

impl Backend {
    pub fn new(addr: &str) -> Self {
        Self {
            addr: addr.to_string(),
            id: affinity_id(addr),
            healthy: AtomicBool::new(true),
            drained: AtomicBool::new(false),
            ejected_until: Mutex::new(None),
            in_flight: AtomicUsize::new(0),
            ok_streak: AtomicU32::new(0),
            fail_streak: AtomicU32::new(0),
        }
    }

    /// Whether new requests may go here now.
    pub fn available(&self) -> bool {
        if self.drained() || !self.healthy.load(Ordering::Relaxed) {
            return false;
        }
        match *self.ejected_until.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(t) => Instant::now() >= t,
            None => true,
        }
    }

    /// The active health verdict alone (not drain or ejection).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Drained by an admin (takes no new work; what it serves finishes).
    pub fn drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    /// Drains (`true`) or re-enables the backend; whether that changed it.
    pub fn set_drained(&self, drained: bool) -> bool {
        self.drained.swap(drained, Ordering::Relaxed) != drained
    }

    pub fn set_healthy(&self, up: bool) {
        let was = self.healthy.swap(up, Ordering::Relaxed);
        if up {
            *self.ejected_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        if was != up {
            tracing::warn!(backend = %self.addr, "backend marked {}", if up { "up" } else { "down" });
        }
    }

    /// Passive ejection after a failed connection.
    pub fn eject(&self, for_: Duration) {
        tracing::warn!(backend = %self.addr, "backend unreachable; skipping it for {for_:?}");
        *self.ejected_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + for_);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Counts a request in flight on a backend until dropped.
pub struct InFlight(Arc<Backend>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// FNV-1a of the address, as 8 hex digits.
pub fn affinity_id(addr: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in addr.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// The backends of one route.
#[derive(Debug)]
pub struct Pool {
    pub backends: Vec<Arc<Backend>>,
    balance: Balance,
    next: AtomicUsize,
}

/// A chosen backend.
pub struct Pick {
    pub backend: Arc<Backend>,
    /// True when the caller's affinity cookie chose it.
    pub sticky: bool,
}

impl Pool {
    pub fn new(addrs: &[String], balance: Balance) -> Self {
        Self {
            backends: addrs.iter().map(|a| Arc::new(Backend::new(a))).collect(),
            balance,
            next: AtomicUsize::new(0),
        }
    }

    /// Chooses a backend: the one named by `affinity` while it is available,
    /// else by the pool's balancing, skipping `tried`.
    pub fn pick(&self, affinity: Option<&str>, tried: &[String]) -> Option<Pick> {
        if let Some(id) = affinity {
            if let Some(b) = self
                .backends
                .iter()
                .find(|b| b.id == id && b.available() && !tried.contains(&b.addr))
            {
                return Some(Pick {
                    backend: b.clone(),
                    sticky: true,
                });
            }
        }
        let candidates: Vec<&Arc<Backend>> = self
            .backends
            .iter()
            .filter(|b| b.available() && !tried.contains(&b.addr))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let chosen = match self.balance {
            Balance::RoundRobin => {
                candidates[self.next.fetch_add(1, Ordering::Relaxed) % candidates.len()]
            }
            Balance::LeastConn => {
                // Ties go round robin so equal nodes share the load.
                let min = candidates.iter().map(|b| b.in_flight()).min().unwrap_or(0);
                let ties: Vec<_> = candidates.iter().filter(|b| b.in_flight() == min).collect();
                ties[self.next.fetch_add(1, Ordering::Relaxed) % ties.len()]
            }
        };
        Some(Pick {
            backend: chosen.clone(),
            sticky: false,
        })
    }

    pub fn start_request(backend: &Arc<Backend>) -> InFlight {
        backend.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(backend.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize, balance: Balance) -> Pool {
        let addrs: Vec<String> = (0..n).map(|i| format!("10.0.0.{i}:8090")).collect();
        Pool::new(&addrs, balance)
    }

    #[test]
    fn round_robin_spreads_and_skips_down_nodes() {
        let p = pool(3, Balance::RoundRobin);
        let picks: Vec<_> = (0..6)
            .map(|_| p.pick(None, &[]).unwrap().backend.addr.clone())
            .collect();
        assert_eq!(
            picks[0..3]
                .iter()
                .collect::<std::collections::HashSet<_>>()
                .len(),
            3
        );
        p.backends[1].set_healthy(false);
        for _ in 0..10 {
            assert_ne!(p.pick(None, &[]).unwrap().backend.addr, p.backends[1].addr);
        }
        p.backends[0].set_healthy(false);
        p.backends[2].eject(Duration::from_secs(60));
        assert!(p.pick(None, &[]).is_none());
    }

    #[test]
    fn affinity_holds_while_healthy_then_moves() {
        let p = pool(3, Balance::RoundRobin);
        let id = p.backends[2].id.clone();
        for _ in 0..10 {
            let pick = p.pick(Some(&id), &[]).unwrap();
            assert!(pick.sticky);
            assert_eq!(pick.backend.id, id);
        }
        p.backends[2].set_healthy(false);
        let pick = p.pick(Some(&id), &[]).unwrap();
        assert!(!pick.sticky);
        assert_ne!(pick.backend.id, id);
        // Unknown ids (e.g. a node removed from config) are ignored.
        assert!(!p.pick(Some("nope"), &[]).unwrap().sticky);
    }

    #[test]
    fn least_conn_prefers_idle_nodes() {
        let p = pool(2, Balance::LeastConn);
        let busy = Pool::start_request(&p.backends[0]);
        for _ in 0..5 {
            assert_eq!(p.pick(None, &[]).unwrap().backend.addr, p.backends[1].addr);
        }
        drop(busy);
        assert_eq!(p.backends[0].in_flight(), 0);
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        assert_eq!(affinity_id("10.0.0.1:8090"), affinity_id("10.0.0.1:8090"));
        assert_ne!(affinity_id("10.0.0.1:8090"), affinity_id("10.0.0.2:8090"));
    }

    #[test]
    fn tried_backends_are_skipped() {
        let p = pool(2, Balance::RoundRobin);
        let first = p.pick(None, &[]).unwrap().backend.addr.clone();
        let second = p
            .pick(None, std::slice::from_ref(&first))
            .unwrap()
            .backend
            .addr
            .clone();
        assert_ne!(first, second);
        assert!(p.pick(None, &[first, second]).is_none());
    }
}
