//! What the running agent shows: one [`Snapshot`] that the tray menu, the
//! status window, `gangway status` and "copy diagnostics" all read, so
//! they never disagree.

use serde::{Deserialize, Serialize};

use crate::listener::StatsSnapshot;
use crate::relay_api::ServiceKind;

/// Where the agent is, in one word plus what the user needs to know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Phase {
    /// No environment is configured yet.
    NoEnvironment,
    /// Reaching the relay for the first time; `last_error` says why the
    /// previous try failed.
    Connecting {
        last_error: Option<String>,
    },
    Connected,
    /// Was connected; the relay went away and the agent keeps retrying.
    /// Listeners stay bound; new connections wait.
    Reconnecting {
        last_error: Option<String>,
    },
    /// The sign-in ended (never signed in, revoked, expired).
    SignInNeeded {
        reason: String,
    },
    /// The user signed out of this environment.
    SignedOut,
    /// Something only the user can fix (config, CA file, keychain).
    Failed {
        reason: String,
    },
}

impl Phase {
    /// The short word the tray shows after the environment.
    pub fn label(&self) -> &'static str {
        match self {
            Phase::NoEnvironment => "no environment configured",
            Phase::Connecting { .. } => "connecting…",
            Phase::Connected => "connected",
            Phase::Reconnecting { .. } => "reconnecting…",
            Phase::SignInNeeded { .. } => "sign-in needed",
            Phase::SignedOut => "signed out",
            Phase::Failed { .. } => "not working",
        }
    }

    /// Whether signing in is what the user should do next.
    pub fn wants_sign_in(&self) -> bool {
        matches!(self, Phase::SignInNeeded { .. } | Phase::SignedOut)
    }

    /// The tray icon to show.
    pub fn icon(&self) -> TrayIcon {
        match self {
            Phase::Connected => TrayIcon::Connected,
            Phase::Connecting { .. } | Phase::Reconnecting { .. } => TrayIcon::Connecting,
            Phase::SignInNeeded { .. } | Phase::SignedOut | Phase::NoEnvironment => {
                TrayIcon::SignedOut
            }
            Phase::Failed { .. } => TrayIcon::Error,
        }
    }
}

/// The four tray icons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrayIcon {
    SignedOut,
    Connecting,
    Connected,
    Error,
}

/// Which program runs the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Frontend {
    /// The tray app.
    Tray,
    /// `gangway up`.
    Cli,
}

/// One configured environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentEntry {
    pub name: String,
    pub relay: String,
    pub current: bool,
    /// Set by the organisation's policy.
    #[serde(default)]
    pub locked: bool,
}

/// One service of the current environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub display_name: String,
    pub kind: ServiceKind,
    /// Where it listens, when it does.
    pub local_addr: Option<String>,
    /// `listening`, `waiting` (tunnel not up) or `not listening`.
    pub state: String,
    /// Why it does not listen.
    pub error: Option<String>,
    #[serde(flatten)]
    pub stats: StatsSnapshot,
}

/// Something wrong, said plainly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Unix seconds.
    pub at: u64,
    pub text: String,
    /// The technical detail, for diagnostics.
    pub detail: Option<String>,
}

/// What a notification was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    SignInNeeded,
    RelayUnreachable,
    BackOnline,
}

/// A desktop notification (also kept in the snapshot, newest last).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub at: u64,
    pub kind: NoticeKind,
    pub title: String,
    pub body: String,
}

/// Local addresses worth a click: Confluence in the browser, and the
/// Bitbucket clone URL prefixes (append `PROJECT/repo.git`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Links {
    pub confluence: Option<String>,
    pub clone_http: Option<String>,
    pub clone_ssh: Option<String>,
}

/// The agent's state at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: String,
    pub pid: u32,
    pub frontend: Frontend,
    pub environment: Option<String>,
    pub relay: Option<String>,
    pub environments: Vec<EnvironmentEntry>,
    /// The organisation's name, when its policy sets one.
    #[serde(default)]
    pub organization: Option<String>,
    /// The organisation fixes the environment: switching is refused.
    #[serde(default)]
    pub environment_fixed: bool,
    /// The organisation decides "Start at login".
    #[serde(default)]
    pub start_at_login_locked: bool,
    pub phase: Phase,
    /// Unix seconds when the phase began.
    pub phase_since: u64,
    /// "alice @ Production — connected".
    pub status_line: String,
    /// The user as the relay knows them (from the catalog).
    pub user: Option<String>,
    pub groups: Vec<String>,
    /// When the current access token expires (read from it, not verified).
    pub token_expires_at: Option<u64>,
    /// Whether a refresh token is stored (the sign-in renews itself).
    pub refreshable: bool,
    /// Whether the stored tokens are bound to this device's key (DPoP);
    /// `None` for a fixed token or before the keychain was read.
    #[serde(default)]
    pub token_binding: Option<crate::dpop::TokenBinding>,
    /// The sign-in page, while a browser sign-in is waiting.
    pub signing_in: Option<String>,
    /// The terminal command that signs in to this environment.
    pub login_hint: Option<String>,
    /// Whether sign-in goes through the browser (keychain tokens) rather
    /// than a fixed token (GANGWAY_TOKEN, --token-file).
    pub interactive: bool,
    pub services: Vec<ServiceStatus>,
    /// Current problems first, then recent ones; newest first.
    pub problems: Vec<Problem>,
    pub notices: Vec<Notice>,
    pub links: Links,
    /// The local door: who may use the listeners, the last caller refused.
    #[serde(default)]
    pub door: crate::door::DoorSnapshot,
}

/// "alice @ Production — connected", "Production — sign-in needed".
pub fn status_line(environment: Option<&str>, user: Option<&str>, phase: &Phase) -> String {
    let Some(env) = environment else {
        return "Gangway — no environment configured".into();
    };
    let who = match (user, phase) {
        (Some(u), Phase::Connected | Phase::Reconnecting { .. } | Phase::Connecting { .. }) => {
            format!("{u} @ {env}")
        }
        _ => env.to_string(),
    };
    format!("{who} — {}", phase.label())
}

/// Picks the links from the services that listen: an `http` service named
/// `confluence…` is Confluence; `bitbucket…` over `http` gives the HTTP
/// clone prefix, a `tcp` one with `ssh` in its name the SSH form.
pub fn links(services: &[ServiceStatus]) -> Links {
    let mut l = Links::default();
    for s in services {
        let Some(addr) = &s.local_addr else { continue };
        let name = s.name.to_ascii_lowercase();
        match s.kind {
            ServiceKind::Http if name.starts_with("confluence") && l.confluence.is_none() => {
                l.confluence = Some(format!("http://{addr}/"));
            }
            ServiceKind::Http if name.starts_with("bitbucket") && l.clone_http.is_none() => {
                l.clone_http = Some(format!("http://{addr}/scm/"));
            }
            ServiceKind::Tcp if name.contains("ssh") && l.clone_ssh.is_none() => {
                l.clone_ssh = Some(format!("ssh://git@{addr}/"));
            }
            _ => {}
        }
    }
    l
}

/// "10:42" in local time.
pub fn clock(unix: u64) -> String {
    use chrono::TimeZone;
    chrono::Local
        .timestamp_opt(unix as i64, 0)
        .single()
        .map(|t| t.format("%H:%M").to_string())
        .unwrap_or_else(|| unix.to_string())
}

/// "2.4 MB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

impl Snapshot {
    /// A plain-text report to paste into a support ticket: state, services,
    /// problems, notifications. Never a token.
    pub fn diagnostics(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "Gangway {} (pid {}, {:?})",
            self.version, self.pid, self.frontend
        );
        let _ = writeln!(o, "OS: {} {}", std::env::consts::OS, std::env::consts::ARCH);
        let _ = writeln!(o, "Status: {}", self.status_line);
        let _ = writeln!(
            o,
            "Environment: {} ({})",
            self.environment.as_deref().unwrap_or("-"),
            self.relay.as_deref().unwrap_or("-")
        );
        let _ = writeln!(
            o,
            "Phase: {:?} since {}",
            self.phase,
            clock(self.phase_since)
        );
        let _ = writeln!(
            o,
            "User: {} groups [{}]",
            self.user.as_deref().unwrap_or("-"),
            self.groups.join(", ")
        );
        if let Some(exp) = self.token_expires_at {
            let _ = writeln!(
                o,
                "Access token expires: {} (refresh token stored: {})",
                clock(exp),
                self.refreshable
            );
        }
        if let Some(b) = &self.token_binding {
            let _ = writeln!(o, "Token binding: {}", b.describe());
        }
        let _ = writeln!(o, "Services:");
        for s in &self.services {
            let _ = writeln!(
                o,
                "  {} ({}, {}) {} {}: {} active, {} total, up {}, down {}, open rtt {}{}",
                s.name,
                s.display_name,
                s.kind,
                s.local_addr.as_deref().unwrap_or("-"),
                s.state,
                s.stats.active_streams,
                s.stats.total_streams,
                bytes(s.stats.bytes_up),
                bytes(s.stats.bytes_down),
                s.stats
                    .open_rtt_ms
                    .map(|r| format!("{r:.1} ms"))
                    .unwrap_or_else(|| "-".into()),
                s.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(o, "{}", self.door.guard_line());
        if let Some(r) = &self.door.last_refused {
            let _ = writeln!(
                o,
                "  last refused: {} {} on {}: {} ({} refused in all)",
                clock(r.at),
                r.caller,
                r.service,
                r.reason,
                self.door.refused
            );
        }
        for w in &self.door.open_to_network {
            let _ = writeln!(o, "  warning: {w}");
        }
        let _ = writeln!(o, "Problems:");
        for p in &self.problems {
            let _ = writeln!(
                o,
                "  {} {}{}",
                clock(p.at),
                p.text,
                p.detail
                    .as_deref()
                    .map(|d| format!(" [{d}]"))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(o, "Notifications:");
        for n in &self.notices {
            let _ = writeln!(o, "  {} {}: {}", clock(n.at), n.title, n.body);
        }
        let _ = writeln!(
            o,
            "Environments: {}",
            self.environments
                .iter()
                .map(|e| format!(
                    "{}{} ({})",
                    if e.current { "*" } else { "" },
                    e.name,
                    e.relay
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, kind: &str, addr: Option<&str>) -> ServiceStatus {
        ServiceStatus {
            name: name.into(),
            display_name: name.into(),
            kind: serde_json::from_value(serde_json::json!(kind)).unwrap(),
            local_addr: addr.map(str::to_string),
            state: "listening".into(),
            error: None,
            stats: StatsSnapshot::default(),
        }
    }

    #[test]
    fn status_lines_read_like_the_tray() {
        assert_eq!(
            status_line(Some("Production"), Some("alice"), &Phase::Connected),
            "alice @ Production — connected"
        );
        assert_eq!(
            status_line(
                Some("Production"),
                Some("alice"),
                &Phase::Reconnecting { last_error: None }
            ),
            "alice @ Production — reconnecting…"
        );
        assert_eq!(
            status_line(
                Some("Production"),
                Some("alice"),
                &Phase::SignInNeeded { reason: "x".into() }
            ),
            "Production — sign-in needed"
        );
        assert_eq!(
            status_line(None, None, &Phase::NoEnvironment),
            "Gangway — no environment configured"
        );
    }

    #[test]
    fn links_come_from_listening_services() {
        let l = links(&[
            svc("bitbucket", "http", Some("127.0.0.1:7990")),
            svc("bitbucket-ssh", "tcp", Some("127.0.0.1:7999")),
            svc("confluence", "http", Some("127.0.0.1:8090")),
            svc("jira", "http", None),
        ]);
        assert_eq!(l.clone_http.as_deref(), Some("http://127.0.0.1:7990/scm/"));
        assert_eq!(l.clone_ssh.as_deref(), Some("ssh://git@127.0.0.1:7999/"));
        assert_eq!(l.confluence.as_deref(), Some("http://127.0.0.1:8090/"));
        assert_eq!(links(&[svc("confluence", "http", None)]), Links::default());
    }

    #[test]
    fn byte_counts_are_short() {
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(2_400_000), "2.4 MB");
    }
}
