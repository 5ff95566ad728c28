//! One environment's life, as its run task lives it:
//!
//! ```text
//! catalog ──(relay unreachable: retry with backoff; sign-in needed: wait and look again)──▶
//!   up::start (listeners + tunnel) ──▶ follow the tunnel's state ──▶ stop: listeners close, streams end
//! ```
//!
//! Every report goes through [`Agent::update`] with the run's id, so a
//! replaced run's late reports change nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{now, state::Run, Agent, EnvSpec, Tokens};
use crate::keychain::Keychain;
use crate::net::Egress;
use crate::notices::{self, Notifier};
use crate::relay_api::{Catalog, RelayApi};
use crate::signin::{self, Credentials, ServiceAccount, SignInStatus};
use crate::status::{Frontend, Notice, NoticeKind, Phase, Problem};
use crate::token::TokenSource;
use crate::tunnel::{Backoff, TunnelState};
use crate::up::{self, UpOptions};
use crate::AgentError;

/// How often a needed sign-in is looked for in the keychain (a `gangway
/// login` in another terminal, or the tray).
const SIGN_IN_POLL: Duration = Duration::from_secs(10);
/// How long a run waits after an error only the user can fix before it
/// tries again (the config file may have been mended).
const FAILED_RETRY: Duration = Duration::from_secs(30);
/// How long a stopped environment may take to close its listeners and streams.
pub(super) const STOP_LIMIT: Duration = Duration::from_secs(10);
/// How often a connected run re-reads the sign-in's expiry for the status.
const TOKEN_INFO_EVERY: Duration = Duration::from_secs(15);

/// What a failed attempt to get the catalog means: the phase to show, how
/// long to wait before the next attempt, and the attempt number after it.
pub(super) fn classify(
    e: &AgentError,
    attempt: u32,
    backoff: &Backoff,
    rng: &mut impl rand::Rng,
) -> (Phase, Duration, u32) {
    if let Some(reason) = e.sign_in_reason() {
        (Phase::SignInNeeded { reason }, SIGN_IN_POLL, 0)
    } else if e.retryable() {
        let phase = Phase::Connecting {
            last_error: Some(e.to_string()),
        };
        (phase, backoff.delay(attempt, rng), attempt + 1)
    } else {
        let phase = Phase::Failed {
            reason: e.to_string(),
        };
        (phase, FAILED_RETRY, attempt)
    }
}

impl Agent {
    /// Updates the current run, if it is still run `id`.
    pub(super) fn update(&self, id: u64, f: impl FnOnce(&mut Run)) {
        let changed = match self.lock().run_mut(id) {
            Some(r) => {
                f(r);
                true
            }
            None => false,
        };
        if changed {
            self.bump();
        }
    }

    pub(super) fn set_phase(&self, id: u64, phase: Phase) {
        let changed = self
            .lock()
            .run_mut(id)
            .is_some_and(|r| r.set_phase(phase, now()));
        if changed {
            self.bump();
        }
    }

    pub(super) fn log_problem(&self, text: String, detail: Option<String>) {
        let added = self.lock().log_problem(Problem {
            at: now(),
            text,
            detail,
        });
        if added {
            self.bump();
        }
    }

    /// Tells the user (desktop notification, status) about `kind`.
    fn announce(&self, env: &EnvSpec, kind: NoticeKind) {
        let since = {
            let st = self.lock();
            st.run
                .as_ref()
                .and_then(|r| r.unreachable_since)
                .map(crate::status::clock)
        };
        let how = match (&self.inner.opts.tokens, self.inner.opts.frontend) {
            (Tokens::Fixed(_), _) => "The relay refuses the access token; provide a new one \
                 (GANGWAY_TOKEN or --token-file)."
                .to_string(),
            (Tokens::Service(c), _) => format!(
                "The relay refuses the service account {}'s token; check its groups \
                 at the identity provider.",
                c.client_id
            ),
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
        self.lock().push_notice(notice.clone());
        let _ = self.inner.notices.send(notice);
        self.bump();
    }

    /// Feeds the current phase to the notifier; announces what it decides.
    fn observe(&self, notifier: &mut Notifier, env: &EnvSpec) {
        let phase = self.lock().run.as_ref().map(|r| r.phase.clone());
        if let Some(phase) = phase {
            if let Some(kind) = notifier.observe(tokio::time::Instant::now(), &phase) {
                self.announce(env, kind);
            }
        }
    }

    fn token_source(&self, env: &EnvSpec, egress: &Egress) -> TokenSource {
        match &self.inner.opts.tokens {
            Tokens::Fixed(t) => t.clone(),
            Tokens::Service(creds) => TokenSource::Service(Arc::new(ServiceAccount::new(
                env.relay.clone(),
                egress.clone(),
                creds.clone(),
            ))),
            Tokens::Keychain(store) => TokenSource::SignedIn(Arc::new(Credentials::new(
                env.relay.clone(),
                egress.clone(),
                Keychain::new(store.clone(), &env.relay),
                env.login_hint.clone(),
            ))),
        }
    }

    /// Reads what the keychain says about the sign-in (user, expiry).
    async fn refresh_token_info(&self, id: u64, env: &EnvSpec, tokens: &TokenSource) {
        let (expires, refreshable, user, binding) = match &self.inner.opts.tokens {
            Tokens::Keychain(store) => {
                let k = Keychain::new(store.clone(), &env.relay);
                let binding = crate::dpop::binding(&k).await.ok();
                match signin::status(&k).await {
                    Ok(SignInStatus::SignedIn {
                        subject,
                        expires_at,
                        refreshable,
                        ..
                    }) => (expires_at, refreshable, subject, binding),
                    _ => (None, false, None, None),
                }
            }
            Tokens::Fixed(_) | Tokens::Service(_) => match tokens.current_timed().await {
                Ok(t) => (
                    t.expires_at,
                    matches!(tokens, TokenSource::Service(_)),
                    None,
                    None,
                ),
                Err(_) => (None, false, None, None),
            },
        };
        self.update(id, |r| {
            r.token_expires_at = expires;
            r.refreshable = refreshable;
            r.keychain_user = user;
            r.token_binding = binding;
        });
    }

    /// One environment's life: get the catalog (retrying while the relay is
    /// unreachable, waiting while a sign-in is needed), start the listeners
    /// and the tunnel, then follow the tunnel's state until `stop`.
    pub(super) async fn run_env(
        self,
        id: u64,
        env: EnvSpec,
        stop: CancellationToken,
        nudge: Arc<Notify>,
    ) {
        let mut notifier = Notifier::new(self.inner.opts.unreachable_notice_after);
        let setup = env
            .egress()
            .and_then(|egress| Ok((RelayApi::new(env.relay.clone(), egress.clone())?, egress)));
        let (api, egress) = match setup {
            Ok(s) => s,
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
        let tokens = self.token_source(&env, &egress);
        let Some(catalog) = self
            .fetch_catalog(id, &env, &api, &tokens, &mut notifier, &stop, &nudge)
            .await
        else {
            return;
        };
        let running = up::start(
            UpOptions {
                relay: env.relay.clone(),
                egress,
                tokens: tokens.clone(),
                ports: env.ports.clone(),
                listen: self.inner.opts.listen.clone(),
                allow_network_listen: self.inner.opts.allow_network_listen,
                connect_wait: self.inner.opts.connect_wait,
                backoff: self.inner.opts.backoff,
                door: self.inner.door.clone(),
            },
            catalog,
            stop.clone(),
        )
        .await;
        for f in &running.failed {
            self.log_problem(
                format!("{}, so {} is not available", f.reason, f.service),
                None,
            );
        }
        for s in &running.listening {
            tracing::info!(environment = %env.name, service = %s.service.name, "listening on {}", s.addr);
        }
        self.update(id, |r| {
            r.catalog = Some(running.catalog.clone());
            r.listening = running.listening.clone();
            r.started = true;
            r.failed = running.failed.clone();
            r.tunnel = Some(running.tunnel.clone());
        });
        self.follow_tunnel(id, &env, &running.tunnel, &tokens, &mut notifier, &stop)
            .await;
        stop.cancel();
        if !running.stopped(STOP_LIMIT).await {
            tracing::warn!(environment = %env.name, "some streams did not end in time");
        }
        tracing::info!(environment = %env.name, "environment stopped");
    }

    /// Asks the relay for the catalog until it answers; `None` when the run
    /// is stopped first. A refused token is never offered again: one more
    /// try with a fresh one, then the run waits for a sign-in.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_catalog(
        &self,
        id: u64,
        env: &EnvSpec,
        api: &RelayApi,
        tokens: &TokenSource,
        notifier: &mut Notifier,
        stop: &CancellationToken,
        nudge: &Notify,
    ) -> Option<Catalog> {
        let mut attempt = 0u32;
        loop {
            let got = tokio::select! {
                r = async {
                    let token = tokens.current().await?;
                    let key = tokens.proof_key_for(&token).await;
                    match api.catalog_with(&token, key.as_deref()).await {
                        Err(AgentError::Unauthorized(_)) => {
                            tokens.rejected(&token).await;
                            let token = tokens.current().await?;
                            let key = tokens.proof_key_for(&token).await;
                            api.catalog_with(&token, key.as_deref()).await
                        }
                        other => other,
                    }
                } => r,
                _ = stop.cancelled() => return None,
            };
            let e = match got {
                Ok(c) => {
                    self.update(id, |r| r.catalog = Some(c.clone()));
                    return Some(c);
                }
                Err(e) => e,
            };
            let (phase, wait, next) = classify(
                &e,
                attempt,
                &self.inner.opts.backoff,
                &mut rand::thread_rng(),
            );
            attempt = next;
            match &phase {
                Phase::Connecting { .. } => {
                    tracing::warn!(environment = %env.name, "cannot reach the relay: {e}")
                }
                Phase::Failed { .. } => tracing::error!(environment = %env.name, "{e}"),
                _ => {}
            }
            self.set_phase(id, phase);
            self.observe(notifier, env);
            // Wake every few seconds for the unreachable-notice clock.
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let step = deadline
                    .saturating_duration_since(tokio::time::Instant::now())
                    .min(Duration::from_secs(5));
                if step.is_zero() {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(step) => self.observe(notifier, env),
                    _ = nudge.notified() => break,
                    _ = stop.cancelled() => return None,
                }
            }
        }
    }

    /// Mirrors the tunnel's state in the run's phase until it stops.
    async fn follow_tunnel(
        &self,
        id: u64,
        env: &EnvSpec,
        tunnel: &crate::tunnel::Tunnel,
        tokens: &TokenSource,
        notifier: &mut Notifier,
        stop: &CancellationToken,
    ) {
        let mut state = tunnel.watch();
        let mut was_connected = false;
        let mut last_info: Option<tokio::time::Instant> = None;
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
                TunnelState::Stopped => return,
            };
            let fresh_info = matches!(phase, Phase::Connected)
                && last_info.is_none_or(|t| t.elapsed() > TOKEN_INFO_EVERY);
            self.set_phase(id, phase);
            self.observe(notifier, env);
            if fresh_info {
                last_info = Some(tokio::time::Instant::now());
                self.refresh_token_info(id, env, tokens).await;
            }
            tokio::select! {
                r = state.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn one_classifier_for_every_failure() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let (p, wait, next) = classify(&AgentError::unreachable("refused"), 3, &backoff, &mut rng);
        assert!(
            matches!(p, Phase::Connecting { last_error: Some(ref e) } if e.contains("refused"))
        );
        assert!(wait <= backoff.max, "{wait:?}");
        assert_eq!(next, 4);
        let (p, wait, next) = classify(
            &AgentError::Unauthorized("expired".into()),
            3,
            &backoff,
            &mut rng,
        );
        assert!(matches!(p, Phase::SignInNeeded { .. }));
        assert_eq!((wait, next), (SIGN_IN_POLL, 0));
        let (p, wait, next) = classify(&AgentError::NoEnvironment, 3, &backoff, &mut rng);
        assert!(matches!(p, Phase::Failed { .. }));
        assert_eq!((wait, next), (FAILED_RETRY, 3));
    }
}
