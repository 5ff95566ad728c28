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
//! The CLI (`gangway`) and, later, the tray app are thin over this library.
#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod keychain;
pub mod listener;
pub mod relay_api;
pub mod session;
pub mod signin;
pub mod tls;
pub mod token;
pub mod tunnel;
pub mod up;

pub use error::AgentError;
