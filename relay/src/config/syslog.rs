//! `[audit.syslog]`: audit lines also sent to a syslog server, RFC 5424
//! over TCP with octet-counting framing (RFC 6587), besides the file or
//! stdout. The raw section sits beside its validated type.

use serde::Deserialize;

use super::{ConfigError, Source};

/// `[audit.syslog]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSyslog {
    /// The syslog server's TCP address, "host:port".
    pub(super) address: String,
    /// Facility: "auth", "authpriv", "daemon", "local0" … "local7".
    #[serde(default = "default_facility")]
    pub(super) facility: String,
    /// APP-NAME of each message.
    #[serde(default = "default_app")]
    pub(super) app_name: String,
}

fn default_facility() -> String {
    "authpriv".into()
}
fn default_app() -> String {
    "gangway-relay".into()
}

/// The validated `[audit.syslog]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogConfig {
    pub address: String,
    /// The facility's number (RFC 5424 table 1).
    pub facility: u8,
    pub app_name: String,
}

impl SyslogConfig {
    pub(super) fn from_raw(raw: RawSyslog, src: &Source<'_>) -> Result<Self, ConfigError> {
        if raw
            .address
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(src.err(
                "audit.syslog.address",
                format!("{:?} is not host:port", raw.address),
            ));
        }
        let facility = match raw.facility.as_str() {
            "auth" => 4,
            "daemon" => 3,
            "authpriv" => 10,
            f => match f.strip_prefix("local").and_then(|n| n.parse::<u8>().ok()) {
                Some(n) if n <= 7 => 16 + n,
                _ => {
                    return Err(src.err(
                        "audit.syslog.facility",
                        format!("{f:?} is not auth, authpriv, daemon or local0 … local7"),
                    ))
                }
            },
        };
        // RFC 5424 APP-NAME: 1 to 48 printable US-ASCII characters.
        let app_ok = (1..=48).contains(&raw.app_name.len())
            && raw.app_name.bytes().all(|b| (33..=126).contains(&b));
        if !app_ok {
            return Err(src.err(
                "audit.syslog.app_name",
                "must be 1 to 48 printable ASCII characters without spaces",
            ));
        }
        Ok(SyslogConfig {
            address: raw.address,
            facility,
            app_name: raw.app_name,
        })
    }
}
