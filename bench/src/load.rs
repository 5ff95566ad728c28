//! The workloads: iperf3 (bulk), wrk (HTTP), a fresh-connection loop, and
//! a batch of held-open connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::procs::run_tool;

/// What one iperf3 run measured, on the receiving side.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IperfResult {
    pub gbps: f64,
    pub bytes: u64,
}

/// One iperf3 run, single stream, `secs` long. `reverse` (`-R`) makes the
/// server send: the client downloads.
pub async fn iperf3(addr: SocketAddr, secs: u64, reverse: bool) -> anyhow::Result<IperfResult> {
    let mut cmd = tokio::process::Command::new("iperf3");
    cmd.args(["-c", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-t", &secs.to_string(), "-J"]);
    if reverse {
        cmd.arg("-R");
    }
    // iperf3 -J exits non-zero on failure but still prints JSON with "error".
    let out = match run_tool(cmd, Duration::from_secs(secs + 20)).await {
        Ok(out) => out,
        Err(e) => bail!("iperf3: {e:#}"),
    };
    parse_iperf3(&out)
}

/// Receiver-side rate and bytes of an `iperf3 -J` report.
pub fn parse_iperf3(json: &str) -> anyhow::Result<IperfResult> {
    let v: serde_json::Value = serde_json::from_str(json).context("iperf3 JSON")?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {e}");
    }
    let bps = v
        .pointer("/end/sum_received/bits_per_second")
        .and_then(|b| b.as_f64())
        .context("iperf3 JSON has no end.sum_received.bits_per_second")?;
    let bytes = v
        .pointer("/end/sum_received/bytes")
        .and_then(|b| b.as_u64())
        .context("iperf3 JSON has no end.sum_received.bytes")?;
    Ok(IperfResult {
        gbps: bps / 1e9,
        bytes,
    })
}

/// What one wrk run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WrkResult {
    pub requests: u64,
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Socket errors plus non-2xx/3xx responses.
    pub errors: u64,
}

/// `wrk -t1 -cCONNS -dSECS --latency URL`. One wrk thread: on a 2-core
/// machine a second one would only take CPU from the path under test.
///
/// `script`: a wrk Lua script (e.g. one setting the local door's
/// `Authorization` header, so the secret is in no process argument).
pub async fn wrk(
    url: &str,
    conns: u32,
    secs: u64,
    script: Option<&std::path::Path>,
) -> anyhow::Result<WrkResult> {
    let mut cmd = tokio::process::Command::new("wrk");
    cmd.args(["-t1", &format!("-c{conns}"), &format!("-d{secs}s")]);
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    cmd.args(["--latency", url]);
    let out = run_tool(cmd, Duration::from_secs(secs + 20)).await?;
    parse_wrk(&out).with_context(|| format!("parsing wrk output:\n{out}"))
}

/// Parses wrk's `--latency` report.
pub fn parse_wrk(out: &str) -> anyhow::Result<WrkResult> {
    let mut rps = None;
    let mut requests = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut errors = 0u64;
    let mut in_dist = false;
    for line in out.lines() {
        let t = line.trim();
        if t.starts_with("Latency Distribution") {
            in_dist = true;
            continue;
        }
        if in_dist {
            match t.split_whitespace().collect::<Vec<_>>()[..] {
                ["50%", v] => p50 = Some(duration_ms(v)?),
                ["99%", v] => {
                    p99 = Some(duration_ms(v)?);
                    in_dist = false;
                }
                [_, _] => {}
                _ => in_dist = false,
            }
        }
        if let Some((n, _)) = t.split_once(" requests in ") {
            requests = n.trim().parse::<u64>().ok();
        }
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            rps = Some(v.trim().parse::<f64>()?);
        }
        if let Some(v) = t.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            errors += v
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
        if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            errors += v.trim().parse::<u64>().unwrap_or(0);
        }
    }
    Ok(WrkResult {
        requests: requests.context("no request count")?,
        requests_per_sec: rps.context("no Requests/sec")?,
        p50_ms: p50.context("no 50% latency")?,
        p99_ms: p99.context("no 99% latency")?,
        errors,
    })
}

/// "123.45us" / "1.20ms" / "2.00s" → milliseconds.
fn duration_ms(v: &str) -> anyhow::Result<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60e3)
    } else {
        bail!("unknown duration {v:?}");
    };
    Ok(num.parse::<f64>()? * scale)
}

/// Fresh-connection rate: connections completed per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConnRate {
    pub per_sec: f64,
    pub completed: u64,
    pub errors: u64,
}

/// `workers` loops, each: connect, send 4 bytes, read the 4 echoed back,
/// close. Stops after `limit` or once `max` connections completed in all.
pub async fn conn_rate(
    addr: SocketAddr,
    workers: usize,
    limit: Duration,
    max: u64,
) -> anyhow::Result<ConnRate> {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + limit;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (done, errors) = (done.clone(), errors.clone());
        tasks.spawn(async move {
            while Instant::now() < deadline && done.load(Ordering::Relaxed) < max {
                let one = tokio::time::timeout(Duration::from_secs(5), ping(addr)).await;
                match one {
                    Ok(Ok(())) => done.fetch_add(1, Ordering::Relaxed),
                    _ => {
                        // Don't spin on a broken path; the error count tells.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed().as_secs_f64();
    let completed = done.load(Ordering::Relaxed);
    Ok(ConnRate {
        per_sec: completed as f64 / elapsed,
        completed,
        errors: errors.load(Ordering::Relaxed),
    })
}

async fn ping(addr: SocketAddr) -> std::io::Result<()> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    tcp.write_all(b"ping").await?;
    let mut back = [0u8; 4];
    tcp.read_exact(&mut back).await?;
    if &back != b"ping" {
        return Err(std::io::Error::other("echo mismatch"));
    }
    Ok(())
}

/// Opens `n` connections to the echo service and makes sure each one
/// reaches the upstream (one byte there and back). Dropping them closes.
pub async fn hold(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<TcpStream>> {
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let one = async {
            let mut tcp = TcpStream::connect(addr).await?;
            tcp.write_all(b"h").await?;
            let mut b = [0u8; 1];
            tcp.read_exact(&mut b).await?;
            anyhow::Ok(tcp)
        };
        let tcp = tokio::time::timeout(Duration::from_secs(10), one)
            .await
            .with_context(|| format!("held connection {i} timed out"))?
            .with_context(|| format!("held connection {i}"))?;
        held.push(tcp);
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_latency_report() {
        let out = "Running 5s test @ http://127.0.0.1:8080/small.html
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   812.33us  200.00us   5.00ms   90.00%
    Req/Sec    40.00k     1.00k   42.00k    70.00%
  Latency Distribution
     50%  790.00us
     75%  850.00us
     90%    0.95ms
     99%    1.52ms
  200000 requests in 5.00s, 250.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec:  39990.12
Transfer/sec:     50.00MB
";
        let r = parse_wrk(out).unwrap();
        assert_eq!(r.requests, 200000);
        assert_eq!(r.requests_per_sec, 39990.12);
        assert!((r.p50_ms - 0.79).abs() < 1e-9);
        assert!((r.p99_ms - 1.52).abs() < 1e-9);
        assert_eq!(r.errors, 3);
    }

    #[test]
    fn parses_iperf3_json() {
        let json = r#"{"start":{},"end":{"sum_sent":{"bits_per_second":2e10},
            "sum_received":{"bits_per_second":1.5e10,"bytes":9375000000}}}"#;
        assert_eq!(
            parse_iperf3(json).unwrap(),
            IperfResult {
                gbps: 15.0,
                bytes: 9_375_000_000
            }
        );
        assert!(parse_iperf3(r#"{"error":"unable to connect"}"#).is_err());
    }
}
