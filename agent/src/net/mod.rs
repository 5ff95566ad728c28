//! How the agent reaches the network: [`Egress`] is the TLS trust and the
//! proxy decision that every outgoing connection uses — the relay's
//! WebSocket ([`Egress::connect`]), the relay's API and the identity
//! provider (reqwest clients from [`Egress::http_client`]) — so all three
//! decide the same way. [`Egress::route`] says how one URL is reached, for
//! `gangway doctor`.

pub mod proxy;

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::either::Either;
use url::Url;

pub use proxy::{
    is_loopback, BadProxyEnv, Direct, EnvSource, ExplicitProxy, Origin, ProcessEnv, ProxyChoice,
    ProxyError, ProxySetting, ProxyUrl, Route,
};

use crate::AgentError;

/// How long reaching the proxy (name lookup, then TCP) may take: well
/// inside the session's 15 s, so that a silent proxy is named as such.
const PROXY_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the proxy may take to answer the CONNECT (it connects to the
/// relay meanwhile).
const CONNECT_ANSWER_TIMEOUT: Duration = Duration::from_secs(8);

/// A byte stream to a destination: a TCP connection, or a CONNECT tunnel
/// through the proxy.
pub type Conn = Either<TcpStream, TokioIo<hyper::upgrade::Upgraded>>;

/// TLS trust plus proxy decision, for every connection of one environment.
/// Cheap to clone.
#[derive(Clone)]
pub struct Egress {
    tls: Arc<rustls::ClientConfig>,
    proxy: Arc<ProxyChoice>,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("proxy", &self.proxy)
            .finish_non_exhaustive()
    }
}

impl Egress {
    /// `tls` for every connection; no proxy at all.
    pub fn direct(tls: Arc<rustls::ClientConfig>) -> Self {
        Egress {
            tls,
            proxy: Arc::new(ProxyChoice::none()),
        }
    }

    /// `tls` and the proxy decision from `explicit` (wins) and the process's
    /// environment (`HTTPS_PROXY` & co.).
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        explicit: Option<&ExplicitProxy>,
    ) -> Result<Self, AgentError> {
        Self::with_env(tls, explicit, &ProcessEnv)
    }

    /// [`Egress::new`] with the environment variables from `env`.
    pub fn with_env(
        tls: Arc<rustls::ClientConfig>,
        explicit: Option<&ExplicitProxy>,
        env: &dyn EnvSource,
    ) -> Result<Self, AgentError> {
        let proxy =
            ProxyChoice::new(explicit, env).map_err(|e| AgentError::Config(e.to_string()))?;
        Ok(Egress {
            tls,
            proxy: Arc::new(proxy),
        })
    }

    /// The trust store and extra CA file's settings, with the OS roots
    /// ([`crate::tls::client_config`]) and the proxy decision.
    pub fn for_environment(
        ca_file: Option<&std::path::Path>,
        explicit: Option<&ExplicitProxy>,
    ) -> Result<Self, AgentError> {
        Self::new(crate::tls::client_config(ca_file)?, explicit)
    }

    pub fn tls(&self) -> &Arc<rustls::ClientConfig> {
        &self.tls
    }

    /// The same proxy decision over other TLS settings (`gangway doctor`'s
    /// client that records the relay's chain).
    pub fn with_tls(&self, tls: Arc<rustls::ClientConfig>) -> Self {
        Egress {
            tls,
            proxy: self.proxy.clone(),
        }
    }

    /// How `url` is reached: "via proxy P (from HTTPS_PROXY)", "direct
    /// (NO_PROXY matches …)", "direct (loopback)" — what `gangway doctor`
    /// reports.
    pub fn route(&self, url: &Url) -> Route {
        self.proxy.route(url)
    }

    /// A reqwest client builder with this TLS trust and exactly this proxy
    /// decision (reqwest's own reading of the environment is off).
    pub fn http_client(&self) -> reqwest::ClientBuilder {
        let choice = self.proxy.clone();
        let proxy = reqwest::Proxy::custom(move |url| {
            choice
                .route(url)
                .proxy()
                .and_then(|p| Url::parse(p.expose()).ok())
        });
        reqwest::Client::builder()
            .use_preconfigured_tls((*self.tls).clone())
            .no_proxy()
            .proxy(proxy)
    }

    /// `e`, a failed request to `url`, as the proxy's failure when it went
    /// through one and the proxy shows in it; else `e` itself.
    pub fn explain(&self, url: &Url, e: reqwest::Error) -> crate::error::BoxError {
        if let Route::Proxy { proxy, .. } = self.route(url) {
            let target = format!(
                "{}:{}",
                url.host_str().unwrap_or_default(),
                url.port_or_known_default().unwrap_or(443)
            );
            if let Some(p) = proxy::explain_chain(&e, &proxy, &target) {
                return Box::new(p);
            }
        }
        Box::new(e)
    }

    /// `e`, a failed TLS handshake with `url`, as the proxy's doing when
    /// it went through one and the certificate's issuer is unknown (most
    /// likely the proxy inspects TLS); else `e` itself.
    pub fn explain_tls(&self, url: &Url, e: std::io::Error) -> crate::error::BoxError {
        match self.route(url) {
            Route::Proxy { proxy, .. } if proxy::is_unknown_issuer(&e) => {
                Box::new(ProxyError::Inspecting { proxy })
            }
            _ => Box::new(e),
        }
    }

    /// A byte stream to `host:port` for `url` (whose scheme and host decide
    /// the route): TCP, or a CONNECT tunnel through the proxy. A failure
    /// the proxy caused is a [`ProxyError`] in the chain.
    pub async fn connect(&self, url: &Url, host: &str, port: u16) -> Result<Conn, AgentError> {
        match self.route(url) {
            Route::Direct(_) => {
                let tcp = TcpStream::connect((host, port))
                    .await
                    .map_err(|e| AgentError::unreachable_by(url.to_string(), e))?;
                let _ = tcp.set_nodelay(true);
                Ok(Either::Left(tcp))
            }
            Route::Proxy { proxy, .. } => tunnel(&proxy, host, port)
                .await
                .map(Either::Right)
                .map_err(|e| AgentError::unreachable_by(url.to_string(), e)),
        }
    }
}

/// Opens an HTTP CONNECT tunnel to `host:port` through `proxy` (hyper's
/// client: the CONNECT request, then the upgraded connection), with Basic
/// proxy authentication from the proxy URL's credentials.
async fn tunnel(
    proxy: &ProxyUrl,
    host: &str,
    port: u16,
) -> Result<TokioIo<hyper::upgrade::Upgraded>, ProxyError> {
    let unreachable = |why: String| ProxyError::Unreachable {
        proxy: proxy.clone(),
        why,
    };
    let broken = |why: String| ProxyError::Broken {
        proxy: proxy.clone(),
        why,
    };
    let proxy_host = proxy.host().trim_matches(['[', ']']);
    let addrs: Vec<_> = tokio::time::timeout(
        PROXY_CONNECT_TIMEOUT,
        tokio::net::lookup_host((proxy_host, proxy.port())),
    )
    .await
    .map_err(|_| unreachable("timed out looking up its name".into()))?
    .map_err(|_| unreachable("its name does not resolve".into()))?
    .collect();
    let mut last = None;
    let mut tcp = None;
    for a in addrs {
        match tokio::time::timeout(PROXY_CONNECT_TIMEOUT, TcpStream::connect(a)).await {
            Ok(Ok(s)) => {
                tcp = Some(s);
                break;
            }
            Ok(Err(e)) => last = Some(proxy::unreachable_why(&e)),
            Err(_) => last = Some("timed out".into()),
        }
    }
    let tcp = tcp.ok_or_else(|| unreachable(last.unwrap_or_else(|| "no address".into())))?;
    let _ = tcp.set_nodelay(true);

    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(authority.as_str())
        .header(http::header::HOST, authority.as_str())
        .header(
            http::header::USER_AGENT,
            concat!("gangway/", env!("CARGO_PKG_VERSION")),
        );
    // The Basic credentials, as hyper-util's matcher decodes them from the
    // URL (percent-decoding included); marked sensitive.
    let intercept = hyper_util::client::proxy::matcher::Matcher::builder()
        .all(proxy.expose())
        .build()
        .intercept(&http::Uri::from_static("https://destination/"));
    if let Some(auth) = intercept.as_ref().and_then(|i| i.basic_auth()) {
        req = req.header(http::header::PROXY_AUTHORIZATION, auth.clone());
    }
    let req = req
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| broken(e.to_string()))?;

    let answer = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| broken(e.to_string()))?;
        tokio::spawn(async move {
            // Ends when the tunnel does; its error is the tunnel's.
            let _ = conn.with_upgrades().await;
        });
        let resp = sender.send_request(req).await.map_err(|e| {
            if e.is_incomplete_message() || e.is_closed() {
                broken("it closed the connection".into())
            } else {
                broken(e.to_string())
            }
        })?;
        Ok::<_, ProxyError>(resp)
    };
    let mut resp = tokio::time::timeout(CONNECT_ANSWER_TIMEOUT, answer)
        .await
        .map_err(|_| broken("no answer to CONNECT in time".into()))??;
    let status = resp.status();
    if status == http::StatusCode::PROXY_AUTHENTICATION_REQUIRED {
        return Err(if proxy.has_credentials() {
            ProxyError::AuthRejected {
                proxy: proxy.clone(),
            }
        } else {
            ProxyError::AuthRequired {
                proxy: proxy.clone(),
            }
        });
    }
    if !status.is_success() {
        return Err(ProxyError::Refused {
            proxy: proxy.clone(),
            target: authority,
            status: Some(status.to_string()),
        });
    }
    let upgraded = hyper::upgrade::on(&mut resp)
        .await
        .map_err(|e| broken(e.to_string()))?;
    Ok(TokioIo::new(upgraded))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot "proxy" that reads the CONNECT and answers `answer`, then
    /// echoes: enough for the connector's own unit test (squid is in the
    /// end-to-end tests).
    async fn fake_proxy(
        answer: &'static str,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<String>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut b = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut b).await.unwrap();
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&b[..n]);
            }
            s.write_all(answer.as_bytes()).await.unwrap();
            if answer.starts_with("HTTP/1.1 200") {
                let n = s.read(&mut b).await.unwrap();
                s.write_all(&b[..n]).await.unwrap();
            }
            String::from_utf8_lossy(&buf).into_owned()
        });
        (addr, task)
    }

    fn proxy(addr: std::net::SocketAddr, creds: &str) -> ProxyUrl {
        ProxyUrl::parse(&format!("http://{creds}{addr}"), false).unwrap()
    }

    #[tokio::test]
    async fn connect_sends_basic_auth_and_carries_bytes() {
        let (addr, seen) = fake_proxy("HTTP/1.1 200 Connection established\r\n\r\n").await;
        let mut io = tunnel(&proxy(addr, "alice:s%3Acret@"), "relay.corp", 8443)
            .await
            .unwrap();
        io.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        io.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
        let req = seen.await.unwrap();
        assert!(
            req.starts_with("CONNECT relay.corp:8443 HTTP/1.1\r\n"),
            "{req}"
        );
        // alice:s:cret
        assert!(
            req.contains("proxy-authorization: Basic YWxpY2U6czpjcmV0\r\n"),
            "{req}"
        );
    }

    /// reqwest's CONNECT (hyper-util's `Tunnel`) fails with an error type
    /// that is not exported; its words are what `explain` knows it by.
    #[tokio::test]
    async fn reqwests_tunnel_failures_are_recognised() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = crate::tls::client_config(None).unwrap();
        let target = Url::parse("https://relay.corp.test:8443/x").unwrap();
        for (answer, creds, want) in [
            (
                "HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n",
                "",
                "asks for a user name and password",
            ),
            (
                "HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n",
                "u:p@",
                "rejected the proxy user name or password",
            ),
            (
                "HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n",
                "",
                "refused to connect to relay.corp.test:8443",
            ),
        ] {
            let (addr, _) = fake_proxy(answer).await;
            let explicit = ExplicitProxy {
                setting: ProxySetting::parse(&format!("http://{creds}{addr}")).unwrap(),
                origin: "test".into(),
            };
            let egress = Egress::with_env(tls.clone(), Some(&explicit), &[]).unwrap();
            let e = egress
                .http_client()
                .build()
                .unwrap()
                .get(target.clone())
                .send()
                .await
                .unwrap_err();
            let said = crate::error::error_chain(egress.explain(&target, e).as_ref());
            assert!(said.contains(want), "{want}: {said}");
            assert!(
                said.contains(&format!("the proxy at http://{addr}")),
                "{said}"
            );
        }
        // Where nothing names the proxy (the identity provider's requests),
        // plain.rs still says it in words.
        let (addr, _) =
            fake_proxy("HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n")
                .await;
        let explicit = ExplicitProxy {
            setting: ProxySetting::parse(&format!("http://{addr}")).unwrap(),
            origin: "test".into(),
        };
        let egress = Egress::with_env(tls.clone(), Some(&explicit), &[]).unwrap();
        let e = egress
            .http_client()
            .build()
            .unwrap()
            .get(target.clone())
            .send()
            .await
            .unwrap_err();
        let said = crate::error::error_chain(&e);
        assert!(
            said.contains("the proxy asks for a user name and password"),
            "{said}"
        );
        assert!(!said.contains("tunnel error"), "{said}");

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let explicit = ExplicitProxy {
            setting: ProxySetting::parse(&format!("http://{addr}")).unwrap(),
            origin: "test".into(),
        };
        let egress = Egress::with_env(tls, Some(&explicit), &[]).unwrap();
        let e = egress
            .http_client()
            .build()
            .unwrap()
            .get(target.clone())
            .send()
            .await
            .unwrap_err();
        let said = crate::error::error_chain(egress.explain(&target, e).as_ref());
        assert!(
            said.starts_with(&format!(
                "cannot reach the proxy at http://{addr} (connection refused)"
            )),
            "{said}"
        );
    }

    /// A proxy that takes the connection and never answers is named, in
    /// bounded time (paused clock: no real wait).
    #[tokio::test(start_paused = true)]
    async fn a_silent_proxy_is_named() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _held = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            std::future::pending::<()>().await;
            drop(s);
        });
        let e = tunnel(&proxy(addr, ""), "relay.corp", 443)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("the proxy at http://{addr} did not answer as an HTTP proxy (no answer to CONNECT in time)")
        );
    }

    #[tokio::test]
    async fn refusals_say_what_the_proxy_answered() {
        let (addr, _) = fake_proxy("HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n").await;
        let e = tunnel(&proxy(addr, ""), "relay.corp", 443)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("the proxy at http://{addr} refused to connect to relay.corp:443 (it answered 403 Forbidden)")
        );
        let (addr, _) =
            fake_proxy("HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n")
                .await;
        let e = tunnel(&proxy(addr, ""), "relay.corp", 443)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("the proxy at http://{addr} asks for a user name and password")
        );
        let (addr, _) =
            fake_proxy("HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n")
                .await;
        let e = tunnel(&proxy(addr, "a:wrong@"), "relay.corp", 443)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("the proxy at http://{addr} rejected the proxy user name or password")
        );
        assert!(!e.to_string().contains("wrong"));
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let e = tunnel(&proxy(addr, ""), "relay.corp", 443)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("cannot reach the proxy at http://{addr} (connection refused)")
        );
    }
}
