//! Who may hold a piece of the relay, and how much: connections in all,
//! connections not yet authenticated per client address, tunnel sessions
//! per subject. Each grant is a guard that gives its slot back on drop, so
//! a connection or session that ends for any reason (error, panic, abort)
//! frees what it held.
//!
//! The caps come from `[limits]`. Behind an L4 balancer that does not pass
//! the client's address on (no PROXY protocol), every connection comes from
//! the balancer's address: raise `max_unauthenticated_per_address` there.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::LimitsConfig;

/// The relay's admission counters.
pub struct Admission {
    connections: Arc<Semaphore>,
    unauthenticated: Arc<Counts<IpAddr>>,
    sessions: Arc<Counts<String>>,
    max_unauthenticated: usize,
    max_sessions: usize,
    refused: AtomicU64,
}

/// A count per key, entries removed at zero so the map holds only keys
/// that hold something.
struct Counts<K>(Mutex<HashMap<K, usize>>);

impl<K: std::hash::Hash + Eq + Clone> Counts<K> {
    fn lock(&self) -> MutexGuard<'_, HashMap<K, usize>> {
        // Nothing panics while holding it; recover rather than spread one.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(self: &Arc<Self>, key: &K, max: usize) -> Option<Slot<K>> {
        let mut map = self.lock();
        let n = map.entry(key.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            counts: self.clone(),
            key: key.clone(),
        })
    }

    fn get(&self, key: &K) -> usize {
        self.lock().get(key).copied().unwrap_or(0)
    }
}

/// One unit of a [`Counts`], given back on drop.
pub struct Slot<K: std::hash::Hash + Eq + Clone> {
    counts: Arc<Counts<K>>,
    key: K,
}

impl<K: std::hash::Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut map = self.counts.lock();
        if let Some(n) = map.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// A connection's place among those open at once.
pub type ConnectionPermit = OwnedSemaphorePermit;
/// A connection's place among its address's unauthenticated ones; dropped
/// when the connection makes its first authenticated request.
pub type Unauthenticated = Slot<IpAddr>;
/// A tunnel session's place among its subject's.
pub type SessionSlot = Slot<String>;

impl Admission {
    pub fn new(limits: &LimitsConfig) -> Self {
        Self {
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            unauthenticated: Arc::new(Counts(Mutex::new(HashMap::new()))),
            sessions: Arc::new(Counts(Mutex::new(HashMap::new()))),
            max_unauthenticated: limits.max_unauthenticated_per_address,
            max_sessions: limits.max_sessions_per_subject,
            refused: AtomicU64::new(0),
        }
    }

    /// A place for one more connection, unless `max_connections` are open.
    pub fn connection(&self) -> Option<ConnectionPermit> {
        self.connections.clone().try_acquire_owned().ok()
    }

    /// A place for one more unauthenticated connection from `ip`.
    pub fn unauthenticated(&self, ip: IpAddr) -> Option<Unauthenticated> {
        self.unauthenticated.take(&ip, self.max_unauthenticated)
    }

    /// Unauthenticated connections from `ip` now.
    pub fn unauthenticated_from(&self, ip: IpAddr) -> usize {
        self.unauthenticated.get(&ip)
    }

    /// A place for one more session of `subject`.
    pub fn session(&self, subject: &str) -> Option<SessionSlot> {
        self.sessions.take(&subject.to_string(), self.max_sessions)
    }

    /// Counts a refused connection; true when this one should be logged
    /// (the 1st, 2nd, 4th, 8th … so a flood cannot flood the log too).
    pub fn note_refusal(&self) -> (u64, bool) {
        let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        (n, n.is_power_of_two())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(unauth: usize, sessions: usize, conns: usize) -> LimitsConfig {
        LimitsConfig {
            max_unauthenticated_per_address: unauth,
            max_sessions_per_subject: sessions,
            max_connections: conns,
            ..LimitsConfig::default()
        }
    }

    #[test]
    fn per_address_slots_are_capped_and_given_back() {
        let a = Admission::new(&limits(2, 1, 10));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = a.unauthenticated(ip).unwrap();
        let _s2 = a.unauthenticated(ip).unwrap();
        assert!(a.unauthenticated(ip).is_none());
        assert!(
            a.unauthenticated(other).is_some(),
            "another address has its own cap"
        );
        drop(s1);
        assert_eq!(a.unauthenticated_from(ip), 1);
        assert!(a.unauthenticated(ip).is_some());
    }

    #[test]
    fn sessions_per_subject_and_connections_are_capped() {
        let a = Admission::new(&limits(1, 2, 2));
        let s = [a.session("alice").unwrap(), a.session("alice").unwrap()];
        assert!(a.session("alice").is_none());
        assert!(a.session("bob").is_some());
        drop(s);
        assert!(a.session("alice").is_some());
        let c = [a.connection().unwrap(), a.connection().unwrap()];
        assert!(a.connection().is_none());
        drop(c);
        assert!(a.connection().is_some());
    }

    #[test]
    fn refusals_are_logged_ever_more_rarely() {
        let a = Admission::new(&LimitsConfig::default());
        let logged: Vec<u64> = (0..20)
            .filter_map(|_| {
                let (n, log) = a.note_refusal();
                log.then_some(n)
            })
            .collect();
        assert_eq!(logged, [1, 2, 4, 8, 16]);
    }
}
