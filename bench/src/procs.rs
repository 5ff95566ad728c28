//! Outside processes owned by the bench: spawned with their output in
//! files (never a pipe nobody reads), watched for readiness, measured
//! (RSS), and stopped on drop — by their own PID, never by name.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A running child process; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    name: String,
    child: Option<Child>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdin closed and stdout/stderr going to
    /// `logs/NAME.out` and `logs/NAME.err`.
    pub fn spawn(name: &str, mut cmd: Command, logs: &Path) -> anyhow::Result<Self> {
        let stdout = logs.join(format!("{name}.out"));
        let stderr = logs.join(format!("{name}.err"));
        cmd.stdin(Stdio::null())
            .stdout(File::create(&stdout)?)
            .stderr(File::create(&stderr)?);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
            stdout,
            stderr,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// CPU seconds used so far.
    pub fn cpu_secs(&self) -> anyhow::Result<f64> {
        cpu_secs(self.pid())
    }

    /// Resident set size in KiB, from `/proc/PID/status` (VmRSS).
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        rss_kib(self.pid())
    }

    /// Fails, with the tail of its logs, if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} was already stopped", self.name);
        };
        if let Some(status) = child.try_wait()? {
            bail!(
                "{} exited ({status}); stderr:\n{}\nstdout:\n{}",
                self.name,
                tail(&self.stderr, 20),
                tail(&self.stdout, 20)
            );
        }
        Ok(())
    }

    /// Polls the process's stdout and stderr until `find` returns a value
    /// for their text, the process exits, or `limit` passes.
    pub async fn wait_for<T>(
        &mut self,
        limit: Duration,
        mut find: impl FnMut(&str, &str) -> Option<T>,
    ) -> anyhow::Result<T> {
        let start = Instant::now();
        loop {
            let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
            let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
            if let Some(v) = find(&out, &err) {
                return Ok(v);
            }
            self.check_alive()?;
            if start.elapsed() > limit {
                bail!(
                    "{} not ready after {limit:?}; stderr:\n{}\nstdout:\n{}",
                    self.name,
                    tail(&self.stderr, 20),
                    tail(&self.stdout, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until something listens on 127.0.0.1:`port` (read from
    /// `/proc/net/tcp`, so no probe connection disturbs the server).
    pub async fn wait_listening(&mut self, port: u16, limit: Duration) -> anyhow::Result<()> {
        self.wait_for(limit, |_, _| is_listening(port).then_some(()))
            .await
    }

    /// SIGTERM, up to 3 s for a clean exit, then SIGKILL. Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// VmRSS of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// CPU time (user + system) `pid` has used so far, in seconds, from
/// `/proc/PID/stat`: all its threads, including ones that have ended.
pub fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/PID/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .context("malformed /proc/PID/stat")
    };
    // The kernel reports these in USER_HZ, which is 100 on Linux.
    Ok((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// A port that was free a moment ago (for programs that cannot bind port 0
/// and report it). There is a small race; callers check the program started.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// `n` distinct ports that were free a moment ago.
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let held = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()?;
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

pub fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// True if a socket on this machine is in LISTEN state on `port` at
/// 127.0.0.1 or the IPv4/IPv6 wildcard.
pub fn is_listening(port: u16) -> bool {
    let wanted = format!("{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                if cols.len() < 4 || cols[3] != "0A" {
                    return false;
                }
                let Some((ip, p)) = cols[1].rsplit_once(':') else {
                    return false;
                };
                p == wanted
                    && (ip == "0100007F"
                        || ip.chars().all(|c| c == '0')
                        || ip == "0000000000000000FFFF00000100007F")
            })
    })
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs a short-lived tool to completion within `limit`, returning its
/// stdout. The tool is killed if the limit passes (or the caller is dropped).
pub async fn run_tool(mut cmd: tokio::process::Command, limit: Duration) -> anyhow::Result<String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let what = format!("{:?}", cmd.as_std());
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .with_context(|| format!("{what} did not finish within {limit:?}"))?
        .with_context(|| format!("running {what}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            stdout.trim()
        );
    }
    Ok(stdout)
}

/// The first of SIGINT or SIGTERM, named; never, if neither can be caught.
/// A bench's `run` future is raced against it, so every [`Proc`] it owns is
/// dropped (stopped) on the way out.
pub async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "interrupted",
        _ = term.recv() => "terminated",
    }
}

/// A bench binary's exit: success, or the error chain after its name.
pub fn exit_code(name: &str, result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
