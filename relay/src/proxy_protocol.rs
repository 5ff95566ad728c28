//! The PROXY protocol v2 header a trusted balancer (HAProxy's
//! `send-proxy-v2`) sends before anything else on a connection, naming the
//! client it accepted the connection from.
//!
//! Only connections from `[proxy_protocol] trusted` sources are read for
//! one (never auto-detected: an untrusted client could otherwise claim any
//! address), and from those a header is required, within
//! `header_timeout_secs`, before TLS. The header is read exactly (16 bytes,
//! then the length they announce, at most [`MAX_HEADER`]), so no byte of
//! the TLS handshake behind it is consumed. The bytes are checked by `ppp`
//! ([`parse`], pure, fuzzed by `fuzz/fuzz_targets/proxy_header.rs`):
//!
//! - `LOCAL` (HAProxy's health checks): served as a direct connection;
//! - `PROXY` over TCP (IPv4 or IPv6): the client's address becomes the
//!   connection's peer, for audit lines, per-address caps and limits;
//! - `PROXY` naming no address (`UNSPEC`, or a unix socket): the
//!   connection is served as a direct one, as the spec says to;
//! - anything else (UDP, a bad signature or version, an address block
//!   that does not fit): refused.

use std::net::SocketAddr;
use std::time::Duration;

use ppp::v2::{Addresses, Command, Header, ParseError, Protocol};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The fixed part of a v2 header: signature, version/command,
/// family/protocol, length.
pub const FIXED: usize = 16;

/// Longest header accepted: the fixed part, the largest address block
/// (unix, 216 bytes) and room for TLVs HAProxy may add (unique id, SSL
/// details). A longer one is refused rather than buffered.
pub const MAX_HEADER: usize = 1024;

/// What the header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxied {
    /// The balancer itself (a health check): the socket's peer is the peer.
    Local,
    /// A client's connection, from this address.
    Client(SocketAddr),
}

/// Why a trusted source's connection is refused.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("no PROXY v2 header within {0:?}")]
    Timeout(Duration),
    #[error("connection closed or failed before a whole PROXY v2 header: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a PROXY v2 header: {0}")]
    Invalid(String),
    #[error("PROXY v2 header announces {0} bytes, more than the {MAX_HEADER} accepted")]
    TooLong(usize),
    #[error("PROXY v2 header for a {0} connection; only TCP is served")]
    Unsupported(&'static str),
}

/// Checks a whole header: `Ok(None)` when `buf` holds only its start.
/// Never reads past the length the header announces.
pub fn parse(buf: &[u8]) -> Result<Option<(Proxied, usize)>, HeaderError> {
    if let Some(len) = announced_len(buf) {
        if len > MAX_HEADER {
            return Err(HeaderError::TooLong(len));
        }
    }
    let header = match Header::try_from(buf) {
        Ok(h) => h,
        Err(ParseError::Incomplete(_) | ParseError::Partial(..)) => return Ok(None),
        Err(e) => return Err(HeaderError::Invalid(e.to_string())),
    };
    let used = header.len();
    let proxied = match (header.command, header.protocol, header.addresses) {
        (Command::Local, _, _) => Proxied::Local,
        (Command::Proxy, Protocol::Datagram, _) => return Err(HeaderError::Unsupported("UDP")),
        (Command::Proxy, _, Addresses::IPv4(a)) => {
            Proxied::Client(SocketAddr::from((a.source_address, a.source_port)))
        }
        (Command::Proxy, _, Addresses::IPv6(a)) => {
            Proxied::Client(SocketAddr::from((a.source_address, a.source_port)))
        }
        (Command::Proxy, _, Addresses::Unspecified | Addresses::Unix(_)) => Proxied::Local,
    };
    Ok(Some((proxied, used)))
}

/// The whole header's length, once its fixed part is there.
fn announced_len(buf: &[u8]) -> Option<usize> {
    let len = buf.get(14..16)?;
    Some(FIXED + u16::from_be_bytes([len[0], len[1]]) as usize)
}

/// Reads the header from `io` within `timeout`, exactly its bytes.
pub async fn read_header<R>(io: &mut R, timeout: Duration) -> Result<Proxied, HeaderError>
where
    R: AsyncRead + Unpin,
{
    tokio::time::timeout(timeout, read_exact_header(io))
        .await
        .map_err(|_| HeaderError::Timeout(timeout))?
}

async fn read_exact_header<R>(io: &mut R) -> Result<Proxied, HeaderError>
where
    R: AsyncRead + Unpin,
{
    let mut buf = vec![0u8; FIXED];
    io.read_exact(&mut buf).await?;
    // The signature and version are checked before waiting for more.
    parse(&buf)?;
    let len = announced_len(&buf).unwrap_or(FIXED);
    buf.resize(len, 0);
    io.read_exact(&mut buf[FIXED..]).await?;
    match parse(&buf)? {
        Some((proxied, used)) if used == buf.len() => Ok(proxied),
        Some(_) | None => Err(HeaderError::Invalid(
            "length does not match the header".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::v2::{Builder, Command, Protocol, Version};

    fn header(cmd: Command, proto: Protocol, addrs: impl Into<Addresses>) -> Vec<u8> {
        Builder::with_addresses(Version::Two | cmd, proto, addrs)
            .build()
            .unwrap()
    }

    fn v4() -> (SocketAddr, SocketAddr) {
        (
            "127.0.0.2:40000".parse().unwrap(),
            "127.0.0.1:8443".parse().unwrap(),
        )
    }

    #[test]
    fn proxy_tcp4_and_tcp6_name_the_client() {
        let h = header(Command::Proxy, Protocol::Stream, v4());
        assert_eq!(parse(&h).unwrap(), Some((Proxied::Client(v4().0), h.len())));
        let six: (SocketAddr, SocketAddr) = (
            "[2001:db8::7]:5000".parse().unwrap(),
            "[::1]:443".parse().unwrap(),
        );
        let h = header(Command::Proxy, Protocol::Stream, six);
        assert_eq!(parse(&h).unwrap(), Some((Proxied::Client(six.0), h.len())));
    }

    #[test]
    fn local_and_unspecified_are_direct_and_udp_is_refused() {
        let h = header(
            Command::Local,
            Protocol::Unspecified,
            Addresses::Unspecified,
        );
        assert_eq!(parse(&h).unwrap(), Some((Proxied::Local, h.len())));
        let h = header(
            Command::Proxy,
            Protocol::Unspecified,
            Addresses::Unspecified,
        );
        assert_eq!(parse(&h).unwrap(), Some((Proxied::Local, h.len())));
        let h = header(Command::Proxy, Protocol::Datagram, v4());
        assert!(matches!(parse(&h), Err(HeaderError::Unsupported("UDP"))));
    }

    #[test]
    fn every_prefix_is_incomplete_and_garbage_is_refused() {
        let h = header(Command::Proxy, Protocol::Stream, v4());
        for n in 0..h.len() {
            assert!(parse(&h[..n]).unwrap().is_none(), "prefix of {n}");
        }
        // A TLS ClientHello, or PROXY v1 text, where v2 is required.
        assert!(parse(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03").is_err());
        assert!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n").is_err());
        // Version 1 in the v2 signature.
        let mut bad = h.clone();
        bad[12] = 0x11;
        assert!(parse(&bad).is_err());
        // An address block shorter than its family needs.
        let mut bad = h.clone();
        bad[14..16].copy_from_slice(&4u16.to_be_bytes());
        assert!(parse(&bad).is_err());
    }

    #[test]
    fn an_overlong_header_is_refused_before_it_is_read() {
        let mut h = header(Command::Proxy, Protocol::Stream, v4());
        h[14..16].copy_from_slice(&2000u16.to_be_bytes());
        assert!(matches!(
            parse(&h[..FIXED]),
            Err(HeaderError::TooLong(2016))
        ));
    }

    /// The fuzz corpus of `proxy_header` (`fuzz/corpus/proxy_header`), as
    /// regression tests: no input may panic or claim more than it holds.
    #[test]
    fn fuzz_corpus_replays_without_panic() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/proxy_header");
        let mut whole = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let bytes = std::fs::read(e.unwrap().path()).unwrap();
            if let Ok(Some((_, used))) = parse(&bytes) {
                assert!(used <= bytes.len());
                whole += 1;
            }
        }
        assert!(whole >= 3, "the seeds in {} parse", dir.display());
    }

    #[tokio::test]
    async fn reads_exactly_the_header_and_leaves_the_rest() {
        let mut bytes = header(Command::Proxy, Protocol::Stream, v4());
        bytes.extend_from_slice(b"\x16\x03\x01 client hello");
        let mut io = std::io::Cursor::new(bytes);
        let got = read_header(&mut io, Duration::from_secs(1)).await.unwrap();
        assert_eq!(got, Proxied::Client(v4().0));
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"\x16\x03\x01 client hello");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_or_short_source_is_refused() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let h = header(Command::Proxy, Protocol::Stream, v4());
        use tokio::io::AsyncWriteExt;
        client.write_all(&h[..10]).await.unwrap();
        let e = read_header(&mut server, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, HeaderError::Timeout(_)), "{e}");
        drop(client);
        let e = read_header(&mut server, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, HeaderError::Io(_)), "{e}");
    }
}
