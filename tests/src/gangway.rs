//! Launchers for Gangway's own binaries, `gangway-relay` and `gangway`,
//! as real processes, plus the bits a test needs around them: a self-signed
//! certificate, relay config files, and a backend that counts connections.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::peers::process::{startup_timeout, ChildGuard};

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

/// Collects a child's output lines (echoing them to the test's stderr).
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    /// Follows `r` line by line on a thread.
    pub fn follow(&self, name: &str, r: impl Read + Send + 'static) {
        let lines = self.0.clone();
        let name = name.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines() {
                let Ok(line) = line else { break };
                eprintln!("[{name}] {line}");
                lines.lock().unwrap().push(line);
            }
        });
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Waits until some line satisfies `f`, returning it.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        child: &mut ChildGuard,
        f: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.0.lock().unwrap().iter().find(|l| f(l)) {
                return Ok(l.clone());
            }
            if let Err(e) = child.check_alive() {
                bail!(
                    "{e} while waiting for {what}; output:\n{}",
                    self.snapshot().join("\n")
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what}; output:\n{}",
                    self.snapshot().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// A running `gangway-relay`.
pub struct RelayProcess {
    child: ChildGuard,
    pub addr: SocketAddr,
    pub stderr: Lines,
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
        let mut child = ChildGuard::spawn("gangway-relay", &mut cmd)?;
        let stderr = Lines::default();
        stderr.follow(
            "relay",
            child.child_mut().stderr.take().expect("piped stderr"),
        );
        let line = stderr.wait_for(
            "relay to listen",
            startup_timeout(Duration::from_secs(20)),
            &mut child,
            |l| l.contains("listening on https://"),
        )?;
        let addr = line
            .rsplit("https://")
            .next()
            .and_then(|a| a.trim().parse().ok())
            .with_context(|| format!("no address in {line:?}"))?;
        Ok(Self {
            child,
            addr,
            stderr,
            audit: config.parent().unwrap().join("audit.jsonl"),
        })
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The relay's process id (e.g. to read its memory from `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Audit lines written so far, parsed.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The relay's audit file.
    pub fn audit_path(&self) -> &Path {
        &self.audit
    }

    /// Kills the relay (SIGKILL: no goodbye, as in a crash).
    pub fn kill(&mut self) {
        self.child.stop();
    }
}

/// A running `gangway up`.
pub struct AgentProcess {
    child: ChildGuard,
    pub stdout: Lines,
    pub stderr: Lines,
    /// Service name → local address it listens on.
    pub listening: HashMap<String, SocketAddr>,
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
        let mut cmd = Command::new(bin_path("gangway")?);
        cmd.args(["up", "--relay", relay_url, "--ca-file"])
            .arg(ca)
            .arg("--token-file")
            .arg(token_file)
            .args(extra_args)
            .env("RUST_LOG", "info")
            .env_remove("GANGWAY_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for s in services {
            cmd.arg("--listen").arg(format!("{s}=127.0.0.1:0"));
        }
        let mut child = ChildGuard::spawn("gangway", &mut cmd)?;
        let (stdout, stderr) = (Lines::default(), Lines::default());
        stdout.follow("agent", child.child_mut().stdout.take().expect("piped"));
        stderr.follow("agent", child.child_mut().stderr.take().expect("piped"));
        let mut listening = HashMap::new();
        for s in services {
            let line = stdout.wait_for(
                &format!("agent to listen for {s}"),
                startup_timeout(Duration::from_secs(30)),
                &mut child,
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
            child,
            stdout,
            stderr,
            listening,
        })
    }

    pub fn addr(&self, service: &str) -> SocketAddr {
        self.listening[service]
    }

    pub fn stop(&mut self) {
        self.child.stop();
    }
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
}
