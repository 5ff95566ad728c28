//! Subject locks: an admin locks a subject, and every relay ends that
//! subject's sessions and refuses it (new sessions, token refreshes) until
//! it is unlocked.
//!
//! The lock lives in Redis when `[redis]` is set (checked at each session
//! start and token refresh, and announced on a channel so every relay ends
//! the sessions it holds at once); each relay also keeps the locks it has
//! seen, which are what it goes by while Redis is out of reach. Without
//! Redis a lock holds on the relay that took it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::metrics::Metrics;
use crate::sessions::Sessions;
use crate::shared::{LockInfo, Notice, Shared};

/// The locks this relay knows, and the way to the others.
pub struct Locks {
    known: Arc<Mutex<HashMap<String, LockInfo>>>,
    shared: Option<Arc<Shared>>,
}

/// What a lock or unlock did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LockOutcome {
    /// Sessions this relay ended.
    pub ended_here: usize,
    /// Every relay was told (false: Redis unreachable or not configured).
    pub shared: bool,
}

fn lock_map(m: &Mutex<HashMap<String, LockInfo>>) -> MutexGuard<'_, HashMap<String, LockInfo>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Locks {
    pub fn new(shared: Option<Arc<Shared>>) -> Self {
        Self {
            known: Arc::default(),
            shared,
        }
    }

    /// The lock on `subject`, if any: Redis's word when it answers, else
    /// what this relay knows.
    pub async fn lock_of(&self, subject: &str) -> Option<LockInfo> {
        if let Some(shared) = &self.shared {
            if let Some(answer) = shared.lock_of(subject).await {
                let mut known = lock_map(&self.known);
                match &answer {
                    Some(l) => known.insert(subject.to_string(), l.clone()),
                    None => known.remove(subject),
                };
                return answer;
            }
        }
        lock_map(&self.known).get(subject).cloned()
    }

    /// Every lock: Redis's list when it answers, else this relay's.
    pub async fn list(&self) -> Vec<(String, LockInfo)> {
        if let Some(shared) = &self.shared {
            if let Some(mut v) = shared.locks().await {
                v.sort_by(|a, b| a.0.cmp(&b.0));
                return v;
            }
        }
        let mut v: Vec<_> = lock_map(&self.known)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Locks `subject`: here at once, then on every relay through Redis.
    pub async fn lock(
        &self,
        subject: &str,
        info: LockInfo,
        sessions: &Sessions,
        metrics: &Metrics,
    ) -> LockOutcome {
        lock_map(&self.known).insert(subject.to_string(), info.clone());
        let ended_here = sessions.end_subject(subject);
        metrics.locked_sessions_ended.inc_by(ended_here as u64);
        let shared = match &self.shared {
            Some(s) => s.set_lock(subject, Some(&info)).await,
            None => false,
        };
        LockOutcome { ended_here, shared }
    }

    /// Unlocks `subject` here and on every relay.
    pub async fn unlock(&self, subject: &str) -> LockOutcome {
        lock_map(&self.known).remove(subject);
        let shared = match &self.shared {
            Some(s) => s.set_lock(subject, None).await,
            None => false,
        };
        LockOutcome {
            ended_here: 0,
            shared,
        }
    }

    /// What to do with a notice from another relay (or this one's echo).
    pub fn on_notice(
        known: &Arc<Mutex<HashMap<String, LockInfo>>>,
        sessions: &Sessions,
        metrics: &Metrics,
        n: Notice,
    ) {
        match (n.op.as_str(), n.lock) {
            ("lock", Some(info)) => {
                lock_map(known).insert(n.subject.clone(), info);
                let ended = sessions.end_subject(&n.subject);
                metrics.locked_sessions_ended.inc_by(ended as u64);
                if ended > 0 {
                    tracing::warn!(subject = %n.subject, ended, "subject locked: ending its sessions");
                }
            }
            ("unlock", _) => {
                lock_map(known).remove(&n.subject);
            }
            (op, _) => tracing::debug!(op, "ignoring a lock notice"),
        }
    }

    /// The map notices update (for the follower task).
    pub fn known(&self) -> Arc<Mutex<HashMap<String, LockInfo>>> {
        self.known.clone()
    }

    pub fn shared(&self) -> Option<&Arc<Shared>> {
        self.shared.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::info;

    fn lock() -> LockInfo {
        LockInfo {
            by: "admin".into(),
            reason: "stolen laptop".into(),
            at_unix: 1,
        }
    }

    #[tokio::test]
    async fn without_redis_a_lock_holds_here_and_ends_the_subjects_sessions() {
        let locks = Locks::new(None);
        let sessions = Sessions::default();
        let metrics = Metrics::new();
        let alice = sessions.register(info("1", "alice"));
        let bob = sessions.register(info("2", "bob"));
        let out = locks.lock("alice", lock(), &sessions, &metrics).await;
        assert_eq!(out.ended_here, 1);
        assert!(!out.shared, "no Redis: this relay only");
        assert!(alice.end.is_cancelled() && !bob.end.is_cancelled());
        assert_eq!(locks.lock_of("alice").await, Some(lock()));
        assert_eq!(locks.lock_of("bob").await, None);
        assert_eq!(locks.list().await.len(), 1);
        locks.unlock("alice").await;
        assert_eq!(locks.lock_of("alice").await, None);
    }

    #[test]
    fn notices_from_other_relays_lock_and_unlock() {
        let locks = Locks::new(None);
        let sessions = Sessions::default();
        let metrics = Metrics::new();
        let alice = sessions.register(info("1", "alice"));
        let notice = |op: &str, lock: Option<LockInfo>| Notice {
            op: op.into(),
            subject: "alice".into(),
            lock,
            ..Default::default()
        };
        Locks::on_notice(
            &locks.known(),
            &sessions,
            &metrics,
            notice("lock", Some(lock())),
        );
        assert!(alice.end.is_cancelled());
        assert!(lock_map(&locks.known).contains_key("alice"));
        // A lock notice without the lock is ignored, an unlock lifts it.
        Locks::on_notice(&locks.known(), &sessions, &metrics, notice("unlock", None));
        assert!(!lock_map(&locks.known).contains_key("alice"));
        Locks::on_notice(&locks.known(), &sessions, &metrics, notice("lock", None));
        assert!(!lock_map(&locks.known).contains_key("alice"));
    }
}
