//! Launchers for Gangway's own binaries, `gangway-relay` and `gangway`,
//! as real processes, plus the bits a test needs around them: a self-signed
//! certificate, relay config files, and a backend that counts connections.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::peers::oidc::{OidcProvider, DEFAULT_AUDIENCE};
use crate::peers::process::{startup_timeout, Process};

/// `gangway ARGS…` for a test that sets its own environment on top: `info`
/// logs, and none of the caller's token, control socket or display.
pub fn gangway_command(args: &[&str]) -> Result<Command> {
    let mut cmd = Command::new(bin_path("gangway")?);
    cmd.args(args)
        .env("RUST_LOG", "info")
        .env_remove("GANGWAY_TOKEN")
        .env_remove("GANGWAY_CONTROL_SOCKET")
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY");
    Ok(cmd)
}

/// Starts `cmd` (a `gangway login --device`); returns it and the
/// verification URL it printed, within 20 s.
pub async fn start_device_login(cmd: Command) -> Result<(Process, String)> {
    let mut login = Process::spawn_captured("gangway login --device", cmd)?;
    let url = login
        .wait_line("the verification URL", Duration::from_secs(20), |l| {
            l.trim_start().starts_with("http://")
        })
        .await?
        .trim()
        .to_string();
    Ok((login, url))
}

/// Path of a binary built from this workspace, next to the test executable's
/// `deps/` directory (`cargo build --workspace` or the test command builds it).
pub fn bin_path(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|p| {
            if p.ends_with("deps") {
                p.parent()
            } else {
                Some(p)
            }
        })
        .context("test executable has no parent directory")?;
    let p = dir.join(name);
    if !p.is_file() {
        bail!(
            "{} is missing: build the workspace binaries first (cargo build --workspace --bins)",
            p.display()
        );
    }
    Ok(p)
}

/// A self-signed certificate for 127.0.0.1 / localhost, in PEM files.
pub struct TestCert {
    _dir: TempDir,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCert {
    /// A self-signed certificate made from `params` (for tests of bad
    /// certificates: expired, for another name, a CA used as the server's).
    pub fn from_params(params: rcgen::CertificateParams) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let key_pair = rcgen::KeyPair::generate()?;
        let c = params.self_signed(&key_pair)?;
        let cert = dir.path().join("relay.crt");
        let key = dir.path().join("relay.key");
        std::fs::write(&cert, c.pem())?;
        std::fs::write(&key, key_pair.serialize_pem())?;
        Ok(Self {
            _dir: dir,
            cert,
            key,
        })
    }

    pub fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let ck = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
        ])?;
        let cert = dir.path().join("relay.crt");
        let key = dir.path().join("relay.key");
        std::fs::write(&cert, ck.cert.pem())?;
        std::fs::write(&key, ck.key_pair.serialize_pem())?;
        Ok(Self {
            _dir: dir,
            cert,
            key,
        })
    }
}

/// One `[[service]]` of a relay config.
pub struct ServiceSpec<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    pub backends: Vec<String>,
    pub allow_groups: Option<&'a [&'a str]>,
}

/// Identity settings of a relay config.
pub struct IdentitySpec<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
    pub leeway_secs: u64,
    pub jwks_file: Option<&'a Path>,
}

/// Writes a relay config into `dir` and returns its path.
pub fn write_relay_config(
    dir: &Path,
    listen: SocketAddr,
    cert: &TestCert,
    identity: &IdentitySpec<'_>,
    services: &[ServiceSpec<'_>],
) -> Result<PathBuf> {
    let q = |s: &str| serde_json::to_string(s).expect("string");
    let mut t = format!(
        "listen = {}\n\n[tls]\ncert = {}\nkey = {}\n\n[identity]\nissuer = {}\naudience = {}\nclient_id = \"gangway\"\nleeway_secs = {}\njwks_min_refetch_secs = 1\n",
        q(&listen.to_string()),
        q(cert.cert.to_str().unwrap()),
        q(cert.key.to_str().unwrap()),
        q(identity.issuer),
        q(identity.audience),
        identity.leeway_secs,
    );
    if let Some(j) = identity.jwks_file {
        t += &format!("jwks_file = {}\n", q(j.to_str().unwrap()));
    }
    t += &format!(
        "\n[audit]\npath = {}\n",
        q(dir.join("audit.jsonl").to_str().unwrap())
    );
    for s in services {
        t += &format!(
            "\n[[service]]\nname = {}\nkind = {}\nlocal_port = 0\nbackends = [{}]\nconnect_timeout_secs = 3\n",
            q(s.name),
            q(s.kind),
            s.backends.iter().map(|b| q(b)).collect::<Vec<_>>().join(", ")
        );
        if let Some(g) = s.allow_groups {
            t += &format!(
                "allow_groups = [{}]\n",
                g.iter().map(|x| q(x)).collect::<Vec<_>>().join(", ")
            );
        }
    }
    let path = dir.join("relay.toml");
    std::fs::write(&path, t)?;
    Ok(path)
}

/// A running `gangway-relay`; its stderr (the log) is collected.
pub struct RelayProcess {
    pub process: Process,
    pub addr: SocketAddr,
    audit: PathBuf,
}

impl RelayProcess {
    /// Starts the relay with `config` (whose audit file sits beside it) and
    /// waits until it listens.
    pub fn start(config: &Path) -> Result<Self> {
        let mut cmd = Command::new(bin_path("gangway-relay")?);
        cmd.arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut process = Process::spawn("relay", &mut cmd)?;
        let line = process.blocking_wait_line(
            "the relay to listen",
            startup_timeout(Duration::from_secs(20)),
            |l| l.contains("listening on https://"),
        )?;
        let addr = line
            .rsplit("https://")
            .next()
            .and_then(|a| a.trim().parse().ok())
            .with_context(|| format!("no address in {line:?}"))?;
        Ok(Self {
            process,
            addr,
            audit: config.parent().unwrap().join("audit.jsonl"),
        })
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The relay's process id (e.g. to read its memory from `/proc`).
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Audit lines written so far, parsed.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until an audit line satisfies `f`; returns every line so far.
    pub async fn wait_audit(
        &self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<Vec<serde_json::Value>> {
        let what = format!("{what} in the relay's audit log");
        crate::peers::process::poll(&what, timeout, || {
            let audit = self.audit();
            Ok(audit.iter().any(&f).then_some(audit))
        })
        .await
    }

    /// The relay's audit file.
    pub fn audit_path(&self) -> &Path {
        &self.audit
    }

    /// Kills the relay (SIGKILL: no goodbye, as in a crash).
    pub fn kill(&mut self) {
        self.process.stop();
    }
}

/// A `[[service]]` block (raw TOML) for an http service `name` on
/// `local_port` with these backends, then the `extra` lines (more keys,
/// then sub-tables such as `[service.health]` or `[[service.rule]]`).
pub fn http_service(name: &str, local_port: u16, backends: &[SocketAddr], extra: &str) -> String {
    let backends: Vec<String> = backends.iter().map(ToString::to_string).collect();
    format!(
        "\n[[service]]\nname = {name:?}\nkind = \"http\"\nlocal_port = {local_port}\nbackends = {backends:?}\n{extra}\n"
    )
}

/// A relay config trusting the test identity provider `idp` (no leeway),
/// with the given `[[service]]` blocks (raw TOML), audit lines to
/// `dir/audit.jsonl`; written to `dir/relay.toml`.
pub fn relay_config_for_idp(
    dir: &Path,
    cert: &TestCert,
    idp: &OidcProvider,
    services: &str,
) -> Result<PathBuf> {
    let text = format!(
        r#"listen = "127.0.0.1:0"
[tls]
cert = {cert:?}
key = {key:?}
[identity]
issuer = {issuer:?}
audience = {aud:?}
client_id = "gangway"
leeway_secs = 0
[audit]
path = {audit:?}
{services}"#,
        cert = cert.cert.display().to_string(),
        key = cert.key.display().to_string(),
        issuer = idp.issuer(),
        aud = DEFAULT_AUDIENCE,
        audit = dir.join("audit.jsonl").display().to_string(),
    );
    let path = dir.join("relay.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// What a relay test starts from: the test identity provider (60 s
/// tokens), a relay certificate and a scratch directory for the config,
/// the audit file and the agents' token files.
pub struct RelaySetup {
    pub idp: OidcProvider,
    pub cert: TestCert,
    pub dir: TempDir,
}

impl RelaySetup {
    pub fn new() -> Result<Self> {
        Ok(Self {
            idp: OidcProvider::start(DEFAULT_AUDIENCE, 60)?,
            cert: TestCert::new()?,
            dir: tempfile::tempdir()?,
        })
    }

    /// A relay with these `[[service]]` blocks (raw TOML).
    pub fn relay(&self, services: &str) -> Result<RelayProcess> {
        let config = relay_config_for_idp(self.dir.path(), &self.cert, &self.idp, services)?;
        RelayProcess::start(&config)
    }

    /// A relay whose config and audit file live in `dir`'s subdirectory
    /// `name` (so several relays of one test keep theirs apart), with `top`
    /// (raw TOML: `listen`, `workers`) instead of `listen = "127.0.0.1:0"`,
    /// and `tables` (`[assertion]`, `[limits]`, `[[service]]` blocks, raw
    /// TOML) at the end.
    pub fn relay_named(&self, name: &str, top: &str, tables: &str) -> Result<RelayProcess> {
        RelayProcess::start(&self.relay_config_named(name, top, tables)?)
    }

    /// The config [`RelaySetup::relay_named`] starts a relay with.
    pub fn relay_config_named(&self, name: &str, top: &str, tables: &str) -> Result<PathBuf> {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir)?;
        let path = relay_config_for_idp(&dir, &self.cert, &self.idp, tables)?;
        let text = std::fs::read_to_string(&path)?.replacen("listen = \"127.0.0.1:0\"", top, 1);
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// `gangway up` against `relay` with a token issued to `client`,
    /// listening for `services`.
    pub async fn agent(
        &self,
        relay: &RelayProcess,
        client: &str,
        services: &[&str],
    ) -> Result<AgentProcess> {
        AgentProcess::with_client_token(
            &self.idp,
            relay,
            &self.cert,
            client,
            self.dir.path(),
            services,
        )
        .await
    }
}

/// A running `gangway up`; its stdout and stderr are collected.
pub struct AgentProcess {
    pub process: Process,
    /// Service name → local address it listens on.
    pub listening: HashMap<String, SocketAddr>,
    /// Its control socket: its own, unless the caller chose one (through
    /// `GANGWAY_CONTROL_SOCKET` or `XDG_RUNTIME_DIR`).
    pub control_socket: PathBuf,
    _control_dir: Option<TempDir>,
}

impl AgentProcess {
    /// Starts `gangway up` against `relay_url`, every service in `services`
    /// on a port-0 loopback listener, and waits for those listeners.
    pub fn start(
        relay_url: &str,
        ca: &Path,
        token_file: &Path,
        services: &[&str],
        extra_args: &[&str],
    ) -> Result<Self> {
        Self::start_with_env(relay_url, ca, token_file, services, extra_args, &[])
    }

    /// [`AgentProcess::start`] with more environment variables (e.g. its
    /// own `HOME`, `TMPDIR` and `GANGWAY_CONTROL_SOCKET`).
    pub fn start_with_env(
        relay_url: &str,
        ca: &Path,
        token_file: &Path,
        services: &[&str],
        extra_args: &[&str],
        env: &[(&str, std::ffi::OsString)],
    ) -> Result<Self> {
        let mut cmd = Command::new(bin_path("gangway")?);
        cmd.args(["up", "--relay", relay_url, "--ca-file"])
            .arg(ca)
            .arg("--token-file")
            .arg(token_file)
            .args(extra_args)
            .env("RUST_LOG", "info")
            .env_remove("GANGWAY_TOKEN")
            .envs(env.iter().map(|(k, v)| (k, v)));
        for s in services {
            cmd.arg("--listen").arg(format!("{s}=127.0.0.1:0"));
        }
        Self::spawn(cmd, services)
    }

    /// Runs `cmd` (a `gangway up` the caller set up, e.g. with
    /// `GANGWAY_TOKEN` instead of a token file, and a `--listen` flag per
    /// service) and waits for a listener for each of `services`.
    pub fn spawn(mut cmd: Command, services: &[&str]) -> Result<Self> {
        let chosen = |key: &str| {
            cmd.get_envs()
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| v.map(PathBuf::from))
        };
        let (control_socket, control_dir) =
            match (chosen("GANGWAY_CONTROL_SOCKET"), chosen("XDG_RUNTIME_DIR")) {
                (Some(p), _) => (p, None),
                (None, Some(d)) => (d.join("gangway").join("agent.sock"), None),
                (None, None) => {
                    let dir = tempfile::tempdir()?;
                    let p = dir.path().join("agent.sock");
                    cmd.env("GANGWAY_CONTROL_SOCKET", &p);
                    (p, Some(dir))
                }
            };
        let mut process = Process::spawn_captured("agent", &mut cmd)?;
        let mut listening = HashMap::new();
        for s in services {
            let line = process.blocking_wait_line(
                &format!("a listener for {s}"),
                startup_timeout(Duration::from_secs(30)),
                |l| {
                    let mut w = l.split_whitespace();
                    w.next() == Some("listening") && w.next() == Some(s)
                },
            )?;
            let addr: SocketAddr = line
                .split_whitespace()
                .nth(2)
                .and_then(|a| a.parse().ok())
                .with_context(|| format!("no address in {line:?}"))?;
            listening.insert(s.to_string(), addr);
        }
        Ok(Self {
            process,
            listening,
            control_socket,
            _control_dir: control_dir,
        })
    }

    /// The local door's git secret for the `http` listener of `service`,
    /// asked the way git asks: `gangway git credential get` over the
    /// agent's control socket.
    pub fn door_secret(&self, service: &str) -> Result<String> {
        git_credential(&self.control_socket, self.addr(service))
    }

    /// An `Authorization` header value carrying the door's credential for
    /// `service` (for raw HTTP clients in tests).
    pub fn door_auth(&self, service: &str) -> Result<String> {
        // A listener on 0.0.0.0 (`--allow-network-listen`) is reached
        // locally at 127.0.0.1, the address git would ask about.
        let mut addr = self.addr(service);
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        door_auth(&self.control_socket, addr)
    }

    /// Headers that carry the door's credential for `service`, for a
    /// reqwest client's `default_headers`.
    pub fn door_headers(&self, service: &str) -> Result<reqwest::header::HeaderMap> {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            reqwest::header::AUTHORIZATION,
            self.door_auth(service)?.parse()?,
        );
        Ok(h)
    }

    /// A reqwest client that carries the door's credential for `service`.
    pub fn http(&self, service: &str) -> Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .default_headers(self.door_headers(service)?)
            .build()?)
    }

    /// Environment for git so that it gets the door's credential from this
    /// agent by itself: `gangway git credential` as its only helper (the
    /// same lines `gangway git setup` writes, through `GIT_CONFIG_*`).
    pub fn git_env(&self) -> Result<Vec<(String, String)>> {
        git_helper_env(&self.control_socket)
    }

    /// `gangway up` with a token the provider issued to `client` (client
    /// credentials, so the client's groups apply), kept in `dir`.
    pub async fn with_client_token(
        idp: &OidcProvider,
        relay: &RelayProcess,
        cert: &TestCert,
        client: &str,
        dir: &Path,
        services: &[&str],
    ) -> Result<Self> {
        let token = dir.join(format!("{client}.token"));
        std::fs::write(&token, idp.client_credentials_token(client).await?)?;
        Self::start(&relay.url(), &cert.cert, &token, services, &[])
    }

    pub fn addr(&self, service: &str) -> SocketAddr {
        self.listening[service]
    }

    pub fn stop(&mut self) {
        self.process.stop();
    }
}

/// `gangway git credential get` for `addr`, through the control socket at
/// `socket`: the password it prints.
pub fn git_credential(socket: &Path, addr: SocketAddr) -> Result<String> {
    git_credential_by(&bin_path("gangway")?, socket, addr)
}

/// [`git_credential`] with the `gangway` program at `program`.
pub fn git_credential_by(program: &Path, socket: &Path, addr: SocketAddr) -> Result<String> {
    use std::io::Write;
    let mut cmd = Command::new(program);
    cmd.args(["git", "credential", "get"])
        .env_remove("GANGWAY_TOKEN")
        .env("GANGWAY_CONTROL_SOCKET", socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(format!("protocol=http\nhost={addr}\n\n").as_bytes())?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("password="))
        .map(str::to_string)
        .with_context(|| {
            format!(
                "`gangway git credential get` gave no password for {addr}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// An `Authorization` value with the door's credential for `addr`, from
/// the agent serving the control socket `socket`.
pub fn door_auth(socket: &Path, addr: SocketAddr) -> Result<String> {
    door_auth_by(&bin_path("gangway")?, socket, addr)
}

/// [`door_auth`] with the `gangway` program at `program`.
pub fn door_auth_by(program: &Path, socket: &Path, addr: SocketAddr) -> Result<String> {
    use base64::Engine;
    let secret = git_credential_by(program, socket, addr)?;
    Ok(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("gangway:{secret}"))
    ))
}

/// Environment for git (see [`AgentProcess::git_env`]) for the agent
/// serving the control socket `socket`.
pub fn git_helper_env(socket: &Path) -> Result<Vec<(String, String)>> {
    Ok(git_helper_env_by(&bin_path("gangway")?, socket))
}

/// [`git_helper_env`] with the `gangway` program at `program`.
pub fn git_helper_env_by(program: &Path, socket: &Path) -> Vec<(String, String)> {
    let helper = format!("{} git credential", program.display());
    vec![
        ("GIT_CONFIG_COUNT".into(), "2".into()),
        ("GIT_CONFIG_KEY_0".into(), "credential.helper".into()),
        ("GIT_CONFIG_VALUE_0".into(), String::new()),
        ("GIT_CONFIG_KEY_1".into(), "credential.helper".into()),
        ("GIT_CONFIG_VALUE_1".into(), helper),
        (
            "GANGWAY_CONTROL_SOCKET".into(),
            socket.display().to_string(),
        ),
    ]
}

/// A TCP backend that counts connections and closes them: proves that a
/// refused request never reached the upstream.
pub struct CountingBackend {
    pub addr: SocketAddr,
    count: Arc<AtomicUsize>,
}

impl CountingBackend {
    pub fn start() -> Result<Self> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?;
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                if s.is_ok() {
                    c.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Ok(Self { addr, count })
    }

    pub fn connections(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` connections have arrived; how many did.
    pub async fn wait_for_connections(&self, n: usize, timeout: Duration) -> Result<usize> {
        let what = format!("{n} connection(s) at the backend");
        crate::peers::process::poll(&what, timeout, || {
            let got = self.connections();
            Ok((got >= n).then_some(got))
        })
        .await
    }
}
