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
use gangway_agent::agent::{
    Agent, AgentControl, AgentOptions, EnvSpec, SignedIn, SignedOut, Tokens,
};
use gangway_agent::config::{parse_relay_url, user_config_path, AgentConfig};
use gangway_agent::control::{self, Client, Request};
use gangway_agent::keychain::{Keychain, OsKeychain};
use gangway_agent::relay_api::RelayApi;
use gangway_agent::signin::{self, Credentials, IdentityProvider, SignInStatus, UnverifiedClaims};
use gangway_agent::status::{Frontend, Phase, Snapshot};
use gangway_agent::token::TokenSource;
use gangway_agent::tunnel::Backoff;
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
    /// Connect to the relay and serve local listeners until Ctrl-C (the
    /// same agent as the tray app, without the tray; serves the control API).
    Up(UpArgs),
    /// List, choose, add or remove environments in the user config file.
    #[command(subcommand)]
    Env(EnvCommand),
    /// Run a self-contained demo on this machine (relay, git repo, agent).
    Demo,
}

#[derive(Subcommand)]
enum EnvCommand {
    /// List the environments; `*` marks the default, `running` the one the
    /// running agent (tray app or `gangway up`) serves.
    List(ConfigArgs),
    /// Make NAME the default; a running agent switches to it at once.
    Use {
        name: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Add an environment.
    Add {
        name: String,
        /// The relay's https:// URL.
        relay: String,
        /// Extra CA certificate (PEM) to trust for this relay.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Make it the default environment.
        #[arg(long)]
        default: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Remove an environment (its tokens stay until `gangway logout`).
    Remove {
        name: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(clap::Args)]
struct ConfigArgs {
    /// Config file (default: the user config file).
    #[arg(long)]
    config: Option<PathBuf>,
}

impl ConfigArgs {
    fn path(&self) -> anyhow::Result<PathBuf> {
        self.config
            .clone()
            .or_else(user_config_path)
            .context("no config directory on this system; pass --config")
    }
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
            Command::Login(args) => login(args).await,
            Command::Logout(args) => logout(args).await,
            Command::Status(args) => status(args).await,
            Command::Token(args) => token(args).await,
            Command::Up(args) => up(args).await.map(|()| ExitCode::SUCCESS),
            Command::Env(cmd) => env_command(cmd).await,
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
    // A running agent (tray app or `gangway up`) on this environment signs
    // in itself, so it resumes at once and its tray shows the progress.
    if !args.device && !args.no_browser {
        if let Some((client, snap)) = agent_for(&args.target).await {
            if snap.interactive {
                return login_through(&client, &snap, args.timeout).await;
            }
        }
    }
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
    if let Some((client, snap)) = agent_for(&args).await {
        if snap.interactive {
            return logout_through(&client, &snap).await;
        }
    }
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
    if let Some((_, snap)) = agent_for(&args).await {
        return Ok(print_agent_status(&snap));
    }
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
    // A bad CA file is reported before anything starts.
    target.tls()?;
    let tokens = match (&args.token_file, std::env::var("GANGWAY_TOKEN")) {
        (Some(path), _) => Tokens::Fixed(TokenSource::File(path.clone())),
        (None, Ok(t)) if !t.trim().is_empty() => {
            Tokens::Fixed(TokenSource::Static(Token::new(t.trim())))
        }
        _ => {
            target.keychain().await?;
            Tokens::Keychain(Arc::new(OsKeychain))
        }
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
    // Every environment of the config file can be switched to; one given
    // with --relay comes first.
    let config_path = args.target.config.clone().or_else(user_config_path);
    let mut environments: Vec<EnvSpec> = config_path
        .as_deref()
        .and_then(|p| AgentConfig::load(p).ok())
        .map(|c| {
            c.environments
                .iter()
                .map(|e| EnvSpec::from_config(e, args.target.ca_file.as_ref()))
                .collect()
        })
        .unwrap_or_default();
    let initial = match &target.name {
        Some(n) => n.clone(),
        None => {
            let name = gangway_agent::keychain::namespace_for(&target.relay);
            environments.retain(|e| e.name != name);
            environments.insert(
                0,
                EnvSpec {
                    name: name.clone(),
                    relay: target.relay.clone(),
                    ca_file: target.ca_file.clone(),
                    ports: BTreeMap::new(),
                    login_hint: target.login_hint.clone(),
                },
            );
            name
        }
    };
    let agent = Agent::start(AgentOptions {
        config_path,
        ca_override: args.target.ca_file.clone(),
        environments,
        initial: Some(initial),
        tokens,
        listen,
        connect_wait: Duration::from_secs(args.connect_wait),
        backoff: Backoff::default(),
        browser: std::env::var("BROWSER").ok(),
        unreachable_notice_after: gangway_agent::notices::UNREACHABLE_NOTICE_AFTER,
        frontend: Frontend::Cli,
    });
    let stop = CancellationToken::new();
    let handler = Arc::new(AgentControl(agent.clone()));
    match gangway_agent::agent::serve_control(handler, stop.clone()).await {
        Ok(Some((path, _))) => tracing::info!("control API on {}", path.display()),
        Ok(None) => eprintln!(
            "note: another Gangway agent already serves the control API at {}; \
             `gangway status` will not see this one",
            control::socket_path().display()
        ),
        Err(e) => eprintln!("note: no control API: {e}"),
    }
    let snap = agent.settled().await;
    match &snap.phase {
        Phase::SignInNeeded { reason } if snap.interactive => bail!("sign-in needed: {reason}"),
        Phase::SignInNeeded { reason } => bail!("{reason}"),
        Phase::Failed { reason } => bail!("{reason}"),
        Phase::SignedOut => bail!(
            "signed out; run `{}`",
            snap.login_hint.as_deref().unwrap_or("gangway login")
        ),
        _ => {}
    }
    print_listening(&snap);
    if !snap.services.iter().any(|s| s.local_addr.is_some()) {
        bail!("no service could be served");
    }
    // Later switches (`gangway env use`) are printed too.
    let follower = {
        let agent = agent.clone();
        tokio::spawn(async move {
            let mut rx = agent.changes();
            let mut shown = (snap.environment.clone(), listening_of(&snap));
            while rx.changed().await.is_ok() {
                let now = agent.snapshot();
                let key = (now.environment.clone(), listening_of(&now));
                if key != shown && !key.1.is_empty() {
                    print_listening(&now);
                    shown = key;
                }
            }
        })
    };
    tokio::signal::ctrl_c().await?;
    follower.abort();
    agent.shutdown().await;
    stop.cancel();
    Ok(())
}

fn listening_of(s: &Snapshot) -> Vec<String> {
    s.services
        .iter()
        .filter_map(|x| x.local_addr.clone())
        .collect()
}

fn print_listening(snap: &Snapshot) {
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

// ------------------------------------------------------- the running agent

/// The running agent (tray app or `gangway up`), if it serves the
/// environment `args` names (any, when none is named).
async fn agent_for(args: &TargetArgs) -> Option<(Client, Snapshot)> {
    let client = Client::default_path();
    let value = match client.request(&Request::Status, |_, _| {}).await {
        Ok(Some(v)) => v,
        Ok(None) => return None,
        Err(e) => {
            eprintln!("note: cannot ask the running Gangway agent ({e}); going on without it");
            return None;
        }
    };
    let snap: Snapshot = serde_json::from_value(value).ok()?;
    if args.relay.is_none() && args.environment.is_none() {
        return Some((client, snap));
    }
    let target = Target::resolve(args).ok()?;
    let relay = gangway_agent::keychain::namespace_for(&target.relay);
    (snap.relay.as_deref() == Some(relay.as_str())).then_some((client, snap))
}

/// "prod (https://…)", or just the URL for an environment given by URL.
fn agent_label(snap: &Snapshot) -> String {
    match (&snap.environment, &snap.relay) {
        (Some(e), Some(r)) if e != r => format!("{e} ({r})"),
        (_, Some(r)) => r.clone(),
        (Some(e), None) => e.clone(),
        _ => "(no environment)".into(),
    }
}

fn frontend_name(f: Frontend) -> &'static str {
    match f {
        Frontend::Tray => "the tray app",
        Frontend::Cli => "gangway up",
    }
}

async fn login_through(client: &Client, snap: &Snapshot, timeout: u64) -> anyhow::Result<ExitCode> {
    let label = agent_label(snap);
    eprintln!(
        "Signing in to {label} in your browser (through {}, pid {}).",
        frontend_name(snap.frontend),
        snap.pid
    );
    let reply = client
        .request(
            &Request::Login {
                timeout_secs: Some(timeout),
            },
            |_, url| {
                if let Some(url) = url {
                    eprintln!("If no browser opens, open this page:");
                    eprintln!("  {url}");
                    eprintln!("Waiting up to {timeout} s for the sign-in to finish…");
                }
            },
        )
        .await;
    let done: SignedIn = match reply {
        Ok(Some(v)) => serde_json::from_value(v).context("the agent's answer")?,
        Ok(None) => bail!("the running agent went away"),
        Err(e) => bail!("{e}"),
    };
    if let Some(w) = &done.warning {
        println!("Signed in to {label} as {}.", done.subject);
        eprintln!("warning: {w}");
    } else {
        println!(
            "Signed in to {label} as {} — {} service(s) available.",
            done.subject, done.services
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn logout_through(client: &Client, snap: &Snapshot) -> anyhow::Result<ExitCode> {
    let label = agent_label(snap);
    let done: SignedOut = match client.request(&Request::Logout, |_, _| {}).await {
        Ok(Some(v)) => serde_json::from_value(v).context("the agent's answer")?,
        Ok(None) => bail!("the running agent went away"),
        Err(e) => bail!("{e}"),
    };
    if !done.was_signed_in {
        println!("Not signed in to {label}; nothing to do.");
        return Ok(ExitCode::SUCCESS);
    }
    match done.revocation.as_str() {
        "revoked" => println!("Refresh token revoked at the identity provider."),
        "not_offered" => println!(
            "The identity provider offers no revocation; the refresh token was deleted here only."
        ),
        "none" => {}
        failed => eprintln!(
            "warning: could not revoke the refresh token at the identity provider: {}",
            failed.trim_start_matches("failed: ")
        ),
    }
    println!(
        "Signed out of {label}: tokens deleted from the OS keychain; {} stopped its listeners.",
        frontend_name(snap.frontend)
    );
    Ok(ExitCode::SUCCESS)
}

/// `gangway status` as the running agent sees it.
fn print_agent_status(snap: &Snapshot) -> ExitCode {
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
        if let Some(u) = &snap.user {
            if snap.groups.is_empty() {
                println!("Signed in as {u}");
            } else {
                println!("Signed in as {u} (groups: {})", snap.groups.join(", "));
            }
        }
        if let Some(exp) = snap.token_expires_at {
            println!(
                "Access token: expires {} ({}); read from the token, not verified",
                format_time(exp),
                relative(exp)
            );
        }
        if snap.interactive {
            if snap.refreshable {
                println!("Refresh token: stored in the OS keychain; renewed automatically");
            } else if snap.token_expires_at.is_some() {
                println!("Refresh token: none; run `{hint}` when the access token expires");
            }
        }
    }
    if !snap.services.is_empty() {
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
                gangway_agent::status::bytes(s.stats.bytes_up),
                gangway_agent::status::bytes(s.stats.bytes_down),
                s.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
        }
    }
    if let Some(u) = &snap.links.clone_http {
        println!("Clone over HTTP: git clone {u}PROJECT/REPO.git");
    }
    if let Some(u) = &snap.links.clone_ssh {
        println!("Clone over SSH:  git clone {u}PROJECT/REPO.git");
    }
    if let Some(u) = &snap.links.confluence {
        println!("Confluence: {u}");
    }
    if !snap.problems.is_empty() {
        println!("Problems:");
        for p in &snap.problems {
            println!("  {}  {}", gangway_agent::status::clock(p.at), p.text);
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

// ------------------------------------------------------------ gangway env

async fn env_command(cmd: EnvCommand) -> anyhow::Result<ExitCode> {
    let agent = || async {
        match Client::default_path()
            .request(&Request::Status, |_, _| {})
            .await
        {
            Ok(Some(v)) => serde_json::from_value::<Snapshot>(v).ok(),
            _ => None,
        }
    };
    let reload = || async {
        if let Err(e) = Client::default_path()
            .request(&Request::Reload, |_, _| {})
            .await
        {
            eprintln!("note: the running agent did not reload its config: {e}");
        }
    };
    match cmd {
        EnvCommand::List(c) => {
            let path = c.path()?;
            let config = AgentConfig::load(&path)?;
            let running = agent().await;
            if config.environments.is_empty() {
                println!(
                    "No environments in {}. Add one: gangway env add NAME https://RELAY",
                    path.display()
                );
            }
            for e in &config.environments {
                let default = config.default_environment.as_deref() == Some(e.name.as_str());
                let mut line = format!(
                    "{} {:<14} {}",
                    if default { "*" } else { " " },
                    e.name,
                    gangway_agent::keychain::namespace_for(&e.relay)
                );
                if let Some(s) = running
                    .as_ref()
                    .filter(|s| s.environment.as_deref() == Some(e.name.as_str()))
                {
                    line += &format!(
                        "   running in {}: {}",
                        frontend_name(s.frontend),
                        s.status_line
                    );
                }
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        EnvCommand::Use { name, config } => {
            let path = config.path()?;
            let known = AgentConfig::load(&path)?;
            if let Some(snap) = agent().await {
                if snap.environments.iter().any(|e| e.name == name) {
                    eprintln!("Switching {} to {name}…", frontend_name(snap.frontend));
                    let v = Client::default_path()
                        .request(
                            &Request::Use {
                                environment: name.clone(),
                            },
                            |_, _| {},
                        )
                        .await
                        .map_err(|e| anyhow!("{e}"))?
                        .context("the running agent went away")?;
                    let now: Snapshot = serde_json::from_value(v)?;
                    println!("Now using {name}: {}", now.status_line);
                    return Ok(ExitCode::SUCCESS);
                }
            }
            known.environment(Some(&name))?;
            gangway_agent::envs::set_default(&path, &name)?;
            println!(
                "Default environment is now {name} (the tray app and `gangway up` start with it)."
            );
            Ok(ExitCode::SUCCESS)
        }
        EnvCommand::Add {
            name,
            relay,
            ca_file,
            default,
            config,
        } => {
            let path = config.path()?;
            let c = gangway_agent::envs::add(&path, &name, &relay, ca_file.as_deref(), default)?;
            let env = c.environment(Some(&name))?;
            println!(
                "Added {name} ({}) to {}.",
                gangway_agent::keychain::namespace_for(&env.relay),
                path.display()
            );
            if c.default_environment.as_deref() == Some(name.as_str()) {
                println!("It is the default environment.");
            }
            if agent().await.is_some() {
                reload().await;
                println!("Switch the running agent to it with: gangway env use {name}");
            } else {
                println!("Sign in with: gangway login --env {name}");
            }
            Ok(ExitCode::SUCCESS)
        }
        EnvCommand::Remove { name, config } => {
            let path = config.path()?;
            if let Some(snap) = agent().await {
                if snap.environment.as_deref() == Some(name.as_str()) {
                    bail!(
                        "{name} is in use by {}; switch to another environment first (gangway env use OTHER)",
                        frontend_name(snap.frontend)
                    );
                }
            }
            let before = AgentConfig::load(&path)?;
            let relay = before
                .environment(Some(&name))
                .map(|e| gangway_agent::keychain::namespace_for(&e.relay))?;
            gangway_agent::envs::remove(&path, &name)?;
            println!("Removed {name} from {}.", path.display());
            println!(
                "Its sign-in, if any, stays in the OS keychain; `gangway logout --relay {relay}` removes it."
            );
            if agent().await.is_some() {
                reload().await;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
