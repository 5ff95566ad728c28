//! `gangway-relay --config relay.toml`

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Parser;
use gangway_relay::{Relay, RelayConfig, TlsMode};

/// The Gangway relay: the server agents tunnel to, in front of Bitbucket and
/// Confluence.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Path of the relay's TOML configuration.
    #[arg(long, short)]
    config: PathBuf,
    /// Serve plain HTTP instead of TLS. Only on a loopback address, unless the
    /// config sets tls.insecure_plaintext for use behind a TLS-terminating
    /// balancer.
    #[arg(long)]
    insecure_plaintext: bool,
}

fn main() -> std::process::ExitCode {
    if let Some(code) = gangway_relay::admin::cli::main_if_admin() {
        return code;
    }
    let _ = gangway_transport::heap::tune();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    // This thread accepts, runs health checks and key fetches; connections
    // are served on the worker threads (`workers` in the config).
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gangway-relay: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gangway-relay: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut config = RelayConfig::load(&args.config)?;
    if args.insecure_plaintext {
        if !config.listen.ip().is_loopback() {
            bail!(
                "refusing --insecure-plaintext on non-loopback address {}; set tls.insecure_plaintext = true in {} to run behind a TLS-terminating balancer",
                config.listen,
                args.config.display()
            );
        }
        config.tls = TlsMode::Plaintext;
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let scheme = match config.tls {
        TlsMode::Files { .. } => "https",
        TlsMode::Plaintext => "http",
    };
    let relay = Arc::new(Relay::from_config(config)?);
    tracing::info!("gangway-relay listening on {scheme}://{addr}");
    gangway_relay::run(listener, relay, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
