//! What the checks share: the inputs (config file, policy, keychain, the
//! running agent), and lookups several checks need, made once and kept
//! (the relay's discovery answer over a TLS client that records the chain,
//! the token, the catalog).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gangway_wire::Token;
use tokio::sync::OnceCell;

use super::anchor::{Capture, Seen, Trust};
use super::Versions;
use crate::config::{AgentConfig, Environment};
use crate::control::{Client, Request};
use crate::error::error_chain;
use crate::keychain::{Keychain, SecretStore};
use crate::net::{Egress, Route};
use crate::policy::Policy;
use crate::relay_api::{Catalog, Discovery, RelayApi};
use crate::signin::{Credentials, UnverifiedClaims};
use crate::status::Snapshot;
use crate::token::TimedToken;

/// How the running agent is found.
pub enum AgentLookup {
    /// Ask over this control socket (the CLI).
    Socket(PathBuf),
    /// Already known (the tray app is the agent).
    Given(Option<Box<Snapshot>>),
}

/// Everything a doctor run reads from outside.
pub struct Inputs {
    /// The user's config file.
    pub config_path: PathBuf,
    pub policy: Policy,
    /// `--env`; else the default environment.
    pub environment: Option<String>,
    pub agent: AgentLookup,
    /// The keychain (the OS's, or a test's).
    pub store: Arc<dyn SecretStore>,
    /// A fixed token (`GANGWAY_TOKEN`) instead of the keychain's.
    pub fixed_token: Option<Token>,
    /// The credential-helper line `gangway git setup` writes for this
    /// installation, to check git's config names this program.
    pub git_helper: Option<String>,
}

impl Inputs {
    /// The user's config file, the computer's policy, the OS keychain and
    /// the default control socket; `GANGWAY_TOKEN` if set.
    pub fn system(config_path: PathBuf, environment: Option<String>) -> Self {
        Inputs {
            config_path,
            policy: crate::policy::system(),
            environment,
            agent: AgentLookup::Socket(crate::control::socket_path()),
            store: Arc::new(crate::keychain::OsKeychain),
            fixed_token: std::env::var("GANGWAY_TOKEN")
                .ok()
                .filter(|t| !t.trim().is_empty())
                .map(|t| Token::new(t.trim().to_string())),
            git_helper: None,
        }
    }
}

/// The relay's `/.well-known/gangway` as one request saw it.
pub struct RelaySeen {
    /// Certificates presented and the verifier's verdict (https only).
    pub tls: Option<Seen>,
    /// The answer's `Date` (`Err`: present but not an HTTP date), and the
    /// local clock before and after.
    pub date: Option<Result<SystemTime, String>>,
    pub sent_at: SystemTime,
    pub answered_at: SystemTime,
    pub discovery: Result<Discovery, String>,
}

/// Why the relay cannot be reached.
#[derive(Debug, Clone)]
pub struct Unreachable {
    pub detail: String,
    /// The plain-words fix, when the failure is one people meet.
    pub fix: Option<String>,
}

/// The shared state of one doctor run.
pub struct Probe {
    pub inputs: Inputs,
    pub config: Result<AgentConfig, String>,
    /// The environment checked, or why none could be chosen.
    env: Result<Environment, String>,
    pub trust: Result<Arc<Trust>, String>,
    /// The trust and proxy decision the agent uses for this environment.
    egress: Result<Egress, String>,
    agent: OnceCell<Option<Snapshot>>,
    relay_seen: OnceCell<Result<RelaySeen, String>>,
    reachable: OnceCell<Result<std::net::SocketAddr, Unreachable>>,
    token: OnceCell<Result<TimedToken, String>>,
    catalog: OnceCell<Result<Catalog, String>>,
    proof_key: OnceCell<Option<Arc<gangway_dpop::ProofKey>>>,
    versions: OnceCell<Versions>,
}

/// How long the relay's discovery request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl Probe {
    pub fn new(inputs: Inputs) -> Self {
        let config = AgentConfig::load_with(&inputs.config_path, &inputs.policy)
            .map_err(|e| error_chain(&e));
        let env = match &config {
            Ok(c) => c
                .environment(inputs.environment.as_deref())
                .cloned()
                .map_err(|e| error_chain(&e)),
            Err(e) => Err(e.clone()),
        };
        let trust = match &env {
            Ok(e) => Trust::load(e.ca_file.as_deref())
                .map(Arc::new)
                .map_err(|e| error_chain(&e)),
            Err(e) => Err(e.clone()),
        };
        let egress = match &env {
            Ok(e) => Egress::for_environment(e.ca_file.as_deref(), e.proxy.as_ref())
                .map_err(|e| error_chain(&e)),
            Err(e) => Err(e.clone()),
        };
        Probe {
            inputs,
            config,
            env,
            trust,
            egress,
            agent: OnceCell::new(),
            relay_seen: OnceCell::new(),
            reachable: OnceCell::new(),
            token: OnceCell::new(),
            catalog: OnceCell::new(),
            proof_key: OnceCell::new(),
            versions: OnceCell::new(),
        }
    }

    /// The environment checked.
    pub fn environment(&self) -> Option<&Environment> {
        self.env.as_ref().ok()
    }

    pub fn environment_error(&self) -> Option<&str> {
        self.env.as_ref().err().map(String::as_str)
    }

    /// "gangway login --env prod".
    pub fn login_hint(&self) -> String {
        match self.environment() {
            Some(e) => format!("gangway login --env {}", e.name),
            None => "gangway login".into(),
        }
    }

    /// The TLS settings and proxy decision the agent uses for this
    /// environment.
    pub fn egress(&self) -> Result<&Egress, String> {
        self.egress.as_ref().map_err(Clone::clone)
    }

    /// How the relay is reached: directly or through which proxy.
    pub fn relay_route(&self) -> Option<Route> {
        let env = self.environment()?;
        Some(self.egress.as_ref().ok()?.route(&env.relay))
    }

    /// The running agent's status, if one runs.
    pub async fn agent(&self) -> Option<&Snapshot> {
        self.agent
            .get_or_init(|| async {
                match &self.inputs.agent {
                    AgentLookup::Given(s) => s.as_deref().cloned(),
                    AgentLookup::Socket(path) => {
                        match Client::new(path).request(&Request::Status, |_, _| {}).await {
                            Ok(Some(v)) => serde_json::from_value(v).ok(),
                            _ => None,
                        }
                    }
                }
            })
            .await
            .as_ref()
    }

    /// The running agent, if it serves the environment checked.
    pub async fn agent_here(&self) -> Option<&Snapshot> {
        let env = self.environment()?;
        let relay = crate::keychain::namespace_for(&env.relay);
        self.agent()
            .await
            .filter(|s| s.relay.as_deref() == Some(relay.as_str()))
    }

    /// A TCP connection to the relay's host and port can be opened; else
    /// why not, and the plain-words fix when there is one.
    pub async fn reachable(&self) -> &Result<std::net::SocketAddr, Unreachable> {
        self.reachable
            .get_or_init(|| async {
                let env = self.env.as_ref().map_err(|e| Unreachable {
                    detail: e.clone(),
                    fix: None,
                })?;
                let host = env.relay.host_str().unwrap_or_default().to_string();
                let port = env.relay.port_or_known_default().unwrap_or(443);
                if let Ok(egress) = &self.egress {
                    if let Route::Proxy { proxy, .. } = egress.route(&env.relay) {
                        return self
                            .through_proxy(egress, &env.relay, &proxy, &host, port)
                            .await;
                    }
                }
                let connect = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port));
                let why = match tokio::time::timeout(REQUEST_TIMEOUT, connect).await {
                    Ok(Ok(s)) => {
                        return s.peer_addr().map_err(|e| Unreachable {
                            detail: error_chain(&e),
                            fix: None,
                        })
                    }
                    Ok(Err(e)) => match crate::plain::explain(&e) {
                        Some(p) => Unreachable {
                            detail: p.sentence.into_owned(),
                            fix: Some(p.fix.into_owned()),
                        },
                        None => Unreachable {
                            detail: error_chain(&e),
                            fix: None,
                        },
                    },
                    Err(_) => Unreachable {
                        detail: format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()),
                        fix: None,
                    },
                };
                Err(Unreachable {
                    detail: format!("cannot reach the relay at {host}:{port}: {}", why.detail),
                    fix: why.fix,
                })
            })
            .await
    }

    /// A CONNECT tunnel to the relay through `proxy` opens (the proxy's
    /// address stands for the connection's).
    async fn through_proxy(
        &self,
        egress: &Egress,
        relay: &url::Url,
        proxy: &crate::net::ProxyUrl,
        host: &str,
        port: u16,
    ) -> Result<std::net::SocketAddr, Unreachable> {
        let target = format!("{host}:{port}");
        let open = egress.connect(relay, host.trim_matches(['[', ']']), port);
        match tokio::time::timeout(REQUEST_TIMEOUT, open).await {
            Ok(Ok(_tunnel)) => {
                let addr =
                    tokio::net::lookup_host((proxy.host().trim_matches(['[', ']']), proxy.port()))
                        .await
                        .ok()
                        .and_then(|mut a| a.next());
                addr.ok_or_else(|| Unreachable {
                    detail: format!("the proxy at {proxy} opened {target} but its own address does not resolve now"),
                    fix: None,
                })
            }
            Ok(Err(e)) => {
                let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
                while let Some(err) = cur {
                    if let Some(p) = crate::plain::explain(err) {
                        return Err(Unreachable {
                            detail: p.sentence.into_owned(),
                            fix: Some(p.fix.into_owned()),
                        });
                    }
                    cur = err.source();
                }
                Err(Unreachable {
                    detail: format!("through the proxy at {proxy}: {}", error_chain(&e)),
                    fix: None,
                })
            }
            Err(_) => Err(Unreachable {
                detail: format!(
                    "the proxy at {proxy} did not open {target} within {} s",
                    REQUEST_TIMEOUT.as_secs()
                ),
                fix: Some(
                    crate::net::ProxyError::Unreachable {
                        proxy: proxy.clone(),
                        why: String::new(),
                    }
                    .fix()
                    .to_string(),
                ),
            }),
        }
    }

    /// `GET /.well-known/gangway` over a TLS client that records the chain.
    pub async fn relay_seen(&self) -> &Result<RelaySeen, String> {
        self.relay_seen.get_or_init(|| self.fetch_discovery()).await
    }

    async fn fetch_discovery(&self) -> Result<RelaySeen, String> {
        let env = self.env.as_ref().map_err(Clone::clone)?;
        let trust = self.trust.as_ref().map_err(Clone::clone)?;
        let capture = Arc::new(Capture::new(trust.verifier()?));
        let egress = self.egress.as_ref().map_err(Clone::clone)?;
        let http = egress
            .with_tls(Arc::new(trust.client_config(capture.clone())?))
            .http_client()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("gangway/", env!("CARGO_PKG_VERSION"), " doctor"))
            .build()
            .map_err(|e| error_chain(&e))?;
        let url = env
            .relay
            .join("/.well-known/gangway")
            .map_err(|e| e.to_string())?;
        let sent_at = SystemTime::now();
        let sent = http.get(url.clone()).send().await;
        let answered_at = SystemTime::now();
        let tls = capture.seen();
        let resp = match sent {
            Ok(r) => r,
            // A handshake that got as far as the certificates is reported
            // by the TLS check with what was presented.
            Err(e) if tls.is_some() => {
                return Ok(RelaySeen {
                    tls,
                    date: None,
                    sent_at,
                    answered_at,
                    discovery: Err(error_chain(&e)),
                })
            }
            Err(e) => return Err(error_chain(&e)),
        };
        let date = resp.headers().get(http::header::DATE).map(|v| {
            let text = String::from_utf8_lossy(v.as_bytes()).into_owned();
            httpdate::parse_http_date(&text).map_err(|_| text)
        });
        let status = resp.status();
        let discovery = if status.is_success() {
            resp.json::<Discovery>()
                .await
                .map_err(|e| format!("{url} is not a Gangway relay's answer: {e}"))
        } else {
            Err(format!("{url}: HTTP {status}"))
        };
        Ok(RelaySeen {
            tls,
            date,
            sent_at,
            answered_at,
            discovery,
        })
    }

    /// The relay's answer, when it got through TLS; else the check that
    /// failed first (`relay` or `tls`), for [`super::Outcome::blocked`].
    pub async fn relay_answer(&self) -> Result<&RelaySeen, &'static str> {
        if self.reachable().await.is_err() {
            return Err("relay");
        }
        match self.relay_seen().await {
            Ok(s) if s.tls.as_ref().is_none_or(|t| t.verdict.is_ok()) => Ok(s),
            _ => Err("tls"),
        }
    }

    /// The relay's discovery document, if it gave one.
    pub async fn discovery(&self) -> Option<&Discovery> {
        self.relay_seen()
            .await
            .as_ref()
            .ok()
            .and_then(|s| s.discovery.as_ref().ok())
    }

    /// An access token usable now: `GANGWAY_TOKEN`, else the keychain's
    /// (refreshed if needed, as `gangway token` does).
    pub async fn token(&self) -> &Result<TimedToken, String> {
        self.token
            .get_or_init(|| async {
                if let Some(t) = &self.inputs.fixed_token {
                    return Ok(TimedToken::peek(t.clone()));
                }
                let env = self.env.as_ref().map_err(Clone::clone)?;
                let creds = Credentials::new(
                    env.relay.clone(),
                    self.egress()?.clone(),
                    Keychain::new(self.inputs.store.clone(), &env.relay),
                    self.login_hint(),
                );
                creds.current().await.map_err(|e| error_chain(&e))
            })
            .await
    }

    /// This device's DPoP key, when the token in use is bound to it (the
    /// relay then wants a proof by it beside the token).
    pub async fn proof_key(&self) -> Option<Arc<gangway_dpop::ProofKey>> {
        self.proof_key
            .get_or_init(|| async {
                if self.inputs.fixed_token.is_some() {
                    return None;
                }
                let token = self.token().await.as_ref().ok()?;
                if !crate::dpop::is_bound(&token.token) {
                    return None;
                }
                let env = self.env.as_ref().ok()?;
                let keychain = Keychain::new(self.inputs.store.clone(), &env.relay);
                crate::dpop::load(&keychain).await.ok().flatten()
            })
            .await
            .clone()
    }

    /// Whether the stored tokens are bound to this device's key (keychain
    /// only; `None` for `GANGWAY_TOKEN` or an unreadable keychain).
    pub async fn binding(&self) -> Option<crate::dpop::TokenBinding> {
        if self.inputs.fixed_token.is_some() {
            return None;
        }
        let env = self.env.as_ref().ok()?;
        let keychain = Keychain::new(self.inputs.store.clone(), &env.relay);
        crate::dpop::binding(&keychain).await.ok()
    }

    /// The token's claims, read without verifying it (display only).
    pub async fn claims(&self) -> Option<UnverifiedClaims> {
        let t = self.token().await.as_ref().ok()?;
        UnverifiedClaims::peek(t.token.expose())
    }

    /// The catalog, as the relay answers it for the token.
    pub async fn catalog(&self) -> &Result<Catalog, String> {
        self.catalog
            .get_or_init(|| async {
                let env = self.env.as_ref().map_err(Clone::clone)?;
                let token = self.token().await.as_ref().map_err(Clone::clone)?;
                let api = RelayApi::new(env.relay.clone(), self.egress()?.clone())
                    .map_err(|e| error_chain(&e))?;
                let key = self.proof_key().await;
                api.catalog_with(&token.token, key.as_deref())
                    .await
                    .map_err(|e| error_chain(&e))
            })
            .await
    }

    /// Versions of this program, the OS, git, ssh and the relay.
    pub async fn versions(&self) -> Versions {
        let mut v = self
            .versions
            .get_or_init(|| async {
                Versions {
                    gangway: env!("CARGO_PKG_VERSION").into(),
                    os: os_version(),
                    git: super::checks::tools::version("git", &["--version"]).await,
                    ssh: super::checks::tools::version("ssh", &["-V"]).await,
                    relay: None,
                }
            })
            .await
            .clone();
        v.relay = self.discovery().await.and_then(|d| d.relay_version.clone());
        v
    }
}

/// "Debian GNU/Linux 12 (bookworm), x86_64" where `/etc/os-release` says,
/// else the OS family.
pub fn os_version() -> String {
    let pretty = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| std::env::consts::OS.to_string());
    format!("{pretty}, {}", std::env::consts::ARCH)
}
