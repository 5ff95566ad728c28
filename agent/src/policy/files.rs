//! Policy files on Linux and the BSDs: `/etc/gangway/policy.d/*.toml`
//! (mandatory) and `/etc/gangway/recommended.d/*.toml` (recommended).
//!
//! Files are read in name order and a key in a later file overrides an
//! earlier one (systemd's drop-in rule), so IT can ship `00-base.toml`
//! and a team `50-team.toml`. A file another user could write is not
//! trusted: it could point the agent at someone else's relay.

use std::path::{Path, PathBuf};

use super::managed::{convert, EnvFields, RawValue};
use super::{Entry, Key, Level, Policy, PolicyProblem, PolicyStore};

const FILE_FIELDS: EnvFields = EnvFields {
    name: "name",
    relay: "relay",
    ca_file: "ca_file",
};

/// The two policy directories.
#[derive(Debug, Clone)]
pub struct PolicyDirs {
    pub mandatory: PathBuf,
    pub recommended: PathBuf,
}

impl PolicyDirs {
    /// `ROOT/policy.d` and `ROOT/recommended.d`.
    pub fn under(root: impl AsRef<Path>) -> Self {
        let root = root.as_ref();
        PolicyDirs {
            mandatory: root.join("policy.d"),
            recommended: root.join("recommended.d"),
        }
    }
}

impl PolicyStore for PolicyDirs {
    fn load(&self) -> Policy {
        let mut policy = Policy::default();
        for (level, dir) in [
            (Level::Mandatory, &self.mandatory),
            (Level::Recommended, &self.recommended),
        ] {
            for file in toml_files(dir, &mut policy.problems) {
                read_file(&file, level, &mut policy);
            }
        }
        policy
    }
}

fn problem(origin: &Path, key: Option<&str>, reason: impl Into<String>) -> PolicyProblem {
    PolicyProblem {
        origin: origin.display().to_string(),
        key: key.map(str::to_owned),
        reason: reason.into(),
    }
}

/// The `*.toml` files of `dir` in name order; a missing directory has none.
fn toml_files(dir: &Path, problems: &mut Vec<PolicyProblem>) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            problems.push(problem(dir, None, format!("cannot be read: {e}")));
            return Vec::new();
        }
    };
    if let Some(reason) = untrusted(dir) {
        problems.push(problem(dir, None, reason));
        return Vec::new();
    }
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

/// Why a file or directory is not to be trusted, if it is not: owned by
/// another user than root (or the agent's own), or writable by group or
/// others.
#[cfg(unix)]
fn untrusted(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => return Some(format!("cannot be read: {e}")),
    };
    let me = rustix::process::getuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Some(format!(
            "ignored: owned by uid {}, not root (another user could set your organisation's policy)",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Some(format!(
            "ignored: writable by other users (mode {:o}); make it 0644 (files) or 0755 (directories)",
            meta.mode() & 0o7777
        ));
    }
    None
}

#[cfg(not(unix))]
fn untrusted(_: &Path) -> Option<String> {
    None
}

fn read_file(path: &Path, level: Level, policy: &mut Policy) {
    if let Some(reason) = untrusted(path) {
        policy.problems.push(problem(path, None, reason));
        return;
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            policy
                .problems
                .push(problem(path, None, format!("cannot be read: {e}")));
            return;
        }
    };
    let table: toml::Table = match toml::from_str(&text) {
        Ok(t) => t,
        Err(e) => {
            let line = e
                .span()
                .map(|s| format!("line {}: ", text[..s.start].matches('\n').count() + 1))
                .unwrap_or_default();
            policy
                .problems
                .push(problem(path, None, format!("{line}{}", e.message())));
            return;
        }
    };
    for (name, value) in table {
        let Some(key) = Key::from_name(&name) else {
            policy.problems.push(problem(
                path,
                Some(&name),
                "unknown key (see installer/policy/generated/KEYS.md)",
            ));
            continue;
        };
        match convert(key, raw(value), &FILE_FIELDS) {
            Ok(value) => policy.set(
                level,
                key,
                Entry {
                    value,
                    origin: path.display().to_string(),
                },
            ),
            Err(reason) => policy.problems.push(problem(path, Some(&name), reason)),
        }
    }
}

fn raw(v: toml::Value) -> RawValue {
    match v {
        toml::Value::String(s) => RawValue::String(s),
        toml::Value::Integer(i) => RawValue::Integer(i),
        toml::Value::Boolean(b) => RawValue::Bool(b),
        toml::Value::Array(a) => RawValue::List(a.into_iter().map(raw).collect()),
        toml::Value::Table(t) => RawValue::Dict(t.into_iter().map(|(k, v)| (k, raw(v))).collect()),
        toml::Value::Float(_) => RawValue::Other("a decimal number"),
        toml::Value::Datetime(_) => RawValue::Other("a date"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PolicyEnvironment, Value};

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn later_files_override_and_broken_ones_are_named() {
        let root = tempfile::tempdir().unwrap();
        let dirs = PolicyDirs::under(root.path());
        write(
            &dirs.mandatory,
            "00-base.toml",
            "organization_name = \"Example Corp\"\nallow_user_environments = false\n\
             [[environments]]\nname = \"prod\"\nrelay = \"https://gw.example.com\"\n",
        );
        write(
            &dirs.mandatory,
            "50-team.toml",
            "organization_name = \"Example Team\"\nstart_at_login = \"yes\"\nbogus = 1\n",
        );
        let broken = write(&dirs.mandatory, "60-broken.toml", "proxy = \n");
        write(&dirs.mandatory, "README", "not toml, not read");
        write(
            &dirs.recommended,
            "00.toml",
            "proxy = \"http://proxy.example.com:3128\"\n",
        );
        let p = dirs.load();
        assert_eq!(
            p.mandatory[&Key::OrganizationName],
            Entry {
                value: Value::String("Example Team".into()),
                origin: dirs.mandatory.join("50-team.toml").display().to_string()
            }
        );
        assert_eq!(
            p.mandatory[&Key::AllowUserEnvironments].value,
            Value::Bool(false)
        );
        assert_eq!(
            p.mandatory[&Key::Environments].value,
            Value::Environments(vec![PolicyEnvironment {
                name: "prod".into(),
                relay: "https://gw.example.com".into(),
                ca_file: None
            }])
        );
        assert_eq!(
            p.recommended[&Key::Proxy].value,
            Value::String("http://proxy.example.com:3128".into())
        );
        let problems: Vec<String> = p.problems.iter().map(ToString::to_string).collect();
        let team = dirs.mandatory.join("50-team.toml").display().to_string();
        assert!(
            problems.contains(&format!(
                "{team}: start_at_login: is a string, expected a boolean"
            )),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with(&format!("{team}: bogus: unknown key"))),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with(&format!("{}: line 1: ", broken.display()))),
            "{problems:?}"
        );
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn a_file_other_users_can_write_is_ignored() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dirs = PolicyDirs::under(root.path());
        let f = write(&dirs.mandatory, "00.toml", "organization_name = \"Evil\"\n");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        let p = dirs.load();
        assert!(p.mandatory.is_empty());
        assert!(
            p.problems[0].reason.contains("writable by other users"),
            "{:?}",
            p.problems
        );
    }

    #[test]
    fn no_directories_no_policy() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(
            PolicyDirs::under(root.path().join("absent")).load(),
            Policy::default()
        );
    }
}
