//! A relay no single client can hold down (issue 13): sockets that never
//! start TLS are closed, one address cannot hold many unauthenticated
//! connections, hostile token headers are refused without a panic, a
//! session that ends takes every stream with it even when the agent stops
//! reading, a session's streams are capped with a typed refusal, and an
//! identity-provider outage is a 503, not a sign-out.
//!
//! Real binaries and a real OIDC provider; the misbehaving agent is a
//! test-only client built on the transport crate.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use base64::Engine;
use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use gangway_tests::gangway::{
    write_relay_config, IdentitySpec, RelayProcess, ServiceSpec, TestCert,
};
use gangway_tests::peers::oidc::{OidcProvider, CI_DEV, DEFAULT_AUDIENCE};
use gangway_transport::framed::FramedIo;
use gangway_transport::mux::{self, Mode, Opener, Stream};
use gangway_transport::WsByteStream;
use gangway_wire::{
    Control, Hello, HelloReply, OpenResult, OpenStream, RefusalCode, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// What every test here starts with: a provider whose tokens live
/// `token_secs`, a sink, and a relay for both with the `[limits]` lines
/// given (its config in the returned directory).
async fn setup(
    token_secs: u64,
    limits: &str,
) -> Result<(
    OidcProvider,
    Sink,
    TestCert,
    tempfile::TempDir,
    RelayProcess,
)> {
    let idp = OidcProvider::start(DEFAULT_AUDIENCE, token_secs)?;
    let sink = Sink::start().await?;
    let cert = TestCert::new()?;
    let dir = tempfile::tempdir()?;
    let relay = relay(dir.path(), &cert, &idp, sink.addr, limits)?;
    Ok((idp, sink, cert, dir, relay))
}

/// A relay for `idp` with one tcp service `sink` (to `sink`) and the
/// `[limits]` lines given; the config and audit live in `dir`.
fn relay(
    dir: &Path,
    cert: &TestCert,
    idp: &OidcProvider,
    sink: SocketAddr,
    limits: &str,
) -> Result<RelayProcess> {
    let config = write_relay_config(
        dir,
        "127.0.0.1:0".parse()?,
        cert,
        &IdentitySpec {
            issuer: idp.issuer(),
            audience: DEFAULT_AUDIENCE,
            leeway_secs: 0,
            jwks_file: None,
        },
        &[ServiceSpec {
            name: "sink",
            kind: "tcp",
            backends: vec![sink.to_string()],
            allow_groups: None,
        }],
    )?;
    let mut text = std::fs::read_to_string(&config)?;
    text += &format!("\n[limits]\n{limits}\n");
    std::fs::write(&config, text)?;
    RelayProcess::start(&config)
}

fn https(cert: &TestCert) -> Result<reqwest::Client> {
    let pem = std::fs::read(&cert.cert)?;
    Ok(reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// `GET /v1/catalog` with `token`: the status.
async fn catalog(http: &reqwest::Client, relay: &RelayProcess, token: &str) -> Result<u16> {
    let resp = http
        .get(format!("{}/v1/catalog", relay.url()))
        .bearer_auth(token)
        .send()
        .await?;
    Ok(resp.status().as_u16())
}

/// Waits up to `limit` for `cond` to hold, polling every 50 ms.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut cond: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !cond().await {
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// True once the peer has closed `s` (EOF or reset), waiting up to `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

fn assert_no_panic(relay: &RelayProcess) {
    let lines = relay.process.stderr();
    assert!(
        !lines.iter().any(|l| l.contains("panicked")),
        "the relay panicked:\n{}",
        lines.join("\n")
    );
}

/// A TCP backend that accepts and keeps every connection, reporting each.
struct Sink {
    addr: SocketAddr,
    accepted: tokio::sync::mpsc::UnboundedReceiver<TcpStream>,
    _task: AbortOnDrop,
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Sink {
    async fn start() -> Result<Self> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        let (tx, accepted) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                if tx.send(s).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            addr,
            accepted,
            _task: AbortOnDrop(task),
        })
    }

    async fn next(&mut self) -> Result<TcpStream> {
        tokio::time::timeout(Duration::from_secs(10), self.accepted.recv())
            .await
            .context("no backend connection within 10 s")?
            .context("sink stopped")
    }
}

/// A tunnel client built on the transport crate that does only what a test
/// tells it: handshake, control stream, raw streams. It never reads its
/// control stream.
struct RawAgent {
    opener: Opener,
    control: Stream,
    driver: JoinHandle<Result<(), mux::MuxError>>,
}

impl RawAgent {
    async fn connect(relay: &RelayProcess, cert: &TestCert, token: &str) -> Result<Self> {
        let tls = gangway_agent::tls::client_config(Some(&cert.cert))?;
        let tcp = TcpStream::connect(relay.addr).await?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
        let tls = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await?;
        let mut req = format!("wss://{}/v1/tunnel", relay.addr).into_client_request()?;
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let (mut ws, _) = tokio_tungstenite::client_async(req, tls).await?;
        let mut out = BytesMut::new();
        Hello {
            version: PROTOCOL_VERSION,
            agent: "limits-test".into(),
        }
        .encode(&mut out);
        ws.send(Message::Binary(out.freeze())).await?;
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => {
                match HelloReply::decode(&mut BytesMut::from(&b[..]))? {
                    Some(HelloReply::Welcome { .. }) => {}
                    other => bail!("not welcomed: {other:?}"),
                }
            }
            other => bail!("no handshake reply: {other:?}"),
        }
        let (opener, _inbound, driver) =
            mux::start(WsByteStream::new(ws), Mode::Client, mux::config());
        let driver = tokio::spawn(driver);
        let mut control = opener.open().await?;
        // The first frame announces the stream: the relay's control channel.
        let mut ping = BytesMut::new();
        Control::Ping(0).encode(&mut ping);
        control.write_all(&ping).await?;
        control.flush().await?;
        Ok(Self {
            opener,
            control,
            driver,
        })
    }

    /// Opens a stream to `service` and returns it with the relay's answer.
    async fn open(&self, service: &str) -> Result<(FramedIo<Stream>, OpenResult)> {
        let mut framed = FramedIo::new(self.opener.open().await?);
        let header = OpenStream::new(service)?;
        framed.write(|b| header.encode(b)).await?;
        let answer = tokio::time::timeout(Duration::from_secs(10), framed.read(OpenResult::decode))
            .await
            .context("no answer to the open header within 10 s")??
            .context("stream closed before the relay answered")?;
        Ok((framed, answer))
    }
}

/// Sockets that connect and send nothing are closed after the TLS handshake
/// timeout, while a real client is served meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_that_never_start_tls_are_closed() -> Result<()> {
    let (idp, _sink, cert, _dir, relay) = setup(
        60,
        "tls_handshake_timeout_secs = 1\nmax_unauthenticated_per_address = 100",
    )
    .await?;
    let token = idp.client_credentials_token(CI_DEV).await?;
    let http = https(&cert)?;

    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(TcpStream::connect(relay.addr).await?);
    }
    let opened = Instant::now();
    // Served meanwhile.
    assert_eq!(catalog(&http, &relay, &token).await?, 200);
    for (i, s) in idle.iter_mut().enumerate() {
        ensure!(
            closed_within(s, Duration::from_secs(10)).await,
            "idle connection {i} still open after {:?}",
            opened.elapsed()
        );
    }
    // 1 s timeout: closed well before 10 s (and not at once).
    let took = opened.elapsed();
    assert!(took < Duration::from_secs(6), "took {took:?}");
    assert_eq!(catalog(&http, &relay, &token).await?, 200);
    assert_no_panic(&relay);
    Ok(())
}

/// One address may hold only so many connections that have not
/// authenticated; the excess is closed at once, and room comes back as
/// they go.
#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_connections_per_address_are_capped() -> Result<()> {
    let (idp, _sink, cert, _dir, relay) = setup(
        60,
        "max_unauthenticated_per_address = 5\n\
         tls_handshake_timeout_secs = 30\n\
         request_header_timeout_secs = 30",
    )
    .await?;
    let token = idp.client_credentials_token(CI_DEV).await?;

    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect(relay.addr).await?);
    }
    // The relay counts a connection once it has accepted it: wait until the
    // sixth is refused (each attempt that gets in is closed by us at once).
    let mut refused = false;
    for _ in 0..100 {
        let mut extra = TcpStream::connect(relay.addr).await?;
        if closed_within(&mut extra, Duration::from_millis(500)).await {
            refused = true;
            break;
        }
    }
    ensure!(refused, "a sixth unauthenticated connection was kept open");
    // A real client from the same address is refused too while the cap is full.
    let http = https(&cert)?;
    assert!(catalog(&http, &relay, &token).await.is_err());
    // The five held ones are still open (not closed along with the excess).
    for s in held.iter_mut() {
        assert!(!closed_within(s, Duration::from_millis(100)).await);
    }
    drop(held);
    eventually("room for a new client", Duration::from_secs(10), || async {
        matches!(catalog(&http, &relay, &token).await, Ok(200))
    })
    .await?;
    let refusals = relay
        .process
        .stderr()
        .iter()
        .filter(|l| l.contains("too many unauthenticated connections"))
        .count();
    assert!(refusals >= 1, "no log line for the refusal");
    assert_no_panic(&relay);
    Ok(())
}

/// `{"alg":"RS256\n"}`: refused with 401 (the reason's newline does not
/// reach a header), no panic, and the relay keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_alg_is_refused_without_a_panic() -> Result<()> {
    let (idp, _sink, cert, _dir, relay) = setup(60, "").await?;
    let good = idp.client_credentials_token(CI_DEV).await?;
    let http = https(&cert)?;
    let payload = good.split('.').nth(1).context("payload")?;
    for header in [
        r#"{"alg":"RS256\n"}"#,
        r#"{"alg":"RS256\r\nX-Injected: 1"}"#,
        "{\"alg\":\"RS256\",\"kid\":\"\\u0000\\u001b[31m\"}",
    ] {
        let token = format!("{}.{payload}.c2ln", B64.encode(header));
        let resp = http
            .get(format!("{}/v1/catalog", relay.url()))
            .bearer_auth(&token)
            .send()
            .await
            .with_context(|| format!("request with header {header:?}"))?;
        assert_eq!(resp.status(), 401, "header {header:?}");
        let www = resp
            .headers()
            .get("www-authenticate")
            .context("no WWW-Authenticate")?
            .to_str()?
            .to_string();
        assert!(www.starts_with("Bearer error=\"invalid_token\""), "{www}");
        assert!(!www.chars().any(|c| c.is_control()), "{www:?}");
        assert!(resp.headers().get("x-injected").is_none());
    }
    assert_eq!(catalog(&http, &relay, &good).await?, 200);
    assert_no_panic(&relay);
    Ok(())
}

/// An agent that floods pings and never reads its control stream is still
/// cut at token expiry, with every stream it has open.
#[tokio::test(flavor = "multi_thread")]
async fn session_that_never_reads_is_cut_with_its_streams_at_expiry() -> Result<()> {
    // Tokens live 4 s; leeway 0.
    let (idp, mut sink, cert, _dir, relay) = setup(4, "").await?;
    let token = idp.client_credentials_token(CI_DEV).await?;
    let claims: serde_json::Value =
        serde_json::from_slice(&B64.decode(token.split('.').nth(1).context("payload")?)?)?;
    let exp = claims["exp"].as_u64().context("exp")?;

    let mut agent = RawAgent::connect(&relay, &cert, &token).await?;
    let mut backends = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..3 {
        let (s, answer) = agent.open("sink").await?;
        assert_eq!(answer, OpenResult::Accepted);
        streams.push(s);
        backends.push(sink.next().await?);
    }
    // Flood: a bounded number of pings, never reading a pong. The relay's
    // answers fill the control stream's window and its writer blocks.
    let mut control = agent.control;
    let flood = tokio::spawn(async move {
        let mut batch = BytesMut::new();
        for n in 0..2_000u64 {
            Control::Ping(n).encode(&mut batch);
        }
        for _ in 0..200 {
            if control.write_all(&batch).await.is_err() {
                break;
            }
        }
        control
    });
    let now = gangway_relay::auth::now_unix();
    let until_exp = Duration::from_secs(exp.saturating_sub(now));
    let limit = until_exp + Duration::from_secs(10);
    for (i, b) in backends.iter_mut().enumerate() {
        ensure!(
            closed_within(b, limit).await,
            "backend connection {i} still open {limit:?} after the token expired"
        );
    }
    // The session itself is gone: the agent's driver ends.
    tokio::time::timeout(Duration::from_secs(10), &mut agent.driver)
        .await
        .context("the relay kept the session's connection open")?
        .ok();
    flood.abort();
    eventually(
        "the session_close audit line",
        Duration::from_secs(10),
        || async {
            relay
                .audit()
                .iter()
                .any(|e| e["event"] == "session_close" && e["reason"] == "token expired")
        },
    )
    .await?;
    assert_no_panic(&relay);
    drop(streams);
    Ok(())
}

/// Streams beyond `max_streams_per_session` are refused as "rate limited";
/// when one closes there is room again.
#[tokio::test(flavor = "multi_thread")]
async fn streams_beyond_the_cap_get_a_typed_refusal() -> Result<()> {
    let (idp, mut sink, cert, _dir, relay) = setup(60, "max_streams_per_session = 3").await?;
    let token = idp.client_credentials_token(CI_DEV).await?;
    let agent = RawAgent::connect(&relay, &cert, &token).await?;

    let mut open = Vec::new();
    let mut backends = Vec::new();
    for _ in 0..3 {
        let (s, answer) = agent.open("sink").await?;
        assert_eq!(answer, OpenResult::Accepted);
        open.push(s);
        backends.push(sink.next().await?);
    }
    let (_, answer) = agent.open("sink").await?;
    match answer {
        OpenResult::Refused(r) => {
            assert_eq!(r.code, RefusalCode::RateLimited, "{r:?}");
            assert!(r.message.contains("3 streams"), "{}", r.message);
        }
        other => bail!("the fourth stream was not refused: {other:?}"),
    }
    // One closes; a new one gets in.
    let (mut s, _) = open.remove(0).into_parts();
    s.shutdown().await?;
    drop(s);
    drop(backends.remove(0));
    eventually("room for a new stream", Duration::from_secs(10), || async {
        matches!(agent.open("sink").await, Ok((_, OpenResult::Accepted)))
    })
    .await?;
    let audit = relay.audit();
    assert!(
        audit
            .iter()
            .any(|e| e["event"] == "stream_refused" && e["code"] == "rate_limited"),
        "{audit:?}"
    );
    assert_no_panic(&relay);
    Ok(())
}

/// The provider is down and a token names a key the relay has not seen:
/// 503 with a reason, every time until keys can be fetched again — not 401
/// `unknown_key`, which would sign the user out. Tokens with known keys
/// keep working.
#[tokio::test(flavor = "multi_thread")]
async fn provider_outage_is_503_not_a_sign_out() -> Result<()> {
    let (idp, _sink, cert, _dir, relay) = setup(60, "").await?;
    let good = idp.client_credentials_token(CI_DEV).await?;
    let http = https(&cert)?;
    // The relay fetches and caches the provider's keys.
    assert_eq!(catalog(&http, &relay, &good).await?, 200);

    drop(idp);
    let payload = good.split('.').nth(1).context("payload")?;
    let sig = good.rsplit('.').next().context("signature")?;
    let header = serde_json::json!({"alg": "RS256", "typ": "at+jwt", "kid": "rotated-key"});
    let unseen = format!("{}.{payload}.{sig}", B64.encode(header.to_string()));
    let ask = || async {
        let resp = http
            .get(format!("{}/v1/catalog", relay.url()))
            .bearer_auth(&unseen)
            .send()
            .await?;
        let status = resp.status().as_u16();
        anyhow::Ok((status, resp.text().await?))
    };
    // Within `jwks_min_refetch_secs` (1 s) of the last good fetch the relay
    // does not ask again, and a 401 is fair: the provider just said which
    // keys it has. Once it asks and cannot reach the provider: 503.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = ask().await?;
        if status == 503 {
            assert!(body.contains("identity provider"), "{body}");
            break;
        }
        assert_eq!(status, 401, "{body}");
        ensure!(
            Instant::now() < deadline,
            "never 503 while the provider is down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // From then on: 503 every time, even within the refetch interval.
    for attempt in 0..3 {
        let (status, body) = ask().await?;
        assert_eq!(status, 503, "attempt {attempt}: {body}");
        assert!(body.contains("identity provider"), "{body}");
    }
    // Cached keys keep working through the outage.
    assert_eq!(catalog(&http, &relay, &good).await?, 200);
    assert_no_panic(&relay);
    Ok(())
}

/// One subject may hold `max_sessions_per_subject` sessions; the next
/// upgrade is 429 with the reason, and room comes back when one ends.
#[tokio::test(flavor = "multi_thread")]
async fn sessions_per_subject_are_capped() -> Result<()> {
    let (idp, _sink, cert, _dir, relay) = setup(60, "max_sessions_per_subject = 1").await?;
    let token = idp.client_credentials_token(CI_DEV).await?;
    let first = RawAgent::connect(&relay, &cert, &token).await?;
    let second = RawAgent::connect(&relay, &cert, &token).await;
    let e = format!("{:#}", second.err().context("a second session was let in")?);
    assert!(e.contains("429"), "{e}");
    // The first one leaves: the relay sees its connection close.
    first.driver.abort();
    drop(first.control);
    drop(first.opener);
    eventually(
        "room for a new session",
        Duration::from_secs(10),
        || async { RawAgent::connect(&relay, &cert, &token).await.is_ok() },
    )
    .await?;
    assert!(relay
        .audit()
        .iter()
        .any(|e| e["event"] == "session_refused" && e["code"] == "too_many_sessions"));
    assert_no_panic(&relay);
    Ok(())
}

/// The relay's resident memory, KiB (`VmRSS`).
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// Not a check: prints the relay's RSS per idle session (50 sessions) and
/// with 1,000 streams open in one session, each having carried 16 KiB to
/// its backend. For BENCHMARKS.md; loopback, bounded in count.
/// `cargo nextest run -p gangway-tests --test limits --run-ignored only rss`
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn rss_per_idle_session_and_with_1000_streams() -> Result<()> {
    let (idp, mut sink, cert, _dir, relay) = setup(
        300,
        "max_sessions_per_subject = 64\nmax_streams_per_session = 1000",
    )
    .await?;
    let token = idp.client_credentials_token(CI_DEV).await?;
    // Warm up: one session and stream, so lazily built state is counted out.
    let warm = RawAgent::connect(&relay, &cert, &token).await?;
    let (_w, _) = warm.open("sink").await?;
    let _wb = sink.next().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = rss_kib(relay.pid())?;
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(RawAgent::connect(&relay, &cert, &token).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let with_idle = rss_kib(relay.pid())?;
    drop(idle);

    let busy = RawAgent::connect(&relay, &cert, &token).await?;
    let before_streams = rss_kib(relay.pid())?;
    let payload = vec![7u8; 16 * 1024];
    let mut streams = Vec::new();
    let mut backends = Vec::new();
    for _ in 0..1000 {
        let (mut s, answer) = busy.open("sink").await?;
        ensure!(answer == OpenResult::Accepted, "{answer:?}");
        s.get_mut().write_all(&payload).await?;
        streams.push(s);
        let mut b = sink.next().await?;
        let mut got = vec![0u8; payload.len()];
        b.read_exact(&mut got).await?;
        backends.push(b);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let with_streams = rss_kib(relay.pid())?;
    eprintln!(
        "RSS: base {base} KiB; +50 idle sessions {with_idle} KiB ({:.1} KiB/session); \
         one session before streams {before_streams} KiB; 1000 streams {with_streams} KiB \
         ({:.1} KiB/stream)",
        (with_idle as f64 - base as f64) / 50.0,
        (with_streams as f64 - before_streams as f64) / 1000.0,
    );
    Ok(())
}

/// After TLS, a request head must come within `request_header_timeout`:
/// a client that sends nothing, or half a head (slowloris), is closed; and
/// a keep-alive connection with no request in flight is closed after
/// `http_idle_timeout`.
#[tokio::test(flavor = "multi_thread")]
async fn tls_clients_that_send_no_request_or_idle_are_closed() -> Result<()> {
    let (_idp, _sink, cert, _dir, relay) = setup(
        60,
        "request_header_timeout_secs = 2\nhttp_idle_timeout_secs = 1",
    )
    .await?;
    let tls = gangway_agent::tls::client_config(Some(&cert.cert))?;
    let connect = || async {
        let tcp = TcpStream::connect(relay.addr).await?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
        anyhow::Ok(
            tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await?,
        )
    };
    let closed = |mut s: tokio_rustls::client::TlsStream<TcpStream>| async move {
        let mut buf = Vec::new();
        let started = Instant::now();
        // EOF or an error: the relay closed it (a 408 may come first).
        let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
        (
            r.is_ok(),
            started.elapsed(),
            String::from_utf8_lossy(&buf).into_owned(),
        )
    };

    // Nothing after the handshake.
    let (ok, took, _) = closed(connect().await?).await;
    assert!(
        ok && took < Duration::from_secs(6),
        "silent: {ok} after {took:?}"
    );
    // Half a request head, then nothing.
    let mut half = connect().await?;
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await?;
    let (ok, took, _) = closed(half).await;
    assert!(
        ok && took < Duration::from_secs(6),
        "slowloris: {ok} after {took:?}"
    );
    // One request answered, then idle on keep-alive.
    let mut kept = connect().await?;
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let (ok, took, text) = closed(kept).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        ok && took < Duration::from_secs(6),
        "idle: {ok} after {took:?}"
    );
    assert_no_panic(&relay);
    Ok(())
}
