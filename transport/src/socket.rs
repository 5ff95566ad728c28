//! The TCP connection under TLS, read through a buffer.
//!
//! rustls pulls ciphertext from its transport 4 KiB at a time, so a 16 KiB
//! record costs four or five `recv` calls, each of which also makes the
//! kernel send an ACK. Reading the socket through a 64 KiB buffer turns that
//! into one `recv` per 64 KiB (measured on the relay during an upload: about
//! four times fewer `recv` calls); writes pass straight through, vectored.

use tokio::io::BufReader;
use tokio::net::TcpStream;

/// Bytes read from the socket at once.
pub const READ_BUF: usize = 64 * 1024;

/// Plaintext rustls may hold before it must write: above one 64 KiB
/// WebSocket message, so a message is encrypted and written in one go
/// instead of two (rustls' default limit is 64 KiB).
pub const TLS_BUFFER_LIMIT: usize = 256 * 1024;

/// A TCP stream whose reads go through a [`READ_BUF`] buffer.
pub type BufferedTcp = BufReader<TcpStream>;

/// Wraps `tcp` for use under TLS.
pub fn buffered(tcp: TcpStream) -> BufferedTcp {
    BufReader::with_capacity(READ_BUF, tcp)
}
