//! `[limits]`: the timeouts and caps that keep one client from holding the
//! relay down, validated into durations and counts.

use std::time::Duration;

use super::raw::RawLimits;
use super::{ConfigError, Source};

/// yamux's initial (and smallest) stream window, 256 KiB.
pub const BASE_STREAM_WINDOW: usize = 256 * 1024;

/// Streams yamux itself allows beyond `max_streams_per_session`: the relay
/// refuses the excess with a typed refusal, and those refused streams need
/// room to exist while the refusal is written (at the yamux limit yamux
/// would drop the whole session instead).
pub const STREAM_SLACK: usize = 16;

/// The validated `[limits]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    pub tls_handshake_timeout: Duration,
    pub request_header_timeout: Duration,
    pub http_idle_timeout: Duration,
    pub max_connections: usize,
    pub max_unauthenticated_per_address: usize,
    pub tcp_keepalive: Duration,
    pub max_streams_per_session: usize,
    pub max_sessions_per_subject: usize,
    /// Bytes one stream's receive window may grow to.
    pub stream_receive_window: usize,
}

/// The same values as `RawLimits::default()` (a unit test holds them
/// together), for relays built in code rather than from a file.
impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            tls_handshake_timeout: Duration::from_secs(10),
            request_header_timeout: Duration::from_secs(10),
            http_idle_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_unauthenticated_per_address: 64,
            tcp_keepalive: Duration::from_secs(60),
            max_streams_per_session: 100,
            max_sessions_per_subject: 8,
            stream_receive_window: 16 << 20,
        }
    }
}

impl LimitsConfig {
    /// Validates `[limits]`: every timeout from 1 s to an hour, every cap at
    /// least 1, the idle timeout no longer than the header timeout (hyper's
    /// header timer also runs while a keep-alive connection waits), and a
    /// stream window from 256 KiB to 1 GiB.
    pub(super) fn from_raw(raw: RawLimits, src: &Source<'_>) -> Result<Self, ConfigError> {
        let secs = |key: &str, v: u64| {
            if (1..=3600).contains(&v) {
                Ok(Duration::from_secs(v))
            } else {
                Err(src.err(
                    format!("limits.{key}"),
                    format!("{v} is not a number of seconds from 1 to 3600"),
                ))
            }
        };
        let count = |key: &str, v: u64, max: u64| {
            if (1..=max).contains(&v) {
                Ok(v as usize)
            } else {
                Err(src.err(
                    format!("limits.{key}"),
                    format!("{v} is not a number from 1 to {max}"),
                ))
            }
        };
        let header = secs(
            "request_header_timeout_secs",
            raw.request_header_timeout_secs,
        )?;
        let idle = secs("http_idle_timeout_secs", raw.http_idle_timeout_secs)?;
        if idle > header {
            return Err(src.err(
                "limits.http_idle_timeout_secs",
                format!(
                    "{} is longer than limits.request_header_timeout_secs ({}): hyper's header timer also runs while a keep-alive connection waits, so it would close first",
                    raw.http_idle_timeout_secs, raw.request_header_timeout_secs
                ),
            ));
        }
        let window_kib = raw.stream_receive_window_kib;
        if !(256..=1024 * 1024).contains(&window_kib) {
            return Err(src.err(
                "limits.stream_receive_window_kib",
                format!("{window_kib} is not a number of KiB from 256 (yamux's initial window) to 1048576 (1 GiB)"),
            ));
        }
        Ok(LimitsConfig {
            tls_handshake_timeout: secs(
                "tls_handshake_timeout_secs",
                raw.tls_handshake_timeout_secs,
            )?,
            request_header_timeout: header,
            http_idle_timeout: idle,
            max_connections: count("max_connections", raw.max_connections, 1_000_000)?,
            max_unauthenticated_per_address: count(
                "max_unauthenticated_per_address",
                raw.max_unauthenticated_per_address,
                1_000_000,
            )?,
            tcp_keepalive: secs("tcp_keepalive_secs", raw.tcp_keepalive_secs)?,
            max_streams_per_session: count(
                "max_streams_per_session",
                raw.max_streams_per_session,
                4096,
            )?,
            max_sessions_per_subject: count(
                "max_sessions_per_subject",
                raw.max_sessions_per_subject,
                1024,
            )?,
            stream_receive_window: window_kib as usize * 1024,
        })
    }

    /// Streams the relay's yamux allows on one session.
    pub fn mux_streams(&self) -> usize {
        self.max_streams_per_session + STREAM_SLACK
    }

    /// yamux's connection-wide receive window: every stream its initial
    /// 256 KiB, plus what lets one stream grow to `stream_receive_window`.
    /// Also the most one session can make the relay buffer.
    pub fn session_receive_window(&self) -> usize {
        self.mux_streams() * BASE_STREAM_WINDOW + (self.stream_receive_window - BASE_STREAM_WINDOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bound_a_session() {
        let src = Source {
            file: std::path::Path::new("t.toml"),
        };
        let l = LimitsConfig::from_raw(RawLimits::default(), &src).unwrap();
        assert_eq!(l, LimitsConfig::default());
        assert_eq!(l.max_streams_per_session, 100);
        // 116 streams × 256 KiB + (16 MiB − 256 KiB): about 45 MiB a session.
        assert_eq!(
            l.session_receive_window(),
            116 * 256 * 1024 + (16 << 20) - 256 * 1024
        );
    }
}
