//! README claims about the `gangway` CLI that had no end-to-end test
//! (issue 12), each proven through the real binary as a user meets it:
//! `login --no-browser` starts no browser, `xdg-open` when `BROWSER` is
//! unset, `GANGWAY_TOKEN` for `gangway up` (and a bad one refused with the
//! relay's reason), `--token-file` re-read on reconnect, and a second
//! `gangway up` running without the control socket.
//!
//! Peers: npm `oidc-provider` (tests/peers/oidc), GNOME Keyring on a
//! private bus and headless Chromium for the sign-ins, real
//! `gangway-relay` processes, an echo server as the tcp backend.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use base64::Engine;
use gangway_tests::gangway::{bin_path, AgentProcess, RelayProcess, RelaySetup};
use gangway_tests::peers::browser::Browser;
use gangway_tests::peers::desktop::EchoServer;
use gangway_tests::peers::keychain::SecretService;
use gangway_tests::peers::oidc::{CI_DEV, CI_READONLY};
use gangway_tests::peers::process::{assert_failure, assert_success, Finished, Process};
use gangway_tests::world::{BrowserMailbox, World};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------- helpers

/// A tcp service `echo` to `echo`, for everyone.
fn echo_service(echo: &EchoServer) -> String {
    format!(
        "\n[[service]]\nname = \"echo\"\nkind = \"tcp\"\nlocal_port = 0\nbackends = [\"{}\"]\n",
        echo.addr
    )
}

/// One line through `addr` (an agent's listener for `echo`) and back.
async fn echo_round_trip(addr: SocketAddr) -> Result<()> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"hello through the tunnel\n").await?;
    let mut back = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut back))
        .await
        .context("no echo through the tunnel")??;
    ensure!(&back == b"hello through the tunnel\n", "{back:?}");
    Ok(())
}

/// A home, runtime dir, TMPDIR and control socket of the agents' own, and
/// no keychain: a token can only come from `GANGWAY_TOKEN` or a file.
fn agent_env(root: &Path) -> Result<Vec<(&'static str, OsString)>> {
    let mut env = SecretService::absent_env(root)?;
    let tmp = root.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    env.push(("TMPDIR", tmp.into()));
    env.push(("GANGWAY_CONTROL_SOCKET", root.join("agent.sock").into()));
    Ok(env)
}

/// `gangway up` against `relay` with `GANGWAY_TOKEN=token` and no token
/// file, `echo` on a port-0 listener, in `env`.
fn up_with_env_token(
    setup: &RelaySetup,
    relay: &RelayProcess,
    token: &str,
    env: &[(&'static str, OsString)],
) -> Result<Command> {
    let mut cmd = Command::new(bin_path("gangway")?);
    cmd.args(["up", "--relay", &relay.url(), "--ca-file"])
        .arg(&setup.cert.cert)
        .args(["--listen", "echo=127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .envs(env.iter().cloned())
        .env("GANGWAY_TOKEN", token);
    Ok(cmd)
}

/// The same token with one byte of its signature changed.
fn tamper_signature(token: &str) -> Result<String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (head, sig) = token.rsplit_once('.').context("not a JWT")?;
    let mut bytes = b64.decode(sig)?;
    bytes[10] ^= 0x55;
    Ok(format!("{head}.{}", b64.encode(bytes)))
}

/// Subjects of the sessions the relay opened so far, in order.
fn session_subjects(relay: &RelayProcess) -> Vec<String> {
    relay
        .audit()
        .iter()
        .filter(|e| e["event"] == "session_open")
        .map(|e| e["subject"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// alice signs in at `url` in `browser`; then `login` should end.
async fn finish_sign_in(browser: &Browser, url: &str, login: Process) -> Result<Finished> {
    let page = browser.sign_in(url, "alice", "alice-pw").await?;
    ensure!(page.selector == "#gangway-result", "{page:?}");
    login.finish(Duration::from_secs(60)).await
}

// ---------------------------------------------------------------- tests

/// `gangway login --no-browser` prints the sign-in URL and starts no
/// browser: `BROWSER` names a script that records being called, and after
/// a whole sign-in through the printed URL it never was.
#[tokio::test(flavor = "multi_thread")]
async fn login_no_browser_prints_the_url_and_starts_no_browser() -> Result<()> {
    let world = World::start(&["prod"]).await?;
    world.write_config(&[])?;
    let browser = Browser::start().await?;
    let mut login = Process::spawn_captured(
        "gangway login",
        world.gangway(&["login", "--env", "prod", "--no-browser", "--timeout", "90"])?,
    )?;
    let line = login
        .wait_line("the sign-in URL", Duration::from_secs(20), |l| {
            l.trim_start().starts_with("http")
        })
        .await?;
    let done = finish_sign_in(&browser, line.trim(), login).await?;
    assert_success("login --no-browser", &done);
    assert!(
        done.stderr.contains("If no browser opens, open this page:"),
        "{}",
        done.stderr
    );
    assert!(!world.browser.opened_any(), "--no-browser started $BROWSER");
    let status = world.run(&["status", "--env", "prod"]).await?;
    assert_success("status after login --no-browser", &status);
    Ok(())
}

/// Without `BROWSER`, `gangway login` opens the URL with `xdg-open` (here
/// a recording script of that name first on `PATH`), and the sign-in
/// through what it was given completes.
#[tokio::test(flavor = "multi_thread")]
async fn login_without_browser_set_uses_xdg_open() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let world = World::start(&["prod"]).await?;
    world.write_config(&[])?;
    let bin = world.dir.path().join("bin");
    std::fs::create_dir_all(&bin)?;
    let mut xdg = BrowserMailbox::create(&bin)?;
    let xdg_open = bin.join("xdg-open");
    std::fs::rename(&xdg.script, &xdg_open)?;
    std::fs::set_permissions(&xdg_open, std::fs::Permissions::from_mode(0o755))?;
    let path = std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))?;
    let browser = Browser::start().await?;
    let mut cmd = world.gangway(&["login", "--env", "prod", "--timeout", "90"])?;
    cmd.env_remove("BROWSER").env("PATH", path);
    let login = Process::spawn_captured("gangway login", cmd)?;
    let url = xdg.next_url(Duration::from_secs(20)).await?;
    let done = finish_sign_in(&browser, &url, login).await?;
    assert_success("login with xdg-open", &done);
    assert!(done.stderr.contains(&url), "the URL was not printed too");
    assert!(!world.browser.opened_any(), "BROWSER was unset");
    Ok(())
}

/// `GANGWAY_TOKEN=… gangway up` (no token file, no keychain reachable)
/// serves with that token: the relay's session is the token's subject and
/// a connection goes through. A token the relay refuses ends `up` with a
/// non-zero exit and the relay's own reason.
#[tokio::test(flavor = "multi_thread")]
async fn gangway_token_is_used_by_up_and_a_bad_one_is_refused_with_the_reason() -> Result<()> {
    let setup = RelaySetup::new()?;
    let echo = EchoServer::start()?;
    let relay = setup.relay(&echo_service(&echo))?;
    let home = tempfile::tempdir()?;
    let env = agent_env(home.path())?;
    let token = setup.idp.client_credentials_token(CI_DEV).await?;

    let mut agent =
        AgentProcess::spawn(up_with_env_token(&setup, &relay, &token, &env)?, &["echo"])?;
    echo_round_trip(agent.addr("echo")).await?;
    assert_eq!(session_subjects(&relay), [CI_DEV]);
    agent.stop();

    // What the relay says about a forged token, asked directly…
    let bad = tamper_signature(&token)?;
    let pem = std::fs::read(&setup.cert.cert)?;
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
        .timeout(Duration::from_secs(10))
        .build()?;
    let resp = http
        .get(format!("{}/v1/catalog", relay.url()))
        .bearer_auth(&bad)
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 401);
    let reason = resp.text().await?.trim().to_string();
    ensure!(!reason.is_empty(), "the relay gave no reason");
    // … is what `gangway up` ends with.
    let done = Process::spawn_captured(
        "gangway up (bad token)",
        up_with_env_token(&setup, &relay, &bad, &env)?,
    )?
    .finish(Duration::from_secs(30))
    .await?;
    assert_failure("up with a forged GANGWAY_TOKEN", &done);
    let want = format!("the relay refused the access token: {reason}");
    assert!(
        done.stderr.contains(&want),
        "want {want:?}:\n{}",
        done.stderr
    );
    assert!(!done.stderr.contains(&bad), "the token was printed");
    Ok(())
}

/// `--token-file` is re-read on every connect: the file gets another
/// client's token while the agent runs, the relay restarts on its port,
/// and the agent's new session is the new token's subject — same agent
/// process, listener still serving.
#[tokio::test(flavor = "multi_thread")]
async fn token_file_is_re_read_when_the_agent_reconnects() -> Result<()> {
    let setup = RelaySetup::new()?;
    let echo = EchoServer::start()?;
    let loopback = "listen = \"127.0.0.1:0\"";
    let mut relay = setup.relay_named("relay", loopback, &echo_service(&echo))?;
    let agent = setup.agent(&relay, CI_DEV, &["echo"]).await?;
    echo_round_trip(agent.addr("echo")).await?;
    assert_eq!(session_subjects(&relay), [CI_DEV]);

    let token_file = setup.dir.path().join(format!("{CI_DEV}.token"));
    ensure!(token_file.is_file(), "the agent's token file moved");
    std::fs::write(
        &token_file,
        setup.idp.client_credentials_token(CI_READONLY).await?,
    )?;
    let port = relay.addr;
    relay.kill();
    let relay = setup.relay_named(
        "relay",
        &format!("listen = \"{port}\""),
        &echo_service(&echo),
    )?;
    assert_eq!(relay.addr, port);
    relay
        .wait_audit(
            "a session for the new token",
            Duration::from_secs(30),
            |e| e["event"] == "session_open" && e["subject"] == CI_READONLY,
        )
        .await?;
    assert_eq!(session_subjects(&relay), [CI_DEV, CI_READONLY]);
    echo_round_trip(agent.addr("echo")).await?;
    Ok(())
}

/// A second `gangway up` while one serves the control socket runs anyway
/// and says so (the README's note); both carry connections, and `gangway
/// status` still reaches the first.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_up_runs_without_the_control_socket_and_says_so() -> Result<()> {
    let setup = RelaySetup::new()?;
    let echo = EchoServer::start()?;
    let relay = setup.relay(&echo_service(&echo))?;
    let home = tempfile::tempdir()?;
    let env = agent_env(home.path())?;
    let token = setup.dir.path().join("t");
    std::fs::write(&token, setup.idp.client_credentials_token(CI_DEV).await?)?;
    let start = || {
        AgentProcess::start_with_env(&relay.url(), &setup.cert.cert, &token, &["echo"], &[], &env)
    };

    let mut first = start()?;
    let socket = home.path().join("agent.sock");
    first
        .process
        .wait_line("the control API", Duration::from_secs(20), |l| {
            l.contains("control API on") && l.contains(socket.to_str().unwrap())
        })
        .await?;
    let mut second = start()?;
    let note = format!(
        "note: another Gangway agent already serves the control API at {}; \
         `gangway status` will not see this one",
        socket.display()
    );
    second
        .process
        .wait_line("the note", Duration::from_secs(20), |l| l == note)
        .await?;
    echo_round_trip(second.addr("echo")).await?;
    echo_round_trip(first.addr("echo")).await?;
    assert!(second.process.alive(), "the second agent stopped");

    let mut status = Command::new(bin_path("gangway")?);
    status
        .args(["status", "--relay", &relay.url(), "--ca-file"])
        .arg(&setup.cert.cert)
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env_remove("GANGWAY_TOKEN")
        .envs(env.iter().cloned());
    let status = Process::spawn_captured("gangway status", status)?
        .finish(Duration::from_secs(30))
        .await?;
    assert_success("status", &status);
    assert!(
        status
            .stdout
            .contains(&format!("(pid {})", first.process.id())),
        "status did not reach the first agent:\n{}",
        status.stdout
    );
    second.stop();
    first.stop();
    Ok(())
}
