//! `gangway-bench`: direct vs Gangway vs wstunnel, side by side, on loopback.
//!
//! ```text
//! cargo run --release -p gangway-bench -- --rounds 3
//! cargo run --release -p gangway-bench -- --rounds 1 --only git --paths direct,gangway
//! ```
//!
//! Figure groups (`--only`, default all): `bulk` (iperf3 up and down),
//! `http` (wrk, 1 and 32 connections, plain TCP and Gangway's
//! `kind = "http"`), `conns` (new connections per second), `rss` (memory
//! idle, with connections held, after the load) and `git` (`git clone
//! --bare` of a generated 200 MiB repository over smart HTTP, wall time and
//! tunnel CPU). Skipped groups are absent from the tables.
//!
//! Needs nginx and iperf3 on PATH, wrk for `http`, git and lighttpd for
//! `git`, and wstunnel on PATH or in ~/.cargo/bin (the wstunnel column is
//! left out, with the reason, if it is missing; `--paths direct,gangway`
//! leaves it out on purpose). Builds the release `gangway` and
//! `gangway-relay` binaries first unless `--bin-dir` names them. Prints a
//! markdown report on stdout and progress on stderr; every process it
//! starts is stopped when it ends, also on Ctrl-C or SIGTERM.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use gangway_bench::git::{self, GitRepo};
use gangway_bench::load;
use gangway_bench::machine::{self, version_of, which};
use gangway_bench::paths::{self, GangwayBins, PathKind, RunningPath};
use gangway_bench::pki;
use gangway_bench::procs;
use gangway_bench::report::{Figure, Labels, Results};
use gangway_bench::upstream::{Upstreams, SMALL_FILE_BYTES, SMALL_FILE_PATH};

#[derive(Parser, Debug)]
#[command(
    about = "Direct vs Gangway vs wstunnel on loopback: throughput, HTTP, connection rate, memory, git clone"
)]
struct Args {
    /// Rounds; each figure is the median over rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per iperf3 and wrk run.
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// Seconds per connection-rate run.
    #[arg(long, default_value_t = 3)]
    conn_secs: u64,
    /// Upper bound on connections per connection-rate run.
    #[arg(long, default_value_t = 20_000)]
    max_conns: u64,
    /// Parallel workers in the second connection-rate run.
    #[arg(long, default_value_t = 16)]
    par: usize,
    /// Connections held open while memory is read.
    #[arg(long, default_value_t = 100)]
    held: usize,
    /// Directory holding release `gangway` and `gangway-relay`; when given,
    /// nothing is built.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The wstunnel binary (default: PATH, then ~/.cargo/bin).
    #[arg(long)]
    wstunnel: Option<PathBuf>,
    /// Paths to measure, comma-separated (direct, gangway, wstunnel).
    #[arg(long, value_delimiter = ',', default_value = "direct,gangway,wstunnel")]
    paths: Vec<String>,
    /// Figure groups to measure, comma-separated; the others are skipped
    /// (and `git` skipped means no repository is generated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "bulk,http,conns,rss,git"
    )]
    only: Vec<Group>,
    /// Also write the report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep the run's directory (configs, logs, audit lines) and print its path.
    #[arg(long)]
    keep: bool,
}

/// A group of figures, measured together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Group {
    /// iperf3 upload and download, and tunnel CPU per GB.
    Bulk,
    /// wrk with 1 and 32 connections, and tunnel CPU per request.
    Http,
    /// new connections per second, 1 at a time and in parallel.
    Conns,
    /// tunnel memory: idle, with `--held` connections open, after the load.
    Rss,
    /// `git clone --bare` of a generated 200 MiB repository over smart HTTP.
    Git,
}

impl Args {
    fn runs(&self, group: Group) -> bool {
        self.only.contains(&group)
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gangway-bench: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        tokio::select! {
            r = run(args) => r,
            s = procs::stop_signal() => bail!("{s}: stopping everything"),
        }
    });
    // Every Proc was owned by `run`'s future and is stopped by now.
    procs::exit_code("gangway-bench", result)
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if cfg!(debug_assertions) {
        eprintln!("warning: gangway-bench is a debug build; its echo server and connection loop will be slow (use --release)");
    }
    let mut tools = vec!["nginx", "iperf3"];
    if args.runs(Group::Http) {
        tools.push("wrk");
    }
    for tool in tools {
        if which(tool).is_none() {
            bail!("{tool} not found on PATH; install it: apt-get install -y {tool}");
        }
    }
    let mut paths_run = Vec::new();
    for p in &args.paths {
        paths_run.push(match p.trim() {
            "direct" => PathKind::Direct,
            "gangway" => PathKind::Gangway,
            "wstunnel" => PathKind::Wstunnel,
            other => bail!("--paths: unknown path {other:?} (direct, gangway, wstunnel)"),
        });
    }
    paths_run.sort();
    paths_run.dedup();
    let bins = gangway_bins(args.bin_dir.as_deref())?;
    let mut notes = Vec::new();
    let wstunnel = if !paths_run.contains(&PathKind::Wstunnel) {
        None
    } else {
        paths_run.retain(|p| *p != PathKind::Wstunnel);
        match args.wstunnel.clone().or_else(|| which("wstunnel")) {
            Some(w) => {
                paths_run.push(PathKind::Wstunnel);
                Some(w)
            }
            None => {
                notes.push("wstunnel left out: not found on PATH or in ~/.cargo/bin".to_string());
                None
            }
        }
    };

    let dir = tempfile::Builder::new()
        .prefix("gangway-bench-")
        .tempdir()?;
    let creds = pki::write(dir.path())?;
    let machine_info = machine::describe();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("no workspace directory")?;
    let mut versions = vec![
        ("gangway source", machine::source_revision(workspace)),
        ("gangway", version_of(&bins.agent, &["--version"])),
        ("gangway-relay", version_of(&bins.relay, &["--version"])),
    ];
    if let Some(w) = &wstunnel {
        versions.push(("wstunnel", version_of(w, &["--version"])));
    }
    versions.push(("nginx", version_of(Path::new("nginx"), &["-v"])));
    versions.push(("iperf3", version_of(Path::new("iperf3"), &["--version"])));
    if args.runs(Group::Http) {
        versions.push(("wrk", version_of(Path::new("wrk"), &["--version"])));
    }
    if args.runs(Group::Git) {
        versions.push(("git", version_of(Path::new("git"), &["--version"])));
        let lighttpd = which("lighttpd").unwrap_or_else(|| "/usr/sbin/lighttpd".into());
        versions.push(("lighttpd", version_of(&lighttpd, &["-v"])));
    }

    eprintln!(
        "starting upstreams (nginx, iperf3 -s, echo{}) in {}",
        if args.runs(Group::Git) {
            ", a generated git repository behind lighttpd"
        } else {
            ""
        },
        dir.path().display()
    );
    let upstreams = Upstreams::start(dir.path(), args.runs(Group::Git)).await?;
    let git_repo = upstreams.git.as_ref().map(|g| g.repo.clone());
    if let Some(r) = &git_repo {
        eprintln!(
            "git repository: {} commits, {} objects, one {:.1} MiB pack, generated in {:.1} s",
            git::COMMITS,
            r.objects,
            r.pack_bytes as f64 / (1024.0 * 1024.0),
            r.generated_in.as_secs_f64()
        );
    }
    let started = Instant::now();
    let mut results = Results::default();
    for round in 0..args.rounds {
        // Rotate the order so no path always runs first (or last).
        let mut order = paths_run.clone();
        order.rotate_left(round % paths_run.len());
        for kind in order {
            eprintln!("[round {}/{}] {}", round + 1, args.rounds, kind.label());
            let rdir = dir
                .path()
                .join(format!("round{}-{}", round + 1, kind.label()));
            std::fs::create_dir_all(&rdir)?;
            let path = match kind {
                PathKind::Direct => Ok(RunningPath::direct(upstreams.addrs)),
                PathKind::Gangway => {
                    paths::start_gangway(&bins, &creds, upstreams.addrs, &rdir).await
                }
                PathKind::Wstunnel => {
                    let w = wstunnel.as_deref().expect("wstunnel path");
                    paths::start_wstunnel(w, &creds, upstreams.addrs, &rdir).await
                }
            };
            match path {
                Ok(mut path) => {
                    measure(&mut path, &args, git_repo.as_ref(), &rdir, &mut results).await
                }
                Err(e) => results.error(kind, format!("round {}: did not start: {e:#}", round + 1)),
            }
            // The path (and its processes) is dropped, so stopped, here.
        }
    }
    drop(upstreams);

    let labels = Labels {
        held: args.held,
        par: args.par,
    };
    let mut report = String::new();
    report.push_str("## Machine\n\n");
    for (k, v) in machine_info {
        report.push_str(&format!("- {k}: {v}\n"));
    }
    report.push_str(&format!("- load average at end: {}\n", machine::loadavg()));
    report.push_str("\n## Versions\n\n");
    for (k, v) in versions {
        report.push_str(&format!("- {k}: {v}\n"));
    }
    let mut setup = vec![format!("{} round(s)", args.rounds)];
    if args.runs(Group::Bulk) || args.runs(Group::Http) {
        setup.push(format!("{} s per iperf3/wrk run", args.secs));
    }
    if args.runs(Group::Conns) {
        setup.push(format!(
            "{} s per connection-rate run (at most {} connections)",
            args.conn_secs, args.max_conns
        ));
    }
    if args.runs(Group::Http) {
        setup.push(format!(
            "{SMALL_FILE_BYTES}-byte static file from nginx ({SMALL_FILE_PATH})"
        ));
    }
    if let Some(r) = &git_repo {
        setup.push(format!(
            "git clone of a bare repository of {} commits each adding a {} MiB random file \
({} objects, one {:.1} MiB pack, generated in {:.1} s) from lighttpd + git http-backend, \
through Gangway as a `kind = \"http\"` service",
            git::COMMITS,
            git::FILE_BYTES / (1024 * 1024),
            r.objects,
            r.pack_bytes as f64 / (1024.0 * 1024.0),
            r.generated_in.as_secs_f64()
        ));
    }
    report.push_str(&format!(
        "\n## Figures\n\n{}; whole run took {:.0} s. \
Ratios divide the medians: above 1 is more for throughput and rates, and worse for latency, \
clone time and memory.\n\n",
        setup.join(", "),
        started.elapsed().as_secs_f64()
    ));
    report.push_str(&results.table(&paths_run, labels));
    for n in &notes {
        report.push_str(&format!("\n- {n}"));
    }
    let errors = results.error_lines();
    if !errors.is_empty() {
        report.push_str("\n\nErrors and anomalies:\n\n");
        for e in &errors {
            report.push_str(&format!("- {e}\n"));
        }
    }
    report.push_str("\n\n### Every round\n\n");
    report.push_str(&results.rounds_table(&paths_run, labels));
    println!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
    }
    if args.keep {
        let kept = dir.keep();
        eprintln!("run directory kept: {}", kept.display());
    }
    Ok(())
}

/// Runs the selected workloads against one path, recording figures and
/// errors. `scratch` is this round's directory (git clones go there).
async fn measure(
    path: &mut RunningPath,
    args: &Args,
    git_repo: Option<&GitRepo>,
    scratch: &Path,
    results: &mut Results,
) {
    // Let start-up settle before reading idle memory or measuring.
    tokio::time::sleep(Duration::from_secs(1)).await;
    if args.runs(Group::Rss) {
        measure_rss_idle_and_held(path, args, results).await;
    }
    if args.runs(Group::Bulk) {
        measure_bulk(path, args, results).await;
    }
    if args.runs(Group::Http) {
        measure_http(path, args, results).await;
    }
    if args.runs(Group::Conns) {
        measure_conns(path, args, results).await;
    }
    if let Some(repo) = git_repo {
        measure_git(path, repo, scratch, results).await;
    }
    if args.runs(Group::Rss) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        record_rss(
            path,
            results,
            Figure::RssAfterClient,
            Figure::RssAfterServer,
        );
    }
    if let Err(e) = path.check_alive() {
        results.error(path.kind, format!("{e:#}"));
    }
}

async fn measure_rss_idle_and_held(path: &RunningPath, args: &Args, results: &mut Results) {
    record_rss(path, results, Figure::RssIdleClient, Figure::RssIdleServer);
    match load::hold(path.addrs.echo, args.held).await {
        Ok(held) => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            record_rss(path, results, Figure::RssHeldClient, Figure::RssHeldServer);
            drop(held);
        }
        Err(e) => results.error(
            path.kind,
            format!("holding {} connections: {e:#}", args.held),
        ),
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
}

async fn measure_bulk(path: &RunningPath, args: &Args, results: &mut Results) {
    let kind = path.kind;
    let a = path.addrs;

    for (figure, cpu, reverse) in [
        (Figure::Upload, Figure::CpuUpload, false),
        (Figure::Download, Figure::CpuDownload, true),
    ] {
        let cpu0 = tunnel_cpu(path, results);
        match load::iperf3(a.iperf, args.secs, reverse).await {
            Ok(r) => {
                let per_gb = cpu_used(path, results, cpu0).map(|c| c / (r.bytes as f64 / 1e9));
                eprintln!(
                    "  {:<9} {figure:?}: {:.2} Gbit/s{}",
                    kind.label(),
                    r.gbps,
                    per_gb
                        .map(|c| format!(", tunnel CPU {c:.2} s/GB"))
                        .unwrap_or_default()
                );
                results.add(figure, kind, r.gbps);
                if let Some(c) = per_gb {
                    results.add(cpu, kind, c);
                }
            }
            Err(e) => results.error(kind, format!("{figure:?}: {e:#}")),
        }
    }
}

async fn measure_http(path: &RunningPath, args: &Args, results: &mut Results) {
    let kind = path.kind;
    let a = path.addrs;
    let mut runs = vec![
        (
            a.web,
            1,
            [Figure::Rps1, Figure::P50x1, Figure::P99x1, Figure::CpuReq1],
        ),
        (
            a.web,
            32,
            [
                Figure::Rps32,
                Figure::P50x32,
                Figure::P99x32,
                Figure::CpuReq32,
            ],
        ),
    ];
    if let Some(web_http) = a.web_http {
        runs.push((
            web_http,
            1,
            [
                Figure::ProxyRps1,
                Figure::ProxyP50x1,
                Figure::ProxyP99x1,
                Figure::CpuProxyReq1,
            ],
        ));
        runs.push((
            web_http,
            32,
            [
                Figure::ProxyRps32,
                Figure::ProxyP50x32,
                Figure::ProxyP99x32,
                Figure::CpuProxyReq32,
            ],
        ));
    }
    // The local door wants its credential on every request of the
    // `kind = "http"` service: a wrk script sets the header (0600 file,
    // not a process argument).
    let door_script = match (&path.door, a.web_http) {
        (Some((socket, program)), Some(web_http)) => match door_script(program, socket, web_http) {
            Ok(p) => Some(p),
            Err(e) => {
                results.error(kind, format!("the local door's credential: {e:#}"));
                None
            }
        },
        _ => None,
    };
    for (web, conns, [rps, p50, p99, cpu]) in runs {
        let url = format!("http://{web}{SMALL_FILE_PATH}");
        let script = door_script
            .as_ref()
            .filter(|_| Some(web) == a.web_http)
            .map(|f| f.path());
        let what = if Some(web) == a.web_http {
            " (kind = http)"
        } else {
            ""
        };
        let cpu0 = tunnel_cpu(path, results);
        match load::wrk(&url, conns, args.secs, script).await {
            Ok(r) => {
                let per_req = cpu_per_op(path, results, cpu0, r.requests, cpu);
                eprintln!(
                    "  {:<9} wrk -c{conns}{what}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms{}",
                    kind.label(),
                    r.requests_per_sec,
                    r.p50_ms,
                    r.p99_ms,
                    cpu_note(per_req, "req")
                );
                results.add(rps, kind, r.requests_per_sec);
                results.add(p50, kind, r.p50_ms);
                results.add(p99, kind, r.p99_ms);
                if r.errors > 0 {
                    results.error(kind, format!("wrk -c{conns}{what}: {} errors", r.errors));
                }
            }
            Err(e) => results.error(kind, format!("wrk -c{conns}{what}: {e:#}")),
        }
    }
}

/// A wrk script that sends the local door's credential for `addr`.
fn door_script(
    program: &Path,
    socket: &Path,
    addr: std::net::SocketAddr,
) -> anyhow::Result<tempfile::NamedTempFile> {
    use std::io::Write;
    let auth = gangway_tests::gangway::door_auth_by(program, socket, addr)?;
    let mut f = tempfile::NamedTempFile::new()?;
    writeln!(f, "wrk.headers[\"Authorization\"] = \"{auth}\"")?;
    f.flush()?;
    Ok(f)
}

async fn measure_conns(path: &RunningPath, args: &Args, results: &mut Results) {
    let kind = path.kind;
    let a = path.addrs;
    let limit = Duration::from_secs(args.conn_secs);
    for (workers, figure, cpu) in [
        (1, Figure::ConnSeq, Figure::CpuConnSeq),
        (args.par, Figure::ConnPar, Figure::CpuConnPar),
    ] {
        let cpu0 = tunnel_cpu(path, results);
        match load::conn_rate(a.echo, workers, limit, args.max_conns).await {
            Ok(r) => {
                let per_conn = cpu_per_op(path, results, cpu0, r.completed, cpu);
                eprintln!(
                    "  {:<9} new conns x{workers}: {:.0}/s ({} done, {} errors){}",
                    kind.label(),
                    r.per_sec,
                    r.completed,
                    r.errors,
                    cpu_note(per_conn, "conn")
                );
                results.add(figure, kind, r.per_sec);
                if r.errors > 0 {
                    results.error(kind, format!("new conns x{workers}: {} errors", r.errors));
                }
            }
            Err(e) => results.error(kind, format!("new conns x{workers}: {e:#}")),
        }
    }
}

/// One `git clone --bare` through the path: wall time and tunnel CPU.
async fn measure_git(path: &RunningPath, repo: &GitRepo, scratch: &Path, results: &mut Results) {
    let kind = path.kind;
    let Some(addr) = path.addrs.git else {
        results.error(kind, "git clone: no git service on this path".into());
        return;
    };
    let cpu0 = tunnel_cpu(path, results);
    let env = match &path.door {
        Some((socket, program)) => gangway_tests::gangway::git_helper_env_by(program, socket),
        None => Vec::new(),
    };
    match git::clone(repo, addr, scratch, &env).await {
        Ok(took) => {
            let secs = took.as_secs_f64();
            let cpu = cpu_used(path, results, cpu0);
            eprintln!(
                "  {:<9} git clone: {secs:.2} s ({:.0} MiB/s){}",
                kind.label(),
                repo.pack_bytes as f64 / (1024.0 * 1024.0) / secs,
                cpu.map(|c| format!(", tunnel CPU {c:.2} s"))
                    .unwrap_or_default()
            );
            results.add(Figure::GitClone, kind, secs);
            if let Some(c) = cpu {
                results.add(Figure::CpuGitClone, kind, c);
            }
        }
        Err(e) => results.error(kind, format!("git clone: {e:#}")),
    }
}

/// The tunnel processes' CPU seconds so far (None for direct).
fn tunnel_cpu(path: &RunningPath, results: &mut Results) -> Option<f64> {
    match path.cpu_secs() {
        Ok(c) => c,
        Err(e) => {
            results.error(path.kind, format!("reading CPU time: {e:#}"));
            None
        }
    }
}

/// CPU seconds the tunnel processes used since `before`.
fn cpu_used(path: &RunningPath, results: &mut Results, before: Option<f64>) -> Option<f64> {
    Some(tunnel_cpu(path, results)? - before?)
}

/// The tunnel's CPU µs per operation since `before`, over `ops` operations
/// (none when there were none), recorded as `figure`.
fn cpu_per_op(
    path: &RunningPath,
    results: &mut Results,
    before: Option<f64>,
    ops: u64,
    figure: Figure,
) -> Option<f64> {
    let per_op = cpu_used(path, results, before)
        .filter(|_| ops > 0)
        .map(|c| c * 1e6 / ops as f64);
    if let Some(c) = per_op {
        results.add(figure, path.kind, c);
    }
    per_op
}

/// `, tunnel CPU N µs/<unit>`, or nothing without a figure.
fn cpu_note(per_op: Option<f64>, unit: &str) -> String {
    per_op
        .map(|c| format!(", tunnel CPU {c:.1} µs/{unit}"))
        .unwrap_or_default()
}

fn record_rss(path: &RunningPath, results: &mut Results, client: Figure, server: Figure) {
    match path.rss_kib() {
        Ok(Some((c, s))) => {
            results.add(client, path.kind, c as f64 / 1024.0);
            results.add(server, path.kind, s as f64 / 1024.0);
        }
        Ok(None) => {}
        Err(e) => results.error(path.kind, format!("reading RSS: {e:#}")),
    }
}

/// The release `gangway` and `gangway-relay`: from `--bin-dir`, or built
/// now with cargo into the target directory this binary runs from.
fn gangway_bins(bin_dir: Option<&Path>) -> anyhow::Result<GangwayBins> {
    let dir = match bin_dir {
        Some(d) => d.to_path_buf(),
        None => {
            let exe = std::env::current_exe()?;
            let exe_dir = exe.parent().context("executable has no directory")?;
            let target = match exe_dir.file_name().and_then(|n| n.to_str()) {
                Some("release" | "debug") => exe_dir.parent().context("no target directory")?,
                _ => bail!(
                    "cannot tell the cargo target directory from {}; pass --bin-dir",
                    exe.display()
                ),
            };
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .context("no workspace directory")?;
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            eprintln!("building release gangway and gangway-relay");
            let status = std::process::Command::new(cargo)
                .current_dir(workspace)
                .args(["build", "--release", "--bins"])
                .args(["-p", "gangway-cli", "-p", "gangway-relay"])
                .env("CARGO_TARGET_DIR", target)
                .status()
                .context("running cargo build")?;
            if !status.success() {
                bail!("cargo build of gangway and gangway-relay failed");
            }
            target.join("release")
        }
    };
    let bins = GangwayBins {
        agent: dir.join("gangway"),
        relay: dir.join("gangway-relay"),
    };
    for b in [&bins.agent, &bins.relay] {
        if !b.is_file() {
            bail!("{} not found", b.display());
        }
    }
    Ok(bins)
}
