//! The byte path shared by the Gangway agent and relay.
//!
//! ```text
//! TCP ─ TLS ─ WebSocket ─▶ [`handshake`] ─▶ [`WsByteStream`] ─▶ [`mux`] (yamux)
//!                                                            ├─ control stream ([`control`])
//!                                                            └─ data streams ─▶ [`duplex::splice`]
//! ```
//!
//! Nothing here knows about tokens, services or policy; that lives in the
//! agent and relay crates. Protocol bytes come from `gangway-wire`.
// One call needs `unsafe`: `heap::tune` (mallopt); nothing else may.
#![deny(unsafe_code)]

pub mod control;
pub mod duplex;
pub mod framed;
pub mod handshake;
pub mod heap;
pub mod mux;
pub mod rewind;
pub mod socket;
pub mod ws;

pub use mux::{MuxError, Opener, Stream};
pub use ws::WsByteStream;
