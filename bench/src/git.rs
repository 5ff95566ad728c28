//! The `git clone` workload: a bare repository of random (incompressible)
//! blobs generated once per run with `git fast-import`, served over smart
//! HTTP by lighttpd running `git http-backend` as CGI (the launcher the
//! end-to-end tests use, [`gangway_tests::peers::git::GitHttpServer`]), and
//! a timed `git clone --bare` of it.
//!
//! Every git command runs with a clean environment (`HOME` in the run's
//! directory, `GIT_CONFIG_NOSYSTEM=1`, no proxy variables), so the user's
//! configuration cannot change what is measured.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gangway_tests::peers::git::{http_repo_url, GitHttpServer};
use tokio::io::AsyncWriteExt;

use crate::machine::which;
use crate::procs::{run_tool, tail};

/// Commits in the generated repository; each adds one random file.
pub const COMMITS: usize = 40;
/// Size of each commit's file: 40 × 5 MiB = 200 MiB of incompressible data.
pub const FILE_BYTES: usize = 5 * 1024 * 1024;
/// The repository's name: `<name>.git` on disk, `/scm/<name>.git` on
/// lighttpd (Bitbucket-like paths).
const REPO_NAME: &str = "bench";
/// How long one git command (generation, repack, clone) may run.
const GIT_LIMIT: Duration = Duration::from_secs(600);

/// The generated bare repository.
#[derive(Debug, Clone)]
pub struct GitRepo {
    /// The bare repository.
    pub path: PathBuf,
    /// `HOME` for every git command.
    pub home: PathBuf,
    /// The commit `refs/heads/main` points to.
    pub head: String,
    /// Objects in its single pack.
    pub objects: u64,
    /// Size of that pack in bytes.
    pub pack_bytes: u64,
    /// How long generation and repacking took.
    pub generated_in: Duration,
}

impl GitRepo {
    /// `git` with a clean environment: only PATH from ours, HOME in the
    /// run's directory, no system config, no prompts, no proxies.
    pub fn git(&self) -> tokio::process::Command {
        git_command(&self.home)
    }
}

fn git_command(home: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("git");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C");
    cmd
}

/// The repository served by lighttpd + `git http-backend`; lighttpd is
/// stopped on drop (the repository stays with the run's directory), so the
/// owner keeps this for the whole run.
pub struct GitServer {
    pub addr: SocketAddr,
    pub repo: GitRepo,
    _lighttpd: GitHttpServer,
}

impl GitServer {
    /// Generates the repository under `dir/git` (generation logs in `dir`)
    /// and starts lighttpd serving it.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        if which("git").is_none() {
            bail!("git not found on PATH; install it: apt-get install -y git");
        }
        let root = dir.join("git");
        let home = root.join("home");
        let repos = root.join("repos");
        for d in [&home, &repos] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let repo = generate(&repos.join(format!("{REPO_NAME}.git")), &home, dir).await?;

        // The launcher polls (blocking) until lighttpd listens.
        let lighttpd = tokio::task::spawn_blocking(move || GitHttpServer::start(&repos))
            .await?
            .context("serving the git repository (needs lighttpd: apt-get install -y lighttpd)")?;
        Ok(Self {
            addr: lighttpd.addr(),
            repo,
            _lighttpd: lighttpd,
        })
    }
}

/// The clone URL of the repository behind `addr` (lighttpd, or a path to it).
pub fn repo_url(addr: SocketAddr) -> String {
    http_repo_url(addr, REPO_NAME)
}

/// `git init --bare`, then [`COMMITS`] commits streamed into
/// `git fast-import` (no git process per file, no work tree), then one
/// `repack -adf` so the repository is served from a single pack (with a
/// bitmap, as a bare repository gets by default).
async fn generate(repo: &Path, home: &Path, logs: &Path) -> anyhow::Result<GitRepo> {
    let started = Instant::now();
    let mut cmd = git_command(home);
    cmd.args(["init", "--quiet", "--bare", "--initial-branch=main"])
        .arg(repo);
    run_tool(cmd, GIT_LIMIT).await?;

    let err_log = logs.join("git-fast-import.err");
    let mut cmd = git_command(home);
    // Blobs above the threshold are stored whole, without a delta attempt
    // that random data would fail anyway.
    cmd.current_dir(repo)
        .args(["fast-import", "--quiet", "--big-file-threshold=1m"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_log)?)
        .kill_on_drop(true);
    let mut child = cmd.spawn().context("starting git fast-import")?;
    let mut stdin = child.stdin.take().context("git fast-import has no stdin")?;
    let fed = async {
        let mut rng = SplitMix64(0x6761_6e67_7761_7921); // "gangway!"
        let mut buf = vec![0u8; 1 << 20];
        for i in 1..=COMMITS {
            let msg = format!("Add blobs/{i:03}.bin");
            // Fixed dates, so the same run makes the same commits.
            let head = format!(
                "commit refs/heads/main\n\
                 committer Gangway Bench <bench@gangway.invalid> {} +0000\n\
                 data {}\n{msg}\n\
                 M 100644 inline blobs/{i:03}.bin\n\
                 data {FILE_BYTES}\n",
                1_700_000_000 + i * 60,
                msg.len()
            );
            stdin.write_all(head.as_bytes()).await?;
            let mut left = FILE_BYTES;
            while left > 0 {
                let n = left.min(buf.len());
                rng.fill(&mut buf[..n]);
                stdin.write_all(&buf[..n]).await?;
                left -= n;
            }
            stdin.write_all(b"\n").await?;
        }
        stdin.shutdown().await?;
        drop(stdin);
        std::io::Result::Ok(())
    }
    .await;
    let status = tokio::time::timeout(GIT_LIMIT, child.wait())
        .await
        .context("git fast-import did not finish")??;
    if let Err(e) = fed {
        bail!(
            "feeding git fast-import: {e} (it {status}); stderr:\n{}",
            tail(&err_log, 20)
        );
    }
    if !status.success() {
        bail!("git fast-import {status}; stderr:\n{}", tail(&err_log, 20));
    }

    let mut cmd = git_command(home);
    cmd.arg("-C")
        .arg(repo)
        .args(["-c", "pack.threads=2", "-c", "core.bigFileThreshold=1m"])
        .args(["repack", "-adf", "--quiet"]);
    run_tool(cmd, GIT_LIMIT).await?;

    let packs: Vec<PathBuf> = std::fs::read_dir(repo.join("objects/pack"))?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pack"))
        .collect();
    let [pack] = &packs[..] else {
        bail!("expected one pack in {}, found {packs:?}", repo.display());
    };
    let pack_bytes = std::fs::metadata(pack)?.len();
    let mut cmd = git_command(home);
    cmd.arg("-C")
        .arg(repo)
        .args(["rev-parse", "--verify", "refs/heads/main"]);
    let head = run_tool(cmd, GIT_LIMIT).await?.trim().to_string();
    Ok(GitRepo {
        path: repo.to_path_buf(),
        home: home.to_path_buf(),
        head,
        objects: objects_in_packs(repo, home).await?,
        pack_bytes,
        generated_in: started.elapsed(),
    })
}

/// `git count-objects -v`'s `in-pack`, after checking nothing is loose.
async fn objects_in_packs(repo: &Path, home: &Path) -> anyhow::Result<u64> {
    let mut cmd = git_command(home);
    cmd.arg("-C").arg(repo).args(["count-objects", "-v"]);
    let out = run_tool(cmd, GIT_LIMIT).await?;
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .with_context(|| format!("no {name} in git count-objects output:\n{out}"))
    };
    if field("count")? != 0 {
        bail!("{} has loose objects:\n{out}", repo.display());
    }
    field("in-pack")
}

/// Clones the repository through `addr` (`git clone --bare --quiet`) into a
/// fresh directory under `scratch`, checks the clone is complete (same
/// head, same object count), and deletes it. Returns the clone's wall time.
///
/// `env`: more environment for the clone (the local door's credential
/// helper, for Gangway's `kind = "http"`).
pub async fn clone(
    repo: &GitRepo,
    addr: SocketAddr,
    scratch: &Path,
    env: &[(String, String)],
) -> anyhow::Result<Duration> {
    let dir = tempfile::Builder::new()
        .prefix("clone-")
        .tempdir_in(scratch)?;
    let dest = dir.path().join(format!("{REPO_NAME}.git"));
    let mut cmd = repo.git();
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .args(["clone", "--bare", "--quiet"])
        .arg(repo_url(addr))
        .arg(&dest);
    let started = Instant::now();
    run_tool(cmd, GIT_LIMIT).await?;
    let took = started.elapsed();

    let mut cmd = repo.git();
    cmd.arg("-C")
        .arg(&dest)
        .args(["rev-parse", "--verify", "HEAD"]);
    let head = run_tool(cmd, GIT_LIMIT).await?;
    if head.trim() != repo.head {
        bail!(
            "clone has HEAD {}, the source has {}",
            head.trim(),
            repo.head
        );
    }
    let objects = objects_in_packs(&dest, &repo.home).await?;
    if objects != repo.objects {
        bail!(
            "clone has {objects} objects, the source has {}",
            repo.objects
        );
    }
    dir.close()
        .with_context(|| format!("deleting the clone {}", dest.display()))?;
    Ok(took)
}

/// splitmix64: fast, and plenty random for data git and TLS cannot compress.
struct SplitMix64(u64);

impl SplitMix64 {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_fill_is_deterministic_and_not_constant() {
        let (mut a, mut b) = ([0u8; 20], [0u8; 20]);
        SplitMix64(1).fill(&mut a);
        SplitMix64(1).fill(&mut b);
        assert_eq!(a, b);
        assert_ne!(a[..8], a[8..16]);
    }
}
