//! Real git servers for end-to-end tests: smart HTTP (lighttpd running
//! `git http-backend` as CGI) and `git daemon` (git://), both serving a
//! [`RepoFixture`], plus a [`git`] helper that runs the client with a clean
//! environment.
//!
//! Neither server can bind port 0 and report it: both start through
//! [`start_on_free_port`], which retries on another port if the bind loses
//! the race.

use std::ffi::OsString;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use super::lighttpd::{self, read_log};
use super::process::{
    blocking_poll, require_program, start_on_free_port, startup_timeout, wait_until_refused,
    Process,
};

/// Path, inside every fixture repository, of the ~1 MB pseudo-random file
/// (incompressible, so packs are non-trivial). Its content is
/// [`binary_blob`].
pub const BINARY_PATH: &str = "assets/random.bin";

/// Size of the file at [`BINARY_PATH`].
pub const BINARY_LEN: usize = 1024 * 1024 + 123;

/// How long one git command may run before it is killed.
const GIT_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a server gets to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The deterministic content of [`BINARY_PATH`] (splitmix64 output).
pub fn binary_blob() -> Vec<u8> {
    let mut state: u64 = 0x6761_6e67_7761_7921; // "gangway!"
    let mut out = Vec::with_capacity(BINARY_LEN + 8);
    while out.len() < BINARY_LEN {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(BINARY_LEN);
    out
}

/// A directory of bare repositories (the `GIT_PROJECT_ROOT` / `--base-path`
/// of the servers), removed on drop.
///
/// Each repository has default branch `main` with two commits (a README, a
/// text file, and the binary file at [`BINARY_PATH`]) and
/// `http.receivepack=true`, so anonymous pushes over smart HTTP work.
pub struct RepoFixture {
    dir: TempDir,
}

impl RepoFixture {
    /// Creates the fixture with one bare repository at `<root>/<name>.git`.
    pub fn create(name: &str) -> Result<Self> {
        require_program("git")?;
        let fixture = Self {
            dir: tempfile::Builder::new()
                .prefix("gangway-git-root-")
                .tempdir()
                .context("creating the git fixture directory")?,
        };
        fixture.add_repo(name)?;
        Ok(fixture)
    }

    /// Adds another bare repository `<root>/<name>.git` with the same content.
    pub fn add_repo(&self, name: &str) -> Result<()> {
        let bare = self.repo_path(name);
        if bare.exists() {
            bail!("fixture repository {} already exists", bare.display());
        }
        let root = self.root();
        git(
            root,
            &[
                "init",
                "--quiet",
                "--bare",
                "--initial-branch=main",
                &format!("{name}.git"),
            ],
        )?;
        git(&bare, &["config", "http.receivepack", "true"])?;

        // Build the history in a scratch work tree, then push it in.
        let work = TempDir::new().context("creating a scratch work tree")?;
        let w = work.path();
        git(w, &["init", "--quiet", "--initial-branch=main"])?;

        write_file(
            &w.join("README.md"),
            format!("# {name}\n\nA Gangway test repository.\n").as_bytes(),
        )?;
        write_file(&w.join("src/hello.txt"), b"hello through the tunnel\n")?;
        git(w, &["add", "--all"])?;
        git(w, &["commit", "--quiet", "-m", "Initial commit"])?;

        write_file(&w.join(BINARY_PATH), &binary_blob())?;
        write_file(
            &w.join("src/hello.txt"),
            b"hello through the tunnel\nsecond line\n",
        )?;
        git(w, &["add", "--all"])?;
        git(w, &["commit", "--quiet", "-m", "Add a binary asset"])?;

        let bare_str = bare.to_str().context("fixture path is not UTF-8")?;
        git(w, &["push", "--quiet", bare_str, "main:main"])?;
        Ok(())
    }

    /// The directory holding the bare repositories.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The path of the bare repository `<root>/<name>.git`.
    pub fn repo_path(&self, name: &str) -> PathBuf {
        self.root().join(format!("{name}.git"))
    }

    /// The commit `refs/heads/main` points to in the bare repository.
    pub fn head_commit(&self, name: &str) -> Result<String> {
        let out = git(
            &self.repo_path(name),
            &["rev-parse", "--verify", "refs/heads/main"],
        )?;
        Ok(out.trim().to_string())
    }
}

/// lighttpd running `git http-backend` as CGI (smart HTTP) on 127.0.0.1.
/// Repositories under the root are served at `/scm/<name>.git`
/// (Bitbucket-like paths, see [`http_repo_url`]). Anonymous; pushes rely
/// on `http.receivepack`. Response bodies are streamed as the backend
/// writes them, as a proxy would see them. Stopped on drop.
///
/// Also serves the repository of gangway-bench's git clone figure.
pub struct GitHttpServer(Served);

impl GitHttpServer {
    /// Starts lighttpd serving the bare repositories under `root`.
    pub fn start(root: &Path) -> Result<Self> {
        let backend = http_backend_path()?;
        let (root, dir) = Served::dirs(root, "lighttpd")?;
        lighttpd::start(
            "lighttpd + git http-backend",
            "lighttpd",
            dir.path(),
            |port| lighttpd_conf(port, dir.path(), &backend, &root),
        )
        .map(|(child, addr)| Self(Served::new(child, addr, dir)))
    }

    /// The address lighttpd listens on.
    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    /// `http://ADDR/scm/<name>.git`.
    pub fn repo_url(&self, name: &str) -> String {
        http_repo_url(self.0.addr, name)
    }

    /// Stops lighttpd now (also done on drop); on return the port refuses
    /// connections. CGI requests in flight finish in their own processes.
    pub fn stop(&mut self) {
        self.0.stop();
    }
}

/// `http://ADDR/scm/<name>.git`: the clone URL of repository `name` of a
/// [`GitHttpServer`] at `addr`, or of a tunnel or proxy in front of one.
pub fn http_repo_url(addr: SocketAddr, name: &str) -> String {
    format!("http://{addr}/scm/{name}.git")
}

/// The lighttpd config: one CGI alias to `git http-backend`, and response
/// bodies streamed to the client as the backend writes them
/// (`stream-response-body = 2`: no buffering of a whole pack first, and a
/// slow client slows the backend).
fn lighttpd_conf(port: u16, dir: &Path, backend: &Path, root: &Path) -> Result<String> {
    let q = lighttpd::quote;
    let base = lighttpd::base_conf(
        "peers/git.rs",
        r#""mod_alias", "mod_cgi", "mod_setenv""#,
        port,
        dir,
    )?;
    Ok(format!(
        r#"{base}alias.url = ("/scm/" => {backend})
$HTTP["url"] =~ "^/scm/" {{
    cgi.assign = ("" => "")
    setenv.set-environment = (
        "GIT_PROJECT_ROOT" => {root},
        "GIT_HTTP_EXPORT_ALL" => "1",
        "GIT_CONFIG_NOSYSTEM" => "1",
        "GIT_CONFIG_PARAMETERS" => "'safe.directory'='*'",
        "HOME" => {htdocs},
    )
}}
"#,
        htdocs = q(&dir.join("htdocs"))?,
        // The trailing slash keeps `/scm/x` mapped to `<backend>/x`, so
        // lighttpd runs the backend with PATH_INFO=/x.
        backend = q(&PathBuf::from(format!("{}/", backend.display())))?,
        root = q(root)?,
    ))
}

/// A git helper program (`git-http-backend`, `git-daemon`) of the git on
/// PATH (same version as the client), else Debian's.
fn git_core_program(name: &str) -> Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(exec_path) = git(Path::new("/"), &["--exec-path"]) {
        candidates.push(PathBuf::from(exec_path.trim()).join(name));
    }
    candidates.push(Path::new("/usr/lib/git-core").join(name));
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| format!("{name} not found (looked at {candidates:?}); install git"))
}

fn http_backend_path() -> Result<PathBuf> {
    git_core_program("git-http-backend")
}

/// `git-daemon` itself, not `git daemon`: the `git` wrapper runs it as a
/// child, so killing the wrapper (SIGKILL on drop) would leave the daemon
/// running and holding its port.
fn git_daemon_path() -> Result<PathBuf> {
    git_core_program("git-daemon")
}

/// `git daemon` serving git:// on 127.0.0.1, with receive-pack enabled and
/// every repository under the root exported. Stopped on drop.
pub struct GitDaemon(Served);

impl GitDaemon {
    /// Starts `git daemon` serving the bare repositories under `root`.
    pub fn start(root: &Path) -> Result<Self> {
        let daemon_bin = git_daemon_path()?;
        let (root, dir) = Served::dirs(root, "git-daemon")?;
        let log = dir.path().join("daemon.log");

        start_on_free_port("git daemon", |addr| {
            let stderr = std::fs::File::create(&log)?;
            let mut cmd = Command::new(&daemon_bin);
            clean_git_env(&mut cmd, dir.path());
            cmd.env("GIT_CONFIG_PARAMETERS", "'safe.directory'='*'")
                .arg("--reuseaddr")
                .arg("--informative-errors")
                .arg("--listen=127.0.0.1")
                .arg(format!("--port={}", addr.port()))
                .arg(concat_os("--base-path=", &root))
                .arg("--export-all")
                .arg("--enable=receive-pack")
                .arg(&root)
                .stdout(Stdio::null())
                .stderr(stderr);
            let mut child = Process::spawn("git daemon", &mut cmd)?;
            child
                .blocking_wait_for_port(addr, startup_timeout(START_TIMEOUT))
                .with_context(|| format!("git daemon log:\n{}", read_log(&log)))?;
            Ok((child, addr))
        })
        .map(|(child, addr)| Self(Served::new(child, addr, dir)))
    }

    /// The address the daemon listens on.
    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    /// `git://ADDR/<name>.git`.
    pub fn repo_url(&self, name: &str) -> String {
        format!("git://{}/{name}.git", self.0.addr)
    }

    /// Stops the daemon now (also done on drop); on return the port refuses
    /// connections. Connections already being served finish in their own
    /// processes.
    pub fn stop(&mut self) {
        self.0.stop();
    }
}

/// What both git servers hold: the server process, where it listens, and
/// its private directory.
struct Served {
    // Dropped first: the process dies before its directory is removed.
    child: Process,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Served {
    /// `root` made absolute, and a fresh directory `gangway-<name>-*` for
    /// the server's own files.
    fn dirs(root: &Path, name: &str) -> Result<(PathBuf, TempDir)> {
        let root = root
            .canonicalize()
            .with_context(|| format!("git root {}", root.display()))?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("gangway-{name}-"))
            .tempdir()
            .with_context(|| format!("creating the {name} directory"))?;
        Ok((root, dir))
    }

    fn new(child: Process, addr: SocketAddr, dir: TempDir) -> Self {
        Self {
            child,
            addr,
            _dir: dir,
        }
    }

    /// Stops the process; on return the port refuses connections.
    fn stop(&mut self) {
        self.child.stop();
        wait_until_refused(self.addr);
    }
}

/// Runs `git ARGS` in `cwd` with a clean environment (see [`git_env`]).
/// Returns stdout, or an error carrying stderr.
pub fn git(cwd: &Path, args: &[&str]) -> Result<String> {
    git_env(cwd, args, &[])
}

/// Like [`git`], with extra environment variables (e.g. `GIT_SSH_COMMAND`,
/// `GIT_TRACE_PACKET`).
///
/// The environment is cleared except `PATH` and `TMPDIR`; `HOME` is a fresh
/// empty directory, system config is ignored, prompts are off, and identity,
/// `safe.directory=*` and `init.defaultBranch=main` are passed with `-c`.
/// The command is killed after two minutes.
pub fn git_env(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<String> {
    let git_bin = require_program("git")?;
    let home = TempDir::new().context("creating a HOME for git")?;
    let mut cmd = Command::new(git_bin);
    clean_git_env(&mut cmd, home.path());
    cmd.envs(env.iter().copied())
        .current_dir(cwd)
        .args([
            "-c",
            "user.name=Gangway Test",
            "-c",
            "user.email=gangway-test@example.invalid",
            "-c",
            "safe.directory=*",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgSign=false",
            "-c",
            "core.autocrlf=false",
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = format!("git {}", args.join(" "));
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting `{shown}` in {}", cwd.display()))?;

    // Drain both pipes on threads so a chatty git cannot block on a full pipe.
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });

    let status = match blocking_poll(&shown, GIT_TIMEOUT, || Ok(child.try_wait()?)) {
        Ok(status) => Some(status),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    };
    let out = out_thread.join().unwrap_or_default();
    let err = err_thread.join().unwrap_or_default();
    let err = String::from_utf8_lossy(&err);
    match status {
        None => bail!(
            "`{shown}` in {} timed out after {GIT_TIMEOUT:?}; stderr:\n{err}",
            cwd.display()
        ),
        Some(s) if !s.success() => bail!(
            "`{shown}` in {} failed ({s}); stderr:\n{err}",
            cwd.display()
        ),
        Some(_) => String::from_utf8(out).with_context(|| format!("`{shown}` printed non-UTF-8")),
    }
}

/// Clones `url` into `dest`, commits a new file `file_name`, pushes to
/// `main` and returns the new commit id.
pub fn clone_commit_push(url: &str, dest: &Path, file_name: &str) -> Result<String> {
    clone_commit_push_with(url, dest, file_name, &[])
}

/// [`git`] with extra environment variables given as owned pairs (e.g. an
/// agent's `git_env()`: its credential helper).
pub fn git_with(cwd: &Path, args: &[&str], env: &[(String, String)]) -> Result<String> {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    git_env(cwd, args, &env)
}

/// [`clone_commit_push`] with extra environment variables for every git
/// command (e.g. an agent's `git_env()`).
pub fn clone_commit_push_with(
    url: &str,
    dest: &Path,
    file_name: &str,
    env: &[(String, String)],
) -> Result<String> {
    let git = |cwd: &Path, args: &[&str]| git_with(cwd, args, env);
    let dest_str = dest.to_str().context("clone destination is not UTF-8")?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    git(parent, &["clone", "--quiet", url, dest_str]).with_context(|| format!("cloning {url}"))?;
    write_file(
        &dest.join(file_name),
        format!("{file_name}: pushed to {url} by a Gangway test\n").as_bytes(),
    )?;
    git(dest, &["add", "--", file_name])?;
    git(
        dest,
        &["commit", "--quiet", "-m", &format!("Add {file_name}")],
    )?;
    git(dest, &["push", "--quiet", "origin", "HEAD:refs/heads/main"])
        .with_context(|| format!("pushing to {url}"))?;
    Ok(git(dest, &["rev-parse", "--verify", "HEAD"])?
        .trim()
        .to_string())
}

/// Clears the environment of `cmd` except `PATH`/`TMPDIR` and sets a private
/// `HOME`, so neither the user's nor the system's git config leaks in.
fn clean_git_env(cmd: &mut Command, home: &Path) {
    let keep: Vec<(&str, OsString)> = ["PATH", "TMPDIR"]
        .into_iter()
        .filter_map(|k| std::env::var_os(k).map(|v| (k, v)))
        .collect();
    cmd.env_clear()
        .envs(keep)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C");
}

fn write_file(path: &Path, content: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, content).with_context(|| format!("writing {}", path.display()))
}

fn concat_os(prefix: &str, path: &Path) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(path);
    s
}
