//! Launchers for the real peers Gangway's end-to-end tests run against.
//!
//! Every launcher binds port 0 (or asks the peer to), returns the address it
//! got, and stops its process when dropped. Nothing here kills by name.

pub mod gangway;
pub mod peers;
pub mod world;

/// True when running under CI (`CI=true`): a missing peer is then a failure.
pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}
