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
mod stream;
pub mod ws;

pub use mux::{MuxError, Opener, Stream};
pub use ws::WsByteStream;

/// Implements `tokio::io::AsyncWrite` for a wrapper whose writes all go to
/// one field, forwarding every method (vectored writes included, so a
/// writer above that gathers buffers keeps doing so):
///
/// ```ignore
/// forward_async_write!([S: tokio::io::AsyncWrite + Unpin] Rewind<S>, inner);
/// forward_async_write!([] Watched, inner);
/// ```
///
/// The wrapper and its field must be `Unpin`.
#[macro_export]
macro_rules! forward_async_write {
    ([$($generics:tt)*] $ty:ty, $field:ident) => {
        impl<$($generics)*> ::tokio::io::AsyncWrite for $ty {
            fn poll_write(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                buf: &[u8],
            ) -> ::std::task::Poll<::std::io::Result<usize>> {
                ::tokio::io::AsyncWrite::poll_write(::std::pin::Pin::new(&mut self.$field), cx, buf)
            }

            fn poll_flush(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                ::tokio::io::AsyncWrite::poll_flush(::std::pin::Pin::new(&mut self.$field), cx)
            }

            fn poll_shutdown(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                ::tokio::io::AsyncWrite::poll_shutdown(::std::pin::Pin::new(&mut self.$field), cx)
            }

            fn poll_write_vectored(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                bufs: &[::std::io::IoSlice<'_>],
            ) -> ::std::task::Poll<::std::io::Result<usize>> {
                ::tokio::io::AsyncWrite::poll_write_vectored(::std::pin::Pin::new(&mut self.$field), cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                ::tokio::io::AsyncWrite::is_write_vectored(&self.$field)
            }
        }
    };
}
