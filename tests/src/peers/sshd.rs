//! OpenSSH's `sshd` (Debian `openssh-server`) on a loopback port, with its
//! own host key and one client key allowed in: the real SSH server behind
//! Bitbucket's SSH port in the tests. Serves git over SSH with the
//! system's `git-upload-pack` (repositories by absolute path).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use super::process::{poll, require_program, start_on_free_port, startup_timeout, Process};

const SSHD: &str = "/usr/sbin/sshd";

/// A running `sshd -D -e`; its log (LogLevel VERBOSE: one `Connection
/// from` line per TCP connection) is collected. Stopped on drop.
pub struct Sshd {
    // Dropped first: the process dies before its directory is removed.
    process: Process,
    addr: SocketAddr,
    dir: TempDir,
}

impl Sshd {
    pub fn start() -> Result<Self> {
        require_program(SSHD)?;
        let keygen = require_program("ssh-keygen")?;
        let dir = tempfile::Builder::new().prefix("gangway-sshd-").tempdir()?;
        for key in ["host_key", "client_key"] {
            let out = Command::new(&keygen)
                .args(["-q", "-t", "ed25519", "-N", "", "-C", key, "-f"])
                .arg(dir.path().join(key))
                .output()?;
            if !out.status.success() {
                bail!("ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        std::fs::copy(
            dir.path().join("client_key.pub"),
            dir.path().join("authorized_keys"),
        )?;
        // Privilege separation's empty directory (needed as root; others
        // cannot make it and sshd does not need it for them).
        let _ = std::fs::create_dir_all("/run/sshd");
        let (process, addr) = start_on_free_port("sshd", |addr| {
            let config = dir.path().join("sshd_config");
            std::fs::write(&config, sshd_config(addr, dir.path()))?;
            let mut cmd = Command::new(SSHD);
            cmd.args(["-D", "-e", "-f"]).arg(&config);
            let mut p = Process::spawn_captured("sshd", cmd)?;
            p.blocking_wait_for_port(addr, startup_timeout(Duration::from_secs(10)))?;
            // The port check is a connection too: wait for sshd to log it,
            // so `connections` counts from a settled start.
            p.blocking_wait_line("its port check logged", Duration::from_secs(10), |l| {
                l.contains("Connection from ")
            })?;
            Ok((p, addr))
        })?;
        Ok(Self { process, addr, dir })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The private key sshd lets in.
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }

    /// A known-hosts file naming sshd's host key under `alias` (for
    /// `HostKeyAlias`), so the client checks the key strictly.
    pub fn known_hosts(&self, alias: &str) -> Result<PathBuf> {
        let key = std::fs::read_to_string(self.dir.path().join("host_key.pub"))?;
        let mut fields = key.split_whitespace();
        let (kind, blob) = (
            fields.next().context("host key type")?,
            fields.next().context("host key")?,
        );
        let path = self.dir.path().join(format!("known_hosts-{alias}"));
        std::fs::write(&path, format!("{alias} {kind} {blob}\n"))?;
        Ok(path)
    }

    /// `ssh` options for a strict, non-interactive client of this server,
    /// its host key known as `alias`.
    pub fn ssh_options(&self, alias: &str) -> Result<String> {
        Ok(format!(
            "-i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes \
             -o BatchMode=yes -o HostKeyAlias={alias} -o LogLevel=ERROR",
            self.client_key().display(),
            self.known_hosts(alias)?.display()
        ))
    }

    /// Waits until sshd has logged at least `n` TCP connections (its log
    /// line comes after the client sees the banner), then says how many.
    pub async fn wait_connections(&self, n: usize, timeout: Duration) -> Result<usize> {
        let what = format!("sshd to log {n} connection(s)");
        poll(&what, timeout, || {
            let seen = self.connections();
            Ok((seen >= n).then_some(seen))
        })
        .await
    }

    /// How many TCP connections sshd has seen so far.
    pub fn connections(&self) -> usize {
        self.process
            .stderr()
            .iter()
            .filter(|l| l.contains("Connection from "))
            .count()
    }
}

fn sshd_config(addr: SocketAddr, dir: &Path) -> String {
    format!(
        "# Written by the Gangway tests (peers/sshd.rs).\n\
         ListenAddress {addr}\n\
         HostKey {host}\n\
         AuthorizedKeysFile {keys}\n\
         PidFile {dir}/sshd.pid\n\
         UsePAM no\n\
         StrictModes no\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         PermitRootLogin prohibit-password\n\
         LogLevel VERBOSE\n",
        host = dir.join("host_key").display(),
        keys = dir.join("authorized_keys").display(),
        dir = dir.display(),
    )
}
