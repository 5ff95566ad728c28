//! The sessions open on this relay, for the admin API: who, from where,
//! since when; and each session's hook to be ended from outside (a subject
//! lock). A session registers when it starts and is forgotten when its
//! [`Registered`] guard drops, however it ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// One open session, as the admin API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    pub id: String,
    pub subject: String,
    pub peer: String,
    pub agent: String,
    pub started_unix: u64,
}

struct Entry {
    info: SessionInfo,
    end: CancellationToken,
}

/// The registry.
#[derive(Default, Clone)]
pub struct Sessions(Arc<Mutex<HashMap<String, Entry>>>);

/// A session's place in the registry; its token is cancelled when the
/// session is to end (its subject was locked).
pub struct Registered {
    sessions: Sessions,
    id: String,
    pub end: CancellationToken,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.sessions.lock().remove(&self.id);
    }
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(&self, info: SessionInfo) -> Registered {
        let end = CancellationToken::new();
        let id = info.id.clone();
        self.lock().insert(
            id.clone(),
            Entry {
                info,
                end: end.clone(),
            },
        );
        Registered {
            sessions: self.clone(),
            id,
            end,
        }
    }

    /// Every open session, oldest first.
    pub fn list(&self) -> Vec<SessionInfo> {
        let mut v: Vec<SessionInfo> = self.lock().values().map(|e| e.info.clone()).collect();
        v.sort_by(|a, b| (a.started_unix, &a.id).cmp(&(b.started_unix, &b.id)));
        v
    }

    /// Ends every session of `subject`; how many there were.
    pub fn end_subject(&self, subject: &str) -> usize {
        let map = self.lock();
        let mut n = 0;
        for e in map.values().filter(|e| e.info.subject == subject) {
            e.end.cancel();
            n += 1;
        }
        n
    }
}

/// A session of `subject` for unit tests here and in `locks`.
#[cfg(test)]
pub(crate) fn info(id: &str, subject: &str) -> SessionInfo {
    SessionInfo {
        id: id.into(),
        subject: subject.into(),
        peer: "127.0.0.1:1".into(),
        agent: "t".into(),
        started_unix: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ending_a_subject_ends_only_its_sessions_and_guards_unregister() {
        let s = Sessions::default();
        let a = s.register(info("1", "alice"));
        let b = s.register(info("2", "bob"));
        assert_eq!(s.end_subject("alice"), 1);
        assert!(a.end.is_cancelled());
        assert!(!b.end.is_cancelled());
        drop(a);
        assert_eq!(s.list().len(), 1);
    }
}
