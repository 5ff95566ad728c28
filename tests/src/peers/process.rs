//! The one process helper of the tests ([`Process`]), the one free-port
//! helper ([`start_on_free_port`]), and the waits they share: poll a
//! condition until it holds, with a deadline ([`poll`], [`blocking_poll`];
//! start-up deadlines stretched by [`startup_timeout`]).

use std::borrow::BorrowMut;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// How often the waits here look at their condition again.
const POLL_EVERY: Duration = Duration::from_millis(25);

/// Polls `check` until it returns `Some`, failing with what it returns as an
/// error, or after `timeout` naming `what`. Blocks the calling thread.
pub fn blocking_poll<T>(
    what: &str,
    timeout: Duration,
    check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let mut looks = Looks::new(what, timeout, check);
    loop {
        match looks.next()? {
            Some(v) => return Ok(v),
            None => std::thread::sleep(POLL_EVERY),
        }
    }
}

/// [`blocking_poll`] for async code: sleeps on the runtime between looks.
pub async fn poll<T>(
    what: &str,
    timeout: Duration,
    check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let mut looks = Looks::new(what, timeout, check);
    loop {
        match looks.next()? {
            Some(v) => return Ok(v),
            None => tokio::time::sleep(POLL_EVERY).await,
        }
    }
}

/// The looks of one poll, up to its deadline.
struct Looks<'a, F> {
    what: &'a str,
    timeout: Duration,
    deadline: Instant,
    check: F,
}

impl<'a, T, F: FnMut() -> Result<Option<T>>> Looks<'a, F> {
    fn new(what: &'a str, timeout: Duration, check: F) -> Self {
        Looks {
            what,
            timeout,
            deadline: Instant::now() + timeout,
            check,
        }
    }

    /// The value, or `None` to look again, or the condition's error, or the
    /// timeout's.
    fn next(&mut self) -> Result<Option<T>> {
        match (self.check)()? {
            Some(v) => Ok(Some(v)),
            None if Instant::now() > self.deadline => {
                bail!(
                    "timed out after {:?} waiting for {}",
                    self.timeout,
                    self.what
                )
            }
            None => Ok(None),
        }
    }
}

/// The lines a process wrote to one of its streams so far.
type Lines = Arc<Mutex<Vec<String>>>;

/// A process a test started. Stdin is closed; stdout and stderr go where the
/// command says, and when they are piped their lines are collected (and
/// echoed to the test's stderr as `[name] …` and `[name!] …`) for
/// [`Process::wait_line`] and failure messages. Killed (SIGKILL) and reaped
/// on drop, by its own pid.
///
/// Every wait has a sync (`blocking_…`) and an async form, for launchers
/// and for `#[tokio::test]`s.
pub struct Process {
    name: String,
    child: Child,
    out: Lines,
    err: Lines,
    readers: Vec<JoinHandle<()>>,
}

/// A process that exited, with everything it wrote.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// From [`Process::finish`] being called to the exit.
    pub took: Duration,
}

/// Asserts that `f` succeeded, showing its output if not.
pub fn assert_success(what: &str, f: &Finished) {
    assert!(
        f.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        f.status,
        f.stdout,
        f.stderr
    );
}

/// Asserts that `f` failed, showing its output if not.
pub fn assert_failure(what: &str, f: &Finished) {
    assert!(
        !f.status.success(),
        "{what} should have failed:\nstdout:\n{}\nstderr:\n{}",
        f.stdout,
        f.stderr
    );
}

impl Process {
    /// Spawns `cmd` (a `Command` or `&mut Command`) with stdin closed and
    /// follows whichever of stdout and stderr it pipes.
    pub fn spawn(name: &str, mut cmd: impl BorrowMut<Command>) -> Result<Self> {
        let cmd = cmd.borrow_mut();
        cmd.stdin(Stdio::null());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        let (out, err) = (Lines::default(), Lines::default());
        let mut readers = Vec::new();
        if let Some(r) = child.stdout.take() {
            readers.push(follow(r, out.clone(), name.to_string())?);
        }
        if let Some(r) = child.stderr.take() {
            readers.push(follow(r, err.clone(), format!("{name}!"))?);
        }
        Ok(Self {
            name: name.to_string(),
            child,
            out,
            err,
            readers,
        })
    }

    /// Spawns `cmd` with stdout and stderr piped and followed.
    pub fn spawn_captured(name: &str, mut cmd: impl BorrowMut<Command>) -> Result<Self> {
        cmd.borrow_mut()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Self::spawn(name, cmd)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Stdout lines so far.
    pub fn stdout(&self) -> Vec<String> {
        self.out.lock().unwrap().clone()
    }

    /// Stderr lines so far.
    pub fn stderr(&self) -> Vec<String> {
        self.err.lock().unwrap().clone()
    }

    /// Both, for failure messages.
    pub fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.stdout().join("\n"),
            self.stderr().join("\n")
        )
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("waiting for {}", self.name))
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Fails, with its output, if the process already exited (e.g. bad config).
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.try_wait()? {
            // Let the readers catch its last lines.
            self.join_readers(Duration::from_secs(1));
            bail!("{} exited early ({status}):\n{}", self.name, self.output());
        }
        Ok(())
    }

    /// The first line so far (stdout or stderr) that satisfies `f`; an
    /// error if there is none and the process exited.
    fn line(&mut self, f: &impl Fn(&str) -> bool) -> Result<Option<String>> {
        let find = |p: &Self| {
            let out = p.out.lock().unwrap();
            let err = p.err.lock().unwrap();
            out.iter().chain(err.iter()).find(|l| f(l)).cloned()
        };
        if let Some(l) = find(self) {
            return Ok(Some(l));
        }
        if let Some(status) = self.try_wait()? {
            // Its last lines may still be on their way.
            self.join_readers(Duration::from_secs(1));
            if let Some(l) = find(self) {
                return Ok(Some(l));
            }
            bail!("{} exited early ({status})", self.name);
        }
        Ok(None)
    }

    fn waiting_for(&self, what: &str) -> String {
        format!("{what} from {}", self.name)
    }

    /// Waits for a line (stdout or stderr) that satisfies `f`; fails as soon
    /// as the process exits, or after `timeout`, with its output.
    pub async fn wait_line(
        &mut self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let what = self.waiting_for(what);
        let r = poll(&what, timeout, || self.line(&f)).await;
        r.map_err(|e| anyhow!("{e:#}:\n{}", self.output()))
    }

    /// [`Process::wait_line`], blocking.
    pub fn blocking_wait_line(
        &mut self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let what = self.waiting_for(what);
        let r = blocking_poll(&what, timeout, || self.line(&f));
        r.map_err(|e| anyhow!("{e:#}:\n{}", self.output()))
    }

    /// Waits until `addr` accepts TCP connections; fails as soon as the
    /// process exits, or after `timeout` (callers pass a [`startup_timeout`]).
    pub fn blocking_wait_for_port(&mut self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let what = self.waiting_for(&format!("a listener on {addr}"));
        blocking_poll(&what, timeout, || {
            self.check_alive()?;
            Ok(
                TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                    .is_ok()
                    .then_some(()),
            )
        })
    }

    /// Waits for the process to exit by itself within `timeout` (else kills
    /// it and fails, with its output).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let what = format!("{} to exit", self.name);
        let r = poll(&what, timeout, || self.try_wait()).await;
        self.exited(r)
    }

    /// [`Process::wait_exit`], blocking.
    pub fn blocking_wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let what = format!("{} to exit", self.name);
        let r = blocking_poll(&what, timeout, || self.try_wait());
        self.exited(r)
    }

    fn exited(&mut self, r: Result<ExitStatus>) -> Result<ExitStatus> {
        match r {
            Ok(status) => {
                self.join_readers(Duration::from_secs(5));
                Ok(status)
            }
            Err(e) => {
                self.stop();
                Err(e.context(format!(
                    "{} hung; it was killed:\n{}",
                    self.name,
                    self.output()
                )))
            }
        }
    }

    /// Waits for the command to exit (killing it after `timeout`) and for
    /// its output to be read to the end.
    pub async fn finish(mut self, timeout: Duration) -> Result<Finished> {
        let started = Instant::now();
        let status = self.wait_exit(timeout).await?;
        Ok(Finished {
            status,
            took: started.elapsed(),
            stdout: self.stdout().join("\n"),
            stderr: self.stderr().join("\n"),
        })
    }

    /// Waits (up to `limit`) for the readers to reach the end of the
    /// streams; a grandchild holding a pipe open must not hang a test.
    fn join_readers(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for r in std::mem::take(&mut self.readers) {
            if r.is_finished() {
                let _ = r.join();
            }
        }
    }

    /// Stops the process now (SIGKILL) and reaps it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads `r` line by line on a thread into `sink`, echoing each line.
fn follow(r: impl Read + Send + 'static, sink: Lines, tag: String) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("{tag} output"))
        .spawn(move || {
            for line in BufReader::new(r).lines() {
                let Ok(line) = line else { break };
                eprintln!("[{tag}] {line}");
                sink.lock().unwrap().push(line);
            }
        })
        .context("spawning an output reader")
}

/// How many ports [`start_on_free_port`] tries before giving up.
const PORT_ATTEMPTS: usize = 3;

/// Starts a server that cannot bind port 0 and report the port it got:
/// `start` is called with a loopback address whose port was free a moment
/// ago, and must return once the server really serves there (an error
/// otherwise). Someone else can take the port between our check and the
/// server's bind, so a failed start is retried on another port; the last
/// error is returned after [`PORT_ATTEMPTS`] tries.
pub fn start_on_free_port<T>(
    what: &str,
    mut start: impl FnMut(SocketAddr) -> Result<T>,
) -> Result<T> {
    let mut last = None;
    for _ in 0..PORT_ATTEMPTS {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        match start(addr) {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e.context(format!("{what} on {addr}"))),
        }
    }
    Err(last.expect("at least one attempt")).with_context(|| format!("starting {what}"))
}

/// A loopback port that was free a moment ago. Only through
/// [`start_on_free_port`], which retries when the race is lost.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Waits (up to 2 s) until nothing accepts on `addr` any more. A server
/// killed right after forking a connection handler leaves the listening
/// socket open in the child until it execs, so for a few ms connections
/// still complete.
pub fn wait_until_refused(addr: SocketAddr) {
    let _ = blocking_poll("the port to refuse", Duration::from_secs(2), || {
        Ok(
            TcpStream::connect_timeout(&addr, Duration::from_millis(100))
                .is_err()
                .then_some(()),
        )
    });
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

    #[test]
    fn lines_are_collected_and_waited_for() -> Result<()> {
        let mut p = Process::spawn_captured(
            "sh",
            Command::new("sh").args(["-c", "echo one; echo two >&2; exec sleep 30"]),
        )?;
        let l = p.blocking_wait_line("two", Duration::from_secs(10), |l| l == "two")?;
        assert_eq!(l, "two");
        assert_eq!(p.stdout(), ["one"]);
        assert!(p.alive());
        p.stop();
        assert!(!p.alive());
        Ok(())
    }

    #[test]
    fn a_wait_fails_at_once_when_the_process_exits() {
        let mut p =
            Process::spawn_captured("sh", Command::new("sh").args(["-c", "echo bye; exit 3"]))
                .unwrap();
        let t = Instant::now();
        let e = p
            .blocking_wait_line("never", Duration::from_secs(30), |l| l == "never")
            .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(10));
        let e = format!("{e:#}");
        assert!(e.contains("exited early") && e.contains("bye"), "{e}");
    }

    #[test]
    fn a_lost_port_race_is_retried_on_another_port() -> Result<()> {
        let mut tried = Vec::new();
        let got = start_on_free_port("a server", |addr| {
            tried.push(addr);
            if tried.len() < 2 {
                bail!("address in use");
            }
            Ok(addr)
        })?;
        assert_eq!(tried.len(), 2);
        assert_eq!(got, tried[1]);
        let e = start_on_free_port("a server", |_| -> Result<()> { bail!("address in use") })
            .unwrap_err();
        assert!(format!("{e:#}").contains("address in use"), "{e:#}");
        Ok(())
    }
}
