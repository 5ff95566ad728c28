//! The Gangway agent: local listeners on 127.0.0.1 whose connections travel
//! as streams inside one authenticated, multiplexed `wss://` session.
//!
//! ```text
//! git ─TCP─▶ listener ──open stream──▶ Tunnel (supervisor: connect, reconnect)
//!                                          └─ Session: TLS ─ WebSocket ─ yamux ─▶ relay
//! ```
//!
//! Sign-in (`signin`) discovers the identity provider from the relay URL,
//! runs the browser or device flow, and keeps tokens in the OS keychain
//! (`keychain`), refreshing them ahead of expiry over the tunnel's control
//! channel.
//!
//! [`agent::Agent`] is the running agent (one environment at a time,
//! switched on request, with a [`status::Snapshot`] of everything it does);
//! the CLI (`gangway up`, in the `gangway-cli` crate) and the tray app both
//! drive one, and the local control API ([`control`]) lets
//! `gangway status|login|env use` act on whichever runs. Both front ends
//! are thin over this library, which has no server, CLI parser or logging
//! setup of its own.
//!
//! [`doctor`] checks each piece the agent relies on (PASS/WARN/FAIL with a
//! fix) and builds the redacted bug report ([`redact`]); the CLI prints
//! them (`gangway doctor`, `gangway bugreport`) and the tray copies them.
// Unsafe only in the macOS policy reader (CFPreferences, a C API).
#![cfg_attr(not(target_os = "macos"), forbid(unsafe_code))]
#![cfg_attr(target_os = "macos", deny(unsafe_code))]

pub mod agent;
pub mod config;
pub mod control;
pub mod doctor;
pub mod door;
pub mod dpop;
pub mod envs;
pub mod error;
pub mod keychain;
pub mod listener;
pub mod logfile;
pub mod net;
pub mod notices;
pub mod pipelined;
pub mod plain;
pub mod policy;
pub mod redact;
pub mod relay_api;
pub mod session;
pub mod signin;
pub mod status;
pub mod tls;
pub mod token;
pub mod tunnel;
pub mod up;

pub use error::AgentError;
