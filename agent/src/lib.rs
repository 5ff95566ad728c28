//! The Gangway agent: local listeners on 127.0.0.1 whose connections travel
//! as streams inside one authenticated, multiplexed `wss://` session.
//!
//! ```text
//! git ─TCP─▶ listener ──open stream──▶ Tunnel (supervisor: connect, reconnect)
//!                                          └─ Session: TLS ─ WebSocket ─ yamux ─▶ relay
//! ```
//!
//! The CLI (`gangway`) and, later, the tray app are thin over this library.
#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod listener;
pub mod relay_api;
pub mod session;
pub mod tls;
pub mod token;
pub mod tunnel;
pub mod up;

pub use error::AgentError;
