//! `muxbench`: yamux vs h2 over one TLS WebSocket on loopback.
//!
//! ```text
//! cargo run --release -p gangway-bench --bin muxbench -- --rounds 3
//! ```

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use gangway_bench::machine;
use gangway_bench::mux::{self, Figures, Kind, Settings};

#[derive(Parser, Debug)]
#[command(about = "yamux vs h2 over TLS + WebSocket on loopback: bulk, 32 streams, open+echo")]
struct Args {
    /// What to run, comma-separated: raw, yamux, h2.
    #[arg(long, value_delimiter = ',', default_value = "raw,yamux,h2")]
    kinds: Vec<String>,
    /// Rounds; each figure is the median over rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of single-stream bulk.
    #[arg(long, default_value_t = 5)]
    bulk_secs: u64,
    /// Concurrent streams in the aggregate run.
    #[arg(long, default_value_t = 32)]
    streams: usize,
    /// Seconds of the aggregate run.
    #[arg(long, default_value_t = 5)]
    multi_secs: u64,
    /// Seconds of the sequential open + echo loop.
    #[arg(long, default_value_t = 2)]
    echo_secs: u64,
    /// Bytes per write.
    #[arg(long, default_value_t = 64 * 1024)]
    chunk: usize,
    /// h2 max frame size (16384 is the protocol default).
    #[arg(long, default_value_t = 16 * 1024)]
    h2_frame_size: u32,
    /// h2 per-stream window.
    #[arg(long, default_value_t = 4 << 20)]
    h2_stream_window: u32,
    /// h2 connection window.
    #[arg(long, default_value_t = 16 << 20)]
    h2_conn_window: u32,
    /// Run every (round, mux) in the same process instead of a fresh one
    /// each. The allocator's state then carries over from run to run.
    #[arg(long)]
    same_process: bool,
    /// Internal: run one mux once and print its figures as JSON.
    #[arg(long, hide = true)]
    one: Option<String>,
}

fn parse_kind(k: &str) -> anyhow::Result<Kind> {
    Ok(match k.trim() {
        "raw" => Kind::Raw,
        "yamux" => Kind::Yamux,
        "h2" => Kind::H2,
        other => anyhow::bail!("unknown mux {other:?} (raw, yamux, h2)"),
    })
}

fn kind_arg(kind: Kind) -> &'static str {
    match kind {
        Kind::Raw => "raw",
        Kind::Yamux => "yamux",
        Kind::H2 => "h2",
    }
}

/// Runs one mux once in a fresh copy of this program, so each measurement
/// starts from a fresh heap, as a freshly started agent and relay do.
fn run_in_child(kind: Kind) -> anyhow::Result<Figures> {
    let mut args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--same-process")
        .collect();
    args.extend(["--one".to_string(), kind_arg(kind).to_string()]);
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(&args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("starting a muxbench child")?;
    anyhow::ensure!(
        out.status.success(),
        "muxbench child failed: {}",
        out.status
    );
    Figures::from_json(&String::from_utf8_lossy(&out.stdout))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    let settings = Settings {
        bulk: Duration::from_secs(args.bulk_secs),
        streams: args.streams,
        multi: Duration::from_secs(args.multi_secs),
        echo: Duration::from_secs(args.echo_secs),
        chunk: args.chunk,
        h2_frame: args.h2_frame_size,
        h2_stream_window: args.h2_stream_window,
        h2_conn_window: args.h2_conn_window,
    };
    // Two single-worker runtimes: the "agent" (client) and the "relay" (server).
    let one_worker = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
    };
    let client = one_worker().context("client runtime")?;
    let server = one_worker().context("server runtime")?;

    if let Some(one) = &args.one {
        let kind = parse_kind(one)?;
        let f = client.block_on(mux::run_kind(kind, &settings, server.handle()))?;
        println!("{}", f.to_json());
        return Ok(());
    }
    let kinds = args
        .kinds
        .iter()
        .map(|k| parse_kind(k).context("--kinds"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        let mut order = kinds.clone();
        order.rotate_left(round % kinds.len());
        let mut figures = Vec::new();
        for kind in order {
            eprintln!("[round {}/{}] {}", round + 1, args.rounds, kind.label());
            let f = if args.same_process {
                client.block_on(mux::run_kind(kind, &settings, server.handle()))
            } else {
                run_in_child(kind)
            }
            .with_context(|| format!("{} in round {}", kind.label(), round + 1))?;
            eprintln!("  {f:?}");
            figures.push((kind, f));
        }
        rounds.push(figures);
    }

    println!("## Mux comparison\n");
    for (k, v) in machine::describe() {
        println!("- {k}: {v}");
    }
    println!(
        "- yamux: gangway_transport::mux (yamux 0.13; 1 GiB connection window, 64 KiB frames)\n\
- h2: h2 0.4, frames {} B, stream window {} MiB, connection window {} MiB\n\
- {} B per write; single stream {} s, {} streams {} s, echo loop {} s; {}\n",
        args.h2_frame_size,
        args.h2_stream_window >> 20,
        args.h2_conn_window >> 20,
        args.chunk,
        args.bulk_secs,
        args.streams,
        args.multi_secs,
        args.echo_secs,
        if args.same_process {
            "all runs in one process"
        } else {
            "each run in a fresh process"
        }
    );
    println!("{}", mux::table(&rounds));
    Ok(())
}
