//! The local door (issue 14), with real peers: another user of this
//! computer reaches none of the agent's listeners (HTTP git, the SSH
//! listener, Confluence, Synchrony's WebSocket) while the owner does; git
//! over SSH through `gangway ssh-proxy` (no port at all); `--listen` off
//! loopback refused unless `--allow-network-listen`, and then a warning.
//!
//! Peers: npm `oidc-provider`, lighttpd + `git http-backend`, OpenSSH's
//! `sshd`, nginx as a Confluence node, real `gangway-relay` and `gangway
//! up` processes; the other user is an account made for the test
//! (`useradd`, removed on drop) whose commands run under `setpriv`.

use std::ffi::OsString;
use std::io::Read;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use gangway_tests::gangway::{bin_path, gangway_command, http_service, AgentProcess, RelaySetup};
use gangway_tests::peers::git::{git_env, GitHttpServer, RepoFixture};
use gangway_tests::peers::local_user::LocalUser;
use gangway_tests::peers::nginx::ConfluenceNode;
use gangway_tests::peers::oidc::CI_DEV;
use gangway_tests::peers::process::{assert_success, poll, startup_timeout, Finished, Process};
use gangway_tests::peers::sshd::Sshd;

const WAIT: Duration = Duration::from_secs(30);

/// `false` (and a note) when not root outside CI: making a user and
/// switching to it needs root, and CI runs as root.
fn root_or_skip() -> Result<bool> {
    if gangway_agent::control::current_uid() == 0 {
        return Ok(true);
    }
    ensure!(
        !gangway_tests::in_ci(),
        "this test makes a local user and runs commands as it: it must run as root"
    );
    eprintln!("skipped: making another local user needs root");
    Ok(false)
}

/// A `[[service]]` block for a tcp service.
fn tcp_service(name: &str, display: &str, backend: std::net::SocketAddr) -> String {
    format!(
        "\n[[service]]\nname = {name:?}\ndisplay_name = {display:?}\nkind = \"tcp\"\nlocal_port = 0\nbackends = [\"{backend}\"]\n"
    )
}

/// The agent's private control socket for one test.
struct ControlDir {
    dir: tempfile::TempDir,
}

impl ControlDir {
    fn new() -> Result<Self> {
        Ok(Self {
            dir: tempfile::tempdir()?,
        })
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    fn env(&self) -> Vec<(&'static str, OsString)> {
        vec![("GANGWAY_CONTROL_SOCKET", self.socket().into_os_string())]
    }

    /// `gangway ARGS…` talking to this agent.
    async fn gangway(&self, args: &[&str]) -> Result<Finished> {
        let mut cmd = gangway_command(args)?;
        cmd.env("GANGWAY_CONTROL_SOCKET", self.socket());
        Process::spawn_captured(&format!("gangway {}", args.join(" ")), cmd)?
            .finish(WAIT)
            .await
    }

    /// `gangway status --json`, parsed.
    async fn status(&self) -> Result<serde_json::Value> {
        let out = self.gangway(&["status", "--json"]).await?;
        assert_success("gangway status --json", &out);
        serde_json::from_str(&out.stdout).context("status JSON")
    }
}

/// Runs `cmd` to its end (killed if it hangs past [`WAIT`]).
async fn finish(what: &str, cmd: Command) -> Result<Finished> {
    Process::spawn_captured(what, cmd)?.finish(WAIT).await
}

/// `curl` as `user` (or the owner): prints only the HTTP status (`000`
/// when no HTTP answer came).
fn curl(user: Option<&LocalUser>, url: &str, headers: &[&str]) -> Result<Command> {
    let mut cmd = match user {
        Some(u) => u.command("curl")?,
        None => Command::new("curl"),
    };
    cmd.args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "20",
    ]);
    for h in headers {
        cmd.arg("-H").arg(h);
    }
    cmd.arg(url);
    Ok(cmd)
}

/// `curl` as the owner, with the door's local credential for `service`
/// (the HTTP gate wants it on every request), read by curl from a 0600
/// file so the secret is in no process's arguments. The file lives as long
/// as the returned guard.
fn owner_curl(
    agent: &AgentProcess,
    service: &str,
    url: &str,
) -> Result<(Command, tempfile::NamedTempFile)> {
    let mut header = tempfile::NamedTempFile::new()?;
    std::io::Write::write_all(
        &mut header,
        format!("Authorization: {}\n", agent.door_auth(service)?).as_bytes(),
    )?;
    let at = format!("@{}", header.path().display());
    Ok((curl(None, url, &[at.as_str()])?, header))
}

/// What a raw TCP connection to `port` receives as `user` until it is
/// closed (bash's `/dev/tcp`).
fn raw_read(user: &LocalUser, port: u16) -> Result<Command> {
    let mut cmd = user.command("bash")?;
    cmd.args([
        "-c",
        &format!("exec 3<>/dev/tcp/127.0.0.1/{port} && cat <&3; echo \"[closed $?]\""),
    ]);
    Ok(cmd)
}

/// The first line a server sends on `addr` (the SSH banner).
fn banner(addr: std::net::SocketAddr) -> Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(WAIT))?;
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while !got.ends_with(b"\n") && got.len() < 256 {
        if s.read(&mut b)? == 0 {
            break;
        }
        got.push(b[0]);
    }
    Ok(String::from_utf8_lossy(&got).trim().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn another_user_is_refused_on_every_service_and_the_owner_is_not() -> Result<()> {
    if !root_or_skip()? {
        return Ok(());
    }
    let s = RelaySetup::new()?;
    let repos = RepoFixture::create("repo")?;
    let git_http = GitHttpServer::start(repos.root())?;
    let sshd = Sshd::start()?;
    let node = ConfluenceNode::start("node1")?;
    let relay = s.relay(
        &(http_service("bitbucket", 0, &[git_http.addr()], "")
            + &tcp_service("bitbucket-ssh", "Bitbucket SSH", sshd.addr())
            + &http_service(
                "confluence",
                0,
                &[node.addr()],
                &format!(
                    "[[service.route]]\nprefix = \"/synchrony\"\nbackends = [\"{}\"]",
                    node.addr()
                ),
            )),
    )?;
    let control = ControlDir::new()?;
    let token = s.dir.path().join("dev.token");
    std::fs::write(&token, s.idp.client_credentials_token(CI_DEV).await?)?;
    let mut agent = AgentProcess::start_with_env(
        &relay.url(),
        &s.cert.cert,
        &token,
        &["bitbucket", "bitbucket-ssh", "confluence"],
        &[],
        &control.env(),
    )?;
    let (git_port, ssh_port, wiki_port) = (
        agent.addr("bitbucket").port(),
        agent.addr("bitbucket-ssh").port(),
        agent.addr("confluence").port(),
    );
    let other = LocalUser::create()?;
    // sshd's connections so far (its start-up check of the port).
    let sshd_before = sshd.connections();

    // Another user: no HTTP answer, no SSH banner, nothing upstream.
    let refs =
        format!("http://127.0.0.1:{git_port}/scm/repo.git/info/refs?service=git-upload-pack");
    let out = finish(
        "curl git as the other user",
        curl(Some(&other), &refs, &[])?,
    )
    .await?;
    assert_eq!(out.stdout.trim(), "000", "git over HTTP answered: {out:?}");
    assert!(!out.status.success());

    let out = finish("raw read of the SSH listener", raw_read(&other, ssh_port)?).await?;
    assert!(
        !out.stdout.contains("SSH-"),
        "sshd's banner reached another user: {out:?}"
    );
    assert!(
        out.stdout.contains("[closed"),
        "the connection was not closed: {out:?}"
    );

    let page = format!("http://127.0.0.1:{wiki_port}/door-probe-other");
    let out = finish(
        "curl Confluence as the other user",
        curl(Some(&other), &page, &[])?,
    )
    .await?;
    assert_eq!(out.stdout.trim(), "000", "Confluence answered: {out:?}");

    let ws = format!("http://127.0.0.1:{wiki_port}/synchrony/v1/bayeux");
    let upgrade = [
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ];
    let out = finish(
        "a Synchrony upgrade as the other user",
        curl(Some(&other), &ws, &upgrade)?,
    )
    .await?;
    assert_eq!(out.stdout.trim(), "000", "Synchrony answered: {out:?}");

    // The owner on the same listeners: served (with the HTTP gate's
    // local credential), and the relay sees it.
    let (cmd, _h) = owner_curl(&agent, "bitbucket", &refs)?;
    let out = finish("curl git as the owner", cmd).await?;
    assert_eq!(out.stdout.trim(), "200", "{out:?}");
    let owner_page = format!("http://127.0.0.1:{wiki_port}/door-probe-owner");
    let (cmd, _h) = owner_curl(&agent, "confluence", &owner_page)?;
    let out = finish("curl Confluence as the owner", cmd).await?;
    assert_eq!(out.stdout.trim(), "200", "{out:?}");
    let hello = banner(agent.addr("bitbucket-ssh"))?;
    assert!(hello.starts_with("SSH-2.0-OpenSSH"), "{hello:?}");

    // The owner's three streams are in the audit log, nothing else is.
    let audit_page = relay
        .wait_audit("the owner's page", WAIT, |e| {
            e["event"] == "http_request" && e["path"] == "/door-probe-owner"
        })
        .await?;
    let audit = poll("the owner's ssh stream in the audit log", WAIT, || {
        let a = relay.audit();
        Ok(a.iter()
            .any(|e| e["event"] == "stream_open" && e["service"] == "bitbucket-ssh")
            .then_some(a))
    })
    .await?;
    drop(audit_page);
    for e in &audit {
        let path = e["path"].as_str().unwrap_or("");
        assert!(
            !path.contains("door-probe-other") && !path.contains("synchrony"),
            "another user's request reached the relay: {e}"
        );
    }
    let http_requests: Vec<_> = audit
        .iter()
        .filter(|e| e["event"] == "http_request")
        .collect();
    assert_eq!(
        http_requests.len(),
        2,
        "only the owner's two requests: {audit:?}"
    );
    // The other user's attempt came first: had it reached sshd, its line
    // would be logged before the owner's.
    let seen = sshd.wait_connections(sshd_before + 1, WAIT).await?;
    assert_eq!(
        seen - sshd_before,
        1,
        "sshd saw only the owner's connection"
    );
    assert!(
        !node
            .access_log()
            .iter()
            .any(|l| l.contains("door-probe-other") || l.contains("synchrony")),
        "{:?}",
        node.access_log()
    );

    // Status: the door is guarded and names the last refused caller.
    let status = control.status().await?;
    let door = &status["door"];
    assert_eq!(door["uid_checked"], true, "{door}");
    assert_eq!(door["owner"], "root (uid 0)", "{door}");
    assert_eq!(door["refused"], 4, "{door}");
    let last = &door["last_refused"];
    let who = format!("uid {} ({})", other.uid, other.name);
    assert_eq!(last["caller"], who.as_str(), "{door}");
    assert_eq!(last["service"], "confluence", "{door}");
    assert!(
        last["reason"]
            .as_str()
            .unwrap_or("")
            .contains("another user's connection"),
        "{door}"
    );
    assert!(last["at"].as_u64().unwrap_or(0) > 0, "{door}");
    let text = control.gangway(&["status"]).await?;
    assert!(
        text.stdout
            .contains("Local door: only root (uid 0) on this computer can use these ports"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains(&format!("Last refused: {who} at ")),
        "{}",
        text.stdout
    );
    // The agent's log names the uid of each refused caller.
    let log = agent.process.output();
    for service in ["bitbucket", "bitbucket-ssh", "confluence"] {
        let field = format!("service=\"{service}\"");
        assert!(
            log.lines().any(|l| l.contains("local caller refused")
                && l.contains(&who)
                && l.contains(&field)),
            "no refusal logged for {service}:\n{log}"
        );
    }
    agent.stop();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn git_clone_over_ssh_through_ssh_proxy() -> Result<()> {
    let s = RelaySetup::new()?;
    let repos = RepoFixture::create("repo")?;
    let sshd = Sshd::start()?;
    let relay = s.relay(&tcp_service("bitbucket-ssh", "Bitbucket SSH", sshd.addr()))?;
    let control = ControlDir::new()?;
    let token = s.dir.path().join("dev.token");
    std::fs::write(&token, s.idp.client_credentials_token(CI_DEV).await?)?;
    let mut agent = AgentProcess::start_with_env(
        &relay.url(),
        &s.cert.cert,
        &token,
        &["bitbucket-ssh"],
        &[],
        &control.env(),
    )?;
    let gangway = bin_path("gangway")?;
    let ssh = format!(
        "ssh {} -o ProxyCommand='{} ssh-proxy bitbucket-ssh'",
        sshd.ssh_options("gangway-bitbucket")?,
        gangway.display()
    );
    let me = gangway_agent::control::current_uid();
    let user = gangway_agent::door::peer::user_name(me).context("our user name")?;
    let url = format!(
        "ssh://{user}@gangway-bitbucket{}",
        repos.repo_path("repo").display()
    );
    let work = tempfile::tempdir()?;
    let socket = control.socket();
    let env = [
        ("GIT_SSH_COMMAND", ssh.as_str()),
        (
            "GANGWAY_CONTROL_SOCKET",
            socket.to_str().context("socket path")?,
        ),
    ];
    git_env(work.path(), &["clone", "--quiet", &url, "clone"], &env)
        .context("git clone over ssh-proxy")?;
    let clone = work.path().join("clone");
    assert!(clone.join("README.md").is_file());
    let head = git_env(&clone, &["rev-parse", "HEAD"], &[])?;
    assert_eq!(head.trim(), repos.head_commit("repo")?.trim());
    // One stream through the tunnel, no listener used: the SSH listener's
    // counters stayed at zero.
    relay
        .wait_audit("the ssh-proxy stream", WAIT, |e| {
            e["event"] == "stream_open" && e["service"] == "bitbucket-ssh"
        })
        .await?;
    let status = control.status().await?;
    let svc = status["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "bitbucket-ssh"))
        .context("bitbucket-ssh in the status")?;
    assert_eq!(svc["total_streams"], 0, "{svc}");
    assert!(sshd.connections() >= 1);

    // A service the catalog does not have, and no agent at all: one clear
    // line each, non-zero.
    let out = control.gangway(&["ssh-proxy", "nope"]).await?;
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("offers no service named \"nope\""),
        "{out:?}"
    );
    let mut cmd = gangway_command(&["ssh-proxy", "bitbucket-ssh"])?;
    cmd.env("GANGWAY_CONTROL_SOCKET", work.path().join("none.sock"));
    let out = finish("ssh-proxy without an agent", cmd).await?;
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("no Gangway agent is running"),
        "{out:?}"
    );
    agent.stop();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn network_listen_is_refused_without_the_flag_and_warned_with_it() -> Result<()> {
    let s = RelaySetup::new()?;
    let repos = RepoFixture::create("repo")?;
    let git_http = GitHttpServer::start(repos.root())?;
    let relay = s.relay(&http_service("bitbucket", 0, &[git_http.addr()], ""))?;
    let token = s.dir.path().join("dev.token");
    std::fs::write(&token, s.idp.client_credentials_token(CI_DEV).await?)?;
    let up = |extra: &[&str]| -> Result<Command> {
        let mut cmd = gangway_command(&["up", "--relay", &relay.url(), "--ca-file"])?;
        cmd.arg(&s.cert.cert)
            .arg("--token-file")
            .arg(&token)
            .args(["--listen", "bitbucket=0.0.0.0:0"])
            .args(extra);
        Ok(cmd)
    };
    let control = ControlDir::new()?;

    let mut refused = up(&[])?;
    refused.env("GANGWAY_CONTROL_SOCKET", control.socket());
    let out = finish("gangway up --listen 0.0.0.0", refused).await?;
    assert!(!out.status.success(), "{out:?}");
    for words in [
        "0.0.0.0:0",
        "not a loopback address",
        "--allow-network-listen",
    ] {
        assert!(out.stderr.contains(words), "{words:?} not in {out:?}");
    }
    ensure!(
        !relay.audit().iter().any(|e| e["event"] == "session_open"),
        "the refused agent reached the relay"
    );

    let mut allowed = up(&["--allow-network-listen"])?;
    allowed.env("GANGWAY_CONTROL_SOCKET", control.socket());
    let mut agent = AgentProcess::spawn(allowed, &["bitbucket"])?;
    let port = agent.addr("bitbucket").port();
    let status = control.status().await?;
    let user = status["user"].as_str().context("user")?.to_string();
    let shown = status["services"][0]["display_name"]
        .as_str()
        .context("display name")?
        .to_string();
    let warning = format!("anyone who can reach 0.0.0.0:{port} can use {shown} as {user}");
    poll(
        "the warning in the agent's output",
        startup_timeout(WAIT),
        || Ok(agent.process.output().contains(&warning).then_some(())),
    )
    .await?;
    let warnings = status["door"]["open_to_network"].to_string();
    assert!(warnings.contains(&warning), "{warnings}");
    // The owner is still served on it.
    let refs = format!("http://127.0.0.1:{port}/scm/repo.git/info/refs?service=git-upload-pack");
    let (cmd, _h) = owner_curl(&agent, "bitbucket", &refs)?;
    let out = finish("curl git as the owner", cmd).await?;
    assert_eq!(out.stdout.trim(), "200", "{out:?}");
    agent.stop();
    Ok(())
}
