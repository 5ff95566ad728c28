//! `gangway`: the agent's command line. Parses the flags, sets up logging
//! and a runtime, and hands over to one command (`commands/`).

mod args;
mod commands;
#[cfg(feature = "demo")]
mod demo;
mod output;
mod running;
mod target;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use args::{Cli, Command};

/// Logs to standard error and, for the agent, to its log file
/// (`gangway_agent::logfile`); a log file that cannot be opened is said
/// once and skipped.
fn init_logging(to_file: bool) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let (file, problem) = match to_file.then(gangway_agent::logfile::open_default) {
        Some(Ok(f)) => (f, None),
        Some(Err(p)) => (None, Some(p)),
        None => (None, None),
    };
    let file = file.map(|f| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::sync::Mutex::new(f))
            .with_ansi(false)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(file)
        .init();
    if let Some(p) = problem {
        tracing::warn!("{p}");
    }
}

fn main() -> ExitCode {
    let _ = gangway_transport::heap::tune();
    let cli = Cli::parse();
    // The agent (`gangway up`) also logs to a size-bounded file, for
    // `gangway bugreport`; other commands only to standard error.
    init_logging(matches!(cli.command, Command::Up(_)));
    // One thread runs the agent: it serves one person, and a single thread
    // moves several Gbit/s through TLS, with fewer wake-ups between threads
    // and less memory than a thread pool (BENCHMARKS.md). Blocking work
    // (keychain, browser) still goes to tokio's blocking threads.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gangway: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Login(args) => commands::login::run(args).await,
            Command::Logout(args) => commands::logout::run(args).await,
            Command::Status(args) => commands::status::run(args).await,
            Command::Token(args) => commands::token::run(args).await,
            Command::Up(args) => commands::up::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Env(cmd) => commands::env::run(cmd).await,
            Command::Git(cmd) => commands::git::run(cmd).await,
            Command::Open(args) => commands::open::run(args).await,
            Command::Config(args) => commands::config::run(args),
            Command::Doctor(args) => commands::doctor::run(args).await,
            Command::Bugreport(args) => commands::bugreport::run(args).await,
            Command::SshProxy { service } => commands::ssh_proxy::run(service).await,
            #[cfg(feature = "demo")]
            Command::Demo => demo::run().await.map(|()| ExitCode::SUCCESS),
        }
    });
    // Browser openers and keychain threads must not keep the process alive.
    rt.shutdown_timeout(Duration::from_millis(500));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gangway: {}", gangway_agent::error::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
