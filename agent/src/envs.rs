//! Editing the environments in the user's config file (`gangway env
//! add|remove|use`, and the tray's environment menu): the file is edited in
//! place with its comments and layout kept, checked with the same rules as
//! when it is loaded, and replaced atomically.
//!
//! The organisation's policy ([`crate::policy`]) comes first: an
//! environment it sets, a default it fixes, or `allow_user_environments =
//! false` make these edits refuse with [`AgentError::Locked`], naming the
//! policy key and the file that set it.

use std::path::{Path, PathBuf};

use toml_edit::{value, ArrayOfTables, DocumentMut, Item, Table};

use crate::config::{parse_relay_url, relay_host_allowed, AgentConfig};
use crate::policy::{self, Key, Policy};
use crate::AgentError;

fn locked(what: String, key: Key, config: &AgentConfig) -> AgentError {
    AgentError::Locked {
        what,
        key: key.name(),
        origin: config.settings.locked(key).and_then(|s| s.origin.clone()),
    }
}

/// Refuses when the policy does not let the user add or remove
/// environments, or sets `name` itself.
fn may_edit(config: &AgentConfig, name: &str, adding: bool) -> Result<(), AgentError> {
    if let Some(e) = config
        .environments
        .iter()
        .find(|e| e.name == name && e.locked())
    {
        return Err(AgentError::Locked {
            what: format!("environment {name:?}"),
            key: Key::Environments.name(),
            origin: e.origin.clone(),
        });
    }
    if !config.settings.allow_user_environments {
        let what = if adding {
            "adding environments"
        } else {
            "removing environments"
        };
        return Err(locked(what.into(), Key::AllowUserEnvironments, config));
    }
    Ok(())
}

fn read(path: &Path) -> Result<(String, DocumentMut), AgentError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(AgentError::Config(format!("{}: {e}", path.display()))),
    };
    // Load first: a broken file is reported with the loader's words.
    AgentConfig::parse(path, &text)?;
    let doc = text
        .parse::<DocumentMut>()
        .map_err(|e| AgentError::Config(format!("{}: {e}", path.display())))?;
    Ok((text, doc))
}

fn write(path: &Path, doc: &DocumentMut, policy: &Policy) -> Result<AgentConfig, AgentError> {
    let text = doc.to_string();
    let config = AgentConfig::parse_checked(path, &text, policy)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let fail = |e: std::io::Error| AgentError::Config(format!("{}: {e}", path.display()));
    std::fs::create_dir_all(&dir).map_err(fail)?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(fail)?;
    std::io::Write::write_all(&mut tmp, text.as_bytes()).map_err(fail)?;
    tmp.persist(path).map_err(|e| fail(e.error))?;
    Ok(config)
}

fn environments<'a>(
    doc: &'a mut DocumentMut,
    path: &Path,
) -> Result<&'a mut ArrayOfTables, AgentError> {
    if doc.get("environment").is_none() {
        doc.insert("environment", Item::ArrayOfTables(ArrayOfTables::new()));
    }
    doc.get_mut("environment")
        .and_then(Item::as_array_of_tables_mut)
        .ok_or_else(|| {
            AgentError::Config(format!(
                "{}: environment: expected [[environment]] tables",
                path.display()
            ))
        })
}

/// Where environment `name` is, or the error naming the file.
fn index_of(envs: &ArrayOfTables, name: &str, path: &Path) -> Result<usize, AgentError> {
    position(envs, name).ok_or_else(|| {
        AgentError::Config(format!("{}: no environment named {name:?}", path.display()))
    })
}

fn position(envs: &ArrayOfTables, name: &str) -> Option<usize> {
    envs.iter()
        .position(|t| t.get("name").and_then(Item::as_str) == Some(name))
}

/// Adds environment `name` at `relay`; with `make_default` (or when it is
/// the first one) it becomes the default.
pub fn add(
    path: &Path,
    name: &str,
    relay: &str,
    ca_file: Option<&Path>,
    make_default: bool,
) -> Result<AgentConfig, AgentError> {
    add_with(&policy::system(), path, name, relay, ca_file, make_default)
}

/// [`add`] under `policy`.
pub fn add_with(
    policy: &Policy,
    path: &Path,
    name: &str,
    relay: &str,
    ca_file: Option<&Path>,
    make_default: bool,
) -> Result<AgentConfig, AgentError> {
    let relay = parse_relay_url(relay).map_err(AgentError::Config)?;
    let effective = AgentConfig::load_with(path, policy)?;
    may_edit(&effective, name, true)?;
    relay_host_allowed(&effective.settings.allowed_relay_hosts, &relay).map_err(|reason| {
        AgentError::Locked {
            what: format!("adding {name:?}: {reason}; the list"),
            key: Key::AllowedRelayHosts.name(),
            origin: effective
                .settings
                .locked(Key::AllowedRelayHosts)
                .and_then(|s| s.origin.clone()),
        }
    })?;
    if make_default && effective.settings.locked(Key::DefaultEnvironment).is_some() {
        return Err(locked(
            "the default environment".into(),
            Key::DefaultEnvironment,
            &effective,
        ));
    }
    let (_, mut doc) = read(path)?;
    let envs = environments(&mut doc, path)?;
    if position(envs, name).is_some() {
        return Err(AgentError::Config(format!(
            "{}: an environment named {name:?} already exists",
            path.display()
        )));
    }
    let first = envs.is_empty();
    let mut t = Table::new();
    t["name"] = value(name);
    t["relay"] = value(crate::keychain::namespace_for(&relay));
    if let Some(ca) = ca_file {
        t["ca_file"] = value(ca.to_string_lossy().as_ref());
    }
    envs.push(t);
    if make_default || first {
        doc["default_environment"] = value(name);
    }
    write(path, &doc, policy)
}

/// Removes environment `name` (and the default, if it was the default).
pub fn remove(path: &Path, name: &str) -> Result<AgentConfig, AgentError> {
    remove_with(&policy::system(), path, name)
}

/// [`remove`] under `policy`.
pub fn remove_with(policy: &Policy, path: &Path, name: &str) -> Result<AgentConfig, AgentError> {
    let effective = AgentConfig::load_with(path, policy)?;
    may_edit(&effective, name, false)?;
    if effective
        .environments
        .iter()
        .any(|e| e.name == name && e.source == crate::config::Source::Recommended)
    {
        return Err(AgentError::Config(format!(
            "environment {name:?} is one your organisation recommends ({}); it is not in your config file to remove",
            effective
                .environments
                .iter()
                .find(|e| e.name == name)
                .and_then(|e| e.origin.clone())
                .unwrap_or_default()
        )));
    }
    let (_, mut doc) = read(path)?;
    let envs = environments(&mut doc, path)?;
    envs.remove(index_of(envs, name, path)?);
    if doc.get("default_environment").and_then(Item::as_str) == Some(name) {
        doc.remove("default_environment");
    }
    write(path, &doc, policy)
}

/// Makes `name` the default environment.
pub fn set_default(path: &Path, name: &str) -> Result<AgentConfig, AgentError> {
    set_default_with(&policy::system(), path, name)
}

/// [`set_default`] under `policy`. Any environment in effect may be the
/// default, also one the organisation sets, unless the policy fixes the
/// default itself.
pub fn set_default_with(
    policy: &Policy,
    path: &Path,
    name: &str,
) -> Result<AgentConfig, AgentError> {
    let effective = AgentConfig::load_with(path, policy)?;
    if effective.settings.locked(Key::DefaultEnvironment).is_some()
        && effective.default_environment.as_deref() != Some(name)
    {
        return Err(locked(
            "the default environment".into(),
            Key::DefaultEnvironment,
            &effective,
        ));
    }
    effective.environment(Some(name))?;
    let (_, mut doc) = read(path)?;
    doc["default_environment"] = value(name);
    write(path, &doc, policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_use_remove_keep_comments_and_validate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gangway/config.toml");
        let c = add(&path, "prod", "https://gangway.example.com/", None, false).unwrap();
        assert_eq!(c.default_environment.as_deref(), Some("prod"));
        // A comment the user wrote survives every edit.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replace("[[environment]]", "# the company relay\n[[environment]]"),
        )
        .unwrap();

        let c = add(
            &path,
            "staging",
            "https://gangway.staging.example.com:8443",
            Some(Path::new("/etc/ca.pem")),
            false,
        )
        .unwrap();
        assert_eq!(c.environments.len(), 2);
        assert_eq!(c.default_environment.as_deref(), Some("prod"));
        let c = set_default(&path, "staging").unwrap();
        assert_eq!(c.environment(None).unwrap().name, "staging");
        assert_eq!(
            c.environment(None).unwrap().ca_file.as_deref(),
            Some(Path::new("/etc/ca.pem"))
        );

        let e = add(&path, "prod", "https://x.example", None, false).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        let e = add(&path, "dev", "http://relay.example", None, false).unwrap_err();
        assert!(e.to_string().contains("use https"), "{e}");
        let e = set_default(&path, "nope").unwrap_err();
        assert!(
            e.to_string().contains("no environment named \"nope\""),
            "{e}"
        );

        let c = remove(&path, "staging").unwrap();
        assert_eq!(c.default_environment, None);
        assert_eq!(c.environments.len(), 1);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("# the company relay\n[[environment]]"),
            "{text}"
        );
        assert!(AgentConfig::load(&path).is_ok());
    }

    #[test]
    fn a_broken_file_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "[[environment]]\nnme = 1\n").unwrap();
        let e = add(&path, "prod", "https://x.example", None, false).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "[[environment]]\nnme = 1\n"
        );
    }
}
