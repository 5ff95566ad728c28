//! A minimal agent for load: opens real sessions to a relay exactly as
//! `gangway up` does (TCP, TLS trusting the bench certificate, WebSocket
//! upgrade with the bearer token, versioned hello, yamux, control stream
//! answered and pinged every 15 s like the agent), and opens streams on
//! them. Many of these run in one process; none has local listeners.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use bytes::BytesMut;
use gangway_transport::control::{ControlReader, ControlWriter};
use gangway_transport::framed::FramedIo;
use gangway_transport::mux::{self, Mode, Opener, Stream};
use gangway_transport::{handshake, WsByteStream};
use gangway_wire::{Control, Hello, HelloReply, OpenResult, OpenStream, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// How often the agent pings the relay on an idle session (as `gangway up`).
pub const PING_EVERY: Duration = Duration::from_secs(15);

/// The longest one step (connect, TLS, upgrade, hello, control, open) may take.
const STEP_LIMIT: Duration = Duration::from_secs(30);

/// TLS settings trusting the bench's self-signed relay certificate.
pub fn connector(cert_pem: &str) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots.add(cert.context("reading the relay certificate")?)?;
    }
    ensure!(!roots.is_empty(), "no certificate in the relay's PEM");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(client)))
}

/// One open session; closed (its tasks aborted, so its socket dropped)
/// when dropped.
pub struct Session {
    opener: Opener,
    driver: JoinHandle<Result<(), mux::MuxError>>,
    control: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.control.abort();
        self.driver.abort();
    }
}

impl Session {
    /// Opens a session to the relay at `addr` (or a balancer in front of
    /// it) with `token`. `mux_cfg` is the client's yamux config.
    pub async fn connect(
        tls: &tokio_rustls::TlsConnector,
        addr: SocketAddr,
        token: &str,
        mux_cfg: yamux::Config,
    ) -> anyhow::Result<Self> {
        tokio::time::timeout(STEP_LIMIT, Self::connect_inner(tls, addr, token, mux_cfg))
            .await
            .with_context(|| format!("session not open within {STEP_LIMIT:?}"))?
    }

    async fn connect_inner(
        tls: &tokio_rustls::TlsConnector,
        addr: SocketAddr,
        token: &str,
        mux_cfg: yamux::Config,
    ) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(addr).await.context("TCP connect")?;
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
        let tls = tls.connect(name, tcp).await.context("TLS handshake")?;
        let mut req = format!("wss://{addr}/v1/tunnel").into_client_request()?;
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(
            req,
            tls,
            Some(gangway_transport::ws::config()),
        )
        .await
        .context("WebSocket upgrade")?;
        let hello = Hello {
            version: PROTOCOL_VERSION,
            agent: "gangway-bench sessions".into(),
        };
        match handshake::send_hello(&mut ws, &hello)
            .await
            .context("hello")?
        {
            HelloReply::Welcome { .. } => {}
            other => bail!("not welcomed: {other:?}"),
        }
        let (opener, inbound, driver) = mux::start(WsByteStream::new(ws), Mode::Client, mux_cfg);
        // The relay opens no streams towards the agent.
        drop(inbound);
        let driver = tokio::spawn(driver);
        let (reader, writer) = match handshake::open_control(&opener, STEP_LIMIT).await {
            Ok(c) => c,
            Err(e) => {
                driver.abort();
                bail!("control stream: {e}");
            }
        };
        let control = tokio::spawn(keep_alive(reader, writer));
        Ok(Self {
            opener,
            driver,
            control,
        })
    }

    /// Opens a stream to `service`; fails unless the relay accepts it.
    pub async fn open(&self, service: &str) -> anyhow::Result<Stream> {
        let mut framed = FramedIo::new(self.opener.open().await?);
        let header = OpenStream::new(service)?;
        framed.write(|b| header.encode(b)).await?;
        let answer = tokio::time::timeout(STEP_LIMIT, framed.read(OpenResult::decode))
            .await
            .context("no answer to the open header")??
            .context("stream closed before the relay answered")?;
        ensure!(answer == OpenResult::Accepted, "stream refused: {answer:?}");
        let (stream, rest) = framed.into_parts();
        // Nothing is sent before the answer but the answer itself.
        ensure!(rest.is_empty(), "bytes after the open answer");
        Ok(stream)
    }

    /// True while the session's mux runs.
    pub fn is_open(&self) -> bool {
        !self.driver.is_finished() && !self.opener.is_closed()
    }
}

/// The agent's control loop, reduced: answer pings, ping every
/// [`PING_EVERY`], ignore the rest; ends with the control stream.
async fn keep_alive(mut reader: ControlReader<Stream>, mut writer: ControlWriter<Stream>) {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    let mut nonce = 0u64;
    loop {
        tokio::select! {
            msg = reader.recv() => match msg {
                Ok(Some(Control::Ping(n))) => {
                    if writer.send(&Control::Pong(n)).await.is_err() { break; }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            },
            _ = ping.tick() => {
                nonce += 1;
                if writer.send(&Control::Ping(nonce)).await.is_err() { break; }
            }
        }
    }
}

/// Writes `payload` on `stream` and reads the same number of bytes back
/// (from an echo backend).
pub async fn echo_round(stream: &mut Stream, payload: &[u8], buf: &mut [u8]) -> anyhow::Result<()> {
    ensure!(buf.len() >= payload.len(), "buffer too small");
    let (mut r, mut w) = tokio::io::split(stream);
    let write = async {
        w.write_all(payload).await?;
        w.flush().await
    };
    let read = r.read_exact(&mut buf[..payload.len()]);
    let (wr, rd) = tokio::join!(write, read);
    wr.context("writing to the echo stream")?;
    rd.context("reading the echo back")?;
    Ok(())
}

/// An HTTP/1.1 keep-alive client on one stream: `GET path` and read the
/// whole response (a `Content-Length` body, as nginx sends for a file).
pub struct HttpOnStream {
    stream: Stream,
    buf: BytesMut,
    request: Vec<u8>,
}

impl HttpOnStream {
    pub fn new(stream: Stream, path: &str) -> Self {
        Self {
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
            request: format!(
                "GET {path} HTTP/1.1\r\nHost: bench\r\nUser-Agent: gangway-bench\r\n\r\n"
            )
            .into_bytes(),
        }
    }

    /// One request and its response; fails on anything but a 200.
    pub async fn get(&mut self) -> anyhow::Result<()> {
        self.stream.write_all(&self.request).await?;
        self.stream.flush().await?;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            ensure!(self.buf.len() < 64 * 1024, "response head over 64 KiB");
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).context("response head")?;
        ensure!(
            head.starts_with("HTTP/1.1 200"),
            "not a 200: {}",
            head.lines().next().unwrap_or_default()
        );
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())
                    .flatten()
            })
            .context("no Content-Length in the response")?;
        while self.buf.len() < head_end + length {
            self.fill().await?;
        }
        let _ = self.buf.split_to(head_end + length);
        Ok(())
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(8 * 1024);
        }
        let n = tokio::time::timeout(STEP_LIMIT, self.stream.read_buf(&mut self.buf))
            .await
            .context("no response")??;
        ensure!(n > 0, "stream closed in the middle of a response");
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
