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
