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
//!
//! Rooms: this file is the handle and its options; [`state`] the data
//! behind the lock; `run` one environment's life; `snapshot` what is
//! shown; `account` sign-in and sign-out.
//! Tokens stay in the keychain per environment, so switching back needs
//! no new sign-in.

mod account;
mod proxy;
mod run;
mod snapshot;
mod state;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, watch, Notify};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::config::{AgentConfig, Environment};
use crate::keychain::SecretStore;
use crate::net::{Egress, ExplicitProxy};
use crate::status::{Frontend, Notice, Phase, Snapshot};
use crate::token::TokenSource;
use crate::tunnel::Backoff;
use crate::AgentError;
use state::State;

pub use crate::signin::{Revocation, SignedIn, SignedOut};

/// Where an environment came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvSource {
    /// The user or managed config file: a reload may change or remove it.
    ConfigFile,
    /// A `--relay` flag: it stays across reloads.
    CommandLine,
}

/// One environment the agent can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvSpec {
    pub name: String,
    pub relay: Url,
    pub ca_file: Option<PathBuf>,
    /// Its explicit proxy setting, if any (else the environment variables).
    pub proxy: Option<ExplicitProxy>,
    pub ports: BTreeMap<String, u16>,
    /// The terminal command that signs in to it.
    pub login_hint: String,
    pub source: EnvSource,
    /// Set by the organisation's policy (shown locked).
    pub locked: bool,
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
            proxy: env.proxy.clone(),
            ports: env.ports.clone(),
            login_hint: format!("gangway login --env {}{ca_hint}", env.name),
            source: EnvSource::ConfigFile,
            locked: env.locked(),
        }
    }

    /// How to reach its relay and identity provider: the OS trust store
    /// plus its CA file, and its proxy decision.
    pub fn egress(&self) -> Result<Egress, AgentError> {
        Egress::for_environment(self.ca_file.as_deref(), self.proxy.as_ref())
    }
}

/// What the organisation's policy decides for the running agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Managed {
    /// Shown in the tray and the status window.
    pub organization: Option<String>,
    /// The environment a mandatory `default_environment` fixes, and the
    /// policy file that set it: switching away is refused.
    pub fixed_environment: Option<(String, Option<String>)>,
    /// A mandatory `start_at_login`: the tray applies it and locks the item.
    pub start_at_login: Option<bool>,
}

impl Managed {
    pub fn from_config(c: &AgentConfig) -> Self {
        Managed {
            organization: c.settings.organization_name.clone(),
            fixed_environment: c
                .settings
                .locked(crate::policy::Key::DefaultEnvironment)
                .and_then(|s| Some((c.default_environment.clone()?, s.origin.clone()))),
            start_at_login: c
                .settings
                .locked(crate::policy::Key::StartAtLogin)
                .map(|_| c.settings.start_at_login),
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
    /// A service account (`--client-credentials`): a client credentials
    /// grant at each environment's identity provider, tokens in memory.
    Service(crate::signin::ClientCredentials),
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
    /// A non-loopback one is refused unless `allow_network_listen`.
    pub listen: BTreeMap<String, SocketAddr>,
    /// Whether `listen` may name a non-loopback address (anyone who can
    /// reach it acts as the user: see [`crate::door::listen`]).
    pub allow_network_listen: bool,
    pub connect_wait: Duration,
    pub backoff: Backoff,
    /// The `BROWSER` setting for sign-in and "Open Confluence".
    pub browser: Option<String>,
    pub unreachable_notice_after: Duration,
    pub frontend: Frontend,
    /// What the organisation's policy decides (re-read on reload).
    pub managed: Managed,
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
    /// The local door of every environment's listeners.
    door: Arc<crate::door::Door>,
}

fn now() -> u64 {
    crate::signin::now_unix()
}

impl Agent {
    /// Starts the agent and its initial environment (if any).
    pub fn start(opts: AgentOptions) -> Agent {
        let envs = opts.environments.clone();
        let initial = opts
            .initial
            .as_ref()
            .and_then(|n| envs.iter().find(|e| &e.name == n))
            .or_else(|| envs.first().filter(|_| envs.len() == 1))
            .cloned();
        let (changed, _) = watch::channel(0);
        let (notices, _) = broadcast::channel(16);
        let managed = opts.managed.clone();
        let agent = Agent {
            inner: Arc::new(Inner {
                opts,
                state: Mutex::new(State::new(envs, managed)),
                changed,
                notices,
                ops: tokio::sync::Mutex::new(()),
                stop: CancellationToken::new(),
                door: Default::default(),
            }),
        };
        if let Some(env) = initial {
            agent.begin(env, Phase::Connecting { last_error: None });
        }
        agent
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: go on
        // with it rather than take the whole agent down.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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

    /// The local door shared by this agent's listeners.
    /// The user's config file this agent reads, if it was given one.
    pub fn config_path(&self) -> Option<&std::path::Path> {
        self.inner.opts.config_path.as_deref()
    }

    pub fn door(&self) -> &Arc<crate::door::Door> {
        &self.inner.door
    }

    pub fn frontend(&self) -> Frontend {
        self.inner.opts.frontend
    }

    pub fn browser(&self) -> Option<&str> {
        self.inner.opts.browser.as_deref()
    }

    /// The agent's state now.
    pub fn snapshot(&self) -> Snapshot {
        let door = self.inner.door.snapshot();
        snapshot::snapshot(&self.lock(), &self.inner.opts, door, now())
    }

    /// Makes `env` current and starts its run task.
    fn begin(&self, env: EnvSpec, phase: Phase) {
        let stop = self.inner.stop.child_token();
        let nudge = Arc::new(Notify::new());
        let id = self
            .lock()
            .start_run(env.clone(), stop.clone(), nudge.clone(), phase, now());
        let task = tokio::spawn(self.clone().run_env(id, env, stop, nudge));
        if let Some(run) = self.lock().run_mut(id) {
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
                if tokio::time::timeout(run::STOP_LIMIT, task).await.is_err() {
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
                .env(name)
                .cloned()
                .ok_or_else(|| AgentError::UnknownEnvironment {
                    name: name.to_string(),
                    known: st.env_names(),
                })?;
            if let Some((fixed, origin)) = &st.managed.fixed_environment {
                if fixed != name {
                    return Err(AgentError::Locked {
                        what: format!("the environment ({fixed})"),
                        key: crate::policy::Key::DefaultEnvironment.name(),
                        origin: origin.clone(),
                    });
                }
            }
            let same = st.current.as_deref() == Some(name)
                && st
                    .run
                    .as_ref()
                    .is_some_and(|r| r.env == env && !matches!(r.phase, Phase::SignedOut));
            (env, same)
        };
        if env.source == EnvSource::ConfigFile {
            self.remember_choice(name);
        }
        if same {
            return Ok(());
        }
        tracing::info!(environment = %name, "switching environment");
        self.end_run().await;
        self.begin(env, Phase::Connecting { last_error: None });
        Ok(())
    }

    /// Makes `name` the config file's default environment (best effort).
    fn remember_choice(&self, name: &str) {
        let Some(path) = &self.inner.opts.config_path else {
            return;
        };
        let listed = AgentConfig::load(path)
            .map(|c| c.environments.iter().any(|e| e.name == name))
            .unwrap_or(false);
        if listed {
            if let Err(e) = crate::envs::set_default(path, name) {
                tracing::warn!("cannot remember the environment choice: {e}");
            }
        }
    }

    /// Re-reads the environments from the config file. The running
    /// environment keeps running even if it was removed; one given on the
    /// command line stays.
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
            for e in &st.envs {
                if e.source == EnvSource::CommandLine && !envs.iter().any(|n| n.name == e.name) {
                    envs.push(e.clone());
                }
            }
            st.envs = envs;
            st.managed = Managed::from_config(&config);
        }
        self.bump();
        Ok(())
    }

    fn current_env(&self) -> Result<EnvSpec, AgentError> {
        let st = self.lock();
        let name = st.current.clone().ok_or(AgentError::NoEnvironment)?;
        st.env(&name)
            .cloned()
            .or_else(|| st.run.as_ref().map(|r| r.env.clone()))
            .ok_or_else(|| AgentError::UnknownEnvironment {
                name,
                known: st.env_names(),
            })
    }

    /// Waits until the current environment has settled: listening (even if
    /// the tunnel is still connecting), or stopped at a needed sign-in or an
    /// error the user must fix. Retryable failures (relay unreachable) keep
    /// it waiting.
    pub async fn settled(&self) -> Snapshot {
        let mut rx = self.changes();
        loop {
            let done = self.lock().run.as_ref().is_none_or(|r| r.settled());
            if done || rx.changed().await.is_err() {
                return self.snapshot();
            }
        }
    }

    /// Wakes the current run early (e.g. a sign-in happened elsewhere).
    pub fn nudge(&self) {
        if let Some(r) = &self.lock().run {
            r.nudge.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keychain::{Keychain, MemoryStore};
    use crate::signin::{self, SignInStatus};

    fn env(name: &str, relay: &str) -> EnvSpec {
        EnvSpec {
            name: name.into(),
            relay: Url::parse(relay).unwrap(),
            ca_file: None,
            proxy: None,
            ports: BTreeMap::new(),
            login_hint: format!("gangway login --env {name}"),
            source: EnvSource::ConfigFile,
            locked: false,
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
            allow_network_listen: false,
            connect_wait: Duration::from_secs(1),
            backoff: Backoff {
                base: Duration::from_millis(10),
                max: Duration::from_millis(50),
            },
            browser: Some("true".into()),
            unreachable_notice_after: Duration::from_secs(60),
            frontend: Frontend::Tray,
            managed: Managed::default(),
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
