//! The command line, as clap parses it.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gangway_agent::config::user_config_path;

/// Gangway: reach Bitbucket and Confluence from your laptop without a VPN.
#[derive(Parser)]
#[command(name = "gangway", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Sign in through the browser (or with a code: --device); tokens go to
    /// the OS keychain.
    Login(LoginArgs),
    /// Sign out: revoke the refresh token at the identity provider and
    /// delete this environment's tokens from the OS keychain.
    Logout(TargetArgs),
    /// Who is signed in to an environment, and until when; what the running
    /// agent serves and who its local door refused.
    Status(StatusArgs),
    /// Print a current access token (refreshed if needed), for scripts.
    Token(TokenArgs),
    /// Connect to the relay and serve local listeners until Ctrl-C (the
    /// same agent as the tray app, without the tray; serves the control API).
    Up(UpArgs),
    /// For SSH's ProxyCommand: carry standard input and output as one
    /// stream to SERVICE through the running agent (no local port).
    SshProxy {
        /// The SSH service's name in the catalog, e.g. bitbucket-ssh.
        service: String,
    },
    /// List, choose, add or remove environments in the user config file.
    #[command(subcommand)]
    Env(EnvCommand),
    /// Git and the local door: the credential helper git runs, and its
    /// registration in ~/.gitconfig (done by `login`, undone by `logout`).
    #[command(subcommand)]
    Git(GitCommand),
    /// Open a web service (e.g. confluence) in the browser through the
    /// local door (a one-time link; no password dialog).
    Open(OpenArgs),
    /// Show every setting in effect, with where its value comes from (your
    /// organisation's policy, its recommendations, your config file or the
    /// built-in default) and whether it is locked.
    Config(ConfigShowArgs),
    /// Check each piece Gangway relies on (config, DNS, TLS, clock, sign-in,
    /// keychain, tunnel, local ports, git, ssh): PASS/WARN/FAIL with a fix
    /// for each; exit code 1 when any fails.
    Doctor(DoctorArgs),
    /// Write a redacted archive (doctor report, effective config, versions,
    /// recent agent logs) to attach to a support ticket.
    Bugreport(BugreportArgs),
    /// Run a self-contained demo on this machine (relay, git repo, agent).
    #[cfg(feature = "demo")]
    Demo,
}

#[derive(Subcommand)]
pub enum EnvCommand {
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

#[derive(Subcommand)]
pub enum GitCommand {
    /// git's credential-helper protocol (git runs this: `get` answers with
    /// the agent's local credential for its own addresses; `store` and
    /// `erase` do nothing).
    Credential {
        #[arg(value_parser = ["get", "store", "erase"])]
        action: String,
    },
    /// Register gangway in ~/.gitconfig as the credential helper for the
    /// running agent's local HTTP addresses (no secret is written).
    Setup,
    /// Remove every gangway credential helper from ~/.gitconfig.
    Remove,
}

#[derive(clap::Args)]
pub struct OpenArgs {
    /// The service, e.g. confluence.
    pub service: String,
    /// Print the one-time URL instead of opening a browser.
    #[arg(long)]
    pub print: bool,
}

/// `gangway doctor`.
#[derive(clap::Args)]
pub struct DoctorArgs {
    /// Environment from the config file (default: the default one).
    #[arg(long = "env")]
    pub environment: Option<String>,
    /// As JSON: {environment, versions, checks: [{check, status, detail, fix}]}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `gangway bugreport`.
#[derive(clap::Args)]
pub struct BugreportArgs {
    /// Environment from the config file (default: the default one).
    #[arg(long = "env")]
    pub environment: Option<String>,
    /// Where to write the archive (default:
    /// gangway-bugreport-DATE-TIME.tar.gz in the current directory).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArgs,
}

#[derive(clap::Args)]
pub struct ConfigArgs {
    /// Config file (default: the user config file).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// `gangway config`.
#[derive(clap::Args)]
pub struct ConfigShowArgs {
    /// The settings in effect (the default, and the only view so far).
    #[arg(long)]
    pub effective: bool,
    /// As JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub config: ConfigArgs,
}

impl ConfigArgs {
    pub fn path(&self) -> anyhow::Result<PathBuf> {
        self.config
            .clone()
            .or_else(user_config_path)
            .context("no config directory on this system; pass --config")
    }
}

/// Which environment a command is about.
#[derive(clap::Args)]
pub struct TargetArgs {
    /// Environment from the config file.
    #[arg(long = "env", conflicts_with = "relay")]
    pub environment: Option<String>,
    /// Relay URL (instead of an environment from the config file).
    #[arg(long)]
    pub relay: Option<String>,
    /// Extra CA certificate (PEM) to trust for the relay and the identity provider.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Config file (default: the user config file).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// A service account instead of the signed-in user (build machines).
#[derive(clap::Args, Clone, Default)]
pub struct ServiceAccountArgs {
    /// Sign in as a service account: the OAuth client credentials grant at
    /// the environment's identity provider. The client id comes from
    /// --client-id or GANGWAY_CLIENT_ID, the secret from
    /// --client-secret-file or GANGWAY_CLIENT_SECRET (never a flag: other
    /// users can read a command line). The token stays in memory and is
    /// fetched anew before it expires; nothing goes to the keychain.
    #[arg(long)]
    pub client_credentials: bool,
    /// The service account's client id (default: GANGWAY_CLIENT_ID).
    #[arg(long, requires = "client_credentials")]
    pub client_id: Option<String>,
    /// File holding the client secret (default: GANGWAY_CLIENT_SECRET).
    #[arg(long, requires = "client_credentials")]
    pub client_secret_file: Option<PathBuf>,
}

impl ServiceAccountArgs {
    /// The credentials, when --client-credentials was given.
    pub fn credentials(&self) -> anyhow::Result<Option<gangway_agent::signin::ClientCredentials>> {
        if !self.client_credentials {
            return Ok(None);
        }
        Ok(Some(gangway_agent::signin::ClientCredentials::from_env(
            self.client_id.as_deref(),
            self.client_secret_file.as_deref(),
        )?))
    }
}

#[derive(clap::Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub service: ServiceAccountArgs,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Print the running agent's whole status as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct LoginArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Sign in with a code on another device (no browser needed here).
    #[arg(long, conflicts_with = "client_credentials")]
    pub device: bool,
    #[command(flatten)]
    pub service: ServiceAccountArgs,
    /// Seconds to wait for the browser sign-in to finish.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Don't start a browser; only print the URL to open.
    #[arg(long)]
    pub no_browser: bool,
}

#[derive(clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// File holding the access token, re-read on every connect. Without it
    /// (and without GANGWAY_TOKEN), the signed-in tokens in the OS keychain
    /// are used (see `gangway login`).
    #[arg(long, conflicts_with = "client_credentials")]
    pub token_file: Option<PathBuf>,
    #[command(flatten)]
    pub service: ServiceAccountArgs,
    /// Local address for a service, e.g. bitbucket=127.0.0.1:17990 (repeatable).
    /// Loopback addresses only, unless --allow-network-listen.
    #[arg(long = "listen", value_name = "SERVICE=ADDR")]
    pub listen: Vec<String>,
    /// Allow --listen on a non-loopback address (0.0.0.0, a LAN address):
    /// anyone who can reach it then uses the service as you.
    #[arg(long)]
    pub allow_network_listen: bool,
    /// Seconds a new connection waits for the tunnel before it is refused.
    #[arg(long, default_value_t = 20)]
    pub connect_wait: u64,
}
