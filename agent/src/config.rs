//! Agent configuration: environments (name + relay URL) and settings, from
//! the organisation's policy ([`crate::policy`]) and the user's config file
//! under the platform config dir.
//!
//! Precedence, key by key: a mandatory policy value (locked), else the
//! user's file, else a recommended policy value, else the built-in default.
//! [`AgentConfig::settings`] says for each key which one won
//! (`gangway config --effective`).
//!
//! ```toml
//! default_environment = "prod"
//!
//! [[environment]]
//! name = "prod"
//! relay = "https://gangway.example.com"
//! # ca_file = "/etc/gangway/company-ca.pem"   # extra trusted CA (PEM)
//! # proxy = "http://proxy.example.com:3128"   # this relay's proxy ("direct": none)
//! # [environment.ports]                        # local port overrides
//! # bitbucket = 17990
//! ```
//!
//! The user's file may also set `proxy = "http://proxy.example.com:3128"`
//! and `start_at_login = true`; the other policy keys are the
//! organisation's only.
//!
//! The proxy of an environment ([`Environment::proxy`]): a mandatory
//! `proxy` policy value, else the environment's own `proxy`, else the
//! global `proxy` (user file, then recommended policy); when none is set
//! the environment variables decide ([`crate::net::proxy`]). `"direct"` (or
//! `""`) means no proxy at all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use url::Url;

use crate::net::{ExplicitProxy, ProxySetting};
use crate::policy::{self, Key, Level, Policy, Value};
use crate::AgentError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Environment used when none is named.
    default_environment: Option<String>,
    #[serde(default, rename = "environment")]
    environments: Vec<RawEnvironment>,
    /// HTTP proxy for the agent's outgoing connections.
    proxy: Option<String>,
    /// Start the tray app at login.
    start_at_login: Option<bool>,
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
    /// HTTP proxy for this relay (and its identity provider): wins over
    /// the global `proxy`; "direct" for none.
    proxy: Option<String>,
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
    /// The explicit proxy in effect for it (see the module docs); `None`
    /// leaves it to `HTTPS_PROXY` & co.
    pub proxy: Option<ExplicitProxy>,
    pub ports: BTreeMap<String, u16>,
    /// Where it was set; a [`Source::Policy`] one is locked.
    pub source: Source,
    /// The file (or registry key) that set it, for policy ones.
    pub origin: Option<String>,
}

impl Environment {
    /// Set by the organisation as mandatory: the user cannot change or
    /// remove it.
    pub fn locked(&self) -> bool {
        self.source == Source::Policy
    }
}

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A mandatory policy value: locked.
    Policy,
    /// A recommended policy value (the user's file may override it).
    Recommended,
    /// The user's config file.
    UserFile,
    /// Nothing set it: the built-in default.
    Default,
}

/// One setting as in effect, for `gangway config --effective`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Setting {
    pub key: String,
    pub value: serde_json::Value,
    pub source: Source,
    /// The policy file or registry key, or the user's file.
    pub origin: Option<String>,
    pub locked: bool,
}

/// The settings other than the environments, as in effect.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub organization_name: Option<String>,
    pub allow_user_environments: bool,
    pub allowed_relay_hosts: Vec<String>,
    pub start_at_login: bool,
    pub open_status_window_at_first_start: bool,
    pub allow_device_sign_in: bool,
    pub proxy: Option<String>,
    /// Every key with its value and source.
    pub table: Vec<Setting>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            organization_name: None,
            allow_user_environments: true,
            allowed_relay_hosts: Vec::new(),
            start_at_login: false,
            open_status_window_at_first_start: true,
            allow_device_sign_in: true,
            proxy: None,
            table: Vec::new(),
        }
    }
}

impl Settings {
    /// The setting of `key`, if it is locked by policy: where it was set.
    pub fn locked(&self, key: Key) -> Option<&Setting> {
        self.table.iter().find(|s| s.key == key.name() && s.locked)
    }
}

/// The validated agent configuration.
#[derive(Debug, Clone, Default)]
pub struct AgentConfig {
    pub default_environment: Option<String>,
    pub environments: Vec<Environment>,
    pub settings: Settings,
    /// Policy values that could not be used and user environments the
    /// policy leaves out, each naming where and why.
    pub problems: Vec<String>,
    /// The user's own `proxy` and `start_at_login`, before policy.
    user: UserSettings,
    /// The global `proxy` as in effect, checked.
    global_proxy: Option<ExplicitProxy>,
}

#[derive(Debug, Clone, Default)]
struct UserSettings {
    proxy: Option<ProxySetting>,
    start_at_login: Option<bool>,
    default_environment: Option<String>,
    path: Option<String>,
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

/// Whether `relay`'s host is one of `allowed` (exact, or `*.example.com`
/// for sub-domains); an empty list allows any.
pub fn relay_host_allowed(allowed: &[String], relay: &Url) -> Result<(), String> {
    if allowed.is_empty() {
        return Ok(());
    }
    let host = relay.host_str().unwrap_or_default().to_ascii_lowercase();
    let ok = allowed.iter().any(|a| {
        let a = a.to_ascii_lowercase();
        match a.strip_prefix("*.") {
            Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
            None => host == a,
        }
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "relay host {host} is not among the hosts your organisation allows ({})",
            allowed.join(", ")
        ))
    }
}

fn json(v: &Value) -> serde_json::Value {
    match v {
        Value::String(s) => s.clone().into(),
        Value::Bool(b) => (*b).into(),
        Value::StringList(l) => l.clone().into(),
        Value::Environments(envs) => envs
            .iter()
            .map(|e| serde_json::Value::from(e.name.clone()))
            .collect(),
    }
}

fn is_loopback_host(h: &str) -> bool {
    h == "localhost"
        || h.trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl AgentConfig {
    /// Loads `path` under this computer's policy ([`policy::system`]); a
    /// missing file is an empty user config.
    pub fn load(path: &Path) -> Result<Self, AgentError> {
        Self::load_with(path, &policy::system())
    }

    /// Loads `path` under `policy`.
    pub fn load_with(path: &Path, policy: &Policy) -> Result<Self, AgentError> {
        Self::load_user(path)?.checked(path, policy)
    }

    /// The user's file's text under `policy`, checked as [`Self::load`] does.
    pub fn parse_checked(path: &Path, text: &str, policy: &Policy) -> Result<Self, AgentError> {
        Self::parse(path, text)?.checked(path, policy)
    }

    /// Applies `policy`; the user's `default_environment` must then name an
    /// environment in effect (theirs or the organisation's).
    fn checked(self, path: &Path, policy: &Policy) -> Result<Self, AgentError> {
        let user_default = self.user.default_environment.clone();
        let config = self.apply_policy(policy);
        if let Some(d) = user_default {
            if !config.environments.iter().any(|e| e.name == d) {
                return Err(AgentError::Config(format!(
                    "{}: default_environment: no environment named {d:?}",
                    path.display()
                )));
            }
        }
        Ok(config)
    }

    /// The user's file alone; a missing file is an empty config.
    pub fn load_user(path: &Path) -> Result<Self, AgentError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(AgentError::Config(format!("{}: {e}", path.display()))),
        };
        Self::parse(path, &text)
    }

    /// The user's file's text alone (no policy).
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
            let key = format!("environment[{i}].proxy");
            let proxy = env
                .proxy
                .as_deref()
                .map(|p| {
                    ProxySetting::parse(p)
                        .map(|setting| ExplicitProxy {
                            setting,
                            origin: format!("{key} in {}", path.display()),
                        })
                        .map_err(|r| bad(&key, r))
                })
                .transpose()?;
            environments.push(Environment {
                name: env.name,
                relay,
                ca_file: env.ca_file,
                proxy,
                ports: env.ports,
                source: Source::UserFile,
                origin: Some(path.display().to_string()),
            });
        }
        let proxy = raw
            .proxy
            .as_deref()
            .map(|p| ProxySetting::parse(p).map_err(|r| bad("proxy", r)))
            .transpose()?;
        Ok(Self {
            default_environment: raw.default_environment.clone(),
            environments,
            settings: Settings::default(),
            problems: Vec::new(),
            global_proxy: None,
            user: UserSettings {
                proxy,
                start_at_login: raw.start_at_login,
                default_environment: raw.default_environment,
                path: Some(path.display().to_string()),
            },
        })
    }

    /// This (user) configuration under `policy`: see the module docs.
    pub fn apply_policy(self, policy: &Policy) -> Self {
        let mut problems: Vec<String> = policy.problems.iter().map(ToString::to_string).collect();
        let user_origin = self.user.path.clone();
        let mut table = Vec::new();
        // Resolves one key: mandatory, user, recommended, default.
        let mut resolve =
            |key: Key, user: Option<serde_json::Value>, default: serde_json::Value| {
                let (value, source, origin) = if let Some(e) = policy.get(Level::Mandatory, key) {
                    (json(&e.value), Source::Policy, Some(e.origin.clone()))
                } else if let Some(u) = user {
                    (u, Source::UserFile, user_origin.clone())
                } else if let Some(e) = policy.get(Level::Recommended, key) {
                    (json(&e.value), Source::Recommended, Some(e.origin.clone()))
                } else {
                    (default, Source::Default, None)
                };
                table.push(Setting {
                    key: key.name().into(),
                    value: value.clone(),
                    locked: source == Source::Policy,
                    source,
                    origin,
                });
                value
            };
        let string = |v: serde_json::Value| v.as_str().map(str::to_owned);
        let organization_name = string(resolve(
            Key::OrganizationName,
            None,
            serde_json::Value::Null,
        ));
        let allow_user_environments = resolve(Key::AllowUserEnvironments, None, true.into())
            .as_bool()
            .unwrap_or(true);
        let allowed_relay_hosts: Vec<String> =
            serde_json::from_value(resolve(Key::AllowedRelayHosts, None, serde_json::json!([])))
                .unwrap_or_default();
        let start_at_login = resolve(
            Key::StartAtLogin,
            self.user.start_at_login.map(Into::into),
            false.into(),
        )
        .as_bool()
        .unwrap_or(false);
        let open_status_window_at_first_start =
            resolve(Key::OpenStatusWindowAtFirstStart, None, true.into())
                .as_bool()
                .unwrap_or(true);
        let allow_device_sign_in = resolve(Key::AllowDeviceSignIn, None, true.into())
            .as_bool()
            .unwrap_or(true);
        let proxy = string(resolve(
            Key::Proxy,
            self.user.proxy.as_ref().map(|p| p.expose().into()),
            serde_json::Value::Null,
        ));

        // Environments: the organisation's mandatory ones (locked), the
        // user's (if allowed, on allowed hosts, not shadowing a locked
        // one), then recommended ones the user has not redefined.
        let mut environments: Vec<Environment> = Vec::new();
        let from_policy = |level: Level,
                           source: Source,
                           environments: &mut Vec<Environment>,
                           problems: &mut Vec<String>| {
            let Some(entry) = policy.get(level, Key::Environments) else {
                return;
            };
            let Value::Environments(list) = &entry.value else {
                return;
            };
            for e in list {
                if environments.iter().any(|x| x.name == e.name) {
                    continue;
                }
                match parse_relay_url(&e.relay) {
                    Ok(relay) => environments.push(Environment {
                        name: e.name.clone(),
                        relay,
                        ca_file: e.ca_file.clone(),
                        proxy: None,
                        ports: BTreeMap::new(),
                        source,
                        origin: Some(entry.origin.clone()),
                    }),
                    Err(r) => problems.push(format!("{}: environments: {r}", entry.origin)),
                }
            }
        };
        from_policy(
            Level::Mandatory,
            Source::Policy,
            &mut environments,
            &mut problems,
        );
        let locked_hosts = policy
            .get(Level::Mandatory, Key::AllowedRelayHosts)
            .map(|e| e.origin.clone());
        for e in self.environments {
            if !allow_user_environments {
                problems.push(format!(
                    "environment {:?} of {} is not used: your organisation does not allow your own environments (policy key allow_user_environments)",
                    e.name,
                    e.origin.as_deref().unwrap_or("the config file")
                ));
                continue;
            }
            if environments.iter().any(|x| x.name == e.name && x.locked()) {
                problems.push(format!(
                    "environment {:?} of {} is not used: your organisation sets an environment of that name (policy key environments)",
                    e.name,
                    e.origin.as_deref().unwrap_or("the config file")
                ));
                continue;
            }
            if let Err(reason) = relay_host_allowed(&allowed_relay_hosts, &e.relay) {
                problems.push(format!(
                    "environment {:?} is not used: {reason} (policy key allowed_relay_hosts{})",
                    e.name,
                    locked_hosts
                        .as_deref()
                        .map(|o| format!(" in {o}"))
                        .unwrap_or_default()
                ));
                continue;
            }
            environments.push(e);
        }
        from_policy(
            Level::Recommended,
            Source::Recommended,
            &mut environments,
            &mut problems,
        );

        let known = |n: &str| environments.iter().any(|e| e.name == n);
        let mandatory_default = policy
            .get(Level::Mandatory, Key::DefaultEnvironment)
            .and_then(|e| match &e.value {
                Value::String(s) => Some((s.clone(), e.origin.clone())),
                _ => None,
            });
        let recommended_default = policy
            .get(Level::Recommended, Key::DefaultEnvironment)
            .and_then(|e| match &e.value {
                Value::String(s) => Some((s.clone(), e.origin.clone())),
                _ => None,
            });
        let (default_environment, source, origin) = match (
            mandatory_default,
            &self.user.default_environment,
            recommended_default,
        ) {
            (Some((d, o)), _, _) if known(&d) => (Some(d), Source::Policy, Some(o)),
            (Some((d, o)), ..) => {
                problems.push(format!(
                    "{o}: default_environment: no environment named {d:?}"
                ));
                (None, Source::Default, None)
            }
            (None, Some(d), _) if known(d) => {
                (Some(d.clone()), Source::UserFile, user_origin.clone())
            }
            (None, _, Some((d, o))) if known(&d) => (Some(d), Source::Recommended, Some(o)),
            _ => (None, Source::Default, None),
        };
        table.insert(
            2,
            Setting {
                key: Key::DefaultEnvironment.name().into(),
                value: default_environment
                    .clone()
                    .map(Into::into)
                    .unwrap_or(serde_json::Value::Null),
                locked: source == Source::Policy,
                source,
                origin,
            },
        );
        let env_source = policy
            .get(Level::Mandatory, Key::Environments)
            .map(|e| (Source::Policy, Some(e.origin.clone())))
            .unwrap_or((Source::UserFile, user_origin.clone()));
        table.insert(
            1,
            Setting {
                key: Key::Environments.name().into(),
                value: environments
                    .iter()
                    .map(|e| serde_json::Value::from(e.name.clone()))
                    .collect(),
                locked: env_source.0 == Source::Policy,
                source: env_source.0,
                origin: env_source.1,
            },
        );
        table.sort_by_key(|s| Key::ALL.iter().position(|k| k.name() == s.key));
        // The global proxy as in effect, checked (the user's was at
        // parse time; a policy value that cannot be used is a problem and
        // left out), then each environment's.
        let global_proxy = table
            .iter()
            .find(|s| s.key == Key::Proxy.name())
            .and_then(|s| {
                let value = proxy.as_deref()?;
                let origin = s.origin.clone().unwrap_or_else(|| "the config".into());
                match ProxySetting::parse(value) {
                    Ok(setting) => Some((
                        ExplicitProxy {
                            setting,
                            origin: format!("proxy in {origin}"),
                        },
                        s.locked,
                    )),
                    Err(r) => {
                        problems.push(format!("{origin}: proxy: {r}"));
                        None
                    }
                }
            });
        // What is shown of it never holds the proxy's credentials.
        let proxy = match (&proxy, &global_proxy) {
            (None, _) => None,
            (Some(_), Some((g, _))) => Some(g.setting.to_string()),
            (Some(_), None) => Some("(not used: see the problems)".to_string()),
        };
        if let Some(s) = table.iter_mut().find(|s| s.key == Key::Proxy.name()) {
            s.value = proxy
                .clone()
                .map(Into::into)
                .unwrap_or(serde_json::Value::Null);
        }
        for e in &mut environments {
            e.proxy = match (&global_proxy, e.proxy.take()) {
                (Some((g, true)), _) => Some(g.clone()),
                (_, Some(own)) => Some(own),
                (Some((g, false)), None) => Some(g.clone()),
                (None, None) => None,
            };
        }
        AgentConfig {
            default_environment,
            environments,
            settings: Settings {
                organization_name,
                allow_user_environments,
                allowed_relay_hosts,
                start_at_login,
                open_status_window_at_first_start,
                allow_device_sign_in,
                proxy,
                table,
            },
            problems,
            user: self.user,
            global_proxy: global_proxy.map(|(g, _)| g),
        }
    }

    /// The global `proxy` setting in effect (for a relay given on the
    /// command line); an environment's is [`Environment::proxy`].
    pub fn global_proxy(&self) -> Option<ExplicitProxy> {
        self.global_proxy.clone()
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
        let e = AgentConfig::parse_checked(
            Path::new("c.toml"),
            "default_environment = \"x\"\n",
            &Policy::default(),
        )
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

    fn policy(mandatory: &[(Key, Value)], recommended: &[(Key, Value)]) -> Policy {
        let entries = |l: &[(Key, Value)], o: &str| {
            l.iter()
                .map(|(k, v)| {
                    (
                        *k,
                        policy::Entry {
                            value: v.clone(),
                            origin: o.into(),
                        },
                    )
                })
                .collect()
        };
        Policy {
            mandatory: entries(mandatory, "/etc/gangway/policy.d/00.toml"),
            recommended: entries(recommended, "/etc/gangway/recommended.d/00.toml"),
            problems: Vec::new(),
        }
    }

    #[test]
    fn proxy_per_environment_wins_unless_the_policy_locks_one() {
        let text = "proxy = \"http://global:3128\"\n\
            [[environment]]\nname = \"a\"\nrelay = \"https://a.example.com\"\nproxy = \"http://u:pw@own:8080\"\n\
            [[environment]]\nname = \"b\"\nrelay = \"https://b.example.com\"\n\
            [[environment]]\nname = \"c\"\nrelay = \"https://c.example.com\"\nproxy = \"direct\"\n";
        let c = AgentConfig::parse_checked(Path::new("u.toml"), text, &Policy::default()).unwrap();
        let proxy = |n: &str| {
            let e = c.environment(Some(n)).unwrap();
            e.proxy.clone().map(|p| (p.setting, p.origin))
        };
        let own = ProxySetting::parse("http://u:pw@own:8080").unwrap();
        assert_eq!(
            proxy("a"),
            Some((own, "environment[0].proxy in u.toml".to_string()))
        );
        assert_eq!(
            proxy("b"),
            Some((
                ProxySetting::parse("http://global:3128").unwrap(),
                "proxy in u.toml".to_string()
            ))
        );
        assert_eq!(proxy("c").unwrap().0, ProxySetting::Direct);
        // A mandatory policy proxy is locked: it wins everywhere.
        let p = policy(
            &[(Key::Proxy, Value::String("http://org:3128".into()))],
            &[],
        );
        let c = AgentConfig::parse_checked(Path::new("u.toml"), text, &p).unwrap();
        for n in ["a", "b", "c"] {
            let e = c.environment(Some(n)).unwrap();
            assert_eq!(
                e.proxy.as_ref().unwrap().origin,
                "proxy in /etc/gangway/policy.d/00.toml"
            );
        }
        // A policy value that cannot be used is a problem naming the file.
        let p = policy(
            &[(Key::Proxy, Value::String("socks5://org:1080".into()))],
            &[],
        );
        let c = AgentConfig::parse_checked(Path::new("u.toml"), "", &p).unwrap();
        assert!(
            c.problems.iter().any(|m| m.starts_with(
                "/etc/gangway/policy.d/00.toml: proxy: a socks5:// proxy is not supported"
            )),
            "{:?}",
            c.problems
        );
        assert_eq!(c.global_proxy(), None);
    }

    #[test]
    fn the_proxy_setting_is_shown_without_its_password() {
        let c = AgentConfig::parse_checked(
            Path::new("u.toml"),
            "proxy = \"http://alice:s3cret@proxy.corp:3128\"\n",
            &Policy::default(),
        )
        .unwrap();
        let row = c.settings.table.iter().find(|s| s.key == "proxy").unwrap();
        assert_eq!(row.value, serde_json::json!("http://proxy.corp:3128"));
        assert_eq!(c.settings.proxy.as_deref(), Some("http://proxy.corp:3128"));
        assert!(!format!("{c:?}").contains("s3cret"));
        // The credentials are still used.
        match c.global_proxy().unwrap().setting {
            ProxySetting::Via(p) => assert!(p.has_credentials()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_proxy_values_name_file_key_and_reason() {
        for (text, key, reason) in [
            ("proxy = \"https://p:1\"\n", "u.toml: proxy: ", "an https:// proxy"),
            (
                "[[environment]]\nname = \"a\"\nrelay = \"https://a.example.com\"\nproxy = \"http://u:secret@p:1/x\"\n",
                "u.toml: environment[0].proxy: ",
                "no path",
            ),
            ("proxy = \"not a url\"\n", "u.toml: proxy: ", "not a URL"),
        ] {
            let e = AgentConfig::parse(Path::new("u.toml"), text).unwrap_err().to_string();
            assert!(e.starts_with(key) && e.contains(reason), "{text}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn mandatory_beats_user_beats_recommended_beats_default() {
        let user = AgentConfig::parse(
            Path::new("u.toml"),
            "proxy = \"http://user-proxy:1\"\nstart_at_login = true\n[[environment]]\nname = \"mine\"\nrelay = \"https://mine.example.com\"\n",
        )
        .unwrap();
        let p = policy(
            &[(Key::StartAtLogin, Value::Bool(false))],
            &[
                (Key::Proxy, Value::String("http://org-proxy:1".into())),
                (Key::OrganizationName, Value::String("Example".into())),
            ],
        );
        let c = user.apply_policy(&p);
        let get = |k: &str| {
            c.settings
                .table
                .iter()
                .find(|s| s.key == k)
                .unwrap()
                .clone()
        };
        assert!(!c.settings.start_at_login);
        assert_eq!(get("start_at_login").source, Source::Policy);
        assert!(get("start_at_login").locked);
        assert_eq!(c.settings.proxy.as_deref(), Some("http://user-proxy:1"));
        assert_eq!(get("proxy").source, Source::UserFile);
        assert_eq!(c.settings.organization_name.as_deref(), Some("Example"));
        assert_eq!(get("organization_name").source, Source::Recommended);
        assert!(c.settings.allow_device_sign_in);
        assert_eq!(get("allow_device_sign_in").source, Source::Default);
        // Every key is listed once, in the schema's order.
        let keys: Vec<&str> = c.settings.table.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, Key::ALL.map(Key::name));
    }

    #[test]
    fn relay_hosts_match_exactly_or_by_sub_domain() {
        let allowed = vec!["gw.example.com".to_string(), "*.corp.example".to_string()];
        let ok = |u: &str| relay_host_allowed(&allowed, &Url::parse(u).unwrap()).is_ok();
        assert!(ok("https://gw.example.com"));
        assert!(ok("https://GW.example.com:8443"));
        assert!(ok("https://a.corp.example"));
        assert!(!ok("https://corp.example"));
        assert!(!ok("https://evilcorp.example"));
        assert!(!ok("https://gw.example.com.evil.test"));
        assert!(relay_host_allowed(&[], &Url::parse("https://any.test").unwrap()).is_ok());
    }

    #[test]
    fn plain_http_only_on_loopback() {
        assert!(parse_relay_url("http://127.0.0.1:8080").is_ok());
        assert!(parse_relay_url("http://[::1]:8080").is_ok());
        assert!(parse_relay_url("http://relay.example.com").is_err());
        assert!(parse_relay_url("ftp://x").is_err());
    }
}
