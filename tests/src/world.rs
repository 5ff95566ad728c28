//! A "world" of real peers for the tests that drive Gangway's agent as a
//! user would: GNOME Keyring on a private bus, the OIDC provider, one
//! `gangway-relay` per environment, an echo and an HTTP backend, the user
//! config naming those environments, a `BROWSER` that records the URLs it
//! is asked to open ([`BrowserMailbox`]), and a runner for `gangway`
//! commands.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use tempfile::TempDir;

use crate::gangway::{
    gangway_command, write_relay_config, IdentitySpec, RelayProcess, ServiceSpec, TestCert,
};
use crate::peers::browser::Browser;
use crate::peers::desktop::{EchoServer, HttpStub};
use crate::peers::keychain::SecretService;
use crate::peers::oidc::{OidcProvider, DEFAULT_AUDIENCE};
use crate::peers::process::{assert_success, poll, Finished, Process};

/// The groups a service for developers allows.
pub const DEV: &[&str] = &["developers"];

/// The peers, and one environment (a relay) per name.
pub struct World {
    pub keychain: SecretService,
    pub idp: OidcProvider,
    pub cert: TestCert,
    /// (environment name, its relay), in the order given.
    pub relays: Vec<(String, RelayProcess)>,
    pub echo: EchoServer,
    pub web: HttpStub,
    pub dir: TempDir,
    pub browser: BrowserMailbox,
}

impl World {
    /// Starts everything; each environment's relay offers `echo` (tcp),
    /// `bitbucket` and `confluence` (http) and `bitbucket-ssh` (tcp).
    pub async fn start(environments: &[&str]) -> Result<Self> {
        let keychain = SecretService::start()?;
        let cert = TestCert::new()?;
        let dir = tempfile::tempdir()?;
        let idp = OidcProvider::start(DEFAULT_AUDIENCE, 60)?;
        let echo = EchoServer::start()?;
        let web = HttpStub::start(
            "<!doctype html><title>Confluence</title><h1 id=\"space\">Engineering space</h1>",
        )?;
        let mut relays = Vec::new();
        for name in environments {
            let rdir = dir.path().join(format!("relay-{name}"));
            std::fs::create_dir_all(&rdir)?;
            let config = write_relay_config(
                &rdir,
                "127.0.0.1:0".parse()?,
                &cert,
                &IdentitySpec {
                    issuer: idp.issuer(),
                    audience: DEFAULT_AUDIENCE,
                    leeway_secs: 0,
                    jwks_file: None,
                },
                &[
                    ServiceSpec {
                        name: "bitbucket",
                        kind: "http",
                        backends: vec![web.addr.to_string()],
                        allow_groups: Some(DEV),
                    },
                    ServiceSpec {
                        name: "bitbucket-ssh",
                        kind: "tcp",
                        backends: vec![echo.addr.to_string()],
                        allow_groups: Some(DEV),
                    },
                    ServiceSpec {
                        name: "confluence",
                        kind: "http",
                        backends: vec![web.addr.to_string()],
                        allow_groups: None,
                    },
                    ServiceSpec {
                        name: "echo",
                        kind: "tcp",
                        backends: vec![echo.addr.to_string()],
                        allow_groups: Some(DEV),
                    },
                ],
            )?;
            relays.push((name.to_string(), RelayProcess::start(&config)?));
        }
        let browser = BrowserMailbox::create(dir.path())?;
        Ok(World {
            keychain,
            idp,
            cert,
            relays,
            echo,
            web,
            dir,
            browser,
        })
    }

    pub fn relay(&self, env: &str) -> &RelayProcess {
        &self.relays.iter().find(|(n, _)| n == env).expect("env").1
    }

    /// Writes the user config: every environment, the first the default,
    /// with `ports` (service → local port) for each.
    pub fn write_config(&self, ports: &[(&str, u16)]) -> Result<PathBuf> {
        let dir = self.keychain.home().join(".config/gangway");
        std::fs::create_dir_all(&dir)?;
        let mut t = format!("default_environment = {:?}\n", self.relays[0].0);
        for (name, relay) in &self.relays {
            t += &format!(
                "\n# {name}\n[[environment]]\nname = {name:?}\nrelay = {:?}\nca_file = {:?}\n",
                relay.url(),
                self.cert.cert.to_str().unwrap()
            );
            if !ports.is_empty() {
                t += "[environment.ports]\n";
                for (svc, port) in ports {
                    t += &format!("{svc:?} = {port}\n");
                }
            }
        }
        let path = dir.join("config.toml");
        std::fs::write(&path, t)?;
        Ok(path)
    }

    /// Environment for Gangway's processes: the keychain, the browser mailbox.
    pub fn env(&self) -> Vec<(&'static str, OsString)> {
        let mut e = self.keychain.env();
        e.push(("BROWSER", self.browser.script.clone().into()));
        e
    }

    /// The runtime dir (XDG_RUNTIME_DIR) Gangway's processes get.
    pub fn runtime_dir(&self) -> PathBuf {
        self.keychain
            .env()
            .into_iter()
            .find(|(k, _)| *k == "XDG_RUNTIME_DIR")
            .map(|(_, v)| PathBuf::from(v))
            .expect("runtime dir")
    }

    /// `gangway ARGS…` with the world's environment.
    pub fn gangway(&self, args: &[&str]) -> Result<Command> {
        let mut cmd = gangway_command(args)?;
        cmd.envs(self.env());
        Ok(cmd)
    }

    pub async fn run(&self, args: &[&str]) -> Result<Finished> {
        Process::spawn_captured(&format!("gangway {}", args[0]), &mut self.gangway(args)?)?
            .finish(Duration::from_secs(60))
            .await
    }

    /// `gangway login --env ENV` completed in `browser` as alice.
    pub async fn login(&mut self, browser: &Browser, env: &str) -> Result<Finished> {
        let login = Process::spawn_captured(
            "gangway login",
            &mut self.gangway(&["login", "--env", env, "--timeout", "90"])?,
        )?;
        let url = self.browser.next_url(Duration::from_secs(20)).await?;
        let page = browser.sign_in(&url, "alice", "alice-pw").await?;
        anyhow::ensure!(page.selector == "#gangway-result", "{page:?}");
        let done = login.finish(Duration::from_secs(60)).await?;
        assert_success(&format!("login --env {env}"), &done);
        Ok(done)
    }
}

/// Where the test binaries put their artifacts: `$CARGO_TARGET_DIR` (or the
/// target dir the test executable lives in).
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("test executable");
    exe.ancestors()
        .find(|p| p.join("debug").is_dir() || p.join("release").is_dir())
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir)
}

/// "The system browser" for tests: a script, given as `$BROWSER`, that
/// appends every URL it is asked to open to a file the test reads.
pub struct BrowserMailbox {
    pub script: PathBuf,
    urls: PathBuf,
    seen: usize,
}

impl BrowserMailbox {
    /// Writes the script and names its file under `dir`.
    pub fn create(dir: &Path) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let urls = dir.join("browser-urls.txt");
        let script = dir.join("open-browser.sh");
        std::fs::write(
            &script,
            format!("#!/bin/sh\nprintf '%s\\n' \"$1\" >> '{}'\n", urls.display()),
        )?;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
        Ok(Self {
            script,
            urls,
            seen: 0,
        })
    }

    /// Whether anything was ever opened.
    pub fn opened_any(&self) -> bool {
        self.urls.exists()
    }

    /// The next URL "the browser" was asked to open.
    pub async fn next_url(&mut self, timeout: Duration) -> Result<String> {
        let url = poll("a browser to be opened", timeout, || {
            let text = std::fs::read_to_string(&self.urls).unwrap_or_default();
            Ok(text.lines().nth(self.seen).map(str::to_string))
        })
        .await?;
        self.seen += 1;
        Ok(url)
    }
}
