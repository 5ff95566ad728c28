//! The README's run command: `gangway demo` works on a machine with only
//! git. The first clone line it prints is smart HTTP through the local
//! door, as on Bitbucket (git's own `git http-backend` behind the relay;
//! git gets the door's credential from `gangway git credential`, which the
//! demo registers in `~/.gitconfig` and removes again when it stops); the
//! git:// line works too.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use gangway_tests::gangway::bin_path;
use gangway_tests::peers::git;
use gangway_tests::peers::process::Process;

/// Clones `url`, checks the README, pushes a commit back.
fn clone_and_push(home: &Path, url: &str, dir: &str) -> Result<()> {
    let work = home.join("work");
    std::fs::create_dir_all(&work)?;
    let run = home.join("run");
    let env = [
        ("HOME", home.to_str().context("HOME path")?),
        ("XDG_RUNTIME_DIR", run.to_str().context("runtime path")?),
    ];
    let git = |cwd: &Path, args: &[&str]| git::git_env(cwd, args, &env);
    git(&work, &["clone", "--quiet", url, dir])?;
    let repo = work.join(dir);
    let readme = std::fs::read_to_string(repo.join("README.md"))?;
    ensure!(readme.contains("Cloned through Gangway"), "{readme}");
    std::fs::write(repo.join(format!("{dir}.txt")), "hello\n")?;
    git(&repo, &["add", "."])?;
    git(&repo, &["commit", "--quiet", "-m", dir])?;
    git(&repo, &["push", "--quiet", "origin", "HEAD:main"])?;
    Ok(())
}

#[test]
fn demo_prints_clone_lines_that_work_and_stops_on_ctrl_c() -> Result<()> {
    // Its own HOME (the ~/.gitconfig it edits) and runtime dir (its
    // control socket), so no other agent of the suite answers for it.
    let home = tempfile::tempdir()?;
    let runtime = home.path().join("run");
    std::fs::create_dir_all(&runtime)?;
    std::fs::set_permissions(
        &runtime,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o700),
    )?;
    let mut cmd = Command::new(bin_path("gangway")?);
    cmd.arg("demo")
        .env("RUST_LOG", "warn")
        .env("HOME", home.path())
        .env("XDG_RUNTIME_DIR", &runtime)
        .env_remove("GANGWAY_CONTROL_SOCKET");
    let mut child = Process::spawn_captured("gangway demo", &mut cmd)?;
    let first = child.blocking_wait_line("the clone line", Duration::from_secs(60), |l| {
        l.trim_start().starts_with("git clone ")
    })?;
    let http_url = first
        .split_whitespace()
        .nth(2)
        .context("no URL in the clone line")?
        .to_string();
    ensure!(
        http_url.starts_with("http://127.0.0.1:") && http_url.ends_with("/scm/demo/demo.git"),
        "the first clone line is not Bitbucket-style smart HTTP: {first}"
    );
    let second = child.blocking_wait_line("the git:// line", Duration::from_secs(5), |l| {
        l.trim_start().starts_with("git clone git://")
    })?;
    let git_url = second
        .split_whitespace()
        .nth(2)
        .context("no URL in the git:// line")?
        .to_string();
    child.blocking_wait_line("Ctrl-C hint", Duration::from_secs(5), |l| {
        l.contains("Ctrl-C")
    })?;

    // git finds the helper in this HOME's ~/.gitconfig, and only there;
    // no prompt may appear (it would hang the test).
    let gitconfig = home.path().join(".gitconfig");
    let registered = std::fs::read_to_string(&gitconfig).context("no ~/.gitconfig written")?;
    ensure!(
        registered.contains("git credential"),
        "no credential helper registered: {registered}"
    );
    clone_and_push(home.path(), &http_url, "over-http")?;
    clone_and_push(home.path(), &git_url, "over-git")?;
    // Both pushes reached the one repository: the HTTP clone sees them.
    git::git_env(
        &home.path().join("work/over-http"),
        &["pull", "--quiet", "--no-rebase", "origin", "main"],
        &[
            ("HOME", home.path().to_str().context("HOME path")?),
            ("XDG_RUNTIME_DIR", runtime.to_str().context("runtime path")?),
        ],
    )?;
    ensure!(home.path().join("work/over-http/over-git.txt").exists());

    // Ctrl-C stops it cleanly, and its helper entries are gone.
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()?;
    assert!(status.success());
    let s = child
        .blocking_wait_exit(Duration::from_secs(10))
        .context("demo did not stop on Ctrl-C")?;
    assert!(s.success(), "demo exited with {s}");
    let left = std::fs::read_to_string(&gitconfig).unwrap_or_default();
    ensure!(
        !left.contains("git credential"),
        "the demo left its helper in ~/.gitconfig: {left}"
    );
    Ok(())
}
