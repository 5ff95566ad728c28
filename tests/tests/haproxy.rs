//! The relay behind HAProxy (issue 15): PROXY protocol v2 from trusted
//! balancers only, health for balancers (`/healthz`, `/readyz`), failover,
//! graceful drain on SIGTERM, reload on SIGHUP and `check-config`.
//!
//! Peers: Debian's HAProxy 2.6 in `mode tcp` with `send-proxy-v2` and
//! health checks (`check-send-proxy`: PROXY v2 `LOCAL`; `GET /readyz`
//! over TLS) in front of two real relays, connecting to them from
//! 127.0.0.4 (the address they trust) while the agent and the test's
//! clients use 127.0.0.1; npm `oidc-provider`; `git daemon`; TCP echo
//! servers; real `gangway` agents.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use gangway_tests::gangway::{bin_path, AgentProcess, RelayProcess, RelaySetup, TestCert};
use gangway_tests::peers::desktop::EchoServer;
use gangway_tests::peers::git::{self, GitDaemon, RepoFixture};
use gangway_tests::peers::haproxy::{Haproxy, SOURCE};
use gangway_tests::peers::oidc::CI_DEV;
use gangway_tests::peers::process::{poll, startup_timeout};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// The relay tables of this file: trust HAProxy's source address, drain
/// for `deadline` seconds, then the services.
fn tables(deadline: u64, services: &str) -> String {
    format!(
        "\n[proxy_protocol]\ntrusted = [\"{SOURCE}/32\"]\nheader_timeout_secs = 3\n\n[drain]\ndeadline_secs = {deadline}\n{services}"
    )
}

fn tcp_service(name: &str, backend: SocketAddr) -> String {
    format!(
        "\n[[service]]\nname = \"{name}\"\nkind = \"tcp\"\nlocal_port = 0\nbackends = [\"{backend}\"]\n"
    )
}

/// Two relays `a` and `b` with the same `services`, HAProxy in front.
struct Pair {
    setup: RelaySetup,
    a: RelayProcess,
    b: RelayProcess,
    haproxy: Haproxy,
}

impl Pair {
    async fn start(deadline: u64, services: &str) -> Result<Self> {
        let setup = RelaySetup::new()?;
        let top = "listen = \"127.0.0.1:0\"";
        let a = setup.relay_named("a", top, &tables(deadline, services))?;
        let b = setup.relay_named("b", top, &tables(deadline, services))?;
        let haproxy = Haproxy::start(setup.dir.path(), &[("a", a.addr), ("b", b.addr)])?;
        // Up only once a check (PROXY v2 LOCAL, TLS, GET /readyz → 200)
        // passed against each.
        for name in ["a", "b"] {
            haproxy
                .wait_status(name, "UP", startup_timeout(Duration::from_secs(20)))
                .await?;
        }
        Ok(Self {
            setup,
            a,
            b,
            haproxy,
        })
    }

    /// `gangway up` through HAProxy for `services`, with a fresh token.
    async fn agent(&self, services: &[&str]) -> Result<AgentProcess> {
        let token = self.setup.dir.path().join("dev.token");
        std::fs::write(
            &token,
            self.setup.idp.client_credentials_token(CI_DEV).await?,
        )?;
        AgentProcess::start(
            &self.haproxy.url(),
            &self.setup.cert.cert,
            &token,
            services,
            &[],
        )
    }
}

/// A TLS client trusting the certificates in `ca` (a PEM file).
fn connector(ca: &Path) -> Result<tokio_rustls::TlsConnector> {
    Ok(tokio_rustls::TlsConnector::from(
        gangway_agent::tls::client_config(Some(ca))?,
    ))
}

/// A TCP connection to `to` from `from` (a loopback address the test binds).
async fn tcp_from(from: &str, to: SocketAddr) -> Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(format!("{from}:0").parse()?)?;
    Ok(s.connect(to).await?)
}

const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A PROXY v2 `PROXY` header over TCP4 naming `client` → `server`.
fn proxy_header(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(c), SocketAddr::V4(s)) = (client, server) else {
        panic!("IPv4 only here");
    };
    let mut h = SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&c.ip().octets());
    h.extend_from_slice(&s.ip().octets());
    h.extend_from_slice(&c.port().to_be_bytes());
    h.extend_from_slice(&s.port().to_be_bytes());
    h
}

/// A PROXY v2 `LOCAL` header (what HAProxy's health checks send).
fn local_header() -> Vec<u8> {
    let mut h = SIGNATURE.to_vec();
    h.extend_from_slice(&[0x20, 0x00, 0, 0]);
    h
}

/// TLS to `relay` from `from`, after `header` if given.
async fn tls_from(
    ca: &Path,
    from: &str,
    relay: SocketAddr,
    header: Option<Vec<u8>>,
) -> Result<Tls> {
    let mut tcp = tcp_from(from, relay).await?;
    if let Some(h) = header {
        tcp.write_all(&h).await?;
    }
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    let tls = tokio::time::timeout(Duration::from_secs(10), connector(ca)?.connect(name, tcp))
        .await
        .context("TLS handshake hung")??;
    Ok(tls)
}

/// One `GET path` on an open (kept-alive) connection: status line and body.
async fn get(s: &mut Tls, path: &str) -> Result<(String, String)> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: relay\r\n\r\n").as_bytes())
        .await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .with_context(|| format!("no answer to GET {path}"))??;
        ensure!(
            n > 0,
            "the relay closed the connection instead of answering"
        );
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while got.len() < head_end + len {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .context("body cut short")??;
        ensure!(n > 0, "body cut short");
        got.extend_from_slice(&buf[..n]);
    }
    let status = head.lines().next().unwrap_or_default().to_string();
    let body = String::from_utf8_lossy(&got[head_end..head_end + len]).into_owned();
    Ok((status, body))
}

/// An open TCP connection through an agent's `echo` listener.
struct Echo(TcpStream);

impl Echo {
    async fn open(addr: SocketAddr) -> Result<Self> {
        let mut e = Echo(TcpStream::connect(addr).await?);
        e.round_trip(b"hello").await?;
        Ok(e)
    }

    async fn round_trip(&mut self, data: &[u8]) -> Result<()> {
        self.0.write_all(data).await?;
        let mut back = vec![0u8; data.len()];
        tokio::time::timeout(Duration::from_secs(30), self.0.read_exact(&mut back))
            .await
            .context("echo through the tunnel timed out")??;
        ensure!(back == data, "the echo came back different");
        Ok(())
    }
}

fn audit_events<'a>(
    relay: &RelayProcess,
    event: &'a str,
) -> impl Iterator<Item = serde_json::Value> + 'a {
    relay
        .audit()
        .into_iter()
        .filter(move |l| l["event"] == event)
}

/// Sends `signal` (e.g. "TERM", "HUP") to the relay, by its pid.
fn signal(relay: &RelayProcess, signal: &str) -> Result<()> {
    let st = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(relay.pid().to_string())
        .status()?;
    ensure!(st.success(), "kill -{signal} failed");
    Ok(())
}

/// Through HAProxy: both relays are held up by health checks that send
/// PROXY v2 `LOCAL` and `GET /readyz` over TLS; the agent's session is
/// audited with the agent's address (127.0.0.1), never HAProxy's
/// (127.0.0.4). Directly: a trusted source's `LOCAL` connection gets
/// `/healthz` and `/readyz` 200; its PROXY header naming 203.0.113.9 makes
/// that the audited peer; a trusted source without a header is refused
/// (logged); an untrusted source's PROXY header is not read as one (the
/// bytes then fail as TLS) while its plain TLS connection is served.
#[tokio::test(flavor = "multi_thread")]
async fn haproxy_health_checks_client_address_and_trust_boundaries() -> Result<()> {
    let echo = EchoServer::start()?;
    let mut pair = Pair::start(30, &tcp_service("echo", echo.addr)).await?;
    let ca = pair.setup.cert.cert.clone();

    let agent = pair.agent(&["echo"]).await?;
    let mut e = Echo::open(agent.addr("echo")).await?;
    e.round_trip(b"through haproxy").await?;
    let opened = poll("the session's audit line", Duration::from_secs(10), || {
        Ok(audit_events(&pair.a, "session_open")
            .chain(audit_events(&pair.b, "session_open"))
            .next())
    })
    .await?;
    let peer = opened["peer"].as_str().context("no peer")?;
    assert!(
        peer.starts_with("127.0.0.1:"),
        "the audited peer is not the agent's address: {opened}"
    );
    for r in [&pair.a, &pair.b] {
        let text = std::fs::read_to_string(r.audit_path()).unwrap_or_default();
        assert!(
            !text.contains(SOURCE),
            "HAProxy's address reached an audit line: {text}"
        );
    }

    let relay = pair.a.addr;
    // LOCAL from the trusted source: served as a direct connection.
    let mut local = tls_from(&ca, SOURCE, relay, Some(local_header())).await?;
    assert_eq!(get(&mut local, "/healthz").await?.0, "HTTP/1.1 200 OK");
    let (status, body) = get(&mut local, "/readyz").await?;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ready\n")
    );

    // PROXY from the trusted source: the header's client is the peer.
    let claimed: SocketAddr = "203.0.113.9:4242".parse()?;
    let mut proxied = tls_from(&ca, SOURCE, relay, Some(proxy_header(claimed, relay))).await?;
    let (status, _) = get(&mut proxied, "/v1/catalog").await?;
    assert!(status.starts_with("HTTP/1.1 401"), "{status}");
    pair.a
        .wait_audit(
            "auth_failed from 203.0.113.9",
            Duration::from_secs(10),
            |l| l["event"] == "auth_failed" && l["peer"] == "203.0.113.9:4242",
        )
        .await?;

    // The trusted source without a header: refused before TLS, and logged.
    let refused = tls_from(&ca, SOURCE, relay, None).await;
    assert!(refused.is_err(), "served without a PROXY header");
    pair.a
        .process
        .wait_line("the refusal's log line", Duration::from_secs(10), |l| {
            l.contains("trusted PROXY protocol source sent no valid header")
        })
        .await?;

    // An untrusted source (127.0.0.1) sending a header: never parsed as
    // one; the relay reads it as the start of TLS, and refuses that.
    let spoofed: SocketAddr = "203.0.113.7:4242".parse()?;
    let spoof = tls_from(&ca, "127.0.0.1", relay, Some(proxy_header(spoofed, relay))).await;
    assert!(spoof.is_err(), "an untrusted PROXY header was honoured");
    let mut direct = tls_from(&ca, "127.0.0.1", relay, None).await?;
    let (status, _) = get(&mut direct, "/v1/catalog").await?;
    assert!(status.starts_with("HTTP/1.1 401"), "{status}");
    pair.a
        .wait_audit("auth_failed from 127.0.0.1", Duration::from_secs(10), |l| {
            l["event"] == "auth_failed"
                && l["peer"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("127.0.0.1:"))
        })
        .await?;
    let text = std::fs::read_to_string(pair.a.audit_path())?;
    assert!(!text.contains("203.0.113.7"), "{text}");

    drop(e);
    pair.haproxy.process.stop();
    Ok(())
}

/// The relay holding the agent's session is killed (SIGKILL) while a
/// clone runs: the agent reconnects through HAProxy to the other relay and
/// the next clone succeeds within 5 s.
#[tokio::test(flavor = "multi_thread")]
async fn killing_a_relay_mid_clone_moves_the_agent_to_the_other() -> Result<()> {
    let repos = RepoFixture::create("demo")?;
    let daemon = GitDaemon::start(repos.root())?;
    let mut pair = Pair::start(30, &tcp_service("git", daemon.addr())).await?;
    let agent = pair.agent(&["git"]).await?;
    let url = format!("git://{}/demo.git", agent.addr("git"));
    let work = tempfile::tempdir()?;
    git::git(work.path(), &["clone", "--quiet", &url, "first"])?;

    let on_a = audit_events(&pair.a, "session_open").next().is_some();
    let (serving, other) = if on_a {
        (&mut pair.a, &pair.b)
    } else {
        (&mut pair.b, &pair.a)
    };
    let other_sessions = audit_events(other, "session_open").count();
    // A clone under way when the relay dies (it may fail: that is the
    // crash's to decide).
    let mid = {
        let (url, dest) = (url.clone(), work.path().join("mid"));
        std::thread::spawn(move || {
            git::git(dest.parent().unwrap(), &["clone", "--quiet", &url, "mid"])
        })
    };
    serving.kill();
    let _ = mid.join();

    let mut n = 0;
    poll(
        "a clone through the other relay",
        Duration::from_secs(5),
        || {
            n += 1;
            let dest = format!("after{n}");
            Ok(git::git(work.path(), &["clone", "--quiet", &url, &dest])
                .ok()
                .map(|_| dest))
        },
    )
    .await
    .map(|dest| {
        assert_eq!(
            git::git(&work.path().join(&dest), &["rev-parse", "HEAD"])
                .unwrap()
                .trim(),
            repos.head_commit("demo").unwrap()
        )
    })?;
    assert!(
        audit_events(other, "session_open").count() > other_sessions,
        "the agent's new session is not on the other relay"
    );
    pair.haproxy.process.stop();
    Ok(())
}

/// SIGTERM to the relay carrying a long stream: `/readyz` turns 503 on a
/// connection it still serves, the long stream keeps flowing, a new
/// connection of the same agent is carried by the other relay at once,
/// and the draining relay exits 0 once the long stream ends (well before
/// its 60 s deadline).
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_open_streams_and_new_connections_go_to_the_other_relay() -> Result<()> {
    let echo = EchoServer::start()?;
    let mut pair = Pair::start(60, &tcp_service("echo", echo.addr)).await?;
    let ca = pair.setup.cert.cert.clone();
    let mut agent = pair.agent(&["echo"]).await?;
    let mut long = Echo::open(agent.addr("echo")).await?;

    let on_a = audit_events(&pair.a, "stream_open").next().is_some();
    let (draining, other) = if on_a {
        (&mut pair.a, &pair.b)
    } else {
        (&mut pair.b, &pair.a)
    };
    let mut kept_alive = tls_from(&ca, SOURCE, draining.addr, Some(local_header())).await?;
    assert_eq!(get(&mut kept_alive, "/readyz").await?.0, "HTTP/1.1 200 OK");

    signal(draining, "TERM")?;
    draining
        .process
        .wait_line("the drain to start", Duration::from_secs(10), |l| {
            l.contains("draining: goodbye sent")
        })
        .await?;
    let (status, body) = get(&mut kept_alive, "/readyz").await?;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 503 Service Unavailable", "draining\n")
    );
    drop(kept_alive);
    // The agent has the goodbye (a stream opened before it read it would
    // be refused as "shutting down").
    agent
        .process
        .wait_line(
            "the agent to take the goodbye",
            Duration::from_secs(10),
            |l| l.contains("relay is draining; reconnect to another relay"),
        )
        .await?;

    // The open stream still flows on the draining relay.
    long.round_trip(b"still here after SIGTERM").await?;
    // A new connection goes to the other relay (the agent's new session).
    let mut fresh = Echo::open(agent.addr("echo")).await?;
    fresh.round_trip(b"on the other relay").await?;
    other
        .wait_audit(
            "the new stream on the other relay",
            Duration::from_secs(10),
            |l| l["event"] == "stream_open",
        )
        .await?;
    assert_eq!(
        audit_events(draining, "stream_open").count(),
        1,
        "a new stream reached the draining relay"
    );
    long.round_trip(b"and still flowing").await?;
    assert!(draining.process.alive(), "exited with a stream open");

    drop(long);
    let status = draining
        .process
        .wait_exit(startup_timeout(Duration::from_secs(30)))
        .await?;
    assert!(status.success(), "the drained relay exited with {status}");
    let closed = audit_events(draining, "session_close")
        .next()
        .context("no session_close")?;
    let reason = closed["reason"].as_str().unwrap_or_default();
    assert!(
        reason == "relay drained" || reason == "agent closed while draining",
        "{closed}"
    );
    fresh.round_trip(b"the other relay carries on").await?;
    pair.haproxy.process.stop();
    Ok(())
}

/// `[drain] deadline_secs = 2`: a stream that does not end is cut at the
/// deadline and the relay exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn the_drain_deadline_cuts_a_stream_that_does_not_end() -> Result<()> {
    let echo = EchoServer::start()?;
    let setup = RelaySetup::new()?;
    let mut relay = setup.relay_named(
        "r",
        "listen = \"127.0.0.1:0\"",
        &tables(2, &tcp_service("echo", echo.addr)),
    )?;
    let agent = setup.agent(&relay, CI_DEV, &["echo"]).await?;
    let mut long = Echo::open(agent.addr("echo")).await?;
    signal(&relay, "TERM")?;
    let status = relay
        .process
        .wait_exit(startup_timeout(Duration::from_secs(20)))
        .await?;
    assert!(status.success(), "exited with {status}");
    relay
        .process
        .wait_line("the deadline's log line", Duration::from_secs(5), |l| {
            l.contains("drain deadline reached")
        })
        .await?;
    // The stream was cut: the echo no longer comes back.
    assert!(long.round_trip(b"after the deadline").await.is_err());
    Ok(())
}

/// Writes the single relay's config of the reload test: `echo` to
/// `backend`, certificate `cert`.
fn reload_config(setup: &RelaySetup, cert: &TestCert, backend: SocketAddr) -> Result<PathBuf> {
    let path = setup.relay_config_named(
        "r",
        "listen = \"127.0.0.1:0\"",
        &tables(30, &tcp_service("echo", backend)),
    )?;
    let text = std::fs::read_to_string(&path)?
        .replace(
            &setup.cert.cert.display().to_string(),
            &cert.cert.display().to_string(),
        )
        .replace(
            &setup.cert.key.display().to_string(),
            &cert.key.display().to_string(),
        );
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The DER of the first certificate in a PEM file.
fn der(pem_file: &Path) -> Result<Vec<u8>> {
    use base64::Engine;
    let pem = std::fs::read_to_string(pem_file)?;
    let b64: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    Ok(base64::engine::general_purpose::STANDARD.decode(b64)?)
}

/// `gangway-relay check-config FILE`: exit status, stdout, stderr.
fn check_config(file: &Path) -> Result<(bool, String, String)> {
    let out = Command::new(bin_path("gangway-relay")?)
        .arg("check-config")
        .arg(file)
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// SIGHUP with the `echo` service moved to another backend and a new
/// certificate: a long stream opened before keeps working on the old
/// backend, new streams reach the new one, new TLS handshakes get the new
/// certificate, no session is dropped. Then a broken file: `check-config`
/// names file, key and reason and exits non-zero; on SIGHUP the relay logs
/// the same and keeps serving the config it had.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_backends_and_certificate_and_refuses_a_broken_config() -> Result<()> {
    let (old, new) = (EchoServer::start()?, EchoServer::start()?);
    let setup = RelaySetup::new()?;
    let path = reload_config(&setup, &setup.cert, old.addr)?;
    let mut relay = RelayProcess::start(&path)?;
    let agent = setup.agent(&relay, CI_DEV, &["echo"]).await?;
    let mut long = Echo::open(agent.addr("echo")).await?;
    let backends = |relay: &RelayProcess| -> Vec<String> {
        audit_events(relay, "stream_open")
            .filter_map(|l| l["backend"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(backends(&relay), [old.addr.to_string()]);

    // Both certificates trusted by the test's client, to see which one
    // the relay presents.
    let rotated = TestCert::new()?;
    let both = setup.dir.path().join("both.pem");
    std::fs::write(
        &both,
        std::fs::read_to_string(&setup.cert.cert)? + &std::fs::read_to_string(&rotated.cert)?,
    )?;
    let presented =
        |tls: &Tls| -> Vec<u8> { tls.get_ref().1.peer_certificates().unwrap()[0].to_vec() };
    let before = tls_from(&both, "127.0.0.1", relay.addr, None).await?;
    assert_eq!(presented(&before), der(&setup.cert.cert)?);

    let good = reload_config(&setup, &rotated, new.addr)?;
    let (ok, out, err) = check_config(&good)?;
    assert!(ok, "{out}{err}");
    assert_eq!(out, format!("{}: OK\n", good.display()));
    signal(&relay, "HUP")?;
    relay
        .process
        .wait_line("the reload", Duration::from_secs(10), |l| {
            l.contains("reloaded the config")
        })
        .await?;
    long.round_trip(b"the long stream survives the reload")
        .await?;
    let mut fresh = Echo::open(agent.addr("echo")).await?;
    fresh.round_trip(b"new backend").await?;
    assert_eq!(
        backends(&relay),
        [old.addr.to_string(), new.addr.to_string()]
    );
    let after = tls_from(&both, "127.0.0.1", relay.addr, None).await?;
    assert_eq!(presented(&after), der(&rotated.cert)?);

    // A broken file: refused by check-config and by SIGHUP alike.
    let text = std::fs::read_to_string(&good)?;
    std::fs::write(&good, text.replace("kind = \"tcp\"", "kind = \"udp\""))?;
    let (ok, out, err) = check_config(&good)?;
    assert!(!ok, "check-config passed a broken file: {out}");
    assert!(out.is_empty(), "{out}");
    let want = format!("gangway-relay: {}: service[0].kind:", good.display());
    assert!(err.lines().any(|l| l.starts_with(&want)), "{err}");
    signal(&relay, "HUP")?;
    let line = relay
        .process
        .wait_line("the refused reload", Duration::from_secs(10), |l| {
            l.contains("reload refused")
        })
        .await?;
    assert!(line.contains(&good.display().to_string()), "{line}");
    assert!(line.contains("service[0].kind"), "{line}");
    let mut third = Echo::open(agent.addr("echo")).await?;
    third.round_trip(b"still the reloaded backend").await?;
    assert_eq!(
        backends(&relay),
        [
            old.addr.to_string(),
            new.addr.to_string(),
            new.addr.to_string()
        ]
    );
    long.round_trip(b"and the long stream still").await?;
    assert_eq!(
        audit_events(&relay, "session_open").count(),
        1,
        "the agent's session was dropped"
    );
    Ok(())
}

/// A relay whose provider cannot be reached has no signing keys: `/readyz`
/// answers 503 and says so (a balancer sends it nobody), `/healthz` 200.
#[tokio::test(flavor = "multi_thread")]
async fn readyz_is_503_while_no_signing_keys_are_loaded() -> Result<()> {
    let setup = RelaySetup::new()?;
    let echo = EchoServer::start()?;
    let path = setup.relay_config_named(
        "r",
        "listen = \"127.0.0.1:0\"",
        &tables(30, &tcp_service("echo", echo.addr)),
    )?;
    // Nothing listens on the discard port: every JWKS fetch fails.
    let text = std::fs::read_to_string(&path)?.replace(setup.idp.issuer(), "http://127.0.0.1:9");
    std::fs::write(&path, text)?;
    let relay = RelayProcess::start(&path)?;
    let mut s = tls_from(&setup.cert.cert, "127.0.0.1", relay.addr, None).await?;
    assert_eq!(get(&mut s, "/healthz").await?.0, "HTTP/1.1 200 OK");
    let (status, body) = get(&mut s, "/readyz").await?;
    assert_eq!(
        (status.as_str(), body.as_str()),
        (
            "HTTP/1.1 503 Service Unavailable",
            "no signing keys of the identity provider loaded\n"
        )
    );
    Ok(())
}

/// `max_unauthenticated_per_address = 2` behind a trusted balancer: the
/// cap counts the client address each PROXY header names, not the
/// balancer's. Two held connections for 203.0.113.1 fill its cap, a third
/// for it is closed; one for 203.0.113.2, from the same balancer address,
/// is served.
#[tokio::test(flavor = "multi_thread")]
async fn the_per_address_cap_counts_the_address_the_header_names() -> Result<()> {
    let setup = RelaySetup::new()?;
    let echo = EchoServer::start()?;
    let limits = "\n[limits]\nmax_unauthenticated_per_address = 2\n";
    let relay = setup.relay_named(
        "r",
        "listen = \"127.0.0.1:0\"",
        &format!("{limits}{}", tables(30, &tcp_service("echo", echo.addr))),
    )?;
    let ca = &setup.cert.cert;
    let from = |client: &str| -> Result<Vec<u8>> { Ok(proxy_header(client.parse()?, relay.addr)) };
    let mut held = Vec::new();
    for port in [1001, 1002] {
        let mut s = tls_from(
            ca,
            SOURCE,
            relay.addr,
            Some(from(&format!("203.0.113.1:{port}"))?),
        )
        .await?;
        assert_eq!(get(&mut s, "/healthz").await?.0, "HTTP/1.1 200 OK");
        held.push(s);
    }
    let third = tls_from(ca, SOURCE, relay.addr, Some(from("203.0.113.1:1003")?)).await;
    let refused = match third {
        Err(_) => true,
        Ok(mut s) => get(&mut s, "/healthz").await.is_err(),
    };
    assert!(
        refused,
        "a third unauthenticated connection for 203.0.113.1 was served"
    );
    let mut other = tls_from(ca, SOURCE, relay.addr, Some(from("203.0.113.2:1001")?)).await?;
    assert_eq!(get(&mut other, "/healthz").await?.0, "HTTP/1.1 200 OK");
    drop(held);
    Ok(())
}
