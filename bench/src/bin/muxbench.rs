//! `muxbench`: yamux vs h2 over one TLS WebSocket on loopback.
//!
//! ```text
//! cargo run --release -p gangway-bench --bin muxbench -- --rounds 3
//! ```

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use gangway_bench::machine;
use gangway_bench::mux::{self, Kind, Settings};

#[derive(Parser, Debug)]
#[command(about = "yamux vs h2 over TLS + WebSocket on loopback: bulk, 32 streams, open+echo")]
struct Args {
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

    let kinds = [Kind::Raw, Kind::Yamux, Kind::H2];
    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        let mut order = kinds.to_vec();
        order.rotate_left(round % kinds.len());
        let mut figures = Vec::new();
        for kind in order {
            eprintln!("[round {}/{}] {}", round + 1, args.rounds, kind.label());
            let f = client
                .block_on(mux::run_kind(kind, &settings, server.handle()))
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
- {} B per write; single stream {} s, {} streams {} s, echo loop {} s\n",
        args.h2_frame_size,
        args.h2_stream_window >> 20,
        args.h2_conn_window >> 20,
        args.chunk,
        args.bulk_secs,
        args.streams,
        args.multi_secs,
        args.echo_secs
    );
    println!("{}", mux::table(&rounds));
    Ok(())
}
