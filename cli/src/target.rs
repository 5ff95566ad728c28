//! The environment a command is about, resolved from the flags and the
//! config file.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use gangway_agent::config::{parse_relay_url, user_config_path, AgentConfig};
use gangway_agent::keychain::{namespace_for, Keychain};
use url::Url;

use crate::args::TargetArgs;

/// An environment resolved from the flags and the config file.
pub struct Target {
    /// Its name in the config file, if it came from there.
    pub name: Option<String>,
    pub relay: Url,
    pub ca_file: Option<PathBuf>,
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

    pub fn tls(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        Ok(gangway_agent::tls::client_config(self.ca_file.as_deref())?)
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
