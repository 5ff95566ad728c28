//! `gangway-relay --config relay.toml`, `gangway-relay check-config FILE`

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Parser;
use gangway_relay::{Live, Relay, RelayConfig, TlsMode};

/// The Gangway relay: the server agents tunnel to, in front of Bitbucket and
/// Confluence.
///
/// Signals: SIGTERM or SIGINT drains (stop accepting, tell sessions
/// goodbye, let open streams finish until `[drain] deadline_secs`, exit 0);
/// SIGHUP reloads the config file (checked first; a bad one is refused and
/// logged, the running config stays).
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Args {
    /// Path of the relay's TOML configuration.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Serve plain HTTP instead of TLS. Only on a loopback address, unless the
    /// config sets tls.insecure_plaintext for use behind a TLS-terminating
    /// balancer.
    #[arg(long)]
    insecure_plaintext: bool,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Checks a config file as a start or a reload would (the TOML, and
    /// the certificate, key, JWKS and assertion key files it names); prints
    /// one line, exits non-zero naming file, key and reason.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    let _ = gangway_transport::heap::tune();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    if let Some(Cmd::CheckConfig { file }) = &args.command {
        return match gangway_relay::reload::check(file) {
            Ok(_) => {
                println!("{}: OK", file.display());
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gangway-relay: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let Some(config) = args.config.clone() else {
        eprintln!("gangway-relay: --config FILE is required (or: gangway-relay check-config FILE)");
        return std::process::ExitCode::FAILURE;
    };
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
    match rt.block_on(run(config, args.insecure_plaintext)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gangway-relay: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Reads `file` as a start or a reload does: `--insecure-plaintext`
/// applies on top, on a loopback address only.
fn load(file: &Path, insecure_plaintext: bool) -> anyhow::Result<RelayConfig> {
    let mut config = RelayConfig::load(file)?;
    if insecure_plaintext {
        if !config.listen.ip().is_loopback() {
            bail!(
                "refusing --insecure-plaintext on non-loopback address {}; set tls.insecure_plaintext = true in {} to run behind a TLS-terminating balancer",
                config.listen,
                file.display()
            );
        }
        config.tls = TlsMode::Plaintext;
    }
    Ok(config)
}

async fn run(file: PathBuf, insecure_plaintext: bool) -> anyhow::Result<()> {
    let config = load(&file, insecure_plaintext)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let scheme = match config.tls {
        TlsMode::Files { .. } => "https",
        TlsMode::Plaintext => "http",
    };
    let live = Live::new(Arc::new(Relay::from_config(config)?));
    let drain = drain_signal()?;
    reload_on_sighup(live.clone(), file, insecure_plaintext)?;
    tracing::info!("gangway-relay listening on {scheme}://{addr}");
    gangway_relay::serve(listener, live, drain).await?;
    Ok(())
}

/// On each SIGHUP (handler installed now, before the relay says it
/// listens): reads and checks the file, and swaps the running config for
/// it; a bad file is refused (logged with file, key and reason) and the
/// running config stays.
#[cfg(unix)]
fn reload_on_sighup(
    live: Arc<Live>,
    file: PathBuf,
    insecure_plaintext: bool,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let reloaded =
                load(&file, insecure_plaintext).and_then(|config| Ok(live.reload(&file, config)?));
            match reloaded {
                Ok(kept) => {
                    for warning in kept {
                        tracing::warn!("reload: {warning}");
                    }
                    tracing::info!(file = %file.display(), "reloaded the config");
                }
                Err(e) => tracing::error!("reload refused, the running config stays: {e:#}"),
            }
        }
    });
    Ok(())
}

#[cfg(not(unix))]
fn reload_on_sighup(_: Arc<Live>, _: PathBuf, _: bool) -> anyhow::Result<()> {
    Ok(())
}

/// SIGTERM or SIGINT: the relay drains. The handlers are installed now,
/// before the relay says it listens (a signal's default action would end
/// the process instead); the future resolves on the first of them.
#[cfg(unix)]
fn drain_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    Ok(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("signal received: draining");
    })
}

#[cfg(not(unix))]
fn drain_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("signal received: draining");
    })
}
