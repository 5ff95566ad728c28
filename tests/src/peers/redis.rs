//! Real Redis (Debian's `redis-server`) for the relays' shared rate limits
//! and locks: no persistence, loopback only, in a temporary directory;
//! stopped on drop. It cannot bind port 0 and report it, so it starts
//! through [`start_on_free_port`]; [`RedisServer::stop`] and
//! [`RedisServer::restart`] play an outage on the same address.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Result;
use tempfile::TempDir;

use super::process::{
    require_program, start_on_free_port, startup_timeout, wait_until_refused, Process,
};

/// One `redis-server` on 127.0.0.1.
pub struct RedisServer {
    pub addr: SocketAddr,
    dir: TempDir,
    process: Option<Process>,
}

fn spawn(addr: SocketAddr, dir: &TempDir) -> Result<Process> {
    let mut cmd = Command::new(require_program("redis-server")?);
    cmd.arg("--port")
        .arg(addr.port().to_string())
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut p = Process::spawn("redis", cmd)?;
    p.blocking_wait_line(
        "Redis to accept connections",
        startup_timeout(Duration::from_secs(10)),
        |l| l.contains("Ready to accept connections"),
    )?;
    Ok(p)
}

impl RedisServer {
    pub fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let (addr, process) =
            start_on_free_port("redis-server", |addr| Ok((addr, spawn(addr, &dir)?)))?;
        Ok(Self {
            addr,
            dir,
            process: Some(process),
        })
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Kills Redis (an outage) and waits until its port refuses.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop();
        }
        wait_until_refused(self.addr);
    }

    /// Starts Redis again on the same address (empty: nothing persisted).
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.process = Some(spawn(self.addr, &self.dir)?);
        Ok(())
    }
}
