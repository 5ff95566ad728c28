//! `gangway doctor`: each piece the agent relies on, checked in turn, with
//! a PASS/WARN/FAIL, one line saying what was found and, unless it passed,
//! one line saying what to do.
//!
//! ```text
//! Inputs ─▶ Probe (what several checks share, looked up once: config,
//!                  discovery over a capturing TLS client, token, catalog)
//!            └─▶ CHECKS, one small async fn each ─▶ Report (CLI, tray, bugreport)
//! ```
//!
//! A check is one function `async fn(&Probe) -> Outcome` and one line in
//! [`CHECKS`]; a check that cannot run because an earlier piece is broken
//! (no relay, no token) says so as a WARN naming that piece, so the one
//! real failure is the only FAIL.

mod anchor;
pub mod bugreport;
mod checks;
mod holder;
mod probe;

use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub use probe::{AgentLookup, Inputs, Probe, RelaySeen};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: Status,
    /// One line: what was found.
    pub detail: String,
    /// One line: what to do (absent on PASS).
    pub fix: Option<String>,
}

impl Outcome {
    pub fn pass(detail: impl Into<String>) -> Self {
        Self {
            status: Status::Pass,
            detail: one_line(detail.into()),
            fix: None,
        }
    }

    pub fn warn(detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            status: Status::Warn,
            detail: one_line(detail.into()),
            fix: Some(one_line(fix.into())),
        }
    }

    pub fn fail(detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            status: Status::Fail,
            detail: one_line(detail.into()),
            fix: Some(one_line(fix.into())),
        }
    }

    /// A check that could not run because `piece` (another check) is broken.
    pub fn blocked(piece: &str) -> Self {
        Self::warn(
            format!("not checked: {piece} failed"),
            format!("fix the `{piece}` check first"),
        )
    }
}

/// Longest detail or fix, in characters (a peer's text can be anything).
const MAX_LINE: usize = 600;

/// Text from errors and peers may hold newlines and be long: a detail
/// stays one line of bounded length.
fn one_line(s: String) -> String {
    let s = if s.contains(['\n', '\r']) {
        s.split(['\n', '\r'])
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        s
    };
    if s.chars().count() > MAX_LINE {
        s.chars().take(MAX_LINE).chain(['…']).collect()
    } else {
        s
    }
}

/// One check as reported: `--json` prints an array of these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    pub check: String,
    pub status: Status,
    pub detail: String,
    pub fix: Option<String>,
}

/// Versions of what the agent works with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    pub gangway: String,
    pub os: String,
    pub git: Option<String>,
    pub ssh: Option<String>,
    /// From the relay's discovery document, when it says.
    pub relay: Option<String>,
}

/// A whole doctor run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The environment checked, if one could be chosen.
    pub environment: Option<String>,
    pub versions: Versions,
    pub checks: Vec<CheckResult>,
}

impl Report {
    /// Whether any check failed (`gangway doctor` exits 1 then).
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }

    /// One aligned line per check, a fix line under each that needs one.
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let width = self.checks.iter().map(|c| c.check.len()).max().unwrap_or(0);
        let mut o = String::new();
        let _ = writeln!(
            o,
            "Gangway {} on {} — environment {}",
            self.versions.gangway,
            self.versions.os,
            self.environment.as_deref().unwrap_or("(none)")
        );
        for c in &self.checks {
            let _ = writeln!(o, "{}  {:<width$}  {}", c.status.label(), c.check, c.detail);
            if let Some(fix) = &c.fix {
                let _ = writeln!(o, "      {:<width$}  fix: {fix}", "");
            }
        }
        o
    }
}

/// A check: its name and the function that runs it.
pub struct Check {
    pub name: &'static str,
    pub run: for<'a> fn(&'a Probe) -> BoxFuture<'a, Outcome>,
}

macro_rules! check {
    ($name:literal, $f:path) => {
        Check {
            name: $name,
            run: |p| Box::pin($f(p)),
        }
    };
}

/// Every check, in the order a connection needs them. Add one here.
pub const CHECKS: &[Check] = &[
    check!("config", checks::config::config),
    check!("agent", checks::config::agent),
    check!("proxy", checks::relay::proxy),
    check!("dns", checks::relay::dns),
    check!("relay", checks::relay::reachable),
    check!("tls", checks::relay::tls),
    check!("clock", checks::relay::clock),
    check!("relay version", checks::relay::version),
    check!("identity provider", checks::identity::provider),
    check!("keychain", checks::identity::keychain),
    check!("token", checks::identity::token),
    check!("tunnel", checks::tunnel::tunnel),
    check!("local ports", checks::ports::ports),
    check!("git", checks::tools::git),
    check!("ssh", checks::tools::ssh),
];

/// How long one check may take before it is reported as hung.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `checks` one after the other (their order is the story told).
pub async fn run_checks(probe: &Probe, checks: &[Check]) -> Report {
    let mut results = Vec::with_capacity(checks.len());
    for c in checks {
        let outcome = match tokio::time::timeout(CHECK_TIMEOUT, (c.run)(probe)).await {
            Ok(o) => o,
            Err(_) => Outcome::fail(
                format!("did not finish within {} s", CHECK_TIMEOUT.as_secs()),
                "something on the way hangs (a proxy or firewall?); run again, then ask IT",
            ),
        };
        results.push(CheckResult {
            check: c.name.to_string(),
            status: outcome.status,
            detail: outcome.detail,
            fix: outcome.fix,
        });
    }
    Report {
        environment: probe.environment().map(|e| e.name.clone()),
        versions: probe.versions().await,
        checks: results,
    }
}

/// Runs every check in [`CHECKS`].
pub async fn run(probe: &Probe) -> Report {
    run_checks(probe, CHECKS).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_the_stable_shape() {
        let r = CheckResult {
            check: "clock".into(),
            status: Status::Warn,
            detail: "the relay's clock is 42 s ahead of this computer's".into(),
            fix: Some("set the clock".into()),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"check": "clock", "status": "WARN",
                "detail": "the relay's clock is 42 s ahead of this computer's",
                "fix": "set the clock"})
        );
    }

    #[test]
    fn details_stay_on_one_line() {
        let o = Outcome::fail("a\n b\r\n\nc", "x\ny");
        assert_eq!(o.detail, "a b c");
        assert_eq!(o.fix.as_deref(), Some("x y"));
        let long = Outcome::pass("x".repeat(5000));
        assert_eq!(long.detail.chars().count(), MAX_LINE + 1);
    }

    #[test]
    fn text_lines_are_aligned_and_fixes_follow() {
        let report = Report {
            environment: Some("prod".into()),
            versions: Versions {
                gangway: "0.1.0".into(),
                os: "linux".into(),
                ..Versions::default()
            },
            checks: vec![
                CheckResult {
                    check: "dns".into(),
                    status: Status::Pass,
                    detail: "ok".into(),
                    fix: None,
                },
                CheckResult {
                    check: "local ports".into(),
                    status: Status::Fail,
                    detail: "busy".into(),
                    fix: Some("stop it".into()),
                },
            ],
        };
        let t = report.text();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[1], "PASS  dns          ok");
        assert_eq!(lines[2], "FAIL  local ports  busy");
        assert_eq!(lines[3], "                   fix: stop it");
        assert!(report.failed());
    }
}
