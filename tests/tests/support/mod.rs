//! What the control-API, desktop and sign-in tests share: [`Proc`], a
//! command whose output lines are collected while it runs, and a "world" of
//! real peers (GNOME Keyring on a private bus, the OIDC provider, one
//! `gangway-relay` per environment, an echo and an HTTP backend), the user
//! config naming those environments, a `BROWSER` that records the URLs it
//! is asked to open, and a runner for `gangway` commands.
#![allow(dead_code)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gangway_agent::control::{Client, Request};
use gangway_agent::status::Snapshot;
use gangway_tests::gangway::{
    bin_path, write_relay_config, IdentitySpec, RelayProcess, ServiceSpec, TestCert,
};
use gangway_tests::peers::browser::Browser;
use gangway_tests::peers::desktop::{EchoServer, HttpStub};
use gangway_tests::peers::keychain::SecretService;
use gangway_tests::peers::oidc::{OidcProvider, DEFAULT_AUDIENCE};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};

pub const DEV: &[&str] = &["developers"];

/// A running command whose stdout and stderr lines are collected (and echoed
/// to the test's stderr as `[name] …` / `[name!] …` while it runs). Killed
/// and reaped when dropped.
pub struct Proc {
    pub name: String,
    pub child: tokio::process::Child,
    out: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<Vec<String>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

/// A finished command.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// From [`Proc::finish`] being called to the exit.
    pub took: Duration,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: tokio::process::Command) -> Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let follow = |r: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                      sink: Arc<Mutex<Vec<String>>>,
                      tag: String| {
            tokio::spawn(async move {
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("[{tag}] {line}");
                    sink.lock().unwrap().push(line);
                }
            })
        };
        let readers = vec![
            follow(
                Box::new(child.stdout.take().context("stdout")?),
                out.clone(),
                name.to_string(),
            ),
            follow(
                Box::new(child.stderr.take().context("stderr")?),
                err.clone(),
                format!("{name}!"),
            ),
        ];
        Ok(Proc {
            name: name.to_string(),
            child,
            out,
            err,
            readers,
        })
    }

    /// Stdout lines so far.
    pub fn stdout(&self) -> Vec<String> {
        self.out.lock().unwrap().clone()
    }

    /// Stderr lines so far.
    pub fn stderr(&self) -> Vec<String> {
        self.err.lock().unwrap().clone()
    }

    /// Both, for error messages.
    fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.stdout().join("\n"),
            self.stderr().join("\n")
        )
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for a line (stdout or stderr) that satisfies `f`.
    pub async fn wait_line(
        &mut self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = {
                let out = self.out.lock().unwrap();
                let err = self.err.lock().unwrap();
                out.iter().chain(err.iter()).find(|l| f(l)).cloned()
            };
            if let Some(l) = found {
                return Ok(l);
            }
            if !self.alive() {
                // Let the readers catch the last lines.
                tokio::time::sleep(Duration::from_millis(200)).await;
                bail!(
                    "{} exited while waiting for {what}:\n{}",
                    self.name,
                    self.output()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what} from {}:\n{}",
                    self.name,
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the command to exit (killing it after `timeout`) and for
    /// its output to be read to the end.
    pub async fn finish(mut self, timeout: Duration) -> Result<Finished> {
        let started = Instant::now();
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(s) => s?,
            Err(_) => {
                let _ = self.child.kill().await;
                bail!(
                    "{} did not finish within {timeout:?} (it hung):\n{}",
                    self.name,
                    self.output()
                );
            }
        };
        let took = started.elapsed();
        for r in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
        }
        Ok(Finished {
            status,
            stdout: self.stdout().join("\n"),
            stderr: self.stderr().join("\n"),
            took,
        })
    }

    /// Kills the command now and reaps it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

impl Drop for Proc {
    /// Kills the command if it still runs and reaps it (briefly waiting), so
    /// no test leaves a process or a zombie behind.
    fn drop(&mut self) {
        if !self.alive() {
            return;
        }
        let _ = self.child.start_kill();
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

pub fn assert_success(what: &str, f: &Finished) {
    assert!(
        f.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        f.status,
        f.stdout,
        f.stderr
    );
}

pub fn assert_failure(what: &str, f: &Finished) {
    assert!(
        !f.status.success(),
        "{what} should have failed:\nstdout:\n{}\nstderr:\n{}",
        f.stdout,
        f.stderr
    );
}

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

    /// The control socket Gangway's agent serves there.
    pub fn control(&self) -> Client {
        Client::new(&self.runtime_dir().join("gangway/agent.sock"))
    }

    /// `gangway ARGS…` with the world's environment.
    pub fn gangway(&self, args: &[&str]) -> Result<tokio::process::Command> {
        let mut cmd = tokio::process::Command::new(bin_path("gangway")?);
        cmd.args(args)
            .envs(self.env())
            .env("RUST_LOG", "info")
            .env_remove("GANGWAY_TOKEN")
            .env_remove("GANGWAY_CONTROL_SOCKET")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY");
        Ok(cmd)
    }

    pub async fn run(&self, args: &[&str]) -> Result<Finished> {
        Proc::spawn(&format!("gangway {}", args[0]), self.gangway(args)?)?
            .finish(Duration::from_secs(60))
            .await
    }

    /// `gangway login --env ENV` completed in `browser` as alice.
    pub async fn login(&mut self, browser: &Browser, env: &str) -> Result<Finished> {
        let login = Proc::spawn(
            "gangway login",
            self.gangway(&["login", "--env", env, "--timeout", "90"])?,
        )?;
        let url = self.browser.next_url(Duration::from_secs(20)).await?;
        let page = browser.sign_in(&url, "alice", "alice-pw").await?;
        anyhow::ensure!(page.selector == "#gangway-result", "{page:?}");
        let done = login.finish(Duration::from_secs(60)).await?;
        assert_success(&format!("login --env {env}"), &done);
        Ok(done)
    }

    /// The running agent's state, through the control API.
    pub async fn status(&self) -> Result<Snapshot> {
        let v = self
            .control()
            .request(&Request::Status, |_, _| {})
            .await?
            .context("no agent serves the control socket")?;
        Ok(serde_json::from_value(v)?)
    }

    /// Polls the agent's state until `f` holds.
    pub async fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&Snapshot) -> bool,
    ) -> Result<Snapshot> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(s) = self.status().await {
                if f(&s) {
                    return Ok(s);
                }
                if Instant::now() > deadline {
                    bail!("timed out waiting for {what}; last state: {s:#?}");
                }
            } else if Instant::now() > deadline {
                bail!("timed out waiting for {what}; the agent does not answer");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The local address of `service` in `s`.
pub fn addr_of(s: &Snapshot, service: &str) -> Option<std::net::SocketAddr> {
    s.services
        .iter()
        .find(|x| x.name == service)
        .and_then(|x| x.local_addr.as_deref())
        .and_then(|a| a.parse().ok())
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
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&self.urls).unwrap_or_default();
            if let Some(url) = text.lines().nth(self.seen) {
                self.seen += 1;
                return Ok(url.to_string());
            }
            if Instant::now() > deadline {
                bail!("no browser was opened within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
