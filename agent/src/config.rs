//! Agent configuration: environments (name + relay URL), from the user's
//! config file under the platform config dir.
//!
//! ```toml
//! default_environment = "prod"
//!
//! [[environment]]
//! name = "prod"
//! relay = "https://gangway.example.com"
//! # ca_file = "/etc/gangway/company-ca.pem"   # extra trusted CA (PEM)
//! # [environment.ports]                        # local port overrides
//! # bitbucket = 17990
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use url::Url;

use crate::AgentError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Environment used when none is named.
    default_environment: Option<String>,
    #[serde(default, rename = "environment")]
    environments: Vec<RawEnvironment>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvironment {
    /// Short name, e.g. "prod" or "staging".
    name: String,
    /// The relay's https:// URL.
    relay: String,
    /// Extra CA certificate (PEM) to trust for this relay.
    ca_file: Option<PathBuf>,
    /// Local port per service name, overriding the relay's suggestion.
    #[serde(default)]
    ports: BTreeMap<String, u16>,
}

/// One environment: where its relay is and how to reach it.
#[derive(Debug, Clone)]
pub struct Environment {
    pub name: String,
    pub relay: Url,
    pub ca_file: Option<PathBuf>,
    pub ports: BTreeMap<String, u16>,
}

/// The validated agent configuration.
#[derive(Debug, Clone, Default)]
pub struct AgentConfig {
    pub default_environment: Option<String>,
    pub environments: Vec<Environment>,
}

/// The user's config file: `$XDG_CONFIG_HOME/gangway/config.toml` on Linux,
/// the platform's equivalent elsewhere.
pub fn user_config_path() -> Option<PathBuf> {
    directories::ProjectDirs::from("com", "Gangway", "gangway")
        .map(|d| d.config_dir().join("config.toml"))
}

/// Parses a relay URL as users type it; only https (http for loopback).
pub fn parse_relay_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if url.host_str().is_some_and(is_loopback_host) => Ok(url),
        "http" => Err(format!(
            "{s:?}: plain http is only allowed for a loopback relay; use https"
        )),
        other => Err(format!("{s:?}: scheme {other:?} is not https")),
    }
}

fn is_loopback_host(h: &str) -> bool {
    h == "localhost"
        || h.trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl AgentConfig {
    /// Loads `path`; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Self, AgentError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(AgentError::Config(format!("{}: {e}", path.display()))),
        };
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, AgentError> {
        let bad = |key: &str, reason: String| {
            AgentError::Config(format!("{}: {key}: {reason}", path.display()))
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| format!("line {}", text[..s.start].matches('\n').count() + 1))
                .unwrap_or_else(|| "(syntax)".into());
            bad(&line, e.message().to_string())
        })?;
        let mut environments = Vec::new();
        for (i, env) in raw.environments.into_iter().enumerate() {
            if env.name.is_empty()
                || environments
                    .iter()
                    .any(|e: &Environment| e.name == env.name)
            {
                return Err(bad(
                    &format!("environment[{i}].name"),
                    format!("{:?} is empty or used twice", env.name),
                ));
            }
            let relay = parse_relay_url(&env.relay)
                .map_err(|r| bad(&format!("environment[{i}].relay"), r))?;
            environments.push(Environment {
                name: env.name,
                relay,
                ca_file: env.ca_file,
                ports: env.ports,
            });
        }
        if let Some(d) = &raw.default_environment {
            if !environments.iter().any(|e| &e.name == d) {
                return Err(bad(
                    "default_environment",
                    format!("no environment named {d:?}"),
                ));
            }
        }
        Ok(Self {
            default_environment: raw.default_environment,
            environments,
        })
    }

    /// The environment named `name`, or the default one, or the only one.
    pub fn environment(&self, name: Option<&str>) -> Result<&Environment, AgentError> {
        let wanted = name.or(self.default_environment.as_deref());
        match wanted {
            Some(n) => self
                .environments
                .iter()
                .find(|e| e.name == n)
                .ok_or_else(|| AgentError::UnknownEnvironment {
                    name: n.to_string(),
                    known: self.environments.iter().map(|e| e.name.clone()).collect(),
                }),
            None if self.environments.len() == 1 => Ok(&self.environments[0]),
            None if self.environments.is_empty() => Err(AgentError::NoEnvironment),
            None => Err(AgentError::Config(
                "several environments configured: pick one with --env NAME".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_picks_environments() {
        let c = AgentConfig::parse(
            Path::new("c.toml"),
            r#"
default_environment = "prod"
[[environment]]
name = "prod"
relay = "https://relay.example.com"
[environment.ports]
bitbucket = 17990
[[environment]]
name = "staging"
relay = "https://relay.staging.example.com:8443"
"#,
        )
        .unwrap();
        assert_eq!(c.environment(None).unwrap().name, "prod");
        assert_eq!(
            c.environment(Some("staging")).unwrap().relay.port(),
            Some(8443)
        );
        assert_eq!(c.environment(None).unwrap().ports["bitbucket"], 17990);
        assert!(c.environment(Some("dev")).is_err());
    }

    #[test]
    fn errors_name_file_key_and_reason() {
        let e = AgentConfig::parse(
            Path::new("/home/u/.config/gangway/config.toml"),
            "[[environment]]\nname = \"prod\"\nrelay = \"http://relay.example.com\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/home/u/.config/gangway/config.toml: environment[0].relay:"),
            "{e}"
        );
        assert!(e.contains("use https"), "{e}");
        let e = AgentConfig::parse(Path::new("c.toml"), "default_environment = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("c.toml: default_environment: no environment named \"x\""),
            "{e}"
        );
        let e = AgentConfig::parse(Path::new("c.toml"), "[[environment]]\nnme = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.toml: line 2: unknown field `nme`"), "{e}");
    }

    #[test]
    fn plain_http_only_on_loopback() {
        assert!(parse_relay_url("http://127.0.0.1:8080").is_ok());
        assert!(parse_relay_url("http://[::1]:8080").is_ok());
        assert!(parse_relay_url("http://relay.example.com").is_err());
        assert!(parse_relay_url("ftp://x").is_err());
    }
}
