//! `gangway`: the agent's command line.

mod demo;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use gangway_agent::config::{parse_relay_url, user_config_path, AgentConfig};
use gangway_agent::token::TokenSource;
use gangway_agent::tunnel::Backoff;
use gangway_agent::up::{self, UpOptions};
use gangway_wire::Token;
use tokio_util::sync::CancellationToken;

/// Gangway: reach Bitbucket and Confluence from your laptop without a VPN.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Connect to the relay and serve local listeners until Ctrl-C.
    Up(UpArgs),
    /// Run a self-contained demo on this machine (relay, git repo, agent).
    Demo,
}

#[derive(clap::Args)]
struct UpArgs {
    /// Environment from the config file.
    #[arg(long = "env")]
    environment: Option<String>,
    /// Relay URL (instead of an environment from the config file).
    #[arg(long)]
    relay: Option<String>,
    /// Extra CA certificate (PEM) to trust for the relay.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Config file (default: the user config file).
    #[arg(long)]
    config: Option<PathBuf>,
    /// File holding the access token, re-read on every connect. Without it,
    /// the token comes from GANGWAY_TOKEN.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Local address for a service, e.g. bitbucket=127.0.0.1:17990 (repeatable).
    #[arg(long = "listen", value_name = "SERVICE=ADDR")]
    listen: Vec<String>,
    /// Seconds a new connection waits for the tunnel before it is refused.
    #[arg(long, default_value_t = 20)]
    connect_wait: u64,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gangway: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Up(args) => up(args).await,
            Command::Demo => demo::run().await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gangway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let (relay, ca_file, ports) = match &args.relay {
        Some(r) => (
            parse_relay_url(r).map_err(|e| anyhow!("--relay {e}"))?,
            args.ca_file.clone(),
            BTreeMap::new(),
        ),
        None => {
            let path = args
                .config
                .clone()
                .or_else(user_config_path)
                .context("no config directory on this system; pass --relay")?;
            let config = AgentConfig::load(&path)?;
            let env = config.environment(args.environment.as_deref())?;
            (
                env.relay.clone(),
                args.ca_file.clone().or_else(|| env.ca_file.clone()),
                env.ports.clone(),
            )
        }
    };
    let tokens = match (&args.token_file, std::env::var("GANGWAY_TOKEN")) {
        (Some(path), _) => TokenSource::File(path.clone()),
        (None, Ok(t)) if !t.trim().is_empty() => TokenSource::Static(Token::new(t.trim())),
        _ => bail!("no access token: set GANGWAY_TOKEN or pass --token-file FILE"),
    };
    let mut listen = BTreeMap::new();
    for spec in &args.listen {
        let (svc, addr) = spec
            .split_once('=')
            .with_context(|| format!("--listen {spec:?}: expected SERVICE=ADDR"))?;
        let addr: SocketAddr = addr
            .parse()
            .with_context(|| format!("--listen {spec:?}: {addr:?} is not an address"))?;
        listen.insert(svc.to_string(), addr);
    }
    let stop = CancellationToken::new();
    let tls = gangway_agent::tls::client_config(ca_file.as_deref())?;
    let running = up::start(
        UpOptions {
            relay: relay.clone(),
            tls,
            tokens,
            ports,
            listen,
            connect_wait: Duration::from_secs(args.connect_wait),
            backoff: Backoff::default(),
        },
        stop.clone(),
    )
    .await?;
    println!(
        "Signed in to {relay} as {} — {} service(s):",
        running.catalog.subject,
        running.listening.len()
    );
    for (svc, addr) in &running.listening {
        let kind = match svc.kind {
            gangway_agent::relay_api::ServiceKind::Http => "http",
            gangway_agent::relay_api::ServiceKind::Tcp => "tcp",
        };
        println!(
            "  listening  {:<16} {addr}  ({}, {kind})",
            svc.name, svc.display_name
        );
    }
    for f in &running.failed {
        println!("  not listening  {f}");
    }
    if running.listening.is_empty() {
        bail!("no service could be served");
    }
    tokio::signal::ctrl_c().await?;
    stop.cancel();
    Ok(())
}
