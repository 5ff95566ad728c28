//! `gangway`: the agent's command line.

mod demo;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use gangway_agent::config::{parse_relay_url, user_config_path, AgentConfig};
use gangway_agent::keychain::Keychain;
use gangway_agent::relay_api::RelayApi;
use gangway_agent::signin::{self, Credentials, IdentityProvider, SignInStatus, UnverifiedClaims};
use gangway_agent::token::TokenSource;
use gangway_agent::tunnel::Backoff;
use gangway_agent::up::{self, UpOptions};
use gangway_agent::AgentError;
use gangway_wire::Token;
use tokio_util::sync::CancellationToken;
use url::Url;

/// Gangway: reach Bitbucket and Confluence from your laptop without a VPN.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sign in through the browser (or with a code: --device); tokens go to
    /// the OS keychain.
    Login(LoginArgs),
    /// Sign out: revoke the refresh token at the identity provider and
    /// delete this environment's tokens from the OS keychain.
    Logout(TargetArgs),
    /// Who is signed in to an environment, and until when.
    Status(TargetArgs),
    /// Print a current access token (refreshed if needed), for scripts.
    Token(TargetArgs),
    /// Connect to the relay and serve local listeners until Ctrl-C.
    Up(UpArgs),
    /// Run a self-contained demo on this machine (relay, git repo, agent).
    Demo,
}

/// Which environment a command is about.
#[derive(clap::Args)]
struct TargetArgs {
    /// Environment from the config file.
    #[arg(long = "env", conflicts_with = "relay")]
    environment: Option<String>,
    /// Relay URL (instead of an environment from the config file).
    #[arg(long)]
    relay: Option<String>,
    /// Extra CA certificate (PEM) to trust for the relay and the identity provider.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Config file (default: the user config file).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(clap::Args)]
struct LoginArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Sign in with a code on another device (no browser needed here).
    #[arg(long)]
    device: bool,
    /// Seconds to wait for the browser sign-in to finish.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Don't start a browser; only print the URL to open.
    #[arg(long)]
    no_browser: bool,
}

#[derive(clap::Args)]
struct UpArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// File holding the access token, re-read on every connect. Without it
    /// (and without GANGWAY_TOKEN), the signed-in tokens in the OS keychain
    /// are used (see `gangway login`).
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
            Command::Login(args) => login(args).await,
            Command::Logout(args) => logout(args).await,
            Command::Status(args) => status(args).await,
            Command::Token(args) => token(args).await,
            Command::Up(args) => up(args).await.map(|()| ExitCode::SUCCESS),
            Command::Demo => demo::run().await.map(|()| ExitCode::SUCCESS),
        }
    });
    // Browser openers and keychain threads must not keep the process alive.
    rt.shutdown_timeout(Duration::from_millis(500));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gangway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// An environment resolved from the flags and the config file.
struct Target {
    /// Its name in the config file, if it came from there.
    name: Option<String>,
    relay: Url,
    ca_file: Option<PathBuf>,
    ports: BTreeMap<String, u16>,
    /// The command that signs in to it, for messages.
    login_hint: String,
}

impl Target {
    fn resolve(args: &TargetArgs) -> anyhow::Result<Self> {
        let ca_hint = args
            .ca_file
            .as_ref()
            .map(|p| format!(" --ca-file {}", p.display()))
            .unwrap_or_default();
        match &args.relay {
            Some(r) => {
                let relay = parse_relay_url(r).map_err(|e| anyhow!("--relay {e}"))?;
                Ok(Target {
                    name: None,
                    login_hint: format!("gangway login --relay {r}{ca_hint}"),
                    relay,
                    ca_file: args.ca_file.clone(),
                    ports: BTreeMap::new(),
                })
            }
            None => {
                let path = args
                    .config
                    .clone()
                    .or_else(user_config_path)
                    .context("no config directory on this system; pass --relay")?;
                let config = AgentConfig::load(&path)?;
                let env = config.environment(args.environment.as_deref())?;
                Ok(Target {
                    name: Some(env.name.clone()),
                    login_hint: format!("gangway login --env {}{ca_hint}", env.name),
                    relay: env.relay.clone(),
                    ca_file: args.ca_file.clone().or_else(|| env.ca_file.clone()),
                    ports: env.ports.clone(),
                })
            }
        }
    }

    /// "prod (https://gangway.example.com)" or just the URL.
    fn label(&self) -> String {
        let url = gangway_agent::keychain::namespace_for(&self.relay);
        match &self.name {
            Some(n) => format!("{n} ({url})"),
            None => url,
        }
    }

    fn tls(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        Ok(gangway_agent::tls::client_config(self.ca_file.as_deref())?)
    }

    /// This environment's slice of the OS keychain, checked to be reachable.
    async fn keychain(&self) -> anyhow::Result<Keychain> {
        let keychain = Keychain::os(&self.relay);
        keychain
            .run(|k| k.probe())
            .await
            .map_err(|e| anyhow!("cannot use the OS keychain: {e}"))?;
        Ok(keychain)
    }
}

async fn login(args: LoginArgs) -> anyhow::Result<ExitCode> {
    let target = Target::resolve(&args.target)?;
    let tls = target.tls()?;
    // Before anyone types a password: can the tokens be kept at all?
    let keychain = target.keychain().await?;
    let idp = IdentityProvider::discover(&target.relay, tls.clone()).await?;
    let set = if args.device {
        signin::device_code(&idp, |p| {
            let url = p
                .verification_uri_complete
                .as_deref()
                .unwrap_or(&p.verification_uri);
            eprintln!(
                "To sign in to {}, open this page on any device:",
                target.label()
            );
            eprintln!("  {url}");
            eprintln!("and check that it shows the code: {}", p.user_code);
            eprintln!(
                "(The code is valid for {} minutes.) Waiting for approval…",
                p.expires_in.as_secs().div_ceil(60)
            );
        })
        .await?
    } else {
        let browser = std::env::var("BROWSER").ok();
        signin::authorization_code(&idp, Duration::from_secs(args.timeout), |url| {
            eprintln!("Signing in to {} in your browser.", target.label());
            eprintln!("If no browser opens, open this page:");
            eprintln!("  {url}");
            if !args.no_browser {
                if let Err(e) = signin::open_browser(url.as_str(), browser.as_deref()) {
                    eprintln!("({e})");
                }
            }
            eprintln!(
                "Waiting up to {} s for the sign-in to finish…",
                args.timeout
            );
        })
        .await?
    };
    if set.refresh.is_none() {
        eprintln!(
            "warning: the identity provider issued no refresh token;              you will have to sign in again when the access token expires"
        );
    }
    signin::remember(&keychain, &set, &idp.issuer).await?;
    let claims = UnverifiedClaims::peek(set.access.expose()).unwrap_or_default();
    if !claims.aud.is_empty() && !claims.aud.iter().any(|a| a == &idp.audience) {
        eprintln!(
            "warning: the access token is for {:?}, but the relay expects audience {:?}",
            claims.aud, idp.audience
        );
    }
    let who = claims
        .sub
        .clone()
        .unwrap_or_else(|| "(unknown user)".into());
    let api = RelayApi::new(target.relay.clone(), tls)?;
    match api.catalog(&set.access).await {
        Ok(catalog) => {
            println!(
                "Signed in to {} as {} — {} service(s) available.",
                target.label(),
                catalog.subject,
                catalog.services.len()
            );
        }
        Err(AgentError::Unauthorized(why)) => bail!(
            "signed in as {who} at the identity provider, but the relay refuses the token: {why}"
        ),
        Err(e) => {
            println!("Signed in to {} as {who}.", target.label());
            eprintln!("warning: could not check the token with the relay: {e}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn logout(args: TargetArgs) -> anyhow::Result<ExitCode> {
    let target = Target::resolve(&args)?;
    let tls = target.tls()?;
    let keychain = target.keychain().await?;
    let idp = IdentityProvider::discover(&target.relay, tls).await;
    let done = signin::forget(&keychain, idp.as_ref().map_err(Clone::clone)).await?;
    if !done.was_signed_in {
        println!("Not signed in to {}; nothing to do.", target.label());
        return Ok(ExitCode::SUCCESS);
    }
    match done.revoked {
        Some(Ok(true)) => println!("Refresh token revoked at the identity provider."),
        Some(Ok(false)) => println!(
            "The identity provider offers no revocation; the refresh token was deleted here only."
        ),
        Some(Err(e)) => {
            eprintln!("warning: could not revoke the refresh token at the identity provider: {e}")
        }
        None => {}
    }
    println!(
        "Signed out of {}: tokens deleted from the OS keychain.",
        target.label()
    );
    Ok(ExitCode::SUCCESS)
}

async fn status(args: TargetArgs) -> anyhow::Result<ExitCode> {
    let target = Target::resolve(&args)?;
    let keychain = target.keychain().await?;
    println!("Environment: {}", target.label());
    match signin::status(&keychain).await? {
        SignInStatus::SignedIn {
            subject,
            issuer,
            expires_at,
            refreshable,
        } => {
            let who = subject.unwrap_or_else(|| "(unknown user)".into());
            if issuer.is_empty() {
                println!("Signed in as {who}");
            } else {
                println!("Signed in as {who} (identity provider {issuer})");
            }
            if let Some(exp) = expires_at {
                println!(
                    "Access token: expires {} ({}); read from the token, not verified",
                    format_time(exp),
                    relative(exp)
                );
            }
            if refreshable {
                println!("Refresh token: stored in the OS keychain; renewed automatically");
            } else {
                println!(
                    "Refresh token: none; run `{}` when the access token expires",
                    target.login_hint
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        SignInStatus::SignInNeeded(why) => {
            println!("Sign-in needed: {why}");
            println!("Run: {}", target.login_hint);
            Ok(ExitCode::FAILURE)
        }
        SignInStatus::NotSignedIn => {
            println!("Not signed in. Run: {}", target.login_hint);
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn token(args: TargetArgs) -> anyhow::Result<ExitCode> {
    let target = Target::resolve(&args)?;
    let tls = target.tls()?;
    let keychain = target.keychain().await?;
    let creds = Credentials::new(
        target.relay.clone(),
        tls,
        keychain,
        target.login_hint.clone(),
    );
    let t = creds.current().await?;
    println!("{}", t.token.expose());
    Ok(ExitCode::SUCCESS)
}

fn format_time(unix: u64) -> String {
    chrono::DateTime::from_timestamp(unix as i64, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| unix.to_string())
}

fn relative(unix: u64) -> String {
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

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let target = Target::resolve(&args.target)?;
    let tls = target.tls()?;
    let tokens = match (&args.token_file, std::env::var("GANGWAY_TOKEN")) {
        (Some(path), _) => TokenSource::File(path.clone()),
        (None, Ok(t)) if !t.trim().is_empty() => TokenSource::Static(Token::new(t.trim())),
        _ => {
            let keychain = target.keychain().await?;
            TokenSource::SignedIn(Arc::new(Credentials::new(
                target.relay.clone(),
                tls.clone(),
                keychain,
                target.login_hint.clone(),
            )))
        }
    };
    let relay = target.relay.clone();
    let ports = target.ports.clone();
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
