//! The relay: its name, the connection, TLS, its clock and its version.

use std::time::{Duration, SystemTime};

use crate::doctor::{Outcome, Probe};

/// Skew above which tokens may be refused at the edges of their lifetime.
pub const CLOCK_WARN: Duration = Duration::from_secs(30);
/// Skew above which tokens are refused (or taken as expired) outright.
pub const CLOCK_FAIL: Duration = Duration::from_secs(5 * 60);

/// How the relay is reached: directly (and why) or through which proxy
/// (and where that was set).
pub async fn proxy(p: &Probe) -> Outcome {
    if p.environment().is_none() {
        return Outcome::blocked("config");
    }
    if let Err(e) = p.egress() {
        return Outcome::fail(
            e,
            "fix the proxy setting (the proxy key, HTTPS_PROXY or NO_PROXY) or ca_file",
        );
    }
    match p.relay_route() {
        Some(route) => Outcome::pass(format!("the relay is reached {route}")),
        None => Outcome::blocked("config"),
    }
}

/// The relay's host name resolves (the proxy's, when the relay is reached
/// through one: the proxy resolves the relay's).
pub async fn dns(p: &Probe) -> Outcome {
    let Some(env) = p.environment() else {
        return Outcome::blocked("config");
    };
    let (host, port, whose) = match p.relay_route() {
        Some(crate::net::Route::Proxy { proxy, .. }) => (
            proxy.host().trim_matches(['[', ']']).to_string(),
            proxy.port(),
            "the proxy ",
        ),
        _ => (
            env.relay
                .host_str()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_string(),
            env.relay.port_or_known_default().unwrap_or(443),
            "",
        ),
    };
    let host = host.as_str();
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Outcome::pass(format!("{whose}{host} is an IP address (no lookup needed)"));
    }
    let looked_up = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::lookup_host((host, port)),
    )
    .await;
    let outcome = match looked_up {
        Ok(Ok(addrs)) => {
            let addrs: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
            if addrs.is_empty() {
                Outcome::fail(
                    format!("{host} resolves to no address"),
                    "check the relay URL; ask IT whether the name is published in DNS",
                )
            } else {
                Outcome::pass(format!("{whose}{host} resolves to {}", addrs.join(", ")))
            }
        }
        Ok(Err(e)) => Outcome::fail(
            format!("cannot resolve {host}: {e}"),
            "check the relay URL and your network (VPN, DNS); ask IT whether the name is right",
        ),
        Err(_) => Outcome::fail(
            format!("resolving {host} took over 10 s"),
            "check your network's DNS",
        ),
    };
    outcome
}

/// A TCP connection to the relay opens.
pub async fn reachable(p: &Probe) -> Outcome {
    if p.environment().is_none() {
        return Outcome::blocked("config");
    }
    match p.reachable().await {
        Ok(addr) => match p.relay_route() {
            Some(crate::net::Route::Proxy { proxy, .. }) => Outcome::pass(format!(
                "the proxy at {proxy} ({addr}) opened a CONNECT tunnel to the relay"
            )),
            _ => Outcome::pass(format!("connected to {addr}")),
        },
        Err(e) => Outcome::fail(
            e.detail.clone(),
            e.fix.clone().unwrap_or_else(|| {
                "check the relay URL and your network; if it is right, the relay is down: tell IT"
                    .into()
            }),
        ),
    }
}

/// The relay's certificate chain verifies, and which root accepted it.
pub async fn tls(p: &Probe) -> Outcome {
    let Some(env) = p.environment() else {
        return Outcome::blocked("config");
    };
    if env.relay.scheme() != "https" {
        return Outcome::pass("plain http to a loopback relay (no TLS)");
    }
    let trust = match &p.trust {
        Ok(t) => t,
        Err(e) => {
            return Outcome::fail(
                e.clone(),
                "fix the environment's ca_file (a PEM file with the CA certificate)",
            )
        }
    };
    if p.reachable().await.is_err() {
        return Outcome::blocked("relay");
    }
    let seen = match p.relay_seen().await {
        Ok(s) => s,
        Err(e) => return Outcome::fail(e.clone(), "see the message; ask IT if it persists"),
    };
    let Some(tls) = &seen.tls else {
        return Outcome::fail(
            "the TLS handshake ended before the relay showed a certificate",
            "a proxy or firewall may be in the way; ask IT",
        );
    };
    let leaf = tls
        .chain
        .first()
        .map(|c| super::super::anchor::subject_name(c))
        .unwrap_or_default();
    let n = tls.chain.len();
    let chain = format!(
        "{n} certificate{} for {leaf}",
        if n == 1 { "" } else { "s" }
    );
    match &tls.verdict {
        Ok(()) => match trust.accepted_by(tls) {
            Some(anchor) => Outcome::pass(format!("{chain}, accepted by {anchor}")),
            None => Outcome::pass(format!("{chain}, accepted")),
        },
        Err(e) => {
            let plain = crate::plain::explain(e);
            let detail = match &plain {
                Some(p) => format!("{chain}: {}", p.sentence),
                None => format!("{chain}: {e}"),
            };
            Outcome::fail(
                detail,
                plain
                    .map(|p| p.fix.into_owned())
                    .unwrap_or_else(|| "ask the relay's administrator".into()),
            )
        }
    }
}

/// Seconds `b` is after `a` (negative: before).
fn signed_secs(a: SystemTime, b: SystemTime) -> f64 {
    match b.duration_since(a) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// The relay's clock (its `Date`) against this computer's.
pub async fn clock(p: &Probe) -> Outcome {
    if p.environment().is_none() {
        return Outcome::blocked("config");
    }
    let seen = match p.relay_answer().await {
        Ok(s) => s,
        Err(piece) => return Outcome::blocked(piece),
    };
    let date = match &seen.date {
        Some(Ok(d)) => *d,
        Some(Err(text)) => {
            return Outcome::warn(
                format!("the relay's Date header {text:?} is not an HTTP date"),
                "cannot compare clocks; make sure this computer's clock is set automatically",
            )
        }
        None => {
            return Outcome::warn(
                "the relay's answer has no Date header",
                "cannot compare clocks; make sure this computer's clock is set automatically",
            )
        }
    };
    // The Date was stamped between sending and the answer (whole seconds).
    let half = signed_secs(seen.sent_at, seen.answered_at) / 2.0;
    let local = seen.sent_at + Duration::from_secs_f64(half.max(0.0));
    // `Date` drops the fraction: up to 1 s behind.
    let offset = signed_secs(local, date) + 0.5;
    let size = offset.abs();
    let said = if size < 1.0 {
        "the relay's clock agrees with this computer's (within 1 s)".to_string()
    } else {
        format!(
            "the relay's clock is {} {} this computer's",
            human(size),
            if offset > 0.0 { "ahead of" } else { "behind" }
        )
    };
    let fix = "set this computer's clock to set itself (NTP); if it is right, tell the relay's administrator";
    if size > CLOCK_FAIL.as_secs_f64() {
        Outcome::fail(format!("{said}: tokens will be refused"), fix)
    } else if size > CLOCK_WARN.as_secs_f64() {
        Outcome::warn(
            format!("{said}: tokens may be refused near their expiry"),
            fix,
        )
    } else {
        Outcome::pass(said)
    }
}

/// "42 s", "6 min 40 s", "3 h 5 min".
fn human(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// The relay is a Gangway relay speaking this agent's protocol, of the
/// same major version.
pub async fn version(p: &Probe) -> Outcome {
    if p.environment().is_none() {
        return Outcome::blocked("config");
    }
    let seen = match p.relay_answer().await {
        Ok(s) => s,
        Err(piece) => return Outcome::blocked(piece),
    };
    let d = match &seen.discovery {
        Ok(d) => d,
        Err(e) => {
            return Outcome::fail(
                format!("no discovery document: {e}"),
                "check the relay URL (it must be the Gangway relay itself, not a web page)",
            )
        }
    };
    let ours = env!("CARGO_PKG_VERSION");
    compare(ours, d.protocol_version, d.relay_version.as_deref())
}

fn major(v: &str) -> Option<u64> {
    v.trim_start_matches('v').split('.').next()?.parse().ok()
}

fn compare(ours: &str, protocol: u8, relay: Option<&str>) -> Outcome {
    if protocol != gangway_wire::PROTOCOL_VERSION {
        return Outcome::fail(
            format!(
                "the relay speaks tunnel protocol {protocol}, this agent {}",
                gangway_wire::PROTOCOL_VERSION
            ),
            "update Gangway on this computer (or ask IT to update the relay)",
        );
    }
    let Some(relay) = relay else {
        return Outcome::warn(
            format!("protocol {protocol}; the relay does not say its version (older than this agent {ours})"),
            "ask IT to update the relay",
        );
    };
    match (major(ours), major(relay)) {
        (Some(a), Some(b)) if a == b => Outcome::pass(format!(
            "relay {relay}, agent {ours}, protocol {protocol}"
        )),
        (Some(_), Some(_)) => Outcome::warn(
            format!("relay {relay} and agent {ours} differ in major version (protocol {protocol} matches)"),
            "update whichever is older",
        ),
        _ => Outcome::warn(
            format!("the relay's version {relay:?} is not a version number"),
            "ask IT which relay runs there",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    #[test]
    fn versions_compare_by_major() {
        let p = gangway_wire::PROTOCOL_VERSION;
        assert_eq!(compare("0.1.0", p, Some("0.3.2")).status, Status::Pass);
        assert_eq!(compare("1.1.0", p, Some("2.0.0")).status, Status::Warn);
        assert_eq!(compare("0.1.0", p, None).status, Status::Warn);
        assert_eq!(
            compare("0.1.0", p.wrapping_add(1), Some("0.1.0")).status,
            Status::Fail
        );
    }

    #[test]
    fn durations_in_words() {
        assert_eq!(human(42.4), "42 s");
        assert_eq!(human(400.0), "6 min 40 s");
        assert_eq!(human(3.0 * 3600.0 + 300.0), "3 h 5 min");
    }
}
