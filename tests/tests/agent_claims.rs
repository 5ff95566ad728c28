//! README claims about the agent that had no end-to-end test, each proven
//! through the real `gangway` binary as a user meets it: refusals reaching
//! a local listener (a `tcp` service and the agent's own HTTP error pages),
//! `--connect-wait` running out, and the device flow denied, expired and
//! slowed down by the provider.
//!
//! Peers: npm `oidc-provider` (tests/peers/oidc), GNOME Keyring on a
//! private bus, headless Chromium, and real `gangway-relay` processes;
//! backends are [`CountingBackend`]s, so "never reached the backend" is a
//! count. Every process a test starts is stopped by the test.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use gangway_tests::gangway::{
    bin_path, gangway_command, relay_config_for_idp, start_device_login, AgentProcess,
    CountingBackend, RelayProcess, TestCert,
};
use gangway_tests::peers::browser::Browser;
use gangway_tests::peers::keychain::SecretService;
use gangway_tests::peers::oidc::{DevicePoll, OidcProvider, CI_DEV, DEFAULT_AUDIENCE};
use gangway_tests::peers::process::{
    assert_failure, assert_success, poll, startup_timeout, Finished, Process,
};

// ---------------------------------------------------------------- helpers

/// An http `bitbucket` and a tcp `bitbucket-ssh`, both for `groups`, each
/// on its own counting backend.
fn services(groups: &str, http: &CountingBackend, tcp: &CountingBackend) -> String {
    let service = |name: &str, display: &str, kind: &str, backend: SocketAddr| {
        format!(
            r#"
[[service]]
name = "{name}"
display_name = "{display}"
kind = "{kind}"
local_port = 0
backends = ["{backend}"]
allow_groups = [{groups}]
connect_timeout_secs = 3
"#
        )
    };
    service("bitbucket", "Bitbucket", "http", http.addr)
        + &service("bitbucket-ssh", "Bitbucket SSH", "tcp", tcp.addr)
}

/// Writes the relay config for `services` into `dir`, listening on
/// `listen` (port 0, or the port of a relay to replace).
/// A relay (on any port, config in `dir`) serving [`services`] to
/// developers, and an agent with a CI token and `extra_args` serving both
/// through it, in its own [`AgentEnv`].
async fn developers_relay_and_agent(
    dir: &Path,
    cert: &TestCert,
    idp: &OidcProvider,
    http: &CountingBackend,
    tcp: &CountingBackend,
    extra_args: &[&str],
) -> Result<(RelayProcess, AgentEnv, AgentProcess)> {
    let config = relay_config(
        dir,
        cert,
        idp,
        "127.0.0.1:0".parse()?,
        &services("\"developers\"", http, tcp),
    )?;
    let relay = RelayProcess::start(&config)?;
    let token = dir.join("ci-dev.token");
    std::fs::write(&token, idp.client_credentials_token(CI_DEV).await?)?;
    let env = AgentEnv::new()?;
    let agent = AgentProcess::start_with_env(
        &relay.url(),
        &cert.cert,
        &token,
        &["bitbucket", "bitbucket-ssh"],
        extra_args,
        &env.env,
    )?;
    Ok((relay, env, agent))
}

fn relay_config(
    dir: &Path,
    cert: &TestCert,
    idp: &OidcProvider,
    listen: SocketAddr,
    services: &str,
) -> Result<PathBuf> {
    let path = relay_config_for_idp(dir, cert, idp, services)?;
    let text = std::fs::read_to_string(&path)?.replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{listen}\""),
        1,
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

/// A home, runtime dir, TMPDIR and control socket of the agent's own
/// (no keychain: the agent runs on a token file), so `gangway status`
/// talks to this test's agent and no other.
struct AgentEnv {
    dir: tempfile::TempDir,
    env: Vec<(&'static str, OsString)>,
}

impl AgentEnv {
    fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut env = SecretService::absent_env(dir.path())?;
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp)?;
        env.push(("TMPDIR", tmp.into()));
        env.push((
            "GANGWAY_CONTROL_SOCKET",
            dir.path().join("agent.sock").into(),
        ));
        Ok(Self { dir, env })
    }

    /// `gangway ARGS…` in this environment.
    async fn run(&self, args: &[&str]) -> Result<Finished> {
        let mut cmd = Command::new(bin_path("gangway")?);
        cmd.args(args)
            .envs(self.env.iter().cloned())
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .env_remove("GANGWAY_TOKEN");
        Process::spawn_captured(&format!("gangway {}", args[0]), cmd)?
            .finish(Duration::from_secs(30))
            .await
    }
}

/// Lines of the agent that say a connection was not carried.
fn not_carried(agent: &AgentProcess) -> Vec<String> {
    agent
        .process
        .stderr()
        .into_iter()
        .filter(|l| l.contains("connection not carried"))
        .collect()
}

/// Sends `bytes` on a new connection to `addr` and reads until the other
/// side closes; what came back and how long it took. A reset counts as a
/// close (the agent may drop a connection with unread bytes).
fn talk_until_closed(
    addr: SocketAddr,
    bytes: &[u8],
    limit: Duration,
) -> Result<(Vec<u8>, Duration)> {
    let t = Instant::now();
    let mut tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(limit))?;
    tcp.write_all(bytes)?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e).context("the connection was neither answered nor closed"),
        }
    }
    Ok((got, t.elapsed()))
}

// ----------------------------------------------- refusals at the listener

/// README: "A refused stream is never a silent hang: HTTP clients get an
/// error page with the reason (`403 … ci-readonly may not use Bitbucket`),
/// and the agent logs it." The policy is tightened while `gangway up`
/// runs (the relay restarts with `allow_groups = ["admins"]`): a browser
/// request on the http listener gets the agent's own 403 page naming the
/// reason, a connection to the tcp listener is closed at once (no hang),
/// the agent logs why and `gangway status` lists it as a problem in plain
/// words; neither backend sees a connection, and the relay audits both
/// refusals.
#[tokio::test(flavor = "multi_thread")]
async fn refusals_reach_the_real_listener_as_403_page_and_closed_tcp() -> Result<()> {
    let idp = OidcProvider::start(DEFAULT_AUDIENCE, 60)?;
    let http = CountingBackend::start()?;
    let tcp = CountingBackend::start()?;
    let cert = TestCert::new()?;
    let dir = tempfile::tempdir()?;
    let (mut relay, env, mut agent) =
        developers_relay_and_agent(dir.path(), &cert, &idp, &http, &tcp, &[]).await?;

    // Its listeners are up before its tunnel: wait for the first session,
    // so that the restart below makes the agent reconnect.
    let tunnels = |agent: &AgentProcess| {
        agent
            .process
            .stderr()
            .iter()
            .filter(|l| l.contains("tunnel connected"))
            .count()
    };
    poll(
        "the first tunnel",
        startup_timeout(Duration::from_secs(30)),
        || Ok((tunnels(&agent) >= 1).then_some(())),
    )
    .await?;

    // The administrator tightens the policy; the agent reconnects by itself
    // and keeps serving both listeners from the catalog it has.
    let port = relay.addr;
    relay.kill();
    let config = relay_config(
        dir.path(),
        &cert,
        &idp,
        port,
        &services("\"admins\"", &http, &tcp),
    )?;
    let relay = RelayProcess::start(&config)?;
    // The agent's backoff (up to 30 s between tries) runs while the relay
    // restarts: allow two full steps, stretched by the machine's load.
    poll(
        "the agent to reconnect",
        startup_timeout(Duration::from_secs(65)),
        || Ok((tunnels(&agent) >= 2).then_some(())),
    )
    .await?;

    // http: the agent's own page, with the relay's reason.
    let resp = agent
        .http("bitbucket")?
        .get(format!(
            "http://{}/scm/demo.git/info/refs?service=git-upload-pack",
            agent.addr("bitbucket")
        ))
        .send()
        .await?;
    assert_eq!(resp.status(), 403);
    let reason = "ci-dev may not use Bitbucket (needs one of the groups: admins)";
    let header = resp
        .headers()
        .get("x-gangway-error")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(header.contains(reason), "X-Gangway-Error: {header}");
    let body = resp.text().await?;
    assert_eq!(body, format!("Gangway: forbidden by policy: {reason}\n"));

    // tcp: closed at once, without a byte back; the agent says why.
    let ssh = agent.addr("bitbucket-ssh");
    let (got, took) = tokio::task::spawn_blocking(move || {
        talk_until_closed(ssh, b"SSH-2.0-OpenSSH_9.2\r\n", Duration::from_secs(10))
    })
    .await??;
    assert!(got.is_empty(), "bytes came back: {got:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let line = agent
        .process
        .wait_line("the tcp refusal", Duration::from_secs(10), |l| {
            l.contains("connection not carried") && l.contains("bitbucket-ssh")
        })
        .await?;
    assert!(
        line.contains("ci-dev may not use Bitbucket SSH (needs one of the groups: admins)"),
        "{line}"
    );
    assert_eq!(not_carried(&agent).len(), 2, "{:?}", not_carried(&agent));

    // `gangway status` (through this agent's control socket) says it plainly.
    let status = env
        .run(&[
            "status",
            "--relay",
            &relay.url(),
            "--ca-file",
            cert.cert.to_str().unwrap(),
        ])
        .await?;
    assert!(
        status
            .stdout
            .contains("your account may not use Bitbucket SSH")
            && status
                .stdout
                .contains("your account may not use Bitbucket\n"),
        "{}",
        status.stdout
    );

    // Nothing reached either backend; the relay audited both refusals.
    let audit = relay
        .wait_audit("two refusals", Duration::from_secs(10), |_| true)
        .await?;
    let refused: Vec<_> = audit
        .iter()
        .filter(|e| e["event"] == "stream_refused" && e["code"] == "forbidden")
        .map(|e| {
            (
                e["service"].as_str().unwrap_or_default(),
                e["subject"].clone(),
            )
        })
        .collect();
    assert!(refused.contains(&("bitbucket", CI_DEV.into())), "{audit:?}");
    assert!(
        refused.contains(&("bitbucket-ssh", CI_DEV.into())),
        "{audit:?}"
    );
    assert_eq!((http.connections(), tcp.connections()), (0, 0));
    agent.stop();
    drop(env.dir);
    Ok(())
}

/// README: "If the relay goes away … new connections wait up to
/// `--connect-wait` seconds (default 20)." With `--connect-wait 2` and the
/// relay gone: an HTTP client gets the agent's 502 page saying how long it
/// waited and why, a tcp connection is closed; each after about 2 s, not
/// at once and not much later. The agent logs both.
#[tokio::test(flavor = "multi_thread")]
async fn connect_wait_running_out_is_a_502_page_and_a_closed_tcp_connection() -> Result<()> {
    const WAIT: Duration = Duration::from_secs(2);
    let idp = OidcProvider::start(DEFAULT_AUDIENCE, 60)?;
    let http = CountingBackend::start()?;
    let tcp = CountingBackend::start()?;
    let cert = TestCert::new()?;
    let dir = tempfile::tempdir()?;
    let (mut relay, _env, mut agent) = developers_relay_and_agent(
        dir.path(),
        &cert,
        &idp,
        &http,
        &tcp,
        &["--connect-wait", "2"],
    )
    .await?;
    agent
        .process
        .wait_line("tunnel connected", Duration::from_secs(20), |l| {
            l.contains("tunnel connected")
        })
        .await?;
    relay.kill();
    // The agent has noticed: it is reconnecting (and failing to).
    agent
        .process
        .wait_line("the lost session", Duration::from_secs(20), |l| {
            l.contains("; reconnecting")
        })
        .await?;

    let t = Instant::now();
    let client = agent.http("bitbucket")?;
    let resp = client
        .get(format!("http://{}/", agent.addr("bitbucket")))
        .send()
        .await?;
    let took = t.elapsed();
    assert_eq!(resp.status(), 502);
    let body = resp.text().await?;
    assert!(
        body.starts_with("Gangway: relay unreachable: relay not reachable after waiting 2s"),
        "{body}"
    );
    assert!(took >= WAIT - Duration::from_millis(100), "{took:?}");
    assert!(took < WAIT + Duration::from_secs(3), "{took:?}");

    let ssh = agent.addr("bitbucket-ssh");
    let (got, took) = tokio::task::spawn_blocking(move || {
        talk_until_closed(ssh, b"SSH-2.0-OpenSSH_9.2\r\n", Duration::from_secs(20))
    })
    .await??;
    assert!(got.is_empty(), "bytes came back: {got:?}");
    assert!(took >= WAIT - Duration::from_millis(100), "{took:?}");
    assert!(took < WAIT + Duration::from_secs(3), "{took:?}");
    agent
        .process
        .wait_line("the tcp give-up", Duration::from_secs(10), |l| {
            l.contains("connection not carried")
                && l.contains("bitbucket-ssh")
                && l.contains("relay not reachable after waiting 2s")
        })
        .await?;
    assert!(agent.process.alive(), "the agent exited");
    assert_eq!((http.connections(), tcp.connections()), (0, 0));
    agent.stop();
    Ok(())
}

// -------------------------------------------------------------- device flow

/// A relay (no services needed) trusting a provider started with
/// `settings`, and a keychain for the agent.
struct DeviceSetup {
    keychain: SecretService,
    idp: OidcProvider,
    cert: TestCert,
    relay: RelayProcess,
    _dir: tempfile::TempDir,
}

impl DeviceSetup {
    fn start(settings: &[(&str, &str)]) -> Result<Self> {
        let keychain = SecretService::start()?;
        let idp = OidcProvider::start_with_settings(DEFAULT_AUDIENCE, 60, settings)?;
        let cert = TestCert::new()?;
        let dir = tempfile::tempdir()?;
        let config = relay_config_for_idp(dir.path(), &cert, &idp, "")?;
        let relay = RelayProcess::start(&config)?;
        Ok(Self {
            keychain,
            idp,
            cert,
            relay,
            _dir: dir,
        })
    }

    fn gangway(&self, args: &[&str]) -> Result<Command> {
        let mut cmd = gangway_command(args)?;
        cmd.args(["--relay", &self.relay.url(), "--ca-file"])
            .arg(&self.cert.cert)
            .envs(self.keychain.env())
            .env("BROWSER", "/bin/false");
        Ok(cmd)
    }

    /// Starts `gangway login --device`; returns it and the URL it printed.
    async fn login(&self) -> Result<(Process, String)> {
        start_device_login(self.gangway(&["login", "--device"])?).await
    }

    /// The refresh token stored for the relay (read with `secret-tool`).
    fn stored_refresh(&self) -> Result<Option<String>> {
        let ns = gangway_agent::keychain::namespace_for(&url::Url::parse(&self.relay.url())?);
        self.keychain.gangway_value(&ns, "refresh")
    }

    async fn polls(&self) -> Result<Vec<DevicePoll>> {
        self.idp.device_polls().await
    }
}

/// README: device flow "until the sign-in is approved, denied or the code
/// expires … a cancelled or denied sign-in … end[s] with one clear line
/// and a non-zero exit." The user aborts on the provider's confirmation
/// page: the CLI's next poll gets `access_denied`, it says so and exits 1,
/// nothing is stored.
#[tokio::test(flavor = "multi_thread")]
async fn device_flow_denied_is_a_clear_denial() -> Result<()> {
    let s = DeviceSetup::start(&[("DEVICE_INTERVAL", "1")])?;
    let browser = Browser::start().await?;
    let (login, url) = s.login().await?;
    browser.goto(&url).await?;
    // Sign in if asked, then abort on the confirmation page.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        ensure!(Instant::now() < deadline, "no confirmation page");
        let page = browser
            .wait_for_any(&["#cancel", "#username"], Duration::from_secs(15))
            .await?;
        if page.selector == "#cancel" {
            browser.click("#cancel").await?;
            break;
        }
        browser.fill_login("bob", "bob-pw").await?;
        browser
            .wait_for_any(&["#cancel"], Duration::from_secs(15))
            .await?;
    }
    let page = browser
        .wait_for_any(&["#error"], Duration::from_secs(15))
        .await?;
    assert!(page.text.contains("aborted"), "{page:?}");

    let done = login.finish(Duration::from_secs(30)).await?;
    assert_failure("login --device", &done);
    assert_eq!(done.status.code(), Some(1));
    let last = done.stderr.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        "gangway: sign-in was denied at the identity provider: access_denied: End-User aborted interaction",
        "{}",
        done.stderr
    );
    // The provider answered the agent's poll with the denial; nothing kept.
    let polls = s.polls().await?;
    assert_eq!(
        polls.last().map(|p| p.answer.as_str()),
        Some("access_denied"),
        "{polls:?}"
    );
    assert_eq!(s.stored_refresh()?, None);
    Ok(())
}

/// README: the device flow polls "until … the code expires". Nobody
/// approves a code that lives 4 s: the CLI stops at its expiry (not after
/// minutes), says to start again and exits 1; nothing is stored.
#[tokio::test(flavor = "multi_thread")]
async fn device_flow_expired_code_ends_clearly() -> Result<()> {
    const TTL: Duration = Duration::from_secs(4);
    let s = DeviceSetup::start(&[("DEVICE_INTERVAL", "1"), ("DEVICE_CODE_TTL", "4")])?;
    let t = Instant::now();
    let (login, _url) = s.login().await?;
    let done = login.finish(Duration::from_secs(60)).await?;
    let took = t.elapsed();
    assert_failure("login --device", &done);
    assert_eq!(done.status.code(), Some(1));
    assert_eq!(
        done.stderr.lines().last().unwrap_or_default(),
        "gangway: the code expired before it was approved; run `gangway login --device` again",
        "{}",
        done.stderr
    );
    // Not given up at once: it waited for the code's life. The provider
    // counts expiry in whole seconds from the issue second, so a code can
    // end up to a second before TTL after it was issued.
    assert!(took >= TTL - Duration::from_millis(1500), "{took:?}");
    assert!(took < TTL + Duration::from_secs(6), "{took:?}");
    // It polled, at the interval, and was never told anything but "wait"
    // (or, at the end, "expired").
    let polls = s.polls().await?;
    assert!(polls.len() >= 2, "{polls:?}");
    assert!(
        polls
            .iter()
            .all(|p| p.answer == "authorization_pending" || p.answer == "expired_token"),
        "{polls:?}"
    );
    assert_eq!(s.stored_refresh()?, None);
    Ok(())
}

/// README: the device flow "polls at the provider's interval (slowing down
/// when told to)". The provider names a 1 s interval and answers the first
/// poll with `slow_down` (and would answer every poll that comes sooner
/// than its interval the same way): the agent waits 5 s more from then on,
/// is never told again, and signs in once approved.
#[tokio::test(flavor = "multi_thread")]
async fn device_flow_slows_down_when_told_and_still_signs_in() -> Result<()> {
    let s = DeviceSetup::start(&[("DEVICE_INTERVAL", "1"), ("DEVICE_SLOW_DOWN_FIRST", "1")])?;
    let browser = Browser::start().await?;
    let (login, url) = s.login().await?;
    // Approve only once the provider has told the agent to slow down.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let polls = s.polls().await?;
        if polls.iter().any(|p| p.answer == "slow_down") {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "no slow_down was sent: {polls:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let page = browser.sign_in(&url, "alice", "alice-pw").await?;
    assert_eq!(page.selector, "#success", "{page:?}");
    let done = login.finish(Duration::from_secs(60)).await?;
    assert_success("login --device", &done);
    assert!(done.stdout.contains("as alice"), "{}", done.stdout);

    let polls = s.polls().await?;
    let answers: Vec<_> = polls.iter().map(|p| p.answer.as_str()).collect();
    assert_eq!(answers.first(), Some(&"slow_down"), "{polls:?}");
    assert_eq!(answers.last(), Some(&"tokens"), "{polls:?}");
    assert_eq!(
        answers.iter().filter(|a| **a == "slow_down").count(),
        1,
        "told more than once: {polls:?}"
    );
    // After slow_down the agent waits interval + 5 s between polls.
    for w in polls.windows(2) {
        let gap = w[1].ms - w[0].ms;
        assert!(gap >= 5_900, "polled again after {gap} ms: {polls:?}");
    }
    assert!(s.stored_refresh()?.is_some(), "no refresh token stored");
    Ok(())
}
