//! The README's run command: `gangway demo` works on a machine with only
//! git, and the `git clone` line it prints clones through the tunnel.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use gangway_tests::gangway::bin_path;
use gangway_tests::peers::git;
use gangway_tests::peers::process::Process;

#[test]
fn demo_prints_a_clone_line_that_works_and_stops_on_ctrl_c() -> Result<()> {
    let mut cmd = Command::new(bin_path("gangway")?);
    cmd.arg("demo").env("RUST_LOG", "warn");
    let mut child = Process::spawn_captured("gangway demo", &mut cmd)?;
    let line = child.blocking_wait_line("the clone line", Duration::from_secs(60), |l| {
        l.trim_start().starts_with("git clone ")
    })?;
    let url = line
        .split_whitespace()
        .nth(2)
        .context("no URL in the clone line")?
        .to_string();
    child.blocking_wait_line("Ctrl-C hint", Duration::from_secs(5), |l| {
        l.contains("Ctrl-C")
    })?;

    let work = tempfile::tempdir()?;
    git::git(work.path(), &["clone", "--quiet", &url, "demo"])?;
    let readme = std::fs::read_to_string(work.path().join("demo/README.md"))?;
    assert!(readme.contains("Cloned through Gangway"), "{readme}");
    // Push back through the same path.
    std::fs::write(work.path().join("demo/notes.txt"), "hello\n")?;
    let repo = work.path().join("demo");
    git::git(&repo, &["add", "notes.txt"])?;
    git::git(&repo, &["commit", "--quiet", "-m", "notes"])?;
    git::git(&repo, &["push", "--quiet", "origin", "HEAD:main"])?;

    // Ctrl-C stops it cleanly.
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()?;
    assert!(status.success());
    let s = child
        .blocking_wait_exit(Duration::from_secs(10))
        .context("demo did not stop on Ctrl-C")?;
    assert!(s.success(), "demo exited with {s}");
    Ok(())
}
