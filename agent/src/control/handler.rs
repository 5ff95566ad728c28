//! The running agent behind the control API: each [`Request`] every agent
//! understands, answered from an [`Agent`], and the one mapping from an
//! [`AgentError`] to the [`ErrorCode`] a client acts on.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{socket_path, Bound, ControlError, ControlServer, ErrorCode, Failure};
use super::{Handled, Handler, Progress, Request};
use crate::agent::Agent;
use crate::AgentError;

/// How long a `login` request waits for the browser when it names no time.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(300);

impl From<&AgentError> for ErrorCode {
    fn from(e: &AgentError) -> Self {
        match e {
            AgentError::UnknownEnvironment { .. } => ErrorCode::NotFound,
            AgentError::SignInInProgress { .. } => ErrorCode::Busy,
            AgentError::Locked { .. } => ErrorCode::Locked,
            AgentError::SignIn(_)
            | AgentError::Unauthorized(_)
            | AgentError::NoToken(_)
            | AgentError::SignedInButRefused { .. }
            | AgentError::FixedToken => ErrorCode::SignIn,
            _ => ErrorCode::Failed,
        }
    }
}

impl From<AgentError> for Failure {
    fn from(e: AgentError) -> Self {
        Failure::new(ErrorCode::from(&e), e.to_string())
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
            agent.use_environment(&environment).await?;
            Ok(json(agent.snapshot()))
        }
        Request::Login { timeout_secs } => {
            let timeout = timeout_secs.map_or(LOGIN_TIMEOUT, Duration::from_secs);
            let p = progress.clone();
            let done = agent
                .sign_in(timeout, move |url| {
                    p.send("Open this page to sign in", Some(url.to_string()));
                })
                .await?;
            Ok(json(done))
        }
        Request::Logout => Ok(json(agent.sign_out().await?)),
        Request::Reload => {
            agent.reload()?;
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
) -> Result<Option<(PathBuf, JoinHandle<()>)>, ControlError> {
    let path = socket_path();
    match ControlServer::bind(&path).await? {
        Bound::Serving(server) => {
            let p = server.path().to_path_buf();
            Ok(Some((p, server.serve(handler, stop))))
        }
        Bound::Taken(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_come_from_the_error_kind_not_its_text() {
        let unknown = AgentError::UnknownEnvironment {
            name: "nope".into(),
            known: vec!["prod".into()],
        };
        assert_eq!(ErrorCode::from(&unknown), ErrorCode::NotFound);
        let busy = AgentError::SignInInProgress {
            url: "https://idp/auth".into(),
        };
        assert_eq!(ErrorCode::from(&busy), ErrorCode::Busy);
        assert_eq!(ErrorCode::from(&AgentError::FixedToken), ErrorCode::SignIn);
        // A config error that happens to mention a missing environment is
        // still just a failure.
        let config =
            AgentError::Config("c.toml: default_environment: no environment named \"x\"".into());
        assert_eq!(ErrorCode::from(&config), ErrorCode::Failed);
        let f = Failure::from(unknown);
        assert_eq!(f.message, "no environment named \"nope\" (known: prod)");
    }
}
