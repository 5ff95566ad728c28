//! The git peers on their own: clone and push over smart HTTP (lighttpd +
//! `git http-backend`) and git:// (`git daemon`) against one fixture, with no
//! Gangway in between. If these fail, the end-to-end tests cannot pass.

use std::path::Path;

use anyhow::{ensure, Result};
use gangway_tests::peers::git::{
    binary_blob, clone_commit_push, git, GitDaemon, GitHttpServer, RepoFixture, BINARY_PATH,
};

const REPO: &str = "demo";

/// Clones `url` into `dest` and checks it matches the fixture.
fn clone_and_verify(url: &str, dest: &Path, fixture: &RepoFixture) -> Result<()> {
    let expected_head = fixture.head_commit(REPO)?;
    let dest_str = dest.to_str().expect("UTF-8 temp path");
    git(dest.parent().unwrap(), &["clone", "--quiet", url, dest_str])?;

    let head = git(dest, &["rev-parse", "HEAD"])?;
    ensure!(
        head.trim() == expected_head,
        "{url}: HEAD {head:?} != fixture {expected_head:?}"
    );
    let branch = git(dest, &["symbolic-ref", "--short", "HEAD"])?;
    ensure!(
        branch.trim() == "main",
        "{url}: default branch is {branch:?}"
    );

    let blob = std::fs::read(dest.join(BINARY_PATH))?;
    ensure!(
        blob == binary_blob(),
        "{url}: {BINARY_PATH} differs from the fixture"
    );
    Ok(())
}

#[test]
fn clone_and_push_over_http_and_git_daemon() -> Result<()> {
    let fixture = RepoFixture::create(REPO)?;
    let http = GitHttpServer::start(fixture.root())?;
    let daemon = GitDaemon::start(fixture.root())?;
    let work = tempfile::tempdir()?;

    let http_url = format!("http://{}/scm/{REPO}.git", http.addr());
    let git_url = format!("git://{}/{REPO}.git", daemon.addr());
    assert_eq!(http.repo_url(REPO), http_url);
    assert_eq!(daemon.repo_url(REPO), git_url);

    clone_and_verify(&http_url, &work.path().join("http-clone"), &fixture)?;
    clone_and_verify(&git_url, &work.path().join("git-clone"), &fixture)?;

    let pushed = clone_commit_push(&http_url, &work.path().join("http-push"), "via-http.txt")?;
    assert_eq!(fixture.head_commit(REPO)?, pushed, "push over smart HTTP");

    // This clone starts from the HTTP push, so it also checks that git://
    // serves what HTTP wrote.
    let pushed = clone_commit_push(&git_url, &work.path().join("git-push"), "via-git.txt")?;
    assert_eq!(fixture.head_commit(REPO)?, pushed, "push over git://");
    let files = git(
        &fixture.repo_path(REPO),
        &["ls-tree", "--name-only", "main"],
    )?;
    assert!(files.lines().any(|f| f == "via-http.txt"), "{files}");
    assert!(files.lines().any(|f| f == "via-git.txt"), "{files}");
    Ok(())
}

#[test]
fn stopped_servers_refuse_connections() -> Result<()> {
    let fixture = RepoFixture::create(REPO)?;
    let mut http = GitHttpServer::start(fixture.root())?;
    let mut daemon = GitDaemon::start(fixture.root())?;
    let (http_addr, daemon_addr) = (http.addr(), daemon.addr());
    http.stop();
    daemon.stop();
    let timeout = std::time::Duration::from_millis(500);
    assert!(std::net::TcpStream::connect_timeout(&http_addr, timeout).is_err());
    assert!(std::net::TcpStream::connect_timeout(&daemon_addr, timeout).is_err());
    Ok(())
}
