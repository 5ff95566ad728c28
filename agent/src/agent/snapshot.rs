//! The agent's state as the CLI, the tray and the status window show it: a
//! pure function of [`State`], the options and the time.

use super::state::{State, KEEP};
use super::{AgentOptions, Tokens};
use crate::door::DoorSnapshot;
use crate::keychain::namespace_for;
use crate::status::{self, EnvironmentEntry, Phase, Problem, ServiceStatus, Snapshot};

/// Per-service problems older than this are not shown.
const PROBLEM_TTL: u64 = 15 * 60;

/// What `st` looks like at `now` (Unix seconds).
pub(super) fn snapshot(st: &State, opts: &AgentOptions, door: DoorSnapshot, now: u64) -> Snapshot {
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
        for s in &r.listening {
            let stats = s.stats.snapshot();
            if let Some(p) = &stats.last_problem {
                if now.saturating_sub(p.at) < PROBLEM_TTL {
                    problems.push(Problem {
                        at: p.at,
                        text: p.text.clone(),
                        detail: None,
                    });
                }
            }
            services.push(ServiceStatus {
                name: s.service.name.clone(),
                display_name: s.service.display_name.clone(),
                kind: s.service.kind,
                local_addr: Some(s.addr.to_string()),
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
                kind: svc
                    .map(|s| s.kind)
                    .unwrap_or(crate::relay_api::ServiceKind::Tcp),
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
        if let Some(p) = phase_problem(&r.phase, r.since, r.unreachable_since) {
            problems.push(p);
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
        relay: run.map(|r| namespace_for(&r.env.relay)),
        login_hint: run.map(|r| r.env.login_hint.clone()),
        environments: st
            .envs
            .iter()
            .map(|e| EnvironmentEntry {
                name: e.name.clone(),
                relay: namespace_for(&e.relay),
                current: st.current.as_deref() == Some(e.name.as_str()),
                locked: e.locked,
            })
            .collect(),
        organization: st.managed.organization.clone(),
        environment_fixed: st.managed.fixed_environment.is_some(),
        start_at_login_locked: st.managed.start_at_login.is_some(),
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
        token_binding: run.and_then(|r| r.token_binding.clone()),
        signing_in: st.signing_in.clone().filter(|u| !u.is_empty()),
        interactive: matches!(opts.tokens, Tokens::Keychain(_)),
        services,
        problems,
        notices: st.notices.iter().cloned().collect(),
        links,
        door,
    }
}

/// The problem a phase itself is, if any.
fn phase_problem(phase: &Phase, since: u64, unreachable_since: Option<u64>) -> Option<Problem> {
    match phase {
        Phase::Connecting {
            last_error: Some(e),
        }
        | Phase::Reconnecting {
            last_error: Some(e),
        } => {
            let since = unreachable_since.unwrap_or(since);
            Some(Problem {
                at: since,
                text: format!("relay unreachable since {}, retrying", status::clock(since)),
                detail: Some(e.clone()),
            })
        }
        Phase::SignInNeeded { reason } => Some(Problem {
            at: since,
            text: "sign-in needed: your sign-in has ended".into(),
            detail: Some(reason.clone()),
        }),
        Phase::Failed { reason } => Some(Problem {
            at: since,
            text: reason.clone(),
            detail: None,
        }),
        _ => None,
    }
}
