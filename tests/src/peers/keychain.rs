//! A real OS keychain for end-to-end tests: a private D-Bus session bus
//! (`dbus-daemon --session`) with GNOME Keyring's Secret Service on it
//! (`gnome-keyring-daemon --unlock --components=secrets`), in a throw-away
//! `HOME` and a 0700 `XDG_RUNTIME_DIR`.
//!
//! Processes that should use it get [`SecretService::env`]. The keyring's
//! file lives under that `HOME`, encrypted with a fixed password, so the
//! daemon can be restarted ([`SecretService::restart_keyring`]) and still
//! holds what was stored. Both daemons stop on drop.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use tempfile::TempDir;

use super::process::{blocking_poll, require_program, startup_timeout, Process};

/// The keyring's unlock password.
const PASSWORD: &str = "gangway-test-keyring";

/// How long the bus and the keyring may take to come up on an idle machine
/// (stretched by [`startup_timeout`]).
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A session bus with a Secret Service on it.
pub struct SecretService {
    keyring: Option<Process>,
    _bus: Process,
    address: String,
    dir: TempDir,
}

impl SecretService {
    /// Starts the bus and the keyring, and waits until the Secret Service
    /// answers on the bus.
    pub fn start() -> Result<Self> {
        let dbus_daemon = require_program("dbus-daemon")?;
        require_program("gnome-keyring-daemon")?;
        require_program("dbus-send")?;
        let dir = tempfile::Builder::new()
            .prefix("gangway-keychain-")
            .tempdir()?;
        std::fs::create_dir_all(dir.path().join("home"))?;
        let run = dir.path().join("run");
        std::fs::create_dir_all(&run)?;
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700))?;
        std::fs::write(dir.path().join("password"), PASSWORD)?;

        let mut cmd = Command::new(dbus_daemon);
        cmd.args(["--session", "--nofork", "--print-address=1"])
            .arg(format!("--address=unix:path={}", run.join("bus").display()))
            .env("HOME", dir.path().join("home"))
            .env("XDG_RUNTIME_DIR", &run)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut bus = Process::spawn("dbus-daemon", &mut cmd)?;
        let address = bus
            .blocking_wait_line("its address", startup_timeout(START_TIMEOUT), |l| {
                l.starts_with("unix:")
            })?
            .trim()
            .to_string();
        let mut me = SecretService {
            keyring: None,
            _bus: bus,
            address,
            dir,
        };
        me.start_keyring()?;
        Ok(me)
    }

    fn start_keyring(&mut self) -> Result<()> {
        // The password goes in on stdin; `exec` keeps the daemon's pid the
        // one the guard stops.
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("exec gnome-keyring-daemon --unlock --components=secrets --foreground < \"$1\"")
            .arg("sh")
            .arg(self.dir.path().join("password"))
            .envs(self.env())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut keyring = Process::spawn("gnome-keyring-daemon", &mut cmd)?;
        blocking_poll(
            "the Secret Service on the session bus",
            startup_timeout(START_TIMEOUT),
            || {
                keyring.check_alive()?;
                let out = Command::new("dbus-send")
                    .args([
                        "--session",
                        "--print-reply",
                        "--dest=org.freedesktop.DBus",
                        "/org/freedesktop/DBus",
                        "org.freedesktop.DBus.NameHasOwner",
                        "string:org.freedesktop.secrets",
                    ])
                    .envs(self.env())
                    .stdin(Stdio::null())
                    .output()?;
                Ok(String::from_utf8_lossy(&out.stdout)
                    .contains("boolean true")
                    .then_some(()))
            },
        )?;
        self.keyring = Some(keyring);
        Ok(())
    }

    /// Stops the keyring daemon and starts it again (same `HOME`, same
    /// password): what was stored must still be there.
    pub fn restart_keyring(&mut self) -> Result<()> {
        if let Some(mut k) = self.keyring.take() {
            k.stop();
        }
        self.start_keyring()
    }

    /// The secret stored under `service` and `user`, read with `secret-tool`
    /// (libsecret's own client, not Gangway's code); `None` when there is
    /// no such entry.
    pub fn lookup(&self, service: &str, user: &str) -> Result<Option<String>> {
        let out = Command::new(require_program("secret-tool")?)
            .args(["lookup", "service", service, "username", user])
            .envs(self.env())
            .stdin(Stdio::null())
            .output()?;
        // Exit 1 and no output: nothing stored.
        if !out.status.success() && out.stdout.is_empty() {
            return Ok(None);
        }
        anyhow::ensure!(
            out.status.success(),
            "secret-tool lookup {user}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Some(String::from_utf8(out.stdout)?.trim_end().to_string()))
    }

    /// A value Gangway stored in its namespace `ns` (a relay's URL, see
    /// `gangway_agent::keychain::namespace_for`) as `item` (`refresh`,
    /// `access`), its numbered chunks put together (see the agent's
    /// `keychain` module), read with [`SecretService::lookup`].
    pub fn gangway_value(&self, ns: &str, item: &str) -> Result<Option<String>> {
        let Some(head) = self.lookup("gangway", &format!("{ns}#{item}"))? else {
            return Ok(None);
        };
        let Some(mark) = head.strip_prefix("gangway-chunks:") else {
            return Ok(Some(head));
        };
        let (generation, count) = mark
            .split_once(':')
            .and_then(|(g, n)| Some((g.parse::<u64>().ok()?, n.parse::<usize>().ok()?)))
            .with_context(|| format!("bad chunk mark {head:?}"))?;
        let mut value = String::new();
        for i in 0..count {
            let user = format!("{ns}#{item}.g{generation}.{i}");
            value += &self
                .lookup("gangway", &user)?
                .with_context(|| format!("chunk {user} is missing"))?;
        }
        Ok(Some(value))
    }

    /// The throw-away home directory.
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// The runtime directory (`XDG_RUNTIME_DIR`, 0700).
    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// Environment for a process that should use this keychain.
    pub fn env(&self) -> Vec<(&'static str, OsString)> {
        let home = self.home();
        vec![
            ("HOME", home.clone().into()),
            ("XDG_RUNTIME_DIR", self.runtime_dir().into()),
            ("XDG_CONFIG_HOME", home.join(".config").into()),
            ("XDG_DATA_HOME", home.join(".local/share").into()),
            ("DBUS_SESSION_BUS_ADDRESS", self.address.clone().into()),
        ]
    }

    /// Environment with no keychain at all: no session bus, no display, an
    /// empty runtime directory under `root`.
    pub fn absent_env(root: &Path) -> Result<Vec<(&'static str, OsString)>> {
        let home = root.join("home");
        let run = root.join("run");
        std::fs::create_dir_all(&home)?;
        std::fs::create_dir_all(&run)?;
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700))?;
        Ok(vec![
            ("HOME", home.clone().into()),
            ("XDG_RUNTIME_DIR", run.into()),
            ("XDG_CONFIG_HOME", home.join(".config").into()),
            ("XDG_DATA_HOME", home.join(".local/share").into()),
        ])
    }
}
