//! Audit lines to a syslog server: RFC 5424 messages over TCP with
//! octet-counting framing (RFC 6587 §3.4.1), `LEN SP <PRI>1 TIMESTAMP
//! HOSTNAME APP-NAME PROCID MSGID - MSG`, MSG being the JSON audit line and
//! MSGID its event name.
//!
//! [`Syslog::send`] never blocks the caller: lines queue (up to
//! [`QUEUE`]) for one sender thread that connects, writes with a deadline
//! and reconnects after a failure (at most once a second); a line that
//! cannot be queued or sent is dropped, counted and logged ever more
//! rarely. The file or stdout copy is written regardless.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::SyslogConfig;

/// Lines waiting for the sender thread.
pub const QUEUE: usize = 4096;

const IO_TIMEOUT: Duration = Duration::from_secs(2);
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// RFC 5424 severities used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Warning = 4,
    Info = 6,
}

/// The syslog copy of the audit log.
pub struct Syslog {
    tx: SyncSender<Vec<u8>>,
    header: Header,
    dropped: Arc<AtomicU64>,
}

#[derive(Clone)]
struct Header {
    facility: u8,
    hostname: String,
    app_name: String,
    procid: String,
}

impl Syslog {
    /// Starts the sender thread for `cfg`.
    pub fn start(cfg: &SyslogConfig) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let address = cfg.address.clone();
        let d = dropped.clone();
        std::thread::Builder::new()
            .name("audit-syslog".into())
            .spawn(move || sender(&address, rx, &d))?;
        Ok(Self {
            tx,
            header: Header {
                facility: cfg.facility,
                hostname: hostname(),
                app_name: cfg.app_name.clone(),
                procid: std::process::id().to_string(),
            },
            dropped,
        })
    }

    /// Queues one audit line (`json`, without its newline) of `event`.
    pub fn send(&self, ts: &str, event: &str, severity: Severity, json: &[u8]) {
        let frame = frame(&self.header, ts, event, severity, json);
        match self.tx.try_send(frame) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                note_drop(&self.dropped, "syslog queue full");
            }
        }
    }
}

fn note_drop(dropped: &AtomicU64, why: &str) {
    let n = dropped.fetch_add(1, Ordering::Relaxed) + 1;
    if n.is_power_of_two() {
        tracing::warn!(dropped_so_far = n, "audit line not sent to syslog: {why}");
    }
}

/// One framed message.
fn frame(h: &Header, ts: &str, event: &str, severity: Severity, json: &[u8]) -> Vec<u8> {
    let pri = u16::from(h.facility) * 8 + severity as u16;
    let msgid = printable(event, 32);
    let mut msg = format!(
        "<{pri}>1 {ts} {} {} {} {msgid} - ",
        h.hostname, h.app_name, h.procid
    )
    .into_bytes();
    msg.extend_from_slice(json);
    let mut out = format!("{} ", msg.len()).into_bytes();
    out.extend_from_slice(&msg);
    out
}

/// `s` as an RFC 5424 header field: printable US-ASCII, at most `max`
/// characters, "-" when empty.
fn printable(s: &str, max: usize) -> String {
    let v: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if v.is_empty() {
        "-".into()
    } else {
        v
    }
}

fn hostname() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    printable(h.trim(), 255)
}

/// The sender thread: until every sender is gone.
fn sender(address: &str, rx: Receiver<Vec<u8>>, dropped: &AtomicU64) {
    let mut conn: Option<TcpStream> = None;
    let mut last_try: Option<Instant> = None;
    let mut reported = false;
    while let Ok(frame) = rx.recv() {
        for attempt in 0..2 {
            if conn.is_none() {
                if last_try.is_some_and(|t| t.elapsed() < RECONNECT_EVERY) && attempt == 0 {
                    break;
                }
                last_try = Some(Instant::now());
                conn = connect(address, &mut reported);
            }
            let Some(c) = conn.as_mut() else { break };
            match c.write_all(&frame).and_then(|_| c.flush()) {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(%address, error = %e, "syslog connection lost; reconnecting");
                    conn = None;
                    reported = false;
                    continue;
                }
            }
        }
        if conn.is_none() {
            note_drop(dropped, "syslog server unreachable");
        }
    }
}

fn connect(address: &str, reported: &mut bool) -> Option<TcpStream> {
    use std::net::ToSocketAddrs;
    let result = address
        .to_socket_addrs()
        .and_then(|mut a| a.next().ok_or_else(|| std::io::Error::other("no address")))
        .and_then(|a| TcpStream::connect_timeout(&a, IO_TIMEOUT));
    match result {
        Ok(s) => {
            let _ = s.set_write_timeout(Some(IO_TIMEOUT));
            let _ = s.set_nodelay(true);
            tracing::info!(%address, "sending audit lines to syslog");
            Some(s)
        }
        Err(e) => {
            if !*reported {
                tracing::warn!(%address, error = %e, "cannot reach the syslog server");
                *reported = true;
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_count_octets_and_name_the_event() {
        let h = Header {
            facility: 10,
            hostname: "relay1".into(),
            app_name: "gangway-relay".into(),
            procid: "42".into(),
        };
        let json = "{\"event\":\"auth_failed\",\"reason\":\"é\"}".as_bytes();
        let f = frame(
            &h,
            "2026-01-01T00:00:00.000Z",
            "auth_failed",
            Severity::Warning,
            json,
        );
        let text = String::from_utf8(f).unwrap();
        let (len, msg) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        assert!(msg
            .starts_with("<84>1 2026-01-01T00:00:00.000Z relay1 gangway-relay 42 auth_failed - {"));
        assert_eq!(printable("a b\nc", 32), "abc");
        assert_eq!(printable("", 32), "-");
    }
}
