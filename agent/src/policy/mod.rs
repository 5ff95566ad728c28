//! Managed configuration: what the organisation's IT sets, read before the
//! user's own config file.
//!
//! ```text
//! mandatory    wins over the user, shown locked   Linux /etc/gangway/policy.d/*.toml
//!                                                 macOS forced values of com.gangway.agent
//!                                                 Windows HKLM\Software\Policies\Gangway
//! recommended  a default the user may change      …/recommended.d/*.toml, set-once values,
//!                                                 HKLM\Software\Policies\Gangway\Recommended
//! ```
//!
//! The keys are those of `installer/policy/schema.toml` (one source for
//! every OS's templates; a test below keeps [`Key::ALL`] equal to it).
//! Reading never fails as a whole: a broken file or value is a
//! [`PolicyProblem`] naming where, which key and why, and everything else is
//! still used. How the values combine with the user's file is
//! [`crate::config::AgentConfig::apply_policy`].

mod files;
mod managed;

#[cfg(target_os = "macos")]
mod macos;
#[cfg(windows)]
mod windows;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

pub use files::PolicyDirs;
pub use managed::{ManagedStore, ManagedValues, MemoryValues, RawValue};

/// A policy key (see `installer/policy/schema.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    OrganizationName,
    Environments,
    DefaultEnvironment,
    AllowUserEnvironments,
    AllowedRelayHosts,
    StartAtLogin,
    OpenStatusWindowAtFirstStart,
    AllowDeviceSignIn,
    Proxy,
}

/// What a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    String,
    Bool,
    StringList,
    Environments,
}

impl Key {
    pub const ALL: [Key; 9] = [
        Key::OrganizationName,
        Key::Environments,
        Key::DefaultEnvironment,
        Key::AllowUserEnvironments,
        Key::AllowedRelayHosts,
        Key::StartAtLogin,
        Key::OpenStatusWindowAtFirstStart,
        Key::AllowDeviceSignIn,
        Key::Proxy,
    ];

    /// The key in the Linux TOML files and in `gangway config --effective`.
    pub fn name(self) -> &'static str {
        match self {
            Key::OrganizationName => "organization_name",
            Key::Environments => "environments",
            Key::DefaultEnvironment => "default_environment",
            Key::AllowUserEnvironments => "allow_user_environments",
            Key::AllowedRelayHosts => "allowed_relay_hosts",
            Key::StartAtLogin => "start_at_login",
            Key::OpenStatusWindowAtFirstStart => "open_status_window_at_first_start",
            Key::AllowDeviceSignIn => "allow_device_sign_in",
            Key::Proxy => "proxy",
        }
    }

    /// The key in the macOS preference domain and the Windows value name.
    pub fn managed_name(self) -> &'static str {
        match self {
            Key::OrganizationName => "OrganizationName",
            Key::Environments => "Environments",
            Key::DefaultEnvironment => "DefaultEnvironment",
            Key::AllowUserEnvironments => "AllowUserEnvironments",
            Key::AllowedRelayHosts => "AllowedRelayHosts",
            Key::StartAtLogin => "StartAtLogin",
            Key::OpenStatusWindowAtFirstStart => "OpenStatusWindowAtFirstStart",
            Key::AllowDeviceSignIn => "AllowDeviceSignIn",
            Key::Proxy => "Proxy",
        }
    }

    pub fn kind(self) -> Kind {
        match self {
            Key::OrganizationName | Key::DefaultEnvironment | Key::Proxy => Kind::String,
            Key::Environments => Kind::Environments,
            Key::AllowedRelayHosts => Kind::StringList,
            Key::AllowUserEnvironments
            | Key::StartAtLogin
            | Key::OpenStatusWindowAtFirstStart
            | Key::AllowDeviceSignIn => Kind::Bool,
        }
    }

    pub fn from_name(name: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|k| k.name() == name)
    }

    pub fn from_managed_name(name: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|k| k.managed_name() == name)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An environment set by policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyEnvironment {
    pub name: String,
    /// As written; checked when combined with the user's config.
    pub relay: String,
    pub ca_file: Option<PathBuf>,
}

/// A checked policy value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    String(String),
    Bool(bool),
    StringList(Vec<String>),
    Environments(Vec<PolicyEnvironment>),
}

/// Mandatory or recommended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Mandatory,
    Recommended,
}

/// One value and where it was set ("/etc/gangway/policy.d/10-corp.toml",
/// "HKLM\Software\Policies\Gangway\Proxy").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Value,
    pub origin: String,
}

/// A value that could not be used: where, which key, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    pub origin: String,
    /// `None`: the whole file (e.g. a syntax error).
    pub key: Option<String>,
    pub reason: String,
}

impl fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(f, "{}: {k}: {}", self.origin, self.reason),
            None => write!(f, "{}: {}", self.origin, self.reason),
        }
    }
}

/// Everything the organisation set, by level.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub mandatory: BTreeMap<Key, Entry>,
    pub recommended: BTreeMap<Key, Entry>,
    pub problems: Vec<PolicyProblem>,
}

impl Policy {
    pub fn get(&self, level: Level, key: Key) -> Option<&Entry> {
        match level {
            Level::Mandatory => self.mandatory.get(&key),
            Level::Recommended => self.recommended.get(&key),
        }
    }

    fn set(&mut self, level: Level, key: Key, entry: Entry) {
        match level {
            Level::Mandatory => self.mandatory.insert(key, entry),
            Level::Recommended => self.recommended.insert(key, entry),
        };
    }
}

/// Where an OS keeps managed settings.
pub trait PolicyStore {
    fn load(&self) -> Policy;
}

/// Environment variable naming another policy root than `/etc/gangway`
/// (honoured by debug builds only, for tests: a released agent reads the
/// system's policy and nothing a user's environment can redirect).
pub const ROOT_ENV: &str = "GANGWAY_POLICY_ROOT";

/// The policy of this computer: `/etc/gangway/{policy,recommended}.d` on
/// Linux and the BSDs, the forced and set-once values of the
/// `com.gangway.agent` domain on macOS, `HKLM\Software\Policies\Gangway`
/// on Windows.
pub fn system() -> Policy {
    #[cfg(target_os = "macos")]
    {
        ManagedStore(macos::CfPreferences::new()).load()
    }
    #[cfg(windows)]
    {
        ManagedStore(windows::Registry).load()
    }
    #[cfg(not(any(target_os = "macos", windows)))]
    {
        let root = if cfg!(debug_assertions) {
            std::env::var_os(ROOT_ENV).map(PathBuf::from)
        } else {
            None
        };
        PolicyDirs::under(root.unwrap_or_else(|| PathBuf::from("/etc/gangway"))).load()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys here are exactly those of the schema the templates are
    /// generated from, with the same names and kinds.
    #[test]
    fn keys_match_the_installer_schema() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../installer/policy/schema.toml"
        );
        let schema: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let keys = schema["key"].as_array().unwrap();
        assert_eq!(keys.len(), Key::ALL.len(), "{path}");
        for k in keys {
            let name = k["name"].as_str().unwrap();
            let key =
                Key::from_name(name).unwrap_or_else(|| panic!("{name} not known to the agent"));
            assert_eq!(key.managed_name(), k["plist"].as_str().unwrap(), "{name}");
            let kind = match k["type"].as_str().unwrap() {
                "string" => Kind::String,
                "bool" => Kind::Bool,
                "string_list" => Kind::StringList,
                "environments" => Kind::Environments,
                other => panic!("{name}: type {other}"),
            };
            assert_eq!(key.kind(), kind, "{name}");
        }
    }
}
