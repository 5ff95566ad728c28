//! The running agent: one environment at a time, brought up and torn down
//! on request, with everything the CLI and the tray show about it.
//!
//! ```text
//! Agent ── current environment ── run task: catalog → up::start → watch tunnel
//!   │                                  (retries; waits for a sign-in; notices)
//!   ├─ use_environment(name): stop the old run (listeners close, streams end
//!   │                         cleanly, ports freed), start the new one
//!   ├─ sign_in / sign_out:     browser flow → keychain; revoke → delete
//!   └─ snapshot():             status::Snapshot (phase, user, tunnels, problems)
//! ```
//!
//! `gangway up` and the tray app both drive an [`Agent`]; the control API
//! ([`crate::control`]) lets a terminal act on whichever runs.
//! Tokens stay in the keychain per environment, so switching back needs
//! no new sign-in.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::config::{AgentConfig, Environment};
use crate::control::{self, ErrorCode, Failure, Handled, Handler, Progress, Request};
use crate::keychain::{Keychain, SecretStore};
use crate::listener::{BindError, ServiceStats};
use crate::notices::{self, Notifier};
use crate::relay_api::{Catalog, RelayApi, Service, ServiceKind};
use crate::signin::{self, Credentials, IdentityProvider, SignInStatus};
use crate::status::{
    self, EnvironmentEntry, Frontend, Notice, NoticeKind, Phase, Problem, ServiceStatus, Snapshot,
};
use crate::token::TokenSource;
use crate::tunnel::{Backoff, TunnelState};
use crate::up::{self, UpOptions};
use crate::AgentError;

/// How often a needed sign-in is looked for in the keychain (a `gangway
/// login` in another terminal, or the tray).
const SIGN_IN_POLL: Duration = Duration::from_secs(10);
/// How long a stopped environment may take to close its listeners and streams.
const STOP_LIMIT: Duration = Duration::from_secs(10);
/// How many past problems and notices are kept.
const KEEP: usize = 20;
/// Per-service problems older than this are not shown.
const PROBLEM_TTL: u64 = 15 * 60;

/// One environment the agent can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvSpec {
    pub name: String,
    pub relay: Url,
    pub ca_file: Option<PathBuf>,
    pub ports: BTreeMap<String, u16>,
    /// The terminal command that signs in to it.
    pub login_hint: String,
}

impl EnvSpec {
    /// An environment from the config file; `ca_override` (a `--ca-file`
    /// flag) wins over the file's.
    pub fn from_config(env: &Environment, ca_override: Option<&PathBuf>) -> Self {
        let ca_hint = ca_override
            .map(|p| format!(" --ca-file {}", p.display()))
            .unwrap_or_default();
        EnvSpec {
            name: env.name.clone(),
            relay: env.relay.clone(),
            ca_file: ca_override.cloned().or_else(|| env.ca_file.clone()),
            ports: env.ports.clone(),
            login_hint: format!("gangway login --env {}{ca_hint}", env.name),
        }
    }
}

/// Where access tokens come from.
#[derive(Clone)]
pub enum Tokens {
    /// The signed-in user's tokens in this keychain (the OS one, or a map
    /// in tests), one namespace per environment.
    Keychain(Arc<dyn SecretStore>),
    /// A fixed source (`GANGWAY_TOKEN`, `--token-file`) for every environment.
    Fixed(TokenSource),
}

/// Everything an [`Agent`] needs, passed in.
pub struct AgentOptions {
    /// The user config file, for reloading and for remembering the chosen
    /// environment. `None`: nothing is written.
    pub config_path: Option<PathBuf>,
    /// A `--ca-file` given on the command line, for every environment.
    pub ca_override: Option<PathBuf>,
    pub environments: Vec<EnvSpec>,
    /// The environment to start with (else none runs until one is chosen).
    pub initial: Option<String>,
    pub tokens: Tokens,
    /// Full local address per service (overrides ports; port 0 allowed).
    pub listen: BTreeMap<String, SocketAddr>,
    pub connect_wait: Duration,
    pub backoff: Backoff,
    /// The `BROWSER` setting for sign-in and "Open Confluence".
    pub browser: Option<String>,
    pub unreachable_notice_after: Duration,
    pub frontend: Frontend,
}

/// The result of a sign-in.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SignedIn {
    pub environment: String,
    pub relay: String,
    pub subject: String,
    pub services: usize,
    /// Set when the relay could not confirm the new token.
    pub warning: Option<String>,
}

/// The result of a sign-out.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SignedOut {
    pub environment: String,
    pub relay: String,
    pub was_signed_in: bool,
    /// `revoked`, `not_offered`, `failed: …` or `none`.
    pub revocation: String,
}

/// A running agent. Cheap to clone.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

struct Inner {
    opts: AgentOptions,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    notices: broadcast::Sender<Notice>,
    /// One switch, sign-out or restart at a time.
    ops: tokio::sync::Mutex<()>,
    stop: CancellationToken,
}

struct State {
    envs: Vec<EnvSpec>,
    current: Option<String>,
    run: Option<Run>,
    signing_in: Option<String>,
    notices: VecDeque<Notice>,
    log: VecDeque<Problem>,
    next_run: u64,
}

/// The current environment's run, as its task reports it.
struct Run {
    /// Tells this run's reports from a replaced run's late ones.
    id: u64,
    env: EnvSpec,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    /// Wakes the task early (a sign-in finished elsewhere).
    nudge: Arc<Notify>,
    phase: Phase,
    since: u64,
    catalog: Option<Catalog>,
    listening: Vec<(Service, SocketAddr, Arc<ServiceStats>)>,
    failed: Vec<BindError>,
    /// The listeners were set up (whether or not any could bind).
    started: bool,
    unreachable_since: Option<u64>,
    token_expires_at: Option<u64>,
    refreshable: bool,
    keychain_user: Option<String>,
}

impl Run {
    /// A run in `phase` since now, with nothing started yet.
    fn new(
        id: u64,
        env: EnvSpec,
        stop: CancellationToken,
        nudge: Arc<Notify>,
        phase: Phase,
    ) -> Self {
        Run {
            id,
            env,
            stop,
            task: None,
            nudge,
            phase,
            since: now(),
            catalog: None,
            listening: Vec::new(),
            failed: Vec::new(),
            started: false,
            unreachable_since: None,
            token_expires_at: None,
            refreshable: false,
            keychain_user: None,
        }
    }
}

fn now() -> u64 {
    signin::now_unix()
}

/// Whether only a new sign-in can fix `e`; its reason without the
/// "sign-in needed:" prefix.
fn sign_in_reason(e: &AgentError) -> Option<String> {
    match e {
        AgentError::Unauthorized(_) | AgentError::NoToken(_) => Some(e.to_string()),
        AgentError::SignIn(signin::SignInError::SignInNeeded(m)) => Some(m.clone()),
        _ => None,
    }
}

impl Agent {
    /// Starts the agent and its initial environment (if any).
    pub fn start(opts: AgentOptions) -> Agent {
        let envs = opts.environments.clone();
        let initial = opts
            .initial
            .clone()
            .filter(|n| envs.iter().any(|e| &e.name == n))
            .or_else(|| (envs.len() == 1).then(|| envs[0].name.clone()));
        let (changed, _) = watch::channel(0);
        let (notices, _) = broadcast::channel(16);
        let agent = Agent {
            inner: Arc::new(Inner {
                opts,
                state: Mutex::new(State {
                    envs,
                    current: None,
                    run: None,
                    signing_in: None,
                    notices: VecDeque::new(),
                    log: VecDeque::new(),
                    next_run: 0,
                }),
                changed,
                notices,
                ops: tokio::sync::Mutex::new(()),
                stop: CancellationToken::new(),
            }),
        };
        if let Some(name) = initial {
            let env = agent
                .lock()
                .envs
                .iter()
                .find(|e| e.name == name)
                .cloned()
                .expect("checked above");
            agent.begin(env, Phase::Connecting { last_error: None });
        }
        agent
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().expect("agent state lock")
    }

    fn bump(&self) {
        self.inner.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Changes whenever anything shown in the snapshot (other than the
    /// byte counters) changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// Notifications to show on the desktop.
    pub fn notices(&self) -> broadcast::Receiver<Notice> {
        self.inner.notices.subscribe()
    }

    pub fn frontend(&self) -> Frontend {
        self.inner.opts.frontend
    }

    pub fn browser(&self) -> Option<&str> {
        self.inner.opts.browser.as_deref()
    }

    /// Makes `env` current and starts its run task.
    fn begin(&self, env: EnvSpec, phase: Phase) {
        let stop = self.inner.stop.child_token();
        let nudge = Arc::new(Notify::new());
        let id = {
            let mut st = self.lock();
            st.next_run += 1;
            let id = st.next_run;
            st.current = Some(env.name.clone());
            st.run = Some(Run::new(
                id,
                env.clone(),
                stop.clone(),
                nudge.clone(),
                phase,
            ));
            id
        };
        let task = tokio::spawn(self.clone().run_env(id, env, stop, nudge));
        if let Some(run) = self.lock().run.as_mut() {
            run.task = Some(task);
        }
        self.bump();
    }

    /// Stops the current run (if any) and waits until its listeners have
    /// closed and its streams ended.
    async fn end_run(&self) {
        let run = self.lock().run.take();
        if let Some(mut run) = run {
            run.stop.cancel();
            if let Some(task) = run.task.take() {
                if tokio::time::timeout(STOP_LIMIT, task).await.is_err() {
                    tracing::warn!(environment = %run.env.name, "the environment took too long to stop");
                }
            }
        }
        self.bump();
    }

    /// Stops everything (the app quits, or Ctrl-C).
    pub async fn shutdown(&self) {
        let _ops = self.inner.ops.lock().await;
        self.end_run().await;
        self.inner.stop.cancel();
    }

    /// Switches to environment `name`: the current one's listeners close
    /// and its streams end first. The choice is remembered as the default
    /// in the user config file. Switching to the current environment
    /// restarts it only if it is not running.
    pub async fn use_environment(&self, name: &str) -> Result<(), AgentError> {
        let _ops = self.inner.ops.lock().await;
        let (env, same) = {
            let st = self.lock();
            let env = st
                .envs
                .iter()
                .find(|e| e.name == name)
                .cloned()
                .ok_or_else(|| {
                    AgentError::Config(format!(
                        "no environment named {name:?} (known: {})",
                        st.envs
                            .iter()
                            .map(|e| e.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
            let same = st.current.as_deref() == Some(name)
                && st
                    .run
                    .as_ref()
                    .is_some_and(|r| r.env == env && !matches!(r.phase, Phase::SignedOut));
            (env, same)
        };
        if let Some(path) = &self.inner.opts.config_path {
            if AgentConfig::load(path)
                .map(|c| c.environments.iter().any(|e| e.name == name))
                .unwrap_or(false)
            {
                if let Err(e) = crate::envs::set_default(path, name) {
                    tracing::warn!("cannot remember the environment choice: {e}");
                }
            }
        }
        if same {
            return Ok(());
        }
        tracing::info!(environment = %name, "switching environment");
        self.end_run().await;
        self.begin(env, Phase::Connecting { last_error: None });
        Ok(())
    }

    /// Re-reads the environments from the config file. The running
    /// environment keeps running even if it was removed.
    pub fn reload(&self) -> Result<(), AgentError> {
        let Some(path) = &self.inner.opts.config_path else {
            return Ok(());
        };
        let config = AgentConfig::load(path)?;
        let ca = self.inner.opts.ca_override.as_ref();
        let mut envs: Vec<EnvSpec> = config
            .environments
            .iter()
            .map(|e| EnvSpec::from_config(e, ca))
            .collect();
        {
            let mut st = self.lock();
            // An environment given on the command line (--relay) stays.
            for e in &st.envs {
                if e.login_hint.contains("--relay") && !envs.iter().any(|n| n.name == e.name) {
                    envs.push(e.clone());
                }
            }
            st.envs = envs;
        }
        self.bump();
        Ok(())
    }

    fn current_env(&self) -> Result<EnvSpec, AgentError> {
        let st = self.lock();
        let name = st.current.clone().ok_or_else(|| {
            AgentError::Config(
                "no environment configured: add one with `gangway env add NAME URL`".into(),
            )
        })?;
        st.envs
            .iter()
            .find(|e| e.name == name)
            .cloned()
            .or_else(|| st.run.as_ref().map(|r| r.env.clone()))
            .ok_or_else(|| AgentError::Config(format!("no environment named {name:?}")))
    }

    fn keychain_for(&self, env: &EnvSpec) -> Result<Keychain, AgentError> {
        match &self.inner.opts.tokens {
            Tokens::Keychain(store) => Ok(Keychain::new(store.clone(), &env.relay)),
            Tokens::Fixed(_) => Err(AgentError::Config(
                "this agent uses a fixed token (GANGWAY_TOKEN or --token-file); \
                 there is nothing to sign in to or out of"
                    .into(),
            )),
        }
    }

    /// Signs in to the current environment through the browser: `show`
    /// gets the page to open (the browser is opened too). On success the
    /// tokens are in the keychain and the environment (re)starts unless it
    /// is already connected.
    pub async fn sign_in(
        &self,
        timeout: Duration,
        show: impl FnOnce(&Url) + Send,
    ) -> Result<SignedIn, AgentError> {
        let env = self.current_env()?;
        let keychain = self.keychain_for(&env)?;
        {
            let mut st = self.lock();
            if let Some(url) = &st.signing_in {
                let url = url.clone();
                drop(st);
                let _ = signin::open_browser(&url, self.browser());
                return Err(AgentError::Config(format!(
                    "a sign-in is already waiting for the browser: {url}"
                )));
            }
            st.signing_in = Some(String::new());
        }
        self.bump();
        let result = self.sign_in_inner(&env, keychain, timeout, show).await;
        self.lock().signing_in = None;
        self.bump();
        if let Err(e) = &result {
            self.log_problem(
                format!("sign-in to {} did not finish", env.name),
                Some(e.to_string()),
            );
        }
        let done = result?;
        // A run still waiting for its catalog is woken; one that never got
        // its listeners (or was signed out) starts again. Running listeners
        // stay bound: their tunnel picks the new sign-in up by itself.
        let _ops = self.inner.ops.lock().await;
        let (restart, nudge) = {
            let st = self.lock();
            match &st.run {
                Some(r) if st.current.as_deref() == Some(env.name.as_str()) => {
                    (r.task.is_none(), !r.started)
                }
                _ => (false, false),
            }
        };
        if restart {
            self.end_run().await;
            self.begin(env, Phase::Connecting { last_error: None });
        } else if nudge {
            self.nudge();
        }
        Ok(done)
    }

    async fn sign_in_inner(
        &self,
        env: &EnvSpec,
        keychain: Keychain,
        timeout: Duration,
        show: impl FnOnce(&Url) + Send,
    ) -> Result<SignedIn, AgentError> {
        keychain
            .run(|k| k.probe())
            .await
            .map_err(|e| AgentError::SignIn(e.into()))?;
        let tls = crate::tls::client_config(env.ca_file.as_deref())?;
        let idp = IdentityProvider::discover(&env.relay, tls.clone()).await?;
        let browser = self.inner.opts.browser.clone();
        let set = signin::authorization_code(&idp, timeout, |url| {
            self.lock().signing_in = Some(url.to_string());
            self.bump();
            if let Err(e) = signin::open_browser(url.as_str(), browser.as_deref()) {
                tracing::warn!("{e}");
            }
            show(url);
        })
        .await?;
        signin::remember(&keychain, &set, &idp.issuer).await?;
        let mut done = SignedIn {
            environment: env.name.clone(),
            relay: crate::keychain::namespace_for(&env.relay),
            subject: signin::UnverifiedClaims::peek(set.access.expose())
                .and_then(|c| c.sub)
                .unwrap_or_else(|| "(unknown user)".into()),
            services: 0,
            warning: None,
        };
        match RelayApi::new(env.relay.clone(), tls)?
            .catalog(&set.access)
            .await
        {
            Ok(c) => {
                done.subject = c.subject;
                done.services = c.services.len();
            }
            Err(AgentError::Unauthorized(why)) => {
                return Err(AgentError::Unauthorized(format!(
                "signed in as {} at the identity provider, but the relay refuses the token: {why}",
                done.subject
            )))
            }
            Err(e) => done.warning = Some(format!("could not check the token with the relay: {e}")),
        }
        tracing::info!(environment = %env.name, subject = %done.subject, "signed in");
        Ok(done)
    }

    /// Signs out of the current environment: its listeners close, the
    /// refresh token is revoked at the provider (best effort) and its
    /// keychain entries deleted. Other environments keep theirs.
    pub async fn sign_out(&self) -> Result<SignedOut, AgentError> {
        let _ops = self.inner.ops.lock().await;
        let env = self.current_env()?;
        let keychain = self.keychain_for(&env)?;
        self.end_run().await;
        let tls = crate::tls::client_config(env.ca_file.as_deref())?;
        let idp = IdentityProvider::discover(&env.relay, tls).await;
        let done = signin::forget(&keychain, idp.as_ref().map_err(Clone::clone)).await;
        // Whatever happened, this environment now shows as signed out.
        {
            let mut st = self.lock();
            st.current = Some(env.name.clone());
            st.next_run += 1;
            st.run = Some(Run::new(
                st.next_run,
                env.clone(),
                CancellationToken::new(),
                Arc::new(Notify::new()),
                Phase::SignedOut,
            ));
        }
        self.bump();
        let done = done?;
        Ok(SignedOut {
            environment: env.name.clone(),
            relay: crate::keychain::namespace_for(&env.relay),
            was_signed_in: done.was_signed_in,
            revocation: match done.revoked {
                Some(Ok(true)) => "revoked".into(),
                Some(Ok(false)) => "not_offered".into(),
                Some(Err(e)) => format!("failed: {e}"),
                None => "none".into(),
            },
        })
    }

    /// Waits until the current environment has settled: listening (even if
    /// the tunnel is still connecting), or stopped at a needed sign-in or an
    /// error the user must fix. Retryable failures (relay unreachable) keep
    /// it waiting.
    pub async fn settled(&self) -> Snapshot {
        let mut rx = self.changes();
        loop {
            let done = {
                let st = self.lock();
                match &st.run {
                    None => true,
                    Some(r) => {
                        r.started
                            || matches!(
                                r.phase,
                                Phase::SignInNeeded { .. }
                                    | Phase::SignedOut
                                    | Phase::Failed { .. }
                            )
                    }
                }
            };
            if done {
                return self.snapshot();
            }
            if rx.changed().await.is_err() {
                return self.snapshot();
            }
        }
    }

    /// The agent's state now.
    pub fn snapshot(&self) -> Snapshot {
        let st = self.lock();
        let opts = &self.inner.opts;
        let run = st.run.as_ref();
        let phase = run.map(|r| r.phase.clone()).unwrap_or(Phase::NoEnvironment);
        let environment = st.current.clone();
        let user = run.and_then(|r| {
            r.catalog
                .as_ref()
                .map(|c| c.subject.clone())
                .or_else(|| r.keychain_user.clone())
        });
        let mut services = Vec::new();
        let mut problems = Vec::new();
        if let Some(r) = run {
            let waiting = !matches!(r.phase, Phase::Connected);
            for (svc, addr, stats) in &r.listening {
                let stats = stats.snapshot();
                if let Some(p) = &stats.last_problem {
                    if now().saturating_sub(p.at) < PROBLEM_TTL {
                        problems.push(Problem {
                            at: p.at,
                            text: p.text.clone(),
                            detail: None,
                        });
                    }
                }
                services.push(ServiceStatus {
                    name: svc.name.clone(),
                    display_name: svc.display_name.clone(),
                    kind: kind_name(svc.kind).into(),
                    local_addr: Some(addr.to_string()),
                    state: if waiting { "waiting" } else { "listening" }.into(),
                    error: None,
                    stats,
                });
            }
            for f in &r.failed {
                let svc = r
                    .catalog
                    .as_ref()
                    .and_then(|c| c.services.iter().find(|s| s.display_name == f.service));
                services.push(ServiceStatus {
                    name: svc
                        .map(|s| s.name.clone())
                        .unwrap_or_else(|| f.service.clone()),
                    display_name: f.service.clone(),
                    kind: svc.map(|s| kind_name(s.kind)).unwrap_or("tcp").into(),
                    local_addr: None,
                    state: "not listening".into(),
                    error: Some(f.reason.clone()),
                    stats: Default::default(),
                });
                problems.push(Problem {
                    at: r.since,
                    text: format!("{}, so {} is not available", f.reason, f.service),
                    detail: None,
                });
            }
            match &r.phase {
                Phase::Connecting {
                    last_error: Some(e),
                }
                | Phase::Reconnecting {
                    last_error: Some(e),
                } => {
                    let since = r.unreachable_since.unwrap_or(r.since);
                    problems.push(Problem {
                        at: since,
                        text: format!("relay unreachable since {}, retrying", status::clock(since)),
                        detail: Some(e.clone()),
                    });
                }
                Phase::SignInNeeded { reason } => problems.push(Problem {
                    at: r.since,
                    text: "sign-in needed: your sign-in has ended".into(),
                    detail: Some(reason.clone()),
                }),
                Phase::Failed { reason } => problems.push(Problem {
                    at: r.since,
                    text: reason.clone(),
                    detail: None,
                }),
                _ => {}
            }
        }
        problems.sort_by_key(|p| std::cmp::Reverse(p.at));
        for p in st.log.iter().rev() {
            if !problems.iter().any(|q| q.text == p.text) {
                problems.push(p.clone());
            }
        }
        problems.truncate(KEEP);
        let links = status::links(&services);
        Snapshot {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            frontend: opts.frontend,
            relay: run.map(|r| crate::keychain::namespace_for(&r.env.relay)),
            login_hint: run.map(|r| r.env.login_hint.clone()),
            environments: st
                .envs
                .iter()
                .map(|e| EnvironmentEntry {
                    name: e.name.clone(),
                    relay: crate::keychain::namespace_for(&e.relay),
                    current: st.current.as_deref() == Some(e.name.as_str()),
                })
                .collect(),
            status_line: status::status_line(environment.as_deref(), user.as_deref(), &phase),
            phase_since: run.map(|r| r.since).unwrap_or(0),
            phase,
            environment,
            groups: run
                .and_then(|r| r.catalog.as_ref().map(|c| c.groups.clone()))
                .unwrap_or_default(),
            user,
            token_expires_at: run.and_then(|r| r.token_expires_at),
            refreshable: run.is_some_and(|r| r.refreshable),
            signing_in: st.signing_in.clone().filter(|u| !u.is_empty()),
            interactive: matches!(opts.tokens, Tokens::Keychain(_)),
            services,
            problems,
            notices: st.notices.iter().cloned().collect(),
            links,
        }
    }

    /// Updates the current run, if it is still run `id`.
    fn update(&self, id: u64, f: impl FnOnce(&mut Run)) {
        let changed = {
            let mut st = self.lock();
            match st.run.as_mut() {
                Some(r) if r.id == id => {
                    f(r);
                    true
                }
                _ => false,
            }
        };
        if changed {
            self.bump();
        }
    }

    fn set_phase(&self, id: u64, phase: Phase) {
        let unchanged = self
            .lock()
            .run
            .as_ref()
            .is_some_and(|r| r.id == id && r.phase == phase);
        if unchanged {
            return;
        }
        self.update(id, |r| {
            match &phase {
                Phase::Connecting {
                    last_error: Some(_),
                }
                | Phase::Reconnecting {
                    last_error: Some(_),
                } => {
                    r.unreachable_since.get_or_insert_with(now);
                }
                Phase::Connecting { last_error: None } => {}
                _ => r.unreachable_since = None,
            }
            if std::mem::discriminant(&r.phase) != std::mem::discriminant(&phase) {
                r.since = now();
            }
            r.phase = phase;
        });
    }

    fn announce(&self, env: &EnvSpec, kind: NoticeKind) {
        let since = {
            let st = self.lock();
            st.run
                .as_ref()
                .and_then(|r| r.unreachable_since)
                .map(status::clock)
        };
        let how = match (&self.inner.opts.tokens, self.inner.opts.frontend) {
            (Tokens::Fixed(_), _) => "The relay refuses the access token; provide a new one \
                 (GANGWAY_TOKEN or --token-file)."
                .to_string(),
            (_, Frontend::Tray) => "Choose Sign in… in the Gangway menu.".to_string(),
            (_, Frontend::Cli) => format!("Run `{}`.", env.login_hint),
        };
        let (title, body) = notices::wording(kind, &env.name, since.as_deref(), &how);
        let notice = Notice {
            at: now(),
            kind,
            title,
            body,
        };
        tracing::info!(title = %notice.title, "{}", notice.body);
        {
            let mut st = self.lock();
            st.notices.push_back(notice.clone());
            while st.notices.len() > KEEP {
                st.notices.pop_front();
            }
        }
        let _ = self.inner.notices.send(notice);
        self.bump();
    }

    fn log_problem(&self, text: String, detail: Option<String>) {
        {
            let mut st = self.lock();
            if st.log.back().is_some_and(|p| p.text == text) {
                return;
            }
            st.log.push_back(Problem {
                at: now(),
                text,
                detail,
            });
            while st.log.len() > KEEP {
                st.log.pop_front();
            }
        }
        self.bump();
    }

    fn token_source(&self, env: &EnvSpec, tls: &Arc<rustls::ClientConfig>) -> TokenSource {
        match &self.inner.opts.tokens {
            Tokens::Fixed(t) => t.clone(),
            Tokens::Keychain(store) => TokenSource::SignedIn(Arc::new(Credentials::new(
                env.relay.clone(),
                tls.clone(),
                Keychain::new(store.clone(), &env.relay),
                env.login_hint.clone(),
            ))),
        }
    }

    /// Reads what the keychain says about the sign-in (user, expiry).
    async fn refresh_token_info(&self, id: u64, env: &EnvSpec, tokens: &TokenSource) {
        let (expires, refreshable, user) = match &self.inner.opts.tokens {
            Tokens::Keychain(store) => {
                let k = Keychain::new(store.clone(), &env.relay);
                match signin::status(&k).await {
                    Ok(SignInStatus::SignedIn {
                        subject,
                        expires_at,
                        refreshable,
                        ..
                    }) => (expires_at, refreshable, subject),
                    _ => (None, false, None),
                }
            }
            Tokens::Fixed(_) => match tokens.current_timed().await {
                Ok(t) => (t.expires_at, false, None),
                Err(_) => (None, false, None),
            },
        };
        self.update(id, |r| {
            r.token_expires_at = expires;
            r.refreshable = refreshable;
            r.keychain_user = user;
        });
    }

    /// One environment's life: get the catalog (retrying while the relay is
    /// unreachable, waiting while a sign-in is needed), start the listeners
    /// and the tunnel, then follow the tunnel's state until `stop`.
    async fn run_env(self, id: u64, env: EnvSpec, stop: CancellationToken, nudge: Arc<Notify>) {
        let mut notifier = Notifier::new(self.inner.opts.unreachable_notice_after);
        let mut attempt = 0u32;
        let tls = match crate::tls::client_config(env.ca_file.as_deref()) {
            Ok(t) => t,
            Err(e) => {
                self.set_phase(
                    id,
                    Phase::Failed {
                        reason: e.to_string(),
                    },
                );
                stop.cancelled().await;
                return;
            }
        };
        let tokens = self.token_source(&env, &tls);
        let api = match RelayApi::new(env.relay.clone(), tls.clone()) {
            Ok(a) => a,
            Err(e) => {
                self.set_phase(
                    id,
                    Phase::Failed {
                        reason: e.to_string(),
                    },
                );
                stop.cancelled().await;
                return;
            }
        };
        let observe = |notifier: &mut Notifier, agent: &Agent| {
            let phase = agent.lock().run.as_ref().map(|r| r.phase.clone());
            if let Some(phase) = phase {
                if let Some(kind) = notifier.observe(tokio::time::Instant::now(), &phase) {
                    agent.announce(&env, kind);
                }
            }
        };
        let running = loop {
            // Phase 1: the catalog.
            let catalog = loop {
                let got = tokio::select! {
                    r = async {
                        let token = tokens.current().await?;
                        match api.catalog(&token).await {
                            // Refused: never offer that token again; one
                            // more try with a fresh one before a sign-in.
                            Err(AgentError::Unauthorized(_)) => {
                                tokens.rejected(&token).await;
                                api.catalog(&tokens.current().await?).await
                            }
                            other => other,
                        }
                    } => r,
                    _ = stop.cancelled() => return,
                };
                let wait = match got {
                    Ok(c) => break c,
                    Err(e) => {
                        if let Some(reason) = sign_in_reason(&e) {
                            self.set_phase(id, Phase::SignInNeeded { reason });
                            attempt = 0;
                            SIGN_IN_POLL
                        } else if e.retryable() {
                            tracing::warn!(environment = %env.name, "cannot reach the relay: {e}");
                            self.set_phase(
                                id,
                                Phase::Connecting {
                                    last_error: Some(e.to_string()),
                                },
                            );
                            let d = self
                                .inner
                                .opts
                                .backoff
                                .delay(attempt, &mut rand::thread_rng());
                            attempt += 1;
                            d
                        } else {
                            tracing::error!(environment = %env.name, "{e}");
                            self.set_phase(
                                id,
                                Phase::Failed {
                                    reason: e.to_string(),
                                },
                            );
                            Duration::from_secs(30)
                        }
                    }
                };
                observe(&mut notifier, &self);
                let deadline = tokio::time::Instant::now() + wait;
                // Wake every few seconds for the unreachable-notice clock.
                loop {
                    let step = deadline
                        .saturating_duration_since(tokio::time::Instant::now())
                        .min(Duration::from_secs(5));
                    if step.is_zero() {
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(step) => observe(&mut notifier, &self),
                        _ = nudge.notified() => break,
                        _ = stop.cancelled() => return,
                    }
                }
            };
            self.update(id, |r| r.catalog = Some(catalog.clone()));
            // Phase 2: listeners and tunnel (up::start fetches the catalog once more).
            let running = tokio::select! {
                r = up::start(
                    UpOptions {
                        relay: env.relay.clone(),
                        tls: tls.clone(),
                        tokens: tokens.clone(),
                        ports: env.ports.clone(),
                        listen: self.inner.opts.listen.clone(),
                        connect_wait: self.inner.opts.connect_wait,
                        backoff: self.inner.opts.backoff,
                    },
                    stop.clone(),
                ) => r,
                _ = stop.cancelled() => return,
            };
            match running {
                Ok(r) => break r,
                Err(e) => {
                    let (phase, wait) = match sign_in_reason(&e) {
                        Some(reason) => (Phase::SignInNeeded { reason }, SIGN_IN_POLL),
                        None if e.retryable() => (
                            Phase::Connecting {
                                last_error: Some(e.to_string()),
                            },
                            self.inner
                                .opts
                                .backoff
                                .delay(attempt, &mut rand::thread_rng()),
                        ),
                        None => (
                            Phase::Failed {
                                reason: e.to_string(),
                            },
                            Duration::from_secs(30),
                        ),
                    };
                    attempt += 1;
                    self.set_phase(id, phase);
                    observe(&mut notifier, &self);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = nudge.notified() => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        };
        for f in &running.failed {
            self.log_problem(
                format!("{}, so {} is not available", f.reason, f.service),
                None,
            );
        }
        let listening: Vec<_> = running
            .listening
            .iter()
            .zip(&running.stats)
            .map(|((s, a), st)| (s.clone(), *a, st.clone()))
            .collect();
        for (s, a, _) in &listening {
            tracing::info!(environment = %env.name, service = %s.name, "listening on {a}");
        }
        self.update(id, |r| {
            r.catalog = Some(running.catalog.clone());
            r.listening = listening;
            r.started = true;
            r.failed = running
                .failed
                .iter()
                .map(|f| BindError {
                    service: f.service.clone(),
                    addr: f.addr,
                    reason: f.reason.clone(),
                })
                .collect();
        });
        // Phase 3: follow the tunnel.
        let mut state = running.tunnel.watch();
        let mut was_connected = false;
        let mut last_info = tokio::time::Instant::now() - Duration::from_secs(3600);
        loop {
            let phase = match &*state.borrow_and_update() {
                TunnelState::Connected(_) => {
                    was_connected = true;
                    Phase::Connected
                }
                TunnelState::Connecting { last_error, .. } if was_connected => {
                    Phase::Reconnecting {
                        last_error: last_error.clone(),
                    }
                }
                TunnelState::Connecting { last_error, .. } => Phase::Connecting {
                    last_error: last_error.clone(),
                },
                TunnelState::SignInNeeded(why) => Phase::SignInNeeded {
                    reason: why.clone(),
                },
                TunnelState::Stopped => break,
            };
            let fresh_info =
                matches!(phase, Phase::Connected) && last_info.elapsed() > Duration::from_secs(15);
            self.set_phase(id, phase);
            observe(&mut notifier, &self);
            if fresh_info {
                last_info = tokio::time::Instant::now();
                self.refresh_token_info(id, &env, &tokens).await;
            }
            tokio::select! {
                r = state.changed() => if r.is_err() { break },
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = stop.cancelled() => break,
            }
        }
        stop.cancel();
        if !running.stopped(STOP_LIMIT).await {
            tracing::warn!(environment = %env.name, "some streams did not end in time");
        }
        tracing::info!(environment = %env.name, "environment stopped");
    }

    /// Wakes the current run early (e.g. a sign-in happened elsewhere).
    pub fn nudge(&self) {
        if let Some(r) = &self.lock().run {
            r.nudge.notify_one();
        }
    }
}

fn kind_name(k: ServiceKind) -> &'static str {
    match k {
        ServiceKind::Http => "http",
        ServiceKind::Tcp => "tcp",
    }
}

/// The agent as a control-API handler (the headless `gangway up`; the tray
/// wraps it to add window and menu requests).
pub struct AgentControl(pub Agent);

impl Handler for AgentControl {
    fn handle(&self, request: Request, progress: Progress) -> Handled {
        let agent = self.0.clone();
        Box::pin(async move { handle_agent_request(&agent, request, progress).await })
    }
}

/// Answers the requests every agent understands.
pub async fn handle_agent_request(
    agent: &Agent,
    request: Request,
    progress: Progress,
) -> Result<serde_json::Value, Failure> {
    fn json(v: impl serde::Serialize) -> serde_json::Value {
        serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
    }
    match request {
        Request::Status => Ok(json(agent.snapshot())),
        Request::Use { environment } => {
            agent
                .use_environment(&environment)
                .await
                .map_err(|e| match e {
                    AgentError::Config(m) if m.starts_with("no environment named") => {
                        Failure::new(ErrorCode::NotFound, m)
                    }
                    other => Failure::new(ErrorCode::Failed, other.to_string()),
                })?;
            Ok(json(agent.snapshot()))
        }
        Request::Login { timeout_secs } => {
            let timeout = Duration::from_secs(timeout_secs.unwrap_or(300));
            let p = progress.clone();
            let done = agent
                .sign_in(timeout, move |url| {
                    p.send("Open this page to sign in", Some(url.to_string()));
                })
                .await
                .map_err(|e| {
                    let code = if e.to_string().contains("already waiting") {
                        ErrorCode::Busy
                    } else {
                        ErrorCode::SignIn
                    };
                    Failure::new(code, e.to_string())
                })?;
            Ok(json(done))
        }
        Request::Logout => {
            let done = agent
                .sign_out()
                .await
                .map_err(|e| Failure::new(ErrorCode::SignIn, e.to_string()))?;
            Ok(json(done))
        }
        Request::Reload => {
            agent
                .reload()
                .map_err(|e| Failure::new(ErrorCode::Failed, e.to_string()))?;
            agent.nudge();
            Ok(json(agent.snapshot()))
        }
        Request::Show | Request::Menu | Request::Activate { .. } => Err(Failure::new(
            ErrorCode::Unsupported,
            "this agent is `gangway up` (no tray, no window)",
        )),
    }
}

/// Serves the control API for `handler` at the default path (or
/// `GANGWAY_CONTROL_SOCKET`). `Ok(None)`: another agent already serves it.
pub async fn serve_control(
    handler: Arc<dyn Handler>,
    stop: CancellationToken,
) -> Result<Option<(PathBuf, JoinHandle<()>)>, control::ControlError> {
    let path = control::socket_path();
    match control::ControlServer::bind(&path).await? {
        control::Bound::Serving(server) => {
            let p = server.path().to_path_buf();
            Ok(Some((p, server.serve(handler, stop))))
        }
        control::Bound::Taken(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keychain::MemoryStore;

    fn env(name: &str, relay: &str) -> EnvSpec {
        EnvSpec {
            name: name.into(),
            relay: Url::parse(relay).unwrap(),
            ca_file: None,
            ports: BTreeMap::new(),
            login_hint: format!("gangway login --env {name}"),
        }
    }

    fn options(store: MemoryStore, envs: Vec<EnvSpec>) -> AgentOptions {
        AgentOptions {
            config_path: None,
            ca_override: None,
            initial: envs.first().map(|e| e.name.clone()),
            environments: envs,
            tokens: Tokens::Keychain(Arc::new(store)),
            listen: BTreeMap::new(),
            connect_wait: Duration::from_secs(1),
            backoff: Backoff {
                base: Duration::from_millis(10),
                max: Duration::from_millis(50),
            },
            browser: Some("true".into()),
            unreachable_notice_after: Duration::from_secs(60),
            frontend: Frontend::Tray,
        }
    }

    #[tokio::test]
    async fn no_environment_says_so() {
        let a = Agent::start(options(MemoryStore::new(), vec![]));
        let s = a.snapshot();
        assert_eq!(s.phase, Phase::NoEnvironment);
        assert_eq!(s.status_line, "Gangway — no environment configured");
        let e = a.sign_in(Duration::from_secs(1), |_| {}).await.unwrap_err();
        assert!(e.to_string().contains("gangway env add"), "{e}");
        a.shutdown().await;
    }

    #[tokio::test]
    async fn unreachable_relay_then_switch_keeps_the_other_environment() {
        // Nothing listens on these ports: both relays are unreachable.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = dead.local_addr().unwrap().port();
        drop(dead);
        let store = MemoryStore::new();
        let prod = env("Production", &format!("http://127.0.0.1:{port}"));
        let staging = env("Staging", &format!("http://127.0.0.1:{}", port));
        let mut staging = staging;
        staging.relay = Url::parse(&format!("http://localhost:{port}")).unwrap();
        // Prod has a stored sign-in (an opaque token the relay would check).
        let k = Keychain::new(Arc::new(store.clone()), &prod.relay);
        let set = signin::TokenSet {
            access: gangway_wire::Token::new("opaque"),
            refresh: Some(signin::Secret::new("r")),
            obtained_at: now(),
            expires_at: Some(now() + 600),
        };
        signin::remember(&k, &set, "https://idp").await.unwrap();

        let a = Agent::start(options(store.clone(), vec![prod.clone(), staging.clone()]));
        let mut rx = a.changes();
        // Prod: relay unreachable, retrying, with a plain problem.
        loop {
            let s = a.snapshot();
            if matches!(
                s.phase,
                Phase::Connecting {
                    last_error: Some(_)
                }
            ) {
                assert_eq!(s.status_line, "Production — connecting…");
                assert!(
                    s.problems
                        .iter()
                        .any(|p| p.text.starts_with("relay unreachable since ")),
                    "{:?}",
                    s.problems
                );
                break;
            }
            tokio::time::timeout(Duration::from_secs(10), rx.changed())
                .await
                .unwrap()
                .unwrap();
        }
        // Staging has no sign-in: switching says so, prod's tokens stay.
        a.use_environment("Staging").await.unwrap();
        loop {
            let s = a.snapshot();
            if let Phase::SignInNeeded { reason } = &s.phase {
                assert!(reason.contains("not signed in"), "{reason}");
                assert_eq!(s.status_line, "Staging — sign-in needed");
                assert!(s
                    .environments
                    .iter()
                    .any(|e| e.name == "Staging" && e.current));
                break;
            }
            tokio::time::timeout(Duration::from_secs(10), rx.changed())
                .await
                .unwrap()
                .unwrap();
        }
        assert!(matches!(
            signin::status(&k).await.unwrap(),
            SignInStatus::SignedIn { .. }
        ));
        let e = a.use_environment("Nope").await.unwrap_err();
        assert!(e.to_string().contains("known: Production, Staging"), "{e}");
        a.shutdown().await;
    }
}
