//! yamux vs h2, measured the way Gangway would carry them: over one real
//! TCP loopback connection with TLS (rustls, ring) and a WebSocket
//! (tokio-tungstenite) used as a byte stream by
//! [`gangway_transport::WsByteStream`].
//!
//! yamux is Gangway's own session ([`gangway_transport::mux`]); h2 is the
//! `h2` crate, one request per stream, bytes as DATA frames, flow control
//! honoured on both sides (`reserve_capacity`/`poll_capacity` to send,
//! `release_capacity` on receipt). A "raw" run, the WebSocket byte stream
//! with no multiplexer, shows what the layers below cost.
//!
//! Client and server run on separate single-worker runtimes, as if they
//! were the agent and the relay on one core each.

use std::fmt::Write as _;
use std::future::poll_fn;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use gangway_transport::mux::{self, Mode};
use gangway_transport::WsByteStream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::compat::FuturesAsyncReadCompatExt;

use crate::procs::cpu_secs;
use crate::report::median;

/// Which multiplexer (or none) carries the streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The WebSocket byte stream itself: one stream only.
    Raw,
    Yamux,
    H2,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Raw => "raw WebSocket (no mux)",
            Kind::Yamux => "yamux",
            Kind::H2 => "h2",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long the single stream sends.
    pub bulk: Duration,
    /// How many streams send at once in the aggregate run.
    pub streams: usize,
    /// How long they send.
    pub multi: Duration,
    /// How long the sequential open + 1-byte echo loop runs.
    pub echo: Duration,
    /// Bytes per write (the copy loop's buffer size).
    pub chunk: usize,
    /// h2 SETTINGS_MAX_FRAME_SIZE, both ways.
    pub h2_frame: u32,
    /// h2 per-stream initial window.
    pub h2_stream_window: u32,
    /// h2 connection window.
    pub h2_conn_window: u32,
}

/// One kind's figures from one round; `None` where not applicable.
#[derive(Debug, Clone, Copy, Default)]
pub struct Figures {
    pub single_gbps: Option<f64>,
    pub multi_gbps: Option<f64>,
    pub echo_per_sec: Option<f64>,
    /// CPU seconds (both ends together) per GB moved.
    pub single_cpu_per_gb: Option<f64>,
    pub multi_cpu_per_gb: Option<f64>,
    /// CPU microseconds (both ends together) per open + echo.
    pub echo_cpu_us: Option<f64>,
}

impl Figures {
    const FIELDS: [&'static str; 6] = [
        "single_gbps",
        "multi_gbps",
        "echo_per_sec",
        "single_cpu_per_gb",
        "multi_cpu_per_gb",
        "echo_cpu_us",
    ];

    fn fields(&self) -> [Option<f64>; 6] {
        [
            self.single_gbps,
            self.multi_gbps,
            self.echo_per_sec,
            self.single_cpu_per_gb,
            self.multi_cpu_per_gb,
            self.echo_cpu_us,
        ]
    }

    /// One line of JSON (absent figures are left out), for a child run.
    pub fn to_json(&self) -> String {
        let map: serde_json::Map<String, serde_json::Value> = Self::FIELDS
            .iter()
            .zip(self.fields())
            .filter_map(|(k, v)| Some((k.to_string(), serde_json::json!(v?))))
            .collect();
        serde_json::Value::Object(map).to_string()
    }

    /// Reads what [`Figures::to_json`] wrote.
    pub fn from_json(text: &str) -> anyhow::Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text.trim()).context("child figures")?;
        let get = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
        Ok(Figures {
            single_gbps: get("single_gbps"),
            multi_gbps: get("multi_gbps"),
            echo_per_sec: get("echo_per_sec"),
            single_cpu_per_gb: get("single_cpu_per_gb"),
            multi_cpu_per_gb: get("multi_cpu_per_gb"),
            echo_cpu_us: get("echo_cpu_us"),
        })
    }
}

/// This process's CPU seconds so far (client and server runtimes both).
fn cpu_now() -> anyhow::Result<f64> {
    cpu_secs(std::process::id())
}

/// (Gbit/s, CPU s per GB) from bytes moved, wall time and CPU used.
fn rate_and_cost(bytes: u64, elapsed: Duration, cpu: f64) -> (Option<f64>, Option<f64>) {
    (Some(gbps(bytes, elapsed)), Some(cpu / (bytes as f64 / 1e9)))
}

/// WebSocket limits as agent and relay set them.
fn ws_config() -> WebSocketConfig {
    let mut c = WebSocketConfig::default();
    c.max_message_size = Some(4 << 20);
    c.max_frame_size = Some(4 << 20);
    c
}

/// TLS settings for both ends, trusting a fresh self-signed certificate.
struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
}

fn tls() -> anyhow::Result<Tls> {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])?;
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Tls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
    })
}

/// The server side of one connection, running on the server runtime;
/// aborted on drop.
struct Server {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// For [`Kind::Raw`]: bytes received and when EOF arrived.
type RawDone = oneshot::Receiver<(u64, Instant)>;

/// Binds a listener and serves one connection of `kind` on `server`.
fn start_server(
    kind: Kind,
    settings: &Settings,
    acceptor: tokio_rustls::TlsAcceptor,
    server: &Handle,
) -> anyhow::Result<(SocketAddr, Server, RawDone)> {
    let std_listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let (raw_tx, raw_rx) = oneshot::channel();
    let s = settings.clone();
    let task = server.spawn(async move {
        if let Err(e) = serve_connection(std_listener, acceptor, kind, s, raw_tx).await {
            eprintln!("muxbench server ({}): {e:#}", kind.label());
        }
    });
    Ok((addr, Server { task }, raw_rx))
}

async fn serve_connection(
    std_listener: std::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    kind: Kind,
    settings: Settings,
    raw_done: oneshot::Sender<(u64, Instant)>,
) -> anyhow::Result<()> {
    let listener = TcpListener::from_std(std_listener)?;
    let (tcp, _) = listener.accept().await?;
    tcp.set_nodelay(true)?;
    let tls = acceptor.accept(tcp).await?;
    let ws = tokio_tungstenite::accept_async_with_config(tls, Some(ws_config())).await?;
    let io = WsByteStream::new(ws);
    match kind {
        Kind::Raw => {
            let mut io = io.compat();
            let n = sink(&mut io, settings.chunk).await?;
            let _ = raw_done.send((n, Instant::now()));
        }
        Kind::Yamux => {
            let (_opener, mut inbound, driver) = mux::start(io, Mode::Server, mux::config());
            let driver = tokio::spawn(driver);
            while let Some(stream) = inbound.recv().await {
                tokio::spawn(serve_stream(stream, settings.chunk));
            }
            let _ = driver.await;
        }
        Kind::H2 => {
            let mut conn = h2::server::Builder::new()
                .initial_window_size(settings.h2_stream_window)
                .initial_connection_window_size(settings.h2_conn_window)
                .max_frame_size(settings.h2_frame)
                .max_concurrent_streams(1024)
                .handshake::<_, Bytes>(io.compat())
                .await?;
            while let Some(r) = conn.accept().await {
                let (req, respond) = r?;
                tokio::spawn(async move {
                    if let Err(e) = h2_serve(req, respond).await {
                        eprintln!("muxbench h2 stream: {e:#}");
                    }
                });
            }
        }
    }
    Ok(())
}

/// Reads to EOF; returns the byte count.
async fn sink<S: AsyncRead + Unpin>(s: &mut S, chunk: usize) -> std::io::Result<u64> {
    let mut buf = vec![0u8; chunk];
    let mut n = 0u64;
    loop {
        match s.read(&mut buf).await? {
            0 => return Ok(n),
            r => n += r as u64,
        }
    }
}

/// A yamux stream on the server: the first byte says what to do.
/// `S`: read to EOF, answer with the byte count (8 bytes, big endian).
/// `E`: echo one byte, then drain to EOF.
async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, chunk: usize) {
    let r: std::io::Result<()> = async {
        let mut op = [0u8; 1];
        s.read_exact(&mut op).await?;
        match op[0] {
            b'S' => {
                let n = sink(&mut s, chunk).await?;
                s.write_all(&n.to_be_bytes()).await?;
            }
            _ => {
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await?;
                s.write_all(&b).await?;
                s.flush().await?;
                sink(&mut s, 64).await?;
            }
        }
        s.shutdown().await
    }
    .await;
    if let Err(e) = r {
        eprintln!("muxbench yamux stream: {e}");
    }
}

/// An h2 request on the server: `/sink` reads the body and answers with its
/// length; `/echo` answers the first DATA byte, then drains the body.
async fn h2_serve(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) -> anyhow::Result<()> {
    let sink_mode = req.uri().path() == "/sink";
    let mut body = req.into_body();
    if sink_mode {
        let mut n = 0u64;
        while let Some(d) = body.data().await {
            let d = d?;
            n += d.len() as u64;
            body.flow_control().release_capacity(d.len())?;
        }
        let mut tx = respond.send_response(http::Response::new(()), false)?;
        tx.send_data(Bytes::copy_from_slice(&n.to_be_bytes()), true)?;
    } else {
        let d = body.data().await.context("echo request had no body")??;
        body.flow_control().release_capacity(d.len())?;
        let mut tx = respond.send_response(http::Response::new(()), false)?;
        tx.send_data(d, true)?;
        // Drain to the client's end of stream; the last one may instead
        // see the connection torn down at the end of the run.
        while let Some(Ok(d)) = body.data().await {
            let _ = body.flow_control().release_capacity(d.len());
        }
    }
    Ok(())
}

/// Client end of the TLS WebSocket.
async fn connect(
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
) -> anyhow::Result<WsByteStream<tokio_rustls::client::TlsStream<TcpStream>>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    let tls = connector.connect(name, tcp).await?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        format!("wss://{addr}/v1/tunnel"),
        tls,
        Some(ws_config()),
    )
    .await?;
    Ok(WsByteStream::new(ws))
}

fn gbps(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9
}

/// Runs every test that applies to `kind` over one fresh connection.
pub async fn run_kind(kind: Kind, settings: &Settings, server: &Handle) -> anyhow::Result<Figures> {
    let tls = tls()?;
    let (addr, _server, raw_done) = start_server(kind, settings, tls.acceptor.clone(), server)?;
    let io = connect(addr, &tls.connector).await?;
    let chunk = Bytes::from(vec![0x5a; settings.chunk]);
    let mut figures = Figures::default();
    match kind {
        Kind::Raw => {
            use futures::AsyncWriteExt as _;
            let mut io = io;
            let cpu0 = cpu_now()?;
            let start = Instant::now();
            let deadline = start + settings.bulk;
            let mut sent = 0u64;
            while Instant::now() < deadline {
                io.write_all(&chunk).await?;
                sent += chunk.len() as u64;
            }
            io.close().await?;
            let (got, at) = raw_done.await.context("raw server ended early")?;
            ensure!(got == sent, "raw: sent {sent}, server got {got}");
            (figures.single_gbps, figures.single_cpu_per_gb) =
                rate_and_cost(sent, at - start, cpu_now()? - cpu0);
        }
        Kind::Yamux => {
            let (opener, _inbound, driver) = mux::start(io, Mode::Client, mux::config());
            let driver = tokio::spawn(driver);
            let one = |deadline| {
                let (opener, chunk) = (opener.clone(), chunk.clone());
                async move {
                    let s = opener.open().await?;
                    stream_sink(s, deadline, &chunk).await
                }
            };
            (figures.single_gbps, figures.single_cpu_per_gb) = bulk(settings.bulk, 1, one).await?;
            (figures.multi_gbps, figures.multi_cpu_per_gb) =
                bulk(settings.multi, settings.streams, one).await?;
            let opener_ref = &opener;
            (figures.echo_per_sec, figures.echo_cpu_us) = echo_rate(settings.echo, || async move {
                let mut s = opener_ref.open().await?;
                s.write_all(b"Ex").await?;
                s.flush().await?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await?;
                ensure!(&b == b"x", "yamux echo mismatch");
                s.shutdown().await?;
                Ok(())
            })
            .await?;
            drop(opener);
            driver.abort();
        }
        Kind::H2 => {
            let (client, conn) = h2::client::Builder::new()
                .initial_window_size(settings.h2_stream_window)
                .initial_connection_window_size(settings.h2_conn_window)
                .max_frame_size(settings.h2_frame)
                .handshake::<_, Bytes>(io.compat())
                .await?;
            let conn = tokio::spawn(conn);
            let one = |deadline| {
                let (client, chunk) = (client.clone(), chunk.clone());
                async move { h2_sink(client, deadline, &chunk).await }
            };
            (figures.single_gbps, figures.single_cpu_per_gb) = bulk(settings.bulk, 1, one).await?;
            (figures.multi_gbps, figures.multi_cpu_per_gb) =
                bulk(settings.multi, settings.streams, one).await?;
            (figures.echo_per_sec, figures.echo_cpu_us) =
                echo_rate(settings.echo, || h2_echo(client.clone())).await?;
            drop(client);
            conn.abort();
        }
    }
    Ok(figures)
}

/// Runs `echo` (one stream opened, one byte there and back) over and over
/// for `secs`: echoes a second, and the CPU µs the process spent on each.
async fn echo_rate<F, Fut>(
    secs: Duration,
    mut echo: F,
) -> anyhow::Result<(Option<f64>, Option<f64>)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let cpu0 = cpu_now()?;
    let deadline = Instant::now() + secs;
    let start = Instant::now();
    let mut n = 0u64;
    while Instant::now() < deadline {
        echo().await?;
        n += 1;
    }
    Ok((
        Some(n as f64 / start.elapsed().as_secs_f64()),
        Some((cpu_now()? - cpu0) * 1e6 / n as f64),
    ))
}

/// Runs `streams` senders until `secs` from now: aggregate Gbit/s of the
/// bytes the server confirmed, over the time until the last confirmation,
/// and the CPU seconds per GB the process spent meanwhile.
async fn bulk<F, Fut>(
    secs: Duration,
    streams: usize,
    one: F,
) -> anyhow::Result<(Option<f64>, Option<f64>)>
where
    F: Fn(Instant) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u64>> + Send + 'static,
{
    let cpu0 = cpu_now()?;
    let start = Instant::now();
    let deadline = start + secs;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..streams {
        tasks.spawn(one(deadline));
    }
    let mut total = 0u64;
    while let Some(r) = tasks.join_next().await {
        total += r??;
    }
    let elapsed = start.elapsed();
    Ok(rate_and_cost(total, elapsed, cpu_now()? - cpu0))
}

/// Sends `chunk` repeatedly on a yamux stream until `deadline`, then
/// half-closes and reads the server's count.
async fn stream_sink<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    deadline: Instant,
    chunk: &[u8],
) -> anyhow::Result<u64> {
    s.write_all(b"S").await?;
    let mut sent = 0u64;
    while Instant::now() < deadline {
        s.write_all(chunk).await?;
        sent += chunk.len() as u64;
    }
    s.shutdown().await?;
    let mut n = [0u8; 8];
    s.read_exact(&mut n).await?;
    let got = u64::from_be_bytes(n);
    ensure!(got == sent, "yamux: sent {sent}, server got {got}");
    Ok(sent)
}

/// One h2 request whose body is `chunk` repeated until `deadline`, sent
/// only as fast as flow control grants capacity.
async fn h2_sink(
    client: h2::client::SendRequest<Bytes>,
    deadline: Instant,
    chunk: &Bytes,
) -> anyhow::Result<u64> {
    let mut client = client.ready().await?;
    let req = http::Request::post("http://bench/sink").body(())?;
    let (resp, mut tx) = client.send_request(req, false)?;
    let mut sent = 0u64;
    while Instant::now() < deadline {
        let mut off = 0;
        while off < chunk.len() {
            tx.reserve_capacity(chunk.len() - off);
            let cap = match poll_fn(|cx| tx.poll_capacity(cx)).await {
                Some(Ok(c)) => c,
                Some(Err(e)) => return Err(e.into()),
                None => bail!("h2 stream closed while sending"),
            };
            if cap == 0 {
                continue;
            }
            let n = cap.min(chunk.len() - off);
            tx.send_data(chunk.slice(off..off + n), false)?;
            off += n;
        }
        sent += chunk.len() as u64;
    }
    tx.send_data(Bytes::new(), true)?;
    let mut body = resp.await?.into_body();
    let mut got = Vec::with_capacity(8);
    while let Some(d) = body.data().await {
        let d = d?;
        body.flow_control().release_capacity(d.len())?;
        got.extend_from_slice(&d);
    }
    let got: [u8; 8] = got.try_into().map_err(|_| anyhow::anyhow!("bad count"))?;
    let got = u64::from_be_bytes(got);
    ensure!(got == sent, "h2: sent {sent}, server got {got}");
    Ok(sent)
}

/// Opens a stream (request), sends one byte, waits for it to come back,
/// ends the stream.
async fn h2_echo(client: h2::client::SendRequest<Bytes>) -> anyhow::Result<()> {
    let mut client = client.ready().await?;
    let req = http::Request::post("http://bench/echo").body(())?;
    let (resp, mut tx) = client.send_request(req, false)?;
    tx.send_data(Bytes::from_static(b"x"), false)?;
    let mut body = resp.await?.into_body();
    let d = body.data().await.context("h2 echo: no body")??;
    body.flow_control().release_capacity(d.len())?;
    ensure!(&d[..] == b"x", "h2 echo mismatch");
    tx.send_data(Bytes::new(), true)?;
    Ok(())
}

/// A table row: label, which figure, decimals shown.
type Row = (&'static str, fn(&Figures) -> Option<f64>, usize);

/// Medians over rounds, as a markdown table with a per-round appendix.
pub fn table(rounds: &[Vec<(Kind, Figures)>]) -> String {
    let kinds = [Kind::Raw, Kind::Yamux, Kind::H2];
    let rows: [Row; 6] = [
        ("single-stream bulk (Gbit/s)", |f| f.single_gbps, 2),
        (
            "32 concurrent streams, aggregate (Gbit/s)",
            |f| f.multi_gbps,
            2,
        ),
        (
            "stream open + 1-byte echo, sequential (per s)",
            |f| f.echo_per_sec,
            0,
        ),
        (
            "CPU per GB, single stream (s, both ends)",
            |f| f.single_cpu_per_gb,
            3,
        ),
        (
            "CPU per GB, 32 streams (s, both ends)",
            |f| f.multi_cpu_per_gb,
            3,
        ),
        ("CPU per open + echo (µs, both ends)", |f| f.echo_cpu_us, 1),
    ];
    let values = |kind: Kind, get: fn(&Figures) -> Option<f64>| -> Vec<f64> {
        rounds
            .iter()
            .flat_map(|r| {
                r.iter()
                    .filter(|(k, _)| *k == kind)
                    .filter_map(|(_, f)| get(f))
            })
            .collect()
    };
    let mut s = format!(
        "| figure (median of {} rounds) | {} | {} | {} | h2 ÷ yamux |\n| --- | ---: | ---: | ---: | ---: |\n",
        rounds.len(),
        kinds[0].label(),
        kinds[1].label(),
        kinds[2].label()
    );
    for (label, get, dec) in rows {
        let _ = write!(s, "| {label} |");
        for k in kinds {
            match median(&values(k, get)) {
                Some(v) => {
                    let _ = write!(s, " {v:.dec$} |");
                }
                None => s.push_str(" — |"),
            }
        }
        match (
            median(&values(Kind::H2, get)),
            median(&values(Kind::Yamux, get)),
        ) {
            (Some(h), Some(y)) if y > 0.0 => {
                let _ = writeln!(s, " {:.2}× |", h / y);
            }
            _ => s.push_str(" — |\n"),
        }
    }
    s.push_str("\nEvery round:\n\n| figure | mux |");
    for r in 1..=rounds.len() {
        let _ = write!(s, " round {r} |");
    }
    s.push_str("\n| --- | --- |");
    for _ in rounds {
        s.push_str(" ---: |");
    }
    s.push('\n');
    for (label, get, dec) in rows {
        for k in kinds {
            let v = values(k, get);
            if v.is_empty() {
                continue;
            }
            let _ = write!(s, "| {label} | {} |", k.label());
            for x in v {
                let _ = write!(s, " {x:.dec$} |");
            }
            s.push('\n');
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_cross_the_process_boundary() {
        let f = Figures {
            single_gbps: Some(12.5),
            echo_cpu_us: Some(80.25),
            ..Default::default()
        };
        let back = Figures::from_json(&f.to_json()).unwrap();
        assert_eq!(back.fields(), f.fields());
    }
}
