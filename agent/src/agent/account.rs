//! The running agent's account actions: sign in to (and out of) the current
//! environment, with the run started, woken or stopped around them. The
//! sign-in itself is [`signin::sign_in`], the same one `gangway login` runs.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::{Agent, EnvSpec, Tokens};
use crate::keychain::Keychain;
use crate::signin::{self, Method, SignedIn, SignedOut};
use crate::status::Phase;
use crate::AgentError;

impl Agent {
    /// This environment's slice of the keychain; a fixed-token agent has
    /// none.
    pub(super) fn keychain_for(&self, env: &EnvSpec) -> Result<Keychain, AgentError> {
        match &self.inner.opts.tokens {
            Tokens::Keychain(store) => Ok(Keychain::new(store.clone(), &env.relay)),
            Tokens::Fixed(_) | Tokens::Service(_) => Err(AgentError::FixedToken),
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
            if let Some(url) = st.signing_in.clone() {
                drop(st);
                let _ = signin::open_browser(&url, self.browser());
                return Err(AgentError::SignInInProgress { url });
            }
            st.signing_in = Some(String::new());
        }
        self.bump();
        let egress = env.egress();
        let browser = self.inner.opts.browser.clone();
        let method = Method::Browser {
            timeout,
            show: Box::new(|url: &Url| {
                self.lock().signing_in = Some(url.to_string());
                self.bump();
                if let Err(e) = signin::open_browser(url.as_str(), browser.as_deref()) {
                    tracing::warn!("{e}");
                }
                show(url);
            }),
        };
        let result = match egress {
            Ok(egress) => signin::sign_in(&env.name, &env.relay, egress, &keychain, method).await,
            Err(e) => Err(e),
        };
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

    /// Signs out of the current environment: its listeners close, the
    /// refresh token is revoked at the provider (best effort) and its
    /// keychain entries deleted. Other environments keep theirs.
    pub async fn sign_out(&self) -> Result<SignedOut, AgentError> {
        let _ops = self.inner.ops.lock().await;
        let env = self.current_env()?;
        let keychain = self.keychain_for(&env)?;
        self.end_run().await;
        let done = match env.egress() {
            Ok(egress) => signin::sign_out(&env.name, &env.relay, egress, &keychain).await,
            Err(e) => Err(e),
        };
        // Whatever happened, this environment now shows as signed out.
        self.lock().start_run(
            env,
            CancellationToken::new(),
            Arc::new(Notify::new()),
            Phase::SignedOut,
            super::now(),
        );
        self.bump();
        done
    }
}
