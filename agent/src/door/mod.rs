//! The local door: who may use the agent's listeners on 127.0.0.1.
//!
//! Whatever reaches a listener acts as the signed-in developer (the relay
//! vouches for that identity to Bitbucket and Confluence), so every
//! accepted connection and every HTTP request is checked here before a
//! byte goes into the tunnel. A refusal is logged (naming the caller and
//! the reason) and remembered for `gangway status` and the status window.
//!
//! One [`Door`] per agent process, shared by every listener of every
//! environment.
//!
//! Rooms: [`peer`] asks the kernel which uid owns a caller's socket and
//! admits or refuses it ([`Door::admit`]); [`listen`] keeps listeners on
//! loopback unless the user allows the network in so many words; [`http`]
//! the gate for `http` services (Host, Origin, the local credential, the
//! one-time URL); [`secrets`] the local secrets it checks.

pub mod http;
pub mod listen;
pub mod peer;
pub mod secrets;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};

/// A caller the door turned away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedCaller {
    /// Unix seconds.
    pub at: u64,
    /// The service whose listener refused it.
    pub service: String,
    /// Who it was, as far as the door could tell: "uid 65534 (nobody)",
    /// "a web page at http://rebind.evil.example".
    pub caller: String,
    /// Why, in plain words.
    pub reason: String,
}

/// What the door has done, for the status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoorSnapshot {
    /// Callers refused since the agent started.
    pub refused: u64,
    pub last_refused: Option<RefusedCaller>,
    /// The only local user the listeners serve: "alice (uid 1000)".
    #[serde(default)]
    pub owner: String,
    /// Whether each caller's uid is checked on this platform.
    #[serde(default)]
    pub uid_checked: bool,
    /// Listeners open to the network (allowed with
    /// `--allow-network-listen`), each as the warning to show.
    #[serde(default)]
    pub open_to_network: Vec<String>,
}

impl DoorSnapshot {
    /// "Local door: only alice (uid 1000) on this computer can use these ports".
    pub fn guard_line(&self) -> String {
        if !self.uid_checked {
            return "Local door: this platform does not check which local user connects".into();
        }
        if self.open_to_network.is_empty() {
            format!(
                "Local door: only {} on this computer can use these ports",
                self.owner
            )
        } else {
            format!(
                "Local door: only {} on this computer, and anyone on the network for the \
                 listeners open to it",
                self.owner
            )
        }
    }
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct Door {
    refused: AtomicU64,
    last_refused: Mutex<Option<RefusedCaller>>,
    owner: OnceLock<String>,
    open_to_network: Mutex<Vec<String>>,
    /// The git secret, the browser cookie and one-time tokens.
    secrets: secrets::LocalSecrets,
}

impl Door {
    pub fn new() -> Self {
        Self::default()
    }

    /// The local secrets the HTTP gate checks.
    pub fn secrets(&self) -> &secrets::LocalSecrets {
        &self.secrets
    }

    /// Records (and logs) a refused caller.
    pub fn refuse(&self, service: &str, caller: &str, reason: &str) {
        tracing::warn!(service, caller, "local caller refused: {reason}");
        self.refused.fetch_add(1, Ordering::Relaxed);
        *self
            .last_refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(RefusedCaller {
            at: crate::signin::now_unix(),
            service: service.to_owned(),
            caller: caller.to_owned(),
            reason: reason.to_owned(),
        });
    }

    /// Replaces the warnings about listeners open to the network (one
    /// environment's listeners at a time).
    pub fn set_open_to_network(&self, warnings: Vec<String>) {
        *self
            .open_to_network
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = warnings;
    }

    pub fn snapshot(&self) -> DoorSnapshot {
        DoorSnapshot {
            owner: self
                .owner
                .get_or_init(|| peer::user_label(peer::own_uid()))
                .clone(),
            uid_checked: peer::UID_CHECKED,
            open_to_network: self
                .open_to_network
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            refused: self.refused.load(Ordering::Relaxed),
            last_refused: self
                .last_refused
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_refusal_is_kept_and_counted() {
        let door = Door::new();
        assert_eq!(door.snapshot().refused, 0);
        assert_eq!(door.snapshot().last_refused, None);
        door.refuse("bitbucket", "uid 65534", "another user's connection");
        door.refuse("confluence", "a web page", "Host is not local");
        let s = door.snapshot();
        assert_eq!(s.refused, 2);
        let last = s.last_refused.unwrap();
        assert_eq!(last.service, "confluence");
        assert_eq!(last.reason, "Host is not local");
    }
}
