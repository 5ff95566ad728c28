//! Running behind a balancer: `[proxy_protocol]` (which sources may send a
//! PROXY protocol v2 header, and how long they have to send it) and
//! `[drain]` (how long a draining relay waits for its streams). Raw and
//! validated forms side by side, so this section stays apart from the
//! others in `raw.rs`.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::{ConfigError, Source};

/// `[proxy_protocol]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawProxyProtocol {
    /// Addresses or CIDRs (e.g. "10.0.0.5", "10.0.0.0/24") of balancers
    /// that send a PROXY protocol v2 header first on every connection. A
    /// connection from one of them without a valid header is refused; a
    /// connection from anywhere else is never read for one. Empty: off.
    pub(super) trusted: Vec<String>,
    /// Seconds a trusted source has to send the whole header.
    pub(super) header_timeout_secs: u64,
}

impl Default for RawProxyProtocol {
    fn default() -> Self {
        Self {
            trusted: Vec::new(),
            header_timeout_secs: 5,
        }
    }
}

/// `[drain]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDrain {
    /// Seconds a draining relay (SIGTERM, SIGINT) lets open streams run
    /// after telling every session goodbye; then everything is closed.
    pub(super) deadline_secs: u64,
}

impl Default for RawDrain {
    fn default() -> Self {
        Self { deadline_secs: 30 }
    }
}

/// The validated `[proxy_protocol]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProtocolConfig {
    /// Sources whose connections start with a PROXY v2 header.
    pub trusted: Vec<IpNet>,
    pub header_timeout: Duration,
}

impl Default for ProxyProtocolConfig {
    fn default() -> Self {
        Self {
            trusted: Vec::new(),
            header_timeout: Duration::from_secs(5),
        }
    }
}

impl ProxyProtocolConfig {
    /// True when a connection from `ip` must start with a PROXY header.
    /// An IPv4-mapped IPv6 address counts as the IPv4 one.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    pub(super) fn from_raw(raw: RawProxyProtocol, src: &Source<'_>) -> Result<Self, ConfigError> {
        let trusted = raw
            .trusted
            .iter()
            .enumerate()
            .map(|(i, s)| {
                parse_net(s).ok_or_else(|| {
                    src.err(
                        format!("proxy_protocol.trusted[{i}]"),
                        format!("{s:?} is not an address or CIDR like 10.0.0.5 or 10.0.0.0/24"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some((i, _)) = trusted
            .iter()
            .enumerate()
            .find(|(_, n)| n.prefix_len() == 0)
        {
            return Err(src.err(
                format!("proxy_protocol.trusted[{i}]"),
                "trusts every address: any client could then claim any address; name the balancers",
            ));
        }
        let t = raw.header_timeout_secs;
        if !(1..=60).contains(&t) {
            return Err(src.err(
                "proxy_protocol.header_timeout_secs",
                format!("{t} is not a number of seconds from 1 to 60"),
            ));
        }
        Ok(Self {
            trusted,
            header_timeout: Duration::from_secs(t),
        })
    }
}

/// "10.0.0.0/24", or a bare address as its own /32 (/128).
fn parse_net(s: &str) -> Option<IpNet> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        // "10.0.0.5/24" names a host, not the network: keep the network.
        return Some(net.trunc());
    }
    s.parse::<IpAddr>().ok().map(IpNet::from)
}

/// The validated `[drain]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainConfig {
    pub deadline: Duration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(30),
        }
    }
}

impl DrainConfig {
    pub(super) fn from_raw(raw: RawDrain, src: &Source<'_>) -> Result<Self, ConfigError> {
        let d = raw.deadline_secs;
        if !(1..=3600).contains(&d) {
            return Err(src.err(
                "drain.deadline_secs",
                format!("{d} is not a number of seconds from 1 to 3600"),
            ));
        }
        Ok(Self {
            deadline: Duration::from_secs(d),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src() -> Source<'static> {
        Source {
            file: std::path::Path::new("t.toml"),
        }
    }

    #[test]
    fn trusted_sources_are_cidrs_or_addresses_and_nothing_else() {
        let raw = RawProxyProtocol {
            trusted: vec!["127.0.0.1".into(), "10.1.2.3/24".into(), "::1".into()],
            header_timeout_secs: 3,
        };
        let c = ProxyProtocolConfig::from_raw(raw, &src()).unwrap();
        assert!(c.trusts("127.0.0.1".parse().unwrap()));
        assert!(!c.trusts("127.0.0.2".parse().unwrap()));
        assert!(c.trusts("10.1.2.200".parse().unwrap()));
        assert!(!c.trusts("10.1.3.1".parse().unwrap()));
        assert!(c.trusts("::1".parse().unwrap()));
        assert!(c.trusts("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!ProxyProtocolConfig::default().trusts("127.0.0.1".parse().unwrap()));

        for (bad, why) in [
            ("127.0.0.1:80", "not an address or CIDR"),
            ("0.0.0.0/0", "trusts every address"),
            ("::/0", "trusts every address"),
            ("10.0.0.0/33", "not an address or CIDR"),
        ] {
            let raw = RawProxyProtocol {
                trusted: vec!["127.0.0.1".into(), bad.into()],
                header_timeout_secs: 3,
            };
            let e = ProxyProtocolConfig::from_raw(raw, &src()).unwrap_err();
            assert_eq!(e.key, "proxy_protocol.trusted[1]", "{bad}");
            assert!(e.reason.contains(why), "{bad}: {}", e.reason);
        }
    }

    #[test]
    fn defaults_and_bounds() {
        let c = ProxyProtocolConfig::from_raw(RawProxyProtocol::default(), &src()).unwrap();
        assert_eq!(c, ProxyProtocolConfig::default());
        let d = DrainConfig::from_raw(RawDrain::default(), &src()).unwrap();
        assert_eq!(d, DrainConfig::default());
        let e = DrainConfig::from_raw(RawDrain { deadline_secs: 0 }, &src()).unwrap_err();
        assert_eq!(e.key, "drain.deadline_secs");
    }
}
