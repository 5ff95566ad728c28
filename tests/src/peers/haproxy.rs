//! HAProxy (Debian's 2.6) in `mode tcp` in front of relays, as the seeds'
//! admins run it: `send-proxy-v2` to each relay, health checks that send
//! PROXY v2 `LOCAL` (`check-send-proxy`) and `GET /readyz` over TLS
//! (`check-ssl verify none`), a failed connection retried on another relay
//! (`option redispatch`). Its stats page (CSV) tells the test which relays
//! it holds up. Started with `-db` (foreground) on free ports, stopped on
//! drop.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::process::{require_program, start_on_free_port, startup_timeout, Process};

/// The source address HAProxy connects to the relays from: the relays
/// trust this one for PROXY headers, and it differs from the clients'
/// 127.0.0.1, so a test can tell whose address a relay saw.
pub const SOURCE: &str = "127.0.0.4";

/// A running HAProxy.
pub struct Haproxy {
    pub process: Process,
    /// The frontend agents connect to.
    pub addr: SocketAddr,
    stats: SocketAddr,
}

impl Haproxy {
    /// HAProxy balancing `relays` (name, address) round robin, with
    /// its config written into `dir`.
    pub fn start(dir: &Path, relays: &[(&str, SocketAddr)]) -> Result<Self> {
        let bin = require_program("haproxy").or_else(|_| require_program("/usr/sbin/haproxy"))?;
        let servers: String = relays
            .iter()
            .map(|(name, addr)| format!("  server {name} {addr}\n"))
            .collect();
        // The stats port first, then the frontend: each a port free a
        // moment ago, retried if lost.
        start_on_free_port("HAProxy stats", |stats| {
            start_on_free_port("HAProxy", |front| {
                let config = format!(
                    r#"global
  maxconn 2000
defaults
  mode tcp
  timeout connect 2s
  timeout client 5m
  timeout server 5m
  timeout check 2s
  retries 3
  option redispatch 1
frontend stats
  mode http
  bind {stats}
  stats enable
  stats uri /stats
frontend relays
  bind {front}
  default_backend relays
backend relays
  balance roundrobin
  option httpchk GET /readyz
  http-check expect status 200
  default-server send-proxy-v2 check check-send-proxy check-ssl verify none inter 300ms fall 1 rise 1 source {SOURCE}
{servers}"#
                );
                let file = dir.join("haproxy.cfg");
                std::fs::write(&file, config)?;
                let check = Command::new(&bin).arg("-c").arg("-f").arg(&file).output()?;
                if !check.status.success() {
                    bail!(
                        "haproxy -c refused the config: {}",
                        String::from_utf8_lossy(&check.stderr)
                    );
                }
                let mut cmd = Command::new(&bin);
                cmd.arg("-f")
                    .arg(&file)
                    .arg("-db")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                let mut process = Process::spawn("haproxy", cmd)?;
                process.blocking_wait_for_port(front, startup_timeout(Duration::from_secs(10)))?;
                process.blocking_wait_for_port(stats, startup_timeout(Duration::from_secs(10)))?;
                Ok(Haproxy {
                    process,
                    addr: front,
                    stats,
                })
            })
        })
    }

    /// HAProxy in `mode http` in front of one relay: it terminates TLS with
    /// `pem` (certificate and key in one file), re-encrypts to `relay`,
    /// and sets every answer's `Date` header to `date` — a relay whose
    /// clock the test chooses (`gangway doctor`'s clock check).
    pub fn start_date_rewriting(
        dir: &Path,
        relay: SocketAddr,
        pem: &Path,
        date: &str,
    ) -> Result<Self> {
        let bin = require_program("haproxy").or_else(|_| require_program("/usr/sbin/haproxy"))?;
        start_on_free_port("HAProxy stats", |stats| {
            start_on_free_port("HAProxy", |front| {
                let config = format!(
                    r#"global
  maxconn 200
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
frontend stats
  bind {stats}
  stats enable
  stats uri /stats
frontend relay
  bind {front} ssl crt {pem}
  http-response set-header Date "{date}"
  default_backend relay
backend relay
  server relay {relay} ssl verify none
"#,
                    pem = pem.display()
                );
                let file = dir.join("haproxy-date.cfg");
                std::fs::write(&file, config)?;
                let check = Command::new(&bin).arg("-c").arg("-f").arg(&file).output()?;
                if !check.status.success() {
                    bail!(
                        "haproxy -c refused the config: {}",
                        String::from_utf8_lossy(&check.stderr)
                    );
                }
                let mut cmd = Command::new(&bin);
                cmd.arg("-f")
                    .arg(&file)
                    .arg("-db")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                let mut process = Process::spawn("haproxy", cmd)?;
                process.blocking_wait_for_port(front, startup_timeout(Duration::from_secs(10)))?;
                process.blocking_wait_for_port(stats, startup_timeout(Duration::from_secs(10)))?;
                Ok(Haproxy {
                    process,
                    addr: front,
                    stats,
                })
            })
        })
    }

    /// `https://` URL of the frontend, for `gangway up --relay`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Each server's status on the stats page ("UP", "DOWN", …).
    pub async fn statuses(&self) -> Result<Vec<(String, String)>> {
        let csv = reqwest::get(format!("http://{}/stats;csv", self.stats))
            .await?
            .text()
            .await?;
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .context("empty stats page")?
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let (px, sv, status) = (
            col("pxname").context("no pxname")?,
            col("svname").context("no svname")?,
            col("status").context("no status")?,
        );
        Ok(lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.get(px) == Some(&"relays"))
            .filter(|f| !matches!(f.get(sv), Some(&"FRONTEND") | Some(&"BACKEND")))
            .map(|f| (f[sv].to_string(), f[status].to_string()))
            .collect())
    }

    /// Waits until server `name`'s status starts with `want` ("UP", "DOWN").
    pub async fn wait_status(&self, name: &str, want: &str, timeout: Duration) -> Result<()> {
        let what = format!("HAProxy to see relay {name} {want}");
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let now = self.statuses().await?;
            if now.iter().any(|(n, s)| n == name && s.starts_with(want)) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("timed out waiting for {what}; statuses: {now:?}");
            }
            // The next look (checks run every 300 ms).
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
