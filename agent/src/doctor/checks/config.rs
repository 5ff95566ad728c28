//! The configuration in effect, and the running agent.

use crate::config::Source;
use crate::doctor::{Outcome, Probe};

/// Where a value came from, in words.
pub fn source_name(s: Source) -> &'static str {
    match s {
        Source::Policy => "your organisation's policy (locked)",
        Source::Recommended => "your organisation's recommendation",
        Source::UserFile => "your config file",
        Source::Default => "the default",
    }
}

/// The config file and policy load, and name an environment.
pub async fn config(p: &Probe) -> Outcome {
    let path = p.inputs.config_path.display();
    let config = match &p.config {
        Ok(c) => c,
        Err(e) => {
            return Outcome::fail(
                e.clone(),
                format!("correct the key named in {path}, then see `gangway config --effective`"),
            )
        }
    };
    let Some(env) = p.environment() else {
        let why = p.environment_error().unwrap_or("no environment");
        return Outcome::fail(
            why.to_string(),
            "add one: `gangway env add NAME https://RELAY`, or ask IT for the relay URL",
        );
    };
    let by_policy = config
        .settings
        .table
        .iter()
        .filter(|s| matches!(s.source, Source::Policy | Source::Recommended))
        .count();
    let by_user = config
        .settings
        .table
        .iter()
        .filter(|s| s.source == Source::UserFile)
        .count();
    let locked: Vec<&str> = config
        .settings
        .table
        .iter()
        .filter(|s| s.locked)
        .map(|s| s.key.as_str())
        .collect();
    let locked = if locked.is_empty() {
        String::new()
    } else {
        format!(" (locked: {})", locked.join(", "))
    };
    let detail = format!(
        "environment {} at {} from {}; {by_policy} setting(s) from policy{locked}, {by_user} from {path}",
        env.name,
        crate::keychain::namespace_for(&env.relay),
        source_name(env.source),
    );
    match config.problems.first() {
        Some(problem) => Outcome::warn(
            format!("{detail}; but: {problem}"),
            "ask IT to correct the policy (see `gangway config --effective`)",
        ),
        None => Outcome::pass(detail),
    }
}

/// A Gangway agent (the tray app or `gangway up`) runs and serves this
/// environment.
pub async fn agent(p: &Probe) -> Outcome {
    let Some(snap) = p.agent().await else {
        return Outcome::warn(
            "no Gangway agent is running",
            "start the Gangway app, or run `gangway up` in a terminal",
        );
    };
    let here = p.agent_here().await.is_some();
    let frontend = match snap.frontend {
        crate::status::Frontend::Tray => "the Gangway app",
        crate::status::Frontend::Cli => "gangway up",
    };
    let what = format!(
        "{frontend} (pid {}) serves {} — {}",
        snap.pid,
        snap.environment.as_deref().unwrap_or("no environment"),
        snap.phase.label()
    );
    if !here {
        let env = p.environment().map(|e| e.name.as_str()).unwrap_or("-");
        return Outcome::warn(
            format!("{what}; not the environment checked ({env})"),
            format!("switch it: `gangway env use {env}`"),
        );
    }
    match &snap.phase {
        crate::status::Phase::Connected => Outcome::pass(what),
        _ => Outcome::warn(
            what,
            "see `gangway status`; the checks below say which piece is broken",
        ),
    }
}
