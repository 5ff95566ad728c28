//! `gangway up`: the same agent as the tray app, without the tray: serves
//! the environment's listeners and the control API until Ctrl-C.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use gangway_agent::agent::{Agent, AgentOptions, EnvSource, EnvSpec, Tokens};
use gangway_agent::config::{user_config_path, AgentConfig};
use gangway_agent::control::{self, AgentControl};
use gangway_agent::keychain::{namespace_for, OsKeychain};
use gangway_agent::status::{Frontend, Phase};
use gangway_agent::token::TokenSource;
use gangway_agent::tunnel::Backoff;
use gangway_wire::Token;
use tokio_util::sync::CancellationToken;

use crate::args::UpArgs;
use crate::output::{listening_of, print_listening, print_network_warnings};
use crate::target::Target;

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let target = Target::resolve(&args.target)?;
    // A bad CA file or proxy setting is reported before anything starts.
    target.egress()?;
    let service = args.service.credentials()?;
    let tokens = match (&args.token_file, std::env::var("GANGWAY_TOKEN")) {
        _ if service.is_some() => Tokens::Service(service.expect("checked")),
        (Some(path), _) => Tokens::Fixed(TokenSource::File(path.clone())),
        (None, Ok(t)) if !t.trim().is_empty() => {
            Tokens::Fixed(TokenSource::Static(Token::new(t.trim())))
        }
        _ => {
            target.keychain().await?;
            Tokens::Keychain(Arc::new(OsKeychain))
        }
    };
    let listen = parse_listen(&args.listen, args.allow_network_listen)?;
    let config_path = args.target.config.clone().or_else(user_config_path);
    let (environments, initial) = environments(&target, &args, config_path.as_deref());
    let managed = config_path
        .as_deref()
        .and_then(|p| AgentConfig::load(p).ok())
        .map(|c| gangway_agent::agent::Managed::from_config(&c))
        .unwrap_or_default();
    let agent = Agent::start(AgentOptions {
        config_path,
        ca_override: args.target.ca_file.clone(),
        environments,
        initial: Some(initial),
        tokens,
        listen,
        allow_network_listen: args.allow_network_listen,
        connect_wait: Duration::from_secs(args.connect_wait),
        backoff: Backoff::default(),
        browser: std::env::var("BROWSER").ok(),
        unreachable_notice_after: gangway_agent::notices::UNREACHABLE_NOTICE_AFTER,
        frontend: Frontend::Cli,
        managed,
    });
    let stop = CancellationToken::new();
    let handler = Arc::new(AgentControl(agent.clone()));
    match control::serve_control(handler, stop.clone()).await {
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
    print_network_warnings(&snap);
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

/// `--listen SERVICE=ADDR` flags; a non-loopback address is refused before
/// anything starts unless `allow_network` (the agent library checks again).
fn parse_listen(
    specs: &[String],
    allow_network: bool,
) -> anyhow::Result<BTreeMap<String, SocketAddr>> {
    let mut listen = BTreeMap::new();
    for spec in specs {
        let (svc, addr) = spec
            .split_once('=')
            .with_context(|| format!("--listen {spec:?}: expected SERVICE=ADDR"))?;
        let addr: SocketAddr = addr
            .parse()
            .with_context(|| format!("--listen {spec:?}: {addr:?} is not an address"))?;
        if !allow_network && !addr.ip().to_canonical().is_loopback() {
            bail!(
                "--listen {spec}: refusing to listen on {addr}: it is not a loopback address, so \
                 anyone who can reach it could use {svc} as you; use 127.0.0.1 or [::1], or add \
                 {} if that is really what you want",
                gangway_agent::door::listen::ALLOW_FLAG
            );
        }
        listen.insert(svc.to_string(), addr);
    }
    Ok(listen)
}

/// Every environment of the config file can be switched to; one given with
/// `--relay` comes first. Returns them and the one to start with.
fn environments(
    target: &Target,
    args: &UpArgs,
    config_path: Option<&std::path::Path>,
) -> (Vec<EnvSpec>, String) {
    let mut environments: Vec<EnvSpec> = config_path
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
            let name = namespace_for(&target.relay);
            environments.retain(|e| e.name != name);
            environments.insert(
                0,
                EnvSpec {
                    name: name.clone(),
                    relay: target.relay.clone(),
                    ca_file: target.ca_file.clone(),
                    proxy: target.proxy.clone(),
                    ports: BTreeMap::new(),
                    login_hint: target.login_hint.clone(),
                    source: EnvSource::CommandLine,
                    locked: false,
                },
            );
            name
        }
    };
    (environments, initial)
}
