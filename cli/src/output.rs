//! Everything the CLI prints about the agent, sign-ins and time, in one
//! place, so `gangway status` reads the same whether it asked the running
//! agent or the keychain.

use std::process::ExitCode;

use gangway_agent::signin::{Revocation, SignedIn, SignedOut};
use gangway_agent::status::{self, Frontend, Phase, Snapshot};

/// "2026-12-01 21:36:10 UTC".
pub fn format_time(unix: u64) -> String {
    chrono::DateTime::from_timestamp(unix as i64, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| unix.to_string())
}

/// "in 4m 10s" or "expired 2h 5m ago".
pub fn relative(unix: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let span = |s: u64| match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    };
    if unix >= now {
        format!("in {}", span(unix - now))
    } else {
        format!("expired {} ago", span(now - unix))
    }
}

/// "prod (https://…)", or just the URL for an environment given by URL.
pub fn agent_label(snap: &Snapshot) -> String {
    match (&snap.environment, &snap.relay) {
        (Some(e), Some(r)) if e != r => format!("{e} ({r})"),
        (_, Some(r)) => r.clone(),
        (Some(e), None) => e.clone(),
        _ => "(no environment)".into(),
    }
}

pub fn frontend_name(f: Frontend) -> &'static str {
    match f {
        Frontend::Tray => "the tray app",
        Frontend::Cli => "gangway up",
    }
}

/// The access token's expiry line.
pub fn print_expiry(exp: u64) {
    println!(
        "Access token: expires {} ({}); read from the token, not verified",
        format_time(exp),
        relative(exp)
    );
}

/// The refresh token's line.
pub fn print_refresh(refreshable: bool, login_hint: &str) {
    if refreshable {
        println!("Refresh token: stored in the OS keychain; renewed automatically");
    } else {
        println!("Refresh token: none; run `{login_hint}` when the access token expires");
    }
}

/// The end of a sign-in, wherever it ran.
pub fn print_signed_in(label: &str, done: &SignedIn) {
    match done.services {
        Some(n) => println!(
            "Signed in to {label} as {} — {n} service(s) available.",
            done.subject
        ),
        None => println!("Signed in to {label} as {}.", done.subject),
    }
    for w in &done.warnings {
        eprintln!("warning: {w}");
    }
}

/// The end of a sign-out; `stopped` names who closed the listeners, if any.
pub fn print_signed_out(label: &str, done: &SignedOut, stopped: Option<&str>) {
    if !done.was_signed_in {
        println!("Not signed in to {label}; nothing to do.");
        return;
    }
    match &done.revocation {
        Revocation::Revoked => println!("Refresh token revoked at the identity provider."),
        Revocation::NotOffered => println!(
            "The identity provider offers no revocation; the refresh token was deleted here only."
        ),
        Revocation::Failed(why) => {
            eprintln!("warning: could not revoke the refresh token at the identity provider: {why}")
        }
        Revocation::NothingToRevoke => {}
    }
    match stopped {
        Some(who) => println!(
            "Signed out of {label}: tokens deleted from the OS keychain; {who} stopped its listeners."
        ),
        None => println!("Signed out of {label}: tokens deleted from the OS keychain."),
    }
}

/// The local addresses being served.
pub fn listening_of(s: &Snapshot) -> Vec<String> {
    s.services
        .iter()
        .filter_map(|x| x.local_addr.clone())
        .collect()
}

pub fn print_listening(snap: &Snapshot) {
    println!(
        "Signed in to {} as {} — {} service(s):",
        snap.relay.as_deref().unwrap_or("-"),
        snap.user.as_deref().unwrap_or("(unknown user)"),
        snap.services
            .iter()
            .filter(|s| s.local_addr.is_some())
            .count()
    );
    for s in &snap.services {
        match &s.local_addr {
            Some(addr) => println!(
                "  listening  {:<16} {addr}  ({}, {})",
                s.name, s.display_name, s.kind
            ),
            None => println!(
                "  not listening  {}: {}",
                s.display_name,
                s.error.as_deref().unwrap_or("-")
            ),
        }
    }
}

/// `gangway status` as the running agent sees it.
pub fn print_agent_status(snap: &Snapshot) -> ExitCode {
    println!("Environment: {}", agent_label(snap));
    println!(
        "Agent: {} (pid {}): {}",
        frontend_name(snap.frontend),
        snap.pid,
        snap.status_line
    );
    let hint = snap.login_hint.as_deref().unwrap_or("gangway login");
    let ok = match &snap.phase {
        Phase::NoEnvironment => {
            println!("No environment configured. Add one: gangway env add NAME https://RELAY");
            false
        }
        Phase::SignInNeeded { reason } => {
            println!("Sign-in needed: {reason}");
            println!("Run: {hint}");
            false
        }
        Phase::SignedOut => {
            println!("Not signed in. Run: {hint}");
            false
        }
        Phase::Failed { reason } => {
            println!("Not working: {reason}");
            false
        }
        _ => true,
    };
    if ok {
        print_account(snap, hint);
    }
    print_services(snap);
    if let Some(u) = &snap.links.clone_http {
        println!("Clone over HTTP: git clone {u}PROJECT/REPO.git");
    }
    if let Some(u) = &snap.links.clone_ssh {
        println!("Clone over SSH:  git clone {u}PROJECT/REPO.git");
    }
    if let Some(u) = &snap.links.confluence {
        println!("Confluence: {u}");
    }
    print_door(snap);
    if !snap.problems.is_empty() {
        println!("Problems:");
        for p in &snap.problems {
            println!("  {}  {}", status::clock(p.at), p.text);
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The local door: who may use the listeners, the last caller refused.
fn print_door(snap: &Snapshot) {
    println!("{}", snap.door.guard_line());
    if let Some(r) = &snap.door.last_refused {
        println!(
            "  Last refused: {} at {} on {}: {} ({} refused since the agent started)",
            r.caller,
            format_time(r.at),
            r.service,
            r.reason,
            snap.door.refused
        );
    }
    print_network_warnings(snap);
}

/// One warning line per listener open to the network.
pub fn print_network_warnings(snap: &Snapshot) {
    for w in &snap.door.open_to_network {
        eprintln!("warning: {w}");
    }
}

/// Who is signed in and how long the tokens last.
fn print_account(snap: &Snapshot, hint: &str) {
    if let Some(u) = &snap.user {
        if snap.groups.is_empty() {
            println!("Signed in as {u}");
        } else {
            println!("Signed in as {u} (groups: {})", snap.groups.join(", "));
        }
    }
    if let Some(exp) = snap.token_expires_at {
        print_expiry(exp);
    }
    if snap.interactive && (snap.refreshable || snap.token_expires_at.is_some()) {
        print_refresh(snap.refreshable, hint);
    }
    if let Some(b) = &snap.token_binding {
        println!("Token binding: {}", b.describe());
    }
}

fn print_services(snap: &Snapshot) {
    if snap.services.is_empty() {
        return;
    }
    println!("Services:");
    for s in &snap.services {
        let rtt = s
            .stats
            .open_rtt_ms
            .map(|r| format!(", round trip {r:.1} ms"))
            .unwrap_or_default();
        println!(
            "  {:<16} {:<4} {:<21} {:<13} {} active, {} total, up {}, down {}{rtt}{}",
            s.name,
            s.kind,
            s.local_addr.as_deref().unwrap_or("-"),
            s.state,
            s.stats.active_streams,
            s.stats.total_streams,
            status::bytes(s.stats.bytes_up),
            status::bytes(s.stats.bytes_down),
            s.error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
    }
}
