//! Gangway's benchmark harness.
//!
//! Three binaries share this library:
//!
//! - `gangway-bench` measures, in one run on loopback, the same workloads
//!   three ways and prints a markdown table:
//!
//!   ```text
//!   direct    client ───────────────────────────────────────────────▶ upstream
//!   gangway   client ─▶ gangway up ═ TLS WebSocket (yamux) ═▶ gangway-relay ─▶ upstream
//!   wstunnel  client ─▶ wstunnel client ═ wss (one per TCP conn) ═▶ wstunnel server ─▶ upstream
//!   ```
//!
//!   Upstreams are real: nginx (a small static file, for wrk), an iperf3
//!   server (bulk), an in-process echo server (connection rate, held
//!   connections), and lighttpd running `git http-backend` over a
//!   generated 200 MiB repository of random blobs (`git clone`).
//! - `sessionbench` opens real sessions (TLS, WebSocket, token, yamux)
//!   by the thousand against a release relay: memory and CPU per idle
//!   session and per active stream, and HTTP requests per second through
//!   HAProxy + 2 relays vs 1 relay ([`sessions`]).
//! - `muxbench` compares the two multiplexers the design allows (yamux and
//!   h2) over one real TLS loopback connection carrying a WebSocket used as
//!   a byte stream, exactly as agent and relay do.
//!
//! This is a harness, not a product library: errors are `anyhow`, and every
//! process it starts is owned by a [`procs::Proc`] that stops it on drop.
#![forbid(unsafe_code)]

pub mod git;
pub mod load;
pub mod machine;
pub mod mux;
pub mod paths;
pub mod pki;
pub mod procs;
pub mod report;
pub mod sessions;
pub mod tunnel_client;
pub mod upstream;
