//! The production-scale relay figures (issue 15), measured on release
//! `gangway-relay` processes with real sessions from
//! [`crate::tunnel_client`]:
//!
//! 1. **Idle sessions**: N sessions (one subject each, as N developers),
//!    opened with bounded concurrency, then left idle: relay RSS and CPU
//!    before, at a checkpoint, after; KiB per idle session; CPU spent
//!    opening them and over an idle window (keep-alive cost).
//! 2. **Active streams**: on one more session, S tcp streams to an echo
//!    backend, each having carried some bytes, held (RSS per stream), then
//!    all echoing at once for a few seconds (throughput, CPU, RSS).
//! 3. **Requests per second** of a `kind = "http"` service (nginx, a 1 KiB
//!    file) with the same client load three ways: one relay direct,
//!    HAProxy (`mode tcp`, `send-proxy-v2`) in front of that relay, and
//!    HAProxy in front of two relays.
//!
//! Everything runs on loopback and is bounded: counts are capped by the
//! settings and every wait has a limit. Processes are stopped on drop.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use futures::StreamExt;
use gangway_tests::peers::haproxy::{self, Haproxy};

use crate::pki::Credentials;
use crate::procs::{self, Proc};
use crate::tunnel_client::{self, echo_round, HttpOnStream, Session};
use crate::upstream::{WebAndEcho, SMALL_FILE_PATH};

const START_LIMIT: Duration = Duration::from_secs(20);

/// What to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Idle sessions to open.
    pub sessions: usize,
    /// Sessions opened so far at which memory is also read (0: none).
    pub checkpoint: usize,
    /// Handshakes in flight at once.
    pub concurrency: usize,
    /// Seconds the sessions stay idle while relay CPU is measured.
    pub idle: Duration,
    /// Streams on the busy session.
    pub streams: usize,
    /// Bytes each stream echoes before it is held.
    pub stream_bytes: usize,
    /// Seconds all streams echo at once.
    pub active: Duration,
    /// Sessions of the requests-per-second load.
    pub rps_sessions: usize,
    /// Concurrent HTTP keep-alive streams per session.
    pub rps_streams: usize,
    /// Seconds per requests-per-second run.
    pub rps: Duration,
    /// Rounds of the three requests-per-second paths.
    pub rps_rounds: usize,
}

/// Relay memory and CPU at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub rss_kib: u64,
    pub cpu_secs: f64,
}

fn sample(relay: &Proc) -> anyhow::Result<Sample> {
    Ok(Sample {
        rss_kib: relay.rss_kib()?,
        cpu_secs: relay.cpu_secs()?,
    })
}

/// Figures of the idle-sessions phase.
#[derive(Debug, Clone)]
pub struct IdleFigures {
    pub base: Sample,
    /// (sessions open, sample) at the checkpoint.
    pub checkpoint: Option<(usize, Sample)>,
    pub opened: usize,
    pub failed: usize,
    pub first_errors: Vec<String>,
    pub open_time: Duration,
    pub after_open: Sample,
    /// After the idle window.
    pub after_idle: Sample,
    pub idle_window: Duration,
    /// Sessions still open after the idle window.
    pub still_open: usize,
    /// The bench process's own RSS with every session open (the clients).
    pub client_rss_kib: u64,
}

/// Figures of the active-streams phase.
#[derive(Debug, Clone)]
pub struct StreamFigures {
    pub before: Sample,
    pub held: Sample,
    pub streams: usize,
    pub open_time: Duration,
    pub active_end: Sample,
    pub active_peak_rss_kib: u64,
    pub active_window: Duration,
    /// Bytes echoed (each way) during the active window.
    pub active_bytes: u64,
    pub errors: Vec<String>,
}

/// One requests-per-second run.
#[derive(Debug, Clone)]
pub struct RpsRun {
    pub path: &'static str,
    pub round: usize,
    pub requests: u64,
    pub elapsed: Duration,
    pub relay_cpu: f64,
    pub haproxy_cpu: Option<f64>,
    pub errors: Vec<String>,
}

impl RpsRun {
    pub fn per_sec(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

/// Phase 3's runs, and where the balancer sent the sessions.
#[derive(Debug, Clone)]
pub struct RpsFigures {
    pub runs: Vec<RpsRun>,
    /// (relay, sessions it opened over all runs, of which with HAProxy's
    /// address as the audit `peer` instead of the client's).
    pub per_relay: Vec<(&'static str, usize, usize)>,
}

/// Sessions in an audit file, and how many name `balancer` as the peer.
fn audited_sessions(audit: &Path, balancer: &str) -> anyhow::Result<(usize, usize)> {
    let text =
        std::fs::read_to_string(audit).with_context(|| format!("reading {}", audit.display()))?;
    let mut n = 0;
    let mut from_balancer = 0;
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v.get("event").and_then(|e| e.as_str()) == Some("session_open") {
            n += 1;
            let peer = v.get("peer").and_then(|p| p.as_str()).unwrap_or_default();
            if peer.starts_with(&format!("{balancer}:")) {
                from_balancer += 1;
            }
        }
    }
    Ok((n, from_balancer))
}

/// Raises this process's open-file soft limit to the hard limit (children,
/// the relays, inherit it). Returns (soft, hard) after.
pub fn raise_nofile() -> anyhow::Result<(u64, u64)> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    Ok((soft, hard))
}

/// A running relay for this bench.
pub struct Relay {
    pub proc: Proc,
    pub addr: SocketAddr,
}

/// Starts `relay_bin` with its own config in `dir`: the bench certificate,
/// keys from the static JWKS file, caps raised so the load is not refused
/// by them, an `echo` tcp service and a `web` http service, and, with
/// `trust_proxy`, PROXY v2 headers taken from HAProxy's source address.
pub async fn start_relay(
    relay_bin: &Path,
    creds: &Credentials,
    upstreams: &WebAndEcho,
    dir: &Path,
    name: &str,
    settings: &Settings,
    trust_proxy: bool,
) -> anyhow::Result<Relay> {
    std::fs::create_dir_all(dir)?;
    let max_streams = (settings.streams + 16).clamp(100, 4096);
    let proxy = if trust_proxy {
        format!("\n[proxy_protocol]\ntrusted = [\"{}\"]\n", haproxy::SOURCE)
    } else {
        String::new()
    };
    let config = format!(
        r#"{head}
[limits]
max_connections = {max_connections}
max_unauthenticated_per_address = {unauth}
max_streams_per_session = {max_streams}
{proxy}
[[service]]
name = "echo"
kind = "tcp"
local_port = 7007
backends = ["{echo}"]

[[service]]
name = "web"
kind = "http"
local_port = 8081
backends = ["{web}"]
"#,
        head = creds.relay_config_head(&dir.join("audit.jsonl")),
        max_connections = settings.sessions + 2 * settings.streams + 1024,
        unauth = (settings.concurrency * 2).max(64),
        echo = upstreams.echo,
        web = upstreams.web,
    );
    let config_path = dir.join("relay.toml");
    std::fs::write(&config_path, config)?;
    let mut cmd = Command::new(relay_bin);
    cmd.arg("--config")
        .arg(&config_path)
        .env("RUST_LOG", "info");
    let mut proc = Proc::spawn(name, cmd, dir)?;
    let addr: SocketAddr = proc
        .wait_for(START_LIMIT, |_, err| {
            err.lines().find_map(|l| {
                l.split_once("listening on https://")
                    .and_then(|(_, a)| a.trim().parse().ok())
            })
        })
        .await?;
    Ok(Relay { proc, addr })
}

/// Mints `n` tokens for subjects `PREFIX-00000`… (one developer each).
fn tokens(creds: &Credentials, prefix: &str, n: usize) -> anyhow::Result<Vec<String>> {
    (0..n)
        .map(|i| creds.signer.token(&format!("{prefix}-{i:05}")))
        .collect()
}

/// Opens one session per token, `concurrency` at a time; returns the open
/// sessions and the errors.
async fn open_sessions(
    tls: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    tokens: &[String],
    concurrency: usize,
) -> (Vec<Session>, Vec<String>) {
    let results: Vec<anyhow::Result<Session>> = futures::stream::iter(tokens)
        .map(|t| Session::connect(tls, addr, t, gangway_transport::mux::config()))
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut open = Vec::with_capacity(results.len());
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(s) => open.push(s),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    (open, errors)
}

/// Phase 1. Returns the figures and the open sessions (kept open through
/// phase 2, then dropped by the caller).
pub async fn idle_sessions(
    relay: &mut Relay,
    creds: &Credentials,
    settings: &Settings,
) -> anyhow::Result<(IdleFigures, Vec<Session>)> {
    let tls = tunnel_client::connector(&creds.cert_pem)?;
    let all = tokens(creds, "bench-idle", settings.sessions)?;
    // Warm up: one session with one stream, so state built lazily on the
    // first session (JWKS parsing, the backend's first connection, the
    // allocator's arenas) is not counted as per-session memory.
    let warm = Session::connect(
        &tls,
        relay.addr,
        &creds.signer.token("bench-warm")?,
        gangway_transport::mux::config(),
    )
    .await
    .context("warm-up session")?;
    let mut s = warm.open("echo").await.context("warm-up stream")?;
    let mut buf = vec![0u8; 1024];
    echo_round(&mut s, &[1u8; 1024], &mut buf).await?;
    drop(s);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = sample(&relay.proc)?;
    eprintln!("relay base: {} KiB", base.rss_kib);

    let started = Instant::now();
    let split = if settings.checkpoint > 0 && settings.checkpoint < all.len() {
        settings.checkpoint
    } else {
        all.len()
    };
    let (mut sessions, mut errors) =
        open_sessions(&tls, relay.addr, &all[..split], settings.concurrency).await;
    let mut checkpoint = None;
    if split < all.len() {
        let open_time = started.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let s = sample(&relay.proc)?;
        eprintln!(
            "{} sessions open in {:.1} s: relay {} KiB",
            sessions.len(),
            open_time.as_secs_f64(),
            s.rss_kib
        );
        checkpoint = Some((sessions.len(), s));
        let (more, more_errors) =
            open_sessions(&tls, relay.addr, &all[split..], settings.concurrency).await;
        sessions.extend(more);
        errors.extend(more_errors);
    }
    // The 1 s pause at the checkpoint is not opening time.
    let open_time =
        started.elapsed() - checkpoint.map_or(Duration::ZERO, |_| Duration::from_secs(1));
    relay.proc.check_alive()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_open = sample(&relay.proc)?;
    eprintln!(
        "{} sessions open ({} failed) in {:.1} s: relay {} KiB; idle for {:?}",
        sessions.len(),
        errors.len(),
        open_time.as_secs_f64(),
        after_open.rss_kib,
        settings.idle
    );
    let idle_started = Instant::now();
    tokio::time::sleep(settings.idle).await;
    let idle_window = idle_started.elapsed();
    let after_idle = sample(&relay.proc)?;
    let still_open = sessions.iter().filter(|s| s.is_open()).count();
    let client_rss_kib = procs::rss_kib(std::process::id())?;
    let failed = errors.len();
    errors.sort();
    errors.dedup();
    errors.truncate(5);
    drop(warm);
    Ok((
        IdleFigures {
            base,
            checkpoint,
            opened: sessions.len(),
            failed,
            first_errors: errors,
            open_time,
            after_open,
            after_idle,
            idle_window,
            still_open,
            client_rss_kib,
        },
        sessions,
    ))
}

/// Phase 2: streams on one new session.
pub async fn active_streams(
    relay: &mut Relay,
    creds: &Credentials,
    settings: &Settings,
) -> anyhow::Result<StreamFigures> {
    let tls = tunnel_client::connector(&creds.cert_pem)?;
    let streams_wanted = settings.streams;
    // The client's yamux must allow the streams too (the agent's allows 1,024).
    let cfg = gangway_transport::mux::bounded_config(streams_wanted + 16, 16 << 20);
    let session = Session::connect(&tls, relay.addr, &creds.signer.token("bench-streams")?, cfg)
        .await
        .context("the streams session")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = sample(&relay.proc)?;
    let payload = vec![7u8; settings.stream_bytes];
    let mut buf = vec![0u8; settings.stream_bytes];
    let started = Instant::now();
    let mut streams = Vec::with_capacity(streams_wanted);
    for i in 0..streams_wanted {
        let mut s = session
            .open("echo")
            .await
            .with_context(|| format!("stream {i}"))?;
        echo_round(&mut s, &payload, &mut buf)
            .await
            .with_context(|| format!("stream {i}"))?;
        streams.push(s);
    }
    let open_time = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = sample(&relay.proc)?;
    eprintln!(
        "{} streams open in {:.1} s, {} bytes echoed each: relay {} KiB; all echoing for {:?}",
        streams.len(),
        open_time.as_secs_f64(),
        settings.stream_bytes,
        held.rss_kib,
        settings.active
    );

    let bytes = Arc::new(AtomicU64::new(0));
    let deadline = tokio::time::Instant::now() + settings.active;
    let chunk = 16 * 1024;
    let mut tasks = tokio::task::JoinSet::new();
    for mut s in streams {
        let bytes = bytes.clone();
        tasks.spawn(async move {
            let payload = vec![9u8; chunk];
            let mut buf = vec![0u8; chunk];
            while tokio::time::Instant::now() < deadline {
                echo_round(&mut s, &payload, &mut buf).await?;
                bytes.fetch_add(chunk as u64, Ordering::Relaxed);
            }
            anyhow::Ok(s)
        });
    }
    let active_started = Instant::now();
    let mut peak = held.rss_kib;
    let mut errors = Vec::new();
    let mut kept = Vec::new();
    let limit = settings.active + Duration::from_secs(30);
    loop {
        tokio::select! {
            done = tasks.join_next() => match done {
                None => break,
                Some(Ok(Ok(s))) => kept.push(s),
                Some(Ok(Err(e))) => errors.push(format!("{e:#}")),
                Some(Err(e)) => errors.push(format!("task: {e}")),
            },
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                peak = peak.max(relay.proc.rss_kib()?);
                if active_started.elapsed() > limit {
                    tasks.abort_all();
                    bail!("streams still echoing {limit:?} after the start");
                }
            }
        }
    }
    let active_window = active_started.elapsed();
    let active_end = sample(&relay.proc)?;
    peak = peak.max(active_end.rss_kib);
    errors.truncate(5);
    drop(kept);
    drop(session);
    Ok(StreamFigures {
        before,
        held,
        streams: streams_wanted,
        open_time,
        active_end,
        active_peak_rss_kib: peak,
        active_window,
        active_bytes: bytes.load(Ordering::Relaxed),
        errors,
    })
}

/// Phase 3: the same HTTP load one relay direct, through HAProxy to that
/// relay, and through HAProxy to two relays, `rps_rounds` times in a
/// rotating order.
pub async fn requests_per_second(
    relay_bin: &Path,
    creds: &Credentials,
    upstreams: &WebAndEcho,
    dir: &Path,
    settings: &Settings,
) -> anyhow::Result<RpsFigures> {
    let mut r1 = start_relay(
        relay_bin,
        creds,
        upstreams,
        &dir.join("relay1"),
        "relay1",
        settings,
        true,
    )
    .await?;
    let mut r2 = start_relay(
        relay_bin,
        creds,
        upstreams,
        &dir.join("relay2"),
        "relay2",
        settings,
        true,
    )
    .await?;
    let h1_dir = dir.join("haproxy1");
    let h2_dir = dir.join("haproxy2");
    std::fs::create_dir_all(&h1_dir)?;
    std::fs::create_dir_all(&h2_dir)?;
    let h1 = Haproxy::start(&h1_dir, &[("relay1", r1.addr)])?;
    let h2 = Haproxy::start(&h2_dir, &[("relay1", r1.addr), ("relay2", r2.addr)])?;
    for (h, names) in [(&h1, &["relay1"][..]), (&h2, &["relay1", "relay2"][..])] {
        for n in names {
            h.wait_status(n, "UP", Duration::from_secs(10)).await?;
        }
    }
    let tls = tunnel_client::connector(&creds.cert_pem)?;
    let toks = tokens(creds, "bench-http", settings.rps_sessions)?;
    let mut runs = Vec::new();
    let paths: [&'static str; 3] = ["1 relay direct", "HAProxy + 1 relay", "HAProxy + 2 relays"];
    for round in 0..settings.rps_rounds {
        for k in 0..paths.len() {
            let which = (k + round) % paths.len();
            let (addr, relays, h): (SocketAddr, Vec<&Proc>, Option<&Haproxy>) = match which {
                0 => (r1.addr, vec![&r1.proc], None),
                1 => (h1.addr, vec![&r1.proc], Some(&h1)),
                _ => (h2.addr, vec![&r1.proc, &r2.proc], Some(&h2)),
            };
            eprintln!(
                "[rps round {}/{}] {}",
                round + 1,
                settings.rps_rounds,
                paths[which]
            );
            let run = http_load(&tls, addr, &toks, &relays, h, settings).await;
            let run = match run {
                Ok((requests, elapsed, relay_cpu, haproxy_cpu, errors)) => RpsRun {
                    path: paths[which],
                    round: round + 1,
                    requests,
                    elapsed,
                    relay_cpu,
                    haproxy_cpu,
                    errors,
                },
                Err(e) => RpsRun {
                    path: paths[which],
                    round: round + 1,
                    requests: 0,
                    elapsed: Duration::from_secs(1),
                    relay_cpu: 0.0,
                    haproxy_cpu: None,
                    errors: vec![format!("{e:#}")],
                },
            };
            eprintln!(
                "  {:.0} requests/s ({} errors)",
                run.per_sec(),
                run.errors.len()
            );
            runs.push(run);
        }
    }
    r1.proc.check_alive()?;
    r2.proc.check_alive()?;
    let mut per_relay = Vec::new();
    for name in ["relay1", "relay2"] {
        let (n, b) = audited_sessions(&dir.join(name).join("audit.jsonl"), haproxy::SOURCE)?;
        per_relay.push((name, n, b));
    }
    Ok(RpsFigures { runs, per_relay })
}

type LoadResult = (u64, Duration, f64, Option<f64>, Vec<String>);

/// Opens one session per token to `addr`, `rps_streams` HTTP streams on
/// each, and runs GETs of the small file until the time is up.
async fn http_load(
    tls: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    toks: &[String],
    relays: &[&Proc],
    haproxy: Option<&Haproxy>,
    settings: &Settings,
) -> anyhow::Result<LoadResult> {
    let (sessions, errors) = open_sessions(tls, addr, toks, 16).await;
    ensure!(errors.is_empty(), "opening sessions: {}", errors[0]);
    let mut clients = Vec::new();
    for s in &sessions {
        for _ in 0..settings.rps_streams {
            let mut c = HttpOnStream::new(s.open("web").await?, SMALL_FILE_PATH);
            // One request each first, so connections to nginx exist.
            c.get().await.context("first request")?;
            clients.push(c);
        }
    }
    let cpu =
        |relays: &[&Proc]| -> anyhow::Result<f64> { relays.iter().map(|p| p.cpu_secs()).sum() };
    let hcpu = || haproxy.map(|h| procs::cpu_secs(h.process.id())).transpose();
    let (c0, h0) = (cpu(relays)?, hcpu()?);
    let requests = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + settings.rps;
    let mut tasks = tokio::task::JoinSet::new();
    for mut c in clients {
        let requests = requests.clone();
        tasks.spawn(async move {
            while tokio::time::Instant::now() < deadline {
                c.get().await?;
                requests.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    let mut errors = Vec::new();
    let limit = settings.rps + Duration::from_secs(30);
    while let Some(done) = tokio::time::timeout(limit, tasks.join_next())
        .await
        .context("HTTP load did not finish")?
    {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(e) => errors.push(format!("task: {e}")),
        }
    }
    let elapsed = started.elapsed();
    let (c1, h1) = (cpu(relays)?, hcpu()?);
    errors.truncate(5);
    drop(sessions);
    Ok((
        requests.load(Ordering::Relaxed),
        elapsed,
        c1 - c0,
        h1.zip(h0).map(|(a, b)| a - b),
        errors,
    ))
}
