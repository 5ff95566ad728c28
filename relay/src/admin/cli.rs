//! `gangway-relay admin …`: the admin API from a shell. The token comes
//! from `--token-file` or `GANGWAY_ADMIN_TOKEN` (never an argument, which
//! other local users could read from the process list); the answer is
//! printed as JSON; a refusal or error is one line on stderr and exit
//! code 1.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

/// Calls the admin API of a running relay.
#[derive(Parser, Debug)]
#[command(name = "gangway-relay admin")]
pub struct AdminArgs {
    /// The relay's admin listener, e.g. http://127.0.0.1:9090.
    #[arg(
        long,
        env = "GANGWAY_ADMIN_URL",
        default_value = "http://127.0.0.1:9090"
    )]
    pub url: String,
    /// File holding the admin token (the relay's `[admin] token_file`, or
    /// an access token of a member of `admin_group`).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    #[command(subcommand)]
    pub call: AdminCall,
}

#[derive(Subcommand, Debug)]
pub enum AdminCall {
    /// Sessions open on this relay.
    Sessions,
    /// Backends with health, drain state and load.
    Backends,
    /// Stop sending new work to a backend (on this relay).
    Drain { service: String, backend: String },
    /// Send work to a drained backend again.
    Enable { service: String, backend: String },
    /// Locked subjects.
    Locks,
    /// End a subject's sessions on every relay and refuse it until unlocked.
    Lock {
        subject: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift a subject's lock.
    Unlock { subject: String },
}

/// The hook in `main`: `Some(exit code)` when the command line is
/// `gangway-relay admin …`, after running it.
pub fn main_if_admin() -> Option<ExitCode> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).and_then(|a| a.to_str()) != Some("admin") {
        return None;
    }
    let parsed = AdminArgs::parse_from(&args[1..]);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gangway-relay admin: cannot start runtime: {e}");
            return Some(ExitCode::FAILURE);
        }
    };
    Some(match rt.block_on(run(parsed)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gangway-relay admin: {e:#}");
            ExitCode::FAILURE
        }
    })
}

fn token(args: &AdminArgs) -> anyhow::Result<String> {
    let t = match &args.token_file {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?
        }
        None => std::env::var("GANGWAY_ADMIN_TOKEN")
            .context("no admin token: pass --token-file or set GANGWAY_ADMIN_TOKEN")?,
    };
    Ok(t.trim().to_string())
}

/// Runs one call; the answer's body.
pub async fn run(args: AdminArgs) -> anyhow::Result<String> {
    let token = token(&args)?;
    let base = args.url.trim_end_matches('/');
    let (method, path, body) = match &args.call {
        AdminCall::Sessions => ("GET", "sessions", None),
        AdminCall::Backends => ("GET", "backends", None),
        AdminCall::Locks => ("GET", "locks", None),
        AdminCall::Drain { service, backend } => (
            "POST",
            "backends/drain",
            Some(serde_json::json!({"service": service, "backend": backend})),
        ),
        AdminCall::Enable { service, backend } => (
            "POST",
            "backends/enable",
            Some(serde_json::json!({"service": service, "backend": backend})),
        ),
        AdminCall::Lock { subject, reason } => (
            "POST",
            "locks",
            Some(serde_json::json!({"subject": subject, "reason": reason})),
        ),
        AdminCall::Unlock { subject } => (
            "POST",
            "unlock",
            Some(serde_json::json!({"subject": subject})),
        ),
    };
    let url = format!("{base}/v1/admin/{path}");
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()?;
    let req = match method {
        "GET" => client.get(&url),
        _ => client.post(&url),
    };
    let req = req.bearer_auth(&token);
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(b.to_string()),
        None => req,
    };
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        let why = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(text);
        bail!("{url}: {status}: {why}");
    }
    Ok(text)
}
