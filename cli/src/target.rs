//! The environment a command is about, resolved from the flags and the
//! config file.

use std::path::PathBuf;

use anyhow::{anyhow, Context};
use gangway_agent::config::{parse_relay_url, user_config_path, AgentConfig};
use gangway_agent::keychain::{namespace_for, Keychain};
use gangway_agent::net::{Egress, ExplicitProxy};
use url::Url;

use crate::args::TargetArgs;

/// An environment resolved from the flags and the config file.
pub struct Target {
    /// Its name in the config file, if it came from there.
    pub name: Option<String>,
    pub relay: Url,
    pub ca_file: Option<PathBuf>,
    /// The explicit proxy setting in effect (else the environment
    /// variables decide).
    pub proxy: Option<ExplicitProxy>,
    /// The command that signs in to it, for messages.
    pub login_hint: String,
}

impl Target {
    pub fn resolve(args: &TargetArgs) -> anyhow::Result<Self> {
        let ca_hint = args
            .ca_file
            .as_ref()
            .map(|p| format!(" --ca-file {}", p.display()))
            .unwrap_or_default();
        match &args.relay {
            Some(r) => {
                let relay = parse_relay_url(r).map_err(|e| anyhow!("--relay {e}"))?;
                // The global proxy setting still applies to a relay given
                // on the command line.
                let proxy = match args.config.clone().or_else(user_config_path) {
                    Some(path) => AgentConfig::load(&path)?.global_proxy(),
                    None => None,
                };
                Ok(Target {
                    proxy,
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
                    proxy: env.proxy.clone(),
                })
            }
        }
    }

    /// Its name in messages and results: the config file's, or the relay URL.
    pub fn name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| namespace_for(&self.relay))
    }

    /// "prod (https://gangway.example.com)" or just the URL.
    pub fn label(&self) -> String {
        let url = namespace_for(&self.relay);
        match &self.name {
            Some(n) => format!("{n} ({url})"),
            None => url,
        }
    }

    /// TLS trust (OS roots plus its CA file) and proxy decision for its
    /// relay and identity provider.
    pub fn egress(&self) -> anyhow::Result<Egress> {
        Ok(Egress::for_environment(
            self.ca_file.as_deref(),
            self.proxy.as_ref(),
        )?)
    }

    /// This environment's slice of the OS keychain, checked to be reachable.
    pub async fn keychain(&self) -> anyhow::Result<Keychain> {
        let keychain = Keychain::os(&self.relay);
        keychain
            .run(|k| k.probe())
            .await
            .map_err(|e| anyhow!("cannot use the OS keychain: {e}"))?;
        Ok(keychain)
    }
}
