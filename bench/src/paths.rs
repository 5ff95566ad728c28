//! The three ways from client to upstream: direct, through Gangway (agent +
//! relay, both real release binaries), and through wstunnel over wss.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::pki::Credentials;
use crate::procs::{free_port, free_ports, localhost, Proc};
use crate::upstream::Endpoints;

const START_LIMIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathKind {
    Direct,
    Gangway,
    Wstunnel,
}

impl PathKind {
    pub fn label(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Gangway => "gangway",
            PathKind::Wstunnel => "wstunnel",
        }
    }
}

/// A running path: where to connect, and the tunnel's two processes (none
/// for direct). Dropping it stops the processes.
pub struct RunningPath {
    pub kind: PathKind,
    pub addrs: Endpoints,
    /// The client-side process (agent / wstunnel client).
    pub client: Option<Proc>,
    /// The server-side process (relay / wstunnel server).
    pub server: Option<Proc>,
    /// Gangway only: the agent's control socket and program, for the
    /// local door's credential (`kind = "http"` services need it).
    pub door: Option<(PathBuf, PathBuf)>,
}

impl RunningPath {
    pub fn direct(upstream: Endpoints) -> Self {
        Self {
            kind: PathKind::Direct,
            addrs: upstream,
            client: None,
            server: None,
            door: None,
        }
    }

    /// Fails if a tunnel process has died.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in [&mut self.client, &mut self.server].into_iter().flatten() {
            p.check_alive()?;
        }
        Ok(())
    }

    /// CPU seconds used so far by the tunnel's two processes together.
    pub fn cpu_secs(&self) -> anyhow::Result<Option<f64>> {
        match (&self.client, &self.server) {
            (Some(c), Some(s)) => Ok(Some(c.cpu_secs()? + s.cpu_secs()?)),
            _ => Ok(None),
        }
    }

    /// (client-side KiB, server-side KiB) resident memory.
    pub fn rss_kib(&self) -> anyhow::Result<Option<(u64, u64)>> {
        match (&self.client, &self.server) {
            (Some(c), Some(s)) => Ok(Some((c.rss_kib()?, s.rss_kib()?))),
            _ => Ok(None),
        }
    }
}

/// Locations of the Gangway release binaries.
#[derive(Debug, Clone)]
pub struct GangwayBins {
    pub agent: PathBuf,
    pub relay: PathBuf,
}

/// Starts `gangway-relay` (TLS from the self-signed cert, keys from
/// `identity.jwks_file`, audit lines to a file) and `gangway up` with one
/// `--listen` per service, each on port 0. The git server, if any, is a
/// `kind = "http"` service, as Bitbucket is carried.
pub async fn start_gangway(
    bins: &GangwayBins,
    creds: &Credentials,
    upstream: Endpoints,
    dir: &Path,
) -> anyhow::Result<RunningPath> {
    let mut config = creds.relay_config_head(&dir.join("audit.jsonl"));
    for (name, kind, local_port, backend) in [
        ("web", "tcp", 8080, Some(upstream.web)),
        ("web-http", "http", 8081, Some(upstream.web)),
        ("iperf", "tcp", 5201, Some(upstream.iperf)),
        ("echo", "tcp", 7007, Some(upstream.echo)),
        // The git server, if any, is carried as Bitbucket is.
        ("git", "http", 7990, upstream.git),
    ] {
        if let Some(backend) = backend {
            config.push_str(&format!(
                "\n[[service]]\nname = \"{name}\"\nkind = \"{kind}\"\n\
                 local_port = {local_port}\nbackends = [\"{backend}\"]\n"
            ));
        }
    }
    let config_path = dir.join("relay.toml");
    std::fs::write(&config_path, config)?;

    let mut cmd = Command::new(&bins.relay);
    cmd.arg("--config")
        .arg(&config_path)
        .env("RUST_LOG", "info");
    let mut relay = Proc::spawn("gangway-relay", cmd, dir)?;
    let relay_addr: SocketAddr = relay
        .wait_for(START_LIMIT, |_, err| {
            err.lines().find_map(|l| {
                l.split_once("listening on https://")
                    .and_then(|(_, a)| a.trim().parse().ok())
            })
        })
        .await?;

    let mut cmd = Command::new(&bins.agent);
    cmd.arg("up")
        .arg("--relay")
        .arg(format!("https://127.0.0.1:{}", relay_addr.port()))
        .arg("--ca-file")
        .arg(&creds.cert)
        .arg("--token-file")
        .arg(&creds.token)
        .args(["--listen", "web=127.0.0.1:0"])
        .args(["--listen", "web-http=127.0.0.1:0"])
        .args(["--listen", "iperf=127.0.0.1:0"])
        .args(["--listen", "echo=127.0.0.1:0"])
        .env("GANGWAY_CONTROL_SOCKET", dir.join("agent.sock"))
        .env("RUST_LOG", "info");
    if upstream.git.is_some() {
        cmd.args(["--listen", "git=127.0.0.1:0"]);
    }
    let mut agent = Proc::spawn("gangway-agent", cmd, dir)?;
    let addrs = agent
        .wait_for(START_LIMIT, |out, err| {
            if !err.contains("tunnel connected") {
                return None;
            }
            let find = |svc: &str| {
                out.lines().find_map(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    (cols.len() >= 3 && cols[0] == "listening" && cols[1] == svc)
                        .then(|| cols[2].parse::<SocketAddr>().ok())
                        .flatten()
                })
            };
            Some(Endpoints {
                web: find("web")?,
                web_http: Some(find("web-http")?),
                iperf: find("iperf")?,
                echo: find("echo")?,
                git: match upstream.git {
                    Some(_) => Some(find("git")?),
                    None => None,
                },
            })
        })
        .await
        .context("waiting for the agent's listeners and tunnel")?;
    Ok(RunningPath {
        kind: PathKind::Gangway,
        addrs,
        client: Some(agent),
        server: Some(relay),
        door: Some((dir.join("agent.sock"), bins.agent.clone())),
    })
}

/// Starts `wstunnel server wss://127.0.0.1:P` with the self-signed cert, and
/// `wstunnel client` with one `-L tcp://...` per service (git too: smart
/// HTTP carried as plain TCP). wstunnel cannot
/// report a port-0 bind, so ports are picked free just before.
pub async fn start_wstunnel(
    wstunnel: &Path,
    creds: &Credentials,
    upstream: Endpoints,
    dir: &Path,
) -> anyhow::Result<RunningPath> {
    let server_port = free_port()?;
    let mut cmd = Command::new(wstunnel);
    cmd.env("RUST_LOG", "INFO")
        .arg("--no-color")
        .arg("server")
        .arg(format!("wss://127.0.0.1:{server_port}"))
        .arg("--tls-certificate")
        .arg(&creds.cert)
        .arg("--tls-private-key")
        .arg(&creds.key);
    let mut server = Proc::spawn("wstunnel-server", cmd, dir)?;
    server.wait_listening(server_port, START_LIMIT).await?;

    let targets: Vec<SocketAddr> = [upstream.web, upstream.iperf, upstream.echo]
        .into_iter()
        .chain(upstream.git)
        .collect();
    let ports = free_ports(targets.len())?;
    let mut cmd = Command::new(wstunnel);
    cmd.env("RUST_LOG", "INFO").arg("--no-color").arg("client");
    for (port, to) in ports.iter().zip(targets) {
        cmd.arg("-L").arg(format!("tcp://127.0.0.1:{port}:{to}"));
    }
    cmd.arg(format!("wss://127.0.0.1:{server_port}"));
    let mut client = Proc::spawn("wstunnel-client", cmd, dir)?;
    for &port in &ports {
        client.wait_listening(port, START_LIMIT).await?;
    }
    Ok(RunningPath {
        kind: PathKind::Wstunnel,
        addrs: Endpoints {
            web: localhost(ports[0]),
            web_http: None,
            iperf: localhost(ports[1]),
            echo: localhost(ports[2]),
            git: ports.get(3).copied().map(localhost),
        },
        client: Some(client),
        server: Some(server),
        door: None,
    })
}
