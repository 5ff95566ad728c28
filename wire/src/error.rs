//! The one error type of the wire protocol.

/// Why a peer's bytes are not a valid Gangway message.
///
/// A decoder returns this when the bytes it was given can never become a
/// valid message, however many more arrive. The peer sent garbage or speaks
/// another protocol, so retrying on the same connection cannot help; the
/// caller should close the stream (or the session, for the handshake and the
/// control channel).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The handshake did not start with [`MAGIC`](crate::MAGIC): the peer is
    /// not a Gangway agent or relay.
    #[error("bad magic: peer is not speaking the Gangway protocol")]
    BadMagic,
    /// The peer's protocol version is one this side cannot speak. Decoders
    /// never return this (a [`Hello`](crate::Hello) of any version decodes);
    /// it is for callers that act on the version.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// A control frame's type byte is not one this version knows.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// A handshake reply's status byte is neither welcome nor unsupported.
    #[error("unknown handshake status {0}")]
    UnknownStatus(u8),
    /// A length field is over the limit for what it measures.
    #[error("{what} is {len} bytes, over the limit of {max}")]
    TooLong {
        /// What the length measures, e.g. "agent name".
        what: &'static str,
        /// The length the peer announced.
        len: usize,
        /// The largest length allowed.
        max: usize,
    },
    /// A text field is not valid UTF-8.
    #[error("{0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
    /// A service name is empty or has characters outside `[a-z0-9._-]`.
    #[error("invalid service name {0:?}: expected 1 to 64 characters of a-z, 0-9, '.', '_', '-'")]
    InvalidServiceName(String),
    /// Any other structural fault, described by the text.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
}
