//! `sessionbench`: a release `gangway-relay` under production-scale load on
//! loopback: 10,000 idle sessions, 1,000 active streams, and HTTP requests
//! per second through HAProxy + 2 relays vs 1 relay.
//!
//! ```text
//! cargo build --release -p gangway-relay -p gangway-bench
//! target/release/sessionbench --sessions 10000 --out /tmp/sessions.md
//! ```
//!
//! Needs nginx and haproxy. Every session is a real one (TCP, TLS,
//! WebSocket upgrade with a token signed by the bench's own key, hello,
//! yamux, control stream), one subject each. Prints a markdown report on
//! stdout, progress on stderr; bounded by `--timeout`, and every process it
//! starts is stopped at the end, also on Ctrl-C or SIGTERM.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use gangway_bench::machine::{self, version_of, which};
use gangway_bench::pki;
use gangway_bench::procs;
use gangway_bench::report::median;
use gangway_bench::sessions::{self, IdleFigures, RpsFigures, RpsRun, Settings, StreamFigures};
use gangway_bench::upstream::WebAndEcho;

#[derive(Parser, Debug)]
#[command(
    about = "A release relay with thousands of real sessions: memory and CPU per idle session and per active stream, requests per second through HAProxy + 2 relays vs 1"
)]
struct Args {
    /// Idle sessions to open (one subject each).
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Also read memory after this many sessions (0: not).
    #[arg(long, default_value_t = 1_000)]
    checkpoint: usize,
    /// Session handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds the sessions stay idle while relay CPU is measured (the
    /// agent pings every 15 s, so 15 covers one keep-alive each).
    #[arg(long, default_value_t = 15)]
    idle_secs: u64,
    /// Streams on the busy session (at most 4,000).
    #[arg(long, default_value_t = 1_000)]
    streams: usize,
    /// Bytes each stream echoes before it is held.
    #[arg(long, default_value_t = 16 * 1024)]
    stream_bytes: usize,
    /// Seconds all streams echo at once.
    #[arg(long, default_value_t = 5)]
    active_secs: u64,
    /// Sessions of the HTTP load.
    #[arg(long, default_value_t = 8)]
    rps_sessions: usize,
    /// Keep-alive HTTP streams per session of the HTTP load.
    #[arg(long, default_value_t = 4)]
    rps_streams: usize,
    /// Seconds per HTTP run.
    #[arg(long, default_value_t = 10)]
    rps_secs: u64,
    /// Rounds of the three HTTP paths (order rotates each round).
    #[arg(long, default_value_t = 2)]
    rps_rounds: usize,
    /// Skip the HTTP requests-per-second figures.
    #[arg(long)]
    no_rps: bool,
    /// The whole run's limit in seconds; past it everything is stopped.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// Directory holding a release `gangway-relay` (default: next to this
    /// binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Also write the report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep the run's directory (configs, logs, audit lines).
    #[arg(long)]
    keep: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sessionbench: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let limit = Duration::from_secs(args.timeout);
    let result = rt.block_on(async {
        tokio::select! {
            r = tokio::time::timeout(limit, run(args)) => {
                r.unwrap_or_else(|_| Err(anyhow::anyhow!("not done within --timeout ({limit:?}); stopped")))
            }
            s = procs::stop_signal() => bail!("{s}: stopping everything"),
        }
    });
    // Sessions and processes were owned by `run`'s future: stopped by now.
    rt.shutdown_timeout(Duration::from_secs(5));
    procs::exit_code("sessionbench", result)
}

async fn run(args: Args) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: sessionbench is a debug build; the client side will be slow (use --release)"
        );
    }
    if args.streams == 0 || args.streams > 4000 {
        bail!("--streams must be from 1 to 4000 (the relay's cap is at most 4096)");
    }
    if args.sessions == 0 || args.rps_sessions == 0 || args.rps_streams == 0 {
        bail!("--sessions, --rps-sessions and --rps-streams must be at least 1");
    }
    let mut tools = vec!["nginx"];
    if !args.no_rps {
        tools.push("haproxy");
    }
    for tool in tools {
        if which(tool).is_none() && !Path::new(&format!("/usr/sbin/{tool}")).exists() {
            bail!("{tool} not found; install it: apt-get install -y {tool}");
        }
    }
    let (soft, hard) = sessions::raise_nofile().context("raising RLIMIT_NOFILE")?;
    // Client sockets, the relay's, the backends': about twice the sessions.
    let needed = (args.sessions + 2 * args.streams + 512) as u64;
    if soft < needed {
        bail!(
            "open-file limit {soft} (hard {hard}) is below the {needed} this run needs; lower --sessions or raise the hard limit"
        );
    }
    let relay_bin = relay_binary(args.bin_dir.as_deref())?;
    let settings = Settings {
        sessions: args.sessions,
        checkpoint: args.checkpoint,
        concurrency: args.concurrency,
        idle: Duration::from_secs(args.idle_secs),
        streams: args.streams,
        stream_bytes: args.stream_bytes,
        active: Duration::from_secs(args.active_secs),
        rps_sessions: args.rps_sessions,
        rps_streams: args.rps_streams,
        rps: Duration::from_secs(args.rps_secs),
        rps_rounds: args.rps_rounds.max(1),
    };

    let dir = tempfile::Builder::new()
        .prefix("gangway-sessionbench-")
        .tempdir()?;
    let creds = pki::write(dir.path())?;
    let machine_info = machine::describe();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("no workspace directory")?;
    let versions = vec![
        ("gangway source", machine::source_revision(workspace)),
        ("gangway-relay", version_of(&relay_bin, &["--version"])),
        ("nginx", version_of(Path::new("nginx"), &["-v"])),
        ("haproxy", version_of(Path::new("haproxy"), &["-v"])),
    ];
    eprintln!(
        "starting nginx and the echo server in {}",
        dir.path().display()
    );
    let upstreams = WebAndEcho::start(dir.path()).await?;
    let started = std::time::Instant::now();

    let mut relay = sessions::start_relay(
        &relay_bin,
        &creds,
        &upstreams,
        &dir.path().join("relay0"),
        "relay0",
        &settings,
        false,
    )
    .await?;
    eprintln!(
        "relay pid {} on {}; opening {} sessions, {} at a time",
        relay.proc.pid(),
        relay.addr,
        settings.sessions,
        settings.concurrency
    );
    let (idle, held) = sessions::idle_sessions(&mut relay, &creds, &settings).await?;
    let streams = sessions::active_streams(&mut relay, &creds, &settings).await;
    relay.proc.check_alive()?;
    let with_everything = relay.proc.rss_kib()?;
    drop(held);
    drop(relay);
    let load_mid = machine::loadavg();
    let rps = if args.no_rps {
        None
    } else {
        Some(
            sessions::requests_per_second(&relay_bin, &creds, &upstreams, dir.path(), &settings)
                .await,
        )
    };
    drop(upstreams);

    let mut r = String::new();
    writeln!(r, "## Machine\n")?;
    for (k, v) in machine_info {
        writeln!(r, "- {k}: {v}")?;
    }
    writeln!(r, "- load average after the sessions phases: {load_mid}")?;
    writeln!(r, "- load average at end: {}", machine::loadavg())?;
    writeln!(r, "- open-file limit: {soft} (hard {hard})")?;
    writeln!(r, "\n## Versions\n")?;
    for (k, v) in versions {
        writeln!(r, "- {k}: {v}")?;
    }
    writeln!(
        r,
        "\nWhole run took {:.0} s.\n",
        started.elapsed().as_secs_f64()
    )?;
    idle_report(&mut r, &idle, &settings)?;
    match &streams {
        Ok(s) => stream_report(&mut r, s, &settings)?,
        Err(e) => writeln!(r, "\nActive streams: failed: {e:#}")?,
    }
    writeln!(
        r,
        "\nRelay RSS with the {} idle sessions and the streams session: {:.1} MiB.",
        idle.opened,
        mib(with_everything)
    )?;
    match &rps {
        None => {}
        Some(Ok(f)) => rps_report(&mut r, f, &settings)?,
        Some(Err(e)) => writeln!(r, "\nRequests per second: failed: {e:#}")?,
    }
    println!("{r}");
    if let Some(out) = &args.out {
        std::fs::write(out, &r).with_context(|| format!("writing {}", out.display()))?;
    }
    if args.keep {
        let kept = dir.keep();
        eprintln!("run directory kept: {}", kept.display());
    }
    streams?;
    if let Some(rps) = rps {
        rps?;
    }
    Ok(())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn per(delta_kib: i64, n: usize) -> f64 {
    delta_kib as f64 / n.max(1) as f64
}

fn idle_report(r: &mut String, f: &IdleFigures, s: &Settings) -> anyhow::Result<()> {
    writeln!(r, "### Idle sessions\n")?;
    writeln!(
        r,
        "{} sessions asked for, {} at a time; {} opened, {} failed, in {:.1} s ({:.0} sessions/s); \
{} still open after {:.1} s idle. The bench's own RSS (all the clients) was {:.0} MiB.\n",
        s.sessions,
        s.concurrency,
        f.opened,
        f.failed,
        f.open_time.as_secs_f64(),
        f.opened as f64 / f.open_time.as_secs_f64(),
        f.still_open,
        f.idle_window.as_secs_f64(),
        mib(f.client_rss_kib)
    )?;
    for e in &f.first_errors {
        writeln!(r, "- error: {e}")?;
    }
    writeln!(r, "| step | relay RSS | per session since the base |")?;
    writeln!(r, "| --- | --- | --- |")?;
    let base = f.base.rss_kib as i64;
    writeln!(
        r,
        "| base: one warm session, one stream used | {:.1} MiB | — |",
        mib(f.base.rss_kib)
    )?;
    if let Some((n, c)) = f.checkpoint {
        writeln!(
            r,
            "| {n} sessions open | {:.1} MiB | {:.1} KiB |",
            mib(c.rss_kib),
            per(c.rss_kib as i64 - base, n)
        )?;
    }
    writeln!(
        r,
        "| {} sessions open | {:.1} MiB | **{:.1} KiB** |",
        f.opened,
        mib(f.after_open.rss_kib),
        per(f.after_open.rss_kib as i64 - base, f.opened)
    )?;
    writeln!(
        r,
        "| after {:.0} s idle | {:.1} MiB | {:.1} KiB |",
        f.idle_window.as_secs_f64(),
        mib(f.after_idle.rss_kib),
        per(f.after_idle.rss_kib as i64 - base, f.opened)
    )?;
    if let Some((n, c)) = f.checkpoint {
        writeln!(
            r,
            "\nBetween {n} and {} sessions: {:.1} KiB per session.",
            f.opened,
            per(
                f.after_open.rss_kib as i64 - c.rss_kib as i64,
                f.opened.saturating_sub(n)
            )
        )?;
    }
    let open_cpu = f.after_open.cpu_secs - f.base.cpu_secs;
    let idle_cpu = f.after_idle.cpu_secs - f.after_open.cpu_secs;
    writeln!(
        r,
        "\nRelay CPU opening them: {:.2} s ({:.0} µs per session). \
Over {:.1} s idle: {:.2} s ({:.1} % of one core; agents ping every 15 s).",
        open_cpu,
        open_cpu * 1e6 / f.opened.max(1) as f64,
        f.idle_window.as_secs_f64(),
        idle_cpu,
        idle_cpu * 100.0 / f.idle_window.as_secs_f64()
    )?;
    Ok(())
}

fn stream_report(r: &mut String, f: &StreamFigures, s: &Settings) -> anyhow::Result<()> {
    writeln!(r, "\n### Active streams (one session)\n")?;
    writeln!(
        r,
        "{} tcp streams to the echo backend, opened one after another in {:.1} s, \
each echoing {} KiB before being held; then all echoing 16 KiB round trips at once.\n",
        f.streams,
        f.open_time.as_secs_f64(),
        s.stream_bytes / 1024
    )?;
    for e in &f.errors {
        writeln!(r, "- error: {e}")?;
    }
    let before = f.before.rss_kib as i64;
    writeln!(r, "| step | relay RSS | per stream |")?;
    writeln!(r, "| --- | --- | --- |")?;
    writeln!(
        r,
        "| the session, before streams | {:.1} MiB | — |",
        mib(f.before.rss_kib)
    )?;
    writeln!(
        r,
        "| {} streams held | {:.1} MiB | **{:.1} KiB** |",
        f.streams,
        mib(f.held.rss_kib),
        per(f.held.rss_kib as i64 - before, f.streams)
    )?;
    writeln!(
        r,
        "| all echoing, peak | {:.1} MiB | {:.1} KiB |",
        mib(f.active_peak_rss_kib),
        per(f.active_peak_rss_kib as i64 - before, f.streams)
    )?;
    writeln!(
        r,
        "| all echoing, at the end | {:.1} MiB | {:.1} KiB |",
        mib(f.active_end.rss_kib),
        per(f.active_end.rss_kib as i64 - before, f.streams)
    )?;
    let cpu = f.active_end.cpu_secs - f.held.cpu_secs;
    let secs = f.active_window.as_secs_f64();
    let gb = f.active_bytes as f64 * 2.0 / 1e9;
    writeln!(
        r,
        "\nWhile echoing ({secs:.1} s): {:.1} MiB/s each way, relay CPU {cpu:.2} s \
({:.0} % of one core, {:.2} s per GB through the relay, both ways counted). \
Opening the streams cost {:.2} s of relay CPU.",
        f.active_bytes as f64 / secs / (1024.0 * 1024.0),
        cpu * 100.0 / secs,
        cpu / gb.max(1e-9),
        f.held.cpu_secs - f.before.cpu_secs
    )?;
    Ok(())
}

fn rps_report(r: &mut String, f: &RpsFigures, s: &Settings) -> anyhow::Result<()> {
    let runs = &f.runs;
    writeln!(r, "\n### HTTP requests per second\n")?;
    writeln!(
        r,
        "`kind = \"http\"` service (the relay parses each request, adds identity headers, \
writes an audit line) to nginx, a 1 KiB file; {} sessions × {} keep-alive streams, \
one request in flight per stream, {} s per run, {} round(s) in rotating order. \
HAProxy is `mode tcp` with `send-proxy-v2` and health checks; the relays trust its source address.\n",
        s.rps_sessions,
        s.rps_streams,
        s.rps.as_secs(),
        s.rps_rounds
    )?;
    writeln!(
        r,
        "| path | requests/s (median) | relay CPU µs/request | HAProxy CPU µs/request | errors |"
    )?;
    writeln!(r, "| --- | --- | --- | --- | --- |")?;
    let mut base = None;
    for path in ["1 relay direct", "HAProxy + 1 relay", "HAProxy + 2 relays"] {
        let these: Vec<&RpsRun> = runs.iter().filter(|x| x.path == path).collect();
        let rate = median(&these.iter().map(|x| x.per_sec()).collect::<Vec<_>>());
        let cpu = median(
            &these
                .iter()
                .filter(|x| x.requests > 0)
                .map(|x| x.relay_cpu * 1e6 / x.requests as f64)
                .collect::<Vec<_>>(),
        );
        let hcpu = median(
            &these
                .iter()
                .filter(|x| x.requests > 0)
                .filter_map(|x| Some(x.haproxy_cpu? * 1e6 / x.requests as f64))
                .collect::<Vec<_>>(),
        );
        let errors: usize = these.iter().map(|x| x.errors.len()).sum();
        let ratio = match (base, rate) {
            (None, Some(v)) => {
                base = Some(v);
                String::new()
            }
            (Some(b), Some(v)) => format!(" ({:.2}×)", v / b),
            _ => String::new(),
        };
        writeln!(
            r,
            "| {path} | {}{ratio} | {} | {} | {errors} |",
            fmt(rate, 0),
            fmt(cpu, 1),
            fmt(hcpu, 1)
        )?;
    }
    let split: Vec<String> = f
        .per_relay
        .iter()
        .map(|(name, n, b)| format!("{name} {n} (audit `peer` HAProxy's address: {b})"))
        .collect();
    writeln!(
        r,
        "\nSessions each relay opened over all runs, from its audit file: {}.",
        split.join(", ")
    )?;
    writeln!(r, "\nEvery run:\n")?;
    for x in runs {
        writeln!(
            r,
            "- round {} {}: {} requests in {:.1} s = {:.0}/s, relay CPU {:.2} s{}{}",
            x.round,
            x.path,
            x.requests,
            x.elapsed.as_secs_f64(),
            x.per_sec(),
            x.relay_cpu,
            x.haproxy_cpu
                .map(|h| format!(", HAProxy CPU {h:.2} s"))
                .unwrap_or_default(),
            if x.errors.is_empty() {
                String::new()
            } else {
                format!("; errors: {}", x.errors.join("; "))
            }
        )?;
    }
    Ok(())
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "—".into())
}

/// The release `gangway-relay`: in `--bin-dir`, or next to this binary.
fn relay_binary(bin_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = match bin_dir {
        Some(d) => d.to_path_buf(),
        None => std::env::current_exe()?
            .parent()
            .context("executable has no directory")?
            .to_path_buf(),
    };
    let relay = dir.join("gangway-relay");
    if !relay.is_file() {
        bail!(
            "{} not found; build it: cargo build --release -p gangway-relay (or pass --bin-dir)",
            relay.display()
        );
    }
    Ok(relay)
}
