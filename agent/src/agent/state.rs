//! What the agent knows, behind its one lock: the environments, the current
//! environment's run as its task reports it, recent problems and notices.
//! Plain data with the small rules for changing it; no I/O, no tasks.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::EnvSpec;
use crate::listener::BindError;
use crate::relay_api::Catalog;
use crate::status::{Notice, Phase, Problem};
use crate::tunnel::Tunnel;
use crate::up::Serving;

/// How many past problems and notices are kept.
pub(super) const KEEP: usize = 20;

pub(super) struct State {
    pub envs: Vec<EnvSpec>,
    pub current: Option<String>,
    pub run: Option<Run>,
    /// `Some("")` while a sign-in starts, then the page the browser shows.
    pub signing_in: Option<String>,
    pub notices: VecDeque<Notice>,
    pub log: VecDeque<Problem>,
    pub next_run: u64,
    /// What the organisation's policy decides.
    pub managed: super::Managed,
}

impl State {
    pub fn new(envs: Vec<EnvSpec>, managed: super::Managed) -> Self {
        State {
            managed,
            envs,
            current: None,
            run: None,
            signing_in: None,
            notices: VecDeque::new(),
            log: VecDeque::new(),
            next_run: 0,
        }
    }

    /// The known environment `name`.
    pub fn env(&self, name: &str) -> Option<&EnvSpec> {
        self.envs.iter().find(|e| e.name == name)
    }

    pub fn env_names(&self) -> Vec<String> {
        self.envs.iter().map(|e| e.name.clone()).collect()
    }

    /// Makes `env` current with a new run in `phase`; its id.
    pub fn start_run(
        &mut self,
        env: EnvSpec,
        stop: CancellationToken,
        nudge: Arc<Notify>,
        phase: Phase,
        now: u64,
    ) -> u64 {
        self.next_run += 1;
        let id = self.next_run;
        self.current = Some(env.name.clone());
        self.run = Some(Run::new(id, env, stop, nudge, phase, now));
        id
    }

    /// The current run, if it is still run `id` (a replaced run's late
    /// reports are dropped).
    pub fn run_mut(&mut self, id: u64) -> Option<&mut Run> {
        self.run.as_mut().filter(|r| r.id == id)
    }

    /// Remembers a problem; `false` if it repeats the last one.
    pub fn log_problem(&mut self, problem: Problem) -> bool {
        if self.log.back().is_some_and(|p| p.text == problem.text) {
            return false;
        }
        self.log.push_back(problem);
        while self.log.len() > KEEP {
            self.log.pop_front();
        }
        true
    }

    pub fn push_notice(&mut self, notice: Notice) {
        self.notices.push_back(notice);
        while self.notices.len() > KEEP {
            self.notices.pop_front();
        }
    }
}

/// The current environment's run, as its task reports it.
pub(super) struct Run {
    /// Tells this run's reports from a replaced run's late ones.
    pub id: u64,
    pub env: EnvSpec,
    pub stop: CancellationToken,
    pub task: Option<JoinHandle<()>>,
    /// Wakes the task early (a sign-in finished elsewhere).
    pub nudge: Arc<Notify>,
    pub phase: Phase,
    pub since: u64,
    pub catalog: Option<Catalog>,
    pub listening: Vec<Serving>,
    pub failed: Vec<BindError>,
    /// The environment's tunnel, once started (for streams opened without
    /// a listener: `gangway ssh-proxy`).
    pub tunnel: Option<Tunnel>,
    /// The listeners were set up (whether or not any could bind).
    pub started: bool,
    pub unreachable_since: Option<u64>,
    pub token_expires_at: Option<u64>,
    pub refreshable: bool,
    pub keychain_user: Option<String>,
    pub token_binding: Option<crate::dpop::TokenBinding>,
}

impl Run {
    /// A run in `phase` since `now`, with nothing started yet.
    pub fn new(
        id: u64,
        env: EnvSpec,
        stop: CancellationToken,
        nudge: Arc<Notify>,
        phase: Phase,
        now: u64,
    ) -> Self {
        Run {
            id,
            env,
            stop,
            task: None,
            nudge,
            phase,
            since: now,
            catalog: None,
            listening: Vec::new(),
            failed: Vec::new(),
            tunnel: None,
            started: false,
            unreachable_since: None,
            token_expires_at: None,
            refreshable: false,
            keychain_user: None,
            token_binding: None,
        }
    }

    /// Moves to `phase` at `now`: `since` restarts when the kind of phase
    /// changes, and the "unreachable since" clock runs while connection
    /// attempts fail. `false` if nothing changed.
    pub fn set_phase(&mut self, phase: Phase, now: u64) -> bool {
        if self.phase == phase {
            return false;
        }
        match &phase {
            Phase::Connecting {
                last_error: Some(_),
            }
            | Phase::Reconnecting {
                last_error: Some(_),
            } => {
                self.unreachable_since.get_or_insert(now);
            }
            Phase::Connecting { last_error: None } => {}
            _ => self.unreachable_since = None,
        }
        if std::mem::discriminant(&self.phase) != std::mem::discriminant(&phase) {
            self.since = now;
        }
        self.phase = phase;
        true
    }

    /// Whether the run has settled: listening (even if the tunnel is still
    /// connecting), or stopped at something the user must do.
    pub fn settled(&self) -> bool {
        self.started
            || matches!(
                self.phase,
                Phase::SignInNeeded { .. } | Phase::SignedOut | Phase::Failed { .. }
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use url::Url;

    fn run() -> Run {
        let env = EnvSpec {
            name: "prod".into(),
            relay: Url::parse("https://relay.example").unwrap(),
            ca_file: None,
            proxy: None,
            ports: BTreeMap::new(),
            login_hint: "gangway login --env prod".into(),
            source: super::super::EnvSource::ConfigFile,
            locked: false,
        };
        Run::new(
            1,
            env,
            CancellationToken::new(),
            Arc::new(Notify::new()),
            Phase::Connecting { last_error: None },
            100,
        )
    }

    #[test]
    fn unreachable_clock_starts_at_the_first_failure_and_stops_when_connected() {
        let mut r = run();
        let failing = |e: &str| Phase::Connecting {
            last_error: Some(e.into()),
        };
        assert!(r.set_phase(failing("refused"), 110));
        assert!(r.set_phase(failing("timed out"), 120));
        assert_eq!(r.unreachable_since, Some(110));
        // Same kind of phase: `since` stays.
        assert_eq!(r.since, 100);
        assert!(!r.set_phase(failing("timed out"), 130));
        assert!(r.set_phase(Phase::Connected, 140));
        assert_eq!((r.unreachable_since, r.since), (None, 140));
    }

    #[test]
    fn a_run_settles_when_listening_or_stuck_on_the_user() {
        let mut r = run();
        assert!(!r.settled());
        r.set_phase(
            Phase::Connecting {
                last_error: Some("refused".into()),
            },
            1,
        );
        assert!(!r.settled(), "retryable failures keep waiting");
        r.set_phase(Phase::SignInNeeded { reason: "x".into() }, 2);
        assert!(r.settled());
    }
}
