//! README claims about running the relay that had no end-to-end test
//! (issues 12 and 13), each proven on the real `gangway-relay`:
//! `--insecure-plaintext` refused off loopback, `max_connections`,
//! `tcp_keepalive_secs` on a tunnel socket, one `[assertion] key_file`
//! shared by two relays, and `workers`.
//!
//! Peers: npm `oidc-provider` (tests/peers/oidc), nginx as the Confluence
//! node that shows the headers it got, an echo server, real `gangway`
//! agents, and `ss` (iproute2) to read the kernel's view of a socket.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use gangway_tests::gangway::{bin_path, RelayProcess, RelaySetup};
use gangway_tests::peers::desktop::EchoServer;
use gangway_tests::peers::nginx::ConfluenceNode;
use gangway_tests::peers::oidc::CI_DEV;
use gangway_tests::peers::process::{poll, require_program, startup_timeout, Process};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A tcp service `echo` to `echo`.
fn echo_service(echo: &EchoServer) -> String {
    format!(
        "\n[[service]]\nname = \"echo\"\nkind = \"tcp\"\nlocal_port = 0\nbackends = [\"{}\"]\n",
        echo.addr
    )
}

/// Sends `data` through `addr` (an agent's listener for `echo`) and
/// checks that the same bytes come back.
async fn echo_round_trip(addr: SocketAddr, data: &[u8]) -> Result<()> {
    let s = TcpStream::connect(addr).await?;
    let (mut r, mut w) = s.into_split();
    let sent = data.to_vec();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await?;
        anyhow::Ok(w)
    });
    let mut back = vec![0u8; data.len()];
    tokio::time::timeout(Duration::from_secs(60), r.read_exact(&mut back))
        .await
        .context("echo through the tunnel timed out")??;
    drop(writer.await??);
    ensure!(back == data, "the echo came back different");
    Ok(())
}

/// A TLS client trusting the test certificate.
fn tls(setup: &RelaySetup) -> Result<tokio_rustls::TlsConnector> {
    let config = gangway_agent::tls::client_config(Some(&setup.cert.cert))?;
    Ok(tokio_rustls::TlsConnector::from(config))
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// One `GET /healthz` on an open TLS connection (kept alive): the status line.
async fn healthz(s: &mut Tls) -> Result<String> {
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
        .await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .context("no answer to GET /healthz")??;
        ensure!(
            n > 0,
            "the relay closed the connection instead of answering"
        );
        got.extend_from_slice(&buf[..n]);
    }
    // The body ("ok\n") may come in another read; the status line is enough.
    let text = String::from_utf8_lossy(&got).into_owned();
    Ok(text.lines().next().unwrap_or_default().to_string())
}

/// TLS to the relay, then one `GET /healthz`: the open connection.
async fn admitted(connector: &tokio_rustls::TlsConnector, relay: SocketAddr) -> Result<Tls> {
    let tcp = TcpStream::connect(relay).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    let mut s = connector.connect(name, tcp).await?;
    let status = healthz(&mut s).await?;
    ensure!(status.starts_with("HTTP/1.1 200"), "{status}");
    Ok(s)
}

/// `--insecure-plaintext` on a config listening on every address: the
/// relay refuses before it binds, says why and how to run behind a
/// balancer, and exits non-zero. On loopback the same flag serves plain
/// HTTP.
#[tokio::test(flavor = "multi_thread")]
async fn insecure_plaintext_is_refused_off_loopback() -> Result<()> {
    let setup = RelaySetup::new()?;
    let echo = EchoServer::start()?;
    let run = |config: &std::path::Path| -> Result<Process> {
        let mut cmd = Command::new(bin_path("gangway-relay")?);
        cmd.arg("--config")
            .arg(config)
            .arg("--insecure-plaintext")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        Process::spawn("relay", cmd)
    };

    let open = setup.relay_config_named("open", "listen = \"0.0.0.0:0\"", &echo_service(&echo))?;
    let done = run(&open)?.finish(Duration::from_secs(20)).await?;
    assert!(!done.status.success(), "{done:?}");
    let want = format!(
        "gangway-relay: refusing --insecure-plaintext on non-loopback address 0.0.0.0:0; \
         set tls.insecure_plaintext = true in {} to run behind a TLS-terminating balancer",
        open.display()
    );
    assert!(done.stderr.contains(&want), "{}", done.stderr);
    assert!(
        !done.stderr.contains("listening on"),
        "it listened: {}",
        done.stderr
    );

    // The same flag on a loopback address: plain HTTP.
    let local =
        setup.relay_config_named("loopback", "listen = \"127.0.0.1:0\"", &echo_service(&echo))?;
    let mut relay = run(&local)?;
    let line = relay
        .wait_line(
            "the relay to listen",
            startup_timeout(Duration::from_secs(20)),
            |l| l.contains("listening on "),
        )
        .await?;
    let url = line
        .split_whitespace()
        .last()
        .context("no address")?
        .to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    let body = reqwest::get(format!("{url}/healthz")).await?.text().await?;
    assert_eq!(body, "ok\n");
    relay.stop();
    Ok(())
}

/// `max_connections = 4`: four connections are served, a fifth is closed
/// at accept (and logged), and once one of the four closes a new one is
/// admitted again.
#[tokio::test(flavor = "multi_thread")]
async fn max_connections_closes_the_fifth_and_admits_again_after_one_closes() -> Result<()> {
    let setup = RelaySetup::new()?;
    let echo = EchoServer::start()?;
    // Long enough timers that no admitted connection is closed for idling
    // while the test holds it.
    let limits = "\n[limits]\nmax_connections = 4\ntls_handshake_timeout_secs = 120\n\
                  request_header_timeout_secs = 120\nhttp_idle_timeout_secs = 120\n";
    let mut relay = setup.relay_named(
        "relay",
        "listen = \"127.0.0.1:0\"",
        &format!("{limits}{}", echo_service(&echo)),
    )?;
    let connector = tls(&setup)?;

    let mut open = Vec::new();
    for i in 0..4 {
        open.push(
            admitted(&connector, relay.addr)
                .await
                .with_context(|| format!("connection {}", i + 1))?,
        );
    }
    // The fifth: the kernel completes the handshake, the relay closes it
    // at once (EOF or reset before any byte).
    let mut fifth = TcpStream::connect(relay.addr).await?;
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(5), fifth.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "the fifth connection was not closed at once: {r:?}"
    );
    // The log line may reach us a moment after the close.
    relay
        .process
        .wait_line("the refusal's log line", Duration::from_secs(5), |l| {
            l.contains("at max_connections; closing the connection")
        })
        .await?;
    // The four still work.
    for (i, s) in open.iter_mut().enumerate() {
        let status = healthz(s)
            .await
            .with_context(|| format!("connection {}", i + 1))?;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    }

    // One closes: its place is free again (once the relay has seen the
    // close), and only one place.
    drop(open.pop());
    let mut readmitted = None;
    // Bounded: 200 tries 50 ms apart.
    for _ in 0..200 {
        match admitted(&connector, relay.addr).await {
            Ok(s) => {
                readmitted = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let _readmitted = readmitted.context("no connection was admitted after one closed")?;
    let mut sixth = TcpStream::connect(relay.addr).await?;
    let r = tokio::time::timeout(Duration::from_secs(5), sixth.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "with four open again, a new connection was not closed: {r:?}"
    );
    Ok(())
}

/// The established sockets the relay holds on `port`, as `ss -tnoe`
/// prints them.
fn relay_sockets(port: u16) -> Result<Vec<String>> {
    let ss = require_program("ss")?;
    let out = Command::new(ss)
        .args(["-tnoeH", "state", "established"])
        .arg(format!("( sport = :{port} )"))
        .output()?;
    ensure!(out.status.success(), "ss failed: {out:?}");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

/// The seconds left on a socket's keepalive timer, from an `ss -o` line
/// (`timer:(keepalive,6.696ms,0)` is 6 s 696 ms; `1min2sec`, `59sec`,
/// `250ms` as they read); `None` without keepalive.
fn keepalive_secs(line: &str) -> Option<f64> {
    let mut t = line.split("timer:(keepalive,").nth(1)?.split(',').next()?;
    let mut secs = 0.0;
    if let Some((m, rest)) = t.split_once("min") {
        secs += m.parse::<f64>().ok()? * 60.0;
        t = rest;
    }
    if let Some(s) = t.strip_suffix("sec") {
        secs += s.parse::<f64>().ok()?;
    } else if let Some(ms) = t.strip_suffix("ms") {
        secs += match ms.split_once('.') {
            Some((s, ms)) => s.parse::<f64>().ok()? + ms.parse::<f64>().ok()? / 1000.0,
            None => ms.parse::<f64>().ok()? / 1000.0,
        };
    }
    Some(secs)
}

/// `tcp_keepalive_secs = 7`: the relay's end of an agent's tunnel gets
/// kernel keepalive with that idle time (the kernel's own default is two
/// hours, the relay's default 60 s).
#[tokio::test(flavor = "multi_thread")]
async fn tunnel_sockets_get_tcp_keepalive_of_the_configured_idle_time() -> Result<()> {
    let setup = RelaySetup::new()?;
    let echo = EchoServer::start()?;
    let relay = setup.relay_named(
        "relay",
        "listen = \"127.0.0.1:0\"",
        &format!(
            "\n[limits]\ntcp_keepalive_secs = 7\n{}",
            echo_service(&echo)
        ),
    )?;
    let mut agent = setup.agent(&relay, CI_DEV, &["echo"]).await?;
    agent
        .process
        .wait_line(
            "the tunnel",
            startup_timeout(Duration::from_secs(20)),
            |l| l.contains("tunnel connected"),
        )
        .await?;
    echo_round_trip(agent.addr("echo"), b"keepalive?").await?;
    // Idle, the socket shows the keepalive timer (in flight, another one).
    let port = relay.addr.port();
    let timers = poll(
        "the tunnel socket's keepalive timer",
        Duration::from_secs(15),
        || {
            let t: Vec<Option<f64>> = relay_sockets(port)?
                .iter()
                .map(|l| keepalive_secs(l))
                .collect();
            Ok((!t.is_empty() && t.iter().all(Option::is_some)).then_some(t))
        },
    )
    .await
    .with_context(|| format!("ss shows {:?}", relay_sockets(port)))?;
    for t in timers.iter().flatten() {
        assert!(*t <= 7.0, "keepalive timer {t} s, configured 7 s");
    }
    // The tunnel still carries traffic.
    echo_round_trip(agent.addr("echo"), b"still there").await?;
    agent.stop();
    Ok(())
}

/// Two relays given the same `[assertion] key_file` publish the same key
/// in `/.well-known/jwks.json`, and an `X-Gangway-Assertion` one of them
/// signed verifies with the other's JWKS. A relay without the key file
/// publishes another key, which does not verify it.
#[tokio::test(flavor = "multi_thread")]
async fn relays_sharing_an_assertion_key_file_verify_each_others_assertions() -> Result<()> {
    let setup = RelaySetup::new()?;
    let node = ConfluenceNode::start("node1")?;
    let key = setup.dir.path().join("assertion.pem");
    std::fs::write(
        &key,
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?.serialize_pem(),
    )?;
    let service = format!(
        "\n[[service]]\nname = \"confluence\"\nkind = \"http\"\nlocal_port = 0\nbackends = [\"{}\"]\n",
        node.addr()
    );
    let shared = format!(
        "\n[assertion]\nkey_file = {:?}\n{service}",
        key.display().to_string()
    );
    let listen = "listen = \"127.0.0.1:0\"";
    let a = setup.relay_named("a", listen, &shared)?;
    let b = setup.relay_named("b", listen, &shared)?;
    let own = setup.relay_named("own", listen, &service)?;

    let pem = std::fs::read(&setup.cert.cert)?;
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
        .timeout(Duration::from_secs(10))
        .build()?;
    let jwks = |relay: &RelayProcess| {
        let req = http.get(format!("{}/.well-known/jwks.json", relay.url()));
        async move {
            let set: jsonwebtoken::jwk::JwkSet =
                req.send().await?.error_for_status()?.json().await?;
            anyhow::Ok(set)
        }
    };
    let (ja, jb, jown) = (jwks(&a).await?, jwks(&b).await?, jwks(&own).await?);
    assert_eq!(ja.keys.len(), 1);
    assert_eq!(
        serde_json::to_value(&ja)?,
        serde_json::to_value(&jb)?,
        "the two relays publish different keys"
    );
    assert_ne!(
        serde_json::to_value(&ja)?,
        serde_json::to_value(&jown)?,
        "a relay without the key file published the shared key"
    );

    // An assertion relay a signed, as the node saw it.
    let agent = setup.agent(&a, CI_DEV, &["confluence"]).await?;
    let headers = agent
        .http("confluence")?
        .get(format!("http://{}/headers", agent.addr("confluence")))
        .send()
        .await?
        .text()
        .await?;
    let h: BTreeMap<&str, &str> = headers.lines().filter_map(|l| l.split_once('=')).collect();
    let assertion = h
        .get("x-gangway-assertion")
        .filter(|v| !v.is_empty())
        .with_context(|| format!("the node got no assertion: {headers}"))?;
    let verify = |set: &jsonwebtoken::jwk::JwkSet| {
        let key = jsonwebtoken::DecodingKey::from_jwk(&set.keys[0])?;
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        v.set_audience(&["confluence"]);
        anyhow::Ok(jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &v)?.claims)
    };
    let claims = verify(&jb).context("relay a's assertion must verify with relay b's JWKS")?;
    assert_eq!(claims["sub"], CI_DEV);
    assert!(
        verify(&jown).is_err(),
        "the assertion verified with an unrelated relay's key"
    );
    Ok(())
}

/// Names of `pid`'s threads (`/proc/PID/task/*/comm`).
fn thread_names(pid: u32) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let comm = std::fs::read_to_string(t?.path().join("comm")).unwrap_or_default();
        names.push(comm.trim().to_string());
    }
    names.sort();
    Ok(names)
}

/// `workers = N`, one more than this machine's CPUs (so not the
/// default): the relay runs exactly N worker threads (named
/// `relay-worker-0` …), and N + 1 agents' sessions at once, spread over
/// them, each carry their traffic. Without the key the relay runs one per
/// CPU.
#[tokio::test(flavor = "multi_thread")]
async fn workers_sets_the_number_of_worker_threads_serving_sessions() -> Result<()> {
    let setup = RelaySetup::new()?;
    let echo = EchoServer::start()?;
    let cpus = std::thread::available_parallelism()?.get();
    let n = cpus + 1;
    let mut relay = setup.relay_named(
        "n",
        &format!("listen = \"127.0.0.1:0\"\nworkers = {n}"),
        &echo_service(&echo),
    )?;
    let workers = |pid: u32| -> Result<Vec<String>> {
        Ok(thread_names(pid)?
            .into_iter()
            .filter(|n| n.starts_with("relay-worker-"))
            .collect())
    };
    // The workers start right after the listening line.
    let started = relay
        .process
        .wait_line("the workers", Duration::from_secs(10), |l| {
            l.contains("worker threads started")
        })
        .await?;
    assert!(started.contains(&format!("workers={n}")), "{started}");
    let mut want: Vec<String> = (0..n).map(|i| format!("relay-worker-{i}")).collect();
    want.sort();
    assert_eq!(workers(relay.pid())?, want);

    // N + 1 agents (as many sessions, at least one per worker), all at once.
    let mut agents = Vec::new();
    for _ in 0..=n {
        agents.push(setup.agent(&relay, CI_DEV, &["echo"]).await?);
    }
    let data: Arc<Vec<u8>> = Arc::new((0..1 << 20).map(|i| (i % 251) as u8).collect());
    let mut transfers = tokio::task::JoinSet::new();
    for a in &agents {
        let (addr, data) = (a.addr("echo"), data.clone());
        transfers.spawn(async move { echo_round_trip(addr, &data).await });
    }
    while let Some(r) = transfers.join_next().await {
        r??;
    }
    let sessions = relay
        .audit()
        .iter()
        .filter(|e| e["event"] == "session_open")
        .count();
    assert!(sessions > n, "{sessions} sessions opened");
    for a in &mut agents {
        a.stop();
    }

    let mut default =
        setup.relay_named("default", "listen = \"127.0.0.1:0\"", &echo_service(&echo))?;
    default
        .process
        .wait_line("the workers", Duration::from_secs(10), |l| {
            l.contains("worker threads started")
        })
        .await?;
    assert_eq!(workers(default.pid())?.len(), cpus);
    Ok(())
}
