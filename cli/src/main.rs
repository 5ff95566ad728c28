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

fn main() -> ExitCode {
    let _ = gangway_transport::heap::tune();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
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
