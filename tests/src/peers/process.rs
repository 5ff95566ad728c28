//! A child process that is stopped when its guard drops.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A running peer process; killed and reaped on drop.
pub struct ChildGuard {
    name: String,
    child: Child,
}

impl ChildGuard {
    /// Spawns `cmd` with stdin closed. Stdout/stderr are inherited unless the
    /// caller configured them.
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Self> {
        cmd.stdin(Stdio::null());
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Self {
            name: name.to_string(),
            child,
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Fails if the process already exited (e.g. bad config).
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early: {status}", self.name);
        }
        Ok(())
    }

    /// Waits until `addr` accepts TCP connections, or fails after `timeout`
    /// (callers pass a [`startup_timeout`]) or as soon as the process exits.
    pub fn wait_for_port(&mut self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} did not listen on {addr} within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the process now (SIGKILL) and reaps it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The most [`startup_timeout`] stretches a base for load alone.
const MAX_LOAD_FACTOR: f64 = 4.0;

/// How long to wait for a peer (or a process we start) to come up: `base`,
/// stretched when the machine is busy — by the 1-minute load average per
/// CPU (`/proc/loadavg`, at least 1, at most 4×) — and by
/// `GANGWAY_TEST_TIMEOUT_SCALE` (a factor ≥ 1, e.g. `3` on a slow CI runner).
///
/// Only for start-up waits, where slowness is the machine's and not a
/// finding; never for assertions about how fast Gangway itself reacts.
pub fn startup_timeout(base: Duration) -> Duration {
    base.mul_f64(load_factor() * env_scale())
}

fn load_factor() -> f64 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let load1 = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    (load1 / cpus).clamp(1.0, MAX_LOAD_FACTOR)
}

fn env_scale() -> f64 {
    std::env::var("GANGWAY_TEST_TIMEOUT_SCALE")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|f| f.is_finite() && *f >= 1.0)
        .unwrap_or(1.0)
}

/// Binds port 0 on loopback, returns the port and releases it. Only for peers
/// that cannot be told to bind port 0 and report it; the tiny race is accepted.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// Finds a program on PATH (or an absolute path), for a clear error when a
/// peer is not installed.
pub fn require_program(name: &str) -> Result<std::path::PathBuf> {
    let candidate = std::path::Path::new(name);
    if candidate.is_absolute() {
        if candidate.exists() {
            return Ok(candidate.to_path_buf());
        }
        bail!("{name} is not installed (run the README test command to install test peers)");
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    for dir in ["/usr/sbin", "/sbin"] {
        let p = std::path::Path::new(dir).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{name} is not installed (run the README test command to install test peers)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_timeout_never_shrinks_and_is_capped() {
        let base = Duration::from_secs(10);
        let t = startup_timeout(base);
        assert!(t >= base.mul_f64(env_scale()), "{t:?}");
        assert!(t <= base.mul_f64(MAX_LOAD_FACTOR * env_scale()), "{t:?}");
    }
}
